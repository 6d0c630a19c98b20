#!/usr/bin/env bash
# Reduced-precision indexing benchmark, side by side in one run (bench/README.md,
# docs/precision.md). For MobileNetV2 and ResNet-50 v1 (the shared weights), on the same
# clothing-small gallery photos, same thread count and batch size:
#   1. lookalike models calibrate on the 372 test photos (a copy of the model: the card records
#      fidelity and speed, which --precision auto reads)
#   2. lookalike index at --precision fp32, bf16 and auto
#   3. bench_stages at fp32 and bf16: decode + preprocess + perceptual hash alone (1 thread, what
#      the indexer's decode worker does per image) and the model alone (one pass on all threads,
#      and two passes side by side as `index` runs them; the faster is "model only")
#   4. the Python pipelines (bench/python_precision.py): PIL + torchvision in a DataLoader worker
#      + TorchScript optimize_for_inference, (a) FP32, (b) BF16 autocast + channels-last,
#      (c) the whole model in BF16, channels-last
# Three rates for each lookalike index and Python row, images/s:
#   process: the images over the command's whole wall time, model load, optimize_for_inference
#            (lookalike) or tracing and warm-up (Python), process start and exit included;
#   run:     what each reports itself: lookalike from after the model load to the saved
#            collection, Python its timed loop (after tracing and warm-up);
#   steady:  the images after the first batch over the time from that batch's commit (add) to
#            the last: neither side's fixed costs (first forward at the batch size, filling
#            the decode queue or starting the DataLoader, saving).
# and prints every row, lookalike auto / the best Python row in steady state and per process,
# decode share of embed time, and end to end (steady) / model only.
# usage: bench/precision.sh [N_IMAGES (default 512)] [THREADS (default: all cores)] [MODELS]
#   MODELS: comma-separated, default mobilenet_v2,resnet50. BENCH_CALIBRATE_LIMIT (default 0 =
#   all 372 test photos) bounds the calibration.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
shared=${LOOKALIKE_SHARED_DIR:-$root/../shared}
build=${BUILD_DIR:-$root/build}
n=${1:-512}
threads=${2:-$(nproc)}
models=${3:-mobilenet_v2,resnet50}
batch=32
py=/usr/bin/python3
bin=$build/cli/lookalike
work=$(mktemp -d "${TMPDIR:-/tmp}/lookalike-bench-precision.XXXXXX")
trap 'rm -rf "$work"' EXIT
# timed FILE COMMAND...: runs COMMAND, writes its start and end time (s since the epoch) to FILE.
timed() {
  local out=$1 t0
  shift
  t0=$(date +%s.%N)
  "$@"
  echo "$t0 $(date +%s.%N)" > "$out"
}

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
    timed "$out/index-$p.wall" "$bin" index "$work/manifest.csv" --collection "$out/coll-$p" \
      --model "$model" --threads "$threads" --batch-size "$batch" --precision "$p" --json -q \
      > "$out/index-$p.json"
  done
  for p in fp32 bf16; do
    "$build/bench/bench_stages" "$model" "$work/files.txt" --threads "$threads" \
      --batch-size "$batch" --precision "$p" > "$out/stages-$p.json"
    # The model alone as `index` runs it by default: two passes side by side on a thread each.
    "$build/bench/bench_stages" "$model" "$work/files.txt" --threads "$threads" \
      --batch-size "$batch" --precision "$p" --concurrent-passes 2 > "$out/stages-$p-2.json"
  done
  for m in fp32 autocast bf16; do
    echo "bench: $arch: Python $m" >&2
    timed "$out/py-$m.wall" "$py" "$root/bench/python_precision.py" --arch "$arch" \
      --weights "$weights" \
      --files "$work/files.txt" --threads "$threads" --batch-size "$batch" --mode "$m" \
      > "$out/py-$m.json"
  done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

"$py" - "$work" "$models" <<'PY'
import json, sys
work, models = sys.argv[1], sys.argv[2].split(",")
load = lambda arch, name: json.load(open(f"{work}/{arch}/{name}.json"))
def wall(arch, name):
    t0, t1 = map(float, open(f"{work}/{arch}/{name}.wall").read().split())
    return t1 - t0

