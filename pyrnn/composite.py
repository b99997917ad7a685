"""pyrnn's layers and cells as a composition of torch's matmul and pointwise ops, one step at a time.

pyrnn's kernels compute a gradient but record no graph of how they did: what autograd needs when the backward
itself is differentiated (create_graph=True: double backward, gradient penalties, Hessian-vector products). There
the ops' backward (pyrnn/ops.py) recomputes the forward with these functions and lets autograd differentiate them,
which records that graph; so it does for gradients batched by is_grads_batched=True, whose tensors have no storage
for the kernels to read. Forward-mode AD and nested torch.func transforms run these functions in place of the ops
(pyrnn/functional.py), and so does torch.onnx.export, whose graph can hold no pyrnn op (its TorchScript exporter
gets ONNX's own LSTM/GRU/RNN op for a padded layer without projection). Same formulas as the
kernels and torch.nn (../shared/spec/PARITY.md), none of torch's recurrent kernels; several times slower than
pyrnn's kernels, so nothing else runs them.

Shapes as in pyrnn.ops: x [N, I] packed time-major, step t owning rows [offset[t], offset[t] + batch_sizes[t]);
w_ih [G*H, I], w_hh [G*H, Hin], w_hr [P, H], h0 [B, Hin], c0 [B, H].
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import Tensor


def _projection(mode: str, x: Tensor, w_ih: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor]) -> Tensor:
    """gx [N, G*H] = x [N, I] W_ih^T + b_ih, and + b_hh where it adds outside the cell math (all but GRU's)."""
    bias = b_ih
    if b_hh is not None and mode != "GRU":
        bias = b_hh if bias is None else bias + b_hh
    return x @ w_ih.t() if bias is None else torch.addmm(bias, x, w_ih.t())


def step(mode: str, gx: Tensor, h: Tensor, c: Optional[Tensor], w_hh_t: Tensor, b_hh: Optional[Tensor],
         w_hr_t: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
    """One step from gx [B, G*H] (_projection's rows) and the state h [B, Hin] (c [B, H]): the new h (and c).
    w_hh_t = W_hh^T [Hin, G*H], w_hr_t = W_hr^T [H, P] (transposed once per layer, not per step); b_hh [G*H] is
    read by GRU only (the others have it in gx)."""
    if mode == "LSTM":
        i, f, g, o = torch.addmm(gx, h, w_hh_t).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return (h if w_hr_t is None else h @ w_hr_t), c
    if mode == "GRU":
        gh = h @ w_hh_t if b_hh is None else torch.addmm(b_hh, h, w_hh_t)  # [B, 3H]
        x_r, x_z, x_n = gx.chunk(3, dim=1)
        h_r, h_z, h_n = gh.chunk(3, dim=1)
        r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        return n + z * (h - n), None  # = (1 - z) * n + z * h in one op fewer
    pre = torch.addmm(gx, h, w_hh_t)
    return (torch.relu(pre) if mode == "RNN_RELU" else torch.tanh(pre)), None


def layer(mode: str, x: Tensor, w_ih: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor], w_hh: Tensor,
          w_hr: Optional[Tensor], h0: Tensor, c0: Optional[Tensor], batch_sizes: Tensor, reverse: bool,
          for_double_backward: bool = False) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """One layer-direction. Returns y [N, Hin], h_n [B, Hin] and c_n [B, H] (LSTM) or None. for_double_backward:
    the caller differentiates it with create_graph=True, and nothing else (no forward-mode AD, transform or export)
    sees it: the steps' outputs are then joined by _JoinSteps, whose backward's backward is linear in T."""
    # Padded input (N = T * B: every step has all B rows, as batch sizes never exceed B) needs no look at the
    # batch sizes' values, which torch.export (ONNX export) cannot read.
    T, B = batch_sizes.shape[0], h0.shape[0]
    padded = _same_size(x.shape[0], T * B)
    if padded and exporting_graph():
        return _layer_scan(mode, x, w_ih, b_ih, b_hh, w_hh, w_hr, h0, c0, reverse)
    if padded and w_hr is None and tracing_for_onnx():
        return _onnx_rnn_op(mode, x, w_ih, b_ih, b_hh, w_hh, h0, c0, reverse)
    return _steps(mode, x, w_ih, b_ih, b_hh, w_hh, w_hr, h0, c0, [B] * T if padded else batch_sizes.tolist(), padded,
                  reverse, for_double_backward)


def _steps(mode: str, x: Tensor, w_ih: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor], w_hh: Tensor,
           w_hr: Optional[Tensor], h0: Tensor, c0: Optional[Tensor], sizes: list, padded: bool, reverse: bool,
           for_double_backward: bool = False) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """layer() step by step; sizes: the rows of each step (padded: all of them, every step)."""
    # One split node (not a slice per step, whose backward would write each step's gradient into a zeroed
    # copy of all of gx): gx [N, G*H] -> a view per step.
    gx_steps = torch.split(_projection(mode, x, w_ih, b_ih, b_hh), sizes)
    w_hh_t, w_hr_t = w_hh.t(), None if w_hr is None else w_hr.t()
    h, c = h0, c0
    ys: list = [None] * len(sizes)
    # A row keeps its state where a step has fewer rows: forward, a finished row its last one; reverse, a row that
    # has not begun its h0 (rows are sorted by length, so a step's rows are always the first batch_sizes[t]).
    for t in (reversed(range(len(sizes))) if reverse else range(len(sizes))):
        n = sizes[t]
        if padded or n == h.shape[0]:
            h_t, c_t = step(mode, gx_steps[t], h, c, w_hh_t, b_hh, w_hr_t)
            h, c = h_t, c_t
        else:
            (h_in, h_keep), (c_in, c_keep) = h.split([n, h.shape[0] - n]), _split(c, n)
            h_t, c_t = step(mode, gx_steps[t], h_in, c_in, w_hh_t, b_hh, w_hr_t)
            h, c = torch.cat([h_t, h_keep]), None if c is None else torch.cat([c_t, c_keep])
        ys[t] = h_t
    if for_double_backward:
        return _JoinSteps.apply(*ys), h, c
    return torch.cat(ys), h, c


