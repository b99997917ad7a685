"""LSTM cell math for the Triton kernels: forward and backward pointwise functions, side by side.
Gates i, f, g, o; c' = f*c + i*g; h' = o*tanh(c'). The shared time-loop kernels live in recurrence_triton.py.
All tensors here are [BM rows, BU units] blocks in float32."""

import triton
import triton.language as tl

from .activations_triton import sigmoid, tanh


@triton.jit
def lstm_forward_point(ai, af, ag, ao, c_prev):
    # ai..ao: pre-activations (W_ih x + b + W_hh h); returns the gates, the new cell and o * tanh(c)
    i = sigmoid(ai)
    f = sigmoid(af)
    g = tanh(ag)
    o = sigmoid(ao)
    c = f * c_prev + i * g
    return i, f, g, o, c, o * tanh(c)


@triton.jit
def lstm_backward_point(dh, dc_carry, i, f, g, o, c, c_prev):
    # dh: dL/d(o * tanh(c)); dc_carry: dL/dc from the next step. Returns the 4 pre-activation gradients and
    # dL/dc_prev.
    tc = tanh(c)
    dc = dc_carry + dh * o * (1.0 - tc * tc)
    di = dc * g * i * (1.0 - i)
    df = dc * c_prev * f * (1.0 - f)
    dg = dc * i * (1.0 - g * g)
    do = dh * tc * o * (1.0 - o)
    return di, df, dg, do, dc * f
