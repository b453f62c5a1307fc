#!/usr/bin/env bash
# One-command set-up for titan-guide development and tests.
#
#   bash scripts/setup.sh
#
# Creates .venv (pinned torch stack + ComfyUI requirements + our deps), installs
# the ComfyUI host into .host/ComfyUI (unless COMFYUI_PATH names an existing
# install), unpacks the vendored third-party node packs into
# .host/custom_nodes_vendor/ and writes .host/extra_model_paths.yaml, which
# loads this pack (via the symlink .host/custom_nodes/titan-guide) and the
# vendored packs into ComfyUI:
#
#   .venv/bin/python .host/ComfyUI/main.py --cpu \
#       --extra-model-paths-config .host/extra_model_paths.yaml
#
# Hosts (TITAN_HOST):
#   0.33.0 (default)  ComfyUI 0.33.0 (783545f6) + AnimateDiff-Evolved d8d163c + CogVideoXWrapper, in .host/
#   0.3.64            ComfyUI 0.3.64 (a125cd84) + AnimateDiff-Evolved 90fb133 + CogVideoXWrapper, in
#                     .host-0.3.64/. Shares .venv: 0.33.0's requirements are a superset of 0.3.64's except
#                     the host-owned exact pins (frontend, templates, docs), which go to .host-0.3.64/site
#                     and must come first on PYTHONPATH when that host runs (tests/comfy_host.py and
#                     scripts/host.py do this when TITAN_HOST=0.3.64).
#
# Environment:
#   TITAN_HOST         which vendored host and ADE to set up: 0.33.0 (default) or 0.3.64
#   COMFYUI_PATH       use this ComfyUI install instead of the vendored one (still wins over TITAN_HOST's
#                      archive; TITAN_HOST then only picks the AnimateDiff-Evolved commit and .host folder)
#   TITAN_SHARED_DIR   folder holding vendor/*.tar.gz (default: <repo>/../shared)
#   PYTHON             interpreter used to create .venv (default: python3)
#   TORCH_INDEX_URL    index for the torch wheels, e.g. https://download.pytorch.org/whl/cpu
#                      for the CPU-only build (default: PyPI, whose Linux wheels bundle CUDA)
#
# Safe to re-run: every step is skipped when its inputs did not change.
set -Eeuo pipefail

log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }
trap 'die "command failed (exit $?) at scripts/setup.sh line $LINENO: $BASH_COMMAND"' ERR

START_SECONDS=$SECONDS
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SHARED_DIR="${TITAN_SHARED_DIR:-$(dirname "$REPO_ROOT")/shared}"
VENDOR_DIR="$SHARED_DIR/vendor"
VENV_DIR="$REPO_ROOT/.venv"
VENV_PY="$VENV_DIR/bin/python"
TITAN_HOST="${TITAN_HOST:-0.33.0}"
DEFAULT_TITAN_HOST="0.33.0"
case "$TITAN_HOST" in
  0.33.0) HOST_DIR="$REPO_ROOT/.host" ;;
  0.3.64) HOST_DIR="$REPO_ROOT/.host-0.3.64" ;;
  *) printf '[setup] ERROR: TITAN_HOST=%s is not a supported host; use 0.33.0 (default) or 0.3.64\n' "$TITAN_HOST" >&2
     exit 1 ;;
esac
PACK_LINK_DIR="$HOST_DIR/custom_nodes"
VENDOR_PACKS_DIR="$HOST_DIR/custom_nodes_vendor"
EXTRA_PATHS_YAML="$HOST_DIR/extra_model_paths.yaml"
DEPS_STAMP="$VENV_DIR/.titan-guide-deps-$TITAN_HOST.sha256"
# Host-owned exact pins of a non-default host (its frontend, ...), installed apart from .venv.
HOST_SITE_DIR="$HOST_DIR/site"
PYTHON="${PYTHON:-python3}"

