"""The layout the README's code map describes, checked on the source: the engine packages never import ComfyUI
or nodes/, and nodes/ holds only ComfyUI translation (every class and function in it uses ComfyUI)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENGINE_PACKAGES = ("guidance_core", "objectives", "integrations", "embedded")
# ComfyUI's top-level modules (ComfyUI's own `nodes` module is also the name of this pack's node folder)
COMFYUI_MODULES = ("comfy", "comfy_api", "comfy_extras", "folder_paths", "latent_preview", "node_helpers", "nodes")
# The pack's own ComfyUI module: comfy_v3.py picks the host's numbered comfy_api version (nodes import io from it).
PACK_COMFYUI_SHIMS = ("comfy_v3",)
# 1,800 before issue #16 (native video models); nodes/native_video.py (ComfyUI-side Wan support: the VAE's time
# formula, whole-video decode, the expert-pair node) and its hooks in run_harness.py add about 155 lines; resident
# (non-dynamic) copies of dynamic-VRAM models for guided runs (ComfyUI 0.33) about 30; native CogVideoX (its VAE's
# frame rule, V_PREDICTION_DDPM's input space and update scale) about 18; HunyuanVideo 1.5 about 11 (the frame rule
# picked by the VAE's decoder config: its VAE and HunyuanImage 2.1's refiner VAE are one generic class) and about 32
# for two scopes its model needs under PyTorch 2.9 (no Module.to inside a JVP; saved copies of the activations its
# in-place adds change, for backprop); LTX-2 about 5 (the video part of its packed audio+video latent)
NODES_MAX_LINES, NODES_MAX_FILE_LINES = 2055, 450


def imported_modules(tree: ast.AST) -> list[tuple[str, int]]:
    """(module, level) of every import in `tree` (level > 0: relative)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.module or "", node.level))
    return found


@pytest.mark.parametrize("package", ENGINE_PACKAGES)
def test_engine_packages_never_import_comfyui_or_the_nodes(package):
    for path in (ROOT / package).rglob("*.py"):
        for module, level in imported_modules(ast.parse(path.read_text())):
            top = module.split(".")[0]
            assert not (level == 0 and top in COMFYUI_MODULES), f"{path} imports {module}"
            assert not (level >= 2 and top == "nodes"), f"{path} imports the pack's nodes/ ({module})"
            assert not (level >= 1 and top in PACK_COMFYUI_SHIMS), f"{path} imports ComfyUI's API ({module})"
    code = (f"import sys, {package}; "
            "sys.exit(any(m.split('.')[0] in {modules!r} for m in sys.modules))".replace(
                "{modules!r}", repr(COMFYUI_MODULES[:-1])))
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def comfyui_bound_names(trees: dict[str, ast.Module]) -> dict[str, set[str]]:
    """Per nodes/ module, its module-level names that are ComfyUI: imported from ComfyUI, or a class, function or
    assignment whose code names one of them (also through other nodes/ modules), until nothing changes."""
    bound: dict[str, set[str]] = {name: set() for name in trees}
    sibling_imports: dict[str, list[tuple[str, str, str]]] = {name: [] for name in trees}
    for name, tree in trees.items():
        for node in tree.body:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] in COMFYUI_MODULES:
                        bound[name].add((alias.asname or alias.name).split(".")[0])
            elif isinstance(node, ast.ImportFrom):
                if (node.level == 0 and (node.module or "").split(".")[0] in COMFYUI_MODULES) or (
                        node.level == 2 and node.module in PACK_COMFYUI_SHIMS):
                    bound[name].update(alias.asname or alias.name for alias in node.names)
                elif node.level == 1 and node.module in trees:
                    sibling_imports[name] += [(node.module, alias.name, alias.asname or alias.name)
                                              for alias in node.names]
                elif node.level == 1 and node.module is None:  # from . import sockets
                    sibling_imports[name] += [(alias.name, "*", alias.asname or alias.name)
                                              for alias in node.names if alias.name in trees]
    changed = True
    while changed:
        changed = False
        for name, tree in trees.items():
            for module, imported, local in sibling_imports[name]:
                if local not in bound[name] and (bound[module] if imported == "*" else imported in bound[module]):
                    bound[name].add(local)
                    changed = True
            for node in tree.body:
                defined = definition_names(node)
                if defined and not defined <= bound[name] and uses_any(node, bound[name]):
                    bound[name] |= defined
                    changed = True
    return bound


def definition_names(node: ast.stmt) -> set[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return {t.id for t in targets if isinstance(t, ast.Name)}
    return set()


def uses_any(node: ast.AST, names: set[str]) -> bool:
    return any(isinstance(n, ast.Name) and n.id in names for n in ast.walk(node))


def test_every_class_and_function_in_nodes_uses_comfyui():
    """ComfyUI-free code belongs in guidance_core / objectives / integrations / embedded, where it is tested
    without a host: each top-level class and function of nodes/ names a ComfyUI module, type or call (directly or
    through another nodes/ definition that does)."""
    trees = {path.stem: ast.parse(path.read_text()) for path in sorted((ROOT / "nodes").glob("*.py"))}
    bound = comfyui_bound_names(trees)
    free = [f"nodes/{name}.py:{node.lineno} {node.name}" for name, tree in trees.items() for node in tree.body
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and node.name not in bound[name]]
    assert not free, "ComfyUI-free code in nodes/: " + ", ".join(free)


def test_the_check_sees_comfyui_free_code():
    trees = {"a": ast.parse("import comfy.sd\nfrom . import b\ndef uses(v: comfy.sd.VAE): pass\n"
                            "def via_sibling(): return b.thing()\ndef plain(x): return x + 1\n"),
             "b": ast.parse("from comfy_api.latest import io\nWidget = io.Int\ndef thing(): return Widget\n"),
             "c": ast.parse("from ..comfy_v3 import io\ndef node(): return io.Int\ndef plain(x): return x\n")}
    bound = comfyui_bound_names(trees)
    assert {"uses", "via_sibling"} <= bound["a"] and "plain" not in bound["a"]
    assert {"Widget", "thing"} <= bound["b"]
    assert "node" in bound["c"] and "plain" not in bound["c"]


def test_nodes_stays_a_thin_layer():
    lengths = {path.name: len(path.read_text().splitlines()) for path in (ROOT / "nodes").glob("*.py")}
    assert sum(lengths.values()) <= NODES_MAX_LINES, lengths
    assert max(lengths.values()) <= NODES_MAX_FILE_LINES, lengths
