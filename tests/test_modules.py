"""pyrnn.LSTM / GRU / RNN against torch.nn on a random grid of every option: outputs, final states and every
gradient (input, h0, c0, all weights) under random upstream gradients on all outputs, with torch's
recurrent kernels forbidden during the pyrnn calls."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import pyrnn
from pyrnn import _C
from conftest import assert_close, forbid_torch_rnn

MODULES = {"LSTM": (nn.LSTM, pyrnn.LSTM), "GRU": (nn.GRU, pyrnn.GRU), "RNN": (nn.RNN, pyrnn.RNN)}


@dataclass
class Config:
    cell: str
    input_size: int
    hidden_size: int
    num_layers: int
    bias: bool
    batch_first: bool
    dropout: float
    bidirectional: bool
    proj_size: int
    nonlinearity: str
    T: int
    B: int
    packed: str  # "no", "sorted", "unsorted"
    unbatched: bool
    with_hx: bool
    training: bool
    dtype: torch.dtype
    seed: int

    def kwargs(self):
        kw = dict(
            input_size=self.input_size,
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            bias=self.bias,
            batch_first=self.batch_first,
            dropout=self.dropout,
            bidirectional=self.bidirectional,
            dtype=self.dtype,
        )
        if self.cell == "LSTM":
            kw["proj_size"] = self.proj_size
        if self.cell == "RNN":
            kw["nonlinearity"] = self.nonlinearity
        return kw

    def __str__(self):
        d = "f64" if self.dtype == torch.float64 else "f32"
        return (
            f"{self.cell}-I{self.input_size}-H{self.hidden_size}-P{self.proj_size}-L{self.num_layers}-T{self.T}-"
            f"B{self.B}-{'bi' if self.bidirectional else 'uni'}-bias{int(self.bias)}-bf{int(self.batch_first)}-"
            f"do{self.dropout}-{'train' if self.training else 'eval'}-pk{self.packed}-ub{int(self.unbatched)}-"
            f"hx{int(self.with_hx)}-{self.nonlinearity}-{d}-s{self.seed}"
        )


def random_configs(n: int, seed: int) -> list[Config]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        cell = rng.choice(["LSTM", "GRU", "RNN"])
        hidden = rng.choice([1, 3, 8, 33])
        packed = rng.choice(["no", "no", "sorted", "unsorted"])
        out.append(
            Config(
                cell=cell,
                input_size=rng.choice([1, 4, 7]),
                hidden_size=hidden,
                num_layers=rng.choice([1, 1, 2, 3]),
                bias=rng.random() < 0.8,
                batch_first=rng.random() < 0.5,
                dropout=rng.choice([0.0, 0.0, 0.4]),
                bidirectional=rng.random() < 0.5,
                proj_size=rng.choice([0, 0, *range(1, hidden)]) if cell == "LSTM" and hidden > 1 else 0,
                nonlinearity=rng.choice(["tanh", "relu"]) if cell == "RNN" else "tanh",
                T=rng.choice([1, 2, 5, 9]),
                B=rng.choice([1, 3, 4]),
                packed=packed,
                unbatched=packed == "no" and rng.random() < 0.2,
                with_hx=rng.random() < 0.6,
                training=rng.random() < 0.6,
                dtype=rng.choice([torch.float32, torch.float64]),
                seed=i,
            )
        )
    return out


def make_pair(cfg: Config):
    torch_cls, pyrnn_cls = MODULES[cfg.cell]
    with pytest.warns(UserWarning) if cfg.dropout > 0 and cfg.num_layers == 1 else _nullcontext():
        ref = torch_cls(**cfg.kwargs())
    ours = pyrnn_cls(**cfg.kwargs())
    ours.load_state_dict(ref.state_dict())
    ref.train(cfg.training)
    ours.train(cfg.training)
    return ref, ours


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def make_inputs(cfg: Config, gen: torch.Generator):
    D = 2 if cfg.bidirectional else 1
    h_size = cfg.proj_size or cfg.hidden_size
    opts = dict(dtype=cfg.dtype, generator=gen)
    x = torch.randn(cfg.T, cfg.B, cfg.input_size, **opts)
    lengths = None
    if cfg.packed != "no":
        lengths = torch.randint(1, cfg.T + 1, (cfg.B,), generator=gen)
        lengths[torch.randint(0, cfg.B, (1,), generator=gen)] = cfg.T  # the longest row spans T
        if cfg.packed == "sorted":
            lengths = lengths.sort(descending=True).values
    if cfg.batch_first:
        x = x.transpose(0, 1).contiguous()
    if cfg.unbatched:
        x = x[0] if cfg.batch_first else x[:, 0]
    batch = () if cfg.unbatched else (cfg.B,)
    hx = None
    if cfg.with_hx:
        h0 = torch.randn(cfg.num_layers * D, *batch, h_size, **opts)
        hx = h0
        if cfg.cell == "LSTM":
            hx = (h0, torch.randn(cfg.num_layers * D, *batch, cfg.hidden_size, **opts))
    return x, lengths, hx


def _leaves(x, hx):
    x = x.clone().requires_grad_(True)
    if hx is None:
        return x, None
    if isinstance(hx, tuple):
        return x, tuple(h.clone().requires_grad_(True) for h in hx)
    return x, hx.clone().requires_grad_(True)


def _forward(module, cfg, x, lengths, hx, forbid):
    """The module on x (packed where cfg says), with torch's recurrent kernels raising if forbid. Returns the
    output's data and the final states as one list."""
    inp = x
    if lengths is not None:
        inp = pack_padded_sequence(x, lengths, batch_first=cfg.batch_first, enforce_sorted=cfg.packed == "sorted")
    if forbid:
        with forbid_torch_rnn():
            out, hidden = module(inp, hx)
    else:
        out, hidden = module(inp, hx)
    out_t = out.data if isinstance(out, PackedSequence) else out
    return [out_t, *(hidden if isinstance(hidden, tuple) else (hidden,))]


