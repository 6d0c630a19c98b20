# End-to-end tests through the real `lookalike` binary, written in Python (Debian's python3 with
# torch, torchvision, numpy, PIL). They share two fixtures: the exported MobileNetV2
# (model_mobilenet_v2, from tests/model.cmake) and the indexed clothing-small gallery.
set(E2E_ENV
  "LOOKALIKE_BIN=$<TARGET_FILE:lookalike>"
  "LOOKALIKE_TEST_MODEL=${LOOKALIKE_FIXTURES}/models/mobilenet_v2.pt"
  "LOOKALIKE_FIXTURES=${LOOKALIKE_FIXTURES}"
  "LOOKALIKE_SHARED_DIR=${LOOKALIKE_SHARED_DIR}"
  "LOOKALIKE_SOURCE_DIR=${LOOKALIKE_ROOT}"
  "LOOKALIKE_MODELS=${LOOKALIKE_FIXTURES}/models"
  "LOOKALIKE_EXPECT_ALLOCATOR=$<IF:$<BOOL:${LOOKALIKE_JEMALLOC}>,jemalloc,glibc malloc>"
  "PYTHONDONTWRITEBYTECODE=1")

function(lookalike_e2e name script)
  cmake_parse_arguments(E "" "TIMEOUT" "SETUP;REQUIRES" ${ARGN})
  add_test(NAME ${name}
           COMMAND ${LOOKALIKE_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/e2e/${script})
  set_tests_properties(${name} PROPERTIES ENVIRONMENT "${E2E_ENV}" LABELS e2e
                       TIMEOUT ${E_TIMEOUT} FIXTURES_REQUIRED "${E_REQUIRES}")
  if(E_SETUP)
    set_tests_properties(${name} PROPERTIES FIXTURES_SETUP "${E_SETUP}")
  endif()
endfunction()

lookalike_e2e(e2e_index_gallery index_gallery.py TIMEOUT 900
              SETUP gallery REQUIRES model_mobilenet_v2)
lookalike_e2e(e2e_retrieval retrieval.py TIMEOUT 600 REQUIRES "gallery;model_mobilenet_v2")
lookalike_e2e(e2e_retrieval_resnet50 retrieval_resnet50.py TIMEOUT 2400
              SETUP gallery_resnet50 REQUIRES "model_mobilenet_v2;model_resnet50")
lookalike_e2e(e2e_reindex_noop reindex_noop.py TIMEOUT 300 REQUIRES "gallery;model_mobilenet_v2")
lookalike_e2e(e2e_fidelity fidelity.py TIMEOUT 900 REQUIRES model_mobilenet_v2)
lookalike_e2e(e2e_incremental incremental.py TIMEOUT 600 REQUIRES model_mobilenet_v2)
lookalike_e2e(e2e_crash crash.py TIMEOUT 900 REQUIRES model_mobilenet_v2)
lookalike_e2e(e2e_cli cli_errors.py TIMEOUT 600 REQUIRES model_mobilenet_v2)
lookalike_e2e(e2e_prune_safety prune_safety.py TIMEOUT 300 REQUIRES model_mobilenet_v2)
# Defects a review found in the store: WAL left uncheckpointed, config-less catalogs, wrong-size
# vectors, unreadable folders, `remove /`, collections created by runs that stored nothing.
lookalike_e2e(e2e_store_defects store_defects.py TIMEOUT 600 REQUIRES model_mobilenet_v2)
lookalike_e2e(e2e_defects defects.py TIMEOUT 900 REQUIRES model_mobilenet_v2)
# Defects a review found in `index`: empty path, list.Csv, duplicate columns, dangling symlinks,
# row lines, --prune on an emptied folder, NUL in a file cell, rewritten metadata uncounted.
lookalike_e2e(e2e_index_defects index_defects.py TIMEOUT 600 REQUIRES model_mobilenet_v2)
lookalike_e2e(e2e_bad_inputs bad_inputs.py TIMEOUT 900 REQUIRES "model_mobilenet_v2;bad_inputs")
lookalike_e2e(e2e_server_api server_api.py TIMEOUT 900 REQUIRES model_mobilenet_v2)
# Requests a review found the server mishandled (deep JSON, chunked bodies, slow clients, ...).
lookalike_e2e(e2e_server_hardening server_hardening.py TIMEOUT 600 REQUIRES model_mobilenet_v2)
# What a second review found: compressed bodies, slow downloads cut off, Range, Content-Length, ...
lookalike_e2e(e2e_server_defects server_defects.py TIMEOUT 600 REQUIRES model_mobilenet_v2)
# What a review of the page and server found: 405 before body framing, a missing collection at start.
lookalike_e2e(e2e_server_defects2 server_defects2.py TIMEOUT 600 REQUIRES model_mobilenet_v2)
# The browser test skips (77) where Chromium, Node or playwright-core is missing.
lookalike_e2e(e2e_browser browser.py TIMEOUT 600 REQUIRES model_mobilenet_v2)
set_tests_properties(e2e_browser PROPERTIES SKIP_RETURN_CODE 77)
# Installs the .deb, runs its service, purges it: root only (else skip, 77); serial for dpkg.
lookalike_e2e(e2e_package package.py TIMEOUT 600 REQUIRES model_mobilenet_v2)
set_tests_properties(e2e_package PROPERTIES SKIP_RETURN_CODE 77 RUN_SERIAL TRUE)
lookalike_e2e(e2e_indexes indexes.py TIMEOUT 900 REQUIRES model_mobilenet_v2)
# Reduced precision (docs/precision.md): calibrate, recorded fidelity, auto with a masked CPU.
lookalike_e2e(e2e_precision precision.py TIMEOUT 900 REQUIRES model_mobilenet_v2)
# ViT-B/16 and VGG-16 (random weights): BF16 against their own FP32 through `models calibrate`.
lookalike_e2e(e2e_precision_other_archs precision_other_archs.py TIMEOUT 1800)
# Defects a review found in it: collections across calibrations, info, missing archives, bad cards.
lookalike_e2e(e2e_precision_defects precision_defects.py TIMEOUT 600 REQUIRES model_mobilenet_v2)
# `lookalike train` and `reembed` (docs/train.md): quality through `eval`, cache, determinism.
lookalike_e2e(e2e_train train.py TIMEOUT 1200 REQUIRES model_mobilenet_v2)
lookalike_e2e(e2e_train_options train_options.py TIMEOUT 300 REQUIRES model_mobilenet_v2)
# Defects a review found in train: --out over the base or a model, silent left-outs, bounds.
lookalike_e2e(e2e_train_defects train_defects.py TIMEOUT 300 REQUIRES model_mobilenet_v2)
lookalike_e2e(e2e_train_resnet50 train_resnet50.py TIMEOUT 1800
              REQUIRES "model_mobilenet_v2;model_resnet50;gallery_resnet50")
# Every reduced-precision archive against FP32 on all 372 test photos, MobileNetV2 and ResNet-50;
# reuses the FP32 galleries of e2e_index_gallery and e2e_retrieval_resnet50.
lookalike_e2e(e2e_precision_fidelity precision_fidelity.py TIMEOUT 2400
              REQUIRES "model_mobilenet_v2;gallery;model_resnet50;gallery_resnet50")
lookalike_e2e(e2e_cli_defects2 cli_defects2.py TIMEOUT 600 REQUIRES "model_mobilenet_v2;model_resnet50")
# A third review: embed's text output (tab, exact floats), bench-index on a missing collection
# (exit 1), an eval manifest that repeats a path, search --where on a field no image has (a hint).
lookalike_e2e(e2e_cli_defects3 cli_defects3.py TIMEOUT 600 REQUIRES model_mobilenet_v2)
# Left open by earlier reviews and found by the sixth: models calibrate on a manifest that repeats
# a path.
lookalike_e2e(e2e_cli_defects4 cli_defects4.py TIMEOUT 600 REQUIRES model_mobilenet_v2)
# A sixth review (report only), ingestion: manifests with --prune (a manifest whose rows all fail
# removes nothing), paths that became folders, failed updates, catalogue-export messages, .jfif.
lookalike_e2e(e2e_ingest_defects ingest_defects.py TIMEOUT 900 REQUIRES model_mobilenet_v2)
# GIFs decoded as Pillow does (transparent pixels keep their palette colour, the canvas), human
# output with control characters escaped, large JPEGs against PIL + torchvision.
lookalike_e2e(e2e_decode_defects decode_defects.py TIMEOUT 900 REQUIRES model_mobilenet_v2)
# A seventh review (report only), crash safety: upload files quarantined, not deleted; a lost
# catalog refused; damaged stored vectors found with a valid cache; read-only storage.
lookalike_e2e(e2e_store_defects2 store_defects2.py TIMEOUT 900 REQUIRES model_mobilenet_v2)
# Uploads of a moved collection, a collection another process creates, damaged stored uploads
# repaired by a re-upload, a full disk (507).
lookalike_e2e(e2e_server_defects3 server_defects3.py TIMEOUT 900 REQUIRES model_mobilenet_v2)
# A hand-edited model card's preprocessing is refused by a collection built with another
# (meta.preprocess_fingerprint); a catalog without one records its first writer's.
lookalike_e2e(e2e_preprocess_fingerprint preprocess_fingerprint.py TIMEOUT 600
              REQUIRES model_mobilenet_v2)
# A review of the command line's manners: --json failures also on stderr, CLI11's usage errors
# as "lookalike: error: ..." with the documented names, plurals, defaults in --help.
lookalike_e2e(e2e_cli_manners cli_manners.py TIMEOUT 600 REQUIRES model_mobilenet_v2)
