"""lstmkit.onnx against onnxruntime (SPEC section 4, last point) and ONNX's own LSTM test cases."""

import copy
import io
import subprocess
import sys
import warnings

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lstmkit
import lstmkit.onnx as lo
from lstmkit.onnx.load import INPUTS
from tests.helpers import TOLERANCE, assert_close, relative_error
from tests.onnx_cases import ACTIVATION_RANGES, GATES, activation, lstm_node, run_layout1_in_ort, run_ort

TOL = TOLERANCE[torch.float32]["forward"]


def _lengths(draw, batch, steps, allow_zero):
    """Mixed lengths in [0 or 1, T], the longest = T."""
    lengths = draw(st.lists(st.integers(0 if allow_zero else 1, steps), min_size=batch, max_size=batch))
    lengths[draw(st.integers(0, batch - 1))] = steps
    return lengths


EPS32 = 2.0**-24  # float32's unit roundoff


def _exact_and_jittered(module, run, *inputs):
    """``run(m, *inputs)`` for a float64 copy m of ``module`` (the exact result of the same
    computation), and again with every weight and float input moved by a random relative 2^-24."""
    exact = copy.deepcopy(module).double()
    jittered = copy.deepcopy(exact)
    gen = torch.Generator().manual_seed(0)

    def jitter(t):
        return t * (1 + EPS32 * torch.randn(t.shape, generator=gen, dtype=t.dtype))

    with torch.no_grad():
        for p in jittered.parameters():
            p.copy_(jitter(p))
    inputs = [None if v is None else torch.as_tensor(np.asarray(v)) for v in inputs]
    inputs = [v.double() if v is not None and v.is_floating_point() else v for v in inputs]
    moved = [jitter(v) if v is not None and v.is_floating_point() else v for v in inputs]
    with torch.no_grad():
        return run(exact, *inputs), run(jittered, *moved)


def _assert_outputs(got, want, exact, jittered, what):
    """lstmkit's float32 outputs ``got`` (Y, Y_h, Y_c) equal onnxruntime's ``want`` to SPEC's
    relative norm error 1e-5, with two allowances for float32 itself:

    - the error is relative to the norm of ``exact`` (the same module in float64) but at least
      to an RMS of 1e-2: where a whole output is tiny, absolute rounding dominates (onnxruntime
      computes Elu as alpha (exp(x) - 1) in float32, 2e-4 off at x = -1e-4, where lstmkit uses
      expm1);
    - the bound is 10x the spread of the exact result under float32 rounding of weights and
      inputs (``jittered``) where that is larger than 1e-5: ill-conditioned cases (a cell that
      keeps growing through unbounded g and h) move that much from rounding alone; capped at 1e-3.

    Well-conditioned cases have a spread near 1e-7 and meet 1e-5; a semantic difference (gate
    order, clip, lengths, an activation) is far above both allowances.
    """
    for name, g, w, e, j in zip(("Y", "Y_h", "Y_c"), got, want, exact, jittered):
        g, w, e, j = (torch.as_tensor(np.asarray(v)).double() for v in (g, w, e, j))
        assert g.shape == w.shape, f"{what} {name}: shape {tuple(g.shape)} != {tuple(w.shape)}"
        scale = max(e.norm().item(), 1e-2 * e.numel() ** 0.5)
        spread, err = (j - e).norm().item() / scale, (g - w).norm().item() / scale
        bound = min(max(TOL, 10 * spread), 1e-3)  # the allowance never exceeds 1e-3
        assert err <= bound, f"{what} {name}: relative error {err:.3g} > {bound:.1g} (rounding spread {spread:.3g})"


def _run_module(m, x, lengths, h0, c0):
    output, (h_n, c_n) = m(x, None if h0 is None else (h0, c0), lengths=lengths)
    return output, h_n, c_n


@settings(max_examples=40, deadline=None)
@given(data=st.data(), hidden=st.integers(1, 64), layers=st.integers(1, 3),
       direction=st.sampled_from(["forward", "reverse", "bidirectional"]), peephole=st.booleans(),
       clip=st.sampled_from([None, 0.5, 3.0]), coupled=st.booleans(), batch_first=st.booleans(),
       batch=st.integers(1, 8), steps=st.integers(1, 50), with_lengths=st.booleans(), initial_state=st.booleans(),
       bias=st.booleans(), seed=st.integers(0, 2**16))
