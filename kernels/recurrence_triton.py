"""The Triton time-loop kernels shared by every cell: forward and backward (BPTT) of one layer-direction.

Layout as the CPU kernels: packed time-major rows, step t owning rows [offsets[t], offsets[t] + batch_sizes[t]).

Two modes, one kernel per direction of differentiation (SPLIT selects the mode and phase):
- persistent (SPLIT=0): each program owns a block of BM batch rows and *all* hidden units of them, so the
  recurrence of its rows depends on no other program: one launch runs the whole sequence (W_hh streamed from
  L2 every step) with only a block-level barrier between phases, and it cannot deadlock under
  TRITON_INTERPRET=1, which runs programs one after another. Best where launches dominate (small H).
- step (SPLIT>0): one launch per step and phase, programs over (row block, unit or column block), so a
  large layer fills the GPU: the fused step kernel (recurrent GEMM + gates in one kernel).
Per step and unit block of BU units, the G gate pre-activations are tl.dot products of the [BM, BK] state
block with [BK, BU] weight blocks; the pointwise cell math follows on the accumulators.

CELL: 0 LSTM, 1 GRU, 2 RNN. Accumulation in float32 (float64 for float64 inputs).
"""

import triton
import triton.language as tl

from .gru_triton import gru_backward_point, gru_forward_point
from .lstm_triton import lstm_backward_point, lstm_forward_point
from .rnn_triton import rnn_backward_point, rnn_forward_point


@triton.jit
def _step_info(batch_sizes, offsets, it, T, REVERSE: tl.constexpr):
    """Time index, active rows, first packed row; and the neighbouring steps: the one whose output is this
    step's state (prev) and the one that consumes this step's output (next)."""
    if REVERSE:
        t = T - 1 - it
        t_prev = t + 1
        t_next = t - 1
    else:
        t = it
        t_prev = t - 1
        t_next = t + 1
    bs = tl.load(batch_sizes + t)
    off = tl.load(offsets + t)
    prev_ok = (t_prev >= 0) & (t_prev < T)
    next_ok = (t_next >= 0) & (t_next < T)
    t_prev_c = tl.minimum(tl.maximum(t_prev, 0), T - 1)
    t_next_c = tl.minimum(tl.maximum(t_next, 0), T - 1)
    # rows b < n_prev take their state from step t_prev; the others start from h0
    n_prev = tl.where(prev_ok, tl.minimum(tl.load(batch_sizes + t_prev_c), bs), 0)
    n_next = tl.where(next_ok, tl.minimum(tl.load(batch_sizes + t_next_c), bs), 0)
    return t, bs, off, n_prev, tl.load(offsets + t_prev_c), n_next, tl.load(offsets + t_next_c)


@triton.jit
def _load_rows(prev_base, init_base, rows, cols, from_prev, mask, ld):
    # rows' values at cols, from the previous step's rows (prev_base) or the initial state (init_base)
    a = tl.load(prev_base + rows[:, None] * ld + cols[None, :], mask=mask & from_prev[:, None], other=0.0)
    b = tl.load(init_base + rows[:, None] * ld + cols[None, :], mask=mask & ~from_prev[:, None], other=0.0)
    return tl.where(from_prev[:, None], a, b)


@triton.jit
def _dot(a, b, ACC: tl.constexpr):
    if ACC == tl.float64:
        return tl.sum(a[:, :, None] * b[None, :, :], axis=1)
    else:
        return tl.dot(a, b, input_precision="ieee")


# Sizes and step ranges are runtime values, never specialised on: no recompilation per shape.
@triton.jit
def _phase_range(n, block_start, BU: tl.constexpr, SPLIT: tl.constexpr, PHASE: tl.constexpr):
    """[begin, end) of the n units/columns a program covers in phase PHASE: all of them in the persistent
    mode (SPLIT 0), its block of BU when this launch runs that phase, none when it runs another."""
    begin, end = 0, n
    if SPLIT == PHASE:
        begin = block_start
        end = tl.minimum(block_start + BU, n)
    if SPLIT != 0 and SPLIT != PHASE:
        end = 0
    return begin, end


