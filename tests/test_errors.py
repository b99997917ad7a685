"""Bad input raises in pyrnn exactly as in torch.nn: same exception type and same message."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import pyrnn
from conftest import forbid_torch_rnn

PAIRS = {
    "LSTM": (nn.LSTM, pyrnn.LSTM),
    "GRU": (nn.GRU, pyrnn.GRU),
    "RNN": (nn.RNN, pyrnn.RNN),
    "LSTMCell": (nn.LSTMCell, pyrnn.LSTMCell),
    "GRUCell": (nn.GRUCell, pyrnn.GRUCell),
    "RNNCell": (nn.RNNCell, pyrnn.RNNCell),
}


def _outcome(fn):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn()
    except Exception as exc:  # noqa: BLE001 - the type is what is compared
        return type(exc), str(exc)
    return None, None


def assert_same_error(torch_fn, pyrnn_fn):
    exp_type, exp_msg = _outcome(torch_fn)
    assert exp_type is not None, "torch.nn accepted this input; the case is wrong"
    with forbid_torch_rnn():
        got_type, got_msg = _outcome(pyrnn_fn)
    assert got_type is exp_type, f"expected {exp_type.__name__}: {exp_msg!r}, got {got_type}: {got_msg!r}"
    assert got_msg == exp_msg


CTOR_CASES = [
    ("LSTM", (4, 8), dict(dropout=-0.1)),
    ("LSTM", (4, 8), dict(dropout=1.5)),
    ("GRU", (4, 8), dict(dropout=True)),
    ("RNN", (4, 8), dict(dropout="0.1")),
    ("LSTM", (4, 8.5), {}),
    ("GRU", (4, "8"), {}),
    ("RNN", (4, 8), dict(num_layers=2.0)),
    ("LSTM", (4, 0), {}),
    ("GRU", (4, -3), {}),
    ("RNN", (4, 8), dict(num_layers=0)),
    ("LSTM", (4, 8), dict(proj_size=-1)),
    ("LSTM", (4, 8), dict(proj_size=8)),
    ("LSTM", (4, 8), dict(proj_size=9)),
    ("GRU", (4, 8), dict(proj_size=2)),
    ("RNN", (4, 8), dict(proj_size=2)),
    ("RNN", (4, 8), dict(nonlinearity="sigmoid")),
    ("GRUCell", (4, -1), {}),
]


@pytest.mark.parametrize("name,args,kwargs", CTOR_CASES, ids=lambda v: str(v))
def test_constructor_errors(name, args, kwargs):
    torch_cls, pyrnn_cls = PAIRS[name]
    assert_same_error(lambda: torch_cls(*args, **kwargs), lambda: pyrnn_cls(*args, **kwargs))


def test_dropout_with_one_layer_warns():
    for _, cls in (PAIRS["LSTM"], PAIRS["GRU"], PAIRS["RNN"]):
        with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
            cls(4, 8, dropout=0.3)


def _layer_pair(name, **kw):
    torch_cls, pyrnn_cls = PAIRS[name]
    ref = torch_cls(4, 6, **kw)
    ours = pyrnn_cls(4, 6, **kw)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _forward_cases():
    x = torch.randn(5, 3, 4)
    cases = [
        ("LSTM", {}, (torch.randn(4),), "1-D input"),
        ("GRU", {}, (torch.randn(2, 5, 3, 4),), "4-D input"),
        ("RNN", {}, (torch.randn(2, 5, 3, 4),), "4-D input"),
        ("LSTM", {}, (torch.randn(5, 3, 5),), "wrong feature size"),
        ("GRU", {}, (torch.randn(5, 3, 3),), "wrong feature size"),
        ("RNN", {}, (torch.randn(5, 3),), "wrong feature size unbatched"),
        ("LSTM", {}, (x.double(),), "dtype mismatch"),
        ("GRU", {}, (x.double(),), "dtype mismatch"),
        ("RNN", {}, (x.double(),), "dtype mismatch"),
        ("GRU", {}, (x, torch.randn(1, 3, 5)), "hidden size"),
        ("GRU", {}, (x, torch.randn(2, 3, 6)), "hidden layers"),
        ("RNN", {}, (x, torch.randn(1, 2, 6)), "hidden batch"),
        ("RNN", {}, (x, torch.randn(3, 6)), "hidden rank for batched input"),
        ("GRU", {}, (torch.randn(5, 4), torch.randn(1, 3, 6)), "hidden rank for unbatched input"),
        ("LSTM", {}, (x, torch.randn(1, 3, 6)), "hx not a tuple"),
        ("LSTM", {}, (x, (torch.randn(1, 3, 6), torch.randn(1, 3, 5))), "cell size"),
        ("LSTM", {}, (x, (torch.randn(1, 3, 5), torch.randn(1, 3, 6))), "hidden size"),
        ("LSTM", {"proj_size": 2}, (x, (torch.randn(1, 3, 6), torch.randn(1, 3, 6))), "projected hidden size"),
        ("LSTM", {}, (x, (torch.randn(3, 6), torch.randn(3, 6))), "hx rank for batched input"),
        ("LSTM", {}, (torch.randn(5, 4), (torch.randn(1, 1, 6), torch.randn(1, 1, 6))), "hx rank unbatched"),
        ("LSTM", {}, (torch.randn(0, 3, 4),), "T = 0"),
        ("GRU", {}, (torch.randn(0, 3, 4),), "T = 0"),
        ("RNN", {"batch_first": True}, (torch.randn(3, 0, 4),), "T = 0 batch_first"),
    ]
    packed = pack_padded_sequence(torch.randn(5, 3, 4), torch.tensor([5, 3, 2]))
    cases += [
        ("GRU", {}, (packed, torch.randn(1, 2, 6)), "packed hidden batch"),
        ("RNN", {}, (pack_padded_sequence(torch.randn(5, 3, 5), torch.tensor([5, 3, 2])),), "packed feature size"),
    ]
    return cases


@pytest.mark.parametrize("name,kw,args,what", _forward_cases(), ids=lambda v: str(v) if isinstance(v, str) else "")
def test_forward_errors(name, kw, args, what):
    ref, ours = _layer_pair(name, **kw)
    assert_same_error(lambda: ref(*args), lambda: ours(*args))


def _cell_cases():
    return [
        ("LSTMCell", (torch.randn(2, 5),), "input size"),
        ("GRUCell", (torch.randn(2, 5),), "input size"),
        ("RNNCell", (torch.randn(5),), "input size unbatched"),
        ("LSTMCell", (torch.randn(2, 3, 4),), "3-D input"),
        ("GRUCell", (torch.randn(2, 4), torch.randn(3, 6)), "batch mismatch"),
        ("RNNCell", (torch.randn(2, 4), torch.randn(2, 5)), "hidden size"),
        ("GRUCell", (torch.randn(2, 4), torch.randn(1, 2, 6)), "3-D hidden"),
        ("LSTMCell", (torch.randn(2, 4), (torch.randn(2, 6), torch.randn(2, 5))), "cell size"),
        ("LSTMCell", (torch.randn(2, 4), (torch.randn(3, 6), torch.randn(3, 6))), "batch mismatch"),
        ("LSTMCell", (torch.randn(2, 4), (torch.randn(1, 2, 6), torch.randn(2, 6))), "3-D hx"),
        ("RNNCell", (torch.randn(2, 4).double(),), "dtype mismatch"),
        ("RNNCell", (torch.randn(2, 4),), "unknown nonlinearity", {"nonlinearity": "gelu"}),
    ]


@pytest.mark.parametrize("case", _cell_cases(), ids=lambda c: f"{c[0]}-{c[2]}")
def test_cell_errors(case):
    name, args, what, kw = (*case, {})[:4]
    ref, ours = _layer_pair(name, **kw)
    assert_same_error(lambda: ref(*args), lambda: ours(*args))


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_hidden_dtype_mismatch_raises_runtime_error(name):
    """torch.nn raises RuntimeError from deep inside its kernels (messages vary by path); so does pyrnn, with a
    message that names the offending tensor."""
    ref, ours = _layer_pair(name)
    x = torch.randn(5, 3, 4)
    h = torch.randn(1, 3, 6, dtype=torch.float64)
    hx = (h, torch.randn(1, 3, 6)) if name == "LSTM" else h
    with pytest.raises(RuntimeError):
        ref(x, hx)
    with forbid_torch_rnn(), pytest.raises(RuntimeError, match="Expected h0 dtype torch.float32, got torch.float64"):
        ours(x, hx)


def test_ops_reject_inconsistent_shapes():
    """The ops read raw pointers: inconsistent shapes must raise before any kernel runs."""
    x, w_ih, w_hh, h0, c0 = torch.randn(6, 5), torch.randn(8, 5), torch.randn(8, 2), torch.randn(3, 2), torch.randn(3, 2)
    good = torch.tensor([3, 3])
    pyrnn.ops.lstm_layer(x, w_ih, None, None, w_hh, None, h0, c0, good, False, False)
    bad_calls = [
        lambda: pyrnn.ops.lstm_layer(x, w_ih, None, None, w_hh, None, h0, c0, torch.tensor([3, 2]), False, False),
        lambda: pyrnn.ops.lstm_layer(x, w_ih, None, None, w_hh, None, h0, c0, torch.tensor([2, 4]), False, False),
        lambda: pyrnn.ops.lstm_layer(x, w_ih, None, None, w_hh, None, h0[:2], c0, good, False, False),
        lambda: pyrnn.ops.lstm_layer(x, w_ih[:7], None, None, w_hh, None, h0, c0, good, False, False),
        lambda: pyrnn.ops.lstm_layer(x, w_ih[:, :4], None, None, w_hh, None, h0, c0, good, False, False),
        lambda: pyrnn.ops.lstm_layer(x, w_ih, None, None, w_hh, None, h0, c0[:, :1], good, False, False),
        lambda: pyrnn.ops.gru_layer(x, torch.randn(6, 5), None, torch.randn(7), torch.randn(6, 2), h0, good, False,
                                    False),
        lambda: pyrnn.ops.rnn_layer(x, torch.randn(2, 5), None, None, torch.randn(2, 3), h0, good, False, False,
                                    False),
        lambda: pyrnn.ops.lstm_layer_backward(torch.randn(5, 2), h0, c0, w_hh, None, c0, good, False,
                                              torch.randn(6, 2), torch.empty(0), torch.randn(6, 8)),
    ]
    for call in bad_calls:
        with pytest.raises(RuntimeError, match="pyrnn"):
            call()
