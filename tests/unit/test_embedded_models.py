"""Embedded UNet, classifiers, committed weights and the attribute-classifier objective."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from embedded import codec
from embedded.classifier import VideoAttributeClassifier, VideoJudgeClassifier, load_classifier, save_classifier
from embedded.sampling import ddim_timesteps, sample_videos
from embedded.training import evaluate_classifier, predict_attributes, saturated_fraction
from embedded.unet import (EmbeddedUNetConfig, EmbeddedVideoUNet, alphas_cumprod, load_embedded_unet,
                           save_embedded_unet)
from embedded.world import ATTRIBUTE_NAMES, ATTRIBUTES, COLOURS, NUM_FRAMES, make_batch
from objectives.attribute_classifier import (AttributeClassifierLoss, load_attribute_classifier,
                                             parse_attribute_targets)

MODELS = Path(__file__).resolve().parents[2] / "models" / "titan_guide"
UNET_FILE = MODELS / "embedded_unet.safetensors"
CLASSIFIER_FILE = MODELS / "embedded_classifier.safetensors"
JUDGE_FILE = MODELS / "embedded_judge.safetensors"
RECORD_FILE = MODELS / "embedded_training.json"
# Held-out accuracy floors: the accuracy measured on 2048 held-out clips after training
# (embedded_training.json: guiding classifier 1.0 / 0.911 / 1.0 / 1.0 for colour / shape /
# direction / speed, judge 1.0 everywhere) minus a margin for the 64-clip sample used here.
ACCURACY_MARGIN = 0.1

TINY = EmbeddedUNetConfig(base_channels=8, channel_multipliers=(1, 2), norm_groups=4, attention_head_channels=4,
                          num_frames=4, temporal_attention_levels=(True, True))


def _randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter random values (zero-initialised output layers would hide bugs)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype) * 0.2)
    return model


def test_schedule_is_the_sd15_scaled_linear_schedule():
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    expected = np.cumprod(1.0 - betas)
    assert np.allclose(alphas_cumprod().numpy(), expected, rtol=1e-12, atol=0)
    final = float(alphas_cumprod()[-1])
    assert abs(((1 - final) / final) ** 0.5 - 14.614642) < 1e-4  # SD1.5's sigma_max in ComfyUI
    assert ddim_timesteps(20)[0] == 999 and ddim_timesteps(20)[-1] == 0 and len(ddim_timesteps(20)) == 20


def test_unet_shape_contract_and_errors():
    model = _randomised(EmbeddedVideoUNet(TINY)).eval()
    x = torch.randn(2 * TINY.num_frames, *codec.LATENT_SHAPE)
    with torch.no_grad():
        out = model(x, torch.full((x.shape[0],), 250.0))
        scalar = model(x, 250.0)
    assert out.shape == x.shape
    assert torch.allclose(out, scalar)
    with pytest.raises(ValueError, match="multiple of num_frames=4"):
        model(torch.randn(6, *codec.LATENT_SHAPE), 10.0)
    with pytest.raises(ValueError, match="expects x of shape"):
        model(torch.randn(4, 4, 16, 16), 10.0)
    with pytest.raises(ValueError, match="timesteps"):
        model(x, torch.zeros(3))


def test_temporal_attention_mixes_frames_within_a_clip_only():
    model = _randomised(EmbeddedVideoUNet(TINY)).eval()
    frames = TINY.num_frames
    x = torch.randn(2 * frames, *codec.LATENT_SHAPE)
    changed = x.clone()
    changed[0] = torch.randn(codec.LATENT_SHAPE)  # frame 0 of clip 0
    with torch.no_grad():
        before, after = model(x, 500.0), model(changed, 500.0)
    difference = (before - after).abs().flatten(1).amax(1)
    assert bool((difference[1:frames] > 1e-4).all()), "other frames of the same clip must see the change"
    assert float(difference[frames:].max()) == 0.0, "frames of another clip must not"


def test_unet_jvp_matches_autograd_in_float64():
    model = _randomised(EmbeddedVideoUNet(TINY)).double().eval()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2 * TINY.num_frames, *codec.LATENT_SHAPE, generator=generator, dtype=torch.float64)
    tangent = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    cotangent = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    timesteps = torch.tensor([3.0] * TINY.num_frames + [870.0] * TINY.num_frames, dtype=torch.float64)

    def function(latent):
        return model(latent, timesteps)

    _, jvp = torch.func.jvp(function, (x,), (tangent,))
    leaf = x.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad((function(leaf) * cotangent).sum(), leaf)
    forward_value = float((jvp * cotangent).sum().detach())
    reverse_value = float((gradient * tangent).sum())
    assert abs(forward_value - reverse_value) <= 1e-9 * max(1.0, abs(reverse_value))
    step = 1e-6
    with torch.no_grad():
        finite_difference = (function(x + step * tangent) - function(x - step * tangent)) / (2 * step)
    jvp = jvp.detach()
    assert float((finite_difference - jvp).abs().max()) < 1e-6 * max(1.0, float(jvp.abs().max()))


@pytest.mark.parametrize("architecture", [VideoAttributeClassifier, VideoJudgeClassifier])
def test_classifier_jvp_matches_autograd_and_round_trips(architecture, tmp_path):
    torch.manual_seed(0)
    model = architecture().double().eval()
    video = make_batch(seed=8, start=0, count=2).video.double()
    tangent = torch.randn_like(video)

    def colour_logit(v):
        return model(v)["colour"][:, 1]

    _, jvp = torch.func.jvp(colour_logit, (video,), (tangent,))
    leaf = video.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(colour_logit(leaf).sum(), leaf)
    per_clip = (gradient * tangent).flatten(1).sum(1)
    assert torch.allclose(jvp, per_clip, rtol=1e-9, atol=1e-10)

    path = tmp_path / "classifier.safetensors"
    save_classifier(model.float(), path)
    loaded = load_classifier(path)
    assert type(loaded) is architecture
    with torch.no_grad():
        assert torch.equal(loaded(video.float())["speed"], model(video.float())["speed"])
    with pytest.raises(ValueError, match="attribute classifiers expect"):
        loaded(video.float()[:, :8])


def test_loaders_reject_missing_and_wrong_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="models/titan_guide"):
        load_embedded_unet(tmp_path / "nothing.safetensors")
    with pytest.raises(FileNotFoundError, match="models/titan_guide"):
        load_attribute_classifier(tmp_path / "nothing.safetensors")
    unet_path = tmp_path / "unet.safetensors"
    save_embedded_unet(EmbeddedVideoUNet(TINY), unet_path)
    assert load_embedded_unet(unet_path).config == TINY
    with pytest.raises(ValueError, match="not an embedded attribute classifier"):
        load_attribute_classifier(unet_path)
    classifier_path = tmp_path / "classifier.safetensors"
    save_classifier(VideoJudgeClassifier(), classifier_path)
    with pytest.raises(ValueError, match="not an embedded UNet"):
        load_embedded_unet(classifier_path)


def test_attribute_targets_parse_and_reject_bad_requests():
    assert parse_attribute_targets("colour=red, direction=left") == {"colour": 0, "direction": 0}
    assert parse_attribute_targets(["shape=triangle"]) == {"shape": 2}
    assert parse_attribute_targets({"speed": "fast"}) == {"speed": 1}
    with pytest.raises(ValueError, match="no attribute target"):
        parse_attribute_targets("  ")
    with pytest.raises(ValueError, match="given twice"):
        parse_attribute_targets("colour=red, colour=blue")
    with pytest.raises(ValueError, match="red, green, blue, yellow"):
        parse_attribute_targets("colour=purple")


# ---- committed weights -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def record():
    return json.loads(RECORD_FILE.read_text())


@pytest.fixture(scope="module")
def classifier():
    return load_attribute_classifier(CLASSIFIER_FILE)


@pytest.fixture(scope="module")
def judge():
    return load_classifier(JUDGE_FILE)


def test_committed_weight_files_fit_the_size_budget(record):
    files = [UNET_FILE, CLASSIFIER_FILE, JUDGE_FILE]
    total = sum(path.stat().st_size for path in files)
    assert total <= 20 * 1024 * 1024
    assert record["weight_files_bytes"] == {path.name: path.stat().st_size for path in sorted(files)}


@pytest.mark.parametrize("which", ["classifier", "judge"])
def test_committed_classifiers_are_accurate_on_fresh_clips(which, record, classifier, judge):
    model = classifier if which == "classifier" else judge
    accuracy = evaluate_classifier(model, world_seed=4242, clips=64, device=torch.device("cpu"))
    for name in ATTRIBUTE_NAMES:
        floor = record[which]["held_out_accuracy"][name] - ACCURACY_MARGIN
        assert accuracy[name] >= floor, (which, name, accuracy)
        assert accuracy[name] >= 0.8, (which, name, accuracy)


def test_attribute_loss_prefers_the_true_attribute_and_adds_up(classifier):
    batch = make_batch(seed=31, start=0, count=8)
    losses = torch.stack([AttributeClassifierLoss(classifier, f"colour={colour}")(batch.video) for colour in COLOURS], 1)
    assert losses.shape == (8, len(COLOURS))
    assert torch.equal(losses.argmin(dim=1), batch.labels["colour"])
    combined = AttributeClassifierLoss(classifier, "colour=red, direction=left")(batch.video)
    separate = (AttributeClassifierLoss(classifier, "colour=red")(batch.video)
                + AttributeClassifierLoss(classifier, "direction=left")(batch.video))
    assert torch.allclose(combined, separate, atol=1e-5)
    with pytest.raises(ValueError, match="at least 16"):
        AttributeClassifierLoss(classifier, "colour=red")(batch.video[:, :8])


def test_attribute_loss_forward_and_reverse_derivatives_agree(classifier):
    objective = AttributeClassifierLoss(classifier, "colour=blue, speed=fast")
    video = make_batch(seed=32, start=0, count=2).video
    tangent = torch.randn(video.shape, generator=torch.Generator().manual_seed(0))
    _, jvp = torch.func.jvp(objective, (video,), (tangent,))
    leaf = video.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(objective(leaf).sum(), leaf)
    assert torch.allclose(jvp, (gradient * tangent).flatten(1).sum(1), rtol=1e-3, atol=1e-4)
    assert not any(parameter.requires_grad for parameter in objective.parameters())


# Share of clips the judge sees with the target after 40 normalised descent steps, measured with
# the committed classifiers: direction 0.87, colour 0.5, speed 1.0, shape 1.0.  (With a plainly
# trained classifier of 100 % accuracy it was 0.0 for all four: its gradients were adversarial.)
@pytest.mark.parametrize("target, floor", [("direction=left", 0.7), ("colour=green", 0.3), ("speed=fast", 0.8),
                                           ("shape=triangle", 0.8)])
def test_guiding_gradients_change_what_the_independent_judge_sees(target, floor, classifier, judge):
    """Descending the objective in pixel space must move the clips towards the target, not fool the
    classifier with an invisible perturbation: the judge (never used for guidance) must agree."""
    name, value = target.split("=")
    index = ATTRIBUTES[name].index(value)
    batch = make_batch(seed=2718, start=0, count=16)
    start = batch.video[batch.labels[name] != index]  # clips that do not show the target yet
    assert bool((predict_attributes(judge, start)[name] != index).all())
    objective = AttributeClassifierLoss(classifier, target)
    video = start
    for _ in range(40):  # normalised steps of L2 length 1 (a clip has 49152 values)
        leaf = video.clone().requires_grad_(True)
        (gradient,) = torch.autograd.grad(objective(leaf).sum(), leaf)
        video = video - gradient / gradient.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1, 1)
    with torch.no_grad():
        assert float(objective(video).mean()) < 0.5 * float(objective(start).mean())
    judged = predict_attributes(judge, video.clamp(0, 1))[name]
    assert float((judged == index).float().mean()) >= floor, judged.tolist()


def test_committed_unet_samples_are_diverse_and_look_like_the_data(judge):
    unet = load_embedded_unet(UNET_FILE)
    videos = sample_videos(unet, num_clips=12, steps=10, seed=123)
    assert videos.shape == (12, NUM_FRAMES, 3, 32, 32)
    real = make_batch(seed=555, start=0, count=64).video
    # Measured on 256 samples after training: mean 0.319 (data 0.315), std 0.088 (data 0.151; the
    # samples' backgrounds vary less in brightness), saturated (object) pixels 3.4% (data 5.4%).
    assert abs(float(videos.mean()) - float(real.mean())) < 0.04
    assert 0.4 < float(videos.std()) / float(real.std()) < 1.3
    assert float(((videos < -0.05) | (videos > 1.05)).float().mean()) < 0.01
    assert 0.4 < saturated_fraction(videos.clamp(0, 1)) / saturated_fraction(real) < 2.0
    clamped = videos.clamp(0, 1)
    judged = predict_attributes(judge, clamped)
    for name in ("colour", "direction"):
        assert len(set(judged[name].tolist())) >= 3, (name, judged[name].tolist())
    for name in ("shape", "speed"):
        assert len(set(judged[name].tolist())) >= 2, (name, judged[name].tolist())
    # Recognisable: the independent judge is confident about the clips (0.98 measured on 256).
    with torch.no_grad():
        logits = judge(clamped)
    confidence = torch.stack([logits[name].softmax(1).amax(1) for name in ATTRIBUTE_NAMES]).mean()
    assert float(confidence) > 0.85
