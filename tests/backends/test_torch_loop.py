"""The generic PyTorch backend against the float64 reference, for every option and combination."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import lstmkit
from lstmkit import backends
from lstmkit.variant import ACTIVATION_DEFAULTS
from tests.helpers import TOLERANCE, assert_close, reference_lstm

ACTIVATION_NAMES = sorted(ACTIVATION_DEFAULTS)


def check_against_reference(module, x, lengths=None, dtype=torch.float64, hx=True):
    """Run ``module`` (time-major) and the reference; compare outputs, states and every gradient."""
    directions = 2 if module.bidirectional else 1
    layers, batch = module.num_layers * directions, x.shape[1]
    device = next(module.parameters()).device
    x = x.to(device, dtype).requires_grad_()
    h0 = 0.5 * torch.randn(layers, batch, module.proj_size or module.hidden_size, dtype=dtype)
    c0 = 0.5 * torch.randn(layers, batch, module.hidden_size, dtype=dtype)
    h0, c0 = (t.to(device).requires_grad_() for t in (h0, c0))
    if not hx:  # the module's default zero state
        h0, c0 = (torch.zeros_like(t).requires_grad_() for t in (h0, c0))
    out, (h_n, c_n) = module(x, (h0, c0) if hx else None, lengths=lengths)
    g_out, g_h, g_c = (torch.randn_like(t) for t in (out, h_n, c_n))
    if lengths is not None:  # outputs past a length are constant zeros; give them no weight
        steps = torch.arange(x.shape[0], device=device)
        g_out = g_out * (steps[:, None] < torch.as_tensor(lengths, device=device))[..., None]
    ((out * g_out).sum() + (h_n * g_h).sum() + (c_n * g_c).sum()).backward()

    ref_out, ref_h, ref_c, ref_grads = reference_lstm(module, x, h0, c0, lengths, g_out, g_h, g_c)
    tol = TOLERANCE[dtype]
    assert_close(out, ref_out, tol["forward"], "output")
    assert_close(h_n, ref_h, tol["forward"], "h_n")
    assert_close(c_n, ref_c, tol["forward"], "c_n")
    grads = {name: p.grad for name, p in module.named_parameters()}
    grads["input"] = x.grad
    if hx:
        grads.update(h_0=h0.grad, c_0=c0.grad)
    else:
        del ref_grads["h_0"], ref_grads["c_0"]
    assert grads.keys() == ref_grads.keys()
    for name, expected in ref_grads.items():
        # A parameter no gate reads (peepholes with gates="") gets no gradient at all, as in PyTorch.
        actual = torch.zeros_like(expected) if grads[name] is None and not expected.any() else grads[name]
        assert_close(actual, expected, tol["grad"], f"grad {name}")


def make(dtype=torch.float64, **kwargs):
    return lstmkit.LSTM(3, 5, dtype=dtype, backend="torch", **kwargs)


@pytest.mark.parametrize("peephole", [None, "diagonal", "full"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_each_peephole(peephole, dtype):
    module = make(dtype, peephole=peephole)
    check_against_reference(module, torch.randn(7, 3, 3), dtype=dtype)


@pytest.mark.parametrize("position", [0, 1, 2])
@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_each_activation_in_each_position(name, position):
    activations = ["sigmoid", "tanh", "tanh"]
    activations[position] = name
    check_against_reference(make(activations=activations), torch.randn(6, 3, 3))


@pytest.mark.parametrize("gates", ["ifo", "if", "io", "fo", "i", "f", "o", ""])
def test_each_gate_subset(gates):
    check_against_reference(make(gates=gates, peephole="diagonal"), torch.randn(6, 2, 3))


@pytest.mark.parametrize(
    "options",
    [
        {"coupled_gates": True},
        {"coupled_gates": True, "peephole": "full"},
        {"clip": 0.3},
        {"cell_clip": 0.2},
        {"clip": 0.5, "cell_clip": 0.3, "peephole": "diagonal"},
        {"proj_size": 2, "peephole": "diagonal"},
        {"bias": False, "peephole": "full"},
        {"activations": [("hard_sigmoid", 0.3, 0.4), ("scaled_tanh", 1.5, 0.7), ("affine", 0.8, 0.1)]},
        {"activations": [("leaky_relu", 0.2), ("elu", 0.5), ("thresholded_relu", 0.1)]},
    ],
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_options(options, dtype):
    check_against_reference(make(dtype, **options), torch.randn(6, 3, 3), dtype=dtype)


def test_clip_and_cell_clip_change_the_result():
    """So that the comparisons above exercise the clamps: at these values they are active."""
    x = torch.randn(6, 3, 3, dtype=torch.float64)
    plain = make()
    for options in ({"clip": 0.3}, {"cell_clip": 0.2}):
        clipped = make(**options)
        clipped.load_state_dict(plain.state_dict())
        assert (clipped(x)[0] - plain(x)[0]).abs().max() > 1e-3, options


@pytest.mark.parametrize("peephole", [None, "diagonal"])
def test_default_zero_state(peephole):
    check_against_reference(make(peephole=peephole, num_layers=2, bidirectional=True), torch.randn(5, 2, 3),
                            lengths=[5, 2], hx=False)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_lengths_bidirectional_multilayer_projection(dtype):
    module = make(dtype, num_layers=2, bidirectional=True, proj_size=2, peephole="diagonal", cell_clip=1.0)
    check_against_reference(module, torch.randn(6, 4, 3), lengths=[6, 0, 3, 1], dtype=dtype)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.parametrize(("batch", "hidden", "peephole"), [(3, 5, "full"), (1, 300, None), (4, 19, "diagonal")])
def test_recurrence_adds_the_bias_at_every_step(backend, batch, hidden, peephole):
    """The recurrence interface's ``bias`` is x_proj + bias, in results and gradients (B = 1, H = 300:
    the fused kernel's one-row product over 1.4 MB of weights; 4H = 76: a partial panel)."""
    recurrence, variant = backends.BACKENDS[backend], lstmkit.Variant.create(peephole=peephole)
    g = torch.Generator().manual_seed(0)
    shapes = {"x_proj": (6, batch, 4 * hidden), "h0": (batch, hidden), "c0": (batch, hidden),
              "weight_hh": (4 * hidden, hidden), "bias": (4 * hidden,)}
    t = {k: (0.3 * torch.randn(*v, generator=g, dtype=torch.float64)).requires_grad_() for k, v in shapes.items()}
    peep = variant.peephole_parameter(hidden)
    peep = None if peep is None else (0.3 * torch.randn(*peep[1], generator=g, dtype=torch.float64)).requires_grad_()
    lengths = torch.tensor([6, 2, 0, 5][:batch]) if batch > 1 else None
    results = []
    for separate in (True, False):
        cotangents = torch.Generator().manual_seed(1)
        x_proj = t["x_proj"] if separate else t["x_proj"] + t["bias"]
        out = recurrence(x_proj, t["h0"], t["c0"], t["weight_hh"], variant, peephole_weight=peep, lengths=lengths,
                         reverse=batch == 4, bias=t["bias"] if separate else None)
        loss = sum((o * torch.randn(o.shape, generator=cotangents, dtype=o.dtype)).sum() for o in out)
        grads = torch.autograd.grad(loss, [*t.values(), *([peep] if peep is not None else [])])
        results.append([*out, *grads])
    for separate, summed in zip(*results):
        assert_close(separate, summed, 1e-12)


