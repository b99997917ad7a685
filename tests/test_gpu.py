"""GPU backends on a CUDA device against torch.nn: skipped, with the reason, where there is no GPU.
The CUDA sources are compiled wherever nvcc is found (setup.py); that much is checked everywhere.

Paths: "triton" (pyrnn/kernels, its choice by shape), "triton-resident" (its weight-resident kernels forced,
where they take a layer), "cuda" (the weight-resident persistent kernels of csrc/cuda/resident.cuh
where they take a layer, float32 compute without projection), "cuda-mma" (the same with their TF32 tensor-core
dot products allowed: they run where TF32 is, here for bf16/fp16 inputs: the fixture below turns TF32 off for
float32), "cuda-rowblock" (csrc/cuda/recurrence.cuh's row-block kernels, forced)."""

from __future__ import annotations

import contextlib
import shutil

import pytest
import torch

import pyrnn
from conftest import forbid_torch_rnn
from test_modules import Config, make_inputs, make_pair, random_configs, run

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
PATHS = ["triton", "triton-resident", "cuda", "cuda-mma", "cuda-rowblock"]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no CUDA toolkit (nvcc) here, so no CUDA build to check")
def test_cuda_sources_were_compiled():
    from pyrnn import _cuda

    assert hasattr(_cuda, "lstm_forward") and hasattr(_cuda, "gru_backward") and hasattr(_cuda, "rnn_resident")


@pytest.fixture(autouse=True)
def exact_float32():
    """torch.nn's cuDNN layers, and following them pyrnn's float32 GEMMs on CUDA, run in TF32 by default; the
    comparisons here are in full float32 (test_gpu_tf32_follows_cudnn checks the TF32 path)."""
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = previous


@contextlib.contextmanager
def gpu_path(path: str):
    backend = path.split("-")[0]
    info = pyrnn.backends()[backend]
    if not info["available"]:
        pytest.skip(info["reason"])
    from pyrnn import cuda_launch

    pyrnn.set_backend(backend)
    cuda_launch.set_resident(path != "cuda-rowblock")
    cuda_launch.set_mma(path == "cuda-mma")
    if path == "triton-resident":
        from pyrnn.kernels import triton_host

        triton_host.set_mode("resident")
    try:
        yield
    finally:
        pyrnn.set_backend("auto")
        cuda_launch.set_resident(True)
        cuda_launch.set_mma(False)
        if path == "triton-resident":
            triton_host.set_mode("auto")


def _to_gpu(hx):
    return None if hx is None else (tuple(h.cuda() for h in hx) if isinstance(hx, tuple) else hx.cuda())


def check_against_cpu(cfg: Config, path: str, tol: dict):
    """pyrnn on the GPU against CPU torch.nn (same weights, inputs and upstream gradients), with torch's
    recurrent kernels made to raise during the pyrnn call."""
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    ref, ours = make_pair(cfg)
    x, lengths, hx = make_inputs(cfg, gen)
    exp_out, exp_grads = run(ref, cfg, x, lengths, hx, cfg.seed, cfg.seed + 1)
    with gpu_path(path):
        got_out, got_grads = run(ours.cuda(), cfg, x.cuda(), lengths, _to_gpu(hx), cfg.seed, cfg.seed + 1, forbid=True)
    for g, e in zip(got_out, exp_out):
        torch.testing.assert_close(g.cpu(), e, **tol)
    for name in exp_grads:
        torch.testing.assert_close(got_grads[name].cpu(), exp_grads[name], **tol, msg=lambda m: f"grad {name}: {m}")


@needs_gpu
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("cfg", [c for c in random_configs(320, seed=7) if c.hidden_size <= 33][:24], ids=str)
def test_gpu_backend_matches_torch_nn(cfg: Config, path):
    if cfg.dropout > 0 and cfg.training and cfg.num_layers > 1:
        # The reference is CPU torch.nn, whose masks come from the CPU generator and ours from the CUDA one, so
        # outputs cannot match. Dropout between layers is backend-independent Python (functional.recurrence); the
        # Triton kernels run such configurations against torch.nn under TRITON_INTERPRET in test_triton.py.
        pytest.skip("dropout masks differ between the CPU reference's generator and the CUDA one")
    tol = dict(rtol=1e-4, atol=1e-5) if cfg.dtype == torch.float32 else dict(rtol=1e-9, atol=1e-9)
    check_against_cpu(cfg, path, tol)


