"""What LSTM and LSTMCell share: options, parameter creation and initialisation, input checks."""

from __future__ import annotations

import math

import torch
from torch import nn

from .variant import Variant


class LSTMBase(nn.Module):
    """Holds the variant and creates parameters with torch.nn.LSTM's names and shapes."""

    variant: Variant

    def _init_options(self, hidden_size, bias, forget_bias, **variant_options) -> None:
        self.variant = Variant.create(**variant_options)
        if isinstance(forget_bias, bool) or not isinstance(forget_bias, (int, float)) or not math.isfinite(forget_bias):
            raise TypeError(f"forget_bias must be a finite number, got {forget_bias!r}")
        if forget_bias and not bias:
            raise ValueError("forget_bias needs a bias: it is added to bias_ih, but bias=False")
        self.forget_bias = float(forget_bias)
        self._uniform_bound = 1.0 / math.sqrt(hidden_size)

    def _add_parameters(self, suffix, input_size, hidden_size, proj_size, bias, factory) -> None:
        """Register weight_ih, weight_hh, bias_ih, bias_hh, weight_hr and the peephole weight.

        Names are ``<name><suffix>``: suffix "" for a cell, "_l0", "_l0_reverse", ... for layers.
        """
        h_out = proj_size or hidden_size
        shapes = {"weight_ih": (4 * hidden_size, input_size), "weight_hh": (4 * hidden_size, h_out)}
        if bias:
            shapes.update(bias_ih=(4 * hidden_size,), bias_hh=(4 * hidden_size,))
        if proj_size:
            shapes["weight_hr"] = (proj_size, hidden_size)
        peephole = self.variant.peephole_parameter(hidden_size)
        if peephole is not None:
            shapes[peephole[0]] = peephole[1]
        for name, shape in shapes.items():
            self.register_parameter(name + suffix, nn.Parameter(torch.empty(shape, **factory)))

    def reset_parameters(self) -> None:
        """torch.nn.LSTM's initialisation, U(-1/sqrt(H), 1/sqrt(H)) for every parameter,
        then ``forget_bias`` added to the forget-gate part of each bias_ih."""
        with torch.no_grad():
            for name, p in self.named_parameters():
                p.uniform_(-self._uniform_bound, self._uniform_bound)
                if name.startswith("bias_ih") and self.forget_bias:
                    hidden = p.shape[0] // 4
                    p[hidden : 2 * hidden] += self.forget_bias

    def _zero_peepholes(self) -> None:
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.startswith(("weight_peep", "weight_ch")):
                    p.zero_()

    def _load_from_torch(self, module: nn.Module) -> None:
        """Load a torch.nn.LSTM/LSTMCell state dict; extra lstmkit weights (peepholes) start at 0
        so that the converted module computes what the original did while the variant allows."""
        if self.forget_bias:
            raise ValueError("forget_bias is added at initialisation; from_torch takes the module's biases as they are")
        self.train(module.training)
        self._zero_peepholes()
        missing, unexpected = self.load_state_dict(module.state_dict(), strict=False)
        missing = [k for k in missing if not k.startswith(("weight_peep", "weight_ch"))]
        if missing or unexpected:
            raise ValueError(f"module: state dict does not match; missing {missing}, unexpected {unexpected}")

    def _check_torch_compatible(self, target: str) -> None:
        if not self.variant.is_vanilla:
            raise ValueError(
                f"{target} computes only the vanilla LSTM; this module's variant is {self.variant_repr()}"
            )

    def variant_repr(self) -> str:
        """The non-default options, as constructor arguments."""
        v, default = self.variant, Variant()
        parts = []
        for field in ("peephole", "coupled_gates", "gates", "clip", "cell_clip"):
            if getattr(v, field) != getattr(default, field):
                parts.append(f"{field}={getattr(v, field)!r}")
        if v.activations != default.activations:
            acts = [a.name if a.alpha is None else (a.name, a.alpha) if a.beta is None else (a.name, a.alpha, a.beta)
                    for a in v.activations]
            parts.append(f"activations={tuple(acts)!r}")
        if self.forget_bias:
            parts.append(f"forget_bias={self.forget_bias}")
        return ", ".join(parts)


def check_floating(name: str, tensor, dtypes: tuple[torch.dtype, ...], device: torch.device) -> None:
    """A clear error unless ``tensor`` is a tensor of one of ``dtypes`` (:func:`accepted_dtypes`) on
    ``device``."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype not in dtypes:
        expected = f"the module's dtype {dtypes[0]}" if len(dtypes) == 1 else "one of " + ", ".join(map(str, dtypes))
        raise TypeError(f"{name} must have {expected}, got {tensor.dtype}")
    if tensor.device.type != device.type or (
        device.index is not None and tensor.device.index is not None and tensor.device.index != device.index
    ):
        raise ValueError(f"{name} must be on the module's device {device}, got {tensor.device}")


def autocast_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype | None:
    """The dtype ``torch.autocast`` computes in on ``device``'s type for a module of ``dtype``; None
    while autocast is off there, and for float64, which it leaves alone."""
    if dtype == torch.float64 or not torch.is_autocast_enabled(device.type):
        return None
    return torch.get_autocast_dtype(device.type)


def accepted_dtypes(dtype: torch.dtype, amp: torch.dtype | None) -> tuple[torch.dtype, ...]:
    """The dtypes the inputs may have: the module's, and under autocast (``amp``) also float32 and
    autocast's, which nn.LSTM takes there."""
    return (dtype,) if amp is None else tuple(dict.fromkeys((dtype, torch.float32, amp)))


def check_shape(name: str, tensor: torch.Tensor, expected: tuple[int, ...], what: str) -> None:
    if tuple(tensor.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)} {what}, got {tuple(tensor.shape)}")
