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
#include <type_traits>

#include "recurrence_args.h"
#include "simd.h"
#include "thread_team.h"

namespace pyrnn {
namespace PYRNN_ISA {

void gemm(const GemmSpec& spec);  // gemm.cpp, same instruction set (cells' input projection)

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

// Uninitialised heap array for packed weight panels (the packing writes every element; zero-filling first
// was ~15 us of a 33 us single step). Plain new[]: glibc's per-thread arenas hand each thread back the
// memory it used last call, still in its own cache (a shared cache of buffers made a 2 MiB panel buffer
// migrate between the two cores' caches and a single step 2.5x slower).
template <typename T>
struct PanelBuffer {
  T* data;
  explicit PanelBuffer(int64_t n) : data(new T[n > 0 ? n : 1]) {}
  ~PanelBuffer() { delete[] data; }
  PanelBuffer(const PanelBuffer&) = delete;
  PanelBuffer& operator=(const PanelBuffer&) = delete;
};

template <typename T>
inline void copy_row(const T* src, int64_t n, T* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = src[i];
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
      batch[t] = bs ? bs[t] : B;
      offset[t] = acc;
      acc += batch[t];
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
  // The iteration at which row b produces its final state (the step of last_row(b)).
  int64_t last_iteration(int64_t b) const {
    if (reverse) return T - 1;
    int64_t t = T - 1;
    while (t > 0 && batch[t] <= b) --t;
    return t;
  }
  // Packed row holding row b's final state.
  int64_t last_row(int64_t b) const { return offset[time_at(last_iteration(b))] + b; }
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

// ------------------------------------------------------------------------------------------ microkernel
//
// The A operand of a microkernel: MR rows given by pointers (a(r, k) = rows[r][k]), or an A^T block whose
// MR rows are contiguous at every k (a(r, k) = base[k * stride_k + r], as in the weight gradients dG^T h).
template <typename T, int MR>
struct RowPointers {
  const T* const* rows;
  T operator()(int r, int64_t k) const { return rows[r][k]; }
};
template <typename T>
struct ColumnBlock {
  const T* base;
  int64_t stride_k;
  T operator()(int r, int64_t k) const { return base[k * stride_k + r]; }
};

// acc[r][v] = sum_k a(r, k) * panel[k * ld + v * W + lane]  for MR rows and NV vectors of W lanes. A packed
// panel holds the NV*W weight columns of one k contiguously (ld = NV*W); a row-major weight read in place has
// ld = its row length. A step of k is NV vector loads, MR broadcasts and MR*NV FMAs, all accumulators in
// registers (MR and NV are chosen per ISA so they fit).
// Chains of dependent FMAs a microkernel of MR x NV accumulators splits its depth into, so that at least ~12
// FMAs are in flight (FMA latency x pipes): small tiles (B = 1, 2) would otherwise wait on FMA latency.
constexpr int depth_chains(int mr, int nv) {
  int ks = (12 + mr * nv - 1) / (mr * nv);
  while (ks > 1 && ks * mr * nv + nv + 1 > kVecRegs) --ks;
  return ks < 1 ? 1 : ks;
}

template <typename T, int MR, int NV, typename A>
inline void microkernel(const A& a, int64_t K, const T* panel, Vec<T> (&acc)[MR][NV],
                        int64_t ld = NV * Simd<T>::W) {
  constexpr int W = Simd<T>::W, KS = depth_chains(MR, NV);
  if constexpr (KS > 1) {
    Vec<T> part[KS][MR][NV];
#pragma GCC unroll 16
    for (int c = 0; c < KS; ++c)
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r)
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) part[c][r][v] = Vec<T>{};
    int64_t k = 0;
    for (; k + KS <= K; k += KS) {
#pragma GCC unroll 16
      for (int c = 0; c < KS; ++c) {
        Vec<T> w[NV];
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) w[v] = vload(panel + (k + c) * ld + v * W);
#pragma GCC unroll 16
        for (int r = 0; r < MR; ++r) {
          const Vec<T> ar = vsplat(a(r, k + c));
#pragma GCC unroll 16
          for (int v = 0; v < NV; ++v) part[c][r][v] += ar * w[v];
        }
      }
    }
    for (; k < K; ++k)
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) {
        const Vec<T> ar = vsplat(a(r, k));
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) part[0][r][v] += ar * vload(panel + k * ld + v * W);
      }
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) {
        Vec<T> sum = part[0][r][v];
        for (int c = 1; c < KS; ++c) sum += part[c][r][v];
        acc[r][v] = sum;
      }
    return;
  }
  // Local accumulators, copied out at the end: were this function not inlined, sums kept in `acc` (the
  // caller's memory, which may alias A's elements as far as the compiler knows) would be stored and A
  // reloaded at every k (measured 3x slower when a change elsewhere tipped GCC's inlining decision).
  Vec<T> sum[MR][NV];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) sum[r][v] = Vec<T>{};
  for (int64_t k = 0; k < K; ++k) {
    Vec<T> w[NV];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) w[v] = vload(panel + k * ld + v * W);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const Vec<T> ar = vsplat(a(r, k));
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) sum[r][v] += ar * w[v];
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) acc[r][v] = sum[r][v];
}

// Runs the microkernel over rows [0, rows) in tiles of up to MR rows (the last tile instantiated for its
// own size), handing each row's NV accumulators to epilogue(row, acc).
template <typename T, int MR, int NV, typename RowPtr, typename Epilogue>
inline void tile_rows(int64_t b0, int64_t K, const T* panel, int64_t ld, RowPtr& row_ptr, Epilogue& epilogue) {
  const T* a[MR];
  for (int r = 0; r < MR; ++r) a[r] = row_ptr(b0 + r);
  Vec<T> acc[MR][NV];
  microkernel<T, MR, NV>(RowPointers<T, MR>{a}, K, panel, acc, ld);
  for (int r = 0; r < MR; ++r) epilogue(b0 + r, acc[r]);
}

template <typename T, int MR, int NV, typename RowPtr, typename Epilogue>
inline void tail_rows(int64_t b0, int64_t left, int64_t K, const T* panel, int64_t ld, RowPtr& row_ptr,
                      Epilogue& epilogue) {
  if constexpr (MR > 0) {
    if (left == MR) return tile_rows<T, MR, NV>(b0, K, panel, ld, row_ptr, epilogue);
    tail_rows<T, MR - 1, NV>(b0, left, K, panel, ld, row_ptr, epilogue);
  }
}

// Rows go in equal tiles of at most MR (20 rows with MR = 6: 5+5+5+5, not 6+6+6+2), since a tile streams
// the whole panel whatever its height. ld: the panel's stride in k (see microkernel).
template <typename T, int MR, int NV, typename RowPtr, typename Epilogue>
inline void gemm_rows(int64_t rows, int64_t K, const T* panel, RowPtr row_ptr, Epilogue epilogue,
                      int64_t ld = NV * Simd<T>::W) {
  if (rows <= 0) return;
  const int64_t tiles = (rows + MR - 1) / MR, base = rows / tiles, taller = rows % tiles;
  int64_t b0 = 0;
  for (int64_t i = 0; i < tiles; ++i) {
    const int64_t height = base + (i < taller ? 1 : 0);
    if (height == MR) {
      tile_rows<T, MR, NV>(b0, K, panel, ld, row_ptr, epilogue);
    } else {
      tail_rows<T, MR - 1, NV>(b0, height, K, panel, ld, row_ptr, epilogue);
    }
    b0 += height;
  }
}

// Largest row tile whose MR*NV accumulators, NV weight vectors and one broadcast fit in the registers.
constexpr int rows_for(int nv) {
  const int mr = (kVecRegs - nv - 1) / nv;
  return mr < 1 ? 1 : (mr > 12 ? 12 : mr);
}
// Vectors per column panel of the plain (non-gate) GEMMs: the dh GEMM of the backward and the projection.
constexpr int kPlainNV = kVecRegs >= 32 ? 4 : 2;

// Packs columns [c0, c0 + NV*W) of a K-deep weight into panel[k][NV*W], zero past `c_end`.
// col_value(k, c) reads the unpacked weight.
template <typename T, int NV, typename ColValue>
inline void pack_panel(T* panel, int64_t K, int64_t c0, int64_t c_end, ColValue col_value) {
  constexpr int NC = NV * Simd<T>::W;
  for (int64_t k = 0; k < K; ++k)
    for (int c = 0; c < NC; ++c) panel[k * NC + c] = c0 + c < c_end ? col_value(k, c0 + c) : T(0);
}

