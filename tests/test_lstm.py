"""lstmkit.LSTM against torch.nn.LSTM: the drop-in contract (SPEC section 4, third point)."""

import pytest
import torch
import torch.nn.utils.prune
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import lstmkit
from tests.helpers import TOLERANCE, assert_close, ran_the_kernel


def _run(module, x, hx, packed_lengths, batch_first):
    """Forward, then backward of a fixed random loss; returns outputs and all gradients."""
    inp = x
    if packed_lengths is not None:
        inp = pack_padded_sequence(x, packed_lengths, batch_first=batch_first, enforce_sorted=False)
    out, (h_n, c_n) = module(inp, hx) if hx is not None else module(inp)
    out_data = out.data if isinstance(out, PackedSequence) else out
    gen = torch.Generator().manual_seed(1)
    loss = sum((t * torch.randn(t.shape, generator=gen, dtype=t.dtype)).sum() for t in (out_data, h_n, c_n))
    loss.backward()
    grads = {name: p.grad for name, p in module.named_parameters()}
    grads["input"] = x.grad
    if hx is not None:
        grads["h_0"], grads["c_0"] = hx[0].grad, hx[1].grad
    return (out_data, h_n, c_n), grads


@given(
    num_layers=st.integers(1, 3),
    bidirectional=st.booleans(),
    batch_first=st.booleans(),
    proj=st.booleans(),
    bias=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    mode=st.sampled_from(["padded", "packed", "unbatched"]),
    with_state=st.booleans(),
    batch=st.integers(1, 4),
    steps=st.integers(1, 9),
    seed=st.integers(0, 2**16),
)
def test_equals_torch_lstm(num_layers, bidirectional, batch_first, proj, bias, dtype, mode, with_state, batch, steps, seed):
    torch.manual_seed(seed)
    input_size, hidden = 3, 5
    proj_size = 2 if proj else 0
    args = (input_size, hidden, num_layers, bias, batch_first, 0.0, bidirectional, proj_size)
    reference = nn.LSTM(*args, dtype=dtype)
    ours = lstmkit.LSTM(*args, dtype=dtype)
    ours.load_state_dict(reference.state_dict())
    assert list(ours.state_dict()) == list(reference.state_dict())

    shape = (steps, input_size) if mode == "unbatched" else (
        (batch, steps, input_size) if batch_first else (steps, batch, input_size))
    x = torch.randn(shape, dtype=dtype)
    state_shape = (num_layers * (2 if bidirectional else 1),) + (() if mode == "unbatched" else (batch,))
    hx = None
    if with_state:
        hx = (torch.randn(state_shape + (proj_size or hidden,), dtype=dtype),
              torch.randn(state_shape + (hidden,), dtype=dtype))
    lengths = torch.randint(1, steps + 1, (batch,)) if mode == "packed" else None
    if lengths is not None:
        lengths[torch.randint(batch, ())] = steps  # pack_padded_sequence pads to the longest one

    def leaf(t):
        return None if t is None else t.clone().requires_grad_()

    results = [
        _run(m, leaf(x), None if hx is None else (leaf(hx[0]), leaf(hx[1])), lengths, batch_first)
        for m in (ours, reference)
    ]
    (ours_out, ours_grads), (ref_out, ref_grads) = results
    tol = TOLERANCE[dtype]
    for name, a, b in zip(("output", "h_n", "c_n"), ours_out, ref_out):
        assert_close(a, b, tol["forward"], name)
    assert ours_grads.keys() == ref_grads.keys()
    for name in ref_grads:
        assert_close(ours_grads[name], ref_grads[name], tol["grad"], f"grad {name}")


def test_packed_output_keeps_the_callers_layout():
    reference = nn.LSTM(2, 3, bidirectional=True)
    ours = lstmkit.LSTM.from_torch(reference)
    packed = torch.nn.utils.rnn.pack_sequence([torch.randn(2, 2), torch.randn(5, 2), torch.randn(3, 2)],
                                              enforce_sorted=False)
    out, _ = ours(packed)
    expected, _ = reference(packed)
    assert torch.equal(out.batch_sizes, expected.batch_sizes)
    assert torch.equal(out.sorted_indices, expected.sorted_indices)
    assert torch.equal(out.unsorted_indices, expected.unsorted_indices)
    assert_close(out.data, expected.data, 1e-5)


