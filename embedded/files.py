"""Reading the embedded models' safetensors files (the committed weights in models/titan_guide/)."""
from __future__ import annotations

from pathlib import Path


def safetensors_metadata(path: str | Path, what: str, where: str) -> dict:
    """The metadata of the safetensors file at `path`; FileNotFoundError naming `what` it holds and `where` the
    committed file lives when there is no file."""
    from safetensors import safe_open

    if not Path(path).is_file():
        raise FileNotFoundError(f"{what} weights not found at {path}; {where}")
    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata() or {}
