"""Export: an lstmkit.LSTM (or ReverseLSTM) -> a graph of ONNX LSTM nodes, one per layer.

The graph's inputs and outputs are the module's, in its own layout::

    input   (T, B, I), or (B, T, I) with batch_first     -> output (T, B, D*H) or (B, T, D*H)
    lengths (B,) int32          (lengths=True)            -> h_n (D*num_layers, B, H)
    h_0, c_0 (D*num_layers, B, H) (initial_state=True)    -> c_n (D*num_layers, B, H)

with T and B dynamic. Layer k is the LSTM node ``Y_l{k}`` (nodes are named after their first
output), layout=0 (onnxruntime runs no layout=1 LSTM; batch_first adds a Transpose at each end);
between layers its Y (T, D, B, H) is transposed and reshaped to (T, B, D*H). With both lengths and initial_state, a Where keeps the initial state
of zero-length sequences, which onnxruntime's LSTM would return as zeros.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from ..checkpoint import atomic_write
from ..lstm import LSTM
from ._convert import ONNX_FROM_LSTMKIT, PEEPHOLE_ORDER, activation_attributes, reorder_blocks
from .reverse import ReverseLSTM

OPSET = 14  # LSTM-14 adds layout
_ELEMENT = {torch.float32: TensorProto.FLOAT, torch.float64: TensorProto.DOUBLE}


def check_exportable(lstm: LSTM) -> None:
    """Refuse, naming the option, what an ONNX LSTM node cannot express."""
    v = lstm.variant
    refused = [
        (lstm.proj_size > 0, f"proj_size={lstm.proj_size}", "ONNX's LSTM has no projection (LSTMP)"),
        (v.peephole == "full", "peephole='full'", "ONNX's P is diagonal only; the full Q c^{t-1} has no input"),
        (v.cell_clip is not None, f"cell_clip={v.cell_clip}", "ONNX's clip clamps the gate inputs, not c^t"),
        (v.gates != "ifo", f"gates={v.gates!r}", "an ONNX LSTM node always computes all three gates"),
    ]
    for refuse, option, why in refused:
        if refuse:
            raise ValueError(f"cannot export {option} to ONNX: {why}; export a module without this option")
    dtype = lstm.weight_ih_l0.dtype
    if dtype not in _ELEMENT:
        raise ValueError(f"cannot export dtype {dtype} to ONNX: lstmkit exports float32 or float64")


def node_weights(lstm: LSTM, layer: int) -> dict[str, np.ndarray]:
    """W, R and, if the module has them, B and P of one layer, both directions stacked."""
    suffixes = ["", "_reverse"] if lstm.bidirectional else [""]
    params = {name: p.detach().cpu().numpy() for name, p in lstm.named_parameters()}
    stacked = {"W": [], "R": [], "B": [], "P": []}
    for suffix in suffixes:
        s = f"_l{layer}{suffix}"
        stacked["W"].append(reorder_blocks(params[f"weight_ih{s}"], ONNX_FROM_LSTMKIT))
        stacked["R"].append(reorder_blocks(params[f"weight_hh{s}"], ONNX_FROM_LSTMKIT))
        if lstm.bias:
            stacked["B"].append(np.concatenate([reorder_blocks(params[f"bias_ih{s}"], ONNX_FROM_LSTMKIT),
                                                reorder_blocks(params[f"bias_hh{s}"], ONNX_FROM_LSTMKIT)]))
        if lstm.variant.peephole == "diagonal":
            stacked["P"].append(reorder_blocks(params[f"weight_peep{s}"], PEEPHOLE_ORDER).reshape(-1))
    return {key: np.stack(value) for key, value in stacked.items() if value}


def node_attributes(lstm: LSTM, direction: str) -> dict:
    """The LSTM node attributes for ``lstm``'s options (alpha/beta always explicit)."""
    v = lstm.variant
    attributes = dict(hidden_size=lstm.hidden_size, direction=direction)
    attributes.update(activation_attributes(v.activations, 2 if direction == "bidirectional" else 1))
    if v.clip is not None:
        attributes["clip"] = v.clip
    if v.coupled_gates:
        attributes["input_forget"] = 1
    return attributes


def unwrap(module) -> tuple[LSTM, str]:
    """The lstmkit.LSTM inside ``module`` and its ONNX direction."""
    if isinstance(module, ReverseLSTM):
        return module.lstm, "reverse"
    if isinstance(module, LSTM):
        return module, "bidirectional" if module.bidirectional else "forward"
    raise TypeError(f"model must be an lstmkit.LSTM or lstmkit.onnx.ReverseLSTM, got {type(module).__name__}")


class GraphBuilder:
    """Collects nodes and initializers for onnx.helper; ``op`` and ``const`` return value names.
    (lstmkit.onnx.symbolic has a builder with the same two methods for torch.onnx.export.)"""

    def __init__(self) -> None:
        self.nodes, self.initializers = [], []

    def const(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def op(self, op_type: str, inputs: list, outputs: list[str], **attributes) -> list[str]:
        inputs = ["" if i is None else i for i in inputs]
        while inputs and inputs[-1] == "":
            inputs.pop()
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=outputs[0], **attributes))
        return outputs