def _layer(cell, H, B, T, bidirectional=False, packed="no", seed=0, nonlinearity="tanh", layers=1):
    return Config(cell=cell, input_size=24, hidden_size=H, num_layers=layers, bias=True, batch_first=False,
                  dropout=0.0, bidirectional=bidirectional, proj_size=0, nonlinearity=nonlinearity, T=T, B=B,
                  packed=packed, unbatched=False, with_hx=True, training=True, dtype=torch.float32, seed=seed)


# Sizes where the resident kernels use several units per block, several warps per reduction, more rows than one
# shared-memory chunk (B=40 > 32), packed and reversed schedules.
LARGER = [
    _layer("LSTM", 1024, 2, 6), _layer("LSTM", 300, 40, 5, bidirectional=True, packed="unsorted", seed=1),
    _layer("GRU", 1024, 3, 5, seed=2), _layer("GRU", 200, 40, 6, bidirectional=True, packed="sorted", seed=3),
    _layer("RNN", 700, 5, 7, seed=4), _layer("RNN", 129, 37, 5, packed="unsorted", nonlinearity="relu", seed=5),
    _layer("LSTM", 256, 16, 8, layers=2, bidirectional=True, seed=6),
]


@needs_gpu
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("cfg", LARGER, ids=str)
def test_gpu_larger_layers_float32(cfg: Config, path):
    """float32 on the GPU against CPU torch.nn in float32 (the same upstream gradients need the same dtype):
    the difference is float32 rounding in two summation orders."""
    check_against_cpu(cfg, path, dict(rtol=1e-3, atol=1e-4))


