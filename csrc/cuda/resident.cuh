// Weight-resident persistent kernels (float32, no projection): the whole sequence of one layer-direction in
// one cooperative launch, each block's slice of W_hh held in registers for all steps.
//
// Block k owns the hidden units [k*upb, (k+1)*upb) (upb = ceil(H / blocks), at most one block per SM):
// - forward, per step: its G*upb gate rows of W_hh times every state row (dot products over H; the rows are
//   staged from L2 into shared memory once per block), the pointwise cell math of its units, then a
//   grid-wide barrier so the next step sees all of h.
// - backward, per step: the pointwise gradients of its units (dG into the [N, G*H] buffer), a grid-wide
//   barrier, then dh_prev of its units = dG_h[b, :] . W_hh[:, units] (dot products over G*H): its W_hh
//   columns are resident too, so the carry of a unit never leaves its block.
// One barrier per step either way; before it, the next step's pointwise inputs are prefetched into L1. The
// Cell structs are the ones the row-block kernels use (lstm.cu, gru.cu, rnn.cu). Host-side plan: plan();
// the tests check its invariants through resident_plan.cu. Measured on an H100: BENCHMARKS.md.
//
// The dot products: 8 warps; warp w serves outputs [og*TO, og*TO + TO) (og = w / wk) over the reduction
// indices k = kg*32*KE + lane + 32*e (kg = w % wk, e < KE), with W[o][k] for those in registers, and a
// shuffle reduction across the warp (plus a shared-memory atomic across the wk warps of an output group).
// Where the plan allows TF32 and there are enough rows, MmaTile (mma_tile.cuh) instead: tensor-core MMAs on the
// same register-resident slice.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "mma_tile.cuh"
#include "recurrence.cuh"

namespace pyrnn {
namespace cuda {
namespace resident {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kRowChunk = 32;    // state rows whose dot products are staged in shared memory at once
constexpr int kMaxOutputs = 64;  // outputs (gate rows or units) per block
static_assert(kWarps == kMmaWarps, "MmaTile splits the reduction over all the block's warps");

// Grid-wide barrier over co-resident blocks (cooperative launch): counter starts at 0, target grows by
// gridDim.x per barrier. The block's writes before it are ordered by __syncthreads() before thread 0's
// release-add, and the acquire-load that sees the target orders every block's writes before what follows
// (cumulativity): no full fences (measured on an H100: 1.02 us per barrier of 132 blocks against 1.30 us with
// __threadfence() and a volatile spin).
__device__ __forceinline__ void grid_barrier(unsigned* counter, unsigned target) {
  __syncthreads();
  if (threadIdx.x == 0) {
    asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(counter) : "memory");
    unsigned seen;
    do {
      asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(seen) : "l"(counter) : "memory");
    } while (seen < target);
  }
  __syncthreads();
}

// Where the phases of a step go (profiling, off unless the host passes a buffer): thread 0 of block 0 adds
// the clock64() cycles of each phase and writes them, the step count and the elapsed globaltimer ns at the end.
constexpr int kPhases = 8;
struct PhaseClock {
  unsigned long long* out;
  long long last = 0, start_ns = 0;
  long long acc[kPhases] = {};
  __device__ explicit PhaseClock(unsigned long long* buffer)
      : out(blockIdx.x == 0 && threadIdx.x == 0 ? buffer : nullptr) {
    if (out) {
      last = clock64();
      asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start_ns));
    }
  }
  template <int kPhase>
  __device__ __forceinline__ void mark() {
    if (out) {
      const long long now = clock64();
      acc[kPhase] += now - last;
      last = now;
    }
  }
  __device__ void flush(int64_t steps) {
    if (!out) return;
    long long end_ns;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(end_ns));
#pragma unroll
    for (int i = 0; i < kPhases; ++i) out[i] = acc[i];
    out[kPhases] = steps;
    out[kPhases + 1] = end_ns - start_ns;
  }
};

// One warp's share of out[r][o] = sum_k x[r][k] * W[o][k] for kRowsPerPass rows at a time, W held in
// registers and the rows staged in shared memory (one L2 read per block instead of one per warp).
constexpr int kRowsPerPass = 4;  // independent accumulator chains per weight register: hides LDS latency

template <int TO, int KE>
struct WarpTile {
  float w[TO][KE];
  int o0, k0, lane;

