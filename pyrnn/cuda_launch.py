"""Host side of the CUDA C++ backend (pyrnn._cuda): the same entry points as pyrnn.kernels.triton_host, so
pyrnn.ops dispatches to either. Half types run with float32 accumulation and a float32 cell state."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ._ext import cpu_kernels

CELLS = {"LSTM": ("lstm", 4), "GRU": ("gru", 3), "RNN_TANH": ("rnn", 1), "RNN_RELU": ("rnn", 1)}


def _module():
    from . import _cuda

    return _cuda


def _dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _p(t: Optional[Tensor]) -> int:
    return 0 if t is None or t.numel() == 0 else t.data_ptr()


def _schedule(batch_sizes: Tensor, device):
    bs = batch_sizes.to(device="cpu", dtype=torch.int64)
    return bs.to(device), (torch.cumsum(bs, 0) - bs).to(device)


def _args(mode, dt, T, B, H, P, reverse):
    a = cpu_kernels().RecurrenceArgs()
    a.dtype, a.T, a.B, a.H, a.P, a.reverse = (1 if dt == torch.float64 else 0), T, B, H, P, reverse
    a.nonlinearity = 1 if mode == "RNN_RELU" else 0
    a.y_stride = P or H
    return a


def forward(mode, gx, w_hh, h0, batch_sizes, reverse, save, c0=None, w_hr=None, b_hn=None):
    from .kernels.triton_host import last_rows

    name, G = CELLS[mode]
    dt, out_dt = _dtype(gx), gx.dtype
    cast = lambda t: None if t is None else t.to(dt).contiguous()  # noqa: E731
    gx, w_hh, h0, c0, w_hr, b_hn = map(cast, (gx, w_hh, h0, c0, w_hr, b_hn))
    N, H, B, T = gx.shape[0], w_hh.shape[0] // G, h0.shape[0], batch_sizes.numel()
    P = 0 if w_hr is None else w_hr.shape[0]
    new = lambda *s: torch.empty(*s, dtype=dt, device=gx.device)  # noqa: E731
    e = new(0)
    y = new(N, P or H)
    ws = dict(y=y, cell=new(N, H) if mode == "LSTM" else e, proj_in=new(N, H) if P else e,
              gates=new(N, G * H) if save and G > 1 else e, gh_n=new(N, H) if save and mode == "GRU" else e,
              h_prev=new(N, P or H) if save else e)
    a = _args(mode, dt, T, B, H, P, reverse)
    a.gx, a.w_hr, a.b_hn, a.h0, a.c0, a.y = _p(gx), _p(w_hr), _p(b_hn), _p(h0), _p(c0), _p(y)
    a.cell, a.proj_in, a.gates, a.gh_n, a.h_prev_ws = (_p(ws[k]) for k in ("cell", "proj_in", "gates", "gh_n", "h_prev"))
    w_hh_t = w_hh.t().contiguous()
    bs, offsets = _schedule(batch_sizes, gx.device)
    stream = torch.cuda.current_stream(gx.device).cuda_stream
    getattr(_module(), f"{name}_forward")(a, _p(w_hh_t), _p(bs), _p(offsets), stream)
    last = last_rows(batch_sizes, reverse, gx.device)
    h_n = y.index_select(0, last)
    c_n = ws["cell"].index_select(0, last) if mode == "LSTM" else None
    return y.to(out_dt), h_n.to(out_dt), None if c_n is None else c_n.to(out_dt), ws


def backward(mode, dy, dh_n, w_hh, batch_sizes, reverse, ws, dc_n=None, c0=None, w_hr=None):
    name, G = CELLS[mode]
    dt, out_dt = _dtype(dy), dy.dtype
    cast = lambda t: None if t is None else t.to(dt).contiguous()  # noqa: E731
    dy, dh_n, w_hh, dc_n, c0, w_hr = map(cast, (dy, dh_n, w_hh, dc_n, c0, w_hr))
    ws = {k: cast(v) for k, v in ws.items()}
    N, H, B, T = dy.shape[0], w_hh.shape[0] // G, dh_n.shape[0], batch_sizes.numel()
    P = 0 if w_hr is None else w_hr.shape[0]
    Hin = P or H
    new = lambda *s: torch.empty(*s, dtype=dt, device=dy.device)  # noqa: E731
    e = new(0)
    d_gates = new(N, G * H)
    d_gates_h = new(N, G * H) if mode == "GRU" else d_gates
    dh0, dc0 = new(B, Hin), new(B, H) if mode == "LSTM" else e
    dh_total = new(N, P) if P else e
    dh_ring, dc_ring = new(2, B, Hin), new(2, B, H) if mode == "LSTM" else e
    a = _args(mode, dt, T, B, H, P, reverse)
    a.w_hh, a.w_hr, a.c0, a.dy, a.dh_n, a.dc_n = _p(w_hh), _p(w_hr), _p(c0), _p(dy), _p(dh_n), _p(dc_n)
    a.y, a.cell, a.proj_in, a.gates, a.gh_n, a.h_prev_ws = (_p(ws[k]) for k in ("y", "cell", "proj_in", "gates", "gh_n", "h_prev"))
    a.d_gates, a.d_gates_h, a.dh0, a.dc0, a.dh_total = _p(d_gates), _p(d_gates_h if mode == "GRU" else None), _p(dh0), _p(dc0), _p(dh_total)
    a.dh_prev_ws, a.dc_prev_ws = _p(dh_ring), _p(dc_ring)
    bs, offsets = _schedule(batch_sizes, dy.device)
    stream = torch.cuda.current_stream(dy.device).cuda_stream
    getattr(_module(), f"{name}_backward")(a, _p(bs), _p(offsets), stream)
    c = lambda t: t.to(out_dt)  # noqa: E731
    return c(d_gates), c(d_gates_h), c(dh0), (c(dc0) if mode == "LSTM" else None), c(dh_total)
