"""Autograd-aware ops over one layer-direction recurrence (torch.library custom ops).

A layer op runs one layer-direction: the input projection of all steps as one GEMM (gx = x W_ih^T + b_ih, with
the hidden biases that add outside the cell math folded in), then the recurrence in pyrnn's own kernels. Shapes,
with N packed rows (N = T * B for a padded batch), G gates, Hin = P if a projection else H:

    x: [N, I]      w_ih: [G*H, I]     b_ih, b_hh: [G*H]   gx: [N, G*H] (inside)
    w_hh: [G*H, Hin]   w_hr: [P, H]   h0: [B, Hin]   c0: [B, H]   batch_sizes: int64 [T] (CPU)
    y: [N, Hin]    h_n: [B, Hin]      c_n: [B, H]

The forward also returns the workspace its backward needs (empty tensors when save_workspace is False,
i.e. in inference). The backward is a custom op too, so torch.compile and opcheck see both as opaque ops;
the weight gradients and dx are single GEMMs over all steps (pyrnn::gemm on the CPU; on GPUs torch's, or for
float32 cuBLAS in TF32 where torch.nn's cuDNN layers would use TF32: _cudnn_rnn_uses_tf32). Under
create_graph=True the backward differentiates a recomputation in torch's ops instead (pyrnn/composite.py), so
that the gradients it returns can be differentiated again.

Cells (one step, CPU) are a single op, pyrnn::cell: its kernel also computes the input projection, and its
backward dx and the weight gradients, so a cell call is one trip into C++ each way.

Callers go through apply(op, *args): in plain eager mode it runs the op's implementation, setup_context and
backward through an autograd.Function (no dispatcher round trips), or the implementation alone when nothing
needs a gradient; otherwise the registered custom op.
Large CPU workspaces come from pyrnn's workspace cache (_workspace), large outputs are huge-page advised.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Optional

import torch
import torch.autograd.forward_ad as _forward_ad
from torch import Tensor

from . import backend as _backend
from . import composite as _composite
from ._ext import cpu_kernels
from .kernels import host_common as _host_common

__all__ = [
    "cell",
    "cell_backward",
    "gemm",
    "lstm_layer",
    "lstm_layer_backward",
    "gru_layer",
    "gru_layer_backward",
    "rnn_layer",
    "rnn_layer_backward",
]

_KERNEL_DTYPES = {torch.float32: 0, torch.float64: 1}


def _scalar_name(t: Tensor) -> str:
    """torch's C++ name of a dtype (Float, Double, ...), as its error messages print it."""
    return {torch.float32: "Float", torch.float64: "Double", torch.float16: "Half", torch.bfloat16: "BFloat16"}.get(
        t.dtype, str(t.dtype)
    )


# Buffers from this size on are backed by transparent huge pages where the OS allows it (PYRNN_HUGE_PAGES=0
# turns this off): the outputs are fresh tens of MiB per call, and 4 KiB page faults were a visible part of
# a training step.
_HUGE_PAGE_MIN_BYTES = 0 if os.environ.get("PYRNN_HUGE_PAGES", "1") == "0" else 4 << 20
# Workspaces (tensors only autograd and pyrnn's backward see) from this size on come from pyrnn's cache of
# huge-page buffers (csrc/workspace_pool.h), which a finished backward hands back for the next step.
_POOL_MIN_BYTES = 1 << 20


def _empty(like: Tensor, *shape: int) -> Tensor:
    """An uninitialised CPU buffer shaped `shape` like `like`, huge-page backed when large."""
    out = like.new_empty(shape)
    nbytes = out.numel() * out.element_size()
    if _HUGE_PAGE_MIN_BYTES and nbytes >= _HUGE_PAGE_MIN_BYTES:
        cpu_kernels().advise_huge_pages(out.data_ptr(), nbytes)
    return out


def _workspace(like: Tensor, *shape: int) -> Tensor:
    """An uninitialised CPU workspace shaped `shape` like `like`, from the workspace cache when large."""
    nbytes = math.prod(shape) * like.element_size()
    if nbytes < _POOL_MIN_BYTES:
        return like.new_empty(shape)
    raw = torch.from_dlpack(cpu_kernels().pool_buffer(nbytes))  # uint8 [nbytes]
    return raw.view(like.dtype).view(shape)


def _ptr(t: Optional[Tensor]) -> int:
    return 0 if t is None or t.numel() == 0 else t.data_ptr()


def _check_device_and_dtype(gx: Tensor) -> str:
    """The backend for this call (pyrnn.backend.select), after checking the CPU kernels can take the dtype."""
    name = _backend.select(gx)
    if name == "cpu" and gx.dtype not in _KERNEL_DTYPES:
        raise TypeError(f"pyrnn: CPU kernels support float32 and float64, got {gx.dtype}")
    return name


def _gpu(backend: str):
    """The launcher module of a GPU backend; both have forward(mode, ...) and backward(mode, ...)."""
    if backend == "cuda":
        from . import cuda_launch

        return cuda_launch
    from .kernels import triton_host

    return triton_host


def _error(msg: str) -> RuntimeError:
    return RuntimeError(f"pyrnn: {msg}")


# The checks below build their messages only on failure: formatting ~15 messages per call up front cost more than
# a cell's kernel at B=1.
def _validate(gx: Tensor, gates: int, w_hh: Tensor, h0: Tensor, batch_sizes: Tensor, c0=None, w_hr=None, b_hn=None):
    """The kernels read raw pointers: every shape and dtype is checked here, before any is touched."""
    if not (gx.dim() == 2 and w_hh.dim() == 2 and h0.dim() == 2):
        raise _error("gx, w_hh and h0 must be 2-D")
    H = w_hh.shape[0] // gates
    P = 0 if w_hr is None else w_hr.shape[0]
    Hin = P if P > 0 else H
    if not (H > 0 and w_hh.shape[0] == gates * H):
        raise _error(f"w_hh must have {gates}*H rows, got {tuple(w_hh.shape)}")
    if w_hh.shape[1] != Hin:
        raise _error(f"w_hh must be [{gates}*H, {Hin}], got {tuple(w_hh.shape)}")
    if gx.shape[1] != gates * H:
        raise _error(f"gx must be [N, {gates * H}], got {tuple(gx.shape)}")
    if h0.shape[1] != Hin:
        raise _error(f"h0 must be [B, {Hin}], got {tuple(h0.shape)}")
    if w_hr is not None and not (w_hr.dim() == 2 and w_hr.shape[1] == H and 0 < P < H):
        raise _error(f"w_hr must be [P, {H}] with P < H")
    if c0 is not None and c0.shape != (h0.shape[0], H):
        raise _error(f"c0 must be [{h0.shape[0]}, {H}], got {tuple(c0.shape)}")
    if b_hn is not None and b_hn.shape != (H,):
        raise _error(f"b_hn must be [{H}], got {tuple(b_hn.shape)}")
    dtype, device = gx.dtype, gx.device
    for name, t in (("w_hh", w_hh), ("h0", h0), ("c0", c0), ("w_hr", w_hr), ("b_hn", b_hn)):
        if t is not None:
            if t.dtype != dtype:
                raise _error(f"Expected {name} dtype {dtype}, got {t.dtype}")
            if t.device != device:
                raise _error(f"Expected {name} on {device}, got {t.device}")
    if not (batch_sizes.dim() == 1 and batch_sizes.numel() > 0):
        raise _error("batch_sizes must be a non-empty 1-D tensor")
    bs = batch_sizes.tolist()
    if bs[0] != h0.shape[0]:
        raise _error(f"batch_sizes[0] ({bs[0]}) must equal the batch of h0 ({h0.shape[0]})")
    if bs[-1] < 0 or sorted(bs, reverse=True) != bs:
        raise _error("batch_sizes must be non-increasing")
    if sum(bs) != gx.shape[0]:
        raise _error(f"batch_sizes sum to {sum(bs)} but gx has {gx.shape[0]} rows")


def _validate_backward(dy: Tensor, dh_n: Tensor, batch_sizes: Tensor, rows: int, Hin: int, workspace: dict):
    N = int(batch_sizes.sum())
    if dy.shape != (N, Hin):
        raise _error(f"dy must be [{N}, {Hin}], got {tuple(dy.shape)}")
    if not (dh_n.dim() == 2 and dh_n.shape[1] == Hin):
        raise _error(f"dh_n must be [B, {Hin}], got {tuple(dh_n.shape)}")
    if batch_sizes.numel() != 0 and int(batch_sizes[0]) != dh_n.shape[0]:
        raise _error("dh_n batch must be batch_sizes[0]")
    for name, (t, shape) in workspace.items():
        if not (t.numel() == 0 and rows == 0 or tuple(t.shape) == shape):
            raise _error(f"{name} must be {shape}, got {tuple(t.shape)}")
        if t.dtype != dy.dtype:
            raise _error(f"Expected {name} dtype {dy.dtype}, got {t.dtype}")


def _args(gx: Tensor, batch_sizes: Tensor, B: int, H: int, P: int, reverse: bool):
    a = cpu_kernels().RecurrenceArgs()
    a.dtype = _KERNEL_DTYPES[gx.dtype]
    a.nthreads = torch.get_num_threads()
    a.reverse = reverse
    a.T = batch_sizes.numel()
    a.B = B
    a.H = H
    a.P = P
    a.y_stride = P if P > 0 else H
    a.batch_sizes = batch_sizes.data_ptr()
    return a


def _batch_sizes(batch_sizes: Tensor) -> Tensor:
    return batch_sizes.to(device="cpu", dtype=torch.int64).contiguous()


def _zeros_if_none(grad: Optional[Tensor], like: Tensor) -> Tensor:
    return torch.zeros_like(like) if grad is None else grad.contiguous()