  // weight(o, k) gives W[o][k] or 0 outside the matrix; called once per launch.
  template <typename Weight>
  __device__ void load(int wk, Weight weight) {
    const int warp = threadIdx.x / 32;
    lane = threadIdx.x % 32;
    o0 = (warp / wk) * TO;
    k0 = (warp % wk) * 32 * KE;
#pragma unroll
    for (int i = 0; i < TO; ++i)
#pragma unroll
      for (int e = 0; e < KE; ++e) w[i][e] = weight(o0 + i, k0 + lane + 32 * e);
  }

  // xs: [rows rounded up to kRowsPerPass, ld] in shared memory, zero-padded to ld = 32 * KE * wk columns and
  // to whole passes of rows (so the loads need no bounds checks); out: [rows, O] in shared memory, zeroed
  // beforehand where several warps share an output (atomics), else plain stores.
  __device__ void dot(const float* xs, int ld, int rows, int O, bool single_k_group, float* out) const {
    const int full = rows / kRowsPerPass * kRowsPerPass;
    for (int r0 = 0; r0 < full; r0 += kRowsPerPass) pass<kRowsPerPass>(xs, ld, r0, O, single_k_group, out);
    // the last rows one at a time: at B=1 a 4-row pass spent 3/4 of its FMAs on padding (H=1024: ~0.4 us a step)
    for (int r0 = full; r0 < rows; ++r0) pass<1>(xs, ld, r0, O, single_k_group, out);
  }

  // out[r0 + r][o0 + i] for r < R: the dot products, then a reduction across the warp.
  template <int R>
  __device__ __forceinline__ void pass(const float* xs, int ld, int r0, int O, bool single_k_group, float* out) const {
    float acc[R][TO];
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int i = 0; i < TO; ++i) acc[r][i] = 0.f;
    const float* x0 = xs + r0 * ld + k0 + lane;
#pragma unroll
    for (int e = 0; e < KE; ++e) {
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const float x = x0[r * ld + 32 * e];
#pragma unroll
        for (int i = 0; i < TO; ++i) acc[r][i] = fmaf(x, w[i][e], acc[r][i]);
      }
    }
    // Transposing reduction of the V = R x TO sums across the warp: each halving stage sends half of the
    // values a lane still holds to its partner and keeps the other half, so V - V/32 shuffles in all
    // instead of 5 V. Afterwards a lane holds max(1, V/32) complete sums (index base + m).
    constexpr int V = R * TO;
    float* vals = &acc[0][0];
    int held = V, base = 0, off = 16;
#pragma unroll
    for (int stage = 0; stage < 5; ++stage, off /= 2) {
      if (held == 1) break;
      held /= 2;
      const bool upper = lane & off;
#pragma unroll
      for (int m = 0; m < (V > 1 ? V / 2 : 1); ++m) {
        if (m >= held) break;
        const float send = upper ? vals[m] : vals[m + held];
        const float keep = upper ? vals[m + held] : vals[m];
        vals[m] = keep + __shfl_xor_sync(0xffffffffu, send, off);
      }
      base += upper ? held : 0;
    }
    for (; off > 0; off /= 2) vals[0] += __shfl_xor_sync(0xffffffffu, vals[0], off);  // V < 32: lanes agree
    const bool writer = V >= 32 || (lane & (32 / V - 1)) == 0;
    if (writer) {
#pragma unroll
      for (int m = 0; m < (V >= 32 ? V / 32 : 1); ++m) {
        const int idx = base + m, r = idx / TO, i = idx % TO;
        if (o0 + i < O) {  // rows r0 + r < the chunk's rows by construction (whole passes, then single rows)
          float* dst = out + (r0 + r) * O + o0 + i;
          if (single_k_group) {
            *dst = vals[m];
          } else {
            atomicAdd(dst, vals[m]);
          }
        }
      }
    }
  }
};

// Copies rows [K] (row r at src(r), global memory written by other blocks of this launch: read through L2)
// into xs [rows_padded, ld] in shared memory, zero-filling columns [K, ld) and rows [rows, rows_padded): the
// whole block cooperating, kStageUnroll rows' loads in flight per thread (the copy is latency-bound), 16-byte
// loads where K and the row allow. ld is a multiple of 4.
constexpr int kStageUnroll = 8;

