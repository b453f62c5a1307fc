"""ImageBind audio-video objective: official preprocessing parity, loader, derivatives, bad inputs."""

import math
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.func import jvp
from torch.overrides import TorchFunctionMode
from torch.utils._device import _device_constructors

from objectives.imagebind_audio import (
    HUGE_NUM_HEADS,
    MODALITIES,
    ImageBindAudioLoss,
    imagebind_config_from_state_dict,
    imagebind_tokenize,
    import_imagebind_model,
    load_imagebind,
)
from objectives.preprocess import (
    IMAGEBIND_AUDIO_MEAN,
    IMAGEBIND_AUDIO_STD,
    audio_to_mono,
    constant_clip_windows,
    imagebind_audio_clips,
    imagebind_clip_frame_pairs,
    imagebind_crop_offsets,
    imagebind_melspec,
    imagebind_vision_frames,
)
from core_fixtures import recorded_call

# Real ImageBindModel with tiny widths; widths are multiples of imagebind_huge's head counts.
TINY = dict(
    kernel_size=(2, 56, 56), audio_kernel_size=16, audio_stride=10, out_embed_dim=16,
    vision_embed_dim=32, vision_num_blocks=2, vision_num_heads=16,
    audio_embed_dim=24, audio_num_blocks=1, audio_num_heads=12,
    text_embed_dim=32, text_num_blocks=1, text_num_heads=16,
    depth_embed_dim=16, depth_kernel_size=56, depth_num_blocks=1, depth_num_heads=8,
    thermal_embed_dim=24, thermal_kernel_size=56, thermal_num_blocks=1, thermal_num_heads=12,
    imu_embed_dim=16, imu_num_blocks=1, imu_num_heads=8,
)


@pytest.fixture(scope="module")
def imagebind():
    """The imagebind modules (models, data) after the pytorchvideo import shim."""
    model_module = import_imagebind_model()
    import imagebind.data as data_module

    return model_module, data_module


@pytest.fixture(scope="module")
def tiny_checkpoint(imagebind, tmp_path_factory):
    """A tiny random ImageBindModel saved as a plain state dict .pth (the official file's format)."""
    torch.manual_seed(0)
    model = imagebind[0].ImageBindModel(**TINY).eval()
    path = tmp_path_factory.mktemp("imagebind") / "imagebind_tiny.pth"
    torch.save(model.state_dict(), path)
    return path, model


@pytest.fixture(scope="module")
def tiny_model(tiny_checkpoint):
    """The tiny checkpoint loaded through load_imagebind, float64."""
    return load_imagebind(tiny_checkpoint[0], dtype=torch.float64)


def sine_audio(seconds, sample_rate=16000, channels=1, batch=1, seed=0):
    """ComfyUI AUDIO dict with a noisy chirp."""
    generator = torch.Generator().manual_seed(seed)
    time = torch.arange(int(seconds * sample_rate)) / sample_rate
    tone = torch.sin(2 * math.pi * (300 + 200 * time) * time)
    noise = 0.1 * torch.randn(batch, channels, time.shape[0], generator=generator)
    return {"waveform": tone + noise, "sample_rate": sample_rate}


def video_batch(seed, batch=2, frames=4, height=24, width=32):
    """Random video in (0.1, 0.9), float64."""
    generator = torch.Generator().manual_seed(seed)
    return 0.1 + 0.8 * torch.rand(batch, frames, 3, height, width, generator=generator, dtype=torch.float64)


# ---------------------------------------------------------------- preprocessing parity

@pytest.mark.parametrize("seconds", [2.0, 3.1, 0.7])
def test_melspec_equals_official_waveform2melspec(imagebind, seconds):
    from torchvision import transforms

    data = imagebind[1]
    clip = torch.randn(int(seconds * 16000), generator=torch.Generator().manual_seed(1))
    official = data.waveform2melspec(clip.clone()[None], 16000, 128, 204)  # mutates its input in place
    official = transforms.Normalize(mean=IMAGEBIND_AUDIO_MEAN, std=IMAGEBIND_AUDIO_STD)(official)
    ours = imagebind_melspec(clip)
    assert ours.shape == (1, 128, 204)
    torch.testing.assert_close(ours, official, atol=1e-5, rtol=0)


