#!/usr/bin/env bash
# Installs every Debian package lookalike needs to build, test, benchmark and export models.
# Safe to run repeatedly. Needs root (or sudo). See ../shared/STACK.md for why each is here.
set -euo pipefail

PACKAGES=(
  # build
  cmake g++ ninja-build pkg-config git
  # inference (LibTorch 1.13.1 CPU) and BLAS: libopenblas0-openmp is mandatory, otherwise
  # LibTorch and FAISS fall back to the single-threaded reference BLAS (~40x slower).
  libtorch-dev libopenblas0-openmp libopenblas-openmp-dev
  # vector index
  libfaiss-dev
  # images
  libvips-dev libjpeg62-turbo-dev libexif-dev
  # GIFs: giflib gives palette indices, so transparent pixels keep their colour as in PIL
  libgif-dev
  # catalog, CSV manifests, JSON, CLI, logging, hashing
  libsqlite3-dev libsqlitecpp-dev sqlite3 libcsv-dev nlohmann-json3-dev libcli11-dev
  libspdlog-dev libfmt-dev libxxhash-dev
  # the programs' heap (jemalloc: glibc's fragmented under indexing, docs/engine.md "Memory")
  libjemalloc-dev
  # HTTP server (header-only cpp-httplib) and Prometheus metrics
  libcpp-httplib-dev prometheus-cpp-dev
  # tests and benchmarks
  googletest libgtest-dev libgmock-dev libbenchmark-dev
  # server load tests, the browser test (Debian's Chromium driven by npm playwright-core)
  wrk chromium
  # the .deb package (CPack's DEB generator; dpkg-shlibdeps computes the dependencies)
  dpkg-dev fakeroot file
  # model export, fixtures, the Python reference (run with /usr/bin/python3)
  python3-torch python3-torchvision python3-faiss python3-numpy python3-pil
)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${#missing[@]} packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "install-deps: all ${#PACKAGES[@]} packages already installed"
fi

# Node.js for the browser test: the machine may already have one (with npm); else Debian's.
if ! command -v npm >/dev/null 2>&1; then
  echo "install-deps: installing Debian's nodejs and npm"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -qq --no-install-recommends nodejs npm
fi
# playwright-core from the npm registry, pinned by tests/browser/package-lock.json. Never
# `playwright install`: it downloads a browser; the test uses Debian's /usr/bin/chromium.
root=$(cd "$(dirname "$0")/.." && pwd)
if [ -f "$root/tests/browser/package-lock.json" ]; then
  if [ ! -d "$root/tests/browser/node_modules/playwright-core" ]; then
    (cd "$root/tests/browser" && npm ci --no-audit --no-fund --loglevel=error)
  fi
  echo "install-deps: playwright-core in tests/browser/node_modules"
fi

# OpenBLAS must be the BLAS that libblas.so.3 resolves to.
blas=$(update-alternatives --query libblas.so.3-x86_64-linux-gnu 2>/dev/null | awk '/^Value:/ {print $2}')
case "$blas" in
  *openblas*) echo "install-deps: libblas.so.3 -> $blas" ;;
  *) echo "install-deps: warning: libblas.so.3 -> '${blas:-none}', expected OpenBLAS" >&2 ;;
esac
