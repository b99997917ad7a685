"""torch.library.opcheck on every op, torch.compile through the layers, and inference skipping the workspace."""

from __future__ import annotations

import pytest
import torch

import pyrnn
from pyrnn import ops


def _inputs(dtype=torch.float64, N_steps=(3, 3, 2), H=4, P=0, G=4):
    g = torch.Generator().manual_seed(0)
    B = N_steps[0]
    N = sum(N_steps)
    Hin = P or H
    r = lambda *s: torch.randn(*s, dtype=dtype, generator=g, requires_grad=True)  # noqa: E731
    return dict(gx=r(N, G * H), w_hh=r(G * H, Hin), h0=r(B, Hin), c0=r(B, H),
                w_hr=r(P, H) if P else None, batch_sizes=torch.tensor(N_steps))


@pytest.mark.parametrize("P", [0, 2])
@pytest.mark.parametrize("reverse", [False, True])
def test_opcheck_lstm(P, reverse):
    a = _inputs(P=P)
    torch.library.opcheck(ops.lstm_layer, (a["gx"], a["w_hh"], a["w_hr"], a["h0"], a["c0"], a["batch_sizes"],
                                           reverse, True))
    y, h_n, c_n, cell, proj_in, gates, h_prev = ops.lstm_layer(
        a["gx"], a["w_hh"], a["w_hr"], a["h0"], a["c0"], a["batch_sizes"], reverse, True)
    torch.library.opcheck(ops.lstm_layer_backward, (torch.randn_like(y), torch.randn_like(h_n), torch.randn_like(c_n),
                                                    a["w_hh"].detach(), None if P == 0 else a["w_hr"].detach(),
                                                    a["c0"].detach(), a["batch_sizes"], reverse, cell.detach(),
                                                    proj_in.detach(), gates.detach()))