@triton.jit
def _forward_point(acc0, acc1, acc2, acc3, gx, b_hn, h0, c0, y, cell, proj_in, gates, gh_n, rows, units, n_rows,
                   off_prev, from_prev, m2, H, Hin, CELL: tl.constexpr, G: tl.constexpr, RELU: tl.constexpr,
                   HAS_BHN: tl.constexpr, SAVE: tl.constexpr, HAS_PROJ: tl.constexpr):
    """The cell math of one [rows, units] block (mask m2) from its recurrent sums acc0..acc3 (W_hh h of each
    gate): stores h (into y, or proj_in under a projection), c (LSTM) and the backward's workspace. The
    previous step's c and h of these units come from the rows this program wrote itself."""
    GH = G * H
    gx_at = gx + n_rows[:, None] * GH + units[None, :]
    h_at = n_rows[:, None] * H + units[None, :]
    if CELL == 0:
        c_prev = _load_rows(cell + off_prev * H, c0, rows, units, from_prev, m2, H)
        i, f, g, o, c, h = lstm_forward_point(
            acc0 + tl.load(gx_at, mask=m2, other=0.0), acc1 + tl.load(gx_at + H, mask=m2, other=0.0),
            acc2 + tl.load(gx_at + 2 * H, mask=m2, other=0.0), acc3 + tl.load(gx_at + 3 * H, mask=m2, other=0.0),
            c_prev)
        tl.store(cell + h_at, c, mask=m2)
        if HAS_PROJ:
            tl.store(proj_in + h_at, h, mask=m2)
        else:
            tl.store(y + n_rows[:, None] * Hin + units[None, :], h, mask=m2)
        if SAVE:
            g_at = gates + n_rows[:, None] * GH + units[None, :]
            tl.store(g_at, i, mask=m2)
            tl.store(g_at + H, f, mask=m2)
            tl.store(g_at + 2 * H, g, mask=m2)
            tl.store(g_at + 3 * H, o, mask=m2)
    elif CELL == 1:
        ghn = acc2
        if HAS_BHN:
            ghn += tl.load(b_hn + units, mask=units < H, other=0.0)[None, :]
        hp_u = _load_rows(y + off_prev * Hin, h0, rows, units, from_prev, m2, Hin)
        r, z, n, h = gru_forward_point(
            acc0 + tl.load(gx_at, mask=m2, other=0.0), acc1 + tl.load(gx_at + H, mask=m2, other=0.0),
            tl.load(gx_at + 2 * H, mask=m2, other=0.0), ghn, hp_u)
        tl.store(y + n_rows[:, None] * Hin + units[None, :], h, mask=m2)
        if SAVE:
            g_at = gates + n_rows[:, None] * GH + units[None, :]
            tl.store(g_at, r, mask=m2)
            tl.store(g_at + H, z, mask=m2)
            tl.store(g_at + 2 * H, n, mask=m2)
            tl.store(gh_n + h_at, ghn, mask=m2)
    else:
        h = rnn_forward_point(acc0 + tl.load(gx_at, mask=m2, other=0.0), RELU)
        tl.store(y + n_rows[:, None] * Hin + units[None, :], h, mask=m2)