template <typename Src>
__device__ __forceinline__ void stage_rows(float* xs, int rows, int rows_padded, int K, int ld, Src src) {
  const int ld4 = ld / 4;
  const int per_row = ld4 < kThreads ? ld4 : kThreads;  // threads along a row; the others take further rows
  const int row_step = kThreads / per_row;
  const int c_first = threadIdx.x % per_row, r_first = threadIdx.x / per_row;
  if (r_first >= row_step) return;
  const bool vec = K % 4 == 0;
  for (int c = c_first; c < ld4; c += per_row) {
    const int k = 4 * c;
    for (int r0 = r_first; r0 < rows_padded; r0 += kStageUnroll * row_step) {
      float4 v[kStageUnroll];
#pragma unroll
      for (int q = 0; q < kStageUnroll; ++q) {
        const int r = r0 + q * row_step;
        v[q] = make_float4(0.f, 0.f, 0.f, 0.f);
        if (r < rows && k < K) {
          const float* row = src(r) + k;
          if (vec && (reinterpret_cast<uintptr_t>(row) & 15) == 0) {
            v[q] = __ldcg(reinterpret_cast<const float4*>(row));
          } else {
            v[q].x = __ldcg(row);
            if (k + 1 < K) v[q].y = __ldcg(row + 1);
            if (k + 2 < K) v[q].z = __ldcg(row + 2);
            if (k + 3 < K) v[q].w = __ldcg(row + 3);
          }
        }
      }
#pragma unroll
      for (int q = 0; q < kStageUnroll; ++q) {
        const int r = r0 + q * row_step;
        if (r < rows_padded) reinterpret_cast<float4*>(xs)[r * ld4 + c] = v[q];
      }
    }
  }
}

// Prefetches what the pointwise phase of step `it` reads from the layer's inputs (gx; forward workspace and
// dy in the backward) for this block's units, so its latency hides behind the barrier and the dot products.
template <typename Cell>
__device__ void prefetch_step(const Cell& cell, const RecurrenceArgs& a, const int64_t* batch_sizes,
                              const int64_t* offsets, int64_t it, int u0, int upb, bool backward) {
  if (it < 0 || it >= a.T) return;
  const auto [t, bs, off] = step_rows(a, batch_sizes, offsets, it);
  const float* dy = reinterpret_cast<const float*>(a.dy);
  for (int64_t e = threadIdx.x; e < bs * upb; e += kThreads) {
    const int64_t n = off + e / upb;
    const int j = u0 + static_cast<int>(e % upb);
    if (j >= a.H) continue;
    cell.prefetch(n, j, backward);
    if (backward) prefetch_l1(dy + n * a.H + j);
  }
}

// Forward, where the step's gx fits in shared memory (Layout::gx_staged): copies what the pointwise phase of
// step `it` reads of gx, g_in [bs, G, upb] for this block's units, with asynchronous copies issued before the
// grid barrier and awaited after it (cp_async_wait_all), so the pointwise phase reads shared memory only.
__device__ __forceinline__ void cp_async4(float* smem, const float* gmem) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(dst), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;" ::: "memory"); }

template <int G>
__device__ void stage_gx(const RecurrenceArgs& a, const int64_t* batch_sizes, const int64_t* offsets, int64_t it,
                         int u0, int upb, float* gx_s) {
  if (it < 0 || it >= a.T) return;
  const auto [t, bs, off] = step_rows(a, batch_sizes, offsets, it);
  const float* gx = reinterpret_cast<const float*>(a.gx);
  for (int64_t e = threadIdx.x; e < bs * G * upb; e += kThreads) {
    const int u = static_cast<int>(e % upb), g = static_cast<int>(e / upb % G);
    const int64_t b = e / (static_cast<int64_t>(upb) * G), j = u0 + u;
    if (j < a.H) cp_async4(gx_s + e, gx + (off + b) * G * a.H + g * a.H + j);
  }
  asm volatile("cp.async.commit_group;" ::: "memory");
}

struct Layout {
  int upb;    // hidden units per block
  int wk;     // warps sharing one output group's reduction
  int chunk;  // state (forward) or dG (backward) rows staged in shared memory at once (whole passes)
  int ld;     // staged row length, >= the reduction length: 32 * KE * wk (WarpTile), mma_row_length(KS) (MmaTile)
  unsigned long long* phases;  // PhaseClock's output, or null (the default)
  int gx_staged;               // forward: every step's rows in one chunk and their gx [B, G, upb] in shared memory
  int quantum;                 // staged rows are zero-padded to a multiple of this: the tile's rows per pass
};

