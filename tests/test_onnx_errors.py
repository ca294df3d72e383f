"""Malformed or adversarial ONNX input, and what the exporter refuses: clear errors, no crash."""

import io
import re
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import lstmkit
import lstmkit.onnx as lo
from tests.onnx_cases import lstm_node


def _node(**changes):
    """A valid bidirectional node with peepholes (then edited), its initializers and feeds."""
    _, node, init, feeds = lstm_node(np.random.default_rng(0), 4, 2, 3, 5, direction="bidirectional", peephole=True)
    for key, value in changes.items():
        if key in init:
            init[key] = value
            continue
        for attribute in [a for a in node.attribute if a.name == key]:
            node.attribute.remove(attribute)
        node.attribute.append(helper.make_attribute(key, value))
    return node, init


def _with_inputs(node, inputs):
    edited = onnx.NodeProto()
    edited.CopyFrom(node)
    del edited.input[:]
    edited.input.extend(inputs)
    return edited


@pytest.mark.parametrize("changes, message", [
    ({"W": np.zeros((2, 20, 3, 1), np.float32)}, "W must be 3-D"),
    ({"R": np.zeros((2, 24, 5), np.float32)}, "input R must have shape (2, 20, 5)"),
    ({"R": np.zeros((2, 20, 4), np.float32)}, "hidden_size=5 does not match R's shape (2, 20, 4)"),
    ({"B": np.zeros((2, 20), np.float32)}, "input B must have shape (2, 40)"),
    ({"P": np.zeros((2, 16), np.float32)}, "input P must have shape (2, 15)"),
    ({"W": np.zeros((1, 20, 3), np.float32)}, "input W must have shape (2, 20, 3)"),
    ({"B": np.zeros((2, 40), np.float64)}, "has dtype float64, but W has float32"),
    ({"hidden_size": 6}, "hidden_size=6 does not match R's shape"),
    ({"activations": ["Sigmoid", "Swish", "Tanh"] * 2}, "unknown activation 'Swish'"),
    ({"activations": ["Sigmoid", "Tanh", "Tanh"]}, "must name 3 functions (f, g, h) per direction (6)"),
    ({"activations": ["Sigmoid", "Tanh", "Tanh", "Sigmoid", "Tanh", "Relu"]}, "different activations"),
    ({"activations": ["Sigmoid", "Tanh", "Tanh"] * 2, "activation_alpha": [0.5]}, "activation_alpha' has 1 value(s) more"),
    ({"activation_alpha": [0.5]}, "activation_alpha' has 1 value(s) more"),  # default activations take none
    ({"direction": "sideways"}, "'direction' must be one of"),
    ({"layout": 2}, "'layout' must be 0 or 1"),
    ({"input_forget": 3}, "'input_forget' must be 0 or 1"),
    ({"clip": -1.0}, "'clip' must be a positive finite number"),
    ({"clip": float("nan")}, "'clip' must be a positive finite number"),
    ({"frobnicate": 1}, "unsupported attribute(s) ['frobnicate']"),
    ({"clip": "large"}, "attribute 'clip' must be of type FLOAT, got STRING"),
    ({"hidden_size": 5.0}, "attribute 'hidden_size' must be of type INT, got FLOAT"),
    ({"activations": [1, 2, 3, 1, 2, 3]}, "attribute 'activations' must be of type STRINGS, got INTS"),
])
def test_malformed_node_is_refused(changes, message):
    node, init = _node(**changes)
    with pytest.raises(ValueError) as error:
        lo.from_onnx_node(node, init)
    assert message in str(error.value)


def test_missing_and_misplaced_inputs():
    node, init = _node()
    with pytest.raises(ValueError, match="required input R is missing"):
        lo.from_onnx_node(_with_inputs(node, ["X", "W"]), init)
    with pytest.raises(ValueError, match="required input W is missing"):
        lo.from_onnx_node(_with_inputs(node, ["X", "", "R"]), init)
    with pytest.raises(ValueError, match="input P .* must be an initializer"):
        lo.from_onnx_node(node, {k: v for k, v in init.items() if k != "P"})
    with pytest.raises(ValueError, match="input X .* is a constant initializer"):
        lo.from_onnx_node(node, dict(init, X=np.zeros((4, 2, 3), np.float32)))
    with pytest.raises(ValueError, match="at most 8 inputs"):
        lo.from_onnx_node(_with_inputs(node, list(node.input) + ["", "Q"]), init)
    with pytest.raises(ValueError, match="initial_h .* is a constant initializer"):
        lo.from_onnx_node(_with_inputs(node, ["X", "W", "R", "B", "", "h"]), dict(init, h=np.ones((2, 2, 5), np.float32)))
    zeros = lo.from_onnx_node(_with_inputs(node, ["X", "W", "R", "B", "", "h"]), dict(init, h=np.zeros((2, 2, 5), np.float32)))
    assert isinstance(zeros, lstmkit.LSTM)  # a constant zero initial state is the default: accepted