def test_lengths_equal_packed_input():
    ours = lstmkit.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True, peephole="diagonal")
    x = torch.randn(3, 6, 3)
    lengths = torch.tensor([4, 6, 1])
    out, (h_n, c_n) = ours(x, lengths=lengths)
    packed_out, (ph, pc) = ours(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
    padded, _ = torch.nn.utils.rnn.pad_packed_sequence(packed_out, batch_first=True)
    assert_close(out, padded, 1e-6)
    assert_close(h_n, ph, 1e-6)
    assert_close(c_n, pc, 1e-6)
    assert out[0, 4:].abs().max() == 0 and out[2, 1:].abs().max() == 0


def test_zero_length_returns_zero_output_and_initial_state():
    ours = lstmkit.LSTM(2, 3, bidirectional=True)
    x = torch.randn(4, 2, 2)
    h0, c0 = torch.randn(2, 2, 3), torch.randn(2, 2, 3)
    out, (h_n, c_n) = ours(x, (h0, c0), lengths=[0, 4])
    assert torch.all(out[:, 0] == 0)
    assert torch.equal(h_n[:, 0], h0[:, 0]) and torch.equal(c_n[:, 0], c0[:, 0])
    full, (h_full, _) = ours(x[:, 1:], (h0[:, 1:], c0[:, 1:]))
    assert_close(out[:, 1:], full, 1e-6)
    assert_close(h_n[:, 1:], h_full, 1e-6)


def test_from_torch_to_torch_round_trip():
    reference = nn.LSTM(3, 6, num_layers=2, bidirectional=True, proj_size=2, batch_first=True)
    ours = lstmkit.LSTM.from_torch(reference)
    back = ours.to_torch()
    assert isinstance(back, nn.LSTM) and back.proj_size == 2 and back.batch_first
    for key, value in reference.state_dict().items():
        assert torch.equal(back.state_dict()[key], value)


def test_conversions_keep_the_training_mode():
    reference = nn.LSTM(3, 4, num_layers=2, dropout=0.5).eval()
    ours = lstmkit.LSTM.from_torch(reference)
    assert not ours.training and not ours.to_torch().training
    assert lstmkit.LSTM(3, 4).to_torch().training
    with pytest.raises(ValueError, match="forget_bias"):
        lstmkit.LSTM.from_torch(reference, forget_bias=1.0)


def test_dropout_on_one_layer_warns_like_nn_lstm():
    with pytest.warns(UserWarning, match="num_layers greater than 1"):
        lstmkit.LSTM(3, 4, dropout=0.2)


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_padding_is_never_read(backend):
    ours = lstmkit.LSTM(3, 4, bidirectional=True, backend=backend)
    x = torch.randn(5, 2, 3)
    x[3:, 0] = float("nan")
    x[1:, 1] = float("inf")
    x.requires_grad_()
    out, (h_n, c_n) = ours(x, lengths=[3, 1])
    (out.sum() + h_n.sum() + c_n.sum()).backward()
    assert torch.isfinite(out).all() and torch.isfinite(h_n).all()
    assert torch.isfinite(x.grad).all() and torch.all(x.grad[3:, 0] == 0)
    assert all(torch.isfinite(p.grad).all() for p in ours.parameters())
    clean = x.detach().nan_to_num(0.0, 0.0, 0.0)
    assert_close(ours(clean, lengths=[3, 1])[0], out.detach(), 1e-6)


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_final_state_can_be_detached_in_place(backend):
    """Truncated backpropagation through time calls h.detach_() on the returned state, as with
    torch.nn.LSTM: h_n and c_n are tensors of their own, not views (of h_0 either, at T = 0)."""
    module = lstmkit.LSTM(3, 4, backend=backend)
    h0, c0 = torch.zeros(1, 2, 4), torch.zeros(1, 2, 4)
    for steps in (5, 0):
        _, (h, c) = module(torch.randn(steps, 2, 3), (h0, c0))
        h.detach_(), c.detach_()
        h.add_(1.0)
        assert not h.requires_grad and torch.equal(h0, torch.zeros(1, 2, 4))


def test_from_torch_with_peepholes_starts_from_the_same_function():
    reference = nn.LSTM(3, 4)
    ours = lstmkit.LSTM.from_torch(reference, peephole="full")
    assert ours.weight_ch_l0.shape == (16, 4) and torch.all(ours.weight_ch_l0 == 0)
    x = torch.randn(5, 2, 3)
    assert_close(ours(x)[0], reference(x)[0], 1e-5)
    with pytest.raises(ValueError, match="peephole='full'"):
        ours.to_torch()


def test_parameter_names_for_each_option():
    names = set(dict(lstmkit.LSTM(3, 4, bidirectional=True, peephole="diagonal").named_parameters()))
    assert {"weight_peep_l0", "weight_peep_l0_reverse"} <= names
    assert lstmkit.LSTM(3, 4, peephole="diagonal").weight_peep_l0.shape == (3, 4)
    assert lstmkit.LSTM(3, 4, peephole="full").weight_ch_l0.shape == (16, 4)
    coupled = lstmkit.LSTM(3, 4, coupled_gates=True)
    assert coupled.weight_ih_l0.shape == (16, 3)  # nn.LSTM's shape, z_f rows unused


def test_forget_bias_is_added_to_the_forget_part_of_bias_ih():
    torch.manual_seed(3)
    plain = lstmkit.LSTM(3, 4)
    torch.manual_seed(3)
    shifted = lstmkit.LSTM(3, 4, forget_bias=1.0)
    delta = shifted.bias_ih_l0 - plain.bias_ih_l0
    assert torch.allclose(delta, torch.tensor([0.0] * 4 + [1.0] * 4 + [0.0] * 8))
    assert torch.equal(shifted.bias_hh_l0, plain.bias_hh_l0)


def test_dropout_between_layers_only_in_training():
    ours = lstmkit.LSTM(3, 8, num_layers=2, dropout=0.5)
    x = torch.randn(6, 2, 3)
    ours.eval()
    assert torch.equal(ours(x)[0], ours(x)[0])
    ours.train()
    assert not torch.equal(ours(x)[0], ours(x)[0])
    with pytest.warns(UserWarning, match="num_layers greater than 1"):
        single = lstmkit.LSTM(3, 8, num_layers=1, dropout=0.5)  # nothing to drop between layers
    assert torch.equal(single(x)[0], single(x)[0])


def test_peephole_and_options_combine_with_every_nn_lstm_argument():
    ours = lstmkit.LSTM(3, 6, num_layers=2, bidirectional=True, proj_size=2, batch_first=True, dropout=0.1,
                        bias=False, peephole="full", activations=("hard_sigmoid", "softsign", "elu"),
                        coupled_gates=True, gates="ifo", clip=5.0, cell_clip=3.0)
    x = torch.randn(2, 7, 3, requires_grad=True)
    out, (h_n, c_n) = ours(x, lengths=torch.tensor([7, 3]))
    assert out.shape == (2, 7, 4) and h_n.shape == (4, 2, 2) and c_n.shape == (4, 2, 6)
    (out.sum() + c_n.sum()).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


# --- bad input: a clear ValueError/TypeError that names the argument ---------------------------

@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda m: m(torch.randn(5, 2, 4)), ValueError, "input.*3 features"),
        (lambda m: m(torch.randn(5, 2, 3, 1)), ValueError, "input must be 2-D"),
        (lambda m: m(torch.randn(5, 2, 3, dtype=torch.float64)), TypeError, "input.*dtype"),
        (lambda m: m(torch.randint(0, 3, (5, 2, 3))), TypeError, "input.*dtype"),
        (lambda m: m([[0.0] * 3]), TypeError, "input must be a torch.Tensor"),
        (lambda m: m(torch.randn(5, 2, 3), (torch.zeros(1, 2, 4), torch.zeros(2, 2, 4))), ValueError, "h_0.*shape"),
        (lambda m: m(torch.randn(5, 2, 3), (torch.zeros(2, 2, 4), torch.zeros(2, 3, 4))), ValueError, "c_0.*shape"),
        (lambda m: m(torch.randn(5, 2, 3), (torch.zeros(2, 2, 4, dtype=torch.float64), torch.zeros(2, 2, 4))),
         TypeError, "h_0.*dtype"),
        (lambda m: m(torch.randn(5, 2, 3), (torch.zeros(2, 2, 4, device="meta"), torch.zeros(2, 2, 4))),
         ValueError, "h_0.*device"),
        (lambda m: m(torch.randn(5, 2, 3), torch.zeros(2, 2, 4)), TypeError, "hx must be a tuple"),
        (lambda m: m(torch.randn(5, 2, 3), lengths=[6, 2]), ValueError, "lengths must be <= the sequence length 5"),
        (lambda m: m(torch.randn(5, 2, 3), lengths=[-1, 2]), ValueError, "lengths must be >= 0"),
        (lambda m: m(torch.randn(5, 2, 3), lengths=[5]), ValueError, r"lengths must have shape \(2,\)"),
        (lambda m: m(torch.randn(5, 2, 3), lengths=[1.5, 2.0]), TypeError, "lengths must hold integers"),
        (lambda m: m(pack_padded_sequence(torch.randn(5, 2, 3), [5, 2]), lengths=[5, 2]), ValueError, "PackedSequence"),
    ],
)
def test_bad_input_is_named(call, error, match):
    module = lstmkit.LSTM(3, 4, bidirectional=True)
    with pytest.raises(error, match=match):
        call(module)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"proj_size": 4}, ValueError, "proj_size must be smaller than hidden_size"),
        ({"proj_size": -1}, ValueError, "proj_size"),
        ({"num_layers": 0}, ValueError, "num_layers"),
        ({"dropout": 1.5}, ValueError, "dropout"),
        ({"peephole": "diag"}, ValueError, "peephole must be one of"),
        ({"activations": ("sigmoid", "tanh", "swish")}, ValueError, "unknown activation 'swish'"),
        ({"activations": ("sigmoid", "tanh")}, ValueError, "three activations"),
        ({"activations": 5}, ValueError, "three activations"),
        ({"activations": iter(["sigmoid", "tanh", "tanh"])}, ValueError, "three activations"),
        ({"activations": ("sigmoid", ("tanh", 1.0), "tanh")}, ValueError, "'tanh' takes 0 parameter"),
        ({"coupled_gates": True, "gates": "fo"}, ValueError, "coupled_gates.*'i' and 'f'"),
        ({"gates": "ifx"}, ValueError, "gates must be"),
        ({"clip": float("inf")}, ValueError, "clip must be a positive finite number"),
        ({"clip": float("nan")}, ValueError, "clip must be"),
        ({"cell_clip": -1.0}, ValueError, "cell_clip must be"),
        ({"clip": "3"}, TypeError, "clip must be"),
        ({"forget_bias": 1.0, "bias": False}, ValueError, "forget_bias needs a bias"),
        ({"backend": "cudnn"}, ValueError, "backend must be one of"),
    ],
)
def test_bad_options_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        lstmkit.LSTM(3, 4, **kwargs)


