"""CPU smoke of benchmarks/model_jvp.py: the tiny Wan transformer's JVP runs routed and is written as a row."""
import json

import torch

from benchmarks import model_jvp


def test_smoke_writes_a_finite_jvp_row_of_the_tiny_wan_transformer(tmp_path):
    out = tmp_path / "model_jvp.json"
    model_jvp.main(["--smoke", "--models", "wan", "--repeats", "1", "--out", str(out)])
    (row,) = json.loads(out.read_text())["rows"]
    assert row["status"] == "ok" and row["finite"] and row["attention"] == "math"
    assert row["jvp_s"] > 0 and row["forward_s"] > 0 and row["route_counts"].get("math", 0) > 0
    assert row["tangent_error_vs_first"] == 0.0


def test_the_jvp_it_times_is_the_derivative_of_the_call():
    """<J v, w> of the benchmark's routed JVP against <v, J^T w> from reverse mode, on the tiny Wan call."""
    import guidance_core as core
    f, z, v, _ = model_jvp.build_wan("cpu", 5, smoke=True)
    with torch.no_grad(), core.forward_ad_attention():
        out, tangent = torch.func.jvp(f, (z,), (v,))
    w = torch.randn_like(out)
    x = z.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((f(x) * w).sum(), x)
    forward, reverse = float((tangent.double() * w).sum()), float((grad.double() * v).sum())
    assert abs(forward - reverse) < 1e-4 * abs(reverse) and abs(reverse) > 1e-3
