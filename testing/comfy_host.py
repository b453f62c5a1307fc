"""Start a real ComfyUI server in a subprocess and talk to it over HTTP.

Used by the test fixture ``comfy_host`` (tests/conftest.py) and by
scripts/host.py. Only the standard library is used here, so the module works
in any interpreter; the server itself runs under ``python`` (default:
$COMFYUI_PYTHON, else the repository's .venv/bin/python).

The server is isolated from the ComfyUI install it runs from: ``--base-directory``
points at a fresh work folder (its models/, custom_nodes/, user/), the
database lives in memory, and the only node packs loaded besides ComfyUI's
built-in ones are those in ``custom_node_dirs`` (by default this repository,
through .host/custom_nodes/titan-guide, and the vendored packs in
.host/custom_nodes_vendor).
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

# TITAN_HOST picks the host scripts/setup.sh laid out: the default in .host/, the compatibility floor in
# .host-<version>/ (its host-owned packages, e.g. its frontend, in <host dir>/site, first on PYTHONPATH).
DEFAULT_HOST = "0.33.0"
HOST_DIRS = {"0.33.0": ".host", "0.3.64": ".host-0.3.64"}


def selected_host() -> str:
    """Return the host version TITAN_HOST names (default 0.33.0); refuses unknown versions."""
    version = os.environ.get("TITAN_HOST") or DEFAULT_HOST
    if version not in HOST_DIRS:
        raise ValueError(f"TITAN_HOST={version!r} is not a supported host; use one of {sorted(HOST_DIRS)}")
    return version


HOST_VERSION = selected_host()
# Shipped workflows that need a newer host than the floor: what each uses that 0.3.64 lacks.
NEEDS_NEWER_HOST = {"0.3.64": {
    "cogvideox_native_style.json": "native CogVideoX (CLIPLoader type 'cogvideox', comfy/ldm/cogvideo), ComfyUI 2026",
    "ltx2_t2v_dover.json": "LTX-2's nodes (LTXVEmptyLatentAudio, LTXAVTextEncoderLoader, ...), ComfyUI 2026",
    "ltx2_imagebind_audio.json": "LTX-2's nodes (LTXVEmptyLatentAudio, LTXAVTextEncoderLoader, ...), ComfyUI 2026",
    "hunyuan15_t2v_dover.json": "HunyuanVideo 1.5's nodes (EmptyHunyuanVideo15Latent, DualCLIPLoader type "
                                "'hunyuan_video_15'), ComfyUI from late 2025"}}


def workflow_files(version: str = HOST_VERSION) -> list[Path]:
    """The shipped workflows/*.json a host of `version` can load (all of them on the default host)."""
    newer = NEEDS_NEWER_HOST.get(version, {})
    return [p for p in sorted((REPO_ROOT / "workflows").glob("*.json")) if p.name not in newer]
HOST_DIR = REPO_ROOT / HOST_DIRS[HOST_VERSION]
# Threads of a test host that runs full-size layers (the fixed-config CogVideoX and HunyuanVideo 1.5 VAEs, full-size
# DOVER): wide enough for two threads to pay on the 2-core test machine (HunyuanVideo 1.5's VAE decode and its
# forward-mode pass measured 1.85x faster than on one). TITAN_TEST_WIDE_THREADS=1 where other work shares the cores:
# two threads that must wait for a core are far slower than one.
WIDE_HOST_THREADS = int(os.environ.get("TITAN_TEST_WIDE_THREADS") or 2)
HOST_SITE_DIR = HOST_DIR / "site"
PACK_NAME = "titan-guide"
PACK_LINK_DIR = HOST_DIR / "custom_nodes"
VENDOR_PACKS_DIR = HOST_DIR / "custom_nodes_vendor"

# Model folders created under <work>/comfy_base/models and declared in the yaml.
MODEL_FOLDERS = (
    "checkpoints",
    "vae",
    "clip",
    "text_encoders",
    "diffusion_models",
    "loras",
    "embeddings",
    "controlnet",
    "upscale_models",
    "clip_vision",
    "animatediff_models",
    "animatediff_motion_lora",
    "CogVideo",
    "titan_guide",
    "dover",
    "imagebind",
)

SETUP_HINT = ("run `bash scripts/setup.sh` first" + ("" if HOST_VERSION == DEFAULT_HOST else
                                                      f" with TITAN_HOST={HOST_VERSION}")
              + " (or set COMFYUI_PATH to an existing ComfyUI install)")


class ComfyHostError(RuntimeError):
    """The ComfyUI server failed to start, died, or answered unexpectedly."""


class ComfyValidationError(ComfyHostError):
    """POST /prompt rejected the prompt; ``response`` holds ComfyUI's error JSON."""

    def __init__(self, message, response):
        super().__init__(message)
        self.response = response


class ComfyExecutionError(ComfyHostError):
    """A queued prompt failed while executing; ``details`` holds the execution_error data."""

    def __init__(self, message, details):
        super().__init__(message)
        self.details = details


def find_comfyui_dir() -> Path:
    """Return the ComfyUI folder: $COMFYUI_PATH if set, else the vendored .host/ComfyUI."""
    configured = os.environ.get("COMFYUI_PATH")
    comfy_dir = Path(configured).expanduser().resolve() if configured else HOST_DIR / "ComfyUI"
    source = "COMFYUI_PATH" if configured else "the vendored host"
    if not (comfy_dir / "main.py").is_file() or not (comfy_dir / "comfy").is_dir():
        raise ComfyHostError(f"no ComfyUI install at {comfy_dir} ({source}): {SETUP_HINT}")
    return comfy_dir


def default_python() -> str:
    """Return the interpreter for the server: $COMFYUI_PYTHON, else .venv/bin/python, else this one."""
    configured = os.environ.get("COMFYUI_PYTHON")
    if configured:
        if not Path(configured).is_file():
            raise ComfyHostError(f"COMFYUI_PYTHON={configured} does not exist")
        return configured
    venv_python = REPO_ROOT / ".venv" / "bin" / "python"
    return str(venv_python) if venv_python.is_file() else sys.executable


def run_comfy_script(script, comfy_dir, timeout: float = 600) -> dict:
    """Run a test module as a script with ComfyUI importable (`python SCRIPT COMFY_DIR`, on the CPU, one thread) and
    return the JSON of its last `RESULT <json>` line; fails with the script's output if it has none."""
    completed = subprocess.run([default_python(), os.path.abspath(script), str(comfy_dir)], capture_output=True,
                               text=True, timeout=timeout, cwd=comfy_dir,
                               env=dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1"))
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    assert completed.returncode == 0 and lines, completed.stdout[-3000:] + completed.stderr[-5000:]
    return json.loads(lines[-1][len("RESULT "):])


def default_custom_node_dirs() -> list:
    """Return the folders whose packs the host loads: this pack's link folder and the vendored packs."""
    pack_link = PACK_LINK_DIR / PACK_NAME
    if not pack_link.is_dir() or pack_link.resolve() != REPO_ROOT:
        raise ComfyHostError(f"{pack_link} does not link to {REPO_ROOT}: {SETUP_HINT}")
    if not VENDOR_PACKS_DIR.is_dir():
        raise ComfyHostError(f"{VENDOR_PACKS_DIR} is missing: {SETUP_HINT}")
    return [PACK_LINK_DIR, VENDOR_PACKS_DIR]


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _yaml_quote(text: str) -> str:
    """Quote a string for YAML (JSON strings are valid YAML scalars)."""
    return json.dumps(str(text))


class ComfyHost:
    """A ComfyUI server process with this pack loaded, on 127.0.0.1 and the CPU."""

    def __init__(self, workdir, *, comfyui_dir=None, python=None, custom_node_dirs=None,
                 extra_args=(), startup_timeout: float = 300.0, cpu: bool = True, threads=None):
        self.workdir = Path(workdir).resolve()
        self.comfyui_dir = Path(comfyui_dir).resolve() if comfyui_dir else find_comfyui_dir()
        if not (self.comfyui_dir / "main.py").is_file():
            raise ComfyHostError(f"{self.comfyui_dir} has no main.py: {SETUP_HINT}")
        self.python = str(python or default_python())
        self.custom_node_dirs = [Path(p).resolve() for p in
                                 (custom_node_dirs if custom_node_dirs is not None else default_custom_node_dirs())]
        for folder in self.custom_node_dirs:
            if not folder.is_dir():
                raise ComfyHostError(f"custom node folder {folder} does not exist")
        if startup_timeout <= 0:
            raise ValueError(f"startup_timeout must be positive, got {startup_timeout}")
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.cpu = cpu
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive int or None, got {threads!r}")
        self.threads = threads  # the server's torch threads (OMP_NUM_THREADS); None: $OMP_NUM_THREADS, else 1
        self.base_dir = self.workdir / "comfy_base"
        self.models_dir = self.base_dir / "models"
        self.input_dir = self.workdir / "input"
        self.output_dir = self.workdir / "output"
        self.temp_parent_dir = self.workdir / "temp"
        self.user_dir = self.workdir / "user"
        self.yaml_path = self.workdir / "extra_model_paths.yaml"
        self.log_path = self.workdir / "comfyui.log"
        self.port = None
        self.process = None
        self._log_file = None

    # --- lifecycle ---------------------------------------------------------------
    @property
    def url(self) -> str:
        """Base URL of the running server."""
        if self.port is None:
            raise ComfyHostError("the host is not started")
        return f"http://127.0.0.1:{self.port}"

    def prepare(self) -> None:
        """Create the work folders and the extra_model_paths.yaml (idempotent)."""
        for folder in (self.base_dir / "custom_nodes", self.input_dir, self.output_dir,
                       self.temp_parent_dir, self.user_dir):
            folder.mkdir(parents=True, exist_ok=True)
        for name in MODEL_FOLDERS:
            (self.models_dir / name).mkdir(parents=True, exist_ok=True)
        lines = ["# Written by testing/comfy_host.py", "titan_guide_test_models:",
                 f"  base_path: {_yaml_quote(self.models_dir)}"]
        lines += [f"  {name}: {_yaml_quote(name)}" for name in MODEL_FOLDERS]
        lines.append("titan_guide_test_custom_nodes:")
        lines.append("  custom_nodes: " + _yaml_quote("\n".join(str(p) for p in self.custom_node_dirs)))
        self.yaml_path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def command(self) -> list:
        """Return the server command line (without the port, added at start)."""
        return [
            self.python, str(self.comfyui_dir / "main.py"),
            *(["--cpu"] if self.cpu else []),
            "--listen", "127.0.0.1",
            "--base-directory", str(self.base_dir),
            "--extra-model-paths-config", str(self.yaml_path),
            "--output-directory", str(self.output_dir),
            "--input-directory", str(self.input_dir),
            "--temp-directory", str(self.temp_parent_dir),
            "--user-directory", str(self.user_dir),
            "--database-url", "sqlite:///:memory:",
            "--disable-auto-launch",
            "--disable-api-nodes",  # no network nodes; faster start
            "--preview-method", "none",
            *self.extra_args,
        ]

    def start_or_print_log(self) -> None:
        """`start()`; when the server does not come up, print its log (pytest shows it with the failure) first."""
        try:
            self.start()
        except Exception:
            print(f"\n----- ComfyUI server log ({self.log_path}) -----\n{self.log_text()}")
            raise

    def start(self) -> "ComfyHost":
        """Start the server and wait until it answers /object_info; raises ComfyHostError with the log."""
        if self.process is not None and self.process.poll() is None:
            raise ComfyHostError("the host is already running")
        self.prepare()
        for attempt in range(3):
            self.port = free_port()
            self._launch()
            try:
                self._wait_until_ready()
                return self
            except ComfyHostError:
                self.stop()
                if "address already in use" in self.log_text().lower() and attempt < 2:
                    continue  # another process took the port between probe and bind
                raise
        raise AssertionError("unreachable")

    def _launch(self) -> None:
        """Spawn the server process with its output going to the log file."""
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        if self.cpu:
            env.setdefault("CUDA_VISIBLE_DEVICES", "")
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        # tiny test models on a shared 2-core machine: one thread is 5-10x faster than two fighting; a host for
        # full-size layers (e.g. a fixed-config video VAE) asks for more with `threads`
        if self.threads is not None:
            env["OMP_NUM_THREADS"] = str(self.threads)
            env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle threads sleep rather than spin on a busy core
        else:
            env.setdefault("OMP_NUM_THREADS", "1")
        if HOST_SITE_DIR.is_dir():  # this host's own frontend/templates shadow the default host's in .venv
            env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(HOST_SITE_DIR), env.get("PYTHONPATH"))))
        if self._log_file is not None:
            self._log_file.close()
        self._log_file = open(self.log_path, "ab")
        self._log_file.write(f"\n=== starting ComfyUI on port {self.port} ===\n".encode())
        self._log_file.flush()
        self.process = subprocess.Popen(
            self.command() + ["--port", str(self.port)],
            cwd=str(self.comfyui_dir), env=env, stdin=subprocess.DEVNULL,
            stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def _wait_until_ready(self) -> None:
        """Poll until /object_info answers, the process exits, or startup_timeout passes."""
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ComfyHostError(
                    f"ComfyUI exited with code {self.process.returncode} during start-up; log tail:\n"
                    f"{self.log_tail()}")
            try:
                self._request("GET", "/system_stats", timeout=5)
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.25)
                continue
            info = self.object_info()
            if not isinstance(info, dict) or "KSampler" not in info:
                raise ComfyHostError("/object_info answered without core nodes; log tail:\n" + self.log_tail())
            return
        raise ComfyHostError(
            f"ComfyUI did not answer within {self.startup_timeout:.0f} s; log tail:\n{self.log_tail()}")

    def is_running(self) -> bool:
        """Return True while the server process is alive."""
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server (SIGINT; SIGTERM, then SIGKILL, each after ``timeout`` s); safe to call twice. An idle
        server exits on SIGINT in about 3 s; one still busy with a prompt used to hold CI for 15 s."""
        process = self.process
        if process is not None and process.poll() is None:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(process.pid, sig)  # the group holds only this server
                    process.wait(timeout=timeout)
                    break
                except subprocess.TimeoutExpired:
                    continue
                except ProcessLookupError:
                    break
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    # --- logs ---------------------------------------------------------------------
    def log_text(self) -> str:
        """Return the whole server log so far."""
        if not self.log_path.is_file():
            return ""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, lines: int = 120) -> str:
        """Return the last ``lines`` lines of the server log."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def pack_import_lines(self) -> list:
        """Return the 'Import times for custom nodes' lines of the latest start, one per pack."""
        text = self.log_text().rsplit("=== starting ComfyUI", 1)[-1]
        text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # 0.33.0 colours its log
        # 0.3.64: "   0.1 seconds: <path>"; 0.33.0 prefixes the log level: "[INFO]    0.1 seconds: <path>"
        return [line.strip() for line in
                re.findall(r"^(?:\[[A-Z]+\])?\s*[\d.]+ seconds.*$", text, flags=re.MULTILINE)]

    # --- HTTP API -------------------------------------------------------------------
    def _request(self, method: str, path: str, payload=None, timeout: float = 60.0):
        """Send one request; returns (status, decoded JSON or None). Raises URLError if unreachable."""
        data = None if payload is None else json.dumps(payload).encode("utf-8")
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body = response.read()
                status = response.status
        except urllib.error.HTTPError as error:
            body = error.read()
            status = error.code
        text = body.decode("utf-8", errors="replace")
        try:
            decoded = json.loads(text) if text else None
        except json.JSONDecodeError:
            decoded = text
        return status, decoded

    def get_json(self, path: str, timeout: float = 60.0):
        """GET ``path`` and return its JSON; raises ComfyHostError on a non-200 answer."""
        status, body = self._request("GET", path, timeout=timeout)
        if status != 200:
            raise ComfyHostError(f"GET {path} answered {status}: {body!r}")
        return body

    def object_info(self, node_type=None) -> dict:
        """Return /object_info (all node types) or /object_info/<node_type>."""
        if node_type is None:
            return self.get_json("/object_info")
        info = self.get_json("/object_info/" + urllib.parse.quote(node_type, safe=""))
        if node_type not in info:
            raise ComfyHostError(f"node type {node_type!r} is not registered")
        return info[node_type]

    def queue(self, prompt: dict, client_id=None) -> str:
        """POST an API-format prompt; returns its prompt_id or raises ComfyValidationError."""
        if not isinstance(prompt, dict) or not prompt:
            raise ValueError("prompt must be a non-empty dict in ComfyUI API format {node_id: {class_type, inputs}}")
        payload = {"prompt": prompt, "client_id": client_id or uuid.uuid4().hex}
        status, body = self._request("POST", "/prompt", payload)
        if status != 200:
            error = body.get("error", {}) if isinstance(body, dict) else {}
            raise ComfyValidationError(
                f"prompt rejected ({status}): {error.get('message', body)} {error.get('details', '')}".strip()
                + (f"; node errors: {json.dumps(body.get('node_errors'))}" if isinstance(body, dict)
                   and body.get("node_errors") else ""),
                body)
        return body["prompt_id"]

    def history(self, prompt_id: str):
        """Return the /history entry of ``prompt_id``, or None while it is not finished."""
        return self.get_json("/history/" + urllib.parse.quote(prompt_id, safe="")).get(prompt_id)

    def wait(self, prompt_id: str, timeout: float = 120.0) -> dict:
        """Wait for ``prompt_id`` to finish; returns its outputs or raises ComfyExecutionError/TimeoutError."""
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            if not self.is_running():
                raise ComfyHostError(f"ComfyUI died while running {prompt_id}; log tail:\n{self.log_tail()}")
            entry = self.history(prompt_id)
            if entry is not None:
                return self._outputs_or_raise(prompt_id, entry)
            if time.monotonic() > deadline:
                self.interrupt()
                raise TimeoutError(
                    f"prompt {prompt_id} did not finish within {timeout} s (interrupted); log tail:\n"
                    f"{self.log_tail(40)}")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    @staticmethod
    def _outputs_or_raise(prompt_id: str, entry: dict) -> dict:
        """Return the outputs of a finished history entry, raising if it ended in error."""
        status = entry.get("status", {})
        if status.get("status_str") == "success" and status.get("completed", False):
            return entry.get("outputs", {})
        for event, data in status.get("messages", []):
            if event == "execution_error":
                raise ComfyExecutionError(
                    f"prompt {prompt_id} failed in node {data.get('node_id')} ({data.get('node_type')}): "
                    f"{data.get('exception_type')}: {data.get('exception_message')}\n"
                    + "".join(data.get("traceback", [])),
                    data)
            if event == "execution_interrupted":
                raise ComfyExecutionError(f"prompt {prompt_id} was interrupted", data)
        raise ComfyExecutionError(f"prompt {prompt_id} ended with status {status}", status)

    def run(self, prompt: dict, timeout: float = 120.0) -> dict:
        """Queue ``prompt`` and wait for its outputs."""
        return self.wait(self.queue(prompt), timeout=timeout)

    def interrupt(self) -> None:
        """Interrupt the prompt that is executing now."""
        status, body = self._request("POST", "/interrupt", {})
        if status != 200:
            raise ComfyHostError(f"POST /interrupt answered {status}: {body!r}")

    def output_files(self, outputs: dict, key: str = "images") -> list:
        """Return the paths of the files listed under ``key`` in a prompt's outputs."""
        roots = {"output": self.output_dir, "temp": self.temp_parent_dir / "temp", "input": self.input_dir}
        paths = []
        for node_output in outputs.values():
            for item in node_output.get(key, []):
                root = roots.get(item.get("type", "output"))
                if root is None:
                    raise ComfyHostError(f"unknown output type in {item}")
                paths.append(root / item.get("subfolder", "") / item["filename"])
        return paths
