"""Host side of the Triton backend: the same per-layer-direction entry points as the CPU kernels (see
pyrnn/ops.py for the shapes), launching recurrence_triton's kernels. On a CPU tensor the kernels run only
under TRITON_INTERPRET=1 (the tests do that)."""

from __future__ import annotations

import os
from typing import Optional

import torch
from torch import Tensor

import triton
import triton.language as tl

from . import host_common as hc
from .recurrence_triton import recurrence_backward_kernel, recurrence_forward_kernel
from .resident_triton import resident_backward_kernel, resident_forward_kernel

CELL_IDS = {"LSTM": 0, "GRU": 1, "RNN_TANH": 2, "RNN_RELU": 2}
BM, BU, BK = 16, 32, 32  # rows per program, units per block, reduction block
MODES = ("auto", "persistent", "resident", "step")
_mode = "auto"
INTERPRETER_PROGRAMS = 8  # off the GPU (TRITON_INTERPRET=1): the "SM count" the resident plan splits H over


def set_mode(mode: str) -> None:
    """Force a kernel: "persistent" (one launch per sequence, programs over rows, W_hh streamed), "resident"
    (one launch per sequence, programs over units, W_hh in registers; where resident_plan() has no plan, the
    persistent kernel) or "step" (launches per step). "auto" chooses by shape."""
    global _mode
    if mode not in MODES:
        raise ValueError(f"pyrnn: unknown Triton mode '{mode}', expected one of {MODES}")
    _mode = mode


def _floor_pow2(n: int) -> int:
    return 1 << (max(n, 1).bit_length() - 1)


