"""The fused CPU backend: the whole time loop, forward and backward, in one C++ kernel.

Per step the kernel does one matrix product (its own GEMM, csrc/gemm.h, with the weights packed
once per call: R h^{t-1}, and W x^t too where that is faster than one product over all steps
first) and one fused element-wise pass over the gates. Backward through time is hand-written (the
same equations as :mod:`lstmkit.reference`); the weight gradients are one GEMM each over all
steps; large buffers are huge pages from a pool (:func:`release_memory`). Float32 and float64,
every option of :class:`~lstmkit.variant.Variant`, ``lengths`` and projections.

The kernel is compiled at first use (:mod:`.cpu_build`); without a compiler this backend warns
once and runs :func:`lstmkit.backends.torch_loop.recurrence` instead. See docs/architecture.md.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from ..variant import Variant
from . import cpu_build, torch_loop

# Activation codes of the kernel (csrc/lstm_cpu.cpp: activate), by ONNX name.
ACTIVATION_CODES = {
    "sigmoid": 0, "tanh": 1, "identity": 2, "relu": 3, "hard_sigmoid": 4, "leaky_relu": 5,
    "thresholded_relu": 6, "scaled_tanh": 7, "affine": 8, "elu": 9, "softsign": 10, "softplus": 11,
}
PEEPHOLE_CODES = {None: 0, "diagonal": 1, "full": 2}
DTYPES = (torch.float32, torch.float64)


def available() -> bool:
    """True when the kernel is built (building it now if needed)."""
    return cpu_build.load() is not None


def release_memory() -> None:
    """Free the kernel's pool of large buffers (up to 256 MiB of freed (T, B, ..) buffers kept for
    reuse: fresh pages cost the kernel zeroing them, csrc/pool.h)."""
    ops = cpu_build.loaded()
    if ops is not None:
        ops.release_memory()


@lru_cache(maxsize=None)
def _codes(variant: Variant) -> tuple[list[int], list[float]]:
    """The variant as the kernel's (flags, params) lists (csrc/lstm_cpu.cpp: Opts)."""
    flags = [ACTIVATION_CODES[a.name] for a in variant.activations]
    flags += [variant.has_gate("i"), variant.has_gate("f"), variant.has_gate("o"), variant.coupled_gates,
              PEEPHOLE_CODES[variant.peephole]]
    params = [float(v or 0.0) for a in variant.activations for v in (a.alpha, a.beta)]
    params += [variant.clip or 0.0, variant.cell_clip or 0.0]
    return [int(f) for f in flags], params


@lru_cache(maxsize=None)
def _empty(dtype: torch.dtype) -> torch.Tensor:
    """An empty CPU tensor, for the kernel's absent arguments (the kernel never writes to them).
    A normal tensor even if first asked for under inference_mode: training saves it for backward."""
    with torch.inference_mode(False):
        return torch.empty(0, dtype=dtype, device="cpu")


def _forward(x, weight_ih, bias, h0, c0, weight_hh, peephole_weight, weight_hr, lengths, variant, reverse, train):
    """The kernel's forward; returns its outputs and its weight and lengths arguments (w_rec, peep, w_hr, lens)."""
    flags, params = _codes(variant)
    empty = _empty(x.dtype)
    w_ih = empty if weight_ih is None else weight_ih.contiguous()  # (4H, I): x is the input, projected by the kernel
    bias = empty if bias is None else bias.contiguous()  # (4H,), added in the time loop
    w_rec = weight_hh.contiguous()  # R (4H, P)
    peep = empty if variant.peephole is None else peephole_weight.contiguous()  # (3, H) diagonal, Q (4H, H) full
    w_hr = empty if weight_hr is None else weight_hr.contiguous()  # (P, H)
    lens = _empty(torch.int64) if lengths is None else lengths.to(torch.int64).contiguous()
    out = cpu_build.load().forward(x.contiguous(), w_ih, bias, h0.contiguous(), c0.contiguous(), w_rec, peep, w_hr,
                                   lens, flags, params, reverse, train)
    return out, (w_rec, peep, w_hr, lens)


