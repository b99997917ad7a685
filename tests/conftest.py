"""Shared test helpers: torch's recurrent kernels forbidden during pyrnn calls, model pairs, comparisons."""

from __future__ import annotations

import contextlib
import os

# The Triton kernels are tested on the CPU through Triton's interpreter; it must be chosen before triton.jit
# decorates them. It changes nothing for the other backends.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch
from torch import nn

# Keep the suite deterministic and within 2 cores.
torch.set_num_threads(min(2, os.cpu_count() or 1))

_FORBIDDEN = (
    "lstm",
    "gru",
    "rnn_tanh",
    "rnn_relu",
    "lstm_cell",
    "gru_cell",
    "rnn_tanh_cell",
    "rnn_relu_cell",
    "quantized_lstm_cell",
    "_thnn_fused_lstm_cell",
    "_thnn_fused_gru_cell",
    "mkldnn_rnn_layer",
    "_cudnn_rnn",
)


def _raiser(name):
    def forbidden(*args, **kwargs):
        raise AssertionError(f"torch recurrent kernel '{name}' was called during a pyrnn call")

    return forbidden


@contextlib.contextmanager
def forbid_torch_rnn():
    """Make every torch recurrent kernel and torch.nn recurrent forward raise inside the block."""
    mp = pytest.MonkeyPatch()
    try:
        for name in _FORBIDDEN:
            # torch.nn's modules reach the kernels through torch._VF; functional code through torch.*
            # (torch._C._VariableFunctions itself is read-only).
            for owner, label in ((torch._VF, "torch._VF"), (torch, "torch")):
                if hasattr(owner, name):
                    mp.setattr(owner, name, _raiser(f"{label}.{name}"))
        for cls in (nn.LSTM, nn.GRU, nn.RNN, nn.LSTMCell, nn.GRUCell, nn.RNNCell):
            mp.setattr(cls, "forward", _raiser(f"{cls.__name__}.forward"))
        yield
    finally:
        mp.undo()


@pytest.fixture
def forbid():
    return forbid_torch_rnn


def assert_close(actual, expected, dtype, what=""):
    rtol, atol = (2e-5, 2e-5) if dtype == torch.float32 else (1e-9, 1e-9)
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")
