"""pyrnn's cells against torch.nn's on random sizes, batched and unbatched, with and without hx."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import pyrnn
from pyrnn import _C
from conftest import assert_close, forbid_torch_rnn

CELLS = {"LSTMCell": nn.LSTMCell, "GRUCell": nn.GRUCell, "RNNCell_tanh": nn.RNNCell, "RNNCell_relu": nn.RNNCell}


@pytest.mark.parametrize(
    "name,hidden,batch,bias,with_hx,dtype",
    list(itertools.product(CELLS, [1, 3, 33], [None, 1, 5], [True, False], [True, False],
                           [torch.float32, torch.float64])),
)
def test_cell_matches_torch(name, hidden, batch, bias, with_hx, dtype):
    _check_cell(name, 4, hidden, batch, bias, with_hx, dtype)


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize(
    "input_size,hidden,batch",
    [(9, 40, 1), (5, 17, 2), (6, 24, 3), (32, 64, 6), (3, 70, 9), (16, 96, 12), (40, 33, 37), (4, 5, 0)],
)
@pytest.mark.parametrize("threaded", [False, True])
@pytest.mark.parametrize("gemm", ["pyrnn", "torch"])
def test_cell_kernel_paths(name, input_size, hidden, batch, threaded, gemm, monkeypatch):
    """Every way the cell kernel runs a step: the forward's dot products with the weight rows (rows in pairs and an
    odd one alone, one thread or units split over threads, hidden sizes not a multiple of the SIMD width) and,
    past 8 rows, its transposed tiles (h0^T and x^T packed against the weight rows in place); the backward's
    direct path (up to 2 rows) and its panels, reading W_hh, W_ih, x and h0 in place where sizes are whole
    vectors (I, H of 32-96) and packing them otherwise, with dx and the weight gradients in the kernel or, from 16
    rows where pyrnn.set_cpu_gemm says torch, in MKL from the gate gradients the kernel hands back; an empty
    batch."""
    monkeypatch.setattr(pyrnn.backend, "_cpu_gemm", gemm)
    old = _C.get_parallel_threshold()
    if threaded:
        _C.set_parallel_threshold(1)
    try:
        for dtype in (torch.float32, torch.float64):
            for bias in (True, False):
                _check_cell(name, input_size, hidden, batch, bias, True, dtype)
    finally:
        _C.set_parallel_threshold(old)


def _check_cell(name, input_size, hidden, batch, bias, with_hx, dtype):
    """Outputs and every gradient (x, hx, parameters) of pyrnn's cell against torch.nn's, under random upstream
    gradients; torch's recurrent kernels raise during pyrnn's call."""
    torch.manual_seed(hidden * 7 + (batch or 0))
    kw = dict(bias=bias, dtype=dtype)
    if name.startswith("RNNCell"):
        kw["nonlinearity"] = name.split("_")[1]
    ref = CELLS[name](input_size, hidden, **kw)
    ours = getattr(pyrnn, name.split("_")[0])(input_size, hidden, **kw)
    ours.load_state_dict(ref.state_dict())
    shape = (batch,) if batch is not None else ()
    x = torch.randn(*shape, input_size, dtype=dtype, requires_grad=True)
    hx = None
    if with_hx:
        hx = torch.randn(*shape, hidden, dtype=dtype, requires_grad=True)
        if name == "LSTMCell":
            hx = (hx, torch.randn(*shape, hidden, dtype=dtype, requires_grad=True))

    def run(module, forbid):
        ctx = forbid_torch_rnn() if forbid else torch.enable_grad()
        with ctx:
            out = module(x, hx)
            outs = out if isinstance(out, tuple) else (out,)
            gen = torch.Generator().manual_seed(0)
            loss = sum((o * torch.randn(o.shape, dtype=dtype, generator=gen)).sum() for o in outs)
            leaves = [x, *(() if hx is None else (hx if isinstance(hx, tuple) else (hx,))), *module.parameters()]
            return outs, torch.autograd.grad(loss, leaves)

    exp_out, exp_grads = run(ref, False)
    got_out, got_grads = run(ours, True)
    for g, e in zip(got_out, exp_out):
        assert g.shape == e.shape
        assert_close(g, e, dtype, "output")
    for g, e in zip(got_grads, exp_grads):
        assert_close(g, e, dtype, "grad")


@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell", "RNNCell"])
def test_parametrized_cell_weights(name):
    """Weights under torch.nn.utils.parametrize are properties, not registered parameters: still used."""
    from torch.nn.utils import parametrize

    class Scaled(nn.Module):
        def forward(self, w):
            return 0.5 * w

    torch.manual_seed(0)
    ref = getattr(nn, name)(5, 4)
    ours = getattr(pyrnn, name)(5, 4)
    ours.load_state_dict(ref.state_dict())
    for m in (ref, ours):
        parametrize.register_parametrization(m, "weight_hh", Scaled())
    x = torch.randn(3, 5)
    with forbid_torch_rnn():
        got = ours(x)
    exp = ref(x)
    for g, e in zip(got if isinstance(got, tuple) else (got,), exp if isinstance(exp, tuple) else (exp,)):
        assert_close(g, e, torch.float32, "output")


@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell", "RNNCell"])
@pytest.mark.parametrize("batch", [1, 9])
def test_cell_frozen_weights_and_input(name, batch):
    """Only the state requires grad (frozen weights, data input): the kernel skips the weight gradients and
    the state's gradient still matches torch.nn's."""
    torch.manual_seed(batch)
    ref = getattr(nn, name)(6, 20).requires_grad_(False)
    ours = getattr(pyrnn, name)(6, 20).requires_grad_(False)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(batch, 6)
    h = torch.randn(batch, 20, requires_grad=True)
    hx = (h, torch.randn(batch, 20)) if name == "LSTMCell" else h
    first = lambda out: out[0] if isinstance(out, tuple) else out  # noqa: E731
    upstream = torch.randn(batch, 20)
    (expected,) = torch.autograd.grad(first(ref(x, hx)), h, upstream)
    with forbid_torch_rnn():
        (got,) = torch.autograd.grad(first(ours(x, hx)), h, upstream)
    assert_close(got, expected, torch.float32, "grad h0")
    assert all(p.grad is None for p in ours.parameters())


@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell", "RNNCell"])
@pytest.mark.parametrize("batch", [1, 9])
@pytest.mark.parametrize("wanted", ["input", "weights"])
def test_cell_gradient_of_part(name, batch, wanted, monkeypatch):
    """Weights requiring grad, torch.autograd.grad asked for the input's gradient only (saliency over a loop of
    cell calls) or for the weights' only: torch.nn's values, and the kernel skips the weight gradients nobody asked
    for, as torch.nn's nodes do."""
    from pyrnn import ops

    torch.manual_seed(batch)
    ref = getattr(nn, name)(6, 20, dtype=torch.float64)
    ours = getattr(pyrnn, name)(6, 20, dtype=torch.float64)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, batch, 6, dtype=torch.float64, requires_grad=True)

    def run(cell):
        state = None
        for t in range(3):
            state = cell(x[t], state)
        h = state[0] if isinstance(state, tuple) else state
        return torch.autograd.grad(h.square().sum(), [x] if wanted == "input" else list(cell.parameters()))

    expected = run(ref)
    flags = []
    real = ops._cell_backward_kernel
    monkeypatch.setattr(ops, "_cell_backward_kernel", lambda *a: flags.append(a[-2]) or real(*a))
    with forbid_torch_rnn():
        got = run(ours)
    for g, e in zip(got, expected):
        assert_close(g, e, torch.float64, wanted)
    assert flags == [wanted == "weights"] * 3  # weight_grads, per step


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("batch", [None, 0, 1, 2, 9])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cell_inference_path(name, batch, dtype, monkeypatch):
    """A call nothing will differentiate (no_grad, or no argument requiring grad) runs the kernel alone, without
    workspace outputs: torch.nn's results through every kernel path (empty, one or two rows, packed weights,
    unbatched). Under a torch function mode the registered op runs instead, with the same results."""
    from torch.overrides import TorchFunctionMode

    from pyrnn import ops

    calls = []
    real = ops.cell_inference
    monkeypatch.setattr(ops, "cell_inference", lambda *args: calls.append(args[0]) or real(*args))

    class Passthrough(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    torch.manual_seed(7)
    kw = {"nonlinearity": name.split("_")[1]} if name.startswith("RNNCell") else {}
    cls = name.split("_")[0]
    ref = getattr(nn, cls)(5, 33, dtype=dtype, **kw)
    ours = getattr(pyrnn, cls)(5, 33, dtype=dtype, **kw)
    ours.load_state_dict(ref.state_dict())
    shape = (5,) if batch is None else (batch, 5)
    x = torch.randn(*shape, dtype=dtype)
    h = torch.randn(*shape[:-1], 33, dtype=dtype)
    hx = (h, torch.randn_like(h)) if cls == "LSTMCell" else h
    expected = ref(x, hx)
    expected = expected if isinstance(expected, tuple) else (expected,)
    for context, frozen, op_expected in ((torch.no_grad, False, False), (torch.enable_grad, True, False),
                                         (Passthrough, True, True)):
        calls.clear()
        ours.requires_grad_(not frozen)
        with context(), forbid_torch_rnn():
            got = ours(x, hx)
        got = got if isinstance(got, tuple) else (got,)
        assert bool(calls) != op_expected
        for g, e in zip(got, expected):
            assert not g.requires_grad
            assert_close(g, e.detach(), dtype, "output")


@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell"])
@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cell_outputs_changed_in_place(name, batch, dtype):
    """torch.nn's LSTMCell and GRUCell keep no reference to their outputs for the backward, so a caller may
    change h (and c) in place before it (h += skip): pyrnn's cells allow the same, with the same gradients."""
    torch.manual_seed(batch)
    ref = getattr(nn, name)(6, 7, dtype=dtype)
    ours = getattr(pyrnn, name)(6, 7, dtype=dtype)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(batch, 6, dtype=dtype, requires_grad=True)
    h0 = torch.randn(batch, 7, dtype=dtype, requires_grad=True)
    hx = (h0, torch.randn(batch, 7, dtype=dtype, requires_grad=True)) if name == "LSTMCell" else h0
    inputs = [x, *(hx if isinstance(hx, tuple) else (hx,))]
    upstream = [torch.randn(batch, 7, dtype=dtype) for _ in range(2)]

    def run(module):
        out = module(x, hx)
        outs = out if isinstance(out, tuple) else (out,)
        for o in outs:
            o.mul_(3.0).add_(1.0)
        loss = sum((o * u).sum() for o, u in zip(outs, upstream))
        return torch.autograd.grad(loss, [*inputs, *module.parameters()])

    expected = run(ref)
    with forbid_torch_rnn():
        got = run(ours)
    for g, e in zip(got, expected):
        assert_close(g, e, dtype, "grad")


@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell", "RNNCell", "LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_types_on_cpu_compute_in_float32(name, dtype):
    """bf16/fp16 modules on the CPU (torch.nn's run them) compute in float32 and round once: the outputs and
    gradients of torch.nn's float32 module on the same (rounded) values, rounded. The cells raised before."""
    torch.manual_seed(0)
    ref = getattr(nn, name)(3, 5)
    ours = getattr(pyrnn, name)(3, 5).to(dtype)
    ours.load_state_dict(ref.state_dict())
    ref.load_state_dict(ours.state_dict())  # the rounded weights, in float32
    x = torch.randn((2, 3) if name.endswith("Cell") else (4, 2, 3)).to(dtype).requires_grad_()
    x32 = x.detach().float().requires_grad_()
    first = lambda out: out[0] if isinstance(out, tuple) else out  # noqa: E731
    with forbid_torch_rnn():
        out = first(ours(x))
        out.float().square().sum().backward()
    expected = first(ref(x32))
    expected.square().sum().backward()
    assert out.dtype == dtype and x.grad.dtype == dtype
    tol = dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(out.float(), expected.to(dtype).float(), **tol)
    torch.testing.assert_close(x.grad.float(), x32.grad.to(dtype).float(), **tol)
    for (pname, p), q in zip(ours.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad.float(), q.grad.to(dtype).float(), **tol, msg=pname)
