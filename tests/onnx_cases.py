"""ONNX LSTM nodes built with onnx.helper, and onnxruntime to run them (shared by the ONNX tests)."""

import numpy as np
import onnx
import onnxruntime as ort
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

# Each activation with the range its alpha, beta are drawn from (None: takes none).
ACTIVATION_RANGES = {
    "Sigmoid": (None, None), "Tanh": (None, None), "Relu": (None, None), "Softsign": (None, None),
    "Softplus": (None, None), "HardSigmoid": ((0.05, 1.0), (0.0, 1.0)), "LeakyRelu": ((0.0, 0.5), None),
    "ThresholdedRelu": ((-1.0, 1.0), None), "ScaledTanh": ((0.2, 2.0), (0.2, 2.0)),
    "Affine": ((-1.5, 1.5), (-1.0, 1.0)), "Elu": ((0.1, 2.0), None),
}


# Gate activations with values in [0, 1]. A gate outside [0, 1] (or 1 - f(z_i) with input_forget)
# can make c grow exponentially over 50 steps, up to overflow; the tests use every activation as
# f too, on short sequences.
GATES = ("HardSigmoid", "Sigmoid")


@st.composite
def activation(draw, names=tuple(sorted(ACTIVATION_RANGES))):
    """(ONNX name, alpha or None, beta or None)."""
    name = draw(st.sampled_from(names))
    alpha, beta = (None if r is None else float(np.float32(draw(st.floats(*r)))) for r in ACTIVATION_RANGES[name])
    return name, alpha, beta


def run_ort(model: onnx.ModelProto | bytes, feeds: dict) -> list[np.ndarray]:
    data = model if isinstance(model, bytes) else model.SerializeToString()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def lstm_node(rng, steps, batch, input_size, hidden, *, direction="forward", layout=0, peephole=False, bias=True,
              clip=None, input_forget=0, activations=None, lengths=None, initial_state=False, scale=None):
    """A one-node LSTM model with weights drawn from U(-scale, scale), scale = 1/sqrt(hidden) by
    default (PyTorch's initialisation). Returns (model, node, initializers, feeds).

    ``activations``: (name, alpha, beta) per function, 3 per direction, or None (attribute left out).
    """
    d = 2 if direction == "bidirectional" else 1
    scale = hidden ** -0.5 if scale is None else scale
    init = {"W": rng.uniform(-scale, scale, (d, 4 * hidden, input_size)), "R": rng.uniform(-scale, scale, (d, 4 * hidden, hidden))}
    if bias:
        init["B"] = rng.uniform(-scale, scale, (d, 8 * hidden))
    if peephole:
        init["P"] = rng.uniform(-scale, scale, (d, 3 * hidden))
    init = {k: v.astype(np.float32) for k, v in init.items()}
    feeds = {"X": rng.standard_normal((batch, steps, input_size) if layout else (steps, batch, input_size)).astype(np.float32)}
    if lengths is not None:
        feeds["sequence_lens"] = np.asarray(lengths, dtype=np.int32)
    if initial_state:
        shape = (batch, d, hidden) if layout else (d, batch, hidden)
        feeds["initial_h"], feeds["initial_c"] = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    names = ["X", "W", "R", "B" if bias else "", "sequence_lens" if lengths is not None else "",
             *(["initial_h", "initial_c"] if initial_state else ["", ""]), "P" if peephole else ""]
    while names[-1] == "":
        names.pop()
    attributes = dict(hidden_size=hidden, direction=direction, layout=layout)
    if clip is not None:
        attributes["clip"] = clip
    if input_forget:
        attributes["input_forget"] = 1
    if activations is not None:
        attributes["activations"] = [a[0] for a in activations]
        alphas = [a[1] for a in activations if a[1] is not None]
        betas = [a[2] for a in activations if a[2] is not None]
        if alphas:
            attributes["activation_alpha"] = alphas
        if betas:
            attributes["activation_beta"] = betas
    node = helper.make_node("LSTM", names, ["Y", "Y_h", "Y_c"], name="lstm", **attributes)
    return model_of(node, init, feeds), node, init, feeds


def model_of(node, initializers: dict, feeds: dict) -> onnx.ModelProto:
    """A model with ``node``, constant ``initializers`` and graph inputs for ``feeds``."""
    types = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int32): TensorProto.INT32}
    inputs = [helper.make_tensor_value_info(k, types[v.dtype], v.shape) for k, v in feeds.items()]
    ranks = {0: 4, 1: 3, 2: 3} if node.op_type == "LSTM" else {}  # Y, Y_h, Y_c
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None] * ranks[i] if i in ranks else None)
               for i, n in enumerate(node.output) if n]
    graph = helper.make_graph([node], "lstm", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in initializers.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def run_layout1_in_ort(node, initializers, feeds):
    """onnxruntime runs no layout=1 LSTM: run the layout=0 node on transposed inputs and
    transpose its outputs back to layout=1's (B, T, D, H) and (B, D, H)."""
    node0 = onnx.NodeProto()
    node0.CopyFrom(node)
    for a in node0.attribute:
        if a.name == "layout":
            a.i = 0
    feeds0 = {k: (np.swapaxes(v, 0, 1).copy() if k in ("X", "initial_h", "initial_c") else v) for k, v in feeds.items()}
    y, y_h, y_c = run_ort(model_of(node0, initializers, feeds0), feeds0)
    return [y.transpose(2, 0, 1, 3), y_h.transpose(1, 0, 2), y_c.transpose(1, 0, 2)]
