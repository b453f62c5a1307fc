"""guidance_core.video_frames: latent <-> pixel frames of causal video VAEs (Wan: 4x in time) and the loss on
(B, C, T, h, w) latents, with a stand-in causal decoder (no ComfyUI)."""

import pytest
import torch

from guidance_core.guesses import SampledGradientGuess
from guidance_core.run_config import GuessSpec
from guidance_core.video_frames import CausalTime, CausalVideoLoss, latent_guess, plan_videos_per_call, video_layout
from objectives.color import ColorLoss
from objectives.combination import ManagedObjective, ObjectiveSet


def test_frame_mapping_arithmetic():
    time = CausalTime(4)
    assert [time.decoded_frames(t) for t in (1, 2, 3, 21)] == [1, 5, 9, 81]
    assert [time.latent_frames(p) for p in (1, 5, 9, 81)] == [1, 2, 3, 21]
    assert [list(time.pixel_group(k)) for k in range(3)] == [[0], [1, 2, 3, 4], [5, 6, 7, 8]]
    assert time.latent_indices_for_pixels([0, 8, 4, 3], 3) == (0, 1, 2)
    assert time.latent_indices_for_pixels([80], 21) == (20,)
    with pytest.raises(ValueError, match=r"frame indices \[9\] map to no latent frame: the video has 9 decoded"):
        time.latent_indices_for_pixels([0, 9], 3)
    assert time.subset_frames([1, 2])[1].tolist() == [4, 5, 6, 7, 8]  # a lone decode: 1 + 4 frames
    assert time.subset_frames([0, 2])[1].tolist() == [0, 5, 6, 7, 8]
    losses = torch.arange(9, dtype=torch.float64)[None]
    per_latent = time.latent_frame_losses(losses)
    assert per_latent.tolist() == [[0.0, 10 / 9, 26 / 9]] and torch.isclose(per_latent.sum(), losses.mean())


def test_guess_frames_layout_and_videos_per_call():
    time = CausalTime(4)
    fixed = GuessSpec(kind="sampled_gradient", choice="fixed", indices=(0, 8))
    assert latent_guess(fixed, time, 3).indices == (0, 2)
    assert latent_guess(GuessSpec(kind="random"), time, 3) == GuessSpec(kind="random")
    layout, frames = video_layout((2, 16, 3, 4, 4))
    assert (layout.samples, layout.frame_dim, frames) == (2, 2, 3)
    assert plan_videos_per_call(None, 10, 4) == 4 and plan_videos_per_call(100, 10, 4) == 4
    assert plan_videos_per_call(40, 10, 4) == 2 and plan_videos_per_call(1, 10, 4) == 1


def causal_decode(z):
    """(n, C, T, h, w) -> (n, 1 + 4 (T - 1), 3, h, w): frame 0 from latent 0, then 4 frames per latent frame, each
    depending on its latent frame and the previous one (causal)."""
    first = z[:, :3, :1]
    rest = [(z[:, :3, k:k + 1] + 0.5 * z[:, :3, k - 1:k]) * (j + 1) / 4 for k in range(1, z.shape[2]) for j in range(4)]
    return torch.sigmoid(torch.cat([first, *rest], dim=2)).movedim(1, 2)


