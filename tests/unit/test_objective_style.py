"""CLIP style objective: official preprocessing parity, loaders, derivatives, bad inputs."""

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from torch.func import jvp

from objectives.preprocess import CLIP_MEAN, CLIP_STD, center_crop_offsets, clip_preprocess
from objectives.style_clip import (
    StyleLoss,
    clip_vision_config_from_state_dict,
    gram_matrices,
    load_clip_vision,
    load_open_clip,
)
from core_fixtures import recorded_call

TINY_OPEN_CLIP = "titan-test-tiny-clip"
OTHER_OPEN_CLIP = "titan-test-other-clip"
MEAN = torch.tensor(CLIP_MEAN, dtype=torch.float64).view(3, 1, 1)
STD = torch.tensor(CLIP_STD, dtype=torch.float64).view(3, 1, 1)


def smooth_image(height, width, seed):
    """Natural-ish random image (3, H, W) in [0, 1]: upsampled coarse noise, float64."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, max(height // 8, 2), max(width // 8, 2), generator=generator, dtype=torch.float64)
    return F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)[0].clamp(0, 1)


def tiny_hf_vision_model(seed=0):
    """Random tiny transformers CLIPVisionModelWithProjection (width 128 -> 2 heads of 64, gelu)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    config = CLIPVisionConfig(
        hidden_size=128, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
        image_size=32, patch_size=8, projection_dim=16, hidden_act="gelu",
    )
    return CLIPVisionModelWithProjection(config).eval()


@pytest.fixture
def network_attempts(monkeypatch):
    """Record (and refuse) every outgoing connection made while a test runs."""
    import socket

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access is disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


@pytest.fixture(scope="module")
def hf_file(tmp_path_factory):
    """A tiny HF-layout clip_vision .safetensors file and the model it came from."""
    model = tiny_hf_vision_model()
    path = tmp_path_factory.mktemp("clip_vision") / "tiny_clip_vision.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path, model


@pytest.fixture(scope="module")
def open_clip_files(tmp_path_factory):
    """Tiny open_clip configs registered with open_clip, checkpoints as .safetensors and wrapped .bin."""
    import open_clip

    folder = tmp_path_factory.mktemp("open_clip")
    for name, width in ((TINY_OPEN_CLIP, 32), (OTHER_OPEN_CLIP, 48)):
        config = {
            "embed_dim": 16,
            "vision_cfg": {"image_size": 32, "layers": 2, "width": width, "head_width": 16, "patch_size": 8},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
        }
        (folder / f"{name}.json").write_text(json.dumps(config))
        open_clip.add_model_config(folder / f"{name}.json")
    torch.manual_seed(1)
    model = open_clip.create_model(TINY_OPEN_CLIP, pretrained=None).eval()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    safetensors_path = folder / "tiny_open_clip.safetensors"
    save_file(state, str(safetensors_path))
    bin_path = folder / "tiny_open_clip.bin"  # DDP-style prefix inside a {"state_dict": ...} wrapper
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, bin_path)
    return safetensors_path, bin_path, model


@pytest.fixture(scope="module")
def hf_clip(hf_file):
    """Loaded tiny HF clip_vision model in float64."""
    return load_clip_vision(hf_file[0], dtype=torch.float64)


@pytest.fixture(scope="module")
def open_clip_model(open_clip_files):
    """Loaded tiny open_clip model in float64."""
    return load_open_clip(open_clip_files[0], TINY_OPEN_CLIP, dtype=torch.float64)


# ---------------------------------------------------------------- preprocessing

SIZES = [(300, 451), (97, 130), (224, 224), (500, 241), (224, 227), (260, 229)]


