"""guidance_core.packed: ComfyUI's packed nested latents (LTX-2: video + audio in one (B, 1, N) tensor) and guidance of
one part, the others passing through; against ComfyUI's own packing (written out here) and against guidance of the
part alone."""

import math

import pytest
import torch

import guidance_core as gc
from guidance_core.packed import PackedPart, WholeLatent, video_part
from guidance_core.video_frames import CausalTime, CausalVideoLoss, video_layout
from objectives.color import ColorLoss
from objectives.combination import ManagedObjective, ObjectiveSet
from test_video_frames import causal_decode

VIDEO, AUDIO = (2, 16, 3, 4, 4), (2, 8, 5, 16)  # (B, C, T, h, w) and LTX-2's audio latent (B, 8, T_a, 16 mel bins)


def comfy_pack_latents(latents):
    """comfy.utils.pack_latents of ComfyUI 0.33.0, as written there."""
    latent_shapes, tensors = [], []
    for tensor in latents:
        latent_shapes.append(tensor.shape)
        tensors.append(tensor.reshape(tensor.shape[0], 1, -1))
    return torch.cat(tensors, dim=-1), latent_shapes


def comfy_unpack_latents(combined_latent, latent_shapes):
    """comfy.utils.unpack_latents of ComfyUI 0.33.0, as written there."""
    output_tensors = []
    for shape in latent_shapes:
        cut = math.prod(shape[1:])
        tens = combined_latent[:, :, :cut]
        combined_latent = combined_latent[:, :, cut:]
        output_tensors.append(tens.reshape([tens.shape[0]] + list(shape)[1:]))
    return output_tensors


def rand(*shape, seed=0):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_pack_unpack_get_put_match_comfyui():
    video, audio = rand(*VIDEO), rand(*AUDIO, seed=1)
    packed, shapes = comfy_pack_latents([video, audio])
    part = PackedPart(shapes, 0, ("video", "audio"))
    assert torch.equal(part.pack([video, audio]), packed)
    for mine, theirs in zip(part.unpack(packed), comfy_unpack_latents(packed, shapes)):
        assert torch.equal(mine, theirs)
    assert torch.equal(part.get(packed), video) and part.shape == VIDEO
    new_video = rand(*VIDEO, seed=2)
    assert torch.equal(part.put(packed, new_video), comfy_pack_latents([new_video, audio])[0])
    # forward mode through put: a tangent on the part lands on the part only
    tangent = rand(*VIDEO, seed=3)
    _, out = torch.func.jvp(lambda v: part.put(packed, v), (video,), (tangent,))
    moved_video, moved_audio = comfy_unpack_latents(out, shapes)
    assert torch.equal(moved_video, tangent) and torch.equal(moved_audio, torch.zeros_like(audio))
    assert WholeLatent().put(packed, video) is video and WholeLatent().get(packed) is packed


def test_bad_packings_give_clear_errors():
    with pytest.raises(ValueError, match="at least two latents"):
        PackedPart((VIDEO,))
    part = PackedPart((VIDEO, AUDIO), 0, ("video", "audio"))
    with pytest.raises(ValueError, match=r"video \(2, 16, 3, 4, 4\), audio \(2, 8, 5, 16\) has shape \(B, 1, 1408\)"):
        part.get(rand(2, 1, 100))
    with pytest.raises(ValueError, match="the guided part must have shape"):
        part.put(part.pack([rand(*VIDEO), rand(*AUDIO)]), rand(2, 16, 2, 4, 4))


class PartwiseDenoiser:
    """A denoiser of packed video + audio latents whose audio prediction does (coupled) or does not read the video."""

    def __init__(self, part: PackedPart, coupled: bool):
        self.part, self.coupled = part, coupled
        self.w_video = rand(16, 16, seed=10) / 4
        self.w_audio = rand(8, 8, seed=11) / 3

    def video(self, v, sigma):
        return torch.tanh(torch.einsum("dc,bcthw->bdthw", self.w_video, v)) / (1 + sigma ** 2) ** 0.5

    def audio(self, a, v, sigma):
        mix = v.mean() if self.coupled else 0.0
        return torch.tanh(torch.einsum("dc,bctf->bdtf", self.w_audio, a) + mix) / (1 + sigma ** 2) ** 0.5

    def __call__(self, x, sigma):
        v, a = self.part.unpack(x)
        return self.part.pack([self.video(v, sigma), self.audio(a, v, sigma)])


def color_loss():
    objective = ObjectiveSet.single(ManagedObjective(ColorLoss()), "colour")
    loss = CausalVideoLoss(causal_decode, objective, CausalTime(4))
    loss.prepare(VIDEO[2])
    return loss


