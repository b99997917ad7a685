"""The Triton kernels (pyrnn/kernels) against torch.nn and the CPU kernels, run on the CPU through
TRITON_INTERPRET=1 (set in conftest.py); on a CUDA machine the same tests also run on the GPU."""

from __future__ import annotations

import os

import pytest
import torch

triton = pytest.importorskip("triton", reason="the Triton backend needs `pip install triton` (Linux x86_64)")

import pyrnn  # noqa: E402
from conftest import assert_close  # noqa: E402
from test_modules import Config, make_inputs, make_pair, random_configs, run  # noqa: E402
from test_reference import CLASSES, _check, _grid  # noqa: E402

if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
    pytest.skip("Triton kernels need a CUDA GPU or TRITON_INTERPRET=1", allow_module_level=True)


@pytest.fixture(params=["persistent", "resident", "step"])
def triton_backend(request):
    """Every kernel mode: one launch per sequence over rows (W_hh streamed) or over units (W_hh resident), and
    launches per step over (rows, units)."""
    from pyrnn.kernels import triton_host

    pyrnn.set_backend("triton")
    triton_host.set_mode(request.param)
    try:
        yield
    finally:
        pyrnn.set_backend("auto")
        triton_host.set_mode("auto")


CONFIGS = [c for c in random_configs(320, seed=2026) if c.hidden_size <= 33][:32]


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_triton_matches_torch_nn(cfg: Config, triton_backend):
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    ref, ours = make_pair(cfg)
    x, lengths, hx = make_inputs(cfg, gen)
    pyrnn.set_backend("auto")
    exp_out, exp_grads = run(ref, cfg, x, lengths, hx, cfg.seed, cfg.seed + 1)
    pyrnn.set_backend("triton")
    got_out, got_grads = run(ours, cfg, x, lengths, hx, cfg.seed, cfg.seed + 1, forbid=True)
    for i, (g, e) in enumerate(zip(got_out, exp_out)):
        assert_close(g, e, cfg.dtype, f"output {i}")
    for name in exp_grads:
        assert_close(got_grads[name], exp_grads[name], cfg.dtype, f"grad {name}")


@pytest.mark.parametrize("cfg", list(_grid(16, 13)), ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_triton_matches_numpy_reference(cfg, triton_backend):
    """Outputs, final states and every gradient against the NumPy float64 reference (tolerance 1e-9)."""
    _check(cfg, CLASSES[cfg["mode"]], forbid=True)


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
def test_triton_bfloat16_accumulates_in_float32(cell, triton_backend):
    torch.manual_seed(0)
    kw = dict(num_layers=2, bidirectional=True)
    ours = getattr(pyrnn, cell)(8, 24, **kw)
    x = torch.randn(6, 3, 8)
    pyrnn.set_backend("auto")
    expected, _ = ours(x)
    pyrnn.set_backend("triton")
    got, _ = ours.bfloat16()(x.bfloat16())
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected, rtol=0.05, atol=0.05)


def test_backend_selection_errors():
    pyrnn.set_backend("cuda")
    try:
        with pytest.raises(NotImplementedError, match="CUDA backend is unavailable"):
            pyrnn.LSTM(2, 3)(torch.randn(2, 1, 2))
    finally:
        pyrnn.set_backend("auto")
    with pytest.raises(ValueError, match="unknown backend"):
        pyrnn.set_backend("tpu")


@pytest.mark.parametrize("slots", [8, 132])
def test_resident_plan_invariants(slots, monkeypatch):
    """The weight-resident kernels' sizes: every unit owned by exactly one program, at most one program per
    SM (the grid barrier needs them all resident), powers of two where Triton needs them, the register
    budget kept, and no plan where the kernel does not apply (a projection; too large a slice)."""
    from pyrnn.kernels import triton_host

    monkeypatch.setattr(triton_host, "INTERPRETER_PROGRAMS", slots)  # the plan off the GPU uses this as SMs
    cpu = torch.device("cpu")
    for G in (1, 3, 4):
        for H in (1, 3, 33, 100, 128, 255, 512, 1000, 1024):
            for B in (1, 5, 16, 64):
                for dtype in (torch.float32, torch.float64):
                    plan = triton_host.resident_plan(G, B, H, 0, dtype, cpu)
                    words = 2 if dtype == torch.float64 else 1
                    bu_min = triton.next_power_of_2(triton.cdiv(H, slots))
                    if G * bu_min * triton.next_power_of_2(H) * words > 128 * 32 * 8:
                        assert plan is None, (G, H, B, dtype)
                        continue
                    programs, bu, hk, rows, num_warps = plan
                    assert programs <= slots and (programs - 1) * bu < H <= programs * bu
                    for v in (bu, hk, rows, num_warps):
                        assert v & (v - 1) == 0
                    assert hk >= H and 1 <= rows <= min(16, triton.next_power_of_2(B)) and num_warps in (4, 8)
                    assert G * bu * hk * words <= 128 * 32 * num_warps
                    assert rows == 1 or rows * bu * hk * words <= 256 * 32 * num_warps
            assert triton_host.resident_plan(G, 4, H, 2, torch.float32, cpu) is None  # projection
    # forced "resident" where there is no plan: the row-block persistent kernel
    triton_host.set_mode("resident")
    try:
        assert triton_host._kernel(4, 4, 16, 8, torch.float32, cpu) == "persistent"
        assert triton_host._kernel(4, 4, 16, 0, torch.float32, cpu) == "resident"
    finally:
        triton_host.set_mode("auto")
    assert triton_host._kernel(4, 4, 16, 0, torch.float32, cpu) == "persistent"  # off the GPU: fewest launches


