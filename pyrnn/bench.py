"""Side-by-side benchmark report: pyrnn against torch.nn in one run, same weights, same inputs.

    python -m pyrnn.bench                # the standard grid on this machine's CPU
    python -m pyrnn.bench --quick        # a smaller grid (a minute or two)
    python -m pyrnn.bench --json out.json --plot speedup.png

Every timing includes the input projection (equal work on both sides). The two implementations are timed
interleaved, call for call and in alternating order, so machine noise hits both alike and each follows the
other as often as itself; the report gives medians, the ratio torch.nn time / pyrnn time (> 1 means pyrnn is
faster) and pyrnn's achieved GFLOP/s.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import pyrnn

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


@dataclass
class Case:
    cell: str
    T: int
    B: int
    H: int
    I: Optional[int] = None  # defaults to H
    layers: int = 1
    bidirectional: bool = False
    proj: int = 0
    packed: bool = False
    dtype: str = "float32"
    train: bool = True
    device: str = "cpu"
    sweep: str = ""  # "B" or "H" for the --plot sweeps
    cells: bool = False  # LSTMCell/GRUCell/RNNCell called once per step from Python (T calls, state carried)
    penalty: bool = False  # a gradient-penalty step: backward with create_graph=True, then a double backward
    input_grad: bool = False  # the gradient with respect to the input alone (saliency maps, adversarial examples)

    @property
    def input_size(self) -> int:
        return self.I or self.H

    def label(self) -> str:
        extra = [f"L{self.layers}"] if self.layers > 1 else []
        extra += ["bi"] if self.bidirectional else []
        extra += [f"P{self.proj}"] if self.proj else []
        extra += ["packed"] if self.packed else []
        extra += [self.dtype.replace("float", "f")] if self.dtype != "float32" else []  # f64, bf16, f16
        extra += ["GPU"] if self.device != "cpu" else []
        name = self.cell + "Cell" if self.cells else f"{self.cell:4s}"
        mode = "penalty" if self.penalty else "dx-only" if self.input_grad else "train" if self.train else "infer"
        return (f"{name} {mode} T={self.T} B={self.B} H={self.H}"
                + (f" I={self.I}" if self.I else "") + (" " + " ".join(extra) if extra else ""))

    @property
    def apart(self) -> bool:
        """Reported apart from the standard grid and left out of its summary."""
        return self.penalty or self.input_grad

    def flops(self) -> float:
        """Multiply-adds x2 of the forward (x3 for forward+backward), input projection included; 0 for the cases
        reported apart (no standard count: a penalty step's work depends on how each side builds the double
        backward, an input gradient's on which weight gradients each side skips)."""
        if self.apart:
            return 0.0
        G, D, Hin = GATES[self.cell], 2 if self.bidirectional else 1, self.proj or self.H
        total = 0.0
        rows = self.T * self.B
        for layer in range(self.layers):
            inp = self.input_size if layer == 0 else D * Hin
            per_dir = 2.0 * rows * G * self.H * (inp + Hin) + (2.0 * rows * self.H * self.proj if self.proj else 0)
            total += D * per_dir
        return total * (3 if self.train else 1)


@dataclass
class Result:
    case: Case
    torch_ms: float
    pyrnn_ms: float
    ratio: float
    pyrnn_gflops: float
    torch_gflops: float
    samples: int = 0
    extra: dict = field(default_factory=dict)


def _build(case: Case):
    dtype = getattr(torch, case.dtype)
    if case.cells:
        ref = getattr(nn, case.cell + "Cell")(case.input_size, case.H, dtype=dtype).to(case.device)
        ours = getattr(pyrnn, case.cell + "Cell")(case.input_size, case.H, dtype=dtype).to(case.device)
        ours.load_state_dict(ref.state_dict())
        x = torch.randn(case.T, case.B, case.input_size, dtype=dtype, generator=torch.Generator().manual_seed(0))
        x = x.to(case.device)
        return ref, ours, lambda: x.requires_grad_(case.train)
    kw = dict(num_layers=case.layers, bidirectional=case.bidirectional, dtype=dtype)
    if case.proj:
        kw["proj_size"] = case.proj
    ref = getattr(nn, case.cell)(case.input_size, case.H, **kw).to(case.device)
    ours = getattr(pyrnn, case.cell)(case.input_size, case.H, **kw).to(case.device)
    ours.load_state_dict(ref.state_dict())
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(case.T, case.B, case.input_size, dtype=dtype, generator=gen).to(case.device)
    if case.packed:
        lengths = torch.linspace(case.T, max(1, case.T // 2), case.B).long()
        make_input = lambda: pack_padded_sequence(x.requires_grad_(case.train), lengths)  # noqa: E731
    else:
        make_input = lambda: x.requires_grad_(case.train)  # noqa: E731
    return ref, ours, make_input


def _cell_loop(cell: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A cell driven from Python over x: [T, B, I], as streaming code uses one. Returns the sum of the outputs."""
    state, total = None, 0
    for t in range(x.shape[0]):
        state = cell(x[t], state)
        total = total + (state[0] if isinstance(state, tuple) else state).sum()
    return total


def _step(module: nn.Module, make_input: Callable, train: bool, device: str, penalty: bool = False,
          input_grad: bool = False) -> Callable[[], None]:
    sync = torch.cuda.synchronize if device != "cpu" else (lambda: None)
    if isinstance(module, nn.RNNCellBase):
        def run():
            module.zero_grad(set_to_none=True)
            with torch.set_grad_enabled(train):
                total = _cell_loop(module, make_input())
            if train:
                total.backward()
            sync()
        return run
    if penalty:
        def run():  # loss + ||dloss/dx||^2, as WGAN-GP critics and input-gradient regularisers train
            module.zero_grad(set_to_none=True)
            x = make_input()
            out, _ = module(x)
            loss = out.square().mean()
            (dx,) = torch.autograd.grad(loss, x, create_graph=True)
            (loss + dx.square().sum()).backward()
            sync()
    elif input_grad:
        def run():  # dL/dx only, as saliency maps and adversarial attacks (FGSM, PGD) take it: no weight gradients
            x = make_input()
            out, _ = module(x)
            torch.autograd.grad(out.sum(), x)
            sync()
    elif train:
        def run():
            module.zero_grad(set_to_none=True)
            out, _ = module(make_input())
            data = out.data if hasattr(out, "batch_sizes") else out
            data.sum().backward()
            sync()
    else:
        def run():
            with torch.no_grad():
                module(make_input())
            sync()
    return run


def time_case(case: Case, min_time: float = 1.0, min_samples: int = 5, max_samples: int = 50) -> Result:
    ref, ours, make_input = _build(case)
    fns = {name: _step(module, make_input, case.train, case.device, case.penalty, case.input_grad)
           for name, module in (("torch", ref), ("pyrnn", ours))}
    for fn in fns.values():  # warm-up: allocations, weight packing, thread start
        fn()
    times = {"torch": [], "pyrnn": []}
    start = time.perf_counter()
    order = list(fns)
    while True:
        # Interleaved, so noise hits both alike, and in alternating order (torch pyrnn, pyrnn torch, ...): a call
        # right after the other implementation's runs slower than one right after its own (caches and threads
        # left as the other one used them; measured up to 35% for pyrnn and 9% for torch.nn, most at B = 1),
        # so each side gets half its samples each way rather than pyrnn always following torch.nn.
        for name in order:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
        order.reverse()
        n = len(times["torch"])
        if n >= max_samples or (n >= min_samples and time.perf_counter() - start > min_time):
            break
    t_ms = statistics.median(times["torch"]) * 1e3
    p_ms = statistics.median(times["pyrnn"]) * 1e3
    fl = case.flops()
    return Result(case, t_ms, p_ms, t_ms / p_ms, fl / p_ms / 1e6, fl / t_ms / 1e6, n)


def apart_grid() -> list[Case]:
    """Reported apart from the standard grid and left out of its summary: gradient-penalty steps
    (create_graph=True; the path pyrnn runs in torch's ops, pyrnn/composite.py, not in its kernels), and gradients
    with respect to the input alone."""
    return ([Case(cell, 35, 20, 200, layers=2, penalty=True) for cell in GATES]
            + [Case(cell, 100, 64, 256, input_grad=True) for cell in GATES])


def standard_grid(quick: bool = False) -> list[Case]:
    cases: list[Case] = []
    cells = ["LSTM", "GRU", "RNN"]
    for cell in cells:
        cases += [
            Case(cell, 100, 64, 256, train=True),
            Case(cell, 100, 64, 256, train=False),
            Case(cell, 35, 20, 200, layers=2, train=True),
            Case(cell, 200, 1, 256, train=True),
            Case(cell, 200, 1, 256, train=False),
        ]
        if not quick:
            cases += [
                Case(cell, 100, 64, 512, train=False),
                Case(cell, 200, 1, 128, train=True),
                Case(cell, 50, 32, 128, dtype="float64", train=True),
                Case(cell, 50, 32, 128, packed=True, train=True),
                Case(cell, 50, 32, 128, bidirectional=True, train=True),
            ]
    if not quick:
        cases += [Case("LSTM", 50, 32, 256, proj=128, train=True), Case("LSTM", 50, 32, 256, proj=128, train=False)]
        for cell in cells:  # the cells, one Python call per step
            cases += [Case(cell, 20, b, 256, train=train, cells=True) for b in (1, 32) for train in (False, True)]
    if torch.cuda.is_available():  # the GPU grid of issue 5: cuDNN's persistent path is off for most of these
        for cell in ("LSTM", "GRU"):
            for dtype in ("float32", "bfloat16"):
                cases += [Case(cell, 1024 if not quick else 256, 16, 1024, dtype=dtype, device="cuda"),
                          Case(cell, 256, 1, 512, dtype=dtype, device="cuda"),
                          Case(cell, 256, 16, 512, dtype=dtype, device="cuda"),
                          Case(cell, 256, 16, 256, layers=2, bidirectional=True, dtype=dtype, device="cuda")]
        cases += [Case("RNN", 256, 16, 512, device="cuda"), Case("LSTM", 256, 16, 512, dtype="float16", device="cuda"),
                  Case("LSTM", 100, 64, 256, device="cuda"), Case("LSTM", 100, 64, 256, train=False, device="cuda")]
    return cases


def sweep_grid() -> list[Case]:
    """For --plot: speedup against B at H=256 and against H at B=32 (T=50, float32), every cell and mode."""
    cases = []
    for cell in GATES:
        for train in (False, True):
            cases += [Case(cell, 50, b, 256, train=train, sweep="B") for b in (1, 4, 16, 64)]
            cases += [Case(cell, 50, 32, h, train=train, sweep="H") for h in (64, 128, 256, 512)]
    return cases


def peers() -> dict:
    """Other RNN libraries timed on equal work when installed; both are CUDA-only."""
    import importlib.util

    notes = {}
    for name in ("flashrnn", "haste_pytorch"):
        if importlib.util.find_spec(name) is None:
            notes[name] = "not installed: skipped"
        elif not torch.cuda.is_available():
            notes[name] = "installed, but CUDA-only and no GPU here: skipped"
        elif name == "flashrnn":
            notes[name] = "installed: timed on the single-layer unidirectional GPU cases (column flashrnn ms)"
        else:
            notes[name] = "installed: comparison not implemented"
    return notes


# FlashRNN's function name and gate counts (external input, recurrent, biases) per cell
FLASHRNN_FUNCTIONS = {"LSTM": ("lstm", 4, 4, 4), "GRU": ("gru", 3, 3, 4), "RNN": ("elman", 1, 1, 1)}


def time_flashrnn(case: Case, min_time: float, min_samples: int = 5) -> dict:
    """FlashRNN (pip package flashrnn) on the same work as the case: the input projection by one nn.Linear
    over all steps, then flashrnn() with one head of dimension H, forward (and backward of the outputs'
    sum for training). Its CUDA kernels compile on first use, outside the timing. Returns {"ms", "backend"}
    (plus "not_timed": why a faster backend failed), or {"error"}; layers, directions, packing and projections other than one plain layer are not timed."""
    if case.device == "cpu" or case.layers != 1 or case.bidirectional or case.packed or case.proj or case.cells:
        return {}
    import flashrnn

    dtype = getattr(torch, case.dtype)
    function, g_in, g_rec, g_bias = FLASHRNN_FUNCTIONS[case.cell]
    H, B, T = case.H, case.B, case.T
    gen = torch.Generator().manual_seed(0)
    lin = nn.Linear(case.input_size, g_in * H, dtype=dtype).to(case.device)
    R = (torch.randn(g_rec, 1, H, H, generator=gen) * H ** -0.5).to(case.device, dtype).requires_grad_(case.train)
    b = torch.zeros(g_bias, 1, H, device=case.device, dtype=dtype, requires_grad=case.train)
    x = torch.randn(B, T, case.input_size, generator=gen).to(case.device, dtype)
    errors = []
    for backend in ("cuda_fused", "cuda"):
        def run():
            lin.zero_grad(set_to_none=True)
            with torch.set_grad_enabled(case.train):
                wx = lin(x).view(B, T, g_in, 1, H)
                states, _ = flashrnn.flashrnn(wx, R, b, function=function, backend=backend, dtype=case.dtype)
                if case.train:
                    states[0].float().sum().backward()
            torch.cuda.synchronize()

        try:
            run()  # compiles its kernels for this shape
        except Exception as exc:  # noqa: BLE001 - an unsupported shape or build: reported, not fatal
            errors.append(f"{backend}: {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}")
            continue
        times, start = [], time.perf_counter()
        while len(times) < min_samples or time.perf_counter() - start < min_time:
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        result = {"ms": statistics.median(times) * 1e3, "backend": backend}
        if errors:  # why a faster backend was not timed (e.g. its build failed)
            result["not_timed"] = "; ".join(errors)
        return result
    return {"error": "; ".join(errors)}


def machine_info() -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyrnn": pyrnn.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "backends": pyrnn.backends(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def _progress(i: int, n: int, label: str) -> None:
    if sys.stderr.isatty():
        width = 30
        done = int(width * i / n)
        sys.stderr.write(f"\r[{'#' * done}{'.' * (width - done)}] {i}/{n} {label[:60]:60s}")
        sys.stderr.flush()
    else:
        sys.stderr.write(f"[{i + 1}/{n}] {label}\n")


def fma_peak_gflops(tries: int = 5) -> float:
    """This machine's float32 FMA throughput on torch.get_num_threads() threads, measured now: the best of a
    few short runs, since one run can lose its second core to a neighbour on a shared machine (one report
    printed half the peak and so >100% of it)."""
    from ._ext import cpu_kernels

    return max(cpu_kernels().fma_peak_gflops(torch.get_num_threads(), 20_000_000) for _ in range(tries))


def tune_malloc() -> bool:
    """Raise glibc's mmap and trim thresholds for this process, so the large per-call workspaces of both
    torch.nn and pyrnn are reused from the heap instead of being page-faulted in on every call (what a tuned
    deployment gets from these settings or from jemalloc/tcmalloc). Returns False where glibc is absent."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))


def _peak_share(r: Result, peak: float) -> str:
    """pyrnn's GFLOP/s as a share of the CPU's measured FMA peak; GPU cases have no such peak here."""
    return f"{100 * r.pyrnn_gflops / peak:.0f}%" if r.case.device == "cpu" else "n/a (GPU)"


def format_table(results: list[Result], peak: Optional[float] = None) -> str:
    head = f"{'case':48s} {'torch.nn ms':>12s} {'pyrnn ms':>10s} {'speedup':>8s} {'pyrnn GF/s':>11s} {'torch GF/s':>11s}"
    head += f" {'pyrnn %peak':>12s}" if peak else ""
    lines = [head, "-" * len(head)]
    for r in results:
        gflops = f"{r.pyrnn_gflops:11.1f} {r.torch_gflops:11.1f}" if r.case.flops() else f"{'n/a':>11s} {'n/a':>11s}"
        line = f"{r.case.label():48s} {r.torch_ms:12.2f} {r.pyrnn_ms:10.2f} {r.ratio:7.2f}x {gflops}"
        lines.append(line + (f" {_peak_share(r, peak):>12s}" if peak else ""))
    ratios = [r.ratio for r in results]
    if ratios and not any(r.case.apart for r in results):
        lines.append("-" * len(head))
        geo = statistics.geometric_mean(ratios)
        lines.append(f"median speedup {statistics.median(ratios):.2f}x, geometric mean {geo:.2f}x over {len(ratios)} cases")
    return "\n".join(lines)


def markdown_table(results: list[Result], peak: Optional[float] = None) -> str:
    """The report as a Markdown table (what BENCHMARKS.md quotes)."""
    head = "| case | torch.nn ms | pyrnn ms | speedup | pyrnn GFLOP/s | torch GFLOP/s |" + (" pyrnn %peak |" if peak else "")
    rule = "|---|---:|---:|---:|---:|---:|" + ("---:|" if peak else "")
    lines = [head, rule]
    for r in results:
        if r.case.sweep or r.case.apart:
            continue
        line = (f"| {' '.join(r.case.label().split())} | {r.torch_ms:.2f} | {r.pyrnn_ms:.2f} | {r.ratio:.2f}x | "
                f"{r.pyrnn_gflops:.0f} | {r.torch_gflops:.0f} |")
        lines.append(line + (f" {_peak_share(r, peak)} |" if peak else ""))
    ratios = [r.ratio for r in results if not r.case.sweep]
    if ratios:
        lines.append("")
        lines.append(f"Median speedup {statistics.median(ratios):.2f}x, geometric mean "
                     f"{statistics.geometric_mean(ratios):.2f}x over {len(ratios)} cases.")
    return "\n".join(lines)


def plot(results: list[Result], path: str) -> None:
    """PNG of speedup against batch size and against hidden size, one line per cell and mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, key, label in ((axes[0], "B", "batch size B"), (axes[1], "H", "hidden size H")):
        series: dict = {}
        for r in results:
            c = r.case
            if c.sweep != key:
                continue
            series.setdefault(f"{c.cell} {'train' if c.train else 'infer'}", []).append((getattr(c, key), r.ratio))
        for name, points in sorted(series.items()):
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("speedup: torch.nn time / pyrnn time")
    axes[1].legend(fontsize=8)
    axes[0].set_title("H = 256, T = 50")
    axes[1].set_title("B = 32, T = 50")
    fig.suptitle("pyrnn vs torch.nn (median of interleaved runs, float32)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pyrnn.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller grid")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--min-time", type=float, default=1.0, help="seconds of timing per case, at least")
    p.add_argument("--cell", action="append", choices=list(GATES), help="only these cells")
    p.add_argument("--tune-malloc", action="store_true",
                   help="raise glibc's mmap/trim thresholds first (applies to torch.nn and pyrnn alike)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--markdown", metavar="PATH", help="also write the table as Markdown")
    p.add_argument("--plot", metavar="PATH", help="also write a PNG of the speedups (needs matplotlib)")
    p.add_argument("--gpu-only", action="store_true", help="only the GPU cases (needs a CUDA GPU)")
    p.add_argument("--flashrnn-cases", type=int, default=None, metavar="N",
                   help="time FlashRNN (where installed) on the first N eligible cases only: it compiles per shape")
    p.add_argument("--backend", choices=pyrnn.backend.BACKENDS, default="auto",
                   help="the kernels pyrnn runs (pyrnn.set_backend); default: chosen by device")
    args = p.parse_args(argv)
    pyrnn.set_backend(args.backend)
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = [c for c in standard_grid(args.quick) if not args.cell or c.cell in args.cell]
    if args.gpu_only:
        cases = [c for c in cases if c.device != "cpu"]
    info = machine_info()
    info["backend"] = args.backend
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cudnn_rnn_tf32"] = pyrnn.ops._cudnn_rnn_uses_tf32()  # both sides' float32 GEMMs follow it
    info["malloc_tuned"] = tune_malloc() if args.tune_malloc else False
    info["fma_peak_gflops"] = peak = fma_peak_gflops()
    print(f"pyrnn {info['pyrnn']} vs torch {info['torch']} on {info.get('cpu', info['machine'])}, "
          f"{info['threads']} threads, CPU kernels: {info['backends']['cpu'].get('isa')} "
          f"({info['backends']['cpu'].get('threads')} threads, GEMMs: {info['backends']['cpu'].get('gemm')}), "
          f"float32 FMA peak {peak:.0f} GFLOP/s, "
          f"malloc {'tuned' if info['malloc_tuned'] else 'glibc defaults'}")
    results = []
    for i, case in enumerate(cases):
        _progress(i, len(cases), case.label())
        results.append(time_case(case, min_time=args.min_time))
        if not sys.stderr.isatty():  # logs keep every finished case, also when a run is cut short
            r = results[-1]
            sys.stderr.write(f"    torch {r.torch_ms:.3f} ms, pyrnn {r.pyrnn_ms:.3f} ms, {r.ratio:.2f}x\n")
    apart = []
    apart_cases = [] if args.quick or args.gpu_only else [
        c for c in apart_grid() if not args.cell or c.cell in args.cell]
    for case in apart_cases:
        _progress(len(cases) + len(apart), len(cases) + len(apart_cases), case.label())
        apart.append(time_case(case, min_time=args.min_time))
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    print(format_table(results, peak))
    penalties = [r for r in apart if r.case.penalty]
    if penalties:
        print("\nGradient-penalty steps (create_graph=True; pyrnn runs these in torch's ops, pyrnn/composite.py, "
              "not in its kernels):")
        print(format_table(penalties))
    input_grads = [r for r in apart if r.case.input_grad]
    if input_grads:
        print("\nGradients with respect to the input alone (torch.autograd.grad(out.sum(), x): saliency maps, "
              "adversarial examples):")
        print(format_table(input_grads))
    results += apart
    info["peers"] = peers()
    for name, note in info["peers"].items():
        print(f"peer {name}: {note}")
    if info["peers"].get("flashrnn", "").startswith("installed: timed"):
        print(f"{'case (FlashRNN on equal work)':48s} {'flashrnn ms':>12s} {'pyrnn ms':>10s} {'pyrnn speedup':>14s}")
        timed = 0
        for r in results:
            if args.flashrnn_cases is not None and timed >= args.flashrnn_cases:
                break
            fr = time_flashrnn(r.case, args.min_time)
            timed += bool(fr)
            if fr:
                r.extra["flashrnn"] = fr
                shown = (f"{fr['ms']:12.2f} {r.pyrnn_ms:10.2f} {fr['ms'] / r.pyrnn_ms:13.2f}x ({fr['backend']})"
                         if "ms" in fr else f"failed: {fr['error']}")
                print(f"{r.case.label():48s} {shown}")
    if args.plot:
        sweep = sweep_grid()
        for i, case in enumerate(sweep):
            _progress(i, len(sweep), "plot sweep: " + case.label())
            results.append(time_case(case, min_time=min(args.min_time, 0.3)))
        if sys.stderr.isatty():
            sys.stderr.write("\n")
        plot(results, args.plot)
        print(f"plot: {args.plot}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "results": [asdict(r) for r in results]}, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown_table(results, peak) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