class _JoinSteps(torch.autograd.Function):
    """torch.cat of the steps' outputs ys[t] [B_t, Hin], with a backward that splits the gradient by one split op.
    cat's own backward narrows the gradient once per step, and differentiating a narrow (the double backward)
    makes a zero-filled tensor of the whole output per step: T fills and sums of [N, Hin], quadratic in T. A
    split's derivative is one cat. (Plain eager autograd only: no jvp or vmap rule.)"""

    @staticmethod
    def forward(ctx, *ys: Tensor) -> Tensor:
        ctx.sizes = [y.shape[0] for y in ys]
        return torch.cat(ys)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple:
        return grad.split(ctx.sizes)


def tracing_for_onnx() -> bool:
    """ONNX's TorchScript exporter at work (dynamo=False): it traces, and maps an autograd Function's `symbolic`
    to ONNX ops, so a padded layer without projection becomes ONNX's own LSTM/GRU/RNN op, any sequence length."""
    return torch.jit.is_tracing() and torch.onnx.is_in_onnx_export()


# ONNX's gate order, as rows of torch's: LSTM i o f c from i f g o, GRU z r h from r z n.
_ONNX_GATES = {"LSTM": (0, 3, 1, 2), "GRU": (1, 0, 2), "RNN_TANH": (0,), "RNN_RELU": (0,)}


def _onnx_rows(mode: str, w: Tensor, inverse: bool = False) -> Tensor:
    """w [G*H, ...] with its gate blocks in ONNX's order (inverse: back to torch's)."""
    order = _ONNX_GATES[mode]
    if len(order) == 1:
        return w
    blocks = w.chunk(len(order))
    if inverse:
        return torch.cat([blocks[order.index(k)] for k in range(len(order))])
    return torch.cat([blocks[k] for k in order])


