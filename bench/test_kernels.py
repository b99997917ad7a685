"""The kernels on their own: one LSTM layer-direction forward (input projection + recurrence step loop of fused
GEMM + gates), its recurrence's backward, and the GEMM of the input projection against torch's."""

from __future__ import annotations

import pytest
import torch

from pyrnn import ops

T, B, H = 100, 64, 256


@pytest.fixture(scope="module")
def lstm_inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(T * B, H, generator=g)
    w_ih = torch.randn(4 * H, H, generator=g) * 0.05
    w_hh = torch.randn(4 * H, H, generator=g) * 0.05
    return x, w_ih, w_hh, torch.zeros(B, H), torch.zeros(B, H), torch.full((T,), B)


def test_lstm_layer_forward(benchmark, lstm_inputs):
    x, w_ih, w_hh, h0, c0, bs = lstm_inputs
    benchmark.group = "LSTM layer forward (projection + recurrence) T=100 B=64 H=256"
    benchmark(lambda: ops.lstm_layer(x, w_ih, None, None, w_hh, None, h0, c0, bs, False, False))


def test_lstm_recurrence_backward(benchmark, lstm_inputs):
    x, w_ih, w_hh, h0, c0, bs = lstm_inputs
    y, h_n, c_n, cell, proj_in, gates, h_prev = ops.lstm_layer(x, w_ih, None, None, w_hh, None, h0, c0, bs, False,
                                                               True)
    dy = torch.randn_like(y)
    benchmark.group = "LSTM recurrence backward T=100 B=64 H=256"
    benchmark(lambda: ops.lstm_layer_backward(dy, h_n, c_n, w_hh, None, c0, bs, False, cell, proj_in, gates))


@pytest.mark.parametrize("impl", ["pyrnn", "torch"])
def test_input_projection(benchmark, impl):
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(T * B, H, generator=g), torch.randn(4 * H, H, generator=g), torch.randn(4 * H, generator=g)
    benchmark.group = "input projection [6400 x 256] @ [256 x 1024]"
    fn = (lambda: ops.gemm(x, w.t(), b)) if impl == "pyrnn" else (lambda: torch.addmm(b, x, w.t()))
    benchmark(fn)
