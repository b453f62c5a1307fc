"""ComfyUI's V3 node API, imported from a numbered ``comfy_api`` version where the host has one.

``comfy_api.latest`` follows ComfyUI's newest API and may change under a pack; ComfyUI's maintainers advise
packs to import a numbered version (Comfy-Org/ComfyUI#10951). Hosts 0.3.64 .. 0.33.0 ship ``comfy_api.v0_0_2``,
the version this pack is written and tested against; a host without it but with other numbered versions gets the
newest of those; only hosts older than the numbered modules fall back to ``latest``. Every module of the pack
imports ``io`` / ``ComfyExtension`` from here (tests/host/test_comfy_api_version.py checks that).
"""

import importlib
import pkgutil
import re

# Numbered versions the pack is written against, preferred first.
NUMBERED_VERSIONS = ("v0_0_2",)
_NUMBERED = re.compile(r"^v(\d+)_(\d+)_(\d+)$")


def host_numbered_versions() -> list:
    """Names of the numbered modules of the host's comfy_api (``v0_0_2``, ...), oldest first."""
    comfy_api = importlib.import_module("comfy_api")
    names = [m.name for m in pkgutil.iter_modules(comfy_api.__path__) if _NUMBERED.match(m.name)]
    return sorted(names, key=lambda name: tuple(int(part) for part in _NUMBERED.match(name).groups()))


def _import_api():
    """Return (module name, module): a preferred numbered version, else the host's newest numbered, else latest."""
    available = host_numbered_versions()
    preferred = [v for v in NUMBERED_VERSIONS if v in available] or available[::-1]
    for version in preferred:
        # a version that exists but fails to import raises here: shown, not hidden behind latest
        return f"comfy_api.{version}", importlib.import_module(f"comfy_api.{version}")
    return "comfy_api.latest", importlib.import_module("comfy_api.latest")


API_MODULE, _api = _import_api()
io = _api.io
ComfyExtension = _api.ComfyExtension
