"""lstmkit.LSTMCell against torch.nn.LSTMCell and the float64 reference."""

import pytest
import torch
from torch import nn

import lstmkit
from lstmkit import reference
from tests.helpers import TOLERANCE, assert_close


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("unbatched", [False, True])
def test_equals_torch_lstm_cell(dtype, bias, unbatched):
    torch_cell = nn.LSTMCell(4, 6, bias=bias, dtype=dtype)
    cell = lstmkit.LSTMCell.from_torch(torch_cell)
    assert list(cell.state_dict()) == list(torch_cell.state_dict())
    shape = (4,) if unbatched else (3, 4)
    x = torch.randn(shape, dtype=dtype)
    hx = tuple(torch.randn(shape[:-1] + (6,), dtype=dtype) for _ in range(2))
    results = []
    for module in (cell, torch_cell):
        inputs = [t.clone().requires_grad_() for t in (x, *hx)]
        h, c = module(inputs[0], (inputs[1], inputs[2]))
        (h.sum() * 2 + (c * c).sum()).backward()
        results.append(([h, c], [t.grad for t in inputs] + [p.grad for p in module.parameters()]))
    tol = TOLERANCE[dtype]
    for a, b in zip(results[0][0], results[1][0]):
        assert_close(a, b, tol["forward"])
    for a, b in zip(results[0][1], results[1][1]):
        assert_close(a, b, tol["grad"])
    assert torch.equal(cell.to_torch().weight_hh, torch_cell.weight_hh)


@pytest.mark.parametrize(
    "options",
    [{"peephole": "diagonal"}, {"peephole": "full", "clip": 0.4}, {"coupled_gates": True, "cell_clip": 0.3},
     {"gates": "fo", "activations": ("hard_sigmoid", "relu", "softsign")}],
)
def test_one_step_equals_the_reference(options):
    cell = lstmkit.LSTMCell(3, 4, dtype=torch.float64, **options)
    x, h, c = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64), torch.randn(
        2, 4, dtype=torch.float64)
    h1, c1 = cell(x, (h, c))
    peep = cell.variant.peephole_parameter(4)
    y, h_ref, c_ref, _ = reference.forward(
        x[None].numpy(), cell.weight_ih.detach().numpy(), cell.weight_hh.detach().numpy(),
        (cell.bias_ih + cell.bias_hh).detach().numpy(), h.numpy(), c.numpy(), cell.variant,
        peephole_weight=getattr(cell, peep[0]).detach().numpy() if peep else None)
    assert_close(h1, torch.from_numpy(h_ref), 1e-12, "h")
    assert_close(c1, torch.from_numpy(c_ref), 1e-12, "c")


def test_stepping_in_a_python_loop_equals_the_layer():
    layer = lstmkit.LSTM(3, 8, peephole="diagonal", dtype=torch.float64)
    cell = lstmkit.LSTMCell(3, 8, peephole="diagonal", dtype=torch.float64)
    cell.load_state_dict({k.removesuffix("_l0"): v for k, v in layer.state_dict().items()})
    x = torch.randn(1000, 2, 3, dtype=torch.float64)
    h = c = torch.zeros(2, 8, dtype=torch.float64)
    for t in range(1000):
        h, c = cell(x[t], (h, c))
    out, (h_n, c_n) = layer(x)
    assert_close(h, out[-1], 1e-10)
    assert_close(c, c_n[0], 1e-10)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda m: m(torch.randn(2, 5)), ValueError, r"input must have shape \(N, 3\)"),
        (lambda m: m(torch.randn(2, 3), (torch.zeros(2, 5), torch.zeros(2, 4))), ValueError, "h_0 must have shape"),
        (lambda m: m(torch.randn(2, 3), (torch.zeros(2, 4), torch.zeros(3, 4))), ValueError, "c_0 must have shape"),
        (lambda m: m(torch.randn(2, 3, dtype=torch.float64)), TypeError, "input.*dtype"),
        (lambda m: m(torch.randn(2, 3), (torch.zeros(2, 4), torch.zeros(2, 4, dtype=torch.float16))),
         TypeError, "c_0.*dtype"),
    ],
)
def test_bad_input_is_named(call, error, match):
    with pytest.raises(error, match=match):
        call(lstmkit.LSTMCell(3, 4))


def test_vanilla_only_converts_back():
    with pytest.raises(ValueError, match="coupled_gates=True"):
        lstmkit.LSTMCell(3, 4, coupled_gates=True).to_torch()
    with pytest.raises(TypeError, match="torch.nn.LSTMCell"):
        lstmkit.LSTMCell.from_torch(nn.LSTM(3, 4))


@pytest.mark.parametrize("peephole", [None, "diagonal"])
def test_under_autocast_takes_other_dtypes_like_torch_nn_lstmcell(peephole):
    """Under CPU autocast, a bfloat16 input to a float32 cell is taken, as nn.LSTMCell takes it
    (from_torch starts the peepholes at 0: the same function)."""
    baseline = torch.nn.LSTMCell(3, 4)
    cell = lstmkit.LSTMCell.from_torch(baseline, peephole=peephole)
    x = torch.randn(2, 3, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, actual = baseline(x), cell(x)
    for e, a in zip(expected, actual):
        assert a.dtype == e.dtype
        assert_close(a.float(), e.float(), 2e-2)


@pytest.mark.parametrize("options", [{}, {"peephole": "full", "coupled_gates": True}])
def test_compiles_into_one_graph(options):
    """torch.compile(fullgraph=True) traces the whole step, and computes what the cell computes."""
    cell = lstmkit.LSTMCell(3, 4, **options)
    x, state = torch.randn(2, 3), (torch.randn(2, 4), torch.randn(2, 4))
    torch._dynamo.reset()
    compiled = torch.compile(cell, fullgraph=True, backend="eager")
    for expected, actual in zip(cell(x, state), compiled(x, state)):
        torch.testing.assert_close(actual, expected)