@triton.jit(do_not_specialize=["T", "B", "H", "P", "Hin", "it_begin", "it_end"])
def recurrence_forward_kernel(
    gx, w_hh, w_hr, b_hn, h0, c0,  # inputs
    y, cell, proj_in, gates, gh_n, h_prev_ws,  # outputs and workspace
    batch_sizes, offsets,
    T, B, H, P, Hin, it_begin, it_end,
    CELL: tl.constexpr, G: tl.constexpr, REVERSE: tl.constexpr, RELU: tl.constexpr, HAS_BHN: tl.constexpr,
    SAVE: tl.constexpr, HAS_PROJ: tl.constexpr, ACC: tl.constexpr,
    BM: tl.constexpr, BU: tl.constexpr, BK: tl.constexpr, SPLIT: tl.constexpr,
):
    # SPLIT: 0 persistent (all units, all phases); 1 gates of unit block program_id(1); 2 projection columns
    # of block program_id(1).
    # gx: [N, G*H]  w_hh: [G*H, Hin]  w_hr: [P, H]  h0: [B, Hin]  c0: [B, H]  y: [N, Hin]  cell, proj_in: [N, H]
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    GH = G * H
    for it in range(it_begin, it_end):
        t, bs, off, n_prev, off_prev, n_next, off_next = _step_info(batch_sizes, offsets, it, T, REVERSE)
        active = rows < bs
        from_prev = rows < n_prev
        n_rows = off + rows
        u_begin, u_end = _phase_range(H, tl.program_id(1) * BU, BU, SPLIT, 1)
        for u0 in range(u_begin, u_end, BU):
            units = u0 + tl.arange(0, BU)
            umask = units < H
            acc0 = tl.zeros([BM, BU], dtype=ACC)
            acc1 = tl.zeros([BM, BU], dtype=ACC)
            acc2 = tl.zeros([BM, BU], dtype=ACC)
            acc3 = tl.zeros([BM, BU], dtype=ACC)
            for k0 in range(0, Hin, BK):
                ks = k0 + tl.arange(0, BK)
                kmask = ks < Hin
                hmask = active[:, None] & kmask[None, :]
                hp = _load_rows(y + off_prev * Hin, h0, rows, ks, from_prev, hmask, Hin)  # [BM, BK]
                if SAVE:
                    if u0 == 0:
                        tl.store(h_prev_ws + n_rows[:, None] * Hin + ks[None, :], hp, mask=hmask)
                wmask = kmask[:, None] & umask[None, :]
                w_base = w_hh + units[None, :] * Hin + ks[:, None]  # [BK, BU] = W_hh[g*H + units, ks]^T
                acc0 += _dot(hp, tl.load(w_base, mask=wmask, other=0.0), ACC)
                if G > 1:
                    acc1 += _dot(hp, tl.load(w_base + H * Hin, mask=wmask, other=0.0), ACC)
                    acc2 += _dot(hp, tl.load(w_base + 2 * H * Hin, mask=wmask, other=0.0), ACC)
                if G > 3:
                    acc3 += _dot(hp, tl.load(w_base + 3 * H * Hin, mask=wmask, other=0.0), ACC)
            _forward_point(acc0, acc1, acc2, acc3, gx, b_hn, h0, c0, y, cell, proj_in, gates, gh_n, rows, units,
                           n_rows, off_prev, from_prev, active[:, None] & umask[None, :], H, Hin,
                           CELL, G, RELU, HAS_BHN, SAVE, HAS_PROJ)
        if HAS_PROJ and SPLIT != 1:
            tl.debug_barrier()  # proj_in of all units of these rows is written
            p_begin, p_end = _phase_range(P, tl.program_id(1) * BU, BU, SPLIT, 2)
            for p0 in range(p_begin, p_end, BU):
                ps = p0 + tl.arange(0, BU)
                pmask = ps < P
                acc = tl.zeros([BM, BU], dtype=ACC)
                for k0 in range(0, H, BK):
                    ks = k0 + tl.arange(0, BK)
                    kmask = ks < H
                    m_blk = tl.load(proj_in + n_rows[:, None] * H + ks[None, :], mask=active[:, None] & kmask[None, :], other=0.0)
                    w = tl.load(w_hr + ps[None, :] * H + ks[:, None], mask=kmask[:, None] & pmask[None, :], other=0.0)
                    acc += _dot(m_blk, w, ACC)
                tl.store(y + n_rows[:, None] * Hin + ps[None, :], acc, mask=active[:, None] & pmask[None, :])
        tl.debug_barrier()  # this step's states are visible to the whole program before the next step