@needs_gpu
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
def test_gpu_half_types(cell, dtype, path):
    """bf16/fp16 layers (float32 inside the kernels) against the float32 computation on the same rounded
    weights and inputs: outputs and every gradient within the half type's rounding."""
    torch.manual_seed(0)
    ref = getattr(torch.nn, cell)(24, 64, num_layers=2, bidirectional=True).cuda()
    ours = getattr(pyrnn, cell)(24, 64, num_layers=2, bidirectional=True).cuda()
    ours.load_state_dict(ref.state_dict())
    ours = ours.to(dtype)
    ref = ref.to(dtype).float()  # the same rounded weights, computed in float32
    x = torch.randn(30, 8, 24, device="cuda").to(dtype)
    with gpu_path(path), forbid_torch_rnn():
        x_ours = x.clone().requires_grad_()
        out, h = ours(x_ours)
    x_ref = x.float().requires_grad_()
    out_ref, h_ref = ref(x_ref)
    assert out.dtype == dtype and (h[0] if isinstance(h, tuple) else h).dtype == dtype
    g = torch.randn_like(out_ref)
    with gpu_path(path), forbid_torch_rnn():
        out.backward(g.to(dtype))
    out_ref.backward(g)
    rel = lambda a, b: ((a.float() - b).norm() / b.norm()).item()  # noqa: E731
    assert rel(out, out_ref) < 2e-2
    assert rel(x_ours.grad, x_ref.grad) < 3e-2
    for (name, p), (_, p_ref) in zip(ours.named_parameters(), ref.named_parameters()):
        assert p.grad.dtype == dtype
        assert rel(p.grad, p_ref.grad) < 3e-2, name


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no CUDA toolkit (nvcc) here, so no CUDA build to check")
def test_resident_plan_invariants():
    """The resident kernels' launch plan (pure host arithmetic, checked without a GPU): every unit owned by a
    block, every output and reduction index covered by an instantiated register tile (float32 FMA, or TF32 MMA
    where allowed), shared memory within the device's, and the plan taken for the float32 shapes the GPU grid
    times (with TF32 allowed, on tensor cores from B = 16)."""
    from pyrnn import _C, _cuda

    tiles = {(t, k) for t in (1, 2, 4, 8, 16) for k in (4, 8, 16, 32) if t * k <= 128}  # resident.cuh's
    mma_forward = {(nt, ks, 1) for nt in (1, 2, 3, 4) for ks in (4, 8, 16)}  # (tiles of 8 outputs, k-steps, mma)
    mma_backward = {(1, ks, 1) for ks in (4, 8, 16, 32, 64)} | {(1, 64, 2)}  # mma 2: 8-row tiles
    for sms, smem in ((132, 227 * 1024 - 8192), (16, 99 * 1024 - 8192), (1, 48 * 1024)):
        for G in (1, 3, 4):
            for H in (1, 3, 33, 128, 200, 256, 300, 512, 700, 1024, 2048, 4096, 5000):
                for B in (1, 7, 8, 16, 40, 64, 1000, 100000):
                    for backward in (False, True):
                        for tf32 in (False, True):
                            a = _C.RecurrenceArgs()
                            a.dtype, a.H, a.B, a.T = 0, H, B, 7
                            p = _cuda.resident_plan(G, a, backward, sms, smem, tf32)
                            if sms == 132 and H <= 1024 and B <= 256:
                                assert p["ok"], (G, H, B, backward, tf32)
                            if not p["ok"]:
                                continue
                            O, K = (p["units_per_block"], G * H) if backward else (G * p["units_per_block"], H)
                            assert p["blocks"] <= sms and p["blocks"] * p["units_per_block"] >= H
                            assert (p["blocks"] - 1) * p["units_per_block"] < H  # no idle block
                            quantum = p["row_quantum"]
                            if p["mma"]:
                                assert tf32 and B >= 8
                                tile = (p["mma_output_tiles"], p["mma_k_steps"], p["mma"])
                                assert tile in (mma_backward if backward else mma_forward), tile
                                assert 8 * p["mma_output_tiles"] >= O and p["warps_per_output"] == 8
                                assert p["staged_row_length"] == 64 * p["mma_k_steps"] + 4 >= K + 4
                                assert p["staged_row_length"] % 32 == 4  # A-fragment loads: 32 banks
                                assert quantum == (16 if p["mma"] == 1 else 8)
                            else:
                                assert (p["outputs_per_warp"], p["k_per_lane"]) in tiles
                                assert (8 // p["warps_per_output"]) * p["outputs_per_warp"] >= O
                                assert p["staged_row_length"] == 32 * p["k_per_lane"] * p["warps_per_output"] >= K
                                assert quantum == 4
                            assert p["chunk_rows"] % quantum == 0 and quantum <= p["chunk_rows"] <= 32
                            assert p["dyn_smem"] <= smem
                            if p["gx_staged"]:  # the forward's gx in shared memory: all rows in one chunk
                                assert not backward and B <= p["chunk_rows"]
                            if sms == 132 and B <= 16 and H <= 1024 and not backward:
                                assert p["gx_staged"], (G, H, B)
                            if sms == 132 and 16 <= B <= 256 and H <= 1024 and tf32:
                                assert p["mma"], (G, H, B, backward)  # the grid's B = 16 shapes: tensor cores
    a = _C.RecurrenceArgs()
    a.dtype, a.H, a.B, a.T = 1, 256, 4, 3  # float64: the row-block kernels
    assert not _cuda.resident_plan(4, a, False, 132, 200_000)["ok"]
    a.dtype, a.P = 0, 128  # projection: the row-block kernels
    assert not _cuda.resident_plan(4, a, False, 132, 200_000)["ok"]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no CUDA toolkit (nvcc) here, so no CUDA build to check")
def test_tf32_recurrence_is_opt_in_and_reported():
    """The resident kernels' TF32 recurrence stays off unless asked for (not yet validated on a GPU), and
    pyrnn.backends() says which it is; half-type inputs take it once on, float32 only under cuDNN's TF32 flag."""
    from pyrnn import cuda_launch

    assert pyrnn.backends()["cuda"]["tf32_recurrence"] is cuda_launch.mma_enabled()
    previous, allow = cuda_launch.mma_enabled(), torch.backends.cudnn.allow_tf32
    try:
        cuda_launch.set_mma(False)
        assert pyrnn.backends()["cuda"]["tf32_recurrence"] is False
        assert not any(cuda_launch._recurrence_tf32(d) for d in (torch.float32, torch.bfloat16, torch.float16))
        cuda_launch.set_mma(True)
        assert pyrnn.backends()["cuda"]["tf32_recurrence"] is True
        assert cuda_launch._recurrence_tf32(torch.bfloat16) and cuda_launch._recurrence_tf32(torch.float16)
        torch.backends.cudnn.allow_tf32 = False  # float32 follows torch.nn's cuDNN flag
        assert not cuda_launch._recurrence_tf32(torch.float32)
        torch.backends.cudnn.allow_tf32 = True
        assert cuda_launch._recurrence_tf32(torch.float32) == cuda_launch.hc.cudnn_rnn_uses_tf32()
        assert not cuda_launch._recurrence_tf32(torch.float64)
    finally:
        cuda_launch.set_mma(previous)
        torch.backends.cudnn.allow_tf32 = allow


def _tf32(t: torch.Tensor) -> torch.Tensor:
    """float32 rounded to TF32 as cvt.rna.tf32.f32 does (nearest, ties away from zero): 10 mantissa bits."""
    bits = t.contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no CUDA toolkit (nvcc) here, so no CUDA build to check")
@pytest.mark.parametrize("nt, ks, half", [(1, 4, False), (1, 8, False), (1, 16, False), (1, 32, False), (1, 64, False),
                                          (1, 64, True), (2, 4, False), (3, 8, False), (4, 16, False)])
def test_mma_tile_fragments_emulated(nt, ks, half):
    """The TF32 MMA tile's per-lane fragment code (csrc/cuda/mma_tile.cuh: B fragments from W, A fragments from
    the staged rows, the sums back to their [row, output] places), run for every warp and lane on the host with
    mma.sync computed from its definition: out = x . W^T of the TF32-rounded operands, for partial row tiles,
    outputs and reductions that do not fill the tiles."""
    from pyrnn import _cuda

    gen = torch.Generator().manual_seed(nt * 100 + ks + half)
    quantum = 8 if half else 16
    ld = 64 * ks + 4
    for O, K, rows in [(8 * nt, 64 * ks, 2 * quantum), (8 * nt - 3, 64 * ks - 37, 2 * quantum - 5), (1, 5, 1)]:
        w = torch.randn(O, K, generator=gen)
        x = torch.randn(rows, K, generator=gen)
        xs = torch.zeros((rows + quantum - 1) // quantum * quantum, ld)  # staged: zero-padded rows and columns
        xs[:rows, :K] = x
        out = torch.full((rows, O), float("nan"))
        assert _cuda.mma_tile_emulate(nt, ks, half, w.data_ptr(), O, K, xs.data_ptr(), rows, out.data_ptr())
        want = _tf32(x).double() @ _tf32(w).double().t()
        torch.testing.assert_close(out.double(), want, rtol=1e-4, atol=1e-4 * K ** 0.5)
        exact = x.double() @ w.double().t()  # and TF32's rounding (2^-11 a term) is all that separates them
        scale = x.double().abs() @ w.double().abs().t()
        assert ((out.double() - exact).abs() <= 2e-3 * scale).all()
    assert not _cuda.mma_tile_emulate(5, 4, False, 0, 0, 0, 0, 0, 0)  # not instantiated


@needs_gpu
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(1, 1, 1), (37, 33, 1), (5, 1, 70), (300, 129, 64), (64, 3, 0)])
def test_gemm_tf32_layouts(shape, bias):
    """The TF32 GEMM (cuBLAS, column-major) on row-major, transposed-view and sliced operands, against float64."""
    from pyrnn import cuda_launch

    if cuda_launch.gemm_tf32(torch.ones(1, 1, device="cuda"), torch.ones(1, 1, device="cuda")) is None:
        pytest.skip("cuBLAS could not be loaded, so pyrnn uses torch's float32 GEMM")
    M, N, K = shape
    gen = torch.Generator().manual_seed(M * 1000 + N + K)
    for a_t in (False, True):
        for b_t in (False, True):
            a = torch.randn(K, M, generator=gen).t() if a_t else torch.randn(M, K, generator=gen)
            b = torch.randn(N, K, generator=gen).t() if b_t else torch.randn(K, N, generator=gen)
            c = torch.randn(N, generator=gen) if bias else None
            # (storage, view): views made on the device, since .cuda() makes a non-dense view dense
            operands = [(b, lambda t: t),
                        (torch.randn(K, 2 * N, generator=gen), lambda t: t[:, ::2]),  # no unit stride: copied
                        (torch.randn(1, N, generator=gen), lambda t: t.expand(K, N))]  # stride 0: copied
            for storage, view in operands:
                bb = view(storage)
                got = cuda_launch.gemm_tf32(a.cuda(), view(storage.cuda()), None if c is None else c.cuda())
                want = a.double() @ bb.double() + (0 if c is None else c.double())
                torch.testing.assert_close(got.cpu().double(), want, rtol=2e-2, atol=2e-2 * max(K, 1) ** 0.5)