# Vendored archives and their sha256 (see shared/vendor/README.md).
COGVIDEOX_WRAPPER="ComfyUI-CogVideoXWrapper-fdb8abd2.tar.gz:6faa3ce9a9c6acf34dcb833fd4f289aaa252de0aa7a82105deb7dd474436b699"
if [[ "$TITAN_HOST" == "0.33.0" ]]; then
  HOST_ARCHIVE="ComfyUI-783545f6.tar.gz"
  HOST_ARCHIVE_SHA256="5934cc13dbedd1746f05b06b8432c4482dd573ccec2083f90a4f6d007c93f18a"
  VENDOR_PACK_ARCHIVES=(
    "ComfyUI-AnimateDiff-Evolved-d8d163c.tar.gz:4114135877e8907e34b5d0d0385206fcce50572d8a47a0c2a91f4cddda418053"
    "$COGVIDEOX_WRAPPER"
  )
else
  HOST_ARCHIVE="ComfyUI-a125cd84.tar.gz"
  HOST_ARCHIVE_SHA256="e09020dd5710d2fca5661c536260b604b28b9d1eb5b5898a02178a2a2eca232e"
  VENDOR_PACK_ARCHIVES=(
    "ComfyUI-AnimateDiff-Evolved-90fb133.tar.gz:c96ab0cba61c92cc3b5d1edf27256829f09fa03744b7885c6ab00db1d692dfd9"
    "$COGVIDEOX_WRAPPER"
  )
fi

# Pins that ComfyUI's (unpinned) requirements must not move.
TORCH_PINS=(
  "torch==2.9.1"
  "torchvision==0.24.1"
  "torchaudio==2.9.1"
)
# Development / test stack, exact versions known to install and work together
# with ComfyUI 0.33.0 / 0.3.64 and the vendored packs.
DEV_PINS=(
  "requests==2.34.2"            # ComfyUI imports it but does not list it
  "pytest==9.2.0"
  "hypothesis==6.170.15"        # tests/host/test_fuzz.py (property-based widget fuzzing)
  "diffusers==0.42.1"           # CogVideoXWrapper
  "accelerate==1.15.0"          # CogVideoXWrapper
  "peft==0.21.2"                # CogVideoXWrapper
  "opencv-python-headless==5.0.0.93"  # CogVideoXWrapper (headless: no X libs needed)
  "matplotlib==3.11.2"          # benchmark plots
  "open-clip-torch==3.3.0"      # CLIP style objective (open_clip checkpoints)
  "timm==1.0.31"                # open_clip, ImageBind
  "ftfy==6.3.1"                 # open_clip / ImageBind tokenizers
  "iopath==0.1.10"              # ImageBind
  "portalocker==4.4.2"          # iopath
  "wcwidth==0.9.4"              # ftfy
  "playwright==1.65.2"          # tests/test_browser.py drives Debian's chromium (never `playwright install`)
)
# Installed with --no-deps: imagebind-unofficial (an unmodified packaging of facebookresearch/ImageBind)
# declares stale pins, and pytorchvideo 0.1.5 pulls av/fvcore/parameterized it never needs for ImageBind.
NO_DEPS_PINS=(
  "imagebind-unofficial==0.1.1"
  "pytorchvideo==0.1.5"
)

