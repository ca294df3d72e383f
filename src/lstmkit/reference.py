"""The float64 NumPy reference: one LSTM layer, one direction, forward and backward by hand.

Everything else in lstmkit is tested against this module, so it is written to be read, not to be
fast. It uses no autograd: :func:`backward` is backpropagation through time written out step by
step. Notation is the lecture's (SPEC section 1); at time t, with input x^t and previous state
(h^{t-1}, c^{t-1}):

    z_i, z_f, z, z_o = W x^t + R h^{t-1} + b          (rows of W, R, b in order i, f, g(=z), o)

    peephole "diagonal":  z_i += p_i * c^{t-1};  z_f += p_f * c^{t-1};  z_o += p_o * c^t
    peephole "full":      (z_i, z_f, z, z_o) += Q c^{t-1}       (Q is (4H, H), rows i, f, g, o)
    clip:                 each of z_i, z_f, z, z_o is clamped to [-clip, clip]

    i  = f(z_i)     (1 if gate i is dropped)
    fg = f(z_f)     (1 if gate f is dropped; 1 - i with coupled_gates)
    o  = f(z_o)     (1 if gate o is dropped)

    c^t = g(z) * i + c^{t-1} * fg       then clamped to [-cell_clip, cell_clip] (cell_clip)
    h^t = h(c^t) * o                    or, with a projection, h^t = W_hr (h(c^t) * o)

With ``lengths``, steps t >= lengths[b] of sequence b are padding: the state is carried through
unchanged, y[t, b] = 0, and the padding entries of x are ignored (their gradient is 0). A reverse
direction runs t = T-1 .. 0 with the same mask, so it starts at the sequence's own last valid step
from (h0, c0).

Clamps pass the gradient where lo <= value <= hi (inclusive, as torch.clamp does) and block it
elsewhere.
"""

from __future__ import annotations

import numpy as np

from lstmkit.variant import Activation, Variant

# --------------------------------------------------------------------------------------------
# Activations: (function, derivative), both of the pre-activation x, with ONNX's definitions.
# Derivatives at kinks follow torch autograd: relu'(0) = 0, leaky_relu'(0) = alpha, elu'(0) = alpha.
# --------------------------------------------------------------------------------------------


def _sigmoid(x):
    e = np.exp(-np.abs(x))  # never overflows
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _softplus(x):
    return np.logaddexp(0.0, x)  # log(1 + exp(x)), stable both ways


def _elu(x, a, b):
    return np.where(x >= 0, x, a * np.expm1(np.minimum(x, 0.0)))


ACTIVATIONS = {
    #                  f(x, alpha, beta)                                  f'(x, alpha, beta)
    "sigmoid": (lambda x, a, b: _sigmoid(x), lambda x, a, b: _sigmoid(x) * (1.0 - _sigmoid(x))),
    "tanh": (lambda x, a, b: np.tanh(x), lambda x, a, b: 1.0 - np.tanh(x) ** 2),
    "identity": (lambda x, a, b: x, lambda x, a, b: np.ones_like(x)),
    "relu": (lambda x, a, b: np.maximum(x, 0.0), lambda x, a, b: (x > 0).astype(np.float64)),
    "hard_sigmoid": (
        lambda x, a, b: np.clip(a * x + b, 0.0, 1.0),
        lambda x, a, b: np.where((a * x + b > 0) & (a * x + b < 1), a, 0.0),
    ),
    "leaky_relu": (lambda x, a, b: np.where(x >= 0, x, a * x), lambda x, a, b: np.where(x > 0, 1.0, a)),
    "thresholded_relu": (lambda x, a, b: np.where(x > a, x, 0.0), lambda x, a, b: (x > a).astype(np.float64)),
    "scaled_tanh": (lambda x, a, b: a * np.tanh(b * x), lambda x, a, b: a * b * (1.0 - np.tanh(b * x) ** 2)),
    "affine": (lambda x, a, b: a * x + b, lambda x, a, b: np.full_like(x, a)),
    "elu": (_elu, lambda x, a, b: np.where(x > 0, 1.0, a * np.exp(np.minimum(x, 0.0)))),
    "softsign": (lambda x, a, b: x / (1.0 + np.abs(x)), lambda x, a, b: 1.0 / (1.0 + np.abs(x)) ** 2),
    "softplus": (lambda x, a, b: _softplus(x), lambda x, a, b: _sigmoid(x)),
}


