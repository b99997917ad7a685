"""Host-side pieces shared by the GPU backends (Triton here, CUDA C++ in pyrnn/cuda_launch.py): compute
dtype, step schedule, output and workspace buffers, final states. No triton import, so the CUDA backend works
without triton installed. Shapes as in pyrnn/ops.py (packed rows N, G gates, Hin = P or H)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


def cudnn_rnn_uses_tf32() -> bool:
    """Whether torch.nn's recurrent layers would run float32 in TF32 on this process's settings: cuDNN's RNN
    precision, torch.backends.cudnn.rnn.fp32_precision (torch >= 2.9; set directly or through the older
    torch.backends.cudnn.allow_tf32), on by default, where cuDNN is enabled (else torch.nn runs its own
    float32 kernels). pyrnn's float32 GEMMs on CUDA follow it, so swapping nn.LSTM for pyrnn.LSTM keeps the
    precision (and the tensor-core speed) a user had; so may the CUDA recurrence (pyrnn.cuda_launch.set_mma)."""
    if not torch.backends.cudnn.enabled:
        return False
    try:
        return torch.backends.cudnn.rnn.fp32_precision == "tf32"
    except (AttributeError, RuntimeError):
        return bool(torch.backends.cudnn.allow_tf32)


def compute_dtype(t: Tensor) -> torch.dtype:
    """float64 stays float64; every other dtype computes in float32 (half types: float32 accumulation and
    float32 cell state, inputs widened once and outputs narrowed once)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def widen(dtype: torch.dtype, *tensors: Optional[Tensor]) -> list:
    return [None if t is None else t.to(dtype).contiguous() for t in tensors]


def _to_device(t: Tensor, device) -> Tensor:
    """A small CPU tensor on the device without stalling the host: a plain .to(device) from pageable memory
    waits for the stream to drain (the GPU then idles while Python prepares the next launch); from pinned
    memory the copy is queued like a kernel. The caching host allocator keeps the pinned block alive until
    the copy has run."""
    if torch.device(device).type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def padded(batch_sizes: Tensor) -> bool:
    """Whether every step has all rows (a padded batch; batch_sizes is non-increasing, on the CPU)."""
    return batch_sizes.numel() == 0 or int(batch_sizes[0]) == int(batch_sizes[-1])


def schedule(batch_sizes: Tensor, device) -> tuple[Tensor, Tensor]:
    """batch_sizes [T] and the first packed row of every step, on the device. batch_sizes is on the CPU
    (PackedSequence's convention) and non-increasing (checked by the ops)."""
    bs = batch_sizes.to(device="cpu", dtype=torch.int64)
    T = bs.numel()
    if padded(bs):  # every step has all B rows: built on the device
        B = int(bs[0]) if T else 0
        return (torch.full((T,), B, dtype=torch.int64, device=device),
                torch.arange(T, dtype=torch.int64, device=device).mul_(B))
    table = _to_device(torch.stack((bs, torch.cumsum(bs, 0) - bs)), device)  # [2, T]: one copy
    return table[0], table[1]


def last_rows(batch_sizes: Tensor, reverse: bool, device) -> Tensor:
    """Packed row of each batch row's final state: its last step, or step 0 for the reverse direction."""
    bs = batch_sizes.to(device="cpu", dtype=torch.int64)
    B = int(bs[0]) if bs.numel() else 0
    if reverse:
        return torch.arange(B, device=device)
    if padded(bs):  # the last step's rows
        return torch.arange((bs.numel() - 1) * B, bs.numel() * B, device=device)
    b = torch.arange(B)
    lengths = (bs[None, :] > b[:, None]).sum(1)
    offsets = torch.cumsum(bs, 0) - bs
    return _to_device(offsets[lengths - 1] + b, device)


def forward_buffers(mode: str, like: Tensor, N: int, H: int, P: int, save: bool) -> tuple[Tensor, dict]:
    """y [N, Hin] and the workspace: cell, proj_in [N, H] (LSTM), gates [N, G*H], gh_n [N, H] (GRU), h_prev."""
    G = GATES[mode]
    new = lambda *s: torch.empty(*s, dtype=like.dtype, device=like.device)  # noqa: E731
    e = new(0)
    y = new(N, P or H)
    ws = dict(
        y=y,
        cell=new(N, H) if mode == "LSTM" else e,
        proj_in=new(N, H) if P else e,
        gates=new(N, G * H) if save and G > 1 else e,
        gh_n=new(N, H) if save and mode == "GRU" else e,
        h_prev=new(N, P or H) if save else e,
    )
    return y, ws


def finish_forward(mode: str, y: Tensor, ws: dict, batch_sizes: Tensor, reverse: bool, out_dtype: torch.dtype):
    """y, h_n, c_n (LSTM, else None) in the caller's dtype, and the workspace."""
    last = last_rows(batch_sizes, reverse, y.device)
    h_n = y.index_select(0, last).to(out_dtype)
    c_n = ws["cell"].index_select(0, last).to(out_dtype) if mode == "LSTM" else None
    # The ops declare the workspace in the caller's dtype (their fake implementations say so, and the weight
    # gradients multiply it with d_gates of that dtype): half types keep float32 only inside the kernels.
    ws = {k: v.to(out_dtype) for k, v in ws.items()}
    return ws["y"], h_n, c_n, ws  # ws["y"] is y, converted once


def backward_buffers(mode: str, like: Tensor, N: int, H: int, P: int, B: int) -> dict:
    """d_gates [N, G*H], d_gates_h (GRU; else d_gates itself), dh0, dc0 (LSTM), dh_total [N, P] and the
    two-step carry rings dh_ring [2, B, Hin], dc_ring [2, B, H]."""
    G = GATES[mode]
    new = lambda *s: torch.empty(*s, dtype=like.dtype, device=like.device)  # noqa: E731
    e = new(0)
    d_gates = new(N, G * H)
    return dict(
        d_gates=d_gates,
        d_gates_h=new(N, G * H) if mode == "GRU" else d_gates,
        dh0=new(B, P or H),
        dc0=new(B, H) if mode == "LSTM" else e,
        dh_total=new(N, P) if P else e,
        dh_ring=new(2, B, P or H),
        dc_ring=new(2, B, H) if mode == "LSTM" else e,
    )


def finish_backward(mode: str, out: dict, out_dtype: torch.dtype):
    """d_gates, d_gates_h, dh0, dc0 (LSTM, else None), dh_total in the caller's dtype."""
    c = lambda t: t.to(out_dtype)  # noqa: E731
    dc0 = c(out["dc0"]) if mode == "LSTM" else None
    return c(out["d_gates"]), c(out["d_gates_h"]), c(out["dh0"]), dc0, c(out["dh_total"])