@pytest.mark.parametrize("method", ["titan_random", "titan_sampled", "exact"])
def test_guiding_the_video_of_a_packed_latent_equals_guiding_the_video_alone(method):
    """Audio that does not read the video: the packed run's video is the guided run of the video alone (same
    tangents, same updates) and its audio is the unguided run's audio, bit for bit; the guided video's loss is lower."""
    part = PackedPart((VIDEO, AUDIO), 0, ("video", "audio"))
    denoise = PartwiseDenoiser(part, coupled=False)
    sigmas = torch.tensor([2.0, 1.0, 0.5, 0.0], dtype=torch.float64)
    x = part.pack([rand(*VIDEO, seed=4) * 2, rand(*AUDIO, seed=5) * 2])
    layout, _ = video_layout(VIDEO)
    guide = {"titan_random": lambda: gc.Titan(guess=gc.RandomGuess(2), strength=0.2, end=1.0),
             "titan_sampled": lambda: gc.Titan(guess=gc.SampledGradientGuess(2), strength=0.2, end=1.0),
             "exact": lambda: gc.baselines.ExactGradient(strength=0.2, end=1.0)}[method]
    loss = color_loss()

    def run(latent, denoiser, guided_part, method):
        return gc.sample(denoiser, latent, sigmas, method, loss=loss, layout=layout, part=guided_part,
                         generator=torch.Generator().manual_seed(7)).x

    packed = run(x, denoise, part, guide())
    alone = run(part.get(x), lambda v, s: denoise.video(v, s), WholeLatent(), guide())
    unguided = run(x, denoise, part, None)
    video, audio = part.unpack(packed)
    assert torch.allclose(video, alone, rtol=0, atol=1e-12), float((video - alone).abs().max())
    assert torch.equal(audio, part.unpack(unguided)[1])
    assert not torch.allclose(video, part.get(unguided), atol=1e-6)
    assert float(loss(video).sum()) < float(loss(part.get(unguided)).sum())


def test_coupled_audio_still_runs_through_the_model_and_only_the_video_is_updated():
    """Audio that reads the video: the guidance update at a step moves the video only (the audio of the updated
    latent equals the input's), and the audio of the result follows the guided video through the model."""
    part = PackedPart((VIDEO, AUDIO), 0, ("video", "audio"))
    denoise = PartwiseDenoiser(part, coupled=True)
    sigmas = torch.tensor([2.0, 1.0, 0.5, 0.0], dtype=torch.float64)
    x = part.pack([rand(*VIDEO, seed=4) * 2, rand(*AUDIO, seed=5) * 2])
    layout, _ = video_layout(VIDEO)
    seen = []
    ctx = gc.SamplingContext(denoise, sigmas, loss=color_loss(), layout=layout, part=part,
                             generator=torch.Generator().manual_seed(7),
                             observer=lambda **kw: seen.append(kw["x"].shape))
    titan = gc.Titan(guess=gc.RandomGuess(2), strength=0.2, end=1.0)
    updated = {}
    plain_step = ctx.plain_step
    ctx.plain_step = lambda z, i, denoised=None: updated.setdefault(i, z) is not None and plain_step(z, i, denoised)
    guided, report = titan.guide(x, 0, ctx)
    assert seen == [VIDEO]  # the observer (and the update) see the video part
    assert torch.equal(part.unpack(updated[0])[1], part.unpack(x)[1])  # audio not moved by the update
    assert not torch.equal(part.get(updated[0]), part.get(x))
    assert torch.equal(guided, plain_step(updated[0], 0))
    unguided = plain_step(x, 0)
    assert not torch.allclose(part.unpack(guided)[1], part.unpack(unguided)[1])  # audio followed the video


def test_methods_without_part_guidance_refuse_packed_latents():
    part = PackedPart((VIDEO, AUDIO), 0, ("video", "audio"))
    layout, _ = video_layout(VIDEO)
    x = part.pack([rand(*VIDEO), rand(*AUDIO)])
    with pytest.raises(ValueError, match=r"FreeDoM cannot guide one part of a packed latent yet \(video .*audio"):
        gc.sample(PartwiseDenoiser(part, False), x, torch.tensor([1.0, 0.0], dtype=torch.float64),
                  gc.baselines.FreeDoM(), loss=color_loss(), layout=layout, part=part)


def test_video_part_of_comfyui_latent_shapes():
    assert video_part(None).whole and video_part([VIDEO]).whole  # a single latent: all of it
    part = video_part([torch.Size(VIDEO), torch.Size(AUDIO)])
    assert (part.shapes, part.index, part.names) == ((VIDEO, AUDIO), 0, ("video", "audio"))
    with pytest.raises(ValueError, match=r"first latent has shape \(2, 8, 5, 16\), not a video"):
        video_part([AUDIO, VIDEO])
