// The large non-recurrent GEMMs of a layer: the input projection of all steps (x W_ih^T + b), and in the
// backward dx = dG W_ih and the weight gradients dW = dG^T h. torch's BLAS (MKL) would do, but on this
// project's AMD machines MKL takes a slow generic path (~40% of the FMA peak); this GEMM reuses the
// recurrence's register-blocked microkernel and runs at the same efficiency.
//
// C[M, N] (+)= A[M, K] B[K, N] (+ bias[N]), A and B given by element strides (so transposed operands need no
// copy). Threads split the columns of C (or its rows, or for the deep weight gradients the depth K); each packs
// its B columns into K-blocked panels that stay in L2, and walks row blocks of A small enough to stay in L2 too.
#include "kernels_api.h"
#include "recurrence.h"

#include <algorithm>
#include <chrono>

namespace pyrnn {
namespace PYRNN_ISA {
namespace {

constexpr int64_t kBlockK = 256;  // depth of a packed panel block
constexpr int64_t kBlockM = 192;  // rows of A reused across all of a thread's panels
// Packed B a thread may hold per K block when A is row-major (dx = dG W_ih: K = G*H deep, N = I narrow).
constexpr int64_t kRowMajorBlockBytes = 512 << 10;

template <typename T>
struct GemmArgs {
  int64_t M, N, K;
  const T* a;
  int64_t sa_m, sa_k;
  const T* b;
  int64_t sb_k, sb_n;
  T* c;
  int64_t ldc;
  bool accumulate;
  const T* bias;
};

// One tile of MR rows starting at m0 against one packed panel (k-block kb, columns c0..): C tile update.
template <typename T, int MR, int NV>
inline void gemm_tile(const GemmArgs<T>& g, int64_t m0, int64_t k0, int64_t kn, const T* panel, int64_t c0,
                      int64_t c_end, bool first_k) {
  constexpr int W = Simd<T>::W;
  Vec<T> acc[MR][NV];
  if (g.sa_m == 1) {
    microkernel<T, MR, NV>(ColumnBlock<T>{g.a + m0 + k0 * g.sa_k, g.sa_k}, kn, panel, acc);
  } else {
    const T* rows[MR];
    for (int r = 0; r < MR; ++r) rows[r] = g.a + (m0 + r) * g.sa_m + k0 * g.sa_k;
    if (g.sa_k == 1) {
      microkernel<T, MR, NV>(RowPointers<T, MR>{rows}, kn, panel, acc);
    } else {  // general strides: gather the tile's A block first
      Scratch<T> tmp(MR * kn);
      const T* trows[MR];
      for (int r = 0; r < MR; ++r) {
        for (int64_t k = 0; k < kn; ++k) tmp[r * kn + k] = rows[r][k * g.sa_k];
        trows[r] = tmp.data + r * kn;
      }
      microkernel<T, MR, NV>(RowPointers<T, MR>{trows}, kn, panel, acc);
    }
  }
  for (int r = 0; r < MR; ++r) {
    T* crow = g.c + (m0 + r) * g.ldc;
    for (int v = 0; v < NV; ++v) {
      const int64_t c = c0 + v * W;
      if (c >= c_end) break;
      const int cnt = static_cast<int>(std::min<int64_t>(W, c_end - c));
      Vec<T> val = acc[r][v];
      if (!first_k || g.accumulate) val += vload(crow + c, cnt);
      if (first_k && g.bias) val += vload(g.bias + c, cnt);
      vstore(crow + c, val, cnt);
    }
  }
}

template <typename T, int MR, int NV>
inline void gemm_tail(const GemmArgs<T>& g, int64_t m0, int64_t left, int64_t k0, int64_t kn, const T* panel,
                      int64_t c0, int64_t c_end, bool first_k) {
  if constexpr (MR > 0) {
    if (left == MR) return gemm_tile<T, MR, NV>(g, m0, k0, kn, panel, c0, c_end, first_k);
    gemm_tail<T, MR - 1, NV>(g, m0, left, k0, kn, panel, c0, c_end, first_k);
  }
}

// Rows [m_block, m_end) against one packed panel NV vectors wide.
template <typename T, int NV>
inline void gemm_block(const GemmArgs<T>& g, int64_t m_block, int64_t m_end, int64_t k0, int64_t kn, const T* panel,
                       int64_t c0, int64_t c_end, bool first_k) {
  constexpr int MR = rows_for(NV);
  int64_t m0 = m_block;
  for (; m0 + MR <= m_end; m0 += MR) gemm_tile<T, MR, NV>(g, m0, k0, kn, panel, c0, c_end, first_k);
  if (m0 < m_end) gemm_tail<T, MR - 1, NV>(g, m0, m_end - m0, k0, kn, panel, c0, c_end, first_k);
}

// Threads split either the columns of C (each packs only its part of B, which stays in its L2) or its rows
// (each packs all of B). Columns, unless that leaves the threads' shares uneven where rows would not: panels
// are NC columns wide, so N = 200 on two threads gives one thread 128 columns and the other 72, and N = 800 13
// panels (7 vs 6), while the rows split evenly. Measured on 2 threads (GFLOP/s, columns -> rows, 3 runs):
// M700 N200 K800 361-364 -> 392-411, M700 N800 K200 406-418 -> 446-459, dG^T h at M800 N200 K700 331-353 ->
// 377-417, M700 N600 K200 336 -> 411; with even panels (N = 256, 512) the column split stays as fast or faster
// (M1024 N256 K6400 427-441 vs 417-420). (The first sessions measured the opposite for uneven panels, with
// element-wise packing, which made packing all of B per thread costly.) Rows need the whole B block of kBlockK
// rows in each thread's L2, so a wide B stays split by columns.
template <typename T>
bool prefer_column_split(const GemmArgs<T>& g, int64_t col_panels, int64_t n) {
  constexpr int W = Simd<T>::W, NC = kPlainNV * W;
  constexpr int64_t kRowSplitMaxBlockBytes = 768 << 10;
  if (n < 2) return true;
  if (col_panels < 2 * n) return false;  // too few panels to go round
  if (std::min(kBlockK, g.K) * g.N * static_cast<int64_t>(sizeof(T)) > kRowSplitMaxBlockBytes) return true;
  const int64_t vectors = (g.N + W - 1) / W;
  int64_t most_vectors = 0, most_rows = 0;
  for (int t = 0; t < n; ++t) {
    const Range panels = split(col_panels, t, static_cast<int>(n), 1);
    const int64_t first = std::min(g.N, panels.begin * NC), last = std::min(g.N, panels.end * NC);
    most_vectors = std::max(most_vectors, (last - first + W - 1) / W);
    const Range rows = split(g.M, t, static_cast<int>(n), rows_for(kPlainNV));
    most_rows = std::max(most_rows, rows.end - rows.begin);
  }
  const double column_imbalance = static_cast<double>(most_vectors) * n / vectors;
  const double row_imbalance = static_cast<double>(most_rows) * n / g.M;
  return column_imbalance <= row_imbalance * 1.02;
}

// Depth of the K blocks for a thread packing `cols` columns of B. Every block after the first reads and writes
// the thread's C tiles again, so a deep, narrow product (dx: K = 4H = 1024, N = 256) runs faster in fewer,
// deeper blocks, as long as the thread's packed block stays in its L2: measured in paired rounds against
// 256-deep blocks, dx at M6400 K1024 N256 1.13x (1 thread) / 1.17x (2 threads), K768 (GRU) 1.09x / 1.18x,
// M700 K800 N200 1.07x (2 threads). Not where A is read transposed in place (dW = dG^T h: every k of a row
// tile is its own cache line, and deeper blocks keep more of them in flight): 0.85-1.03x there, so 256.
template <typename T>
int64_t block_depth(const GemmArgs<T>& g, int64_t cols) {
  if (g.sa_k != 1 || g.K <= kBlockK) return kBlockK;
  const int64_t deepest = std::max<int64_t>(kBlockK, kRowMajorBlockBytes / (cols * static_cast<int64_t>(sizeof(T))));
  const int64_t blocks = (g.K + deepest - 1) / deepest;
  return ((g.K + blocks - 1) / blocks + 7) / 8 * 8;  // equal blocks
}

// One thread's share of C: rows x column panels, over depth [k_begin, k_end) (the whole K unless the depth is
// split), written to g.c (g.accumulate / g.bias as the caller's, or a scratch product without either).
template <typename T>
void gemm_share(const GemmArgs<T>& g, Range rows, Range panels, int64_t k_begin, int64_t k_end) {
  constexpr int W = Simd<T>::W, NV = kPlainNV, NC = NV * W;
  if (panels.begin >= panels.end || rows.begin >= rows.end || k_begin >= k_end) return;
  const Range cols{panels.begin * NC, std::min(g.N, panels.end * NC)};
  const int64_t depth = block_depth(g, (panels.end - panels.begin) * NC);
  // One panel buffer per thread for all K blocks (a fresh 256 KiB buffer per block, mmap'd and faulted in
  // each time, halved the speed of the weight-gradient GEMMs, whose K is all the steps).
  ColumnPanels<T, NV> packed(cols, std::min(depth, k_end - k_begin));
  for (int64_t k0 = k_begin; k0 < k_end; k0 += depth) {
    const int64_t kn = std::min(depth, k_end - k0);
    const bool first_k = k0 == k_begin;
    if (g.sb_n == 1)
      packed.pack_rows(kn, g.b + k0 * g.sb_k, g.sb_k);
    else if (g.sb_k == 1)
      packed.pack_columns(kn, [&](int64_t c) { return g.b + k0 + c * g.sb_n; });
    else
      packed.pack(kn, [&](int64_t k, int64_t c) { return g.b[(k0 + k) * g.sb_k + c * g.sb_n]; });
    for (int64_t m_block = rows.begin; m_block < rows.end; m_block += kBlockM) {
      const int64_t m_end = std::min(rows.end, m_block + kBlockM);
      for (int64_t p = 0; p < packed.count; ++p) {
        const T* panel = packed.panel(p);
        const int64_t c0 = packed.first_col(p);
        switch (packed.width(p)) {
          case 1: gemm_block<T, 1>(g, m_block, m_end, k0, kn, panel, c0, cols.end, first_k); break;
          case 2: gemm_block<T, 2>(g, m_block, m_end, k0, kn, panel, c0, cols.end, first_k); break;
          case 3: gemm_block<T, 3>(g, m_block, m_end, k0, kn, panel, c0, cols.end, first_k); break;
          default: gemm_block<T, NV>(g, m_block, m_end, k0, kn, panel, c0, cols.end, first_k); break;
        }
      }
    }
  }
}

// A thread's buffer for its partial product in the depth split, kept between calls up to kKeptPartialBytes
// (a fresh MiB per call would be page-faulted in every time). Not std::vector: see recurrence.h on out-of-line
// std templates shared between the ISA builds.
constexpr int64_t kKeptPartialBytes = 16 << 20;

template <typename T>
struct PartialProduct {
  T* data = nullptr;
  int64_t size = 0;
  T* reserve(int64_t n) {
    if (n > size) {
      delete[] data;
      data = new T[n];
      size = n;
    }
    return data;
  }
  void trim() {
    if (size * static_cast<int64_t>(sizeof(T)) <= kKeptPartialBytes) return;
    delete[] data;
    data = nullptr;
    size = 0;
  }
  ~PartialProduct() { delete[] data; }
};

template <typename T>
PartialProduct<T>& partial_product() {
  thread_local PartialProduct<T> buffer;
  return buffer;
}

// Deep, small products (the weight gradients dW = dG^T h, K = all T*B steps, C just [G*H, I]) split their depth
// between threads rather than C's columns: with the columns split every thread streams all of A (dG, 6-26 MiB
// from memory, each k of a row tile on its own line) for its half of C; with the depth split each reads half
// of A and half of B, and the partial products (one C-sized buffer per extra thread) are added at the end.
// Measured on 2 threads, K = 6400, N = 256, depth / columns: M = 768 (GRU, H = 256) 1.07-1.22x in every run;
// M = 256 and 1024 1.10-1.21x while the neighbour was busy and 0.92-1.03x while it was quiet (the column split
// moved between 297 and 407 GFLOP/s with the neighbour, the depth split stayed at 340-392). Whole training steps
// at T=100 B=64 (LSTM / GRU / RNN): 1.06 / 1.06 / 1.07x busy, 1.00 / 1.02 / 1.00x quiet (the split switched at
// run time in one process). Each thread keeps at least 4 K-blocks of depth.
template <typename T>
bool prefer_depth_split(const GemmArgs<T>& g, int64_t n) {
  return n >= 2 && g.K >= n * 4 * kBlockK && g.K >= 4 * std::max(g.M, g.N);
}

template <typename T>
void gemm_impl(const GemmArgs<T>& g, int nthreads) {
  constexpr int W = Simd<T>::W, NV = kPlainNV, NC = NV * W;
  if (g.M <= 0 || g.N <= 0) return;
  if (g.K <= 0) {  // C = bias (or unchanged when accumulating)
    for (int64_t m = 0; m < g.M; ++m)
      for (int64_t n = 0; n < g.N; ++n)
        if (!g.accumulate) g.c[m * g.ldc + n] = g.bias ? g.bias[n] : T(0);
    return;
  }
  const int64_t col_panels = (g.N + NC - 1) / NC;
  const int64_t macs = g.M * g.N * g.K;
  int64_t n = nthreads < 1 ? 1 : nthreads;  // threads worth their start-up: ~256k multiply-adds each
  if (n > macs / (1 << 18)) n = macs / (1 << 18) < 1 ? 1 : macs / (1 << 18);
  if (prefer_depth_split(g, n)) {
    // Deep and small (the weight gradients, K = all steps): each thread multiplies its own slice of K into all
    // of C (the first thread into C itself, the others into scratch), then the threads add the scratch
    // products into C, each over its own rows. Every thread reads only its part of A and B.
    Scratch<T*> partial(n);
    ThreadTeam::instance().run(static_cast<int>(n), [&](int tid, int nt, SpinBarrier& barrier) {
      const Range depth = split(g.K, tid, nt, 8);
      GemmArgs<T> gt = g;
      if (tid > 0) {
        T* scratch = partial_product<T>().reserve(g.M * g.N);  // [M, N]
        gt.c = partial[tid] = scratch;
        gt.ldc = g.N;
        gt.accumulate = false;
        gt.bias = nullptr;
        if (depth.begin >= depth.end)
          for (int64_t i = 0; i < g.M * g.N; ++i) scratch[i] = T(0);
      }
      gemm_share(gt, Range{0, g.M}, Range{0, col_panels}, depth.begin, depth.end);
      barrier.wait();
      const Range rows = split(g.M, tid, nt, 1);
      for (int64_t m = rows.begin; m < rows.end; ++m) {
        T* crow = g.c + m * g.ldc;
        for (int s = 1; s < nt; ++s) {
          const T* prow = partial[s] + m * g.N;
          for (int64_t c = 0; c < g.N; c += W) {
            const int cnt = static_cast<int>(std::min<int64_t>(W, g.N - c));
            vstore(crow + c, vload(crow + c, cnt) + vload(prow + c, cnt), cnt);
          }
        }
      }
      barrier.wait();  // the partial products live until every thread has added its rows of them
      if (tid > 0) partial_product<T>().trim();
    });
    return;
  }
  if (n > col_panels) n = col_panels;
  const bool split_cols = prefer_column_split<T>(g, col_panels, n);
  ThreadTeam::instance().run(static_cast<int>(n), [&](int tid, int nt, SpinBarrier&) {
    const Range panels = split_cols ? split(col_panels, tid, nt, 1) : Range{0, col_panels};
    const Range rows = split_cols ? Range{0, g.M} : split(g.M, tid, nt, rows_for(NV));
    gemm_share(g, rows, panels, 0, g.K);
  });
}

}  // namespace

void gemm(const GemmSpec& s) {
  if (s.dtype == static_cast<int>(DType::kFloat64)) {
    const GemmArgs<double> g{s.M, s.N, s.K, cptr<double>(s.a), s.sa_m, s.sa_k, cptr<double>(s.b), s.sb_k, s.sb_n,
                             mptr<double>(s.c), s.ldc, s.accumulate, cptr<double>(s.bias)};
    gemm_impl(g, s.nthreads);
  } else {
    const GemmArgs<float> g{s.M, s.N, s.K, cptr<float>(s.a), s.sa_m, s.sa_k, cptr<float>(s.b), s.sb_k, s.sb_n,
                            mptr<float>(s.c), s.ldc, s.accumulate, cptr<float>(s.bias)};
    gemm_impl(g, s.nthreads);
  }
}

// The machine's FMA throughput with this ISA's vectors: 12 independent FMA chains per thread (enough to
// cover the FMA latency on two pipes), all threads at once. The benchmark report divides by this.
double fma_peak_gflops(int nthreads, int64_t iterations) {
  using V = Vec<float>;
  constexpr int W = Simd<float>::W, kChains = 12;
  std::atomic<int64_t> sink{0};
  const auto start = std::chrono::steady_clock::now();
  int used = 1;
  ThreadTeam::instance().run(nthreads, [&](int, int nt, SpinBarrier&) {
    used = nt;
    V acc[kChains];
    for (int c = 0; c < kChains; ++c) acc[c] = vbroadcast(float(c));
    const V mul = vbroadcast(0.999999f), add = vbroadcast(1e-7f);
    for (int64_t i = 0; i < iterations; ++i) {
#pragma GCC unroll 12
      for (int c = 0; c < kChains; ++c) acc[c] = acc[c] * mul + add;
    }
    float total = 0;
    for (int c = 0; c < kChains; ++c)
      for (int l = 0; l < W; ++l) total += acc[c][l];
    sink.fetch_add(static_cast<int64_t>(total));
  });
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return used * static_cast<double>(iterations) * kChains * W * 2 / secs / 1e9;
}

}  // namespace PYRNN_ISA
}  // namespace pyrnn
