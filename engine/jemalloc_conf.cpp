// jemalloc's settings for every lookalike program that links it (lookalike_allocator): jemalloc
// reads this symbol at its start; MALLOC_CONF in the environment overrides it.
//
// dirty_decay_ms / muzzy_decay_ms -1: freed pages stay with the process for reuse, never handed
// back to the kernel. Each forward pass frees its activations (tens of MB at batch 32) and the
// next pass takes them again; with jemalloc's defaults (10 s decay, and requests over 8 MB purged
// at once) every pass page-faulted them in anew: 15.5 million page faults and 27 s of kernel time
// to index 3,068 clothing-small photos (MobileNetV2, BF16, 2 threads), 132 images/s against 352
// with these settings (measured with LD_PRELOAD, one run each, 2026-12-06). The heap then holds
// its peak, as glibc did with M_TRIM_THRESHOLD 1 GB (engine::setup_process). Handing a grown
// index's old storage back (mallctl "arena.4096.purge" after each regrowth, muzzy_decay_ms 0)
// was tried: peak resident set over 50,000 photos 1,330-1,369 MB against 1,406 without, for
// 4x the page faults on 3,068 photos (activations faulted in again after every purge); not kept
// (docs/engine.md, "Memory").
extern "C" {
// NOLINTNEXTLINE(cppcoreguidelines-avoid-non-const-global-variables): jemalloc's documented hook
__attribute__((used)) const char* malloc_conf = "dirty_decay_ms:-1,muzzy_decay_ms:-1";
}