def emit(b, module: LSTM | ReverseLSTM, x, lengths=None, h0=None, c0=None) -> tuple:
    """Emit ``module`` with builder ``b`` (see GraphBuilder): one LSTM node per layer.

    Args: values of b: x (T, B, I) or (B, T, I) with batch_first; lengths (B,) int32 or None;
        h0, c0 (D*num_layers, B, H) or None (zeros).
    Returns: output (T, B, D*H) or (B, T, D*H), h_n, c_n (D*num_layers, B, H).
    """
    lstm, direction = unwrap(module)
    check_exportable(lstm)
    d, layers = (2 if lstm.bidirectional else 1), lstm.num_layers
    merge = b.const("merge_directions", np.array([0, 0, -1], dtype=np.int64))
    if lstm.batch_first:  # onnxruntime runs only layout=0 LSTM nodes: (B, T, I) -> (T, B, I)
        (x,) = b.op("Transpose", [x], ["input_tbi"], perm=[1, 0, 2])
    initial = [[h0, c0]]
    if h0 is not None and layers > 1:
        split = b.const("state_split", np.full(layers, d, dtype=np.int64))
        initial = list(zip(*(b.op("Split", [s, split], [f"{n}_l{k}" for k in range(layers)], axis=0)
                             for s, n in ((h0, "h_0"), (c0, "c_0")))))
    if h0 is not None and lengths is not None:  # onnxruntime returns zeros, not the initial state, for length 0
        zero, axes = b.const("zero_length", np.array(0, dtype=np.int32)), b.const("state_axes", np.array([0, 2], dtype=np.int64))
        (nonempty,) = b.op("Greater", [lengths, zero], ["nonempty"])
        (nonempty,) = b.op("Unsqueeze", [nonempty, axes], ["nonempty_1b1"])  # (1, B, 1)
    h_n, c_n = [], []
    for k in range(layers):
        w = {key: b.const(f"{key}_l{k}", value) for key, value in node_weights(lstm, k).items()}
        states = initial[k] if h0 is not None else [None, None]
        y, y_h, y_c = b.op("LSTM", [x, w["W"], w["R"], w.get("B"), lengths, *states, w.get("P")],
                           [f"Y_l{k}", f"Y_h_l{k}", f"Y_c_l{k}"], **node_attributes(lstm, direction))
        (y,) = b.op("Transpose", [y], [f"Y_l{k}_tbdh"], perm=[0, 2, 1, 3])  # (T, D, B, H) -> (T, B, D, H)
        (x,) = b.op("Reshape", [y, merge], [f"output_l{k}"])  # (T, B, D*H)
        for state, start, collected in ((y_h, states[0], h_n), (y_c, states[1], c_n)):
            if h0 is not None and lengths is not None:
                (state,) = b.op("Where", [nonempty, state, start], [f"{state}_kept"])
            collected.append(state)
    (output,) = b.op("Transpose", [x], ["output"], perm=[1, 0, 2]) if lstm.batch_first else b.op("Identity", [x], ["output"])
    return output, b.op("Concat", h_n, ["h_n"], axis=0)[0], b.op("Concat", c_n, ["c_n"], axis=0)[0]


def to_model(module: LSTM | ReverseLSTM, *, lengths: bool = False, initial_state: bool = False,
             opset: int = OPSET) -> onnx.ModelProto:
    """The ONNX model for ``module`` (see the module docstring for its inputs and outputs)."""
    lstm, _ = unwrap(module)
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < OPSET:
        raise ValueError(f"opset must be an integer >= {OPSET} (LSTM-14), got {opset!r}")
    check_exportable(lstm)
    element = _ELEMENT[lstm.weight_ih_l0.dtype]
    d, hidden, layers = (2 if lstm.bidirectional else 1), lstm.hidden_size, lstm.num_layers
    dims = ["batch", "sequence"] if lstm.batch_first else ["sequence", "batch"]
    inputs = [helper.make_tensor_value_info("input", element, dims + [lstm.input_size])]
    if lengths:
        inputs.append(helper.make_tensor_value_info("lengths", TensorProto.INT32, ["batch"]))
    if initial_state:
        inputs += [helper.make_tensor_value_info(n, element, [d * layers, "batch", hidden]) for n in ("h_0", "c_0")]
    outputs = [helper.make_tensor_value_info("output", element, dims + [d * hidden])] + [
        helper.make_tensor_value_info(n, element, [d * layers, "batch", hidden]) for n in ("h_n", "c_n")]
    b = GraphBuilder()
    emit(b, module, "input", "lengths" if lengths else None, *(("h_0", "c_0") if initial_state else (None, None)))
    graph = helper.make_graph(b.nodes, "lstmkit", inputs, outputs, b.initializers)
    model = helper.make_model(graph, producer_name="lstmkit", opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model, full_check=True)
    return model


def export(model: LSTM | ReverseLSTM, path_or_file, *, lengths: bool = False, initial_state: bool = False,
           opset: int = OPSET) -> onnx.ModelProto:
    """Write ``model`` as a graph of ONNX LSTM nodes, one per layer (inference: no dropout).

    Args:
        model: an :class:`lstmkit.LSTM` (any layers, forward or bidirectional, batch_first or
            not) or a :class:`lstmkit.onnx.ReverseLSTM` (direction="reverse").
        path_or_file: a path or a binary file object.
        lengths: add an int32 graph input ``lengths`` (B,) -> sequence_lens of every layer.
        initial_state: add graph inputs ``h_0``, ``c_0`` (D*num_layers, B, H); else zeros.
        opset: the ONNX opset, >= 14.

    Exported natively: diagonal peepholes (P), activations with alpha/beta, clip,
    coupled_gates (input_forget), lengths (sequence_lens), bias. Refused with a ValueError that
    names the option: proj_size, peephole="full", cell_clip, gates other than "ifo".

    Returns:
        the ``onnx.ModelProto`` that was written.
    """
    onnx_model = to_model(model, lengths=lengths, initial_state=initial_state, opset=opset)
    if isinstance(path_or_file, (str, os.PathLike)):  # never a half-written file in place of an old one
        atomic_write(path_or_file, onnx_model.SerializeToString())
    else:
        onnx.save(onnx_model, path_or_file)
    return onnx_model
