"""Reliability: fuzzing against torch.nn, NaN/Inf, threads, fork, memory, determinism, retain_graph,
and a missing extension."""

from __future__ import annotations

import copy
import gc
import os
import subprocess
import sys
import textwrap
import threading

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import pyrnn
from conftest import forbid_torch_rnn

CELLS = {"LSTM": (nn.LSTM, pyrnn.LSTM), "GRU": (nn.GRU, pyrnn.GRU), "RNN": (nn.RNN, pyrnn.RNN)}


def _pair(cell, I, H, **kw):
    ref = CELLS[cell][0](I, H, **kw)
    ours = CELLS[cell][1](I, H, **kw)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _outputs_and_grads(module, x, hx, forbid):
    x = x.detach().clone().requires_grad_(True) if x.is_floating_point() else x
    ctx = forbid_torch_rnn() if forbid else _Null()
    with ctx:
        out, hidden = module(x, hx)
        flat = [out, *(hidden if isinstance(hidden, tuple) else (hidden,))]
        loss = sum((t * (1 + torch.arange(t.numel(), dtype=t.dtype).reshape(t.shape) % 3)).sum() for t in flat)
        grads = torch.autograd.grad(loss, [x, *module.parameters()], allow_unused=True)
    return flat, grads


class _Null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


@st.composite
def layer_cases(draw):
    cell = draw(st.sampled_from(list(CELLS)))
    H = draw(st.sampled_from([1, 2, 5, 17]))
    I = draw(st.integers(1, 6))
    T = draw(st.integers(1, 6))
    B = draw(st.integers(0, 4))
    layout = draw(st.sampled_from(["contiguous", "transposed", "expanded", "sliced"]))
    scale = draw(st.sampled_from([1e-30, 1e-3, 1.0, 30.0, 1e4]))
    kw = dict(num_layers=draw(st.integers(1, 2)), bidirectional=draw(st.booleans()),
              batch_first=draw(st.booleans()), bias=draw(st.booleans()),
              dtype=draw(st.sampled_from([torch.float32, torch.float64])))
    if cell == "LSTM" and H > 1 and draw(st.booleans()):
        kw["proj_size"] = draw(st.integers(1, H - 1))
    if cell == "RNN":
        kw["nonlinearity"] = draw(st.sampled_from(["tanh", "relu"]))
    seed = draw(st.integers(0, 2**16))
    return cell, I, H, T, B, layout, scale, kw, seed


def _make_input(T, B, I, layout, scale, kw, seed):
    g = torch.Generator().manual_seed(seed)
    shape = (B, T, I) if kw["batch_first"] else (T, B, I)
    dt = kw["dtype"]
    if layout == "transposed":
        x = torch.randn(shape[::-1], dtype=dt, generator=g).permute(2, 1, 0)
    elif layout == "expanded":
        x = torch.randn(*shape[:-1], 1, dtype=dt, generator=g).expand(shape)
    elif layout == "sliced":
        x = torch.randn(*shape[:-1], 2 * I, dtype=dt, generator=g)[..., ::2]
    else:
        x = torch.randn(shape, dtype=dt, generator=g)
    return x * scale


def _assert_as_accurate_as_torch(got, expected, exact, tol, what):
    """got (pyrnn) must match expected (torch.nn, same dtype); where it does not, both are measured against
    `exact` (torch.nn in float64 on the same weights and input), and pyrnn must be at least about as close
    to it as torch.nn is. Saturated float32 gates (inputs up to 1e4) leave a few ulps of 1 - s in s(1 - s),
    so two correct float32 implementations can differ by more than any fixed tolerance there; in every such
    case found, pyrnn was the closer of the two."""
    try:
        torch.testing.assert_close(got, expected, **tol)
    except AssertionError:
        if exact is None:
            raise
        err_got = (got.double() - exact).abs().max().item()
        err_torch = (expected.double() - exact).abs().max().item()
        assert err_got <= max(tol["atol"], 2 * err_torch), (
            f"{what}: pyrnn is {err_got:.3g} from the float64 result, torch.nn {err_torch:.3g}")


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(layer_cases())
def test_fuzz_against_torch(case):
    cell, I, H, T, B, layout, scale, kw, seed = case
    torch.manual_seed(seed)
    ref, ours = _pair(cell, I, H, **kw)
    x = _make_input(T, B, I, layout, scale, kw, seed)
    exp_out, exp_grads = _outputs_and_grads(ref, x, None, forbid=False)
    got_out, got_grads = _outputs_and_grads(ours, x, None, forbid=True)
    f32 = kw["dtype"] == torch.float32
    tol = dict(rtol=1e-4, atol=1e-5) if f32 else dict(rtol=1e-7, atol=1e-9)
    exact_out, exact_grads = [None] * len(exp_out), [None] * len(exp_grads)
    if f32:
        exact_out, exact_grads = _outputs_and_grads(copy.deepcopy(ref).double(), x.double(), None, forbid=False)
    for i, (g, e, t) in enumerate(zip(got_out, exp_out, exact_out)):
        _assert_as_accurate_as_torch(g, e, t, tol, f"output {i}")
    for i, (g, e, t) in enumerate(zip(got_grads, exp_grads, exact_grads)):
        if e is None:
            assert g is None or not g.any()
        else:
            # large activations saturate; compare gradients relative to their own scale
            scale = (e.abs().max() if e.numel() else 0) + 1
            _assert_as_accurate_as_torch(g / scale, e / scale, None if t is None else t / scale, tol, f"gradient {i}")


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_inf_propagate_like_torch(cell, bad):
    torch.manual_seed(0)
    ref, ours = _pair(cell, 3, 5, num_layers=2, bidirectional=True)
    x = torch.randn(6, 2, 3)
    x[2, 1, 0] = bad
    exp_out, exp_grads = _outputs_and_grads(ref, x, None, forbid=False)
    got_out, got_grads = _outputs_and_grads(ours, x, None, forbid=True)
    for g, e in zip([*got_out, *got_grads], [*exp_out, *exp_grads]):
        assert torch.equal(torch.isnan(g), torch.isnan(e))
        assert torch.equal(torch.isinf(g), torch.isinf(e))
        finite = torch.isfinite(e)
        torch.testing.assert_close(g[finite], e[finite], rtol=1e-4, atol=1e-5)


