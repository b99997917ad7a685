"""torch.library.opcheck on every op, torch.compile through the layers, and inference skipping the workspace."""

from __future__ import annotations

import pytest
import torch

import pyrnn
from pyrnn import ops


def _inputs(dtype=torch.float64, N_steps=(3, 3, 2), I=3, H=4, P=0, G=4):
    g = torch.Generator().manual_seed(0)
    B = N_steps[0]
    N = sum(N_steps)
    Hin = P or H
    r = lambda *s: torch.randn(*s, dtype=dtype, generator=g, requires_grad=True)  # noqa: E731
    return dict(x=r(N, I), w_ih=r(G * H, I), b_ih=r(G * H), b_hh=r(G * H), w_hh=r(G * H, Hin), h0=r(B, Hin),
                c0=r(B, H), w_hr=r(P, H) if P else None, batch_sizes=torch.tensor(N_steps))


def _projection(a, bias=True):
    return (a["x"], a["w_ih"], a["b_ih"] if bias else None, a["b_hh"] if bias else None)


@pytest.mark.parametrize("P", [0, 2])
@pytest.mark.parametrize("reverse", [False, True])
def test_opcheck_lstm(P, reverse):
    a = _inputs(P=P)
    torch.library.opcheck(ops.lstm_layer, (*_projection(a, bias=P == 0), a["w_hh"], a["w_hr"], a["h0"], a["c0"],
                                           a["batch_sizes"], reverse, True))
    y, h_n, c_n, cell, proj_in, gates, h_prev = ops.lstm_layer(
        *_projection(a), a["w_hh"], a["w_hr"], a["h0"], a["c0"], a["batch_sizes"], reverse, True)
    torch.library.opcheck(ops.lstm_layer_backward, (torch.randn_like(y), torch.randn_like(h_n), torch.randn_like(c_n),
                                                    a["w_hh"].detach(), None if P == 0 else a["w_hr"].detach(),
                                                    a["c0"].detach(), a["batch_sizes"], reverse, cell.detach(),
                                                    proj_in.detach(), gates.detach()))


@pytest.mark.parametrize("reverse", [False, True])
def test_opcheck_gru_and_rnn(reverse):
    a = _inputs(G=3)
    for bias in (True, False):
        torch.library.opcheck(ops.gru_layer, (*_projection(a, bias), a["w_hh"], a["h0"], a["batch_sizes"], reverse,
                                              True))
    y, h_n, gates, gh_n, h_prev = ops.gru_layer(*_projection(a), a["w_hh"], a["h0"], a["batch_sizes"], reverse, True)
    torch.library.opcheck(ops.gru_layer_backward, (torch.randn_like(y), torch.randn_like(h_n), a["w_hh"].detach(),
                                                   a["batch_sizes"], reverse, gates.detach(), gh_n.detach(),
                                                   h_prev.detach()))
    a = _inputs(G=1)
    for relu in (False, True):
        torch.library.opcheck(ops.rnn_layer, (*_projection(a, bias=relu), a["w_hh"], a["h0"], a["batch_sizes"],
                                              reverse, relu, True))
        y, h_n, h_prev = ops.rnn_layer(*_projection(a), a["w_hh"], a["h0"], a["batch_sizes"], reverse, relu, True)
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
    d = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in a.items()}
    outs = ops.lstm_layer(*_projection(d), d["w_hh"], None, d["h0"], d["c0"], d["batch_sizes"], False, False)
    assert outs[3].numel() == 0 and outs[5].numel() == 0 and outs[6].numel() == 0  # cell, gates, h_prev


def test_backward_without_workspace_is_a_clear_error():
    a = _inputs()
    outs = ops.lstm_layer(*_projection(a), a["w_hh"], None, a["h0"], a["c0"], a["batch_sizes"], False, False)
    with pytest.raises(RuntimeError, match="save_workspace=False"):
        outs[0].sum().backward()
    x = torch.randn(2, 3, requires_grad=True)
    for call in (ops.cell, lambda *args: ops.apply(ops.cell, *args)):  # registered op, eager path
        h, *_ = call("GRU", x, torch.randn(2, 4), None, torch.randn(12, 3), torch.randn(12, 4), None, None, False)
        with pytest.raises(RuntimeError, match="save_workspace=False"):
            h.sum().backward()


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("sizes", [(3,), (3, 3, 2), (4, 2, 2, 1), (2, 0)], ids=str)
def test_outputs_rebuilt_from_states(sizes, reverse):
    """The GPU RNN backward's y, rebuilt from the saved states entering each step and the final ones, is the
    forward's y (rows that end early, or start late in reverse, included)."""
    a = _inputs(N_steps=sizes, G=1)
    y, h_n, h_prev = ops.rnn_layer(*_projection(a), a["w_hh"], a["h0"], a["batch_sizes"], reverse, False, True)
    torch.testing.assert_close(ops._outputs_from_states(h_prev, h_n, a["batch_sizes"], reverse), y, rtol=0, atol=0)