// The same panel from a source whose columns are contiguous in k (W^T of a row-major W: the input
// projection's and the forward's weights): col_ptr(c) points at column c's K values, or is null for a zero
// column. W columns at a time, W x W blocks are loaded as rows and transposed in registers, so reads and
// writes are whole vectors (element-wise packing cost ~2.3 cycles per weight: ~150 us of a 180 us LSTM
// step at B=8, H=256 on one thread).
template <typename T, int NV, typename ColPtr>
inline void pack_panel_columns(T* panel, int64_t K, int64_t c0, int64_t c_end, ColPtr col_ptr) {
  constexpr int W = Simd<T>::W, NC = NV * W;
  for (int v = 0; v < NV; ++v) {
    const T* src[W];
    for (int j = 0; j < W; ++j) {
      const int64_t c = c0 + v * W + j;
      src[j] = c < c_end ? col_ptr(c) : nullptr;
    }
    for (int64_t k0 = 0; k0 < K; k0 += W) {
      const int cnt = static_cast<int>(std::min<int64_t>(W, K - k0));
      Vec<T> block[W];
      for (int j = 0; j < W; ++j) block[j] = src[j] ? vload(src[j] + k0, cnt) : Vec<T>{};
      transpose_block<T>(block);
      for (int kk = 0; kk < cnt; ++kk) vstore(panel + (k0 + kk) * NC + v * W, block[kk]);
    }
  }
}

// Threads worth using for a per-step GEMM of this many multiply-adds: the barrier costs ~1 us per step.
inline int threads_for(int64_t macs_per_step, int64_t panels, int requested) {
  int n = std::max(1, requested);
  const int64_t per_thread = std::max<int64_t>(1, min_macs_per_thread().load(std::memory_order_relaxed));
  n = static_cast<int>(std::min<int64_t>(n, std::max<int64_t>(1, macs_per_step / per_thread)));
  n = static_cast<int>(std::min<int64_t>(n, std::max<int64_t>(1, panels)));
  return n;
}

// A thread's share of the unit split: runs of unit panels, each over a range of batch rows.
struct UnitShare {
  struct Segment {
    int64_t panel_begin, panel_end;
    Range rows;  // of the full batch; a packed batch's step intersects them with its active rows
  };
  Segment segment[3];
  int count = 0;
  int64_t panel_begin = 0, panel_end = 0;  // every panel of the segments

  const Segment* begin() const { return segment; }
  const Segment* end() const { return segment + count; }
  void add(int64_t p0, int64_t p1, int64_t r0, int64_t r1) {
    if (p1 <= p0 || r1 <= r0) return;
    if (count == 0) panel_begin = p0;
    panel_end = p1;
    segment[count++] = {p0, p1, {r0, r1}};
  }
};

// How a layer's hidden units are split: forward panels of NU unit vectors (all G gates of NU*W units,
// gate-interleaved).
template <typename T, typename Cell>
struct UnitSplit {
  static constexpr int W = Simd<T>::W;
  static constexpr int kUnitsPerPanel = Cell::NU * W;
  static int64_t panels(int64_t H) { return (H + kUnitsPerPanel - 1) / kUnitsPerPanel; }
  static Range units_of(int64_t H, int64_t panel_begin, int64_t panel_end) {
    return {std::min(H, panel_begin * kUnitsPerPanel), std::min(H, panel_end * kUnitsPerPanel)};
  }
  // Whole panels per thread.
  static Range units(int64_t H, int tid, int nt) {
    const Range p = split(panels(H), tid, nt, 1);
    return units_of(H, p.begin, p.end);
  }
  // Equal shares of the (panel, batch row) grid taken panel by panel, where whole panels would not divide
  // evenly: H = 200 is 13 panels of 16 units, which gave one of two threads 7 and the other 6, and every step
  // waited for the 7 (LSTM forward at T=35 B=20: as slow as H = 224). The panel on a boundary is shared by rows,
  // so a share is at most three segments: the last rows of a panel, whole panels, the first rows of another.
  static UnitShare share(int64_t H, int64_t B, int tid, int nt) {
    UnitShare out;
    const int64_t rows = std::max<int64_t>(B, 1);  // B = 0: whole panels, no rows
    const int64_t total = panels(H) * rows, first = total * tid / nt, last = total * (tid + 1) / nt;
    const int64_t p0 = first / rows, r0 = first % rows, p1 = last / rows, r1 = last % rows;
    if (p0 == p1) {
      out.add(p0, p0 + 1, r0, std::min(r1, B));
      return out;
    }
    if (r0 > 0) out.add(p0, p0 + 1, r0, B);
    out.add(r0 > 0 ? p0 + 1 : p0, p1, 0, B);
    out.add(p1, p1 + 1, 0, std::min(r1, B));
    return out;
  }
};

// Plain column panels over [cols.begin, cols.end), packed once per call (or per K block): NV vectors wide, the
// last one only as wide as the columns left (so a thread owning 32 columns does not run 64-wide tiles).
template <typename T, int NV>
struct ColumnPanels {
  static constexpr int W = Simd<T>::W, NC = NV * W;
  Range cols;
  int64_t K, count;
  PanelBuffer<T> data;
  const T* view = nullptr;  // see view_rows
  int64_t view_ld = 0;
  // Room for depth up to max_k, packed (and repacked) by pack_rows / pack_columns / pack: a GEMM walking K in
  // blocks reuses one buffer instead of allocating (and page-faulting) a fresh one per block.
  ColumnPanels(Range c, int64_t max_k)
      : cols(c), K(max_k), count(c.end > c.begin ? (c.end - c.begin + NC - 1) / NC : 0), data(count * max_k * NC) {}
  // pack() for a row-major source (element (k, c) at rows[k * ld + c]): whole vectors per row. Packing shows
  // where few output rows reuse each packed element (weight gradients: 20% of their time element by element).
  void pack_rows(int64_t k, const T* rows, int64_t ld) {
    K = k;
    for (int64_t p = 0; p < count; ++p) {
      T* out = data.data + p * K * NC;
      const int64_t c0 = first_col(p);
      const int64_t left = cols.end - c0;
      const int nv = width(p);  // a narrow last panel is packed nv vectors wide, as pack_panel<T, nv> does
      for (int64_t kk = 0; kk < K; ++kk) {
        const T* src = rows + kk * ld + c0;
        T* dst = out + kk * nv * W;
        for (int v = 0; v < nv; ++v) {
          const int64_t c = int64_t{v} * W;
          const int cnt = c >= left ? 0 : static_cast<int>(std::min<int64_t>(W, left - c));
          vstore(dst + c, cnt > 0 ? vload(src + c, cnt) : Vec<T>{});
        }
      }
    }
  }
  // pack() for a source whose columns are contiguous in k (see pack_panel_columns).
  template <typename ColPtr>
  void pack_columns(int64_t k, ColPtr col_ptr) {
    K = k;
    each_panel([&](T* out, int64_t c0, auto nv) { pack_panel_columns<T, decltype(nv)::value>(out, K, c0, cols.end, col_ptr); });
  }
  template <typename ColValue>
  void pack(int64_t k, ColValue col_value) {
    K = k;
    each_panel([&](T* out, int64_t c0, auto nv) { pack_panel<T, decltype(nv)::value>(out, K, c0, cols.end, col_value); });
  }
  // pack_one(panel storage, first column, std::integral_constant<int, vectors in that panel>) for each panel.
  template <typename PackOne>
  void each_panel(PackOne pack_one) {
    static_assert(NV <= 4, "widths up to 4 vectors are instantiated");
    for (int64_t p = 0; p < count; ++p) {
      T* out = data.data + p * K * NC;
      switch (width(p)) {
        case 1: pack_one(out, first_col(p), std::integral_constant<int, 1>{}); break;
        case 2: pack_one(out, first_col(p), std::integral_constant<int, 2>{}); break;
        case 3: pack_one(out, first_col(p), std::integral_constant<int, 3>{}); break;
        default: pack_one(out, first_col(p), std::integral_constant<int, NV>{}); break;
      }
    }
  }
  // Instead of packing: reads a row-major source (element (k, c) at rows[k * ld + c]) in place, for a single
  // step, which would pack more than it computes. Whole vectors only: every panel's columns end at cols.end,
  // so cols.begin, cols.end and ld must be multiples of W (the loads of a row then stay inside it).
  void view_rows(int64_t k, const T* rows, int64_t ld) {
    K = k;
    view = rows;
    view_ld = ld;
  }
  const T* panel(int64_t p) const { return view ? view + first_col(p) : data.data + p * K * NC; }
  int64_t panel_ld(int64_t p) const { return view ? view_ld : width(p) * W; }  // stride in k
  int64_t first_col(int64_t p) const { return cols.begin + p * NC; }
  int width(int64_t p) const {  // vectors in panel p
    const int64_t left = (cols.end - first_col(p) + W - 1) / W;
    return static_cast<int>(left < NV ? left : NV);
  }
  // gemm_rows over panel p at its own width; the epilogue sees `width(p)` accumulators.
  template <typename RowPtr, typename Epilogue>
  void gemm(int64_t p, int64_t rows, RowPtr row_ptr, Epilogue epilogue) const {
    static_assert(NV <= 4, "widths up to 4 vectors are instantiated");
    switch (width(p)) {
      case 1: return gemm_rows<T, rows_for(1), 1>(rows, K, panel(p), row_ptr, epilogue, panel_ld(p));
      case 2: return gemm_rows<T, rows_for(2), 2>(rows, K, panel(p), row_ptr, epilogue, panel_ld(p));
      case 3: return gemm_rows<T, rows_for(3), 3>(rows, K, panel(p), row_ptr, epilogue, panel_ld(p));
      default: return gemm_rows<T, rows_for(NV), NV>(rows, K, panel(p), row_ptr, epilogue, panel_ld(p));
    }
  }
};