__host__ __device__ __forceinline__ int round_up(int rows, int quantum) {
  return (rows + quantum - 1) / quantum * quantum;
}

// sums[r][o] = src(r)[:K] . W[o][:K] for the chunk's rows (r < rows, o < O): stage the rows, zero the sums
// where warps add into them, the dot products; the block in step before and after.
template <int kStagePhase, typename Tile, typename Src>
__device__ __forceinline__ void staged_dot(const Tile& tile, const Layout& lay, float* xs, int rows, int K, int O,
                                           float* sums, PhaseClock& clock, Src src) {
  stage_rows(xs, rows, round_up(rows, lay.quantum), K, lay.ld, src);
  if (lay.wk > 1)
    for (int e = threadIdx.x; e < rows * O; e += kThreads) sums[e] = 0.f;
  __syncthreads();
  clock.mark<kStagePhase>();
  tile.dot(xs, lay.ld, rows, O, lay.wk == 1, sums);
  __syncthreads();
  clock.mark<kStagePhase + 1>();
}

// Forward. a: as the row-block kernels (gx [N, G*H], w_hh [G*H, H], h0 [B, H], y [N, H], workspace).
// Tile: WarpTile<TO, KE> or MmaTile<NT, KS, kHalf>.
template <typename Cell, typename Tile>
__global__ void __launch_bounds__(kThreads, 1)
    forward_kernel(RecurrenceArgs a, const int64_t* batch_sizes, const int64_t* offsets, unsigned* counter,
                   Layout lay) {
  __shared__ float sums_s[kRowChunk * kMaxOutputs];  // [rows of the chunk, G*upb]
  extern __shared__ float dyn_s[];
  constexpr int G = Cell::G;
  const int H = static_cast<int>(a.H), upb = lay.upb, O = G * upb;
  const int u0 = blockIdx.x * upb;
  // cells with a cell state: c_s [B, upb], this block's units' c (it never leaves the block); where gx is
  // staged, gx_s [B, G, upb]; then xs [lay.chunk, lay.ld], the chunk's staged state rows, 16-byte aligned for
  // the float4 staging
  float* c_s = dyn_s;
  float* gx_s = dyn_s + (Cell::kHasCellState ? (a.B * upb + 3) & ~int64_t(3) : 0);
  float* xs = gx_s + (lay.gx_staged ? (a.B * G * upb + 3) & ~int64_t(3) : 0);
  const float* gx = reinterpret_cast<const float*>(a.gx);
  const float* w_hh = reinterpret_cast<const float*>(a.w_hh);
  const float* h0 = reinterpret_cast<const float*>(a.h0);
  const float* y = reinterpret_cast<const float*>(a.y);
  float* h_prev_ws = reinterpret_cast<float*>(a.h_prev_ws);
  Cell cell(a);
  if (lay.gx_staged) {
    stage_gx<G>(a, batch_sizes, offsets, 0, u0, upb, gx_s);
  } else {
    prefetch_step(cell, a, batch_sizes, offsets, 0, u0, upb, false);
  }
  Tile tile;
  // output o = g*upb + u is gate row g*H + u0 + u
  tile.load(lay.wk, [&](int o, int k) {
    const int g = o / upb, u = o % upb;
    return (o < O && u0 + u < H && k < H) ? w_hh[static_cast<int64_t>(g * H + u0 + u) * H + k] : 0.f;
  });
  PhaseClock clock(lay.phases);  // phases: step info, stage, dot, pointwise, prefetch, barrier
  for (int64_t it = 0; it < a.T; ++it) {
    const StepInfo s = step_info(a, batch_sizes, offsets, it);
    if (lay.gx_staged) cp_async_wait_all();  // this thread's copies; staged_dot's __syncthreads publishes all
    clock.mark<0>();
    for (int64_t r0 = 0; r0 < s.bs; r0 += lay.chunk) {
      const int rows = static_cast<int>(s.bs - r0 < lay.chunk ? s.bs - r0 : lay.chunk);
      staged_dot<1>(tile, lay, xs, rows, H, O, sums_s, clock, [&](int r) {
        const int64_t b = r0 + r;
        return b < s.n_prev ? y + (s.off_prev + b) * H : h0 + b * H;  // [H]
      });
      for (int e = threadIdx.x; e < rows * upb; e += kThreads) {
        const int r = e / upb, u = e % upb, j = u0 + u;
        if (j >= H) continue;
        const int64_t b = r0 + r, n = s.off + b;
        const bool from_prev = b < s.n_prev;
        float sums[G], g_in[G];
#pragma unroll
        for (int g = 0; g < G; ++g) sums[g] = sums_s[r * O + g * upb + u];
        if (lay.gx_staged) {  // one chunk: b = r
#pragma unroll
          for (int g = 0; g < G; ++g) g_in[g] = gx_s[(b * G + g) * upb + u];
        } else {
          load_gx<G>(gx, H, n, j, g_in);
        }
        const float h_prev = xs[r * lay.ld + j];
        if (h_prev_ws) h_prev_ws[n * H + j] = h_prev;
        if constexpr (Cell::kHasCellState) {
          const int64_t slot = b * upb + u;
          c_s[slot] = cell.forward_state(n, j, sums, g_in, from_prev ? c_s[slot] : cell.c_initial(b, j));
        } else {
          cell.forward(n, b, from_prev ? s.off_prev + b : -1, j, sums, g_in, h_prev);
        }
      }
      __syncthreads();
      clock.mark<3>();
    }
    if (lay.gx_staged) {  // gx_s is free: the pointwise phase ended with __syncthreads()
      stage_gx<G>(a, batch_sizes, offsets, it + 1, u0, upb, gx_s);
    } else {
      prefetch_step(cell, a, batch_sizes, offsets, it + 1, u0, upb, false);
    }
    clock.mark<4>();
    grid_barrier(counter, static_cast<unsigned>(it + 1) * gridDim.x);
    clock.mark<5>();
  }
  clock.flush(a.T);
}

