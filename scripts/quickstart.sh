#!/usr/bin/env bash
# Installs what lookalike needs, builds it, exports the ImageNet-pretrained MobileNetV2 from
# ../shared, indexes the clothing-small gallery and searches it with a test photo.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
shared=${LOOKALIKE_SHARED_DIR:-$root/../shared}
build=${BUILD_DIR:-$root/build}
export LOOKALIKE_MODELS=${LOOKALIKE_MODELS:-$root/models}
export LOOKALIKE_COLLECTION=${LOOKALIKE_COLLECTION:-$root/lookalike-data}

"$root/scripts/install-deps.sh"
"$root/scripts/build.sh"
if [ ! -f "$LOOKALIKE_MODELS/mobilenet_v2.pt" ]; then
  /usr/bin/python3 "$root/tools/export_model.py" mobilenet_v2 \
    --weights "$shared/models/mobilenet_v2/mobilenet_v2_imagenet_float.pth" --out "$LOOKALIKE_MODELS"
fi
lookalike="$build/cli/lookalike"
set -x
"$lookalike" index "$shared/datasets/clothing-small/train"
"$lookalike" info
"$lookalike" search "$shared/datasets/clothing-small/test/shoes/$(ls "$shared/datasets/clothing-small/test/shoes" | head -n 1)" -k 5
