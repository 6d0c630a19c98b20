#!/usr/bin/env bash
# Reduced-precision indexing benchmark, side by side in one run (bench/README.md,
# docs/precision.md). For MobileNetV2 and ResNet-50 v1 (the shared weights), on the same
# clothing-small gallery photos, same thread count and batch size:
#   1. lookalike models calibrate on the 372 test photos (a copy of the model: the card records
#      fidelity and speed, which --precision auto reads)
#   2. lookalike index, end to end, at --precision fp32, bf16 and auto (images/s)
#   3. bench_stages at fp32 and bf16: decode + preprocess alone (1 thread) and the model alone
#   4. the Python pipelines (bench/python_precision.py): PIL + torchvision in a DataLoader worker
#      + TorchScript optimize_for_inference, (a) FP32, (b) BF16 autocast + channels-last,
#      (c) the whole model in BF16, channels-last
# and prints every row, lookalike auto / the best Python row, decode share of embed time, and
# end to end / model only.
# usage: bench/precision.sh [N_IMAGES (default 320)] [THREADS (default: all cores)] [MODELS]
#   MODELS: comma-separated, default mobilenet_v2,resnet50. BENCH_CALIBRATE_LIMIT (default 0 =
#   all 372 test photos) bounds the calibration.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
shared=${LOOKALIKE_SHARED_DIR:-$root/../shared}
build=${BUILD_DIR:-$root/build}
n=${1:-320}
threads=${2:-$(nproc)}
models=${3:-mobilenet_v2,resnet50}
batch=32
py=/usr/bin/python3
bin=$build/cli/lookalike
work=$(mktemp -d "${TMPDIR:-/tmp}/lookalike-bench-precision.XXXXXX")
trap 'rm -rf "$work"' EXIT

find "$shared/datasets/clothing-small/train" -name '*.jpg' | sort > "$work/all.txt"
head -n "$n" "$work/all.txt" > "$work/files.txt"
n=$(wc -l < "$work/files.txt")
{ echo file; cat "$work/files.txt"; } > "$work/manifest.csv"
echo "bench: $n clothing-small images, $threads threads, batch $batch, models $models" >&2
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

for arch in ${models//,/ }; do
  case $arch in
    mobilenet_v2) weights=$shared/models/mobilenet_v2/mobilenet_v2_imagenet_float.pth ;;
    resnet50) weights=$shared/models/resnet50/resnet50_v1_imagenet_fp16.pth ;;
    *) echo "unknown model $arch" >&2; exit 2 ;;
  esac
  out=$work/$arch
  mkdir -p "$out/models"
  "$py" "$root/tools/export_model.py" "$arch" --weights "$weights" --out "$out/models" >&2
  model=$out/models/$arch.pt
  echo "bench: $arch: calibrate" >&2
  "$bin" --model "$model" --threads "$threads" models calibrate \
    "$shared/datasets/clothing-small/test" --limit "${BENCH_CALIBRATE_LIMIT:-0}" --json \
    > "$out/calibrate.json"
  for p in fp32 bf16 auto; do
    echo "bench: $arch: lookalike index --precision $p" >&2
    "$bin" index "$work/manifest.csv" --collection "$out/coll-$p" --model "$model" \
      --threads "$threads" --batch-size "$batch" --precision "$p" --json -q > "$out/index-$p.json"
  done
  for p in fp32 bf16; do
    "$build/bench/bench_stages" "$model" "$work/files.txt" --threads "$threads" \
      --batch-size "$batch" --precision "$p" > "$out/stages-$p.json"
  done
  for m in fp32 autocast bf16; do
    echo "bench: $arch: Python $m" >&2
    "$py" "$root/bench/python_precision.py" --arch "$arch" --weights "$weights" \
      --files "$work/files.txt" --threads "$threads" --batch-size "$batch" --mode "$m" \
      > "$out/py-$m.json"
  done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

"$py" - "$work" "$models" <<'PY'
import json, sys
work, models = sys.argv[1], sys.argv[2].split(",")
load = lambda arch, name: json.load(open(f"{work}/{arch}/{name}.json"))
for arch in models:
    cal = load(arch, "calibrate")
    idx = {p: load(arch, f"index-{p}") for p in ("fp32", "bf16", "auto")}
    st = {p: load(arch, f"stages-{p}") for p in ("fp32", "bf16")}
    py = {m: load(arch, f"py-{m}") for m in ("fp32", "autocast", "bf16")}
    auto_p = (idx["auto"].get("precision") or {}).get("precision", "?")
    bf = cal["precisions"].get("bf16", {})
    print(f"\n{arch}: calibrate on {cal['images']} test photos: bf16 min cosine "
          f"{bf.get('min_cosine', 0):.6f}, Recall@1 delta {bf.get('recall_at_1_delta', 0):+.4f}, "
          f"mAP delta {bf.get('map_delta', 0):+.4f}, meets bar {bf.get('meets_bar')}; "
          f"model-only fp32 {cal['fp32']['images_per_s']:.1f}, bf16 "
          f"{bf.get('images_per_s', 0):.1f} images/s; auto chose {auto_p}")
    best_name, best = max(((m, r["images_per_s"]) for m, r in py.items()), key=lambda t: t[1])
    rows = [(f"lookalike index --precision {p}" + (f" ({auto_p})" if p == "auto" else ""),
             idx[p]["images_per_s"]) for p in ("fp32", "bf16", "auto")]
    for p in ("fp32", "bf16"):
        rows.append((f"  model only, {p} (bench_stages)", st[p]["embed_images_per_s"]))
    rows.append(("  decode + preprocess only (1 thread)", st["fp32"]["decode_images_per_s"]))
    names = {"fp32": "(a) FP32", "autocast": "(b) BF16 autocast, channels-last",
             "bf16": "(c) whole model BF16, channels-last"}
    for m, r in py.items():
        rows.append((f"Python {names[m]}", r["images_per_s"]))
    print(f"{'pipeline':<50} {'images/s':>9} {'/ best Python':>14}")
    for name, rate in rows:
        print(f"{name:<50} {rate:>9.1f} {rate / best:>13.2f}x")
    ratio = idx["auto"]["images_per_s"] / best
    chosen = auto_p if auto_p in st else "fp32"
    share = st[chosen]["decode_ms_per_image"] / st[chosen]["embed_ms_per_image"]
    e2e = idx["auto"]["images_per_s"] / st[chosen]["embed_images_per_s"]
    print(f"lookalike auto / best Python ({names[best_name]}): {ratio:.2f}x "
          f"(target >= 1.5x: {'PASS' if ratio >= 1.5 else 'FAIL'})")
    print(f"decode + preprocess / embed time at {chosen}: {100 * share:.1f}% "
          f"(target <= 20%: {'PASS' if share <= 0.20 else 'FAIL'})")
    print(f"end to end / model only at {chosen}: {100 * e2e:.1f}% "
          f"(target >= 90%: {'PASS' if e2e >= 0.90 else 'FAIL'})")
PY
