"""Host side of the CUDA C++ backend (pyrnn._cuda): the same entry points as pyrnn.kernels.triton_host, so
pyrnn.ops dispatches to either; buffers and schedule come from pyrnn.kernels.host_common."""

from __future__ import annotations

import os
from typing import Optional

import torch
from torch import Tensor

from ._ext import cpu_kernels
from .kernels import host_common as hc

NAMES = {"LSTM": "lstm", "GRU": "gru", "RNN_TANH": "rnn", "RNN_RELU": "rnn"}
_resident = True
# TF32 tensor-core dot products in the resident kernels (csrc/cuda/mma_tile.cuh): opt-in until they have been
# validated and timed on a GPU (BENCHMARKS.md, GPU tuning notes); PYRNN_CUDA_MMA=1 or set_mma(True).
_mma = os.environ.get("PYRNN_CUDA_MMA", "0") == "1"


def set_resident(enabled: bool) -> None:
    """Use the weight-resident persistent kernels (csrc/cuda/resident.cuh) where they take a layer (float32
    compute, no projection), else the row-block kernels; False forces the row-block kernels (for testing)."""
    global _resident
    _resident = bool(enabled)


def set_mma(enabled: bool) -> None:
    """Let the resident kernels run their recurrent dot products in TF32 on tensor cores (mma.sync; float32
    accumulation and cell state) where TF32 is allowed: for float32 inputs where torch.nn's cuDNN layers would
    use it (host_common.cudnn_rnn_uses_tf32), always for bf16/fp16 inputs, whose values carry no more bits
    than TF32; and where a layer has at least 8 rows. Off by default (PYRNN_CUDA_MMA=1 turns it on)."""
    global _mma
    _mma = bool(enabled)


def mma_enabled() -> bool:
    """Whether set_mma (or PYRNN_CUDA_MMA=1) has let the resident kernels use TF32 tensor cores."""
    return _mma


def _recurrence_tf32(input_dtype: torch.dtype) -> bool:
    if not _mma:
        return False
    return input_dtype in (torch.bfloat16, torch.float16) or (input_dtype == torch.float32 and hc.cudnn_rnn_uses_tf32())


def record_phases(records: Optional[list]) -> None:
    """Profiling: while `records` is a list, each resident launch appends (mode, backward, T, B, H, phases) with
    phases an int64 CUDA tensor [10] that the kernel fills: the clock64() cycles block 0 spent in each phase
    of its steps (8 slots; the kernels' PhaseClock comments name them), the step count, elapsed ns. None: off."""
    global _phase_records
    _phase_records = records


_phase_records: Optional[list] = None


def _run_resident(mode: str, a, backward: bool, bs: Optional[Tensor], offsets: Optional[Tensor], stream: int,
                  device, tf32: bool) -> bool:
    """Launches the resident kernel; False where it does not take this layer (the caller falls back)."""
    if not _resident:
        return False
    counter = torch.empty(1, dtype=torch.int32, device=device)  # grid barrier; zeroed by the launch
    phases = None
    if _phase_records is not None:
        phases = torch.zeros(10, dtype=torch.int64, device=device)
        _phase_records.append((mode, backward, a.T, a.B, a.H, phases))
    return getattr(_module(), f"{NAMES[mode]}_resident")(a, backward, _p(bs), _p(offsets), _p(counter), stream,
                                                          _p(phases), tf32)


_GEMM_WORKSPACE_BYTES = 32 << 20  # cuBLAS's recommended scratch on Hopper


def gemm_tf32(a: Tensor, b: Tensor, bias: Optional[Tensor] = None) -> Optional[Tensor]:
    """a [M, K] @ b [K, N] (+ bias [N]) for float32 CUDA tensors in TF32 on tensor cores (csrc/cuda/gemm_tf32.cpp);
    None where that GEMM is unavailable (pyrnn._cuda not built, or cuBLAS not loadable)."""
    try:
        module = _module()
    except ImportError:
        return None
    if not module.gemm_tf32_available():
        return None
    M, K, N = a.shape[0], a.shape[1], b.shape[1]
    # cuBLAS reads a row-major matrix or a transposed one in place; anything else (sliced columns, expanded
    # stride-0 dimensions) is copied first
    a = a if a.is_contiguous() or a.t().is_contiguous() else a.contiguous()
    b = b if b.is_contiguous() or b.t().is_contiguous() else b.contiguous()
    if bias is not None:
        out = bias.expand(M, N).contiguous()
    else:
        out = torch.empty(M, N, dtype=a.dtype, device=a.device)
    if M == 0 or N == 0:
        return out
    if K == 0:
        return out if bias is not None else out.zero_()
    with torch.cuda.device(a.device):
        workspace = torch.empty(_GEMM_WORKSPACE_BYTES, dtype=torch.uint8, device=a.device)
        stream = torch.cuda.current_stream(a.device).cuda_stream
        done = module.gemm_tf32(M, N, K, _p(a), a.stride(0), a.stride(1), _p(b), b.stride(0), b.stride(1), _p(out),
                                1.0 if bias is not None else 0.0, _p(workspace), _GEMM_WORKSPACE_BYTES, stream)
    return out if done else None


