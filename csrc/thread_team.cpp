#include "thread_team.h"

#include <pthread.h>

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
  if (n_ <= 1) return;
  const uint32_t gen = generation_.load(std::memory_order_acquire);
  if (count_.fetch_add(1, std::memory_order_acq_rel) == n_ - 1) {
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

void ThreadTeam::run(int n, const TeamJob& job) {
  if (n <= 1) {
    SpinBarrier solo;
    job(0, 1, solo);
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
