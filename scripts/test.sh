#!/usr/bin/env bash
# Builds lookalike and runs the whole test suite (unit, end-to-end, crash), as CI does.
# Extra arguments go to ctest, e.g. scripts/test.sh -R e2e_ or -L e2e.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$root/build}
"$root/scripts/build.sh"
ctest --test-dir "$build" -j "$(nproc)" --output-on-failure --timeout 1500 "$@"