// A single step (cells, T = 1) of few rows, or a tiny one, runs "direct": its gates are dot products of the rows
// (two at a time) with W_hh's (and W_ih's) rows as they lie (dot_block_pair), its dh GEMM an axpy over them, each
// thread a block of units. Each pair of rows streams the weights once, so this pays only for a few rows; from
// there on single_step_forward and the backward's in-place panels take over (both also read the weights where
// they lie). Kernel alone, input projection included, H=256 on 2 threads (direct / single-step, us): forward
// LSTM B=4 37 / 89, B=6 54 / 89, B=8 77 / 91, B=12 103 / 93, B=16 137 / 98 (GRU and RNN alike); backward (dx
// and weight gradients included) LSTM B=4 196-209 / 113, GRU 134-138 / 81, RNN 47-56 / 26. So the forward goes
// direct up to 8 rows, the backward up to 2.
constexpr int64_t kDirectForwardMaxRows = 8;
constexpr int64_t kDirectBackwardMaxRows = 2;
inline bool single_step_direct(const RecurrenceArgs& a, int64_t macs, int64_t max_rows) {
  return a.T == 1 && a.P == 0 && (a.B <= max_rows || macs <= (int64_t{1} << 16));
}

// Splitting a sequence over threads by batch rows instead of hidden units. Rows are independent through the
// whole recurrence, so a thread that owns rows runs all its steps with no barrier and reads no state another
// core wrote; the price is that each thread packs and streams all of W_hh instead of its share, so it pays
// only up to a size of W_hh (smaller for the forward) and where every thread gets a tile's worth of rows.
// Measured against the unit split on 2 threads (kernels alone, T = 100, interleaved in one process):
// - backward: 1.13-1.47x at H = 64-128, RNN H = 256 1.24x, LSTM H = 256 1.09x, LSTM H = 384 and RNN H = 768
//   (2.4 MB of packed weights a thread) 1.04-1.07x, LSTM H = 512 (4 MB) 1.02x, LSTM H = 1024 (16 MB) 0.85x. Its
//   unit split moves the most between cores: each step reads all gate gradients of the batch, half of them
//   written by the other core.
// - forward: RNN H <= 256 1.04-1.17x, LSTM H = 128 1.01-1.09x, H = 64 1.04x; LSTM/GRU with 0.5-1 MB of weights
//   0.98-1.01x, LSTM H = 320-512 0.93-0.95x. Its epilogue (the gate nonlinearities) hides more of the exchange.
// In whole training steps (median of paired ratios, order shuffled) the backward's gain shrank where W_hh fills
// most of the 1 MiB L2 beside the step's other data (LSTM H = 200 and 256: 0.98-0.99x), so both limits stay
// below that; the grid's steps it applies to gained 1-4%.
constexpr int64_t kRowSplitForwardMaxBytes = int64_t{320} << 10;
constexpr int64_t kRowSplitBackwardMaxBytes = int64_t{768} << 10;
// Threads for a row split of this sequence (each streaming `weight_bytes` of packed weights per step), or 0
// for the unit split: at least 4 steps to spread each thread's packing of all the weights over, and
// row_split_min_rows() rows a thread (a microkernel tile's worth: fewer rows stream the weights for less work).
inline int row_split_threads(const RecurrenceArgs& a, int64_t weight_bytes, int64_t max_bytes, int64_t macs_per_step) {
  if (a.T < 4 || a.nthreads < 2 || weight_bytes > max_bytes) return 0;
  const int64_t per_thread = std::max<int64_t>(1, min_macs_per_thread().load(std::memory_order_relaxed));
  const int64_t min_rows = std::max<int64_t>(1, row_split_min_rows().load(std::memory_order_relaxed));
  int64_t n = std::min<int64_t>(a.nthreads, a.B / min_rows);
  n = std::min<int64_t>(n, std::max<int64_t>(1, macs_per_step / per_thread));
  return n >= 2 ? static_cast<int>(n) : 0;
}

// Contiguous rows for thread tid of nt, balanced by the steps each row is active (a packed batch's rows are
// sorted by length, longest first).
inline Range row_block(const Schedule& s, int tid, int nt) {
  if (s.batch[0] == s.batch[s.T - 1]) return split(s.B, tid, nt, 1);
  Scratch<int64_t> steps(s.B + 1);  // steps[b]: steps in which row b is active
  for (int64_t t = 0; t < s.T; ++t) steps[s.batch[t] - 1] += 1;
  for (int64_t b = s.B - 1; b > 0; --b) steps[b - 1] += steps[b];
  int64_t total = 0;
  for (int64_t b = 0; b < s.B; ++b) total += steps[b];
  auto first_row_at = [&](int64_t k) {  // first row whose preceding rows hold at least k/nt of the work
    const int64_t target = (total * k + nt - 1) / nt;
    int64_t b = 0, acc = 0;
    while (b < s.B && acc < target) acc += steps[b++];
    return b;
  };
  return {first_row_at(tid), first_row_at(tid + 1)};
}

// The rows of `mine` active at time t (empty where the batch has shrunk below them).
inline Range active_rows(const Schedule& s, Range mine, int64_t t) {
  return {mine.begin, std::max(mine.begin, std::min(mine.end, s.batch[t]))};
}

// Lane j of the result = dot(x, rows + j * ld) over n elements, for j < cnt (cnt <= W; the other lanes are
// zero): the matrix-vector product of a step with few rows, on the weight rows as they lie. One accumulator
// per row, each a vector of partial sums along k, so one load of x serves W rows; sum_lanes_across folds them
// into one vector whose lanes are the rows in order, as the cell's epilogue takes its units. (It replaced
// dot products four rows at a time, each summed across its lanes on its own.)
template <typename T>
inline Vec<T> dot_block(const T* x, const T* rows, int64_t ld, int cnt, int64_t n) {
  constexpr int W = Simd<T>::W;
  const T* row[W];
  for (int j = 0; j < W; ++j) row[j] = rows + std::min(j, cnt - 1) * ld;  // rows past cnt repeat the last
  Vec<T> acc[W];
#pragma GCC unroll 16
  for (int j = 0; j < W; ++j) acc[j] = Vec<T>{};
  int64_t k = 0;
  for (; k + W <= n; k += W) {
    const Vec<T> xv = vload(x + k);
#pragma GCC unroll 16
    for (int j = 0; j < W; ++j) acc[j] += xv * vload(row[j] + k);
  }
  if (k < n) {
    const int c = static_cast<int>(n - k);
    const Vec<T> xv = vload(x + k, c);
#pragma GCC unroll 16
    for (int j = 0; j < W; ++j) acc[j] += xv * vload(row[j] + k, c);
  }
  const Vec<T> sums = sum_lanes_across<T>(acc);
  if (cnt == W) return sums;
  T lanes[W];
  vstore(lanes, sums);
  return vload(lanes, cnt);
}

