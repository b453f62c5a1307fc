"""Tests of the DOVER objective: objectives/dover.py, objectives/views.py and the two backbones.

Numerical tests run a TINY random configuration in float64; the official configuration is only
built on the meta device (layout and parameter count), never run.
"""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torch.func import jvp

from objectives import _swin3d
from objectives.dover import (
    FULL_CONFIG,
    OFFICIAL_ARCHITECTURE,
    DoverLoss,
    DoverModel,
    fuse_dover_scores,
    load_dover,
)
from objectives.views import (
    DoverViewConfig,
    aesthetic_view,
    fragment_positions,
    normalize_for_dover,
    technical_view,
    temporal_indices,
    upsample_to_cover,
)

TINY_MODEL = dict(
    technical_embed_dim=8,
    technical_depths=(2, 2, 2, 2),
    technical_num_heads=(1, 2, 2, 2),
    technical_window_size=(2, 2, 2),
    aesthetic_depths=(1, 1, 3, 1),
    aesthetic_dims=(8, 8, 16, 16),
    head_hidden_channels=4,
)
# 2x2 fragments of 16 px (32x32 view, 8x8 tokens, shifted windows in all axes) and 32x32 aesthetic view.
TINY_VIEWS = DoverViewConfig(
    fragments_h=2,
    fragments_w=2,
    fragment_size_h=16,
    fragment_size_w=16,
    aesthetic_size_h=32,
    aesthetic_size_w=32,
    technical_clip_len=8,
    aesthetic_clip_len=8,
)
OFFICIAL_MEAN = torch.tensor([123.675, 116.28, 103.53], dtype=torch.float64)
OFFICIAL_STD = torch.tensor([58.395, 57.12, 57.375], dtype=torch.float64)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(seed: int = 0, dtype: torch.dtype = torch.float64) -> DoverModel:
    """Tiny DOVER (float64 here; the node tests use it in float32) with all parameters perturbed (so fragment-bias
    tables are non-zero) and the fused score away from saturation."""
    torch.manual_seed(seed)
    model = DoverModel(**TINY_MODEL).to(dtype)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
        # Shift the raw scores (about -0.7 / -0.4 here) towards the fusion's centres so the sigmoid is not saturated.
        model.technical_head.fc_last.bias.add_(0.8)
        model.aesthetic_head.fc_last.bias.add_(0.35)
    return model.eval()


def random_video(batch=2, frames=4, height=40, width=44, seed=1) -> torch.Tensor:
    """Random float64 video (B, F, 3, H, W) inside (0.05, 0.95)."""
    generator = torch.Generator().manual_seed(seed)
    return 0.05 + 0.9 * torch.rand(batch, frames, 3, height, width, dtype=torch.float64, generator=generator)


def official_normalise(clip_cthw: torch.Tensor) -> torch.Tensor:
    """Upstream normalisation of a (C, T, H, W) clip of 0-255 values."""
    return ((clip_cthw.permute(1, 2, 3, 0) - OFFICIAL_MEAN) / OFFICIAL_STD).permute(3, 0, 1, 2)


