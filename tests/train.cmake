# lookalike train: augmentation, losses and validation Recall@1 by hand (test_train); the
# end-to-end checks through the binary are in e2e.cmake (e2e_train*).
lookalike_test(test_train SOURCES test_train.cpp LIBS lookalike_train lookalike_image
               "${TORCH_LIBRARIES}")
# Defects a second review found in train and reembed: reembed deleting its source through
# DIR.partial, --out over a BF16 archive, all-failed runs, --out checked late, --margin inf, and
# temporary files left by interrupted runs.
lookalike_e2e(e2e_train_defects2 train_defects2.py TIMEOUT 300 REQUIRES model_mobilenet_v2)
