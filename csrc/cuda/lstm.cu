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
  int64_t H, P, B, Hin;
  const T *gx, *c0, *dc_n;
  T *y, *cell, *proj_in, *gates, *d_gates, *dc0, *dc_ring;

  __device__ explicit LstmCell(const RecurrenceArgs& a)
      : H(a.H), P(a.P), B(a.B), Hin(a.P > 0 ? a.P : a.H), gx(reinterpret_cast<const T*>(a.gx)),
        c0(reinterpret_cast<const T*>(a.c0)), dc_n(reinterpret_cast<const T*>(a.dc_n)),
        y(reinterpret_cast<T*>(a.y)), cell(reinterpret_cast<T*>(a.cell)), proj_in(reinterpret_cast<T*>(a.proj_in)),
        gates(reinterpret_cast<T*>(a.gates)), d_gates(reinterpret_cast<T*>(a.d_gates)),
        dc0(reinterpret_cast<T*>(a.dc0)), dc_ring(reinterpret_cast<T*>(a.dc_prev_ws)) {}

  __device__ T c_prev(int64_t b, int64_t prev, int64_t j) const { return prev >= 0 ? cell[prev * H + j] : c0[b * H + j]; }

  __device__ void forward(int64_t n, int64_t b, int64_t prev, int64_t j, const T* s, T) {
    const T* g_in = gx + n * 4 * H;
    const T i = sigmoid(s[0] + g_in[j]), f = sigmoid(s[1] + g_in[H + j]);
    const T g = tanh(s[2] + g_in[2 * H + j]), o = sigmoid(s[3] + g_in[3 * H + j]);
    const T c = f * c_prev(b, prev, j) + i * g;
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
  }

  __device__ void backward(int64_t n, int64_t b, int64_t prev, bool has_next, int64_t j, T dh, int64_t it) {
    const T* gr = gates + n * 4 * H;
    const T i = gr[j], f = gr[H + j], g = gr[2 * H + j], o = gr[3 * H + j];
    const T tc = tanh(cell[n * H + j]);
    const T dc_carry = has_next ? dc_ring[(((it + 1) & 1) * B + b) * H + j] : dc_n[b * H + j];
    const T dc = dc_carry + dh * o * (T(1) - tc * tc);
    T* dg = d_gates + n * 4 * H;
    dg[j] = dc * g * i * (T(1) - i);
    dg[H + j] = dc * c_prev(b, prev, j) * f * (T(1) - f);
    dg[2 * H + j] = dc * i * (T(1) - g * g);
    dg[3 * H + j] = dh * tc * o * (T(1) - o);
    (prev >= 0 ? dc_ring + ((it & 1) * B + b) * H : dc0 + b * H)[j] = dc * f;
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
