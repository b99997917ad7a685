#include "workspace_pool.h"

#include <pthread.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <new>
#include <unordered_map>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace pyrnn {
namespace {

constexpr int64_t kHugePage = int64_t{2} << 20;

int64_t limit_from_env() {
  const char* env = std::getenv("PYRNN_WORKSPACE_CACHE_MB");
  if (!env || !*env) return int64_t{512} << 20;
  const long long mb = std::atoll(env);
  return mb > 0 ? static_cast<int64_t>(mb) << 20 : 0;
}

struct Pool {
  std::mutex mu;
  std::multimap<int64_t, void*> idle;       // size -> buffer, released and kept
  std::unordered_map<void*, int64_t> sizes;  // every buffer the pool owns (live or idle) -> its size
  int64_t live = 0, cached = 0, limit = limit_from_env(), hits = 0, misses = 0;

  Pool() { pthread_atfork(nullptr, nullptr, [] { new (&instance().mu) std::mutex(); }); }
  static Pool& instance() {
    static Pool* pool = new Pool();  // never destroyed: tensors may be freed during interpreter shutdown
    return *pool;
  }

  // Drops idle buffers, largest first, until at most `keep` bytes are idle. Caller holds mu.
  void trim(int64_t keep) {
    while (cached > keep && !idle.empty()) {
      auto it = std::prev(idle.end());
      cached -= it->first;
      sizes.erase(it->second);
      std::free(it->second);
      idle.erase(it);
    }
  }
};

// Sizes are rounded so that steps of slightly different shapes (the last batch of an epoch) share buffers.
int64_t rounded(int64_t nbytes) { return (nbytes + kHugePage - 1) / kHugePage * kHugePage; }

}  // namespace

void* pool_acquire(int64_t nbytes) {
  Pool& pool = Pool::instance();
  const int64_t size = rounded(nbytes < 1 ? 1 : nbytes);
  {
    std::lock_guard<std::mutex> lock(pool.mu);
    // Smallest idle buffer that fits, if it is not much larger than asked for.
    auto it = pool.idle.lower_bound(size);
    if (it != pool.idle.end() && it->first <= size + size / 4) {
      void* ptr = it->second;
      pool.cached -= it->first;
      pool.live += it->first;
      pool.idle.erase(it);
      ++pool.hits;
      return ptr;
    }
    ++pool.misses;
  }
  void* ptr = nullptr;
  if (posix_memalign(&ptr, kHugePage, static_cast<size_t>(size)) != 0) return nullptr;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  madvise(ptr, static_cast<size_t>(size), MADV_HUGEPAGE);  // advisory: refused is fine
#endif
  std::lock_guard<std::mutex> lock(pool.mu);
  pool.sizes[ptr] = size;
  pool.live += size;
  return ptr;
}

void pool_release(void* ptr) {
  if (!ptr) return;
  Pool& pool = Pool::instance();
  std::lock_guard<std::mutex> lock(pool.mu);
  auto found = pool.sizes.find(ptr);
  if (found == pool.sizes.end()) return;  // not ours (cannot happen through the bindings)
  const int64_t size = found->second;
  pool.live -= size;
  if (size > pool.limit) {
    pool.sizes.erase(found);
    std::free(ptr);
    return;
  }
  pool.trim(pool.limit - size);
  pool.idle.emplace(size, ptr);
  pool.cached += size;
}

PoolStats pool_stats() {
  Pool& pool = Pool::instance();
  std::lock_guard<std::mutex> lock(pool.mu);
  return {pool.live, pool.cached, pool.limit, pool.hits, pool.misses};
}

void pool_set_limit(int64_t bytes) {
  Pool& pool = Pool::instance();
  std::lock_guard<std::mutex> lock(pool.mu);
  pool.limit = bytes < 0 ? 0 : bytes;
  pool.trim(pool.limit);
}

void pool_clear() {
  Pool& pool = Pool::instance();
  std::lock_guard<std::mutex> lock(pool.mu);
  pool.trim(0);
}

}  // namespace pyrnn
