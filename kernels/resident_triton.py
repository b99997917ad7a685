"""The weight-resident persistent Triton kernels: the whole sequence of one layer-direction in one launch,
each program holding its slice of W_hh in registers for all steps (no projection; float32 or float64).

Program p owns the hidden units [p*BU, (p+1)*BU) of every row, so a step needs the whole previous h from all
programs: one grid-wide barrier per step (an atomic counter, release/acquire at GPU scope).
- forward, per step and block of R rows: W_hh[g*H + units, :] . h_prev (a broadcast multiply and a
  reduction over H, the weights from registers), then the cell math of recurrence_triton's _forward_point;
  then the barrier.
- backward, per step: the gate gradients of its units (_backward_point); the barrier (dG of all units is
  written); then dh_prev of its units = dG_h[rows, :] . W_hh[:, units], its columns of W_hh resident too,
  so each unit's carries never leave their program.
The programs must all be resident at once (the host launches at most one per SM) and the barrier would
deadlock under TRITON_INTERPRET=1, which runs programs one after another: with SYNC=0 there is no barrier
and the host launches one phase of one step at a time instead (the launch boundary is the barrier), the
same code otherwise. The previous step's rows written by other programs are read with .cg (from L2, never
a stale L1 line).
"""

import triton
import triton.language as tl

from .recurrence_triton import _backward_point, _finish_dh_prev, _forward_point, _load_rows, _step_info


@triton.jit
def _grid_barrier(counter, target, SYNC: tl.constexpr):
    """All programs of the launch past this point target / num_programs times (counter starts at 0). The
    block barrier before orders this program's stores before the release-add; the acquire-load that sees
    the target orders everyone's stores before what follows."""
    tl.debug_barrier()
    if SYNC:
        tl.atomic_add(counter, 1, sem="release", scope="gpu")
        seen = tl.atomic_add(counter, 0, sem="acquire", scope="gpu")
        while seen < target:
            seen = tl.atomic_add(counter, 0, sem="acquire", scope="gpu")
        tl.debug_barrier()


@triton.jit
def _load_state(prev_base, init_base, rows, ks, from_prev, mask, ld):
    # [R, HK] state rows: the previous step's (written by every program: through L2) or the initial state
    a = tl.load(prev_base + rows[:, None] * ld + ks[None, :], mask=mask & from_prev[:, None], other=0.0,
                cache_modifier=".cg")
    b = tl.load(init_base + rows[:, None] * ld + ks[None, :], mask=mask & ~from_prev[:, None], other=0.0)
    return tl.where(from_prev[:, None], a, b)


@triton.jit
def _rows_dot(x, w):
    # x: [R, HK], w: [BU, HK] -> [R, BU]: out[r, u] = sum_k x[r, k] * w[u, k]
    return tl.sum(x[:, None, :] * w[None, :, :], axis=2)


@triton.jit
def _gate_slice(w_hh, g, units, ks, H, TRANSPOSED: tl.constexpr, ACC: tl.constexpr):
    # [BU, HK]: W_hh[g*H + units, ks] (forward), or W_hh[g*H + ks, units] (TRANSPOSED, backward); zero outside
    mask = (units < H)[:, None] & (ks < H)[None, :]
    if TRANSPOSED:
        at = w_hh + (g * H + ks[None, :]) * H + units[:, None]
    else:
        at = w_hh + (g * H + units[:, None]) * H + ks[None, :]
    return tl.load(at, mask=mask, other=0.0).to(ACC)


@triton.jit
def _resident_slices(w_hh, units, ks, H, G: tl.constexpr, TRANSPOSED: tl.constexpr, ACC: tl.constexpr):
    # this program's W_hh, one [BU, HK] slice per gate (the unused ones repeat w0 where G < 4)
    w0 = _gate_slice(w_hh, 0, units, ks, H, TRANSPOSED, ACC)
    w1 = w0
    w2 = w0
    w3 = w0
    if G > 1:
        w1 = _gate_slice(w_hh, 1, units, ks, H, TRANSPOSED, ACC)
        w2 = _gate_slice(w_hh, 2, units, ks, H, TRANSPOSED, ACC)
    if G > 3:
        w3 = _gate_slice(w_hh, 3, units, ks, H, TRANSPOSED, ACC)
    return w0, w1, w2, w3