# Versions resolved and tested together on CPython 3.11 / x86_64 Linux (a fresh
# `bash .ci/run`). Used as constraints on CPython 3.11 only, so CI installs are
# reproducible; other Python versions resolve freely within the pins above.
# Names the host's requirements.txt pins exactly (frontend, templates, docs, comfy-kitchen, ...) belong to the
# host and are dropped from the lock at install time, so any ComfyUI (COMFYUI_PATH) resolves.
# To refresh: install (default host), then `.venv/bin/pip freeze` minus torch*/nvidia-*/triton.
read -r -d '' LOCK_PY311 <<'LOCK' || true
accelerate==1.15.0
aiohappyeyeballs==2.7.1
aiohttp==3.14.5
aiosignal==1.4.0
alembic==1.20.1
annotated-doc==0.0.7
annotated-types==0.8.0
anyio==4.16.0
attrs==26.1.0
av==18.1.0
blake3==1.0.11
certifi==2026.10.19.post1
charset-normalizer==3.5.2
click==8.5.1
comfy-aimdo==0.4.13
comfy-angle==0.1.1
comfy-kitchen==0.2.31
comfyui-embedded-docs==0.5.10
comfyui-workflow-templates-core==0.3.315
comfyui-workflow-templates-json==0.1.50
comfyui-workflow-templates-media-api==0.3.84
comfyui-workflow-templates-media-assets-01==0.1.30
comfyui-workflow-templates-media-image==0.3.160
comfyui-workflow-templates-media-other==0.3.229
comfyui-workflow-templates-media-video==0.3.101
comfyui_frontend_package==1.49.6
comfyui_workflow_templates==0.11.44
contourpy==1.3.3
cycler==0.12.1
diffusers==0.42.1
einops==0.8.2
filelock==4.2.12
fonttools==4.68.0
frozenlist==1.8.0
fsspec==2026.9.0
ftfy==6.3.1
greenlet==3.5.6
h11==0.16.0
hypothesis==6.170.15
hf-xet==1.8.0
httpcore2==2.16.2
httpx2==2.16.2
huggingface_hub==2.4.0
idna==3.20
imagebind-unofficial==0.1.1
importlib_metadata==10.2.0
iniconfig==2.3.1
iopath==0.1.10
Jinja2==3.1.6
jvp_flash_attention==0.14.0
kiwisolver==1.5.1
kornia==0.9.0
kornia_rs==0.2.0
lazy-importer==0.1.0
Mako==1.4.3
markdown-it-py==4.3.0
MarkupSafe==3.0.4
matplotlib==3.11.2
mdurl==0.1.2
mpmath==1.3.0
multidict==7.2.1
networkx==3.6.1
numpy==2.4.6
open_clip_torch==3.3.0
opencv-python-headless==5.0.0.93
packaging==26.3
peft==0.21.2
pillow==13.0.0
playwright==1.65.2
pluggy==1.7.0
portalocker==4.4.2
propcache==0.5.4
psutil==7.2.2
pydantic==2.14.4
pydantic-settings==2.16.3
pydantic_core==2.50.5
Pygments==2.21.0
PyOpenGL==3.1.10
pyparsing==3.3.3
pytest==9.2.0
python-dateutil==4.0.0
python-dotenv==1.2.4
pytorchvideo==0.1.5
PyYAML==6.0.4
regex==2026.11.19
requests==2.34.2
rich==15.0.0
safetensors==0.8.0
scipy==1.17.1
sentencepiece==0.2.3
shellingham==1.5.4
simpleeval==1.0.8
sortedcontainers==2.4.0
spandrel==0.4.2
SQLAlchemy==2.1.9
sympy==1.14.0
timm==1.0.31
tokenizers==0.23.3
torchsde==0.2.6
tqdm==4.70.1
trampoline==0.1.2
transformers==5.24.0
truststore==0.10.5
typer==0.29.2
typing-inspection==0.4.5
typing_extensions==4.16.0
tzdata==2026.6
urllib3==2.8.0
wcwidth==0.9.4
yarl==1.25.1
zipp==4.1.2
LOCK

export PIP_NO_INPUT=1
export PIP_PROGRESS_BAR=off

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

check_archive() {  # path expected_sha256
  [[ -f "$1" ]] || die "missing vendored archive $1. Put the shared/ folder beside the repository or set TITAN_SHARED_DIR to the folder that holds vendor/."
  local got
  got="$(sha256_of "$1")"
  [[ "$got" == "$2" ]] || die "checksum mismatch for $1 (got $got, expected $2); the archive is damaged or not the pinned version."
}

