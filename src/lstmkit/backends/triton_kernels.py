"""The Triton kernels of the GPU backend (:mod:`lstmkit.backends.triton_gpu` launches them).

This module is imported at the backend's first use, not with lstmkit: ``triton.jit`` decides when
it decorates a kernel whether the kernel is compiled or interpreted (TRITON_INTERPRET=1).

One program owns BLOCK_B batch rows and runs the whole time loop for them. A step works in tiles:
BLOCK_H cells at a time (the four gate columns j, H + j, 2H + j, 3H + j of a tile together, so the
gate math needs no other tile) or BLOCK_P outputs at a time. Products with the weights are
``tl.dot`` over BLOCK_K-wide slices with float32 accumulation (float64 for float64). What a phase
writes to global memory and a later phase of the same program reads is separated by a barrier;
no program reads another's rows, so there is no grid-wide synchronisation and no atomic.

States, gate inputs and gradients are kept in the accumulation dtype ("ACC": float32, or float64
for float64), whatever the dtype of the inputs. Shapes in comments: T steps, B batch, H cells,
P = proj_size or H, G = 4H, and BB, BH, BP for tiles. ``V`` is a
:class:`lstmkit.backends.triton_gpu.Codes` (the variant as compile-time constants), ``prm`` a
:class:`Params` (its alpha/beta and clip values, read at run time).
"""

from typing import NamedTuple

import triton
import triton.language as tl


class Params(NamedTuple):
    """The variant's numbers, loaded from the (8,) parameter tensor, in this order."""

    alpha_f: tl.tensor
    beta_f: tl.tensor
    alpha_g: tl.tensor
    beta_g: tl.tensor
    alpha_h: tl.tensor
    beta_h: tl.tensor
    clip: tl.tensor
    cell_clip: tl.tensor


class Cell(NamedTuple):
    """One tile of a step's forward values (each (BB, BH)): what backward differentiates."""

    z_i: tl.tensor  # gate inputs, peephole terms included, before the clip
    z_f: tl.tensor
    z: tl.tensor
    z_o: tl.tensor
    i: tl.tensor  # f(z_i), or 1
    fg: tl.tensor  # f(z_f), 1 - i (coupled) or 1
    gz: tl.tensor  # g(z)
    c_raw: tl.tensor  # g(z) i + c^{t-1} fg, before cell_clip
    c: tl.tensor  # c^t
    o: tl.tensor  # f(z_o), or 1
    hc: tl.tensor  # h(c^t)


# ------------------------------------------------------------------ activations and the cell


@triton.jit
def _tanh(x):
    e = tl.exp(-2.0 * tl.abs(x))  # in (0, 1]: never overflows
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def _activate(x, ACT: tl.constexpr, alpha, beta):
    """ONNX's activation ACT (its name) of x; definitions as lstmkit.activations."""
    if ACT == "sigmoid":
        y = tl.sigmoid(x)
    elif ACT == "tanh":
        y = _tanh(x)
    elif ACT == "identity":
        y = x
    elif ACT == "relu":
        y = tl.maximum(x, 0.0)
    elif ACT == "hard_sigmoid":
        y = tl.clamp(alpha * x + beta, 0.0, 1.0)
    elif ACT == "leaky_relu":
        y = tl.where(x >= 0, x, alpha * x)
    elif ACT == "thresholded_relu":
        y = tl.where(x > alpha, x, 0.0)
    elif ACT == "scaled_tanh":
        y = alpha * _tanh(beta * x)
    elif ACT == "affine":
        y = alpha * x + beta
    elif ACT == "elu":
        y = tl.where(x >= 0, x, alpha * (tl.exp(tl.minimum(x, 0.0)) - 1.0))
    elif ACT == "softsign":
        y = x / (1.0 + tl.abs(x))
    else:  # softplus: log(1 + e^x), stable both ways
        y = tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))
    return y


