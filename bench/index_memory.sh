#!/usr/bin/env bash
# Memory of a long `lookalike index` run: does the process's resident set level off, or grow
# with the number of images? (docs/engine.md, "Memory".)
# Makes N distinct files from the clothing-small gallery photos (each a copy with a few bytes
# appended after the JPEG's end marker: a new content hash, so it is embedded again, while it
# decodes to the same pixels), indexes them in one run and samples VmRSS every second.
# Prints the resident set at each quarter of the run, the peak, and images/s, as JSON on the
# last line. Target: over the second half of the run (the first holds the model load and the
# pipeline filling up) the resident set grows by at most 2x the index's own bytes per vector
# (`info`'s index_bytes_per_vector: the vectors must be held; the index reserves its array for
# the run, so no old copy of it should stay: VectorIndex::reserve) for each image embedded;
# exit 1 when missed.
# To compare with glibc's malloc: a build with -DLOOKALIKE_JEMALLOC=OFF, as BUILD_DIR.
# usage: bench/index_memory.sh [N (default 15000)] [THREADS (default: all cores)]
#   MODEL (default <build>/fixtures/models/mobilenet_v2.pt), PRECISION (default auto).
# About a minute for 15,000 images on this 2-core machine (MobileNetV2); ~0.8 GB of temp files.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
shared=${LOOKALIKE_SHARED_DIR:-$root/../shared}
build=${BUILD_DIR:-$root/build}
n=${1:-15000}
threads=${2:-$(nproc)}
model=${MODEL:-$build/fixtures/models/mobilenet_v2.pt}
precision=${PRECISION:-auto}
work=$(mktemp -d "${TMPDIR:-/tmp}/lookalike-bench-memory.XXXXXX")
trap 'rm -rf "$work"' EXIT

/usr/bin/python3 - "$shared/datasets/clothing-small/train" "$work" "$n" <<'PY'
import pathlib, sys
src, work, n = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), int(sys.argv[3])
photos = sorted(src.rglob("*.jpg"))
(work / "img").mkdir()
with open(work / "manifest.csv", "w") as manifest:
    manifest.write("file\n")
    for i in range(n):
        data = photos[i % len(photos)].read_bytes() + b"lookalike-copy-%d" % i
        path = work / "img" / f"{i:07d}.jpg"
        path.write_bytes(data)
        manifest.write(f"{path}\n")
PY

"$build/cli/lookalike" --version >&2
echo "bench: $n images, $threads threads, $(basename "$model") --precision $precision;" \
  "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
start=$(date +%s.%N)
"$build/cli/lookalike" index "$work/manifest.csv" --collection "$work/coll" --model "$model" \
  --threads "$threads" --precision "$precision" --json -q > "$work/summary.json" &
pid=$!
while kill -0 "$pid" 2> /dev/null; do
  rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2> /dev/null || true)
  [ -n "$rss" ] && echo "$(date +%s.%N) $rss" >> "$work/rss.txt"
  sleep 1
done
wait "$pid"
end=$(date +%s.%N)
"$build/cli/lookalike" info --collection "$work/coll" --json > "$work/info.json"

/usr/bin/python3 - "$work/rss.txt" "$work/summary.json" "$start" "$end" "$work/info.json" <<'PY'
import json, sys
samples = [tuple(map(float, line.split())) for line in open(sys.argv[1]) if line.strip()]
summary = json.load(open(sys.argv[2]))
start, end = float(sys.argv[3]), float(sys.argv[4])
per_vector = json.load(open(sys.argv[5]))["index_bytes_per_vector"]
def rss_at(fraction):  # the last sample at or before that fraction of the run, MB
    t = start + fraction * (end - start)
    before = [kb for ts, kb in samples if ts <= t] or [samples[0][1]]
    return before[-1] / 1024
quarters = {f"{int(f * 100)}%": round(rss_at(f), 1) for f in (0.25, 0.5, 0.75, 1.0)}
peak = max(kb for _, kb in samples) / 1024
# Images embedded over the second half: the run's own rate (it excludes the model load) times
# the second half's length.
second_half = summary["images_per_s"] * (end - start) / 2
growth_kb = (peak - quarters["50%"]) * 1024 / second_half  # peak: the end may have freed some
limit_kb = 2 * per_vector / 1024
for k, v in quarters.items():
    print(f"resident set at {k:>4} of the run: {v:8.1f} MB", file=sys.stderr)
print(f"peak {peak:.1f} MB; second half: {growth_kb:.1f} KB an image (target <= {limit_kb:.1f}, "
      f"2x the index's {per_vector} bytes a vector); {summary['embedded']} embedded, "
      f"{summary['images_per_s']:.1f} images/s (steady "
      f"{summary['stages']['steady_images_per_s']:.1f})", file=sys.stderr)
print(json.dumps({"rss_mb": quarters, "peak_mb": round(peak, 1),
                  "second_half_kb_per_image": round(growth_kb, 2),
                  "index_bytes_per_vector": per_vector, "embedded": summary["embedded"],
                  "images_per_s": summary["images_per_s"],
                  "steady_images_per_s": summary["stages"]["steady_images_per_s"]}))
sys.exit(0 if growth_kb <= limit_kb else 1)
PY
