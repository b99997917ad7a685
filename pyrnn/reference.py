"""NumPy float64 reference for every cell and option: forward and hand-written BPTT backward, no torch.

It is written independently of the kernels' packed layout: sequences are padded, time-major [T, B, *], with
per-row lengths; a row past its length keeps its state (as torch.nn does for packed sequences). Every backend
is validated against this module.

Parameters of one layer-direction are a dict with torch.nn's names without suffixes: w_ih [G*H, I],
w_hh [G*H, Hin], b_ih [G*H] / b_hh [G*H] (or None), w_hr [P, H] (LSTM projection, or None).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def _linear(x: np.ndarray, w: np.ndarray, b: Optional[np.ndarray]) -> np.ndarray:
    out = x @ w.T
    return out if b is None else out + b


@dataclass
class LayerCache:
    """What one layer-direction's forward keeps for its backward."""

    mode: str
    reverse: bool
    params: dict
    x: np.ndarray  # [T, B, I]
    mask: np.ndarray  # [T, B, 1] 1.0 where the row is active
    steps: list = field(default_factory=list)  # per processed step: dict of saved values


def layer_forward(mode, x, lengths, h0, c0, params, reverse=False):
    """One layer-direction. x: [T, B, I]; lengths: [B] ints (None = all T); h0: [B, Hin]; c0: [B, H] (LSTM).
    Returns y [T, B, Hin] (zero past each row's length), h_n [B, Hin], c_n [B, H] or None, and the cache."""
    T, B, _ = x.shape
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    mask = (np.arange(T)[:, None] < lengths[None, :]).astype(np.float64)[:, :, None]
    cache = LayerCache(mode, reverse, params, x, mask)
    w_ih, w_hh, b_ih, b_hh = params["w_ih"], params["w_hh"], params.get("b_ih"), params.get("b_hh")
    w_hr = params.get("w_hr")
    h, c = h0.astype(np.float64), None if c0 is None else c0.astype(np.float64)
    y = np.zeros((T, B, h.shape[1]))
    for t in reversed(range(T)) if reverse else range(T):
        m = mask[t]
        gi, gh = _linear(x[t], w_ih, b_ih), _linear(h, w_hh, b_hh)
        saved = {"t": t, "h_prev": h, "c_prev": c}
        if mode == "LSTM":
            H = w_hh.shape[0] // 4
            a = gi + gh
            i, f, g, o = _sigmoid(a[:, :H]), _sigmoid(a[:, H : 2 * H]), np.tanh(a[:, 2 * H : 3 * H]), _sigmoid(a[:, 3 * H :])
            c_new = f * c + i * g
            pre_proj = o * np.tanh(c_new)
            h_new = pre_proj @ w_hr.T if w_hr is not None else pre_proj
            saved.update(i=i, f=f, g=g, o=o, c_new=c_new, pre_proj=pre_proj)
            c = m * c_new + (1 - m) * c
        elif mode == "GRU":
            H = w_hh.shape[0] // 3
            r = _sigmoid(gi[:, :H] + gh[:, :H])
            z = _sigmoid(gi[:, H : 2 * H] + gh[:, H : 2 * H])
            n = np.tanh(gi[:, 2 * H :] + r * gh[:, 2 * H :])
            h_new = (1 - z) * n + z * h
            saved.update(r=r, z=z, n=n, gh_n=gh[:, 2 * H :])
        else:
            a = gi + gh
            h_new = np.tanh(a) if mode == "RNN_TANH" else np.where(a < 0, 0.0, a)
            saved.update(h_new=h_new)
        y[t] = m * h_new
        h = m * h_new + (1 - m) * h
        cache.steps.append(saved)
    return y, h, c, cache


