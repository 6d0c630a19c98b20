# lookalike eval: metric unit tests and the end-to-end check against an independent computation.
lookalike_test(test_eval SOURCES test_eval.cpp LIBS lookalike_eval)
# eval on clothing-small against NumPy + FAISS over `lookalike embed --npy` of the same files.
lookalike_e2e(e2e_eval eval_check.py TIMEOUT 900 REQUIRES model_mobilenet_v2)
