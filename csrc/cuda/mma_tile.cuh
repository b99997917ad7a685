// Tensor-core dot products for the weight-resident kernels (resident.cuh): out[r][o] = sum_k x[r][k] * W[o][k]
// with mma.sync m16n8k8 in TF32 (10-bit mantissa operands, float32 accumulation), where the user allowed TF32
// for float32 recurrences (torch.nn's cuDNN layers use it by default) or for half-type inputs.
//
// Why: at B >= 16 the float32 FMA tile (WarpTile) runs the dot products at about half the FMA peak (forward
// H=1024 B=16: 4.6 us a step against a 2.1 us FMA bound, BENCHMARKS.md) while cuDNN runs TF32 tensor cores.
//
// Shape of the work, the same as WarpTile's: the block's O outputs (gate rows forward, units backward) in NT
// tiles of 8 (the MMA's N), the reduction split over the 8 warps (warp w: k in [w * KS * 8, (w + 1) * KS * 8),
// KS steps of the MMA's K = 8), W held in registers as B fragments for the whole launch, the staged state (or
// dG) rows the A operand, read from shared memory 16 rows at a time (8 for kHalf tiles, whose MMA rows 8..15
// are zeros: where 16 staged rows of a long reduction would not fit in shared memory). Each warp adds its
// partial sums into out with shared-memory atomics (the caller zeroes out first: Layout.wk = 8).
//
// The per-lane fragment code is __host__ __device__ so that the tests run it without a GPU (emulate_dot:
// the same code for each of the 32 lanes, mma.sync replaced by its definition).
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define PYRNN_HD __host__ __device__
// Before the __host__ __device__ templates that call a functor: the kernels pass device lambdas, the host
// emulation host ones, and each instantiation runs only on its own side.
#define PYRNN_HD_FUNCTOR _Pragma("nv_exec_check_disable")
#else
#define PYRNN_HD
#define PYRNN_HD_FUNCTOR
#endif
// Full unrolling on the device, so that the fragment arrays are indexed by constants and stay in registers.
#if defined(__CUDA_ARCH__)
#define PYRNN_UNROLL _Pragma("unroll")
#else
#define PYRNN_UNROLL
#endif

namespace pyrnn {
namespace cuda {
namespace resident {

// Fragment layouts of mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 (PTX ISA), lane = 4 * group + tig:
// A [16 rows, 8 k] in 4 registers, B [8 k, 8 n] in 2, C/D [16 rows, 8 n] in 4.
struct MmaFragments {
  static PYRNN_HD int a_row(int lane, int i) { return (lane >> 2) + 8 * (i & 1); }
  static PYRNN_HD int a_k(int lane, int i) { return (lane & 3) + 4 * (i >> 1); }
  static PYRNN_HD int b_k(int lane, int i) { return (lane & 3) + 4 * i; }
  static PYRNN_HD int b_n(int lane) { return lane >> 2; }
  static PYRNN_HD int c_row(int lane, int i) { return (lane >> 2) + 8 * (i >> 1); }
  static PYRNN_HD int c_n(int lane, int i) { return 2 * (lane & 3) + (i & 1); }
};

// float -> TF32 bits, to nearest with ties away from zero (cvt.rna.tf32.f32); inf and NaN pass through.
PYRNN_HD inline uint32_t to_tf32(float x) {
#if defined(__CUDA_ARCH__)
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
  return r;
#else
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  if ((u & 0x7f800000u) == 0x7f800000u) return u;  // inf, NaN (masking a NaN's low payload could make it inf)
  return (u + 0x1000u) & 0xffffe000u;  // half a TF32 ulp on the magnitude, then truncate: ties go away from 0
#endif
}

#if defined(__CUDACC__)
__device__ __forceinline__ void mma_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#endif

constexpr int kMmaWarps = 8;       // warps of a block (resident::kThreads / 32)
constexpr int kMmaMaxChains = 4;   // independent accumulators per output tile: MMAs in flight (latency ~20 cycles)

// Staged row length for KS steps per warp: 8 warps x KS x 8, plus 4 so that the A-fragment loads (8 rows x 4
// consecutive k per MMA) fall in 32 distinct banks (ld = 4 mod 32).
PYRNN_HD constexpr int mma_row_length(int ks) { return kMmaWarps * ks * 8 + 4; }

template <int NT, int KS, bool kHalf>
struct MmaTile {
  static constexpr int kRows = kHalf ? 8 : 16;  // rows per MMA tile: the staging quantum
  static constexpr int kChains = NT >= kMmaMaxChains ? 1 : kMmaMaxChains / NT;
  uint32_t b[KS][NT][2];  // W as B fragments: b[s][n][i] = W[n*8 + b_n][k0 + s*8 + b_k(i)]
  int k0 = 0, lane = 0;

  // weight(o, k): W[o][k], or 0 outside the matrix; once per launch.
  PYRNN_HD_FUNCTOR
  template <typename Weight>
  PYRNN_HD void load_lane(int warp, int lane_in_warp, Weight weight) {
    lane = lane_in_warp;
    k0 = warp * KS * 8;
    PYRNN_UNROLL
    for (int s = 0; s < KS; ++s)
      PYRNN_UNROLL
      for (int n = 0; n < NT; ++n)
        PYRNN_UNROLL
        for (int i = 0; i < 2; ++i)
          b[s][n][i] = to_tf32(weight(n * 8 + MmaFragments::b_n(lane), k0 + s * 8 + MmaFragments::b_k(lane, i)));
  }

