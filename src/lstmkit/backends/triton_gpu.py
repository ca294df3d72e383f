"""The Triton GPU backend: one layer and direction as one kernel launch, forward and backward.

The time loop runs inside the kernel (:mod:`.triton_kernels`): each program owns a block of batch
rows and steps through time; per step it computes z = x_proj[t] + R h^{t-1} (+ Q c^{t-1}) in tiles
of cells with ``tl.dot``, applies the gates, writes h^t and c^t to global memory and waits at a
barrier before the next step reads them. Backward through time is a second kernel (the same
equations as :mod:`lstmkit.reference`, recomputing the gates from the saved gate inputs); the
weight gradients are then one torch GEMM each over all steps. Every option of
:class:`~lstmkit.variant.Variant`, ``lengths``, projections and ``reverse``.

Dtypes: float32 and float64; on CUDA also bfloat16 and float16. States, gate math and all
accumulation are float32 (float64 for float64); the bf16/fp16 operands of the recurrent products
are the weights as given and h^{t-1} rounded to their dtype, as tensor cores take them.

Deterministic: nothing uses atomics. Every value is written by one program, each sum is taken in
a fixed order, and the weight gradients are plain GEMMs, so two runs on the same device and
inputs give bitwise equal results.

On CPU tensors the kernels run under Triton's interpreter when TRITON_INTERPRET=1 is set before
this backend's first use (Triton reads it when it decorates the kernels, which happens then):
that is how the kernels are tested without a GPU (tests/backends/test_triton.py).

TO TUNE ON A GPU (this version is the simplest correct design, checked by the interpreter and
compiled for sm_90 but never run on a device): BLOCK_B/BLOCK_H/BLOCK_K and num_warps; a
persistent kernel spread over many SMs with each SM's slice of R (and Q) kept in shared memory or
registers for all steps and a grid-wide barrier per step (today one program per 16 batch rows
streams all of R from L2 every step, so small batches use one SM); R^T (P, 4H) vs R (4H, P)
layouts; tf32 for float32 where SPEC's 1e-2 suffices; CUDA graphs for the launches of
multi-layer models; a wavefront over layers (layer l at step t while layer l+1 runs step t-1).
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from typing import NamedTuple

import torch

from ..variant import Variant

CUDA_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
INTERPRETER_DTYPES = (torch.float32, torch.float64)  # the interpreter computes in NumPy: no bfloat16
BLOCK_B = 16  # batch rows per program: tl.dot needs tiles of at least 16 x 16 x 16


class Codes(NamedTuple):
    """A variant as the kernels' compile-time constants (triton_kernels reads them by name)."""

    act_f: str  # activation names, as lstmkit.variant.ACTIVATION_DEFAULTS spells them
    act_g: str
    act_h: str
    has_i: bool
    has_f: bool
    has_o: bool
    coupled: bool
    peephole: str | None
    clip: bool
    cell_clip: bool


@lru_cache(maxsize=None)
def available() -> bool:
    """True when triton is installed (whether a kernel compiles is known at its first launch)."""
    return importlib.util.find_spec("triton") is not None


def _kernels():
    """The kernel module, imported (so its kernels decorated) at first use, not with lstmkit."""
    if not available():
        raise RuntimeError("backend 'triton' needs the triton package: pip install 'lstmkit[gpu]'")
    from . import triton_kernels

    return triton_kernels


def _interpreted() -> bool:
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_kernels().lstm_forward, InterpretedFunction)


@lru_cache(maxsize=None)
def _constants(variant: Variant) -> tuple[Codes, tuple[float, ...]]:
    """(Codes, the (8,) numbers of triton_kernels.Params) of a variant."""
    f, g, h = variant.activations
    codes = Codes(f.name, g.name, h.name, variant.has_gate("i"), variant.has_gate("f"), variant.has_gate("o"),
                  variant.coupled_gates, variant.peephole, variant.clip is not None, variant.cell_clip is not None)
    params = tuple(float(v or 0.0) for a in (f, g, h) for v in (a.alpha, a.beta))
    return codes, params + (variant.clip or 0.0, variant.cell_clip or 0.0)


def _tile(n: int) -> int:
    """A power-of-two tile width for n columns, 16 (tl.dot's minimum) to 64."""
    return min(64, max(16, 1 << (n - 1).bit_length()))


