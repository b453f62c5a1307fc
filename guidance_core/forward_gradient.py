"""Forward gradients: G = <grad f, V> V from forward-mode AD, never from backpropagation (paper Eq. 6).

`f` maps the latent to per-sample losses (samples,) or per-frame losses (samples, frames). Samples are
independent, so one JVP with a tangent V gives every sample its own directional derivative h_s = <grad f_s, V_s>.
With per-frame losses one JVP yields one derivative per frame, h_{s,j} = <grad f_{s,j}, V>, and G scales frame j
of V by h_{s,j}: a block-diagonal estimate that ignores how frame j's loss depends on the other frames' latents.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .forward_ad.attention import forward_ad_attention
from .layout import Layout

ESTIMATORS = ("jvp", "dual", "central_difference")
FORWARD_MODE_ESTIMATORS = ("jvp", "dual")  # one forward-mode pass each: what a CUDA graph can replay
# autograd.forward_ad's dual tensors: the same JVP as torch.func.jvp (equal to the last bit on the SD1.5 UNet) with
# less dispatch per operator (functorch wraps every intermediate): 59 against 81 ms for a small SD1.5-layout UNet's
# JVP on one CPU thread, where both are bound by dispatch, as the node path is on a GPU
DEFAULT_ESTIMATOR = "dual"


@dataclass
class ForwardGradient:
    """Result of one estimate: the loss at x, directional derivatives h (K, samples[, frames]) and G."""

    loss: Tensor
    derivatives: Tensor
    gradient: Tensor


def _jvp_func(f: Callable[[Tensor], Tensor], x: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    return torch.func.jvp(f, (x,), (v,))


def _jvp_dual(f: Callable[[Tensor], Tensor], x: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    # torch.autograd.forward_ad tolerates module hooks and in-place ops that torch.func.jvp refuses
    import torch.autograd.forward_ad as fwAD
    with fwAD.dual_level():
        out = fwAD.unpack_dual(f(fwAD.make_dual(x, v)))
        return out.primal, out.tangent


def directional_derivative(f: Callable[[Tensor], Tensor], x: Tensor, v: Tensor, estimator: str = DEFAULT_ESTIMATOR,
                           delta: float = 1e-3) -> tuple[Tensor, Tensor]:
    """(f(x), <grad f(x), v>) from one forward-mode pass (or two forward passes for central differences)."""
    # forward AD ignores no_grad (no backward graph is kept) but is disabled by inference mode, which hosts use
    with torch.inference_mode(False), torch.no_grad(), forward_ad_attention():
        if estimator == "jvp":
            loss, h = _jvp_func(f, x, v)
        elif estimator == "dual":
            loss, h = _jvp_dual(f, x, v)
        elif estimator == "central_difference":
            # the antithetic pair x +- delta v: second-order accurate, needs no forward-mode AD at all
            plus, minus = f(x + delta * v), f(x - delta * v)
            loss, h = f(x), (plus - minus) / (2 * delta)
        else:
            raise ValueError(f"unknown estimator {estimator!r}; choose one of {ESTIMATORS}")
    return loss.detach(), h.detach()


def forward_gradient(f: Callable[[Tensor], Tensor], x: Tensor, tangents: Tensor, layout: Layout = Layout(),
                     estimator: str = DEFAULT_ESTIMATOR, delta: float = 1e-3,
                     jvp: Callable[..., tuple[Tensor, Tensor]] | None = None) -> ForwardGradient:
    """Average of h_k V_k over the K tangents (K, *x.shape), one forward-mode pass each.

    `jvp(f, x, v) -> (f(x), <grad f, v>)` replaces the estimator where given (a CUDA-graph replay).
    """
    if tangents.shape[1:] != x.shape:
        raise ValueError(f"tangents must have shape (K, {', '.join(map(str, x.shape))}), got {tuple(tangents.shape)}")
    layout.check(x)
    gradient = torch.zeros_like(x)
    losses, derivatives = [], []
    for v in tangents:
        loss, h = directional_derivative(f, x, v, estimator, delta) if jvp is None else jvp(f, x, v)
        h = _per_sample(h, layout)
        gradient += (layout.per_frame(h, v) if h.dim() == 2 else layout.per_sample(h, v)) * v
        losses.append(loss)
        derivatives.append(h)
    return ForwardGradient(losses[0], torch.stack(derivatives), gradient / len(tangents))


def _per_sample(h: Tensor, layout: Layout) -> Tensor:
    """Accept a scalar loss only for a single sample; otherwise (samples,) or (samples, frames)."""
    if h.dim() == 0:
        if layout.samples != 1:
            raise ValueError(f"the loss returned a scalar for {layout.samples} samples; return one loss per sample")
        return h.reshape(1)
    if h.shape[0] != layout.samples or h.dim() > 2:
        raise ValueError(f"the loss must have shape (samples,) or (samples, frames) with samples={layout.samples}, "
                         f"got {tuple(h.shape)}")
    return h


def exact_gradient(f: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    """(loss, grad of the summed loss) by backpropagation: the reference every estimate is measured against."""
    with torch.enable_grad():
        x = x.detach().clone().requires_grad_(True)  # hosts hand in inference tensors
        loss = f(x)
        (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), grad
