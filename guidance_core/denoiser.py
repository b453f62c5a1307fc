"""Denoisers in the k-diffusion convention: `denoise(x, sigma) -> x0` with x = x0 + sigma * noise.

This is what ComfyUI hands a sampler function. Adapters below turn eps- and v-prediction networks written
for the variance-preserving convention z_t = sqrt(abar) x0 + sqrt(1 - abar) eps (diffusers UNets, CogVideoX)
into that form: abar = 1 / (1 + sigma^2) and z_t = x / sqrt(1 + sigma^2).
"""
from __future__ import annotations

from typing import Callable, Protocol

import torch
from torch import Tensor


class Denoiser(Protocol):
    """`denoise(x, sigma) -> x0`; sigma is a 0-d tensor (one noise level for the whole batch)."""

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor: ...


def sigmas_from_alphas_cumprod(alphas_cumprod: Tensor) -> Tensor:
    """Noise levels sigma_t = sqrt((1 - abar_t) / abar_t) for every discrete timestep."""
    return ((1 - alphas_cumprod) / alphas_cumprod).sqrt()


def vp_input_scale(sigma: Tensor) -> Tensor:
    """1 / sqrt(1 + sigma^2): maps x to the variance-preserving z_t (and back by division)."""
    return (1 + sigma**2).rsqrt()


class DiscreteSchedule:
    """The table of a discrete-time VP model: converts sigma <-> (fractional) timestep."""

    def __init__(self, alphas_cumprod: Tensor):
        self.alphas_cumprod = alphas_cumprod.double()
        self.sigmas = sigmas_from_alphas_cumprod(self.alphas_cumprod)
        self.log_sigmas = self.sigmas.log()
        self._log_sigmas_on: dict[torch.device, Tensor] = {}

    def _log_sigmas(self, device: torch.device) -> Tensor:
        # one copy per device: no host-to-device copy per call (none is allowed while a CUDA graph is captured)
        if device not in self._log_sigmas_on:
            self._log_sigmas_on[device] = self.log_sigmas.to(device)
        return self._log_sigmas_on[device]

    def timestep(self, sigma: Tensor) -> Tensor:
        """Fractional timestep whose sigma is `sigma` (linear interpolation in log sigma, as k-diffusion)."""
        log_sigma = sigma.double().log().reshape(-1)
        table = self._log_sigmas(log_sigma.device)
        idx = torch.searchsorted(table, log_sigma).clamp(1, len(table) - 1)
        lo, hi = table[idx - 1], table[idx]
        w = ((log_sigma - lo) / (hi - lo)).clamp(0, 1)
        return (idx - 1 + w).reshape(sigma.shape).to(sigma.dtype)

    def sigma(self, timestep: Tensor | float) -> Tensor:
        """Sigma of a (fractional) timestep."""
        t = torch.as_tensor(timestep, dtype=torch.float64)
        lo = t.floor().long().clamp(0, len(self.sigmas) - 1)
        hi = (lo + 1).clamp(max=len(self.sigmas) - 1)
        w = t - lo
        return ((1 - w) * self.log_sigmas[lo] + w * self.log_sigmas[hi]).exp()

    def spaced_sigmas(self, steps: int) -> Tensor:
        """`steps` sigmas at timesteps evenly spaced from the last to the first (linspace), then 0."""
        t = torch.linspace(len(self.sigmas) - 1, 0, steps, dtype=torch.float64)
        return torch.cat([self.sigma(t), t.new_zeros(1)])


class EpsDenoiser:
    """Wrap `eps_model(z_t, t, **cond)` (VP convention) as a k-diffusion denoiser."""

    def __init__(self, eps_model: Callable[..., Tensor], alphas_cumprod: Tensor, **cond):
        self.model, self.schedule, self.cond = eps_model, DiscreteSchedule(alphas_cumprod), cond

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        eps = self.model(x * vp_input_scale(sigma), self.schedule.timestep(sigma), **self.cond)
        return x - sigma * eps


class VDenoiser:
    """Wrap `v_model(z_t, t, **cond)` (v = sqrt(abar) eps - sqrt(1-abar) x0) as a k-diffusion denoiser."""

    def __init__(self, v_model: Callable[..., Tensor], alphas_cumprod: Tensor, **cond):
        self.model, self.schedule, self.cond = v_model, DiscreteSchedule(alphas_cumprod), cond

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        c_in = vp_input_scale(sigma)
        v = self.model(x * c_in, self.schedule.timestep(sigma), **self.cond)
        return x * c_in**2 - sigma * c_in * v


def to_d(x: Tensor, sigma: Tensor, denoised: Tensor) -> Tensor:
    """k-diffusion's ODE derivative dx/dsigma = (x - x0) / sigma: the noise estimate implied by a denoiser output."""
    return (x - denoised) / sigma