def _schedule(batch_sizes: Tensor, device) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """The step schedule on the device; (None, None) for a padded batch (every step has all rows), which the
    kernels compute themselves (cells.h)."""
    if hc.padded(batch_sizes):
        return None, None
    return hc.schedule(batch_sizes, device)


def _module():
    from . import _cuda

    return _cuda


def _p(t: Optional[Tensor]) -> int:
    return 0 if t is None or t.numel() == 0 else t.data_ptr()


def _args(mode: str, dt: torch.dtype, T: int, B: int, H: int, P: int, reverse: bool):
    a = cpu_kernels().RecurrenceArgs()
    a.dtype, a.T, a.B, a.H, a.P, a.reverse = (1 if dt == torch.float64 else 0), T, B, H, P, reverse
    a.nonlinearity = 1 if mode == "RNN_RELU" else 0
    a.y_stride = P or H
    return a


def forward(mode, gx, w_hh, h0, batch_sizes, reverse, save, c0=None, w_hr=None, b_hn=None):
    G, dt = hc.GATES[mode], hc.compute_dtype(gx)
    out_dt = gx.dtype
    gx, w_hh, h0, c0, w_hr, b_hn = hc.widen(dt, gx, w_hh, h0, c0, w_hr, b_hn)
    N, H, B, T = gx.shape[0], w_hh.shape[0] // G, h0.shape[0], batch_sizes.numel()
    P = 0 if w_hr is None else w_hr.shape[0]
    y, ws = hc.forward_buffers(mode, gx, N, H, P, save)
    a = _args(mode, dt, T, B, H, P, reverse)
    a.gx, a.w_hr, a.b_hn, a.h0, a.c0, a.y = _p(gx), _p(w_hr), _p(b_hn), _p(h0), _p(c0), _p(y)
    a.w_hh = _p(w_hh)
    a.cell, a.proj_in, a.gates, a.gh_n, a.h_prev_ws = (_p(ws[k]) for k in ("cell", "proj_in", "gates", "gh_n", "h_prev"))
    bs, offsets = _schedule(batch_sizes, gx.device)
    stream = torch.cuda.current_stream(gx.device).cuda_stream
    with torch.cuda.device(gx.device):  # the kernels launch on the current device: make it the tensors'
        if not _run_resident(mode, a, False, bs, offsets, stream, gx.device, _recurrence_tf32(out_dt)):
            w_hh_t = w_hh.t().contiguous()  # [Hin, G*H]: consecutive threads read consecutive units
            getattr(_module(), f"{NAMES[mode]}_forward")(a, _p(w_hh_t), _p(bs), _p(offsets), stream)
    return hc.finish_forward(mode, y, ws, batch_sizes, reverse, out_dt)


def backward(mode, dy, dh_n, w_hh, batch_sizes, reverse, ws, dc_n=None, c0=None, w_hr=None):
    G, dt = hc.GATES[mode], hc.compute_dtype(dy)
    out_dt = dy.dtype
    dy, dh_n, w_hh, dc_n, c0, w_hr = hc.widen(dt, dy, dh_n, w_hh, dc_n, c0, w_hr)
    ws = {k: v.to(dt).contiguous() for k, v in ws.items()}
    N, H, B, T = dy.shape[0], w_hh.shape[0] // G, dh_n.shape[0], batch_sizes.numel()
    P = 0 if w_hr is None else w_hr.shape[0]
    out = hc.backward_buffers(mode, dy, N, H, P, B)
    a = _args(mode, dt, T, B, H, P, reverse)
    a.w_hh, a.w_hr, a.c0, a.dy, a.dh_n, a.dc_n = _p(w_hh), _p(w_hr), _p(c0), _p(dy), _p(dh_n), _p(dc_n)
    a.y, a.cell, a.proj_in, a.gates, a.gh_n, a.h_prev_ws = (_p(ws[k]) for k in ("y", "cell", "proj_in", "gates", "gh_n", "h_prev"))
    a.d_gates, a.dh0, a.dc0, a.dh_total = _p(out["d_gates"]), _p(out["dh0"]), _p(out["dc0"]), _p(out["dh_total"])
    a.d_gates_h = _p(out["d_gates_h"]) if mode == "GRU" else 0
    a.dh_prev_ws, a.dc_prev_ws = _p(out["dh_ring"]), _p(out["dc_ring"])
    bs, offsets = _schedule(batch_sizes, dy.device)
    stream = torch.cuda.current_stream(dy.device).cuda_stream
    with torch.cuda.device(dy.device):
        if not _run_resident(mode, a, True, bs, offsets, stream, dy.device, _recurrence_tf32(out_dt)):
            getattr(_module(), f"{NAMES[mode]}_backward")(a, _p(bs), _p(offsets), stream)
    return hc.finish_backward(mode, out, out_dt)