def run(module, cfg, x, lengths, hx, upstream_seed, dropout_seed, forbid=False):
    x, hx = _leaves(x, hx)
    torch.manual_seed(dropout_seed)
    results = _forward(module, cfg, x, lengths, hx, forbid)
    gen = torch.Generator().manual_seed(upstream_seed)
    loss = sum((r * torch.randn(r.shape, dtype=r.dtype, generator=gen).to(r.device)).sum() for r in results)
    leaves = [x, *(() if hx is None else (hx if isinstance(hx, tuple) else (hx,))), *module.parameters()]
    if forbid:
        with forbid_torch_rnn():
            grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    else:
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    names = ["x", *[f"hx[{i}]" for i in range(len(leaves) - 1 - len(list(module.parameters())))]]
    names += [n for n, _ in module.named_parameters()]
    return results, dict(zip(names, grads))


CONFIGS = random_configs(320, seed=2026)


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_matches_torch_nn(cfg: Config):
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    ref, ours = make_pair(cfg)
    x, lengths, hx = make_inputs(cfg, gen)
    exp_out, exp_grads = run(ref, cfg, x, lengths, hx, cfg.seed, cfg.seed + 1)
    got_out, got_grads = run(ours, cfg, x, lengths, hx, cfg.seed, cfg.seed + 1, forbid=True)
    for i, (g, e) in enumerate(zip(got_out, exp_out)):
        assert g.shape == e.shape, f"output {i} shape"
        assert_close(g, e, cfg.dtype, f"output {i}")
    assert got_grads.keys() == exp_grads.keys()
    for name in exp_grads:
        assert_close(got_grads[name], exp_grads[name], cfg.dtype, f"grad {name}")


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("split", ["units", "rows"])
def test_threaded_path_matches(cell, threads, split, monkeypatch):
    """Force the multi-threaded kernels on small odd sizes: hidden units split across threads (unit panels that
    do not divide evenly are shared by batch rows: at hidden 77, 5 panels of 16 units, the second of three
    threads gets rows of a panel, a whole one and rows of another), or batch rows split (plain batches, and
    packed ones whose rows the threads share out by their lengths)."""
    old, old_rows = _C.get_parallel_threshold(), _C.get_row_split_min_rows()
    _C.set_parallel_threshold(1)
    _C.set_row_split_min_rows(1 if split == "rows" else 1 << 40)
    try:
        torch.set_num_threads(threads)
        sizes = [(33, 0), (47, 0), (77, 0), (40, 17)] if cell == "LSTM" else [(33, 0), (47, 0), (77, 0)]
        for (hidden, proj), packed in itertools.product(sizes, ["unsorted", "no"] if split == "rows" else ["unsorted"]):
            cfg = Config(cell, 5, hidden, 2, True, False, 0.0, True, proj, "relu" if packed == "no" else "tanh", 7,
                         6, packed, False, True, True, torch.float64, hidden)
            ref, ours = make_pair(cfg)
            x, lengths, hx = make_inputs(cfg, torch.Generator().manual_seed(hidden))
            exp_out, exp_grads = run(ref, cfg, x, lengths, hx, 1, 2)
            got_out, got_grads = run(ours, cfg, x, lengths, hx, 1, 2, forbid=True)
            for g, e in zip(got_out, exp_out):
                assert_close(g, e, cfg.dtype, "output")
            for name in exp_grads:
                assert_close(got_grads[name], exp_grads[name], cfg.dtype, f"grad {name}")
    finally:
        _C.set_parallel_threshold(old)
        _C.set_row_split_min_rows(old_rows)
        torch.set_num_threads(2)


