// Entry points of the CUDA kernels, one pair per cell, float32 and float64. Host code only: compiled by the
// C++ compiler in bindings.cpp and by nvcc in the .cu files.
#pragma once

#include <cstdint>

#include "../recurrence_args.h"

namespace pyrnn {
namespace cuda {

// Device pointers: w_hh_t [Hin, G*H] (forward only), batch_sizes and offsets [T] int64, or both 0 for a padded
// batch (every step has a.B rows: the kernels compute the schedule instead of loading it). Returns a CUDA error
// code (0 = success). stream: a cudaStream_t passed as an integer.
#define PYRNN_CUDA_DECLARE(cell)                                                                              \
  int cell##_forward(const RecurrenceArgs& a, uintptr_t w_hh_t, uintptr_t batch_sizes, uintptr_t offsets,     \
                     uintptr_t stream);                                                                       \
  int cell##_backward(const RecurrenceArgs& a, uintptr_t batch_sizes, uintptr_t offsets, uintptr_t stream);  \
  int cell##_resident(const RecurrenceArgs& a, bool backward, uintptr_t batch_sizes, uintptr_t offsets,       \
                      uintptr_t counter, uintptr_t phases, uintptr_t stream, bool tf32);

// cell##_resident runs the weight-resident kernels (resident.cuh; a.w_hh [G*H, H] float32, counter: one
// uint32 on the device, zeroed by the launch; phases: 0, or 10 uint64 on the device for the per-phase cycle
// counts of block 0, for profiling; tf32: the recurrent dot products may use TF32 tensor cores) and returns
// kNotResident where they do not take the layer or its blocks cannot all be resident on this device.
constexpr int kNotResident = -1;

// The resident kernels' plan for a layer on a device with `sms` SMs and `max_dyn_smem` bytes of dynamic
// shared memory per block (resident_plan.cu); for the tests, which check its invariants without a GPU.
struct ResidentPlanInfo {
  bool ok = false;
  int blocks = 0, units_per_block = 0, outputs_per_warp = 0, k_per_lane = 0, warps_per_output = 0;
  int chunk_rows = 0, staged_row_length = 0, row_quantum = 0;
  int mma = 0, mma_output_tiles = 0, mma_k_steps = 0;  // MmaTile: 1 = 16-row tiles, 2 = 8-row tiles; 0 = FMA tile
  bool gx_staged = false;
  int64_t dyn_smem = 0, static_smem = 0;
};
ResidentPlanInfo resident_plan_info(int G, const RecurrenceArgs& a, bool backward, int sms, size_t max_dyn_smem,
                                    bool tf32);

// The tests' check of the TF32 MMA tile's fragment code without a GPU (mma_tile.cuh emulate_dot, host pointers):
// out [rows, O] = xs [rows padded to the tile's rows, mma_row_length(ks)] . w [O, K]^T (K <= 8 warps x ks x 8,
// xs zero beyond K). Returns false for a tile that is not instantiated.
bool mma_tile_emulate(int nt, int ks, bool half, uintptr_t w, int O, int K, uintptr_t xs, int rows, uintptr_t out);

PYRNN_CUDA_DECLARE(lstm)
PYRNN_CUDA_DECLARE(gru)
PYRNN_CUDA_DECLARE(rnn)

// C [M, N] (row-major, contiguous) = A [M, K] @ B [K, N] + beta * C in TF32 on tensor cores through cuBLAS
// (gemm_tf32.cpp), float32 device pointers with element strides; each operand must have a unit stride along
// one of its dimensions. workspace: 0 or cuBLAS scratch on the stream. Returns 0, kNoCublas (cuBLAS not
// loadable: use another GEMM), kBadGemmLayout, or kCublasError + cuBLAS's status.
constexpr int kNoCublas = -2, kBadGemmLayout = -3, kCublasError = 1000;
bool gemm_tf32_available();
int gemm_tf32(int64_t M, int64_t N, int64_t K, uintptr_t a, int64_t sa_m, int64_t sa_k, uintptr_t b, int64_t sb_k,
              int64_t sb_n, uintptr_t c, float beta, uintptr_t workspace, size_t workspace_bytes, uintptr_t stream);

// Defines cell##_forward / cell##_backward for a cell template (in a .cu file, after recurrence.cuh).
#define PYRNN_CUDA_ENTRY_POINTS(cell, Cell)                                                                   \
  int cell##_forward(const RecurrenceArgs& a, uintptr_t w_hh_t, uintptr_t batch_sizes, uintptr_t offsets,     \
                     uintptr_t stream) {                                                                      \
    auto s = reinterpret_cast<cudaStream_t>(stream);                                                          \
    auto bs = reinterpret_cast<const int64_t*>(batch_sizes);                                                  \
    auto off = reinterpret_cast<const int64_t*>(offsets);                                                     \
    if (a.dtype == static_cast<int>(DType::kFloat64))                                                         \
      return launch_forward<double, Cell<double>>(a, reinterpret_cast<const double*>(w_hh_t), bs, off, s);    \
    return launch_forward<float, Cell<float>>(a, reinterpret_cast<const float*>(w_hh_t), bs, off, s);         \
  }                                                                                                           \
  int cell##_backward(const RecurrenceArgs& a, uintptr_t batch_sizes, uintptr_t offsets, uintptr_t stream) {  \
    auto s = reinterpret_cast<cudaStream_t>(stream);                                                          \
    auto bs = reinterpret_cast<const int64_t*>(batch_sizes);                                                  \
    auto off = reinterpret_cast<const int64_t*>(offsets);                                                     \
    if (a.dtype == static_cast<int>(DType::kFloat64))                                                         \
      return launch_backward<double, Cell<double>>(a, bs, off, s);                                            \
    return launch_backward<float, Cell<float>>(a, bs, off, s);                                                \
  }                                                                                                           \
  int cell##_resident(const RecurrenceArgs& a, bool backward, uintptr_t batch_sizes, uintptr_t offsets,       \
                      uintptr_t counter, uintptr_t phases, uintptr_t stream, bool tf32) {                     \
    const resident::Plan p = resident::plan_for_device(Cell<float>::G, a, backward, tf32);                    \
    if (!p.ok) return kNotResident;                                                                           \
    const cudaError_t err = resident::launch<Cell<float>>(                                                    \
        backward, a, reinterpret_cast<const int64_t*>(batch_sizes), reinterpret_cast<const int64_t*>(offsets), \
        reinterpret_cast<unsigned*>(counter), reinterpret_cast<unsigned long long*>(phases), p,                \
        reinterpret_cast<cudaStream_t>(stream));                                                               \
    return resident::too_large(err) ? kNotResident : err;                                                     \
  }

}  // namespace cuda
}  // namespace pyrnn
