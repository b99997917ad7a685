"""What runs pyrnn.composite: double backward (create_graph=True) through the layers' and cells' backward, forward-
mode AD and nested torch.func transforms, against torch.nn on a random grid of every option, with torch's recurrent
kernels forbidden during the pyrnn calls; float64 gradgradcheck on small inputs is in test_gradcheck.py."""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.func import functional_call, grad, hessian, jvp, vmap

import pyrnn
from pyrnn import composite, ops
from conftest import assert_close, forbid_torch_rnn
from test_modules import _forward, _leaves, make_inputs, make_pair, random_configs


def _double_backward(module, cfg, x, lengths, hx, seed, forbid):
    """The first-order gradients of a random projection of every output (create_graph=True), then the gradients
    of a random projection of those: both as {leaf name: tensor}, zeros where a leaf is not reached."""
    x, hx = _leaves(x, hx)
    torch.manual_seed(seed + 1)  # dropout's masks
    states = () if hx is None else (hx if isinstance(hx, tuple) else (hx,))
    leaves = [x, *states, *module.parameters()]
    names = ["x", *[f"hx[{i}]" for i in range(len(states))], *[n for n, _ in module.named_parameters()]]
    gen = torch.Generator().manual_seed(seed)
    rand = lambda t: torch.randn(t.shape, dtype=t.dtype, generator=gen)  # noqa: E731
    with forbid_torch_rnn() if forbid else torch.autograd.set_grad_enabled(True):
        outputs = _forward(module, cfg, x, lengths, hx, forbid=False)
        loss = sum((o * rand(o)).sum() for o in outputs)
        first = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
        loss2 = sum((g * rand(g)).sum() for g in first if g is not None and g.requires_grad)
        second = torch.autograd.grad(loss2, leaves, allow_unused=True)
    zeros = lambda gs: [torch.zeros_like(t) if g is None else g.detach() for g, t in zip(gs, leaves)]  # noqa: E731
    return dict(zip(names, zeros(first))), dict(zip(names, zeros(second)))


CONFIGS = random_configs(40, seed=77)


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_double_backward_matches_torch_nn(cfg):
    """Gradient penalties, Hessian-vector products: the gradient of the gradient, as torch.nn's CPU layers give it
    (float32 compared with a looser tolerance: the second derivatives add up more rounding)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    ref, ours = make_pair(cfg)
    x, lengths, hx = make_inputs(cfg, gen)
    exp_first, exp_second = _double_backward(ref, cfg, x, lengths, hx, cfg.seed, forbid=False)
    got_first, got_second = _double_backward(ours, cfg, x, lengths, hx, cfg.seed, forbid=True)
    for name in exp_first:
        assert_close(got_first[name], exp_first[name], cfg.dtype, f"grad {name}")
        if cfg.dtype == torch.float64:
            assert_close(got_second[name], exp_second[name], cfg.dtype, f"grad of grad {name}")
        else:
            torch.testing.assert_close(got_second[name], exp_second[name], rtol=1e-4, atol=1e-4,
                                       msg=lambda m: f"grad of grad {name}: {m}")


@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell", "RNNCell"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cells_double_backward_matches_torch_nn(name, bias, dtype):
    torch.manual_seed(0)
    ref = getattr(torch.nn, name)(5, 3, bias=bias, dtype=dtype)
    ours = getattr(pyrnn, name)(5, 3, bias=bias, dtype=dtype)
    ours.load_state_dict(ref.state_dict())
    x, h, c = (torch.randn(2, n, dtype=dtype) for n in (5, 3, 3))
    results = []
    for module in (ref, ours):
        leaves = [t.clone().requires_grad_(True) for t in (x, h, c)] + list(module.parameters())
        gen = torch.Generator().manual_seed(1)
        with forbid_torch_rnn() if module is ours else torch.autograd.set_grad_enabled(True):
            out = module(leaves[0], tuple(leaves[1:3]) if name == "LSTMCell" else leaves[1])
            out = out if isinstance(out, tuple) else (out,)
            loss = sum((o * torch.randn(o.shape, dtype=dtype, generator=gen)).sum() for o in out)
            first = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
            penalty = sum((g * g).sum() for g in first if g is not None)
            second = torch.autograd.grad(penalty, leaves, allow_unused=True)
        results.append([torch.zeros_like(t) if g is None else g for g, t in zip(second, leaves)])
    for k, (got, exp) in enumerate(zip(results[1], results[0])):
        torch.testing.assert_close(got, exp, rtol=1e-4 if dtype == torch.float32 else 1e-9,
                                   atol=1e-5 if dtype == torch.float32 else 1e-9, msg=f"grad of grad {k}")


def test_first_order_under_create_graph_matches_kernels():
    """create_graph=True switches the backward to pyrnn.composite: its first-order gradients are the kernels'."""
    torch.manual_seed(0)
    m = pyrnn.LSTM(3, 6, num_layers=2, bidirectional=True, proj_size=2)
    x = torch.randn(7, 4, 3, requires_grad=True)
    out, (h, c) = m(x)
    loss = out.square().sum() + h.sum() + c.square().sum()
    leaves = [x, *m.parameters()]
    kernels = torch.autograd.grad(loss, leaves, retain_graph=True)
    recorded = torch.autograd.grad(loss, leaves, create_graph=True)
    for k, (a, b) in enumerate(zip(recorded, kernels)):
        assert a.requires_grad
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-5, msg=f"leaf {k}")