def _inference(module, cfg, x, lengths, hx, forbid=False):
    with torch.no_grad():
        return _forward(module, cfg, x, lengths, hx, forbid)


@pytest.mark.parametrize("split", ["units", "rows"])
def test_inference_matches_torch_nn(split):
    """Inference (no_grad) keeps no workspace; the LSTM keeps only a two-step ring of cell states, addressed by
    batch row and step parity: packed batches (rows leave the ring at different steps, the reverse direction
    joins them late), projections, several layers, one step, threads split by units or rows."""
    old, old_rows = _C.get_parallel_threshold(), _C.get_row_split_min_rows()
    _C.set_parallel_threshold(1)
    _C.set_row_split_min_rows(1 if split == "rows" else 1 << 40)
    try:
        for i, cfg in enumerate(c for c in random_configs(200, seed=77) if c.dropout == 0.0):
            if i >= 60:
                break
            ref, ours = make_pair(cfg)
            x, lengths, hx = make_inputs(cfg, torch.Generator().manual_seed(cfg.seed))
            for g, e in zip(_inference(ours, cfg, x, lengths, hx, forbid=True), _inference(ref, cfg, x, lengths, hx)):
                assert g.shape == e.shape
                assert_close(g, e, cfg.dtype, f"{cfg} inference")
    finally:
        _C.set_parallel_threshold(old)
        _C.set_row_split_min_rows(old_rows)


@pytest.mark.parametrize("isa", _C.available_isas())
def test_every_instruction_set(isa):
    """Each compiled instruction-set variant gives torch.nn's results."""
    try:
        _C.set_isa(isa)
        for cell in ["LSTM", "GRU", "RNN"]:
            cfg = Config(cell, 6, 37, 2, True, True, 0.0, True, 5 if cell == "LSTM" else 0, "relu", 6, 5, "no",
                         False, True, True, torch.float32, 3)
            ref, ours = make_pair(cfg)
            x, lengths, hx = make_inputs(cfg, torch.Generator().manual_seed(3))
            exp_out, exp_grads = run(ref, cfg, x, lengths, hx, 1, 2)
            got_out, got_grads = run(ours, cfg, x, lengths, hx, 1, 2, forbid=True)
            for g, e in zip(got_out, exp_out):
                assert_close(g, e, cfg.dtype, f"{isa} output")
            for name in exp_grads:
                assert_close(got_grads[name], exp_grads[name], cfg.dtype, f"{isa} grad {name}")
    finally:
        _C.set_isa("auto")


def test_zero_batch_is_accepted():
    for cls in (pyrnn.LSTM, pyrnn.GRU, pyrnn.RNN):
        m = cls(4, 6, num_layers=2, bidirectional=True)
        out, hidden = m(torch.randn(3, 0, 4))
        assert out.shape == (3, 0, 12)
        h = hidden[0] if isinstance(hidden, tuple) else hidden
        assert h.shape == (4, 0, 6)


