"""Shared by the examples: run the same training script with pyrnn and with torch.nn, report both."""

from __future__ import annotations

import time
from typing import Callable

import torch
from torch import nn

import pyrnn


def compare(train: Callable[[object], dict], label: str, rounds: int = 2) -> None:
    """train(ns) builds its model from ns.LSTM / ns.GRU / ns.RNN (ns is pyrnn or torch.nn), trains it and
    returns a dict of results. Runs it with both, alternating, `rounds` times each, and prints the results
    and the speedup of the best times (the first round of each pays one-off start-up costs)."""
    timings = {}
    for name, ns in (("pyrnn", pyrnn), ("torch.nn", nn)):
        best = float("inf")
        for _ in range(rounds):
            torch.manual_seed(0)
            start = time.perf_counter()
            result = train(ns)
            best = min(best, time.perf_counter() - start)
        timings[name] = best
        shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items())
        print(f"[{label}] {name:8s}: {shown}  ({timings[name]:.1f} s)")
    print(f"[{label}] pyrnn is {timings['torch.nn'] / timings['pyrnn']:.2f}x the speed of torch.nn on this script "
          f"(best of {rounds} runs each)")
