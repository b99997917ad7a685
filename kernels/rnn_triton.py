"""Elman RNN cell math for the Triton kernels: h' = tanh or relu(pre), forward and backward side by side.
The backward needs only the output h (tanh' = 1 - h^2, relu' = [h > 0])."""

import triton
import triton.language as tl

from .activations_triton import tanh


@triton.jit
def rnn_forward_point(pre, RELU: tl.constexpr):
    if RELU:
        return tl.where(pre < 0.0, 0.0, pre)
    else:
        return tanh(pre)


@triton.jit
def rnn_backward_point(dh, h, RELU: tl.constexpr):
    if RELU:
        return tl.where(h > 0.0, dh, 0.0)
    else:
        return dh * (1.0 - h * h)
