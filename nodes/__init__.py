"""ComfyUI nodes of the TITAN-Guide pack (V3 schema).

To add nodes: create ``nodes/<module>.py`` that defines a module-level list
``NODE_CLASSES`` of ``comfy_api.latest.io.ComfyNode`` subclasses, and add
``"<module>"`` to ``NODE_MODULES`` below.
"""

import importlib

# Submodules of this package whose NODE_CLASSES are exposed to ComfyUI.
NODE_MODULES: tuple = ("sampler", "guess", "method", "objective_basic", "cogvideo", "objectives", "embedded")


def collect_node_classes(module_names=NODE_MODULES) -> list:
    """Import each named submodule and concatenate its NODE_CLASSES list."""
    classes = []
    seen = {}
    for module_name in module_names:
        try:
            module = importlib.import_module(f".{module_name}", __name__)
        except ModuleNotFoundError as error:
            if error.name == f"{__name__}.{module_name}":
                raise ImportError(
                    f"nodes.NODE_MODULES lists {module_name!r} but nodes/{module_name}.py does not exist; "
                    "create it or remove the name from NODE_MODULES"
                ) from error
            raise
        module_classes = getattr(module, "NODE_CLASSES", None)
        if not isinstance(module_classes, (list, tuple)):
            raise TypeError(
                f"nodes/{module_name}.py must define NODE_CLASSES as a list of node classes, "
                f"found {type(module_classes).__name__}"
            )
        for node_class in module_classes:
            if not isinstance(node_class, type):
                raise TypeError(f"nodes/{module_name}.py NODE_CLASSES holds {node_class!r}, which is not a class")
            if node_class in seen:
                raise ValueError(
                    f"node class {node_class.__name__} is listed twice (nodes/{seen[node_class]}.py and "
                    f"nodes/{module_name}.py); list it in one NODE_CLASSES only"
                )
            seen[node_class] = module_name
            classes.append(node_class)
    return classes


NODE_CLASSES = collect_node_classes()

# Load torch's forward-AD decompositions now, at pack import in the main thread. Loaded lazily by the first
# JVP, they run torch.jit.script -> ast.parse inside ComfyUI's prompt worker, which CPython 3.11.7 aborted
# there with "SystemError: AST constructor recursion depth mismatch".
import torch.autograd.forward_ad  # noqa: E402

torch.autograd.forward_ad._maybe_load_decompositions()

# AnimateDiff-Evolved: during forward-mode passes, route its motion attention through forward-AD-capable
# attention (does nothing while ADE is not loaded; see nodes/animatediff_support.py).
from . import animatediff_support  # noqa: E402

animatediff_support.install()
