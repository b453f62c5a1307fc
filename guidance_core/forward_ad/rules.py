"""Leaner forward-mode rules for the linear layers (convolutions and linear), used inside every JVP.

PyTorch's built-in forward derivative of `convolution` and `linear` is `op(x_t, W) + op(x, W_t)`, and when
the weight has no tangent (always, for a frozen network) the second term is still computed, on a
materialised zero weight: a third of a JVP's convolution time and most of its extra matrix products were
spent multiplying by zero (torch.profiler on the SD1.5 video UNet: 294 convolutions per JVP against 98 per
forward). Inside `forward_ad_attention()` F.conv1d/2d/3d and F.linear split a dual input into primal and
tangent and compute op(x, W, b) and op(x_t, W) only, when the input alone carries a tangent (weights or
bias with tangents take the builtin rule). An autograd.Function with a jvp rule did the same arithmetic
but cost about 1 ms of Python per call under torch.func, more than it saved.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

_builtin = {"conv1d": torch.conv1d, "conv2d": torch.conv2d, "conv3d": torch.conv3d,
            "linear": torch._C._nn.linear}


def _lean(op_name: str, x, weight, bias, options: tuple):
    """op(x, W, b) and, when only x carries a tangent, op(x_t, W) as the output's tangent; else the builtin."""
    op = _builtin[op_name]
    primal, tangent = fwAD.unpack_dual(x)
    if tangent is None or fwAD.unpack_dual(weight).tangent is not None or (
            bias is not None and fwAD.unpack_dual(bias).tangent is not None):
        return op(x, weight, bias, *options)
    return fwAD.make_dual(op(primal, weight, bias, *options), op(tangent, weight, None, *options))


def _lean_linear(input, weight, bias=None):
    """F.linear with the lean forward rule."""
    return _lean("linear", input, weight, bias, ())


def _lean_conv(op_name):
    def conv(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
        return _lean(op_name, input, weight, bias, (stride, padding, dilation, groups))
    conv.__name__ = op_name
    conv.__doc__ = f"F.{op_name} with the lean forward rule."
    return conv


LEAN = {"linear": _lean_linear, **{name: _lean_conv(name) for name in ("conv1d", "conv2d", "conv3d")}}


@contextlib.contextmanager
def replaced_functions(replacements: dict) -> Iterator[None]:
    """Scope in which `torch.nn.functional.<name>` is `replacements[name]` (each restored on exit, also on errors)."""
    originals = {name: getattr(F, name) for name in replacements}
    for name, function in replacements.items():
        setattr(F, name, function)
    try:
        yield
    finally:
        for name, function in originals.items():
            setattr(F, name, function)


@contextlib.contextmanager
def attributes_replaced(objects, name: str, value) -> Iterator[None]:
    """Scope in which attribute `name` of each object is `value` (each object's own value restored on exit)."""
    saved = [(obj, getattr(obj, name)) for obj in objects]
    for obj, _ in saved:
        setattr(obj, name, value)
    try:
        yield
    finally:
        for obj, original in saved:
            setattr(obj, name, original)


def lean_linear_layers():
    """Scope in which F.conv1d/2d/3d and F.linear use the lean forward rule (restored on exit)."""
    return replaced_functions(LEAN)


def contiguous_group_norm():
    """group_norm's forward-AD rule views its tangent, which fails for a strided tangent of a contiguous primal
    (after attention's transposes): inside this scope group_norm gets a contiguous copy."""
    original = F.group_norm

    def group_norm(input, *args, **kwargs):
        return original(input.clone(memory_format=torch.contiguous_format), *args, **kwargs)

    return replaced_functions({"group_norm": group_norm})


def float32_norms():
    """layer_norm's and rms_norm's forward-AD rules return a float32 tangent for fp16 / bf16 inputs on CUDA (the
    fused kernels compute in float32): a half primal then meets a float tangent, which SDPA and matmuls refuse
    (seen as "expected scalar type Float but found Half" in a JVP of fp16 Wan 2.1 on an H200, where q and k pass
    rms_norm). Inside this scope half-precision norms run in float32 and are cast back."""
    layer_norm_original, rms_norm_original = F.layer_norm, F.rms_norm
    up = (lambda t: None if t is None else t.float())

    def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
        if input.dtype not in (torch.float16, torch.bfloat16):
            return layer_norm_original(input, normalized_shape, weight, bias, eps)
        return layer_norm_original(input.float(), normalized_shape, up(weight), up(bias), eps).to(input.dtype)

    def rms_norm(input, normalized_shape, weight=None, eps=None):
        if input.dtype not in (torch.float16, torch.bfloat16):
            return rms_norm_original(input, normalized_shape, weight, eps)
        return rms_norm_original(input.float(), normalized_shape, up(weight), eps).to(input.dtype)

    return replaced_functions({"layer_norm": layer_norm, "rms_norm": rms_norm})
