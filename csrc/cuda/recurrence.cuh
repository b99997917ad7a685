// CUDA time-loop kernels shared by every cell: forward and backward of one layer-direction, persistent
// (the whole sequence in one launch). Same packed layout and arguments as the CPU kernels
// (csrc/recurrence_args.h); no torch headers, the stream arrives as an integer.
//
// Each thread block owns kRows batch rows and all hidden units of them, so no block waits for another:
// only __syncthreads() between phases and steps, hence no cooperative launch and no deadlock whatever the
// grid. The state rows of the block are staged in shared memory each step; weights stream from L2
// (W_hh^T [Hin, G*H] for the forward so consecutive threads read consecutive units).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../recurrence_args.h"

namespace pyrnn {
namespace cuda {

constexpr int kRows = 4;       // batch rows per block
constexpr int kThreads = 256;  // threads per block

template <typename T>
__device__ __forceinline__ T sigmoid(T x) {
  return T(1) / (T(1) + exp(-x));
}

// Pulls a line into this SM's L1 ahead of its use (inputs the kernel never writes).
__device__ __forceinline__ void prefetch_l1(const void* p) { asm volatile("prefetch.global.L1 [%0];" ::"l"(p)); }

// The G input projections of (row n, unit j): gx [N, G*H], gate g at column g*H + j.
template <int G, typename T>
__device__ __forceinline__ void load_gx(const T* gx, int64_t H, int64_t n, int64_t j, T* g_in) {
#pragma unroll
  for (int g = 0; g < G; ++g) g_in[g] = gx[n * G * H + g * H + j];
}

struct StepInfo {
  int64_t t, bs, off, n_prev, off_prev, n_next;
};

// Time index, rows and first packed row of step `it` alone (what the look-ahead of the next step needs).
struct StepRows {
  int64_t t, bs, off;
};
__device__ __forceinline__ StepRows step_rows(const RecurrenceArgs& a, const int64_t* batch_sizes,
                                              const int64_t* offsets, int64_t it) {
  const int64_t t = a.reverse ? a.T - 1 - it : it;
  return batch_sizes ? StepRows{t, batch_sizes[t], offsets[t]} : StepRows{t, a.B, t * a.B};
}

// Step `it` of the schedule (batch_sizes, offsets: int64 [T] on the device), or, where batch_sizes is null, of
// a padded batch (every step all a.B rows): computed, so no step waits on a load of the schedule.
__device__ __forceinline__ StepInfo step_info(const RecurrenceArgs& a, const int64_t* batch_sizes,
                                              const int64_t* offsets, int64_t it) {
  const int64_t T = a.T;
  StepInfo s;
  s.t = a.reverse ? T - 1 - it : it;
  const int64_t tp = a.reverse ? s.t + 1 : s.t - 1, tn = a.reverse ? s.t - 1 : s.t + 1;
  const bool prev_ok = tp >= 0 && tp < T, next_ok = tn >= 0 && tn < T;
  if (!batch_sizes) {
    s.bs = a.B;
    s.off = s.t * a.B;
    s.n_prev = prev_ok ? a.B : 0;
    s.off_prev = prev_ok ? tp * a.B : 0;
    s.n_next = next_ok ? a.B : 0;
    return s;
  }
  s.bs = batch_sizes[s.t];
  s.off = offsets[s.t];
  s.n_prev = prev_ok ? min(batch_sizes[tp], s.bs) : 0;
  s.off_prev = prev_ok ? offsets[tp] : 0;
  s.n_next = next_ok ? min(batch_sizes[tn], s.bs) : 0;
  return s;
}

// Forward. Cell::G gates; Cell::forward(args, n, b, prev_row_or_-1, j, gate_sums[G], h_prev_j) writes the
// unit's outputs. shared: kRows x Hin state rows.
template <typename T, typename Cell>
__global__ void forward_kernel(RecurrenceArgs a, const T* w_hh_t, const int64_t* batch_sizes, const int64_t* offsets) {
  extern __shared__ unsigned char smem_raw[];
  T* h_rows = reinterpret_cast<T*>(smem_raw);  // [kRows, Hin]
  const int64_t H = a.H, P = a.P, Hin = P > 0 ? P : H, GH = Cell::G * H;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kRows;
  T* y = reinterpret_cast<T*>(a.y);
  const T* h0 = reinterpret_cast<const T*>(a.h0);
  T* h_prev_ws = reinterpret_cast<T*>(a.h_prev_ws);
  Cell cell(a);
  for (int64_t it = 0; it < a.T; ++it) {
    const StepInfo s = step_info(a, batch_sizes, offsets, it);
    for (int64_t e = threadIdx.x; e < kRows * Hin; e += blockDim.x) {
      const int64_t r = e / Hin, k = e % Hin, b = row0 + r;
      T v = T(0);
      if (b < s.bs) {
        v = b < s.n_prev ? y[(s.off_prev + b) * Hin + k] : h0[b * Hin + k];
        if (h_prev_ws) h_prev_ws[(s.off + b) * Hin + k] = v;
      }
      h_rows[e] = v;
    }
    __syncthreads();
    for (int64_t e = threadIdx.x; e < kRows * H; e += blockDim.x) {
      const int64_t r = e / H, j = e % H, b = row0 + r;
      if (b >= s.bs) continue;
      T sums[Cell::G];
#pragma unroll
      for (int g = 0; g < Cell::G; ++g) sums[g] = T(0);
      const T* hr = h_rows + r * Hin;
      for (int64_t k = 0; k < Hin; ++k) {
        const T hk = hr[k];
        const T* wk = w_hh_t + k * GH + j;
#pragma unroll
        for (int g = 0; g < Cell::G; ++g) sums[g] += hk * wk[g * H];
      }
      T g_in[Cell::G];
      load_gx<Cell::G>(reinterpret_cast<const T*>(a.gx), H, s.off + b, j, g_in);
      cell.forward(s.off + b, b, b < s.n_prev ? s.off_prev + b : -1, j, sums, g_in, hr[j < Hin ? j : 0]);
    }
    __syncthreads();
    if (P > 0) {  // y = W_hr (o * tanh c)
      const T* w_hr = reinterpret_cast<const T*>(a.w_hr);
      const T* proj_in = reinterpret_cast<const T*>(a.proj_in);
      for (int64_t e = threadIdx.x; e < kRows * P; e += blockDim.x) {
        const int64_t r = e / P, p = e % P, b = row0 + r;
        if (b >= s.bs) continue;
        T acc = T(0);
        for (int64_t k = 0; k < H; ++k) acc += proj_in[(s.off + b) * H + k] * w_hr[p * H + k];
        y[(s.off + b) * Hin + p] = acc;
      }
      __syncthreads();
    }
  }
}

// Backward. Cell::backward(args, n, b, prev, next_slot_row_or_-1, j, dh, it) writes d_gates (and d_gates_h);
// Cell::direct(n, k) is the factor of dh_k that skips the GEMM (GRU: z). Carries cross steps in two-step rings.
template <typename T, typename Cell>
__global__ void backward_kernel(RecurrenceArgs a, const int64_t* batch_sizes, const int64_t* offsets) {
  const int64_t H = a.H, P = a.P, Hin = P > 0 ? P : H, GH = Cell::G * H, B = a.B;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const T* dy = reinterpret_cast<const T*>(a.dy);
  const T* dh_n = reinterpret_cast<const T*>(a.dh_n);
  const T* w_hh = reinterpret_cast<const T*>(a.w_hh);
  const T* w_hr = reinterpret_cast<const T*>(a.w_hr);
  const T* d_gates_h = reinterpret_cast<const T*>(a.d_gates_h ? a.d_gates_h : a.d_gates);
  T* dh_ring = reinterpret_cast<T*>(a.dh_prev_ws);  // [2, B, Hin]
  T* dh0 = reinterpret_cast<T*>(a.dh0);
  T* dh_total = reinterpret_cast<T*>(a.dh_total);
  Cell cell(a);
  for (int64_t it = a.T - 1; it >= 0; --it) {
    const StepInfo s = step_info(a, batch_sizes, offsets, it);
    const int64_t in_slot = (it + 1) & 1, out_slot = it & 1;
    auto carry = [&](int64_t b, int64_t k) -> T {
      return b < s.n_next ? dh_ring[(in_slot * B + b) * Hin + k] : dh_n[b * Hin + k];
    };
    if (P > 0) {
      for (int64_t e = threadIdx.x; e < kRows * P; e += blockDim.x) {
        const int64_t r = e / P, p = e % P, b = row0 + r;
        if (b < s.bs) dh_total[(s.off + b) * P + p] = dy[(s.off + b) * P + p] + carry(b, p);
      }
      __syncthreads();
    }
    for (int64_t e = threadIdx.x; e < kRows * H; e += blockDim.x) {
      const int64_t r = e / H, j = e % H, b = row0 + r, n = s.off + b;
      if (b >= s.bs) continue;
      T dh;
      if (P > 0) {
        dh = T(0);
        for (int64_t p = 0; p < P; ++p) dh += dh_total[n * P + p] * w_hr[p * H + j];
      } else {
        dh = dy[n * Hin + j] + carry(b, j);
      }
      cell.backward(n, b, b < s.n_prev ? s.off_prev + b : -1, b < s.n_next, j, dh, it);
    }
    __syncthreads();
    for (int64_t e = threadIdx.x; e < kRows * Hin; e += blockDim.x) {
      const int64_t r = e / Hin, k = e % Hin, b = row0 + r, n = s.off + b;
      if (b >= s.bs) continue;
      T acc = T(0);
      for (int64_t q = 0; q < GH; ++q) acc += d_gates_h[n * GH + q] * w_hh[q * Hin + k];
      if (Cell::kHasDirectPath) acc += (dy[n * Hin + k] + carry(b, k)) * cell.direct(n, k);
      (b < s.n_prev ? dh_ring + (out_slot * B + b) * Hin : dh0 + b * Hin)[k] = acc;
    }
    __syncthreads();
  }
}

// Launches: w_hh_t is the transposed recurrent weight [Hin, G*H]; batch_sizes / offsets live on the device.
template <typename T, typename Cell>
cudaError_t launch_forward(const RecurrenceArgs& a, const T* w_hh_t, const int64_t* batch_sizes,
                           const int64_t* offsets, cudaStream_t stream) {
  if (a.B == 0) return cudaSuccess;
  const int64_t Hin = a.P > 0 ? a.P : a.H;
  const size_t smem = sizeof(T) * kRows * Hin;
  if (smem > 48 * 1024) {
    cudaError_t err = cudaFuncSetAttribute(forward_kernel<T, Cell>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  const dim3 grid(static_cast<unsigned>((a.B + kRows - 1) / kRows));
  forward_kernel<T, Cell><<<grid, kThreads, smem, stream>>>(a, w_hh_t, batch_sizes, offsets);
  return cudaGetLastError();
}

template <typename T, typename Cell>
cudaError_t launch_backward(const RecurrenceArgs& a, const int64_t* batch_sizes, const int64_t* offsets,
                            cudaStream_t stream) {
  if (a.B == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>((a.B + kRows - 1) / kRows));
  backward_kernel<T, Cell><<<grid, kThreads, 0, stream>>>(a, batch_sizes, offsets);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace pyrnn
