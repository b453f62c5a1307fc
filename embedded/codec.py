"""Fixed, exactly invertible pixel-space "latent" encoding of the embedded world's videos.

latent = pixel_unshuffle(video, 2) standardised: (3, 32, 32) -> (12, 16, 16) per frame.

Why no trained VAE: this codec is exact (decode(encode(x)) == x up to float rounding), linear
and therefore trivially differentiable, and decoding is free -- so the forward-mode JVP through
``loss(decode(x0(x_t)))`` costs only the UNet, and guidance errors can never hide in a VAE.

Constants: ``PIXEL_MEAN`` and ``PIXEL_STD`` are the pixel mean and standard deviation of the
world measured on 4096 clips (0.319 and 0.152), rounded; standardised pixels are then multiplied
by ``LATENT_STD`` = 0.25, so latents have a standard deviation of about 0.25, not 1.

Why 0.25 and not unit variance: the SD1.5 schedule keeps sqrt(alpha_bar) = 0.068 of the signal at
t = 999.  A 16-frame clip of one large coherent object is so low-dimensional that, at unit
variance, that remnant reveals the object (and the background brightness) to the network, which
then learns to read them off x_T instead of generating them -- and sampling from pure noise gave
flat grey clips (measured with a first model).  Scaling the data by 0.25 divides the SNR by 16 at
every t (a "shifted" schedule for the data, while the schedule itself stays SD1.5's), so x_T no
longer carries the clip and the model must create it.

Layouts: videos are (B, F, 3, 32, 32) in [0, 1]; latents follow AnimateDiff-in-ComfyUI with the
frames in the batch dimension, (B * F, 12, 16, 16), clip-major (all frames of clip 0 first).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .world import IMAGE_SIZE, NUM_CHANNELS, NUM_FRAMES

PIXEL_MEAN = 0.32
PIXEL_STD = 0.15
LATENT_STD = 0.25
DOWNSCALE = 2
LATENT_CHANNELS = NUM_CHANNELS * DOWNSCALE * DOWNSCALE  # 12
LATENT_SIZE = IMAGE_SIZE // DOWNSCALE  # 16
LATENT_SHAPE = (LATENT_CHANNELS, LATENT_SIZE, LATENT_SIZE)  # per frame


def encode(video: torch.Tensor) -> torch.Tensor:
    """Video (B, F, 3, 32, 32) in [0, 1] -> latent (B*F, 12, 16, 16) with standard deviation ~0.25."""
    if video.ndim != 5 or tuple(video.shape[2:]) != (NUM_CHANNELS, IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"encode expects a video of shape (B, F, {NUM_CHANNELS}, {IMAGE_SIZE}, {IMAGE_SIZE}), "
                         f"got {tuple(video.shape)}")
    frames = video.reshape(-1, NUM_CHANNELS, IMAGE_SIZE, IMAGE_SIZE)
    return (F.pixel_unshuffle(frames, DOWNSCALE) - PIXEL_MEAN) * (LATENT_STD / PIXEL_STD)


def decode(latent: torch.Tensor, num_frames: int = NUM_FRAMES) -> torch.Tensor:
    """Latent (B*F, 12, 16, 16) -> video (B, F, 3, 32, 32); exact inverse of ``encode`` (no clamping)."""
    if latent.ndim != 4 or tuple(latent.shape[1:]) != LATENT_SHAPE:
        raise ValueError(f"decode expects latents of shape (B*F, {LATENT_CHANNELS}, {LATENT_SIZE}, {LATENT_SIZE}), "
                         f"got {tuple(latent.shape)}")
    if latent.shape[0] % num_frames:
        raise ValueError(f"latent batch {latent.shape[0]} is not a multiple of num_frames={num_frames}; "
                         "frames must be stacked in the batch dimension, clip by clip")
    frames = F.pixel_shuffle(latent * (PIXEL_STD / LATENT_STD) + PIXEL_MEAN, DOWNSCALE)
    return frames.reshape(-1, num_frames, NUM_CHANNELS, IMAGE_SIZE, IMAGE_SIZE)


def preview_rgb_factors() -> tuple[list, list]:
    """Latent -> preview RGB in [-1, 1]: mean of each colour's 4 unshuffled sub-pixels, de-standardised."""
    down = DOWNSCALE
    per_pixel = PIXEL_STD / LATENT_STD  # latent unit -> pixel unit
    factors = []
    for channel in range(LATENT_CHANNELS):
        colour = channel // (down * down)  # pixel_unshuffle orders channels colour-major
        row = [0.0, 0.0, 0.0]
        row[colour] = 2.0 * per_pixel / (down * down)
        factors.append(row)
    bias = [2.0 * PIXEL_MEAN - 1.0] * 3
    return factors, bias


class CodecAutoencoder(torch.nn.Module):
    """The codec as a VAE first-stage model (a host's VAE wrapper calls encode / decode): frames (N, 3, 32, 32) in [0, 1] <-> latents (N, 12, 16, 16)."""

    def encode(self, pixels: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """Exact encode of single frames (any number; frames need not form whole videos)."""
        return encode(pixels[:, None])

    def decode(self, latents: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """Exact, unclamped (so differentiable) decode of single frames."""
        return decode(latents, num_frames=1)[:, 0]
