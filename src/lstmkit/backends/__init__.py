"""Backends: one recurrence function each, all with the signature of
:func:`lstmkit.backends.torch_loop.recurrence` (one layer, one direction, over the input
projections x W^T, which a backend may compute itself). :func:`select` picks one for a device
and a variant.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..variant import Variant
from . import cpu, torch_loop, triton_gpu

Recurrence = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]

# name -> recurrence. Fast backends register here; "torch" supports everything, everywhere.
BACKENDS: dict[str, Recurrence] = {
    "torch": torch_loop.recurrence,
    "cpu": cpu.recurrence,
    "triton": triton_gpu.recurrence,
}
BACKEND_NAMES = ("auto", *BACKENDS)


def check_backend(name: str) -> str:
    if name not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKEND_NAMES))}, got {name!r}")
    return name


def select(name: str, device: torch.device, variant: Variant) -> Recurrence:
    """The recurrence for backend ``name`` ("auto" chooses by device and variant)."""
    if name == "auto":
        # The fused CPU kernel covers every variant; it is built at first use (needs a compiler).
        # The Triton backend is opt-in (backend="triton") until its tests have passed on a GPU:
        # it has only run under Triton's interpreter (docs/architecture.md).
        return BACKENDS["cpu" if device.type == "cpu" and cpu.available() else "torch"]
    return BACKENDS[name]

