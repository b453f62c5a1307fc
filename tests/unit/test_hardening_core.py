"""Issue #18 in the engine (no host): widget checks, the non-finite guard of the sampler loop, overshooting
estimates clamped for scoring, out-of-memory messages for CPU allocation failures, loaders naming the file."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import guidance_core as gc
from core_fixtures import video_problem
from guidance_core.validation import (MEMORY_KNOBS, NonFiniteLatentError, SentValues, Widget, check_widgets,
                                      denoise_schedule_length, is_out_of_memory, out_of_memory_message)
from objectives.base import clamp_for_scoring
from objectives.combination import ObjectiveSpec


# --- widgets ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("widget, value, message", [
    (Widget("per_frame", "bool"), "false", "'per_frame' must be true or false, got 'false'"),
    (Widget("per_frame", "bool"), 1, "'per_frame' must be true or false, got 1"),
    (Widget("steps", "int", 1, 10000), 6.7, "'steps' must be a whole number, got 6.7; it is not rounded"),
    (Widget("steps", "int", 1, 10000), True, "'steps' must be a whole number, got True"),
    (Widget("steps", "int", 1, 10000), math.nan, "'steps' must be a whole number, got nan"),
    (Widget("strength", "float", 0, 10), math.nan, "'strength' must be a finite number from 0 to 10, got nan"),
    (Widget("strength", "float", 0, 10), "0.1", "'strength' must be a number, got '0.1'"),
    (Widget("strength", "float", 0, 10), 11.0, "'strength' must be a finite number from 0 to 10, got 11.0"),
])
def test_a_widget_value_that_does_not_fit_is_refused_naming_the_widget(widget, value, message):
    with pytest.raises(ValueError) as caught:
        widget.check(value)
    assert message in str(caught.value)


def test_fitting_values_pass_as_their_type_and_sent_values_win_over_converted_ones():
    assert Widget("steps", "int", 1, 10).check(6.0) == 6 and isinstance(Widget("steps", "int").check(6.0), int)
    assert Widget("cfg", "float", 0, 100).check(7) == 7.0
    assert Widget("kind", "other").check("random") == "random"
    widgets = {"per_frame": Widget("per_frame", "bool"), "steps": Widget("steps", "int", 1, 100)}
    assert check_widgets(widgets, {"per_frame": True, "steps": 6}) == {"per_frame": True, "steps": 6}
    with pytest.raises(ValueError, match="'per_frame' must be true or false, got 'false'"):
        check_widgets(widgets, {"per_frame": True, "steps": 6}, {"per_frame": "false"})  # the host made it True


def test_the_sent_values_are_kept_for_the_pack_nodes_only_without_changing_the_prompt():
    prompt = {"1": {"class_type": "TitanGuideSampler", "inputs": {"per_frame": "false", "steps": 6.7,
                                                                  "model": ["2", 0]}},
              "2": {"class_type": "KSampler", "inputs": {"steps": 6.7}}}
    sent = SentValues(limit=2)
    sent.keep(prompt, {"TitanGuideSampler"})
    assert prompt["1"]["inputs"] == {"per_frame": "false", "steps": 6.7, "model": ["2", 0]}  # as sent
    inputs = prompt["1"]["inputs"]
    inputs.update(per_frame=True, steps=6)  # what the host's validation does in place
    assert sent.of(inputs) == sent.of_node(prompt, "1") == {"per_frame": "false", "steps": 6.7}
    assert sent.of_node(None, "1") is None and sent.of_node(prompt, "9") is None
    assert sent.of(prompt["2"]["inputs"]) is None and sent.of({"per_frame": "false"}) is None
    sent.keep(None, {"TitanGuideSampler"})  # not a prompt: nothing to do
    for _ in range(3):  # bounded: the oldest nodes are forgotten
        sent.keep({"n": {"class_type": "TitanGuideSampler", "inputs": {"steps": 1}}}, {"TitanGuideSampler"})
    assert sent.of(inputs) is None


def test_a_tiny_denoise_schedule_is_refused_saying_what_to_change():
    assert denoise_schedule_length(20, 0.5, 10000) == 40
    with pytest.raises(ValueError, match="raise 'denoise' to at least 0.002 or lower 'steps'"):
        denoise_schedule_length(20, 1e-6, 10000)


# --- the non-finite guard of the sampler loop ---------------------------------------------------------------
class BlowUp:
    """A method whose update turns the latent NaN at one step (as a NaN strength did)."""

    knob = "'strength'"

    def __init__(self, at: int):
        self.at = at

    def guide(self, x, i, ctx):
        report = {"step": i, "sigma": float(ctx.sigmas[i]), "loss": [1.0], "grad_norm": [1.0], "skipped": None}
        return ctx.plain_step(x * math.nan if i == self.at else x, i), report


def test_an_update_that_makes_the_latent_non_finite_is_skipped_with_the_report_and_a_warning():
    denoise, loss, layout, sigmas, x = video_problem()
    unguided = gc.sample(denoise, x, sigmas, None, loss=loss, layout=layout)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = gc.sample(denoise, x, sigmas, BlowUp(at=len(sigmas) - 2), loss=loss, layout=layout)
    assert torch.isfinite(result.x).all()
    assert torch.equal(result.x, unguided.x)  # the blown-up step was taken unguided
    assert "step taken without guidance; lower 'strength'" in result.reports[-1]["skipped"]
    assert any(f"guidance step {len(sigmas) - 2}: the update made the latent non-finite" in str(w.message)
               for w in caught)
    assert "made the latent non-finite" in gc.format_report(gc.RunRecord(reports=result.reports))


def test_a_non_finite_sampler_step_fails_naming_cfg_and_a_non_finite_input_is_refused():
    denoise, loss, layout, sigmas, x = video_problem()

    def broken(z, sigma):
        out = denoise(z, sigma)
        return out * math.inf if float(sigma) < float(sigmas[2]) else out

    for method in (None, gc.Titan(end=0.3)):
        with pytest.raises(NonFiniteLatentError, match="unguided step 3 .* no guidance update caused this: lower 'cfg'"):
            gc.sample(broken, x, sigmas, method, loss=loss, layout=layout)
    with pytest.raises(NonFiniteLatentError, match="the input latent holds NaN or infinite values"):
        gc.sample(denoise, x * math.nan, sigmas, None, loss=loss, layout=layout)


@pytest.mark.parametrize("method, knob", [
    (gc.baselines.FreeDoM(end=1.0), "'freedom_rho'"), (gc.baselines.MPGD(end=1.0), "'mpgd_scale'"),
    (gc.baselines.TFG(end=1.0), "'tfg_rho' or 'tfg_mu'"), (gc.Titan(end=1.0), "'strength'"),
])
def test_every_method_names_the_widget_that_scales_its_updates(method, knob):
    assert method.knob == knob
    assert gc.baselines.DOODL().knob == "'doodl_lr'"


# --- overshooting decoded estimates ---------------------------------------------------------------------------
def test_an_estimate_inside_the_scored_range_is_untouched_and_one_beyond_it_is_clamped_with_a_warning():
    video = torch.rand(1, 2, 3, 4, 4) * 1.4 - 0.2  # inside [-0.25, 1.25]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert clamp_for_scoring(video, 0.25, "the objective 'x'") is video
        assert not caught
        far = clamp_for_scoring(video * 40, 0.25, "the objective 'x'")
    assert far.min() >= -0.25 and far.max() <= 1.25
    assert "overshot the [-0.25, 1.25] range that the objective 'x' scores" in str(caught[0].message)
    assert clamp_for_scoring(video * 40, None, "x") is not None  # None: any values


def test_objective_specs_score_the_clamped_estimate_so_a_far_overshoot_is_no_user_error():
    from objectives.base import VideoObjective

    class Brightness(VideoObjective):
        def forward(self, video):
            self.check_video(video)
            return video.mean(dim=(1, 2, 3, 4))

    spec = ObjectiveSpec(Brightness(), 1.0, "brightness")
    video = torch.rand(1, 2, 3, 4, 4) * 30 - 10  # as a weight-100 estimate: far outside [0, 1]
    with pytest.raises(ValueError, match="must lie in"):
        spec.module(video)  # the objective itself still refuses such data from a user
    with pytest.warns(UserWarning, match="clamped it to that range for scoring"):
        assert torch.isfinite(spec.losses(video, False, None)).all()


# --- out of memory -----------------------------------------------------------------------------------------------
def test_a_cpu_allocation_failure_is_out_of_memory_with_the_widget_names():
    try:
        torch.empty(2**60, dtype=torch.uint8)  # a real allocation failure on the CPU (a plain RuntimeError)
    except RuntimeError as error:
        cpu_error = error
    assert not isinstance(cpu_error, torch.OutOfMemoryError) and is_out_of_memory(cpu_error)
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert not is_out_of_memory(RuntimeError("shapes do not match"))
    message = out_of_memory_message("titan", "2 step(s)", cpu_error, ["guidance step 1: update skipped"])
    for widget in ("'decode_chunk_frames'", "'lookahead'", "'per_frame'", "'k'", "'checkpoint'"):
        assert widget in message
    assert "Warnings before the error: guidance step 1: update skipped." in message
    assert len(MEMORY_KNOBS) >= 5


# --- loaders name the file they could not read ------------------------------------------------------------------
def truncated_copy(source, folder, name: str):
    """The first half of `source` (a safetensors file) as folder/name, as an interrupted download leaves it."""
    data = open(source, "rb").read()
    target = folder / name
    target.write_bytes(data[: len(data) // 2])
    return target


def test_a_truncated_embedded_unet_or_classifier_names_the_file_its_folder_and_what_was_expected(tmp_path):
    from embedded import CLASSIFIER_FILENAME, UNET_FILENAME, load_classifier
    from embedded.unet import load_embedded_unet
    from objectives.attribute_classifier import load_attribute_classifier
    from testing.comfy_host import REPO_ROOT

    models = REPO_ROOT / "models" / "titan_guide"
    unet = truncated_copy(models / UNET_FILENAME, tmp_path, "cut_unet.safetensors")
    header_only = tmp_path / "header_cut.safetensors"
    header_only.write_bytes(unet.read_bytes()[:6])  # SafetensorError: incomplete metadata
    for path in (unet, header_only):
        with pytest.raises(ValueError) as caught:
            load_embedded_unet(path)
        message = str(caught.value)
        assert f"'{path.name}' in the folder '{tmp_path}'" in message and "truncated" in message
        assert "embedded_unet.safetensors" in message
    classifier = truncated_copy(models / CLASSIFIER_FILENAME, tmp_path, "cut_classifier.safetensors")
    for load in (load_classifier, load_attribute_classifier):
        with pytest.raises(ValueError) as caught:
            load(classifier)
        assert f"'cut_classifier.safetensors' in the folder '{tmp_path}'" in str(caught.value)
        assert "embedded_classifier.safetensors" in str(caught.value)


def test_a_truncated_imagebind_clip_or_dover_file_names_the_file_its_folder_and_what_was_expected(tmp_path):
    from safetensors.torch import save_file

    from objectives.base import load_weights_file
    from objectives.dover import _read_state_dict

    source = tmp_path / "whole.safetensors"
    save_file({"w": torch.zeros(64, 64)}, str(source))
    cut = truncated_copy(source, tmp_path, "cut.safetensors")
    with pytest.raises(ValueError) as caught:
        load_weights_file(cut, "ImageBind", "Put imagebind_huge.pth into models/imagebind/.")
    assert f"ImageBind weights file 'cut.safetensors' in the folder '{tmp_path}'" in str(caught.value)
    assert "Put imagebind_huge.pth into models/imagebind/." in str(caught.value)
    with pytest.raises(ValueError) as caught:
        _read_state_dict(cut)
    assert f"DOVER weights file 'cut.safetensors' in the folder '{tmp_path.resolve()}'" in str(caught.value)
    assert "expected the official" in str(caught.value)
