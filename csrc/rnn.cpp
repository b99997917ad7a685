// Elman RNN cell on the CPU: h' = tanh or relu(gx + W_hh h), biases folded into gx by the caller.
// The backward needs only the output h itself (tanh' = 1 - h^2, relu' = [h > 0]), read back from y.
#include "kernels_api.h"
#include "recurrence.h"

namespace pyrnn {
namespace PYRNN_ISA {
namespace {

template <typename T>
struct RnnCell {
  static constexpr int G = 1;
  static constexpr bool kHasDirectPath = false;

  int64_t H, ys;
  bool relu;
  const T* gx;     // [N, H]
  T* y;            // [N, H]
  T* d_gates;      // [N, H]

  explicit RnnCell(const RecurrenceArgs& a)
      : H(a.H), ys(a.y_stride), relu(a.nonlinearity == static_cast<int>(Nonlinearity::kRelu)),
        gx(cptr<T>(a.gx)), y(mptr<T>(a.y)), d_gates(mptr<T>(a.d_gates)) {}

  void forward_point(int64_t n, int64_t, int64_t, int64_t j, const T*, const T* acc) {
    const T pre = acc[0] + gx[n * H + j];
    // relu written so NaN propagates as in torch.relu
    y[n * ys + j] = relu ? (pre < T(0) ? T(0) : pre) : std::tanh(pre);
  }
  const T* proj_input_row(int64_t) const { return nullptr; }
  void finish_row(int64_t, int64_t) {}

  void backward_point(int64_t n, int64_t, int64_t j, T dh, int64_t, int64_t) {
    const T h = y[n * ys + j];
    d_gates[n * H + j] = relu ? (h > T(0) ? dh : T(0)) : dh * (T(1) - h * h);
  }
  T dh_prev_extra(int64_t, int64_t, int64_t, T) const { return T(0); }
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
