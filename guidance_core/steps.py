"""Sampler steps in the k-diffusion convention, their shared helpers (to_d, noise draws, activation
checkpointing) and the look-ahead traverse from the current sigma to 0 (paper Eq. 7).

In the k-diffusion convention the deterministic DDIM step (eta = 0) *is* the Euler step of the probability-flow
ODE: x_next = x0 + sigma_next * (x - x0) / sigma. Both names are accepted; tests check it against diffusers'
DDIMScheduler.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .denoiser import Denoiser, to_d

STEPS = ("euler", "ddim", "heun")


def noise_like(x: Tensor, generator: torch.Generator | None, shape=None, dtype: torch.dtype | None = None) -> Tensor:
    """Standard normal noise of `shape` (default: x's) drawn on the generator's device in `dtype` (default: x's),
    then moved to x's device (and dtype), so a CPU generator gives the same draws on every device."""
    device = generator.device if generator is not None else x.device
    noise = torch.randn(tuple(x.shape if shape is None else shape), generator=generator, device=device,
                        dtype=x.dtype if dtype is None else dtype)
    return noise.to(x.device) if dtype is None else noise.to(x)


def derived_seed(seed: int, stream: int) -> int:
    """A seed for another random stream derived from `seed` (one 64-bit LCG step; `stream` is the increment), so
    the streams of one run do not repeat each other's draws."""
    return (int(seed) * 6364136223846793005 + stream) % 2**63


def with_checkpointing(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """`fn` with activation checkpointing: its activations are recomputed in the backward pass, not kept."""
    return lambda *args: checkpoint(fn, *args, use_reentrant=False)


def reads_forbidden() -> bool:
    """Whether nothing may synchronise with the GPU (call only where CUDA is in use): a CUDA graph is being
    captured on the current stream, or PyTorch's sync debug mode is "error" (GraphedJvp's probe pass before a
    capture, which must see what the capture sees)."""
    return torch.cuda.is_current_stream_capturing() or torch.cuda.get_sync_debug_mode() == 2


def capturing(tensor: Tensor) -> bool:
    """Whether no check may read `tensor`'s values back (see `reads_forbidden`)."""
    return tensor.is_cuda and reads_forbidden()


def _is_zero(sigma: Tensor) -> bool:
    """Whether a step ends at sigma 0; never asked while a CUDA graph is captured (unroll never passes 0 then)."""
    if capturing(sigma):
        return False
    return float(sigma) == 0.0


def euler_step(denoise: Denoiser, x: Tensor, sigma: Tensor, sigma_next: Tensor, denoised: Tensor | None = None) -> Tensor:
    """One Euler / DDIM(eta=0) step from sigma to sigma_next."""
    denoised = denoise(x, sigma) if denoised is None else denoised
    return denoised + (sigma_next / sigma) * (x - denoised)


def heun_step(denoise: Denoiser, x: Tensor, sigma: Tensor, sigma_next: Tensor, denoised: Tensor | None = None) -> Tensor:
    """One Heun (2nd order) step; falls back to Euler on the last step to sigma 0."""
    denoised = denoise(x, sigma) if denoised is None else denoised
    d = to_d(x, sigma, denoised)
    x_euler = x + (sigma_next - sigma) * d
    if _is_zero(sigma_next):
        return x_euler
    d_next = to_d(x_euler, sigma_next, denoise(x_euler, sigma_next))
    return x + (sigma_next - sigma) * (d + d_next) / 2


def get_step(name: str) -> Callable[..., Tensor]:
    """The step function called `name` (euler, ddim or heun)."""
    if name in ("euler", "ddim"):
        return euler_step
    if name == "heun":
        return heun_step
    raise ValueError(f"unknown sampler step {name!r}; choose one of {STEPS}")


def ancestral_step(denoised: Tensor, x: Tensor, sigma: Tensor, sigma_next: Tensor, eta: float,
                   generator: torch.Generator | None) -> Tensor:
    """Stochastic DDIM step with noise fraction `eta` (0 = deterministic, 1 = ancestral)."""
    if eta == 0 or float(sigma_next) == 0.0:
        return euler_step(None, x, sigma, sigma_next, denoised)
    sigma_up = torch.minimum(sigma_next, eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2).sqrt())
    sigma_down = (sigma_next**2 - sigma_up**2).sqrt()
    noise = noise_like(x, generator, dtype=torch.float32)  # drawn in float32 whatever the latent's dtype
    return denoised + (sigma_down / sigma) * (x - denoised) + sigma_up * noise


def lookahead_sigmas(remaining: Tensor, lookahead: int | str) -> Tensor:
    """Sub-sample the remaining schedule (current sigma first, 0 last) to `lookahead` steps before the Tweedie estimate.

    0 keeps only the current sigma (Tweedie estimate); "all" keeps every remaining step; k keeps the current
    sigma, the next one and k - 1 more spread evenly to the last nonzero sigma: k + 1 model calls in all.
    """
    nonzero = remaining[remaining > 0]
    available = len(nonzero) - 1
    k = available if lookahead == "all" else int(lookahead)
    if k < 0:
        raise ValueError(f"look-ahead must be >= 0 or 'all', got {lookahead!r}")
    if k > available:
        raise ValueError(f"look-ahead of {k} steps exceeds the {available} steps left after this one; "
                         "use a smaller look-ahead or 'all'")
    # indices into the later sigmas: k = 1 is the next step (the authors' default), larger k spread to the end
    idx = torch.linspace(0, available - 1, k).round().long() if k else torch.empty(0, dtype=torch.long)
    later = nonzero[1:][idx.to(nonzero.device)]
    return torch.cat([nonzero[:1], later, remaining.new_zeros(1)])


def unroll(denoise: Denoiser, x: Tensor, sigmas: Tensor, step: str = "euler", checkpointed: bool = False) -> Tensor:
    """Run the deterministic sampler along `sigmas` (ending in 0) and return the clean estimate x0.

    The last step to sigma 0 is the Tweedie estimate at the last nonzero sigma. `checkpointed` recomputes each
    model call during backward (activation checkpointing) for the exact-gradient baseline. The sigmas must be
    positive but the last (as `lookahead_sigmas` builds them); the check is skipped while a CUDA graph is
    captured, so the traverse never synchronises with the CPU.
    """
    step_fn = get_step(step)
    if len(sigmas) < 2:
        raise ValueError(f"unroll needs at least one sigma and the final 0, got {len(sigmas)} value(s)")
    if not capturing(sigmas) and not (bool((sigmas[:-1] > 0).all()) and float(sigmas[-1]) == 0.0):
        raise ValueError(f"unroll needs positive sigmas ending in one 0, got {sigmas.tolist()}")
    sigmas = sigmas.clone()  # inference-mode sigmas cannot be saved for backward
    call = with_checkpointing(denoise) if checkpointed else denoise
    for i in range(len(sigmas) - 2):
        x = step_fn(call, x, sigmas[i], sigmas[i + 1])
    return call(x, sigmas[-2])  # the Tweedie estimate at the last nonzero sigma
