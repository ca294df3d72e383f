"""The NumPy float64 reference (lstmkit.reference) against finite differences and known facts."""

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


# ------------------------------------------------------------------------------------------
# Independently known facts
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("proj_size", [0, P])
def test_vanilla_equals_torch_lstm(proj_size):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(I, H, proj_size=proj_size, dtype=torch.float64)
    p = proj_size or H
    rng = np.random.default_rng(13)
    x, h0, c0 = rng.normal(size=(T, B, I)), rng.normal(size=(1, B, p)), rng.normal(size=(1, B, H))
    xt, h0t, c0t = (torch.tensor(a, requires_grad=True) for a in (x, h0, c0))
    yt, (hnt, cnt) = lstm(xt, (h0t, c0t))
    sd = {k: v.detach().numpy() for k, v in lstm.state_dict().items()}
    y, h_n, c_n, cache = ref.forward(x, sd["weight_ih_l0"], sd["weight_hh_l0"], sd["bias_ih_l0"] + sd["bias_hh_l0"],
                                     h0[0], c0[0], Variant(), weight_hr=sd.get("weight_hr_l0"))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(h_n, hnt[0].detach().numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(c_n, cnt[0].detach().numpy(), rtol=0, atol=1e-12)
    # and the hand-written backward equals torch's autograd
    Gy, Gh, Gc = rng.normal(size=y.shape), rng.normal(size=h_n.shape), rng.normal(size=c_n.shape)
    loss = (yt * torch.tensor(Gy)).sum() + (hnt[0] * torch.tensor(Gh)).sum() + (cnt[0] * torch.tensor(Gc)).sum()
    loss.backward()
    grads = ref.backward(cache, Gy, Gh, Gc)
    pairs = [("x", xt.grad), ("h0", h0t.grad[0]), ("c0", c0t.grad[0]), ("weight_ih", lstm.weight_ih_l0.grad),
             ("weight_hh", lstm.weight_hh_l0.grad), ("bias", lstm.bias_ih_l0.grad)]
    if proj_size:
        pairs.append(("weight_hr", lstm.weight_hr_l0.grad))
    for name, expected in pairs:
        np.testing.assert_allclose(grads[name], expected.numpy(), rtol=0, atol=1e-12, err_msg=name)


def test_packed_bidirectional_equals_torch():
    """lengths and reverse against torch.nn.LSTM on a PackedSequence (lengths >= 1 there)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(1)
    lstm = torch.nn.LSTM(I, H, bidirectional=True, dtype=torch.float64)
    rng = np.random.default_rng(14)
    x, lengths = rng.normal(size=(T, B, I)), np.array([2, T, 1])
    h0, c0 = rng.normal(size=(2, B, H)), rng.normal(size=(2, B, H))
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.tensor(x), torch.tensor(lengths), enforce_sorted=False)
    out, (hn, cn) = lstm(packed, (torch.tensor(h0), torch.tensor(c0)))
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=T)
    sd = {k: v.detach().numpy() for k, v in lstm.state_dict().items()}
    for d, sfx in enumerate(["", "_reverse"]):
        y, h_n, c_n, _ = ref.forward(x, sd["weight_ih_l0" + sfx], sd["weight_hh_l0" + sfx],
                                     sd["bias_ih_l0" + sfx] + sd["bias_hh_l0" + sfx], h0[d], c0[d], Variant(),
                                     lengths=lengths, reverse=bool(d))
        np.testing.assert_allclose(y, out[..., d * H:(d + 1) * H].detach().numpy(), rtol=0, atol=1e-12)
        np.testing.assert_allclose(h_n, hn[d].detach().numpy(), rtol=0, atol=1e-12)
        np.testing.assert_allclose(c_n, cn[d].detach().numpy(), rtol=0, atol=1e-12)


def lecture_cell():
    weight_ih = np.array([
        [0.0, 100.0, 0.0],  # z_i = 100 x2 - 10
        [0.0, 100.0, 0.0],  # z_f = 100 x2 + 10
        [1.0, 0.0, 0.0],  # z = x1
        [0.0, 0.0, 100.0],  # z_o = 100 x3 - 10
    ])
    bias = np.array([-10.0, 10.0, 0.0, -10.0])
    variant = Variant.create(activations=("sigmoid", "identity", "identity"))
    return weight_ih, np.zeros((4, 1)), bias, variant


@pytest.mark.parametrize("x1, x2, x3, memory, expected_y", [
    ([1, 3, 2, 4, 2, 1, 3, 6, 1], [0, 1, 0, 1, 0, 0, -1, 1, 0], [0, 0, 0, 0, 0, 1, 0, 0, 1],
     [0, 3, 3, 7, 7, 7, 0, 6, 6], [0, 0, 0, 0, 0, 7, 0, 0, 6]),
    ([3, 4, 2, 1, 3], [1, 1, 0, 0, -1], [0, 0, 0, 1, 0], [3, 7, 7, 7, 0], [0, 0, 0, 7, 0]),
])
def test_lecture_example(x1, x2, x3, memory, expected_y):
    weight_ih, weight_hh, bias, variant = lecture_cell()
    x = np.array([x1, x2, x3], dtype=np.float64).T[:, None, :]  # (T, 1, 3)
    zero = np.zeros((1, 1))
    y, _, _, _ = ref.forward(x, weight_ih, weight_hh, bias, zero, zero, variant)
    y = y[:, 0, 0]
    assert np.round(y).tolist() == expected_y
    assert np.max(np.abs(y - expected_y)) < 1e-3
    cells = [ref.forward(x[:t + 1], weight_ih, weight_hh, bias, zero, zero, variant)[2][0, 0] for t in range(len(x1))]
    assert np.round(cells).tolist() == memory
    assert np.max(np.abs(np.array(cells) - memory)) < 1e-3


@pytest.mark.parametrize("proj", [False, True])
@pytest.mark.parametrize("peephole", [None, "diagonal", "full"])
def test_lengths_equal_truncated_runs(peephole, proj):
    kw = make_inputs(Variant.create(peephole=peephole), seed=15, proj=proj, lengths=np.array([3, 0, T]))
    x = kw["x"].copy()
    x[3:, 0] = np.nan  # padding must be ignored entirely
    kw["x"] = x
    y, h_n, c_n, cache = run(kw)
    y_rev, h_rev, c_rev, cache_rev = run({**kw, "reverse": True})
    grads = ref.backward(cache, np.ones_like(y), np.ones_like(h_n), np.ones_like(c_n))
    grads_rev = ref.backward(cache_rev, np.ones_like(y), np.ones_like(h_n), np.ones_like(c_n))
    assert all(np.all(np.isfinite(g)) for g in (*grads.values(), *grads_rev.values()) if g is not None)
    for b, n in enumerate(kw["lengths"]):
        one = {**kw, "x": x[:n, b:b + 1], "h0": kw["h0"][b:b + 1], "c0": kw["c0"][b:b + 1], "lengths": None}
        y1, h1, c1, _ = run(one)
        np.testing.assert_allclose(y[:n, b], y1[:, 0], rtol=0, atol=1e-14)
        assert not y[n:, b].any() and not y_rev[n:, b].any()
        np.testing.assert_allclose(h_n[b], h1[0], rtol=0, atol=1e-14)
        np.testing.assert_allclose(c_n[b], c1[0], rtol=0, atol=1e-14)
        # reverse with lengths = forward on the time-flipped truncated sequence
        y2, h2, c2, _ = run({**one, "x": x[:n, b:b + 1][::-1]})
        np.testing.assert_allclose(y_rev[:n, b], y2[::-1, 0], rtol=0, atol=1e-14)
        np.testing.assert_allclose(h_rev[b], h2[0], rtol=0, atol=1e-14)
        np.testing.assert_allclose(c_rev[b], c2[0], rtol=0, atol=1e-14)
    # length 0: the initial state comes back unchanged
    assert np.array_equal(h_n[1], kw["h0"][1]) and np.array_equal(c_n[1], kw["c0"][1])


@pytest.mark.parametrize("missing", ["i", "f", "o", "if", "io", "fo", "ifo"])
@pytest.mark.parametrize("peephole", [None, "diagonal", "full"])
def test_missing_gate_is_gate_one(missing, peephole):
    """Dropping a gate gives exactly the cell whose gate is sigmoid(100) = 1.0 in float64."""
    gates = "".join(g for g in "ifo" if g not in missing)
    kw = make_inputs(Variant.create(gates=gates, peephole=peephole), seed=16)
    rows = {"i": slice(0, H), "f": slice(H, 2 * H), "o": slice(3 * H, 4 * H)}
    full = {**kw, "variant": Variant.create(peephole=peephole)}
    for name in ("weight_ih", "weight_hh", "bias"):
        full[name] = kw[name].copy()
    if peephole is not None:
        full["peephole_weight"] = kw["peephole_weight"].copy()
    for gate in missing:
        full["weight_ih"][rows[gate]] = 0.0
        full["weight_hh"][rows[gate]] = 0.0
        full["bias"][rows[gate]] = 100.0
        if peephole == "full":
            full["peephole_weight"][rows[gate]] = 0.0
        if peephole == "diagonal":
            full["peephole_weight"]["ifo".index(gate)] = 0.0
    assert ref._sigmoid(np.array(100.0)) == 1.0
    for a, b in zip(run(kw)[:3], run(full)[:3]):
        assert np.array_equal(a, b)


def test_huge_clip_equals_no_clip():
    for peephole in (None, "diagonal", "full"):
        kw = make_inputs(Variant.create(peephole=peephole), seed=17, scale=2.0)
        y, h_n, c_n, cache = run(kw)
        y2, h2, c2, cache2 = run({**kw, "variant": Variant.create(peephole=peephole, clip=1e300, cell_clip=1e300)})
        assert np.array_equal(y, y2) and np.array_equal(h_n, h2) and np.array_equal(c_n, c2)
        g = ref.backward(cache, np.ones_like(y), np.ones_like(h_n), np.ones_like(c_n))
        g2 = ref.backward(cache2, np.ones_like(y), np.ones_like(h_n), np.ones_like(c_n))
        for name in NAMES:
            assert (g[name] is None and g2[name] is None) or np.array_equal(g[name], g2[name]), name


def test_coupled_gates_forget_is_one_minus_input():
    """With coupled gates the forget weights do not matter, and fg = 1 - i."""
    kw = make_inputs(Variant.create(coupled_gates=True), seed=18)
    other = {**kw, "weight_ih": kw["weight_ih"].copy()}
    other["weight_ih"][H:2 * H] = 123.0
    assert np.array_equal(run(kw)[0], run(other)[0])
    _, _, _, cache = run(kw)
    for s in cache["steps"]:
        assert np.array_equal(s["fg"], 1.0 - s["i"])


def test_bad_arguments():
    kw = make_inputs(Variant.create(peephole="diagonal"))
    with pytest.raises(ValueError):
        run({**kw, "peephole_weight": None})
    with pytest.raises(ValueError):
        run({**kw, "lengths": np.array([T + 1, 0, 0])})
    with pytest.raises(TypeError):
        run({**kw, "variant": "vanilla"})