def test_export_runs_in_onnxruntime_as_in_lstmkit(data, hidden, layers, direction, peephole, clip, coupled, batch_first,
                                                  batch, steps, with_lengths, initial_state, bias, seed):
    torch.manual_seed(seed)
    acts = [data.draw(activation(GATES)), data.draw(activation()), data.draw(activation())]
    lstm = lstmkit.LSTM(3, hidden, layers, bias=bias, batch_first=batch_first, bidirectional=direction == "bidirectional",
                        peephole="diagonal" if peephole else None, clip=clip, coupled_gates=coupled,
                        activations=[(n, *[v for v in (a, b) if v is not None]) for n, a, b in acts])  # ONNX names
    module = lo.ReverseLSTM(lstm) if direction == "reverse" else lstm
    d, n = (2 if direction == "bidirectional" else 1), layers * (2 if direction == "bidirectional" else 1)
    x = torch.randn((batch, steps, 3) if batch_first else (steps, batch, 3))
    lengths = torch.tensor(_lengths(data.draw, batch, steps, allow_zero=True)) if with_lengths else None
    hx = (torch.randn(n, batch, hidden), torch.randn(n, batch, hidden)) if initial_state else None
    with torch.no_grad():
        output, (h_n, c_n) = module(x, hx, lengths=lengths)

    buffer = io.BytesIO()
    lo.export(module, buffer, lengths=with_lengths, initial_state=initial_state)
    feeds = {"input": x.numpy()}
    if with_lengths:
        feeds["lengths"] = lengths.numpy().astype(np.int32)
    if initial_state:
        feeds["h_0"], feeds["c_0"] = hx[0].numpy(), hx[1].numpy()
    want = run_ort(buffer.getvalue(), feeds)
    exact = _exact_and_jittered(module, _run_module, x, lengths, *(hx or (None, None)))
    _assert_outputs((output, h_n, c_n), want, *exact, "exported")
    assert output.shape[-1] == d * hidden

    loaded = lo.load(io.BytesIO(buffer.getvalue()))  # and back: the same module
    assert type(loaded) is type(module)
    with torch.no_grad():
        again, (h_again, c_again) = loaded(x, hx, lengths=lengths)
    for a, b in ((again, output), (h_again, h_n), (c_again, c_n)):
        assert torch.equal(a, b)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), hidden=st.integers(1, 64), direction=st.sampled_from(["forward", "reverse", "bidirectional"]),
       layout=st.sampled_from([0, 1]), peephole=st.booleans(), clip=st.sampled_from([None, 0.5, 3.0]),
       input_forget=st.sampled_from([0, 1]), batch=st.integers(1, 8), steps=st.integers(1, 50),
       with_lengths=st.booleans(), initial_state=st.booleans(), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_import_computes_what_onnxruntime_computes(data, hidden, direction, layout, peephole, clip, input_forget, batch,
                                                   steps, with_lengths, initial_state, bias, seed):
    rng = np.random.default_rng(seed)
    acts = [data.draw(activation(GATES)), data.draw(activation()), data.draw(activation())]
    # onnxruntime returns Y_h = Y_c = 0 for a zero length where lstmkit keeps the initial state
    # (docs/onnx.md; test_zero_length_state below): zero lengths only without an initial state.
    lengths = _lengths(data.draw, batch, steps, allow_zero=not initial_state) if with_lengths else None
    model, node, init, feeds = lstm_node(
        rng, steps, batch, 4, hidden, direction=direction, layout=layout, peephole=peephole, bias=bias, clip=clip,
        input_forget=input_forget, activations=acts * (2 if direction == "bidirectional" else 1), lengths=lengths,
        initial_state=initial_state)
    want = run_layout1_in_ort(node, init, feeds) if layout else run_ort(model, feeds)
    module = lstmkit.LSTM.from_onnx_node(node, init)
    inputs = (feeds["X"], feeds.get("sequence_lens"), feeds.get("initial_h"), feeds.get("initial_c"))
    _assert_outputs(lo.onnx_outputs(module, *inputs), want, *_exact_and_jittered(module, lo.onnx_outputs, *inputs), "imported")


@pytest.mark.parametrize("role", [0, 1, 2], ids=["f", "g", "h"])
@pytest.mark.parametrize("name", sorted(ACTIVATION_RANGES))
def test_every_activation_in_every_role(name, role):
    """Each ONNX activation, with alpha/beta away from the defaults, as f, g and h: import and
    export both agree with onnxruntime (bidirectional, peepholes, clip, 8 steps)."""
    rng = np.random.default_rng(role)
    ranges = ACTIVATION_RANGES[name]
    chosen = (name, *(None if r is None else float(np.float32(rng.uniform(*r))) for r in ranges))
    acts = [("Sigmoid", None, None), ("Tanh", None, None), ("Tanh", None, None)]
    acts[role] = chosen
    model, node, init, feeds = lstm_node(rng, 8, 3, 4, 6, direction="bidirectional", peephole=True, clip=3.0,
                                         activations=acts * 2, lengths=[8, 3, 5])
    want = run_ort(model, feeds)
    module = lo.from_onnx_node(node, init)
    inputs = (feeds["X"], feeds["sequence_lens"])
    _assert_outputs(lo.onnx_outputs(module, *inputs), want, *_exact_and_jittered(module, lo.onnx_outputs, *inputs), "imported")
    exported = lo.to_model(module, lengths=True)
    output, h_n, c_n = run_ort(exported, {"input": feeds["X"], "lengths": feeds["sequence_lens"]})
    assert_close(torch.from_numpy(output), torch.from_numpy(want[0]).transpose(1, 2).reshape(8, 3, 12), TOL, "exported Y")
    assert_close(torch.from_numpy(h_n), torch.from_numpy(want[1]), TOL, "exported Y_h")


