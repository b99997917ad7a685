"""Which kernels run an op: pyrnn's C++ CPU kernels, its Triton kernels, or its CUDA C++ kernels.

Default ("auto"): CPU tensors run the C++ kernels, CUDA tensors the CUDA C++ kernels (pyrnn._cuda: the
weight-resident persistent kernels where they take the layer; on an H100 1.3x the Triton backend's median
speed over cuDNN, more at B >= 16) and the Triton kernels where pyrnn._cuda was not built. Force one for testing
with pyrnn.set_backend(name) (or the PYRNN_BACKEND environment variable): "cpu", "triton", "cuda", "auto".
The Triton kernels also run on CPU tensors under TRITON_INTERPRET=1 (how CI tests them).

The large non-recurrent GEMMs of the CPU path (input projection, dx, the weight gradients) run in pyrnn's own
GEMM or in torch's (MKL): pyrnn.set_cpu_gemm(name) or PYRNN_CPU_GEMM, "pyrnn", "torch" or "auto" (torch's on
Intel CPUs where torch has MKL, pyrnn's elsewhere: MKL runs these shapes at ~90% of the FMA peak on Intel and
~40% on AMD; BENCHMARKS.md).
"""

from __future__ import annotations

import importlib.util
import os

from torch import Tensor

BACKENDS = ("auto", "cpu", "triton", "cuda")
CPU_GEMMS = ("auto", "pyrnn", "torch")


def _checked(name: str, allowed: tuple, what: str) -> str:
    if name not in allowed:
        raise ValueError(f"pyrnn: unknown {what} '{name}', expected one of {allowed}")
    return name


_forced = os.environ.get("PYRNN_BACKEND", "auto")
_cpu_gemm = _checked(os.environ.get("PYRNN_CPU_GEMM", "auto"), CPU_GEMMS, "CPU GEMM (PYRNN_CPU_GEMM)")


def set_backend(name: str) -> None:
    """Force the kernels pyrnn's ops run with ("auto" restores the default choice by device)."""
    global _forced
    _forced = _checked(name, BACKENDS, "backend")


def get_backend() -> str:
    return _forced


def set_cpu_gemm(name: str) -> None:
    """Choose the GEMM of the CPU path's large products: "pyrnn" (its own), "torch" (torch.mm: MKL where torch has
    it) or "auto" (torch's on Intel CPUs with MKL, pyrnn's elsewhere)."""
    global _cpu_gemm
    _cpu_gemm = _checked(name, CPU_GEMMS, "CPU GEMM")


def get_cpu_gemm() -> str:
    return _cpu_gemm


def triton_status() -> tuple[bool, str]:
    if importlib.util.find_spec("triton") is None:
        return False, "triton is not installed (pip install triton; GPU kernels need a CUDA GPU)"
    return True, "ok"


def cuda_ext_status() -> tuple[bool, str]:
    try:
        from . import _cuda  # noqa: F401
    except ImportError as exc:
        return False, (f"pyrnn._cuda was not built ({exc}); it is compiled by `pip install -e .` when a CUDA "
                       "toolkit (nvcc) is found")
    return True, "ok"


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def select(t: Tensor) -> str:
    """The backend that runs an op whose main input is t."""
    name = _forced
    if name == "auto":
        if t.device.type == "cpu":
            name = "cpu"
        else:  # the CUDA C++ kernels first; Triton where pyrnn._cuda was not built
            name = "cuda" if cuda_ext_status()[0] or not triton_status()[0] else "triton"
    if name == "cpu" and t.device.type != "cpu":
        raise NotImplementedError(f"pyrnn: the 'cpu' backend cannot run {t.device.type} tensors")
    if name == "triton":
        ok, why = triton_status()
        if not ok:
            raise NotImplementedError(f"pyrnn: the Triton backend is unavailable: {why}")
        if t.device.type == "cpu" and not interpreting():
            raise NotImplementedError("pyrnn: Triton kernels run on CPU tensors only under TRITON_INTERPRET=1")
        if t.device.type not in ("cpu", "cuda"):
            raise NotImplementedError(f"pyrnn: no kernels for {t.device.type} tensors")
    if name == "cuda":
        ok, why = cuda_ext_status()
        if not ok or t.device.type != "cuda":
            raise NotImplementedError(f"pyrnn: the CUDA backend is unavailable: {why if not ok else 'not a CUDA tensor'}")
    return name