@pytest.mark.parametrize("reverse", [False, True])
def test_opcheck_gru_and_rnn(reverse):
    a = _inputs(G=3)
    b_hn = torch.randn(4, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(ops.gru_layer, (a["gx"], a["w_hh"], b_hn, a["h0"], a["batch_sizes"], reverse, True))
    y, h_n, gates, gh_n, h_prev = ops.gru_layer(a["gx"], a["w_hh"], b_hn, a["h0"], a["batch_sizes"], reverse, True)
    torch.library.opcheck(ops.gru_layer_backward, (torch.randn_like(y), torch.randn_like(h_n), a["w_hh"].detach(),
                                                   a["batch_sizes"], reverse, gates.detach(), gh_n.detach(),
                                                   h_prev.detach()))
    a = _inputs(G=1)
    for relu in (False, True):
        torch.library.opcheck(ops.rnn_layer, (a["gx"], a["w_hh"], a["h0"], a["batch_sizes"], reverse, relu, True))
        y, h_n, h_prev = ops.rnn_layer(a["gx"], a["w_hh"], a["h0"], a["batch_sizes"], reverse, relu, True)
        # The CPU reads every step's output from h_prev and h_n; y (what GPUs read) may be empty.
        torch.library.opcheck(ops.rnn_layer_backward, (torch.randn_like(y), torch.randn_like(h_n),
                                                       a["w_hh"].detach(), y.new_empty(0), h_prev.detach(),
                                                       h_n.detach(), a["batch_sizes"], reverse, relu))


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"])
@pytest.mark.parametrize("B,bias", [(1, True), (2, False), (6, True)])
def test_opcheck_cell(mode, B, bias):
    g = torch.Generator().manual_seed(B)
    G, I, H = ops._CELL_GATES[mode], 5, 4
    r = lambda *s: torch.randn(*s, dtype=torch.float64, generator=g, requires_grad=True)  # noqa: E731
    x, h0, c0 = r(B, I), r(B, H), r(B, H) if mode == "LSTM" else None
    w_ih, w_hh = r(G * H, I), r(G * H, H)
    b_ih, b_hh = (r(G * H), r(G * H)) if bias else (None, None)
    torch.library.opcheck(ops.cell, (mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, True))
    h, c, gates, gh_n = ops.cell(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, True)
    d = lambda t: None if t is None else t.detach()  # noqa: E731
    torch.library.opcheck(ops.cell_backward, (mode, torch.randn_like(h), torch.randn_like(c) if c0 is not None else None,
                                              d(x), d(h0), d(c0), d(w_ih), d(w_hh), d(h), d(c), d(gates), d(gh_n),
                                              True, bias))


def test_inference_saves_no_workspace():
    a = _inputs()
    with torch.no_grad():
        m = pyrnn.LSTM(3, 4)
        m(torch.randn(5, 2, 3))
    outs = ops.lstm_layer(a["gx"].detach(), a["w_hh"].detach(), None, a["h0"].detach(), a["c0"].detach(),
                          a["batch_sizes"], False, False)
    assert outs[3].numel() == 0 and outs[5].numel() == 0 and outs[6].numel() == 0  # cell, gates, h_prev


def test_backward_without_workspace_is_a_clear_error():
    a = _inputs()
    outs = ops.lstm_layer(a["gx"], a["w_hh"], None, a["h0"], a["c0"], a["batch_sizes"], False, False)
    with pytest.raises(RuntimeError, match="save_workspace=False"):
        outs[0].sum().backward()
    x = torch.randn(2, 3, requires_grad=True)
    for call in (ops.cell, lambda *args: ops.apply(ops.cell, *args)):  # registered op, eager path
        h, *_ = call("GRU", x, torch.randn(2, 4), None, torch.randn(12, 3), torch.randn(12, 4), None, None, False)
        with pytest.raises(RuntimeError, match="save_workspace=False"):
            h.sum().backward()


def test_double_backward_raises_clearly():
    m = pyrnn.GRU(3, 4).double()
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    out, _ = m(x)
    (g,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="no autograd formula"):
        g.sum().backward()


class _PassThroughMode(torch.overrides.TorchFunctionMode):
    """Any active torch function mode sends pyrnn's calls through the registered custom ops."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def _graph_node_names(t: torch.Tensor) -> set:
    names, todo, seen = set(), [t.grad_fn], set()
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.add(type(fn).__name__)
        todo.extend(next_fn for next_fn, _ in fn.next_functions)
    return names


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
def test_eager_path_matches_registered_ops(cell):
    """Plain eager calls skip the dispatcher through an autograd.Function; under a mode (as under
    torch.compile or tracing) the same calls go through the custom ops. Both give identical results."""
    torch.manual_seed(0)
    kw = dict(proj_size=3) if cell == "LSTM" else {}
    m = getattr(pyrnn, cell)(5, 7, num_layers=2, bidirectional=True, **kw).double()
    x = torch.randn(6, 4, 5, dtype=torch.float64, requires_grad=True)
    runs = []
    for mode in (None, _PassThroughMode()):
        m.zero_grad()
        x.grad = None
        if mode is None:
            out, _ = m(x)
        else:
            with mode:
                out, _ = m(x)
        runs.append((_graph_node_names(out), out.detach()))
        out.backward(torch.ones_like(out))
        runs[-1] += ([x.grad.clone()] + [p.grad.clone() for p in m.parameters()],)
    (eager_nodes, eager_out, eager_grads), (op_nodes, op_out, op_grads) = runs
    layer = {"LSTM": "lstm_layer", "GRU": "gru_layer", "RNN": "rnn_layer"}[cell]
    assert f"Eager_{layer}Backward" in eager_nodes and not any("GeneratedBackward" in n for n in eager_nodes)
    assert any(f"pyrnn_{layer}" in n for n in op_nodes) and not any(n.startswith("Eager_") for n in op_nodes)
    assert torch.equal(eager_out, op_out)
    for a, b in zip(eager_grads, op_grads):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell", "RNNCell"])
def test_eager_cell_matches_registered_op(name):
    """The same for the cells' single op."""
    torch.manual_seed(0)
    m = getattr(pyrnn, name)(5, 7).double()
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    runs = []
    for mode in (None, _PassThroughMode()):
        m.zero_grad()
        x.grad = None
        if mode is None:
            out = m(x)
        else:
            with mode:
                out = m(x)
        out = out[0] if isinstance(out, tuple) else out
        runs.append((_graph_node_names(out), out.detach()))
        out.backward(torch.ones_like(out))
        runs[-1] += ([x.grad.clone()] + [p.grad.clone() for p in m.parameters()],)
    (eager_nodes, eager_out, eager_grads), (op_nodes, op_out, op_grads) = runs
    assert "Eager_cellBackward" in eager_nodes
    assert any("pyrnn_cell" in n for n in op_nodes) and not any(n.startswith("Eager_") for n in op_nodes)
    assert torch.equal(eager_out, op_out)
    for a, b in zip(eager_grads, op_grads):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("a_t", [False, True])
@pytest.mark.parametrize("b_t", [False, True])
def test_gemm_matches_torch(dtype, a_t, b_t):
    """pyrnn's GEMM (>= 32 rows) on shapes that hit every panel width, several K blocks, row-major and
    transposed operands (packed by row, by column, or in place), with and without bias, and both ways of
    sharing the work between threads: by columns (even panels, or B too wide to pack whole per thread) and by
    rows (uneven panels: N = 200, 800). A deep, narrow B with row-major A goes in fewer, deeper K blocks
    (K = 1100: one block; K = 3000: three of 1000); K = 3000 with N = 100 splits the depth between threads."""
    g = torch.Generator().manual_seed(0)
    shapes = [(32, 1, 1), (33, 7, 17), (64, 300, 100), (97, 513, 33), (40, 256, 200), (200, 65, 64),
              (96, 200, 800), (70, 300, 1000), (64, 64, 256), (33, 1100, 17), (64, 3000, 100)]
    for M, K, N in shapes:
        a = torch.randn(K, M, dtype=dtype, generator=g).t() if a_t else torch.randn(M, K, dtype=dtype, generator=g)
        b = torch.randn(N, K, dtype=dtype, generator=g).t() if b_t else torch.randn(K, N, dtype=dtype, generator=g)
        bias = torch.randn(N, dtype=dtype, generator=g)
        # float32 rounding of a K-term sum of unit-scale products grows like sqrt(K): K = 3000 sums reach ~55
        # in magnitude and differ from torch's order by up to ~2e-4 where they cancel to near zero.
        atol32 = 1e-4 * max(1.0, (K / 256) ** 0.5)
        tol = dict(rtol=1e-4, atol=atol32) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(ops.gemm(a, b), a @ b, **tol)
        torch.testing.assert_close(ops.gemm(a, b, bias), torch.addmm(bias, a, b), **tol)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gemm_depth_split(dtype, threads):
    """Deep products with a small C (the weight gradients dG^T x: K = all steps) split K between threads, each
    adding its partial product at the end: odd widths (a partial last vector), bias, 1-3 threads (with 3 the
    thread count does not divide K)."""
    g = torch.Generator().manual_seed(1)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for M, K, N in [(45, 3500, 70), (64, 4100, 256), (200, 3333, 17)]:
            a = torch.randn(K, M, dtype=dtype, generator=g).t()  # A^T read in place, as dG^T
            b = torch.randn(K, N, dtype=dtype, generator=g)
            bias = torch.randn(N, dtype=dtype, generator=g)
            tol = dict(rtol=1e-4, atol=1e-4 * (K / 256) ** 0.5) if dtype == torch.float32 else dict(rtol=1e-10,
                                                                                                   atol=1e-10)
            torch.testing.assert_close(ops.gemm(a, b), a @ b, **tol)
            torch.testing.assert_close(ops.gemm(a, b, bias), torch.addmm(bias, a, b), **tol)
    finally:
        torch.set_num_threads(before)
