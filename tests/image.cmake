# image: decoder and preprocessing tests; pipeline: the input scanner. Test files are generated
# into the build folder.
set(LOOKALIKE_TEST_IMAGES "${LOOKALIKE_FIXTURES}/images")
# Hostile and odd inputs with their expected outcomes (see the top of the script); the
# end-to-end tests use them too.
set(LOOKALIKE_BAD_INPUTS "${LOOKALIKE_FIXTURES}/bad_inputs")

add_test(NAME make_test_images
         COMMAND ${LOOKALIKE_PYTHON} ${LOOKALIKE_ROOT}/tools/make_test_images.py
                 ${LOOKALIKE_TEST_IMAGES})
# decode_inputs = both generators: gtest_discover_tests cannot pass a test several fixtures.
set_tests_properties(make_test_images PROPERTIES FIXTURES_SETUP "test_images;decode_inputs")

add_test(NAME make_bad_inputs
         COMMAND ${LOOKALIKE_PYTHON} ${LOOKALIKE_ROOT}/tools/make_bad_inputs.py
                 ${LOOKALIKE_BAD_INPUTS})
set_tests_properties(make_bad_inputs PROPERTIES FIXTURES_SETUP "bad_inputs;decode_inputs")

# The reference outputs of PIL + torchvision for test_preprocess.
add_test(NAME preprocess_reference
         COMMAND ${LOOKALIKE_PYTHON} ${LOOKALIKE_ROOT}/tests/preprocess_reference.py
                 ${LOOKALIKE_TEST_IMAGES} ${LOOKALIKE_SHARED_DIR}/datasets/clothing-small
                 ${LOOKALIKE_FIXTURES}/preprocess_reference)
set_tests_properties(preprocess_reference PROPERTIES FIXTURES_SETUP preprocess_reference
                     FIXTURES_REQUIRED test_images)

lookalike_test(test_decode SOURCES test_decode.cpp
               LIBS lookalike_image nlohmann_json::nlohmann_json Threads::Threads
               FIXTURES decode_inputs)
# preprocess_reference requires test_images, so CTest runs both setups first.
lookalike_test(test_preprocess SOURCES test_preprocess.cpp
               LIBS lookalike_image FIXTURES preprocess_reference)
# The scanner and file helpers are compiled in from source, so that this test needs neither
# LibTorch nor FAISS (lookalike_pipeline links both) and builds in seconds.
lookalike_test(test_scan
               SOURCES test_scan.cpp ${LOOKALIKE_ROOT}/pipeline/files.cpp
                       ${LOOKALIKE_ROOT}/pipeline/scan.cpp
                       ${LOOKALIKE_ROOT}/store/metadata_check.cpp
               LIBS lookalike_image nlohmann_json::nlohmann_json PkgConfig::XXHASH ${CSV_LIBRARY}
                    spdlog::spdlog
               FIXTURES bad_inputs)
target_include_directories(test_scan PRIVATE ${LOOKALIKE_ROOT})
