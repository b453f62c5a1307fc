"""The pack imports ComfyUI's V3 API from a numbered comfy_api version where the host offers one."""

import json
import re
import subprocess

import pytest

from testing.comfy_host import REPO_ROOT, default_python

# Folders of the repository that are not part of the pack ComfyUI loads.
NOT_PACK = {"tests", "testing", "benchmarks", "scripts", "docs", ".venv", ".git"}

RESOLVE_SCRIPT = r"""
import importlib.util, json, pathlib, sys
comfy_dir, module_path = sys.argv[1:]
sys.path.insert(0, comfy_dir)
sys.argv = [sys.argv[0], "--cpu"]
import comfy.options
comfy.options.enable_args_parsing()
spec = importlib.util.spec_from_file_location("titan_comfy_v3", module_path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
numbered = sorted(p.name for p in (pathlib.Path(comfy_dir) / "comfy_api").iterdir()
                  if p.is_dir() and p.name.startswith("v") and (p / "__init__.py").is_file())
print(json.dumps({"api_module": module.API_MODULE, "numbered": numbered,
                  "io_is_hosts": module.io is sys.modules[module.API_MODULE].io}))
"""


def pack_python_files():
    """Yield the pack's .py files (what ComfyUI imports), relative to the repository."""
    for path in sorted(REPO_ROOT.rglob("*.py")):
        relative = path.relative_to(REPO_ROOT)
        if relative.parts[0] not in NOT_PACK and not relative.parts[0].startswith(".host"):
            yield relative


@pytest.mark.host_compat
def test_only_comfy_v3_names_comfy_api_and_never_latest_directly():
    """Every node module takes io / ComfyExtension from comfy_v3, so one place picks the API version."""
    offenders = []
    for relative in pack_python_files():
        if relative.name == "comfy_v3.py":
            continue
        text = (REPO_ROOT / relative).read_text(encoding="utf-8")
        if re.search(r"^\s*(from|import)\s+comfy_api\b", text, flags=re.MULTILINE):
            offenders.append(str(relative))
    assert not offenders, f"import comfy_api through comfy_v3.py, not directly: {offenders}"
    assert any(p.parts[0] == "nodes" for p in pack_python_files())  # the scan saw the node modules


@pytest.mark.host_compat
def test_a_host_with_numbered_api_versions_is_not_served_latest(comfyui_dir):
    """On the real host: a numbered comfy_api module is picked whenever the host has one."""
    result = subprocess.run([default_python(), "-c", RESOLVE_SCRIPT, str(comfyui_dir), str(REPO_ROOT / "comfy_v3.py")],
                            cwd=comfyui_dir, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    resolved = json.loads(result.stdout.strip().splitlines()[-1])
    assert resolved["io_is_hosts"]
    if resolved["numbered"]:
        assert resolved["api_module"] != "comfy_api.latest", resolved
        assert resolved["api_module"].split(".")[1] in resolved["numbered"]
    else:
        pytest.skip(f"host has no numbered comfy_api version; latest is the only choice ({resolved})")