@pytest.mark.parametrize("gemm", ["pyrnn", "torch"])
def test_larger_sizes_float32(gemm, monkeypatch):
    """Sizes the benchmarks use, so multi-threaded blocking with full panels is covered; the large GEMMs in
    pyrnn's and in torch's (MKL), whichever this CPU would choose (pyrnn.set_cpu_gemm)."""
    torch.manual_seed(0)
    monkeypatch.setattr(pyrnn.backend, "_cpu_gemm", gemm)
    for cell in ["LSTM", "GRU", "RNN"]:
        cfg = Config(cell, 64, 130, 2, True, False, 0.0, True, 0, "tanh", 12, 16, "no", False, True, True,
                     torch.float32, 0)
        ref, ours = make_pair(cfg)
        x, lengths, hx = make_inputs(cfg, torch.Generator().manual_seed(0))
        exp_out, exp_grads = run(ref, cfg, x, lengths, hx, 1, 2)
        got_out, got_grads = run(ours, cfg, x, lengths, hx, 1, 2, forbid=True)
        for g, e in zip(got_out, exp_out):
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)
        for name in exp_grads:
            torch.testing.assert_close(got_grads[name], exp_grads[name], rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("cell,kw", [
    ("RNN", {}), ("RNN", {"nonlinearity": "relu", "num_layers": 2}), ("RNN", {"packed": True}),
    ("GRU", {}), ("GRU", {"num_layers": 2, "packed": True}), ("LSTM", {"bidirectional": True}),
    ("LSTM", {"proj_size": 3}), ("LSTM", {"dtype": torch.float64}),
], ids=str)
def test_outputs_changed_in_place(cell, kw):
    """Where torch.nn keeps no reference to the layer's output for its backward (RNN, GRU, several LSTM paths),
    a caller may change it in place before the backward (out += skip): pyrnn allows the same, with the same
    gradients (its RNN reads each step's output from its own workspace, not from the caller's y)."""
    kw = dict(kw)
    packed, dtype = kw.pop("packed", False), kw.pop("dtype", torch.float32)
    torch.manual_seed(0)
    ref = MODULES[cell][0](5, 6, dtype=dtype, **kw)
    ours = MODULES[cell][1](5, 6, dtype=dtype, **kw)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(4, 3, 5, dtype=dtype, requires_grad=True)

    def run(module):
        inp = pack_padded_sequence(x, [4, 3, 1]) if packed else x
        out, state = module(inp)
        data = out.data if packed else out
        data.mul_(3.0).add_(1.0)
        upstream = torch.randn(data.shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
        return torch.autograd.grad((data * upstream).sum(), [x, *module.parameters()])

    try:
        expected = run(ref)
    except RuntimeError as exc:  # this torch.nn path saves its output (oneDNN's LSTM): nothing to match
        pytest.skip(f"torch.nn does not allow it here either: {exc}")
    with forbid_torch_rnn():
        got = run(ours)
    for g, e in zip(got, expected):
        assert_close(g, e, dtype, "grad")


@pytest.mark.parametrize("cell,kw", [
    ("LSTM", dict(num_layers=2, bidirectional=True, proj_size=3)), ("LSTM", {"packed": True}),
    ("GRU", dict(num_layers=2)), ("GRU", {"bias": False, "packed": True}),
    ("RNN", dict(nonlinearity="relu", bidirectional=True)),
], ids=str)
@pytest.mark.parametrize("wanted", ["input", "input_h0", "w_hh", "biases", "frozen_ih", "backward_inputs"])
def test_partial_gradients(cell, kw, wanted, monkeypatch):
    """Gradients of a subset of what requires grad: torch.autograd.grad with respect to the input alone (saliency,
    adversarial examples, gradient penalties), or some weights, backward(inputs=...), frozen weights. Same values
    as torch.nn's, and the layers skip the weight-gradient GEMMs nobody asked for, as torch.nn's nodes do."""
    from pyrnn import ops

    kw = dict(kw)
    packed = kw.pop("packed", False)
    torch.manual_seed(0)
    ref = MODULES[cell][0](5, 7, dtype=torch.float64, **kw)
    ours = MODULES[cell][1](5, 7, dtype=torch.float64, **kw)
    ours.load_state_dict(ref.state_dict())
    D = 2 if kw.get("bidirectional") else 1
    h_size = (kw.get("num_layers", 1) * D, 3, kw.get("proj_size", 0) or 7)
    x = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(h_size, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(4, 3, D * h_size[2], dtype=torch.float64)

    def run(module):
        params = dict(module.named_parameters())
        if wanted == "frozen_ih":
            for name, p in params.items():
                p.requires_grad_(not name.startswith("weight_ih"))
        inp = pack_padded_sequence(x, [4, 3, 1]) if packed else x
        hx = (h0, torch.zeros(h_size[0], 3, 7, dtype=torch.float64)) if cell == "LSTM" else h0
        out, _ = module(inp, hx)
        y = out.data if packed else out
        loss = (y * (upstream.flatten(0, 1)[: y.shape[0]] if packed else upstream)).sum()
        targets = {"input": [x], "input_h0": [x, h0], "w_hh": [p for n, p in params.items() if "weight_hh" in n],
                   "biases": [p for n, p in params.items() if "bias" in n],
                   "frozen_ih": [x, *(p for p in params.values() if p.requires_grad)],
                   "backward_inputs": [params["weight_ih_l0"], x]}[wanted]
        if not targets:
            return []
        if wanted == "backward_inputs":
            loss.backward(inputs=targets)
            grads = [t.grad.clone() for t in targets]
            for t in targets:
                t.grad = None
            return grads
        return torch.autograd.grad(loss, targets)

    expected = run(ref)
    gemms = []
    real_gemm = ops._IMPLS[ops.gemm]
    monkeypatch.setitem(ops._IMPLS, ops.gemm, lambda a, *rest: gemms.append(tuple(a.shape)) or real_gemm(a, *rest))
    with forbid_torch_rnn():
        got = run(ours)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert_close(g, e, torch.float64, wanted)
    rows = 8 if packed else 12  # N, all steps' rows: a weight gradient is dG^T [G*H, N] @ h [N, H]
    weight_gemms = [a for a in gemms if a[1] == rows and a[0] != rows]
    assert bool(weight_gemms) == (wanted in ("w_hh", "frozen_ih", "backward_inputs")), "weight gradients unasked"


@pytest.mark.parametrize("cell", list(MODULES))
@pytest.mark.parametrize("reentrant", [True, False])
def test_activation_checkpointing(cell, reentrant):
    """torch.utils.checkpoint around a layer (recomputed in the backward): torch.nn's gradients; without
    reentrancy also torch.autograd.grad with respect to the input and a gradient penalty through it."""
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    ref = MODULES[cell][0](5, 7, num_layers=2, dtype=torch.float64)
    ours = MODULES[cell][1](5, 7, num_layers=2, dtype=torch.float64)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(6, 3, 5, dtype=torch.float64, requires_grad=True)

    def run(module):
        module.zero_grad(set_to_none=True)
        out = checkpoint(lambda inp: module(inp)[0], x, use_reentrant=reentrant)
        if reentrant:  # (torch's reentrant checkpoint refuses torch.autograd.grad)
            out.square().sum().backward()
            grads = [x.grad.clone(), *(p.grad for p in module.parameters())]
            x.grad = None
            return grads
        (dx,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
        dx.square().sum().backward()
        return [dx.detach(), *(p.grad for p in module.parameters())]

    expected = run(ref)
    with forbid_torch_rnn():
        got = run(ours)
    for g, e in zip(got, expected):
        assert_close(g, e, torch.float64, f"checkpoint (use_reentrant={reentrant})")


@pytest.mark.parametrize("name,kw,packed", [
    ("LSTM", dict(num_layers=2, bidirectional=True, proj_size=2), False), ("LSTM", {}, True),
    ("GRU", dict(batch_first=True), False), ("RNN", dict(nonlinearity="relu", bidirectional=True), True),
    ("LSTMCell", {}, False), ("GRUCell", {}, False), ("RNNCell", {}, False),
], ids=str)
def test_meta_device_gives_torch_nn_shapes(name, kw, packed):
    """Meta tensors (deferred initialisation, model summaries): outputs and the input's gradient with torch.nn's
    shapes, no kernel touched (pyrnn's fake implementations serve them)."""
    def shapes(lib):
        m = getattr(lib, name)(3, 5, device="meta", **kw)
        x = torch.randn(2, 3, device="meta") if name.endswith("Cell") else torch.randn(6, 4, 3, device="meta")
        x.requires_grad_(True)
        inp = pack_padded_sequence(x, torch.tensor([6, 5, 3, 1])) if packed else x
        out = m(inp)
        flat = [o.data if isinstance(o, PackedSequence) else o for o in _flatten(out)]
        sum(o.sum() for o in flat).backward()
        return [(tuple(o.shape), o.dtype, o.device.type) for o in flat + [x.grad]]

    expected = shapes(nn)
    with forbid_torch_rnn():
        assert shapes(pyrnn) == expected


def _flatten(out):
    if isinstance(out, (tuple, list)) and not isinstance(out, PackedSequence):
        return [t for o in out for t in _flatten(o)]
    return [out]