def test_wrong_node_types_and_values():
    node, init = _node()
    with pytest.raises(ValueError, match="expected an LSTM node.*'GRU'"):
        lo.from_onnx_node(helper.make_node("GRU", ["X", "W", "R"], ["Y"]), init)
    with pytest.raises(ValueError, match="domain 'com.example'"):
        lo.from_onnx_node(helper.make_node("LSTM", ["X", "W", "R"], ["Y"], domain="com.example"), init)
    with pytest.raises(TypeError, match="node must be an onnx.NodeProto"):
        lo.from_onnx_node("LSTM", init)
    with pytest.raises(TypeError, match="initializers"):
        lo.from_onnx_node(node, 42)
    with pytest.raises(TypeError, match=r"initializers\['W'\] must be"):
        lo.from_onnx_node(node, dict(init, W="weights"))
    with pytest.raises(ValueError, match="float32 or float64 weights, got int32"):
        lo.from_onnx_node(node, {k: v.astype(np.int32) for k, v in init.items()})
    with pytest.raises(ValueError, match="activation_defaults"):
        lo.from_onnx_node(node, init, activation_defaults="pytorch")


def test_load_refuses_graphs_it_cannot_import_exactly(tmp_path):
    relu = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                             [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    with pytest.raises(ValueError, match=r"no LSTM node \(it has \['Relu'\]\)"):
        lo.load(helper.make_model(relu))

    # an exported stack with one extra operation spliced in after the first layer
    model = lo.to_model(lstmkit.LSTM(3, 4, num_layers=2))
    first = next(n for n in model.graph.node if n.name == "output_l0")
    first.output[0] = "scaled"
    model.graph.node.insert(list(model.graph.node).index(first) + 1, helper.make_node("Neg", ["scaled"], ["output_l0"]))
    with pytest.raises(ValueError, match=r"operations besides its LSTM nodes .*'Neg'.*from_onnx_node"):
        lo.load(model)

    # a changed glue constant (the layer-merging Reshape) is caught as well
    model = lo.to_model(lstmkit.LSTM(3, 4, num_layers=2, bidirectional=True))
    merge = next(t for t in model.graph.initializer if t.name == "merge_directions")
    merge.CopyFrom(numpy_helper.from_array(np.array([0, -1, 4], dtype=np.int64), "merge_directions"))
    with pytest.raises(ValueError, match="initializers differ"):
        lo.load(model)

    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07this is not a protobuf\xff\xff")
    with pytest.raises(ValueError, match="could not read an ONNX model"):
        lo.load(str(garbage))


def test_load_of_a_single_node_file_and_an_export_path(tmp_path):
    model, node, init, feeds = lstm_node(np.random.default_rng(0), 4, 2, 3, 5, direction="reverse", peephole=True)
    path = tmp_path / "node.onnx"
    onnx.save(model, path)
    assert isinstance(lo.load(str(path)), lo.ReverseLSTM)
    lstm = lstmkit.LSTM(3, 5, 2, batch_first=True)
    lo.export(lstm, str(tmp_path / "stack.onnx"), lengths=True, initial_state=True)
    back = lo.load(str(tmp_path / "stack.onnx"))
    assert back.batch_first and back.num_layers == 2
    assert all(torch.equal(a, b) for a, b in zip(lstm.state_dict().values(), back.state_dict().values()))


@pytest.mark.parametrize("options, message", [
    ({"proj_size": 2}, "proj_size=2"),
    ({"peephole": "full"}, "peephole='full'"),
    ({"cell_clip": 1.5}, "cell_clip=1.5"),
    ({"gates": "if"}, "gates='if'"),
])
def test_export_refuses_what_an_onnx_lstm_cannot_express(options, message):
    lstm = lstmkit.LSTM(3, 4, **options)
    with pytest.raises(ValueError, match=re.escape(f"cannot export {message} to ONNX")):
        lo.export(lstm, io.BytesIO())

    class User(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = lstm

        def forward(self, x):
            return self.lstm(x)[0]

    with pytest.raises(ValueError, match="cannot export"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation warning
        torch.onnx.export(User(), (torch.randn(2, 1, 3),), io.BytesIO(), dynamo=False)


def test_export_argument_errors():
    with pytest.raises(TypeError, match="lstmkit.LSTM or lstmkit.onnx.ReverseLSTM, got LSTM"):
        lo.export(torch.nn.LSTM(3, 4), io.BytesIO())
    with pytest.raises(ValueError, match="opset must be an integer >= 14"):
        lo.export(lstmkit.LSTM(3, 4), io.BytesIO(), opset=13)
    with pytest.raises(TypeError, match="forward .* lstmkit.LSTM"):
        lo.ReverseLSTM(lstmkit.LSTM(3, 4, bidirectional=True))


def test_model_of_helper_is_valid():
    """The test helper's own models pass the ONNX checker (so the errors above are lstmkit's)."""
    model, *_ = lstm_node(np.random.default_rng(0), 4, 2, 3, 5, direction="bidirectional", peephole=True)
    onnx.checker.check_model(model)
