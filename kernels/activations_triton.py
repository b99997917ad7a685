"""Activations for the Triton kernels, written so NaN and Inf behave as in torch."""

import triton
import triton.language as tl


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def tanh(x):
    # 1 - 2 / (exp(2x) + 1): exact limits +-1 at +-inf; for tiny |x| the odd series keeps relative accuracy
    big = 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)
    x2 = x * x
    small = x * (1.0 + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0))))
    return tl.where(tl.abs(x) < 0.0625, small, big)
