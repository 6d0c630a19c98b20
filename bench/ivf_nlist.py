"""IVF list count against search cost, on the collection a `bench_server --keep` run left.

    /usr/bin/python3 bench/ivf_nlist.py [WORK_DIR] [NLIST...]

Reads the stored vectors back from the kept collection's index file (the FAISS part of
index-<gen>.faiss, docs/collection-format.md), takes 500 queries (250 of the real photos, 250 of
the generated vectors), and for IVF<nlist>,Flat trained as lookalike trains it (on the first
39 x nlist vectors) prints, at nprobe 8..64: Recall@10 against exact search (the query itself
left out) and the codes a query scans (faiss.cvar.indexIVF_stats.ndis). A search of IVF-Flat
lists is bound by the bytes it reads, so codes scanned is its cost. Default NLIST: 1024 2048.
This is where index::kListsPerSqrtN (index/index_spec.h) comes from.
"""
import glob
import struct
import sys

import faiss
import numpy as np

work = sys.argv[1] if len(sys.argv) > 1 else "build/bench/bench-server-work"
lists = [int(a) for a in sys.argv[2:]] or [1024, 2048]
path = sorted(glob.glob(f"{work}/collection/index-*.faiss"))[0]
raw = open(path, "rb").read()
faiss_bytes = struct.unpack("<Q", raw[-64 + 32:-64 + 40])[0]
stored = faiss.deserialize_index(np.frombuffer(raw[8:8 + faiss_bytes], dtype=np.uint8))
ivf = faiss.extract_index_ivf(stored)
ivf.make_direct_map()
x = ivf.reconstruct_n(0, ivf.ntotal)
rows = list(range(0, 1000, 4)) + [1000 + i * 390 for i in range(250)]
q = x[rows]
faiss.omp_set_num_threads(2)
flat = faiss.IndexFlatIP(x.shape[1])
flat.add(x)
_, exact = flat.search(q, 11)
truth = [set([int(l) for l in exact[i] if l != rows[i]][:10]) for i in range(len(rows))]
print(f"{path}: {x.shape[0]} x {x.shape[1]}, {len(rows)} queries")
for nlist in lists:
    faiss.omp_set_num_threads(2)
    index = faiss.index_factory(x.shape[1], f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(x[:39 * nlist])
    index.add(x)
    imbalance = index.invlists.imbalance_factor()
    faiss.omp_set_num_threads(1)
    out = []
    for nprobe in (8, 16, 32, 64):
        index.nprobe = nprobe
        faiss.cvar.indexIVF_stats.reset()
        _, got = index.search(q, 11)
        scanned = faiss.cvar.indexIVF_stats.ndis / len(rows)
        recall = np.mean([len(set([int(l) for l in got[i] if l != rows[i]][:10]) & truth[i]) / 10
                          for i in range(len(rows))])
        out.append(f"nprobe {nprobe}: Recall@10 {recall:.3f}, {scanned:,.0f} codes")
    print(f"IVF{nlist},Flat (imbalance {imbalance:.1f}): " + "; ".join(out))