@pytest.mark.parametrize("duration", [0.5, 2.0, 3.7, 10.0])
@pytest.mark.parametrize("clips", [3, 5])
def test_clip_windows_equal_constant_clips_per_video_sampler(imagebind, duration, clips):
    from pytorchvideo.data.clip_sampling import ConstantClipsPerVideoSampler

    sampler = ConstantClipsPerVideoSampler(clip_duration=2, clips_per_video=clips)
    official = imagebind[1].get_clip_timepoints(sampler, duration)
    assert constant_clip_windows(duration, 2, clips) == [(Fraction(s), Fraction(e)) for s, e in official]


def test_audio_clips_equal_official_loader_steps(imagebind):
    """Official load_and_transform_audio_data on an in-memory waveform (each clip copied, see below)."""
    from pytorchvideo.data.clip_sampling import ConstantClipsPerVideoSampler
    from torchvision import transforms

    data = imagebind[1]
    mono = torch.randn(int(4.3 * 16000), generator=torch.Generator().manual_seed(2))
    sampler = ConstantClipsPerVideoSampler(clip_duration=2, clips_per_video=3)
    official = []
    for start, end in data.get_clip_timepoints(sampler, mono.shape[0] / 16000):
        # The official code subtracts each clip's mean in place on a view, leaking into overlapping
        # clips; we take an independent copy per clip.
        piece = mono[int(start * 16000) : int(end * 16000)].clone()[None]
        official.append(transforms.Normalize(IMAGEBIND_AUDIO_MEAN, IMAGEBIND_AUDIO_STD)(
            data.waveform2melspec(piece, 16000, 128, 204)))
    ours = imagebind_audio_clips(mono, 0.0, mono.shape[0] / 16000, 3)
    torch.testing.assert_close(ours, torch.stack(official), atol=1e-5, rtol=0)


# Two float32 CPU bilinear kernels disagree by this much (in CLIP-normalised units). torch picks the
# channels-last kernel for 3-channel inputs when it runs on one thread (UpSampleKernel.cpp,
# upsample_bilinear2d_kernel_impl_float: `at::get_num_threads() == 1 && input.size(1) == 3`) and the generic one
# otherwise. pytorchvideo resizes (C, T, H, W) clips, i.e. T = 2 "channels"; we resize (T, 3, H, W) frames, so
# with OMP_NUM_THREADS=1 the two sides take different kernels, which compute the source coordinate
# (dst + 0.5) * scale - 0.5 with different float32 rounding: up to ~1.6e-5 per pixel value at these sizes (2.8e-5
# between the kernels in the worst case here, 6e-5 normalised). A wrong size, crop offset or align_corners setting
# moves values by 1e-2 or more.
FLOAT32_RESIZE_TOLERANCE = 2e-4


