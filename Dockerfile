# syntax=docker/dockerfile:1
# lookalike in a container: `lookalike serve` on port 8080, as the non-root user lookalike, with
# the collection and the models in volumes. See docs/install.md:
#
#   docker build -t lookalike .
#   docker run -d -p 127.0.0.1:8080:8080 -v lookalike-collection:/var/lib/lookalike/collection \
#       -v /srv/models:/var/lib/lookalike/models:ro lookalike [extra `serve` options]
#
# Not built or run on the project's own machines (they have no Docker daemon): it only chains
# the steps that are tested there: scripts/install-deps.sh, scripts/build.sh, cpack -G DEB
# (tests/e2e/package.py tests that package and its maintainer scripts).

# ---- build: the project's dependencies, the binary, the .deb --------------------------------
FROM debian:12 AS build
WORKDIR /src
COPY . .
# Needs root (it is, here); runs apt-get update itself.
RUN scripts/install-deps.sh && rm -rf /var/lib/apt/lists/*
# scripts/build.sh configures and builds ${BUILD_DIR}; configuring first without the tests and
# benchmarks (kept in the cache) makes it build the binary only.
RUN cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release \
        -DLOOKALIKE_BUILD_TESTS=OFF -DLOOKALIKE_BUILD_BENCH=OFF \
 && BUILD_DIR=/src/build scripts/build.sh \
 && cd build && cpack -G DEB -B /src/build/package

# ---- runtime: the .deb and the libraries it depends on, nothing else -----------------------
FROM debian:12
COPY --from=build /src/build/package/lookalike_*.deb /tmp/
# apt resolves the package's Depends (computed by dpkg-shlibdeps); its postinst creates the
# user lookalike and /var/lib/lookalike/{collection,models} (no systemd here: nothing starts).
# libopenblas0-openmp: libblas.so.3 must be OpenBLAS, the reference BLAS is ~40x slower.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        /tmp/lookalike_*.deb libopenblas0-openmp \
 && rm -rf /var/lib/apt/lists/* /tmp/lookalike_*.deb

ENV LOOKALIKE_MODELS=/var/lib/lookalike/models
# serve binds 0.0.0.0 here, where no Host name is checked by default; published on 127.0.0.1
# (docs/install.md), only the loopback names may be in Host (the DNS rebinding guard,
# docs/api.md). For the LAN: -e LOOKALIKE_ALLOWED_HOSTS=photos.lan,... (or '*').
ENV LOOKALIKE_ALLOWED_HOSTS=localhost,127.0.0.1,::1
USER lookalike
WORKDIR /var/lib/lookalike
# Models: NAME.pt + NAME.json, exported with tools/export_model.py (mobilenet_v2 by default).
VOLUME ["/var/lib/lookalike/collection", "/var/lib/lookalike/models"]
EXPOSE 8080
# SIGTERM (docker stop): stops accepting, finishes requests in flight, saves the index cache,
# exits 0. Give it time: docker stop -t 60.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/lookalike", "serve", "--host", "0.0.0.0", "--port", "8080", \
            "--collection", "/var/lib/lookalike/collection"]
CMD []
