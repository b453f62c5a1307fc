"""TITAN-Guide node pack for ComfyUI (V3 extension entry point).

ComfyUI imports this folder as a package and awaits ``comfy_entrypoint()``.
Importing this module does nothing heavy: ComfyUI modules and the node modules
are imported only when ComfyUI calls the entry point.
"""

import os

PACK_ROOT = os.path.dirname(os.path.abspath(__file__))

# Weights shipped inside the repository (the embedded tiny video model).
EMBEDDED_MODELS_DIR = os.path.join(PACK_ROOT, "models", "titan_guide")

WEIGHT_EXTENSIONS = frozenset({".pth", ".safetensors"})

# folder_paths name -> extra folders besides ComfyUI's models/<name>.
MODEL_FOLDERS = {
    "titan_guide": (EMBEDDED_MODELS_DIR,),
    "dover": (),
    "imagebind": (),
}


def register_model_folders() -> None:
    """Register titan_guide, dover and imagebind model folders with ComfyUI's folder_paths."""
    import folder_paths

    for name, extra_dirs in MODEL_FOLDERS.items():
        for folder in (os.path.join(folder_paths.models_dir, name), *extra_dirs):
            folder_paths.add_model_folder_path(name, folder)
        paths, extensions = folder_paths.folder_names_and_paths[name]
        # A folder first declared in an extra_model_paths.yaml starts with no
        # extension filter (meaning "any file"); restrict it to weight files.
        folder_paths.folder_names_and_paths[name] = (paths, set(extensions) | WEIGHT_EXTENSIONS)


async def comfy_entrypoint():
    """Return the ComfyExtension that lists TITAN-Guide's nodes (called by ComfyUI)."""
    from .comfy_v3 import ComfyExtension

    from .nodes import NODE_CLASSES

    register_model_folders()

    class TitanGuideExtension(ComfyExtension):
        """Extension object ComfyUI queries for the pack's node classes."""

        async def get_node_list(self):
            """Return the pack's V3 node classes."""
            return list(NODE_CLASSES)

    return TitanGuideExtension()