def _module_pairs():
    for name, kw in [("LSTM", dict(num_layers=2, bidirectional=True)), ("LSTM", dict(proj_size=2)),
                     ("GRU", dict(num_layers=2)), ("RNN", dict(nonlinearity="relu", bidirectional=True)),
                     ("LSTMCell", {}), ("GRUCell", {}), ("RNNCell", {})]:
        torch.manual_seed(0)
        ref = getattr(torch.nn, name)(3, 4, dtype=torch.float64, **kw)
        ours = getattr(pyrnn, name)(3, 4, dtype=torch.float64, **kw)
        ours.load_state_dict(ref.state_dict())
        yield f"{name}{kw}", ref, ours, name.endswith("Cell")


@pytest.mark.parametrize("case", list(_module_pairs()), ids=lambda c: c[0])
def test_torch_func_transforms_match_torch_nn(case):
    """torch.func.jvp, forward-mode AD (also under no_grad, where a kernel would drop the tangent), grad of grad
    and hessian: pyrnn's modules give torch.nn's results (torch.nn's float64 LSTM runs its composite path, which
    supports them all)."""
    _, ref, ours, is_cell = case
    x = torch.randn(2, 3, dtype=torch.float64) if is_cell else torch.randn(5, 2, 3, dtype=torch.float64)
    tangent = torch.randn_like(x)

    def output(module, params, inp):
        out = functional_call(module, params, (inp,))
        return out[0] if isinstance(out, tuple) else out

    def results(module):
        params = {k: v.detach() for k, v in module.named_parameters()}
        loss = lambda p, inp: output(module, p, inp).square().sum()  # noqa: E731
        r = {"jvp": jvp(lambda inp: output(module, params, inp), (x,), (tangent,))[1]}
        with fwAD.dual_level(), torch.no_grad():
            r["forward AD"] = fwAD.unpack_dual(output(module, params, fwAD.make_dual(x, tangent))).tangent
        r["grad of grad"] = grad(lambda p: sum(g.square().sum() for g in grad(loss)(p, x).values()))(params)
        r["hessian"] = hessian(lambda inp: loss(params, inp))(x)
        return r

    expected = results(ref)
    with forbid_torch_rnn():
        got = results(ours)
    for what, e in expected.items():
        g = got[what]
        for k in (e if isinstance(e, dict) else {"": None}):
            a, b = (g[k], e[k]) if k else (g, e)
            assert a is not None, what
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=lambda m: f"{what} {k}: {m}")


