"""Issue #18 through a real ComfyUI host on the embedded model: every widget checked as the API sent it (a real
bool, a whole int, a finite number), nothing non-finite ever leaves a node, overshooting estimates handled by
the guidance, loaders name the file they could not read, and a failed prompt never changes the next one.

One host (this pack only) serves the module; graphs are tiny (1 video of 16 frames at 32x32, 2-3 steps).
"""

from __future__ import annotations

import copy
import math
import tempfile

import pytest
import torch
from safetensors.torch import load_file

from testing.comfy_host import PACK_LINK_DIR, ComfyExecutionError, ComfyHost

GUIDANCE = {"sampler": "euler", "eta": 0.0, "strength": 0.07, "strength_schedule": "constant", "lookahead": 0,
            "guidance_start": 0.0, "guidance_end": 1.0, "iterations": 1, "optimizer": "normalized_relative",
            "max_grad_norm": 0.0, "per_frame": False, "decode_chunk_frames": 0, "frames_per_video": 0}
GUESS = {"kind": "random", "k": 1, "sampled_frames": 2, "frame_choice": "even", "frame_indices": "",
         "expansion": "tile", "random_weight": 0.5}
METHOD = {"method": "titan", "estimator": "jvp", "checkpoint": False, "baseline_update": "plain", "freedom_rho": 1.0,
          "freedom_schedule": "sqrt_alpha", "freedom_repeats": 1, "mpgd_scale": 1.0, "mpgd_schedule": "constant",
          "mpgd_iterations": 1, "tfg_rho": 1.0, "tfg_mu": 1.0, "tfg_gamma": 0.01, "tfg_recurrence": 1,
          "tfg_iterations": 1, "tfg_mc_samples": 4, "doodl_iterations": 1, "doodl_lr": 0.5, "doodl_mix": 0.93}


def embedded_prompt(*, seed: int = 3, steps: int = 2, cfg: float = 1.0, denoise: float = 1.0, weight: float = 1.0,
                    guess: dict | None = None, method: dict | None = None, classifier: str | None = None,
                    unet: str = "embedded_unet.safetensors", tag: str = "run", **knobs) -> dict:
    """Embedded loader -> empty latent (1 video) -> attribute objective (red) -> TitanGuideSampler -> SaveLatent and
    the report (PreviewAny). `guess` / `method`: overrides of a connected TitanGradientGuess / TitanGuidanceMethod."""
    sampler = {"model": ["load", 0], "positive": ["load", 2], "negative": ["load", 3], "latent_image": ["latent", 0],
               "vae": ["load", 1], "objective": ["objective", 0], "seed": seed, "steps": steps, "cfg": cfg,
               "scheduler": "normal", "denoise": denoise, **GUIDANCE, **knobs}
    prompt = {
        "load": {"class_type": "TitanEmbeddedModelLoader", "inputs": {"unet_name": unet}},
        "latent": {"class_type": "TitanEmbeddedEmptyLatent", "inputs": {"videos": 1}},
        "objective": {"class_type": "TitanAttributeObjective", "inputs": {
            "colour": "red", "shape": "any", "direction": "any", "speed": "any", "weight": weight,
            "classifier_name": classifier or "embedded_classifier.safetensors"}},
        "sampler": {"class_type": "TitanGuideSampler", "inputs": sampler},
        "save": {"class_type": "SaveLatent", "inputs": {"samples": ["sampler", 0], "filename_prefix": f"hard/{tag}"}},
        "report": {"class_type": "PreviewAny", "inputs": {"source": ["sampler", 1]}},
    }
    if guess is not None:
        prompt["guess"] = {"class_type": "TitanGradientGuess", "inputs": {**GUESS, **guess}}
        sampler["guess"] = ["guess", 0]
    if method is not None:
        prompt["method"] = {"class_type": "TitanGuidanceMethod", "inputs": {**METHOD, **method}}
        sampler["method"] = ["method", 0]
    return copy.deepcopy(prompt)


@pytest.fixture(scope="module")
def host():
    """A ComfyUI server with only titan-guide loaded."""
    with tempfile.TemporaryDirectory(prefix="titan_hardening_host_") as workdir:
        server = ComfyHost(workdir, custom_node_dirs=[PACK_LINK_DIR])
        server.start_or_print_log()
        yield server
        server.stop()


def latent_of(host, outputs: dict) -> torch.Tensor:
    (path,) = host.output_files({"save": outputs["save"]}, key="latents")
    return load_file(str(path))["latent_tensor"]


def report_of(outputs: dict) -> str:
    return outputs["report"]["text"][0]


def error_of(host, prompt: dict) -> dict:
    """The execution error's details of a prompt that must fail."""
    with pytest.raises(ComfyExecutionError) as caught:
        host.run(prompt, timeout=300)
    return caught.value.details


@pytest.fixture(scope="module")
def clean(host):
    """The latent of a clean guided run of `embedded_prompt()` (what every later valid prompt must equal)."""
    return latent_of(host, host.run(embedded_prompt(tag="clean"), timeout=300))


