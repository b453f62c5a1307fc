"""Exact-gradient guidance: backpropagation through the same look-ahead, decode and objective as TITAN.

The reference TITAN's estimates are measured against, and the memory bill TITAN avoids. Activation
checkpointing per model call (and per decoded chunk) trades recomputation for memory.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..forward_gradient import exact_gradient
from ..titan import LookaheadGuidance


@dataclass
class ExactGradient(LookaheadGuidance):
    """Same update as TITAN with G = grad f computed by backprop through the unroll (optionally checkpointed)."""

    checkpointed: bool = False

    def checkpoint_model_calls(self) -> bool:
        return self.checkpointed

    def estimate(self, f, x, i, ctx):
        with torch.inference_mode(False):
            loss, grad = exact_gradient(f, ctx.part.get(x))
        return loss, grad, None
