// GRU cell on the CPU ("reset after", as torch.nn.GRU): forward and backward pointwise math, run by the
// shared time-loop driver. Gates are r, z, n:
//   r = s(gx_r + W_hr h),  z = s(gx_z + W_hz h),  n = tanh(gx_n + r * (W_hn h + b_hn)),  h' = (1-z)*n + z*h
// The r and z hidden biases are folded into gx by the caller; b_hn cannot be, since r multiplies it.
#include "kernels_api.h"
#include "recurrence.h"

namespace pyrnn {
namespace PYRNN_ISA {
namespace {

template <typename T>
struct GruCell {
  static constexpr int G = 3;
  static constexpr bool kHasDirectPath = true;  // dL/dh_prev gets dh * z besides W_hh^T dG

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

  void forward_point(int64_t n, int64_t /*b*/, int64_t /*prev*/, int64_t j, const T* h_prev, const T* acc) {
    const T* gxr = gx + n * 3 * H;
    const T r = sigmoid(acc[0] + gxr[j]);
    const T z = sigmoid(acc[1] + gxr[H + j]);
    const T ghn = acc[2] + (b_hn ? b_hn[j] : T(0));
    const T nn = std::tanh(gxr[2 * H + j] + r * ghn);
    y[n * ys + j] = (T(1) - z) * nn + z * h_prev[j];
    if (gates) {
      T* gr = gates + n * 3 * H;
      gr[j] = r;
      gr[H + j] = z;
      gr[2 * H + j] = nn;
      gh_n[n * H + j] = ghn;
    }
  }
  const T* proj_input_row(int64_t) const { return nullptr; }
  void finish_row(int64_t, int64_t) {}

  void backward_point(int64_t n, int64_t /*b*/, int64_t j, T dh, int64_t /*next*/, int64_t /*prev*/) {
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
  T dh_prev_extra(int64_t n, int64_t /*b*/, int64_t k, T dh) const { return dh * gates[n * 3 * H + H + k]; }
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
