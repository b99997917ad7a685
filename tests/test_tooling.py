"""torch tooling around pyrnn modules: torch.compile (inductor), DistributedDataParallel (gloo, 2 processes),
torch.jit.trace, ONNX export."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

import pyrnn
from conftest import forbid_torch_rnn


@pytest.mark.parametrize("allow_rnn", [False, True])
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("cls", [pyrnn.LSTM, pyrnn.GRU, pyrnn.RNN])
def test_torch_compile_forward_and_backward(cls, backend, allow_rnn):
    """Dynamo treats subclasses of torch.nn's RNNs as a graph break unless allow_rnn is set (documented in the
    README): the module then runs eagerly, still on pyrnn's kernels. With allow_rnn=True it compiles into a
    single graph (fullgraph) around pyrnn's custom ops."""
    torch.manual_seed(0)
    m = cls(4, 6, num_layers=2, batch_first=True, bidirectional=True)
    x = torch.randn(3, 5, 4, requires_grad=True)
    out, _ = m(x)
    (expected_grad,) = torch.autograd.grad(out.square().sum(), x)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(allow_rnn=allow_rnn), forbid_torch_rnn():
        compiled = torch.compile(m, backend=backend, fullgraph=allow_rnn)
        got, _ = compiled(x)
        (grad,) = torch.autograd.grad(got.square().sum(), x)
    torch.testing.assert_close(got, out)
    torch.testing.assert_close(grad, expected_grad)


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_torch_compile_leaves_the_layer_eager_like_torch_nn(name):
    """Without allow_rnn, Dynamo runs torch.nn's RNN layers eagerly and compiles around them; pyrnn's layer runs
    eagerly as a whole too (not its Python compiled in pieces), so a gradient penalty through a compiled model
    works as it does with torch.nn's layer."""

    class Model(torch.nn.Module):
        def __init__(self, ns):
            super().__init__()
            self.inp = torch.nn.Linear(3, 4)
            self.rnn = getattr(ns, name)(4, 5, num_layers=2)
            self.out = torch.nn.Linear(5, 1)

        def forward(self, x):
            y, _ = self.rnn(torch.tanh(self.inp(x)))
            return self.out(y).sum()

    def penalty_grads(ns):
        torch.manual_seed(0)
        model = Model(ns)
        torch._dynamo.reset()
        compiled = torch.compile(model, backend="aot_eager")
        x = torch.randn(6, 2, 3, requires_grad=True)
        (g,) = torch.autograd.grad(compiled(x), x, create_graph=True)
        params = list(model.parameters())
        grads = torch.autograd.grad(g.square().sum(), params, allow_unused=True)  # (out.bias: unused)
        return [torch.zeros_like(p) if d is None else d for d, p in zip(grads, params)]

    expected = penalty_grads(torch.nn)
    with forbid_torch_rnn():
        got = penalty_grads(pyrnn)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cls", [pyrnn.LSTMCell, pyrnn.GRUCell, pyrnn.RNNCell])
def test_torch_compile_cells(cls):
    """Cells compile into one graph (fullgraph) around the pyrnn::cell op, forward and backward."""
    torch.manual_seed(0)
    m = cls(4, 6)
    x = torch.randn(3, 4, requires_grad=True)
    first = lambda out: out[0] if isinstance(out, tuple) else out  # noqa: E731
    out = first(m(x))
    expected = torch.autograd.grad(out.square().sum(), [x, *m.parameters()])
    torch._dynamo.reset()
    with forbid_torch_rnn():
        got = first(torch.compile(m, backend="inductor", fullgraph=True)(x))
        grads = torch.autograd.grad(got.square().sum(), [x, *m.parameters()])
    torch.testing.assert_close(got, out)
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e)


