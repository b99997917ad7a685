"""A small grid of every cell and option through the C++ kernels, forward and backward, for .ci/sanitize
(AddressSanitizer + UBSan). Not a pytest module: it only has to run cleanly under the sanitizers."""

import itertools

import torch
from torch.nn.utils.rnn import pack_padded_sequence

import pyrnn
from pyrnn import _C

assert "pyrnn" in pyrnn.__file__
_C.set_parallel_threshold(1)  # also exercise the threaded paths on these tiny sizes
count = 0
for cls, H, bi, packed, B, T, dtype in itertools.product(
    (pyrnn.LSTM, pyrnn.GRU, pyrnn.RNN), (1, 5, 33), (False, True), (False, True), (0, 1, 3), (1, 4),
    (torch.float32, torch.float64),
):
    if packed and B == 0:
        continue
    # The float64 half splits sequences between threads by batch rows, the float32 half by hidden units.
    _C.set_row_split_min_rows(1 if dtype == torch.float64 else 1 << 40)
    for isa in _C.available_isas():
        _C.set_isa(isa)
        kw = dict(num_layers=2, bidirectional=bi, dtype=dtype)
        if cls is pyrnn.LSTM and H > 1:
            kw["proj_size"] = H - 1
        m = cls(3, H, **kw)
        x = torch.randn(T, B, 3, dtype=dtype, requires_grad=True)
        inp = pack_padded_sequence(x, torch.linspace(T, 1, B).long()) if packed else x
        out, hidden = m(inp)
        data = out.data if packed else out
        loss = data.sum() + sum(h.sum() for h in (hidden if isinstance(hidden, tuple) else (hidden,)))
        loss.backward()
        count += 1
        if cls is pyrnn.LSTM:  # inference: the cell states' two-step ring instead of the [N, H] workspace
            with torch.no_grad():
                m(inp)
            count += 1
_C.set_isa("auto")
_C.set_row_split_min_rows(6)
# Cells through every kernel path, every instruction set, both dtypes: the forward's dot products with the weight
# rows (in pairs, an odd row alone; threaded, as the threshold is 1) up to 8 rows and transposed tiles past them;
# the backward's direct path (B = 1, 2) and its panels, packed (H = 40, I = 5) or reading the weights and inputs in
# place (I, H multiples of the vector width), its GEMMs in the kernel or (B >= 16 where MKL runs) torch's.
for isa in _C.available_isas():
    _C.set_isa(isa)
    for cell in (pyrnn.LSTMCell, pyrnn.GRUCell, pyrnn.RNNCell):
        for B, I, H, bias, dtype in ((1, 5, 7, True, torch.float32), (2, 5, 33, False, torch.float64),
                                     (3, 5, 33, True, torch.float32), (9, 5, 40, True, torch.float64),
                                     (12, 32, 64, True, torch.float32), (12, 16, 48, False, torch.float64),
                                     (20, 16, 32, True, torch.float32)):
            c = cell(I, H, bias=bias, dtype=dtype)
            out = c(torch.randn(B, I, dtype=dtype, requires_grad=True), None)
            (out[0] if isinstance(out, tuple) else out).sum().backward()
            count += 1
_C.set_isa("auto")
# Workspace-cache sized runs (buffers of 1 MiB and more): acquire, reuse, trim to a small cap, clear.
pyrnn.set_workspace_cache_limit(8 << 20)
for cls in (pyrnn.LSTM, pyrnn.GRU, pyrnn.RNN):
    m = cls(64, 256)
    for T in (40, 40, 60):
        out, _ = m(torch.randn(T, 32, 64, requires_grad=True))
        out.sum().backward()
        count += 1
# The weight-gradient GEMM's depth split (K >= 1024 per thread): partial products in per-thread scratch buffers,
# on 2 and 3 threads, every instruction set.
from pyrnn import ops  # noqa: E402

threads_before = torch.get_num_threads()
for isa in _C.available_isas():
    _C.set_isa(isa)
    for threads in (2, 3):
        torch.set_num_threads(threads)
        for M, K, N, dtype in ((45, 3500, 70, torch.float32), (20, 3300, 33, torch.float64)):
            a, b = torch.randn(K, M, dtype=dtype).t(), torch.randn(K, N, dtype=dtype)
            torch.testing.assert_close(ops.gemm(a, b), a @ b, rtol=1e-4, atol=1e-3)
            count += 1
_C.set_isa("auto")
torch.set_num_threads(threads_before)
pyrnn.empty_cache()
assert pyrnn.workspace_cache_stats()["cached_bytes"] == 0
print(f"sanitize grid: {count} runs clean under ASan/UBSan")
