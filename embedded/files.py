"""Reading the embedded models' safetensors files (the committed weights in models/titan_guide/)."""
from __future__ import annotations

from pathlib import Path


def unreadable(path: str | Path, what: str, where: str, error: Exception) -> ValueError:
    """The error for a file that is there but cannot be read (truncated, not safetensors): its name, its folder,
    what was expected and where the right file comes from."""
    path = Path(path)
    return ValueError(f"could not read the {what} file '{path.name}' in the folder '{path.parent}' ({error}): it is "
                      f"truncated or not a safetensors file. Expected the {what} safetensors file written by "
                      f"scripts/train_embedded.py; {where}")


def safetensors_metadata(path: str | Path, what: str, where: str) -> dict:
    """The metadata of the safetensors file at `path`; FileNotFoundError naming `what` it holds and `where` the
    committed file lives when there is no file, ValueError naming the file and its folder when it is unreadable."""
    from safetensors import safe_open

    if not Path(path).is_file():
        raise FileNotFoundError(f"{what} weights not found at {path}; {where}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except Exception as error:  # SafetensorError "incomplete metadata", a header that is not JSON, ...
        raise unreadable(path, what, where, error) from error


def safetensors_tensors(path: str | Path, what: str, where: str) -> dict:
    """Every tensor of the safetensors file at `path` (on the CPU); unreadable data names the file as above."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as error:  # a header that reads but data that is cut short
        raise unreadable(path, what, where, error) from error
