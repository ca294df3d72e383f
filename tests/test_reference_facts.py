"""The NumPy float64 reference (lstmkit.reference) against independently known facts: torch.nn.LSTM,
the lecture's example, and what lengths, missing gates, clip and coupled gates must mean.
(Its gradients against finite differences: tests/test_reference.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from lstmkit import reference as ref
from lstmkit.variant import Variant
from tests.test_reference import NAMES, B, H, I, P, T, make_inputs, run


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