@needs_gpu
def test_gpu_tf32_follows_cudnn():
    """float32 with TF32 allowed for cuDNN's RNNs (torch's default): pyrnn's GEMMs run in TF32 too, within TF32
    rounding of the exact result and of torch.nn (cuDNN, TF32); with it off, they are full float32."""
    if not pyrnn.backends()["cuda"]["available"]:
        pytest.skip(pyrnn.backends()["cuda"]["reason"])
    torch.manual_seed(0)
    ref = torch.nn.LSTM(256, 256).cuda()
    ours = pyrnn.LSTM(256, 256).cuda()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(20, 4, 256, device="cuda")
    exact = ours(x)[0]  # the autouse fixture has TF32 off
    torch.backends.cudnn.allow_tf32 = True
    with forbid_torch_rnn():
        fast = ours(x)[0]
    want = ref(x)[0]
    x64 = x.double()
    truth = ours.double()(x64)[0].float()
    rel = lambda a, b: ((a - b).norm() / b.norm()).item()  # noqa: E731
    assert rel(exact, truth) < 1e-5
    assert 1e-6 < rel(fast, truth) < 1e-2  # TF32 was used, and only within its rounding
    assert rel(fast, want) < 1e-2


@needs_gpu
@pytest.mark.parametrize("cell, H, B", [("LSTM", 256, 8), ("LSTM", 1024, 16), ("GRU", 512, 40), ("GRU", 1024, 16),
                                        ("RNN", 1024, 33), ("LSTM", 700, 64)])
