// LSTM cell on the CPU: forward and backward pointwise math, run by the shared time-loop driver.
// Gates (rows of W_ih / W_hh / biases) are i, f, g, o.  c' = f*c + i*g,  h' = o*tanh(c'),
// with a projection (P > 0) the state is W_hr h' and the cell state c stays unprojected.
// Every function works on `cnt` consecutive hidden units starting at u, one SIMD vector.
#include "kernels_api.h"
#include "recurrence.h"

namespace pyrnn {
namespace PYRNN_ISA {
namespace {

template <typename T, int kUnitVectors = 1>
struct LstmCell {
  using V = Vec<T>;
  static constexpr int G = 4;
  static constexpr int NU = kUnitVectors;  // unit vectors per forward panel: 4 gates x NU vectors
  static constexpr bool kHasDirectPath = false;
  static constexpr int kFoldedHiddenBiasGates = 4;  // b_hh adds to every gate outside the cell math
  static constexpr bool kPrefetchGx = false;  // its epilogue hides gx latency (measured: no gain)

  int64_t H, P, B, ys;
  const T* gx;      // [N, 4H]
  const T* c0;      // [B, H]
  T* y;             // [N, Hin]
  T* cell;          // [N, H], or null with cell_ring
  T* cell_ring;     // [2, B, H] (inference) or null: step it's cell state of row b at (it & 1) * B + b
  T* proj_in;       // [N, H] (P > 0)
  T* gates;         // [N, 4H] or null
  T* c_n;           // [B, H]
  // backward
  const T* dc_n;    // [B, H]
  T* d_gates;       // [N, 4H]
  T* dc0;           // [B, H]
  T* dc_prev_ws;    // [2, B, H]

  explicit LstmCell(const RecurrenceArgs& a)
      : H(a.H), P(a.P), B(a.B), ys(a.y_stride), gx(cptr<T>(a.gx)), c0(cptr<T>(a.c0)), y(mptr<T>(a.y)),
        cell(mptr<T>(a.cell)), cell_ring(mptr<T>(a.cell_ring)), proj_in(mptr<T>(a.proj_in)),
        gates(mptr<T>(a.gates)), c_n(mptr<T>(a.c_n)), dc_n(cptr<T>(a.dc_n)), d_gates(mptr<T>(a.d_gates)),
        dc0(mptr<T>(a.dc0)), dc_prev_ws(mptr<T>(a.dc_prev_ws)) {}

  T* dc_ring(int64_t it, int64_t b) const { return dc_prev_ws + ((it & 1) * B + b) * H; }
  const T* c_prev(int64_t b, int64_t prev, int64_t u) const { return prev >= 0 ? cell + prev * H + u : c0 + b * H + u; }
  // Where the forward keeps the cell state of packed row n (batch row b, iteration it). Inference keeps the last
  // two steps only ([2, B, H], in L2), instead of writing all T*B rows out and reading each back a step later.
  T* cell_row(int64_t n, int64_t b, int64_t it) const {
    return cell_ring ? cell_ring + ((it & 1) * B + b) * H : cell + n * H;
  }

  // Always inlined: the layers' per-step loop lost 5-10% (LSTM forward at T=100 B=64) when the cells' single-step
  // path became a third caller and GCC stopped inlining it there.
  __attribute__((always_inline)) void forward_vec(int64_t n, int64_t b, int64_t prev, int64_t it, int64_t u, int cnt,
                                                  const T* /*h_prev*/, const V* acc) {
    const T* gxr = gx + n * 4 * H + u;
    const V i = vsigmoid(acc[0] + vload(gxr, cnt));
    const V f = vsigmoid(acc[1] + vload(gxr + H, cnt));
    const V g = vtanh(acc[2] + vload(gxr + 2 * H, cnt));
    const V o = vsigmoid(acc[3] + vload(gxr + 3 * H, cnt));
    const T* cp = prev >= 0 ? cell_row(prev, b, it - 1) + u : c0 + b * H + u;
    const V c = f * vload(cp, cnt) + i * g;
    vstore(cell_row(n, b, it) + u, c, cnt);
    const V h = o * vtanh(c);
    vstore(P > 0 ? proj_in + n * H + u : y + n * ys + u, h, cnt);
    if (gates) {
      T* gr = gates + n * 4 * H + u;
      vstore(gr, i, cnt);
      vstore(gr + H, f, cnt);
      vstore(gr + 2 * H, g, cnt);
      vstore(gr + 3 * H, o, cnt);
    }
  }
  const T* proj_input_row(int64_t n) const { return proj_in + n * H; }
  void finish_row(int64_t b, int64_t last, int64_t last_it) {
    copy_row(cell_row(last, b, last_it), H, c_n + b * H);
  }

  // dh: dL/d(o * tanh(c)) of units [u, u+cnt) at packed row n. Without the cell array (cells, one step from c0,
  // whose c is the caller's output and may be changed in place before the backward) c is recomputed from the
  // gates, as the forward made it.
  void backward_vec(int64_t n, int64_t b, int64_t u, int cnt, V dh, int64_t next, int64_t prev, int64_t it) {
    const T* gr = gates + n * 4 * H + u;
    const V i = vload(gr, cnt), f = vload(gr + H, cnt), g = vload(gr + 2 * H, cnt), o = vload(gr + 3 * H, cnt);
    const V tc = vtanh(cell ? vload(cell + n * H + u, cnt) : f * vload(c_prev(b, prev, u), cnt) + i * g);
    // dc_prev_ws: a ring of two steps [2, B, H], written at iteration it and read at it - 1.
    const V dc_carry = vload(next >= 0 ? dc_ring(it + 1, b) + u : dc_n + b * H + u, cnt);
    const V dc = dc_carry + dh * o * (T(1) - tc * tc);
    T* dg = d_gates + n * 4 * H + u;
    vstore(dg, dc * g * i * (T(1) - i), cnt);
    vstore(dg + H, dc * vload(c_prev(b, prev, u), cnt) * f * (T(1) - f), cnt);
    vstore(dg + 2 * H, dc * i * (T(1) - g * g), cnt);
    vstore(dg + 3 * H, dh * tc * o * (T(1) - o), cnt);
    vstore((prev >= 0 ? dc_ring(it, b) : dc0 + b * H) + u, dc * f, cnt);
  }
  V dh_extra(int64_t, int64_t, int, V) const { return V{}; }
};

}  // namespace

// Forward panels of two unit vectors (8 gate vectors) where a step has at most two rows: a tile of one or two
// rows does one broadcast per row and depth step for NV = 4 * NU FMAs. Paired in one process (T=200, H=256),
// the forward at B = 1 ran 1.12-1.21x faster so; at B >= 20 the narrow panels' taller tiles win (wide: 0.60-0.80x).
// (The RNN's wider panels measured 0.99-1.19x at B = 1 and GRU's 0.99x, so they keep one width.)
template <typename T>
void forward(const RecurrenceArgs& a) {
  if (a.B <= 2) {
    LstmCell<T, 2> cell(a);
    run_forward<T>(a, cell);
  } else {
    LstmCell<T, 1> cell(a);
    run_forward<T>(a, cell);
  }
}

void lstm_forward(const RecurrenceArgs& a) {
  if (a.dtype == static_cast<int>(DType::kFloat64))
    forward<double>(a);
  else
    forward<float>(a);
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