unpack_archive() {  # archive expected_sha256 destination_parent folder_name
  local archive="$1" sha="$2" parent="$3" name="$4"
  local dest="$parent/$name" stamp="$parent/$name/.titan-guide-unpacked"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$sha" ]]; then
    log "up to date: $dest"
    return
  fi
  check_archive "$archive" "$sha"
  log "unpacking $(basename "$archive") -> $dest"
  mkdir -p "$parent"
  local tmp
  tmp="$(mktemp -d "$parent/.unpack.XXXXXX")"
  tar -xzf "$archive" -C "$tmp"
  [[ -d "$tmp/$name" ]] || die "$(basename "$archive") does not contain a top-level folder named $name"
  rm -rf "$dest"
  mv "$tmp/$name" "$dest"
  rmdir "$tmp"
  printf '%s\n' "$sha" > "$stamp"
}

# Serialise concurrent runs (two pip installs into one venv would clash).
mkdir -p "$HOST_DIR"
if command -v flock >/dev/null; then
  exec 9>"$HOST_DIR/.setup.lock"
  flock -n 9 || { log "another scripts/setup.sh is running; waiting for it"; flock 9; }
fi

# --- 1. Python and the virtual environment ---------------------------------
command -v "$PYTHON" >/dev/null || die "'$PYTHON' not found; install Python 3.10+ or set PYTHON=/path/to/python3"
if [[ ! -x "$VENV_PY" ]]; then
  "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
    || die "$PYTHON is $("$PYTHON" -V 2>&1); titan-guide needs Python >= 3.10 (set PYTHON=...)"
  log "creating virtual environment $VENV_DIR"
  "$PYTHON" -m venv "$VENV_DIR"
else
  log "reusing virtual environment $VENV_DIR"
fi
"$VENV_PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
  || die "$VENV_DIR uses $("$VENV_PY" -V 2>&1); it needs Python >= 3.10. Remove .venv and re-run with PYTHON=python3.11"

# --- 2. The ComfyUI host ----------------------------------------------------
if [[ -n "${COMFYUI_PATH:-}" ]]; then
  COMFY_DIR="$(cd "$COMFYUI_PATH" 2>/dev/null && pwd)" \
    || die "COMFYUI_PATH=$COMFYUI_PATH is not a folder"
  [[ -f "$COMFY_DIR/main.py" && -d "$COMFY_DIR/comfy" ]] \
    || die "COMFYUI_PATH=$COMFY_DIR is not a ComfyUI install (needs main.py and comfy/); unset it to use the vendored ComfyUI $TITAN_HOST"
  log "using existing ComfyUI at $COMFY_DIR (COMFYUI_PATH)"
else
  unpack_archive "$VENDOR_DIR/$HOST_ARCHIVE" "$HOST_ARCHIVE_SHA256" "$HOST_DIR" "ComfyUI"
  COMFY_DIR="$HOST_DIR/ComfyUI"
fi
[[ -f "$COMFY_DIR/requirements.txt" ]] || die "$COMFY_DIR/requirements.txt is missing"

# --- 3. Vendored third-party node packs -------------------------------------
for entry in "${VENDOR_PACK_ARCHIVES[@]}"; do
  archive="${entry%%:*}"
  sha="${entry##*:}"
  # Folder name = archive name without the trailing -<commit>.tar.gz
  name="${archive%.tar.gz}"
  name="${name%-*}"
  unpack_archive "$VENDOR_DIR/$archive" "$sha" "$VENDOR_PACKS_DIR" "$name"
done

