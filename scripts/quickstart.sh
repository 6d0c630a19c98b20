#!/usr/bin/env bash
# Installs what lookalike needs, builds it, exports the ImageNet-pretrained MobileNetV2 from
# ../shared into the folder the binary searches by default
# (${XDG_DATA_HOME:-~/.local/share}/lookalike/models), indexes the clothing-small gallery into
# ./lookalike-data (the default collection) and searches it with a test photo. Afterwards the
# README's commands work as written, from the project root, with no environment variables.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
shared=${LOOKALIKE_SHARED_DIR:-$root/../shared}
build=${BUILD_DIR:-$root/build}
models=${XDG_DATA_HOME:-$HOME/.local/share}/lookalike/models

"$root/scripts/install-deps.sh"
"$root/scripts/build.sh"
if [ ! -f "$models/mobilenet_v2.pt" ]; then
  /usr/bin/python3 "$root/tools/export_model.py" mobilenet_v2 \
    --weights "$shared/models/mobilenet_v2/mobilenet_v2_imagenet_float.pth" --out "$models"
fi
lookalike="$build/cli/lookalike"
set -x
"$lookalike" index "$shared/datasets/clothing-small/train"
"$lookalike" info
"$lookalike" search "$shared/datasets/clothing-small/test/shoes/$(ls "$shared/datasets/clothing-small/test/shoes" | head -n 1)" -k 5
