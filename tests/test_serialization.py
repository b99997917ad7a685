"""state_dict both ways, torch.save / torch.load of whole modules (also weights_only), copies, repr."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn

import pyrnn

PAIRS = [
    (nn.LSTM, pyrnn.LSTM, dict(num_layers=2, bidirectional=True, proj_size=3)),
    (nn.GRU, pyrnn.GRU, dict(num_layers=2, bias=False, batch_first=True)),
    (nn.RNN, pyrnn.RNN, dict(nonlinearity="relu", dropout=0.2, num_layers=2)),
    (nn.LSTMCell, pyrnn.LSTMCell, {}),
    (nn.GRUCell, pyrnn.GRUCell, {}),
    (nn.RNNCell, pyrnn.RNNCell, dict(nonlinearity="relu")),
]


@pytest.mark.parametrize("torch_cls,pyrnn_cls,kw", PAIRS)
def test_state_dict_both_ways_and_names(torch_cls, pyrnn_cls, kw):
    ref, ours = torch_cls(5, 7, **kw), pyrnn_cls(5, 7, **kw)
    assert list(ref.state_dict()) == list(ours.state_dict())
    assert [p.shape for p in ref.parameters()] == [p.shape for p in ours.parameters()]
    ours.load_state_dict(ref.state_dict())
    back = torch_cls(5, 7, **kw)
    back.load_state_dict(ours.state_dict())
    for a, b in zip(ref.parameters(), back.parameters()):
        assert torch.equal(a, b)
    assert isinstance(ours, torch_cls)
    assert repr(ours) == repr(ref)


def test_init_distribution_like_torch():
    torch.manual_seed(3)
    ref = nn.LSTM(5, 7, num_layers=2)
    torch.manual_seed(3)
    ours = pyrnn.LSTM(5, 7, num_layers=2)
    for a, b in zip(ref.parameters(), ours.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("torch_cls,pyrnn_cls,kw", PAIRS)
def test_torch_save_load(torch_cls, pyrnn_cls, kw):
    m = pyrnn_cls(5, 7, **kw).eval()
    x = torch.randn(3, 5) if "Cell" in pyrnn_cls.__name__ else torch.randn(4, 3, 5)
    expected = m(x)
    buf = io.BytesIO()
    torch.save(m, buf)
    for weights_only in (False, True):
        buf.seek(0)
        with torch.serialization.safe_globals([pyrnn_cls]):
            loaded = torch.load(buf, weights_only=weights_only)
        assert type(loaded) is pyrnn_cls
        got = loaded(x)
        flat = lambda o: o if isinstance(o, torch.Tensor) else torch.cat([t.flatten() for t in (o[0], *o[1])]) if isinstance(o[1], tuple) else torch.cat([t.flatten() for t in o])  # noqa: E731
        assert torch.equal(flat(got), flat(expected))
    clone = copy.deepcopy(m)
    assert torch.equal(flat(clone(x)), flat(expected))
    assert type(pickle.loads(pickle.dumps(m))) is pyrnn_cls


def test_flatten_parameters_and_to_dtype():
    m = pyrnn.LSTM(3, 4, num_layers=2)
    m.flatten_parameters()
    m = m.double()
    out, _ = m(torch.randn(2, 1, 3, dtype=torch.float64))
    assert out.dtype == torch.float64
