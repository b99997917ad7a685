"""Two builds of pyrnn's CPU kernels timed side by side in one process (see bench/ab_build.sh).

    bash bench/ab_build.sh _Cold HEAD~1 /tmp/pyrnn_ab && bash bench/ab_build.sh _Cnew wt /tmp/pyrnn_ab
    python bench/ab_kernels.py _Cold _Cnew --dir /tmp/pyrnn_ab [--rounds 15] [--steps | --cells] [--only gemm,lstm_f]

Every case runs through pyrnn.ops with `ops.cpu_kernels` pointed at one build or the other; the order of the
two is shuffled per case and round, and the report gives each build's median time and the median of the
per-round ratios A/B (> 1: B is faster). On a shared machine whose neighbour moves single timings by 10-50%,
this is what resolves changes of a few percent, which separate runs of `python -m pyrnn.bench` cannot.

Caveat (tenth session): two builds of the *same* source under different names are not always equal. The LSTM
forward at T=100 B=64 H=256 ran 0.86-0.87x in one such pair (_Cold vs _Cold2, both orders, also one build per
process: 10% on one thread), 0.89x in another (hidden-visibility builds), 0.97-1.00x in others, while the
GEMMs matched to 1%. The instruction streams were identical at identical addresses; perf put the extra time on
one full-width gx load of the epilogue. So first compare the baseline with a second build of itself
(`ab_build.sh _Cbase2 REV`): a difference smaller than that spread is layout, not code. Where a change can be
switched at run time inside one build (an environment variable read per call, for the experiment only), that
comparison has no such bias.
"""

from __future__ import annotations

import argparse
import importlib
import random
import statistics
import sys
import time

import torch

import pyrnn
from pyrnn import ops


def kernel_cases(T: int, B: int, H: int) -> dict:
    """The kernels of one layer-direction at this shape (a function per shape, so each closure keeps its own
    tensors)."""
    N, bs = T * B, torch.full((T,), B, dtype=torch.int64)
    h0, c0 = torch.zeros(B, H), torch.zeros(B, H)
    gx, w_hh = torch.randn(N, 4 * H), torch.randn(4 * H, H) * 0.05
    _, _, _, cell, proj_in, gates, _ = ops._lstm_recurrence(gx, w_hh, None, h0, c0, bs, False, True)
    dy, dh_n, dc_n = torch.randn(N, H), torch.zeros(B, H), torch.zeros(B, H)
    gx_gru, w_gru, b_hn = torch.randn(N, 3 * H), torch.randn(3 * H, H) * 0.05, torch.zeros(H)
    gx_rnn, w_rnn = torch.randn(N, H), torch.randn(H, H) * 0.05
    tag = f"T={T} B={B} H={H}"
    cases = {
        f"lstm_f {tag}": lambda: ops._lstm_recurrence(gx, w_hh, None, h0, c0, bs, False, True),
        f"lstm_b {tag}": lambda: ops._lstm_layer_backward_impl(
            dy, dh_n, dc_n, w_hh, None, c0, bs, False, cell, proj_in, gates),
        f"gru_f {tag}": lambda: ops._gru_recurrence(gx_gru, w_gru, b_hn, h0, bs, False, True),
        f"rnn_f {tag}": lambda: ops._rnn_recurrence(gx_rnn, w_rnn, h0, bs, False, False, True),
    }
    if B > 1:  # the layer's GEMMs: input projection, dW = dG^T x, dx = dG W_ih
        x, w_ih, dg = torch.randn(N, H), torch.randn(4 * H, H), torch.randn(N, 4 * H)
        out_p, out_w, out_x = torch.empty(N, 4 * H), torch.empty(4 * H, H), torch.empty(N, H)
        cases[f"gemm_proj {tag}"] = lambda: ops._gemm(x, w_ih.t(), None, lambda *_: out_p)
        cases[f"gemm_dW {tag}"] = lambda: ops._gemm(dg.t(), x, None, lambda *_: out_w)
        cases[f"gemm_dx {tag}"] = lambda: ops._gemm(dg, w_ih, None, lambda *_: out_x)
    return cases


def step_cases():
    cases = {}
    for cell, T, B, H, L, train in [("LSTM", 100, 64, 256, 1, True), ("GRU", 100, 64, 256, 1, True),
                                    ("RNN", 100, 64, 256, 1, True), ("LSTM", 35, 20, 200, 2, True),
                                    ("GRU", 35, 20, 200, 2, True), ("RNN", 35, 20, 200, 2, True),
                                    ("LSTM", 100, 64, 256, 1, False), ("LSTM", 200, 1, 256, 1, True)]:
        m = getattr(pyrnn, cell)(H, H, num_layers=L)
        x = torch.randn(T, B, H, requires_grad=train)

        def run(m=m, x=x, train=train):
            with torch.set_grad_enabled(train):
                y, _ = m(x)
                if train:
                    y.backward(torch.ones_like(y))

        cases[f"{cell} {'train' if train else 'infer'} T={T} B={B} H={H} L={L}"] = run
    return cases


def cell_cases():
    """Cell loops as pyrnn.bench times them (20 calls from Python, state carried), where each call is one step."""
    from pyrnn.bench import _cell_loop
    cases = {}
    for cell in ("LSTM", "GRU", "RNN"):
        for B in (4, 8, 32):
            for train in (False, True):
                m = getattr(pyrnn, cell + "Cell")(256, 256)
                x = torch.randn(20, B, 256)

                def run(m=m, x=x, train=train):
                    m.zero_grad(set_to_none=True)
                    with torch.set_grad_enabled(train):
                        total = _cell_loop(m, x.requires_grad_(train))
                    if train:
                        total.backward()

                cases[f"{cell}Cell {'train' if train else 'infer'} T=20 B={B} H=256"] = run
    return cases


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--dir", default="/tmp/pyrnn_ab", help="where bench/ab_build.sh put the modules")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--steps", action="store_true", help="whole layers (training steps, inference) instead of kernels")
    p.add_argument("--cells", action="store_true", help="cell loops (one step a call) instead of kernels")
    p.add_argument("--only", default=None, help="comma-separated substrings of the case names to keep")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, args.dir)
    builds = {n: importlib.import_module(n) for n in (args.a, args.b)}
    torch.manual_seed(0)
    if args.steps:
        cases = step_cases()
    elif args.cells:
        cases = cell_cases()
    else:
        cases = {}
        for shape in [(35, 20, 200), (100, 64, 256), (50, 32, 128), (200, 1, 256)]:
            cases.update(kernel_cases(*shape))
    if args.only:
        keep = args.only.split(",")
        cases = {k: f for k, f in cases.items() if any(w in k for w in keep)}
    original = ops.cpu_kernels
    times = {(c, n): [] for c in cases for n in builds}
    try:
        for _ in range(args.rounds):
            for c, f in cases.items():
                order = list(builds)
                random.shuffle(order)
                for n in order:
                    ops.cpu_kernels = lambda mod=builds[n]: mod
                    f()  # warm: the other build's run left the caches as it used them
                    start = time.perf_counter()
                    f()
                    f()
                    times[(c, n)].append((time.perf_counter() - start) / 2)
    finally:
        ops.cpu_kernels = original
    a, b = args.a, args.b
    for c in cases:
        ratio = statistics.median(x / y for x, y in zip(times[(c, a)], times[(c, b)]))
        print(f"{c:34s} {a} {statistics.median(times[(c, a)]) * 1e3:9.3f} ms  {b} "
              f"{statistics.median(times[(c, b)]) * 1e3:9.3f} ms  {a}/{b} {ratio:.3f}")


if __name__ == "__main__":
    main()
