"""The generic backend: the recurrence as a Python loop over PyTorch operators.

It runs on every device and dtype, supports every option of :class:`~lstmkit.variant.Variant`,
and is differentiated by autograd. Fast backends must agree with it (and with the float64
reference); it is also what :class:`lstmkit.LSTMCell` steps with.
"""

from __future__ import annotations

import torch

from ..activations import torch_activation
from ..variant import Variant


def cell_step(
    zs: torch.Tensor,
    c_prev: torch.Tensor,
    variant: Variant,
    peephole_weight: torch.Tensor | None,
    record: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of the cell, from the gate inputs to (a, c^t) in the lecture's notation.

    Args:
        zs: (B, 4H) W x^t + R h^{t-1} + b, gate order i, f, g, o (peephole terms not yet added).
        c_prev: (B, H) the cell c^{t-1}.
        variant: what to compute.
        peephole_weight: (3, H) for diagonal, (4H, H) for full peepholes, else None.
        record: if a dict, the gate values f(z_i), forget, f(z_o) are stored in it under
            "input_gate", "forget_gate", "output_gate" (1 for a dropped gate), each (B, H).

    Returns:
        a: (B, H) h(c^t) * f(z_o), before any projection.
        c: (B, H) the new cell c^t.
    """
    f, g, h = (torch_activation(a) for a in variant.activations)
    clip = variant.clip
    if variant.peephole == "full":
        zs = zs + c_prev @ peephole_weight.t()  # (B, 4H): every z sees c^{t-1}
    z_i, z_f, z, z_o = zs.chunk(4, dim=-1)  # each (B, H)
    if variant.peephole == "diagonal":
        z_i = z_i + peephole_weight[0] * c_prev
        z_f = z_f + peephole_weight[1] * c_prev
    if clip is not None:
        z_i, z_f, z = (torch.clamp(v, -clip, clip) for v in (z_i, z_f, z))

    input_gate = f(z_i) if variant.has_gate("i") else None
    if variant.coupled_gates:
        forget_gate = 1.0 - input_gate
    else:
        forget_gate = f(z_f) if variant.has_gate("f") else None
    cell_input = g(z) if input_gate is None else g(z) * input_gate
    c = cell_input + (c_prev if forget_gate is None else c_prev * forget_gate)
    if variant.cell_clip is not None:
        c = torch.clamp(c, -variant.cell_clip, variant.cell_clip)

    a = h(c)
    output_gate = None
    if variant.has_gate("o"):
        if variant.peephole == "diagonal":
            z_o = z_o + peephole_weight[2] * c  # the output gate peeks at the new cell
        if clip is not None:
            z_o = torch.clamp(z_o, -clip, clip)
        output_gate = f(z_o)
        a = a * output_gate
    if record is not None:
        gates = {"input_gate": input_gate, "forget_gate": forget_gate, "output_gate": output_gate}
        record.update({k: torch.ones_like(c) if v is None else v for k, v in gates.items()})
    return a, c


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
    """Run one layer in one direction over precomputed input projections (or over the input x,
    projected by the backend, when ``weight_ih`` is given).

    This is the interface every backend implements (see docs/architecture.md).

    Args:
        x_proj: (T, B, 4H) W x^t for all t, gate order i, f, g, o; with ``weight_ih``, the layer
            input x (T, B, I) instead.
        h0: (B, P) initial h (P = proj_size if weight_hr is given, else H).
        c0: (B, H) initial cell.
        weight_hh: (4H, P) recurrent weights R.
        variant: what the cell computes.
        peephole_weight: (3, H) or (4H, H), as the variant's peephole asks, else None.
        weight_hr: (P, H) projection of h, or None.
        lengths: (B,) int64 on x_proj's device, 0 <= lengths <= T, or None for all T.
            Steps at t >= lengths[b] leave the state unchanged and output 0.
        reverse: run t = T-1 .. 0.
        bias: (4H,) b = b_ih + b_hh, added to x_proj at every step, or None.
        weight_ih: (4H, I) input weights W: x_proj = x W^T is the backend's to compute (where
            and how: the CPU kernel inside its time loop at small sizes), or None.

    Returns:
        y: (T, B, P) outputs, h_n: (B, P) and c_n: (B, H) final states.
    """
    if weight_ih is not None:
        x_proj = torch.nn.functional.linear(x_proj, weight_ih)  # (T, B, 4H)
    if bias is not None:
        x_proj = x_proj + bias.to(x_proj.dtype)  # (autocast may have made x_proj half precision)
    steps = x_proj.shape[0]
    h, c = h0, c0
    weight_hh_t = weight_hh.t()  # (P, 4H), transposed once, not per step
    weight_hr_t = None if weight_hr is None else weight_hr.t()  # (H, P)
    valid = None if lengths is None else (torch.arange(steps, device=x_proj.device)[:, None] < lengths)[..., None].unbind(0)
    x_steps = x_proj.unbind(0)  # one backward node for all steps (indexing x_proj[t] is O(T^2) in backward)
    outputs = [None] * steps
    for t in (range(steps - 1, -1, -1) if reverse else range(steps)):
        zs = torch.addmm(x_steps[t], h, weight_hh_t)  # (B, 4H)
        a, c_new = cell_step(zs, c, variant, peephole_weight)
        h_new = a if weight_hr_t is None else a @ weight_hr_t  # (B, P)
        if valid is None:
            h, c = h_new, c_new
            outputs[t] = h_new
        else:
            m = valid[t]  # (B, 1)
            h = torch.where(m, h_new, h)
            c = torch.where(m, c_new, c)
            outputs[t] = torch.where(m, h_new, torch.zeros_like(h_new))
    y = torch.stack(outputs) if steps else x_proj.new_zeros(0, *h0.shape)
    return y, h, c


def recomputed_grads(
    inputs: dict[str, torch.Tensor | None],
    needs_grad: tuple[bool, ...],
    grad_outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    variant: Variant,
    **options,
) -> tuple[torch.Tensor | None, ...]:
    """The gradients of :func:`recurrence`'s (y, h_n, c_n) with respect to ``inputs`` (its tensor
    arguments by name, in the caller's order), as tensors autograd can differentiate again.

    A fused backend's backward computes numbers only; when it is called with ``create_graph=True``
    (a gradient penalty, a Hessian-vector product) it hands over to this: the forward is recomputed
    here, step by step, and differentiated by autograd. ``needs_grad[i]``: whether inputs' i-th
    tensor needs a gradient (else None is returned for it); ``options``: the other keyword
    arguments of :func:`recurrence`.
    """
    wanted = [name for (name, t), need in zip(inputs.items(), needs_grad) if need and t is not None]
    with torch.enable_grad():
        outputs = recurrence(variant=variant, **inputs, **options)
        # (with T = 0, y is a fresh tensor outside the graph)
        pairs = [(out, grad) for out, grad in zip(outputs, grad_outputs) if out.requires_grad]
        grads = torch.autograd.grad([out for out, _ in pairs], [inputs[name] for name in wanted],
                                    [grad for _, grad in pairs], create_graph=True, allow_unused=True)
    found = dict(zip(wanted, grads))
    return tuple(found.get(name) for name in inputs)
