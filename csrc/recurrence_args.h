// Arguments of one layer-direction recurrence, forward or backward: sizes and raw pointers only, so the core
// builds without torch headers. Python fills this from tensors' data_ptr(); a pointer of 0 means "absent".
// N = sum(batch_sizes) packed rows; Hin = P if P > 0 else H (width of the recurrent state h); G gates.
#pragma once

#include <cstdint>

namespace pyrnn {

enum class DType : int { kFloat32 = 0, kFloat64 = 1 };
enum class Nonlinearity : int { kTanh = 0, kRelu = 1 };

struct RecurrenceArgs {
  int dtype = 0;          // DType
  int nonlinearity = 0;   // Nonlinearity (RNN only)
  int nthreads = 1;       // upper bound; small problems use fewer
  bool reverse = false;   // the reverse direction of a bidirectional layer
  int64_t T = 0, B = 0;   // steps, rows of the first (largest) step
  int64_t H = 0, P = 0;   // hidden size, projection size (LSTM; 0 = none)
  int64_t y_stride = 0;   // row stride of y, in elements (>= Hin)
  uintptr_t batch_sizes = 0;  // int64 [T], non-increasing; 0: every step has B rows

  // Forward inputs.
  uintptr_t gx = 0;       // [N, G*H] input projection W_ih x + biases folded in (not b_hn for GRU)
  uintptr_t w_hh = 0;     // [G*H, Hin] (packed into gate-interleaved panels by the kernel)
  uintptr_t w_hr = 0;     // [P, H] LSTM projection
  uintptr_t b_hn = 0;     // [H] GRU: the hidden bias of the n gate, which sits inside r * (...)
  uintptr_t h0 = 0;       // [B, Hin]
  uintptr_t c0 = 0;       // [B, H] (LSTM)
  // Cells (T = 1) pass x and W_ih instead of a computed gx: the kernel then fills the gx buffer itself with
  // W_ih x + b_ih + b_hh (GRU: b_hh of r and z only), in the same pass over the weights as the gates.
  int64_t I = 0;          // input features
  uintptr_t x = 0;        // [B, I]
  uintptr_t w_ih = 0;     // [G*H, I]
  uintptr_t b_ih = 0;     // [G*H] or 0
  uintptr_t b_hh = 0;     // [G*H] or 0 (GRU: pass its n part as b_hn too)
  // Forward outputs.
  uintptr_t y = 0;        // [N, Hin] hidden state after every step
  uintptr_t h_n = 0;      // [B, Hin] each row's state after its last step
  uintptr_t c_n = 0;      // [B, H] (LSTM)
  uintptr_t cell = 0;     // [N, H] LSTM cell state after every step (the backward reads it), or 0 with cell_ring
  uintptr_t cell_ring = 0;  // [2, B, H] LSTM inference: the cell state of the last two steps only
  uintptr_t proj_in = 0;  // [N, H] LSTM projection input o * tanh(c) (P > 0 only)
  // Forward workspace kept for the backward (training only; 0 in inference).
  uintptr_t gates = 0;      // [N, G*H] gate activations
  uintptr_t gh_n = 0;       // [N, H] GRU: W_hn h + b_hn
  uintptr_t h_prev_ws = 0;  // [N, Hin] the state entering every step (for dW_hh = dG^T h_prev; the RNN's
                            // backward reads each step's output there too, or in h_n at a row's last step)

  // Backward inputs (plus w_hh, w_hr and the forward's outputs and workspace above).
  uintptr_t dy = 0;       // [N, Hin] dL/dy
  uintptr_t dh_n = 0;     // [B, Hin]
  uintptr_t dc_n = 0;     // [B, H] (LSTM)
  // Backward outputs.
  uintptr_t d_gates = 0;    // [N, G*H] dL/dgx (pre-activation gate gradients)
  uintptr_t d_gates_h = 0;  // [N, G*H] GRU: dL/d(W_hh h + b_hh), which differs from d_gates in the n gate
  uintptr_t dh0 = 0;        // [B, Hin]
  uintptr_t dc0 = 0;        // [B, H] (LSTM)
  uintptr_t dh_total = 0;   // [N, P] LSTM projection: dL/dh per step, for dW_hr
  uintptr_t dx = 0;         // [B, I] cells (x given): dL/dx = d_gates W_ih
  uintptr_t dw_ih = 0;      // [G*H, I] cells, or 0: d_gates^T x
  uintptr_t dw_hh = 0;      // [G*H, Hin] cells, or 0: d_gates_h^T h0
  uintptr_t db_ih = 0;      // [G*H] cells, or 0: d_gates summed over the rows
  uintptr_t db_hh = 0;      // [G*H] cells, or 0: d_gates_h summed over the rows
  // Backward workspace.
  uintptr_t dh_prev_ws = 0;  // [2, B, Hin] dL/d(state entering a step), read by the step that produced it,
                             // which the backward processes right after: a ring of two steps suffices
  uintptr_t dc_prev_ws = 0;  // [2, B, H] LSTM: the same for the cell state
};

// C[M, N] (+)= A[M, K] B[K, N] (+ bias[N]); operands by element strides, C row-major with row stride ldc.
struct GemmSpec {
  int dtype = 0;
  int nthreads = 1;
  int64_t M = 0, N = 0, K = 0;
  uintptr_t a = 0;
  int64_t sa_m = 0, sa_k = 0;
  uintptr_t b = 0;
  int64_t sb_k = 0, sb_n = 0;
  uintptr_t c = 0;
  int64_t ldc = 0;
  bool accumulate = false;  // C += A B instead of C = A B
  uintptr_t bias = 0;       // [N] added to every row (0: none)
};

}  // namespace pyrnn
