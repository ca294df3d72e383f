"""Backends: one recurrence function each, all with the signature of
:func:`lstmkit.backends.torch_loop.recurrence` (one layer, one direction, over the input
projections x W^T, which a backend may compute itself). :func:`select` picks one for a device
and a variant.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from ..variant import Variant
from . import cpu, torch_loop, triton_gpu

Recurrence = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def kernel_backend(recurrence: Recurrence) -> Recurrence:
    """A backend that runs its own kernels, as the modules call it: where PyTorch must see the
    operators themselves, the generic backend runs instead (:func:`kernels_opaque_here`)."""

    @functools.wraps(recurrence)
    def run(*args, **kwargs):
        return (torch_loop.recurrence if kernels_opaque_here() else recurrence)(*args, **kwargs)

    return run


def kernels_opaque_here() -> bool:
    """True under ``torch.func`` transforms (grad, vmap, jacrev, and ``is_grads_batched``, which is
    vmap), in forward-mode AD (``torch.autograd.forward_ad``) and while ``torch.jit.trace`` records:
    each works on PyTorch's operators, which it knows how to transform, differentiate or record;
    an ``autograd.Function`` over a kernel would need its own rule for each."""
    return (torch._C._are_functorch_transforms_active() or torch.autograd.forward_ad._current_level >= 0
            or torch.jit.is_tracing())


# name -> recurrence. Fast backends register here; "torch" supports everything, everywhere.
BACKENDS: dict[str, Recurrence] = {
    "torch": torch_loop.recurrence,
    "cpu": kernel_backend(cpu.recurrence),
    "triton": kernel_backend(triton_gpu.recurrence),
}
BACKEND_NAMES = ("auto", *BACKENDS)


def check_backend(name: str) -> str:
    if name not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKEND_NAMES))}, got {name!r}")
    return name


def select(name: str, device: torch.device, variant: Variant) -> Recurrence:
    """The recurrence for backend ``name`` ("auto" chooses by device and variant).

    Under ``torch.compile`` the recurrence chosen runs as it is, between two graphs: Dynamo traces
    with fake tensors, which the kernels cannot take, and would unroll the generic backend's loop
    over time. (Dynamo is imported only then: ``import torch._dynamo`` takes a second.) Under
    ``torch.export``, which records one graph of PyTorch operators, the generic backend runs: the
    graph holds its steps, unrolled for the example's length.
    """
    if torch.compiler.is_compiling():
        # The generic backend where it is asked for, under torch.func transforms, and in torch.export
        # (torch >= 2.7 says when it exports; before, export takes the path below and fails)
        if name == "torch" or kernels_opaque_here() or getattr(torch.compiler, "is_exporting", lambda: False)():
            return BACKENDS["torch"]
        # choosing too runs outside the graph: it may build the kernel
        return torch.compiler.disable(functools.partial(_choose_and_run, name, device, variant))
    return _choose(name, device, variant)


def _choose(name: str, device: torch.device, variant: Variant) -> Recurrence:
    if name == "auto":
        # The fused CPU kernel covers every variant; it is built at first use (needs a compiler).
        # The Triton backend is opt-in (backend="triton") until its tests have passed on a GPU:
        # it has only run under Triton's interpreter (docs/architecture.md).
        return BACKENDS["cpu" if device.type == "cpu" and cpu.available() else "torch"]
    return BACKENDS[name]


def _choose_and_run(name: str, device: torch.device, variant: Variant, *args, **kwargs):
    return _choose(name, device, variant)(*args, **kwargs)
