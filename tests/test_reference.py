"""pyrnn's kernels against the NumPy float64 reference (forward and hand-written BPTT), and the reference
itself against torch.nn, so the two checks together pin both down."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import pyrnn
from pyrnn import reference
from conftest import forbid_torch_rnn

CLASSES = {"LSTM": pyrnn.LSTM, "GRU": pyrnn.GRU, "RNN_TANH": pyrnn.RNN, "RNN_RELU": pyrnn.RNN}
TORCH_CLASSES = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN_TANH": nn.RNN, "RNN_RELU": nn.RNN}


def _build(cls, mode, I, H, L, bias, bi, P):
    kw = dict(num_layers=L, bias=bias, bidirectional=bi, dtype=torch.float64)
    if mode == "LSTM":
        kw["proj_size"] = P
    if mode.startswith("RNN"):
        kw["nonlinearity"] = mode[4:].lower()
    return cls(I, H, **kw)


def _params(module, L, bi):
    layers = []
    for layer in range(L):
        for sfx in ("", "_reverse")[: 2 if bi else 1]:
            get = lambda n: getattr(module, f"{n}_l{layer}{sfx}", None)  # noqa: E731
            layers.append({k: (None if get(n) is None else get(n).detach().numpy().copy())
                           for k, n in (("w_ih", "weight_ih"), ("w_hh", "weight_hh"), ("b_ih", "bias_ih"),
                                        ("b_hh", "bias_hh"), ("w_hr", "weight_hr"))})
    return layers


def _grid(n, seed):
    rng = random.Random(seed)
    for i in range(n):
        mode = rng.choice(list(CLASSES))
        H = rng.choice([1, 3, 5, 33])
        yield dict(mode=mode, I=rng.choice([1, 4]), H=H, L=rng.choice([1, 2]), bias=rng.random() < 0.7,
                   bi=rng.random() < 0.5, P=rng.choice([0, H - 1]) if mode == "LSTM" and H > 1 else 0,
                   T=rng.choice([1, 4, 7]), B=rng.choice([1, 4]), packed=rng.random() < 0.5, seed=i)


def _check(cfg, module_cls, forbid):
    mode, I, H, L, bias, bi, P, T, B = (cfg[k] for k in ("mode", "I", "H", "L", "bias", "bi", "P", "T", "B"))
    torch.manual_seed(cfg["seed"])
    m = _build(module_cls, mode, I, H, L, bias, bi, P)
    D, Hin = 2 if bi else 1, P or H
    rng = np.random.default_rng(cfg["seed"])
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((L * D, B, Hin))
    c0 = rng.standard_normal((L * D, B, H)) if mode == "LSTM" else None
    lengths = None
    if cfg["packed"]:
        lengths = np.sort(rng.integers(1, T + 1, B))[::-1].copy()
        lengths[0] = T
    d_out = rng.standard_normal((T, B, D * Hin))
    if lengths is not None:
        d_out *= (np.arange(T)[:, None] < lengths[None, :])[:, :, None]
    dh_n = rng.standard_normal(h0.shape)
    dc_n = rng.standard_normal(c0.shape) if c0 is not None else None

    # reference
    out, hn, cn, caches = reference.forward(mode, x, lengths, h0, c0, _params(m, L, bi), L, bi)
    dx, dh0, dc0, grads = reference.backward(caches, L, bi, d_out, dh_n, dc_n)

    # module
    xt = torch.tensor(x, requires_grad=True)
    h0t = torch.tensor(h0, requires_grad=True)
    c0t = torch.tensor(c0, requires_grad=True) if c0 is not None else None
    inp = xt if lengths is None else pack_padded_sequence(xt, torch.tensor(lengths))
    hx = (h0t, c0t) if mode == "LSTM" else h0t
    ctx = forbid_torch_rnn() if forbid else _Null()
    with ctx:
        o, hidden = m(inp, hx)
        if lengths is not None:
            o, _ = pad_packed_sequence(o, total_length=T)
        hidden = hidden if isinstance(hidden, tuple) else (hidden,)
        loss = (o * torch.tensor(d_out)).sum() + (hidden[0] * torch.tensor(dh_n)).sum()
        if mode == "LSTM":
            loss = loss + (hidden[1] * torch.tensor(dc_n)).sum()
        loss.backward()
    tol = dict(rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(o.detach().numpy(), out, **tol)
    np.testing.assert_allclose(hidden[0].detach().numpy(), hn, **tol)
    np.testing.assert_allclose(xt.grad.numpy(), dx, **tol)
    np.testing.assert_allclose(h0t.grad.numpy(), dh0, **tol)
    if mode == "LSTM":
        np.testing.assert_allclose(hidden[1].detach().numpy(), cn, **tol)
        np.testing.assert_allclose(c0t.grad.numpy(), dc0, **tol)
    k = 0
    for layer in range(L):
        for sfx in ("", "_reverse")[:D]:
            for key, name in (("w_ih", "weight_ih"), ("w_hh", "weight_hh"), ("b_ih", "bias_ih"),
                              ("b_hh", "bias_hh"), ("w_hr", "weight_hr")):
                p = getattr(m, f"{name}_l{layer}{sfx}", None)
                if p is not None:
                    np.testing.assert_allclose(p.grad.numpy(), grads[k][key], **tol, err_msg=f"{name}_l{layer}{sfx}")
            k += 1


class _Null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("cfg", list(_grid(80, 7)), ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_kernels_match_reference(cfg):
    _check(cfg, CLASSES[cfg["mode"]], forbid=True)


@pytest.mark.parametrize("cfg", list(_grid(24, 11)), ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_reference_matches_torch_nn(cfg):
    """The reference is an independent oracle: it agrees with torch.nn's own implementation."""
    _check(cfg, TORCH_CLASSES[cfg["mode"]], forbid=False)
