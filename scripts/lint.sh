#!/usr/bin/env bash
# clang-format (check only) over every tracked C++ file, then clang-tidy (checks in .clang-tidy)
# over the project's translation units in BUILD_DIR's compile_commands.json.
#   scripts/lint.sh            # both; exit 1 when either finds something
#   scripts/lint.sh --format   # clang-format only (a second)
#   FIX=1 scripts/lint.sh      # rewrite files with clang-format instead of checking
# clang-tidy takes about 20 s a file here (LibTorch's headers): 86 files, about 15 minutes on 2
# cores. It is not part of CI's test run; run it before a commit that touches C++.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
mapfile -t files < <(git ls-files '*.cpp' '*.h')
status=0
if [[ ${FIX:-0} == 1 ]]; then
  clang-format -i "${files[@]}"
else
  clang-format --dry-run --Werror "${files[@]}" || status=1
fi
[[ ${1:-} == --format ]] && exit $status
if [[ ! -f $BUILD_DIR/compile_commands.json ]]; then
  echo "lint: $BUILD_DIR/compile_commands.json is missing: run scripts/build.sh first" >&2
  exit 2
fi
dirs='bench|cli|dedup|engine|eval|image|index|model|pipeline|server|store|tests|train|viz'
log=$(mktemp)
trap 'rm -f "$log"' EXIT
run-clang-tidy -p "$BUILD_DIR" -j "$(nproc)" -quiet "^$PWD/($dirs)/" >"$log" 2>&1 || true
if grep -E '(warning|error): ' "$log" | sort -u; then status=1; fi
exit $status