@triton.jit
def _backward_point(dh, gates, gh_n, h_prev_ws, cell, c0, y, dc_n, dc_ring, d_gates, d_gates_h, dc0, rows, units,
                    n_rows, off_prev, from_prev, has_next, m2, slot_in, slot_out, B, H, Hin,
                    CELL: tl.constexpr, G: tl.constexpr, RELU: tl.constexpr):
    """The gate gradients of one [rows, units] block (mask m2) given dh = dL/dh of these units: stores d_gates
    (d_gates_h for the GRU) and the LSTM's dL/dc carry (dc_ring slot slot_out, or dc0 for rows that start
    here), reading the carry of the step processed before from slot slot_in (or dc_n)."""
    GH = G * H
    g_at = gates + n_rows[:, None] * GH + units[None, :]
    dg_at = d_gates + n_rows[:, None] * GH + units[None, :]
    h_at = n_rows[:, None] * H + units[None, :]
    if CELL == 0:
        dc_carry = _load_rows(dc_ring + slot_in * B * H, dc_n, rows, units, has_next, m2, H)
        c_prev = _load_rows(cell + off_prev * H, c0, rows, units, from_prev, m2, H)
        di, df, dgg, do, dc_prev = lstm_backward_point(
            dh, dc_carry, tl.load(g_at, mask=m2, other=0.0), tl.load(g_at + H, mask=m2, other=0.0),
            tl.load(g_at + 2 * H, mask=m2, other=0.0), tl.load(g_at + 3 * H, mask=m2, other=0.0),
            tl.load(cell + h_at, mask=m2, other=0.0), c_prev)
        tl.store(dg_at, di, mask=m2)
        tl.store(dg_at + H, df, mask=m2)
        tl.store(dg_at + 2 * H, dgg, mask=m2)
        tl.store(dg_at + 3 * H, do, mask=m2)
        ring_at = dc_ring + slot_out * B * H + rows[:, None] * H + units[None, :]
        tl.store(ring_at, dc_prev, mask=m2 & from_prev[:, None])
        tl.store(dc0 + rows[:, None] * H + units[None, :], dc_prev, mask=m2 & ~from_prev[:, None])
    elif CELL == 1:
        dr, dz, dn, dn_h = gru_backward_point(
            dh, tl.load(g_at, mask=m2, other=0.0), tl.load(g_at + H, mask=m2, other=0.0),
            tl.load(g_at + 2 * H, mask=m2, other=0.0), tl.load(gh_n + h_at, mask=m2, other=0.0),
            tl.load(h_prev_ws + h_at, mask=m2, other=0.0))
        dgh_at = d_gates_h + n_rows[:, None] * GH + units[None, :]
        tl.store(dg_at, dr, mask=m2)
        tl.store(dgh_at, dr, mask=m2)
        tl.store(dg_at + H, dz, mask=m2)
        tl.store(dgh_at + H, dz, mask=m2)
        tl.store(dg_at + 2 * H, dn, mask=m2)
        tl.store(dgh_at + 2 * H, dn_h, mask=m2)
    else:
        h = tl.load(y + n_rows[:, None] * Hin + units[None, :], mask=m2, other=0.0)
        tl.store(dg_at, rnn_backward_point(dh, h, RELU), mask=m2)


@triton.jit
def _finish_dh_prev(acc, dy, dh_ring, dh_n, dh0, gates, rows, cols, n_rows, from_prev, has_next, m2, slot_in,
                    slot_out, B, H, Hin, CELL: tl.constexpr, G: tl.constexpr):
    """acc = dG_h . W_hh of one [rows, cols] block: adds the GRU's direct path and stores dL/dh_prev into the
    dh_ring slot slot_out, or into dh0 for rows that start at this step."""
    GH = G * H
    if CELL == 1:  # h' = ... + z * h: a direct path around the GEMM
        tot = tl.load(dy + n_rows[:, None] * Hin + cols[None, :], mask=m2, other=0.0)
        tot += _load_rows(dh_ring + slot_in * B * Hin, dh_n, rows, cols, has_next, m2, Hin)
        acc += tot * tl.load(gates + n_rows[:, None] * GH + H + cols[None, :], mask=m2, other=0.0)
    tl.store(dh_ring + slot_out * B * Hin + rows[:, None] * Hin + cols[None, :], acc, mask=m2 & from_prev[:, None])
    tl.store(dh0 + rows[:, None] * Hin + cols[None, :], acc, mask=m2 & ~from_prev[:, None])