@pytest.mark.parametrize("height,width", SIZES)
def test_preprocess_equals_open_clip_transform_on_tensors(height, width):
    from open_clip.transform import image_transform

    image = smooth_image(height, width, seed=height + width)
    official = image_transform(224, is_train=False)(image)
    ours = clip_preprocess(image[None], 224, crop_rounding="round")[0]
    assert ours.shape == (3, 224, 224)
    torch.testing.assert_close(ours, official.to(torch.float64), atol=2e-6, rtol=0)


@pytest.mark.parametrize("height,width", SIZES)
def test_preprocess_equals_official_pil_pipelines_up_to_uint8_rounding(height, width):
    """open_clip (PIL) and transformers CLIPImageProcessor round resized pixels to 1/255 and clip them."""
    from open_clip.transform import image_transform
    from transformers import CLIPImageProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    pixels = (smooth_image(height, width, seed=7 * height + width) * 255).round().to(torch.uint8)
    pil = Image.fromarray(pixels.permute(1, 2, 0).numpy())
    image = pixels.to(torch.float64)[None] / 255
    official = {
        "open_clip PIL": (image_transform(224, is_train=False)(pil), "round"),
        "transformers": (CLIPImageProcessor()(pixels, return_tensors="pt")["pixel_values"][0], "floor"),
        "transformers PIL": (CLIPImageProcessorPil()(pil, return_tensors="pt")["pixel_values"][0], "floor"),
    }
    for name, (normalised, rounding) in official.items():
        reference = torch.as_tensor(np.asarray(normalised), dtype=torch.float64) * STD + MEAN
        ours = clip_preprocess(image, 224, crop_rounding=rounding)[0] * STD + MEAN
        difference = (ours.clamp(0, 1) - reference).abs()
        assert difference.max() * 255 < 1.5, name  # uint8 rounding (0.5) + PIL fixed-point kernel weights
        assert difference.mean() * 255 < 0.45, name


def test_crop_rounding_conventions_follow_their_libraries():
    """Excess 3: torchvision/open_clip crops at round(1.5) = 2, transformers at 3 // 2 = 1."""
    from open_clip.transform import image_transform
    from transformers import CLIPImageProcessor

    assert center_crop_offsets(224, 227, 224, "round") == (0, 2)
    assert center_crop_offsets(224, 227, 224, "floor") == (0, 1)
    pixels = (torch.rand(3, 224, 227, generator=torch.Generator().manual_seed(3)) * 255).round().to(torch.uint8)
    image = pixels.to(torch.float64)[None] / 255
    open_clip_out = image_transform(224, is_train=False)(image[0]).to(torch.float64)
    hf_out = torch.as_tensor(np.asarray(CLIPImageProcessor()(pixels, return_tensors="pt")["pixel_values"][0]))
    torch.testing.assert_close(clip_preprocess(image, crop_rounding="round")[0], open_clip_out, atol=2e-6, rtol=0)
    torch.testing.assert_close(clip_preprocess(image, crop_rounding="floor")[0], hf_out.double(), atol=2e-6, rtol=0)
    assert (clip_preprocess(image, crop_rounding="floor")[0] - open_clip_out).abs().max() > 0.1


def test_preprocess_is_not_quantised_and_passes_gradients():
    """ComfyUI's clip_preprocess rounds to 1/255 (zero gradient); ours keeps exact values."""
    image = smooth_image(120, 150, seed=5)[None].requires_grad_(True)
    out = clip_preprocess(image) * STD + MEAN
    off_grid = ((out * 255) - (out * 255).round()).abs()
    assert off_grid.max() > 0.1
    (gradient,) = torch.autograd.grad(out.sum(), image)
    assert gradient.abs().sum() > 0


# ---------------------------------------------------------------- loaders

