"""The one description of an LSTM variant, shared by every implementation.

A :class:`Variant` says *what* a layer computes (SPEC section 2): peepholes, the three
activation functions, coupled or dropped gates and clipping. Every backend (the generic
PyTorch loop, the NumPy float64 reference, the fused kernels) reads the same frozen object,
so a new option is added in one place and each backend decides whether it supports it.

Sizes (input, hidden, projection), layers and directions are not part of the variant: they are
the module's business.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# ONNX's activation set with its default (alpha, beta); None where the function has no such
# parameter. Defaults are those of the ONNX operators of the same name (LeakyRelu, HardSigmoid,
# Elu, ThresholdedRelu, Affine, ScaledTanh).
ACTIVATION_DEFAULTS: dict[str, tuple[float | None, float | None]] = {
    "sigmoid": (None, None),
    "tanh": (None, None),
    "identity": (None, None),
    "relu": (None, None),
    "hard_sigmoid": (0.2, 0.5),
    "leaky_relu": (0.01, None),
    "thresholded_relu": (1.0, None),
    "scaled_tanh": (1.0, 1.0),
    "affine": (1.0, 0.0),
    "elu": (1.0, None),
    "softsign": (None, None),
    "softplus": (None, None),
}

# Other spellings users bring with them: ONNX's CamelCase names and the lecture's "linear".
_ALIASES = {
    "linear": "identity",
    "hardsigmoid": "hard_sigmoid",
    "leakyrelu": "leaky_relu",
    "thresholdedrelu": "thresholded_relu",
    "scaledtanh": "scaled_tanh",
}

PEEPHOLES = (None, "diagonal", "full")


@dataclass(frozen=True)
class Activation:
    """One activation function: an ONNX name and its resolved alpha and beta.

    ``alpha`` and ``beta`` are None for functions that take no such parameter.
    """

    name: str
    alpha: float | None = None
    beta: float | None = None

    @classmethod
    def parse(cls, spec: str | tuple | Activation, argument: str = "activations") -> Activation:
        """Build from ``"tanh"``, ``("leaky_relu", 0.1)`` or ``("affine", 2.0, 0.5)``."""
        if isinstance(spec, Activation):
            return spec
        if isinstance(spec, str):
            name, params = spec, ()
        elif isinstance(spec, (tuple, list)) and spec and isinstance(spec[0], str):
            name, params = spec[0], tuple(spec[1:])
        else:
            raise TypeError(
                f"{argument}: each activation must be a name or a tuple (name, alpha[, beta]), got {spec!r}"
            )
        key = name.lower()
        key = _ALIASES.get(key, key)
        if key not in ACTIVATION_DEFAULTS:
            known = ", ".join(ACTIVATION_DEFAULTS)
            raise ValueError(f"{argument}: unknown activation {name!r}; expected one of: {known}")
        defaults = ACTIVATION_DEFAULTS[key]
        takes = sum(d is not None for d in defaults)
        if len(params) > takes:
            raise ValueError(
                f"{argument}: activation {key!r} takes {takes} parameter(s) (alpha, beta), got {len(params)}"
            )
        values = []
        for given, default in zip(params + (None,) * (2 - len(params)), defaults):
            if default is None:
                values.append(None)
                continue
            value = default if given is None else given
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{argument}: alpha/beta of {key!r} must be finite numbers, got {value!r}")
            values.append(float(value))
        return cls(key, values[0], values[1])


DEFAULT_ACTIVATIONS = (Activation("sigmoid"), Activation("tanh"), Activation("tanh"))


def _check_clip(value, argument: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{argument} must be a positive finite number or None, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{argument} must be a positive finite number or None, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Variant:
    """What one LSTM layer computes, in the lecture's notation (SPEC sections 1 and 2).

    Attributes:
        peephole: None, ``"diagonal"`` (z_i += p_i c^{t-1}, z_f += p_f c^{t-1}, z_o += p_o c^t)
            or ``"full"`` (z_* += Q_* c^{t-1} for all four z).
        activations: (f, g, h): gate activation, cell-input activation, cell-output activation.
        coupled_gates: forget gate = 1 - f(z_i) (CIFG, ONNX ``input_forget``).
        gates: which of the gates i, f, o exist; a missing gate is fixed to 1.
        clip: clamp z, z_i, z_f, z_o to [-clip, clip] before their activations (ONNX ``clip``).
        cell_clip: clamp c^t to [-cell_clip, cell_clip] after the update (TF1 ``cell_clip``).

    Use :meth:`create` to build one from user-facing arguments: it validates and normalises.
    """

    peephole: str | None = None
    activations: tuple[Activation, Activation, Activation] = DEFAULT_ACTIVATIONS
    coupled_gates: bool = False
    gates: str = "ifo"
    clip: float | None = None
    cell_clip: float | None = None

    @classmethod
    def create(
        cls,
        peephole=None,
        activations=None,
        coupled_gates=False,
        gates="ifo",
        clip=None,
        cell_clip=None,
    ) -> Variant:
        if peephole not in PEEPHOLES:
            raise ValueError(f"peephole must be one of None, 'diagonal', 'full', got {peephole!r}")
        if activations is None:
            acts = DEFAULT_ACTIVATIONS
        else:
            if not isinstance(activations, (list, tuple)) or len(activations) != 3:
                raise ValueError(
                    f"activations must be a sequence of three activations (f, g, h), got {activations!r}"
                )
            acts = tuple(Activation.parse(a) for a in activations)
        if not isinstance(coupled_gates, bool):
            raise TypeError(f"coupled_gates must be a bool, got {coupled_gates!r}")
        if not isinstance(gates, str) or set(gates) - set("ifo") or len(set(gates)) != len(gates):
            raise ValueError(f"gates must be a string of distinct letters from 'ifo', got {gates!r}")
        gates = "".join(g for g in "ifo" if g in gates)
        if coupled_gates and not {"i", "f"} <= set(gates):
            raise ValueError(
                f"coupled_gates=True derives the forget gate from the input gate and needs both: "
                f"gates must contain 'i' and 'f', got {gates!r}"
            )
        return cls(
            peephole=peephole,
            activations=acts,
            coupled_gates=coupled_gates,
            gates=gates,
            clip=_check_clip(clip, "clip"),
            cell_clip=_check_clip(cell_clip, "cell_clip"),
        )

    @property
    def is_vanilla(self) -> bool:
        """True when this is exactly torch.nn.LSTM's cell."""
        return self == _VANILLA

    def peephole_parameter(self, hidden_size: int) -> tuple[str, tuple[int, int]] | None:
        """Name stem and shape of the peephole weight, or None without peepholes.

        ``weight_peep`` (3, H), rows p_i, p_f, p_o, for ``"diagonal"``; ``weight_ch`` (4H, H),
        gate order i, f, g, o, for ``"full"``.
        """
        if self.peephole == "diagonal":
            return "weight_peep", (3, hidden_size)
        if self.peephole == "full":
            return "weight_ch", (4 * hidden_size, hidden_size)
        return None

    def has_gate(self, gate: str) -> bool:
        """Whether gate ``"i"``, ``"f"`` or ``"o"`` is computed (else it is fixed to 1)."""
        return gate in self.gates


_VANILLA = Variant()  # (one instance: torch.compile cannot build a Variant while it traces)
# Plain frozen data: a whole module saved with torch.save loads with torch.load(weights_only=True)
# once its class is allowed (torch.serialization.safe_globals([lstmkit.LSTM])), as nn.LSTM does.
torch.serialization.add_safe_globals([Variant, Activation])
