"""Shared pytest fixtures: a real ComfyUI host with this pack loaded, and tiny checkpoints.

``comfy_host`` (session scope) starts one ComfyUI server for the whole test
session (see testing/comfy_host.py). Its models folder is ``comfy_host.models_dir``
(checkpoints/, vae/, clip/, loras/, animatediff_models/, CogVideo/,
titan_guide/, dover/, imagebind/, ...); tests may add files there before
queueing a prompt that uses them. ``comfy_host.models_dir / "checkpoints" /
TINY_SD15_FILENAME`` is a tiny random SD1.5 checkpoint.

When a test that uses ``comfy_host`` fails, the tail of the server log is added
to the failure report. Every test gets the marker of its folder: unit, host or
browser (registered in pyproject.toml).
"""

import os
import shutil
from pathlib import Path

import pytest
import torch

from testing.comfy_host import HOST_DIR, WIDE_HOST_THREADS, ComfyHost, default_python, find_comfyui_dir
from tiny_checkpoints import TINY_SD15_FILENAME, build_tiny_sd15_checkpoint

# Rebuilt only when the seed, the file format or the ComfyUI version changes
# (checked through the file's metadata), so later sessions reuse it.
TINY_CHECKPOINT_CACHE = HOST_DIR / "test-cache"
TINY_SD15_SEED = 0


@pytest.fixture(scope="session")
def comfyui_dir():
    """The ComfyUI install the tests run ($COMFYUI_PATH or .host/ComfyUI)."""
    return find_comfyui_dir()


@pytest.fixture(scope="session")
def tiny_sd15_checkpoint(comfyui_dir):
    """Path of a tiny random SD1.5-layout .safetensors checkpoint (about 465 MB, fp16)."""
    return build_tiny_sd15_checkpoint(
        comfyui_dir, TINY_CHECKPOINT_CACHE / f"tiny_sd15_seed{TINY_SD15_SEED}.safetensors", seed=TINY_SD15_SEED,
        python=default_python())


def _link_or_copy(source, target) -> None:
    if not target.exists():
        try:
            os.symlink(source, target)
        except OSError:
            shutil.copyfile(source, target)


def _start_host(workdir, comfyui_dir, tiny_sd15_checkpoint, threads=None) -> ComfyHost:
    """A started ComfyUI server (CPU) with titan-guide, the vendored packs and the tiny SD1.5 checkpoint."""
    host = ComfyHost(workdir, comfyui_dir=comfyui_dir, threads=threads)
    host.prepare()
    _link_or_copy(tiny_sd15_checkpoint, host.models_dir / "checkpoints" / TINY_SD15_FILENAME)
    host.start_or_print_log()
    return host


def _add_video_files(host: ComfyHost, comfyui_dir) -> ComfyHost:
    """The tiny native video model files (tests/tiny_video_models.py: Wan, CogVideoX, HunyuanVideo 1.5; built once
    into the test cache) in the host's diffusion_models/ and vae/ folders (the LTX files go to test_ltx's own
    host)."""
    from tiny_video_models import FILES, LTX_NAMES, build_tiny_video_files

    paths = build_tiny_video_files(comfyui_dir, HOST_DIR / "test-cache" / "wan", python=default_python(),
                                   names=[name for name in FILES if name not in LTX_NAMES])
    for name, path in paths.items():
        folder = host.models_dir / FILES[name][0]
        folder.mkdir(parents=True, exist_ok=True)
        _link_or_copy(path, folder / name)
    return host


@pytest.fixture(scope="session")
def comfy_host(tmp_path_factory, comfyui_dir, tiny_sd15_checkpoint):
    """A running ComfyUI server (CPU) with titan-guide and the vendored packs loaded."""
    host = _start_host(tmp_path_factory.mktemp("comfy_host"), comfyui_dir, tiny_sd15_checkpoint)
    yield host
    host.stop()


@pytest.fixture(scope="session")
def video_host(comfy_host, comfyui_dir):
    """The session host with the tiny native video model files in its diffusion_models/ and vae/ folders."""
    return _add_video_files(comfy_host, comfyui_dir)


@pytest.fixture(scope="module")
def full_vae_video_host(tmp_path_factory, comfyui_dir, tiny_sd15_checkpoint):
    """A host of the test module's own with the video files (as video_host), on WIDE_HOST_THREADS threads, for the
    modules whose VAE is full size (ComfyUI builds the CogVideoX and HunyuanVideo 1.5 VAEs from fixed configs: 216 M
    and 1.26 B parameters); it stops after the module, so that VAE leaves memory (HunyuanVideo 1.5's host takes about
    10 GB)."""
    host = _start_host(tmp_path_factory.mktemp("full_vae_host"), comfyui_dir, tiny_sd15_checkpoint,
                       threads=WIDE_HOST_THREADS)
    try:
        yield _add_video_files(host, comfyui_dir)
    finally:
        host.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the server log tail to failed tests that used a ComfyUI host fixture."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        hosts = {id(value): value for value in getattr(item, "funcargs", {}).values() if isinstance(value, ComfyHost)}
        for host in hosts.values():  # comfy_host, video_host (the same server) or a module's own host
            report.sections.append((f"ComfyUI server log tail ({host.log_path})", host.log_tail(150)))


TEST_KINDS = ("unit", "host", "browser")


@pytest.fixture
def one_thread():
    """Run on one CPU thread: tiny tensors gain nothing from threads, and the test machine's cores are shared
    (with the ComfyUI server, too)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def pytest_collection_modifyitems(items):
    """Mark each test with its folder's kind, so `-m unit` selects the tests that need no ComfyUI host."""
    for item in items:
        kind = Path(str(item.fspath)).parent.name
        if kind in TEST_KINDS:
            item.add_marker(kind)
