// Elman RNN cell for the CUDA kernels: h' = tanh or relu(gx + W_hh h), forward and backward side by side.
#include "cells.h"
#include "recurrence.cuh"
#include "resident.cuh"

namespace pyrnn {
namespace cuda {
namespace {

template <typename T>
struct RnnCell {
  static constexpr int G = 1;
  static constexpr bool kHasDirectPath = false;
  enum : bool { kHasCellState = false };
  int64_t H;
  bool relu;
  const T* gx;
  T *y, *d_gates;

  __device__ explicit RnnCell(const RecurrenceArgs& a)
      : H(a.H), relu(a.nonlinearity == static_cast<int>(Nonlinearity::kRelu)), gx(reinterpret_cast<const T*>(a.gx)),
        y(reinterpret_cast<T*>(a.y)), d_gates(reinterpret_cast<T*>(a.d_gates)) {}

  // s: the recurrent sum W_hh h of (n, j); g_in: its input projection gx[n, j] (load_gx).
  __device__ void forward(int64_t n, int64_t, int64_t, int64_t j, const T* s, const T* g_in, T) {
    const T pre = s[0] + g_in[0];
    y[n * H + j] = relu ? (pre < T(0) ? T(0) : pre) : tanh(pre);
  }
  __device__ void backward(int64_t n, int64_t, int64_t, bool, int64_t j, T dh, int64_t) {
    const T h = y[n * H + j];
    d_gates[n * H + j] = relu ? (h > T(0) ? dh : T(0)) : dh * (T(1) - h * h);
  }
  __device__ T direct(int64_t, int64_t) const { return T(0); }

  // The inputs of forward / backward at (n, j) that no step writes: fetched a step ahead.
  __device__ void prefetch(int64_t n, int64_t j, bool backward) const { prefetch_l1((backward ? y : gx) + n * H + j); }
};

}  // namespace

PYRNN_CUDA_ENTRY_POINTS(rnn, RnnCell)

}  // namespace cuda
}  // namespace pyrnn