def test_jit_trace_runs_pyrnn_ops():
    torch.manual_seed(0)
    m = pyrnn.LSTM(3, 5, num_layers=2).eval()
    x = torch.randn(4, 2, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(m, (x,), check_trace=False)
    assert "pyrnn::lstm_layer" in str(traced.graph)
    torch.testing.assert_close(traced(x)[0], m(x)[0])


@pytest.mark.parametrize("name,kw,weight", [
    ("LSTM", {"num_layers": 2, "bidirectional": True, "proj_size": 2}, "weight_hh_l1_reverse"),
    ("GRU", {}, "weight_ih_l0"), ("RNN", {"bias": False}, "weight_hh_l0"), ("LSTMCell", {}, "weight_hh"),
], ids=str)
def test_parametrized_weights_match_torch_nn(name, kw, weight):
    """Parametrizations (torch.nn.utils.parametrizations: spectral_norm, whose power iteration runs each time the
    weight is read in training, and weight_norm) give torch.nn's outputs and gradients, step after step: pyrnn
    reads each weight as often as torch.nn's forward does."""
    from torch.nn.utils.parametrizations import spectral_norm, weight_norm

    results = []
    for module in (torch.nn, pyrnn):
        torch.manual_seed(0)  # the same weights and the same initial power-iteration vectors
        m = spectral_norm(getattr(module, name)(3, 4, dtype=torch.float64, **kw), weight)
        m = weight_norm(m, "bias_ih_l0" if name == "GRU" else "weight_ih_l0" if name != "LSTMCell" else "weight_ih")
        x = torch.randn(*((2, 3) if name.endswith("Cell") else (5, 2, 3)), dtype=torch.float64,
                        generator=torch.Generator().manual_seed(1))
        found = []
        with forbid_torch_rnn() if module is pyrnn else contextlib.nullcontext():
            for _ in range(3):  # training steps: the parametrization's state moves at each read
                out = m(x)
                out = out[0] if isinstance(out, tuple) else out
                m.zero_grad()
                out.square().sum().backward()
                found += [out.detach(), *(p.grad.clone() for p in m.parameters())]
        results.append(found)
    assert len(results[0]) == len(results[1])
    for got, expected in zip(results[1], results[0]):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name,kw", [
    ("LSTM", {"num_layers": 2, "bidirectional": True}), ("LSTM", {"proj_size": 3}), ("GRU", {}),
    ("RNN", {"nonlinearity": "relu"}), ("LSTMCell", {}), ("GRUCell", {}), ("RNNCell", {}),
], ids=str)
def test_torch_func_grad_matches_torch_nn(name, kw):
    """torch.func.grad over functional_call (meta-learning, functional training loops): the same gradients as
    torch.nn's, for the parameters and the input, with pyrnn's kernels."""
    from torch.func import functional_call, grad

    torch.manual_seed(0)
    ref = getattr(torch.nn, name)(4, 5, **kw)
    ours = getattr(pyrnn, name)(4, 5, **kw)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 4) if name.endswith("Cell") else torch.randn(3, 2, 4)

    def gradients(module):
        def loss(params, inp):
            out = functional_call(module, params, (inp,))
            out = out[0] if isinstance(out, tuple) else out
            return (out * out).sum()

        return grad(loss, argnums=(0, 1))({k: v.detach() for k, v in module.named_parameters()}, x)

    (expected, expected_x) = gradients(ref)
    with forbid_torch_rnn():
        (got, got_x) = gradients(ours)
    torch.testing.assert_close(got_x, expected_x, rtol=2e-5, atol=2e-5)
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=2e-5, atol=2e-5, msg=k)