@pytest.mark.parametrize("height,width", [(180, 260), (300, 200), (224, 224), (100, 100)])
def test_vision_frames_and_crops_equal_official_video_transform(imagebind, height, width):
    from pytorchvideo import transforms as pv_transforms

    data = imagebind[1]
    clip = torch.rand(3, 2, height, width, generator=torch.Generator().manual_seed(3))  # (C, T, H, W)
    official = data.SpatialCrop(224, num_crops=3)([
        data.NormalizeVideo(mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711))(
            pv_transforms.ShortSideScale(224)(clip)  # pytorchvideo accepts float32 only
        )
    ])

    def crops(frames):
        return [
            frames[:, :, top : top + 224, left : left + 224].permute(1, 0, 2, 3)
            for top, left in imagebind_crop_offsets(frames.shape[-2], frames.shape[-1], 224, 3)
        ]

    ours = crops(imagebind_vision_frames(clip.permute(1, 0, 2, 3)))  # (T, 3, h, w) frames
    exact = crops(imagebind_vision_frames(clip.permute(1, 0, 2, 3).double()))  # float64: no kernel rounding
    assert len(ours) == len(official) == len(exact) == 3
    for mine, theirs, reference in zip(ours, official, exact):
        assert mine.shape == theirs.shape == (3, 2, 224, 224)
        # official float32 geometry == our geometry evaluated exactly, up to float32 kernel rounding
        torch.testing.assert_close(theirs.double(), reference, atol=FLOAT32_RESIZE_TOLERANCE / 2, rtol=0)
        torch.testing.assert_close(mine, theirs, atol=FLOAT32_RESIZE_TOLERANCE, rtol=0)
    if (height, width) == (224, 224):  # no resize: both sides only normalise and crop, so they agree exactly
        for mine, theirs in zip(ours, official):
            torch.testing.assert_close(mine, theirs, atol=0, rtol=0)


def test_official_frame_selection_equals_uniform_temporal_subsample():
    from pytorchvideo.transforms.functional import uniform_temporal_subsample

    for frames, fps in ((16, 8), (40, 8), (37, 12.5), (10, 24)):
        pairs = imagebind_clip_frame_pairs(frames, fps, "official", clips_per_video=5)
        windows = constant_clip_windows(Fraction(frames) / Fraction(fps), 2, 5)
        assert len(pairs) == 5
        for (start, end), pair in zip(windows, pairs):
            inside = torch.tensor([k for k in range(frames) if start <= Fraction(k) / Fraction(fps) < end])
            assert tuple(uniform_temporal_subsample(inside[None], 2, temporal_dim=-1)[0].tolist()) == pair
    assert imagebind_clip_frame_pairs(5, 8, "pairs") == [(0, 1), (2, 3), (4, 4)]
    assert imagebind_clip_frame_pairs(1, 8, "pairs") == [(0, 0)]


def test_audio_mixdown_and_resampling():
    import torchaudio

    stereo = sine_audio(1.0, sample_rate=22050, channels=2, seed=4)
    expected = torchaudio.functional.resample(stereo["waveform"].mean(1), 22050, 16000)
    torch.testing.assert_close(audio_to_mono(stereo), expected)
    mono = sine_audio(1.0, sample_rate=16000, channels=1, seed=5)
    duplicated = {"waveform": mono["waveform"].repeat(1, 2, 1), "sample_rate": 16000}
    torch.testing.assert_close(audio_to_mono(duplicated), mono["waveform"][:, 0])


def test_import_shims_cover_missing_pkg_resources():
    """imagebind/data.py imports pkg_resources; without setuptools' copy the shim must serve the BPE path."""
    script = """
import importlib.machinery, sys
original = importlib.machinery.PathFinder.find_spec
def hide_pkg_resources(name, path=None, target=None):
    return None if name == "pkg_resources" else original(name, path, target)
importlib.machinery.PathFinder.find_spec = staticmethod(hide_pkg_resources)
from objectives.imagebind_audio import import_imagebind_model, imagebind_tokenize
import_imagebind_model()
import imagebind.data
assert imagebind.data.return_bpe_path().endswith("bpe_simple_vocab_16e6.txt.gz")
assert "torchvision.transforms.functional_tensor" in sys.modules
print(tuple(imagebind_tokenize(["a dog"]).shape))
"""
    repo_root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=repo_root)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "(1, 77)"


# ---------------------------------------------------------------- loader