// dot_block for two rows at once: out[i] lane j = dot(x_i, rows + j * ld), for x_0 = x and x_1 = x + x_stride.
// Each load of a weight row serves both rows, which halves the weight traffic from L2 per row: that traffic,
// not the FMAs, bounds the direct path beyond a row (LSTM forward at H=256, B=4: 49 -> 37 us). The W weight
// rows go in two passes of W/2 (2 x W/2 accumulators, as many registers as dot_block's), each folded into a
// vector whose low half belongs to x_0 and high half to x_1; two shuffles put the halves in row order.
template <typename T>
inline void dot_block_pair(const T* x, int64_t x_stride, const T* rows, int64_t ld, int cnt, int64_t n, Vec<T>* out) {
  constexpr int W = Simd<T>::W, HW = W / 2;
  static_assert(W >= 2, "two rows share a vector");
  Vec<T> half[2];
  for (int pass = 0; pass < 2; ++pass) {
    const T* row[HW];
    for (int j = 0; j < HW; ++j) row[j] = rows + std::min(pass * HW + j, cnt - 1) * ld;  // past cnt: the last
    Vec<T> acc[W];  // acc[j]: x_0 with row j of the pass; acc[HW + j]: x_1 with it
#pragma GCC unroll 16
    for (int j = 0; j < W; ++j) acc[j] = Vec<T>{};
    int64_t k = 0;
    for (; k + W <= n; k += W) {
      const Vec<T> x0 = vload(x + k), x1 = vload(x + x_stride + k);
#pragma GCC unroll 16
      for (int j = 0; j < HW; ++j) {
        const Vec<T> w = vload(row[j] + k);
        acc[j] += x0 * w;
        acc[HW + j] += x1 * w;
      }
    }
    if (k < n) {
      const int c = static_cast<int>(n - k);
      const Vec<T> x0 = vload(x + k, c), x1 = vload(x + x_stride + k, c);
#pragma GCC unroll 16
      for (int j = 0; j < HW; ++j) {
        const Vec<T> w = vload(row[j] + k, c);
        acc[j] += x0 * w;
        acc[HW + j] += x1 * w;
      }
    }
    half[pass] = sum_lanes_across<T>(acc);
  }
  using I = typename Simd<T>::I;
  I first, second;
  for (int l = 0; l < W; ++l) {
    first[l] = l < HW ? l : W + l - HW;
    second[l] = l < HW ? l + HW : W + l;
  }
  out[0] = __builtin_shuffle(half[0], half[1], first);
  out[1] = __builtin_shuffle(half[0], half[1], second);
  if (cnt == W) return;
  for (int i = 0; i < 2; ++i) {
    T lanes[W];
    vstore(lanes, out[i]);
    out[i] = vload(lanes, cnt);
  }
}

// out[cols) = sum_r coeff[r] * m[r, cols) for the rows r < rows of a row-major m with row stride ld: a
// vector-matrix product over the rows as they lie (dh_prev = d_gates W_hh of a single row).
template <typename T>
inline void axpy_rows(const T* coeff, int64_t rows, const T* m, int64_t ld, Range cols, T* out) {
  constexpr int W = Simd<T>::W;
  for (int64_t k = cols.begin; k < cols.end; ++k) out[k] = T(0);
  for (int64_t r = 0; r < rows; ++r) {
    const Vec<T> c = vsplat(coeff[r]);
    const T* mr = m + r * ld;
    for (int64_t k = cols.begin; k < cols.end; k += W) {
      const int cnt = static_cast<int>(std::min<int64_t>(W, cols.end - k));
      vstore(out + k, vload(out + k, cnt) + c * vload(mr + k, cnt), cnt);
    }
  }
}

// A cell's input projection done by the kernel (RecurrenceArgs::x given, T = 1): gx = W_ih x + b_ih + the hidden
// biases that add outside the cell math (Cell::kFoldedHiddenBiasGates gates' worth). A cell call then makes
// one pass over W_ih and W_hh and one trip into C++, where a separate GEMM call cost more than the step at B=1.
template <typename T, typename Cell>
struct CellInput {
  static constexpr int G = Cell::G;
  int64_t B, I, H, Hin;
  const T* x;     // [B, I] (null: gx was computed by the caller)
  const T* w_ih;  // [G*H, I]
  const T* b_ih;  // [G*H] or null
  const T* b_hh;  // [G*H] or null
  T* gx;          // [B, G*H], written here
  // Backward: the cell's weight gradients (each null when not wanted); a cell has no later steps to sum them
  // over, so they come from the kernel too rather than from four more library calls.
  const T* h0;                      // [B, Hin]
  T *dw_ih, *dw_hh, *db_ih, *db_hh;  // [G*H, I], [G*H, Hin], [G*H], [G*H]

  explicit CellInput(const RecurrenceArgs& a)
      : B(a.B), I(a.I), H(a.H), Hin(a.P > 0 ? a.P : a.H), x(cptr<T>(a.x)), w_ih(cptr<T>(a.w_ih)),
        b_ih(cptr<T>(a.b_ih)), b_hh(cptr<T>(a.b_hh)), gx(mptr<T>(a.gx)), h0(cptr<T>(a.h0)), dw_ih(mptr<T>(a.dw_ih)),
        dw_hh(mptr<T>(a.dw_hh)), db_ih(mptr<T>(a.db_ih)), db_hh(mptr<T>(a.db_hh)) {}
  explicit operator bool() const { return x != nullptr; }

