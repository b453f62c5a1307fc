"""TITAN-Guide's core nodes, run through a real ComfyUI host on the tiny random SD1.5 checkpoint.

Graphs are POSTed to /prompt (tests/graphs.py builds them); results come back through real output nodes:
SaveLatent (.latent safetensors), SaveImage (decoded frames, the loss plot) and PreviewAny (the report
string, returned in /history). Runs are tiny (16x16 pixels, 2 frames, 2-3 steps) to stay fast on CPU.
"""

from __future__ import annotations

import math
import re
import time

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import graphs
from testing.comfy_host import ComfyExecutionError, ComfyValidationError
from objectives.color import ColorLoss
from tiny_checkpoints import TINY_SD15_FILENAME

CKPT = TINY_SD15_FILENAME
PACK_NODES = ("TitanGuideSampler", "TitanGuideSamplerSelect", "TitanGradientGuess", "TitanGuidanceMethod",
              "TitanColorObjective", "TitanObjectiveCombine")
WIDGET_TYPES = ("INT", "FLOAT", "BOOLEAN", "STRING", "COMBO")
STARTED = "TITAN-Guide: guided sampling started"
# One guided step (of two), Tweedie look-ahead: the cheapest real guidance run.
CHEAP = dict(width=16, height=16, frames=2, steps=2, lookahead=0, guidance_end=0.5)


# --- helpers -----------------------------------------------------------------------------------------------
def report_of(outputs: dict, node: str = "sampler_report") -> str:
    """The report string a PreviewAny node returned."""
    return outputs[node]["text"][0]


def guided_rows(report: str) -> list[dict]:
    """The per-step rows of a report (between its table header and the totals)."""
    lines = report.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith(("step ", "iteration ")))
    rows = []
    for line in lines[header + 1:]:
        if line.startswith(("guided entries:", "(no guided steps")):
            break
        step, sigma, lookahead, loss, last, grad = line.split()[:6]
        rows.append({"step": int(step), "sigma": sigma, "lookahead": lookahead, "loss": float(loss),
                     "last_loss": float(last), "grad_norm": float(grad) if grad != "-" else None})
    return rows


def latent_of(host, outputs: dict, node: str = "sampler_save_latent") -> torch.Tensor:
    """The tensor a SaveLatent node wrote."""
    (path,) = host.output_files({node: outputs[node]}, key="latents")
    return load_file(str(path))["latent_tensor"]


def frames_of(host, outputs: dict, node: str) -> torch.Tensor:
    """The images a SaveImage node wrote, as a video (1, F, 3, H, W) in [0, 1]."""
    paths = sorted(host.output_files({node: outputs[node]}))
    frames = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255.0 for p in paths]
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)[None]


def started_count(host) -> int:
    """How many guided runs the server has started so far."""
    return host.log_text().count(STARTED)


# --- the colour objective (no host) -------------------------------------------------------------------------
def test_color_loss_matches_a_float64_reference_and_forward_mode_ad():
    generator = torch.Generator().manual_seed(0)
    video = torch.rand(2, 3, 3, 5, 4, generator=generator, dtype=torch.float64)
    target = (0.9, 0.2, 0.4)
    loss = ColorLoss(target, color_weight=2.0, brightness=0.3, brightness_weight=0.5, mode="frame").double()

    means = video.numpy().mean(axis=(3, 4))  # (B, F, 3)
    luma = means @ np.array([0.2126, 0.7152, 0.0722])
    expected_frames = 2.0 * ((means - np.array(target)) ** 2).mean(-1) + 0.5 * (luma - 0.3) ** 2
    np.testing.assert_allclose(loss.frame_losses(video).numpy(), expected_frames, rtol=1e-12)
    np.testing.assert_allclose(loss(video).numpy(), expected_frames.mean(1), rtol=1e-12)

    whole = ColorLoss(target, mode="video").double()
    video_mean = video.numpy().mean(axis=(1, 3, 4))
    np.testing.assert_allclose(whole(video).numpy(), ((video_mean - np.array(target)) ** 2).mean(-1), rtol=1e-12)
    assert not whole.has_frame_losses
    with pytest.raises(NotImplementedError, match="per-frame"):
        whole.frame_losses(video)

    tangent = torch.randn(video.shape, generator=generator, dtype=torch.float64)
    _, jvp = torch.func.jvp(lambda v: loss(v), (video,), (tangent,))
    leaf = video.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(leaf).sum(), leaf)
    assert torch.allclose(jvp, (grad * tangent).sum(dim=(1, 2, 3, 4)), rtol=1e-10, atol=1e-12)


