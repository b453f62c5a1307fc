#!/usr/bin/env bash
# Prepare (here, with internet) what benchmarks/host_gpu.py needs on the offline GPU machine, inside the
# repository so the device tool carries it (64 MiB in all, tracked files included):
#   .gpu/site-cp312.tar.xz  cp312 manylinux wheels of what ComfyUI 0.33.0 needs and that machine lacks (its python3.12 has torch
#          2.11, transformers, aiohttp, ...: /work/.library/device/KINDS.md). comfy-kitchen is trimmed of its
#          CUDA/HIP extension builds (58 MB wheel): it then loads its eager/Triton backends, as it does when the
#          extension cannot load; the fp16 SD1.5 graph uses none of its quantised ops. The wheels are unpacked
#          (a wheel is its site-packages files) and packed again with xz: av's wheel alone is 36 MB zipped, 25 MB
#          as xz, which keeps what travels well under 64 MiB. On the GPU machine: tar -xJf ... -C /tmp/site.
#   .gpu/  ComfyUI 0.33.0 (783545f6) from ../shared/vendor without the data it does not need here (the text
#          encoders' tokenizers; SD1's, in comfy/sd1_tokenizer, stays), blueprints, API nodes, tests, pictures) as .tar.xz, and AnimateDiff-Evolved d8d163c.
# Not shipped: the frontend (host_gpu.py passes --front-end-root), kornia / spandrel (only some comfy_extras
# nodes import them), open_clip (the pack imports it lazily).
#
#   bash benchmarks/gpu_prepare.sh      # then run the command in docs/pending/host_gpu_command.txt
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO_ROOT="$PWD"
VENDOR_DIR="${TITAN_SHARED_DIR:-$(dirname "$REPO_ROOT")/shared}/vendor"
HOST_ARCHIVE="ComfyUI-783545f6.tar.gz"
HOST_SHA256="5934cc13dbedd1746f05b06b8432c4482dd573ccec2083f90a4f6d007c93f18a"
ADE_ARCHIVE="ComfyUI-AnimateDiff-Evolved-d8d163c.tar.gz"
ADE_SHA256="4114135877e8907e34b5d0d0385206fcce50572d8a47a0c2a91f4cddda418053"
PYTHON="${PYTHON:-python3}"

git check-ignore -q ".gpu/x" || { echo "[prepare] ERROR: .gpu/ is not git-ignored here" >&2; exit 1; }
rm -rf .gpu
mkdir -p .gpu
WHEELS="$(mktemp -d)"
trap 'rm -rf "$WHEELS"' EXIT

PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
download() {  # dest, then NAME==VERSION ...
  local dest="$1"; shift
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d "$dest" "$@"
}
echo "[prepare] wheels -> .gpu/site-cp312.tar.xz"
download "$WHEELS" torchsde==0.2.6 trampoline==0.1.2 av==18.1.0 alembic==1.20.1 Mako==1.4.3 SQLAlchemy==2.1.9 \
  greenlet==3.5.6 comfy-aimdo==0.4.13 simpleeval==1.0.8 blake3==1.0.11 pydantic==2.14.4 pydantic_core==2.50.5 \
  pydantic-settings==2.16.3 python-dotenv==1.2.4 annotated-types==0.8.0 typing-inspection==0.4.5 \
  jvp_flash_attention==0.14.0
# the ImageBind / CLIP-style workflows' objectives (the H200 image has timm, regex, transformers, portalocker, opencv):
# ImageBind with --no-deps as scripts/setup.sh installs it; pytorchvideo and iopath ship only as sources (pure Python)
download "$WHEELS" imagebind-unofficial==0.1.1 ftfy==6.3.1 wcwidth==0.9.4
"$PYTHON" -m pip wheel -q --no-deps -w "$WHEELS" pytorchvideo==0.1.5 iopath==0.1.10
download "$WHEELS/kitchen" comfy-kitchen==0.2.31
"$PYTHON" - "$WHEELS/kitchen" "$WHEELS" <<'PY'
import pathlib, sys, zipfile
src_dir, dest_dir = map(pathlib.Path, sys.argv[1:])
(src,) = src_dir.glob("comfy_kitchen-*.whl")
drop = ("comfy_kitchen/backends/cuda/_C.", "comfy_kitchen/backends/hip/_C.")
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest_dir / src.name, "w", zipfile.ZIP_DEFLATED) as zout:
    for item in zin.infolist():
        if item.filename.startswith(drop):
            continue
        data = zin.read(item.filename)
        if item.filename.endswith(".dist-info/RECORD"):
            data = b"".join(line for line in data.splitlines(keepends=True)
                            if not line.decode().startswith(drop))
        zout.writestr(item, data)
print(f"[prepare] {dest_dir / src.name}: CUDA/HIP extension builds left out")
PY
rm -rf "$WHEELS/kitchen"
mkdir "$WHEELS/site"
for wheel in "$WHEELS"/*.whl; do
  "$PYTHON" -m zipfile -e "$wheel" "$WHEELS/site"
done
tar -cf - -C "$WHEELS/site" . | xz -6 -T0 > .gpu/site-cp312.tar.xz

echo "[prepare] ComfyUI 0.33.0 and AnimateDiff-Evolved d8d163c -> .gpu/"
for pair in "$HOST_ARCHIVE:$HOST_SHA256" "$ADE_ARCHIVE:$ADE_SHA256"; do
  got="$(sha256sum "$VENDOR_DIR/${pair%%:*}" | cut -d' ' -f1)"
  [[ "$got" == "${pair##*:}" ]] || { echo "[prepare] ERROR: checksum mismatch for ${pair%%:*}" >&2; exit 1; }
done
tmp="$(mktemp -d)"
tar -xzf "$VENDOR_DIR/$HOST_ARCHIVE" -C "$tmp"
tar -cJf .gpu/ComfyUI-783545f6-lean.tar.xz -C "$tmp" --exclude='ComfyUI/comfy/text_encoders/*_tokenizer' \
  --exclude=ComfyUI/blueprints --exclude=ComfyUI/comfy_api_nodes --exclude=ComfyUI/tests \
  --exclude=ComfyUI/tests-unit --exclude='*.png' ComfyUI
rm -rf "$tmp"
cp "$VENDOR_DIR/$ADE_ARCHIVE" .gpu/

total=$(( $(git ls-files -z | xargs -0 cat | wc -c) + $(cat .gpu/* | wc -c) ))
echo "[prepare] what travels: $((total / 1048576)) MiB of 64 (tracked files + .gpu)"
(( total < 64 * 1048576 )) || { echo "[prepare] ERROR: over the device tool's 64 MiB" >&2; exit 1; }
