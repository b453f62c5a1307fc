"""ComfyUI nodes of the TITAN-Guide pack (V3 schema): each module lists its io.ComfyNode classes in NODE_CLASSES,
collected below."""

# Load torch's forward-AD decompositions now, at pack import in the main thread. Loaded lazily by the first
# JVP, they run torch.jit.script -> ast.parse inside ComfyUI's prompt worker, which CPython 3.11.7 aborted
# there with "SystemError: AST constructor recursion depth mismatch".
import torch.autograd.forward_ad

from ..guidance_core.validation import SENT_VALUES
from . import (animatediff_support, cogvideo, embedded, guess, method, native_video, objective_basic, objectives,
               sampler)

torch.autograd.forward_ad._maybe_load_decompositions()

NODE_CLASSES = [*sampler.NODE_CLASSES, *guess.NODE_CLASSES, *method.NODE_CLASSES, *objective_basic.NODE_CLASSES,
                *cogvideo.NODE_CLASSES, *objectives.NODE_CLASSES, *embedded.NODE_CLASSES, *native_video.NODE_CLASSES]

# AnimateDiff-Evolved: during forward-mode passes, route its motion attention through forward-AD-capable
# attention (does nothing while ADE is not loaded; see nodes/animatediff_support.py).
animatediff_support.install()

try:  # keep the widget values as the API sent them, before ComfyUI converts them (run_harness.checked_inputs)
    from server import PromptServer
    PromptServer.instance.add_on_prompt_handler(lambda data, types={node.__name__ for node in NODE_CLASSES}:
                                                SENT_VALUES.keep(data.get("prompt"), types) or data)
except (ImportError, AttributeError):  # imported without a ComfyUI server
    pass