// Backward. Dynamic shared memory: carry_s [B, upb] (dL/dh of the next step, this block's units); second_s
// [B, upb]: for cells with a direct path (GRU: dh_prev += z * dh) that term, for cells with a cell state
// (LSTM) the dL/dc carry; then the staged dG rows [lay.chunk, lay.ld].
template <typename Cell, typename Tile>
__global__ void __launch_bounds__(kThreads, 1)
    backward_kernel(RecurrenceArgs a, const int64_t* batch_sizes, const int64_t* offsets, unsigned* counter,
                    Layout lay) {
  __shared__ float sums_s[kRowChunk * kMaxOutputs];  // [rows of the chunk, upb]
  extern __shared__ float dyn_s[];
  constexpr int G = Cell::G;
  const int H = static_cast<int>(a.H), GH = G * H, upb = lay.upb;
  const int64_t B = a.B;
  const int u0 = blockIdx.x * upb;
  float* carry_s = dyn_s;
  float* second_s = dyn_s + B * upb;  // direct_s or dc_s
  float* xs = dyn_s + ((2 * B * upb + 3) & ~int64_t(3));  // 16-byte aligned for the float4 staging
  const float* w_hh = reinterpret_cast<const float*>(a.w_hh);
  const float* dy = reinterpret_cast<const float*>(a.dy);
  const float* dh_n = reinterpret_cast<const float*>(a.dh_n);
  const float* d_src = reinterpret_cast<const float*>(a.d_gates_h ? a.d_gates_h : a.d_gates);  // [N, G*H]
  float* dh0 = reinterpret_cast<float*>(a.dh0);
  float* a_dc0 = reinterpret_cast<float*>(a.dc0);
  Cell cell(a);
  prefetch_step(cell, a, batch_sizes, offsets, a.T - 1, u0, upb, true);
  Tile tile;
  // output o = unit u0 + o; reduction index k = gate row
  tile.load(lay.wk, [&](int o, int k) {
    return (o < upb && u0 + o < H && k < GH) ? w_hh[static_cast<int64_t>(k) * H + u0 + o] : 0.f;
  });
  PhaseClock clock(lay.phases);  // phases: step info, pointwise, prefetch, barrier, stage, dot, carry
  for (int64_t it = a.T - 1; it >= 0; --it) {
    const StepInfo s = step_info(a, batch_sizes, offsets, it);
    clock.mark<0>();
    for (int64_t e = threadIdx.x; e < s.bs * upb; e += kThreads) {
      const int64_t b = e / upb;
      const int u = static_cast<int>(e % upb), j = u0 + u;
      if (j >= H) continue;
      const int64_t n = s.off + b;
      const bool has_next = b < s.n_next;
      const float dh = dy[n * H + j] + (has_next ? carry_s[e] : dh_n[b * H + j]);
      const int64_t prev = b < s.n_prev ? s.off_prev + b : -1;
      if constexpr (Cell::kHasCellState) {
        const float dc_before = cell.backward_state(n, b, prev, j, dh, has_next ? second_s[e] : cell.dc_final(b, j));
        if (prev >= 0) {
          second_s[e] = dc_before;
        } else {
          a_dc0[b * H + j] = dc_before;
        }
      } else {
        cell.backward(n, b, prev, has_next, j, dh, it);
      }
      if (Cell::kHasDirectPath) second_s[e] = dh * cell.direct(n, j);
    }
    clock.mark<1>();
    prefetch_step(cell, a, batch_sizes, offsets, it - 1, u0, upb, true);
    clock.mark<2>();
    grid_barrier(counter, static_cast<unsigned>(a.T - it) * gridDim.x);  // dG of step it, all units
    clock.mark<3>();
    for (int64_t r0 = 0; r0 < s.bs; r0 += lay.chunk) {
      const int rows = static_cast<int>(s.bs - r0 < lay.chunk ? s.bs - r0 : lay.chunk);
      staged_dot<4>(tile, lay, xs, rows, GH, upb, sums_s, clock, [&](int r) { return d_src + (s.off + r0 + r) * GH; });
      for (int e = threadIdx.x; e < rows * upb; e += kThreads) {
        const int r = e / upb, u = e % upb, j = u0 + u;
        if (j >= H) continue;
        const int64_t b = r0 + r, slot = b * upb + u;
        const float v = sums_s[e] + (Cell::kHasDirectPath ? second_s[slot] : 0.f);
        if (b < s.n_prev) {
          carry_s[slot] = v;
        } else {
          dh0[b * H + j] = v;
        }
      }
      __syncthreads();
      clock.mark<6>();
    }
  }
  clock.flush(a.T);
}

