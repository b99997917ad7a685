// GRU cell for the CUDA kernels ("reset after", as torch.nn.GRU): forward and backward pointwise math of one
// (row, unit), side by side. r = s(gx_r + gh_r), z = s(gx_z + gh_z), n = tanh(gx_n + r*(gh_n + b_hn)),
// h' = (1-z)*n + z*h.
#include "cells.h"
#include "recurrence.cuh"
#include "resident.cuh"

namespace pyrnn {
namespace cuda {
namespace {

template <typename T>
struct GruCell {
  static constexpr int G = 3;
  static constexpr bool kHasDirectPath = true;
  enum : bool { kHasCellState = false };
  int64_t H;
  const T *gx, *b_hn, *h_prev_ws;
  T *y, *gates, *gh_n, *d_gates, *d_gates_h;

  __device__ explicit GruCell(const RecurrenceArgs& a)
      : H(a.H), gx(reinterpret_cast<const T*>(a.gx)), b_hn(reinterpret_cast<const T*>(a.b_hn)),
        h_prev_ws(reinterpret_cast<const T*>(a.h_prev_ws)), y(reinterpret_cast<T*>(a.y)),
        gates(reinterpret_cast<T*>(a.gates)), gh_n(reinterpret_cast<T*>(a.gh_n)),
        d_gates(reinterpret_cast<T*>(a.d_gates)), d_gates_h(reinterpret_cast<T*>(a.d_gates_h)) {}

  // s: the G recurrent gate sums W_hh h of (n, j); g_in: its G input projections gx[n, g*H + j] (load_gx).
  __device__ void forward(int64_t n, int64_t, int64_t, int64_t j, const T* s, const T* g_in, T h_prev) {
    const T r = sigmoid(s[0] + g_in[0]), z = sigmoid(s[1] + g_in[1]);
    const T ghn = s[2] + (b_hn ? b_hn[j] : T(0));
    const T nn = tanh(g_in[2] + r * ghn);
    y[n * H + j] = (T(1) - z) * nn + z * h_prev;
    if (gates) {
      T* gr = gates + n * 3 * H;
      gr[j] = r;
      gr[H + j] = z;
      gr[2 * H + j] = nn;
      gh_n[n * H + j] = ghn;
    }
  }

  __device__ void backward(int64_t n, int64_t, int64_t, bool, int64_t j, T dh, int64_t) {
    const T* gr = gates + n * 3 * H;
    const T r = gr[j], z = gr[H + j], nn = gr[2 * H + j];
    const T dn = dh * (T(1) - z) * (T(1) - nn * nn);
    const T dz = dh * (h_prev_ws[n * H + j] - nn) * z * (T(1) - z);
    const T dr = dn * gh_n[n * H + j] * r * (T(1) - r);
    T* dg = d_gates + n * 3 * H;
    T* dgh = d_gates_h + n * 3 * H;
    dg[j] = dgh[j] = dr;
    dg[H + j] = dgh[H + j] = dz;
    dg[2 * H + j] = dn;
    dgh[2 * H + j] = dn * r;
  }
  __device__ T direct(int64_t n, int64_t k) const { return gates[n * 3 * H + H + k]; }

  // The inputs of forward / backward at (n, j) that no step writes: fetched a step ahead.
  __device__ void prefetch(int64_t n, int64_t j, bool backward) const {
    const T* rows = backward ? gates : gx;
#pragma unroll
    for (int g = 0; g < 3; ++g) prefetch_l1(rows + n * 3 * H + g * H + j);
    if (backward) {
      prefetch_l1(gh_n + n * H + j);
      prefetch_l1(h_prev_ws + n * H + j);
    }
  }
};

}  // namespace

PYRNN_CUDA_ENTRY_POINTS(gru, GruCell)

}  // namespace cuda
}  // namespace pyrnn
