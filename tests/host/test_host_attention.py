"""The forward-mode attention override under the host's attention signature (enable_gqa, containers, scale).

Runs ComfyUI's own `comfy.ldm.modules.attention` of the host under test (0.33.0: `@wrap_attn` entry points
that take `enable_gqa`, `scale` and q/k/v in `AttentionTensorContainer`s) in a subprocess, with the pack's
`optimized_attention_override` in transformer_options, inside guidance_core's forward-AD scope, and compares
each JVP with autograd through explicit float64 attention. Features the host lacks (0.3.64 has none of
the three) are reported and skipped there, not faked.
"""

import importlib
import importlib.util
import inspect
import json
import os
import sys

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]  # also run as a script, where testing/ is not importable

HEADS, KV_HEADS, DIM, QUERIES, KEYS = 4, 2, 8, 12, 10


def _check() -> dict:
    """Subprocess body: ComfyUI's attention module with the pack's override; returns JVP vs autograd."""
    import torch

    from comfy.cli_args import args

    args.cpu = True
    import comfy.ldm.modules.attention as comfy_attention

    # The pack as ComfyUI imports it (a package, so its relative imports resolve).
    spec = importlib.util.spec_from_file_location("titan_guide_pack", REPO_ROOT / "__init__.py",
                                                  submodule_search_locations=[str(REPO_ROOT)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["titan_guide_pack"] = pack
    spec.loader.exec_module(pack)
    comfy_model = importlib.import_module("titan_guide_pack.nodes.comfy_model")
    core = importlib.import_module("titan_guide_pack.guidance_core")
    router = importlib.import_module("titan_guide_pack.guidance_core.forward_ad.attention")

    source = inspect.getsource(comfy_attention)
    features = {"enable_gqa": "enable_gqa" in inspect.getsource(comfy_attention.attention_pytorch),
                "containers": hasattr(comfy_attention, "AttentionTensorContainer"),
                "scale": '"scale"' in source and "sdpa_keys" in source}
    calls = []

    def override(func, *a, **kw):
        calls.append(sorted(k for k in kw if not k.startswith("_")))
        return comfy_model._forward_ad_attention_override(func, *a, **kw)

    def explicit(q, k, v, scale):  # (b, tokens, heads*dim) in and out, k/v heads repeated for GQA
        b = q.shape[0]
        q = q.reshape(b, -1, HEADS, DIM).transpose(1, 2)
        k, v = (t.reshape(b, -1, t.shape[-1] // DIM, DIM).transpose(1, 2) for t in (k, v))
        k, v = (t.repeat_interleave(HEADS // t.shape[1], dim=1) for t in (k, v))
        w = (q @ k.transpose(-1, -2) * (DIM ** -0.5 if scale is None else scale)).softmax(-1)
        return (w @ v).transpose(1, 2).reshape(b, -1, HEADS * DIM)

    def case(kv_heads, scale=None, gqa=False, containers=False):
        g = torch.Generator().manual_seed(kv_heads * 10 + int(gqa) + 2 * int(containers))
        make = lambda n, h: torch.randn(2, n, h * DIM, generator=g, dtype=torch.float64)  # noqa: E731
        primals = (make(QUERIES, HEADS), make(KEYS, kv_heads), make(KEYS, kv_heads))
        tangents = (make(QUERIES, HEADS), make(KEYS, kv_heads), make(KEYS, kv_heads))
        weights = make(QUERIES, HEADS)
        extra = {"transformer_options": {"optimized_attention_override": override}}
        if gqa:
            extra["enable_gqa"] = True
        if scale is not None:
            extra["scale"] = scale

        def f(q, k, v):
            if containers:
                q, k, v = (comfy_attention.AttentionTensorContainer(t) for t in (q, k, v))
            return (comfy_attention.optimized_attention(q, k, v, HEADS, **extra) * weights).sum()

        before = len(calls), router.route_counts["math"]
        with core.forward_ad_attention():
            value, jvp = torch.func.jvp(f, primals, tangents)
        reached = len(calls) - before[0], router.route_counts["math"] - before[1]
        leaves = [t.clone().requires_grad_() for t in primals]
        reference_value = (explicit(*leaves, scale) * weights).sum()
        grads = torch.autograd.grad(reference_value, leaves)
        reference = sum((gr * t).sum() for gr, t in zip(grads, tangents))
        return {"value": float(value), "reference_value": float(reference_value), "jvp": float(jvp),
                "reference": float(reference), "override_calls": reached[0], "math_calls": reached[1],
                "kwargs_seen": calls[-1] if calls else None}

    result = {"features": features, "plain": case(HEADS)}
    if features["enable_gqa"]:
        result["gqa"] = case(KV_HEADS, gqa=True)
    if features["scale"]:
        result["scale"] = case(HEADS, scale=0.21)
    if features["containers"]:
        result["containers"] = case(HEADS, containers=True)
        if features["enable_gqa"] and features["scale"]:
            result["all"] = case(KV_HEADS, scale=0.37, gqa=True, containers=True)
    return result


def main(argv) -> int:
    """Subprocess entry: `python test_host_attention.py COMFY_DIR` prints RESULT <json>."""
    here = os.path.dirname(os.path.abspath(__file__))
    comfy_dir = os.path.abspath(argv[1])
    # ComfyUI first (its top-level `nodes` must win over this repository's package); tests/ not at all
    sys.path[:] = [comfy_dir] + [p for p in sys.path if os.path.abspath(p or ".") not in (here, str(REPO_ROOT))]
    print("RESULT " + json.dumps(_check()))
    return 0


@pytest.fixture(scope="module")
def attention_result(comfyui_dir):
    from testing.comfy_host import run_comfy_script

    return run_comfy_script(__file__, comfyui_dir)


@pytest.mark.host_compat
@pytest.mark.parametrize("name", ["plain", "gqa", "scale", "containers", "all"])
def test_override_jvp_equals_autograd_under_the_hosts_attention_signature(attention_result, name):
    """Each signature feature the host has reaches the override and gives the exact JVP (float64)."""
    if name not in attention_result:
        pytest.skip(f"this host's attention has no {name} input ({attention_result['features']})")
    case = attention_result[name]
    assert case["override_calls"] == 1 and case["math_calls"] >= 1, case  # the override and the MATH router ran
    assert case["value"] == pytest.approx(case["reference_value"], rel=1e-12)
    assert case["jvp"] == pytest.approx(case["reference"], rel=1e-9, abs=1e-12)
    assert abs(case["reference"]) > 1e-6
    if name in ("gqa", "all"):
        assert "enable_gqa" in case["kwargs_seen"]
    if name in ("scale", "all"):
        assert "scale" in case["kwargs_seen"]


def test_the_default_host_has_every_signature_feature(attention_result, comfyui_dir):
    """On 0.33.0 none of the cases above may be skipped (guards against the feature probe going stale)."""
    version = (comfyui_dir / "comfyui_version.py").read_text(encoding="utf-8")
    if '"0.3.' in version:
        pytest.skip("0.3.x host: its attention takes none of enable_gqa / scale / containers")
    assert attention_result["features"] == {"enable_gqa": True, "containers": True, "scale": True}


if __name__ == "__main__":
    sys.exit(main(sys.argv))