// Tiles instantiated: TO in {1, 2, 4, 8, 16} outputs per warp, KE in {4, 8, 16, 32} reduction indices per lane,
// TO * KE <= 128 registers of weights per thread.
constexpr int kTileTO[] = {1, 2, 4, 8, 16};
constexpr int kTileKE[] = {4, 8, 16, 32};

struct Plan {
  bool ok = false;
  int blocks = 0, to = 0, ke = 0;  // WarpTile<to, ke> where mma == 0
  int mma = 0, nt = 0, ks = 0;     // MmaTile<nt, ks, mma == 2>: 1: 16-row tiles, 2: 8-row tiles; 0: none
  Layout lay{};
  size_t dyn_smem = 0;
};

// MMA tiles instantiated (launch): forward nt = 1..4 (O <= 32: LSTM up to 8 units a block) with ks = 4, 8, 16
// (H <= 1024); backward nt = 1 (upb <= 8) with ks = 4..64 (G*H <= 4096), in 8-row tiles only at ks = 64, where
// 16 staged rows of 16 KiB would not fit in shared memory.
constexpr int kMmaMinRows = 8;  // fewer rows: the FMA tile's one-row passes waste less than a 16-row MMA

inline bool choose_mma(int O, int64_t K, bool backward, int& nt, int& ks) {
  nt = (O + 7) / 8;
  const int64_t steps = (K + kMmaWarps * 8 - 1) / (kMmaWarps * 8);  // MMA k-steps per warp
  ks = 4;
  while (ks < steps) ks *= 2;
  return backward ? nt == 1 && ks <= 64 : nt <= 4 && ks <= 16;
}

// The tile for O outputs per block over K reduction indices. Per pass of kRowsPerPass rows a warp issues
// about TO*KE/4 FMA cycles per scheduler and KE loads plus TO shuffles on the shared-memory pipe: take the
// cheapest by the larger of the two, then the fewest warps per output group (fewer atomics).
inline bool choose_tile(int O, int64_t K, int& to, int& ke, int& wk) {
  double best = 1e30;
  for (int w : {1, 2, 4, 8}) {
    const int groups = kWarps / w;
    int t = 0, k = 0;
    for (int c : kTileTO)
      if (c * groups >= O) { t = c; break; }
    for (int c : kTileKE)
      if (static_cast<int64_t>(c) * 32 * w >= K) { k = c; break; }
    if (t == 0 || k == 0 || t * k > 128) continue;
    const double cost = std::max(t * k / 4.0, static_cast<double>(k + t));
    if (cost < best) {
      best = cost;
      to = t, ke = k, wk = w;
    }
  }
  return best < 1e30;
}