def layer_backward(cache: LayerCache, dy, dh_n, dc_n=None):
    """BPTT of layer_forward. dy: [T, B, Hin]; dh_n: [B, Hin]; dc_n: [B, H] (LSTM).
    Returns dx [T, B, I], dh0, dc0 (or None), and a dict of parameter gradients (same keys as params)."""
    p, mode, x, mask = cache.params, cache.mode, cache.x, cache.mask
    w_ih, w_hh, w_hr = p["w_ih"], p["w_hh"], p.get("w_hr")
    grads = {k: np.zeros_like(v) for k, v in p.items() if v is not None}
    dx = np.zeros_like(x, dtype=np.float64)
    dh = dh_n.astype(np.float64).copy()
    dc = None if dc_n is None else dc_n.astype(np.float64).copy()
    for s in reversed(cache.steps):
        t, m, h_prev = s["t"], mask[s["t"]], s["h_prev"]
        dh = dh + dy[t] * m  # the output at a padded step is not a function of the state
        dh_new, dh_skip = m * dh, (1 - m) * dh
        if mode == "LSTM":
            i, f, g, o, c_new = s["i"], s["f"], s["g"], s["o"], s["c_new"]
            if w_hr is not None:
                grads["w_hr"] += dh_new.T @ s["pre_proj"]
                d_pre = dh_new @ w_hr
            else:
                d_pre = dh_new
            tc = np.tanh(c_new)
            dc_new = m * dc + d_pre * o * (1 - tc * tc)
            da = np.concatenate(
                [dc_new * g * i * (1 - i), dc_new * s["c_prev"] * f * (1 - f), dc_new * i * (1 - g * g), d_pre * tc * o * (1 - o)],
                axis=1,
            )
            dgi = dgh = da
            dc = dc_new * f + (1 - m) * dc
            dh_direct = 0.0
        elif mode == "GRU":
            r, z, n, gh_n = s["r"], s["z"], s["n"], s["gh_n"]
            dan = dh_new * (1 - z) * (1 - n * n)
            daz = dh_new * (h_prev - n) * z * (1 - z)
            dar = dan * gh_n * r * (1 - r)
            dgi = np.concatenate([dar, daz, dan], axis=1)
            dgh = np.concatenate([dar, daz, dan * r], axis=1)
            dh_direct = dh_new * z
        else:
            h_new = s["h_new"]
            dgi = dgh = dh_new * (1 - h_new * h_new) if mode == "RNN_TANH" else dh_new * (h_new > 0)
            dh_direct = 0.0
        grads["w_ih"] += dgi.T @ x[t]
        grads["w_hh"] += dgh.T @ h_prev
        if "b_ih" in grads:
            grads["b_ih"] += dgi.sum(0)
            grads["b_hh"] += dgh.sum(0)
        dx[t] = dgi @ w_ih
        dh = dgh @ w_hh + dh_direct + dh_skip
    return dx, dh, dc, grads


def forward(mode, x, lengths, h0, c0, layers, num_layers, bidirectional):
    """Stacked layers (no dropout). x: [T, B, I]; h0: [L*D, B, Hin]; c0: [L*D, B, H] (LSTM);
    layers: params dicts in torch.nn order (l0 fwd, l0 rev, l1 fwd, ...).
    Returns output [T, B, D*Hin], h_n, c_n (or None), caches."""
    D = 2 if bidirectional else 1
    inp, h_n, c_n, caches = x.astype(np.float64), [], [], []
    for layer in range(num_layers):
        outs = []
        for d in range(D):
            k = layer * D + d
            y, h, c, cache = layer_forward(mode, inp, lengths, h0[k], None if c0 is None else c0[k], layers[k], d == 1)
            outs.append(y)
            h_n.append(h)
            c_n.append(c)
            caches.append(cache)
        inp = np.concatenate(outs, axis=2)
    return inp, np.stack(h_n), (np.stack(c_n) if c0 is not None else None), caches


def backward(caches, num_layers, bidirectional, d_out, dh_n, dc_n=None):
    """BPTT of forward. Returns dx [T, B, I], dh0, dc0 (or None), per-layer-direction gradient dicts."""
    D = 2 if bidirectional else 1
    dh0, dc0, grads = [None] * len(caches), [None] * len(caches), [None] * len(caches)
    d_inp = d_out.astype(np.float64)
    for layer in reversed(range(num_layers)):
        d_next = None
        widths = [caches[layer * D + d].params["w_hh"].shape[1] for d in range(D)]
        for d in range(D):
            k = layer * D + d
            lo = sum(widths[:d])
            dy = d_inp[:, :, lo : lo + widths[d]]
            dx, dh0[k], dc0[k], grads[k] = layer_backward(caches[k], dy, dh_n[k], None if dc_n is None else dc_n[k])
            d_next = dx if d_next is None else d_next + dx
        d_inp = d_next
    return d_inp, np.stack(dh0), (np.stack(dc0) if dc_n is not None else None), grads
