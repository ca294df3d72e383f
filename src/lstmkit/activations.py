"""ONNX's activation functions as PyTorch functions (SPEC section 2).

Each entry maps a name from :data:`lstmkit.variant.ACTIVATION_DEFAULTS` to ``fn(x, alpha, beta)``.
They are built from PyTorch operators so that autograd differentiates them; the NumPy reference
(:mod:`lstmkit.reference`) writes its own forms and derivatives, independently.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .variant import Activation

TorchActivation = Callable[[torch.Tensor], torch.Tensor]

_FUNCTIONS: dict[str, Callable[[torch.Tensor, float | None, float | None], torch.Tensor]] = {
    "sigmoid": lambda x, a, b: torch.sigmoid(x),
    "tanh": lambda x, a, b: torch.tanh(x),
    "identity": lambda x, a, b: x,
    "relu": lambda x, a, b: torch.relu(x),
    "hard_sigmoid": lambda x, a, b: torch.clamp(x * a + b, 0.0, 1.0),
    "leaky_relu": lambda x, a, b: F.leaky_relu(x, a),
    "thresholded_relu": lambda x, a, b: torch.where(x > a, x, torch.zeros_like(x)),
    "scaled_tanh": lambda x, a, b: a * torch.tanh(b * x),
    "affine": lambda x, a, b: x * a + b,
    "elu": lambda x, a, b: F.elu(x, a),
    "softsign": lambda x, a, b: F.softsign(x),
    "softplus": lambda x, a, b: torch.logaddexp(x, torch.zeros_like(x)),
}


def torch_activation(activation: Activation) -> TorchActivation:
    """The PyTorch function for one resolved :class:`~lstmkit.variant.Activation`."""
    fn = _FUNCTIONS[activation.name]
    alpha, beta = activation.alpha, activation.beta
    return lambda x: fn(x, alpha, beta)