// Whether the resident kernels take this layer, and how: one block per SM at most. tf32: the dot products may
// run in TF32 on tensor cores (MmaTile) where there are at least kMmaMinRows rows and a tile fits.
inline Plan plan(int G, const RecurrenceArgs& a, bool backward, int sms, size_t max_dyn_smem, bool tf32 = false) {
  Plan p;
  if (a.dtype != static_cast<int>(DType::kFloat32) || a.P > 0 || a.H <= 0 || a.H > 4096 || sms <= 0) return p;
  const int H = static_cast<int>(a.H);
  const int upb = (H + sms - 1) / sms;
  p.blocks = (H + upb - 1) / upb;
  p.lay.upb = upb;
  const int O = backward ? upb : G * upb;
  const int64_t K = backward ? static_cast<int64_t>(G) * H : H;
  if (O > kMaxOutputs) return p;
  // per-unit state in shared memory: backward dh carry + (direct term or dc carry); forward c (LSTM: G == 4)
  const size_t carried = backward ? 2 : (G == 4 ? 1 : 0);
  const size_t carries = sizeof(float) * ((carried * static_cast<size_t>(a.B) * upb + 3) & ~size_t(3));
  if (carries >= max_dyn_smem) return p;
  const size_t budget = (max_dyn_smem - carries) * 2 / 3;  // a third of the SM's shared memory stays L1
  if (tf32 && a.B >= kMmaMinRows && choose_mma(O, K, backward, p.nt, p.ks)) {
    const size_t mma_row_bytes = sizeof(float) * mma_row_length(p.ks);
    if (16 * mma_row_bytes <= budget) {
      p.mma = 1;
    } else if (backward && p.ks == 64 && 8 * mma_row_bytes <= budget) {
      p.mma = 2;
    }
  }
  if (p.mma) {
    p.lay.wk = kWarps;  // every warp adds its share of the reduction into the zeroed sums
    p.lay.ld = mma_row_length(p.ks);
    p.lay.quantum = p.mma == 1 ? 16 : 8;
  } else {
    p.nt = p.ks = 0;
    if (!choose_tile(O, K, p.to, p.ke, p.lay.wk)) return p;
    p.lay.ld = 32 * p.ke * p.lay.wk;
    p.lay.quantum = kRowsPerPass;
  }
  const int quantum = p.lay.quantum;
  const size_t row_bytes = sizeof(float) * p.lay.ld;
  if (carries + quantum * row_bytes > max_dyn_smem) return p;
  // forward: gx of a step in shared memory where all its rows fit in one chunk and it takes at most 16 KiB
  const size_t gx_bytes = sizeof(float) * ((static_cast<size_t>(a.B) * G * upb + 3) & ~size_t(3));
  const int staged_rows = std::max(quantum, round_up(static_cast<int>(std::min<int64_t>(a.B, kRowChunk)), quantum));
  if (!backward && a.B <= kRowChunk && gx_bytes <= 16384 &&
      carries + gx_bytes + static_cast<size_t>(staged_rows) * row_bytes <= max_dyn_smem * 2 / 3) {
    p.lay.gx_staged = 1;
    p.lay.chunk = staged_rows;
    p.dyn_smem = carries + gx_bytes + row_bytes * p.lay.chunk;
    p.ok = true;
    return p;
  }
  // as many staged rows as fit (whole passes, up to kRowChunk), keeping a third of the SM's shared memory as L1
  const size_t fit = std::max<size_t>(quantum, budget / row_bytes / quantum * quantum);
  p.lay.chunk = static_cast<int>(std::min<size_t>(kRowChunk, fit));
  p.dyn_smem = carries + row_bytes * p.lay.chunk;
  p.ok = p.dyn_smem <= max_dyn_smem;
  return p;
}

// plan() for the current device: its SM count, cooperative launch support and shared memory.
inline Plan plan_for_device(int G, const RecurrenceArgs& a, bool backward, bool tf32) {
  int dev = 0, sms = 0, coop = 0, smem = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess || !coop) {
    return Plan{};
  }
  const size_t static_smem = sizeof(float) * kRowChunk * kMaxOutputs;
  return plan(G, a, backward, sms, smem > static_cast<int>(static_smem) ? smem - static_smem : 0, tf32);
}

