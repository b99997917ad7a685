"""Host side of the Triton backend: the same per-layer-direction entry points as the CPU kernels (see
pyrnn/ops.py for the shapes), launching recurrence_triton's kernels. On a CPU tensor the kernels run only
under TRITON_INTERPRET=1 (the tests do that)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

import triton
import triton.language as tl

from . import host_common as hc
from .recurrence_triton import recurrence_backward_kernel, recurrence_forward_kernel

CELL_IDS = {"LSTM": 0, "GRU": 1, "RNN_TANH": 2, "RNN_RELU": 2}
BM, BU, BK = 16, 32, 32  # rows per program, units per block, reduction block
MODES = ("auto", "persistent", "step")
_mode = "auto"


def set_mode(mode: str) -> None:
    """Force the persistent kernel (one launch per sequence) or the step kernels (launches per step)."""
    global _mode
    if mode not in MODES:
        raise ValueError(f"pyrnn: unknown Triton mode '{mode}', expected one of {MODES}")
    _mode = mode


def _persistent(B: int, H: int, device) -> bool:
    """The persistent kernel's parallelism is ceil(B / BM) programs; it pays where per-step launches would
    dominate (small layers) or where the row blocks alone fill the GPU. Otherwise the step kernels."""
    if _mode != "auto":
        return _mode == "persistent"
    if device.type != "cuda":
        return True
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return H <= 128 or triton.cdiv(B, BM) >= sms


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def forward(mode: str, gx: Tensor, w_hh: Tensor, h0: Tensor, batch_sizes: Tensor, reverse: bool, save: bool,
            c0: Optional[Tensor] = None, w_hr: Optional[Tensor] = None, b_hn: Optional[Tensor] = None):
    """Returns y [N, Hin], h_n [B, Hin], c_n [B, H] (LSTM) and the workspace dict for backward."""
    G, dt = hc.GATES[mode], hc.compute_dtype(gx)
    out_dt = gx.dtype
    gx, w_hh, h0, c0, w_hr, b_hn = hc.widen(dt, gx, w_hh, h0, c0, w_hr, b_hn)
    N, H, B, T = gx.shape[0], w_hh.shape[0] // G, h0.shape[0], batch_sizes.numel()
    P = 0 if w_hr is None else w_hr.shape[0]
    bs, offsets = hc.schedule(batch_sizes, gx.device)
    y, ws = hc.forward_buffers(mode, gx, N, H, P, save)
    empty = gx.new_empty(0)

    def launch(grid, it_begin, it_end, split):
        recurrence_forward_kernel[grid](
            gx, w_hh, w_hr if P else empty, b_hn if b_hn is not None else empty, h0, c0 if c0 is not None else empty,
            y, ws["cell"], ws["proj_in"], ws["gates"], ws["gh_n"], ws["h_prev"], bs, offsets,
            T, B, H, P, P or H, it_begin, it_end,
            CELL=CELL_IDS[mode], G=G, REVERSE=reverse, RELU=mode == "RNN_RELU", HAS_BHN=b_hn is not None, SAVE=save,
            HAS_PROJ=P > 0, ACC=_acc(dt), BM=BM, BU=BU, BK=BK, SPLIT=split,
        )

    row_blocks = triton.cdiv(B, BM)
    if B > 0 and _persistent(B, H, gx.device):
        launch((row_blocks, 1), 0, T, 0)
    elif B > 0:
        for it in range(T):  # the step kernels: gates over (rows, units), then the projection over (rows, P)
            launch((row_blocks, triton.cdiv(H, BU)), it, it + 1, 1)
            if P:
                launch((row_blocks, triton.cdiv(P, BU)), it, it + 1, 2)
    return hc.finish_forward(mode, y, ws, batch_sizes, reverse, out_dt)


def backward(mode: str, dy: Tensor, dh_n: Tensor, w_hh: Tensor, batch_sizes: Tensor, reverse: bool, ws: dict,
             dc_n: Optional[Tensor] = None, c0: Optional[Tensor] = None, w_hr: Optional[Tensor] = None):
    """Returns d_gates [N, G*H] (dL/dgx), d_gates_h [N, G*H] (dL/d(W_hh h + b_hh)), dh0, dc0, dh_total [N, P]."""
    G, dt = hc.GATES[mode], hc.compute_dtype(dy)
    out_dt = dy.dtype
    dy, dh_n, w_hh, dc_n, c0, w_hr = hc.widen(dt, dy, dh_n, w_hh, dc_n, c0, w_hr)
    N, H, B, T = dy.shape[0], w_hh.shape[0] // G, dh_n.shape[0], batch_sizes.numel()
    P = 0 if w_hr is None else w_hr.shape[0]
    bs, offsets = hc.schedule(batch_sizes, dy.device)
    out = hc.backward_buffers(mode, dy, N, H, P, B)
    empty = dy.new_empty(0)
    ws = {k: v.to(dt) for k, v in ws.items()}

    def launch(grid, j_begin, j_end, split):
        recurrence_backward_kernel[grid](
            w_hh, w_hr if P else empty, c0 if c0 is not None else empty, ws["y"], ws["cell"], ws["proj_in"],
            ws["gates"], ws["gh_n"], ws["h_prev"],
            dy, dh_n, dc_n if dc_n is not None else empty,
            out["d_gates"], out["d_gates_h"], out["dh0"], out["dc0"], out["dh_total"], out["dh_ring"], out["dc_ring"],
            bs, offsets, T, B, H, P, P or H, j_begin, j_end,
            CELL=CELL_IDS[mode], G=G, REVERSE=reverse, RELU=mode == "RNN_RELU", HAS_PROJ=P > 0, ACC=_acc(dt),
            BM=BM, BU=BU, BK=BK, SPLIT=split,
        )

    row_blocks = triton.cdiv(B, BM)
    if B > 0 and _persistent(B, H, dy.device):
        launch((row_blocks, 1), 0, T, 0)
    elif B > 0:
        for j in range(T):  # per backward step: dh_total (projection), gate gradients, then dh_prev
            if P:
                launch((row_blocks, triton.cdiv(P, BU)), j, j + 1, 1)
            launch((row_blocks, triton.cdiv(H, BU)), j, j + 1, 2)
            launch((row_blocks, triton.cdiv(P or H, BU)), j, j + 1, 3)
    return hc.finish_backward(mode, out, out_dt)
