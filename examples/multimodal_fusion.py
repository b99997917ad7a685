"""Example 3: multimodal sequence learning with streams of different rates and widths.

Each sample has three synchronised streams, generated with a class-dependent signal buried in noise:
  - tokens:        up to 20 per sample (variable length), vocabulary 50   (the base rate)
  - audio frames:  4 per token, 24 features                             (4x the token rate)
  - image features: 1 per 4 tokens, 64 features                         (1/4 of the token rate)
Each stream gets its own recurrent encoder (GRU for tokens, LSTM for audio, RNN for images); audio is pooled
down and images repeated up to the token rate, the three are concatenated and a bidirectional LSTM over the
packed, variable-length fused sequence classifies the sample (4 classes). The script trains it with pyrnn,
then with torch.nn, and reports accuracy on held-out data and the time of each.

    python examples/multimodal_fusion.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import compare  # noqa: E402

CLASSES, TOKENS, VOCAB, AUDIO_DIM, IMAGE_DIM = 4, 20, 50, 24, 64
BATCH = 64
STEPS = int(os.environ.get("PYRNN_EXAMPLE_STEPS", 150))  # the tests run a few steps only


def make_batch(gen: torch.Generator, batch: int = BATCH):
    y = torch.randint(0, CLASSES, (batch,), generator=gen)
    lengths = torch.randint(12, TOKENS + 1, (batch,), generator=gen)
    # tokens: noise, plus tokens from the class's own band of ids 30% of the time
    tokens = torch.randint(0, VOCAB, (batch, TOKENS), generator=gen)
    band = 10 * y[:, None] + torch.randint(0, 10, (batch, TOKENS), generator=gen)
    tokens = torch.where(torch.rand(batch, TOKENS, generator=gen) < 0.3, band, tokens)
    # audio: a tone whose frequency depends on the class, on 4 of the channels, under noise
    t = torch.arange(4 * TOKENS, dtype=torch.float32)
    tone = torch.sin(t[None, :] * (0.2 + 0.25 * y[:, None].float()))
    audio = torch.randn(batch, 4 * TOKENS, AUDIO_DIM, generator=gen)
    audio[:, :, :4] += 1.0 * tone[:, :, None]
    # images: a class direction under noise
    directions = torch.randn(CLASSES, IMAGE_DIM, generator=torch.Generator().manual_seed(7))
    images = torch.randn(batch, TOKENS // 4, IMAGE_DIM, generator=gen) + 0.6 * directions[y][:, None, :]
    return tokens, audio, images, lengths, y


class FusionModel(nn.Module):
    def __init__(self, ns):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16)
        self.tokens = ns.GRU(16, 32, batch_first=True)
        self.audio = ns.LSTM(AUDIO_DIM, 32, batch_first=True)
        self.images = ns.RNN(IMAGE_DIM, 32, batch_first=True, nonlinearity="tanh")
        self.fusion = ns.LSTM(96, 64, num_layers=2, bidirectional=True, dropout=0.1, batch_first=True)
        self.head = nn.Linear(128, CLASSES)

    def forward(self, tokens, audio, images, lengths):
        tok, _ = self.tokens(self.embed(tokens))                        # [B, T, 32]
        aud, _ = self.audio(audio)                                       # [B, 4T, 32]
        aud = aud.reshape(aud.shape[0], TOKENS, 4, 32).mean(2)           # pooled to the token rate
        img, _ = self.images(images)                                     # [B, T/4, 32]
        img = img.repeat_interleave(4, dim=1)                            # repeated to the token rate
        fused = torch.cat([tok, aud, img], dim=2)                        # [B, T, 96]
        packed = pack_padded_sequence(fused, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.fusion(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=TOKENS)  # [B, T, 128]
        mask = (torch.arange(TOKENS)[None, :] < lengths[:, None]).float()[:, :, None]
        pooled = (out * mask).sum(1) / lengths[:, None].float()
        return self.head(pooled)


def train(ns) -> dict:
    model = FusionModel(ns)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(STEPS):
        *inputs, y = make_batch(gen)
        loss = nn.functional.cross_entropy(model(*inputs), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    *inputs, y = make_batch(torch.Generator().manual_seed(99), 1000)
    with torch.no_grad():
        accuracy = (model(*inputs).argmax(1) == y).float().mean().item()
    return {"test accuracy": accuracy, "chance": 1 / CLASSES}


if __name__ == "__main__":
    compare(train, "multimodal")