@triton.jit
def _activate_grad(x, ACT: tl.constexpr, alpha, beta):
    """The derivative of _activate at x; at kinks as torch autograd (relu'(0) = 0, elu'(0) = alpha)."""
    one = tl.full(x.shape, 1.0, x.dtype)
    if ACT == "sigmoid":
        s = tl.sigmoid(x)
        d = s * (1.0 - s)
    elif ACT == "tanh":
        t = _tanh(x)
        d = 1.0 - t * t
    elif ACT == "identity":
        d = one
    elif ACT == "relu":
        d = tl.where(x > 0, one, 0.0)
    elif ACT == "hard_sigmoid":
        u = alpha * x + beta
        d = tl.where((u > 0) & (u < 1), alpha * one, 0.0)
    elif ACT == "leaky_relu":
        d = tl.where(x > 0, one, alpha)
    elif ACT == "thresholded_relu":
        d = tl.where(x > alpha, one, 0.0)
    elif ACT == "scaled_tanh":
        t = _tanh(beta * x)
        d = alpha * beta * (1.0 - t * t)
    elif ACT == "affine":
        d = alpha * one
    elif ACT == "elu":
        d = tl.where(x > 0, one, alpha * tl.exp(tl.minimum(x, 0.0)))
    elif ACT == "softsign":
        u = 1.0 + tl.abs(x)
        d = 1.0 / (u * u)
    else:  # softplus
        d = tl.sigmoid(x)
    return d


@triton.jit
def _clip(x, limit, ON: tl.constexpr):
    if ON:
        x = tl.clamp(x, -limit, limit)
    return x


@triton.jit
def _gate(z, PRESENT: tl.constexpr, ACT: tl.constexpr, alpha, beta, clip, CLIP: tl.constexpr):
    """ACT(clip(z)), or 1 for a dropped gate."""
    if PRESENT:
        y = _activate(_clip(z, clip, CLIP), ACT, alpha, beta)
    else:
        y = tl.full(z.shape, 1.0, z.dtype)
    return y


@triton.jit
def _gate_grad(d, z, PRESENT: tl.constexpr, ACT: tl.constexpr, alpha, beta, clip, CLIP: tl.constexpr):
    """dL/dz from d = dL/d_gate(z); the clamp passes the gradient where -clip <= z <= clip."""
    if PRESENT:
        d = d * _activate_grad(_clip(z, clip, CLIP), ACT, alpha, beta)
        if CLIP:
            d = tl.where((z >= -clip) & (z <= clip), d, 0.0)
    else:
        d = tl.zeros(z.shape, z.dtype)
    return d


@triton.jit
def _peepholes(peep_ptr, H, j, j_ok, DIAGONAL: tl.constexpr):
    """(p_i, p_f, p_o), each (1, BH) in ACC, for diagonal peepholes; else None."""
    p = None
    if DIAGONAL:
        ACC: tl.constexpr = tl.float64 if peep_ptr.dtype.element_ty == tl.float64 else tl.float32
        p = (tl.load(peep_ptr + j, mask=j_ok, other=0.0).to(ACC)[None, :],
             tl.load(peep_ptr + H + j, mask=j_ok, other=0.0).to(ACC)[None, :],
             tl.load(peep_ptr + 2 * H + j, mask=j_ok, other=0.0).to(ACC)[None, :])
    return p


@triton.jit
def _cell(z_i, z_f, z, z_o, c_prev, p, prm, V: tl.constexpr):
    """One tile of the cell (SPEC section 1), from W x^t + R h^{t-1} (+ Q c^{t-1}) and c^{t-1}."""
    if V.peephole == "diagonal":
        z_i = z_i + p[0] * c_prev
        z_f = z_f + p[1] * c_prev
    i = _gate(z_i, V.has_i, V.act_f, prm.alpha_f, prm.beta_f, prm.clip, V.clip)
    if V.coupled:
        fg = 1.0 - i
    else:
        fg = _gate(z_f, V.has_f, V.act_f, prm.alpha_f, prm.beta_f, prm.clip, V.clip)
    gz = _gate(z, True, V.act_g, prm.alpha_g, prm.beta_g, prm.clip, V.clip)
    c_raw = gz * i + c_prev * fg
    c = _clip(c_raw, prm.cell_clip, V.cell_clip)
    if V.peephole == "diagonal":
        z_o = z_o + p[2] * c  # the output gate peeks at the new cell
    o = _gate(z_o, V.has_o, V.act_f, prm.alpha_f, prm.beta_f, prm.clip, V.clip)
    hc = _activate(c, V.act_h, prm.alpha_h, prm.beta_h)
    return Cell(z_i, z_f, z, z_o, i, fg, gz, c_raw, c, o, hc)