# --- 4. Python packages -------------------------------------------------------
CONSTRAINTS_FILE="$HOST_DIR/pip-constraints.txt"
mkdir -p "$HOST_DIR"
printf '%s\n' "${TORCH_PINS[@]}" > "$CONSTRAINTS_FILE"
DEV_REQS_FILE="$HOST_DIR/dev-requirements.txt"
printf '%s\n' "${DEV_PINS[@]}" > "$DEV_REQS_FILE"
NO_DEPS_REQS_FILE="$HOST_DIR/no-deps-requirements.txt"
printf '%s\n' "${NO_DEPS_PINS[@]}" > "$NO_DEPS_REQS_FILE"
# Host-owned packages: those the host's requirements.txt pins exactly (they differ between hosts).
HOST_OWNED_FILE="$HOST_DIR/host-owned-requirements.txt"
HOST_REQS_FILE="$HOST_DIR/host-requirements.txt"
"$VENV_PY" - "$COMFY_DIR/requirements.txt" "$HOST_OWNED_FILE" "$HOST_REQS_FILE" \
    "$([[ "$TITAN_HOST" == "$DEFAULT_TITAN_HOST" ]] && echo keep || echo split)" <<'PY'
import re, sys
src, owned_path, reqs_path, mode = sys.argv[1:]
owned, rest = [], []
for line in open(src, encoding="utf-8").read().splitlines():
    req = line.split("#", 1)[0].strip()
    if not req:
        continue
    (owned if re.match(r"^[A-Za-z0-9._-]+==", req) else rest).append(req)
open(owned_path, "w", encoding="utf-8").write("".join(r + "\n" for r in owned))
# The default host owns .venv: its exact pins go there; another host's go to its own site folder.
open(reqs_path, "w", encoding="utf-8").write("".join(r + "\n" for r in (owned + rest if mode == "keep" else rest)))
PY
if "$VENV_PY" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)'; then
  LOCK_PY311="$LOCK_PY311" "$VENV_PY" - "$HOST_OWNED_FILE" <<'PY' >> "$CONSTRAINTS_FILE"
import os, re, sys
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
owned = {norm(line.split("==")[0]) for line in open(sys.argv[1], encoding="utf-8").read().split()}
for line in os.environ["LOCK_PY311"].split():
    if norm(line.split("==")[0]) not in owned:
        print(line)
PY
  log "python 3.11: using the tested version lock as pip constraints (minus the host's own pins: $(tr '\n' ' ' < "$HOST_OWNED_FILE"))"
else
  log "python $("$VENV_PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])'): no tested lock; resolving within the pins"
fi

deps_hash="$(
  {
    "$VENV_PY" -V 2>&1
    printf 'torch index: %s\n' "${TORCH_INDEX_URL:-}"
    cat "$CONSTRAINTS_FILE" "$DEV_REQS_FILE" "$NO_DEPS_REQS_FILE" "$REPO_ROOT/requirements.txt" \
      "$HOST_REQS_FILE" "$HOST_OWNED_FILE"
    printf 'host: %s\n' "$TITAN_HOST"
  } | sha256sum | cut -d' ' -f1
)"
if [[ -f "$DEPS_STAMP" && "$(cat "$DEPS_STAMP")" == "$deps_hash" ]]; then
  log "python packages up to date (stamp $DEPS_STAMP)"