def _activation(spec):
    """(fn, derivative) of one activation, as functions of x only."""
    act = Activation.parse(spec)  # resolves ONNX's default alpha/beta
    fn, deriv = ACTIVATIONS[act.name]
    return (lambda x: fn(x, act.alpha, act.beta)), (lambda x: deriv(x, act.alpha, act.beta))


def _clamp(x, limit):
    """(clamped x, mask where the gradient passes); limit None means no clamp."""
    if limit is None:
        return x, np.ones_like(x)
    return np.clip(x, -limit, limit), ((x >= -limit) & (x <= limit)).astype(np.float64)


def _as_variant(variant):
    if variant is None:
        return Variant()
    if isinstance(variant, Variant):
        return variant
    if isinstance(variant, dict):
        return Variant.create(**variant)
    raise TypeError(f"variant must be a lstmkit.variant.Variant, a dict of its options or None, got {variant!r}")


def _f64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


# --------------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------------


def forward(x, weight_ih, weight_hh, bias, h0, c0, variant, *, peephole_weight=None, weight_hr=None,
            lengths=None, reverse=False):
    """Run one LSTM layer in one direction.

    Args:
        x: (T, B, I) input.
        weight_ih: (4H, I), weight_hh: (4H, P) with P = projection size if weight_hr is given,
            else H; bias: (4H,) (bias_ih + bias_hh) or None. Rows in order i, f, g(=z), o.
        h0: (B, P) and c0: (B, H) initial state; None means zeros.
        variant: a :class:`lstmkit.variant.Variant` (or a dict for Variant.create, or None for
            the vanilla cell).
        peephole_weight: (3, H) rows i, f, o for peephole "diagonal"; (4H, H) for "full".
        weight_hr: (P, H) projection (LSTMP) or None.
        lengths: (B,) ints in [0, T], or None for all T.
        reverse: run t = T-1 .. 0.

    Returns:
        (y, h_n, c_n, cache): y (T, B, P), h_n (B, P), c_n (B, H), and what :func:`backward` needs.
    """
    v = _as_variant(variant)
    x, W, R, b = _f64(x), _f64(weight_ih), _f64(weight_hh), _f64(bias)
    peep, W_hr = _f64(peephole_weight), _f64(weight_hr)
    T, B, _ = x.shape
    H = W.shape[0] // 4
    P = H if W_hr is None else W_hr.shape[0]
    h0_given, c0_given = h0 is not None, c0 is not None
    h0 = _f64(h0) if h0_given else np.zeros((B, P))
    c0 = _f64(c0) if c0_given else np.zeros((B, H))

    if W.shape[0] != 4 * H or R.shape != (4 * H, P) or h0.shape != (B, P) or c0.shape != (B, H):
        raise ValueError("inconsistent shapes of weight_ih, weight_hh, h0, c0 (see forward's docstring)")
    if b is not None and b.shape != (4 * H,):
        raise ValueError(f"bias must have shape ({4 * H},), got {b.shape}")
    if W_hr is not None and W_hr.shape != (P, H):
        raise ValueError(f"weight_hr must have shape (P, {H}), got {W_hr.shape}")
    expected_peep = {None: None, "diagonal": (3, H), "full": (4 * H, H)}[v.peephole]
    if (peep is None) != (expected_peep is None) or (peep is not None and peep.shape != expected_peep):
        raise ValueError(f"peephole {v.peephole!r} needs peephole_weight of shape {expected_peep}, "
                         f"got {None if peep is None else peep.shape}")
    lengths = np.full(B, T, dtype=np.int64) if lengths is None else np.asarray(lengths, dtype=np.int64)
    if lengths.shape != (B,) or (lengths < 0).any() or (lengths > T).any():
        raise ValueError(f"lengths must be {B} integers in [0, {T}], got {lengths}")

    (f, _), (g, _), (h, _) = (_activation(a) for a in v.activations)
    y = np.zeros((T, B, P))
    h_prev, c_prev = h0, c0
    steps = []
    for t in (reversed(range(T)) if reverse else range(T)):
        valid = (t < lengths)[:, None]  # (B, 1)
        x_t = np.where(valid, x[t], 0.0)  # padding is ignored, even if it holds inf or nan
        s = {"t": t, "valid": valid, "x": x_t, "h_prev": h_prev, "c_prev": c_prev}

        zs = x_t @ W.T + h_prev @ R.T
        if b is not None:
            zs = zs + b
        if v.peephole == "full":
            zs = zs + c_prev @ peep.T
        z_i, z_f, z, z_o = np.split(zs, 4, axis=1)
        if v.peephole == "diagonal":
            z_i = z_i + peep[0] * c_prev
            z_f = z_f + peep[1] * c_prev

        s["z_i"], s["m_i"] = _clamp(z_i, v.clip)
        s["z_f"], s["m_f"] = _clamp(z_f, v.clip)
        s["z"], s["m_z"] = _clamp(z, v.clip)
        i = f(s["z_i"]) if v.has_gate("i") else np.ones((B, H))
        if v.coupled_gates:
            fg = 1.0 - i
        else:
            fg = f(s["z_f"]) if v.has_gate("f") else np.ones((B, H))
        gz = g(s["z"])
        s["c_raw"] = gz * i + c_prev * fg
        c_new, s["m_c"] = _clamp(s["c_raw"], v.cell_clip)

        if v.peephole == "diagonal":
            z_o = z_o + peep[2] * c_new
        s["z_o"], s["m_o"] = _clamp(z_o, v.clip)
        o = f(s["z_o"]) if v.has_gate("o") else np.ones((B, H))
        hc = h(c_new)
        m = hc * o  # the unprojected output
        h_new = m if W_hr is None else m @ W_hr.T

        s.update(i=i, fg=fg, gz=gz, c_new=c_new, o=o, hc=hc, m=m)
        steps.append(s)
        y[t] = np.where(valid, h_new, 0.0)
        h_prev = np.where(valid, h_new, h_prev)
        c_prev = np.where(valid, c_new, c_prev)

    cache = {
        "variant": v, "steps": steps, "shape": (T, B, x.shape[2], H, P),
        "W": W, "R": R, "b": b, "peep": peep, "W_hr": W_hr,
        "h0_given": h0_given, "c0_given": c0_given,
    }
    return y, h_prev, c_prev, cache