// kForward / kBackward: which of the two kernels this tile is instantiated for.
template <typename Cell, typename Tile, bool kForward = true, bool kBackward = true>
cudaError_t launch_tile(bool backward, RecurrenceArgs a, const int64_t* bs, const int64_t* off, unsigned* counter,
                        unsigned long long* phases, const Plan& p, cudaStream_t stream) {
  void* fn = nullptr;
  if constexpr (kBackward) {
    if (backward) fn = reinterpret_cast<void*>(backward_kernel<Cell, Tile>);
  }
  if constexpr (kForward) {
    if (!backward) fn = reinterpret_cast<void*>(forward_kernel<Cell, Tile>);
  }
  if (!fn) return cudaErrorInvalidConfiguration;
  {
    cudaError_t err = cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(p.dyn_smem));
    if (err != cudaSuccess) return err;
  }
  Layout lay = p.lay;
  lay.phases = phases;
  void* args[] = {&a, &bs, &off, &counter, &lay};
  return cudaLaunchCooperativeKernel(fn, dim3(p.blocks), dim3(kThreads), args, p.dyn_smem, stream);
}

// cudaErrorCooperativeLaunchTooLarge: the blocks cannot all be resident at once here (a partitioned or
// shared device): the caller falls back to the row-block kernels. Launch errors are not sticky; clear it.
inline bool too_large(cudaError_t err) {
  if (err != cudaErrorCooperativeLaunchTooLarge) return false;
  cudaGetLastError();
  return true;
}

// phases: null, or kPhases + 2 words for PhaseClock (profiling).
template <typename Cell>
cudaError_t launch(bool backward, const RecurrenceArgs& a, const int64_t* bs, const int64_t* off, unsigned* counter,
                   unsigned long long* phases, const Plan& p, cudaStream_t stream) {
  cudaError_t err = cudaMemsetAsync(counter, 0, sizeof(unsigned), stream);
  if (err != cudaSuccess || a.B == 0 || a.T == 0) return err;
  if (p.mma) {
#define PYRNN_MMA(NT_, KS_, HALF_, FWD_, BWD_)                                                            \
  if (p.nt == NT_ && p.ks == KS_ && (p.mma == 2) == HALF_)                                               \
    return launch_tile<Cell, MmaTile<NT_, KS_, HALF_>, FWD_, BWD_>(backward, a, bs, off, counter, phases, p, stream);
#define PYRNN_MMA_FORWARD(NT_) \
  PYRNN_MMA(NT_, 4, false, true, false) PYRNN_MMA(NT_, 8, false, true, false) PYRNN_MMA(NT_, 16, false, true, false)
    if (backward) {
      PYRNN_MMA(1, 4, false, false, true) PYRNN_MMA(1, 8, false, false, true) PYRNN_MMA(1, 16, false, false, true)
      PYRNN_MMA(1, 32, false, false, true) PYRNN_MMA(1, 64, false, false, true) PYRNN_MMA(1, 64, true, false, true)
    } else {
      PYRNN_MMA_FORWARD(1) PYRNN_MMA_FORWARD(2) PYRNN_MMA_FORWARD(3) PYRNN_MMA_FORWARD(4)
    }
#undef PYRNN_MMA_FORWARD
#undef PYRNN_MMA
    return cudaErrorInvalidConfiguration;
  }
#define PYRNN_TILE(TO_, KE_) \
  if (p.to == TO_ && p.ke == KE_)  \
    return launch_tile<Cell, WarpTile<TO_, KE_>>(backward, a, bs, off, counter, phases, p, stream);
#define PYRNN_TILES(TO_) PYRNN_TILE(TO_, 4) PYRNN_TILE(TO_, 8) PYRNN_TILE(TO_, 16)
  PYRNN_TILES(1) PYRNN_TILE(1, 32) PYRNN_TILES(2) PYRNN_TILE(2, 32) PYRNN_TILES(4) PYRNN_TILE(4, 32) PYRNN_TILES(8)
  PYRNN_TILE(16, 4) PYRNN_TILE(16, 8)
#undef PYRNN_TILES
#undef PYRNN_TILE
  return cudaErrorInvalidConfiguration;
}

}  // namespace resident
}  // namespace cuda
}  // namespace pyrnn
