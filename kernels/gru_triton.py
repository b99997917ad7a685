"""GRU cell math for the Triton kernels ("reset after", as torch.nn.GRU): forward and backward pointwise
functions, side by side. r = s(gx_r + gh_r), z = s(gx_z + gh_z), n = tanh(gx_n + r * gh_n), h' = (1-z)*n + z*h.
All tensors here are [BM rows, BU units] blocks in float32."""

import triton
import triton.language as tl

from .activations_triton import sigmoid, tanh


@triton.jit
def gru_forward_point(ar, az, gx_n, gh_n, h_prev):
    # ar, az: pre-activations with both projections; gh_n = W_hn h + b_hn. Returns r, z, n, h'.
    r = sigmoid(ar)
    z = sigmoid(az)
    n = tanh(gx_n + r * gh_n)
    return r, z, n, (1.0 - z) * n + z * h_prev


@triton.jit
def gru_backward_point(dh, r, z, n, gh_n, h_prev):
    # Returns dL/d(pre-activations) of r, z, n on the input side, and the n part on the hidden side (dn * r).
    dn = dh * (1.0 - z) * (1.0 - n * n)
    dz = dh * (h_prev - n) * z * (1.0 - z)
    dr = dn * gh_n * r * (1.0 - r)
    return dr, dz, dn, dn * r