  T bias(int64_t r) const {
    T v = b_ih ? b_ih[r] : T(0);
    if (b_hh && r < Cell::kFoldedHiddenBiasGates * H) v += b_hh[r];
    return v;
  }
  // Rows too few to pack for: gx of rows b (and b + 1 if pair), units [u, u+cnt) of every gate, as dot products
  // with W_ih's rows.
  void project_units(int64_t b, bool pair, int64_t u, int cnt) const {
    for (int g = 0; g < G; ++g) {
      Vec<T> sums[2];
      const T* w = w_ih + (g * H + u) * I;
      if (pair)
        dot_block_pair(x + b * I, I, w, I, cnt, I, sums);
      else
        sums[0] = dot_block(x + b * I, w, I, cnt, I);
      for (int i = 0; i < (pair ? 2 : 1); ++i) {
        T* out = gx + (b + i) * G * H + g * H + u;
        vstore(out, sums[i], cnt);
        for (int j = 0; j < cnt; ++j) out[j] += bias(g * H + u + j);
      }
    }
  }
  // Backward, rows too few to pack for: columns [cols) of dx [B, I] = d_gates [B, G*H] W_ih, an axpy per gate row.
  void input_grad_columns(const T* d_gates, T* dx, Range cols) const {
    for (int64_t b = 0; b < B; ++b) axpy_rows(d_gates + b * G * H, G * H, w_ih, I, cols, dx + b * I);
  }
  // Otherwise one GEMM (after the backward's parallel region).
  void input_grad(const T* d_gates, T* dx, int nthreads) const {
    run_gemm(nthreads, B, I, G * H, d_gates, G * H, 1, w_ih, I, 1, dx, I);
  }
  // Rows too few to pack for: rows [rows) of the weight gradients, each a sum over the B rows of outer products.
  void weight_grad_rows(const T* d_gates, const T* d_gates_h, Range rows) const {
    constexpr int W = Simd<T>::W;
    const int64_t GH = G * H;
    auto outer_row = [&](const T* coeff, int64_t r, const T* v, int64_t n, T* out) {  // out = sum_b coeff[b, r] v[b]
      for (int64_t k = 0; k < n; k += W) {
        const int cnt = static_cast<int>(std::min<int64_t>(W, n - k));
        Vec<T> acc{};
        for (int64_t b = 0; b < B; ++b) acc += vsplat(coeff[b * GH + r]) * vload(v + b * n + k, cnt);
        vstore(out + k, acc, cnt);
      }
    };
    for (int64_t r = rows.begin; r < rows.end; ++r) {
      if (dw_ih) outer_row(d_gates, r, x, I, dw_ih + r * I);
      if (dw_hh) outer_row(d_gates_h, r, h0, Hin, dw_hh + r * Hin);
    }
    bias_grads(d_gates, d_gates_h, rows);
  }
  // A single step of more rows (inside the backward's parallel region, once the gate gradients are complete):
  // the same products with the weights and inputs read where they lie rather than packed for pyrnn's GEMM, which
  // for one step moved more data than it multiplied. Needs rows of whole vectors: in_place(Hin).
  bool in_place(int64_t Hin) const {
    constexpr int W = Simd<T>::W;
    return I % W == 0 && Hin % W == 0;
  }
  // Columns [cols) (multiples of W) of dx [B, I] = d_gates [B, G*H] W_ih [G*H, I].
  void input_grad_in_place(const T* d_gates, T* dx, Range cols) const {
    constexpr int W = Simd<T>::W;
    ColumnPanels<T, kPlainNV> w(cols, 0);
    w.view_rows(G * H, w_ih, I);
    for (int64_t p = 0; p < w.count; ++p) {
      const int64_t c0 = w.first_col(p);
      const int nv = w.width(p);
      w.gemm(p, B, [&](int64_t b) { return d_gates + b * G * H; }, [&](int64_t b, const Vec<T>* acc) {
        for (int v = 0; v < nv; ++v) vstore(dx + b * I + c0 + v * W, acc[v]);
      });
    }
  }
  // Rows [rows) of the weight and bias gradients: dW_ih = d_gates^T x, dW_hh = d_gates_h^T h0, as [rows, B]
  // copies of the gate gradients' columns (B * rows elements) against x and h0 in place.
  void weight_grads_in_place(const T* d_gates, const T* d_gates_h, Range rows, int64_t Hin) const {
    constexpr int W = Simd<T>::W;
    const int64_t GH = G * H, n = rows.end - rows.begin;
    PanelBuffer<T> cols_t(n * B);  // [rows, B]
    auto gradient = [&](const T* dg, const T* in, int64_t K_in, T* dw, T* db) {
      for (int64_t b = 0; b < B; ++b)
        for (int64_t i = 0; i < n; ++i) cols_t.data[i * B + b] = dg[b * GH + rows.begin + i];
      if (db)
        for (int64_t i = 0; i < n; ++i) {
          T sum = T(0);
          for (int64_t b = 0; b < B; ++b) sum += cols_t.data[i * B + b];
          db[rows.begin + i] = sum;
        }
      if (!dw) return;
      ColumnPanels<T, kPlainNV> in_cols(Range{0, K_in}, 0);
      in_cols.view_rows(B, in, K_in);
      for (int64_t p = 0; p < in_cols.count; ++p) {
        const int64_t c0 = in_cols.first_col(p);
        const int nv = in_cols.width(p);
        in_cols.gemm(p, n, [&](int64_t i) { return cols_t.data + i * B; }, [&](int64_t i, const Vec<T>* acc) {
          for (int v = 0; v < nv; ++v) vstore(dw + (rows.begin + i) * K_in + c0 + v * W, acc[v]);
        });
      }
    };
    if (dw_ih || db_ih) gradient(d_gates, x, I, dw_ih, db_ih);
    if (dw_hh || db_hh) gradient(d_gates_h, h0, Hin, dw_hh, db_hh);
  }
  // Otherwise GEMMs (after the backward's parallel region): dW = d_gates^T [G*H, B] (read in place) times x or h0.
  void weight_grads(const T* d_gates, const T* d_gates_h, int nthreads) const {
    const int64_t GH = G * H;
    if (dw_ih) run_gemm(nthreads, GH, I, B, d_gates, 1, GH, x, I, 1, dw_ih, I);
    if (dw_hh) run_gemm(nthreads, GH, Hin, B, d_gates_h, 1, GH, h0, Hin, 1, dw_hh, Hin);
    bias_grads(d_gates, d_gates_h, Range{0, GH});
  }

 private:
  void bias_grads(const T* d_gates, const T* d_gates_h, Range rows) const {
    const int64_t GH = G * H;
    for (int64_t r = rows.begin; r < rows.end; ++r) {
      T si = T(0), sh = T(0);
      for (int64_t b = 0; b < B; ++b) si += d_gates[b * GH + r], sh += d_gates_h[b * GH + r];
      if (db_ih) db_ih[r] = si;
      if (db_hh) db_hh[r] = sh;
    }
  }
  // c [M, N] (row stride ldc) = a [M, K] b [K, N], operands by element strides.
  static void run_gemm(int nthreads, int64_t M, int64_t N, int64_t K, const T* a, int64_t sa_m, int64_t sa_k,
                       const T* b, int64_t sb_k, int64_t sb_n, T* c, int64_t ldc) {
    GemmSpec g;
    g.dtype = std::is_same<T, double>::value ? 1 : 0;
    g.nthreads = nthreads;
    g.M = M, g.N = N, g.K = K;
    g.a = reinterpret_cast<uintptr_t>(a), g.sa_m = sa_m, g.sa_k = sa_k;
    g.b = reinterpret_cast<uintptr_t>(b), g.sb_k = sb_k, g.sb_n = sb_n;
    g.c = reinterpret_cast<uintptr_t>(c), g.ldc = ldc;
    gemm(g);
  }
};

// The forward of a single step (a cell call: T = 1, no projection) of more rows than single_step_direct takes.
// Packing W_hh into panels, as a layer does once for all its steps, would here move every weight for one
// product (an LSTM cell at B=32 H=256 spent more time packing than multiplying), so the operands swap roles:
// h0^T [Hin, B] is what gets packed (B*Hin elements), and W_hh's rows, read where they lie, are the
// microkernel's broadcast rows. A tile comes out as [gate rows, batch lanes]; one W x W transpose per gate
// turns it into the unit lanes the cell's epilogue takes. The input projection (x given) goes the same way,
// x^T packed and W_ih's rows in place, into gx just before the epilogue reads it. Each thread owns a block of
// units (all G gates of them), so nothing is shared and no barrier is needed.
template <typename T, typename Cell>
void single_step_forward(const RecurrenceArgs& a, const CellInput<T, Cell>& input, Cell& cell, const T* h0,
                         T* h_prev_ws) {
  constexpr int W = Simd<T>::W, G = Cell::G, NV = kPlainNV, NC = NV * W;
  const int64_t B = a.B, H = a.H, I = a.I, GH = G * H;
  const T* w_hh = cptr<T>(a.w_hh);  // [G*H, H]
  ColumnPanels<T, NV> h0_t(Range{0, B}, H);  // h0^T: [H, B], batch columns in panels of NC
  h0_t.pack_columns(H, [&](int64_t b) { return h0 + b * H; });
  ColumnPanels<T, NV> x_t(Range{0, input ? B : 0}, input ? I : 0);  // x^T: [I, B], likewise
  if (input) x_t.pack_columns(I, [&](int64_t b) { return input.x + b * I; });
  const int nthreads = threads_for(B * GH * (H + (input ? I : 0)), (H + W - 1) / W, a.nthreads);
  ThreadTeam::instance().run(nthreads, [&](int tid, int nt, SpinBarrier&) {
    const Range units = split(H, tid, nt, W);
    if (h_prev_ws)  // the step's input state, columns of this thread's units
      for (int64_t b = 0; b < B; ++b)
        copy_row(h0 + b * H + units.begin, units.end - units.begin, h_prev_ws + b * H + units.begin);
    PanelBuffer<T> tile(G * W * NC);  // [gate row of this unit block, batch column of the panel]
    Vec<T> gate_acc[W][G];            // the tile transposed: [batch row][gate] vectors over the block's units
    for (int64_t u = units.begin; u < units.end; u += W) {
      const int cnt = static_cast<int>(std::min<int64_t>(W, units.end - u));
      // Tile row i is gate i / cnt of unit u + i % cnt; tile_gemm fills the tile from the weight rows `w`
      // [G*H, K] against the packed batch panel p of `panels`, and gate g of its columns [v*W, v*W + W) comes
      // out of transposed(g, v) as `block[r]` = gate g of units [u, u + W) for batch row v*W + r of the panel.
      auto tile_gemm = [&](const ColumnPanels<T, NV>& panels, int64_t p, const T* w, int64_t K) {
        const int nv = panels.width(p);
        panels.gemm(p, G * cnt, [&](int64_t i) { return w + ((i / cnt) * H + u + i % cnt) * K; },
                    [&](int64_t i, const Vec<T>* acc) {
                      for (int v = 0; v < nv; ++v) vstore(tile.data + i * NC + v * W, acc[v]);
                    });
      };
      auto transposed = [&](int g, int v, Vec<T>* block) {
        for (int i = 0; i < W; ++i) block[i] = i < cnt ? vload(tile.data + (g * cnt + i) * NC + v * W) : Vec<T>{};
        transpose_block<T>(block);
      };
      Vec<T> bias[G];
      if (input)
        for (int g = 0; g < G; ++g) {
          T lanes[W] = {};
          for (int j = 0; j < cnt; ++j) lanes[j] = input.bias(g * H + u + j);
          bias[g] = vload(lanes);
        }
      for (int64_t p = 0; p < h0_t.count; ++p) {
        const int nv = h0_t.width(p);
        const int64_t first = h0_t.first_col(p);
        if (input) {  // gx [B, G*H] of these units and rows
          tile_gemm(x_t, p, input.w_ih, I);
          for (int v = 0; v < nv; ++v) {
            const int rows = static_cast<int>(std::min<int64_t>(W, B - first - v * W));
            for (int g = 0; g < G; ++g) {
              Vec<T> block[W];
              transposed(g, v, block);
              for (int r = 0; r < rows; ++r) vstore(input.gx + (first + v * W + r) * GH + g * H + u, block[r] + bias[g], cnt);
            }
          }
        }
        tile_gemm(h0_t, p, w_hh, H);
        for (int v = 0; v < nv; ++v) {
          const int64_t b0 = first + v * W;
          const int rows = static_cast<int>(std::min<int64_t>(W, B - b0));
          for (int g = 0; g < G; ++g) {
            Vec<T> block[W];
            transposed(g, v, block);
            for (int r = 0; r < rows; ++r) gate_acc[r][g] = block[r];
          }
          for (int r = 0; r < rows; ++r)
            cell.forward_vec(b0 + r, b0 + r, -1, 0, u, cnt, h0 + (b0 + r) * H, gate_acc[r]);
        }
      }
    }
  });
}

