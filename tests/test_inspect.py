"""lstmkit.inspect.trace: what it records is what the module computes."""

import pytest
import torch

import lstmkit
from lstmkit.inspect import trace


@pytest.mark.parametrize("options", [{}, {"num_layers": 2, "proj_size": 2, "batch_first": True},
                                     {"peephole": "diagonal", "gates": "fo", "coupled_gates": False},
                                     {"peephole": "full", "coupled_gates": True, "cell_clip": 0.5}])
def test_trace_reproduces_outputs_and_states(options):
    lstm = lstmkit.LSTM(3, 4, dtype=torch.float64, **options)
    batch_first = options.get("batch_first", False)
    x = torch.randn((2, 6, 3) if batch_first else (6, 2, 3), dtype=torch.float64)
    record = trace(lstm, x)
    out, (h_n, c_n) = lstm(x)
    time_axis = 1 if batch_first else 0
    assert torch.allclose(record["output"][-1], out)
    for layer in range(lstm.num_layers):
        assert torch.allclose(record["cell"][layer].select(time_axis, -1), c_n[layer])
        assert torch.allclose(record["output"][layer].select(time_axis, -1), h_n[layer])
        for gate in ("input_gate", "forget_gate", "output_gate"):
            values = record[gate][layer]
            assert values.shape == record["cell"][layer].shape and ((0 <= values) & (values <= 1)).all()
    if options.get("gates") == "fo":
        assert torch.all(record["input_gate"][0] == 1)
    if options.get("coupled_gates"):
        assert torch.allclose(record["forget_gate"][0], 1 - record["input_gate"][0])


def test_trace_unbatched_with_initial_state():
    lstm = lstmkit.LSTM(3, 4)
    x, h0, c0 = torch.randn(5, 3), torch.randn(1, 4), torch.randn(1, 4)
    record = trace(lstm, x, (h0, c0))
    assert record["cell"][0].shape == (5, 4)
    assert torch.allclose(record["output"][0], lstm(x, (h0, c0))[0], atol=1e-6)


def test_trace_is_the_eval_mode_computation_and_refuses_packed_input():
    lstm = lstmkit.LSTM(3, 4, num_layers=2, dropout=0.5)
    x = torch.randn(5, 2, 3)
    record = trace(lstm, x)  # lstm is in training mode: its own output would be dropped out
    assert torch.allclose(record["output"][-1], lstm.eval()(x)[0], atol=1e-6)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, [5, 3])
    with pytest.raises(TypeError, match="PackedSequence"):
        trace(lstm, packed)


def test_trace_refuses_bidirectional():
    with pytest.raises(ValueError, match="bidirectional=False"):
        trace(lstmkit.LSTM(3, 4, bidirectional=True), torch.randn(5, 1, 3))