def test_vmap_over_grad_matches_a_loop():
    """vmap over torch.func.grad (per-sample gradients) runs pyrnn.composite; torch.nn's layers fail it on this
    torch (a shape error inside _VF), so a loop of single-sample gradients is the reference."""
    torch.manual_seed(0)
    m = pyrnn.GRU(3, 4, num_layers=2, dtype=torch.float64)
    params = {k: v.detach() for k, v in m.named_parameters()}
    xs = torch.randn(3, 5, 2, 3, dtype=torch.float64)
    loss = lambda p, inp: functional_call(m, p, (inp,))[0].square().sum()  # noqa: E731
    with forbid_torch_rnn():
        batched = vmap(grad(loss), in_dims=(None, 0))(params, xs)
        looped = [grad(loss)(params, x) for x in xs]
    for k in params:
        torch.testing.assert_close(batched[k], torch.stack([g[k] for g in looped]), rtol=1e-9, atol=1e-9)


def test_ops_refuse_forward_ad_directly():
    """The ops (pyrnn.ops) cannot carry a tangent: called directly under forward-mode AD they raise, not drop it."""
    x, w_ih, w_hh, h0 = torch.randn(6, 3), torch.randn(4, 3), torch.randn(4, 4), torch.zeros(2, 4)
    with fwAD.dual_level(), pytest.raises(RuntimeError, match="forward-mode AD"):
        ops.apply(ops.rnn_layer, fwAD.make_dual(x, torch.ones_like(x)), w_ih, None, None, w_hh, h0,
                  torch.tensor([2, 2, 2]), False, False, False)


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"])
@pytest.mark.parametrize("reverse", [False, True])
def test_composite_layer_matches_kernels_on_packed_rows(mode, reverse):
    """pyrnn.composite's own packed-sequence handling (rows that finish early, or start late in reverse) against
    the kernels' forward."""
    torch.manual_seed(0)
    G, I, H, sizes = ops._CELL_GATES[mode], 3, 5, [4, 3, 3, 1]
    r = lambda *s: torch.randn(*s, dtype=torch.float64)  # noqa: E731
    x, w_ih, w_hh, b_ih, b_hh, h0, c0 = r(sum(sizes), I), r(G * H, I), r(G * H, H), r(G * H), r(G * H), r(4, H), r(4, H)
    c0 = c0 if mode == "LSTM" else None
    bs = torch.tensor(sizes)
    y, h_n, c_n = composite.layer(mode, x, w_ih, b_ih, b_hh, w_hh, None, h0, c0, bs, reverse)
    if mode == "LSTM":
        exp = ops.lstm_layer(x, w_ih, b_ih, b_hh, w_hh, None, h0, c0, bs, reverse, False)[:3]
    elif mode == "GRU":
        exp = (*ops.gru_layer(x, w_ih, b_ih, b_hh, w_hh, h0, bs, reverse, False)[:2], None)
    else:
        exp = (*ops.rnn_layer(x, w_ih, b_ih, b_hh, w_hh, h0, bs, reverse, mode == "RNN_RELU", False)[:2], None)
    for got, want in zip((y, h_n, c_n), exp):
        if want is not None:
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", list(_module_pairs()), ids=lambda c: c[0])
def test_batched_grads_match_torch_nn(case):
    """torch.autograd.grad(..., is_grads_batched=True) and what builds on it (torch.autograd.functional's jacobian
    and hessian with vectorize=True): the batched gradients reach the backward as tensors of autograd's own vmap,
    which the kernels cannot read; pyrnn.composite takes them."""
    from torch.autograd.functional import hessian as af_hessian, jacobian

    _, ref, ours, is_cell = case
    x = torch.randn(2, 3, dtype=torch.float64) if is_cell else torch.randn(5, 2, 3, dtype=torch.float64)
    first = lambda out: out[0] if isinstance(out, tuple) else out  # noqa: E731

    def results(module):
        inp = x.clone().requires_grad_(True)
        y = first(module(inp))
        v = torch.randn(3, *y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        (batched,) = torch.autograd.grad(y, inp, v, is_grads_batched=True)
        jac = jacobian(lambda t: first(module(t)), x, vectorize=True)
        hess = af_hessian(lambda t: first(module(t)).square().sum(), x, vectorize=True)
        return batched, jac, hess

    expected = results(ref)
    with forbid_torch_rnn():
        got = results(ours)
    for what, g, e in zip(("batched grads", "jacobian", "hessian"), got, expected):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-9, msg=lambda m: f"{what}: {m}")