def test_color_loss_rejects_bad_settings_and_inputs():
    with pytest.raises(ValueError, match="three values in \\[0, 1\\]"):
        ColorLoss((1.2, 0.0, 0.0))
    with pytest.raises(ValueError, match="both 0"):
        ColorLoss(color_weight=0.0, brightness_weight=0.0)
    with pytest.raises(ValueError, match="unknown mode"):
        ColorLoss(mode="pixel")
    with pytest.raises(ValueError, match="\\(B, F, 3, H, W\\)"):
        ColorLoss()(torch.rand(2, 3, 8, 8))


# --- schema ---------------------------------------------------------------------------------------------------
def test_object_info_lists_every_node_with_tooltips_defaults_and_ranges(comfy_host):
    info = comfy_host.object_info()
    for name in PACK_NODES:
        assert name in info, f"{name} is not registered"
        node = info[name]
        assert node["category"] == "sampling/titan_guide"
        assert node["description"]
        for section in ("required", "optional"):
            for input_name, (kind, options) in node["input"].get(section, {}).items():
                assert options.get("tooltip"), f"{name}.{input_name} has no tooltip"
                if kind in WIDGET_TYPES:
                    assert "default" in options, f"{name}.{input_name} has no default"
                if kind in ("INT", "FLOAT"):
                    assert options["min"] <= options["default"] <= options["max"], f"{name}.{input_name} range"
                if kind == "COMBO":
                    assert options["default"] in options["options"]
        assert all(node["output_tooltips"]), f"{name} has an output without tooltip"

    sampler = info["TitanGuideSampler"]
    assert sampler["output"] == ["LATENT", "STRING", "IMAGE"]
    assert set(sampler["input"]["optional"]) == {"guess", "method"}
    assert sampler["input"]["optional"]["guess"][0] == "TITAN_GUESS"
    assert sampler["input"]["optional"]["method"][0] == "TITAN_METHOD"
    assert sampler["input"]["required"]["objective"][0] == "TITAN_OBJECTIVE"
    required = sampler["input"]["required"]
    for knob, default in graphs.GUIDANCE_DEFAULTS.items():
        assert required[knob][1]["default"] == default, knob
        assert info["TitanGuideSamplerSelect"]["input"]["required"][knob][1]["default"] == default, knob
    assert required["lookahead"][1]["min"] == -1 and "-1 = all" in required["lookahead"][1]["tooltip"]
    assert required["sampler"][1]["options"] == ["euler", "ddim", "heun"]
    assert "karras" in required["scheduler"][1]["options"]
    assert info["TitanGuideSamplerSelect"]["output"] == ["SAMPLER"]

    guess = info["TitanGradientGuess"]["input"]["required"]
    assert guess["kind"][1]["options"] == ["random", "score", "sampled_gradient", "orthogonal", "antithetic", "mixed"]
    assert {k: v[1]["default"] for k, v in guess.items()} == graphs.GUESS_DEFAULTS
    method = info["TitanGuidanceMethod"]["input"]["required"]
    assert method["method"][1]["options"] == ["titan", "exact_gradient", "freedom", "mpgd", "tfg", "doodl"]
    assert {k: v[1]["default"] for k, v in method.items()} == graphs.METHOD_DEFAULTS
    colour = info["TitanColorObjective"]["input"]["required"]
    assert {k: v[1]["default"] for k, v in colour.items()} == graphs.COLOR_DEFAULTS
    combine = info["TitanObjectiveCombine"]["input"]
    assert list(combine["required"]) == ["objective_1", "weight_1"]
    assert len(combine["optional"]) == 6


