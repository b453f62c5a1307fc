#!/usr/bin/env python3
"""Start and stop a local ComfyUI host with the titan-guide pack loaded (CPU, 127.0.0.1).

    .venv/bin/python scripts/host.py run      # foreground; Ctrl-C stops it
    .venv/bin/python scripts/host.py start    # background; prints the URL
    .venv/bin/python scripts/host.py status
    .venv/bin/python scripts/host.py stop

The host runs the ComfyUI of scripts/setup.sh ($COMFYUI_PATH or .host/ComfyUI, or with
TITAN_HOST=0.3.64 the floor host .host-0.3.64/ComfyUI) under .venv/bin/python, in the work folder
``--workdir`` (default <host dir>/run):
put models under <workdir>/comfy_base/models/<folder>/ (checkpoints,
animatediff_models, titan_guide, ...); outputs land in <workdir>/output and the
server log in <workdir>/comfyui.log. Extra ComfyUI flags go after ``--``.
"""

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from testing.comfy_host import HOST_DIR, ComfyHost, ComfyHostError, default_custom_node_dirs  # noqa: E402

DEFAULT_WORKDIR = HOST_DIR / "run"
STATE_FILE_NAME = "host.json"


def process_alive(pid: int) -> bool:
    """Return True if a process with ``pid`` exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_state(workdir: Path):
    """Return the saved state of a background host in ``workdir``, or None."""
    path = workdir / STATE_FILE_NAME
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def make_host(options) -> ComfyHost:
    """Build a ComfyHost from the command-line options."""
    custom_node_dirs = default_custom_node_dirs()
    if options.no_vendor_packs:
        custom_node_dirs = custom_node_dirs[:1]
    return ComfyHost(options.workdir, python=options.python, custom_node_dirs=custom_node_dirs,
                     extra_args=options.comfy_args, startup_timeout=options.startup_timeout)


def command_run(options) -> int:
    """Run the host in the foreground until Ctrl-C."""
    host = make_host(options)
    host.start()
    print(f"ComfyUI with titan-guide: {host.url}  (models: {host.models_dir}, log: {host.log_path}); Ctrl-C stops it")
    try:
        while host.is_running():
            time.sleep(0.5)
        print(f"ComfyUI exited with code {host.process.returncode}; log: {host.log_path}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        host.stop()


def command_start(options) -> int:
    """Start the host in the background and record its pid and port."""
    state = read_state(options.workdir)
    if state and process_alive(state["pid"]):
        print(f"already running: {state['url']} (pid {state['pid']}); stop it first", file=sys.stderr)
        return 1
    host = make_host(options)
    host.start()
    state = {"pid": host.process.pid, "port": host.port, "url": host.url, "log": str(host.log_path),
             "models_dir": str(host.models_dir), "output_dir": str(host.output_dir)}
    (options.workdir / STATE_FILE_NAME).write_text(json.dumps(state, indent=2), encoding="utf-8")
    print(json.dumps(state, indent=2))
    return 0


def command_stop(options) -> int:
    """Stop a background host started with ``start``."""
    state = read_state(options.workdir)
    if state is None:
        print(f"no host recorded in {options.workdir}", file=sys.stderr)
        return 1
    pid = state["pid"]
    if process_alive(pid):
        os.killpg(pid, signal.SIGINT)  # the server leads its own process group
        deadline = time.monotonic() + 15
        while process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if process_alive(pid):
            os.killpg(pid, signal.SIGKILL)
    (options.workdir / STATE_FILE_NAME).unlink()
    print(f"stopped host pid {pid}")
    return 0


def command_status(options) -> int:
    """Print whether a background host is running; exit 0 if it is."""
    state = read_state(options.workdir)
    if state is None or not process_alive(state["pid"]):
        print("not running")
        return 1
    print(json.dumps(state, indent=2))
    return 0


def parse_args(argv):
    """Parse the command line (flags after ``--`` go to ComfyUI)."""
    comfy_args = []
    if "--" in argv:
        split = argv.index("--")
        argv, comfy_args = argv[:split], argv[split + 1:]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("command", choices=("run", "start", "stop", "status"))
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                        help=f"work folder of the host (default: {DEFAULT_WORKDIR})")
    parser.add_argument("--python", default=None,
                        help="interpreter that runs ComfyUI (default: $COMFYUI_PYTHON, else .venv/bin/python)")
    parser.add_argument("--no-vendor-packs", action="store_true",
                        help="load only titan-guide, not the vendored AnimateDiff/CogVideoX packs")
    parser.add_argument("--startup-timeout", type=float, default=300.0, help="seconds to wait for the server")
    options = parser.parse_args(argv)
    options.workdir = options.workdir.resolve()
    options.comfy_args = comfy_args
    return options


def main(argv=None) -> int:
    """Command-line entry point."""
    options = parse_args(sys.argv[1:] if argv is None else argv)
    commands = {"run": command_run, "start": command_start, "stop": command_stop, "status": command_status}
    try:
        return commands[options.command](options)
    except ComfyHostError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