def _weight_drop(module, name):
    """AWD-LSTM's weight drop: the parameter leaves, a plain tensor computed from it takes its place."""
    raw = module._parameters.pop(name)
    module.register_parameter(name + "_raw", raw)
    setattr(module, name, torch.nn.functional.dropout(raw, 0.5, training=True))


REWRAPS = {
    "weight_norm": lambda m: torch.nn.utils.parametrizations.weight_norm(m, "weight_hh_l0"),
    # (evaluated: in training, each read of the weight takes a power-iteration step, and nn.LSTM
    # reads it more often)
    "spectral_norm": lambda m: torch.nn.utils.parametrizations.spectral_norm(m, "weight_ih_l0").eval(),
    "orthogonal projection": lambda m: torch.nn.utils.parametrizations.orthogonal(m, "weight_hr_l0"),
    "pruned projection": lambda m: torch.nn.utils.prune.l1_unstructured(m, "weight_hr_l0", amount=0.5),
    "pruned reverse weights": lambda m: torch.nn.utils.prune.random_unstructured(m, "weight_hh_l0_reverse", 0.5),
    "weight drop": lambda m: _weight_drop(m, "weight_hh_l0"),
}


@pytest.mark.parametrize("rewrap", REWRAPS.values(), ids=REWRAPS.keys())
@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_reparametrized_weights_are_used(rewrap, backend):
    """Parametrizations, pruning and weight drop replace a weight attribute, and the module runs on
    that attribute, as nn.LSTM does: same outputs, same gradients for the underlying parameters."""
    baseline = nn.LSTM(3, 6, proj_size=4, bidirectional=True, dtype=torch.float64)
    module = lstmkit.LSTM.from_torch(baseline, backend=backend)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    results = []
    for m in (baseline, module):
        torch.manual_seed(1)  # the same random masks, power-iteration vectors and dropout
        rewrap(m)
        out, (h, c) = m(x)
        (out.square().sum() + c.sum()).backward()
        with torch.no_grad():
            inference = m(x)[0]
        results.append([out, h, c, inference, *(p.grad for p in m.parameters())])
    assert len(results[0]) == len(results[1])
    for expected, actual in zip(*results):
        torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("state_dtypes", [None, (torch.float32, torch.float32), (torch.bfloat16, torch.float32)])
