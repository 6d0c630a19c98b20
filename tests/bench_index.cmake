# lookalike bench-index: a small run through the binary, checked (generated vectors: no model).
lookalike_e2e(e2e_bench_index bench_index_check.py TIMEOUT 600)