// Forward of one layer-direction. The Cell provides:
//   G, NU                     gates per unit; unit vectors per forward panel
//   kFoldedHiddenBiasGates    gates whose b_hh adds to gx (cells' input projection, CellInput)
//   kPrefetchGx               whether to prefetch the next step's gx (where the epilogue cannot hide it)
//   forward_vec(n, b, prev, it, u, cnt, h_prev_row, gate_acc[G])   the pointwise epilogue of units [u, u+cnt)
//       of packed row n (batch row b at iteration it, state from packed row prev, which iteration it - 1
//       wrote, or -1 = initial); gate_acc = W_hh h_prev
//   proj_input_row(n)         (projection only) the row the projection GEMM reads
//   finish_row(b, last_row, last_it)   copies any extra final state (LSTM c_n) of row b, made at last_it
// Projection (P > 0): y[n, :P] = W_hr · proj_input_row(n), a second phase after a barrier.
template <typename T, typename Cell>
void run_forward(const RecurrenceArgs& a, Cell& cell) {
  constexpr int W = Simd<T>::W, G = Cell::G, NV = G * Cell::NU, MR = rows_for(NV);
  constexpr int NPC = UnitSplit<T, Cell>::kUnitsPerPanel;
  const Schedule s(a);
  const int64_t H = a.H, P = a.P, Hin = P > 0 ? P : H;
  const T* w_hh = cptr<T>(a.w_hh);      // [G*H, Hin]
  const T* w_hr = cptr<T>(a.w_hr);      // [P, H]
  const T* h0 = cptr<T>(a.h0);          // [B, Hin]
  T* y = mptr<T>(a.y);                  // [N, Hin], row stride y_stride
  T* h_prev_ws = mptr<T>(a.h_prev_ws);  // [N, Hin] or null
  const int64_t ys = a.y_stride;

  auto state_row = [&](int64_t t, int64_t b) -> const T* {
    const int64_t p = s.prev_row(t, b);
    return p >= 0 ? y + p * ys : h0 + b * Hin;
  };
  auto write_final_states = [&] {
    T* h_n = mptr<T>(a.h_n);  // [B, Hin]
    for (int64_t b = 0; b < a.B; ++b) {
      const int64_t last = s.last_row(b);
      copy_row(y + last * ys, Hin, h_n + b * Hin);
      cell.finish_row(b, last, s.last_iteration(b));
    }
  };
  const CellInput<T, Cell> input(a);
  const bool direct = single_step_direct(a, a.B * G * H * Hin, kDirectForwardMaxRows);
  const bool single_step = !direct && a.T == 1 && P == 0;  // (a cell's input projection, x given, is always one)
  if (direct) {  // each thread takes a block of units, all rows
    const int64_t bs = s.batch[0], off = s.offset[0];
    const int nthreads = threads_for(bs * G * H * (Hin + a.I), (H + W - 1) / W, a.nthreads);
    ThreadTeam::instance().run(nthreads, [&](int tid, int nt, SpinBarrier&) {
      const Range units = split(H, tid, nt, W);
      for (int64_t b = 0; b < bs; b += 2) {  // rows in pairs (dot_block_pair), the last one alone if odd
        const bool pair = b + 1 < bs;
        const T* hp = state_row(0, b);  // one step: rows b and b + 1 start from h0, Hin apart
        if (h_prev_ws && tid == 0) copy_row(hp, (pair ? 2 : 1) * Hin, h_prev_ws + (off + b) * Hin);
        for (int64_t u = units.begin; u < units.end; u += W) {
          const int cnt = static_cast<int>(std::min<int64_t>(W, units.end - u));
          if (input) input.project_units(b, pair, u, cnt);
          Vec<T> gate_acc[2][G];
          for (int g = 0; g < G; ++g) {
            const T* w = w_hh + (g * H + u) * Hin;
            if (pair) {
              Vec<T> sums[2];
              dot_block_pair(hp, Hin, w, Hin, cnt, Hin, sums);
              gate_acc[0][g] = sums[0], gate_acc[1][g] = sums[1];
            } else {
              gate_acc[0][g] = dot_block(hp, w, Hin, cnt, Hin);
            }
          }
          for (int i = 0; i < (pair ? 2 : 1); ++i)
            cell.forward_vec(off + b + i, b + i, -1, 0, u, cnt, hp + i * Hin, gate_acc[i]);
        }
      }
    });
    write_final_states();
    return;
  }
  if (single_step) {
    single_step_forward<T>(a, input, cell, h0, h_prev_ws);
    write_final_states();
    return;
  }
  const int64_t all_panels = UnitSplit<T, Cell>::panels(H);
  const int by_rows = row_split_threads(a, static_cast<int64_t>(sizeof(T)) * (all_panels * Hin * NV * W + P * H),
                                        kRowSplitForwardMaxBytes, a.B * G * H * Hin);
  const int nthreads = by_rows ? by_rows : threads_for(a.B * G * H * Hin, all_panels, a.nthreads);
  ThreadTeam::instance().run(nthreads, [&](int tid, int nt, SpinBarrier& barrier) {
    // Row split: every unit and column of the thread's own rows, no barriers. Unit split: the thread's share of
    // the units (and projection columns) of every row, a barrier after each phase of a step.
    const Range my_rows = by_rows ? row_block(s, tid, nt) : Range{0, a.B};
    UnitShare share;
    if (by_rows)
      share.add(0, all_panels, my_rows.begin, my_rows.end);
    else
      share = UnitSplit<T, Cell>::share(H, a.B, tid, nt);
    const Range units = UnitSplit<T, Cell>::units_of(H, share.panel_begin, share.panel_end);
    const Range proj_cols = by_rows ? Range{0, P} : split(P, tid, nt, W);
    // The state columns each thread copies into h_prev_ws, of its rows: any partition will do (the state is
    // complete after the step's barrier), so whole panels for the unit split.
    const Range state_cols = P > 0 ? proj_cols : by_rows ? Range{0, H} : UnitSplit<T, Cell>::units(H, tid, nt);
    auto sync = [&] {
      if (!by_rows) barrier.wait();
    };
    // Gate-interleaved panels of this thread's units: panel[k][g*NU + nu][lane] = W_hh[g*H + unit, k].
    const int64_t my_panels = share.panel_end - share.panel_begin;
    PanelBuffer<T> panels(my_panels * Hin * NV * W);
    for (int64_t p = 0; p < my_panels; ++p) {
      const int64_t u0 = units.begin + p * NPC;
      pack_panel_columns<T, NV>(panels.data + p * Hin * NV * W, Hin, 0, NV * W, [&](int64_t c) -> const T* {
        const int64_t g = c / NPC, unit = u0 + c % NPC;
        return unit < units.end ? w_hh + (g * H + unit) * Hin : nullptr;
      });
    }
    ColumnPanels<T, kPlainNV> proj(proj_cols, P > 0 ? H : 0);
    proj.pack_columns(P > 0 ? H : 0, [&](int64_t c) { return w_hr + c * H; });

    const T* gx = cptr<T>(a.gx);  // [N, G*H]
    // The next step's gx for this thread's units, asked for a step ahead: gx was written by the input
    // projection long before, so it comes from L3 or DRAM. Only where the epilogue is too short to hide that
    // latency (Cell::kPrefetchGx): RNN inference at T=100 B=64 H=256 4-5% faster, LSTM and GRU unchanged.
    auto prefetch_gx = [&](int64_t it) {
      if (!Cell::kPrefetchGx || it >= a.T) return;
      const int64_t t = s.time_at(it), off = s.offset[t];
      constexpr int64_t kLine = 64 / sizeof(T);
      for (const auto& seg : share) {
        const Range r = active_rows(s, seg.rows, t);
        const Range u = UnitSplit<T, Cell>::units_of(H, seg.panel_begin, seg.panel_end);
        for (int64_t b = r.begin; b < r.end; ++b)
          for (int g = 0; g < G; ++g) {
            const T* row = gx + (off + b) * G * H + g * H;
            for (int64_t c = u.begin; c < u.end; c += kLine) __builtin_prefetch(row + c, 0, 2);
          }
      }
    };
    for (int64_t it = 0; it < a.T; ++it) {
      const int64_t t = s.time_at(it), off = s.offset[t];
      const Range r = active_rows(s, my_rows, t);
      const int64_t r0 = r.begin, nrows = r.end - r.begin;
      if (nrows <= 0) continue;  // (row split) none of this thread's rows is active at this step
      prefetch_gx(it + 1);
      if (h_prev_ws)  // each thread copies the state columns it owns
        for (int64_t b = r0; b < r0 + nrows; ++b)
          copy_row(state_row(t, b) + state_cols.begin, state_cols.end - state_cols.begin,
                   h_prev_ws + (off + b) * Hin + state_cols.begin);
      for (const auto& seg : share) {
        const Range seg_rows = active_rows(s, seg.rows, t);
        auto rows = [&](int64_t i) { return state_row(t, seg_rows.begin + i); };
        for (int64_t p = seg.panel_begin; p < seg.panel_end; ++p) {
          const int64_t u0 = p * NPC, u_end = std::min(H, u0 + NPC);
          const T* panel = panels.data + (p - share.panel_begin) * Hin * NV * W;
          gemm_rows<T, MR, NV>(seg_rows.end - seg_rows.begin, Hin, panel, rows, [&](int64_t i, const Vec<T>* acc) {
            const int64_t b = seg_rows.begin + i;
            const int64_t prev = s.prev_row(t, b);
            const T* hp = state_row(t, b);
            for (int nu = 0; nu < Cell::NU; ++nu) {
              const int64_t u = u0 + nu * W;
              if (u >= u_end) break;
              Vec<T> gate_acc[G];
              for (int g = 0; g < G; ++g) gate_acc[g] = acc[g * Cell::NU + nu];
              cell.forward_vec(off + b, b, prev, it, u, static_cast<int>(std::min<int64_t>(W, u_end - u)), hp,
                               gate_acc);
            }
          });
        }
      }
      if (P > 0) {
        sync();
        auto proj_rows = [&](int64_t i) { return cell.proj_input_row(off + r0 + i); };
        for (int64_t p = 0; p < proj.count; ++p) {
          const int64_t c0 = proj.first_col(p);
          const int nv = proj.width(p);
          proj.gemm(p, nrows, proj_rows, [&](int64_t i, const Vec<T>* acc) {
            const int64_t b = r0 + i;
            for (int v = 0; v < nv; ++v) {
              const int64_t c = c0 + v * W;
              if (c >= proj_cols.end) break;
              vstore(y + (off + b) * ys + c, acc[v], static_cast<int>(std::min<int64_t>(W, proj_cols.end - c)));
            }
          });
        }
      }
      sync();
    }
  });
  write_final_states();
}

