"""ONNX's LSTM conventions against lstmkit's, for one layer: gate order, peepholes, biases and
activation attributes. Shared by the exporter and the importer, so each rule is written once.

Gate order: lstmkit (as PyTorch) stores i, f, g(= z, ONNX's c), o; ONNX stores i, o, f, c.
Peepholes: lstmkit's ``weight_peep`` rows are p_i, p_f, p_o; ONNX's P is p_i, p_o, p_f.
Biases: ONNX's B (8H) is [Wb; Rb] = [bias_ih; bias_hh], each in ONNX gate order.
"""

from __future__ import annotations

import numpy as np

from ..variant import ACTIVATION_DEFAULTS, Activation

# ONNX block k (i, o, f, c) is lstmkit block ONNX_FROM_LSTMKIT[k] (i, f, g, o), and back.
ONNX_FROM_LSTMKIT = (0, 3, 1, 2)
LSTMKIT_FROM_ONNX = (0, 2, 3, 1)
# ONNX P (p_i, p_o, p_f) from lstmkit rows (p_i, p_f, p_o); the permutation is its own inverse.
PEEPHOLE_ORDER = (0, 2, 1)

# lstmkit name -> ONNX activation name. "identity" has no ONNX name: it is written as Affine(1, 0).
ONNX_NAMES = {
    "sigmoid": "Sigmoid",
    "tanh": "Tanh",
    "relu": "Relu",
    "hard_sigmoid": "HardSigmoid",
    "leaky_relu": "LeakyRelu",
    "thresholded_relu": "ThresholdedRelu",
    "scaled_tanh": "ScaledTanh",
    "affine": "Affine",
    "elu": "Elu",
    "softsign": "Softsign",
    "softplus": "Softplus",
}
_FROM_ONNX = {onnx_name.lower(): name for name, onnx_name in ONNX_NAMES.items()}

# onnxruntime's defaults where a node omits alpha/beta (rnn_helpers.cc): 0 except these.
ORT_DEFAULTS = {"leaky_relu": (0.01, None), "hard_sigmoid": (0.2, 0.5), "elu": (1.0, None)}
DEFAULTS = ("onnx", "onnxruntime")


def reorder_blocks(array: np.ndarray, order: tuple[int, ...]) -> np.ndarray:
    """Split ``array`` (k*H, ...) into k blocks along axis 0 and put them in ``order``."""
    blocks = np.split(array, len(order))
    return np.concatenate([blocks[k] for k in order])


def activation_attributes(activations: tuple[Activation, ...], directions: int) -> dict:
    """ONNX ``activations``, ``activation_alpha``, ``activation_beta`` for (f, g, h) in every
    direction. alpha and beta are always written (onnxruntime's own defaults differ from ONNX's
    for Affine, ScaledTanh and ThresholdedRelu), each list in the order of the functions that take
    that parameter, as onnxruntime reads them."""
    names, alphas, betas = [], [], []
    for act in activations * directions:
        if act.name == "identity":
            act = Activation("affine", 1.0, 0.0)
        names.append(ONNX_NAMES[act.name])
        alphas += [] if act.alpha is None else [act.alpha]
        betas += [] if act.beta is None else [act.beta]
    attributes = {"activations": names}
    if alphas:
        attributes["activation_alpha"] = alphas
    if betas:
        attributes["activation_beta"] = betas
    return attributes


def parse_activations(names, alphas, betas, directions: int, defaults: str = "onnx") -> list[tuple[Activation, ...]]:
    """(f, g, h) for each direction from a node's activation attributes.

    Args:
        names: the ``activations`` attribute (3 per direction) or None for Sigmoid, Tanh, Tanh.
        alphas, betas: ``activation_alpha`` / ``activation_beta``, consumed in order by the
            functions that take alpha (beta), as onnxruntime does; None when absent.
        defaults: where a function's alpha/beta is not given: ``"onnx"`` uses the ONNX operator
            defaults (Affine 1, 0; ScaledTanh 1, 1; ThresholdedRelu 1), ``"onnxruntime"`` what
            onnxruntime uses (0 for those three; the others agree).
    """
    if defaults not in DEFAULTS:
        raise ValueError(f"activation_defaults must be one of {DEFAULTS}, got {defaults!r}")
    if names is None:  # the defaults take no alpha/beta: surplus values are refused below
        names = ["Sigmoid", "Tanh", "Tanh"] * directions
    if len(names) != 3 * directions:
        raise ValueError(
            f"attribute 'activations' must name 3 functions (f, g, h) per direction ({3 * directions}), "
            f"got {len(names)}: {list(names)}"
        )
    queues = {"alpha": list(alphas or ()), "beta": list(betas or ())}
    resolved = []
    for raw in names:
        name = raw.decode() if isinstance(raw, bytes) else str(raw)
        key = _FROM_ONNX.get(name.lower())
        if key is None:
            raise ValueError(
                f"attribute 'activations': unknown activation {name!r}; ONNX's LSTM knows {sorted(ONNX_NAMES.values())}"
            )
        params = []
        for which, onnx_default, ort_default in zip(("alpha", "beta"), ACTIVATION_DEFAULTS[key], ORT_DEFAULTS.get(key, (0.0, 0.0))):
            if onnx_default is not None:  # the function takes this parameter
                given = float(queues[which].pop(0)) if queues[which] else None
                params.append(given if given is not None else onnx_default if defaults == "onnx" else ort_default)
        resolved.append(Activation.parse((key, *params), "activations"))
    for which, left in queues.items():
        if left:
            raise ValueError(
                f"attribute 'activation_{which}' has {len(left)} value(s) more than the activations "
                f"{[str(n) for n in names]} take"
            )
    return [tuple(resolved[3 * d : 3 * d + 3]) for d in range(directions)]