# --------------------------------------------------------------------------------------------
# Backward through time
# --------------------------------------------------------------------------------------------


def backward(cache, grad_y, grad_h_n=None, grad_c_n=None):
    """Gradients of a loss L given dL/dy, dL/dh_n and dL/dc_n (None means zero).

    Returns a dict with keys 'x', 'weight_ih', 'weight_hh', 'bias', 'peephole_weight',
    'weight_hr', 'h0', 'c0'; the value is None for an input that was None in forward
    (bias, peephole_weight, weight_hr, h0, c0). Rows of dropped or unused gates get zero gradient.
    """
    v = cache["variant"]
    T, B, I, H, P = cache["shape"]
    W, R, b, peep, W_hr = cache["W"], cache["R"], cache["b"], cache["peep"], cache["W_hr"]
    (_, df), (_, dg), (_, dh) = (_activation(a) for a in v.activations)

    grad_y = np.zeros((T, B, P)) if grad_y is None else _f64(grad_y)
    d_h = np.zeros((B, P)) if grad_h_n is None else _f64(grad_h_n).copy()  # dL/d(h state after step)
    d_c = np.zeros((B, H)) if grad_c_n is None else _f64(grad_c_n).copy()  # dL/d(c state after step)

    dx = np.zeros((T, B, I))
    dW, dR = np.zeros_like(W), np.zeros_like(R)
    db = None if b is None else np.zeros_like(b)
    dpeep = None if peep is None else np.zeros_like(peep)
    dW_hr = None if W_hr is None else np.zeros_like(W_hr)
    zeros = np.zeros((B, H))

    for s in reversed(cache["steps"]):
        t, valid = s["t"], s["valid"]
        # State after the step = valid ? new : previous; y[t] = valid ? h_new : 0.
        d_h_new = np.where(valid, d_h + grad_y[t], 0.0)
        d_c_new = np.where(valid, d_c, 0.0)
        d_h_prev = np.where(valid, 0.0, d_h)  # padding: the state passes straight through
        d_c_prev = np.where(valid, 0.0, d_c)

        # h_new = m (or W_hr m), m = h(c_new) * o
        if W_hr is None:
            d_m = d_h_new
        else:
            dW_hr += d_h_new.T @ s["m"]
            d_m = d_h_new @ W_hr
        d_o = d_m * s["hc"]
        d_c_new = d_c_new + d_m * s["o"] * dh(s["c_new"])

        # o = f(clip(z_o)); a diagonal peephole puts c_new into z_o
        d_z_o = d_o * df(s["z_o"]) * s["m_o"] if v.has_gate("o") else zeros
        if v.peephole == "diagonal":
            dpeep[2] += (d_z_o * s["c_new"]).sum(axis=0)
            d_c_new = d_c_new + d_z_o * peep[2]

        # c_new = clip(g(z) * i + c_prev * fg)
        d_c_raw = d_c_new * s["m_c"]
        d_gz = d_c_raw * s["i"]
        d_i = d_c_raw * s["gz"]
        d_fg = d_c_raw * s["c_prev"]
        d_c_prev = d_c_prev + d_c_raw * s["fg"]

        if v.coupled_gates:  # fg = 1 - i
            d_i = d_i - d_fg
            d_z_f = zeros
        else:
            d_z_f = d_fg * df(s["z_f"]) * s["m_f"] if v.has_gate("f") else zeros
        d_z_i = d_i * df(s["z_i"]) * s["m_i"] if v.has_gate("i") else zeros
        d_z = d_gz * dg(s["z"]) * s["m_z"]

        if v.peephole == "diagonal":
            dpeep[0] += (d_z_i * s["c_prev"]).sum(axis=0)
            dpeep[1] += (d_z_f * s["c_prev"]).sum(axis=0)
            d_c_prev = d_c_prev + d_z_i * peep[0] + d_z_f * peep[1]

        # zs = W x + R h_prev + b (+ Q c_prev)
        d_zs = np.concatenate([d_z_i, d_z_f, d_z, d_z_o], axis=1)  # (B, 4H)
        if v.peephole == "full":
            dpeep += d_zs.T @ s["c_prev"]
            d_c_prev = d_c_prev + d_zs @ peep
        dW += d_zs.T @ s["x"]
        dR += d_zs.T @ s["h_prev"]
        if b is not None:
            db += d_zs.sum(axis=0)
        dx[t] = np.where(valid, d_zs @ W, 0.0)
        d_h = d_h_prev + d_zs @ R
        d_c = d_c_prev

    return {
        "x": dx, "weight_ih": dW, "weight_hh": dR, "bias": db, "peephole_weight": dpeep,
        "weight_hr": dW_hr,
        "h0": d_h if cache["h0_given"] else None,
        "c0": d_c if cache["c0_given"] else None,
    }
