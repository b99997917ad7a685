// The thread team of the kernels: one parallel region for a whole sequence, with a cheap barrier per step.
//
// Where torch runs on GNU OpenMP (its Linux wheels), the team *is* torch's OpenMP pool: the region is
// opened through the libgomp torch already loaded (looked up at run time, not linked), so pyrnn and torch
// share the same threads instead of two pools spinning against each other on the same cores. Elsewhere, or
// with PYRNN_THREADS=team, a small persistent pool of pyrnn's own is used.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace pyrnn {

// Sense-counting spin barrier: a step of a recurrence lasts microseconds, so sleeping would cost more than
// the work. Spins with a pause first, then yields so an oversubscribed machine still makes progress.
class SpinBarrier {
 public:
  void reset(int n) {
    n_.store(n, std::memory_order_relaxed);
    count_.store(0, std::memory_order_relaxed);
  }
  void set_n(int n) { n_.store(n, std::memory_order_relaxed); }
  void wait();

 private:
  std::atomic<int> n_{1};
  alignas(64) std::atomic<int> count_{0};
  alignas(64) std::atomic<uint32_t> generation_{0};
};

// Per-step multiply-adds below which one more thread is not worth a barrier per step. Settable so the tests can
// force the multi-threaded path on tiny problems.
std::atomic<int64_t>& min_macs_per_thread();

// Rows each thread needs before a recurrence splits the batch rows between threads instead of the hidden units
// (recurrence.h, row_split_threads). Settable so the tests can force either split.
std::atomic<int64_t>& row_split_min_rows();

using TeamJob = std::function<void(int tid, int nthreads, SpinBarrier& barrier)>;

class ThreadTeam {
 public:
  static ThreadTeam& instance();

  // Runs job(tid, n, barrier) on n threads, the caller being tid 0, and returns when all are done.
  // If another caller holds the team (re-entrant or concurrent use from several Python threads), the job
  // runs on the caller alone with n = 1 rather than waiting. Results are the same up to rounding: where the
  // kernels split rows between threads (the recurrence's row split, the GEMM's row split), a thread's row tiles
  // can be shorter than one thread's would be, and a short tile sums its dot products in several chains, so the
  // last bits of some sums can differ between thread counts (as with torch's own CPU kernels); for a given
  // thread count every run gives the same bits.
  void run(int n, const TeamJob& job);

  // "openmp" (torch's libgomp pool) or "team" (pyrnn's own threads).
  static const char* backend();

  ThreadTeam(const ThreadTeam&) = delete;
  ThreadTeam& operator=(const ThreadTeam&) = delete;

 private:
  ThreadTeam();
  ~ThreadTeam();
  void worker_loop(int tid);
  void grow(int nthreads);
  static void after_fork_in_child();

  std::mutex run_mutex_;  // one job at a time
  std::mutex mutex_;      // guards the fields below
  std::condition_variable wake_;
  std::vector<std::thread>* workers_;
  const TeamJob* job_ = nullptr;
  int job_threads_ = 0;
  uint64_t epoch_ = 0;
  bool stopping_ = false;
  std::atomic<int> pending_{0};
  SpinBarrier barrier_;
};

}  // namespace pyrnn
