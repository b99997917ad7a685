"""Multi-layer, bidirectional recurrences composed from the per-layer ops in pyrnn.ops.

Everything here works on the packed time-major layout: x is [N, I] where step t owns rows
[offset[t], offset[t] + batch_sizes[t]); a padded [T, B, I] input is the case batch_sizes == [B] * T.
Each layer-direction is one op (pyrnn.ops): the input projection of all steps as one GEMM, then the
recurrence in pyrnn's kernels.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import backend as _backend
from . import composite, ops

MODES = ("LSTM", "GRU", "RNN_TANH", "RNN_RELU")


class LayerWeights(NamedTuple):
    """Parameters of one layer-direction, as torch.nn names them (biases and w_hr may be None)."""

    w_ih: Tensor  # [G*H, I]
    w_hh: Tensor  # [G*H, Hin]
    b_ih: Optional[Tensor]  # [G*H]
    b_hh: Optional[Tensor]  # [G*H]
    w_hr: Optional[Tensor] = None  # [P, H]


def time_major_batch_sizes(T: int, B: int) -> Tensor:
    """batch_sizes of a padded [T, B, *] input: every step has all B rows."""
    return torch.full((T,), B, dtype=torch.int64)


def layer_direction(
    mode: str,
    x: Tensor,
    batch_sizes: Tensor,
    h0: Tensor,
    c0: Optional[Tensor],
    w: LayerWeights,
    reverse: bool,
) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """One layer-direction. x: [N, I], h0: [B, Hin], c0: [B, H]. Returns y [N, Hin], h_n [B, Hin], c_n."""
    if ops.needs_composite():  # forward-mode AD, nested torch.func transforms, ONNX export: torch's ops
        return composite.layer(mode, x, w.w_ih, w.b_ih, w.b_hh, w.w_hh, w.w_hr, h0, c0, batch_sizes, reverse)
    save = ops.needs_workspace(x, h0, c0, *w)
    if mode == "LSTM":
        y, h_n, c_n, *_ = ops.apply(ops.lstm_layer, x, w.w_ih, w.b_ih, w.b_hh, w.w_hh, w.w_hr, h0, c0, batch_sizes,
                                    reverse, save)
        return y, h_n, c_n
    if mode == "GRU":
        y, h_n, *_ = ops.apply(ops.gru_layer, x, w.w_ih, w.b_ih, w.b_hh, w.w_hh, h0, batch_sizes, reverse, save)
        return y, h_n, None
    y, h_n, _ = ops.apply(ops.rnn_layer, x, w.w_ih, w.b_ih, w.b_hh, w.w_hh, h0, batch_sizes, reverse,
                          mode == "RNN_RELU", save)
    return y, h_n, None


def cell(mode: str, x: Tensor, h0: Tensor, c0: Optional[Tensor], w: LayerWeights) -> tuple[Tensor, Optional[Tensor]]:
    """One step of a cell. x: [B, I], h0/c0: [B, H]. Returns h [B, H] and c [B, H] (LSTM) or None.

    On the CPU (float32/float64) this is the fused cell op (input projection inside the kernel); elsewhere
    (GPUs, forced GPU backends, half types) the layer recurrence with T = 1."""
    if _autocast_enabled(x):
        with _without_autocast(x):
            return cell(mode, x, h0, c0, w)
    if ops.needs_composite():
        return composite.cell(mode, x, h0, c0, w.w_ih, w.w_hh, w.b_ih, w.b_hh)
    if x.is_cpu and x.dtype in ops._KERNEL_DTYPES and _backend.get_backend() in ("auto", "cpu"):
        args = (x, h0, c0, w.w_ih, w.w_hh, w.b_ih, w.b_hh)
        if ops.plain_eager(args):  # nothing compiles, traces or transforms it
            return ops.cell_eager(mode, *args)
        h, c, *_ = ops.apply(ops.cell, mode, *args, ops.needs_workspace(*args))
        return h, (c if mode == "LSTM" else None)
    if x.is_cpu and x.dtype in (torch.bfloat16, torch.float16):
        # In float32, as the layers (recurrence) and torch's CPU cells compute half types. (After the float32 path:
        # x.device.type alone costs 0.35 us, 2-3% of a B=1 cell call.)
        f32 = lambda t: None if t is None else t.float()  # noqa: E731
        h, c = cell(mode, x.float(), h0.float(), f32(c0), LayerWeights(*(f32(t) for t in w)))
        return h.to(x.dtype), None if c is None else c.to(x.dtype)
    h, _, c = layer_direction(mode, x, time_major_batch_sizes(1, x.shape[0]), h0, c0, w, reverse=False)
    return h, c


def _autocast_enabled(x: Tensor) -> bool:
    # The global test first (~0.06 us; the device's own ~0.7, a tenth of a B=1 cell call's Python time). Meta tensors
    # have no autocast.
    return (torch._C._is_any_autocast_enabled() and x.device.type in ("cpu", "cuda")
            and torch.is_autocast_enabled(x.device.type))


def _without_autocast(x: Tensor):
    # Under torch.autocast pyrnn computes in its inputs' own dtype: autocast would otherwise turn the few torch ops
    # inside (small GEMMs, pyrnn.composite's matmuls) to bf16/fp16 and mix dtypes the kernels do not take.
    # torch.nn's outputs there are bf16 or float32 depending on the layer (oneDNN's LSTM bf16, GRU float32).
    return torch.autocast(x.device.type, enabled=False)


def _warn_if_unrolled(batch_sizes: Tensor, weights: list) -> None:
    # ONNX's TorchScript exporter gets ONNX's own LSTM/GRU/RNN ops for layers without projection, padded
    # (pyrnn.composite.layer) or packed (composite.onnx_packed_layers); a projected LSTM, which those ops cannot
    # express, it traces step by step through pyrnn.composite's loop (the default exporter gets a scan). The step
    # count is a traced value, whose tracer would warn that reading it makes it a constant: here, that is the point.
    if all(w.w_hr is None for w in weights):
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        steps = int(batch_sizes.shape[0])
    warnings.warn(f"pyrnn: ONNX export unrolls the recurrence over the example input's {steps} time steps (proj_size: "
                  "ONNX's LSTM has no projection): the exported graph takes sequences of that length only (its batch "
                  "size may be dynamic; the default exporter, dynamo=True, takes any length)", stacklevel=4)


def recurrence(
    mode: str,
    x: Tensor,
    batch_sizes: Tensor,
    hx: Tensor,
    cx: Optional[Tensor],
    weights: Sequence[LayerWeights],
    num_layers: int,
    dropout: float,
    training: bool,
    bidirectional: bool,
    from_packed: bool = False,
) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """All layers and directions. x: [N, I]; hx: [L*D, B, Hin]; cx: [L*D, B, H] (LSTM);
    weights in torch.nn order (layer 0 fwd, layer 0 rev, layer 1 fwd, ...). from_packed: x and batch_sizes are a
    PackedSequence's (what ONNX export needs to know: it maps those to sequence lengths).
    Returns output [N, D*Hin], h_n [L*D, B, Hin], c_n [L*D, B, H] (LSTM) or None."""
    if mode not in MODES:
        raise ValueError(f"Unknown mode '{mode}'")
    if _autocast_enabled(x):
        with _without_autocast(x):
            return recurrence(mode, x, batch_sizes, hx, cx, weights, num_layers, dropout, training, bidirectional,
                              from_packed)
    if x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16):
        # The CPU kernels compute in float32 (as torch does for half types); gradients flow back through the casts.
        f32 = lambda t: None if t is None else t.float()  # noqa: E731
        out, h_n, c_n = recurrence(
            mode, x.float(), batch_sizes, hx.float(), f32(cx),
            [LayerWeights(*(f32(t) for t in w)) for w in weights],
            num_layers, dropout, training, bidirectional, from_packed,
        )
        return out.to(x.dtype), h_n.to(x.dtype), None if c_n is None else c_n.to(x.dtype)
    if ops.exporting_to_onnx() and not composite.exporting_graph():
        # Not with dropout in training: a Dropout between the layers' ops would hide them from the exporter's pass
        # (torch.nn's export refuses that case too).
        onnx_ops = composite.tracing_for_onnx() and not (dropout > 0 and training)
        if from_packed and onnx_ops and all(w.w_hr is None for w in weights):
            return composite.onnx_packed_layers(mode, x, batch_sizes, hx, cx, weights, num_layers, bidirectional)
        _warn_if_unrolled(batch_sizes, weights)
    D = 2 if bidirectional else 1
    h_n, c_n = [], []
    layer_input = x
    for layer in range(num_layers):
        outputs = []
        for d in range(D):
            k = layer * D + d
            y, h, c = layer_direction(
                mode, layer_input, batch_sizes, hx[k], None if cx is None else cx[k], weights[k], reverse=d == 1
            )
            outputs.append(y)
            h_n.append(h)
            c_n.append(c)
        layer_input = outputs[0] if D == 1 else torch.cat(outputs, dim=1)  # [N, D*Hin]
        if dropout > 0 and training and layer < num_layers - 1:
            layer_input = F.dropout(layer_input, p=dropout, training=True)
    return layer_input, torch.stack(h_n), (torch.stack(c_n) if cx is not None else None)