def _serial_reference(modules, inputs):
    return [_outputs_and_grads(m, x, None, forbid=False) for m, x in zip(modules, inputs)]


@pytest.mark.parametrize("shared", [True, False])
def test_eight_python_threads(shared):
    torch.manual_seed(0)
    base = pyrnn.GRU(8, 40, num_layers=2, bidirectional=True)
    modules = [base if shared else pyrnn.LSTM(8, 40, num_layers=2) for _ in range(8)]
    inputs = [torch.randn(12, 5, 8, generator=torch.Generator().manual_seed(i)) for i in range(8)]
    expected = _serial_reference(modules, inputs)
    results, errors = [None] * 8, []

    def work(i):
        try:
            for _ in range(5):
                results[i] = _outputs_and_grads(modules[i], inputs[i], None, forbid=False)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
        assert not t.is_alive(), "a thread hung"
    assert not errors, errors
    for (got_out, got_grads), (exp_out, exp_grads) in zip(results, expected):
        for g, e in zip([*got_out, *got_grads], [*exp_out, *exp_grads]):
            torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-7)


def _run_script(code: str, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, cwd=os.path.dirname(__file__))


def test_single_thread_and_dataloader_workers():
    """Under torch.set_num_threads(1), and inside forked DataLoader workers after the parent used the
    kernels multi-threaded: same results, no deadlock."""
    out = _run_script("""
        import torch, pyrnn
        from torch.utils.data import DataLoader, Dataset
        torch.manual_seed(0)
        m = pyrnn.LSTM(16, 64, num_layers=2)
        x = torch.randn(20, 8, 16)
        expected = m(x)[0].detach()
        torch.set_num_threads(1)
        assert torch.equal(m(x)[0].detach(), expected)
        torch.set_num_threads(2)

        class Data(Dataset):
            def __len__(self):
                return 4
            def __getitem__(self, i):
                with torch.no_grad():
                    return m(x)[0]

        for batch in DataLoader(Data(), batch_size=2, num_workers=2):
            assert torch.equal(batch[0], expected) and torch.equal(batch[1], expected)
        print("ok")
    """)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc to read resident memory")
def test_ten_thousand_calls_keep_memory_flat():
    torch.manual_seed(0)
    m = pyrnn.LSTM(4, 8, num_layers=2, bidirectional=True)
    x = torch.randn(5, 3, 4, requires_grad=True)

    def call():
        out, (h, c) = m(x)
        (out.sum() + h.sum() + c.sum()).backward()

    for _ in range(500):
        call()
    gc.collect()
    before = _rss_bytes()
    for _ in range(10_000):
        call()
    gc.collect()
    growth = _rss_bytes() - before
    assert growth < 8 << 20, f"resident memory grew by {growth / 2**20:.1f} MiB over 10,000 calls"


def test_bitwise_deterministic():
    torch.manual_seed(0)
    m = pyrnn.LSTM(6, 33, num_layers=2, bidirectional=True, proj_size=7)
    x = torch.randn(9, 4, 6)
    first = _outputs_and_grads(m, x, None, forbid=True)
    for _ in range(3):
        again = _outputs_and_grads(m, x, None, forbid=True)
        for g, e in zip([*again[0], *again[1]], [*first[0], *first[1]]):
            assert torch.equal(g, e)


def test_retain_graph_backward_twice():
    torch.manual_seed(0)
    m = pyrnn.GRU(3, 5)
    x = torch.randn(4, 2, 3, requires_grad=True)
    out, _ = m(x)
    out.sum().backward(retain_graph=True)
    first = x.grad.clone()
    out.sum().backward()
    torch.testing.assert_close(x.grad, 2 * first)


def test_missing_extension_is_one_clear_import_error():
    out = _run_script("""
        import sys
        sys.modules["pyrnn._C"] = None  # as if the build were missing
        import torch, pyrnn
        assert pyrnn.backends()["cpu"]["available"] is False
        try:
            pyrnn.LSTM(2, 3)(torch.randn(1, 1, 2))
        except ImportError as exc:
            print("ImportError:", exc)
    """)
    assert out.returncode == 0, out.stderr
    assert "ImportError:" in out.stdout and "pip install -e ." in out.stdout
