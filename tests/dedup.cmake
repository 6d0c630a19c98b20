# lookalike duplicates: grouping unit tests and the end-to-end check on re-encoded photos.
lookalike_test(test_dedup SOURCES test_dedup.cpp LIBS lookalike_dedup lookalike_store)
# The tests write their hash images with libvips directly, and age a catalog with SQLite.
target_link_libraries(test_dedup PRIVATE PkgConfig::VIPS fmt::fmt SQLite::SQLite3)
lookalike_e2e(e2e_duplicates duplicates.py TIMEOUT 600 REQUIRES model_mobilenet_v2)