def test_gpu_tf32_recurrence(cell, H, B):
    """The resident kernels' TF32 tensor-core dot products (cuda_launch.set_mma; float32 with cuDNN's TF32
    flag on): outputs, final states and every gradient within TF32 rounding of the float64 computation, and
    not bit-identical to the float32 recurrence (so the MMA tiles ran): 16-row tiles, the backward's 8-row
    tiles at G*H = 4096 (LSTM H=1024), several row chunks (B=40, 64)."""
    if not pyrnn.backends()["cuda"]["available"]:
        pytest.skip(pyrnn.backends()["cuda"]["reason"])
    from pyrnn import cuda_launch

    torch.manual_seed(H + B)
    ours = getattr(pyrnn, cell)(64, H).cuda()
    x = torch.randn(12, B, 64, device="cuda")
    g = torch.randn(12, B, H, device="cuda")

    def run_module(module, inp, grad):
        inp = inp.clone().requires_grad_()
        module.zero_grad(set_to_none=True)
        with forbid_torch_rnn():
            out, h = module(inp)
            out.backward(grad)
        return [out.detach(), *(h if isinstance(h, tuple) else (h,)), inp.grad] + [p.grad for p in module.parameters()]

    torch.backends.cudnn.allow_tf32 = True
    try:
        cuda_launch.set_mma(False)
        plain = run_module(ours, x, g)
        cuda_launch.set_mma(True)
        fast = run_module(ours, x, g)
    finally:
        cuda_launch.set_mma(False)
        torch.backends.cudnn.allow_tf32 = False
    truth = run_module(ours.double(), x.double(), g.double())
    rel = lambda a, b: ((a.double() - b).norm() / b.norm()).item()  # noqa: E731
    for got, want in zip(fast, truth):
        assert rel(got, want) < 2e-2
    assert any(not torch.equal(a, b) for a, b in zip(fast, plain))


def test_tf32_follows_cudnn_rnn_flags():
    """pyrnn's float32 GEMMs on CUDA take TF32 exactly where torch.nn's cuDNN RNNs would (flags only: runs
    without a GPU)."""
    from pyrnn.ops import _cudnn_rnn_uses_tf32

    enabled, allow = torch.backends.cudnn.enabled, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cudnn.enabled, torch.backends.cudnn.allow_tf32 = True, True
        assert _cudnn_rnn_uses_tf32()
        torch.backends.cudnn.allow_tf32 = False
        assert not _cudnn_rnn_uses_tf32()
        torch.backends.cudnn.enabled, torch.backends.cudnn.allow_tf32 = False, True  # torch.nn: its own kernels
        assert not _cudnn_rnn_uses_tf32()
    finally:
        torch.backends.cudnn.enabled, torch.backends.cudnn.allow_tf32 = enabled, allow