else
  torch_index_args=()
  if [[ -n "${TORCH_INDEX_URL:-}" ]]; then
    torch_index_args=(--index-url "$TORCH_INDEX_URL")
  fi
  log "installing torch stack: ${TORCH_PINS[*]}${TORCH_INDEX_URL:+ (from $TORCH_INDEX_URL)}"
  "$VENV_PY" -m pip install -c "$CONSTRAINTS_FILE" ${torch_index_args[@]+"${torch_index_args[@]}"} "${TORCH_PINS[@]}"
  log "installing ComfyUI requirements ($COMFY_DIR/requirements.txt), our requirements and dev/test pins"
  "$VENV_PY" -m pip install -c "$CONSTRAINTS_FILE" \
    -r "$HOST_REQS_FILE" \
    -r "$REPO_ROOT/requirements.txt" \
    -r "$DEV_REQS_FILE"
  if [[ "$TITAN_HOST" != "$DEFAULT_TITAN_HOST" ]]; then
    log "installing the host's own pins into $HOST_SITE_DIR: $(tr '\n' ' ' < "$HOST_OWNED_FILE")"
    rm -rf "$HOST_SITE_DIR"
    "$VENV_PY" -m pip install --no-deps --target "$HOST_SITE_DIR" -r "$HOST_OWNED_FILE"
  fi
  log "installing without dependencies: ${NO_DEPS_PINS[*]}"
  "$VENV_PY" -m pip install -c "$CONSTRAINTS_FILE" --no-deps -r "$NO_DEPS_REQS_FILE"
  log "checking installed versions"
  "$VENV_PY" - "${TORCH_PINS[@]}" <<'PY'
import sys
from importlib.metadata import version

pins = sys.argv[1:]
bad = []
for pin in pins:
    name, wanted = pin.split("==")
    got = version(name)
    if got.split("+")[0] != wanted:
        bad.append(f"{name}: installed {got}, pinned {wanted}")
if bad:
    sys.exit("pinned packages were moved: " + "; ".join(bad))
import torch, torchvision, torchaudio  # noqa: E401  (import check)
print(f"[setup] torch {torch.__version__}, torchvision {torchvision.__version__}, torchaudio {torchaudio.__version__}")
PY
  printf '%s\n' "$deps_hash" > "$DEPS_STAMP"
fi

# --- 4b. Chromium for the browser tests (tests/test_browser.py) --------------
# playwright drives the system's Chromium; `playwright install` (which downloads a browser build) is never
# used. TITAN_CHROMIUM may name another Chromium / Chrome binary instead of Debian's package.
apt_install_chromium() {  # [command prefix, e.g. sudo -n]
  log "installing Debian's chromium for the browser tests (apt-get)"
  "$@" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "$@" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  command -v chromium >/dev/null || die "apt-get installed chromium but no 'chromium' command is on PATH"
}
CHROMIUM_HINT="tests/test_browser.py fails until a Chromium is installed (apt-get install chromium) or TITAN_CHROMIUM names one"
if [[ -n "${TITAN_CHROMIUM:-}" ]]; then
  [[ -x "$TITAN_CHROMIUM" ]] || die "TITAN_CHROMIUM=$TITAN_CHROMIUM is not an executable file"
  log "browser for the tests: $TITAN_CHROMIUM (TITAN_CHROMIUM)"
elif chromium_path="$(command -v chromium || command -v chromium-browser || true)"; [[ -n "$chromium_path" ]]; then
  log "up to date: chromium ($chromium_path)"
elif ! command -v apt-get >/dev/null; then
  log "NOTE: no chromium and no apt-get on this machine; $CHROMIUM_HINT"
elif [[ $EUID -eq 0 ]]; then
  apt_install_chromium
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  apt_install_chromium sudo -n
else
  log "NOTE: chromium is missing and installing it needs root (sudo apt-get install chromium); $CHROMIUM_HINT"
fi

# --- 5. Load paths for ComfyUI ----------------------------------------------
# ComfyUI loads every folder inside a custom_nodes path as a pack named after
# the folder, so the pack gets a folder of its own holding only a link to the
# repository (never the repository's parent, which holds unrelated folders).
mkdir -p "$PACK_LINK_DIR"
PACK_LINK="$PACK_LINK_DIR/titan-guide"
if [[ "$(readlink "$PACK_LINK" 2>/dev/null || true)" != "$REPO_ROOT" ]]; then
  log "linking $PACK_LINK -> $REPO_ROOT"
  rm -rf "$PACK_LINK"
  ln -s "$REPO_ROOT" "$PACK_LINK"
else
  log "up to date: $PACK_LINK -> $REPO_ROOT"
fi

