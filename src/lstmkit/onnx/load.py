"""Import: ONNX LSTM nodes -> lstmkit modules (every attribute honoured, the rest refused)."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from ..lstm import LSTM
from ._convert import LSTMKIT_FROM_ONNX, PEEPHOLE_ORDER, parse_activations, reorder_blocks
from .reverse import ReverseLSTM

INPUTS = ("X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P")
_A = onnx.AttributeProto
ATTRIBUTES = {"activation_alpha": _A.FLOATS, "activation_beta": _A.FLOATS, "activations": _A.STRINGS, "clip": _A.FLOAT,
              "direction": _A.STRING, "hidden_size": _A.INT, "input_forget": _A.INT, "layout": _A.INT}
DIRECTIONS = {"forward": 1, "reverse": 1, "bidirectional": 2}
_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}


def _array(value, name: str) -> np.ndarray:
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value)
    raise TypeError(f"initializers[{name!r}] must be an onnx.TensorProto, numpy array or tensor, got {type(value).__name__}")


def _initializer_dict(initializers) -> dict[str, object]:
    if isinstance(initializers, dict):
        return initializers
    try:
        return {t.name: t for t in initializers}
    except (TypeError, AttributeError) as error:
        raise TypeError("initializers must be a dict name -> array/TensorProto or a list of onnx.TensorProto") from error


def parse_node(node, initializers, activation_defaults: str = "onnx") -> dict:
    """Check one ONNX LSTM node and return what lstmkit needs to build it.

    Returns a dict with ``options`` (lstmkit.LSTM arguments), ``direction``, ``weights`` (per
    direction: weight_ih, weight_hh, bias_ih, bias_hh, weight_peep in lstmkit's order) and
    ``runtime`` (the node's runtime inputs: sequence_lens, initial_h, initial_c -> graph names).
    """
    if not isinstance(node, onnx.NodeProto):
        raise TypeError(f"node must be an onnx.NodeProto, got {type(node).__name__}")
    where = f"ONNX node {node.name or node.op_type!r}"
    if node.op_type != "LSTM" or node.domain not in ("", "ai.onnx"):
        raise ValueError(f"{where}: expected an LSTM node of the default ONNX domain, got op_type {node.op_type!r} (domain {node.domain!r})")
    arrays, runtime = _inputs(node, _initializer_dict(initializers), where)
    attrs = _attributes(node, where)
    directions = DIRECTIONS[attrs["direction"]]
    hidden, input_size = _check_shapes(arrays, attrs, directions, where)
    activations = parse_activations(attrs.get("activations"), attrs.get("activation_alpha"), attrs.get("activation_beta"),
                                    directions, activation_defaults)
    if activations[0] != activations[-1]:
        raise ValueError(f"{where}: the two directions use different activations {activations}; lstmkit uses one (f, g, h) for both")
    options = dict(
        input_size=input_size, hidden_size=hidden, bias="B" in arrays, batch_first=attrs["layout"] == 1,
        bidirectional=directions == 2, dtype=_DTYPES[arrays["W"].dtype], peephole="diagonal" if "P" in arrays else None,
        activations=activations[0], coupled_gates=attrs["input_forget"] == 1, clip=attrs.get("clip"),
    )
    weights = [_lstmkit_weights(arrays, d, hidden) for d in range(directions)]
    return {"options": options, "direction": attrs["direction"], "weights": weights, "runtime": runtime}


def _inputs(node, values: dict, where: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The constant inputs W, R, B, P as arrays, and the names of the runtime inputs."""
    if len(node.input) > len(INPUTS):
        raise ValueError(f"{where}: an LSTM node has at most {len(INPUTS)} inputs, got {len(node.input)}")
    names = {key: name for key, name in zip(INPUTS, node.input) if name}
    for key in ("X", "W", "R"):
        if key not in names:
            raise ValueError(f"{where}: required input {key} is missing")
    if names["X"] in values:
        raise ValueError(f"{where}: input X ({names['X']!r}) is a constant initializer; it must be the runtime input")
    arrays, runtime = {}, {}
    for key in ("W", "R", "B", "P"):
        if key in names:
            if names[key] not in values:
                raise ValueError(f"{where}: input {key} ({names[key]!r}) must be an initializer (lstmkit holds it as a parameter), but none is given")
            arrays[key] = _array(values[names[key]], names[key])
    for key in ("sequence_lens", "initial_h", "initial_c"):
        if key in names and names[key] in values:
            constant = _array(values[names[key]], names[key])
            if key == "sequence_lens" or np.any(constant != 0):
                raise ValueError(f"{where}: input {key} ({names[key]!r}) is a constant initializer; lstmkit takes it at call time (lengths=, hx=), so pass it as a graph input")
        elif key in names:
            runtime[key] = names[key]
    return arrays, runtime


def _attributes(node, where: str) -> dict:
    """The node's attributes, type- and value-checked, with direction, layout, input_forget defaulted."""
    attrs = {}
    for a in node.attribute:
        if a.name not in ATTRIBUTES:
            raise ValueError(f"{where}: unsupported attribute(s) {[a.name]}; an LSTM node has {list(ATTRIBUTES)}")
        if a.type != ATTRIBUTES[a.name]:
            expected = onnx.AttributeProto.AttributeType.Name(ATTRIBUTES[a.name])
            raise ValueError(f"{where}: attribute {a.name!r} must be of type {expected}, got {onnx.AttributeProto.AttributeType.Name(a.type)}")
        value = onnx.helper.get_attribute_value(a)
        attrs[a.name] = value.decode() if isinstance(value, bytes) else value
    attrs.setdefault("direction", "forward")
    attrs.setdefault("layout", 0)
    attrs.setdefault("input_forget", 0)
    if attrs["direction"] not in DIRECTIONS:
        raise ValueError(f"{where}: attribute 'direction' must be one of {list(DIRECTIONS)}, got {attrs['direction']!r}")
    for name in ("layout", "input_forget"):
        if attrs[name] not in (0, 1):
            raise ValueError(f"{where}: attribute {name!r} must be 0 or 1, got {attrs[name]!r}")
    if "clip" in attrs and not (np.isfinite(attrs["clip"]) and attrs["clip"] > 0):
        raise ValueError(f"{where}: attribute 'clip' must be a positive finite number, got {attrs['clip']!r}")
    return attrs


def _check_shapes(arrays: dict, attrs: dict, directions: int, where: str) -> tuple[int, int]:
    """hidden_size and input_size, after checking every array against them."""
    w, r = arrays["W"], arrays["R"]
    if w.ndim != 3 or r.ndim != 3:
        raise ValueError(f"{where}: W must be 3-D (num_directions, 4*hidden_size, input_size) and R 3-D, got shapes {w.shape} and {r.shape}")
    hidden, input_size = r.shape[-1], w.shape[-1]
    if attrs.get("hidden_size", hidden) != hidden:
        raise ValueError(f"{where}: attribute hidden_size={attrs['hidden_size']} does not match R's shape {r.shape} (hidden_size {hidden})")
    if hidden <= 0 or input_size <= 0:
        raise ValueError(f"{where}: hidden_size and input_size must be positive, got W {w.shape}, R {r.shape}")
    expected = {"W": (directions, 4 * hidden, input_size), "R": (directions, 4 * hidden, hidden),
                "B": (directions, 8 * hidden), "P": (directions, 3 * hidden)}
    for key, array in arrays.items():
        if array.shape != expected[key]:
            raise ValueError(f"{where}: input {key} must have shape {expected[key]} (direction={attrs['direction']!r}, hidden_size={hidden}), got {array.shape}")
        if array.dtype != w.dtype:
            raise ValueError(f"{where}: input {key} has dtype {array.dtype}, but W has {w.dtype}")
    if w.dtype not in _DTYPES:
        raise ValueError(f"{where}: lstmkit imports float32 or float64 weights, got {w.dtype}")
    return hidden, input_size


def _lstmkit_weights(arrays: dict, d: int, hidden: int) -> dict[str, np.ndarray]:
    """Direction d's parameters in lstmkit's names and gate order."""
    weight = {"weight_ih": reorder_blocks(arrays["W"][d], LSTMKIT_FROM_ONNX),
              "weight_hh": reorder_blocks(arrays["R"][d], LSTMKIT_FROM_ONNX)}
    if "B" in arrays:
        bias_ih, bias_hh = np.split(arrays["B"][d], 2)  # ONNX's B is [Wb; Rb]
        weight.update(bias_ih=reorder_blocks(bias_ih, LSTMKIT_FROM_ONNX), bias_hh=reorder_blocks(bias_hh, LSTMKIT_FROM_ONNX))
    if "P" in arrays:
        weight["weight_peep"] = reorder_blocks(arrays["P"][d], PEEPHOLE_ORDER).reshape(3, hidden)
    return weight


def build(layers: list[dict]) -> LSTM | ReverseLSTM:
    """One lstmkit module from the parsed nodes of a stack (one dict per layer, see parse_node)."""
    first = layers[0]
    options = dict(first["options"], num_layers=len(layers))
    for k, layer in enumerate(layers[1:], 1):
        expected_input = first["options"]["hidden_size"] * (2 if options["bidirectional"] else 1)
        same = {key: value for key, value in layer["options"].items() if key != "input_size"}
        if same != {key: value for key, value in first["options"].items() if key != "input_size"} \
                or layer["direction"] != first["direction"] or layer["options"]["input_size"] != expected_input:
            raise ValueError(f"LSTM node {k} differs from node 0 in more than its input size ({layer['options']} vs "
                             f"{first['options']}); lstmkit.LSTM stacks identical layers")
    module = LSTM(**options)
    suffixes = ["", "_reverse"] if options["bidirectional"] else [""]
    with torch.no_grad():
        for k, layer in enumerate(layers):
            for suffix, weight in zip(suffixes, layer["weights"]):
                for name, value in weight.items():
                    getattr(module, f"{name}_l{k}{suffix}").copy_(torch.from_numpy(np.ascontiguousarray(value)))
    return ReverseLSTM(module) if first["direction"] == "reverse" else module


def from_onnx_node(node, initializers, *, activation_defaults: str = "onnx") -> LSTM | ReverseLSTM:
    """An lstmkit module that computes one ONNX LSTM node.

    Args:
        node: an ``onnx.NodeProto`` with op_type "LSTM".
        initializers: the node's constant inputs W, R and, if used, B and P: a dict name ->
            array/TensorProto or a list of ``onnx.TensorProto`` (e.g. ``graph.initializer``).
            X, sequence_lens, initial_h, initial_c are runtime inputs: pass them with
            :func:`lstmkit.onnx.onnx_outputs`, which also converts ONNX's shapes (with
            layout=1, initial_h/Y_h are (B, D, H) where the module's states are (D, B, H)).
        activation_defaults: ``"onnx"`` (the ONNX operator spec) or ``"onnxruntime"`` for
            alpha/beta a node leaves out (they differ for Affine, ScaledTanh, ThresholdedRelu).

    Returns:
        an :class:`lstmkit.LSTM` (forward or bidirectional; layout=1 gives batch_first=True)
        or, for direction="reverse", a :class:`lstmkit.onnx.ReverseLSTM`.
    """
    return build([parse_node(node, initializers, activation_defaults)])


def load(path_or_file, *, activation_defaults: str = "onnx") -> LSTM | ReverseLSTM:
    """An lstmkit module from an ONNX model that is one LSTM node, or a stack of them as
    :func:`lstmkit.onnx.export` writes it (checked: the model must be exactly what exporting the
    rebuilt module writes, so no other operation can be silently dropped).

    Args:
        path_or_file: a path, a binary file object, or an ``onnx.ModelProto``.
        activation_defaults: see :func:`from_onnx_node`.
    """
    from .export import to_model

    model = path_or_file if isinstance(path_or_file, onnx.ModelProto) else _read(path_or_file)
    graph = model.graph
    lstms = [n for n in graph.node if n.op_type == "LSTM"]
    others = sorted({n.op_type for n in graph.node if n.op_type != "LSTM"})
    if not lstms:
        raise ValueError(f"the ONNX graph has no LSTM node (it has {others or 'no nodes'}); lstmkit.onnx.load imports LSTM nodes")
    layers = [parse_node(n, graph.initializer, activation_defaults) for n in lstms]
    module = build(layers)
    if len(graph.node) == 1:
        return module
    runtime = layers[0]["runtime"]
    lstm = module.lstm if isinstance(module, ReverseLSTM) else module
    differences = []
    for batch_first in (False, True):  # export writes layout=0 nodes, batch_first as Transposes
        lstm.batch_first = batch_first
        rebuilt = to_model(module, lengths="sequence_lens" in runtime, initial_state="initial_h" in runtime,
                           opset=_opset(model)).graph
        differ = [what for what in ("nodes", "inputs", "outputs", "initializers")
                  if [m.SerializeToString(deterministic=True) for m in getattr(graph, what[:-1])]
                  != [m.SerializeToString(deterministic=True) for m in getattr(rebuilt, what[:-1])]]
        if not differ:
            return module
        differences.append(differ)
    raise ValueError(
        f"the ONNX graph has operations besides its LSTM nodes ({others}) and is not a stack written by "
        f"lstmkit.onnx.export (its {', '.join(min(differences, key=len))} differ); import its LSTM nodes one by one "
        f"with lstmkit.LSTM.from_onnx_node and rebuild the rest of the model yourself")


def _read(path_or_file) -> onnx.ModelProto:
    try:
        return onnx.load(path_or_file)
    except (onnx.checker.ValidationError, ValueError, TypeError) as error:
        raise ValueError(f"could not read an ONNX model from {path_or_file!r}: {error}") from error
    except Exception as error:  # protobuf's DecodeError has no stable public home
        if type(error).__name__ == "DecodeError":
            raise ValueError(f"could not read an ONNX model from {path_or_file!r}: {error}") from error
        raise


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 14)