def test_loader_round_trip_identical_outputs(tiny_checkpoint, monkeypatch):
    import socket

    attempts = []
    monkeypatch.setattr(socket.socket, "connect", lambda *args: attempts.append(args))
    path, original = tiny_checkpoint
    loaded = load_imagebind(path, modalities=MODALITIES)
    assert attempts == []
    torch.testing.assert_close(loaded.state_dict(), original.state_dict(), atol=0, rtol=0)
    generator = torch.Generator().manual_seed(6)
    inputs = {
        "vision": torch.randn(2, 3, 3, 2, 224, 224, generator=generator),
        "audio": torch.randn(2, 3, 1, 128, 204, generator=generator),
        "text": imagebind_tokenize(["a dog barking", "rain on a roof"]),
    }
    with torch.no_grad():
        expected = original(inputs)
        actual = loaded(inputs)
    for modality in inputs:
        torch.testing.assert_close(actual[modality], expected[modality], atol=1e-6, rtol=0)
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training
    slim = load_imagebind(path)
    assert set(slim.modality_trunks.keys()) == {"vision", "audio", "text"}


def test_loader_infers_imagebind_huge_from_its_shapes(imagebind):
    """imagebind_huge built on the meta device (no memory): 1,311 keys; inferred config rebuilds it exactly."""

    class MetaFactories(TorchFunctionMode):
        """Create tensors on meta, except linspace (ImageBind calls .item() on it for drop-path rates)."""

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = dict(kwargs or {})
            if func in _device_constructors() and func is not torch.linspace and kwargs.get("device") is None:
                kwargs["device"] = "meta"
            return func(*args, **kwargs)

    model_module = imagebind[0]
    with MetaFactories():
        huge = model_module.imagebind_huge()
    huge_shapes = {key: value.shape for key, value in huge.state_dict().items()}
    assert len(huge_shapes) == 1311
    assert sum(math.prod(shape) for shape in huge_shapes.values()) > 1.2e9
    config = imagebind_config_from_state_dict(huge.state_dict())
    assert config["vision_embed_dim"] == 1280 and config["vision_num_blocks"] == 32
    assert config["text_embed_dim"] == 1024 and config["text_num_blocks"] == 24
    assert config["out_embed_dim"] == 1024 and config["audio_stride"] == 10
    assert all(config[f"{m}_num_heads"] == HUGE_NUM_HEADS[m] for m in MODALITIES)
    with MetaFactories():
        rebuilt = model_module.ImageBindModel(**config)
    assert {key: value.shape for key, value in rebuilt.state_dict().items()} == huge_shapes


def test_missing_and_wrong_files(tmp_path, tiny_checkpoint):
    with pytest.raises(FileNotFoundError, match=r"ComfyUI/models/imagebind/imagebind_huge\.pth") as info:
        load_imagebind(tmp_path / "imagebind_huge.pth")
    assert "https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth" in str(info.value)
    assert "CC-BY-NC-SA 4.0" in str(info.value)
    torch.save({"visual.conv1.weight": torch.zeros(2)}, tmp_path / "clip.pth")
    with pytest.raises(ValueError, match="not an ImageBind state dict"):
        load_imagebind(tmp_path / "clip.pth")
    state = torch.load(tiny_checkpoint[0], weights_only=True)
    torch.save({**state, "modality_heads.vision.extra": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match="1 unexpected"):
        load_imagebind(tmp_path / "extra.pth")
    del state["modality_trunks.text.blocks.0.norm_2.bias"]
    torch.save(state, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match=r"1 missing \(e\.g\. modality_trunks\.text\.blocks\.0\.norm_2\.bias\)"):
        load_imagebind(tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="not divisible by 5 heads"):
        load_imagebind(tiny_checkpoint[0], num_heads={"vision": 5})


# ---------------------------------------------------------------- loss

def official_vision_embedding(model, video, fps):
    """Vision embedding the official way: ImageBind's video transform, 5 clips x 3 crops, model mean over S."""
    import imagebind.data as data
    from pytorchvideo import transforms as pv_transforms

    transform = lambda clip: data.NormalizeVideo(  # noqa: E731
        mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711)
    )(pv_transforms.ShortSideScale(224)(clip))
    outputs = []
    for sample in video:
        clips = []
        for first, last in imagebind_clip_frame_pairs(sample.shape[0], fps, "official", 5):
            clips.append(transform(sample[[first, last]].permute(1, 0, 2, 3).float()))
        crops = data.SpatialCrop(224, num_crops=3)(clips)
        outputs.append(torch.stack(crops))
    with torch.no_grad():
        return model({"vision": torch.stack(outputs).to(next(model.parameters()).dtype)})["vision"]


