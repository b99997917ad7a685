"""The CPU path's large GEMMs (csrc/gemm.cpp, or torch's MKL where pyrnn.set_cpu_gemm / "auto" chooses it):
every operand layout the layer ops pass (transposed views read in place), biases, odd sizes, the depth split of
the weight gradients, each instruction set, both choices; against float64 matmul."""

from __future__ import annotations

import pytest
import torch

import pyrnn
from pyrnn import ops
from pyrnn._ext import _C

# (M, K, N): tall and narrow, odd, the projection and dx of a T=35 B=20 H=200 LSTM layer, a deep weight gradient
# (K = all steps: split by depth across threads), fewer than 32 rows (torch's GEMM whatever the choice).
SHAPES = [(32, 1, 1), (33, 7, 65), (200, 257, 129), (700, 200, 800), (700, 800, 200), (96, 4100, 48), (5, 9, 3)]


@pytest.fixture(params=["pyrnn", "torch"])
def cpu_gemm(request):
    old = pyrnn.get_cpu_gemm()
    pyrnn.set_cpu_gemm(request.param)
    yield request.param
    pyrnn.set_cpu_gemm(old)


def _operand(rows, cols, transposed, dtype, gen):
    if transposed:  # a [rows, cols] view of a [cols, rows] tensor, as dG.t() and w_ih.t() are
        return torch.randn(cols, rows, dtype=dtype, generator=gen).t()
    return torch.randn(rows, cols, dtype=dtype, generator=gen)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_gemm_layouts(cpu_gemm, shape, dtype):
    M, K, N = shape
    gen = torch.Generator().manual_seed(M * 7 + K)
    tol = dict(rtol=2e-5, atol=2e-5 * K ** 0.5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12 * K)
    for a_t in (False, True):
        for b_t in (False, True):
            a, b = _operand(M, K, a_t, dtype, gen), _operand(K, N, b_t, dtype, gen)
            bias = torch.randn(N, dtype=dtype, generator=gen)
            expected = a.double() @ b.double()
            torch.testing.assert_close(ops.gemm(a, b).double(), expected, **tol)
            torch.testing.assert_close(ops.gemm(a, b, bias).double(), expected + bias.double(), **tol)
            # the projection's path: a pooled output buffer
            got = ops._gemm(a, b, bias, ops._workspace)
            torch.testing.assert_close(got.double(), expected + bias.double(), **tol)


@pytest.mark.parametrize("isa", _C.available_isas())
def test_pyrnn_gemm_on_every_instruction_set(isa):
    old = pyrnn.get_cpu_gemm()
    try:
        pyrnn.set_cpu_gemm("pyrnn")
        _C.set_isa(isa)
        gen = torch.Generator().manual_seed(1)
        for M, K, N in [(33, 7, 65), (700, 200, 800), (96, 4100, 48)]:
            a, b = torch.randn(K, M, generator=gen).t(), torch.randn(K, N, generator=gen)
            torch.testing.assert_close(ops.gemm(a, b).double(), a.double() @ b.double(), rtol=2e-5, atol=2e-4)
    finally:
        _C.set_isa("auto")
        pyrnn.set_cpu_gemm(old)


def test_choice_of_gemm():
    old = pyrnn.get_cpu_gemm()
    try:
        with pytest.raises(ValueError, match="unknown CPU GEMM"):
            pyrnn.set_cpu_gemm("blas")
        pyrnn.set_cpu_gemm("auto")
        intel_mkl = _C.cpu_vendor() == "intel" and torch.backends.mkl.is_available()
        assert ops.torch_cpu_gemm() == intel_mkl
        assert pyrnn.backends()["cpu"]["gemm"] == ("torch (MKL)" if intel_mkl else "pyrnn")
        pyrnn.set_cpu_gemm("pyrnn")
        assert not ops.torch_cpu_gemm() and pyrnn.backends()["cpu"]["gemm"] == "pyrnn"
        pyrnn.set_cpu_gemm("torch")
        assert ops.torch_cpu_gemm()
        assert _C.cpu_vendor() in ("intel", "amd", "other")
    finally:
        pyrnn.set_cpu_gemm(old)
