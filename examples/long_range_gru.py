"""Example 2: deep stacked recurrent nets on a long-range task, where vanilla RNN gradients vanish.

Task: the label is the sign of the first element of a length-60 noise sequence, so the model must carry
one value across 60 steps. A 2-layer GRU, LSTM and tanh RNN with dropout between layers, gradient
clipping and Adam are trained the same way; the gated cells start with their "keep" gates open (LSTM forget
bias +3, GRU update bias +3: the usual initialisation for long memories). Before training, the script
measures |dL/dx_t| at the first step relative to the last: the RNN's ratio collapses (vanishing gradient),
the gated cells' does not; after training only the gated cells solve the task. Then it runs the same script
with torch.nn and reports both.

    python examples/long_range_gru.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import compare  # noqa: E402

T, BATCH = 60, 64
STEPS = int(os.environ.get("PYRNN_EXAMPLE_STEPS", 200))  # the tests run a few steps only


def make_batch(gen: torch.Generator, batch: int = BATCH):
    x = torch.randn(batch, T, 1, generator=gen)  # [B, T, 1]
    return x, (x[:, 0, 0] > 0).long()


class Classifier(nn.Module):
    def __init__(self, cls):
        super().__init__()
        self.rnn = cls(input_size=1, hidden_size=32, num_layers=2, dropout=0.1, batch_first=True)
        self.head = nn.Linear(32, 2)
        H = 32
        with torch.no_grad():
            for name, p in self.rnn.named_parameters():
                if name.startswith("bias_hh"):
                    if isinstance(self.rnn, nn.LSTM):
                        p[H : 2 * H] += 3.0  # forget gate (i, f, g, o)
                    elif isinstance(self.rnn, nn.GRU):
                        p[H : 2 * H] += 3.0  # update gate (r, z, n): z near 1 keeps the state

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def gradient_ratio(model: nn.Module, gen: torch.Generator) -> float:
    """|dL/dx_0| / |dL/dx_T-1| at initialisation: how much of the loss reaches the first step."""
    x, y = make_batch(gen)
    x.requires_grad_(True)
    nn.functional.cross_entropy(model(x), y).backward()
    g = x.grad.abs().mean(dim=(0, 2))
    return (g[0] / g[-1]).item()


def train_one(cls) -> tuple[float, float]:
    torch.manual_seed(0)
    model = Classifier(cls)
    ratio = gradient_ratio(model, torch.Generator().manual_seed(5))
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    gen = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(STEPS):
        x, y = make_batch(gen)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()
    x, y = make_batch(torch.Generator().manual_seed(99), 1000)
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    return ratio, accuracy


def train(ns) -> dict:
    results = {}
    for name in ("RNN", "GRU", "LSTM"):
        ratio, acc = train_one(getattr(ns, name))
        results[f"{name} grad ratio"] = ratio
        results[f"{name} acc"] = acc
    return results


if __name__ == "__main__":
    compare(train, "long range")
