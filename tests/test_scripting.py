"""torch.jit.script of pyrnn's modules (pyrnn/scripting.py's twins): outputs, final states and every gradient against
torch.nn's, with torch's recurrent kernels forbidden; parameters shared with the original; save and load."""

from __future__ import annotations

import io
from typing import List, Optional, Tuple

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import pyrnn
from conftest import assert_close, forbid_torch_rnn

LAYER_CASES = [  # name, constructor arguments, h0 given, unbatched
    ("LSTM", {"num_layers": 2, "bidirectional": True, "proj_size": 3, "batch_first": True}, True, False),
    ("LSTM", {"bias": False}, False, False),
    ("LSTM", {"num_layers": 2}, True, True),
    ("GRU", {"num_layers": 2, "bidirectional": True}, True, False),
    ("GRU", {"batch_first": True, "bias": False}, False, True),
    ("RNN", {"nonlinearity": "relu", "num_layers": 2, "batch_first": True}, True, False),
    ("RNN", {"bidirectional": True}, False, False),
    ("GRU", {"num_layers": 3, "dropout": 0.5}, True, False),  # dropout between layers, in training mode
]
CELL_CASES = [("LSTMCell", {}), ("GRUCell", {"bias": False}), ("RNNCell", {"nonlinearity": "relu"}), ("RNNCell", {})]


def _pair(name, kw, dtype):
    torch.manual_seed(0)
    ref = getattr(nn, name)(3, 5, dtype=dtype, **kw)
    ours = getattr(pyrnn, name)(3, 5, dtype=dtype, **kw)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _flat(outputs):
    out, state = outputs
    return [out, *(state if isinstance(state, tuple) else (state,))]


def _run(module, x, state, grads, seed=1):
    torch.manual_seed(seed)  # dropout masks
    leaves = [x, *(state or ()), *module.parameters()]
    outputs = _flat(module(x, state if state is None or len(state) > 1 else state[0]))
    torch.autograd.backward(outputs, grads)
    found = [t.grad.clone() for t in leaves]
    for t in leaves:
        t.grad = None
    return [o.detach() for o in outputs], found


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name,kw,with_state,unbatched", LAYER_CASES, ids=str)
def test_scripted_layer_matches_torch_nn(name, kw, with_state, unbatched, dtype):
    ref, ours = _pair(name, kw, dtype)
    with forbid_torch_rnn():
        scripted = torch.jit.script(ours)
    assert isinstance(scripted, torch.jit.ScriptModule)
    D, L = 2 if kw.get("bidirectional") else 1, kw.get("num_layers", 1)
    Hout = kw.get("proj_size", 0) or 5
    gen = torch.Generator().manual_seed(2)
    T, B = 4, 2
    x = torch.randn((T, 3) if unbatched else ((B, T, 3) if kw.get("batch_first") else (T, B, 3)), generator=gen,
                    dtype=dtype, requires_grad=True)
    state_batch = () if unbatched else (B,)
    state = None
    if with_state:
        state = [torch.randn(D * L, *state_batch, Hout, generator=gen, dtype=dtype, requires_grad=True)]
        if name == "LSTM":
            state.append(torch.randn(D * L, *state_batch, 5, generator=gen, dtype=dtype, requires_grad=True))
    ref_out = _flat(ref(x, None if state is None else (tuple(state) if name == "LSTM" else state[0])))
    grads = [torch.randn(o.shape, generator=gen, dtype=dtype) for o in ref_out]
    st = None if state is None else tuple(state)
    expected, expected_grads = _run(ref, x, st, grads)
    with forbid_torch_rnn():
        got, got_grads = _run(scripted, x, st, grads)
    for g, e in zip(got + got_grads, expected + expected_grads):
        assert_close(g, e, dtype, f"{name} {kw}")