def _onnx_weights(mode: str, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor]
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """One direction's weights as ONNX's ops take them, in ONNX's gate order: W [G*H, I], R [G*H, H], Bias [2*G*H]
    (zeros for absent biases)."""
    zeros = w_ih.new_zeros(w_ih.shape[0])
    bias = torch.cat([_onnx_rows(mode, zeros if b_ih is None else b_ih),
                      _onnx_rows(mode, zeros if b_hh is None else b_hh)])
    return _onnx_rows(mode, w_ih), _onnx_rows(mode, w_hh), bias


def _torch_weights(mode: str, W: Tensor, R: Tensor, bias: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """_onnx_weights undone: w_ih, w_hh, b_ih, b_hh in torch's gate order."""
    GH = W.shape[0]
    return (_onnx_rows(mode, W, inverse=True), _onnx_rows(mode, R, inverse=True),
            _onnx_rows(mode, bias[:GH], inverse=True), _onnx_rows(mode, bias[GH:], inverse=True))


def _onnx_rnn_op(mode: str, x: Tensor, w_ih: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor], w_hh: Tensor,
                 h0: Tensor, c0: Optional[Tensor], reverse: bool) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """layer() of a padded input as one ONNX LSTM/GRU/RNN node (_OnnxRecurrence). x [T*B, I] -> X [T, B, I]."""
    B = h0.shape[0]
    W, R, bias = _onnx_weights(mode, w_ih, w_hh, b_ih, b_hh)
    X = x.reshape(-1, B, x.shape[1])
    states = (h0.unsqueeze(0),) if c0 is None else (h0.unsqueeze(0), c0.unsqueeze(0))
    out = _OnnxRecurrence.apply(mode, reverse, w_hh.shape[1], X, W.unsqueeze(0), R.unsqueeze(0), bias.unsqueeze(0),
                                *states)
    Y, h_n = out[0], out[1]  # Y [T, 1, B, H], h_n [1, B, H]
    return Y.reshape(-1, Y.shape[3]), h_n.squeeze(0), None if c0 is None else out[2].squeeze(0)


class _OnnxRecurrence(torch.autograd.Function):
    """ONNX's LSTM/GRU/RNN op over one direction: X [T, B, I], W [1, G*H, I], R [1, G*H, H], Bias [1, 2*G*H] (ONNX's
    gate order), h0 (c0) [1, B, H] -> Y [T, 1, B, H], Y_h (Y_c) [1, B, H]. forward computes it step by step (the
    tracer needs values); `symbolic` is what the exporter writes instead."""

    @staticmethod
    def forward(ctx, mode, reverse, hidden_size, X, W, R, bias, h0, c0=None):
        T, B, I = X.shape
        w_ih, w_hh, b_ih, b_hh = _torch_weights(mode, W[0], R[0], bias[0])
        y, h_n, c_n = _steps(mode, X.reshape(T * B, I), w_ih, b_ih, b_hh, w_hh, None, h0[0],
                             None if c0 is None else c0[0], [B] * T, True, reverse)
        Y = y.reshape(T, 1, B, y.shape[1])
        return (Y, h_n.unsqueeze(0)) if c_n is None else (Y, h_n.unsqueeze(0), c_n.unsqueeze(0))

    @staticmethod
    def symbolic(g, mode, reverse, hidden_size, X, W, R, bias, h0, c0=None):
        no_lengths = g.op("prim::Constant")  # sequence_lens left out: every sequence runs all T steps
        no_lengths.setType(torch._C.OptionalType.ofTensor())
        if not isinstance(hidden_size, int):  # a size the tracer recorded: an onnx::Constant node by now
            hidden_size = int(hidden_size.node().t("value"))
        attrs = dict(hidden_size_i=hidden_size, direction_s="reverse" if reverse else "forward")
        if mode == "LSTM":
            return g.op("LSTM", X, W, R, bias, no_lengths, h0, c0, outputs=3, **attrs)
        if mode == "GRU":
            return g.op("GRU", X, W, R, bias, no_lengths, h0, linear_before_reset_i=1, outputs=2, **attrs)
        return g.op("RNN", X, W, R, bias, no_lengths, h0, activations_s=["Relu" if mode == "RNN_RELU" else "Tanh"],
                    outputs=2, **attrs)