def needs_workspace(*tensors: Optional[Tensor]) -> bool:
    """Whether autograd records a call on these tensors (grad mode on, one of them requiring grad): then the
    forward saves its workspace for the backward."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _workspace_has_no_grad(ctx, *workspace: Tensor) -> None:
    # Without this autograd hands the backward a zero-filled gradient for every output it did not reach, the
    # workspace included ([N, 4H] and more: a third of an LSTM training step went to filling them).
    ctx.mark_non_differentiable(*workspace)
    ctx.set_materialize_grads(False)


def _engine_needs(ctx, inputs: tuple, probe: int) -> tuple:
    """ctx.needs_input_grad narrowed to the gradients this backward's graph task will use. inputs: the op's
    forward arguments up to its last tensor, as saved (None where not a tensor: an optional tensor left out, a
    mode string); probe: the index of w_hh among them, asked first: where its gradient is wanted (every plain
    backward()) the answer is needs_input_grad, after one question to the engine (~0.5 us; all of them, ~3 us,
    were 3% of a B=1 RNNCell training step).

    needs_input_grad says which inputs require grad. torch.autograd.grad(outputs, inputs) and
    backward(inputs=...) run only the nodes on a path to their inputs, and torch.nn's own nodes skip the other
    gradients (task_should_compute_output): so pyrnn's layers skip theirs, e.g. every weight gradient of a
    gradient taken with respect to the input alone (saliency, adversarial examples, the first backward of a
    gradient penalty). Only for pyrnn's own eager autograd.Functions, whose node's edges are their tensor
    arguments in order; anything else keeps needs_input_grad."""
    needs = ctx.needs_input_grad
    node = torch._C._current_autograd_node()
    if node is None or getattr(node, "_forward_cls", None) not in _OWN_FUNCTIONS:
        return needs
    edges = node.next_functions
    if needs[probe]:  # (needs_input_grad is always a safe answer, so this takes no alignment check)
        fn = edges[sum(t is not None for t in inputs[:probe])][0]
        if fn is not None and _engine_will_run(fn):
            return needs
    if len(edges) != sum(t is not None for t in inputs):
        return needs
    narrowed, edges = list(needs), iter(edges)
    for k, t in enumerate(inputs):
        if t is not None:
            fn = next(edges)[0]
            narrowed[k] = narrowed[k] and fn is not None and _engine_will_run(fn)
    return tuple(narrowed)


def _engine_will_run(fn) -> bool:
    try:
        return torch._C._will_engine_execute_node(fn)
    except RuntimeError:  # a leaf that autograd.grad captures: torch declines to answer for those, and it is needed
        return True


def _require_workspace(ws: Tensor, rows: int, op: str) -> None:
    if ws.numel() == 0 and rows > 0:
        raise RuntimeError(
            f"pyrnn::{op}: the forward ran with save_workspace=False (inference), so it cannot be differentiated"
        )


# ----------------------------------------------------------------------------------------------------- GEMM


def _gemm_impl(a: Tensor, b: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """a [M, K] @ b [K, N] (+ bias [N]): for CPU float32/float64 with at least 32 rows pyrnn's GEMM or MKL's
    (torch_cpu_gemm; transposed views are read in place, no copy), torch's otherwise."""
    return _gemm(a, b, bias, _empty)


# Whether torch.nn's recurrent layers would run float32 in TF32 (kernels/host_common.py, where the CUDA launcher
# reads it too): pyrnn's float32 GEMMs on CUDA follow it.
_cudnn_rnn_uses_tf32 = _host_common.cudnn_rnn_uses_tf32


_torch_gemm_auto: Optional[bool] = None


def torch_cpu_gemm() -> bool:
    """Whether the CPU path's large GEMMs run in torch's (MKL) rather than pyrnn's (pyrnn.set_cpu_gemm). "auto":
    torch's on Intel CPUs where torch has MKL. Measured on a 2-core Xeon (AVX-512, 2 threads), MKL against pyrnn's
    GEMM on the layers' shapes: float32 1.02-1.6x faster (the weight gradients most), ~90% of the FMA peak;
    float64 0.92-1.4x (the small projections slower, the weight gradients faster); whole training steps 1.06-1.19x.
    On the AMD EPYC (Zen 5) machines MKL ran them at ~40% of the peak, pyrnn's at 76-93%."""
    global _torch_gemm_auto
    choice = _backend.get_cpu_gemm()
    if choice != "auto":
        return choice == "torch"
    if _torch_gemm_auto is None:
        _torch_gemm_auto = cpu_kernels().cpu_vendor() == "intel" and torch.backends.mkl.is_available()
    return _torch_gemm_auto


def _gemm(a: Tensor, b: Tensor, bias: Optional[Tensor], alloc) -> Tensor:
    # alloc(like, M, N) gives the output buffer: _workspace for results only pyrnn consumes.
    if not (a.dim() == 2 and b.dim() == 2 and a.shape[1] == b.shape[0]):
        raise _error(f"gemm: bad shapes {a.shape} @ {b.shape}")
    if a.dtype != b.dtype:  # torch's matmul words this
        raise RuntimeError(f"mat1 and mat2 must have the same dtype, but got {_scalar_name(a)} and {_scalar_name(b)}")
    if bias is not None and bias.dtype != a.dtype:
        raise _error("gemm: bias dtype differs")
    M, K, N = a.shape[0], a.shape[1], b.shape[1]
    if a.is_cuda and a.dtype == torch.float32 and _cudnn_rnn_uses_tf32():
        out = _gpu("cuda").gemm_tf32(a, b, bias)
        if out is not None:
            return out
    if (a.device.type != "cpu" or a.dtype not in _KERNEL_DTYPES or _backend.get_backend() not in ("auto", "cpu")
            or M < 32):
        # GPUs (and the Triton tests) use torch's GEMM: cuBLAS runs these shapes near peak. So do a few rows
        # (cells, tiny batches): pyrnn's GEMM packs all of B per call, which only pays over many rows.
        return torch.addmm(bias, a, b) if bias is not None else a.mm(b)
    if bias is not None and bias.shape != (N,):
        raise _error(f"gemm: bias must be [{N}]")
    if torch_cpu_gemm():  # MKL on Intel: into the same pooled buffer, transposed views read in place as well
        out = alloc(a, M, N)
        return torch.addmm(bias, a, b, out=out) if bias is not None else torch.mm(a, b, out=out)
    if a.stride(0) != 1 and a.stride(1) != 1:
        a = a.contiguous()
    if b.stride(0) != 1 and b.stride(1) != 1:
        b = b.contiguous()
    bias = None if bias is None else bias.contiguous()
    out = alloc(a, M, N)
    spec = cpu_kernels().GemmSpec()
    spec.dtype, spec.nthreads = _KERNEL_DTYPES[a.dtype], torch.get_num_threads()
    spec.M, spec.N, spec.K = M, N, K
    spec.a, (spec.sa_m, spec.sa_k) = _ptr(a), a.stride()
    spec.b, (spec.sb_k, spec.sb_n) = _ptr(b), b.stride()
    spec.c, spec.ldc, spec.bias = _ptr(out), N, _ptr(bias)
    cpu_kernels().gemm(spec)
    return out


gemm = torch.library.custom_op("pyrnn::gemm", _gemm_impl, mutates_args=())


@gemm.register_fake
def _(a, b, bias=None):
    return a.new_empty(a.shape[0], b.shape[1])


def _projection_bias(bias: Optional[Tensor], hidden_bias: Optional[Tensor], hidden_rows: int) -> Optional[Tensor]:
    # bias + hidden_bias on its first hidden_rows entries (the gates whose b_hh adds outside the cell math): a few
    # microseconds here, where an add (GRU: slices, an add and a cat) in autograd's graph cost tens per layer.
    if hidden_bias is None or hidden_rows == 0:
        return bias
    if bias is None:
        bias = hidden_bias.new_zeros(hidden_bias.shape)
    if hidden_rows >= bias.shape[0]:
        return bias + hidden_bias
    return torch.cat([bias[:hidden_rows] + hidden_bias[:hidden_rows], bias[hidden_rows:]])


def _projection(x: Tensor, w_ih: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor], hidden_rows: int) -> Tensor:
    """gx [N, G*H] = x [N, I] @ w_ih [G*H, I]^T + b_ih (+ b_hh on outputs [0, hidden_rows)): the input projection
    of all steps at once, with the hidden biases that fold into it (LSTM, RNN: all of b_hh; GRU: its r and z rows,
    2H, since b_hn sits inside r * (...)). A layer's own buffer (only its recurrence reads it): from the workspace
    cache."""
    if x.dim() != 2 or w_ih.dim() != 2 or x.shape[1] != w_ih.shape[1]:
        raise _error(f"x must be [N, I] and w_ih [G*H, I], got {tuple(x.shape)} and {tuple(w_ih.shape)}")
    for name, b in (("b_ih", b_ih), ("b_hh", b_hh)):
        if b is not None and tuple(b.shape) != (w_ih.shape[0],):
            raise _error(f"{name} must be [{w_ih.shape[0]}], got {tuple(b.shape)}")
    return _gemm(x, w_ih.t(), _projection_bias(b_ih, b_hh, hidden_rows), _workspace)


def _projection_backward(ctx, need: tuple, d_gates: Tensor, x: Tensor, w_ih: Tensor) -> tuple:
    """The gradients of a layer op's first four inputs x, w_ih, b_ih, b_hh from d_gates = dL/dgx [N, G*H]: dx
    [N, I], dw_ih [G*H, I], db_ih [G*H] and db_hh [G*H] as far as it folds into gx (all of it but GRU's b_hn,
    whose caller completes it), each None where not needed (need: _engine_needs)."""
    dx = _call(gemm, d_gates, w_ih) if need[0] else None  # [N, G*H] @ [G*H, I]
    dw_ih = _call(gemm, d_gates.t(), x) if need[1] else None  # [G*H, N] @ [N, I]: all steps at once
    want_b_ih, want_b_hh = ctx.has_b_ih and need[2], ctx.has_b_hh and need[3]
    db = d_gates.sum(0) if want_b_ih or want_b_hh else None
    return dx, dw_ih, db if want_b_ih else None, db if want_b_hh else None


