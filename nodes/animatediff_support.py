"""AnimateDiff-Evolved (ADE) support: motion attention with a forward derivative during TITAN-Guide's JVPs.

Nothing else is needed for ADE: its evolved sampling is a set of ModelPatcher wrappers (OUTER_SAMPLE,
CALC_COND_BATCH for context windows) and motion modules injected when the model loads, and TITAN-Guide's
sampler runs inside ComfyUI's CFGGuider.sample, so every guided model call goes through them.

The exception is ADE's temporal attention. `CrossAttentionMM` (animatediff/utils_motion.py; ADE's
`VersatileAttention` subclasses it) does not use ComfyUI's `optimized_attention` and never sees
`transformer_options["optimized_attention_override"]`: each instance binds `self.actual_attention` in
__init__ to a function ADE chose once, at import, from ComfyUI's flags (`attention_pytorch` when PyTorch
attention is on, ComfyUI's default on NVIDIA; `attention_sub_quad` or `attention_split` otherwise), and calls
`self.actual_attention(q, k, v, heads, mask)`. Inside a forward-mode pass the SDPA choice works (torch's
SDPA is guidance_core's router then, which selects MATH itself despite ComfyUI's backend-priority context);
the sub-quadratic and split choices, which write into buffers in place, have no forward derivative.

`motion_attention_for_forward_ad()` sets, for its scope only, a data descriptor `actual_attention` on each
loaded CrossAttentionMM class. A data descriptor on the class takes precedence over the instance attribute,
so every instance (of the class and its subclasses) reads ComfyUI's `attention_pytorch`, whose SDPA call
inside the JVP scope is guidance_core's forward-AD router (fused
flash JVP for long sequences on CUDA, chunked MATH otherwise; ADE's temporal sequences are short), while assignments
(ADE's CUDA-error fallback, `reset_attention_type`) still land in the instance. On exit, also after an error,
the descriptor is removed and every instance reads its own choice again; no model, module or instance is
changed. `install()` registers the scope with guidance_core, which enters it inside
`guidance_core.forward_ad_attention()`, i.e. only for forward-mode passes: plain sampler steps keep ADE's
fast attention.

ADE may be imported after this pack (custom node packs load in folder order), so its classes are looked up
in `sys.modules` each time the scope is entered; without ADE the scope does nothing.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from typing import Iterator

from comfy.ldm.modules.attention import attention_pytorch

LOG = logging.getLogger("titan_guide")

# ComfyUI imports a custom node folder as a package named after its path, so ADE's module is
# "<path with '.' as '_x_'>.animatediff.utils_motion" whatever the folder is called.
ADE_MODULE_SUFFIX = ".animatediff.utils_motion"
ADE_CLASS_NAME = "CrossAttentionMM"
ATTRIBUTE = "actual_attention"

_lock = threading.Lock()
_routed_calls = 0
_logged_route = False


def routed_call_count() -> int:
    """How many motion-attention calls went through the forward-AD route in this process."""
    return _routed_calls


def forward_ad_motion_attention(q, k, v, heads, mask=None, *args, **kwargs):
    """ADE's attention signature `(q, k, v, heads, mask)` through ComfyUI's attention_pytorch, whose SDPA call is
    guidance_core's forward-AD router inside the JVP scope (chunked MATH for ADE's short temporal sequences)."""
    global _routed_calls, _logged_route
    with _lock:
        _routed_calls += 1
        first = not _logged_route
        _logged_route = True
    if first:
        LOG.info("TITAN-Guide: AnimateDiff-Evolved motion attention runs through guidance_core's forward-AD "
                 "SDPA inside forward-mode passes")
    # ComfyUI's CUDA backend-priority context around SDPA is harmless: the router selects MATH itself
    return attention_pytorch(q, k, v, heads, mask, *args, **kwargs)


class _ForwardADAttentionDescriptor:
    """Class-level data descriptor: reads give the forward-AD attention, writes go to the instance."""

    def __init__(self, function):
        self.function = function

    def __get__(self, instance, owner=None):
        return self.function

    def __set__(self, instance, value):
        instance.__dict__[ATTRIBUTE] = value

    def __delete__(self, instance):
        instance.__dict__.pop(ATTRIBUTE, None)


def motion_attention_classes() -> list:
    """The CrossAttentionMM classes of every loaded ADE copy (usually one; none without ADE)."""
    found = []
    for name, module in list(sys.modules.items()):
        if module is None or not name.endswith(ADE_MODULE_SUFFIX):
            continue
        cls = getattr(module, ADE_CLASS_NAME, None)
        if isinstance(cls, type) and hasattr(cls, "reset_attention_type") and cls not in found:
            found.append(cls)
    return found


@contextlib.contextmanager
def motion_attention_for_forward_ad(function=forward_ad_motion_attention, classes=None) -> Iterator[list]:
    """Scope in which ADE's motion attention reads `function`; yields the patched classes; always restores.

    `classes` defaults to `motion_attention_classes()`. Nested scopes leave a class to the outermost one. A
    class that defines `actual_attention` itself (a future ADE) is left alone, with a warning.
    """
    classes = motion_attention_classes() if classes is None else list(classes)
    patched = []
    try:
        for cls in classes:
            current = cls.__dict__.get(ATTRIBUTE)
            if isinstance(current, _ForwardADAttentionDescriptor):
                continue
            if current is not None:
                LOG.warning("TITAN-Guide: %s.%s already defines %s; its motion attention is not rerouted for "
                            "forward-mode AD", cls.__module__, cls.__qualname__, ATTRIBUTE)
                continue
            setattr(cls, ATTRIBUTE, _ForwardADAttentionDescriptor(function))
            patched.append(cls)
        yield patched
    finally:
        for cls in patched:
            if isinstance(cls.__dict__.get(ATTRIBUTE), _ForwardADAttentionDescriptor):
                delattr(cls, ATTRIBUTE)


_unregister = None


def install() -> None:
    """Register the scope with guidance_core's forward-AD attention contexts (idempotent)."""
    global _unregister
    if _unregister is not None:
        return
    from ..guidance_core import register_attention_context

    _unregister = register_attention_context(motion_attention_for_forward_ad)


def uninstall() -> None:
    """Undo `install()`."""
    global _unregister
    if _unregister is not None:
        _unregister()
        _unregister = None
