"""Realism read-outs of pixel videos that guidance must not raise: high-frequency energy and frame difference.

Guidance that reaches its target by damage shows up here first: a dense per-element perturbation of the latent
decodes to speckle (high-frequency energy) that flickers from frame to frame (frame difference), while a
classifier may still call the video a success. Videos are (B, T, 3, H, W) in [0, 1]; both read-outs are per video.
"""
from __future__ import annotations

import torch


def high_frequency_energy(videos: torch.Tensor) -> torch.Tensor:
    """Mean |4 p - (its four neighbours)| over interior pixels, channels and frames, per video (B,)."""
    if videos.ndim != 5:
        raise ValueError(f"videos must be (B, T, C, H, W), got shape {tuple(videos.shape)}")
    p = videos.float()
    centre = p[..., 1:-1, 1:-1]
    laplacian = 4 * centre - p[..., :-2, 1:-1] - p[..., 2:, 1:-1] - p[..., 1:-1, :-2] - p[..., 1:-1, 2:]
    return laplacian.abs().flatten(1).mean(1)


def frame_difference(videos: torch.Tensor) -> torch.Tensor:
    """Mean |frame[t+1] - frame[t]| per video (B,)."""
    if videos.ndim != 5:
        raise ValueError(f"videos must be (B, T, C, H, W), got shape {tuple(videos.shape)}")
    return (videos[:, 1:].float() - videos[:, :-1].float()).abs().flatten(1).mean(1)


def realism_ratios(guided: torch.Tensor, unguided: torch.Tensor) -> dict[str, float]:
    """hf_ratio and frame_diff_ratio: the guided videos' mean read-outs over the unguided videos' (same seeds)."""
    return {"hf_ratio": float(high_frequency_energy(guided).mean() / high_frequency_energy(unguided).mean()),
            "frame_diff_ratio": float(frame_difference(guided).mean() / frame_difference(unguided).mean())}
