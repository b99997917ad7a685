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
        y, h_n, _ = ops.rnn_layer(a["gx"], a["w_hh"], a["h0"], a["batch_sizes"], reverse, relu, True)
        torch.library.opcheck(ops.rnn_layer_backward, (torch.randn_like(y), torch.randn_like(h_n),
                                                       a["w_hh"].detach(), y.detach(), a["batch_sizes"], reverse,
                                                       relu))


def test_inference_saves_no_workspace():
    a = _inputs()
    with torch.no_grad():
        m = pyrnn.LSTM(3, 4)
        m(torch.randn(5, 2, 3))
    outs = ops.lstm_layer(a["gx"].detach(), a["w_hh"].detach(), None, a["h0"].detach(), a["c0"].detach(),
                          a["batch_sizes"], False, False)
    assert outs[5].numel() == 0 and outs[6].numel() == 0


def test_backward_without_workspace_is_a_clear_error():
    a = _inputs()
    outs = ops.lstm_layer(a["gx"], a["w_hh"], None, a["h0"], a["c0"], a["batch_sizes"], False, False)
    with pytest.raises(RuntimeError, match="save_workspace=False"):
        outs[0].sum().backward()


def test_double_backward_raises_clearly():
    m = pyrnn.GRU(3, 4).double()
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    out, _ = m(x)
    (g,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="no autograd formula"):
        g.sum().backward()