@pytest.mark.parametrize("steps", [1, 200])
@pytest.mark.parametrize("peephole", [None, "diagonal", "full"])
def test_float32_long_sequences(steps, peephole):
    check_against_reference(make(torch.float32, peephole=peephole), torch.randn(steps, 2, 3), dtype=torch.float32)


@given(
    peephole=st.sampled_from([None, "diagonal", "full"]),
    activations=st.tuples(*[st.sampled_from(ACTIVATION_NAMES)] * 3),
    coupled=st.booleans(),
    gates=st.sampled_from(["ifo", "if", "io", "fo", "o", ""]),
    clip=st.sampled_from([None, 0.5, 2.0]),
    cell_clip=st.sampled_from([None, 0.5, 3.0]),
    proj=st.booleans(),
    num_layers=st.integers(1, 2),
    bidirectional=st.booleans(),
    with_lengths=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_random_combinations(peephole, activations, coupled, gates, clip, cell_clip, proj, num_layers,
                             bidirectional, with_lengths, seed):
    torch.manual_seed(seed)
    if coupled and not {"i", "f"} <= set(gates):
        gates = "ifo"
    module = make(peephole=peephole, activations=activations, coupled_gates=coupled, gates=gates, clip=clip,
                  cell_clip=cell_clip, proj_size=2 if proj else 0, num_layers=num_layers,
                  bidirectional=bidirectional)
    lengths = torch.randint(0, 6, (3,)).tolist() if with_lengths else None
    check_against_reference(module, torch.randn(5, 3, 3), lengths=lengths)