@triton.jit
def _cell_grad(d_a, d_c, cell, c_prev, p, prm, V: tl.constexpr):
    """Backward of _cell: from dL/da (a = h(c^t) f(z_o)) and dL/dc^t to dL/dz_* and dL/dc^{t-1}."""
    d_c = d_c + d_a * cell.o * _activate_grad(cell.c, V.act_h, prm.alpha_h, prm.beta_h)
    d_z_o = _gate_grad(d_a * cell.hc, cell.z_o, V.has_o, V.act_f, prm.alpha_f, prm.beta_f, prm.clip, V.clip)
    if V.peephole == "diagonal":
        d_c = d_c + d_z_o * p[2]
    if V.cell_clip:
        d_c = tl.where((cell.c_raw >= -prm.cell_clip) & (cell.c_raw <= prm.cell_clip), d_c, 0.0)
    d_i = d_c * cell.gz
    d_fg = d_c * c_prev
    d_c_prev = d_c * cell.fg
    d_z = _gate_grad(d_c * cell.i, cell.z, True, V.act_g, prm.alpha_g, prm.beta_g, prm.clip, V.clip)
    if V.coupled:  # fg = 1 - i
        d_i = d_i - d_fg
        d_z_f = tl.zeros(d_c.shape, d_c.dtype)
    else:
        d_z_f = _gate_grad(d_fg, cell.z_f, V.has_f, V.act_f, prm.alpha_f, prm.beta_f, prm.clip, V.clip)
    d_z_i = _gate_grad(d_i, cell.z_i, V.has_i, V.act_f, prm.alpha_f, prm.beta_f, prm.clip, V.clip)
    if V.peephole == "diagonal":
        d_c_prev = d_c_prev + d_z_i * p[0] + d_z_f * p[1]
    return d_z_i, d_z_f, d_z, d_z_o, d_c_prev


# ------------------------------------------------------------------ tiles and products


