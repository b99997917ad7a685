// LSTM cell on the CPU: forward and backward pointwise math, run by the shared time-loop driver.
// Gates (rows of W_ih / W_hh / biases) are i, f, g, o.  c' = f*c + i*g,  h' = o*tanh(c'),
// with a projection (P > 0) the state is W_hr h' and the cell state c stays unprojected.
#include "kernels_api.h"
#include "recurrence.h"

namespace pyrnn {
namespace PYRNN_ISA {
namespace {

template <typename T>
struct LstmCell {
  static constexpr int G = 4;
  static constexpr bool kHasDirectPath = false;

  int64_t H, P, ys;
  const T* gx;      // [N, 4H]
  const T* c0;      // [B, H]
  T* y;             // [N, Hin]
  T* cell;          // [N, H]
  T* proj_in;       // [N, H] (P > 0)
  T* gates;         // [N, 4H] or null
  T* c_n;           // [B, H]
  // backward
  const T* dc_n;    // [B, H]
  T* d_gates;       // [N, 4H]
  T* dc0;           // [B, H]
  T* dc_prev_ws;    // [N, H]

  explicit LstmCell(const RecurrenceArgs& a)
      : H(a.H), P(a.P), ys(a.y_stride), gx(cptr<T>(a.gx)), c0(cptr<T>(a.c0)), y(mptr<T>(a.y)),
        cell(mptr<T>(a.cell)), proj_in(mptr<T>(a.proj_in)), gates(mptr<T>(a.gates)), c_n(mptr<T>(a.c_n)),
        dc_n(cptr<T>(a.dc_n)), d_gates(mptr<T>(a.d_gates)), dc0(mptr<T>(a.dc0)),
        dc_prev_ws(mptr<T>(a.dc_prev_ws)) {}

  T c_prev(int64_t b, int64_t prev, int64_t j) const { return prev >= 0 ? cell[prev * H + j] : c0[b * H + j]; }

  void forward_point(int64_t n, int64_t b, int64_t prev, int64_t j, const T* /*h_prev*/, const T* acc) {
    const T* gxr = gx + n * 4 * H;
    const T i = sigmoid(acc[0] + gxr[j]);
    const T f = sigmoid(acc[1] + gxr[H + j]);
    const T g = std::tanh(acc[2] + gxr[2 * H + j]);
    const T o = sigmoid(acc[3] + gxr[3 * H + j]);
    const T c = f * c_prev(b, prev, j) + i * g;
    cell[n * H + j] = c;
    const T h = o * std::tanh(c);
    if (P > 0) {
      proj_in[n * H + j] = h;
    } else {
      y[n * ys + j] = h;
    }
    if (gates) {
      T* gr = gates + n * 4 * H;
      gr[j] = i;
      gr[H + j] = f;
      gr[2 * H + j] = g;
      gr[3 * H + j] = o;
    }
  }
  const T* proj_input_row(int64_t n) const { return proj_in + n * H; }
  void finish_row(int64_t b, int64_t last) { copy_row(cell + last * H, H, c_n + b * H); }

  // dh: dL/d(o * tanh(c)) of unit j at packed row n.
  void backward_point(int64_t n, int64_t b, int64_t j, T dh, int64_t next, int64_t prev) {
    const T* gr = gates + n * 4 * H;
    const T i = gr[j], f = gr[H + j], g = gr[2 * H + j], o = gr[3 * H + j];
    const T tc = std::tanh(cell[n * H + j]);
    const T dc_carry = next >= 0 ? dc_prev_ws[next * H + j] : dc_n[b * H + j];
    const T dc = dc_carry + dh * o * (T(1) - tc * tc);
    T* dg = d_gates + n * 4 * H;
    dg[j] = dc * g * i * (T(1) - i);
    dg[H + j] = dc * c_prev(b, prev, j) * f * (T(1) - f);
    dg[2 * H + j] = dc * i * (T(1) - g * g);
    dg[3 * H + j] = dh * tc * o * (T(1) - o);
    (prev >= 0 ? dc_prev_ws + n * H : dc0 + b * H)[j] = dc * f;
  }
  T dh_prev_extra(int64_t, int64_t, int64_t, T) const { return T(0); }
};

}  // namespace

void lstm_forward(const RecurrenceArgs& a) {
  if (a.dtype == static_cast<int>(DType::kFloat64)) {
    LstmCell<double> cell(a);
    run_forward<double>(a, cell);
  } else {
    LstmCell<float> cell(a);
    run_forward<float>(a, cell);
  }
}

void lstm_backward(const RecurrenceArgs& a) {
  if (a.dtype == static_cast<int>(DType::kFloat64)) {
    LstmCell<double> cell(a);
    run_backward<double>(a, cell);
  } else {
    LstmCell<float> cell(a);
    run_backward<float>(a, cell);
  }
}

}  // namespace PYRNN_ISA
}  // namespace pyrnn