# --- guidance effect, reproducibility, report and plot ----------------------------------------------------------
def test_guidance_lowers_the_colour_objective_against_guidance_off(comfy_host):
    common = dict(width=16, height=16, frames=2, steps=3, seed=11, images=True)
    guided = comfy_host.run(graphs.titan_prompt(
        CKPT, "nodes_sampler/guided", strength=0.3, guess={"kind": "sampled_gradient", "sampled_frames": 0},
        plot=True, **common), timeout=600)
    unguided = comfy_host.run(graphs.titan_prompt(
        CKPT, "nodes_sampler/unguided", strength=0.3, guess={"kind": "sampled_gradient", "sampled_frames": 0},
        guidance_start=0.0, guidance_end=0.0, **common), timeout=600)

    objective = ColorLoss()
    guided_loss = float(objective(frames_of(comfy_host, guided, "sampler_save_images")))
    unguided_loss = float(objective(frames_of(comfy_host, unguided, "sampler_save_images")))
    assert guided_loss < unguided_loss - 0.02, (guided_loss, unguided_loss)

    report = report_of(guided)
    rows = guided_rows(report)
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert [r["lookahead"] for r in rows] == ["1", "1", "0"]  # the last step can only look ahead to the end
    assert all(r["grad_norm"] > 0 and math.isfinite(r["loss"]) for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert "sampled_gradient (all even frames, tile)" in report
    assert re.search(r"peak memory: [\d.]+ MiB \(process peak RSS", report)
    assert re.search(r"time: [\d.]+ s, model calls: \d+", report)
    assert guided_rows(report_of(unguided)) == []
    assert "no guided steps" in report_of(unguided)

    (plot_path,) = comfy_host.output_files({"plot": guided["sampler_save_plot"]})
    with Image.open(plot_path) as plot:
        assert plot.size == (512, 320)
        red = np.asarray(plot.convert("RGB"), dtype=np.int32)
    line = (red[..., 0] > 150) & (red[..., 1] < 80) & (red[..., 2] < 80)
    assert line.sum() > 30, "the loss curve was not drawn"


def test_same_seed_gives_the_same_latent_and_select_matches_the_sampler_node(comfy_host):
    # eta > 0 and the random guess: both the initial noise and every guidance draw must be seeded
    knobs = dict(CHEAP, eta=0.5)
    first = comfy_host.run(graphs.titan_prompt(CKPT, "nodes_sampler/seed_a", seed=7, **knobs), timeout=300)
    other_seed = comfy_host.run(graphs.titan_prompt(CKPT, "nodes_sampler/seed_b", seed=8, **knobs), timeout=300)
    before = started_count(comfy_host)
    again = comfy_host.run(graphs.titan_prompt(CKPT, "nodes_sampler/seed_c", seed=7, **knobs), timeout=300)
    assert started_count(comfy_host) == before + 1, "the repeated prompt was served from ComfyUI's cache"

    reference = latent_of(comfy_host, first)
    assert reference.shape == (2, 4, 2, 2)
    assert torch.equal(reference, latent_of(comfy_host, again))
    assert not torch.equal(reference, latent_of(comfy_host, other_seed))
    assert len(guided_rows(report_of(first))) == 1

    select_knobs = {k: v for k, v in knobs.items() if k not in ("width", "height", "frames", "steps")}
    for guider in ("CFGGuider", "BasicGuider"):  # cfg 1: both evaluate the positive conditioning only
        outputs = comfy_host.run(graphs.sampler_custom_advanced_prompt(
            CKPT, f"nodes_sampler/select_{guider}", width=16, height=16, frames=2, steps=2, seed=7, cfg=1.0,
            guider=guider, **select_knobs), timeout=300)
        assert torch.equal(latent_of(comfy_host, outputs, "save_latent"), reference), guider
    assert "TITAN-Guide run finished" in comfy_host.log_text()


# --- every gradient guess and every method -----------------------------------------------------------------------
def _many_samplers_prompt(prefix: str, variants: dict, objectives: dict | None = None) -> dict:
    """One graph with a TitanGuideSampler per variant: name -> (guess overrides, method overrides, knob overrides).

    `objectives` adds objective nodes (node id -> (class_type, inputs)); a variant's knob "objective" names the
    one it uses (default: the red colour objective). A last sampler ("plain") has an empty guidance window: the
    unguided reference at the same seed.
    """
    prompt = graphs.Prompt()
    sources = graphs.sd15_inputs(prompt, CKPT, 16, 16, 2)
    default_objective = graphs.add_color_objective(prompt)
    for node_id, (class_type, inputs) in (objectives or {}).items():
        prompt.add(node_id, class_type, **inputs)
    knobs = {k: v for k, v in CHEAP.items() if k not in ("width", "height", "frames", "steps")}
    for name, (guess, method, overrides) in variants.items():
        overrides = dict(overrides)
        objective = graphs.link(overrides.pop("objective")) if "objective" in overrides else default_objective
        guess_link = graphs.add_guess(prompt, f"{name}_guess", **guess) if guess is not None else None
        method_link = graphs.add_method(prompt, f"{name}_method", **method) if method is not None else None
        graphs.add_titan_sampler(prompt, name, sources, objective, seed=3, steps=2, guess=guess_link,
                                 method=method_link, **{**knobs, **overrides})
        graphs.add_outputs(prompt, name, f"{prefix}/{name}", sources["vae"])
    graphs.add_titan_sampler(prompt, "plain", sources, default_objective, seed=3, steps=2,
                             **{**knobs, "guidance_end": 0.0})
    graphs.add_outputs(prompt, "plain", f"{prefix}/plain", sources["vae"], report=False)
    return prompt.build()


def test_every_gradient_guess_kind_runs(comfy_host):
    # a few sampler-side knobs ride along: per-frame derivatives, chunked decoding, two 1-frame videos, heun
    variants = {
        "random": ({"kind": "random", "k": 1}, None, {"per_frame": True}),
        "score": ({"kind": "score"}, None, {"sampler": "heun"}),
        "sampled": ({"kind": "sampled_gradient", "sampled_frames": 1, "expansion": "interpolate"}, None,
                    {"decode_chunk_frames": 1}),
        "orthogonal": ({"kind": "orthogonal", "k": 2}, None, {"frames_per_video": 1}),
        "antithetic": ({"kind": "antithetic", "k": 1}, {"estimator": "central_difference"}, {}),
        "mixed": ({"kind": "mixed", "frame_choice": "fixed", "frame_indices": "1", "random_weight": 0.3}, None, {}),
    }
    references = {"plain_heun": (None, None, {"sampler": "heun", "guidance_end": 0.0})}  # unguided heun
    outputs = comfy_host.run(_many_samplers_prompt("nodes_sampler/guesses", {**variants, **references}),
                             timeout=900)
    plain = latent_of(comfy_host, outputs, "plain_save_latent")
    plain_heun = latent_of(comfy_host, outputs, "plain_heun_save_latent")
    assert not torch.equal(plain, plain_heun)
    expected_name = {"random": "guess random (k=1)", "score": "guess score",
                     "sampled": "guess sampled_gradient (1 even frames, interpolate)",
                     "orthogonal": "guess orthogonal (k=2)", "antithetic": "guess antithetic (1 pair(s))",
                     "mixed": "guess mixed (frames [1], tile, random weight 0.3)"}
    calls = {}
    for name in variants:
        report = report_of(outputs, f"{name}_report")
        assert expected_name[name] in report, report
        (row,) = guided_rows(report)
        assert row["step"] == 0 and math.isfinite(row["loss"]) and row["grad_norm"] > 0, report
        latent = latent_of(comfy_host, outputs, f"{name}_save_latent")
        assert torch.isfinite(latent).all()
        unguided = plain_heun if variants[name][2].get("sampler") == "heun" else plain
        assert not torch.equal(latent, unguided), f"guess {name} did not change the sample"
        calls[name] = int(re.search(r"model calls: (\d+)", report).group(1))
    assert "2 video(s) x 1 frame(s)" in report_of(outputs, "orthogonal_report")
    # decode chunk: set by the knob, or automatic (all frames at once on the CPU), and reported either way
    assert "decode chunk: 1 of 2 frame(s) per VAE call (set by decode_chunk_frames)" in report_of(outputs, "sampled_report")
    assert "decode chunk: 2 of 2 frame(s) per VAE call (automatic: all at once on the CPU)" in \
        report_of(outputs, "random_report")
    # one model call per plain step and per tangent's forward pass (look-ahead 0); score adds its Tweedie call,
    # heun a second call per step except the last; central differences evaluate f at x and x +- delta V
    assert calls["random"] == 3 and calls["orthogonal"] == 4 and calls["score"] == 5
    assert calls["antithetic"] == 2 + 2 * 3


def test_exact_gradient_the_baselines_and_combined_objectives_run(comfy_host):
    objectives = {
        "blue_objective": ("TitanColorObjective", {**graphs.COLOR_DEFAULTS, "red": 0.0, "blue": 1.0, "mode": "video",
                                         "brightness_weight": 0.5}),
        "combined_objective": ("TitanObjectiveCombine", {"objective_1": graphs.link("objective"), "weight_1": 2.0,
                                                         "objective_2": graphs.link("blue_objective"),
                                                         "weight_2": -0.5,
                                               "weight_3": 7.0}),  # slot 3 is empty: its weight is ignored
    }
    variants = {
        "titan": ({"kind": "random"}, None, {}),
        "exact": (None, {"method": "exact_gradient"}, {}),
        "exact_ckpt": (None, {"method": "exact_gradient", "checkpoint": True}, {}),
        "freedom": (None, {"method": "freedom"}, {}),
        "freedom_normalized": (None, {"method": "freedom", "baseline_update": "normalized", "freedom_rho": 0.05}, {}),
        "mpgd": (None, {"method": "mpgd"}, {}),
        "tfg": (None, {"method": "tfg", "tfg_mc_samples": 1}, {}),
        "doodl": (None, {"method": "doodl", "doodl_iterations": 1}, {}),
        "blue": (None, {"method": "exact_gradient"}, {"objective": "blue_objective"}),
        "combined": (None, {"method": "exact_gradient"}, {"objective": "combined_objective"}),
    }
    outputs = comfy_host.run(_many_samplers_prompt("nodes_sampler/methods", variants, objectives), timeout=900)
    rows = {name: guided_rows(report_of(outputs, f"{name}_report")) for name in variants}
    for name in variants:
        assert rows[name], f"{name} reported no guided step"
        assert torch.isfinite(latent_of(comfy_host, outputs, f"{name}_save_latent")).all()
    # all methods see the same latent and the same loss at the first guided step
    first_losses = {name: rows[name][0]["loss"] for name in ("titan", "exact", "exact_ckpt", "freedom", "mpgd")}
    assert max(first_losses.values()) - min(first_losses.values()) < 1e-4 * abs(first_losses["titan"]), first_losses
    # TFG's loss is smoothed over a small latent perturbation (gamma)
    assert rows["tfg"][0]["loss"] == pytest.approx(first_losses["titan"], rel=1e-2)
    # checkpointing recomputes the same gradient; with a Tweedie look-ahead, FreeDoM's gradient is the exact one
    assert rows["exact_ckpt"][0]["grad_norm"] == pytest.approx(rows["exact"][0]["grad_norm"], rel=1e-4)
    assert rows["freedom"][0]["grad_norm"] == pytest.approx(rows["exact"][0]["grad_norm"], rel=1e-4)
    assert "method exact_gradient (checkpoint=True)" in report_of(outputs, "exact_ckpt_report")
    assert "final EDICT sample" in report_of(outputs, "doodl_report")
    # the baselines' update rule reaches them: same gradient, another step
    assert "baseline_update=normalized" in report_of(outputs, "freedom_normalized_report")
    assert rows["freedom_normalized"][0]["grad_norm"] == pytest.approx(rows["freedom"][0]["grad_norm"], rel=1e-4)
    assert not torch.equal(latent_of(comfy_host, outputs, "freedom_normalized_save_latent"),
                           latent_of(comfy_host, outputs, "freedom_save_latent"))
    # the combination is the weighted sum of its parts, evaluated on the same latent
    combined = 2.0 * rows["exact"][0]["loss"] - 0.5 * rows["blue"][0]["loss"]
    assert rows["combined"][0]["loss"] == pytest.approx(combined, rel=1e-4, abs=1e-6)
    expected = "objective: 2 * colour(1,0,0) + -0.5 * colour(0,0,1; brightness 0.5)"
    assert expected in report_of(outputs, "combined_report")


# --- interrupt and bad input ---------------------------------------------------------------------------------------
def test_interrupt_stops_a_long_run_within_a_model_call(comfy_host):
    before = started_count(comfy_host)
    # 200 steps with a full look-ahead: the first guided step alone is a 200-model-call forward pass
    long_prompt = graphs.titan_prompt(CKPT, "nodes_sampler/long", width=16, height=16, frames=2, steps=200,
                                      lookahead=-1, seed=5)
    prompt_id = comfy_host.queue(long_prompt)
    deadline = time.monotonic() + 120
    while started_count(comfy_host) == before:
        assert time.monotonic() < deadline, "the long run did not start"
        time.sleep(0.1)
    time.sleep(1.0)  # inside the first forward-mode pass
    interrupted_at = time.monotonic()
    comfy_host.interrupt()
    while (entry := comfy_host.history(prompt_id)) is None:
        assert time.monotonic() - interrupted_at < 60, "the run did not stop after /interrupt"
        time.sleep(0.05)
    stopped_after = time.monotonic() - interrupted_at
    events = [event for event, _ in entry["status"]["messages"]]
    assert "execution_interrupted" in events and "execution_success" not in events, events
    assert stopped_after < 15.0, f"took {stopped_after:.1f} s to stop"

    outputs = comfy_host.run(graphs.titan_prompt(CKPT, "nodes_sampler/after_interrupt", seed=5, **CHEAP), timeout=300)
    assert len(guided_rows(report_of(outputs))) == 1


@pytest.mark.parametrize("overrides, message", [
    (dict(guess={"kind": "sampled_gradient", "sampled_frames": 5}), "sampled frames (5) exceed the 2 latent frames"),
    (dict(guess={"kind": "mixed", "frame_choice": "fixed", "frame_indices": "0, 4"}), "indices [4] are outside"),
    (dict(guess={"kind": "sampled_gradient", "frame_choice": "fixed", "frame_indices": "one"}), "whole numbers"),
    (dict(steps=3, lookahead=5), "look-ahead of 5 steps exceeds the 2 steps"),
    (dict(frames_per_video=3), "latent batch of 2 cannot be split into videos of 3 frames"),
    (dict(per_frame=True, objective={"mode": "video"}), "per-frame derivatives need per-frame losses"),
    (dict(sampler="heun", eta=0.5), "set eta to 0 for heun"),
    (dict(method={"method": "doodl"}, eta=0.5), "DOODL inverts deterministic steps"),
    (dict(guidance_start=0.8, guidance_end=0.2), "0 <= start <= end <= 1"),
    # ComfyUI does not check V3 combo values before execution; the node names the valid choices
    (dict(guess={"kind": "newton"}), "unknown gradient guess 'newton'; choose one of"),
    # NaN passes ComfyUI's min / max check; the sampler names the widget (issue #18)
    (dict(strength=float("nan")), "'strength' must be a finite number from 0 to 10, got nan"),
    (dict(cfg=float("nan")), "'cfg' must be a finite number from 0 to 100, got nan"),
    (dict(denoise=1e-6), "'denoise' 1e-06 with 2 steps needs a schedule of"),
])
def test_invalid_inputs_give_a_clear_error_and_the_server_keeps_serving(comfy_host, overrides, message):
    knobs = {**CHEAP, **overrides}
    with pytest.raises(ComfyExecutionError) as caught:
        comfy_host.run(graphs.titan_prompt(CKPT, "nodes_sampler/invalid", **knobs), timeout=300)
    assert message in caught.value.details["exception_message"]
    assert caught.value.details["exception_type"].endswith("ValueError")
    assert comfy_host.is_running()


def test_denoise_zero_returns_the_input_latent(comfy_host):
    """As the tooltip says (it divided by zero before)."""
    outputs = comfy_host.run(graphs.titan_prompt(CKPT, "nodes_sampler/denoise_zero", **{**CHEAP, "denoise": 0.0}),
                             timeout=300)
    assert "denoise is 0: the latent was returned unchanged" in report_of(outputs)
    assert not latent_of(comfy_host, outputs).any()  # the empty latent, not sampled noise


def test_out_of_range_widgets_are_rejected_before_execution(comfy_host):
    with pytest.raises(ComfyValidationError) as caught:
        comfy_host.queue(graphs.titan_prompt(CKPT, "nodes_sampler/rejected", **{**CHEAP, "lookahead": -2}))
    assert caught.value.response["node_errors"]["sampler"]["errors"][0]["type"] == "value_smaller_than_min"
    outputs = comfy_host.run(graphs.titan_prompt(CKPT, "nodes_sampler/still_serving", seed=9, **CHEAP), timeout=300)
    assert len(guided_rows(report_of(outputs))) == 1