@pytest.mark.parametrize("kw,packed", [({}, False), ({"nonlinearity": "relu", "bidirectional": True}, True)], ids=str)
def test_rnn_output_changed_in_place(kw, packed, triton_backend):
    """The GPU kernels' RNN backward reads every step's output, rebuilt from the saved states (h_prev, h_n), not
    the caller's y, so `out.mul_(...)` before the backward gives torch.nn's gradients here too."""
    from torch.nn.utils.rnn import pack_padded_sequence

    torch.manual_seed(0)
    ref = torch.nn.RNN(5, 6, dtype=torch.float64, **kw)
    ours = pyrnn.RNN(5, 6, dtype=torch.float64, **kw)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)

    def run(module):
        inp = pack_padded_sequence(x, [4, 3, 1]) if packed else x
        out, h_n = module(inp)
        data = out.data if packed else out
        data.mul_(3.0).add_(1.0)
        upstream = torch.randn(data.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        return torch.autograd.grad((data * upstream).sum() + h_n.sum(), [x, *module.parameters()])

    _gradients_match(run, ref, ours, "grad")


@pytest.mark.parametrize("name,kw", [("LSTM", {"proj_size": 3}), ("GRU", {"bidirectional": True}), ("RNN", {})],
                         ids=str)
def test_double_backward_on_the_gpu_path(name, kw, triton_backend):
    """create_graph=True after a GPU-backend forward: the backward's recomputation in torch's ops (pyrnn.composite)
    finds what the GPU path saved, and the gradient of the gradient is torch.nn's."""
    torch.manual_seed(0)
    ref = getattr(torch.nn, name)(4, 5, dtype=torch.float64, **kw)
    ours = getattr(pyrnn, name)(4, 5, dtype=torch.float64, **kw)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(6, 3, 4, dtype=torch.float64)

    def run(module):
        inp = x.clone().requires_grad_(True)
        out, _ = module(inp)
        (g,) = torch.autograd.grad(out.square().sum(), inp, create_graph=True)
        return torch.autograd.grad(g.square().sum(), [inp, *module.parameters()])

    _gradients_match(run, ref, ours, "grad of grad")


def _gradients_match(run, ref, ours, what):
    """run(module) -> float64 gradients: torch.nn's module on the CPU path, pyrnn's on the Triton backend."""
    pyrnn.set_backend("auto")
    expected = run(ref)
    pyrnn.set_backend("triton")
    got = run(ours)
    for g, e in zip(got, expected):
        assert_close(g, e, torch.float64, what)


@pytest.mark.parametrize("name,kw", [("LSTM", {"num_layers": 2}), ("GRU", {"bidirectional": True}), ("RNN", {})],
                         ids=str)
def test_input_gradient_alone_on_the_gpu_path(name, kw, triton_backend, monkeypatch):
    """torch.autograd.grad with respect to the input only, after a GPU-backend forward: torch.nn's gradient, and no
    weight-gradient GEMM (the layers' backward asks autograd's engine what it needs, on every backend)."""
    from pyrnn import ops

    torch.manual_seed(0)
    ref = getattr(torch.nn, name)(4, 5, dtype=torch.float64, **kw)
    ours = getattr(pyrnn, name)(4, 5, dtype=torch.float64, **kw)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(6, 3, 4, dtype=torch.float64)
    gemms = []
    real_gemm = ops._IMPLS[ops.gemm]
    monkeypatch.setitem(ops._IMPLS, ops.gemm, lambda a, *rest: gemms.append(tuple(a.shape)) or real_gemm(a, *rest))

    def run(module):
        inp = x.clone().requires_grad_(True)
        out, _ = module(inp)
        return torch.autograd.grad(out.square().sum(), [inp])

    _gradients_match(run, ref, ours, "input gradient")
    assert not [a for a in gemms if a[1] == 6 * 3], "a weight gradient dG^T [G*H, N] @ h was computed"
