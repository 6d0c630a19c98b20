# Model tests. export_mobilenet_v2 (fixture model_mobilenet_v2) writes
# ${LOOKALIKE_FIXTURES}/models/mobilenet_v2.{pt,json} from the shared weights; the end-to-end
# tests use it too, so its name and output path are fixed.
set(LOOKALIKE_MOBILENET_V2_WEIGHTS
    "${LOOKALIKE_SHARED_DIR}/models/mobilenet_v2/mobilenet_v2_imagenet_float.pth")

add_test(NAME export_mobilenet_v2
         COMMAND ${LOOKALIKE_PYTHON} ${LOOKALIKE_ROOT}/tools/export_model.py mobilenet_v2
                 --weights ${LOOKALIKE_MOBILENET_V2_WEIGHTS} --out ${LOOKALIKE_FIXTURES}/models)
set_tests_properties(export_mobilenet_v2 PROPERTIES FIXTURES_SETUP model_mobilenet_v2 TIMEOUT 300)

# export_resnet50 (fixture model_resnet50): the original ResNet-50 v1 from the shared weights, with
# its BF16 archive, into ${LOOKALIKE_FIXTURES}/models-resnet50/resnet50.{pt,bf16.pt,json}; used by
# e2e_retrieval_resnet50, e2e_precision_fidelity and the training tests, so name and path are fixed.
add_test(NAME export_resnet50
         COMMAND ${LOOKALIKE_PYTHON} ${LOOKALIKE_ROOT}/tools/export_model.py resnet50
                 --weights ${LOOKALIKE_SHARED_DIR}/models/resnet50/resnet50_v1_imagenet_fp16.pth
                 --out ${LOOKALIKE_FIXTURES}/models-resnet50)
set_tests_properties(export_resnet50 PROPERTIES FIXTURES_SETUP model_resnet50 TIMEOUT 600)

# Eager torchvision embeddings of real photos, independent of the exporter. It requires the
# exported model only so that tests needing both can name one fixture (gtest_discover_tests
# cannot pass a list of fixtures).
add_test(NAME model_reference
         COMMAND ${LOOKALIKE_PYTHON} ${LOOKALIKE_ROOT}/tests/model_reference.py
                 --weights ${LOOKALIKE_MOBILENET_V2_WEIGHTS}
                 --dataset ${LOOKALIKE_SHARED_DIR}/datasets/clothing-small
                 --out ${LOOKALIKE_FIXTURES}/model_reference)
set_tests_properties(model_reference PROPERTIES FIXTURES_SETUP model_reference
                     FIXTURES_REQUIRED model_mobilenet_v2 TIMEOUT 300)

lookalike_test(test_model_card SOURCES test_model_card.cpp LIBS lookalike_model
               FIXTURES model_mobilenet_v2)
lookalike_test(test_model_embed SOURCES test_model_embed.cpp LIBS lookalike_model PkgConfig::XXHASH
               FIXTURES model_reference)

# Exports every architecture through tools/export_model.py (vgg16 writes 537 MB, deleted after),
# ViT-B/16 and VGG-16 with their BF16 archives (about 500 s under a load of 12 on 2 cores), so it
# gets its own generous timeout, which lookalike_test() does not offer.
add_executable(test_model_export test_model_export.cpp)
target_link_libraries(test_model_export PRIVATE lookalike_model GTest::gtest GTest::gtest_main)
target_compile_definitions(test_model_export PRIVATE
  LOOKALIKE_FIXTURES="${LOOKALIKE_FIXTURES}"
  LOOKALIKE_SHARED_DIR="${LOOKALIKE_SHARED_DIR}"
  LOOKALIKE_SOURCE_DIR="${LOOKALIKE_ROOT}"
  LOOKALIKE_PYTHON="${LOOKALIKE_PYTHON}")
gtest_discover_tests(test_model_export DISCOVERY_TIMEOUT 120
  PROPERTIES FIXTURES_REQUIRED model_reference TIMEOUT 900)