def test_causal_video_loss_whole_subset_and_per_frame():
    objective = ObjectiveSet.single(ManagedObjective(ColorLoss()), "colour")
    loss = CausalVideoLoss(causal_decode, objective, CausalTime(4))
    loss.prepare(3)
    x0 = torch.randn(2, 16, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    whole = loss(x0)
    assert whole.shape == (2,)
    assert torch.allclose(whole, ColorLoss()(causal_decode(x0)))
    per_frame = loss(x0, per_frame=True)
    assert per_frame.shape == (2, 3) and torch.allclose(per_frame.sum(dim=1), whole, atol=1e-6)
    # a subset of latent frames (the sampled-gradient guess) runs through the objective with its frames' indices
    subset = loss(x0[:, :, [0, 2]], frame_indices=torch.tensor([0, 2]))
    assert subset.shape == (2,) and torch.isfinite(subset).all()
    loss.videos_per_call = 1
    assert torch.allclose(loss(x0), whole)
    with pytest.raises(ValueError, match="decodes a video exactly only in one call"):
        loss.plan_chunk(x0, 3, 1)
    assert "3 latent frame(s) -> 9 frame(s)" in loss.plan_chunk(x0, 3, 0)
    # a VAE whose decode does not give 1 + 4 (T - 1) frames is refused (seen here: the HunyuanVideo 1.5 VAE's
    # first_stage_model.decode on ComfyUI 0.33.0 gave 12 frames for 3 latent frames)
    padded = CausalVideoLoss(lambda z: torch.cat([causal_decode(z)] * 2, dim=1)[:, :4 * z.shape[2]], objective,
                             CausalTime(4))
    with pytest.raises(ValueError, match="decoded 3 latent frames to 12 frames, not 9"):
        padded(x0)


def rule_decode(time: CausalTime):
    """(n, C, T, h, w) -> frames grouped as `time.group_sizes(T)` says, each frame a function of its own latent frame
    only (as under CogVideoX's nearest-neighbour time upsampling), so per-latent-frame losses can be checked."""
    def decode(z):
        owners = [k for k, size in enumerate(time.group_sizes(z.shape[2])) for _ in range(size)]
        steps = [torch.sigmoid(z[:, :3, k] * (1 + 0.1 * i)) for i, k in enumerate(owners)]
        return torch.stack(steps, dim=1)
    return decode


def test_frame_rules_of_cogvideox_and_the_hunyuanimage_refiner_vae():
    cog, refiner = CausalTime(4, "causal_odd"), CausalTime(4, "uniform")
    assert [cog.decoded_frames(t) for t in (1, 2, 3, 4, 13)] == [1, 8, 9, 16, 49]  # CogVideoX's Upsample3D
    assert [refiner.decoded_frames(t) for t in (1, 2, 3)] == [1, 8, 12]  # HunyuanImage 2.1's refiner VAE
    assert list(refiner.pixel_group(2)) == [8, 9, 10, 11] and refiner.latent_of_pixel(11) == 2
    assert refiner.latent_indices_for_pixels([0, 11], 3) == (0, 2)
    with pytest.raises(ValueError, match=r"into frames 0-3, 4-7, \.\.\."):
        refiner.latent_indices_for_pixels([12], 3)
    # an even subset of CogVideoX latent frames decodes to 4 frames each; of latent frame 0's the last stands for
    # frame 0 (the whole video has one frame there)
    positions, labels = cog.subset_frames([0, 2])
    assert positions == [3, 4, 5, 6, 7] and labels.tolist() == [0, 5, 6, 7, 8]
    assert cog.subset_frames([1, 2, 3])[1].tolist() == [4, 5, 6, 7, 8, 9, 10, 11, 12]
    assert cog.subset_frames([0, 1, 2])[1].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8]
    assert refiner.subset_frames([2])[1].tolist() == [11]
    assert refiner.subset_frames([0, 2])[1].tolist() == [0, 1, 2, 3, 8, 9, 10, 11]
    cog.check_video(13)
    with pytest.raises(ValueError, match=r"even number of latent frames \(12\).*length of 41 or 49 frames"):
        cog.check_video(12)
    with pytest.raises(ValueError, match="unknown frame rule"):
        CausalTime(4, "odd")
    objective = ObjectiveSet.single(ManagedObjective(ColorLoss()), "colour")
    x0 = torch.randn(2, 16, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for time in (cog, refiner):
        loss = CausalVideoLoss(rule_decode(time), objective, time)
        loss.prepare(3)
        pixels = rule_decode(time)(x0)
        frame_losses = torch.stack([ColorLoss()(pixels[:, i:i + 1]) for i in range(pixels.shape[1])], dim=1)
        owners = [time.latent_of_pixel(p) for p in range(pixels.shape[1])]
        expected = torch.stack([frame_losses[:, [i for i, o in enumerate(owners) if o == k]].sum(dim=1)
                                for k in range(3)], dim=1) / pixels.shape[1]
        assert torch.allclose(loss(x0, per_frame=True), expected)
        subset = x0[:, :, [0, 2]]  # decoded on its own: 8 frames under both rules
        sub_pixels = rule_decode(time)(subset)
        positions, _ = time.subset_frames([0, 2])
        assert sub_pixels.shape[1] == 8
        per_latent = loss(subset, frame_indices=torch.tensor([0, 2]), per_frame=True)
        seen = torch.stack([ColorLoss()(sub_pixels[:, i:i + 1]) for i in positions], dim=1)
        first = len(positions) - 4  # latent frame 2's four frames come last
        assert torch.allclose(per_latent, torch.stack([seen[:, :first].sum(1), seen[:, first:].sum(1)], 1)
                              / len(positions))


def test_sampled_gradient_guess_on_video_latents():
    objective = ObjectiveSet.single(ManagedObjective(ColorLoss()), "colour")
    loss = CausalVideoLoss(causal_decode, objective, CausalTime(4))
    loss.prepare(3)
    layout, _ = video_layout((1, 16, 3, 4, 4))
    x = torch.randn(1, 16, 3, 4, 4, generator=torch.Generator().manual_seed(1))

    class Ctx:
        pass
    ctx = Ctx()
    ctx.x, ctx.denoised, ctx.layout, ctx.loss, ctx.generator = x, x, layout, loss, torch.Generator().manual_seed(2)
    v = SampledGradientGuess(frames=2)(ctx)
    assert v.shape == (1, *x.shape) and torch.isclose(v.norm(), torch.tensor(1.0))