def _launch_constants(variant: Variant, hidden: int, proj: int, projected: bool, reverse: bool) -> dict:
    codes, _ = _constants(variant)
    return dict(V=codes, PROJ=projected, REVERSE=reverse, BLOCK_B=BLOCK_B, BLOCK_H=_tile(hidden),
                BLOCK_P=_tile(proj), BLOCK_K=32)


def grid(batch: int) -> tuple[int]:
    return (-(-batch // BLOCK_B),)


def _accumulation(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def forward_args(x_proj, h0, c0, weight_hh, peephole_weight, weight_hr, lengths, variant, reverse, save) -> dict:
    """The forward kernel's arguments, its output and state buffers allocated (keys as its parameters)."""
    steps, batch, gates = x_proj.shape
    hidden, proj = gates // 4, weight_hh.shape[1]
    acc = _accumulation(x_proj.dtype)
    hs = x_proj.new_empty(steps + 1, batch, proj, dtype=acc)  # (T+1, B, P): the state after each step
    cs = x_proj.new_empty(steps + 1, batch, hidden, dtype=acc)  # (T+1, B, H)
    first = steps if reverse else 0
    hs[first], cs[first] = h0, c0
    projected = weight_hr is not None
    return dict(
        x_ptr=x_proj.contiguous(), w_ptr=weight_hh.t().contiguous(),
        q_ptr=peephole_weight.t().contiguous() if variant.peephole == "full" else None,
        peep_ptr=peephole_weight.contiguous() if variant.peephole == "diagonal" else None,
        w_hr_ptr=weight_hr.t().contiguous() if projected else None,
        len_ptr=lengths, prm_ptr=torch.tensor(_constants(variant)[1], dtype=acc, device=x_proj.device),
        hs_ptr=hs, cs_ptr=cs, y_ptr=x_proj.new_empty(steps, batch, proj),
        z_ptr=x_proj.new_empty(steps, batch, gates, dtype=acc) if save else None,  # (T, B, 4H)
        a_ptr=x_proj.new_empty(steps, batch, hidden, dtype=acc) if projected else None,  # (T, B, H)
        T=steps, B=batch, H=hidden, P=proj, SAVE=save,
        **_launch_constants(variant, hidden, proj, projected, reverse),
    )


def backward_args(grad_y, grad_h_n, grad_c_n, cs, z, weight_hh, peephole_weight, weight_hr, lengths, variant,
                  reverse) -> dict:
    """The backward kernel's arguments, its gradient buffers allocated (keys as its parameters)."""
    steps, batch, gates = z.shape
    hidden, proj = gates // 4, weight_hh.shape[1]
    dh = z.new_empty(2, batch, proj)  # (2, B, P) dL/dh of the state, slots taking turns
    dc = z.new_empty(2, batch, hidden)  # (2, B, H)
    dh[0], dc[0] = grad_h_n, grad_c_n
    projected = weight_hr is not None
    return dict(
        gy_ptr=grad_y.contiguous(), w_ptr=weight_hh.contiguous(),
        q_ptr=peephole_weight.contiguous() if variant.peephole == "full" else None,
        peep_ptr=peephole_weight.contiguous() if variant.peephole == "diagonal" else None,
        w_hr_ptr=weight_hr.contiguous() if projected else None,
        len_ptr=lengths, prm_ptr=torch.tensor(_constants(variant)[1], dtype=z.dtype, device=z.device),
        cs_ptr=cs, z_ptr=z, dh_ptr=dh, dc_ptr=dc,
        dhn_ptr=z.new_empty(steps, batch, proj), dz_ptr=torch.empty_like(z),
        T=steps, B=batch, H=hidden, P=proj, **_launch_constants(variant, hidden, proj, projected, reverse),
    )


class TritonRecurrence(torch.autograd.Function):
    """One layer and direction through the forward kernel; backward through the backward kernel."""

    @staticmethod
    def forward(ctx, x_proj, h0, c0, weight_hh, peephole_weight, weight_hr, lengths, variant, reverse, train):
        args = forward_args(x_proj, h0, c0, weight_hh, peephole_weight, weight_hr, lengths, variant, reverse, train)
        with torch.cuda.device_of(x_proj):
            _kernels().lstm_forward[grid(x_proj.shape[1])](**args)
        hs, cs = args["hs_ptr"], args["cs_ptr"]
        if train:
            ctx.save_for_backward(hs, cs, args["z_ptr"], args["a_ptr"], weight_hh, peephole_weight, weight_hr,
                                  lengths)
            ctx.setup = (variant, reverse)
        last = 0 if reverse else -1
        return args["y_ptr"], hs[last].to(x_proj.dtype, copy=True), cs[last].to(x_proj.dtype, copy=True)

    @staticmethod
    def backward(ctx, grad_y, grad_h_n, grad_c_n):
        if torch.is_grad_enabled():  # create_graph=True: the kernel's gradients are numbers only
            raise RuntimeError(
                "backend='triton' has no double backward (backward or autograd.grad with create_graph=True); "
                "use backend='torch' for that")
        hs, cs, z, a, weight_hh, peephole_weight, weight_hr, lengths = ctx.saved_tensors
        variant, reverse = ctx.setup
        args = backward_args(grad_y, grad_h_n, grad_c_n, cs, z, weight_hh, peephole_weight, weight_hr, lengths,
                             variant, reverse)
        with torch.cuda.device_of(z):
            _kernels().lstm_backward[grid(z.shape[1])](**args)
        dz, d_h_new = args["dz_ptr"], args["dhn_ptr"]  # (T, B, 4H), (T, B, P)
        # The states by time: before step t and, for the output gate's peephole, after it.
        h_prev, c_prev, c_new = (hs[1:], cs[1:], cs[:-1]) if reverse else (hs[:-1], cs[:-1], cs[1:])

        def flat(t):
            return t.reshape(-1, t.shape[-1])

        d_weight_hh = flat(dz).t() @ flat(h_prev)  # (4H, P): one GEMM over all steps
        d_peephole = None
        if variant.peephole == "full":
            d_peephole = flat(dz).t() @ flat(c_prev)  # (4H, H)
        elif variant.peephole == "diagonal":
            d_z_i, d_z_f, _, d_z_o = dz.chunk(4, dim=-1)
            d_peephole = torch.stack([(d_z_i * c_prev).sum((0, 1)), (d_z_f * c_prev).sum((0, 1)),
                                      (d_z_o * c_new).sum((0, 1))])  # (3, H)
        d_weight_hr = None if weight_hr is None else flat(d_h_new).t() @ flat(a)  # (P, H)
        dtype, last = grad_y.dtype, z.shape[0] % 2
        return (dz.to(dtype), args["dh_ptr"][last].to(dtype), args["dc_ptr"][last].to(dtype),
                d_weight_hh.to(dtype), None if d_peephole is None else d_peephole.to(dtype),
                None if d_weight_hr is None else d_weight_hr.to(dtype), None, None, None, None)


def _check_inputs(x_proj: torch.Tensor, **tensors: torch.Tensor | None) -> None:
    device = x_proj.device
    if device.type == "cuda":
        dtypes = CUDA_DTYPES
    elif device.type == "cpu" and _interpreted():
        dtypes = INTERPRETER_DTYPES
    else:
        raise ValueError(f"x_proj: backend 'triton' runs on CUDA tensors (or on CPU tensors under Triton's "
                         f"interpreter, TRITON_INTERPRET=1 set before its first use), got a tensor on {device}")
    if x_proj.dtype not in dtypes:
        names = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise TypeError(f"x_proj: backend 'triton' supports dtypes {names} on {device.type}, got {x_proj.dtype}")
    for name, t in tensors.items():
        if t is not None and (t.device != device or t.dtype != x_proj.dtype):
            raise TypeError(f"{name}: expected {x_proj.dtype} on {device} (as x_proj), got {t.dtype} on {t.device}")


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
    """:func:`lstmkit.backends.torch_loop.recurrence` (same arguments, shapes and results) in Triton."""
    if weight_ih is not None:  # one product over all steps, x W^T (T, B, 4H); then x_proj's dtype rules
        _check_inputs(x_proj, weight_ih=weight_ih)
        x_proj = torch.nn.functional.linear(x_proj, weight_ih)
    _check_inputs(x_proj, h0=h0, c0=c0, weight_hh=weight_hh, peephole_weight=peephole_weight, weight_hr=weight_hr,
                  bias=bias)
    if bias is not None:
        x_proj = x_proj + bias
    steps, batch = x_proj.shape[:2]
    if lengths is None:
        lengths = torch.full((batch,), steps, dtype=torch.int64, device=x_proj.device)
    lengths = lengths.to(device=x_proj.device, dtype=torch.int64).contiguous()
    differentiable = (x_proj, h0, c0, weight_hh, peephole_weight, weight_hr)
    train = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in differentiable)
    return TritonRecurrence.apply(*differentiable, lengths, variant, reverse, train)