@triton.jit(do_not_specialize=["T", "B", "H", "it_begin", "it_end"])
def resident_forward_kernel(
    gx, w_hh, b_hn, h0, c0,  # inputs
    y, cell, gates, gh_n, h_prev_ws,  # outputs and workspace
    batch_sizes, offsets, counter,
    T, B, H, it_begin, it_end,
    CELL: tl.constexpr, G: tl.constexpr, REVERSE: tl.constexpr, RELU: tl.constexpr, HAS_BHN: tl.constexpr,
    SAVE: tl.constexpr, ACC: tl.constexpr, BU: tl.constexpr, HK: tl.constexpr, R: tl.constexpr,
    SYNC: tl.constexpr,
):
    # gx: [N, G*H]  w_hh: [G*H, H]  h0: [B, H]  c0: [B, H]  y, cell, h_prev_ws: [N, H]  gates: [N, G*H]
    # BU units per program, HK = H rounded up to a power of two, R rows per block.
    units = tl.program_id(0) * BU + tl.arange(0, BU)
    umask = units < H
    ks = tl.arange(0, HK)
    kmask = ks < H
    w0, w1, w2, w3 = _resident_slices(w_hh, units, ks, H, G, False, ACC)
    for it in range(it_begin, it_end):
        t, bs, off, n_prev, off_prev, n_next, off_next = _step_info(batch_sizes, offsets, it, T, REVERSE)
        for r0 in range(0, bs, R):
            rows = r0 + tl.arange(0, R)
            active = rows < bs
            from_prev = rows < n_prev
            n_rows = off + rows
            hp = _load_state(y + off_prev * H, h0, rows, ks, from_prev, active[:, None] & kmask[None, :], H)
            acc0 = _rows_dot(hp, w0)
            acc1 = acc0
            acc2 = acc0
            acc3 = acc0
            if G > 1:
                acc1 = _rows_dot(hp, w1)
                acc2 = _rows_dot(hp, w2)
            if G > 3:
                acc3 = _rows_dot(hp, w3)
            m2 = active[:, None] & umask[None, :]
            if SAVE:  # this program's columns of h_prev (its own units of the previous step, or h0)
                hp_u = _load_state(y + off_prev * H, h0, rows, units, from_prev, m2, H)
                tl.store(h_prev_ws + n_rows[:, None] * H + units[None, :], hp_u, mask=m2)
            _forward_point(acc0, acc1, acc2, acc3, gx, b_hn, h0, c0, y, cell, cell, gates, gh_n, rows, units,
                           n_rows, off_prev, from_prev, m2, H, H, CELL, G, RELU, HAS_BHN, SAVE, False)
        _grid_barrier(counter, (it + 1) * tl.num_programs(0), SYNC)


@triton.jit(do_not_specialize=["T", "B", "H", "half_begin", "half_end"])
def resident_backward_kernel(
    w_hh, c0, y, cell, gates, gh_n, h_prev_ws,  # forward inputs, outputs, workspace
    dy, dh_n, dc_n,  # upstream gradients
    d_gates, d_gates_h, dh0, dc0,  # outputs
    dh_ring, dc_ring,  # [2, B, H]: carries between consecutive backward steps (each program its own units)
    batch_sizes, offsets, counter,
    T, B, H, half_begin, half_end,
    CELL: tl.constexpr, G: tl.constexpr, REVERSE: tl.constexpr, RELU: tl.constexpr, ACC: tl.constexpr,
    BU: tl.constexpr, HK: tl.constexpr, R: tl.constexpr, SYNC: tl.constexpr,
):
    # Half-steps 2j (gate gradients of backward step j) and 2j + 1 (its dh_prev): [half_begin, half_end).
    units = tl.program_id(0) * BU + tl.arange(0, BU)
    umask = units < H
    ks = tl.arange(0, HK)
    kmask = ks < H
    GH = G * H
    w0, w1, w2, w3 = _resident_slices(w_hh, units, ks, H, G, True, ACC)
    for half in range(half_begin, half_end):
        j = half // 2
        it = T - 1 - j
        t, bs, off, n_prev, off_prev, n_next, off_next = _step_info(batch_sizes, offsets, it, T, REVERSE)
        slot_in = (it + 1) % 2  # written by the step processed just before (the consumer of this one)
        slot_out = it % 2
        if half % 2 == 0:
            for r0 in range(0, bs, R):
                rows = r0 + tl.arange(0, R)
                active = rows < bs
                n_rows = off + rows
                has_next = rows < n_next
                m2 = active[:, None] & umask[None, :]
                dh = tl.load(dy + n_rows[:, None] * H + units[None, :], mask=m2, other=0.0)
                dh += _load_rows(dh_ring + slot_in * B * H, dh_n, rows, units, has_next, m2, H)
                _backward_point(dh, gates, gh_n, h_prev_ws, cell, c0, y, dc_n, dc_ring, d_gates, d_gates_h, dc0,
                                rows, units, n_rows, off_prev, rows < n_prev, has_next, m2, slot_in, slot_out,
                                B, H, H, CELL, G, RELU)
            _grid_barrier(counter, (j + 1) * tl.num_programs(0), SYNC)  # dG_h of step it, every unit
        else:
            for r0 in range(0, bs, R):
                rows = r0 + tl.arange(0, R)
                active = rows < bs
                n_rows = off + rows
                xmask = active[:, None] & kmask[None, :]
                d_at = d_gates_h + n_rows[:, None] * GH + ks[None, :]
                acc = _rows_dot(tl.load(d_at, mask=xmask, other=0.0, cache_modifier=".cg"), w0)
                if G > 1:
                    acc += _rows_dot(tl.load(d_at + H, mask=xmask, other=0.0, cache_modifier=".cg"), w1)
                    acc += _rows_dot(tl.load(d_at + 2 * H, mask=xmask, other=0.0, cache_modifier=".cg"), w2)
                if G > 3:
                    acc += _rows_dot(tl.load(d_at + 3 * H, mask=xmask, other=0.0, cache_modifier=".cg"), w3)
                _finish_dh_prev(acc, dy, dh_ring, dh_n, dh0, gates, rows, units, n_rows, rows < n_prev,
                                rows < n_next, active[:, None] & umask[None, :], slot_in, slot_out, B, H, H, CELL, G)
            tl.debug_barrier()  # this program's dh carry is written before its next gate gradients read it