@triton.jit
def _mm(acc, a_ptr, a_rows, row_ok, K, w_ptr, w_stride, cols, col_ok, BLOCK_K: tl.constexpr):
    """acc + A[rows, :K] @ W[:K, cols], acc (BB, BN) in ACC.

    a_rows: (BB,) int64 offsets of A's rows; W is row-major with row stride w_stride. A is cast
    to W's dtype (the tensor-core operand type for bf16 and fp16); "ieee" keeps float32 exact.
    """
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < K
        a = tl.load(a_ptr + a_rows[:, None] + k[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_ptr + k.to(tl.int64)[:, None] * w_stride + cols[None, :],
                    mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        acc = tl.dot(a.to(w.dtype), w, acc, input_precision="ieee", out_dtype=acc.dtype)
    return acc


@triton.jit
def _load(ptr, rows, cols, ok):
    """The (BB, BN) tile at row offsets rows (BB,) and columns cols (BN,), in ACC."""
    ACC: tl.constexpr = tl.float64 if ptr.dtype.element_ty == tl.float64 else tl.float32
    return tl.load(ptr + rows[:, None] + cols[None, :], mask=ok, other=0.0).to(ACC)


@triton.jit
def _store(ptr, rows, cols, ok, value):
    tl.store(ptr + rows[:, None] + cols[None, :], value.to(ptr.dtype.element_ty), mask=ok)


@triton.jit
def _step(s, T, B, rows, REVERSE: tl.constexpr):
    """Time t of forward step s, and the (BB,) row offsets (in units of a row) of the state slots
    it reads (h^{t-1}, c^{t-1}) and writes: slot t + 1 - REVERSE holds the state after time t."""
    if REVERSE:
        t = T - 1 - s
        slot_in, slot_out = t + 1, t
    else:
        t = s
        slot_in, slot_out = t, t + 1
    return t, t * B + rows, slot_in * B + rows, slot_out * B + rows


@triton.jit
def _program_rows(len_ptr, prm_ptr, B, BLOCK_B: tl.constexpr):
    """This program's (BB,) batch rows (int64), which of them exist, their lengths, and the Params."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    rows = rows.to(tl.int64)
    length = tl.load(len_ptr + rows, mask=row_ok, other=0)
    prm = Params(tl.load(prm_ptr), tl.load(prm_ptr + 1), tl.load(prm_ptr + 2), tl.load(prm_ptr + 3),
                 tl.load(prm_ptr + 4), tl.load(prm_ptr + 5), tl.load(prm_ptr + 6), tl.load(prm_ptr + 7))
    return rows, row_ok, length, prm


# ------------------------------------------------------------------ kernels


@triton.jit
def lstm_forward(
    x_ptr,  # (T, B, G) x_proj: W x^t + b
    w_ptr,  # (P, G) R^T
    q_ptr,  # (H, G) Q^T (full peepholes) or None
    peep_ptr,  # (3, H) p_i, p_f, p_o (diagonal peepholes) or None
    w_hr_ptr,  # (H, P) W_hr^T (projection) or None
    len_ptr,  # (B,) int64 lengths
    prm_ptr,  # (8,) Params, ACC
    hs_ptr,  # (T + 1, B, P) h states, ACC, the initial one in place (slot 0, or T if REVERSE)
    cs_ptr,  # (T + 1, B, H) c states
    y_ptr,  # (T, B, P) outputs
    z_ptr,  # (T, B, G) gate inputs before diagonal peepholes, ACC, for backward (SAVE) or None
    a_ptr,  # (T, B, H) h(c^t) f(z_o), ACC, the projection's input (PROJ) or None
    T, B, H, P,
    V: tl.constexpr, PROJ: tl.constexpr, SAVE: tl.constexpr, REVERSE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
):
    ACC: tl.constexpr = hs_ptr.dtype.element_ty
    G = 4 * H
    rows, row_ok, length, prm = _program_rows(len_ptr, prm_ptr, B, BLOCK_B)
    for s in range(T):
        t, at_t, at_in, at_out = _step(s, T, B, rows, REVERSE)
        valid = row_ok & (t < length)  # (BB,) steps past a length carry the state on
        for j0 in range(0, H, BLOCK_H):  # tiles of cells: z = x_proj + R h^{t-1} (+ Q c^{t-1}), gates, c^t
            j = j0 + tl.arange(0, BLOCK_H)
            j_ok = j < H
            ok = row_ok[:, None] & j_ok[None, :]
            z_i = _mm(_load(x_ptr, at_t * G, j, ok), hs_ptr, at_in * P, row_ok, P, w_ptr, G, j, j_ok, BLOCK_K)
            z_f = _mm(_load(x_ptr, at_t * G, H + j, ok), hs_ptr, at_in * P, row_ok, P, w_ptr, G, H + j, j_ok, BLOCK_K)
            z = _mm(_load(x_ptr, at_t * G, 2 * H + j, ok), hs_ptr, at_in * P, row_ok, P, w_ptr, G, 2 * H + j, j_ok,
                    BLOCK_K)
            z_o = _mm(_load(x_ptr, at_t * G, 3 * H + j, ok), hs_ptr, at_in * P, row_ok, P, w_ptr, G, 3 * H + j, j_ok,
                      BLOCK_K)
            if V.peephole == "full":  # every z sees c^{t-1}
                z_i = _mm(z_i, cs_ptr, at_in * H, row_ok, H, q_ptr, G, j, j_ok, BLOCK_K)
                z_f = _mm(z_f, cs_ptr, at_in * H, row_ok, H, q_ptr, G, H + j, j_ok, BLOCK_K)
                z = _mm(z, cs_ptr, at_in * H, row_ok, H, q_ptr, G, 2 * H + j, j_ok, BLOCK_K)
                z_o = _mm(z_o, cs_ptr, at_in * H, row_ok, H, q_ptr, G, 3 * H + j, j_ok, BLOCK_K)
            if SAVE:
                _store(z_ptr, at_t * G, j, ok, z_i)
                _store(z_ptr, at_t * G, H + j, ok, z_f)
                _store(z_ptr, at_t * G, 2 * H + j, ok, z)
                _store(z_ptr, at_t * G, 3 * H + j, ok, z_o)
            c_prev = _load(cs_ptr, at_in * H, j, ok)
            cell = _cell(z_i, z_f, z, z_o, c_prev, _peepholes(peep_ptr, H, j, j_ok, V.peephole == "diagonal"), prm, V)
            _store(cs_ptr, at_out * H, j, ok, tl.where(valid[:, None], cell.c, c_prev))
            a = cell.hc * cell.o
            if PROJ:
                _store(a_ptr, at_t * H, j, ok, tl.where(valid[:, None], a, 0.0))
            else:
                h_prev = _load(hs_ptr, at_in * P, j, ok)
                _store(hs_ptr, at_out * P, j, ok, tl.where(valid[:, None], a, h_prev))
                _store(y_ptr, at_t * P, j, ok, tl.where(valid[:, None], a, 0.0))
        if PROJ:  # h^t = W_hr a^t needs a^t of all H cells
            tl.debug_barrier()
            for p0 in range(0, P, BLOCK_P):
                q = p0 + tl.arange(0, BLOCK_P)
                q_ok = q < P
                ok = row_ok[:, None] & q_ok[None, :]
                h = _mm(tl.zeros((BLOCK_B, BLOCK_P), ACC), a_ptr, at_t * H, row_ok, H, w_hr_ptr, P, q, q_ok, BLOCK_K)
                h_prev = _load(hs_ptr, at_in * P, q, ok)
                _store(hs_ptr, at_out * P, q, ok, tl.where(valid[:, None], h, h_prev))
                _store(y_ptr, at_t * P, q, ok, tl.where(valid[:, None], h, 0.0))
        tl.debug_barrier()  # h^t and c^t are in memory before step t + 1 reads them


@triton.jit
def lstm_backward(
    gy_ptr,  # (T, B, P) dL/dy
    w_ptr,  # (G, P) R
    q_ptr,  # (G, H) Q (full peepholes) or None
    peep_ptr,  # (3, H) diagonal peepholes or None
    w_hr_ptr,  # (P, H) W_hr (projection) or None
    len_ptr,  # (B,) int64 lengths
    prm_ptr,  # (8,) Params, ACC
    cs_ptr,  # (T + 1, B, H) forward's c states
    z_ptr,  # (T, B, G) forward's gate inputs before diagonal peepholes
    dh_ptr,  # (2, B, P) dL/dh of the state, ACC: two slots taking turns, slot 0 holds dL/dh_n
    dc_ptr,  # (2, B, H) dL/dc of the state, slot 0 holds dL/dc_n
    dhn_ptr,  # (T, B, P) dL/dh^t of each step's new h (0 past a length), ACC
    dz_ptr,  # (T, B, G) dL/dz = dL/dx_proj (0 past a length), ACC
    T, B, H, P,
    V: tl.constexpr, PROJ: tl.constexpr, REVERSE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
):
    ACC: tl.constexpr = dh_ptr.dtype.element_ty
    G = 4 * H
    rows, row_ok, length, prm = _program_rows(len_ptr, prm_ptr, B, BLOCK_B)
    for s in range(T):
        t, at_t, at_in, at_out = _step(T - 1 - s, T, B, rows, REVERSE)  # forward's steps, last first
        valid = row_ok & (t < length)
        cur = (s % 2) * B + rows  # slot of dL/d(state after time t); the other one gets dL/d(state before)
        nxt = (1 - s % 2) * B + rows
        for p0 in range(0, P, BLOCK_P):  # dL/dh^t of the new h: the state's and y's
            q = p0 + tl.arange(0, BLOCK_P)
            ok = row_ok[:, None] & (q < P)[None, :]
            d_h = _load(dh_ptr, cur * P, q, ok) + _load(gy_ptr, at_t * P, q, ok)
            _store(dhn_ptr, at_t * P, q, ok, tl.where(valid[:, None], d_h, 0.0))
        tl.debug_barrier()
        for j0 in range(0, H, BLOCK_H):  # tiles of cells: recompute the step, then its gradients
            j = j0 + tl.arange(0, BLOCK_H)
            j_ok = j < H
            ok = row_ok[:, None] & j_ok[None, :]
            if PROJ:  # h^t = W_hr a
                d_a = _mm(tl.zeros((BLOCK_B, BLOCK_H), ACC), dhn_ptr, at_t * P, row_ok, P, w_hr_ptr, H, j, j_ok,
                          BLOCK_K)
            else:
                d_a = _load(dhn_ptr, at_t * P, j, ok)
            c_prev = _load(cs_ptr, at_in * H, j, ok)
            p = _peepholes(peep_ptr, H, j, j_ok, V.peephole == "diagonal")
            cell = _cell(_load(z_ptr, at_t * G, j, ok), _load(z_ptr, at_t * G, H + j, ok),
                         _load(z_ptr, at_t * G, 2 * H + j, ok), _load(z_ptr, at_t * G, 3 * H + j, ok), c_prev, p,
                         prm, V)
            d_c = _load(dc_ptr, cur * H, j, ok)
            d_z_i, d_z_f, d_z, d_z_o, d_c_prev = _cell_grad(d_a, tl.where(valid[:, None], d_c, 0.0), cell, c_prev,
                                                            p, prm, V)
            _store(dz_ptr, at_t * G, j, ok, tl.where(valid[:, None], d_z_i, 0.0))
            _store(dz_ptr, at_t * G, H + j, ok, tl.where(valid[:, None], d_z_f, 0.0))
            _store(dz_ptr, at_t * G, 2 * H + j, ok, tl.where(valid[:, None], d_z, 0.0))
            _store(dz_ptr, at_t * G, 3 * H + j, ok, tl.where(valid[:, None], d_z_o, 0.0))
            _store(dc_ptr, nxt * H, j, ok, tl.where(valid[:, None], d_c_prev, d_c))  # past a length: passed on
        tl.debug_barrier()
        for p0 in range(0, P, BLOCK_P):  # dL/dh^{t-1} = dz R
            q = p0 + tl.arange(0, BLOCK_P)
            q_ok = q < P
            ok = row_ok[:, None] & q_ok[None, :]
            d_h_prev = _mm(tl.zeros((BLOCK_B, BLOCK_P), ACC), dz_ptr, at_t * G, row_ok, G, w_ptr, P, q, q_ok, BLOCK_K)
            _store(dh_ptr, nxt * P, q, ok, tl.where(valid[:, None], d_h_prev, _load(dh_ptr, cur * P, q, ok)))
        if V.peephole == "full":  # dL/dc^{t-1} += dz Q
            for j0 in range(0, H, BLOCK_H):
                j = j0 + tl.arange(0, BLOCK_H)
                j_ok = j < H
                ok = row_ok[:, None] & j_ok[None, :]
                d_c_prev = _mm(_load(dc_ptr, nxt * H, j, ok), dz_ptr, at_t * G, row_ok, G, q_ptr, H, j, j_ok, BLOCK_K)
                _store(dc_ptr, nxt * H, j, ok, d_c_prev)
        tl.debug_barrier()  # the state's gradients are in memory before the next (earlier) step reads them
