// GRU cell on the CPU ("reset after", as torch.nn.GRU): forward and backward pointwise math, run by the
// shared time-loop driver. Gates are r, z, n:
//   r = s(gx_r + W_hr h),  z = s(gx_z + W_hz h),  n = tanh(gx_n + r * (W_hn h + b_hn)),  h' = (1-z)*n + z*h
// The r and z hidden biases are folded into gx by the caller; b_hn cannot be, since r multiplies it.
// Every function works on `cnt` consecutive hidden units starting at u, one SIMD vector.
#include "kernels_api.h"
#include "recurrence.h"

namespace pyrnn {
namespace PYRNN_ISA {
namespace {

template <typename T>
struct GruCell {
  using V = Vec<T>;
  static constexpr int G = 3;
  static constexpr int NU = 1;
  static constexpr bool kHasDirectPath = true;  // dL/dh_prev gets dh * z besides W_hh^T dG
  static constexpr int kFoldedHiddenBiasGates = 2;  // r, z: b_hn sits inside r * (...)
  static constexpr bool kPrefetchGx = false;  // its epilogue hides gx latency (measured: no gain)

  int64_t H, ys;
  const T* gx;         // [N, 3H]
  const T* b_hn;       // [H] or null
  T* y;                // [N, H]
  T* gates;            // [N, 3H] r, z, n, or null
  T* gh_n;             // [N, H] W_hn h + b_hn, or null
  const T* h_prev_ws;  // [N, H]
  // backward
  T* d_gates;          // [N, 3H]
  T* d_gates_h;        // [N, 3H]

  explicit GruCell(const RecurrenceArgs& a)
      : H(a.H), ys(a.y_stride), gx(cptr<T>(a.gx)), b_hn(cptr<T>(a.b_hn)), y(mptr<T>(a.y)),
        gates(mptr<T>(a.gates)), gh_n(mptr<T>(a.gh_n)), h_prev_ws(cptr<T>(a.h_prev_ws)),
        d_gates(mptr<T>(a.d_gates)), d_gates_h(mptr<T>(a.d_gates_h)) {}

  void forward_vec(int64_t n, int64_t, int64_t, int64_t, int64_t u, int cnt, const T* h_prev, const V* acc) {
    const T* gxr = gx + n * 3 * H + u;
    const V r = vsigmoid(acc[0] + vload(gxr, cnt));
    const V z = vsigmoid(acc[1] + vload(gxr + H, cnt));
    const V ghn = b_hn ? acc[2] + vload(b_hn + u, cnt) : acc[2];
    const V nn = vtanh(vload(gxr + 2 * H, cnt) + r * ghn);
    vstore(y + n * ys + u, (T(1) - z) * nn + z * vload(h_prev + u, cnt), cnt);
    if (gates) {
      T* gr = gates + n * 3 * H + u;
      vstore(gr, r, cnt);
      vstore(gr + H, z, cnt);
      vstore(gr + 2 * H, nn, cnt);
      vstore(gh_n + n * H + u, ghn, cnt);
    }
  }
  const T* proj_input_row(int64_t) const { return nullptr; }
  void finish_row(int64_t, int64_t, int64_t) {}

  void backward_vec(int64_t n, int64_t, int64_t u, int cnt, V dh, int64_t, int64_t, int64_t) {
    const T* gr = gates + n * 3 * H + u;
    const V r = vload(gr, cnt), z = vload(gr + H, cnt), nn = vload(gr + 2 * H, cnt);
    const V dn = dh * (T(1) - z) * (T(1) - nn * nn);
    const V dz = dh * (vload(h_prev_ws + n * H + u, cnt) - nn) * z * (T(1) - z);
    const V dr = dn * vload(gh_n + n * H + u, cnt) * r * (T(1) - r);
    T* dg = d_gates + n * 3 * H + u;
    T* dgh = d_gates_h + n * 3 * H + u;
    vstore(dg, dr, cnt);
    vstore(dgh, dr, cnt);
    vstore(dg + H, dz, cnt);
    vstore(dgh + H, dz, cnt);
    vstore(dg + 2 * H, dn, cnt);
    vstore(dgh + 2 * H, dn * r, cnt);
  }
  V dh_extra(int64_t n, int64_t u, int cnt, V dh) const { return dh * vload(gates + n * 3 * H + H + u, cnt); }
};

}  // namespace

void gru_forward(const RecurrenceArgs& a) {
  if (a.dtype == static_cast<int>(DType::kFloat64)) {
    GruCell<double> cell(a);
    run_forward<double>(a, cell);
  } else {
    GruCell<float> cell(a);
    run_forward<float>(a, cell);
  }
}

void gru_backward(const RecurrenceArgs& a) {
  if (a.dtype == static_cast<int>(DType::kFloat64)) {
    GruCell<double> cell(a);
    run_backward<double>(a, cell);
  } else {
    GruCell<float> cell(a);
    run_backward<float>(a, cell);
  }
}

}  // namespace PYRNN_ISA
}  // namespace pyrnn
