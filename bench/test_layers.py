"""Whole layers, pyrnn vs torch.nn in the same benchmark group: inference, forward+backward, backward only.
Each timing includes the input projection (equal work)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pyrnn

SHAPES = [  # (T, B, H)
    (100, 64, 256),
    (200, 1, 256),
    (35, 20, 200),
]
IMPLS = {"pyrnn": pyrnn, "torch.nn": nn}


def _build(cell, impl, T, B, H):
    torch.manual_seed(0)
    ref = getattr(nn, cell)(H, H)
    m = getattr(IMPLS[impl], cell)(H, H)
    m.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, H, requires_grad=True)
    return m, x


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T%d-B%d-H%d" % s)
@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
def test_inference(benchmark, cell, shape, impl):
    m, x = _build(cell, impl, *shape)
    benchmark.group = f"{cell} inference T={shape[0]} B={shape[1]} H={shape[2]}"

    def run():
        with torch.no_grad():
            m(x)

    benchmark(run)


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T%d-B%d-H%d" % s)
@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
def test_forward_backward(benchmark, cell, shape, impl):
    m, x = _build(cell, impl, *shape)
    benchmark.group = f"{cell} forward+backward T={shape[0]} B={shape[1]} H={shape[2]}"

    def run():
        out, _ = m(x)
        out.sum().backward()

    benchmark(run)


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
def test_backward_only(benchmark, cell, impl):
    m, x = _build(cell, impl, 100, 64, 256)
    benchmark.group = f"{cell} backward only T=100 B=64 H=256"

    def setup():
        out, _ = m(x)
        return (out.sum(),), {}

    benchmark.pedantic(lambda loss: loss.backward(), setup=setup, rounds=10)
