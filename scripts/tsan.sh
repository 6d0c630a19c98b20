#!/usr/bin/env bash
# ThreadSanitizer run of the store/index concurrency stress test (tests/test_store_stress.cpp):
# a separate build tree compiled with -fsanitize=thread, of which only test_store_stress and
# what it links (lookalike_store, lookalike_index) are built, then LOOKALIKE_STRESS_SECONDS of
# 8 searching threads and one writer on one Collection. Exits non-zero on the first data race,
# lock-order inversion or other TSan report (halt_on_error=1), or on a failed assertion.
#   scripts/tsan.sh                       build-tsan/, 5 s of stress
#   TSAN_BUILD_DIR=/tmp/tsan scripts/tsan.sh
#   LOOKALIKE_STRESS_SECONDS=60 scripts/tsan.sh
# About 3 minutes from scratch on 2 cores (almost all of it the build: 4 files), 10 s when built.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${TSAN_BUILD_DIR:-build-tsan}
case "$build" in /*) ;; *) build="$root/$build" ;; esac
jobs=${TSAN_JOBS:-$(nproc)}

cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS=-fsanitize=thread -DCMAKE_EXE_LINKER_FLAGS=-fsanitize=thread \
  -DLOOKALIKE_BUILD_BENCH=OFF
ninja -C "$build" -j "$jobs" test_store_stress

export LOOKALIKE_STRESS_SECONDS=${LOOKALIKE_STRESS_SECONDS:-5}
# FAISS's OpenMP (libgomp) and OpenBLAS are not built with TSan: it cannot see the
# synchronisation inside their thread pools, so work they hand between their own threads would
# be reported as races in code that is not ours. One thread each: no pools, nothing to hide.
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
# tests/tsan.supp: uninstrumented third-party libraries only (each entry says why); never our
# code. second_deadlock_stack: both stacks of a lock-order inversion.
export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$root/tests/tsan.supp"
"$build/tests/test_store_stress"