@pytest.mark.parametrize("name,kw", CELL_CASES, ids=str)
@pytest.mark.parametrize("unbatched", [False, True])
def test_scripted_cell_matches_torch_nn(name, kw, unbatched):
    ref, ours = _pair(name, kw, torch.float32)
    with forbid_torch_rnn():
        scripted = torch.jit.script(ours)
    gen = torch.Generator().manual_seed(3)
    shape = (3,) if unbatched else (2, 3)
    x = torch.randn(shape, generator=gen, requires_grad=True)
    h = torch.randn(shape[:-1] + (5,), generator=gen, requires_grad=True)
    state = (h, torch.randn(h.shape, generator=gen, requires_grad=True)) if name == "LSTMCell" else h
    leaves = [x, *(state if isinstance(state, tuple) else (state,)), *ref.parameters()]
    outs = ref(x, state)
    outs = list(outs) if isinstance(outs, tuple) else [outs]
    grads = [torch.randn(o.shape, generator=gen) for o in outs]
    expected = torch.autograd.grad(outs, leaves, grads)
    with forbid_torch_rnn():
        got_outs = scripted(x, state)
        got_outs = list(got_outs) if isinstance(got_outs, tuple) else [got_outs]
        got = torch.autograd.grad(got_outs, [x, *leaves[1:len(leaves) - len(list(ref.parameters()))],
                                             *ours.parameters()], grads)
        zero_state = scripted(x)  # hx omitted
    for g, e in zip(got_outs + list(got), outs + list(expected)):
        assert_close(g, e.detach(), torch.float32, name)
    ref_zero = ref(x)
    for g, e in zip(zero_state if isinstance(zero_state, tuple) else (zero_state,),
                    ref_zero if isinstance(ref_zero, tuple) else (ref_zero,)):
        assert_close(g, e, torch.float32, f"{name} without hx")


def test_scripted_model_shares_parameters_saves_and_loads():
    """A model holding a pyrnn layer scripts whole; the scripted model trains the same parameters as the original
    and survives torch.jit.save / torch.jit.load (where pyrnn is imported: its ops are registered from Python)."""

    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.rnn = pyrnn.LSTM(4, 6, num_layers=2, bidirectional=True, batch_first=True)
            self.head = nn.Linear(12, 3)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            out, _ = self.rnn(self.embed(tokens))
            return self.head(out)

    torch.manual_seed(0)
    model = Tagger()
    tokens = torch.randint(0, 10, (2, 5))
    scripted = torch.jit.script(model)
    assert scripted.rnn.weight_hh_l1_reverse.data_ptr() == model.rnn.weight_hh_l1_reverse.data_ptr()
    with forbid_torch_rnn():
        torch.testing.assert_close(scripted(tokens), model(tokens))
        with torch.no_grad():
            model.rnn.weight_ih_l0.add_(0.1)  # an update through the original moves the scripted model too
        torch.testing.assert_close(scripted(tokens), model(tokens))
        buffer = io.BytesIO()
        torch.jit.save(scripted, buffer)
        buffer.seek(0)
        loaded = torch.jit.load(buffer)
        torch.testing.assert_close(loaded(tokens), model(tokens))
        loaded(tokens).sum().backward()
    assert all(p.grad is not None for p in loaded.parameters())


PACKED_CASES = [  # name, constructor arguments, initial state given
    ("LSTM", {"num_layers": 2, "bidirectional": True, "proj_size": 3}, True),
    ("LSTM", {}, False),
    ("GRU", {"num_layers": 2, "bidirectional": True}, True),
    ("RNN", {"nonlinearity": "relu"}, False),
]


class _PackedAndPadded(nn.Module):
    """A scripted model calling its GRU/RNN on a PackedSequence and on a padded tensor: the two overloads of forward
    torch.nn's layers offer inside a scripted model."""

    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, packed: PackedSequence, padded: torch.Tensor, h0: Optional[torch.Tensor],
                c0: Optional[torch.Tensor]) -> List[torch.Tensor]:
        out, h_n = self.rnn(packed, h0)
        padded_out, padded_h = self.rnn(padded)
        return [out.data, h_n, padded_out, padded_h]


class _PackedAndPaddedLSTM(_PackedAndPadded):
    def forward(self, packed: PackedSequence, padded: torch.Tensor, h0: Optional[torch.Tensor],
                c0: Optional[torch.Tensor]) -> List[torch.Tensor]:
        state: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
        if h0 is not None and c0 is not None:
            state = (h0, c0)
        out, (h_n, c_n) = self.rnn(packed, state)
        padded_out, (padded_h, padded_c) = self.rnn(padded)
        return [out.data, h_n, c_n, padded_out, padded_h, padded_c]