yaml_tmp="$(mktemp "$HOST_DIR/.yaml.XXXXXX")"
# Written by PyYAML so that any path (spaces, colons) is quoted correctly.
"$VENV_PY" - "$yaml_tmp" "$EXTRA_PATHS_YAML" "$PACK_LINK_DIR" "$VENDOR_PACKS_DIR" <<'PY'
import sys
import yaml

out_path, yaml_path, pack_dir, vendor_dir = sys.argv[1:]
config = {
    "titan_guide_pack": {"custom_nodes": pack_dir},
    "titan_guide_vendor_packs": {"custom_nodes": vendor_dir},
}
with open(out_path, "w", encoding="utf-8") as f:
    f.write("# Generated by scripts/setup.sh; re-run it instead of editing this file.\n")
    f.write(f"# Use: python main.py --extra-model-paths-config {yaml_path}\n")
    yaml.safe_dump(config, f, sort_keys=False)
PY
if cmp -s "$yaml_tmp" "$EXTRA_PATHS_YAML"; then
  rm -f "$yaml_tmp"
  log "up to date: $EXTRA_PATHS_YAML"
else
  mv "$yaml_tmp" "$EXTRA_PATHS_YAML"
  log "wrote $EXTRA_PATHS_YAML"
fi
printf '%s\n' "$COMFY_DIR" > "$HOST_DIR/comfyui_path"

# --- 6. Smoke check: the host imports with our pack loaded -----------------
SMOKE_STAMP="$HOST_DIR/.smoke-ok"
smoke_key="$(printf '%s\n' "$deps_hash" "$COMFY_DIR" "$(sha256_of "$EXTRA_PATHS_YAML")" | sha256sum | cut -d' ' -f1)"
if [[ -f "$SMOKE_STAMP" && "$(cat "$SMOKE_STAMP")" == "$smoke_key" ]]; then
  log "host smoke check already passed for this set-up"
else
  log "smoke check: starting ComfyUI with --quick-test-for-ci (loads all node packs, then exits)"
  smoke_dir="$(mktemp -d)"
  mkdir -p "$smoke_dir/base/custom_nodes" "$smoke_dir/base/models"
  smoke_log="$smoke_dir/comfyui.log"
  smoke_pythonpath="${PYTHONPATH:-}"
  [[ -d "$HOST_SITE_DIR" ]] && smoke_pythonpath="$HOST_SITE_DIR${smoke_pythonpath:+:$smoke_pythonpath}"
  if ! (cd "$COMFY_DIR" && PYTHONPATH="$smoke_pythonpath" "$VENV_PY" main.py --cpu --quick-test-for-ci --disable-auto-launch \
          --disable-api-nodes --base-directory "$smoke_dir/base" \
          --database-url "sqlite:///:memory:" \
          --extra-model-paths-config "$EXTRA_PATHS_YAML") >"$smoke_log" 2>&1; then
    cat "$smoke_log" >&2
    die "ComfyUI failed to start (log above)"
  fi
  if grep -q "IMPORT FAILED" "$smoke_log"; then
    cat "$smoke_log" >&2
    die "a node pack failed to import (log above)"
  fi
  grep -E "seconds.*(titan-guide|custom_nodes_vendor)" "$smoke_log" | sed 's/^/[setup]   /' || true
  rm -rf "$smoke_dir"
  printf '%s\n' "$smoke_key" > "$SMOKE_STAMP"
fi

if [[ "$TITAN_HOST" == "$DEFAULT_TITAN_HOST" ]]; then
  log "done in $((SECONDS - START_SECONDS)) s. Host: $COMFY_DIR; run tests with: .venv/bin/python -m pytest -q tests"
else
  log "done in $((SECONDS - START_SECONDS)) s. Host: $COMFY_DIR; run tests with: TITAN_HOST=$TITAN_HOST .venv/bin/python -m pytest -q tests -m host_compat"
fi