@pytest.mark.parametrize("name,kw", [
    ("LSTM", {"num_layers": 2}), ("LSTM", {"proj_size": 2}), ("GRU", {"bidirectional": True}), ("RNN", {}),
    ("LSTMCell", {}), ("GRUCell", {}), ("RNNCell", {}),
], ids=str)
def test_autocast_runs_in_the_inputs_dtype(name, kw):
    """Under torch.autocast("cpu", bfloat16) pyrnn computes in float32 and returns float32, the same outputs and
    gradients as without autocast; torch.nn's outputs there are bf16 or float32 depending on the layer, within
    bf16 rounding of pyrnn's."""
    torch.manual_seed(0)
    ref = getattr(torch.nn, name)(3, 6, **kw)
    ours = getattr(pyrnn, name)(3, 6, **kw)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3) if name.endswith("Cell") else torch.randn(5, 2, 3)
    first = lambda out: out[0] if isinstance(out, tuple) else out  # noqa: E731

    def run(module, autocast):
        inp = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = first(module(inp))
        (grad,) = torch.autograd.grad(out.float().square().sum(), inp)
        return out, grad

    with forbid_torch_rnn():
        plain, plain_grad = run(ours, False)
        mixed, mixed_grad = run(ours, True)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, plain)
    torch.testing.assert_close(mixed_grad, plain_grad)
    torch.testing.assert_close(mixed, run(ref, True)[0].float(), rtol=0, atol=3e-2)


ONNX_CASES = [  # name, constructor arguments, whether h0 (and c0) are given, unbatched input
    ("LSTM", {"num_layers": 2, "bidirectional": True}, False, False),
    ("LSTM", {"proj_size": 3, "batch_first": True}, True, False),  # torch.nn's LSTM does not export this one
    ("GRU", {"num_layers": 2, "batch_first": True}, True, False),
    ("RNN", {"nonlinearity": "relu", "bidirectional": True}, True, False),
    ("LSTM", {"bias": False}, True, True),
    ("LSTMCell", {}, True, False),
    ("GRUCell", {}, False, False),
    ("RNNCell", {"nonlinearity": "relu"}, True, False),
]


def _export_args(name, kw, with_state, unbatched, B, T, I=3, H=5):
    """The example inputs of a module, and for each its batch dimension."""
    gen = torch.Generator().manual_seed(B)
    if name.endswith("Cell"):
        x, state_shape, x_batch_dim, state_batch_dim = torch.randn(B, I, generator=gen), (B, H), 0, 0
    else:
        D, L, P = 2 if kw.get("bidirectional") else 1, kw.get("num_layers", 1), kw.get("proj_size", 0)
        bf = kw.get("batch_first", False)
        x_shape = (T, I) if unbatched else ((B, T, I) if bf else (T, B, I))
        x, x_batch_dim, state_batch_dim = torch.randn(x_shape, generator=gen), 0 if bf else 1, 1
        state_shape = (D * L, P or H) if unbatched else (D * L, B, P or H)
    if not with_state:
        return (x,), [x_batch_dim]
    h0 = torch.randn(state_shape, generator=gen)
    if name.startswith("LSTM"):
        c0 = torch.randn(*state_shape[:-1], H, generator=gen)
        return (x, (h0, c0)), [x_batch_dim, state_batch_dim, state_batch_dim]
    return (x, h0), [x_batch_dim, state_batch_dim]


