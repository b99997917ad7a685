// The time-loop driver shared by every cell: forward and backward (BPTT) of one layer-direction.
//
// Data layout: every sequence is "packed" time-major: step t owns rows [offset[t], offset[t] + batch_sizes[t])
// of each [N, *] array (N = sum of batch_sizes), active rows sorted first. A plain [T, B, *] input is the
// case batch_sizes[t] == B. A row inactive at a step simply is not touched; where the recurrent state of a
// row comes from is resolved per row (Schedule::prev_row), so no state is copied between steps.
//
// Parallelism: one parallel region for the whole sequence. Each thread owns a block of hidden units and
// computes all gates of its units (recurrent GEMM + pointwise epilogue fused), then meets the others at a
// spin barrier once per step (twice with a projection).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "recurrence_args.h"
#include "thread_team.h"

namespace pyrnn {
namespace PYRNN_ISA {

template <typename T>
inline const T* cptr(uintptr_t p) {
  return reinterpret_cast<const T*>(p);
}
template <typename T>
inline T* mptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

// Everything below lives in a per-ISA namespace and avoids out-of-line std templates (std::vector<float>,
// std::copy_n): the linker keeps one copy of such a template for the whole module, which could be the
// AVX-512 build of it, called from the portable path on a CPU without AVX-512.
template <typename T>
struct Scratch {  // zero-filled heap array
  T* data;
  explicit Scratch(int64_t n) : data(new T[n > 0 ? n : 1]()) {}
  ~Scratch() { delete[] data; }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  T& operator[](int64_t i) { return data[i]; }
  const T& operator[](int64_t i) const { return data[i]; }
};

template <typename T>
inline void copy_row(const T* src, int64_t n, T* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = src[i];
}

template <typename T>
inline T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

// Which rows each step touches and where each row's recurrent state comes from.
struct Schedule {
  int64_t T, B;
  bool reverse;
  Scratch<int64_t> batch;   // [T] active rows per time step
  Scratch<int64_t> offset;  // [T] first packed row of each time step