@pytest.mark.parametrize("proj_size", [0, 2])
@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16])
def test_under_autocast_like_torch_nn_lstm(input_dtype, proj_size, state_dtypes, packed):
    """Under CPU autocast the module takes inputs and states of autocast's dtype, and returns the
    dtypes nn.LSTM returns there (c_n keeps c_0's with a projection; a PackedSequence without one is
    not autocast), computing in float32 with the fused kernel: outputs and gradients within
    bfloat16's precision of nn.LSTM's."""
    baseline = nn.LSTM(3, 6, proj_size=proj_size)
    module = lstmkit.LSTM.from_torch(baseline)
    x = torch.randn(7, 2, 3).to(input_dtype)
    if packed:
        x = pack_padded_sequence(x, torch.tensor([7, 4]))
    hx = None if state_dtypes is None else (torch.randn(1, 2, proj_size or 6, dtype=state_dtypes[0]),
                                            torch.randn(1, 2, 6, dtype=state_dtypes[1]))
    results = []
    for m in (baseline, module):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, (h, c) = m(x, hx)
        out = out.data if packed else out
        (out.float().square().sum() + c.float().sum()).backward()
        results.append([out, h, c, *(p.grad for p in m.parameters())])
    assert ran_the_kernel(results[1][2])
    for expected, actual in zip(*results):
        assert actual.dtype == expected.dtype
        assert_close(actual.float(), expected.float(), 2e-2)


