#!/usr/bin/env bash
# Prepare (here, where PyPI is reachable) what benchmarks/wan_gpu.py needs on the offline GPU machine, inside the
# repository so the device tool carries it (64 MiB in all, tracked files included):
#   .whl/      cp312 manylinux wheels of what ComfyUI 0.33.0 needs and that machine's python3.12 (torch 2.11,
#              numpy, safetensors, aiohttp, einops, ...: /work/.library/device/KINDS.md) lacks, plus
#              jvp-flash-attention (requirements.txt; the pack's own Triton JVP kernel is the default route, it
#              stays selectable). comfy-kitchen is trimmed of its
#              CUDA/HIP extension builds (its eager / Triton backends load instead).
#   .wan_gpu/  ComfyUI 0.33.0 (783545f6, from ../shared/vendor) without tests, API nodes, blueprints, tokenizer
#              data and pictures, as .tar.xz. No frontend: wan_gpu.py runs the nodes in-process.
#
#   bash benchmarks/wan_gpu_prepare.sh     # then the command in docs/pending/wan_gpu_command.txt
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO_ROOT="$PWD"
VENDOR_DIR="${TITAN_SHARED_DIR:-$(dirname "$REPO_ROOT")/shared}/vendor"
HOST_ARCHIVE="ComfyUI-783545f6.tar.gz"
PYTHON="${PYTHON:-python3}"
EXCLUDE="$(git rev-parse --git-path info/exclude)"
for folder in .whl .wan_gpu; do  # never committed
  git check-ignore -q "$folder/x" || echo "/$folder/" >> "$EXCLUDE"
done
rm -rf .whl .wan_gpu && mkdir -p .whl .wan_gpu

PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
download() {  # dest, then NAME==VERSION ...
  local dest="$1"; shift
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d "$dest" "$@"
}
echo "[prepare] wheels -> .whl/"
download .whl torchsde==0.2.6 trampoline==0.1.2 av==18.1.0 alembic==1.20.1 Mako==1.4.3 SQLAlchemy==2.1.9 \
  greenlet==3.5.6 comfy-aimdo==0.4.13 simpleeval==1.0.8 blake3==1.0.11 pydantic==2.14.4 pydantic_core==2.50.5 \
  pydantic-settings==2.16.3 python-dotenv==1.2.4 annotated-types==0.8.0 typing-inspection==0.4.5 \
  jvp_flash_attention==0.14.0
download .wan_gpu/kitchen comfy-kitchen==0.2.31
"$PYTHON" - .wan_gpu/kitchen .whl <<'PY'
import pathlib, sys, zipfile
src_dir, dest_dir = map(pathlib.Path, sys.argv[1:])
(src,) = src_dir.glob("comfy_kitchen-*.whl")
drop = ("comfy_kitchen/backends/cuda/_C.", "comfy_kitchen/backends/hip/_C.")
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest_dir / src.name, "w", zipfile.ZIP_DEFLATED) as zout:
    for item in zin.infolist():
        if not item.filename.startswith(drop):
            data = zin.read(item.filename)
            if item.filename.endswith(".dist-info/RECORD"):
                data = b"".join(l for l in data.splitlines(keepends=True) if not l.decode().startswith(drop))
            zout.writestr(item, data)
PY
rm -rf .wan_gpu/kitchen

echo "[prepare] lean ComfyUI 0.33.0 -> .wan_gpu/"
tmp="$(mktemp -d)"
tar -xzf "$VENDOR_DIR/$HOST_ARCHIVE" -C "$tmp"
tar -cJf .wan_gpu/ComfyUI-783545f6-lean.tar.xz -C "$tmp" --exclude='ComfyUI/comfy/text_encoders/*_tokenizer' \
  --exclude=ComfyUI/blueprints --exclude=ComfyUI/comfy_api_nodes --exclude=ComfyUI/tests \
  --exclude=ComfyUI/tests-unit --exclude='*.png' ComfyUI
rm -rf "$tmp"

total=$(( $(git ls-files -z | xargs -0 cat | wc -c) + $(cat .whl/* .wan_gpu/* | wc -c) ))
echo "[prepare] what travels: $((total / 1048576)) MiB of 64 (tracked files + .whl + .wan_gpu)"
(( total < 64 * 1048576 )) || { echo "[prepare] ERROR: over the device tool's 64 MiB" >&2; exit 1; }
