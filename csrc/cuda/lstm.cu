// LSTM cell for the CUDA kernels: forward and backward pointwise math of one (row, unit), side by side.
// Gates i, f, g, o; c' = f*c + i*g; h' = o*tanh(c'); with a projection the state is W_hr h'.
#include "cells.h"
#include "recurrence.cuh"
#include "resident.cuh"

namespace pyrnn {
namespace cuda {
namespace {

template <typename T>
struct LstmCell {
  static constexpr int G = 4;
  static constexpr bool kHasDirectPath = false;
  // A cell state carried from step to step: the resident kernels keep it in shared memory (forward_state,
  // backward_state); the row-block kernels go through the [N, H] cell buffer and the dc ring (forward, backward).
  enum : bool { kHasCellState = true };
  int64_t H, P, B, Hin;
  const T *gx, *c0, *dc_n;
  T *y, *cell, *proj_in, *gates, *d_gates, *dc0, *dc_ring;

  __device__ explicit LstmCell(const RecurrenceArgs& a)
      : H(a.H), P(a.P), B(a.B), Hin(a.P > 0 ? a.P : a.H), gx(reinterpret_cast<const T*>(a.gx)),
        c0(reinterpret_cast<const T*>(a.c0)), dc_n(reinterpret_cast<const T*>(a.dc_n)),
        y(reinterpret_cast<T*>(a.y)), cell(reinterpret_cast<T*>(a.cell)), proj_in(reinterpret_cast<T*>(a.proj_in)),
        gates(reinterpret_cast<T*>(a.gates)), d_gates(reinterpret_cast<T*>(a.d_gates)),
        dc0(reinterpret_cast<T*>(a.dc0)), dc_ring(reinterpret_cast<T*>(a.dc_prev_ws)) {}

  __device__ T c_initial(int64_t b, int64_t j) const { return c0[b * H + j]; }
  __device__ T c_prev(int64_t b, int64_t prev, int64_t j) const { return prev >= 0 ? cell[prev * H + j] : c_initial(b, j); }
  __device__ T dc_final(int64_t b, int64_t j) const { return dc_n[b * H + j]; }

  // s: the G recurrent gate sums W_hh h of (n, j); g_in: its G input projections gx[n, g*H + j] (load_gx).
  __device__ void forward(int64_t n, int64_t b, int64_t prev, int64_t j, const T* s, const T* g_in, T) {
    forward_state(n, j, s, g_in, c_prev(b, prev, j));
  }

  // Returns the new cell state c (also written to the cell buffer, which the backward reads).
  __device__ T forward_state(int64_t n, int64_t j, const T* s, const T* g_in, T c_before) {
    const T i = sigmoid(s[0] + g_in[0]), f = sigmoid(s[1] + g_in[1]);
    const T g = tanh(s[2] + g_in[2]), o = sigmoid(s[3] + g_in[3]);
    const T c = f * c_before + i * g;
    cell[n * H + j] = c;
    const T h = o * tanh(c);
    if (P > 0) {
      proj_in[n * H + j] = h;
    } else {
      y[n * Hin + j] = h;
    }
    if (gates) {
      T* gr = gates + n * 4 * H;
      gr[j] = i;
      gr[H + j] = f;
      gr[2 * H + j] = g;
      gr[3 * H + j] = o;
    }
    return c;
  }

  __device__ void backward(int64_t n, int64_t b, int64_t prev, bool has_next, int64_t j, T dh, int64_t it) {
    const T dc_carry = has_next ? dc_ring[(((it + 1) & 1) * B + b) * H + j] : dc_final(b, j);
    const T dc_before = backward_state(n, b, prev, j, dh, dc_carry);
    (prev >= 0 ? dc_ring + ((it & 1) * B + b) * H : dc0 + b * H)[j] = dc_before;
  }

  // Writes dL/dgates of (n, j) and returns dL/dc of the state entering the step (the caller stores it: the
  // carry of the previous step, or dc0 where prev < 0).
  __device__ T backward_state(int64_t n, int64_t b, int64_t prev, int64_t j, T dh, T dc_carry) {
    const T* gr = gates + n * 4 * H;
    const T i = gr[j], f = gr[H + j], g = gr[2 * H + j], o = gr[3 * H + j];
    const T tc = tanh(cell[n * H + j]);
    const T dc = dc_carry + dh * o * (T(1) - tc * tc);
    T* dg = d_gates + n * 4 * H;
    dg[j] = dc * g * i * (T(1) - i);
    dg[H + j] = dc * c_prev(b, prev, j) * f * (T(1) - f);
    dg[2 * H + j] = dc * i * (T(1) - g * g);
    dg[3 * H + j] = dh * tc * o * (T(1) - o);
    return dc * f;
  }
  __device__ T direct(int64_t, int64_t) const { return T(0); }

  // The inputs of forward / backward at (n, j) that no step writes: fetched a step ahead.
  __device__ void prefetch(int64_t n, int64_t j, bool backward) const {
    const T* rows = backward ? gates : gx;
#pragma unroll
    for (int g = 0; g < 4; ++g) prefetch_l1(rows + n * 4 * H + g * H + j);
    if (backward) prefetch_l1(cell + n * H + j);
  }
};

}  // namespace

PYRNN_CUDA_ENTRY_POINTS(lstm, LstmCell)

}  // namespace cuda
}  // namespace pyrnn