// Backward of one layer-direction, walking the steps in the opposite order of the forward.
// The Cell provides:
//   backward_vec(n, b, u, cnt, dh, next, prev, it)   (it: the iteration, for two-step rings) from dh = dL/d(output of units [u, u+cnt) at row n) (with a
//       projection: dL/d(pre-projection value)), writes the gate gradients of row n into d_gates (and d_gates_h)
//   dh_extra(n, u, cnt, dh_total)                the part of dL/dh_prev that skips the GEMM (GRU: dh * z)
// The driver writes dh_prev[n] = W_hh^T · d_gates_h[n] + extra into the dh_prev_ws ring (or dh0 at a row's
// first step).
//
// Without projection the thread that owns units J also owns columns J of the dh GEMM, so the pointwise math
// of the next step follows the GEMM on the same thread with no barrier between: one barrier per step.
template <typename T, typename Cell>
void run_backward(const RecurrenceArgs& a, Cell& cell) {
  constexpr int W = Simd<T>::W, G = Cell::G, NV = kPlainNV;
  const Schedule s(a);
  const int64_t H = a.H, P = a.P, Hin = P > 0 ? P : H, GH = G * H;
  const T* w_hh = cptr<T>(a.w_hh);        // [G*H, Hin]
  const T* w_hr = cptr<T>(a.w_hr);        // [P, H]
  const T* dy = cptr<T>(a.dy);            // [N, Hin]
  const T* dh_n = cptr<T>(a.dh_n);        // [B, Hin]
  T* dh0 = mptr<T>(a.dh0);                // [B, Hin]
  T* dh_prev_ws = mptr<T>(a.dh_prev_ws);  // [N, Hin]
  T* dh_total = mptr<T>(a.dh_total);      // [N, P] (projection only)
  const T* d_gates_h = cptr<T>(a.d_gates_h ? a.d_gates_h : a.d_gates);  // [N, G*H]

  // dh_prev_ws is a ring of two steps, [2, B, Hin]: what iteration `it` sends back is read at it - 1 only.
  auto ring_row = [&](int64_t it, int64_t b) { return dh_prev_ws + ((it & 1) * a.B + b) * Hin; };
  // dL/d(output h of (t, b)) at iteration it: what the consuming step (processed just before) sent back,
  // or dL/dh_n for a row's last step.
  auto carry_row = [&](int64_t it, int64_t b) -> const T* {
    return s.next_row(s.time_at(it), b) >= 0 ? ring_row(it + 1, b) : dh_n + b * Hin;
  };
  const CellInput<T, Cell> input(a);
  const bool direct = single_step_direct(a, a.B * GH * Hin, kDirectBackwardMaxRows);
  if (direct) {  // pointwise by blocks of units, then dh_prev (and dx) by blocks of columns
    const int64_t bs = s.batch[0], off = s.offset[0];
    const int nthreads = threads_for(bs * GH * (Hin + a.I), (H + W - 1) / W, a.nthreads);
    ThreadTeam::instance().run(nthreads, [&](int tid, int nt, SpinBarrier& barrier) {
      const Range units = split(H, tid, nt, W);
      for (int64_t b = 0; b < bs; ++b) {
        const T* dyr = dy + (off + b) * Hin;
        const T* dhn = dh_n + b * Hin;  // one step: every row's output is its final state
        for (int64_t u = units.begin; u < units.end; u += W) {
          const int cnt = static_cast<int>(std::min<int64_t>(W, units.end - u));
          cell.backward_vec(off + b, b, u, cnt, vload(dyr + u, cnt) + vload(dhn + u, cnt), -1, -1, 0);
        }
      }
      barrier.wait();
      const Range cols = split(Hin, tid, nt, W);
      for (int64_t b = 0; b < bs; ++b) {
        const int64_t n = off + b;
        T* out = dh0 + b * Hin;  // dh_prev = d_gates_h W_hh (+ the direct path)
        axpy_rows(d_gates_h + n * GH, GH, w_hh, Hin, cols, out);
        if (Cell::kHasDirectPath)
          for (int64_t k = cols.begin; k < cols.end; k += W) {
            const int cnt = static_cast<int>(std::min<int64_t>(W, cols.end - k));
            const Vec<T> dh = vload(dy + n * Hin + k, cnt) + vload(dh_n + b * Hin + k, cnt);
            vstore(out + k, vload(out + k, cnt) + cell.dh_extra(n, k, cnt, dh), cnt);
          }
      }
      if (input) {
        input.input_grad_columns(cptr<T>(a.d_gates), mptr<T>(a.dx), split(a.I, tid, nt, W));
        input.weight_grad_rows(cptr<T>(a.d_gates), d_gates_h, split(GH, tid, nt, 1));
      }
    });
    return;
  }
  const int64_t NC = NV * W;
  const bool inputs_in_place = input && a.T == 1 && input.in_place(Hin);
  const int by_rows = row_split_threads(
      a, static_cast<int64_t>(sizeof(T)) * ((Hin + NC - 1) / NC * NC * GH + (P > 0 ? (H + NC - 1) / NC * NC * P : 0)),
      kRowSplitBackwardMaxBytes, a.B * GH * Hin);
  const int nthreads = by_rows ? by_rows : threads_for(a.B * GH * Hin, UnitSplit<T, Cell>::panels(H), a.nthreads);
  ThreadTeam::instance().run(nthreads, [&](int tid, int nt, SpinBarrier& barrier) {
    // As in the forward: a row split owns every unit and column of its rows and needs no barrier. Without a
    // projection, a unit split takes the forward's balanced share of (unit panel, row) pairs, and the columns of
    // the dh GEMM are the units of each segment, for its rows.
    const Range my_rows = by_rows ? row_block(s, tid, nt) : Range{0, a.B};
    UnitShare share;
    if (by_rows || P > 0) {
      const int64_t all_panels = UnitSplit<T, Cell>::panels(H);
      const Range p = by_rows ? Range{0, all_panels} : split(all_panels, tid, nt, 1);
      share.add(p.begin, p.end, my_rows.begin, my_rows.end);
    } else {
      share = UnitSplit<T, Cell>::share(H, a.B, tid, nt);
    }
    const Range units = UnitSplit<T, Cell>::units_of(H, share.panel_begin, share.panel_end);
    // The dh GEMM's work: its columns for a range of rows. One item (all columns of the thread's rows, or with a
    // projection a split of P over every row), or one per segment of the share (its units, for its rows).
    const bool segmented = !by_rows && P == 0;
    const Range in_cols = by_rows ? Range{0, Hin} : P > 0 ? split(P, tid, nt, W) : Range{0, 0};
    const int dh_items = segmented ? share.count : 1;
    auto dh_cols = [&](int i) -> Range {
      if (i >= dh_items) return {0, 0};
      if (!segmented) return in_cols;
      return UnitSplit<T, Cell>::units_of(H, share.segment[i].panel_begin, share.segment[i].panel_end);
    };
    auto dh_rows = [&](int i) { return segmented ? share.segment[i].rows : my_rows; };
    auto sync = [&] {
      if (!by_rows) barrier.wait();
    };
    // The rows of this thread active at iteration it.
    auto rows_at = [&](int64_t it) { return active_rows(s, my_rows, s.time_at(it)); };
    // [g*H + unit][column] = W_hh as it lies, packed by rows: one set of panels per item.
    // A single step (a cell call) reads W_hh where it lies (see single_step_forward), where its rows are whole
    // vectors.
    const bool w_hh_in_place = a.T == 1 && Hin % W == 0;
    const int64_t max_k = w_hh_in_place ? 0 : GH;
    ColumnPanels<T, NV> dh_panels[3] = {{dh_cols(0), max_k}, {dh_cols(1), max_k}, {dh_cols(2), max_k}};
    for (auto& panels : dh_panels) {
      if (w_hh_in_place)
        panels.view_rows(GH, w_hh, Hin);
      else
        panels.pack_rows(GH, w_hh, Hin);
    }
    ColumnPanels<T, NV> dm_panels(P > 0 ? units : Range{0, 0}, P);
    dm_panels.pack_rows(P, w_hr, H);

    // Pointwise backward of iteration it for this thread's units (dh from dy + carry, or through W_hr^T).
    auto pointwise = [&](int64_t it) {
      const int64_t t = s.time_at(it), off = s.offset[t];
      if (P > 0) {
        const Range r = rows_at(it);
        auto rows = [&](int64_t i) -> const T* { return dh_total + (off + r.begin + i) * P; };
        for (int64_t p = 0; p < dm_panels.count; ++p) {
          const int64_t j0 = dm_panels.first_col(p);
          const int nv = dm_panels.width(p);
          dm_panels.gemm(p, r.end - r.begin, rows, [&](int64_t i, const Vec<T>* acc) {
            const int64_t b = r.begin + i;
            const int64_t next = s.next_row(t, b), prev = s.prev_row(t, b);
            for (int v = 0; v < nv; ++v) {
              const int64_t u = j0 + v * W;
              if (u >= units.end) break;
              cell.backward_vec(off + b, b, u, static_cast<int>(std::min<int64_t>(W, units.end - u)), acc[v], next,
                                prev, it);
            }
          });
        }
        return;
      }
      for (const auto& seg : share) {
        const Range r = active_rows(s, seg.rows, t);
        const Range seg_units = UnitSplit<T, Cell>::units_of(H, seg.panel_begin, seg.panel_end);
        for (int64_t b = r.begin; b < r.end; ++b) {
          const int64_t n = off + b, next = s.next_row(t, b), prev = s.prev_row(t, b);
          const T* carry = carry_row(it, b);
          for (int64_t u = seg_units.begin; u < seg_units.end; u += W) {
            const int cnt = static_cast<int>(std::min<int64_t>(W, seg_units.end - u));
            cell.backward_vec(n, b, u, cnt, vload(dy + n * Hin + u, cnt) + vload(carry + u, cnt), next, prev, it);
          }
        }
      }
    };
    // dh_total = dy + carry for this thread's projection columns (projection only).
    auto total_grad = [&](int64_t it) {
      const int64_t off = s.offset[s.time_at(it)];
      const Range r = rows_at(it);
      for (int64_t b = r.begin; b < r.end; ++b) {
        const T* carry = carry_row(it, b);
        for (int64_t p = in_cols.begin; p < in_cols.end; ++p)
          dh_total[(off + b) * P + p] = dy[(off + b) * P + p] + carry[p];
      }
    };
    // dh_prev of iteration it for this thread's columns.
    auto dh_gemm = [&](int64_t it) {
      const int64_t t = s.time_at(it), off = s.offset[t];
      for (int i = 0; i < dh_items; ++i) {
        const ColumnPanels<T, NV>& cols = dh_panels[i];
        const Range r = active_rows(s, dh_rows(i), t);
        auto rows = [&](int64_t j) { return d_gates_h + (off + r.begin + j) * GH; };
        for (int64_t p = 0; p < cols.count; ++p) {
          const int64_t c0 = cols.first_col(p);
          const int nv = cols.width(p);
          cols.gemm(p, r.end - r.begin, rows, [&](int64_t j, const Vec<T>* acc) {
            const int64_t b = r.begin + j;
            const int64_t n = off + b, prev = s.prev_row(t, b);
            T* out = prev >= 0 ? ring_row(it, b) : dh0 + b * Hin;
            const T* carry = Cell::kHasDirectPath ? carry_row(it, b) : nullptr;
            for (int v = 0; v < nv; ++v) {
              const int64_t c = c0 + v * W;
              if (c >= cols.cols.end) break;
              const int cnt = static_cast<int>(std::min<int64_t>(W, cols.cols.end - c));
              Vec<T> val = acc[v];
              if (Cell::kHasDirectPath)
                val += cell.dh_extra(n, c, cnt, vload(dy + n * Hin + c, cnt) + vload(carry + c, cnt));
              vstore(out + c, val, cnt);
            }
          });
        }
      }
    };

    const int64_t last = a.T - 1;
    if (P > 0) {
      total_grad(last);
      sync();
    }
    pointwise(last);
    sync();
    for (int64_t it = last; it >= 0; --it) {
      dh_gemm(it);
      if (it == 0) break;
      if (P > 0) {
        total_grad(it - 1);  // own columns, just written by dh_gemm on this thread
        sync();
      }
      pointwise(it - 1);
      sync();
    }
    if (inputs_in_place) {  // the gate gradients are complete since the barrier after the (only) pointwise step
      input.input_grad_in_place(cptr<T>(a.d_gates), mptr<T>(a.dx), split(a.I, tid, nt, W));
      input.weight_grads_in_place(cptr<T>(a.d_gates), d_gates_h, split(GH, tid, nt, W), Hin);
    }
  });
  if (input && !inputs_in_place) {
    input.input_grad(cptr<T>(a.d_gates), mptr<T>(a.dx), a.nthreads);
    input.weight_grads(cptr<T>(a.d_gates), d_gates_h, a.nthreads);
  }
}

}  // namespace PYRNN_ISA
}  // namespace pyrnn