def test_clip_vision_round_trip_identical_outputs(hf_file, hf_clip):
    _, original = hf_file
    config = hf_clip.model.config
    assert (config.num_attention_heads, config.num_hidden_layers, config.image_size, config.patch_size) == (2, 2, 32, 8)
    assert (config.hidden_act, config.projection_dim, config.intermediate_size) == ("gelu", 16, 96)
    pixels = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        expected = copy.deepcopy(original).double()(pixel_values=pixels).image_embeds
        embeds, tokens = hf_clip.encode_pixels(pixels, token_layer=-1)
    torch.testing.assert_close(embeds, expected, atol=1e-10, rtol=0)
    assert tokens.shape == (3, 16, 128)  # 4x4 patches without the class token


def test_clip_vision_accepts_full_hf_clip_files(tmp_path, hf_file, network_attempts):
    """A full HF CLIPModel file also carries text_model.* and logit_scale, which the vision tower ignores."""
    _, original = hf_file
    state = {k: v.contiguous() for k, v in original.state_dict().items()}
    state["text_model.embeddings.token_embedding.weight"] = torch.zeros(4, 8)
    state["logit_scale"] = torch.tensor(2.0)
    save_file(state, str(tmp_path / "full_clip.safetensors"))
    clip = load_clip_vision(tmp_path / "full_clip.safetensors")
    assert clip.num_layers == 2 and not clip.has_text
    assert network_attempts == []