def resident_plan(G: int, B: int, H: int, P: int, dtype: torch.dtype, device) -> Optional[tuple]:
    """(programs, units per program BU, padded H, rows per block R, num_warps) for the weight-resident
    kernels, or None where they do not apply: a projection, or a slice of W_hh over 128 registers a thread.
    One program per SM at most (they must all be resident: the grid barrier). Sizes as measured on an H100
    (BENCHMARKS.md): 4 warps while the slice takes at most 64 registers a thread there, else 8; R rows per
    block up to 256 values of the broadcast product a thread (R = 16 at H <= 512, 8 at H = 1024)."""
    if P or H == 0 or (device.type == "cuda" and _sm_share_limited()):
        return None
    slots = (torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda"
             else INTERPRETER_PROGRAMS)
    bu = triton.next_power_of_2(triton.cdiv(H, slots))
    hk = triton.next_power_of_2(H)
    words = 2 if dtype == torch.float64 else 1
    slice_regs = G * bu * hk * words  # 32-bit registers of W_hh per program
    num_warps = 4 if slice_regs <= 64 * 32 * 4 else 8
    if slice_regs > 128 * 32 * num_warps:
        return None
    rows = min(_floor_pow2(256 * 32 * num_warps // (bu * hk * words)), 16, triton.next_power_of_2(max(B, 1)))
    return triton.cdiv(H, bu), bu, hk, rows, num_warps


def _grid_barrier_ok(device) -> bool:
    """Whether the resident kernels' programs run concurrently, so they may wait for each other: on a GPU,
    not under TRITON_INTERPRET=1 (it runs programs one after another, CUDA tensors included). The launch is
    not cooperative: with at most one program per SM, all are resident once the SMs are free (a kernel on
    another stream only delays them); a device whose SM count overstates what this process may use (an MPS
    thread limit, which resident_plan() refuses) would hang."""
    return device.type == "cuda" and os.environ.get("TRITON_INTERPRET", "0") != "1"


def _sm_share_limited() -> bool:
    """An MPS client limited to a share of the SMs (CUDA_MPS_ACTIVE_THREAD_PERCENTAGE < 100) still sees them
    all in the device properties: no resident kernel there (its programs could not all be resident)."""
    try:
        return float(os.environ.get("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "100")) < 100
    except ValueError:
        return False


def _kernel(G: int, B: int, H: int, P: int, dtype: torch.dtype, device) -> str:
    """"persistent", "resident" or "step". On a GPU by default (measured on an H100, BENCHMARKS.md): the
    resident kernel where it takes the layer and B <= 64 (faster than the step kernels at every measured
    shape up to there; larger batches were not measured); else the persistent kernel where its row blocks
    alone fill the GPU, else the step kernels. Off the GPU (the interpreter) the persistent kernel, the fewest
    launches."""
    plan = resident_plan(G, B, H, P, dtype, device)
    if _mode == "resident":
        return "resident" if plan is not None else "persistent"
    if _mode != "auto":
        return _mode
    if device.type != "cuda":
        return "persistent"
    if plan is not None and B <= 64:
        return "resident"
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return "persistent" if triton.cdiv(B, BM) >= sms else "step"


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
    kernel = _kernel(G, B, H, P, dt, gx.device) if B > 0 else None
    if kernel == "resident":
        programs, bu, hk, rows, num_warps = resident_plan(G, B, H, P, dt, gx.device)
        counter = torch.zeros(1, dtype=torch.int32, device=gx.device)
        sync = _grid_barrier_ok(gx.device)  # else one launch per step instead of the grid barrier

        def launch_resident(it_begin, it_end):
            resident_forward_kernel[(programs,)](
                gx, w_hh, b_hn if b_hn is not None else empty, h0, c0 if c0 is not None else empty,
                y, ws["cell"], ws["gates"], ws["gh_n"], ws["h_prev"], bs, offsets, counter,
                T, B, H, it_begin, it_end,
                CELL=CELL_IDS[mode], G=G, REVERSE=reverse, RELU=mode == "RNN_RELU", HAS_BHN=b_hn is not None,
                SAVE=save, ACC=_acc(dt), BU=bu, HK=hk, R=rows, SYNC=sync, num_warps=num_warps,
            )

        for it in [0] if sync else range(T):
            launch_resident(it, T if sync else it + 1)
    elif kernel == "persistent":
        launch((row_blocks, 1), 0, T, 0)
    elif kernel == "step":
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
    kernel = _kernel(G, B, H, P, dt, dy.device) if B > 0 else None
    if kernel == "resident":
        programs, bu, hk, rows, num_warps = resident_plan(G, B, H, P, dt, dy.device)
        counter = torch.zeros(1, dtype=torch.int32, device=dy.device)
        sync = _grid_barrier_ok(dy.device)  # else one launch per half-step instead of the grid barrier

        def launch_resident(half_begin, half_end):
            resident_backward_kernel[(programs,)](
                w_hh, c0 if c0 is not None else empty, ws["y"], ws["cell"], ws["gates"], ws["gh_n"], ws["h_prev"],
                dy, dh_n, dc_n if dc_n is not None else empty,
                out["d_gates"], out["d_gates_h"], out["dh0"], out["dc0"], out["dh_ring"], out["dc_ring"],
                bs, offsets, counter, T, B, H, half_begin, half_end,
                CELL=CELL_IDS[mode], G=G, REVERSE=reverse, RELU=mode == "RNN_RELU", ACC=_acc(dt),
                BU=bu, HK=hk, R=rows, SYNC=sync, num_warps=num_warps,
            )

        for half in [0] if sync else range(2 * T):
            launch_resident(half, 2 * T if sync else half + 1)
    elif kernel == "persistent":
        launch((row_blocks, 1), 0, T, 0)
    elif kernel == "step":
        for j in range(T):  # per backward step: dh_total (projection), gate gradients, then dh_prev
            if P:
                launch((row_blocks, triton.cdiv(P, BU)), j, j + 1, 1)
            launch((row_blocks, triton.cdiv(H, BU)), j, j + 1, 2)
            launch((row_blocks, triton.cdiv(P or H, BU)), j, j + 1, 3)
    return hc.finish_backward(mode, out, out_dt)
