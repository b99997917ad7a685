"""The CPU workspace cache (csrc/workspace_pool.cpp): buffers go back when autograd frees them, are reused by
the next step, stay under the idle cap, and never change a result."""

import gc
import threading

import pytest
import torch

import pyrnn

from conftest import forbid_torch_rnn


def _step(m, x):
    with forbid_torch_rnn():
        out, hidden = m(x)
    h = hidden[0] if isinstance(hidden, tuple) else hidden
    (out.square().sum() + h.sum()).backward()
    return out.detach(), [p.grad.clone() for p in m.parameters()], x.grad.clone()


@pytest.fixture
def fresh_cache():
    limit = pyrnn.workspace_cache_stats()["limit_bytes"]
    gc.collect()
    pyrnn.empty_cache()
    yield
    pyrnn.set_workspace_cache_limit(limit)


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
def test_buffers_return_and_are_reused(cell, fresh_cache):
    torch.manual_seed(0)
    m = getattr(pyrnn, cell)(64, 256, num_layers=2)
    x = torch.randn(60, 32, 64, requires_grad=True)  # workspaces of 1-4 MiB each
    live_before = pyrnn.workspace_cache_stats()["live_bytes"]
    out, hidden = m(x)
    assert pyrnn.workspace_cache_stats()["live_bytes"] > live_before  # saved for the backward
    out.sum().backward()
    del out, hidden
    gc.collect()
    first = pyrnn.workspace_cache_stats()
    assert first["live_bytes"] == live_before
    assert first["cached_bytes"] > 0
    _step(m, x)
    second = pyrnn.workspace_cache_stats()
    assert second["misses"] == first["misses"], "a second identical step should allocate nothing new"
    assert second["hits"] > first["hits"]


def test_results_do_not_depend_on_the_cache(fresh_cache):
    torch.manual_seed(0)
    m = pyrnn.LSTM(48, 96, num_layers=2, bidirectional=True, proj_size=40)
    x = torch.randn(70, 24, 48, requires_grad=True)
    pyrnn.set_workspace_cache_limit(0)
    expected = _step(m, x)
    assert pyrnn.workspace_cache_stats()["cached_bytes"] == 0
    pyrnn.set_workspace_cache_limit(256 << 20)
    for _ in range(3):  # the later steps run on recycled (dirty) buffers
        m.zero_grad()
        x.grad = None
        got = _step(m, x)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[2], expected[2])
        for g, e in zip(got[1], expected[1]):
            assert torch.equal(g, e)


def test_idle_bytes_stay_under_the_limit_and_empty_cache_frees_them(fresh_cache):
    torch.manual_seed(0)
    pyrnn.set_workspace_cache_limit(6 << 20)
    for T in (40, 80, 120):  # three sizes
        m = pyrnn.GRU(32, 128)
        _step(m, torch.randn(T, 32, 32, requires_grad=True))
        gc.collect()
        assert pyrnn.workspace_cache_stats()["cached_bytes"] <= 6 << 20
    pyrnn.empty_cache()
    assert pyrnn.workspace_cache_stats()["cached_bytes"] == 0


def test_retained_graph_keeps_its_workspace(fresh_cache):
    torch.manual_seed(0)
    m = pyrnn.LSTM(32, 128)
    x = torch.randn(80, 16, 32, requires_grad=True)
    out, _ = m(x)
    out.sum().backward(retain_graph=True)
    first = x.grad.clone()
    # Other steps recycle whatever is idle; the retained graph's buffers must not be among them.
    for _ in range(2):
        m2 = pyrnn.LSTM(32, 128)
        _step(m2, torch.randn(80, 16, 32, requires_grad=True))
    out.sum().backward()
    torch.testing.assert_close(x.grad, 2 * first)


def test_buffers_freed_on_other_threads(fresh_cache):
    torch.manual_seed(0)
    m = pyrnn.GRU(32, 128)
    x = torch.randn(64, 32, 32)
    outs = [m(x)[0] for _ in range(4)]  # graphs holding workspaces
    threads = [threading.Thread(target=lambda o=o: o.sum().backward()) for o in outs]
    del outs
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    gc.collect()
    assert pyrnn.workspace_cache_stats()["live_bytes"] == 0