def onnx_packed_layers(mode: str, x: Tensor, batch_sizes: Tensor, hx: Tensor, cx: Optional[Tensor], weights: list,
                       num_layers: int, bidirectional: bool) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """All layers of a PackedSequence's data x [N, I] (batch_sizes: its steps' rows) as ONNX LSTM/GRU/RNN nodes, one
    per layer (both directions in one), for the TorchScript exporter, in the form torch.nn's layers export: the
    node takes the packed data and its batch sizes as they come, and its Y goes through Squeeze (one direction) or
    Transpose and Reshape (two). The exporter's peephole pass then moves pack_padded_sequence's PackPadded past
    each node (so X becomes the padded input and sequence_lens the lengths) until it meets pad_packed_sequence's
    PadPacked and drops both: the exported graph takes any length and batch. Weights without projection (w_hr)."""
    D = 2 if bidirectional else 1
    h_n, c_n, layer_input = [], [], x
    for layer in range(num_layers):
        ws = weights[layer * D:(layer + 1) * D]
        per_direction = [_onnx_weights(mode, w.w_ih, w.w_hh, w.b_ih, w.b_hh) for w in ws]
        W, R, bias = (torch.stack(t) for t in zip(*per_direction))  # [D, G*H, I], [D, G*H, H], [D, 2*G*H]
        states = [hx[layer * D:(layer + 1) * D]] + ([] if cx is None else [cx[layer * D:(layer + 1) * D]])
        out = _OnnxPackedLayer.apply(mode, D, ws[0].w_hh.shape[1], layer_input, batch_sizes, W, R, bias, *states)
        layer_input = out[0]
        h_n.append(out[1])
        c_n.append(out[2] if cx is not None else None)
    return layer_input, torch.cat(h_n), None if cx is None else torch.cat(c_n)


class _OnnxPackedLayer(torch.autograd.Function):
    """One layer over packed data as ONNX's op (onnx_packed_layers): x [N, I], batch_sizes [T], W [D, G*H, I], R [D,
    G*H, H], Bias [D, 2*G*H] (ONNX's gate order), h0 (c0) [D, B, H] -> y [N, D*H], h_n (c_n) [D, B, H]. forward
    computes it step by step (the tracer needs values); `symbolic` is what the exporter writes instead."""

    @staticmethod
    def forward(ctx, mode, directions, hidden_size, x, batch_sizes, W, R, bias, h0, c0=None):
        sizes, ys, hs, cs = batch_sizes.tolist(), [], [], []
        for d in range(directions):
            w_ih, w_hh, b_ih, b_hh = _torch_weights(mode, W[d], R[d], bias[d])
            y, h, c = _steps(mode, x, w_ih, b_ih, b_hh, w_hh, None, h0[d], None if c0 is None else c0[d], sizes,
                             False, d == 1)
            ys.append(y)
            hs.append(h)
            cs.append(c)
        out = (torch.cat(ys, dim=1), torch.stack(hs))
        return out if c0 is None else (*out, torch.stack(cs))

    @staticmethod
    def symbolic(g, mode, directions, hidden_size, x, batch_sizes, W, R, bias, h0, c0=None):
        if not isinstance(hidden_size, int):  # a size the tracer recorded: an onnx::Constant node by now
            hidden_size = int(hidden_size.node().t("value"))
        attrs = dict(hidden_size_i=hidden_size, direction_s="bidirectional" if directions == 2 else "forward")
        if mode == "LSTM":
            Y, h_n, c_n = g.op("LSTM", x, W, R, bias, batch_sizes, h0, c0, outputs=3, **attrs)
        elif mode == "GRU":
            Y, h_n = g.op("GRU", x, W, R, bias, batch_sizes, h0, linear_before_reset_i=1, outputs=2, **attrs)
        else:
            Y, h_n = g.op("RNN", x, W, R, bias, batch_sizes, h0, outputs=2,
                          activations_s=["Relu" if mode == "RNN_RELU" else "Tanh"] * directions, **attrs)
        # Y [T, D, B, H] -> [T, B, D*H]: the pattern the exporter's pass looks for behind the node.
        if directions == 2:
            Y = g.op("Transpose", Y, perm_i=[0, 2, 1, 3])
            Y = g.op("Reshape", Y, g.op("Constant", value_t=torch.tensor([0, 0, -1], dtype=torch.long)))
        elif g.opset >= 13:
            Y = g.op("Squeeze", Y, g.op("Constant", value_t=torch.tensor([1], dtype=torch.long)))
        else:
            Y = g.op("Squeeze", Y, axes_i=[1])
        return (Y, h_n) if mode != "LSTM" else (Y, h_n, c_n)


