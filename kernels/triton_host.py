"""Host side of the Triton backend: the same per-layer-direction entry points as the CPU kernels (see
pyrnn/ops.py for the shapes), launching recurrence_triton's kernels.

Half types run with float32 accumulation and a float32 cell state (inputs are widened once, outputs
narrowed once). On a CPU tensor the kernels run only under TRITON_INTERPRET=1 (the tests do that).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

import triton
import triton.language as tl

from .recurrence_triton import recurrence_backward_kernel, recurrence_forward_kernel

CELLS = {"LSTM": (0, 4), "GRU": (1, 3), "RNN_TANH": (2, 1), "RNN_RELU": (2, 1)}
BM, BU, BK = 16, 32, 32  # rows per program, units per block, reduction block


def _compute_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _schedule(batch_sizes: Tensor, device) -> tuple[Tensor, Tensor]:
    bs = batch_sizes.to(device="cpu", dtype=torch.int64)
    offsets = torch.cumsum(bs, 0) - bs
    return bs.to(device), offsets.to(device)


def last_rows(batch_sizes: Tensor, reverse: bool, device) -> Tensor:
    """Packed row of each batch row's final state: its last step, or step 0 for the reverse direction."""
    bs = batch_sizes.to(device="cpu", dtype=torch.int64)
    B = int(bs[0]) if bs.numel() else 0
    b = torch.arange(B)
    if reverse:
        return b.to(device)
    lengths = (bs[None, :] > b[:, None]).sum(1)
    offsets = torch.cumsum(bs, 0) - bs
    return (offsets[lengths - 1] + b).to(device)


def _c(t: Optional[Tensor], dtype) -> Optional[Tensor]:
    return None if t is None else t.to(dtype).contiguous()


def forward(mode: str, gx: Tensor, w_hh: Tensor, h0: Tensor, batch_sizes: Tensor, reverse: bool, save: bool,
            c0: Optional[Tensor] = None, w_hr: Optional[Tensor] = None, b_hn: Optional[Tensor] = None):
    """Returns y [N, Hin], h_n [B, Hin], c_n [B, H] (LSTM) and the workspace dict for backward."""
    cell_id, G = CELLS[mode]
    dt, out_dt = _compute_dtype(gx), gx.dtype
    gx, w_hh, h0, c0, w_hr, b_hn = (_c(t, dt) for t in (gx, w_hh, h0, c0, w_hr, b_hn))
    N, H, B = gx.shape[0], w_hh.shape[0] // G, h0.shape[0]
    P = 0 if w_hr is None else w_hr.shape[0]
    Hin = P or H
    T = batch_sizes.numel()
    bs, offsets = _schedule(batch_sizes, gx.device)
    new = lambda *s: torch.empty(*s, dtype=dt, device=gx.device)  # noqa: E731
    empty = new(0)
    y = new(N, Hin)
    cell = new(N, H) if mode == "LSTM" else empty
    proj_in = new(N, H) if P else empty
    gates = new(N, G * H) if save and mode != "RNN_TANH" and mode != "RNN_RELU" else empty
    gh_n = new(N, H) if save and mode == "GRU" else empty
    h_prev = new(N, Hin) if save else empty
    if B > 0:
        recurrence_forward_kernel[(triton.cdiv(B, BM),)](
            gx, w_hh, w_hr if P else empty, b_hn if b_hn is not None else empty, h0, c0 if c0 is not None else empty,
            y, cell, proj_in, gates, gh_n, h_prev, bs, offsets,
            T, B, H, P, Hin, 0, T,
            CELL=cell_id, G=G, REVERSE=reverse, RELU=mode == "RNN_RELU", HAS_BHN=b_hn is not None, SAVE=save,
            HAS_PROJ=P > 0, ACC=_acc(dt), BM=BM, BU=BU, BK=BK,
        )
    last = last_rows(batch_sizes, reverse, gx.device)
    h_n = y.index_select(0, last)
    c_n = cell.index_select(0, last) if mode == "LSTM" else None
    ws = dict(y=y, cell=cell, proj_in=proj_in, gates=gates, gh_n=gh_n, h_prev=h_prev)
    return y.to(out_dt), h_n.to(out_dt), None if c_n is None else c_n.to(out_dt), ws


def backward(mode: str, dy: Tensor, dh_n: Tensor, w_hh: Tensor, batch_sizes: Tensor, reverse: bool, ws: dict,
             dc_n: Optional[Tensor] = None, c0: Optional[Tensor] = None, w_hr: Optional[Tensor] = None):
    """Returns d_gates [N, G*H] (dL/dgx), d_gates_h [N, G*H] (dL/d(W_hh h + b_hh)), dh0, dc0, dh_total [N, P]."""
    cell_id, G = CELLS[mode]
    dt, out_dt = _compute_dtype(dy), dy.dtype
    dy, dh_n, w_hh, dc_n, c0, w_hr = (_c(t, dt) for t in (dy, dh_n, w_hh, dc_n, c0, w_hr))
    N, H, B = dy.shape[0], w_hh.shape[0] // G, dh_n.shape[0]
    P = 0 if w_hr is None else w_hr.shape[0]
    Hin = P or H
    T = batch_sizes.numel()
    bs, offsets = _schedule(batch_sizes, dy.device)
    new = lambda *s: torch.empty(*s, dtype=dt, device=dy.device)  # noqa: E731
    empty = new(0)
    d_gates = new(N, G * H)
    d_gates_h = new(N, G * H) if mode == "GRU" else d_gates
    dh0, dc0 = new(B, Hin), new(B, H) if mode == "LSTM" else empty
    dh_total = new(N, P) if P else empty
    dh_ring, dc_ring = new(2, B, Hin), new(2, B, H) if mode == "LSTM" else empty
    if B > 0:
        ws = {k: v.to(dt) for k, v in ws.items()}
        recurrence_backward_kernel[(triton.cdiv(B, BM),)](
            w_hh, w_hr if P else empty, c0 if c0 is not None else empty, ws["y"], ws["cell"], ws["proj_in"],
            ws["gates"], ws["gh_n"], ws["h_prev"],
            dy, dh_n, dc_n if dc_n is not None else empty,
            d_gates, d_gates_h, dh0, dc0, dh_total, dh_ring, dc_ring, bs, offsets,
            T, B, H, P, Hin,
            CELL=cell_id, G=G, REVERSE=reverse, RELU=mode == "RNN_RELU", HAS_PROJ=P > 0, ACC=_acc(dt),
            BM=BM, BU=BU, BK=BK,
        )
    cast = lambda t: t.to(out_dt)  # noqa: E731
    return cast(d_gates), cast(d_gates_h), cast(dh0), (cast(dc0) if mode == "LSTM" else None), cast(dh_total)