verdict = lambda ok: "PASS" if ok else "FAIL"
for arch in models:
    cal = load(arch, "calibrate")
    idx = {p: load(arch, f"index-{p}") for p in ("fp32", "bf16", "auto")}
    # Model only: the faster of one pass on all threads and two passes side by side.
    st_all = {(p, k): load(arch, f"stages-{p}{s}") for p in ("fp32", "bf16")
              for k, s in ((1, ""), (2, "-2"))}
    st = {p: max((st_all[(p, 1)], st_all[(p, 2)]), key=lambda s: s["embed_images_per_s"])
          for p in ("fp32", "bf16")}
    py = {m: load(arch, f"py-{m}") for m in ("fp32", "autocast", "bf16")}
    auto_p = (idx["auto"].get("precision") or {}).get("precision", "?")
    bf = cal["precisions"].get("bf16", {})
    n = idx["auto"]["embedded"]
    print(f"\n{arch}: {n} photos; calibrate on {cal['images']} test photos: bf16 min cosine "
          f"{bf.get('min_cosine', 0):.6f}, Recall@1 delta {bf.get('recall_at_1_delta', 0):+.4f}, "
          f"mAP delta {bf.get('map_delta', 0):+.4f}, meets bar {bf.get('meets_bar')}; "
          f"model-only fp32 {cal['fp32']['images_per_s']:.1f}, bf16 "
          f"{bf.get('images_per_s', 0):.1f} images/s; auto chose {auto_p}")
    # (process, run, steady) images/s per row.
    rates = {}
    for p in ("fp32", "bf16", "auto"):
        r = idx[p]
        name = f"lookalike index --precision {p}" + (f" ({auto_p})" if p == "auto" else "")
        rates[name] = (r["embedded"] / wall(arch, f"index-{p}"), r["images_per_s"],
                       r["stages"]["steady_images_per_s"])
    names = {"fp32": "(a) FP32", "autocast": "(b) BF16 autocast, channels-last",
             "bf16": "(c) whole model BF16, channels-last"}
    for m, r in py.items():
        rates[f"Python {names[m]}"] = (r["images"] / wall(arch, f"py-{m}"), r["images_per_s"],
                                       r["steady_images_per_s"])
    py_rows = [k for k in rates if k.startswith("Python")]
    best_steady = max(py_rows, key=lambda k: rates[k][2])
    best_process = max(py_rows, key=lambda k: rates[k][0])
    print(f"{'pipeline (images/s)':<46} {'process':>8} {'run':>8} {'steady':>8} "
          f"{'steady / best Python':>21}")
    for name, (proc, run, steady) in rates.items():
        print(f"{name:<46} {proc:>8.1f} {run:>8.1f} {steady:>8.1f} "
              f"{steady / rates[best_steady][2]:>20.2f}x")
    for (p, k), s in st_all.items():
        label = f"  model only, {p}, {k} pass{'es' if k > 1 else ''} (bench_stages)"
        print(f"{label:<46} {'':>8} {'':>8} {s['embed_images_per_s']:>8.1f}")
    s = st["fp32"]
    print(f"{'  decode + preprocess + pHash only (1 thread)':<46} {'':>8} {'':>8} "
          f"{s['decode_images_per_s']:>8.1f}   (ms an image: decode {s['decode_only_ms_per_image']:.2f}, "
          f"preprocess {s['preprocess_only_ms_per_image']:.2f}, pHash {s['phash_ms_per_image']:.2f})")
    auto_name = [k for k in rates if k.startswith("lookalike index --precision auto")][0]
    ratio = rates[auto_name][2] / rates[best_steady][2]
    ratio_proc = rates[auto_name][0] / rates[best_process][0]
    chosen = auto_p if auto_p in st else "fp32"
    share = st[chosen]["decode_ms_per_image"] / st[chosen]["embed_ms_per_image"]
    share_cpu = st[chosen]["decode_share_of_embed_cpu"]
    e2e = rates[auto_name][2] / st[chosen]["embed_images_per_s"]
    e2e_proc = rates[auto_name][0] / st[chosen]["embed_images_per_s"]
    print(f"lookalike auto / best Python, steady state ({best_steady[7:]}): {ratio:.2f}x "
          f"(target >= 1.5x: {verdict(ratio >= 1.5)}); whole process ({best_process[7:]}): "
          f"{ratio_proc:.2f}x")
    print(f"decode + preprocess + pHash / embed time at {chosen}: {100 * share:.1f}% wall "
          f"(1 decode thread against {st[chosen]['threads'] * st[chosen].get('concurrent_passes', 1)} model threads; target <= 20%: "
          f"{verdict(share <= 0.20)}), {100 * share_cpu:.1f}% of the CPU time")
    print(f"end to end / model only at {chosen}: steady {100 * e2e:.1f}% (target >= 90%: "
          f"{verdict(e2e >= 0.90)}), whole process {100 * e2e_proc:.1f}% (model only: the "
          f"faster bench_stages row)")
    # Decoding runs on the cores the model keeps busy: end to end can reach at most the model's
    # CPU time over the model's plus the decoder's (bench_stages' CPU-time share).
    print(f"  ceiling with decoding on the same cores: {100 / (1 + share_cpu):.1f}% "
          f"(model CPU / (model + decode CPU)); 90% needs decoding at most "
          f"{100 * (1 / 0.9 - 1):.1f}% of the model's CPU time, it is {100 * share_cpu:.1f}%")
PY
