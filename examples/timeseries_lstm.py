"""Example 1: time-series regression with a stacked LSTM.

Predict the next value of a noisy sum of sines from the previous 60 values. The model is a 2-layer
pyrnn.LSTM; the script then runs the same training with torch.nn.LSTM and reports both.

    python examples/timeseries_lstm.py
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import compare  # noqa: E402

WINDOW, BATCH = 60, 64
STEPS = int(os.environ.get("PYRNN_EXAMPLE_STEPS", 300))  # the tests run a few steps only


def make_batch(gen: torch.Generator, batch: int = BATCH):
    # x: [B, WINDOW, 1], target: [B, 1] the value right after the window
    phase = torch.rand(batch, 1, generator=gen) * 2 * math.pi
    freq = 0.05 + 0.1 * torch.rand(batch, 1, generator=gen)
    t = torch.arange(WINDOW + 1, dtype=torch.float32)
    clean = torch.sin(freq * t + phase) + 0.5 * torch.sin(2.7 * freq * t + 2 * phase)
    noisy = clean + 0.05 * torch.randn(clean.shape, generator=gen)
    return noisy[:, :WINDOW, None], clean[:, WINDOW:]


class Forecaster(nn.Module):
    def __init__(self, ns):
        super().__init__()
        self.rnn = ns.LSTM(input_size=1, hidden_size=64, num_layers=2, batch_first=True)
        self.head = nn.Linear(64, 1)

    def forward(self, x):
        out, _ = self.rnn(x)  # [B, T, 64]
        return self.head(out[:, -1])


def train(ns) -> dict:
    model = Forecaster(ns)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        x, y = make_batch(gen)
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y = make_batch(torch.Generator().manual_seed(99), 512)
    with torch.no_grad():
        mse = nn.functional.mse_loss(model(x), y).item()
        naive = nn.functional.mse_loss(x[:, -1], y).item()  # "tomorrow equals today"
    return {"test MSE": mse, "naive MSE": naive}


if __name__ == "__main__":
    compare(train, "time series")