  explicit Schedule(const RecurrenceArgs& a) : T(a.T), B(a.B), reverse(a.reverse), batch(a.T), offset(a.T) {
    const int64_t* bs = reinterpret_cast<const int64_t*>(a.batch_sizes);
    int64_t acc = 0;
    for (int64_t t = 0; t < T; ++t) {
      batch[t] = bs[t];
      offset[t] = acc;
      acc += bs[t];
    }
  }
  // The time index processed at forward iteration `it`.
  int64_t time_at(int64_t it) const { return reverse ? T - 1 - it : it; }
  // Packed row whose output is the state entering (t, b); -1 means the initial state h0[b].
  int64_t prev_row(int64_t t, int64_t b) const {
    if (!reverse) return t > 0 ? offset[t - 1] + b : -1;
    return (t + 1 < T && b < batch[t + 1]) ? offset[t + 1] + b : -1;
  }
  // Packed row that consumes the output of (t, b) as its state; -1 means it is row b's final state.
  int64_t next_row(int64_t t, int64_t b) const {
    if (reverse) return t > 0 ? offset[t - 1] + b : -1;
    return (t + 1 < T && b < batch[t + 1]) ? offset[t + 1] + b : -1;
  }
  // Packed row holding row b's final state.
  int64_t last_row(int64_t b) const {
    if (reverse) return offset[0] + b;
    int64_t t = T - 1;
    while (t > 0 && batch[t] <= b) --t;
    return offset[t] + b;
  }
};

// [begin, end) of n items for thread tid of nt, in chunks aligned to `align` so SIMD lanes are not split.
struct Range {
  int64_t begin, end;
};
inline Range split(int64_t n, int tid, int nt, int64_t align) {
  int64_t chunk = (n + nt - 1) / nt;
  chunk = (chunk + align - 1) / align * align;
  const int64_t b = std::min(n, chunk * tid);
  return {b, std::min(n, b + chunk)};
}

constexpr int kRowBlock = 4;     // rows sharing each weight load
constexpr int kColBlock = 64;    // output columns per accumulator panel

// acc[r][g][jj] = sum_k a[r][k] * w[k * ldw + g * gstride + j0 + jj]   for r < kRowBlock, g < G, jj < nj.
// Rows past the real ones point at a zero row. Written so the jj loop vectorises for any ISA flags.
template <typename T, int G>
inline void gemm_panel(const T* const* a, int64_t K, const T* w, int64_t ldw, int64_t gstride, int64_t j0,
                       int64_t nj, T (&acc)[kRowBlock][G][kColBlock]) {
  for (int r = 0; r < kRowBlock; ++r)
    for (int g = 0; g < G; ++g)
      for (int64_t jj = 0; jj < kColBlock; ++jj) acc[r][g][jj] = T(0);
  for (int64_t k = 0; k < K; ++k) {
    T av[kRowBlock];
    for (int r = 0; r < kRowBlock; ++r) av[r] = a[r][k];
    const T* wk = w + k * ldw + j0;
    for (int g = 0; g < G; ++g) {
      const T* wg = wk + g * gstride;
      for (int r = 0; r < kRowBlock; ++r) {
        const T s = av[r];
        T* out = acc[r][g];
        for (int64_t jj = 0; jj < nj; ++jj) out[jj] += s * wg[jj];
      }
    }
  }
}

// For each row block of rows [0, rows) and column panel of [c0, c1): fills acc by gemm_panel over the rows
// given by row_ptr(b), then calls epilogue(b, j, acc_row, g_stride) for every (row, column).
template <typename T, int G, typename RowPtr, typename Epilogue>
inline void gemm_rows(int64_t rows, Range cols, int64_t K, const T* w, int64_t ldw, int64_t gstride,
                      const T* zero_row, RowPtr row_ptr, Epilogue epilogue) {
  T acc[kRowBlock][G][kColBlock];
  for (int64_t j0 = cols.begin; j0 < cols.end; j0 += kColBlock) {
    const int64_t nj = std::min<int64_t>(kColBlock, cols.end - j0);
    for (int64_t b0 = 0; b0 < rows; b0 += kRowBlock) {
      const T* a[kRowBlock];
      for (int r = 0; r < kRowBlock; ++r) a[r] = (b0 + r < rows) ? row_ptr(b0 + r) : zero_row;
      gemm_panel<T, G>(a, K, w, ldw, gstride, j0, nj, acc);
      for (int r = 0; r < kRowBlock && b0 + r < rows; ++r)
        for (int64_t jj = 0; jj < nj; ++jj) {
          T gate_acc[G];
          for (int g = 0; g < G; ++g) gate_acc[g] = acc[r][g][jj];
          epilogue(b0 + r, j0 + jj, gate_acc);
        }
    }
  }
}

// Threads worth using for a per-step GEMM of this many multiply-adds: the barrier costs ~1 us per step.
inline int threads_for(int64_t macs_per_step, int64_t units, int requested) {
  int n = std::max(1, requested);
  const int64_t per_thread = std::max<int64_t>(1, min_macs_per_thread().load(std::memory_order_relaxed));
  n = static_cast<int>(std::min<int64_t>(n, std::max<int64_t>(1, macs_per_step / per_thread)));
  n = static_cast<int>(std::min<int64_t>(n, std::max<int64_t>(1, units / 16)));
  return n;
}

// Forward of one layer-direction. The Cell provides:
//   static constexpr int G;                          gates per hidden unit
//   void forward_point(n, b, prev, j, hprev_row, acc[G])  pointwise epilogue of unit j of packed row n
//                        (batch row b, state from packed row prev or -1 = initial); acc = W_hh h_prev gate sums;
//                        writes the unit's new hidden (or pre-projection) value
//   void finish_row(b, last_row)                    copies any extra final state (LSTM c_n)
//   const T* proj_input_row(n)                       (projection only) the row the projection GEMM reads
// Projection (P > 0): y[n, :P] = W_hr · proj_input_row(n) as a second phase.
template <typename T, typename Cell>
void run_forward(const RecurrenceArgs& a, Cell& cell) {
  const Schedule s(a);
  const int64_t H = a.H, P = a.P, Hin = P > 0 ? P : H, GH = Cell::G * H;
  const T* w_hh_t = cptr<T>(a.w_hh_t);  // [Hin, G*H]
  const T* w_hr_t = cptr<T>(a.w_hr_t);  // [H, P]
  const T* h0 = cptr<T>(a.h0);          // [B, Hin]
  T* y = mptr<T>(a.y);                  // [N, Hin], row stride y_stride
  T* h_prev_ws = mptr<T>(a.h_prev_ws);  // [N, Hin] or null
  const int64_t ys = a.y_stride;
  Scratch<T> zero_row(H > Hin ? H : Hin);

  auto state_row = [&](int64_t t, int64_t b) -> const T* {
    const int64_t p = s.prev_row(t, b);
    return p >= 0 ? y + p * ys : h0 + b * Hin;
  };
  const int nthreads = threads_for(a.B * GH * Hin, H, a.nthreads);
  ThreadTeam::instance().run(nthreads, [&](int tid, int nt, SpinBarrier& barrier) {
    const Range units = split(H, tid, nt, 16);
    const Range proj_cols = split(P, tid, nt, 16);
    const Range copy_rows = split(a.B, tid, nt, 1);
    for (int64_t it = 0; it < a.T; ++it) {
      const int64_t t = s.time_at(it), bs = s.batch[t], off = s.offset[t];
      if (h_prev_ws)
        for (int64_t b = copy_rows.begin; b < std::min(bs, copy_rows.end); ++b)
          copy_row(state_row(t, b), Hin, h_prev_ws + (off + b) * Hin);
      gemm_rows<T, Cell::G>(
          bs, units, Hin, w_hh_t, GH, H, zero_row.data, [&](int64_t b) { return state_row(t, b); },
          [&](int64_t b, int64_t j, const T* acc) {
            cell.forward_point(off + b, b, s.prev_row(t, b), j, state_row(t, b), acc);
          });
      if (P > 0) {
        barrier.wait();
        gemm_rows<T, 1>(
            bs, proj_cols, H, w_hr_t, P, 0, zero_row.data, [&](int64_t b) { return cell.proj_input_row(off + b); },
            [&](int64_t b, int64_t p, const T* acc) { y[(off + b) * ys + p] = acc[0]; });
      }
      barrier.wait();
    }
  });
  T* h_n = mptr<T>(a.h_n);  // [B, Hin]
  for (int64_t b = 0; b < a.B; ++b) {
    const int64_t last = s.last_row(b);
    copy_row(y + last * ys, Hin, h_n + b * Hin);
    cell.finish_row(b, last);
  }
}

// Backward of one layer-direction, walking the steps in the opposite order of the forward.
// The Cell provides:
//   void backward_point(n, b, j, dh, next, prev)  from dh = dL/d(output of unit j at row n) (or, with a
//                                                 projection, dL/d(pre-projection value)), writes the gate
//                                                 gradients of row n into d_gates (and d_gates_h)
//   T dh_prev_extra(n, b, k, dh_total_k)          the part of dL/dh_prev[k] that skips the GEMM (GRU: dh*z)
// The driver writes dh_prev[n] = W_hh^T · d_gates_h[n] + extra into dh_prev_ws (or dh0 at a row's first step).
template <typename T, typename Cell>
void run_backward(const RecurrenceArgs& a, Cell& cell) {
  const Schedule s(a);
  const int64_t H = a.H, P = a.P, Hin = P > 0 ? P : H, GH = Cell::G * H;
  const T* w_hh = cptr<T>(a.w_hh);        // [G*H, Hin]
  const T* w_hr = cptr<T>(a.w_hr);        // [P, H]
  const T* dy = cptr<T>(a.dy);            // [N, Hin]
  const T* dh_n = cptr<T>(a.dh_n);        // [B, Hin]
  T* dh0 = mptr<T>(a.dh0);                // [B, Hin]
  T* dh_prev_ws = mptr<T>(a.dh_prev_ws);  // [N, Hin]
  T* dh_total = mptr<T>(a.dh_total);      // [N, P] (projection only)
  const T* d_gates_h = cptr<T>(a.d_gates_h ? a.d_gates_h : a.d_gates);  // [N, G*H]
  Scratch<T> zero_row(GH > P ? GH : P);

  // dL/d(output h of (t, b))[k]: the loss's own gradient plus what the consuming step sent back.
  auto carry_row = [&](int64_t t, int64_t b) -> const T* {
    const int64_t nx = s.next_row(t, b);
    return nx >= 0 ? dh_prev_ws + nx * Hin : dh_n + b * Hin;
  };
  const int nthreads = threads_for(a.B * GH * Hin, H, a.nthreads);
  ThreadTeam::instance().run(nthreads, [&](int tid, int nt, SpinBarrier& barrier) {
    const Range units = split(H, tid, nt, 16);
    const Range in_cols = split(Hin, tid, nt, 16);
    for (int64_t it = a.T - 1; it >= 0; --it) {
      const int64_t t = s.time_at(it), bs = s.batch[t], off = s.offset[t];
      if (P > 0) {
        for (int64_t b = 0; b < bs; ++b) {
          const T* carry = carry_row(t, b);
          const T* dyr = dy + (off + b) * P;
          T* out = dh_total + (off + b) * P;
          for (int64_t p = in_cols.begin; p < in_cols.end; ++p) out[p] = dyr[p] + carry[p];
        }
        barrier.wait();
        // dL/d(o * tanh(c)) = W_hr^T · dh_total
        gemm_rows<T, 1>(
            bs, units, P, w_hr, H, 0, zero_row.data, [&](int64_t b) { return dh_total + (off + b) * P; },
            [&](int64_t b, int64_t j, const T* acc) {
              cell.backward_point(off + b, b, j, acc[0], s.next_row(t, b), s.prev_row(t, b));
            });
      } else {
        for (int64_t b = 0; b < bs; ++b) {
          const T* carry = carry_row(t, b);
          const T* dyr = dy + (off + b) * Hin;
          const int64_t next = s.next_row(t, b), prev = s.prev_row(t, b);
          for (int64_t j = units.begin; j < units.end; ++j)
            cell.backward_point(off + b, b, j, dyr[j] + carry[j], next, prev);
        }
      }
      barrier.wait();
      gemm_rows<T, 1>(
          bs, in_cols, GH, w_hh, Hin, 0, zero_row.data, [&](int64_t b) { return d_gates_h + (off + b) * GH; },
          [&](int64_t b, int64_t k, const T* acc) {
            const int64_t n = off + b;
            T v = acc[0];
            if (Cell::kHasDirectPath) v += cell.dh_prev_extra(n, b, k, dy[n * Hin + k] + carry_row(t, b)[k]);
            const int64_t prev = s.prev_row(t, b);
            (prev >= 0 ? dh_prev_ws + n * Hin : dh0 + b * Hin)[k] = v;
          });
      barrier.wait();
    }
  });
}

}  // namespace PYRNN_ISA
}  // namespace pyrnn