def _flat(args):
    return [t for a in args for t in (a if isinstance(a, tuple) else (a,))]


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
@pytest.mark.parametrize("name,kw,with_state,unbatched", ONNX_CASES, ids=str)
def test_onnx_export_runs_in_onnxruntime_like_torch_nn(name, kw, with_state, unbatched, dynamo, tmp_path):
    """torch.onnx.export (both exporters) gives a graph of standard ONNX ops (pyrnn.composite's; no pyrnn op) that
    onnxruntime runs to torch.nn's outputs, every output, at another batch size than the example's, and at another
    sequence length: the default exporter's layers are a Scan over the steps (torch.nn's own export under it fails
    there), the TorchScript exporter's ONNX's LSTM/GRU/RNN ops, as torch.nn's are (but for proj_size, unrolled)."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    ref = getattr(torch.nn, name)(3, 5, **kw).eval()
    ours = getattr(pyrnn, name)(3, 5, **kw).eval()
    ours.load_state_dict(ref.state_dict())
    example, batch_dims = _export_args(name, kw, with_state, unbatched, B=2, T=4)
    names = [f"in{i}" for i in range(len(batch_dims))]
    dynamic_axes = {} if unbatched else {n: {d: "batch"} for n, d in zip(names, batch_dims)}
    any_length = not name.endswith("Cell") and (dynamo or not kw.get("proj_size"))
    if any_length:
        time_dim = 0 if unbatched or not kw.get("batch_first") else 1
        dynamic_axes.setdefault(names[0], {})[time_dim] = "time"
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings(), forbid_torch_rnn():
        warnings.simplefilter("ignore")  # the exporters' own, and pyrnn's note that the steps are unrolled
        if dynamo:  # dynamic_shapes, structured as the inputs (dynamic_axes loses a nested (h0, c0))
            dims = {"batch": torch.export.Dim("batch"), "time": torch.export.Dim("time")}
            shapes = [{d: dims[label] for d, label in dynamic_axes.get(n, {}).items()} for n in names]
            shapes = (shapes[0], tuple(shapes[1:])) if len(shapes) == 3 else tuple(shapes)
            torch.onnx.export(ours, example, dynamo=True, input_names=names, dynamic_shapes=shapes,
                              verbose=False).save(str(path))
        else:
            torch.onnx.export(ours, example, str(path), dynamo=False, input_names=names, dynamic_axes=dynamic_axes)
    if any_length and not dynamo:
        import onnx

        assert name in {node.op_type for node in onnx.load(str(path)).graph.node}
    session = ort.InferenceSession(str(path))
    args, _ = _export_args(name, kw, with_state, unbatched, B=2 if unbatched else 3, T=6 if any_length else 4)
    got = session.run(None, {n: t.numpy() for n, t in zip(names, _flat(args))})
    with torch.no_grad():
        expected = ref(*args)
    expected = _flat(expected if isinstance(expected, tuple) else (expected,))
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        torch.testing.assert_close(torch.from_numpy(g), e, rtol=1e-5, atol=1e-6)


ONNX_PACKED_CASES = [  # name, constructor arguments, lengths sorted (enforce_sorted), h0 (and c0) given
    ("LSTM", {"num_layers": 2, "bidirectional": True}, True, False),
    ("LSTM", {"batch_first": True}, False, True),
    ("GRU", {"num_layers": 2, "bias": False}, False, False),
    ("GRU", {"bidirectional": True, "batch_first": True}, True, True),
    ("RNN", {"nonlinearity": "relu", "num_layers": 2, "bidirectional": True}, False, True),
]


@pytest.mark.parametrize("name,kw,sorted_lengths,with_state", ONNX_PACKED_CASES, ids=str)
def test_onnx_torchscript_export_of_packed_sequences(name, kw, sorted_lengths, with_state, tmp_path):
    """pack_padded_sequence -> layer -> pad_packed_sequence through the TorchScript exporter (dynamo=False), as
    torch.nn's layers export: ONNX's LSTM/GRU/RNN ops with the lengths as sequence_lens, no PackPadded/PadPacked
    left, and onnxruntime gives torch.nn's outputs at other lengths and batch sizes than the example's."""
    pytest.importorskip("onnxscript")
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    batch_first, D, L = kw.get("batch_first", False), 2 if kw.get("bidirectional") else 1, kw.get("num_layers", 1)

    class Model(torch.nn.Module):
        def __init__(self, layer):
            super().__init__()
            self.layer = layer

        def forward(self, x, lengths, h0):
            packed = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=sorted_lengths)
            hx = None if not with_state else ((h0, 0.5 * h0) if name == "LSTM" else h0)
            out, state = self.layer(packed, hx)
            y, _ = pad_packed_sequence(out, batch_first=batch_first)
            return y, state[0] if name == "LSTM" else state

    torch.manual_seed(0)
    ref = Model(getattr(torch.nn, name)(3, 5, **kw)).eval()
    ours = Model(getattr(pyrnn, name)(3, 5, **kw)).eval()
    ours.load_state_dict(ref.state_dict())

    def inputs(lengths):
        T, B = max(lengths), len(lengths)
        lengths = lengths if sorted_lengths else lengths[::-1]
        gen = torch.Generator().manual_seed(B)
        x = torch.randn((B, T, 3) if batch_first else (T, B, 3), generator=gen)
        return x, torch.tensor(lengths), torch.randn(L * D, B, 5, generator=gen)

    names = ["x", "lengths", "h0"]
    axes = {"x": {0: "batch", 1: "time"} if batch_first else {0: "time", 1: "batch"}, "lengths": {0: "batch"},
            "h0": {1: "batch"}}
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings(), forbid_torch_rnn():
        warnings.simplefilter("ignore")  # the exporter's own
        warnings.filterwarnings("error", message="pyrnn")  # nothing unrolled: pyrnn says nothing
        torch.onnx.export(ours, inputs([4, 3, 1]), str(path), dynamo=False, input_names=names, dynamic_axes=axes)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert name in ops and not {"PackPadded", "PadPacked", "Loop", "Scan"} & ops
    session = ort.InferenceSession(str(path))
    for lengths in ([4, 3, 1], [6, 6, 2, 1], [5]):
        args = inputs(lengths)
        feed = {n: t.numpy() for n, t in zip(names, args)}
        got = session.run(None, {i.name: feed[i.name] for i in session.get_inputs()})
        with torch.no_grad():
            expected = ref(*args)
        for g, e in zip(got, expected):
            torch.testing.assert_close(torch.from_numpy(g), e, rtol=1e-5, atol=1e-6)


def test_onnx_torchscript_export_says_when_the_steps_are_unrolled():
    pytest.importorskip("onnxscript")
    m = pyrnn.LSTM(3, 5, proj_size=2).eval()
    with pytest.warns(UserWarning, match=r"unrolls the recurrence over the example input's 4 time steps \(proj_size"):
        torch.onnx.export(m, (torch.randn(4, 2, 3),), io.BytesIO(), dynamo=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="pyrnn")  # ONNX's GRU op: nothing unrolled, nothing said
        torch.onnx.export(pyrnn.GRU(3, 5).eval(), (torch.randn(4, 2, 3),), io.BytesIO(), dynamo=False)


DDP_SCRIPT = """
import os, sys, torch, torch.distributed as dist, torch.multiprocessing as mp
import pyrnn

def grads(model):
    return [p.grad.clone() for p in model.parameters()]

def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(6, 8, 4, generator=g), torch.randn(6, 8, 5, generator=g)

def worker(rank, world, port, path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(pyrnn.LSTM(4, 5, num_layers=2))
    x, y = batch()
    shard = slice(rank * 4, rank * 4 + 4)  # batch dim 1: each rank takes half
    out, _ = model(x[:, shard])
    torch.nn.functional.mse_loss(out, y[:, shard]).backward()
    if rank == 0:
        torch.save(grads(model.module), path)
    dist.barrier()
    dist.destroy_process_group()

if __name__ == "__main__":
    port, path = int(sys.argv[1]), sys.argv[2]
    mp.spawn(worker, args=(2, port, path), nprocs=2, join=True)
    torch.manual_seed(0)
    single = pyrnn.LSTM(4, 5, num_layers=2)
    x, y = batch()
    out_, _ = single(x)
    torch.nn.functional.mse_loss(out_, y).backward()
    for a, b in zip(torch.load(path), grads(single)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    print("ddp ok")
"""


def test_ddp_gloo_two_processes_match_one(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, str(script), str(port), str(tmp_path / "grads.pt")], capture_output=True,
                         text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ddp ok" in out.stdout
