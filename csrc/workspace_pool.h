// A cache of large host buffers for the kernels' workspaces (saved gates, cell states, gate gradients).
//
// Why: a training step allocates tens of MiB of workspace per layer-direction, lives with it until the
// backward, then frees it. glibc hands such sizes back to the OS, so the next step page-faults every 4 KiB
// of them in again (and the kernel zero-fills each page): 20-30% of an LSTM/GRU training step at B=64.
// Buffers here are 2 MiB aligned and huge-page advised, and a freed one waits for the next request of a
// similar size, up to a cap on the bytes kept idle (PYRNN_WORKSPACE_CACHE_MB, default 512; 0 disables).
// Thread safe; the release hook runs from whatever thread frees the tensor, without the GIL.
#pragma once

#include <cstdint>

namespace pyrnn {

struct PoolStats {
  int64_t live_bytes;    // handed out and not yet released
  int64_t cached_bytes;  // released and kept for reuse
  int64_t limit_bytes;   // most bytes kept idle
  int64_t hits, misses;  // requests served from the cache / by a fresh allocation
};

// A buffer of at least nbytes (nullptr if the allocation fails). Release it with pool_release.
void* pool_acquire(int64_t nbytes);
void pool_release(void* ptr);
PoolStats pool_stats();
void pool_set_limit(int64_t bytes);  // also trims the cache to the new limit
void pool_clear();                   // frees every idle buffer

}  // namespace pyrnn
