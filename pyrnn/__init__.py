"""pyrnn: fused recurrent-network kernels for PyTorch, as drop-in replacements for torch.nn's layers.

    from pyrnn import LSTM                 # instead of torch.nn's
    lstm = LSTM(input_size=32, hidden_size=64, num_layers=2, batch_first=True)

The recurrences run in pyrnn's own kernels (C++ on the CPU); torch.nn's recurrent kernels are never called.
"""

from __future__ import annotations

from . import ops  # noqa: F401  (registers the torch.library ops)
from .backend import get_backend, get_cpu_gemm, set_backend, set_cpu_gemm
from .modules import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell

__all__ = [
    "RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "backends", "set_backend", "get_backend",
    "set_cpu_gemm", "get_cpu_gemm", "workspace_cache_stats", "set_workspace_cache_limit", "empty_cache",
]
__version__ = "0.1.0"


def backends() -> dict:
    """What this installation can run: {backend: {"available": bool, ...details or "reason"}}. Where the CUDA
    extension is built, "tf32_recurrence" says whether its resident kernels may run the recurrent dot products in
    TF32 on tensor cores (opt-in: pyrnn.cuda_launch.set_mma or PYRNN_CUDA_MMA=1)."""
    import torch

    from ._ext import BUILD_HINT, _C, _IMPORT_ERROR

    cpu = {"available": _C is not None}
    if _C is not None:
        cpu["isa"] = _C.isa()
        cpu["isas"] = list(_C.available_isas())
        cpu["threads"] = _C.thread_backend()
        cpu["vendor"] = _C.cpu_vendor()
        from .ops import torch_cpu_gemm

        cpu["gemm"] = "pyrnn"
        if torch_cpu_gemm():
            cpu["gemm"] = "torch (MKL)" if torch.backends.mkl.is_available() else "torch"
    else:
        cpu["reason"] = f"{BUILD_HINT} ({_IMPORT_ERROR})"

    from .backend import cuda_ext_status, interpreting, triton_status

    gpu = torch.cuda.is_available()
    ok, why = triton_status()
    triton = {"available": ok and (gpu or interpreting())}
    if not triton["available"]:
        triton["reason"] = why if not ok else "no CUDA GPU (the kernels run on CPU only under TRITON_INTERPRET=1)"
    ok, why = cuda_ext_status()
    cuda = {"available": ok and gpu}
    if not cuda["available"]:
        cuda["reason"] = why if not ok else "the extension is built but no CUDA GPU is visible"
    if ok:  # opt-in, not yet validated on a GPU: cuda_launch.set_mma / PYRNN_CUDA_MMA=1
        from . import cuda_launch

        cuda["tf32_recurrence"] = cuda_launch.mma_enabled()
    return {"cpu": cpu, "triton": triton, "cuda": cuda, "forced": get_backend()}


def workspace_cache_stats() -> dict:
    """The CPU workspace cache (large buffers a training step saves for its backward, kept for the next step
    instead of being page-faulted in again): live_bytes, cached_bytes (idle), limit_bytes, hits, misses."""
    from ._ext import cpu_kernels

    return dict(cpu_kernels().pool_stats())


def set_workspace_cache_limit(nbytes: int) -> None:
    """Most idle bytes the CPU workspace cache keeps (default 512 MiB, or PYRNN_WORKSPACE_CACHE_MB); 0 turns
    caching off. Buffers in use are never affected."""
    from ._ext import cpu_kernels

    cpu_kernels().pool_set_limit(int(nbytes))


def empty_cache() -> None:
    """Frees the idle buffers of the CPU workspace cache (like torch.cuda.empty_cache)."""
    from ._ext import cpu_kernels

    cpu_kernels().pool_clear()