def test_vision_embedding_equals_official_pipeline(tiny_checkpoint):
    model = load_imagebind(tiny_checkpoint[0])
    audio = sine_audio(3.0)
    for height, width in ((24, 32), (30, 30)):
        video = video_batch(8, frames=12, height=height, width=width).float()
        loss = ImageBindAudioLoss(model, audio, fps=6, vision_clips="official")
        with torch.no_grad():
            ours = loss.vision_embedding(video)
        torch.testing.assert_close(ours, official_vision_embedding(model, video, 6), atol=2e-6, rtol=1e-5)


def test_loss_value_matches_definition(tiny_model):
    audio = sine_audio(1.5, sample_rate=16000, channels=2, batch=2, seed=9)
    loss = ImageBindAudioLoss(tiny_model, audio, fps=4, text="engine noise", text_weight=0.3, audio_start_s=0.25)
    video = video_batch(9, frames=5, height=24, width=24)
    mono = audio["waveform"].mean(1)
    mels = torch.stack([imagebind_audio_clips(m, 0.25, 1.25, 3) for m in mono]).double()
    with torch.no_grad():
        audio_embeds = F.normalize(tiny_model({"audio": mels})["audio"], dim=-1)
        text = F.normalize(tiny_model({"text": imagebind_tokenize(["engine noise"])})["text"][0], dim=0)
        vision = F.normalize(loss.vision_embedding(video), dim=-1)
    expected = (1 - (vision * audio_embeds).sum(-1)) + 0.3 * (1 - vision @ text)
    torch.testing.assert_close(loss(video), expected)
    assert loss.needs == frozenset({"audio", "fps"}) and not loss.has_frame_losses