@pytest.mark.parametrize("name,kw,with_state", PACKED_CASES, ids=str)
def test_scripted_model_takes_packed_sequences(name, kw, with_state):
    """Inside a scripted model a layer takes a PackedSequence (unsorted lengths: h0 and h_n follow the caller's
    batch order) as well as a padded tensor; outputs, final states and every gradient against torch.nn's."""
    ref, ours = _pair(name, kw, torch.float64)
    wrap = _PackedAndPaddedLSTM if name == "LSTM" else _PackedAndPadded
    with forbid_torch_rnn():
        scripted = torch.jit.script(wrap(ours))
    D, L = 2 if kw.get("bidirectional") else 1, kw.get("num_layers", 1)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(5, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    padded = torch.randn(4, 2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    h0 = c0 = None
    if with_state:
        h0 = torch.randn(D * L, 3, kw.get("proj_size", 0) or 5, generator=gen, dtype=torch.float64, requires_grad=True)
        if name == "LSTM":
            c0 = torch.randn(D * L, 3, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    leaves = [t for t in (x, padded, h0, c0) if t is not None]

    def outputs_and_grads(model, params):
        packed = pack_padded_sequence(x, torch.tensor([3, 5, 1]), enforce_sorted=False)
        outputs = model(packed, padded, h0, c0)
        grads = [torch.randn(o.shape, generator=torch.Generator().manual_seed(i), dtype=o.dtype)
                 for i, o in enumerate(outputs)]
        return [o.detach() for o in outputs], torch.autograd.grad(outputs, [*leaves, *params], grads)

    expected, expected_grads = outputs_and_grads(wrap(ref), list(ref.parameters()))
    with forbid_torch_rnn():
        got, got_grads = outputs_and_grads(scripted, list(ours.parameters()))
    assert len(got) == len(expected) and len(got_grads) == len(expected_grads)
    for i, (g, e) in enumerate(zip(got + list(got_grads), expected + list(expected_grads))):
        assert_close(g, e, torch.float64, f"{name} {kw}: output or gradient {i}")


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_scripted_errors_are_torch_nns(name):
    """Bad inputs raise torch.nn's errors (type and message) from the TorchScript interpreter, which wraps them in
    torch.jit.Error (torch 2.13's own scripted LSTM/GRU/RNN run only inside a scripted parent)."""
    ref, ours = _pair(name, {"num_layers": 2}, torch.float32)
    scripted = torch.jit.script(ours)
    state = torch.randn(1, 2, 5)
    for args in ((torch.randn(4, 2, 7),), (torch.randn(2, 3, 4, 3),),
                 (torch.randn(4, 2, 3), (state, state) if name == "LSTM" else state)):
        with pytest.raises(Exception) as expected:
            ref(*args)
        with pytest.raises(torch.jit.Error) as got:
            scripted(*args)
        assert str(got.value).splitlines()[-1] == f"builtins.{type(expected.value).__name__}: {expected.value}"


def test_subclass_with_its_own_forward_is_scripted_as_written():
    class Doubled(pyrnn.GRU):
        def forward(self, input: torch.Tensor, hx: torch.Tensor) -> torch.Tensor:
            return input * 2

    m = Doubled(3, 5)
    scripted = torch.jit.script(m)
    x = torch.randn(4, 2, 3)
    torch.testing.assert_close(scripted(x, torch.zeros(1, 2, 5)), x * 2)


@pytest.mark.parametrize("name", ["LSTM", "GRUCell", "LSTMCell"])
def test_scripted_half_types_on_cpu_match_eager(name):
    torch.manual_seed(0)
    ours = getattr(pyrnn, name)(3, 5).bfloat16()
    scripted = torch.jit.script(ours)
    x = torch.randn((2, 3) if name.endswith("Cell") else (4, 2, 3)).bfloat16()
    first = lambda out: out[0] if isinstance(out, tuple) else out  # noqa: E731
    with forbid_torch_rnn():
        got, expected = first(scripted(x)), first(ours(x))
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
