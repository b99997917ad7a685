"""pyrnn's cells against torch.nn's on random sizes, batched and unbatched, with and without hx."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import pyrnn
from conftest import assert_close, forbid_torch_rnn

CELLS = {"LSTMCell": nn.LSTMCell, "GRUCell": nn.GRUCell, "RNNCell_tanh": nn.RNNCell, "RNNCell_relu": nn.RNNCell}


@pytest.mark.parametrize(
    "name,hidden,batch,bias,with_hx,dtype",
    list(itertools.product(CELLS, [1, 3, 33], [None, 1, 5], [True, False], [True, False],
                           [torch.float32, torch.float64])),
)
def test_cell_matches_torch(name, hidden, batch, bias, with_hx, dtype):
    torch.manual_seed(hidden * 7 + (batch or 0))
    kw = dict(bias=bias, dtype=dtype)
    if name.startswith("RNNCell"):
        kw["nonlinearity"] = name.split("_")[1]
    ref = CELLS[name](4, hidden, **kw)
    ours = getattr(pyrnn, name.split("_")[0])(4, hidden, **kw)
    ours.load_state_dict(ref.state_dict())
    shape = (batch,) if batch else ()
    x = torch.randn(*shape, 4, dtype=dtype, requires_grad=True)
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