def test_gradient_matches_finite_differences_and_jvp(tiny_model):
    loss = ImageBindAudioLoss(tiny_model, sine_audio(2.0), fps=8, text="a drum", spatial_crops=3)
    video = video_batch(10, batch=1, frames=3, height=20, width=28)  # non-square: 3 distinct crops
    grad_input = video.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(loss(grad_input).sum(), grad_input)
    for seed in range(1):
        direction = torch.randn(video.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        with torch.no_grad():
            step = 1e-6
            expected = (loss(video + step * direction).sum() - loss(video - step * direction).sum()) / (2 * step)
        torch.testing.assert_close((gradient * direction).sum(), expected, rtol=1e-5, atol=1e-9)
        value, tangent = jvp(loss, (video,), (direction,))
        torch.testing.assert_close(tangent, (gradient * direction).flatten(1).sum(1), rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(value, loss(video))
    assert (gradient.abs().flatten(2).sum(-1) > 0).all()  # "pairs" clips: every frame gets gradient


def test_square_crops_are_deduplicated_without_changing_the_loss(tiny_model):
    audio = sine_audio(2.0)
    video = video_batch(11, batch=1, frames=4, height=26, width=26)
    three = ImageBindAudioLoss(tiny_model, audio, fps=8, spatial_crops=3)(video)
    one = ImageBindAudioLoss(tiny_model, audio, fps=8, spatial_crops=1)(video)
    chunked = ImageBindAudioLoss(tiny_model, audio, fps=8, spatial_crops=1, clips_per_chunk=1)(video)
    torch.testing.assert_close(three, one, atol=1e-12, rtol=0)
    torch.testing.assert_close(chunked, one, atol=1e-12, rtol=0)


def test_audio_embedding_is_cached_and_resampling_is_transparent(tiny_model):
    import torchaudio

    audio = sine_audio(2.5, sample_rate=16000, seed=12)
    loss = ImageBindAudioLoss(tiny_model, audio, fps=8, vision_clips="official")  # 16 frames: 1 distinct clip
    first = loss.audio_embedding(16)
    assert loss.audio_embedding(16) is first and len(loss.audio_targets) == 1
    loss(video_batch(12, batch=1, frames=16, height=16, width=16))
    assert len(loss.audio_targets) == 1
    loss.audio_embedding(8)
    assert [key[0] for key in loss.audio_targets.keys()] == [16, 8]  # keyed by frames, dtype and device
    assert loss.audio_targets.keys()[0][1:] == (torch.float64, torch.device("cpu"))
    # First asked inside a forward-mode pass: computed outside it, so it is cached and stays valid.
    inside_first = ImageBindAudioLoss(tiny_model, audio, fps=8)
    tiny_video = video_batch(12, batch=1, frames=2, height=8, width=8)
    jvp(inside_first, (tiny_video,), (torch.ones_like(tiny_video),))
    (cached,) = [inside_first.audio_targets.get(key, None) for key in inside_first.audio_targets.keys()]
    assert not torch._C._functorch.is_functorch_wrapped_tensor(cached) and not cached.requires_grad
    torch.testing.assert_close(cached, inside_first._compute_audio_embedding(2, torch.float64, torch.device("cpu")),
                               atol=0, rtol=0)
    jvp(lambda v: inside_first.prepare(16) or v, (tiny_video,), (tiny_video,))
    assert inside_first.video_frames == 16 and len(inside_first.audio_targets) == 2
    prepared = ImageBindAudioLoss(tiny_model, audio, fps=8, num_frames=16)
    assert prepared.video_frames == 16
    torch.testing.assert_close(prepared.audio_embedding(16), first, atol=0, rtol=0)
    downsampled = {"waveform": torchaudio.functional.resample(audio["waveform"], 16000, 48000), "sample_rate": 48000}
    other = ImageBindAudioLoss(tiny_model, downsampled, fps=8)
    assert F.cosine_similarity(other.audio_embedding(16), first).item() > 0.999


class TowerCalls:
    """Forward hooks counting the calls of ImageBind's audio and vision trunks (the real modules)."""

    def __init__(self, model):
        self.counts = {"audio": 0, "vision": 0}
        self.handles = [model.modality_trunks[name].register_forward_hook(self._counter(name)) for name in self.counts]

    def _counter(self, name):
        def hook(module, inputs, output):
            self.counts[name] += 1
        return hook

    def remove(self):
        for handle in self.handles:
            handle.remove()


def uncached_loss(model, audio, fps, text, text_weight, objective):
    """The loss as defined, recomputing the audio (and text) embedding at every call (no cache)."""
    def loss(video):
        num_frames = video.shape[1]
        mels = torch.stack([imagebind_audio_clips(m, 0.0, Fraction(num_frames) / fps, 3) for m in audio_to_mono(audio)])
        with torch.no_grad():
            audio_embeds = F.normalize(model({"audio": mels.double()})["audio"], dim=-1)
            text_embed = F.normalize(model({"text": imagebind_tokenize([text])})["text"][0], dim=0)
        vision = F.normalize(objective.vision_embedding(video), dim=-1)
        return (1 - (vision * audio_embeds).sum(-1)) + text_weight * (1 - vision @ text_embed)
    return loss


def test_audio_tower_runs_once_across_evaluations_with_unchanged_values_and_derivatives(tiny_model):
    """The audio embedding is a constant target: one audio-tower call for any number of evaluations, JVPs and
    backward passes (the first one inside a JVP); values and derivatives equal the uncached definition."""
    import torch.autograd.forward_ad as fwAD

    audio = sine_audio(2.0, seed=20)
    video = video_batch(20, batch=1, frames=5, height=20, width=28)
    tangents = [torch.randn(video.shape, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
                for s in range(2)]
    calls = TowerCalls(tiny_model)
    try:
        loss = ImageBindAudioLoss(tiny_model, audio, fps=8, text="a bell", text_weight=0.4)
        reference = uncached_loss(tiny_model, audio, 8, "a bell", 0.4, loss)
        assert calls.counts == {"audio": 0, "vision": 0}  # nothing is computed before the first evaluation
        results = [jvp(loss, (video,), (tangent,)) for tangent in tangents]  # first call inside torch.func.jvp
        with torch.no_grad():
            value = loss(video)
        grad_input = video.clone().requires_grad_(True)
        (gradient,) = torch.autograd.grad(loss(grad_input).sum(), grad_input)
        with fwAD.dual_level():
            dual_tangent = fwAD.unpack_dual(loss(fwAD.make_dual(video, tangents[0]))).tangent
        assert calls.counts == {"audio": 1, "vision": 5}  # only the video branch runs per evaluation

        expected = [jvp(reference, (video,), (tangent,)) for tangent in tangents]
        grad_input = video.clone().requires_grad_(True)
        (expected_gradient,) = torch.autograd.grad(reference(grad_input).sum(), grad_input)
        assert calls.counts["audio"] == 1 + 3  # the uncached definition runs the audio tower every time
    finally:
        calls.remove()
    for (got_value, got_tangent), (want_value, want_tangent) in zip(results, expected):
        torch.testing.assert_close(got_value, want_value, atol=1e-13, rtol=0)
        torch.testing.assert_close(got_tangent, want_tangent, atol=1e-13, rtol=1e-11)
    torch.testing.assert_close(value, expected[0][0], atol=1e-13, rtol=0)
    torch.testing.assert_close(gradient, expected_gradient, atol=1e-13, rtol=1e-11)
    torch.testing.assert_close(dual_tangent, expected[0][1], atol=1e-13, rtol=1e-11)
    assert abs(expected[0][1].item()) > 1e-6


def nearest_shown(frames, shown):
    """For every frame of a video of `frames` frames, the position in `shown` of the nearest shown frame (earlier
    on ties)."""
    return [min(range(len(shown)), key=lambda p: (abs(shown[p] - k), shown[p])) for k in range(frames)]


@pytest.mark.parametrize("mode,frames,fps,shown", [("pairs", 7, 8, [1, 4, 6]), ("pairs", 6, 8, [0, 5]),
                                                    ("official", 9, 2, [0, 3, 4, 8])])
def test_frame_subset_is_the_full_video_with_each_frame_held_from_the_nearest_shown_one(tiny_model, mode, frames,
                                                                                        fps, shown):
    """frame_indices: loss and JVP equal the full video's (same audio span) with missing frames filled in."""
    loss = ImageBindAudioLoss(tiny_model, sine_audio(5.0, seed=21), fps=fps, vision_clips=mode, spatial_crops=1)
    video = video_batch(21, batch=2, frames=len(shown), height=16, width=16)
    tangent = torch.randn(video.shape, generator=torch.Generator().manual_seed(21), dtype=torch.float64)
    with pytest.raises(ValueError, match=r"call prepare\(num_frames\)"):
        loss(video, frame_indices=shown)
    loss.prepare(frames)
    hold = torch.tensor(nearest_shown(frames, shown))
    value, derivative = jvp(lambda v: loss(v, frame_indices=torch.tensor(shown)), (video,), (tangent,))
    full_value, full_derivative = jvp(loss, (video[:, hold],), (tangent[:, hold],))
    torch.testing.assert_close(value, full_value, atol=1e-13, rtol=0)
    torch.testing.assert_close(derivative, full_derivative, atol=1e-13, rtol=1e-11)
    assert [key[0] for key in loss.audio_targets.keys()] == [frames]  # the full video's audio span only
    grad_input = video.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(loss(grad_input, frame_indices=shown).sum(), grad_input)
    assert (gradient.flatten(2).abs().sum(-1) > 0).all()  # every shown frame stands in for some clip frame


def test_a_subset_of_every_frame_is_the_full_video_and_bad_subsets_are_refused(tiny_model):
    """frame_indices covering every frame take the full-video path (same operations, same value)."""
    loss = ImageBindAudioLoss(tiny_model, sine_audio(2.0, seed=22), fps=8, num_frames=5)
    video = video_batch(22, batch=1, frames=5, height=16, width=16)
    every_frame = torch.arange(5)
    expected, plain_calls = recorded_call(loss, video)
    got, every_frame_calls = recorded_call(loss, video, frame_indices=every_frame)
    assert torch.equal(got, expected)
    def computations(calls):
        return [name for name in calls if name not in ("__get__", "tolist")]  # not attribute reads / index labels

    assert computations(every_frame_calls) == computations(plain_calls)  # no gather, no other extra operation
    subset = video[:, [0, 2, 4]]
    for bad, message in (([0, 2], "names 2 frame"), ([2, 0, 4], "strictly increasing"), ([0, 2, 5], "reach past"),
                         ([-1, 2, 4], ">= 0"), (torch.tensor([0.0, 2.0, 4.0]), "whole numbers")):
        with pytest.raises(ValueError, match=message):
            loss(subset, frame_indices=bad)
    with pytest.raises(ValueError, match="whole number >= 1"):
        loss.prepare(0)


def test_bad_inputs_are_refused(tiny_model, tiny_checkpoint):
    audio = sine_audio(2.0)
    video = video_batch(13, frames=16, height=16, width=16)
    with pytest.raises(ValueError, match="no audio given"):
        ImageBindAudioLoss(tiny_model, None, fps=8)
    with pytest.raises(ValueError, match=r"\(B, C, N\)"):
        ImageBindAudioLoss(tiny_model, {"waveform": torch.zeros(16000), "sample_rate": 16000}, fps=8)
    with pytest.raises(ValueError, match="sample_rate"):
        ImageBindAudioLoss(tiny_model, {"waveform": torch.zeros(1, 1, 16000), "sample_rate": 16000.0}, fps=8)
    with pytest.raises(ValueError, match="empty"):
        ImageBindAudioLoss(tiny_model, {"waveform": torch.zeros(1, 1, 0), "sample_rate": 16000}, fps=8)
    with pytest.raises(ValueError, match="fps"):
        ImageBindAudioLoss(tiny_model, audio, fps=0)
    short = ImageBindAudioLoss(tiny_model, sine_audio(1.5), fps=8)
    with pytest.raises(ValueError, match=r"audio is 1\.500 s long.*at least 2\.000 s"):
        short(video)
    offset = ImageBindAudioLoss(tiny_model, audio, fps=8, audio_start_s=0.5)
    with pytest.raises(ValueError, match=r"at least 2\.500 s"):
        offset(video)
    three_audios = ImageBindAudioLoss(tiny_model, sine_audio(2.0, batch=3), fps=8)
    with pytest.raises(ValueError, match="audio batch has 3 items but the video batch has 2"):
        three_audios(video)
    vision_audio_only = load_imagebind(tiny_checkpoint[0], modalities=("vision", "audio"))
    with pytest.raises(ValueError, match="text tower"):
        ImageBindAudioLoss(vision_audio_only, audio, fps=8, text="a dog")
    with pytest.raises(ValueError, match="vision_clips"):
        ImageBindAudioLoss(tiny_model, audio, fps=8, vision_clips="all")
    with pytest.raises(ValueError, match="ImageBindModel"):
        ImageBindAudioLoss(torch.nn.Linear(2, 2), audio, fps=8)
    loss = ImageBindAudioLoss(tiny_model, audio, fps=8)
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
        loss(video * 255)
