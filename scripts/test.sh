#!/usr/bin/env bash
# Builds lookalike and runs the whole test suite (unit, end-to-end, crash), as CI does.
#   scripts/test.sh           everything (what CI runs; about 20 minutes on 2 cores)
#   scripts/test.sh --quick   unit tests only (no model export, no end-to-end runs): < 2 minutes
# Other arguments go to ctest, e.g. scripts/test.sh -R e2e_ or -L e2e.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$root/build}
quick=()
if [ "${1:-}" = "--quick" ]; then
  shift
  # Labels: "unit" tests need no exported model and no indexed gallery.
  quick=(-L unit)
fi
"$root/scripts/build.sh"
ctest --test-dir "$build" -j "$(nproc)" --output-on-failure --timeout 1500 "${quick[@]}" "$@"
