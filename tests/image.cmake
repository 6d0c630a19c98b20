# image: decoder and preprocessing tests. Test files are generated into the build folder.
set(LOOKALIKE_TEST_IMAGES "${LOOKALIKE_FIXTURES}/images")

add_test(NAME make_test_images
         COMMAND ${LOOKALIKE_PYTHON} ${LOOKALIKE_ROOT}/tools/make_test_images.py
                 ${LOOKALIKE_TEST_IMAGES})
set_tests_properties(make_test_images PROPERTIES FIXTURES_SETUP test_images)

# The reference outputs of PIL + torchvision for test_preprocess.
add_test(NAME preprocess_reference
         COMMAND ${LOOKALIKE_PYTHON} ${LOOKALIKE_ROOT}/tests/preprocess_reference.py
                 ${LOOKALIKE_TEST_IMAGES} ${LOOKALIKE_SHARED_DIR}/datasets/clothing-small
                 ${LOOKALIKE_FIXTURES}/preprocess_reference)
set_tests_properties(preprocess_reference PROPERTIES FIXTURES_SETUP preprocess_reference
                     FIXTURES_REQUIRED test_images)

lookalike_test(test_decode SOURCES test_decode.cpp
               LIBS lookalike_image Threads::Threads FIXTURES test_images)
# preprocess_reference requires test_images, so CTest runs both setups first.
lookalike_test(test_preprocess SOURCES test_preprocess.cpp
               LIBS lookalike_image FIXTURES preprocess_reference)