def _onnx_test_cases():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from onnx.backend.test.case.node import collect_testcases

        return collect_testcases("LSTM")


@pytest.mark.parametrize("case", _onnx_test_cases(), ids=lambda c: c.name)
def test_onnx_operator_test_cases(case):
    """The LSTM cases that ship with the onnx package (onnx/backend/test/case/node/lstm.py)."""
    node = case.model.graph.node[0]
    (inputs, expected), = case.data_sets
    values = dict(zip([i.name for i in case.model.graph.input], inputs))
    keys = ("W", "R", "B", "P")
    weights = {name: values[name] for key, name in zip(INPUTS, node.input) if key in keys and name}
    runtime = {key: values.get(name) for key, name in zip(INPUTS, node.input)}
    module = lstmkit.LSTM.from_onnx_node(node, weights)
    got = dict(zip(("Y", "Y_h", "Y_c"), lo.onnx_outputs(module, runtime["X"], runtime.get("sequence_lens"),
                                                          runtime.get("initial_h"), runtime.get("initial_c"))))
    names = [key for key, name in zip(("Y", "Y_h", "Y_c"), node.output) if name]
    assert len(names) == len(expected)
    for key, want in zip(names, expected):
        assert_close(got[key], torch.from_numpy(want), TOL, f"{case.name} {key}")


def test_reverse_lstm_is_the_reverse_half_of_a_bidirectional_lstm():
    """ReverseLSTM (time flipped within each length) against lstmkit's own reverse recurrence."""
    bi = lstmkit.LSTM(3, 5, bidirectional=True, peephole="diagonal", batch_first=True)
    rev = lstmkit.LSTM(3, 5, peephole="diagonal", batch_first=True)
    rev.load_state_dict({k.replace("_reverse", ""): v for k, v in bi.state_dict().items() if "_reverse" in k})
    x, lengths, h0, c0 = torch.randn(4, 7, 3), torch.tensor([7, 0, 3, 1]), torch.randn(2, 4, 5), torch.randn(2, 4, 5)
    with torch.no_grad():
        out, (h, c) = bi(x, (h0, c0), lengths=lengths)
        rout, (rh, rc) = lo.ReverseLSTM(rev)(x, (h0[1:], c0[1:]), lengths=lengths)
    assert torch.allclose(rout, out[..., 5:], atol=1e-6)
    assert torch.allclose(rh[0], h[1], atol=1e-6) and torch.allclose(rc[0], c[1], atol=1e-6)


def test_zero_length_state():
    """onnxruntime gives Y_h = Y_c = 0 for a zero-length sequence, lstmkit the initial state; the
    exporter adds a Where so the exported graph computes lstmkit's answer in onnxruntime."""
    rng = np.random.default_rng(0)
    model, node, init, feeds = lstm_node(rng, 4, 3, 2, 5, lengths=[4, 0, 2], initial_state=True)
    _, y_h, y_c = run_ort(model, feeds)
    assert not y_h[:, 1].any() and not y_c[:, 1].any()
    _, got_h, got_c = lo.onnx_outputs(lo.from_onnx_node(node, init), feeds["X"], feeds["sequence_lens"],
                                      feeds["initial_h"], feeds["initial_c"])
    assert np.array_equal(got_h[:, 1].numpy(), feeds["initial_h"][:, 1])
    assert relative_error(got_h[:, [0, 2]], y_h[:, [0, 2]]) < TOL