def exporting_graph() -> bool:
    """torch.export at work (the default ONNX exporter's capture; not the TorchScript exporter's tracer): a padded
    layer is then one scan over the steps, which exports as ONNX's Scan, so the graph takes any sequence length."""
    return torch.compiler.is_exporting() and not torch.jit.is_tracing()


def _layer_scan(mode: str, x: Tensor, w_ih: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor], w_hh: Tensor,
                w_hr: Optional[Tensor], h0: Tensor, c0: Optional[Tensor], reverse: bool
                ) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """layer() of a padded input ([N, I] = [T*B, I]) as torch's scan higher-order op over gx [T, B, G*H]."""
    from torch._higher_order_ops.scan import scan

    B = h0.shape[0]
    gx = _projection(mode, x, w_ih, b_ih, b_hh)
    gx = gx.view(-1, B, gx.shape[1])  # [T, B, G*H]
    if reverse:
        gx = gx.flip(0)
    w_hh_t, w_hr_t = w_hh.t(), None if w_hr is None else w_hr.t()

    def lstm_step(state: tuple[Tensor, Tensor], gx_t: Tensor):
        h, c = step(mode, gx_t, state[0], state[1], w_hh_t, b_hh, w_hr_t)
        return (h, c), h.clone()  # (scan's outputs may not alias its carry)

    def other_step(h: Tensor, gx_t: Tensor):
        h, _ = step(mode, gx_t, h, None, w_hh_t, b_hh, w_hr_t)
        return h, h.clone()

    if mode == "LSTM":
        (h_n, c_n), ys = scan(lstm_step, (h0, c0), gx)
    else:
        (h_n, ys), c_n = scan(other_step, h0, gx), None
    if reverse:
        ys = ys.flip(0)
    return ys.reshape(-1, ys.shape[2]), h_n, c_n


def _same_size(a, b) -> bool:
    if not torch.jit.is_tracing():
        return a == b
    # Traced by ONNX's TorchScript exporter, sizes are traced values, and the tracer warns that this test is taken as
    # a constant: rightly so, it holds for every input of a padded layout (and a dynamic batch size).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return bool(a == b)


def _split(c: Optional[Tensor], n: int) -> tuple[Optional[Tensor], Optional[Tensor]]:
    return (None, None) if c is None else tuple(c.split([n, c.shape[0] - n]))


def cell(mode: str, x: Tensor, h0: Tensor, c0: Optional[Tensor], w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
         b_hh: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
    """One step of a cell: x [B, I], h0 [B, H] (c0 [B, H]) -> h [B, H] (c [B, H])."""
    return step(mode, _projection(mode, x, w_ih, b_ih, b_hh), h0, c0, w_hh.t(), b_hh)
