#include "thread_team.h"

#include <dlfcn.h>
#include <pthread.h>

#include <cstdlib>
#include <cstring>

#include <new>

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include <immintrin.h>
static inline void cpu_relax() { _mm_pause(); }
#elif defined(__aarch64__)
static inline void cpu_relax() { asm volatile("yield" ::: "memory"); }
#else
static inline void cpu_relax() {}
#endif

namespace pyrnn {

void SpinBarrier::wait() {
  const int n = n_.load(std::memory_order_relaxed);
  if (n <= 1) return;
  const uint32_t gen = generation_.load(std::memory_order_acquire);
  if (count_.fetch_add(1, std::memory_order_acq_rel) == n - 1) {
    count_.store(0, std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_release);
    return;
  }
  int spins = 0;
  while (generation_.load(std::memory_order_acquire) == gen) {
    if (++spins < 4096) {
      cpu_relax();
    } else {
      std::this_thread::yield();
    }
  }
}

std::atomic<int64_t>& min_macs_per_thread() {
  static std::atomic<int64_t> value{32768};
  return value;
}

std::atomic<int64_t>& row_split_min_rows() {
  static std::atomic<int64_t> value{6};
  return value;
}

ThreadTeam& ThreadTeam::instance() {
  // Leaked on purpose: joining threads during interpreter shutdown can deadlock.
  static ThreadTeam* team = [] {
    auto* t = new ThreadTeam();
    pthread_atfork(nullptr, nullptr, &ThreadTeam::after_fork_in_child);
    return t;
  }();
  return *team;
}

ThreadTeam::ThreadTeam() : workers_(new std::vector<std::thread>()) {}

ThreadTeam::~ThreadTeam() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  for (auto& w : *workers_) w.join();
  delete workers_;
}

// A forked child (DataLoader workers) inherits the team's memory but none of its threads, and possibly locked
// mutexes: start from a fresh, empty team there. The parent's thread handles are leaked, not destroyed,
// since destroying a joinable std::thread terminates the process.
void ThreadTeam::after_fork_in_child() {
  ThreadTeam& team = instance();
  new (&team.run_mutex_) std::mutex();
  new (&team.mutex_) std::mutex();
  new (&team.wake_) std::condition_variable();
  team.workers_ = new std::vector<std::thread>();
  team.job_ = nullptr;
  team.job_threads_ = 0;
  team.pending_.store(0);
}

void ThreadTeam::grow(int nthreads) {
  while (static_cast<int>(workers_->size()) < nthreads - 1) {
    const int tid = static_cast<int>(workers_->size()) + 1;
    workers_->emplace_back([this, tid] { worker_loop(tid); });
  }
}

void ThreadTeam::worker_loop(int tid) {
  uint64_t seen = 0;
  for (;;) {
    const TeamJob* job;
    int n;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return stopping_ || epoch_ != seen; });
      if (stopping_) return;
      seen = epoch_;
      job = job_;
      n = job_threads_;
    }
    if (tid < n) {
      (*job)(tid, n, barrier_);
      pending_.fetch_sub(1, std::memory_order_acq_rel);
    }
  }
}

namespace {

// The libgomp entry points of `#pragma omp parallel`, resolved in the process (torch loaded them).
struct OmpApi {
  void (*parallel)(void (*fn)(void*), void* data, unsigned num_threads, unsigned flags) = nullptr;
  int (*thread_num)() = nullptr;
  int (*num_threads)() = nullptr;
};

const OmpApi* omp_api() {
  static const OmpApi api = [] {
    OmpApi a;
    const char* force = std::getenv("PYRNN_THREADS");
    if (force && std::strcmp(force, "team") == 0) return a;
    a.parallel = reinterpret_cast<decltype(a.parallel)>(dlsym(RTLD_DEFAULT, "GOMP_parallel"));
    a.thread_num = reinterpret_cast<decltype(a.thread_num)>(dlsym(RTLD_DEFAULT, "omp_get_thread_num"));
    a.num_threads = reinterpret_cast<decltype(a.num_threads)>(dlsym(RTLD_DEFAULT, "omp_get_num_threads"));
    if (!a.parallel || !a.thread_num || !a.num_threads) a = OmpApi{};
    return a;
  }();
  return api.parallel ? &api : nullptr;
}

struct OmpRegion {
  const OmpApi* api;
  const TeamJob* job;
  SpinBarrier barrier;
};

void omp_trampoline(void* data) {
  auto* region = static_cast<OmpRegion*>(data);
  const int nt = region->api->num_threads();
  region->barrier.set_n(nt);  // every thread stores the same value before its first wait
  (*region->job)(region->api->thread_num(), nt, region->barrier);
}

}  // namespace

const char* ThreadTeam::backend() { return omp_api() ? "openmp" : "team"; }

void ThreadTeam::run(int n, const TeamJob& job) {
  if (n <= 1) {
    SpinBarrier solo;
    job(0, 1, solo);
    return;
  }
  if (const OmpApi* api = omp_api()) {
    // The team may come out smaller than asked (nested regions, thread limits): the job splits its work by
    // the size it gets.
    OmpRegion region{api, &job, {}};
    api->parallel(&omp_trampoline, &region, static_cast<unsigned>(n), 0);
    return;
  }
  std::unique_lock<std::mutex> busy(run_mutex_, std::try_to_lock);
  if (!busy.owns_lock()) {
    SpinBarrier solo;
    job(0, 1, solo);
    return;
  }
  grow(n);
  barrier_.reset(n);
  pending_.store(n - 1, std::memory_order_release);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    job_ = &job;
    job_threads_ = n;
    ++epoch_;
  }
  wake_.notify_all();
  job(0, n, barrier_);
  int spins = 0;
  while (pending_.load(std::memory_order_acquire) != 0) {
    if (++spins < 4096) {
      cpu_relax();
    } else {
      std::this_thread::yield();
    }
  }
}

}  // namespace pyrnn