@pytest.mark.parametrize("name, takes", [("Affine", 2), ("ScaledTanh", 2), ("ThresholdedRelu", 1)])
def test_omitted_alpha_beta(name, takes):
    """ONNX's spec defaults omitted alpha/beta to those of the operator of the same name;
    onnxruntime uses 0. activation_defaults= chooses; the default follows the spec."""
    rng = np.random.default_rng(1)
    omitted, node, init, feeds = lstm_node(rng, 5, 2, 3, 4, activations=[("Sigmoid", None, None), (name, None, None), ("Tanh", None, None)])
    spec = {"Affine": (1.0, 0.0), "ScaledTanh": (1.0, 1.0), "ThresholdedRelu": (1.0, None)}[name]
    explicit, *_ = lstm_node(np.random.default_rng(1), 5, 2, 3, 4, activations=[("Sigmoid", None, None), (name, *spec), ("Tanh", None, None)])
    ort_omitted, ort_explicit = run_ort(omitted, feeds), run_ort(explicit, feeds)
    assert relative_error(ort_omitted[0], ort_explicit[0]) > 1e-3  # onnxruntime's default is not the spec's
    for defaults, want in (("onnx", ort_explicit), ("onnxruntime", ort_omitted)):
        module = lo.from_onnx_node(node, init, activation_defaults=defaults)
        exact = _exact_and_jittered(module, lo.onnx_outputs, feeds["X"])
        _assert_outputs(lo.onnx_outputs(module, feeds["X"]), want, *exact, defaults)


class Tagger(torch.nn.Module):
    """A user model: embedding -> lstmkit.LSTM -> linear."""

    def __init__(self, batch_first, direction):
        super().__init__()
        self.embedding = torch.nn.Embedding(20, 8)
        lstm = lstmkit.LSTM(8, 16, 2, batch_first=batch_first, bidirectional=direction == "bidirectional",
                            peephole="diagonal", clip=2.0)
        self.lstm = lo.ReverseLSTM(lstm) if direction == "reverse" else lstm
        self.linear = torch.nn.Linear(32 if direction == "bidirectional" else 16, 5)

    def forward(self, tokens, lengths, h_0, c_0):
        y, (h_n, c_n) = self.lstm(self.embedding(tokens), (h_0, c_0), lengths=lengths)
        return self.linear(y), h_n, c_n


@pytest.mark.parametrize("direction", ["bidirectional", "reverse"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_torch_onnx_export_of_a_user_model(batch_first, direction):
    model = Tagger(batch_first, direction).eval()
    states = 4 if direction == "bidirectional" else 2

    def example(batch, steps, lengths):
        tokens = torch.randint(0, 20, (batch, steps) if batch_first else (steps, batch))
        return tokens, torch.tensor(lengths), torch.randn(states, batch, 16), torch.randn(states, batch, 16)

    axes = {0: "batch", 1: "steps"} if batch_first else {0: "steps", 1: "batch"}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation warning
        torch.onnx.export(model, example(3, 7, [7, 2, 5]), buffer, dynamo=False, input_names=["tokens", "lengths", "h_0", "c_0"],
                          output_names=["y", "h_n", "c_n"], dynamic_axes={"tokens": axes, "lengths": {0: "batch"},
                                                                           "h_0": {1: "batch"}, "c_0": {1: "batch"}, "y": axes})
    ops = [n.op_type for n in onnx.load_from_string(buffer.getvalue()).graph.node]
    assert ops.count("LSTM") == 2 and "Loop" not in ops and "Sigmoid" not in ops
    inputs = example(5, 11, [11, 0, 4, 1, 9])  # another batch and length than exported with
    want = model(*inputs)
    got = run_ort(buffer.getvalue(), dict(zip(["tokens", "lengths", "h_0", "c_0"], (t.numpy() for t in inputs))))
    for name, g, w in zip(("y", "h_n", "c_n"), got, want):
        assert_close(torch.from_numpy(g), w.detach(), TOL, name)


def test_torch_onnx_export_of_a_bare_lstm():
    """torch.onnx.export(lstm, (x,)) of the module itself: one ONNX LSTM node, onnxruntime's output."""
    module = lstmkit.LSTM(3, 4, peephole="diagonal").eval()
    x = torch.randn(5, 2, 3)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation warning
        torch.onnx.export(module, (x,), buffer, dynamo=False, input_names=["x"])
    assert [n.op_type for n in onnx.load_from_string(buffer.getvalue()).graph.node].count("LSTM") == 1
    got, want = run_ort(buffer.getvalue(), {"x": x.numpy()}), module(x)
    for g, w in zip(got, (want[0], *want[1])):
        assert_close(torch.from_numpy(g), w.detach(), TOL)


def test_import_lstmkit_does_not_import_onnx():
    code = "import sys, lstmkit; assert 'onnx' not in sys.modules and 'onnxruntime' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_onnx_says_how_to_install():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'onnx' or name.startswith('onnx.'): raise ImportError('no onnx here')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import lstmkit\n"
        "try:\n"
        "    lstmkit.LSTM.from_onnx_node(None, {})\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert 'pip install "lstmkit[onnx]"' in out
