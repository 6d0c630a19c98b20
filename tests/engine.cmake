# engine/: uploads, metadata, removal, dynamic batching and a stress run of 8 search threads and
# one writer, with the exported MobileNetV2 and real photos.
lookalike_test(test_engine SOURCES test_engine.cpp LIBS lookalike_engine lookalike_phash
               FIXTURES model_mobilenet_v2)