  // The A fragment of rows [r0, r0 + 16) at step s: xs [rows padded to kRows, ld], zero beyond the reduction.
  PYRNN_HD void a_fragment(const float* xs, int ld, int r0, int s, uint32_t (&a)[4]) const {
    PYRNN_UNROLL
    for (int i = 0; i < 4; ++i) {
      const int row = MmaFragments::a_row(lane, i);
      a[i] = (kHalf && row >= 8) ? 0u : to_tf32(xs[(r0 + row) * ld + k0 + s * 8 + MmaFragments::a_k(lane, i)]);
    }
  }

  // Adds this lane's part of the tile's sums into out [rows, O] (add(pointer, value)).
  PYRNN_HD_FUNCTOR
  template <typename Add>
  PYRNN_HD void store(const float (&acc)[NT][4], int r0, int rows, int O, float* out, Add add) const {
    PYRNN_UNROLL
    for (int n = 0; n < NT; ++n)
      PYRNN_UNROLL
      for (int i = 0; i < 4; ++i) {
        const int row = MmaFragments::c_row(lane, i), o = n * 8 + MmaFragments::c_n(lane, i);
        if (!(kHalf && row >= 8) && r0 + row < rows && o < O) add(out + (r0 + row) * O + o, acc[n][i]);
      }
  }

#if defined(__CUDACC__)
  template <typename Weight>
  __device__ void load(int /*wk: always all 8 warps*/, Weight weight) {
    load_lane(threadIdx.x / 32, threadIdx.x % 32, weight);
  }

  // The WarpTile interface: out [rows, O] in shared memory, zeroed beforehand (every warp adds its share).
  __device__ void dot(const float* xs, int ld, int rows, int O, bool /*single_k_group*/, float* out) const {
    for (int r0 = 0; r0 < rows; r0 += kRows) {
      float acc[kChains][NT][4];
#pragma unroll
      for (int c = 0; c < kChains; ++c)
#pragma unroll
        for (int n = 0; n < NT; ++n)
#pragma unroll
          for (int i = 0; i < 4; ++i) acc[c][n][i] = 0.f;
#pragma unroll
      for (int s = 0; s < KS; ++s) {
        uint32_t a[4];
        a_fragment(xs, ld, r0, s, a);
#pragma unroll
        for (int n = 0; n < NT; ++n) mma_tf32(acc[s % kChains][n], a, b[s][n]);
      }
#pragma unroll
      for (int c = 1; c < kChains; ++c)
#pragma unroll
        for (int n = 0; n < NT; ++n)
#pragma unroll
          for (int i = 0; i < 4; ++i) acc[0][n][i] += acc[c][n][i];
      store(acc[0], r0, rows, O, out, [](float* p, float v) { atomicAdd(p, v); });
    }
  }
#endif
};

// The tests' view of one block's dot products without a GPU: every warp and lane of MmaTile's fragment code in
// turn, each mma.sync computed from its definition (D = A B + C on the 16 x 8 x 8 tile the lanes' fragments
// hold). out [rows, O] is overwritten; xs as dot() reads it.
template <int NT, int KS, bool kHalf, typename Weight>
void emulate_dot(Weight weight, const float* xs, int ld, int rows, int O, float* out) {
  using Tile = MmaTile<NT, KS, kHalf>;
  auto from_tf32 = [](uint32_t bits) {
    float f;
    std::memcpy(&f, &bits, sizeof(f));
    return f;
  };
  for (int e = 0; e < rows * O; ++e) out[e] = 0.f;
  for (int warp = 0; warp < kMmaWarps; ++warp) {
    static Tile lanes[32];  // large (KS x NT x 2 words each): off the stack
    for (int l = 0; l < 32; ++l) lanes[l].load_lane(warp, l, weight);
    for (int r0 = 0; r0 < rows; r0 += Tile::kRows) {
      float acc[32][NT][4] = {};
      for (int s = 0; s < KS; ++s) {
        float A[16][8], B[8][8 * NT];
        for (int l = 0; l < 32; ++l) {
          uint32_t a[4];
          lanes[l].a_fragment(xs, ld, r0, s, a);
          for (int i = 0; i < 4; ++i) A[MmaFragments::a_row(l, i)][MmaFragments::a_k(l, i)] = from_tf32(a[i]);
          for (int n = 0; n < NT; ++n)
            for (int i = 0; i < 2; ++i)
              B[MmaFragments::b_k(l, i)][n * 8 + MmaFragments::b_n(l)] = from_tf32(lanes[l].b[s][n][i]);
        }
        for (int l = 0; l < 32; ++l)
          for (int n = 0; n < NT; ++n)
            for (int i = 0; i < 4; ++i) {
              const int row = MmaFragments::c_row(l, i), col = n * 8 + MmaFragments::c_n(l, i);
              float sum = 0.f;
              for (int k = 0; k < 8; ++k) sum += A[row][k] * B[k][col];
              acc[l][n][i] += sum;
            }
      }
      for (int l = 0; l < 32; ++l) lanes[l].store(acc[l], r0, rows, O, out, [](float* p, float v) { *p += v; });
    }
  }
}

}  // namespace resident
}  // namespace cuda
}  // namespace pyrnn
