"""The NumPy float64 reference (lstmkit.reference): its hand-written gradients against central finite
differences for every option (independently known facts: tests/test_reference_facts.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from lstmkit import reference as ref
from lstmkit.variant import ACTIVATION_DEFAULTS, Variant

T, B, I, H, P = 5, 3, 3, 4, 2
STEP = 1e-6
RTOL = 1e-6
NAMES = ("x", "weight_ih", "weight_hh", "bias", "peephole_weight", "weight_hr", "h0", "c0")


def make_inputs(variant, *, seed=0, proj=False, scale=0.5, lengths=None, reverse=False):
    """Random inputs for forward as a dict of its keyword arguments."""
    rng = np.random.default_rng(seed)
    p = P if proj else H
    peep_shape = {None: None, "diagonal": (3, H), "full": (4 * H, H)}[variant.peephole]
    return {
        "x": rng.normal(size=(T, B, I)),
        "weight_ih": scale * rng.normal(size=(4 * H, I)),
        "weight_hh": scale * rng.normal(size=(4 * H, p)),
        "bias": scale * rng.normal(size=4 * H),
        "h0": rng.normal(size=(B, p)),
        "c0": rng.normal(size=(B, H)),
        "variant": variant,
        "peephole_weight": None if peep_shape is None else scale * rng.normal(size=peep_shape),
        "weight_hr": scale * rng.normal(size=(P, H)) if proj else None,
        "lengths": lengths,
        "reverse": reverse,
    }


def run(kw):
    kw = dict(kw)
    args = [kw.pop(k) for k in ("x", "weight_ih", "weight_hh", "bias", "h0", "c0", "variant")]
    return ref.forward(*args, **kw)


def check_gradients(kw, seed=1):
    """Every gradient of backward against central finite differences of a random scalar loss."""
    y, h_n, c_n, cache = run(kw)
    rng = np.random.default_rng(seed)
    Gy, Gh, Gc = rng.normal(size=y.shape), rng.normal(size=h_n.shape), rng.normal(size=c_n.shape)

    def loss(kw_):
        y_, h_, c_, _ = run(kw_)
        return np.sum(y_ * Gy) + np.sum(h_ * Gh) + np.sum(c_ * Gc)

    grads = ref.backward(cache, Gy, Gh, Gc)
    assert set(grads) == set(NAMES)
    for name in NAMES:
        if kw[name] is None:
            assert grads[name] is None, name
            continue
        value = kw[name]
        assert grads[name].shape == value.shape, name
        fd = np.zeros_like(value)
        for idx in np.ndindex(value.shape):
            plus, minus = value.copy(), value.copy()
            plus[idx] += STEP
            minus[idx] -= STEP
            fd[idx] = (loss({**kw, name: plus}) - loss({**kw, name: minus})) / (2 * STEP)
        err = np.linalg.norm(fd - grads[name])
        norm = np.linalg.norm(grads[name])
        assert err <= RTOL * max(norm, 1e-12), f"{name}: |fd - g| = {err:.3g}, |g| = {norm:.3g}"
    return grads


# ------------------------------------------------------------------------------------------
# Gradients against finite differences
# ------------------------------------------------------------------------------------------


def test_gradients_vanilla():
    check_gradients(make_inputs(Variant()))


def test_gradients_variant_none_is_vanilla():
    kw = make_inputs(Variant())
    y1, h1, c1, _ = run(kw)
    y2, h2, c2, _ = run({**kw, "variant": None})
    assert np.array_equal(y1, y2) and np.array_equal(h1, h2) and np.array_equal(c1, c2)


@pytest.mark.parametrize("peephole", ["diagonal", "full"])
def test_gradients_peephole(peephole):
    check_gradients(make_inputs(Variant.create(peephole=peephole), seed=2))


# Activations with kinks are checked at random points, which do not hit a kink (nor come within
# the finite-difference step of one) with these seeds.
ACT_SPECS = [
    "sigmoid", "tanh", "identity", "relu", ("hard_sigmoid", 0.3, 0.4), ("leaky_relu", 0.1),
    ("thresholded_relu", 0.2), ("scaled_tanh", 1.5, 0.7), ("affine", 0.8, 0.3), ("elu", 0.9),
    "softsign", "softplus",
]
assert {a if isinstance(a, str) else a[0] for a in ACT_SPECS} == set(ACTIVATION_DEFAULTS)


@pytest.mark.parametrize("position", [0, 1, 2], ids=["f", "g", "h"])
@pytest.mark.parametrize("act", ACT_SPECS, ids=lambda a: a if isinstance(a, str) else a[0])
def test_gradients_activation(act, position):
    acts = ["sigmoid", "tanh", "tanh"]
    acts[position] = act
    kw = make_inputs(Variant.create(activations=acts, peephole="diagonal"), seed=3 + position)
    check_gradients(kw)


@pytest.mark.parametrize("name", list(ACTIVATION_DEFAULTS))
def test_activation_definitions(name):
    """Forms and default parameters at a few points, written out independently."""
    x = np.array([-3.0, -0.5, 0.0, 0.25, 0.7, 2.0, 40.0, -40.0])
    fn, deriv = ref._activation(name)
    a, b = ACTIVATION_DEFAULTS[name]
    expected = {
        "sigmoid": lambda: 1 / (1 + np.exp(-x)),
        "tanh": lambda: np.tanh(x),
        "identity": lambda: x,
        "relu": lambda: np.maximum(x, 0),
        "hard_sigmoid": lambda: np.minimum(np.maximum(a * x + b, 0), 1),
        "leaky_relu": lambda: np.where(x >= 0, x, a * x),
        "thresholded_relu": lambda: np.where(x > a, x, 0.0),
        "scaled_tanh": lambda: a * np.tanh(b * x),
        "affine": lambda: a * x + b,
        "elu": lambda: np.where(x >= 0, x, a * (np.exp(x) - 1)),
        "softsign": lambda: x / (1 + np.abs(x)),
        "softplus": lambda: np.log1p(np.exp(x)),
    }[name]()
    np.testing.assert_allclose(fn(x), expected, rtol=1e-14, atol=1e-300)
    # derivative against central differences away from kinks
    xs = np.array([-2.3, -0.4, 0.3, 1.7])
    fd = (fn(xs + 1e-6) - fn(xs - 1e-6)) / 2e-6
    np.testing.assert_allclose(deriv(xs), fd, rtol=1e-7, atol=1e-9)
    assert np.all(np.isfinite(fn(np.array([-1e4, 1e4])))) and np.all(np.isfinite(deriv(np.array([-1e4, 1e4]))))


def test_kink_derivative_conventions():
    zero = np.array([0.0])
    assert ref._activation("relu")[1](zero)[0] == 0.0
    assert ref._activation(("leaky_relu", 0.1))[1](zero)[0] == 0.1
    assert ref._activation(("elu", 0.5))[1](zero)[0] == 0.5
    assert ref._activation(("thresholded_relu", 1.0))[1](np.array([1.0]))[0] == 0.0
    assert ref._activation(("hard_sigmoid", 0.2, 0.5))[1](np.array([2.5, -2.5, 0.0])).tolist() == [0.0, 0.0, 0.2]


def test_clamp_gradient_is_inclusive():
    """As torch.clamp: the gradient passes at the bounds themselves."""
    clamped, mask = ref._clamp(np.array([-1.5, -1.0, 0.3, 1.0, 1.5]), 1.0)
    assert clamped.tolist() == [-1.0, -1.0, 0.3, 1.0, 1.0]
    assert mask.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


@pytest.mark.parametrize("peephole", [None, "diagonal", "full"])
def test_gradients_coupled_gates(peephole):
    grads = check_gradients(make_inputs(Variant.create(coupled_gates=True, peephole=peephole), seed=5))
    assert not grads["weight_ih"][H:2 * H].any() and not grads["bias"][H:2 * H].any()
    if peephole == "diagonal":
        assert not grads["peephole_weight"][1].any()


@pytest.mark.parametrize("gates", ["ifo", "if", "io", "fo", "i", "f", "o", ""])
@pytest.mark.parametrize("peephole", [None, "diagonal", "full"])
def test_gradients_gates(gates, peephole):
    grads = check_gradients(make_inputs(Variant.create(gates=gates, peephole=peephole), seed=6))
    rows = {"i": slice(0, H), "f": slice(H, 2 * H), "o": slice(3 * H, 4 * H)}
    for gate in "ifo":
        if gate not in gates:
            for name in ("weight_ih", "weight_hh", "bias"):
                assert not grads[name][rows[gate]].any(), (gate, name)
            if peephole == "full":
                assert not grads["peephole_weight"][rows[gate]].any()
            if peephole == "diagonal":
                assert not grads["peephole_weight"]["ifo".index(gate)].any()


def _z_values(kw):
    """All pre-clip gate inputs of a run without clip (to choose a clip that bites)."""
    variant = kw["variant"]
    unclipped = dataclasses.replace(variant, clip=None)
    _, _, _, cache = run({**kw, "variant": unclipped})
    return np.concatenate([np.ravel(s[k]) for s in cache["steps"] for k in ("z_i", "z_f", "z", "z_o")])


@pytest.mark.parametrize("peephole", [None, "diagonal", "full"])
def test_gradients_clip(peephole):
    kw = make_inputs(Variant.create(peephole=peephole), seed=7, scale=1.0)
    clip = float(np.quantile(np.abs(_z_values(kw)), 0.6))
    kw["variant"] = Variant.create(peephole=peephole, clip=clip)
    zs = _z_values(kw)
    assert 0.2 < np.mean(np.abs(zs) > clip) < 0.8  # some, not all, are clipped
    check_gradients(kw)


@pytest.mark.parametrize("peephole", [None, "diagonal"])
def test_gradients_cell_clip(peephole):
    kw = make_inputs(Variant.create(peephole=peephole), seed=8, scale=1.0)
    _, _, _, cache = run(kw)
    c = np.concatenate([s["c_raw"].ravel() for s in cache["steps"]])
    cell_clip = float(np.quantile(np.abs(c), 0.6))
    kw["variant"] = Variant.create(peephole=peephole, cell_clip=cell_clip)
    _, _, _, cache = run(kw)
    c = np.concatenate([s["c_raw"].ravel() for s in cache["steps"]])
    assert 0.1 < np.mean(np.abs(c) > cell_clip) < 0.9
    check_gradients(kw)


@pytest.mark.parametrize("peephole", [None, "diagonal", "full"])
def test_gradients_projection(peephole):
    check_gradients(make_inputs(Variant.create(peephole=peephole), seed=9, proj=True))


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("proj", [False, True])
def test_gradients_lengths(reverse, proj):
    kw = make_inputs(Variant.create(peephole="diagonal"), seed=10, proj=proj,
                     lengths=np.array([T, 0, 2]), reverse=reverse)
    grads = check_gradients(kw)
    assert not grads["x"][2:, 2].any() and not grads["x"][:, 1].any()


@pytest.mark.parametrize("peephole", [None, "full"])
def test_gradients_reverse(peephole):
    check_gradients(make_inputs(Variant.create(peephole=peephole), seed=11, reverse=True))


def test_gradients_without_optional_inputs():
    kw = make_inputs(Variant(), seed=12)
    kw.update(bias=None, h0=None, c0=None)
    grads = check_gradients(kw)
    assert grads["bias"] is None and grads["h0"] is None and grads["c0"] is None


@pytest.mark.parametrize("seed", range(6))
def test_gradients_random_combinations(seed):
    rng = np.random.default_rng(100 + seed)
    smooth = ["sigmoid", "tanh", "identity", ("scaled_tanh", 1.3, 0.8), ("affine", 0.7, 0.2),
              "softsign", "softplus", ("elu", 0.8), ("leaky_relu", 0.2), ("hard_sigmoid", 0.25, 0.5)]
    pick = lambda: smooth[rng.integers(len(smooth))]  # noqa: E731
    coupled = bool(rng.integers(2))
    gates = "if" + ("o" if rng.integers(2) else "") if coupled else "".join(g for g in "ifo" if rng.integers(4))
    options = dict(
        peephole=[None, "diagonal", "full"][rng.integers(3)],
        activations=(pick(), pick(), pick()),
        coupled_gates=coupled,
        gates=gates,
        clip=float(rng.uniform(0.5, 1.5)),
        cell_clip=float(rng.uniform(0.5, 1.5)),
    )
    lengths = rng.integers(0, T + 1, size=B)
    lengths[rng.integers(B)] = T
    kw = make_inputs(Variant.create(**options), seed=seed, proj=bool(rng.integers(2)),
                     lengths=lengths, reverse=bool(rng.integers(2)))
    check_gradients(kw)