def official_fragments(clip_cthw: torch.Tensor, grid=7, size=32) -> torch.Tensor:
    """Direct re-statement of upstream get_spatial_fragments (one aligned chunk, global RNG, no upsampling)."""
    _, _, res_h, res_w = clip_cthw.shape
    hgrids = [min(res_h // grid * i, res_h - size) for i in range(grid)]
    wgrids = [min(res_w // grid * i, res_w - size) for i in range(grid)]
    hlength, wlength = res_h // grid, res_w // grid
    rnd_h = torch.randint(hlength - size, (grid, grid, 1)) if hlength > size else torch.zeros(grid, grid, 1, dtype=torch.long)
    rnd_w = torch.randint(wlength - size, (grid, grid, 1)) if wlength > size else torch.zeros(grid, grid, 1, dtype=torch.long)
    out = torch.zeros(clip_cthw.shape[:2] + (grid * size, grid * size), dtype=clip_cthw.dtype)
    for i, hs in enumerate(hgrids):
        for j, ws in enumerate(wgrids):
            h0, w0 = hs + int(rnd_h[i, j, 0]), ws + int(rnd_w[i, j, 0])
            out[:, :, i * size : (i + 1) * size, j * size : (j + 1) * size] = clip_cthw[:, :, h0 : h0 + size, w0 : w0 + size]
    return out


# ---------------------------------------------------------------- official layout


def test_full_config_has_official_key_layout_and_size():
    with torch.device("meta"):
        model = DoverModel(**FULL_CONFIG)
    state = model.state_dict()
    assert model.is_official_size
    assert len(state) == 381
    n_params = sum(p.numel() for p in model.parameters())
    assert abs(n_params - 56.2e6) < 0.1e6
    assert n_params == 56_218_302  # count of the upstream MinimumDOVER layout
    prefixes = {}
    for key in state:
        prefixes[key.split(".")[0]] = prefixes.get(key.split(".")[0], 0) + 1
    assert prefixes == {"technical_backbone": 193, "aesthetic_backbone": 180, "technical_head": 4, "aesthetic_head": 4}
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert shapes["technical_backbone.patch_embed.proj.weight"] == (96, 3, 2, 4, 4)
    assert shapes["technical_backbone.layers.0.blocks.1.attn.relative_position_bias_table"] == (2535, 3)
    assert shapes["technical_backbone.layers.2.blocks.5.attn.fragment_position_bias_table"] == (2535, 12)
    assert shapes["technical_backbone.layers.3.blocks.0.attn.relative_position_index"] == (392, 392)
    assert "technical_backbone.layers.3.blocks.0.attn.fragment_position_bias_table" not in shapes
    assert shapes["technical_backbone.layers.2.downsample.reduction.weight"] == (768, 1536)
    assert shapes["technical_backbone.norm.weight"] == (768,)
    assert shapes["aesthetic_backbone.downsample_layers.0.0.weight"] == (96, 3, 2, 4, 4)
    assert shapes["aesthetic_backbone.downsample_layers.3.1.weight"] == (768, 384, 1, 2, 2)
    assert shapes["aesthetic_backbone.stages.2.1.dwconv.weight"] == (384, 1, 3, 7, 7)  # inflate "131"
    assert shapes["aesthetic_backbone.stages.2.3.dwconv.weight"] == (384, 1, 1, 7, 7)
    assert shapes["aesthetic_backbone.stages.3.2.gamma"] == (768,)
    for head in ("technical_head", "aesthetic_head"):
        assert shapes[f"{head}.fc_hid.weight"] == (64, 768, 1, 1, 1)
        assert shapes[f"{head}.fc_last.weight"] == (1, 64, 1, 1, 1)


def test_fused_score_formula():
    technical = torch.tensor([0.05, 0.1107, 0.3], dtype=torch.float64)
    aesthetic = torch.tensor([-0.2, -0.08285, 0.01], dtype=torch.float64)
    fused = fuse_dover_scores(technical, aesthetic)
    for t, a, f in zip(technical.tolist(), aesthetic.tolist(), fused.tolist()):
        x = (t - 0.1107) / 0.07355 * 0.6104 + (a + 0.08285) / 0.03774 * 0.3896
        assert f == pytest.approx(1 / (1 + math.exp(-x)), rel=1e-12)
    assert fused[1].item() == pytest.approx(0.5, abs=1e-12)


def naive_block_attention(block, x):
    """Token-by-token re-statement of a (shifted) window attention with DOVER's fragment-gated bias.

    x: (1, D, H, W, C) with D, H, W multiples of the window. Returns the attention branch output
    (before the residual), computed from the definitions instead of window partitioning.
    """
    attn = block.attn
    _, size_d, size_h, size_w, channels = x.shape
    window, shift = block.window, block.shift
    sizes = (size_d, size_h, size_w)
    normed = block.norm1(x)[0]
    heads, head_dim = attn.num_heads, channels // attn.num_heads
    qkv = attn.qkv(normed).reshape(size_d, size_h, size_w, 3, heads, head_dim)

    def original(p):  # rolled position -> original position
        return tuple((p[a] + shift[a]) % sizes[a] for a in range(3))

    def region(p):  # shifted-window region label per axis
        labels = []
        for a in range(3):
            if shift[a] == 0:
                labels.append(0)
            else:
                labels.append(0 if p[a] < sizes[a] - window[a] else (1 if p[a] < sizes[a] - shift[a] else 2))
        return tuple(labels)

    def cell(p):  # fragment cell of the token at rolled position p (cells = window grid over H, W)
        o = original(p)
        return ((o[1] * window[1]) // size_h, (o[2] * window[2]) // size_w)

    out = torch.zeros(size_d, size_h, size_w, channels, dtype=x.dtype)
    positions = [(d, h, w) for d in range(size_d) for h in range(size_h) for w in range(size_w)]
    for p in positions:
        keys = [q for q in positions if all(q[a] // window[a] == p[a] // window[a] for a in range(3))]
        op = original(p)
        query = qkv[op][0] * attn.scale  # heads, head_dim
        logits = []
        for q in keys:
            oq = original(q)
            rel = [p[a] - q[a] + window[a] - 1 for a in range(3)]
            index = rel[0] * (2 * window[1] - 1) * (2 * window[2] - 1) + rel[1] * (2 * window[2] - 1) + rel[2]
            bias = attn.relative_position_bias_table[index]
            if attn.fragment_position_bias_table is not None:
                gate = abs(cell(p)[0] - cell(q)[0]) + abs(cell(p)[1] - cell(q)[1])
                bias = bias * gate + attn.fragment_position_bias_table[index] * (1 - gate)
            mask = 0.0 if region(p) == region(q) else -100.0
            logits.append((query * qkv[oq][1]).sum(-1) + bias + mask)
        weights = torch.softmax(torch.stack(logits, -1), -1)  # heads, keys
        values = torch.stack([qkv[original(q)][2] for q in keys], 1)  # heads, keys, head_dim
        out[op] = attn.proj((weights[:, :, None] * values).sum(1).reshape(channels))
    return out[None]


@pytest.mark.parametrize("block_index,fragment_bias,windows_per_call", [
    (0, True, "all"), (1, True, "all"), (1, False, "all"), (0, True, 1), (1, True, 1)])
def test_window_attention_matches_token_by_token_definition(block_index, fragment_bias, windows_per_call,
                                                            monkeypatch):
    """Also with one window per score-sized chunk (WINDOW_SCORE_BYTES tiny), as large videos run."""
    if windows_per_call == 1:
        monkeypatch.setattr(_swin3d, "WINDOW_SCORE_BYTES", 1)
    torch.manual_seed(2)
    swin = DoverModel(**{**TINY_MODEL, "technical_window_size": (2, 2, 2), "technical_fragment_biases": (fragment_bias,) * 4}).double()
    with torch.no_grad():
        for param in swin.parameters():
            param.add_(0.3 * torch.randn_like(param))
    block = swin.technical_backbone.layers[0].blocks[block_index]  # block 1 is shifted by (1, 1, 1)
    assert block.shift == ((1, 1, 1) if block_index else (0, 0, 0))
    x = torch.randn(1, 4, 6, 4, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(block._attention(x), naive_block_attention(block, x), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- derivatives


@pytest.mark.parametrize("mode", ["fused", "technical", "aesthetic"])
def test_gradient_matches_central_finite_differences(mode):
    loss_fn = DoverLoss(tiny_model(), mode=mode, views=TINY_VIEWS)
    video = random_video()
    video.requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_fn(video).sum(), video)
    assert grad.abs().max() > 0
    flat = grad.abs().flatten()
    coords = flat.topk(3).indices.tolist()
    nonzero = flat.nonzero().flatten()
    coords += nonzero[torch.randperm(len(nonzero), generator=torch.Generator().manual_seed(0))[:3]].tolist()
    eps = 1e-6
    with torch.no_grad():
        for index in coords:
            bump = torch.zeros(video.numel(), dtype=video.dtype)
            bump[index] = eps
            bump = bump.reshape(video.shape)
            numeric = (loss_fn(video + bump).sum() - loss_fn(video - bump).sum()) / (2 * eps)
            analytic = grad.flatten()[index]
            assert numeric.item() == pytest.approx(analytic.item(), rel=1e-5, abs=1e-9)


@pytest.mark.parametrize(
    "views,frames",
    [
        (TINY_VIEWS, 4),  # 4 frames resampled to 8: temporal shifted windows
        (DoverViewConfig(**{**TINY_VIEWS.__dict__, "technical_clip_len": None, "aesthetic_clip_len": None}), 3),  # odd native length: padding
        (DoverViewConfig(**{**TINY_VIEWS.__dict__, "aesthetic_antialias": True}), 5),
    ],
)
def test_jvp_matches_autograd_directional_derivative(views, frames):
    loss_fn = DoverLoss(tiny_model(), mode="fused", views=views)
    video = random_video(frames=frames)
    direction = torch.randn(video.shape, dtype=video.dtype, generator=torch.Generator().manual_seed(3))
    value, tangent = jvp(loss_fn, (video,), (direction,))
    assert value.shape == tangent.shape == (2,)
    leaf = video.clone().requires_grad_(True)
    loss = loss_fn(leaf)
    torch.testing.assert_close(value, loss.detach(), rtol=1e-12, atol=0)
    for b in range(2):
        (grad,) = torch.autograd.grad(loss[b], leaf, retain_graph=True)
        expected = (grad * direction).sum()
        assert abs(tangent[b].item()) > 0
        assert tangent[b].item() == pytest.approx(expected.item(), rel=1e-8)


def test_window_attention_in_the_forward_mode_scope_equals_the_explicit_path():
    """Inside guidance_core's forward-mode scope DOVER's window attention goes through the routed SDPA (the written-
    out rule with the biases as an additive mask); the loss and tangent equal the explicit softmax path that
    torch.func.jvp takes around PyTorch's own SDPA, in float64. sdpa_usable says which one applies."""
    import torch.autograd.forward_ad as fwAD
    import guidance_core as core
    from guidance_core.forward_ad import attention
    from objectives.function_transforms import sdpa_usable
    loss_fn = DoverLoss(tiny_model(), mode="fused", views=TINY_VIEWS)
    video = random_video(frames=4)
    direction = torch.randn(video.shape, dtype=video.dtype, generator=torch.Generator().manual_seed(6))
    explicit = jvp(loss_fn, (video,), (direction,))
    before = attention.route_counts["math"]
    with core.forward_ad_attention():
        routed = jvp(loss_fn, (video,), (direction,))
        assert sdpa_usable()
    assert attention.route_counts["math"] > before  # the windows went through the router
    for a, b in zip(explicit, routed):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
    assert sdpa_usable()
    assert jvp(lambda v: torch.tensor(float(sdpa_usable()), dtype=v.dtype) + v.sum(), (video,), (direction,))[0] \
        == video.sum()  # inside torch.func.jvp: not usable
    with fwAD.dual_level():
        assert not sdpa_usable()


def test_window_chunks_leave_the_loss_and_its_jvp_unchanged(monkeypatch):
    """Window attention in chunks of a few windows (the forward-mode pass's memory bound) gives the same loss and
    tangent as all windows at once, in float64; a pass that records a graph for backprop is not chunked."""
    loss_fn = DoverLoss(tiny_model(), mode="technical", views=TINY_VIEWS)
    video = random_video(frames=4)
    direction = torch.randn(video.shape, dtype=video.dtype, generator=torch.Generator().manual_seed(5))
    whole = jvp(loss_fn, (video,), (direction,))
    calls = []
    attend = _swin3d.FragmentWindowAttention3D._attend
    monkeypatch.setattr(_swin3d.FragmentWindowAttention3D, "_attend",
                        lambda self, *a: calls.append(a[0].shape[2]) or attend(self, *a))
    monkeypatch.setattr(_swin3d, "WINDOW_SCORE_BYTES", 1)
    chunked = jvp(loss_fn, (video,), (direction,))
    assert max(calls) == 1 and len(calls) > 4  # one window per call
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    calls.clear()  # backprop keeps every chunk's terms for its backward: no chunks while a graph is recorded
    loss_fn(video.clone().requires_grad_()).sum().backward()
    assert calls and min(calls) > 1


@pytest.mark.parametrize("mode", ["fused", "technical"])
def test_bfloat16_jvp_keeps_dtype_and_tracks_float64(mode):
    video = random_video()
    direction = torch.randn(video.shape, dtype=video.dtype, generator=torch.Generator().manual_seed(4))
    value64, tangent64 = jvp(DoverLoss(tiny_model(), mode=mode, views=TINY_VIEWS), (video,), (direction,))
    loss16 = DoverLoss(tiny_model().to(torch.bfloat16), mode=mode, views=TINY_VIEWS)
    value16, tangent16 = jvp(loss16, (video.to(torch.bfloat16),), (direction.to(torch.bfloat16),))
    assert value16.dtype == tangent16.dtype == torch.bfloat16
    torch.testing.assert_close(value16.double(), value64, rtol=0.02, atol=0.01)  # bf16 keeps ~3 digits
    torch.testing.assert_close(tangent16.double(), tangent64, rtol=0.05, atol=0.05 * tangent64.abs().max().item())


def test_gradient_reaches_only_the_sampled_fragments():
    loss_fn = DoverLoss(tiny_model(), mode="technical", views=TINY_VIEWS, fragment_seed=7)
    video = random_video(batch=1, height=48, width=56).requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_fn(video).sum(), video)
    tops, lefts = fragment_positions(48, 56, TINY_VIEWS, "random", torch.Generator().manual_seed(7))
    inside = torch.zeros(48, 56, dtype=torch.bool)
    for top, left in zip(tops.flatten().tolist(), lefts.flatten().tolist()):
        inside[top : top + 16, left : left + 16] = True
    pixel_grad = grad.abs().sum(dim=(0, 1, 2))
    assert pixel_grad[~inside].max() == 0
    assert (pixel_grad[inside] > 0).float().mean() > 0.99


# ---------------------------------------------------------------- views vs upstream preprocessing


@pytest.mark.parametrize("height,width,seed", [(300, 260, 0), (256, 256, 4), (224, 480, 9)])
def test_fragments_match_upstream_sampling(height, width, seed):
    views = DoverViewConfig(technical_clip_len=None)
    video = random_video(batch=1, frames=3, height=height, width=width, seed=seed)
    torch.manual_seed(seed)
    expected = official_normalise(official_fragments((video[0] * 255).permute(1, 0, 2, 3)))
    ours = technical_view(video, views, "random", torch.Generator().manual_seed(seed))[0]
    assert ours.shape == (3, 3, 224, 224)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)


def test_center_fragments_stay_inside_their_cells():
    views = DoverViewConfig()
    tops, lefts = fragment_positions(500, 300, views, "center")
    assert tops[:, 0].tolist() == [500 // 7 * i + (500 // 7 - 32) // 2 for i in range(7)]
    assert lefts[0].tolist() == [300 // 7 * j + (300 // 7 - 32) // 2 for j in range(7)]
    assert (tops[1:] - tops[:-1] >= 32).all() and (lefts[:, 1:] - lefts[:, :-1] >= 32).all()


@pytest.mark.parametrize("antialias", [False, True])
def test_aesthetic_view_matches_torchvision_resize(antialias):
    views = DoverViewConfig(aesthetic_clip_len=None, aesthetic_antialias=antialias)
    video = random_video(batch=1, frames=3, height=270, width=480)
    clip_tchw = video[0] * 255
    resized = torchvision.transforms.Resize((224, 224), antialias=antialias)(clip_tchw)
    expected = official_normalise(resized.permute(1, 0, 2, 3))
    ours = aesthetic_view(video, views)[0]
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10)


def test_normalisation_matches_upstream():
    frames = random_video(batch=1, frames=5, height=9, width=7)[0]  # F, 3, H, W
    expected = official_normalise((frames * 255).permute(1, 0, 2, 3)).permute(1, 0, 2, 3)
    torch.testing.assert_close(normalize_for_dover(frames), expected, rtol=1e-12, atol=1e-12)


def test_small_frames_are_upsampled_and_fully_covered():
    views = DoverViewConfig(technical_clip_len=None)
    video = random_video(batch=1, frames=2, height=100, width=150)
    up = upsample_to_cover(video, 224, 224)
    assert up.shape[-2:] == (224, 336)  # scale 1 / min(100/224, 150/224), as upstream, rounded
    expected_up = F.interpolate(video[0], size=(224, 336), mode="bilinear", align_corners=False)
    torch.testing.assert_close(up[0], expected_up, rtol=1e-12, atol=1e-12)
    # The fragment grid is laid over the whole upsampled frame (upstream used the pre-upsampling size).
    tops, lefts = fragment_positions(224, 336, views, "center")
    assert tops.max() + 32 == 224 and lefts.max() + 32 > 300
    stitched = torch.zeros(3, 2, 224, 224, dtype=torch.float64)
    for i in range(7):
        for j in range(7):
            top, left = int(tops[i, j]), int(lefts[i, j])
            stitched[:, :, 32 * i : 32 * i + 32, 32 * j : 32 * j + 32] = up[0, :, :, top : top + 32, left : left + 32].permute(1, 0, 2, 3)
    ours = technical_view(video, views, "center")[0]
    torch.testing.assert_close(ours, official_normalise(stitched * 255), rtol=1e-12, atol=1e-12)


def test_temporal_resampling_indices():
    assert temporal_indices(16, 32).tolist() == [i // 2 for i in range(32)]
    assert temporal_indices(5, None).tolist() == [0, 1, 2, 3, 4]
    long_clip = temporal_indices(49, 32)
    assert long_clip[0] == 0 and long_clip[-1] <= 48 and (long_clip[1:] > long_clip[:-1]).all()
    video = random_video(batch=1, frames=3, height=40, width=40)
    view = aesthetic_view(video, TINY_VIEWS)  # 3 frames -> 8
    torch.testing.assert_close(view[:, :, 0], view[:, :, 1])
    torch.testing.assert_close(view[:, :, 0], view[:, :, 2])
    assert not torch.equal(view[:, :, 2], view[:, :, 3])


# ---------------------------------------------------------------- loss behaviour


def test_modes_agree_with_scores_and_eval_mode_is_kept():
    model = tiny_model()
    video = random_video()
    scores = DoverLoss(model, views=TINY_VIEWS).scores(video)
    for mode in ("fused", "technical", "aesthetic"):
        loss_fn = DoverLoss(model, mode=mode, views=TINY_VIEWS)
        loss_fn.train()  # must not switch dropout on
        assert not loss_fn.model.training
        first, second = loss_fn(video), loss_fn(video)
        torch.testing.assert_close(first, second, rtol=0, atol=0)
        torch.testing.assert_close(first, -scores[mode], rtol=1e-12, atol=1e-12)
    assert ((scores["fused"] > 0) & (scores["fused"] < 1)).all()
    assert not any(p.requires_grad for p in model.parameters())


def test_fragment_seed_and_samples():
    model = tiny_model()
    video = random_video(height=64, width=64)
    same = [DoverLoss(model, mode="technical", views=TINY_VIEWS, fragment_seed=3)(video) for _ in range(2)]
    torch.testing.assert_close(same[0], same[1], rtol=0, atol=0)
    other = DoverLoss(model, mode="technical", views=TINY_VIEWS, fragment_seed=4)(video)
    assert not torch.allclose(same[0], other)
    averaged = DoverLoss(model, mode="technical", views=TINY_VIEWS, fragment_seed=3, technical_samples=2)(video)
    torch.testing.assert_close(averaged, (same[0] + other) / 2, rtol=1e-12, atol=1e-14)
    unseeded = DoverLoss(model, mode="technical", views=TINY_VIEWS, fragment_seed=None)
    torch.manual_seed(11)
    first = unseeded(video)
    torch.manual_seed(11)
    torch.testing.assert_close(unseeded(video), first, rtol=0, atol=0)


def test_in_tolerance_overshoot_is_not_clamped():
    loss_fn = DoverLoss(tiny_model(), views=TINY_VIEWS)
    video = random_video() * (1.05 / 0.95)  # max ~1.05, within the default tolerance
    assert video.max() > 1.0
    assert not torch.allclose(loss_fn(video), loss_fn(video.clamp(0, 1)))


@pytest.mark.parametrize(
    "video,message",
    [
        (torch.rand(4, 3, 40, 40, dtype=torch.float64), "5 dimensions"),
        (torch.rand(1, 4, 4, 40, 40, dtype=torch.float64), "3 RGB channels"),
        (torch.rand(1, 4, 40, 40, 3, dtype=torch.float64), "3 RGB channels"),
        ((torch.rand(1, 4, 3, 40, 40) * 255).to(torch.uint8), "floating-point"),
        (torch.rand(1, 1, 3, 40, 40, dtype=torch.float64), "at least 2"),
        (torch.rand(1, 4, 3, 12, 40, dtype=torch.float64), "too small"),
        (torch.rand(1, 4, 3, 40, 40, dtype=torch.float64) * 255, "must lie in"),
        (torch.rand(1, 4, 3, 40, 40, dtype=torch.float64) * 2 - 1, "must lie in"),
        (torch.full((1, 4, 3, 40, 40), float("nan"), dtype=torch.float64), "NaN"),
        ("not a tensor", "torch.Tensor"),
    ],
)
def test_bad_video_input_raises(video, message):
    loss_fn = DoverLoss(tiny_model(), views=TINY_VIEWS)
    with pytest.raises(ValueError, match=message):
        loss_fn(video)


def test_bad_constructor_arguments_raise():
    model = tiny_model()
    with pytest.raises(ValueError, match="mode"):
        DoverLoss(model, mode="overall")
    with pytest.raises(TypeError, match="DoverModel"):
        DoverLoss(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="technical_samples"):
        DoverLoss(model, technical_samples=0)
    with pytest.raises(ValueError, match="fragment_sampling"):
        DoverLoss(model, fragment_sampling="grid")
    with pytest.raises(ValueError, match="technical_clip_len"):
        DoverViewConfig(technical_clip_len=1)


# ---------------------------------------------------------------- loader


@pytest.mark.parametrize("fmt", ["pth", "wrapped", "safetensors"])
def test_loader_round_trip(tmp_path, fmt):
    from safetensors.torch import save_file

    source = tiny_model(seed=5).float()
    state = source.state_dict()
    path = tmp_path / ("DOVER.safetensors" if fmt == "safetensors" else "DOVER.pth")
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"state_dict": state} if fmt == "wrapped" else state, path)
    loaded = load_dover(path, dtype=torch.float64, model_kwargs=TINY_MODEL)
    assert not loaded.training
    assert next(loaded.parameters()).dtype == torch.float64
    loaded_state = loaded.state_dict()
    assert loaded_state.keys() == state.keys()
    for key, value in state.items():
        torch.testing.assert_close(loaded_state[key], value.to(loaded_state[key].dtype), rtol=0, atol=0)
    video = random_video()
    reference = DoverLoss(source.double(), views=TINY_VIEWS)(video)
    torch.testing.assert_close(DoverLoss(loaded, views=TINY_VIEWS)(video), reference, rtol=1e-12, atol=1e-12)


def test_loader_rejects_other_models(tmp_path):
    other = tmp_path / "resnet.pth"
    torch.save(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)).state_dict(), other)
    with pytest.raises(ValueError) as info:
        load_dover(other)
    text = str(info.value)
    assert OFFICIAL_ARCHITECTURE in text
    assert "381 missing" in text and "aesthetic_backbone." in text and "unexpected" in text and "0.weight" in text

    tiny_file = tmp_path / "tiny.pth"
    torch.save(tiny_model().float().state_dict(), tiny_file)
    with pytest.raises(ValueError, match="wrong shapes") as info:
        load_dover(tiny_file)  # same key names, tiny shapes
    assert OFFICIAL_ARCHITECTURE in str(info.value)

    not_tensors = tmp_path / "dict.pth"
    torch.save({"epoch": 3}, not_tensors)
    with pytest.raises(ValueError, match="state dict of tensors"):
        load_dover(not_tensors)

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match="could not read"):
        load_dover(garbage)


def test_loader_rejects_wrong_position_index(tmp_path):
    state = tiny_model().float().state_dict()
    key = "technical_backbone.layers.0.blocks.0.attn.relative_position_index"
    state[key] = state[key].flip(0)
    path = tmp_path / "DOVER.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match="relative_position_index"):
        load_dover(path, model_kwargs=TINY_MODEL)


def test_loader_missing_file_names_file_folder_and_source(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_dover(tmp_path / "DOVER.pth")
    text = str(info.value)
    assert "DOVER.pth" in text and "ComfyUI/models/dover" in text
    assert "github.com/VQAssessment/DOVER" in text and "icence" in text
