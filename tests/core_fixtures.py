"""Small random float64 networks shaped like a video denoiser, decoder and scorer, for the core tests."""
from __future__ import annotations

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from guidance_core import Layout


class TinyVideoDenoiser(nn.Module):
    """eps-model over (B*F, C, H, W) latents that mixes frames, so the JVP crosses the frame axis."""

    def __init__(self, channels: int = 3, frames: int = 4, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.frames = frames
        self.conv1 = nn.Conv2d(channels + 1, 8, 3, padding=1)
        self.temporal = nn.Linear(8, 8)
        self.conv2 = nn.Conv2d(8, channels, 3, padding=1)
        self.double()

    def forward(self, z, t):
        n, _, h, w = z.shape
        tmap = (t.reshape(-1, 1, 1, 1) / 1000).expand(n, 1, h, w).to(z)
        a = torch.tanh(self.conv1(torch.cat([z, tmap], 1)))
        v = a.reshape(-1, self.frames, 8, h, w)
        # temporal attention-like mixing: softmax weights over frames from pooled features
        pooled = self.temporal(v.mean(dim=(3, 4)))
        weights = (pooled @ pooled.transpose(1, 2)).softmax(dim=-1)
        mixed = torch.einsum("bfg,bgchw->bfchw", weights, v).reshape(n, 8, h, w)
        return self.conv2(torch.tanh(mixed + a))


class TinyDecoder(nn.Module):
    """Per-frame 'VAE decoder': upsample x2 and a conv to RGB in [0, 1]."""

    def __init__(self, channels: int = 3, seed: int = 1):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(channels, 3, 3, padding=1)
        self.double()

    def forward(self, z):
        return torch.sigmoid(self.conv(nn.functional.interpolate(z, scale_factor=2, mode="bilinear")))


def make_scorer(frames: int, samples: int = 1, seed: int = 2):
    """A per-sample loss (samples,) and per-frame loss (samples, frames) over (B*F, 3, H, W) pixels."""
    gen = torch.Generator().manual_seed(seed)
    target = torch.rand(3, generator=gen, dtype=torch.float64)

    def frame_score(pixels, frame_indices=None):
        per_frame = (pixels.mean(dim=(2, 3)) - target).pow(2).sum(1) + 0.1 * pixels.std(dim=(1, 2, 3))
        return per_frame.reshape(samples, -1)

    def score(pixels, frame_indices=None):
        return frame_score(pixels, frame_indices).mean(1)

    return score, frame_score


def linear_alphas_cumprod(n: int = 1000) -> torch.Tensor:
    """The SD1.5 'scaled linear' schedule."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, n, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


def video_problem(samples: int = 1, frames: int = 4, chunk: int | None = 2):
    """(denoise, loss, layout, sigmas, x) for a tiny latent video problem in float64."""
    from guidance_core import DecodedLoss, DiscreteSchedule, EpsDenoiser
    model, decoder = TinyVideoDenoiser(frames=frames), TinyDecoder()
    ac = linear_alphas_cumprod()
    denoise = EpsDenoiser(model, ac)
    layout = Layout(samples=samples, frame_dim=0)
    score, frame_score = make_scorer(frames, samples)
    loss = DecodedLoss(decoder, score, layout, chunk, frame_score=frame_score)
    sigmas = DiscreteSchedule(ac).spaced_sigmas(6)
    x = torch.randn(samples * frames, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    return denoise, loss, layout, sigmas, x * sigmas[1]


def recorded_call(fn, *args, **kwargs):
    """(fn(*args, **kwargs), the torch functions it called)."""
    with TorchCallRecorder() as recorder:
        result = fn(*args, **kwargs)
    return result, recorder.calls


class TorchCallRecorder(TorchFunctionMode):
    """Records the name of every torch function called inside it (`calls`), to compare two code paths."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))