# ----------------------------------------------------------------------------------------------------- LSTM


def _lstm_layer_impl(
    x: Tensor,
    w_ih: Tensor,
    b_ih: Optional[Tensor],
    b_hh: Optional[Tensor],
    w_hh: Tensor,
    w_hr: Optional[Tensor],
    h0: Tensor,
    c0: Tensor,
    batch_sizes: Tensor,
    reverse: bool,
    save_workspace: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """LSTM layer-direction: input projection and recurrence. Returns y, h_n, c_n and the workspace (cell [N,H],
    proj_in [N,H] (P>0), gates [N,4H], h_prev [N,Hin]); without save_workspace (inference) cell, gates and h_prev
    are empty."""
    _check_device_and_dtype(x)
    gx = _projection(x, w_ih, b_ih, b_hh, w_hh.shape[0])  # [N, 4H]
    return _lstm_recurrence(gx, w_hh, w_hr, h0, c0, batch_sizes, reverse, save_workspace)


def _lstm_recurrence(gx, w_hh, w_hr, h0, c0, batch_sizes, reverse, save_workspace):
    # _lstm_layer_impl from the input projection gx [N, 4H] on (bench/ab_kernels.py times it alone).
    backend = _check_device_and_dtype(gx)
    _validate(gx, 4, w_hh, h0, batch_sizes, c0=c0, w_hr=w_hr)
    if backend in ("triton", "cuda"):
        y, h_n, c_n, ws = _gpu(backend).forward("LSTM", gx, w_hh, h0, batch_sizes, reverse, save_workspace, c0=c0, w_hr=w_hr)
        cell = ws["cell"] if save_workspace else gx.new_empty(0)
        return y, h_n, c_n, cell, ws["proj_in"], ws["gates"], ws["h_prev"]
    bs = _batch_sizes(batch_sizes)
    gx = gx.contiguous()
    N, H, B = gx.shape[0], w_hh.shape[0] // 4, h0.shape[0]
    P = 0 if w_hr is None else w_hr.shape[0]
    Hin = P if P > 0 else H
    w_hh = w_hh.contiguous()
    w_hr = None if w_hr is None else w_hr.contiguous()
    h0, c0 = h0.contiguous(), c0.contiguous()
    y, h_n, c_n = _empty(gx, N, Hin), gx.new_empty(B, Hin), gx.new_empty(B, H)
    # Inference keeps only the last two steps' cell states (a [2, B, H] ring): the backward is what needs all.
    cell = _workspace(gx, N, H) if save_workspace else gx.new_empty(0)
    cell_ring = gx.new_empty(0) if save_workspace else gx.new_empty(2, B, H)
    proj_in = _workspace(gx, N, H) if P > 0 else gx.new_empty(0)
    gates = _workspace(gx, N, 4 * H) if save_workspace else gx.new_empty(0)
    h_prev = _workspace(gx, N, Hin) if save_workspace else gx.new_empty(0)

    a = _args(gx, bs, B, H, P, reverse)
    a.gx, a.w_hh, a.w_hr, a.h0, a.c0 = _ptr(gx), _ptr(w_hh), _ptr(w_hr), _ptr(h0), _ptr(c0)
    a.y, a.h_n, a.c_n, a.cell, a.proj_in = _ptr(y), _ptr(h_n), _ptr(c_n), _ptr(cell), _ptr(proj_in)
    a.cell_ring = _ptr(cell_ring)
    a.gates, a.h_prev_ws = _ptr(gates), _ptr(h_prev)
    cpu_kernels().lstm_forward(a)
    return y, h_n, c_n, cell, proj_in, gates, h_prev


lstm_layer = torch.library.custom_op("pyrnn::lstm_layer", _lstm_layer_impl, mutates_args=())


@lstm_layer.register_fake
def _(x, w_ih, b_ih, b_hh, w_hh, w_hr, h0, c0, batch_sizes, reverse, save_workspace):
    N, H, B = x.shape[0], w_hh.shape[0] // 4, h0.shape[0]
    P = 0 if w_hr is None else w_hr.shape[0]
    Hin = P if P > 0 else H
    return (
        x.new_empty(N, Hin),
        x.new_empty(B, Hin),
        x.new_empty(B, H),
        x.new_empty(N, H) if save_workspace else x.new_empty(0),
        x.new_empty(N, H) if P > 0 else x.new_empty(0),
        x.new_empty(N, 4 * H) if save_workspace else x.new_empty(0),
        x.new_empty(N, Hin) if save_workspace else x.new_empty(0),
    )


def _lstm_layer_backward_impl(
    dy: Tensor,
    dh_n: Tensor,
    dc_n: Tensor,
    w_hh: Tensor,
    w_hr: Optional[Tensor],
    c0: Tensor,
    batch_sizes: Tensor,
    reverse: bool,
    cell: Tensor,
    proj_in: Tensor,
    gates: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """BPTT of lstm_layer. Returns d_gates [N,4H] (= dL/dgx), dh0, dc0 and dh_total [N,P] (dL/dh per step,
    for dW_hr; empty without projection)."""
    backend = _check_device_and_dtype(dy)
    bs = _batch_sizes(batch_sizes)
    N, H, B = dy.shape[0], w_hh.shape[0] // 4, dh_n.shape[0]
    _require_workspace(gates, N, "lstm_layer")
    if backend in ("triton", "cuda"):
        e = dy.new_empty(0)
        ws = dict(y=e, cell=cell, proj_in=proj_in, gates=gates, gh_n=e, h_prev=e)
        d_gates, _, dh0, dc0, dh_total = _gpu(backend).backward("LSTM", dy, dh_n, w_hh, batch_sizes, reverse, ws,
                                                            dc_n=dc_n, c0=c0, w_hr=w_hr)
        return d_gates, dh0, dc0, dh_total
    P = 0 if w_hr is None else w_hr.shape[0]
    Hin = P if P > 0 else H
    ws = {"cell": (cell, (N, H)), "gates": (gates, (N, 4 * H)), "dc_n": (dc_n, (B, H)), "c0": (c0, (B, H))}
    if P > 0:
        ws["proj_in"] = (proj_in, (N, H))
    _validate_backward(dy, dh_n, bs, N, Hin, ws)
    dy, dh_n, dc_n = dy.contiguous(), dh_n.contiguous(), dc_n.contiguous()
    w_hh, c0 = w_hh.contiguous(), c0.contiguous()
    w_hr = None if w_hr is None else w_hr.contiguous()
    d_gates, dh0, dc0 = _workspace(dy, N, 4 * H), dy.new_empty(B, Hin), dy.new_empty(B, H)
    dh_total = _workspace(dy, N, P) if P > 0 else dy.new_empty(0)
    dh_prev_ws, dc_prev_ws = dy.new_empty(2, B, Hin), dy.new_empty(2, B, H)  # two-step rings

    a = _args(dy, bs, B, H, P, reverse)
    a.w_hh, a.w_hr, a.c0, a.dy, a.dh_n, a.dc_n = _ptr(w_hh), _ptr(w_hr), _ptr(c0), _ptr(dy), _ptr(dh_n), _ptr(dc_n)
    a.cell, a.proj_in, a.gates = _ptr(cell), _ptr(proj_in), _ptr(gates)
    a.d_gates, a.dh0, a.dc0, a.dh_total = _ptr(d_gates), _ptr(dh0), _ptr(dc0), _ptr(dh_total)
    a.dh_prev_ws, a.dc_prev_ws = _ptr(dh_prev_ws), _ptr(dc_prev_ws)
    cpu_kernels().lstm_backward(a)
    return d_gates, dh0, dc0, dh_total


lstm_layer_backward = torch.library.custom_op("pyrnn::lstm_layer_backward", _lstm_layer_backward_impl, mutates_args=())


@lstm_layer_backward.register_fake
def _(dy, dh_n, dc_n, w_hh, w_hr, c0, batch_sizes, reverse, cell, proj_in, gates):
    N, H, B = dy.shape[0], w_hh.shape[0] // 4, dh_n.shape[0]
    P = 0 if w_hr is None else w_hr.shape[0]
    Hin = P if P > 0 else H
    return (
        dy.new_empty(N, 4 * H),
        dy.new_empty(B, Hin),
        dy.new_empty(B, H),
        dy.new_empty(N, P) if P > 0 else dy.new_empty(0),
    )


def _lstm_setup_context(ctx, inputs, output):
    x, w_ih, b_ih, b_hh, w_hh, w_hr, h0, c0, batch_sizes, reverse, save_workspace = inputs
    y, h_n, c_n, cell, proj_in, gates, h_prev = output
    _workspace_has_no_grad(ctx, cell, proj_in, gates, h_prev)
    ctx.save_for_backward(x, w_ih, b_ih, b_hh, w_hh, w_hr, h0, c0, batch_sizes, cell, proj_in, gates, h_prev)
    ctx.reverse, ctx.has_b_ih, ctx.has_b_hh = reverse, b_ih is not None, b_hh is not None


def _lstm_backward(ctx, dy, dh_n, dc_n, *_workspace_grads):
    x, w_ih, b_ih, b_hh, w_hh, w_hr, h0, c0, batch_sizes, cell, proj_in, gates, h_prev = ctx.saved_tensors
    need = _engine_needs(ctx, (x, w_ih, b_ih, b_hh, w_hh, w_hr, h0, c0, batch_sizes), probe=4)
    if _backward_in_torch_ops(dy, dh_n, dc_n):
        return _composite_backward(ctx, need, "LSTM", (dy, dh_n, dc_n), x, w_ih, b_ih, b_hh, w_hh, w_hr, h0, c0,
                                   batch_sizes)
    N, B, Hin = cell.shape[0], c0.shape[0], w_hh.shape[1]
    dy = _zeros_if_none(dy, cell.new_empty(N, Hin))
    dh_n = _zeros_if_none(dh_n, c0.new_empty(B, Hin))
    dc_n = _zeros_if_none(dc_n, c0)
    d_gates, dh0, dc0, dh_total = _call(
        lstm_layer_backward, dy, dh_n, dc_n, w_hh, w_hr, c0, batch_sizes, ctx.reverse, cell, proj_in, gates
    )
    dw_hh = _call(gemm, d_gates.t(), h_prev) if need[4] else None  # [4H, Hin]: sum over all steps at once
    dw_hr = _call(gemm, dh_total.t(), proj_in) if w_hr is not None and need[5] else None  # [P, H]
    dx, dw_ih, db_ih, db_hh = _projection_backward(ctx, need, d_gates, x, w_ih)
    return dx, dw_ih, db_ih, db_hh, dw_hh, dw_hr, dh0, dc0, None, None, None


lstm_layer.register_autograd(_lstm_backward, setup_context=_lstm_setup_context)


# ------------------------------------------------------------------------------------------------------ GRU


def _gru_layer_impl(
    x: Tensor,
    w_ih: Tensor,
    b_ih: Optional[Tensor],
    b_hh: Optional[Tensor],
    w_hh: Tensor,
    h0: Tensor,
    batch_sizes: Tensor,
    reverse: bool,
    save_workspace: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """GRU layer-direction: input projection and recurrence. Returns y, h_n and the workspace (gates r,z,n [N,3H],
    gh_n = W_hn h + b_hn [N,H], h_prev [N,H])."""
    _check_device_and_dtype(x)
    H = w_hh.shape[0] // 3
    # b_hn sits inside r * (W_hn h + b_hn): only the r and z hidden biases fold into the projection.
    gx = _projection(x, w_ih, b_ih, b_hh, 2 * H)  # [N, 3H] = W_ih x + b_ih + [b_hr, b_hz, 0]
    b_hn = None if b_hh is None else b_hh[2 * H :]
    return _gru_recurrence(gx, w_hh, b_hn, h0, batch_sizes, reverse, save_workspace)


def _gru_recurrence(gx, w_hh, b_hn, h0, batch_sizes, reverse, save_workspace):
    # _gru_layer_impl from the input projection gx [N, 3H] on (bench/ab_kernels.py times it alone).
    backend = _check_device_and_dtype(gx)
    _validate(gx, 3, w_hh, h0, batch_sizes, b_hn=b_hn)
    if backend in ("triton", "cuda"):
        y, h_n, _, ws = _gpu(backend).forward("GRU", gx, w_hh, h0, batch_sizes, reverse, save_workspace, b_hn=b_hn)
        return y, h_n, ws["gates"], ws["gh_n"], ws["h_prev"]
    bs = _batch_sizes(batch_sizes)
    gx = gx.contiguous()
    N, H, B = gx.shape[0], w_hh.shape[0] // 3, h0.shape[0]
    w_hh = w_hh.contiguous()
    b_hn = None if b_hn is None else b_hn.contiguous()
    h0 = h0.contiguous()
    y, h_n = _empty(gx, N, H), gx.new_empty(B, H)
    gates = _workspace(gx, N, 3 * H) if save_workspace else gx.new_empty(0)
    gh_n = _workspace(gx, N, H) if save_workspace else gx.new_empty(0)
    h_prev = _workspace(gx, N, H) if save_workspace else gx.new_empty(0)

    a = _args(gx, bs, B, H, 0, reverse)
    a.gx, a.w_hh, a.b_hn, a.h0 = _ptr(gx), _ptr(w_hh), _ptr(b_hn), _ptr(h0)
    a.y, a.h_n, a.gates, a.gh_n, a.h_prev_ws = _ptr(y), _ptr(h_n), _ptr(gates), _ptr(gh_n), _ptr(h_prev)
    cpu_kernels().gru_forward(a)
    return y, h_n, gates, gh_n, h_prev


gru_layer = torch.library.custom_op("pyrnn::gru_layer", _gru_layer_impl, mutates_args=())


@gru_layer.register_fake
def _(x, w_ih, b_ih, b_hh, w_hh, h0, batch_sizes, reverse, save_workspace):
    N, H, B = x.shape[0], w_hh.shape[0] // 3, h0.shape[0]
    ws = (lambda *s: x.new_empty(*s)) if save_workspace else (lambda *s: x.new_empty(0))
    return x.new_empty(N, H), x.new_empty(B, H), ws(N, 3 * H), ws(N, H), ws(N, H)


def _gru_layer_backward_impl(
    dy: Tensor,
    dh_n: Tensor,
    w_hh: Tensor,
    batch_sizes: Tensor,
    reverse: bool,
    gates: Tensor,
    gh_n: Tensor,
    h_prev: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """BPTT of gru_layer. Returns d_gates [N,3H] (= dL/dgx), d_gates_h [N,3H] (= dL/d(W_hh h + b_hh)), dh0."""
    backend = _check_device_and_dtype(dy)
    bs = _batch_sizes(batch_sizes)
    N, H, B = dy.shape[0], w_hh.shape[0] // 3, dh_n.shape[0]
    _require_workspace(gates, N, "gru_layer")
    if backend in ("triton", "cuda"):
        e = dy.new_empty(0)
        ws = dict(y=e, cell=e, proj_in=e, gates=gates, gh_n=gh_n, h_prev=h_prev)
        d_gates, d_gates_h, dh0, _, _ = _gpu(backend).backward("GRU", dy, dh_n, w_hh, batch_sizes, reverse, ws)
        return d_gates, d_gates_h, dh0
    ws = {"gates": (gates, (N, 3 * H)), "gh_n": (gh_n, (N, H)), "h_prev": (h_prev, (N, H))}
    _validate_backward(dy, dh_n, bs, N, H, ws)
    dy, dh_n, w_hh = dy.contiguous(), dh_n.contiguous(), w_hh.contiguous()
    d_gates, d_gates_h, dh0 = _workspace(dy, N, 3 * H), _workspace(dy, N, 3 * H), dy.new_empty(B, H)
    dh_prev_ws = dy.new_empty(2, B, H)  # two-step ring

    a = _args(dy, bs, B, H, 0, reverse)
    a.w_hh, a.dy, a.dh_n = _ptr(w_hh), _ptr(dy), _ptr(dh_n)
    a.gates, a.gh_n, a.h_prev_ws = _ptr(gates), _ptr(gh_n), _ptr(h_prev)
    a.d_gates, a.d_gates_h, a.dh0, a.dh_prev_ws = _ptr(d_gates), _ptr(d_gates_h), _ptr(dh0), _ptr(dh_prev_ws)
    cpu_kernels().gru_backward(a)
    return d_gates, d_gates_h, dh0


gru_layer_backward = torch.library.custom_op("pyrnn::gru_layer_backward", _gru_layer_backward_impl, mutates_args=())


@gru_layer_backward.register_fake
def _(dy, dh_n, w_hh, batch_sizes, reverse, gates, gh_n, h_prev):
    N, H, B = dy.shape[0], w_hh.shape[0] // 3, dh_n.shape[0]
    return dy.new_empty(N, 3 * H), dy.new_empty(N, 3 * H), dy.new_empty(B, H)


def _gru_setup_context(ctx, inputs, output):
    x, w_ih, b_ih, b_hh, w_hh, h0, batch_sizes, reverse, save_workspace = inputs
    y, h_n, gates, gh_n, h_prev = output
    _workspace_has_no_grad(ctx, gates, gh_n, h_prev)
    ctx.save_for_backward(x, w_ih, b_ih, b_hh, w_hh, h0, batch_sizes, gates, gh_n, h_prev)
    ctx.reverse, ctx.has_b_ih, ctx.has_b_hh = reverse, b_ih is not None, b_hh is not None


def _gru_backward(ctx, dy, dh_n, *_workspace_grads):
    x, w_ih, b_ih, b_hh, w_hh, h0, batch_sizes, gates, gh_n, h_prev = ctx.saved_tensors
    need = _engine_needs(ctx, (x, w_ih, b_ih, b_hh, w_hh, h0, batch_sizes), probe=4)
    if _backward_in_torch_ops(dy, dh_n):
        return _composite_backward(ctx, need, "GRU", (dy, dh_n), x, w_ih, b_ih, b_hh, w_hh, None, h0, None,
                                   batch_sizes)
    H = w_hh.shape[0] // 3
    dy = _zeros_if_none(dy, gates.new_empty(gates.shape[0], H))
    dh_n = _zeros_if_none(dh_n, h0)
    d_gates, d_gates_h, dh0 = _call(gru_layer_backward, dy, dh_n, w_hh, batch_sizes, ctx.reverse, gates, gh_n, h_prev)
    dw_hh = _call(gemm, d_gates_h.t(), h_prev) if need[4] else None  # [3H, H]
    dx, dw_ih, db_ih, db_hh = _projection_backward(ctx, need, d_gates, x, w_ih)
    if db_hh is not None:  # b_hr, b_hz fold into gx; b_hn's gradient is r * dn, which d_gates_h holds
        db_hh = torch.cat([db_hh[: 2 * H], d_gates_h[:, 2 * H :].sum(0)])
    return dx, dw_ih, db_ih, db_hh, dw_hh, dh0, None, None, None


gru_layer.register_autograd(_gru_backward, setup_context=_gru_setup_context)


# ------------------------------------------------------------------------------------------------------ RNN


def _rnn_layer_impl(
    x: Tensor,
    w_ih: Tensor,
    b_ih: Optional[Tensor],
    b_hh: Optional[Tensor],
    w_hh: Tensor,
    h0: Tensor,
    batch_sizes: Tensor,
    reverse: bool,
    relu: bool,
    save_workspace: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Elman RNN layer-direction (tanh, or relu): input projection and recurrence. Returns y, h_n, h_prev [N,H]."""
    _check_device_and_dtype(x)
    gx = _projection(x, w_ih, b_ih, b_hh, w_hh.shape[0])  # [N, H] = W_ih x + b_ih + b_hh
    return _rnn_recurrence(gx, w_hh, h0, batch_sizes, reverse, relu, save_workspace)


def _rnn_recurrence(gx, w_hh, h0, batch_sizes, reverse, relu, save_workspace):
    # _rnn_layer_impl from the input projection gx [N, H] on (bench/ab_kernels.py times it alone).
    backend = _check_device_and_dtype(gx)
    _validate(gx, 1, w_hh, h0, batch_sizes)
    if backend in ("triton", "cuda"):
        mode = "RNN_RELU" if relu else "RNN_TANH"
        y, h_n, _, ws = _gpu(backend).forward(mode, gx, w_hh, h0, batch_sizes, reverse, save_workspace)
        return y, h_n, ws["h_prev"]
    bs = _batch_sizes(batch_sizes)
    gx = gx.contiguous()
    N, H, B = gx.shape[0], w_hh.shape[0], h0.shape[0]
    w_hh = w_hh.contiguous()
    h0 = h0.contiguous()
    y, h_n = _empty(gx, N, H), gx.new_empty(B, H)
    h_prev = _workspace(gx, N, H) if save_workspace else gx.new_empty(0)

    a = _args(gx, bs, B, H, 0, reverse)
    a.nonlinearity = 1 if relu else 0
    a.gx, a.w_hh, a.h0, a.y, a.h_n, a.h_prev_ws = _ptr(gx), _ptr(w_hh), _ptr(h0), _ptr(y), _ptr(h_n), _ptr(h_prev)
    cpu_kernels().rnn_forward(a)
    return y, h_n, h_prev


rnn_layer = torch.library.custom_op("pyrnn::rnn_layer", _rnn_layer_impl, mutates_args=())


@rnn_layer.register_fake
def _(x, w_ih, b_ih, b_hh, w_hh, h0, batch_sizes, reverse, relu, save_workspace):
    N, H, B = x.shape[0], w_hh.shape[0], h0.shape[0]
    return x.new_empty(N, H), x.new_empty(B, H), x.new_empty(N, H) if save_workspace else x.new_empty(0)


def _rnn_layer_backward_impl(
    dy: Tensor,
    dh_n: Tensor,
    w_hh: Tensor,
    y: Tensor,
    h_prev: Tensor,
    h_n: Tensor,
    batch_sizes: Tensor,
    reverse: bool,
    relu: bool,
) -> tuple[Tensor, Tensor]:
    """BPTT of rnn_layer from its outputs: every step's output h, which the activation's derivative needs, is read
    on the CPU from h_prev [N,H] (the next step's input state) and h_n [B,H] (a row's last step); the GPU kernels
    read y [N,H], rebuilt from those two where y is empty. Returns d_gates [N,H] (= dL/dgx) and dh0."""
    backend = _check_device_and_dtype(dy)
    bs = _batch_sizes(batch_sizes)
    N, H, B = dy.shape[0], w_hh.shape[0], dh_n.shape[0]
    if backend in ("triton", "cuda"):
        if y.numel() == 0 and N > 0:
            _require_workspace(h_prev, N, "rnn_layer")
            y = _outputs_from_states(h_prev, h_n, bs, reverse)
        _validate_backward(dy, dh_n, bs, N, H, {"y": (y, (N, H)), "w_hh": (w_hh, (H, H))})
        e = dy.new_empty(0)
        ws = dict(y=y, cell=e, proj_in=e, gates=e, gh_n=e, h_prev=e)
        d_gates, _, dh0, _, _ = _gpu(backend).backward("RNN_RELU" if relu else "RNN_TANH", dy, dh_n, w_hh, batch_sizes,
                                                   reverse, ws)
        return d_gates, dh0
    _require_workspace(h_prev, N, "rnn_layer")
    ws = {"h_prev": (h_prev, (N, H)), "h_n": (h_n, (B, H)), "w_hh": (w_hh, (H, H))}
    _validate_backward(dy, dh_n, bs, N, H, ws)
    dy, dh_n, w_hh = dy.contiguous(), dh_n.contiguous(), w_hh.contiguous()
    h_prev, h_n = h_prev.contiguous(), h_n.contiguous()
    d_gates, dh0, dh_prev_ws = _workspace(dy, N, H), dy.new_empty(B, H), dy.new_empty(2, B, H)

    a = _args(dy, bs, B, H, 0, reverse)
    a.nonlinearity = 1 if relu else 0
    a.w_hh, a.h_prev_ws, a.h_n, a.dy, a.dh_n = _ptr(w_hh), _ptr(h_prev), _ptr(h_n), _ptr(dy), _ptr(dh_n)
    a.d_gates, a.dh0, a.dh_prev_ws = _ptr(d_gates), _ptr(dh0), _ptr(dh_prev_ws)
    cpu_kernels().rnn_backward(a)
    return d_gates, dh0


def _outputs_from_states(h_prev: Tensor, h_n: Tensor, batch_sizes: Tensor, reverse: bool) -> Tensor:
    """y [N, H] from the states entering each step, h_prev [N, H], and the final ones, h_n [B, H]: a row's output
    at step t is its state entering the next step it runs (t + 1 forward, t - 1 reverse) or, where it runs no
    other, its final state. batch_sizes: int64 [T] on the CPU."""
    T, N = batch_sizes.numel(), h_prev.shape[0]
    offsets = torch.cumsum(batch_sizes, 0) - batch_sizes  # [T]: each step's first row
    step = torch.repeat_interleave(torch.arange(T), batch_sizes)  # [N]: each row's step
    row = torch.arange(N) - offsets[step]  # [N]: each row's batch index
    after = (step - 1) if reverse else (step + 1)
    inside = (after >= 0) & (after < T)
    after = after.clamp(0, T - 1)
    runs_on = inside & (row < batch_sizes[after])  # rows are sorted by length: a row runs a step iff b < its size
    index = torch.where(runs_on, offsets[after] + row, N + row)  # into cat(h_prev, h_n)
    return torch.cat([h_prev, h_n]).index_select(0, index.to(h_prev.device))


rnn_layer_backward = torch.library.custom_op("pyrnn::rnn_layer_backward", _rnn_layer_backward_impl, mutates_args=())


@rnn_layer_backward.register_fake
def _(dy, dh_n, w_hh, y, h_prev, h_n, batch_sizes, reverse, relu):
    return dy.new_empty(dy.shape[0], w_hh.shape[0]), dy.new_empty(dh_n.shape)


def _rnn_setup_context(ctx, inputs, output):
    x, w_ih, b_ih, b_hh, w_hh, h0, batch_sizes, reverse, relu, save_workspace = inputs
    y, h_n, h_prev = output
    _workspace_has_no_grad(ctx, h_prev)
    # The backward reads every step's output from h_prev and h_n, not from y: y is the caller's, who may change it
    # in place before the backward, as torch.nn.RNN allows (the GPU kernels' y is rebuilt from them).
    ctx.save_for_backward(x, w_ih, b_ih, b_hh, w_hh, h0, batch_sizes, h_prev, h_n)
    ctx.reverse, ctx.relu, ctx.rows = reverse, relu, y.shape[0]
    ctx.has_b_ih, ctx.has_b_hh = b_ih is not None, b_hh is not None


def _rnn_backward(ctx, dy, dh_n, _h_prev_grad):
    x, w_ih, b_ih, b_hh, w_hh, h0, batch_sizes, h_prev, h_n = ctx.saved_tensors
    need = _engine_needs(ctx, (x, w_ih, b_ih, b_hh, w_hh, h0, batch_sizes), probe=4)
    if _backward_in_torch_ops(dy, dh_n):
        mode = "RNN_RELU" if ctx.relu else "RNN_TANH"
        return _composite_backward(ctx, need, mode, (dy, dh_n), x, w_ih, b_ih, b_hh, w_hh, None, h0, None,
                                   batch_sizes)
    _require_workspace(h_prev, ctx.rows, "rnn_layer")
    dy = _zeros_if_none(dy, h_prev.new_empty(ctx.rows, w_hh.shape[0]))
    dh_n = _zeros_if_none(dh_n, h0)
    no_y = h_prev.new_empty(0)
    d_gates, dh0 = _call(rnn_layer_backward, dy, dh_n, w_hh, no_y, h_prev, h_n, batch_sizes, ctx.reverse, ctx.relu)
    dw_hh = _call(gemm, d_gates.t(), h_prev) if need[4] else None  # [H, H]
    dx, dw_ih, db_ih, db_hh = _projection_backward(ctx, need, d_gates, x, w_ih)
    return dx, dw_ih, db_ih, db_hh, dw_hh, dh0, None, None, None, None


rnn_layer.register_autograd(_rnn_backward, setup_context=_rnn_setup_context)


# ---------------------------------------------------------------------------------------------------- cells
#
# A cell (one step) on the CPU is one op: the kernel computes the input projection W_ih x itself, in the same
# pass over the weights as the gates (dot products with the weight rows at one or two rows, the GEMM beyond),
# and its backward returns dx and the weight and bias gradients. Per call that is one trip into C++ each way
# instead of a projection op, a layer op and four more calls for the weight gradients, which at B=1 cost more
# than the arithmetic.

_CELL_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}
_CELL_MODE_IDS = {"LSTM": 0, "GRU": 1, "RNN_TANH": 2, "RNN_RELU": 3}  # as pyrnn._C.cell_forward numbers them


def _validate_cell(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh) -> int:
    """Checks what the kernel will read through raw pointers; returns the number of gates."""
    gates = _CELL_GATES.get(mode)
    if gates is None:
        raise _error(f"unknown cell mode {mode!r}")
    if not x.is_cpu or x.dtype not in _KERNEL_DTYPES:
        raise _error(f"the cell op runs on CPU float32/float64 tensors, got {x.dtype} on {x.device}")
    if w_ih.dtype != x.dtype:  # as torch.nn's cells word it (their first op is the input GEMM)
        raise RuntimeError(f"mat1 and mat2 must have the same dtype, but got {_scalar_name(x)} and {_scalar_name(w_ih)}")
    B, I = x.shape if x.dim() == 2 else (-1, -1)
    H = h0.shape[1] if h0.dim() == 2 else -1
    if not (B >= 0 and I > 0 and H > 0 and h0.shape[0] == B and w_ih.shape == (gates * H, I)
            and w_hh.shape == (gates * H, H)):
        raise _error(
            f"{mode} cell: inconsistent shapes x {tuple(x.shape)}, h0 {tuple(h0.shape)}, w_ih {tuple(w_ih.shape)}, "
            f"w_hh {tuple(w_hh.shape)}"
        )
    if (c0 is not None) != (gates == 4) or (c0 is not None and c0.shape != (B, H)):
        raise _error(f"{mode} cell: c0 must be [{B}, {H}] for LSTM and None otherwise")
    if (b_ih is None) != (b_hh is None) or (b_ih is not None and not (b_ih.shape == b_hh.shape == (gates * H,))):
        raise _error(f"b_ih and b_hh must both be [{gates * H}] or both be None")
    dtype = x.dtype
    for name, t in (("h0", h0), ("c0", c0), ("w_ih", w_ih), ("w_hh", w_hh), ("b_ih", b_ih), ("b_hh", b_hh)):
        if t is not None and (t.dtype != dtype or not t.is_cpu):
            raise _error(f"Expected {name} to be {dtype} on cpu, got {t.dtype} on {t.device}")
    return gates


def _contiguous(*tensors: Optional[Tensor]):
    return [None if t is None else t.contiguous() for t in tensors]


def _cell_run(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, save_workspace):
    # The checked kernel call behind _cell_impl and cell_inference: h [B, H], c [B, H] (LSTM), gates [B, G*H]
    # (LSTM, GRU) and gh_n [B, H] (GRU), each None where the cell or an inference call has none.
    G = _validate_cell(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = _contiguous(x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    (B, I), H = x.shape, h0.shape[1]
    h = x.new_empty(B, H)
    c = x.new_empty(B, H) if G == 4 else None
    gates = x.new_empty(B, G * H) if save_workspace and G > 1 else None
    gh_n = x.new_empty(B, H) if save_workspace and G == 3 else None
    if B > 0:  # (an empty batch is allowed, as torch.nn's cells allow it)
        # The input projection inside the kernel at every size, even where MKL runs the layers' GEMMs: the kernel
        # reads the weights in place on all threads, where MKL keeps such small products on one (Intel Xeon,
        # H=256, kernel alone / MKL addmm + kernel from gx: LSTM B=4 37 / 53 us, B=8 77 / 81-90, B=16 91-101 /
        # 120-130, B=32 158 / 188, B=64 294 / 309).
        cpu_kernels().cell_forward(
            _CELL_MODE_IDS[mode], _KERNEL_DTYPES[x.dtype], torch.get_num_threads(), B, I, H, x.data_ptr(),
            h0.data_ptr(), _ptr(c0), w_ih.data_ptr(), w_hh.data_ptr(), _ptr(b_ih), _ptr(b_hh), h.data_ptr(), _ptr(c),
            _ptr(gates), _ptr(gh_n),
        )
    return h, c, gates, gh_n


# Rows from which a cell backward's GEMMs (dx, weight gradients) run in torch's (MKL) where torch_cpu_gemm() says
# so, rather than inside the cell kernel (which reads the weights and inputs in place on all threads). On the Intel
# Xeon at H=256, kernel alone / kernel + MKL: LSTM B=4 113 / 135 us, B=8 143-145 / 159-223, B=16 214 / 207, B=24
# 282 / 276, B=32 382-457 / 329-383, B=64 740-749 / 607-616 (GRU alike; RNN 0.9-1.0x of MKL's time throughout).
_CELL_TORCH_GEMM_MIN_ROWS = 16


def _cell_gemms_in_torch(rows: int) -> bool:
    return rows >= _CELL_TORCH_GEMM_MIN_ROWS and torch_cpu_gemm()


def _cell_impl(
    mode: str,
    x: Tensor,
    h0: Tensor,
    c0: Optional[Tensor],
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor],
    b_hh: Optional[Tensor],
    save_workspace: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One step of an LSTM/GRU/RNN cell on the CPU. x: [B, I], h0/c0: [B, H]. Returns h [B, H], c [B, H] (LSTM;
    empty otherwise) and the workspace: gates [B, G*H] (LSTM, GRU) and gh_n = W_hn h + b_hn [B, H] (GRU), empty
    in inference."""
    h, c, gates, gh_n = _cell_run(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, save_workspace)
    empty = x.new_empty
    return h, empty(0) if c is None else c, empty(0) if gates is None else gates, empty(0) if gh_n is None else gh_n


def cell_inference(mode: str, x: Tensor, h0: Tensor, c0: Optional[Tensor], w_ih: Tensor, w_hh: Tensor,
                   b_ih: Optional[Tensor], b_hh: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
    """_cell_impl for an eager call nothing will differentiate: h [B, H] and c [B, H] (LSTM) or None, and no
    empty workspace tensors (~0.8 us a new_empty: an RNNCell's three were a fifth of its B=1 call's Python time)."""
    h, c, _, _ = _cell_run(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, False)
    return h, c


cell = torch.library.custom_op("pyrnn::cell", _cell_impl, mutates_args=())


@cell.register_fake
def _(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, save_workspace):
    B, H, G = x.shape[0], h0.shape[1], _CELL_GATES[mode]
    return (
        x.new_empty(B, H),
        x.new_empty(B, H) if mode == "LSTM" else x.new_empty(0),
        x.new_empty(B, G * H) if save_workspace and G > 1 else x.new_empty(0),
        x.new_empty(B, H) if save_workspace and mode == "GRU" else x.new_empty(0),
    )


def _cell_backward_impl(
    mode: str,
    dh: Tensor,
    dc: Optional[Tensor],
    x: Tensor,
    h0: Tensor,
    c0: Optional[Tensor],
    w_ih: Tensor,
    w_hh: Tensor,
    h: Tensor,
    c: Tensor,
    gates: Tensor,
    gh_n: Tensor,
    weight_grads: bool,
    bias_grads: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Backward of cell from dh (and dc). h (the output) is read by the RNN modes only and c (LSTM) by none: either
    may be empty. Returns dx [B, I], dh0 [B, H], dc0 [B, H] (LSTM; empty otherwise) and, if weight_grads (else
    empty), dw_ih [G*H, I], dw_hh [G*H, H] and, if bias_grads too, db_ih, db_hh [G*H]."""
    _validate_cell_backward(mode, dh, dc, x, h0, c0, w_ih, w_hh, h, c, gates, gh_n)
    return _run_cell_backward(mode, dh, dc, x, h0, c0, w_ih, w_hh, h, c, gates, gh_n, weight_grads, bias_grads)


def _validate_cell_backward(mode, dh, dc, x, h0, c0, w_ih, w_hh, h, c, gates, gh_n) -> None:
    G = _validate_cell(mode, x, h0, c0, w_ih, w_hh, None, None)
    (B, I), H = x.shape, h0.shape[1]
    expected = {"dh": (dh, (B, H))}
    if G == 1:
        expected.update(h=(h, (B, H)))
    elif G == 4:
        expected.update(dc=(dc, (B, H)), gates=(gates, (B, G * H)))
    elif G == 3:
        expected.update(gates=(gates, (B, G * H)), gh_n=(gh_n, (B, H)))
    for name, (t, shape) in expected.items():
        if t is None or t.shape != shape or t.dtype != x.dtype or t.device != x.device:
            if name in ("gates", "gh_n") and t is not None and t.numel() == 0:
                raise RuntimeError("pyrnn::cell: the forward ran with save_workspace=False (inference), so it "
                                   "cannot be differentiated")
            raise _error(f"cell backward: {name} must be {x.dtype} {shape}")


def _run_cell_backward(mode, dh, dc, x, h0, c0, w_ih, w_hh, h, c, gates, gh_n, weight_grads, bias_grads):
    """_cell_backward_impl without the checks (the op's implementation where its arguments are the forward's own,
    validated, inputs and workspace and gradients autograd has matched to the outputs): _cell_backward_kernel's
    gradients, an empty tensor for each it did not compute."""
    grads = _cell_backward_kernel(mode, dh, dc, x, h0, c0, w_ih, w_hh, h, gates, gh_n, weight_grads, bias_grads)
    return tuple(x.new_empty(0) if g is None else g for g in grads)


def _cell_backward_kernel(mode, dh, dc, x, h0, c0, w_ih, w_hh, h, gates, gh_n, weight_grads, bias_grads):
    """The cell backward's kernel call: dx [B, I], dh0 [B, H], dc0 [B, H] (LSTM) and, if weight_grads, dw_ih [G*H, I],
    dw_hh [G*H, H] and, if bias_grads too, db_ih, db_hh [G*H]; None for each not computed (the eager backward takes
    them so: an empty placeholder costs ~0.5 us, five of them a tenth of a B=1 RNNCell backward's Python)."""
    G, (B, I), H = _CELL_GATES[mode], x.shape, h0.shape[1]
    if G > 1 and B > 0 and gates.numel() == 0:
        raise RuntimeError("pyrnn::cell: the forward ran with save_workspace=False (inference), so it cannot be "
                           "differentiated")
    x, h0, c0, w_ih, w_hh, gates, gh_n, dh, dc = _contiguous(x, h0, c0, w_ih, w_hh, gates, gh_n, dh, dc)
    h = h.contiguous() if G == 1 else None  # LSTM, GRU: the kernel does not read the output
    new = x.new_empty
    dx, dh0, dc0 = new(B, I), new(B, H), new(B, H) if G == 4 else None
    dw_ih = dw_hh = db_ih = db_hh = None
    if weight_grads:
        dw_ih, dw_hh = new(G * H, I), new(G * H, H)
        if bias_grads:
            db_ih, db_hh = new(G * H), new(G * H)
    if B == 0:  # nothing to sum over: zero weight gradients
        return dx, dh0, dc0, *(None if g is None else g.zero_() for g in (dw_ih, dw_hh, db_ih, db_hh))
    d_gates = d_gates_h = None
    if _cell_gemms_in_torch(B):  # the kernel hands back the gate gradients; dx and the weight gradients in MKL
        d_gates = new(B, G * H)
        d_gates_h = new(B, G * H) if G == 3 else d_gates  # GRU: dL/d(W_hh h + b_hh) differs in the n gate
    cpu_kernels().cell_backward(
        _CELL_MODE_IDS[mode], _KERNEL_DTYPES[x.dtype], torch.get_num_threads(), B, I, H,
        x.data_ptr() if d_gates is None else 0, h0.data_ptr(), _ptr(c0), w_ih.data_ptr(), w_hh.data_ptr(), _ptr(h),
        0, _ptr(gates), _ptr(gh_n), dh.data_ptr(), _ptr(dc), dx.data_ptr(), dh0.data_ptr(), _ptr(dc0), _ptr(dw_ih),
        _ptr(dw_hh), _ptr(db_ih), _ptr(db_hh), _ptr(d_gates), _ptr(d_gates_h),
    )
    if d_gates is not None:
        torch.mm(d_gates, w_ih, out=dx)  # [B, G*H] @ [G*H, I]
        if weight_grads:
            torch.mm(d_gates.t(), x, out=dw_ih)  # [G*H, B] @ [B, I]
            torch.mm(d_gates_h.t(), h0, out=dw_hh)
            if bias_grads:
                torch.sum(d_gates, 0, out=db_ih)
                torch.sum(d_gates_h, 0, out=db_hh)
    return dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh


cell_backward = torch.library.custom_op("pyrnn::cell_backward", _cell_backward_impl, mutates_args=())


@cell_backward.register_fake
def _(mode, dh, dc, x, h0, c0, w_ih, w_hh, h, c, gates, gh_n, weight_grads, bias_grads):
    (B, I), H, G = x.shape, h0.shape[1], _CELL_GATES[mode]
    new = x.new_empty
    dw = (new(G * H, I), new(G * H, H)) if weight_grads else (new(0), new(0))
    db = (new(G * H), new(G * H)) if weight_grads and bias_grads else (new(0), new(0))
    return (new(B, I), new(B, H), new(B, H) if mode == "LSTM" else new(0), *dw, *db)


def _cell_setup_context(ctx, inputs, output):
    mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, save_workspace = inputs
    h, c, gates, gh_n = output
    _workspace_has_no_grad(ctx, gates, gh_n)
    # Only the RNN's derivative reads the output h (as torch.nn.RNNCell's tanh/relu keeps it); LSTM and GRU
    # backwards work from the gates (LSTM: c recomputed from them), so the caller may change h and c in place
    # before the backward, as torch.nn's LSTMCell and GRUCell allow.
    if mode in ("LSTM", "GRU"):
        h, c = h.new_empty(0), c.new_empty(0)
    ctx.save_for_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, h, c, gates, gh_n)
    ctx.mode = mode


def _cell_backward(ctx, dh, dc, *_workspace_grads):
    # needs_input_grad: mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, save_workspace
    return (None, *_cell_gradients(ctx.mode, ctx.saved_tensors, ctx.needs_input_grad[1:8], dh, dc), None)


def _cell_gradients(mode: str, saved: tuple, need: tuple, dh: Optional[Tensor], dc: Optional[Tensor],
                    eager: bool = False) -> tuple:
    """The cell's backward from what its forward saved, (x, h0, c0, w_ih, w_hh, b_ih, b_hh, h, c, gates, gh_n), and
    which of the first seven need a gradient (need). Returns their seven gradients, None where not needed. eager:
    from _EagerCell, whose saved tensors are plain (the kernel call needs no look at them first)."""
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, h, c, gates, gh_n = saved
    if _backward_in_torch_ops(dh, dc):
        inputs = (x, h0, c0, w_ih, w_hh, b_ih, b_hh)
        return _differentiate(lambda: _composite.cell(mode, *inputs), (dh, dc), inputs, need)
    dh = _zeros_if_none(dh, h0)
    dc = _zeros_if_none(dc, h0.new_empty(h0.shape[0], w_hh.shape[1])) if mode == "LSTM" else None
    has_bias, weight_grads = b_ih is not None, any(need[3:7])
    if eager and not torch._C._are_functorch_transforms_active():
        grads = _cell_backward_kernel(mode, dh, dc, x, h0, c0, w_ih, w_hh, h, gates, gh_n, weight_grads, has_bias)
    else:
        grads = _call(cell_backward, mode, dh, dc, x, h0, c0, w_ih, w_hh, h, c, gates, gh_n, weight_grads, has_bias)
    dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh = grads
    return (dx if need[0] else None, dh0 if need[1] else None, dc0 if mode == "LSTM" and need[2] else None,
            dw_ih if need[3] else None, dw_hh if need[4] else None, db_ih if has_bias and need[5] else None,
            db_hh if has_bias and need[6] else None)


cell.register_autograd(_cell_backward, setup_context=_cell_setup_context)


class _EagerCell(torch.autograd.Function):
    """pyrnn::cell in plain eager autograd, returning only what the caller sees: h, or (h, c) for LSTM. The
    registered op's empty c and workspace outputs cost ~3 us of a ~25 us B=1 cell call (three more tensors for
    autograd to wrap and mark non-differentiable); here the workspace is saved for the backward instead."""

    @staticmethod
    def forward(ctx, mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh):
        h, c, gates, gh_n = _cell_run(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, True)
        ctx.set_materialize_grads(False)
        ctx.mode = mode
        # Only the RNN's derivative reads the output h (see _cell_setup_context).
        h_read = h if _CELL_GATES[mode] == 1 else None
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, h_read, None, gates, gh_n)
        return h if c is None else (h, c)

    @staticmethod
    def backward(ctx, dh, dc=None):
        saved = ctx.saved_tensors
        need = _engine_needs(ctx, (None, *saved[:7]), probe=5)  # (mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh)
        return (None, *_cell_gradients(ctx.mode, saved, need[1:], dh, dc, eager=True))


def cell_eager(mode: str, x: Tensor, h0: Tensor, c0: Optional[Tensor], w_ih: Tensor, w_hh: Tensor,
               b_ih: Optional[Tensor], b_hh: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
    """pyrnn::cell for a plain eager call (plain_eager): h [B, H] and c [B, H] (LSTM) or None. The kernel alone where
    nothing will differentiate it (cell_inference), else through autograd with the workspace saved."""
    tensors = (x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    if needs_workspace(*tensors):
        out = _EagerCell.apply(mode, *tensors)
        return out if mode == "LSTM" else (out, None)
    return cell_inference(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh)


# ------------------------------------------------------------------------- the backward in torch's ops
#
# The kernels' backward records no graph. Where autograd asks for one (create_graph=True: double backward,
# gradient penalties, Hessian-vector products) the backward instead recomputes the op's forward from its inputs
# with torch's matmul and pointwise ops (pyrnn/composite.py) and differentiates that with autograd, which records
# it. The inputs come back from ctx with their history, so the gradients it returns are differentiable in all of
# them: x, the weights, h0, c0 and the incoming gradients. The same route takes incoming gradients batched by
# torch.autograd.grad(..., is_grads_batched=True) (jacobian / hessian with vectorize=True): tensors of its vmap,
# without storage the kernels could read, which torch's ops take as they are.


def _backward_in_torch_ops(*grads: Optional[Tensor]) -> bool:
    """Whether this backward must run through pyrnn.composite: under create_graph=True, or with batched incoming
    grads, in plain autograd (not compiling, tracing or inside a torch.func transform, which handle the kernels'
    backward themselves or refuse)."""
    if not (torch.is_grad_enabled() or any(g is not None and torch._C._functorch.is_legacy_batchedtensor(g)
                                           for g in grads)):
        return False  # (the common case first: ~0.2 us)
    return not (_compiling_tracing_or_mode() or torch._C._are_functorch_transforms_active())


def _differentiate(forward, outputs_grads: tuple, inputs: tuple, needs: tuple) -> list:
    """Gradients of inputs[k] where needs[k] (None elsewhere) of the outputs forward() recomputes, against the
    incoming outputs_grads (None where autograd reached no output), recording autograd's graph of them under
    create_graph=True."""
    wanted = [k for k, t in enumerate(inputs) if t is not None and needs[k]]
    grads = [None] * len(inputs)
    with torch.enable_grad():
        outputs = forward()
    pairs = [(o, g) for o, g in zip(outputs, outputs_grads) if o is not None and g is not None]
    if not wanted or not pairs:
        return grads
    found = torch.autograd.grad([o for o, _ in pairs], [inputs[k] for k in wanted], [g for _, g in pairs],
                                create_graph=torch.is_grad_enabled(), allow_unused=True)
    for k, g in zip(wanted, found):
        grads[k] = g
    return grads


def _composite_backward(ctx, need, mode, outputs_grads, x, w_ih, b_ih, b_hh, w_hh, w_hr, h0, c0, batch_sizes
                        ) -> tuple:
    """A layer op's backward through pyrnn.composite (_backward_in_torch_ops): its gradients in the order of its
    inputs. need: _engine_needs over the op's inputs x, w_ih, b_ih, b_hh, w_hh, (w_hr,) h0, (c0,) ..."""
    inputs = (x, w_ih, b_ih, b_hh, w_hh, w_hr, h0, c0)
    needs = need[:8] if mode == "LSTM" else (*need[:5], False, need[5], False)
    grads = _differentiate(
        lambda: _composite.layer(mode, x, w_ih, b_ih, b_hh, w_hh, w_hr, h0, c0, batch_sizes, ctx.reverse,
                                 for_double_backward=torch.is_grad_enabled()),
        outputs_grads, inputs, needs)
    if mode == "LSTM":
        return (*grads, None, None, None)  # batch_sizes, reverse, save_workspace
    dx, dw_ih, db_ih, db_hh, dw_hh, _, dh0, _ = grads
    rest = (None, None, None, None) if mode.startswith("RNN") else (None, None, None)  # (relu,) flags
    return (dx, dw_ih, db_ih, db_hh, dw_hh, dh0, *rest)


# ------------------------------------------------------------------------------------------- eager calls
#
# A call through a custom op crosses the dispatcher twice (autograd, then the CPU kernel) and Dynamo's
# disable wrapper: ~40 us per op, several ops per layer, which made a whole RNNCell training step 2-3x the
# cost of its kernels. In plain eager mode on plain tensors the same implementation, setup_context and backward
# run through an autograd.Function instead; anything that needs the registered ops (torch.compile, tracing,
# fake or functional tensors, functorch transforms, dispatch or function modes) still gets them.

_PLAIN_TENSOR_TYPES = (Tensor, torch.nn.Parameter)


def _compiling_tracing_or_mode() -> bool:
    return (torch.compiler.is_compiling() or torch.jit.is_tracing() or torch._C._len_torch_dispatch_stack() > 0
            or torch._C._is_torch_function_mode_enabled())


def _plain(args) -> bool:
    # Meta tensors (shape-only: deferred initialisation, model summaries) take the registered ops, whose fake
    # implementations serve them; the implementations would hand their null data pointers to the kernels. The
    # first tensor decides (the ops' checks refuse tensors on other devices than it).
    if _compiling_tracing_or_mode() or torch._C._are_functorch_transforms_active():
        return False
    first = None
    for a in args:
        if isinstance(a, Tensor):
            if type(a) not in _PLAIN_TENSOR_TYPES:
                return False
            if first is None:
                first = a
    return first is None or not first.is_meta


plain_eager = _plain  # for callers that run an implementation directly (functional.cell's inference)


def _grad_transform_level() -> Optional[int]:
    """The level of torch.func.grad / vjp when it is the one transform active (and nothing compiles, traces or
    runs a mode), else None. There the registered ops fail (the autograd.Function torch.library generates for
    them lacks the separate setup_context functorch requires), so the autograd.Function of _FUNCTORCH runs
    instead, its backward's kernels on the plain tensors under functorch's wrappers (_call). One level only: a
    backward run by the implementations records no graph, which an outer grad (grad of grad) would silently take
    as constant."""
    if _compiling_tracing_or_mode():
        return None
    stack = torch._C._functorch.get_interpreter_stack() or []
    if len(stack) == 1 and stack[0].key() == torch._C._functorch.TransformType.Grad:
        return stack[0].level()
    return None


def exporting_to_onnx() -> bool:
    """Whether torch.onnx.export is at work (either exporter). No export without torch.onnx loaded, and torch loads
    it lazily; once it is (torch._dynamo imports it), its flags are read directly: torch.onnx.is_in_onnx_export()
    imports two modules per call (0.8 us, a tenth of a B=1 cell call's Python)."""
    global _onnx_export_flag
    if "torch.onnx" not in sys.modules:
        return False
    if torch.compiler.is_compiling():  # the public test, which Dynamo knows (its flags it cannot trace)
        return torch.onnx.is_in_onnx_export()
    if _onnx_export_flag is None:
        try:
            from torch.onnx._internal.exporter import _flags
            from torch.onnx._internal.torchscript_exporter._globals import GLOBALS

            _flags._is_onnx_exporting, GLOBALS.in_onnx_export  # noqa: B018 (both exist on this torch)
            _onnx_export_flag = lambda: _flags._is_onnx_exporting or GLOBALS.in_onnx_export  # noqa: E731
        except (ImportError, AttributeError):  # another torch's layout: its public test
            _onnx_export_flag = torch.onnx.is_in_onnx_export
    return bool(_onnx_export_flag())


_onnx_export_flag = None


def needs_composite() -> bool:
    """Whether a call must run pyrnn.composite (torch's ops) instead of the kernels: during torch.onnx.export (ONNX
    knows no pyrnn ops), or because what differentiates it needs more than one backward: forward-mode AD (a dual
    level; torch.func.jvp, jacfwd, hessian) or torch.func.grad / vjp nested in or around another transform (grad of
    grad, vmap over grad). The kernels serve one grad level
    (_FUNCTORCH) and vmap alone (its loop over the registered ops); under them a forward-mode tangent would be
    dropped, silently, and an outer grad would take the inner gradient as constant."""
    if _forward_ad._current_level >= 0:
        return True
    if exporting_to_onnx():  # ONNX has no pyrnn ops: the graph is made of torch's
        return True
    if not torch._C._are_functorch_transforms_active() or torch.compiler.is_compiling():
        return False
    kinds = [level.key() for level in torch._C._functorch.get_interpreter_stack() or []]
    T = torch._C._functorch.TransformType
    return T.Jvp in kinds or (T.Grad in kinds and len(kinds) > 1)


def _eager_function(op, impl, setup_context, backward, functorch: bool = False) -> type:
    # functorch=True: forward without ctx and setup_context apart, the form torch.func's transforms accept. Plain
    # eager calls keep the older form: the separate setup_context costs ~19 us more per call (a two-layer GRU
    # step at H=8 0.88x, RNN T=35 B=20 H=200 0.96x).
    if functorch:
        def forward(*args):
            return impl(*args)

        methods = {"forward": staticmethod(forward), "setup_context": staticmethod(setup_context)}
    else:
        def forward(ctx, *args):
            output = impl(*args)
            setup_context(ctx, args, output)
            return output

        methods = {"forward": staticmethod(forward)}
    name = ("Functorch_" if functorch else "Eager_") + op._name.replace("::", "_")
    return type(name, (torch.autograd.Function,), {**methods, "backward": staticmethod(backward)})


_IMPLS = {
    gemm: _gemm_impl,
    lstm_layer_backward: _lstm_layer_backward_impl,
    gru_layer_backward: _gru_layer_backward_impl,
    rnn_layer_backward: _rnn_layer_backward_impl,
    cell_backward: _run_cell_backward,
}
# Differentiable ops: (the implementation eager calls run, setup_context, backward).
_DIFFERENTIABLE = {
    lstm_layer: (_lstm_layer_impl, _lstm_setup_context, _lstm_backward),
    gru_layer: (_gru_layer_impl, _gru_setup_context, _gru_backward),
    rnn_layer: (_rnn_layer_impl, _rnn_setup_context, _rnn_backward),
    cell: (_cell_impl, _cell_setup_context, _cell_backward),
}
_EAGER = {op: _eager_function(op, *spec) for op, spec in _DIFFERENTIABLE.items()}
_FUNCTORCH = {op: _eager_function(op, *spec, functorch=True) for op, spec in _DIFFERENTIABLE.items()}
_OWN_FUNCTIONS = frozenset([*_EAGER.values(), _EagerCell])  # (_engine_needs; not _FUNCTORCH's: wrapped tensors)


def _call(op, *args):
    """Runs a backward-side op: its implementation directly in plain eager mode (for cell_backward without
    re-checking the forward's own tensors) and under one torch.func.grad level (on the tensors functorch wraps),
    the registered op otherwise (compiling, tracing, modes)."""
    if not torch.is_grad_enabled() and _plain(args):
        return _IMPLS[op](*args)
    level = _grad_transform_level()
    if level is not None:  # inside torch.func.grad's backward: kernels on the plain tensors, results wrapped back
        from torch._C._functorch import _unwrap_for_grad, _wrap_for_grad
        from torch._functorch.pyfunctorch import retrieve_current_functorch_interpreter

        plain = [_unwrap_for_grad(a, level) if isinstance(a, Tensor) else a for a in args]
        with retrieve_current_functorch_interpreter().lower():  # tensors made in there stay plain
            out = _IMPLS[op](*plain)
        return tuple(_wrap_for_grad(t, level) for t in out) if isinstance(out, tuple) else _wrap_for_grad(out, level)
    return op(*args)


def apply(op, *args):
    """Runs a differentiable pyrnn op (lstm_layer, gru_layer, rnn_layer, cell) with positional arguments: in plain
    eager mode through its autograd.Function (or its implementation alone when grad mode is off or no argument
    requires grad), under one torch.func.grad level through its functorch-form autograd.Function, through the
    registered custom op otherwise. Same implementation, same backward either way."""
    if needs_composite():
        raise RuntimeError(f"pyrnn: {op._name} cannot run under forward-mode AD, nested torch.func transforms or "
                           "ONNX export; pyrnn's modules and pyrnn.functional can (they run pyrnn.composite there)")
    if _plain(args):
        if torch.is_grad_enabled() and any(isinstance(a, Tensor) and a.requires_grad for a in args):
            return _EAGER[op].apply(*args)
        return _DIFFERENTIABLE[op][0](*args)  # nothing for autograd to record: the implementation alone
    if _grad_transform_level() is not None:  # torch.func.grad / vjp (functional_call training loops)
        return _FUNCTORCH[op].apply(*args)
    return op(*args)
