"""float64 torch.autograd.gradcheck through pyrnn's layers and cells on small inputs, and gradgradcheck (the
backward under create_graph=True, pyrnn.composite's recomputation, differentiated again)."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck
from torch.nn.utils.rnn import pack_padded_sequence

import pyrnn
from conftest import forbid_torch_rnn

CASES = [
    ("LSTM", dict(num_layers=2, bidirectional=True), False),
    ("LSTM", dict(proj_size=2), True),
    ("LSTM", dict(bias=False, bidirectional=True, proj_size=1), True),
    ("GRU", dict(num_layers=2, bidirectional=True), True),
    ("GRU", dict(bias=False), False),
    ("RNN", dict(nonlinearity="tanh", bidirectional=True), True),
    ("RNN", dict(nonlinearity="relu", num_layers=2), False),
]


@pytest.mark.parametrize("check", [gradcheck, gradgradcheck], ids=lambda f: f.__name__)
@pytest.mark.parametrize("name,kw,packed", CASES, ids=lambda v: str(v))
def test_gradcheck_layers(name, kw, packed, check):
    torch.manual_seed(0)
    m = getattr(pyrnn, name)(3, 4, dtype=torch.float64, **kw)
    D = 2 if kw.get("bidirectional") else 1
    L = kw.get("num_layers", 1)
    Hin = kw.get("proj_size", 0) or 4
    x = torch.randn(4, 3, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(L * D, 3, Hin, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(L * D, 3, 4, dtype=torch.float64, requires_grad=True)
    params = list(m.parameters())
    names = [n for n, _ in m.named_parameters()]
    lengths = torch.tensor([4, 2, 1])

    def fn(x, h0, c0, *weights):
        with torch.nn.utils.stateless._reparametrize_module(m, dict(zip(names, weights))):
            inp = pack_padded_sequence(x, lengths) if packed else x
            hx = (h0, c0) if name == "LSTM" else h0
            out, hidden = m(inp, hx)
            out = out.data if packed else out
            return (out, *hidden) if isinstance(hidden, tuple) else (out, hidden)

    with forbid_torch_rnn():
        assert check(fn, (x, h0, c0, *params), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("check", [gradcheck, gradgradcheck], ids=lambda f: f.__name__)
@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell", "RNNCell"])
def test_gradcheck_cells(name, check):
    torch.manual_seed(0)
    m = getattr(pyrnn, name)(3, 5, dtype=torch.float64)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    c = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)

    def fn(x, h, c):
        return m(x, (h, c)) if name == "LSTMCell" else m(x, h)

    with forbid_torch_rnn():
        assert check(fn, (x, h, c), eps=1e-6, atol=1e-7, rtol=1e-5)
