"""GPU backends on a CUDA device against torch.nn (cuDNN): skipped, with the reason, where there is no GPU.
The CUDA sources are compiled wherever nvcc is found (setup.py); that much is checked everywhere."""

from __future__ import annotations

import shutil

import pytest
import torch

import pyrnn
from test_modules import Config, make_inputs, make_pair, random_configs, run

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no CUDA toolkit (nvcc) here, so no CUDA build to check")
def test_cuda_sources_were_compiled():
    from pyrnn import _cuda

    assert hasattr(_cuda, "lstm_forward") and hasattr(_cuda, "gru_backward")


@needs_gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("cfg", [c for c in random_configs(320, seed=7) if c.hidden_size <= 33][:24], ids=str)
def test_gpu_backend_matches_torch_nn(cfg: Config, backend):
    ok = pyrnn.backends()[backend]["available"]
    if not ok:
        pytest.skip(pyrnn.backends()[backend]["reason"])
    if cfg.dropout > 0 and cfg.training and cfg.num_layers > 1:
        # The reference is CPU torch.nn, whose masks come from the CPU generator and ours from the CUDA one, so
        # outputs cannot match. Dropout between layers is backend-independent Python (functional.recurrence); the
        # Triton kernels run such configurations against torch.nn under TRITON_INTERPRET in test_triton.py.
        pytest.skip("dropout masks differ between the CPU reference's generator and the CUDA one")
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    ref, ours = make_pair(cfg)
    x, lengths, hx = make_inputs(cfg, gen)
    exp_out, exp_grads = run(ref, cfg, x, lengths, hx, cfg.seed, cfg.seed + 1)  # CPU torch.nn as the reference
    pyrnn.set_backend(backend)
    try:
        ours = ours.cuda()
        hx_gpu = None if hx is None else (tuple(h.cuda() for h in hx) if isinstance(hx, tuple) else hx.cuda())
        got_out, got_grads = run(ours, cfg, x.cuda(), lengths, hx_gpu, cfg.seed, cfg.seed + 1)
    finally:
        pyrnn.set_backend("auto")
    tol = dict(rtol=1e-4, atol=1e-5) if cfg.dtype == torch.float32 else dict(rtol=1e-9, atol=1e-9)
    for g, e in zip(got_out, exp_out):
        torch.testing.assert_close(g.cpu(), e, **tol)
    for name in exp_grads:
        torch.testing.assert_close(got_grads[name].cpu(), exp_grads[name], **tol)
