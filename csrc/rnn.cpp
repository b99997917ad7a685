// Elman RNN cell on the CPU: h' = tanh or relu(gx + W_hh h), biases folded into gx by the caller.
// The backward needs only the output h itself (tanh' = 1 - h^2, relu' = [h > 0]), read back from the workspace
// h_prev (where the next step's input state is this step's output) or from h_n at a row's last step, not from y:
// y is the caller's, who may change it in place before the backward (as torch.nn.RNN allows).
// Every function works on `cnt` consecutive hidden units starting at u, one SIMD vector.
#include "kernels_api.h"
#include "recurrence.h"

namespace pyrnn {
namespace PYRNN_ISA {
namespace {

template <typename T>
struct RnnCell {
  using V = Vec<T>;
  static constexpr int G = 1;
  static constexpr int NU = 2;  // one gate: two unit vectors per forward panel keep the FMA units busy
  static constexpr bool kHasDirectPath = false;
  static constexpr int kFoldedHiddenBiasGates = 1;
  static constexpr bool kPrefetchGx = true;  // one tanh per unit: gx latency shows (4-5% at B=64)

  int64_t H, ys;
  bool relu;
  const T* gx;         // [N, H]
  T* y;                // [N, H]
  // backward
  const T* h_prev_ws;  // [N, H] the state entering every row
  const T* h_n;        // [B, H]
  T* d_gates;          // [N, H]

  explicit RnnCell(const RecurrenceArgs& a)
      : H(a.H), ys(a.y_stride), relu(a.nonlinearity == static_cast<int>(Nonlinearity::kRelu)),
        gx(cptr<T>(a.gx)), y(mptr<T>(a.y)), h_prev_ws(cptr<T>(a.h_prev_ws)), h_n(cptr<T>(a.h_n)),
        d_gates(mptr<T>(a.d_gates)) {}

  void forward_vec(int64_t n, int64_t, int64_t, int64_t, int64_t u, int cnt, const T*, const V* acc) {
    const V pre = acc[0] + vload(gx + n * H + u, cnt);
    vstore(y + n * ys + u, relu ? vrelu<T>(pre) : vtanh(pre), cnt);
  }
  const T* proj_input_row(int64_t) const { return nullptr; }
  void finish_row(int64_t, int64_t, int64_t) {}

  // next: the packed row whose input state is row n's output (-1: row b's last step, whose output is h_n).
  void backward_vec(int64_t n, int64_t b, int64_t u, int cnt, V dh, int64_t next, int64_t, int64_t) {
    const V h = vload(next >= 0 ? h_prev_ws + next * H + u : h_n + b * H + u, cnt);
    vstore(d_gates + n * H + u, relu ? (h > T(0) ? dh : V{}) : dh * (T(1) - h * h), cnt);
  }
  V dh_extra(int64_t, int64_t, int, V) const { return V{}; }
};

}  // namespace

void rnn_forward(const RecurrenceArgs& a) {
  if (a.dtype == static_cast<int>(DType::kFloat64)) {
    RnnCell<double> cell(a);
    run_forward<double>(a, cell);
  } else {
    RnnCell<float> cell(a);
    run_forward<float>(a, cell);
  }
}

void rnn_backward(const RecurrenceArgs& a) {
  if (a.dtype == static_cast<int>(DType::kFloat64)) {
    RnnCell<double> cell(a);
    run_backward<double>(a, cell);
  } else {
    RnnCell<float> cell(a);
    run_backward<float>(a, cell);
  }
}

}  // namespace PYRNN_ISA
}  // namespace pyrnn