def test_clip_vision_config_inference_for_vit_h():
    """ViT-H-14 (CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors) must get ComfyUI's clip_vision_config_h values."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    with torch.device("meta"):
        vit_h = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
            image_size=224, patch_size=14, projection_dim=1024, hidden_act="gelu",
        ))
    config = clip_vision_config_from_state_dict(vit_h.state_dict())
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (1280, 5120, 32)
    assert (config.num_attention_heads, config.image_size, config.patch_size) == (16, 224, 14)
    assert (config.projection_dim, config.hidden_act, config.layer_norm_eps) == (1024, "gelu", 1e-5)


@pytest.mark.parametrize("which", ["safetensors", "bin"])
def test_open_clip_round_trip_identical_outputs(open_clip_files, which, network_attempts):
    safetensors_path, bin_path, original = open_clip_files
    path = safetensors_path if which == "safetensors" else bin_path
    clip = load_open_clip(path, TINY_OPEN_CLIP, dtype=torch.float64)
    pixels = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        reference = copy.deepcopy(original).double()
        expected_image = reference.encode_image(pixels)
        expected_text = reference.encode_text(clip.tokenizer(["a red car", "oil painting"]))
        embeds, _ = clip.encode_pixels(pixels)
        tokens_embeds, tokens = clip.encode_pixels(pixels, token_layer=0)
    torch.testing.assert_close(embeds, expected_image, atol=1e-10, rtol=0)
    torch.testing.assert_close(tokens_embeds, expected_image, atol=1e-10, rtol=0)
    torch.testing.assert_close(clip.encode_text(["a red car", "oil painting"]), expected_text, atol=1e-10, rtol=0)
    assert tokens.shape == (2, 16, 32)
    assert (clip.image_size, clip.mean, clip.crop_rounding) == (32, CLIP_MEAN, "round")
    assert network_attempts == []


def test_missing_files_name_folder_and_source(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ComfyUI/models/clip_vision/.*huggingface\.co"):
        load_clip_vision(tmp_path / "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors")
    with pytest.raises(FileNotFoundError, match=r"open_clip_model\.safetensors.*ComfyUI/models/clip_vision/"):
        load_open_clip(tmp_path / "open_clip_model.safetensors", "ViT-H-14")


def test_wrong_files_name_the_expected_architecture(tmp_path, hf_file, open_clip_files):
    hf_path, _ = hf_file
    open_clip_path, _, _ = open_clip_files
    with pytest.raises(ValueError, match="open_clip checkpoint.*load_open_clip"):
        load_clip_vision(open_clip_path)
    with pytest.raises(ValueError, match="vision-only.*load_clip_vision"):
        load_open_clip(hf_path, TINY_OPEN_CLIP)
    with pytest.raises(ValueError, match=f"does not match the open_clip architecture '{OTHER_OPEN_CLIP}'"):
        load_open_clip(open_clip_path, OTHER_OPEN_CLIP)
    with pytest.raises(ValueError, match="unknown open_clip architecture 'ViT-H-41'"):
        load_open_clip(open_clip_path, "ViT-H-41")
    with pytest.raises(ValueError, match="schema"):
        load_open_clip(open_clip_path, "hf-hub:laion/CLIP-ViT-H-14-laion2B-s32B-b79K")
    save_file({"encoder.layer.0.weight": torch.zeros(2)}, str(tmp_path / "dino.safetensors"))
    with pytest.raises(ValueError, match="CLIPVisionModelWithProjection layout"):
        load_clip_vision(tmp_path / "dino.safetensors")
    (tmp_path / "weights.npz").write_bytes(b"x")
    with pytest.raises(ValueError, match="unsupported weights file type"):
        load_clip_vision(tmp_path / "weights.npz")
    torch.save({"vision_model.x": torch.zeros(1), "config": Image.new("RGB", (2, 2))}, tmp_path / "pickled.pt")
    with pytest.raises(ValueError, match="weights_only=True"):
        load_clip_vision(tmp_path / "pickled.pt")
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="re-download"):
        load_clip_vision(tmp_path / "broken.safetensors")


def test_missing_projection_is_refused(tmp_path, hf_file):
    _, original = hf_file
    state = {k: v.contiguous() for k, v in original.state_dict().items() if k != "visual_projection.weight"}
    save_file(state, str(tmp_path / "no_projection.safetensors"))
    with pytest.raises(ValueError, match="visual_projection.weight"):
        load_clip_vision(tmp_path / "no_projection.safetensors")


# ---------------------------------------------------------------- loss values and derivatives

def directional_fd(loss, video, direction, step=1e-6):
    """Central finite difference of loss(video).sum() along direction."""
    with torch.no_grad():
        return (loss(video + step * direction).sum() - loss(video - step * direction).sum()) / (2 * step)


def video_batch(seed, batch=2, frames=3, height=20, width=26):
    """Random video in (0.1, 0.9) so FD steps stay inside [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    return 0.1 + 0.8 * torch.rand(batch, frames, 3, height, width, generator=generator, dtype=torch.float64)


def build_losses(hf_clip, open_clip_model):
    """One StyleLoss per configuration exercised by the derivative tests."""
    style = smooth_image(45, 37, seed=11).permute(1, 2, 0)[None]  # ComfyUI IMAGE (1, H, W, 3), another size
    reference = video_batch(99, batch=1)
    return {
        "hf-cosine": StyleLoss(hf_clip, style_image=style),
        "hf-gram": StyleLoss(hf_clip, style_image=style, mode="gram", gram_layer=0),
        "open_clip-all-terms": StyleLoss(
            open_clip_model, style_image=style, text="a watercolour painting", mode="gram",
            content_weight=0.7, content_video=reference, text_weight=0.5,
        ),
    }


def test_gradient_matches_finite_differences(hf_clip, open_clip_model):
    video = video_batch(0)
    for name, loss in build_losses(hf_clip, open_clip_model).items():
        grad_input = video.clone().requires_grad_(True)
        (gradient,) = torch.autograd.grad(loss(grad_input).sum(), grad_input)
        for seed in range(2):
            direction = torch.randn(video.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
            expected = directional_fd(loss, video, direction)
            torch.testing.assert_close((gradient * direction).sum(), expected, rtol=1e-5, atol=1e-8, msg=name)


def test_jvp_matches_autograd(hf_clip, open_clip_model):
    video = video_batch(1)
    direction = torch.randn(video.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for name, loss in build_losses(hf_clip, open_clip_model).items():
        value, tangent = jvp(loss, (video,), (direction,))
        frame_value, frame_tangent = jvp(loss.frame_losses, (video,), (direction,))
        grad_input = video.clone().requires_grad_(True)
        (gradient,) = torch.autograd.grad(loss(grad_input).sum(), grad_input)
        torch.testing.assert_close(value, loss(video), msg=name)
        torch.testing.assert_close(tangent, (gradient * direction).flatten(1).sum(1), rtol=1e-9, atol=1e-12, msg=name)
        torch.testing.assert_close(frame_tangent.mean(1), tangent, msg=name)
        assert frame_value.shape == (2, 3)


def test_frame_losses_are_per_frame_and_average_to_forward(hf_clip):
    loss = StyleLoss(hf_clip, style_image=smooth_image(30, 30, seed=2))
    video = video_batch(2)
    per_frame = loss.frame_losses(video)
    torch.testing.assert_close(loss(video), per_frame.mean(1))
    changed = video.clone()
    changed[:, 1] = 1 - changed[:, 1]
    after = loss.frame_losses(changed)
    torch.testing.assert_close(after[:, [0, 2]], per_frame[:, [0, 2]])
    assert (after[:, 1] - per_frame[:, 1]).abs().min() > 0


def test_chunked_encoding_equals_one_pass(open_clip_model):
    style = smooth_image(30, 30, seed=3)
    video = video_batch(9, frames=3)
    whole = StyleLoss(open_clip_model, style_image=style, text="ink", mode="gram")
    chunked = StyleLoss(open_clip_model, style_image=style, text="ink", mode="gram", frames_per_chunk=4)
    torch.testing.assert_close(chunked.frame_losses(video), whole.frame_losses(video), atol=1e-12, rtol=0)


def test_frames_equal_to_the_style_image_have_zero_style_loss(hf_clip):
    style = smooth_image(20, 26, seed=4)
    video = torch.stack([style, style]).unsqueeze(0)  # (1, 2, 3, 20, 26)
    for mode in ("cosine", "gram"):
        loss = StyleLoss(hf_clip, style_image=style.permute(1, 2, 0), mode=mode)
        assert loss(video).abs().max() < 1e-12
        assert loss(video_batch(3, batch=1, frames=2)).min() > 1e-6


def test_style_image_layouts_agree_and_any_size_works(hf_clip):
    style = smooth_image(40, 33, seed=6)
    targets = [
        StyleLoss(hf_clip, style_image=image).style_embedding
        for image in (style, style[None], style.permute(1, 2, 0), style.permute(1, 2, 0)[None])
    ]
    for target in targets[1:]:
        torch.testing.assert_close(target, targets[0], atol=0, rtol=0)
    small = StyleLoss(hf_clip, style_image=smooth_image(9, 12, seed=1), mode="gram")  # upsampled to 32
    two_styles = StyleLoss(hf_clip, style_image=torch.stack([smooth_image(40, 40, 1), smooth_image(40, 40, 2)]))
    assert small(video_batch(4)).shape == (2,) and two_styles(video_batch(4)).shape == (2,)
    assert small.style_gram.shape == (128, 128)
    torch.testing.assert_close(gram_matrices(torch.ones(1, 4, 3)), torch.zeros(1, 3, 3))


def test_text_and_content_terms(open_clip_model):
    video = video_batch(5)
    text_only = StyleLoss(open_clip_model, text=["an oil painting", "thick brush strokes"])
    text_embeds = F.normalize(open_clip_model.encode_text(["an oil painting", "thick brush strokes"]), dim=-1)
    frame_embeds, _ = open_clip_model.encode_pixels(open_clip_model.preprocess(video.flatten(0, 1)))
    expected = 1 - F.normalize(frame_embeds, dim=-1) @ F.normalize(text_embeds.mean(0), dim=0)
    torch.testing.assert_close(text_only.frame_losses(video), expected.view(2, 3))
    content = StyleLoss(open_clip_model, text="x-ray", text_weight=0.0, content_weight=1.0, content_video=video)
    assert content(video).abs().max() < 1e-12  # the reference itself has zero content loss
    assert content(video_batch(6)).min() > 1e-6
    content.set_content_reference(video[:1])  # batch 1 applies to every video
    torch.testing.assert_close(content(video)[0], torch.tensor(0.0, dtype=torch.float64), atol=1e-12, rtol=0)


class CallCounter:
    """Forward hooks on real modules: how often each ran and the batch size of each call."""

    def __init__(self, **modules):
        self.calls = {name: [] for name in modules}
        self.handles = [module.register_forward_hook(self._hook(name)) for name, module in modules.items()]

    def _hook(self, name):
        def hook(module, inputs, output):
            self.calls[name].append(int(inputs[0].shape[0]))
        return hook

    def remove(self):
        for handle in self.handles:
            handle.remove()


def test_style_and_text_targets_are_encoded_once_with_unchanged_values_and_derivatives(open_clip_model):
    """The style image and the text go through CLIP once, at construction; each evaluation (forward, JVP,
    backward) runs the image tower on the video's frames only. Values and derivatives equal the definition
    with both targets recomputed at every call."""
    style = smooth_image(33, 41, seed=12)
    video = video_batch(12)
    tangents = [torch.randn(video.shape, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
                for s in range(2)]
    model = open_clip_model.model
    counter = CallCounter(image=model.visual, text=model.transformer)
    try:
        loss = StyleLoss(open_clip_model, style_image=style, text="ink wash", text_weight=0.6)
        assert counter.calls == {"image": [1], "text": [1]}
        results = [jvp(loss, (video,), (tangent,)) for tangent in tangents]
        grad_input = video.clone().requires_grad_(True)
        (gradient,) = torch.autograd.grad(loss(grad_input).sum(), grad_input)
        assert counter.calls == {"image": [1, 6, 6, 6], "text": [1]}  # B * F = 6 frames per evaluation

        def uncached(v):
            with torch.no_grad():
                style_embed, _ = open_clip_model.encode_pixels(open_clip_model.preprocess(style[None]))
                text_embed = open_clip_model.encode_text(["ink wash"])
            frames, _ = open_clip_model.encode_pixels(open_clip_model.preprocess(v.flatten(0, 1)))
            unit = F.normalize(frames, dim=-1).view(2, 3, -1)
            style_term = 1 - unit @ F.normalize(style_embed[0], dim=0)
            text_term = 1 - unit @ F.normalize(text_embed[0], dim=0)
            return (style_term + 0.6 * text_term).mean(1)

        expected = [jvp(uncached, (video,), (tangent,)) for tangent in tangents]
        grad_input = video.clone().requires_grad_(True)
        (expected_gradient,) = torch.autograd.grad(uncached(grad_input).sum(), grad_input)
        assert counter.calls["text"] == [1, 1, 1, 1]  # the definition re-encodes the text every time
    finally:
        counter.remove()
    for (value, tangent), (want_value, want_tangent) in zip(results, expected):
        torch.testing.assert_close(value, want_value, atol=1e-13, rtol=0)
        torch.testing.assert_close(tangent, want_tangent, atol=1e-13, rtol=1e-11)
    torch.testing.assert_close(gradient, expected_gradient, atol=1e-13, rtol=1e-11)


def test_content_reference_follows_a_frame_subset(open_clip_model):
    """frame_indices: each shown frame is compared with the reference frame of the same index; a subset of every
    frame is the full video (no gather); bad subsets are refused."""
    reference = video_batch(30, batch=1, frames=4)
    loss = StyleLoss(open_clip_model, text="chalk", content_weight=0.8, content_video=reference)
    video = video_batch(31, frames=4)
    shown = [0, 2, 3]
    tangent = torch.randn(video[:, shown].shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    per_frame = loss.frame_losses(video)
    torch.testing.assert_close(loss.frame_losses(video[:, shown], frame_indices=shown), per_frame[:, shown],
                               atol=1e-13, rtol=0)
    value, derivative = jvp(lambda v: loss(v, frame_indices=torch.tensor(shown)), (video[:, shown],), (tangent,))
    on_their_own = StyleLoss(open_clip_model, text="chalk", content_weight=0.8, content_video=reference[:, shown])
    want_value, want_derivative = jvp(on_their_own, (video[:, shown],), (tangent,))
    torch.testing.assert_close(value, want_value, atol=1e-13, rtol=0)
    torch.testing.assert_close(derivative, want_derivative, atol=1e-13, rtol=1e-11)

    every_frame = torch.arange(4)
    expected, plain_calls = recorded_call(loss, video)
    got, every_frame_calls = recorded_call(loss, video, frame_indices=every_frame)
    assert torch.equal(got, expected)
    assert [n for n in every_frame_calls if n not in ("__get__", "tolist")] == [n for n in plain_calls if n != "__get__"]
    with pytest.raises(ValueError, match="reach past the 4 frames"):
        loss(video[:, :2], frame_indices=[3, 4])
    with pytest.raises(ValueError, match="names 3 frame"):
        loss(video[:, :2], frame_indices=shown)
    no_content = StyleLoss(open_clip_model, text="chalk")  # per-frame terms only: indices are checked, not used
    torch.testing.assert_close(no_content(video[:, shown], frame_indices=shown), no_content(video[:, shown]))
    with pytest.raises(ValueError, match="strictly increasing"):
        no_content(video[:, :2], frame_indices=[2, 1])


# ---------------------------------------------------------------- bad inputs

def test_bad_configuration_is_refused(hf_clip, open_clip_model):
    style = smooth_image(30, 30, seed=0)
    with pytest.raises(ValueError, match="style image, a text target"):
        StyleLoss(hf_clip)
    with pytest.raises(ValueError, match="no text tower.*load_open_clip"):
        StyleLoss(hf_clip, text="watercolour")
    with pytest.raises(ValueError, match="mode='gram' needs a style image"):
        StyleLoss(open_clip_model, text="watercolour", mode="gram")
    with pytest.raises(ValueError, match="mode must be one of"):
        StyleLoss(hf_clip, style_image=style, mode="l2")
    with pytest.raises(ValueError, match="layer 5 is out of range"):
        StyleLoss(hf_clip, style_image=style, mode="gram", gram_layer=5)
    with pytest.raises(ValueError, match="content_weight"):
        StyleLoss(hf_clip, style_image=style, content_weight=-1.0)
    with pytest.raises(ValueError, match="non-empty string"):
        StyleLoss(open_clip_model, text=["", "x"])
    with pytest.raises(ValueError, match=r"values must lie in \[0, 1\]"):
        StyleLoss(hf_clip, style_image=style * 255)
    with pytest.raises(ValueError, match="floating-point"):
        StyleLoss(hf_clip, style_image=(style * 255).to(torch.uint8))
    with pytest.raises(ValueError, match="3 RGB channels"):
        StyleLoss(hf_clip, style_image=torch.rand(1, 30, 30, 4))


def test_bad_videos_are_refused(hf_clip):
    loss = StyleLoss(hf_clip, style_image=smooth_image(30, 30, seed=0), content_weight=1.0)
    video = video_batch(7)
    with pytest.raises(ValueError, match="needs a reference"):
        loss(video)
    loss.set_content_reference(video_batch(8, frames=4))
    with pytest.raises(ValueError, match="same frame count"):
        loss(video)
    with pytest.raises(ValueError, match="5 dimensions"):
        loss(video[0])
    with pytest.raises(ValueError, match="3 RGB channels"):
        loss(video[:, :, :2])
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
        loss(video * 2 - 1)
    with pytest.raises(ValueError, match="NaN"):
        loss(torch.full_like(video, float("nan")))
