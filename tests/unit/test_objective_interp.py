"""Frame interpolation objective (pixel and latent space): values, derivatives, bad inputs."""

import pytest
import torch
from torch.func import jvp

from objectives.frame_interpolation import FrameInterpolationLoss, LatentFrameInterpolationLoss


def video_batch(seed, batch=2, frames=6, channels=3, height=5, width=7, scale=None):
    """Random float64 video in (0.1, 0.9), or N(0, scale^2) latents when scale is given."""
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, frames, channels, height, width)
    if scale is not None:
        return scale * torch.randn(shape, generator=generator, dtype=torch.float64)
    return 0.1 + 0.8 * torch.rand(shape, generator=generator, dtype=torch.float64)


def keyframes(seed, count=2, height=5, width=7):
    """ComfyUI IMAGE batch (K, H, W, 3) in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, height, width, 3, generator=generator, dtype=torch.float64)


def test_values_follow_the_documented_definition():
    keys = keyframes(0)
    loss = FrameInterpolationLoss(keys, indices=[0, -1])
    video = video_batch(1)
    per_frame = loss.frame_losses(video)
    targets = keys.permute(0, 3, 1, 2)
    expected = torch.zeros(2, 6, dtype=torch.float64)
    expected[:, 0] = (video[:, 0] - targets[0]).square().mean(dim=(1, 2, 3))
    expected[:, 5] = (video[:, 5] - targets[1]).square().mean(dim=(1, 2, 3))
    torch.testing.assert_close(per_frame, expected, atol=0, rtol=0)
    torch.testing.assert_close(loss(video), expected.mean(1))
    # ||A(X0) - y||^2 / (F * 3 * H * W)
    selected = video[:, [0, 5]] - targets[None]
    torch.testing.assert_close(loss(video), selected.square().flatten(1).sum(1) / (6 * 3 * 5 * 7))


def test_exact_keyframes_give_zero_loss_and_mask_equals_indices():
    keys = keyframes(2, count=3)
    video = video_batch(3, batch=1)
    video[0, [1, 2, 4]] = keys.permute(0, 3, 1, 2)
    by_indices = FrameInterpolationLoss(keys, indices=[1, 2, 4])
    by_mask = FrameInterpolationLoss(keys, mask=[False, True, True, False, True, False])
    assert by_indices(video).item() == 0.0
    other = video_batch(4)
    torch.testing.assert_close(by_indices.frame_losses(other), by_mask.frame_losses(other), atol=0, rtol=0)
    channels_first = FrameInterpolationLoss(keys.permute(0, 3, 1, 2), indices=[1, 2, 4])
    torch.testing.assert_close(channels_first(other), by_indices(other), atol=0, rtol=0)


@pytest.mark.parametrize("latent", [False, True])
def test_gradient_matches_finite_differences_and_jvp(latent):
    if latent:
        key_latents = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        loss = LatentFrameInterpolationLoss(key_latents, indices=[0, 3])
        video = video_batch(6, frames=5, channels=4, height=3, width=3, scale=3.0)
    else:
        loss = FrameInterpolationLoss(keyframes(5), indices=[0, 3])
        video = video_batch(6, frames=5)
    grad_input = video.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(loss(grad_input).sum(), grad_input)
    assert gradient[:, [1, 2, 4]].abs().max() == 0  # unknown frames are free
    for seed in range(3):
        direction = torch.randn(video.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        step = 1e-6
        with torch.no_grad():
            expected = (loss(video + step * direction).sum() - loss(video - step * direction).sum()) / (2 * step)
        torch.testing.assert_close((gradient * direction).sum(), expected, rtol=1e-7, atol=1e-12)
        value, tangent = jvp(loss, (video,), (direction,))
        torch.testing.assert_close(tangent, (gradient * direction).flatten(1).sum(1), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(value, loss(video))
        _, frame_tangent = jvp(loss.frame_losses, (video,), (direction,))
        torch.testing.assert_close(frame_tangent.mean(1), tangent)


def test_latent_loss_accepts_unbounded_latents_and_checks_shapes():
    key_latents = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    loss = LatentFrameInterpolationLoss(key_latents, indices=[-1])
    latents = video_batch(7, frames=4, channels=4, height=3, width=3, scale=5.0)
    assert loss.input_space == "latent"
    expected = (latents[:, -1] - key_latents[0]).square().mean(dim=(1, 2, 3)) / 4
    torch.testing.assert_close(loss(latents), expected)
    with pytest.raises(ValueError, match=r"encode keyframes of the video's size"):
        loss(video_batch(7, frames=4, channels=4, height=4, width=3))
    with pytest.raises(ValueError, match=r"\(K, C, h, w\)"):
        LatentFrameInterpolationLoss(torch.randn(4, 3, 3), indices=[0])


def test_bad_inputs_are_refused():
    keys = keyframes(8)
    video = video_batch(9)
    with pytest.raises(ValueError, match="got 2 keyframes but 3 known frame indices"):
        FrameInterpolationLoss(keys, indices=[0, 2, 5])
    with pytest.raises(ValueError, match="exactly one of indices"):
        FrameInterpolationLoss(keys)
    with pytest.raises(ValueError, match="exactly one of indices"):
        FrameInterpolationLoss(keys, indices=[0, 1], mask=[True, True])
    with pytest.raises(ValueError, match="distinct"):
        FrameInterpolationLoss(keys, indices=[3, 3])
    with pytest.raises(ValueError, match="must be ints"):
        FrameInterpolationLoss(keys, indices=[0, 1.5])
    with pytest.raises(ValueError, match="boolean"):
        FrameInterpolationLoss(keys, mask=[1, 0, 1])
    with pytest.raises(ValueError, match="index 6 is out of range for a video of 6 frames"):
        FrameInterpolationLoss(keys, indices=[0, 6])(video)
    with pytest.raises(ValueError, match="same frame twice"):
        FrameInterpolationLoss(keys, indices=[0, -6])(video)
    with pytest.raises(ValueError, match="mask covers 5 frames but the video has 6"):
        FrameInterpolationLoss(keys, mask=[True, False, False, False, True])(video)
    with pytest.raises(ValueError, match=r"resize the keyframes to the video size"):
        FrameInterpolationLoss(keyframes(8, height=6), indices=[0, -1])(video)
    with pytest.raises(ValueError, match=r"values must lie in \[0, 1\]"):
        FrameInterpolationLoss(keys * 255, indices=[0, -1])
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
        FrameInterpolationLoss(keys, indices=[0, -1])(video * 2 - 1)
    with pytest.raises(ValueError, match="5 dimensions"):
        FrameInterpolationLoss(keys, indices=[0, -1])(video[0])