@triton.jit(do_not_specialize=["T", "B", "H", "P", "Hin", "j_begin", "j_end"])
def recurrence_backward_kernel(
    w_hh, w_hr, c0, y, cell, proj_in, gates, gh_n, h_prev_ws,  # forward inputs, outputs, workspace
    dy, dh_n, dc_n,  # upstream gradients
    d_gates, d_gates_h, dh0, dc0, dh_total,  # outputs
    dh_ring, dc_ring,  # [2, B, Hin] / [2, B, H] carries between consecutive backward steps
    batch_sizes, offsets,
    T, B, H, P, Hin, j_begin, j_end,
    CELL: tl.constexpr, G: tl.constexpr, REVERSE: tl.constexpr, RELU: tl.constexpr, HAS_PROJ: tl.constexpr,
    ACC: tl.constexpr, BM: tl.constexpr, BU: tl.constexpr, BK: tl.constexpr, SPLIT: tl.constexpr,
):
    # SPLIT: 0 persistent (all phases); 1 dh_total of projection columns, 2 gate gradients of a unit block,
    # 3 dh_prev of a column block: block program_id(1), one launch per backward step and phase.
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    GH = G * H
    blk = tl.program_id(1) * BU
    for j in range(j_begin, j_end):
        it = T - 1 - j
        t, bs, off, n_prev, off_prev, n_next, off_next = _step_info(batch_sizes, offsets, it, T, REVERSE)
        active = rows < bs
        from_prev = rows < n_prev
        has_next = rows < n_next
        n_rows = off + rows
        slot_in = (it + 1) % 2   # written by the step processed just before (the consumer of this one)
        slot_out = it % 2
        if HAS_PROJ and (SPLIT == 0 or SPLIT == 1):
            p_begin, p_end = _phase_range(P, blk, BU, SPLIT, 1)
            for p0 in range(p_begin, p_end, BU):
                ps = p0 + tl.arange(0, BU)
                m2 = active[:, None] & (ps < P)[None, :]
                carry = _load_rows(dh_ring + slot_in * B * Hin, dh_n, rows, ps, has_next, m2, Hin)
                tot = tl.load(dy + n_rows[:, None] * Hin + ps[None, :], mask=m2, other=0.0) + carry
                tl.store(dh_total + n_rows[:, None] * P + ps[None, :], tot, mask=m2)
            tl.debug_barrier()
        u_begin, u_end = _phase_range(H, blk, BU, SPLIT, 2)
        for u0 in range(u_begin, u_end, BU):
            units = u0 + tl.arange(0, BU)
            umask = units < H
            m2 = active[:, None] & umask[None, :]
            if HAS_PROJ:
                dh = tl.zeros([BM, BU], dtype=ACC)
                for k0 in range(0, P, BK):
                    ks = k0 + tl.arange(0, BK)
                    kmask = ks < P
                    tot = tl.load(dh_total + n_rows[:, None] * P + ks[None, :], mask=active[:, None] & kmask[None, :], other=0.0)
                    w = tl.load(w_hr + ks[:, None] * H + units[None, :], mask=kmask[:, None] & umask[None, :], other=0.0)
                    dh += _dot(tot, w, ACC)
            else:
                dh = tl.load(dy + n_rows[:, None] * Hin + units[None, :], mask=m2, other=0.0)
                dh += _load_rows(dh_ring + slot_in * B * Hin, dh_n, rows, units, has_next, m2, Hin)
            _backward_point(dh, gates, gh_n, h_prev_ws, cell, c0, y, dc_n, dc_ring, d_gates, d_gates_h, dc0, rows,
                            units, n_rows, off_prev, from_prev, has_next, m2, slot_in, slot_out, B, H, Hin,
                            CELL, G, RELU)
        tl.debug_barrier()  # all gate gradients of these rows are written
        c_begin, c_end = _phase_range(Hin, blk, BU, SPLIT, 3)
        for c_0 in range(c_begin, c_end, BU):
            cols = c_0 + tl.arange(0, BU)
            cmask = cols < Hin
            m2 = active[:, None] & cmask[None, :]
            acc = tl.zeros([BM, BU], dtype=ACC)
            for k0 in range(0, GH, BK):
                ks = k0 + tl.arange(0, BK)
                kmask = ks < GH
                dgh = tl.load(d_gates_h + n_rows[:, None] * GH + ks[None, :], mask=active[:, None] & kmask[None, :], other=0.0)
                w = tl.load(w_hh + ks[:, None] * Hin + cols[None, :], mask=kmask[:, None] & cmask[None, :], other=0.0)
                acc += _dot(dgh, w, ACC)
            _finish_dh_prev(acc, dy, dh_ring, dh_n, dh0, gates, rows, cols, n_rows, from_prev, has_next, m2,
                            slot_in, slot_out, B, H, Hin, CELL, G)
        tl.debug_barrier()
