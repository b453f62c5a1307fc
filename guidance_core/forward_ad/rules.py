"""Leaner forward-mode rules for the linear layers (convolutions and linear) and the norms, used inside every JVP.

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
import math
from typing import Iterator

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

_builtin = {"conv1d": torch.conv1d, "conv2d": torch.conv2d, "conv3d": torch.conv3d,
            "linear": torch._C._nn.linear}


def _tangent(t) -> bool:
    """Whether `t` (a tensor or None) carries a forward-mode tangent."""
    return t is not None and fwAD.unpack_dual(t).tangent is not None


def _lean(op_name: str, x, weight, bias, options: tuple):
    """op(x, W, b) and, when only x carries a tangent, op(x_t, W) as the output's tangent; else the builtin."""
    op = _builtin[op_name]
    primal, tangent = fwAD.unpack_dual(x)
    if tangent is None or _tangent(weight) or _tangent(bias):
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


def _channel_view(weight, ndim: int):
    return None if weight is None else weight.reshape(weight.shape[0], *[1] * (ndim - 2))


def _scaled(t, weight):
    return t if weight is None else t * weight


# A norm without its affine part has a symmetric Jacobian, rstd * (I - 11^T / n - x_hat x_hat^T / n) for
# group / layer norm and rstd * (I - x x^T rstd^2 / n) for RMS norm, so its JVP is its vector-Jacobian product:
# the tangent is the fused backward kernel applied to the input's tangent (one kernel, float accumulation for
# half inputs), times the weight.

def _lean_group_norm(input, num_groups, weight=None, bias=None, eps=1e-5):
    """F.group_norm with the lean forward rule (tangent from the fused backward kernel; see above)."""
    primal, tangent = fwAD.unpack_dual(input)
    if tangent is None:
        return _norm_builtin["group_norm"](input, num_groups, weight, bias, eps)
    if _tangent(weight) or _tangent(bias):  # the builtin rule views its tangent: a strided one needs a copy
        return _norm_builtin["group_norm"](input.clone(memory_format=torch.contiguous_format), num_groups, weight,
                                           bias, eps)
    n, c = primal.shape[0], primal.shape[1]
    hw = math.prod(primal.shape[2:])  # not primal[0, 0].numel(): two select calls per norm
    primal = primal.contiguous()  # as F.group_norm does; a no-op for the usual contiguous activation
    # the affine part fused into the value's kernel, as the builtin; the statistics do not depend on it
    out, mean, rstd = torch.native_group_norm(primal, weight, bias, n, c, hw, num_groups, eps)
    t = torch.ops.aten.native_group_norm_backward(tangent.contiguous(), primal, mean, rstd, None, n, c, hw,
                                                  num_groups, [True, False, False])[0]
    return fwAD.make_dual(out, _scaled(t, _channel_view(weight, primal.dim())))


def _lean_layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """F.layer_norm with the lean forward rule. The tangent has the input's dtype (CUDA's fused builtin rule gave
    a float32 tangent for half inputs, which SDPA and matmuls refused)."""
    primal, tangent = fwAD.unpack_dual(input)
    if tangent is None:
        return _norm_builtin["layer_norm"](input, normalized_shape, weight, bias, eps)
    if _tangent(weight) or _tangent(bias):
        return _upcast_half(_norm_builtin["layer_norm"], input, normalized_shape, weight, bias, eps)
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    primal = primal.contiguous()
    out, mean, rstd = torch.native_layer_norm(primal, shape, weight, bias, eps)
    t = torch.ops.aten.native_layer_norm_backward(tangent.contiguous(), primal, shape, mean, rstd, None, None,
                                                  [True, False, False])[0]
    return fwAD.make_dual(out, _scaled(t, weight))


def _lean_rms_norm(input, normalized_shape, weight=None, eps=None):
    """F.rms_norm with the lean forward rule (tangent in the input's dtype, as layer_norm's)."""
    primal, tangent = fwAD.unpack_dual(input)
    if tangent is None:
        return _norm_builtin["rms_norm"](input, normalized_shape, weight, eps)
    if _tangent(weight):
        return _upcast_half(_norm_builtin["rms_norm"], input, normalized_shape, weight, eps)
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    out = _norm_builtin["rms_norm"](primal, shape, weight, eps)
    dims = tuple(range(-len(shape), 0))
    work = torch.float32 if primal.dtype in (torch.float16, torch.bfloat16) else primal.dtype
    x, t = primal.to(work), tangent.to(work)
    rstd = torch.rsqrt(x.square().mean(dims, keepdim=True) + (torch.finfo(primal.dtype).eps if eps is None else eps))
    t = (t - x * rstd.square() * (x * t).mean(dims, keepdim=True)) * rstd
    return fwAD.make_dual(out, _scaled(t, weight).to(primal.dtype))


def _upcast_half(norm, input, *args):
    """The builtin norm, in float32 for a half input (cast back): the fallback when weights carry tangents (the
    builtin rule's tangent would be float32 on CUDA)."""
    if input.dtype not in (torch.float16, torch.bfloat16):
        return norm(input, *args)
    up = [a.float() if isinstance(a, torch.Tensor) else a for a in args]
    return norm(input.float(), *up).to(input.dtype)


_norm_builtin = {"group_norm": F.group_norm, "layer_norm": F.layer_norm, "rms_norm": F.rms_norm}
LEAN_NORMS = {"group_norm": _lean_group_norm, "layer_norm": _lean_layer_norm, "rms_norm": _lean_rms_norm}


def lean_norms():
    """Scope in which F.group_norm / layer_norm / rms_norm use the lean forward rules (restored on exit).

    The builtin rules cost several times the norm: group_norm's dispatched 187 aten ops (zero tangents of the
    frozen affine parameters materialised and multiplied). The lean rules run the normalisation once and take
    the tangent from the fused backward kernel (group / layer norm), times the weight. They also fix two
    builtin-rule faults: group_norm's rule views its tangent (a strided tangent failed), and CUDA's fused
    layer_norm / rms_norm rules give a float32 tangent for a half input (an H200 JVP of fp16 Wan 2.1 failed in
    SDPA on it)."""
    return replaced_functions(LEAN_NORMS)
