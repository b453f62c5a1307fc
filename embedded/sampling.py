"""Reference DDIM sampler (eta = 0) for the embedded UNet -- for training checks and tests.

The guidance engine lives in ``guidance_core``; this unguided loop only shows what the model
generates on its own.
"""

from __future__ import annotations

import torch
from torch import nn

from .codec import decode
from .unet import LATENT_SHAPE, NUM_TRAIN_TIMESTEPS, alphas_cumprod
from .world import NUM_FRAMES


def ddim_timesteps(steps: int) -> torch.Tensor:
    """Descending integer timesteps from 999 to 0, evenly spaced, length ``steps``."""
    if not 1 <= steps <= NUM_TRAIN_TIMESTEPS:
        raise ValueError(f"steps must be in [1, {NUM_TRAIN_TIMESTEPS}], got {steps}")
    if steps == 1:
        return torch.tensor([NUM_TRAIN_TIMESTEPS - 1])
    return torch.linspace(NUM_TRAIN_TIMESTEPS - 1, 0, steps, dtype=torch.float64).round().long()


@torch.no_grad()
def ddim_sample_latents(model: nn.Module, noise: torch.Tensor, steps: int = 20) -> torch.Tensor:
    """Deterministic DDIM from initial noise (N*16, 12, 16, 16) to clean latents of the same shape."""
    if noise.ndim != 4 or tuple(noise.shape[1:]) != LATENT_SHAPE:
        raise ValueError(f"noise must have shape (N*{NUM_FRAMES}, {', '.join(map(str, LATENT_SHAPE))}), got {tuple(noise.shape)}")
    schedule = alphas_cumprod(torch.float64).to(noise.device)
    timesteps = ddim_timesteps(steps).tolist()
    x = noise
    for position, t in enumerate(timesteps):
        alpha = schedule[t].to(x.dtype)
        alpha_next = schedule[timesteps[position + 1]].to(x.dtype) if position + 1 < len(timesteps) else torch.ones((), dtype=x.dtype, device=x.device)
        eps = model(x, torch.full((x.shape[0],), float(t), device=x.device, dtype=x.dtype))
        x0 = (x - (1 - alpha).sqrt() * eps) / alpha.sqrt()
        x = alpha_next.sqrt() * x0 + (1 - alpha_next).sqrt() * eps
    return x


def sample_videos(model: nn.Module, num_clips: int, steps: int = 20, seed: int = 0,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """Unguided DDIM samples decoded to videos (num_clips, 16, 3, 32, 32), unclamped."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randn((num_clips * NUM_FRAMES,) + LATENT_SHAPE, generator=generator).to(device)
    return decode(ddim_sample_latents(model, noise, steps))