class FusedRecurrence(torch.autograd.Function):
    """One layer and direction through the kernel; backward through time by the kernel too.

    With full peepholes the kernel's product per step is [h^{t-1}, c^{t-1}] [R, Q]^T over R (4H, P)
    and Q (4H, H): one product where the weights are packed (together, csrc/gemm.h: Packed), one
    per matrix on the other paths and in backward; its weight gradient is one (4H, P + H) matrix,
    split here. The bias's gradient is dL/dx_proj summed over steps and batch (by the kernel, while
    each step's rows are at hand). Given W_ih, the kernel projects the input x itself; dL/dx and
    dL/dW_ih are one product each over all steps.
    """

    @staticmethod
    def forward(ctx, x, weight_ih, bias, h0, c0, weight_hh, peephole_weight, weight_hr, lengths, variant, reverse):
        out, kernel_args = _forward(x, weight_ih, bias, h0, c0, weight_hh, peephole_weight, weight_hr, lengths,
                                    variant, reverse, train=True)
        # gate inputs, c^t, c^{t-1}, GEMM inputs [h^{t-1}, c^{t-1}], a (with projection); the kernel's
        # weights; the inputs as given (x for dL/dW_ih, W_ih for dL/dx; all for a double backward)
        ctx.save_for_backward(*out[3:], *kernel_args, x, weight_ih, bias, h0, c0, weight_hh, peephole_weight,
                              weight_hr)
        ctx.setup = (*_codes(variant), reverse, weight_hh.shape[1], variant.peephole, weight_hr is not None,
                     weight_ih is not None)
        ctx.variant, ctx.has_lengths = variant, lengths is not None
        ctx.input_shape = x.shape
        return out[0], out[1], out[2]

    @staticmethod
    def backward(ctx, grad_y, grad_h_n, grad_c_n):
        zbuf, cbuf, cprev, hbuf, abuf, w_rec, peep, w_hr, lens, x, weight_ih, *inputs = ctx.saved_tensors
        flags, params, reverse, p, peephole, projected, projects = ctx.setup
        # create_graph=True, or a batched backward (is_grads_batched, jacobian(vectorize=True)): gradients
        # that autograd can differentiate again, from PyTorch operators that vmap can batch
        batched = any(torch._C._functorch.is_legacy_batchedtensor(g) for g in (grad_y, grad_h_n, grad_c_n))
        if torch.is_grad_enabled() or batched:
            names = ("x_proj", "weight_ih", "bias", "h0", "c0", "weight_hh", "peephole_weight", "weight_hr")
            grads = torch_loop.recomputed_grads(
                dict(zip(names, (x, weight_ih, *inputs))), ctx.needs_input_grad[:8], (grad_y, grad_h_n, grad_c_n),
                ctx.variant, lengths=lens if ctx.has_lengths else None, reverse=reverse)
            return (*grads, None, None, None)
        ops = cpu_build.load()
        d_x, d_h0, d_c0, d_rec, d_peep, d_hr, d_b = ops.backward(
            grad_y.contiguous(), grad_h_n.contiguous(), grad_c_n.contiguous(), zbuf, cbuf, cprev, hbuf, abuf,
            w_rec, peep, w_hr, lens, flags, params, reverse,
        )  # d_x = dL/dx_proj (T, B, 4H)
        d_peephole = {"full": d_rec[:, p:], "diagonal": d_peep}.get(peephole)
        d_bias = d_b if ctx.needs_input_grad[2] else None  # d_x summed over steps and batch
        d_weight_ih = None
        if projects:  # x_proj = x W_ih^T
            dz = d_x.view(-1, d_x.shape[-1])  # (T*B, 4H)
            # (over the gate blocks the variant uses: dz is 0 in the others)
            if ctx.needs_input_grad[1]:
                d_weight_ih = ops.weight_grad(dz, x.reshape(-1, x.shape[-1]), flags, params)
            d_x = None
            if ctx.needs_input_grad[0]:
                d_x = ops.input_grad(dz, weight_ih, flags, params).view(ctx.input_shape)
        return (d_x, d_weight_ih, d_bias, d_h0, d_c0, d_rec[:, :p], d_peephole, d_hr if projected else None,
                None, None, None)


def recurrence(
    x_proj: torch.Tensor,
    h0: torch.Tensor,
    c0: torch.Tensor,
    weight_hh: torch.Tensor,
    variant: Variant,
    *,
    peephole_weight: torch.Tensor | None = None,
    weight_hr: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
    reverse: bool = False,
    bias: torch.Tensor | None = None,
    weight_ih: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`lstmkit.backends.torch_loop.recurrence` (same arguments, shapes and results), fused.

    Float32 and float64 CPU tensors run the kernel, also under autocast (it has no lower
    precision); anything else (other dtypes or devices, or no kernel because no compiler) runs the
    generic backend.
    """
    options = dict(peephole_weight=peephole_weight, weight_hr=weight_hr, lengths=lengths, reverse=reverse, bias=bias)
    if x_proj.device.type != "cpu" or x_proj.dtype not in DTYPES or not available():
        return torch_loop.recurrence(x_proj, h0, c0, weight_hh, variant, weight_ih=weight_ih, **options)
    differentiable = (x_proj, weight_ih, bias, h0, c0, weight_hh, peephole_weight, weight_hr)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in differentiable):
        return FusedRecurrence.apply(*differentiable, lengths, variant, reverse)
    # Nothing to differentiate: the kernel directly, saving nothing for backward.
    y, h_n, c_n = _forward(*differentiable, lengths, variant, reverse, train=False)[0]
    return y, h_n, c_n