def test_autocast_leaves_float64_alone():
    """A float64 module under autocast computes and returns float64, as nn.LSTM does, and an input of
    a dtype autocast would not cast is refused by name."""
    baseline = nn.LSTM(3, 6, dtype=torch.float64)
    module = lstmkit.LSTM.from_torch(baseline)
    x = torch.randn(7, 2, 3, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, actual = baseline(x), module(x)
        with pytest.raises(TypeError, match="input must have one of torch.float32, torch.bfloat16"):
            lstmkit.LSTM(3, 6)(x)
    for e, a in ((expected[0], actual[0]), *zip(expected[1], actual[1])):
        assert a.dtype == torch.float64
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)


def test_packed_input_under_torch_compile():
    """A PackedSequence through a compiled module: as uncompiled, layout included."""
    module = lstmkit.LSTM(3, 4, num_layers=2)
    packed = pack_padded_sequence(torch.randn(6, 3, 3), torch.tensor([6, 2, 4]), enforce_sorted=False)
    torch._dynamo.reset()
    expected, actual = module(packed), torch.compile(module, backend="eager")(packed)
    assert torch.equal(actual[0].unsorted_indices, expected[0].unsorted_indices)
    for e, a in ((expected[0].data, actual[0].data), *zip(expected[1], actual[1])):
        torch.testing.assert_close(a, e)


@pytest.mark.parametrize("kwargs", [{}, {"proj_size": 4, "num_layers": 2, "bias": False, "batch_first": True,
                                         "dropout": 0.1, "bidirectional": True}])
def test_repr_is_torch_nn_lstm_s(kwargs):
    assert repr(lstmkit.LSTM(3, 6, **kwargs)) == repr(nn.LSTM(3, 6, **kwargs))


def test_whole_module_loads_with_weights_only():
    """torch.save of the module, torch.load(weights_only=True) allowing only its class, as for nn.LSTM."""
    import io
    import pickle

    def save_and_load(module):
        buffer = io.BytesIO()
        torch.save(module, buffer)
        buffer.seek(0)
        with torch.serialization.safe_globals([type(module)]):
            return torch.load(buffer, weights_only=True)

    try:
        save_and_load(nn.LSTM(3, 4))
    except pickle.UnpicklingError:  # (torch 2.5 also wants builtins.set allowed)
        pytest.skip("this torch cannot load a whole nn.LSTM with weights_only either")
    module = lstmkit.LSTM(3, 4, peephole="diagonal", activations=("sigmoid", ("scaled_tanh", 1.0, 2.0), "tanh"))
    loaded = save_and_load(module)
    x = torch.randn(5, 2, 3)
    assert loaded.variant == module.variant and torch.equal(loaded(x)[0], module(x)[0])
