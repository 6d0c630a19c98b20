#!/usr/bin/env bash
# The indexing benchmark, side by side in one run on clothing-small (see bench/README.md):
#   1. lookalike index, end to end (images/s)
#   2. decode-only and embed-only rates of lookalike's stages (bench_stages)
#   3. the Python reference: PIL + torchvision transforms + eager MobileNetV2 + FAISS, same weights,
#      same thread count; and the same with an optimised TorchScript model, for honesty.
#   4. the engine: commit cost against collection size, search QPS with and without a writer,
#      dynamic batching of concurrent embeds (bench_engine; a few minutes: it builds a 1M-vector
#      collection). BENCH_ENGINE=0 skips it; BENCH_ENGINE_ARGS adds flags (e.g. "--only embed").
# usage: bench/run.sh [N_IMAGES (default 640; 0 = all 3068)] [THREADS (default: all cores)]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
shared=${LOOKALIKE_SHARED_DIR:-$root/../shared}
build=${BUILD_DIR:-$root/build}
n=${1:-640}
threads=${2:-$(nproc)}
py=/usr/bin/python3
work=$(mktemp -d "${TMPDIR:-/tmp}/lookalike-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT

weights=$shared/models/mobilenet_v2/mobilenet_v2_imagenet_float.pth
model=$build/fixtures/models/mobilenet_v2.pt
if [ ! -f "$model" ]; then
  "$py" "$root/tools/export_model.py" mobilenet_v2 --weights "$weights" --out "$build/fixtures/models" >&2
fi

# The first N gallery photos, as a file list and as a CSV manifest for `lookalike index`.
find "$shared/datasets/clothing-small/train" -name '*.jpg' | sort > "$work/all.txt"
if [ "$n" -gt 0 ]; then head -n "$n" "$work/all.txt" > "$work/files.txt"; else cp "$work/all.txt" "$work/files.txt"; fi
n=$(wc -l < "$work/files.txt")
{ echo file; cat "$work/files.txt"; } > "$work/manifest.csv"

echo "bench: $n clothing-small images, $threads threads, batch 32, model mobilenet_v2" >&2
"$build/cli/lookalike" index "$work/manifest.csv" --collection "$work/coll" --model "$model" \
  --threads "$threads" --json -q > "$work/lookalike.json"
"$build/bench/bench_stages" "$model" "$work/files.txt" --threads "$threads" > "$work/stages.json"
"$py" "$root/bench/python_reference.py" --weights "$weights" --files "$work/files.txt" \
  --threads "$threads" --mode eager > "$work/py_eager.json"
"$py" "$root/bench/python_reference.py" --weights "$weights" --files "$work/files.txt" \
  --threads "$threads" --mode optimized > "$work/py_opt.json"

"$py" - "$work" <<'PY'
import json, sys
w = sys.argv[1]
load = lambda name: json.load(open(f"{w}/{name}.json"))
ll, st, pe, po = load("lookalike"), load("stages"), load("py_eager"), load("py_opt")
rows = [
    ("lookalike index, end to end", ll["images_per_s"]),
    ("  decode + preprocess only (1 thread)", st["decode_images_per_s"]),
    (f"  embed only ({st['threads']} threads)", st["embed_images_per_s"]),
    ("Python reference, eager (PIL + torchvision + FAISS)", pe["images_per_s"]),
    ("Python, optimised TorchScript", po["images_per_s"]),
]
print(f"{'pipeline':<55} {'images/s':>9}")
for name, rate in rows:
    print(f"{name:<55} {rate:>9.1f}")
r_eager = ll["images_per_s"] / pe["images_per_s"]
r_opt = ll["images_per_s"] / po["images_per_s"]
share = st["decode_share_of_embed"]
print(f"\nlookalike / Python eager reference:    {r_eager:.2f}x  (target >= 1.5x: {'PASS' if r_eager >= 1.5 else 'FAIL'})")
print(f"lookalike / Python optimised:           {r_opt:.2f}x")
print(f"decode + preprocess time / embed time:  {100 * share:.1f}%  "
      f"({st['decode_ms_per_image']:.2f} ms vs {st['embed_ms_per_image']:.2f} ms an image; "
      f"target <= 20%: {'PASS' if share <= 0.20 else 'FAIL'})")
PY

if [ "${BENCH_ENGINE:-1}" != 0 ]; then
  echo >&2
  echo "bench: engine (bench_engine, $threads threads)" >&2
  # shellcheck disable=SC2086  # BENCH_ENGINE_ARGS is a list of flags
  "$build/bench/bench_engine" --threads "$threads" --model "$model" --work "$work/engine" \
    ${BENCH_ENGINE_ARGS:-}
fi