# --- item 1: every widget as the API sent it -----------------------------------------------------------------
@pytest.mark.parametrize("overrides, message", [
    # ComfyUI converts before a node runs: bool("false") is True, int(6.7) is 6 (each silently ran before)
    (dict(per_frame="false"), "'per_frame' must be true or false, got 'false'"),
    (dict(per_frame=0), "'per_frame' must be true or false, got 0"),
    (dict(steps=6.7), "'steps' must be a whole number, got 6.7"),
    (dict(lookahead=0.5), "'lookahead' must be a whole number, got 0.5"),
    (dict(seed=True), "'seed' must be a whole number, got True"),
    (dict(strength="nan"), "'strength' must be a number, got 'nan'"),
    # NaN passes ComfyUI's min / max check (every comparison with NaN is false)
    (dict(denoise=float("nan")), "'denoise' must be a finite number from 0 to 1, got nan"),
    (dict(max_grad_norm=float("nan")), "'max_grad_norm' must be a finite number from 0 to 1e+06, got nan"),
    (dict(guidance_end=float("nan")), "'guidance_end' must be a finite number from 0 to 1, got nan"),
    (dict(cfg=float("nan")), "'cfg' must be a finite number from 0 to 100, got nan"),
    (dict(method={"method": "freedom", "freedom_rho": float("nan")}),
     "'freedom_rho' must be a finite number from 0 to 1000, got nan"),
    (dict(method={"method": "mpgd", "mpgd_scale": float("nan")}),
     "'mpgd_scale' must be a finite number from 0 to 1000, got nan"),
    (dict(method={"method": "doodl", "doodl_lr": float("nan")}),
     "'doodl_lr' must be a finite number from 0 to 100, got nan"),
    (dict(method={"checkpoint": "true"}), "'checkpoint' must be true or false, got 'true'"),
    (dict(method={"method": "tfg", "tfg_recurrence": 1.5}), "'tfg_recurrence' must be a whole number, got 1.5"),
    (dict(guess={"k": 2.5}), "'k' must be a whole number, got 2.5"),
    (dict(guess={"kind": "mixed", "random_weight": float("nan")}),
     "'random_weight' must be a finite number from 0 to 1, got nan"),
])
def test_every_widget_is_checked_as_the_api_sent_it(host, overrides, message):
    details = error_of(host, embedded_prompt(tag="invalid", **overrides))
    assert message in details["exception_message"], details["exception_message"]
    assert details["exception_type"].endswith("ValueError")


def test_integral_floats_and_real_bools_are_accepted(host, clean):
    """6.0 for an int widget is a whole number (JSON has one number type); the result is the clean run's."""
    outputs = host.run(embedded_prompt(tag="integral", steps=2.0, lookahead=0.0, per_frame=False), timeout=300)
    assert torch.equal(latent_of(host, outputs), clean)


# --- item 2: nothing non-finite leaves a node; overshooting estimates are the guidance's business -------------
def test_an_overshooting_estimate_is_clamped_for_scoring_not_reported_as_bad_data(host):
    """Strength 10 (the maximum) with Adam and objective weight 100 drove the decoded estimate far outside [0, 1]:
    the objective refused it as "video values must lie in [0, 1] ... Convert [-1, 1] data", advice for user data."""
    outputs = host.run(embedded_prompt(tag="overshoot", steps=3, strength=10.0, optimizer="adam", weight=100.0),
                       timeout=300)
    assert torch.isfinite(latent_of(host, outputs)).all()
    report = report_of(outputs)
    assert "guidance clamped it to that range for scoring" in report, report
    assert "must lie in [0, 1]" not in report


def test_a_non_finite_input_latent_is_refused_naming_where_it_came_from(host):
    """A NaN latent from upstream (LatentMultiply by NaN passes ComfyUI's range check) came back as an all-NaN
    latent with status success; now the sampler refuses it and returns nothing non-finite."""
    prompt = embedded_prompt(tag="nan_input", denoise=0.5)
    prompt["scaled"] = {"class_type": "LatentMultiply", "inputs": {"samples": ["latent", 0], "multiplier": math.nan}}
    prompt["sampler"]["inputs"]["latent_image"] = ["scaled", 0]
    details = error_of(host, prompt)
    assert "the input latent holds NaN or infinite values" in details["exception_message"]
    assert "check the node that made it" in details["exception_message"]


# --- item 3: loaders name the file they could not read -------------------------------------------------------
def test_a_truncated_embedded_unet_names_the_file_and_its_folder_and_the_next_prompt_is_clean(host, clean):
    from testing.comfy_host import REPO_ROOT
    data = (REPO_ROOT / "models" / "titan_guide" / "embedded_unet.safetensors").read_bytes()
    folder = host.models_dir / "titan_guide"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cut_unet.safetensors").write_bytes(data[:6])  # SafetensorError: incomplete metadata, no file name
    details = error_of(host, embedded_prompt(tag="cut", unet="cut_unet.safetensors"))
    assert f"'cut_unet.safetensors' in the folder '{folder}'" in details["exception_message"]
    assert "embedded_unet.safetensors" in details["exception_message"]
    assert torch.equal(latent_of(host, host.run(embedded_prompt(tag="after_cut"), timeout=300)), clean)


# --- item 4: warnings gathered before an exception survive ----------------------------------------------------
def test_warnings_gathered_before_an_error_reach_the_log(host):
    """The record's warnings were set only after the sampler returned, so an error (here: /interrupt) dropped
    them: the overshoot warnings of the first steps of a long run must be in the server log."""
    import time
    before = host.log_text().count("guided sampling started")
    prompt_id = host.queue(embedded_prompt(tag="warn_then_stop", steps=400, strength=10.0, optimizer="adam",
                                           weight=100.0))
    deadline = time.monotonic() + 120
    while host.log_text().count("guided sampling started") == before:
        assert time.monotonic() < deadline, "the long run did not start"
        time.sleep(0.1)
    time.sleep(4.0)  # several guided steps, each of which overshoots
    host.interrupt()
    while host.history(prompt_id) is None:
        assert time.monotonic() < deadline + 60, "the run did not stop"
        time.sleep(0.1)
    assert "TITAN-Guide (before the error): the decoded estimate overshot" in host.log_text()
