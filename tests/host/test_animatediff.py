"""AnimateDiff-Evolved (ADE) with TITAN-Guide: the stock TITAN nodes under ADE's evolved sampling.

A direct test (in a subprocess, because it imports ComfyUI and ADE) builds ADE's own temporal module in
float64 and checks that a JVP through its motion attention fails without nodes/animatediff_support.py's
route (with ADE bound to SDPA as on NVIDIA) and, with the route, equals autograd through ADE's unchanged
attention; and that the route restores ADE's attention, also after an error.

Host tests run real graphs: CheckpointLoaderSimple -> ADE_LoadAnimateDiffModel -> ADE_ApplyAnimateDiffModelSimple
-> ADE_UseEvolvedSampling (with and without ADE_StandardStaticContextOptions shorter than the video) ->
TitanGuideSampler / SamplerCustomAdvanced + TitanGuideSamplerSelect -> VAEDecode -> SaveImage, on 8 frames of
16 x 16 (the smallest EmptyLatentImage: the full-size SD VAE dominates the cost), and compare the colour
objective of guided and unguided videos at the same seed. See tests/tiny_motion_module.py for why the motion
module has the real SD1.5 widths and why the graphs switch off its 640/1280-wide blocks with ADE's per-block
effect.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

if __name__ == "__main__":  # the route check's subprocess: the shared helpers live in tests/ and testing/
    sys.path[1:1] = [os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))]

import graphs  # noqa: E402
import tiny_motion_module as tmm  # noqa: E402
from graphs import link  # noqa: E402
from testing.comfy_host import HOST_DIR, REPO_ROOT, VENDOR_PACKS_DIR, default_python  # noqa: E402

ADE_FOLDER = "ComfyUI-AnimateDiff-Evolved"
FRAMES, SIZE, SEED = 8, 16, 3
RED = np.array([1.0, 0.0, 0.0])
ASSET_CACHE = HOST_DIR / "test-cache"


# --------------------------------------------------------------------------------------------------------
# Direct test: the forward-AD route for ADE's motion attention (runs in a subprocess, see main())
# --------------------------------------------------------------------------------------------------------
def _attention_route_check() -> dict:
    """Run in a subprocess with ComfyUI and ADE importable; returns what test_motion_attention_... asserts."""
    import importlib
    import importlib.util

    import torch

    from comfy.cli_args import args

    args.cpu = True
    import comfy.ldm.modules.attention as comfy_attention
    import comfy.ops
    from torch.nn.attention import SDPBackend, sdpa_kernel

    import guidance_core

    spec = importlib.util.spec_from_file_location("titan_animatediff_support",
                                                  REPO_ROOT / "nodes" / "animatediff_support.py")
    support = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(support)
    with support.motion_attention_for_forward_ad() as patched_without_ade:
        result = {"patched_without_ade": patched_without_ade}
    utils_motion = importlib.import_module(f"{ADE_FOLDER}.animatediff.utils_motion")
    motion_module_ad = importlib.import_module(f"{ADE_FOLDER}.animatediff.motion_module_ad")
    result["cpu_default_attention"] = utils_motion.optimized_attention_mm.__name__
    result["classes_found"] = [c.__qualname__ for c in support.motion_attention_classes()]

    def nvidia_sdpa(q, k, v, *rest, **kwargs):
        # What comfy/ops.py defines when CUDA is available: SDPA inside a backend-priority context that
        # re-enables the fused kernels (on CPU the flash kernel, which has no forward derivative either).
        priority = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                    SDPBackend.MATH]
        with sdpa_kernel(priority, set_priority=True):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, *rest, **kwargs)

    def temporal_module(attention, seed):
        """ADE's VanillaTemporalModule (64 channels, 8 heads) built while ADE's import-time choice is `attention`."""
        previous = utils_motion.optimized_attention_mm
        utils_motion.optimized_attention_mm = attention
        try:
            module = motion_module_ad.VanillaTemporalModule(
                in_channels=64, block_type="down", block_idx=0, module_idx=0, temporal_pe=True,
                temporal_pe_max_len=32, ops=comfy.ops.disable_weight_init)
        finally:
            utils_motion.optimized_attention_mm = previous
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, parameter in module.named_parameters():
                if parameter.dim() >= 2:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) / parameter.shape[1] ** 0.5)
                else:
                    parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator)
                                    + (1.0 if "norm" in name and name.endswith("weight") else 0.0))
        module = module.double()
        module.set_video_length(8, 8)
        return module

    generator = torch.Generator().manual_seed(11)
    x = torch.randn(8, 64, 3, 3, generator=generator, dtype=torch.float64)  # (frames, C, h, w)
    v = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    w = torch.randn(x.shape, generator=generator, dtype=torch.float64)

    def jvp_and_reference(module):
        f = lambda z: (module(z) * w).sum()  # noqa: E731
        with torch.enable_grad():
            z = x.clone().requires_grad_(True)
            value = f(z)
            (grad,) = torch.autograd.grad(value, z)
        reference = float((grad * v).sum())
        loss, derivative = guidance_core.directional_derivative(f, x, v)  # enters forward_ad_attention()
        return float(value), float(loss), reference, float(derivative)

    previous_sdpa = comfy.ops.scaled_dot_product_attention
    comfy.ops.scaled_dot_product_attention = nvidia_sdpa
    try:
        sdpa_module = temporal_module(comfy_attention.attention_pytorch, seed=1)
        result["bound_attention"] = sorted({m.actual_attention.__name__ for m in sdpa_module.modules()
                                            if isinstance(m, utils_motion.CrossAttentionMM)})
        try:
            value, loss, reference, derivative = jvp_and_reference(sdpa_module)
            result["without_route"] = {"value": value, "loss": loss, "reference": reference, "jvp": derivative}
        except Exception as error:
            result["without_route"] = f"{type(error).__name__}: {str(error).splitlines()[0]}"
        unregister = guidance_core.register_attention_context(support.motion_attention_for_forward_ad)
        try:
            calls_before = support.routed_call_count()
            value, loss, reference, derivative = jvp_and_reference(sdpa_module)
            result["routed_calls"] = support.routed_call_count() - calls_before
            result["with_route"] = {"value": value, "loss": loss, "reference": reference, "jvp": derivative}
            default_module = temporal_module(utils_motion.optimized_attention_mm, seed=2)
            value, loss, reference, derivative = jvp_and_reference(default_module)
            result["cpu_default_with_route"] = {"value": value, "loss": loss, "reference": reference,
                                                "jvp": derivative}
        finally:
            unregister()
    finally:
        comfy.ops.scaled_dot_product_attention = previous_sdpa

    attention = next(m for m in sdpa_module.modules() if isinstance(m, utils_motion.CrossAttentionMM))
    cls = utils_motion.CrossAttentionMM
    result["restored"] = "actual_attention" not in cls.__dict__ and \
        attention.actual_attention is comfy_attention.attention_pytorch
    try:
        with support.motion_attention_for_forward_ad() as patched:
            result["patched_inside"] = [c.__qualname__ for c in patched]
            with support.motion_attention_for_forward_ad() as nested:
                result["patched_nested"] = [c.__qualname__ for c in nested]
            result["outer_kept_after_nested"] = attention.actual_attention is support.forward_ad_motion_attention
            result["reads_route_inside"] = attention.actual_attention is support.forward_ad_motion_attention
            attention.actual_attention = comfy_attention.attention_basic  # as ADE's CUDA-error fallback does
            raise KeyError("error inside the scope")
    except KeyError:
        pass
    result["restored_after_error"] = "actual_attention" not in cls.__dict__
    result["assignment_kept"] = attention.actual_attention is comfy_attention.attention_basic
    attention.reset_attention_type()
    result["reset_works"] = attention.actual_attention is utils_motion.optimized_attention_mm
    return result


def main(argv) -> int:
    """Subprocess entry: `python test_animatediff.py --attention-route-check COMFY_DIR` prints JSON."""
    if len(argv) != 3 or argv[1] != "--attention-route-check":
        print("usage: test_animatediff.py --attention-route-check COMFY_DIR", file=sys.stderr)
        return 2
    here = os.path.dirname(os.path.abspath(__file__))
    # ComfyUI first (its top-level `nodes` must win over this repository's package), the repository last
    # (guidance_core), tests/ not at all.
    comfy_dir = os.path.abspath(argv[2])
    sys.path[:] = [comfy_dir, str(VENDOR_PACKS_DIR)] + [p for p in sys.path if os.path.abspath(p or ".") != here] \
        + [str(REPO_ROOT)]
    print("RESULT " + json.dumps(_attention_route_check()))
    return 0


def test_motion_attention_jvp_needs_the_route_and_matches_autograd_with_it(comfyui_dir):
    """ADE's temporal attention bound to SDPA (NVIDIA setup): JVP == autograd (float64) with and without the route."""
    completed = subprocess.run([default_python(), os.path.abspath(__file__), "--attention-route-check",
                                str(comfyui_dir)], capture_output=True, text=True, timeout=300,
                               env=dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1"))
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    assert completed.returncode == 0 and lines, completed.stdout[-3000:] + completed.stderr[-5000:]
    result = json.loads(lines[-1][len("RESULT "):])

    assert result["patched_without_ade"] == []  # before ADE is imported the route does nothing
    assert result["classes_found"] == ["CrossAttentionMM"]
    assert result["bound_attention"] == ["attention_pytorch"]
    # Without the route, ComfyUI's backend-priority context around SDPA would bring back fused kernels; the
    # forward-AD router inside torch's SDPA selects MATH again, so the JVP is exact either way.
    unrouted = result["without_route"]
    assert isinstance(unrouted, dict), unrouted
    assert unrouted["jvp"] == pytest.approx(unrouted["reference"], rel=1e-9, abs=1e-12)
    routed = result["with_route"]
    assert result["routed_calls"] == 2  # the temporal module's two attention blocks, one forward-mode pass
    assert routed["loss"] == pytest.approx(routed["value"], rel=1e-12)
    assert routed["jvp"] == pytest.approx(routed["reference"], rel=1e-9, abs=1e-12)
    assert abs(routed["reference"]) > 1e-6
    # On a CPU host with default flags ADE binds sub-quadratic attention, not SDPA (hence the NVIDIA setup
    # above); with the route, the JVP equals autograd through that attention too.
    assert result["cpu_default_attention"] == "attention_sub_quad"
    cpu = result["cpu_default_with_route"]
    assert cpu["jvp"] == pytest.approx(cpu["reference"], rel=1e-9, abs=1e-12)
    assert result["restored"] and result["restored_after_error"]
    assert result["patched_inside"] == ["CrossAttentionMM"] and result["reads_route_inside"]
    assert result["patched_nested"] == [] and result["outer_kept_after_nested"]
    assert result["assignment_kept"] and result["reset_works"]


# --------------------------------------------------------------------------------------------------------
# Host tests
# --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ade_checkpoint(comfy_host, comfyui_dir, tiny_sd15_checkpoint):
    """Name of the ADE-compatible tiny checkpoint; it and the v2 / v1 motion modules go to the host's model folders."""
    checkpoint = tmm.build_tiny_ade_sd15_checkpoint(comfyui_dir, tiny_sd15_checkpoint,
                                                    ASSET_CACHE / tmm.TINY_ADE_SD15_FILENAME, seed=0,
                                                    python=default_python())
    motion_modules = [tmm.write_tiny_motion_module(ASSET_CACHE / name, seed=0, version=version)
                      for name, version in ((tmm.TINY_MOTION_MODULE_FILENAME, "v2"),
                                            (tmm.TINY_MOTION_MODULE_V1_FILENAME, "v1"))]
    for source, folder in [(checkpoint, "checkpoints")] + [(m, "animatediff_models") for m in motion_modules]:
        target = comfy_host.models_dir / folder / source.name
        if not target.exists():
            try:
                os.symlink(source, target)
            except OSError:
                shutil.copyfile(source, target)
    return checkpoint.name


def ade_models(prompt: graphs.Prompt, sources: dict, contexts: dict,
               motion_module: str = tmm.TINY_MOTION_MODULE_FILENAME) -> dict:
    """ADE's Gen2 chain on sources["model"]: one evolved-sampling MODEL per entry of `contexts`.

    `contexts` maps a name to None (no context windows) or (context_length, context_overlap) for
    ADE_StandardStaticContextOptions; returns name -> MODEL link. All share one loaded motion module. Only its
    320-wide blocks fit the tiny UNet; the others get effect 0 through ADE's per-block settings, given as a
    keyframe from the start: ADE 90fb133 loses `per_block` given directly to the apply node when the MODEL is
    cloned (MotionModelAttachment.on_model_patcher_clone does not copy per_block_list), and TitanGuideSampler
    clones it; keyframes survive the clone.
    """
    prompt.add("motion_model", "ADE_LoadAnimateDiffModel", model_name=motion_module)
    prompt.add("effect_off", "ADE_MultivalDynamic", float_val=0.0)
    prompt.add("block_off", "ADE_ADBlockCombo", effect=link("effect_off"))
    prompt.add("per_block", "ADE_PerBlock_SD15_MidLevel", **{name: link("block_off") for name in tmm.INACTIVE_BLOCKS})
    prompt.add("keyframe", "ADE_AnimateDiffKeyframe", start_percent=0.0, per_block_replace=link("per_block"))
    prompt.add("apply_motion", "ADE_ApplyAnimateDiffModelSimple", motion_model=link("motion_model"),
               ad_keyframes=link("keyframe"))
    models = {}
    for name, context in contexts.items():
        evolved = {"model": sources["model"], "beta_schedule": "autoselect", "m_models": link("apply_motion")}
        if context is not None:
            prompt.add(f"{name}_context", "ADE_StandardStaticContextOptions", context_length=context[0],
                       context_overlap=context[1], fuse_method="pyramid")
            evolved["context_options"] = link(f"{name}_context")
        models[name] = link(prompt.add(f"{name}_evolved", "ADE_UseEvolvedSampling", **evolved))
    return models


def add_titan_samplers(prompt: graphs.Prompt, sources: dict, model: list, objective: list, samplers: dict,
                       prefix: str) -> None:
    """One TitanGuideSampler per entry of `samplers` (id -> knobs, optional "guess" and "steps"), saved as PNGs."""
    for node_id, knobs in samplers.items():
        knobs = dict(knobs)
        guess = graphs.add_guess(prompt, f"{node_id}_guess", **knobs.pop("guess")) if "guess" in knobs else None
        graphs.add_titan_sampler(prompt, node_id, dict(sources, model=model), objective, seed=SEED,
                                 steps=knobs.pop("steps", STEPS), guess=guess, **knobs)
        graphs.add_outputs(prompt, node_id, f"{prefix}/{node_id}", sources["vae"], latent=False, images=True)


def add_custom_samplers(prompt: graphs.Prompt, sources: dict, model: list, objective: list, samplers: dict,
                        prefix: str) -> None:
    """SamplerCustomAdvanced (RandomNoise, BasicScheduler, CFGGuider) with a TitanGuideSamplerSelect per entry."""
    prompt.add("noise", "RandomNoise", noise_seed=SEED)
    prompt.add("scheduler", "BasicScheduler", model=model, scheduler="normal", steps=STEPS, denoise=1.0)
    prompt.add("guider", "CFGGuider", model=model, positive=sources["positive"], negative=sources["negative"],
               cfg=1.0)
    for node_id, knobs in samplers.items():
        knobs = dict(knobs)
        select = {**graphs.PROMPT_KNOBS, **{k: v for k, v in knobs.items() if k != "guess"}}
        if "guess" in knobs:
            select["guess"] = graphs.add_guess(prompt, f"{node_id}_guess", **knobs["guess"])
        prompt.add(f"{node_id}_select", "TitanGuideSamplerSelect", objective=objective, vae=sources["vae"], **select)
        prompt.add(node_id, "SamplerCustomAdvanced", noise=link("noise"), guider=link("guider"),
                   sampler=link(f"{node_id}_select"), sigmas=link("scheduler"), latent_image=sources["latent"])
        prompt.add(f"{node_id}_decode", "VAEDecode", samples=link(node_id, 0), vae=sources["vae"])
        prompt.add(f"{node_id}_save_images", "SaveImage", images=link(f"{node_id}_decode"),
                   filename_prefix=f"{prefix}/{node_id}")


def video(comfy_host, outputs: dict, sampler_id: str) -> np.ndarray:
    """The frames a sampler's SaveImage node wrote, as (frames, H, W, 3) floats in [0, 1]."""
    save_node = f"{sampler_id}_save_images"
    paths = comfy_host.output_files({save_node: outputs[save_node]})
    frames = []
    for path in paths:
        with Image.open(path) as image:
            frames.append(np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0)
    return np.stack(frames)


def colour_loss(frames: np.ndarray) -> float:
    """TitanColorObjective's default loss (mode frame, red target): mean over frames of the squared colour error."""
    means = frames.mean(axis=(1, 2))
    return float(((means - RED) ** 2).mean(axis=1).mean())


def report_of(outputs: dict, sampler_id: str) -> str:
    """The text of a TitanGuideSampler's report (PreviewAny output)."""
    text = outputs[f"{sampler_id}_report"]["text"]
    return text[0] if isinstance(text, list) else text


def check_guided_report(report: str, guided_steps: int) -> None:
    """The loss saw the whole video, and the run has `guided_steps` finite, non-skipped guided steps."""
    assert f"1 video(s) x {FRAMES} frame(s)" in report, report
    assert f"guided entries: {guided_steps}, skipped (non-finite loss or gradient): 0" in report, report


def assert_lower_loss(guided: np.ndarray, unguided: np.ndarray) -> None:
    """Guidance towards red lowered the colour loss of the decoded video (same seed)."""
    assert guided.shape == unguided.shape == (FRAMES, SIZE, SIZE, 3)
    assert colour_loss(guided) < colour_loss(unguided) - 1e-3, (colour_loss(guided), colour_loss(unguided))


STEPS = 2
UNGUIDED = {"guidance_start": 1.0, "guidance_end": 1.0}  # empty guidance window: plain steps only
GUIDED = {"strength": 0.2, "lookahead": 1, "guess": {"kind": "sampled_gradient", "sampled_frames": 2}}


@pytest.mark.host_compat
def test_titan_sampler_under_evolved_sampling_lowers_the_objective(comfy_host, ade_checkpoint):
    """TitanGuideSampler on an ADE evolved-sampling model (no context windows): guidance lowers the loss.

    This graph uses the v1 motion module: for v1, ADE's evolved sampling also swaps torch.nn.GroupNorm.forward
    for its frame-batched group norm during every UNet call (sampling.py, inject_functions), so the JVPs pass
    through that too. The other graphs use the v2 module, for which ADE leaves group norm alone.
    """
    prompt = graphs.Prompt()
    sources = graphs.sd15_inputs(prompt, ade_checkpoint, SIZE, SIZE, FRAMES)
    model = ade_models(prompt, sources, {"whole": None}, motion_module=tmm.TINY_MOTION_MODULE_V1_FILENAME)["whole"]
    objective = graphs.add_color_objective(prompt)
    add_titan_samplers(prompt, sources, model, objective, {"guided": GUIDED, "unguided": UNGUIDED}, "ade_whole")
    outputs = comfy_host.run(prompt.build(), timeout=900)
    check_guided_report(report_of(outputs, "guided"), guided_steps=STEPS)
    assert_lower_loss(video(comfy_host, outputs, "guided"), video(comfy_host, outputs, "unguided"))
    log = comfy_host.log_text()
    assert f"{tmm.TINY_MOTION_MODULE_V1_FILENAME}:v1:AnimateDiff:SD1.5" in log  # ADE detected it as v1
    # nodes/animatediff_support.py's route was taken inside the JVPs (logged on its first call)
    assert "motion attention runs through guidance_core's forward-AD SDPA inside forward-mode passes" in log


def test_context_windows_shorter_than_the_video_and_sampler_custom_advanced(comfy_host, ade_checkpoint):
    """4-frame context windows over 8 frames: TitanGuideSampler and SamplerCustomAdvanced + Select both guide.

    The windows are active (the unguided video differs from the one sampled without windows), the loss still
    sees all 8 frames, and guidance lowers it through both sampler paths.
    """
    prompt = graphs.Prompt()
    sources = graphs.sd15_inputs(prompt, ade_checkpoint, SIZE, SIZE, FRAMES)
    models = ade_models(prompt, sources, {"windowed": (4, 2), "whole": None})
    objective = graphs.add_color_objective(prompt)
    add_titan_samplers(prompt, sources, models["windowed"], objective, {"guided": GUIDED, "unguided": UNGUIDED},
                       "ade_windows")
    add_titan_samplers(prompt, sources, models["whole"], objective, {"unguided_whole": UNGUIDED}, "ade_windows")
    add_custom_samplers(prompt, sources, models["windowed"], objective,
                        {"custom_guided": GUIDED, "custom_unguided": UNGUIDED}, "ade_windows")
    outputs = comfy_host.run(prompt.build(), timeout=900)
    unguided = video(comfy_host, outputs, "unguided")
    assert np.abs(unguided - video(comfy_host, outputs, "unguided_whole")).max() > 1.0 / 255
    check_guided_report(report_of(outputs, "guided"), guided_steps=STEPS)
    assert_lower_loss(video(comfy_host, outputs, "guided"), unguided)
    custom_unguided = video(comfy_host, outputs, "custom_unguided")
    assert_lower_loss(video(comfy_host, outputs, "custom_guided"), custom_unguided)
    assert "Sliding context window sampling activated" in comfy_host.log_text()


GUESS_KINDS = {"random": {"k": 1}, "orthogonal": {"k": 1}, "antithetic": {"k": 1}, "score": {},
               "sampled_gradient": {"sampled_frames": 2}, "mixed": {"sampled_frames": 2}}


def test_every_gradient_guess_kind_runs_under_evolved_sampling(comfy_host, ade_checkpoint):
    """Each guess kind guides a one-step run on the ADE model: finite, non-zero estimate, changed video."""
    prompt = graphs.Prompt()
    sources = graphs.sd15_inputs(prompt, ade_checkpoint, SIZE, SIZE, FRAMES)
    model = ade_models(prompt, sources, {"whole": None})["whole"]
    objective = graphs.add_color_objective(prompt)
    samplers = {f"guess_{kind}": {"steps": 1, "lookahead": 0, "strength": 0.2, "guess": {"kind": kind, **options}}
                for kind, options in GUESS_KINDS.items()}
    samplers["unguided"] = {"steps": 1, "lookahead": 0, **UNGUIDED}
    add_titan_samplers(prompt, sources, model, objective, samplers, "ade_guesses")
    outputs = comfy_host.run(prompt.build(), timeout=900)
    unguided = video(comfy_host, outputs, "unguided")
    for kind in GUESS_KINDS:
        report = report_of(outputs, f"guess_{kind}")
        check_guided_report(report, guided_steps=1)
        row = next(line for line in report.splitlines() if line.startswith("0 "))
        loss, gradient_norm = float(row.split()[3]), float(row.split()[5])
        assert np.isfinite(loss) and np.isfinite(gradient_norm) and gradient_norm > 0, (kind, report)
        assert np.abs(video(comfy_host, outputs, f"guess_{kind}") - unguided).max() > 1.0 / 255, \
            f"guess {kind} did not change the video"


if __name__ == "__main__":
    sys.exit(main(sys.argv))
