"""AnimateDiff-Evolved (ADE) support: motion attention with a forward derivative during TITAN-Guide's JVPs.

Every guided model call runs through ADE's wrappers and motion modules, but ADE's `CrossAttentionMM` binds
`self.actual_attention` once from ComfyUI's flags and never sees `optimized_attention_override`; its
sub-quadratic and split choices write into buffers in place and have no forward derivative. For a forward-mode
pass only (`install()` registers the scope with guidance_core), `MotionAttentionRoute.scope()` puts a data
descriptor `actual_attention` on each loaded CrossAttentionMM class: every instance then reads ComfyUI's
`attention_pytorch` (SDPA, the forward-AD router there) while assignments (ADE's CUDA-error fallback,
`reset_attention_type`) still land in the instance; on exit, also after an error, the descriptor is removed.
ADE may load after this pack, so its classes are looked up in `sys.modules` each time.
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

class MotionAttentionRoute:
    """ADE's attention signature `(q, k, v, heads, mask)` through ComfyUI's attention_pytorch (SDPA: the forward-AD
    router inside a JVP); `scope()` makes every loaded CrossAttentionMM read it; `calls` counts what it served."""

    class Descriptor:
        """Class-level data descriptor: reads give the route, writes go to the instance."""

        def __init__(self, function):
            self.function = function

        def __get__(self, instance, owner=None):
            return self.function

        def __set__(self, instance, value):
            instance.__dict__[ATTRIBUTE] = value

        def __delete__(self, instance):
            instance.__dict__.pop(ATTRIBUTE, None)

    def __init__(self):
        self.calls = 0
        self._lock = threading.Lock()
        self._logged = False

    def __call__(self, q, k, v, heads, mask=None, *args, **kwargs):
        with self._lock:
            self.calls += 1
            first, self._logged = not self._logged, True
        if first:
            LOG.info("TITAN-Guide: AnimateDiff-Evolved motion attention runs through guidance_core's forward-AD "
                     "SDPA inside forward-mode passes")
        # ComfyUI's CUDA backend-priority context around SDPA is harmless: the router selects MATH itself
        return attention_pytorch(q, k, v, heads, mask, *args, **kwargs)

    @staticmethod
    def classes() -> list:
        """The CrossAttentionMM classes of every ADE copy ComfyUI loaded (usually one; none without ADE)."""
        found = []
        for name, module in list(sys.modules.items()):
            if module is None or not name.endswith(ADE_MODULE_SUFFIX):
                continue
            cls = getattr(module, ADE_CLASS_NAME, None)
            if isinstance(cls, type) and hasattr(cls, "reset_attention_type") and cls not in found:
                found.append(cls)
        return found

    @contextlib.contextmanager
    def scope(self, function=None, classes=None) -> Iterator[list]:
        """Scope in which ADE's motion attention (`classes`, default `classes()`) reads `function` (default: this
        route); yields the patched classes; always restores. Nested scopes leave a class to the outermost one; a
        class that defines `actual_attention` itself (a future ADE) is left alone, with a warning."""
        function = self if function is None else function
        classes = self.classes() if classes is None else list(classes)
        patched = []
        try:
            for cls in classes:
                current = cls.__dict__.get(ATTRIBUTE)
                if isinstance(current, self.Descriptor):
                    continue
                if current is not None:
                    LOG.warning("TITAN-Guide: %s.%s already defines %s; its motion attention is not rerouted for "
                                "forward-mode AD", cls.__module__, cls.__qualname__, ATTRIBUTE)
                    continue
                setattr(cls, ATTRIBUTE, self.Descriptor(function))
                patched.append(cls)
            yield patched
        finally:
            for cls in patched:
                if isinstance(cls.__dict__.get(ATTRIBUTE), self.Descriptor):
                    delattr(cls, ATTRIBUTE)


forward_ad_motion_attention = MotionAttentionRoute()
motion_attention_for_forward_ad = forward_ad_motion_attention.scope
motion_attention_classes = MotionAttentionRoute.classes
_unregister = None


def routed_call_count() -> int:
    """How many motion-attention calls went through the forward-AD route in this process."""
    return forward_ad_motion_attention.calls


def install() -> None:
    """Register the scope with guidance_core's forward-AD attention contexts (idempotent)."""
    global _unregister
    if _unregister is None:
        from ..guidance_core import register_attention_context

        _unregister = register_attention_context(motion_attention_for_forward_ad)
