# lookalike train: augmentation, losses and validation Recall@1 by hand (test_train); the
# end-to-end checks through the binary are in e2e.cmake (e2e_train*).
lookalike_test(test_train SOURCES test_train.cpp LIBS lookalike_train lookalike_image
               "${TORCH_LIBRARIES}")
