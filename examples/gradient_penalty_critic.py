"""Example 4: a recurrent WGAN-GP critic, trained with a gradient penalty (double backward through the GRU).

Task: tell two families of noisy sine waves apart ("real": frequency 1.0-1.5, "generated": 2.0-2.5) with a 2-layer
GRU critic under the Wasserstein loss, kept 1-Lipschitz by a gradient penalty (Gulrajani et al., 2017): at points
between real and generated sequences the norm of dD/dx is pulled towards 1. That penalty differentiates the
critic's gradient, so every step backpropagates through the GRU's backward (create_graph=True; pyrnn runs that
in its composite path, pyrnn/composite.py). The script reports the critic's Wasserstein estimate on held-out
sequences and the gradient norm at interpolates, then runs the same script with torch.nn and reports both.

    python examples/gradient_penalty_critic.py
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

T, BATCH, PENALTY = 40, 64, 10.0
STEPS = int(os.environ.get("PYRNN_EXAMPLE_STEPS", 150))  # the tests run a few steps only


def waves(gen: torch.Generator, low: float, high: float, batch: int = BATCH) -> torch.Tensor:
    """[B, T, 1] sine waves of random frequency in [low, high) and phase, with noise."""
    freq = low + (high - low) * torch.rand(batch, 1, generator=gen)
    phase = 2 * math.pi * torch.rand(batch, 1, generator=gen)
    t = torch.arange(T, dtype=torch.float32) * 0.25
    return (torch.sin(freq * t + phase) + 0.1 * torch.randn(batch, T, generator=gen)).unsqueeze(-1)


class Critic(nn.Module):
    def __init__(self, ns):
        super().__init__()
        self.rnn = ns.GRU(input_size=1, hidden_size=32, num_layers=2, batch_first=True)
        self.head = nn.Linear(32, 1)

    def forward(self, x):  # x: [B, T, 1] -> a score per sequence [B]
        out, _ = self.rnn(x)
        return self.head(out[:, -1]).squeeze(-1)


def gradient_norms(critic: Critic, real: torch.Tensor, fake: torch.Tensor, gen: torch.Generator,
                   create_graph: bool) -> torch.Tensor:
    """|dD/dx| at random points between real and generated sequences, per sequence [B]."""
    mix = torch.rand(real.shape[0], 1, 1, generator=gen)
    between = (mix * real + (1 - mix) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(between).sum(), between, create_graph=create_graph)
    return grad.flatten(1).norm(dim=1)


def train(ns) -> dict:
    critic = Critic(ns)
    opt = torch.optim.Adam(critic.parameters(), lr=1e-3, betas=(0.5, 0.9))
    gen = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        real, fake = waves(gen, 1.0, 1.5), waves(gen, 2.0, 2.5)
        penalty = (gradient_norms(critic, real, fake, gen, create_graph=True) - 1).square().mean()
        loss = critic(fake).mean() - critic(real).mean() + PENALTY * penalty
        opt.zero_grad()
        loss.backward()  # through the penalty: the gradient of the GRU's gradient
        opt.step()
    test = torch.Generator().manual_seed(99)
    real, fake = waves(test, 1.0, 1.5, 512), waves(test, 2.0, 2.5, 512)
    norms = gradient_norms(critic, real, fake, test, create_graph=False)
    with torch.no_grad():
        distance = (critic(real).mean() - critic(fake).mean()).item()
    return {"Wasserstein estimate": distance, "mean |dD/dx| at interpolates": norms.mean().item()}


if __name__ == "__main__":
    compare(train, "WGAN-GP GRU critic")
