// A small persistent thread team for the recurrences.
//
// Why not OpenMP: torch ships its own libgomp; linking a second OpenMP runtime into the same process makes
// two thread pools fight over the same cores. A recurrence wants one parallel region for the whole sequence
// with a cheap barrier per step, which is all this team provides.
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
    n_ = n;
    count_.store(0, std::memory_order_relaxed);
  }
  void wait();

 private:
  int n_ = 1;
  alignas(64) std::atomic<int> count_{0};
  alignas(64) std::atomic<uint32_t> generation_{0};
};

// Per-step multiply-adds below which one more thread is not worth a barrier per step. Settable so the tests can
// force the multi-threaded path on tiny problems.
std::atomic<int64_t>& min_macs_per_thread();

using TeamJob = std::function<void(int tid, int nthreads, SpinBarrier& barrier)>;

class ThreadTeam {
 public:
  static ThreadTeam& instance();

  // Runs job(tid, n, barrier) on n threads, the caller being tid 0, and returns when all are done.
  // If another caller holds the team (re-entrant or concurrent use from several Python threads), the job
  // runs on the caller alone with n = 1 rather than waiting: results do not depend on the thread count.
  void run(int n, const TeamJob& job);

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
