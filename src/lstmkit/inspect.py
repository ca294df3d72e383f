"""Watch the gates open and close: step an lstmkit.LSTM and record what each cell does."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import PackedSequence

from .backends.torch_loop import cell_step
from .lstm import LSTM

RECORDED = ("input_gate", "forget_gate", "output_gate", "cell", "output")


@torch.no_grad()
def trace(module: LSTM, input: torch.Tensor, hx=None) -> dict[str, list[torch.Tensor]]:
    """Run a unidirectional ``module`` over ``input`` step by step with the generic cell code and
    record, for every layer, the gates f(z_i), forget, f(z_o), the cell c^t and the output h^t.

    Dropout between layers is not applied: the record is what the module computes in eval mode.

    Args:
        module: an lstmkit.LSTM with bidirectional=False.
        input: a padded tensor as for ``module`` (batch_first respected) or unbatched (L, I);
            not a PackedSequence (every sequence runs all L steps).
        hx: optional (h_0, c_0) as for ``module``.

    Returns:
        A dict with keys "input_gate", "forget_gate", "output_gate", "cell" and "output", each a
        list over layers of (L, N, H) tensors ((N, L, H) if batch_first, (L, H) unbatched;
        "output" has P features with a projection). The last layer's "output" equals
        ``module.eval()(input)[0]``.

    Example:
        >>> import torch, lstmkit
        >>> from lstmkit.inspect import trace
        >>> lstm = lstmkit.LSTM(3, 4, num_layers=2)
        >>> record = trace(lstm, torch.randn(6, 3))
        >>> len(record["forget_gate"]), record["forget_gate"][1].shape
        (2, torch.Size([6, 4]))
    """
    if not isinstance(module, LSTM):
        raise TypeError(f"module must be an lstmkit.LSTM, got {type(module).__name__}")
    if module.bidirectional:
        raise ValueError("module: trace steps forward in time and needs bidirectional=False")
    if isinstance(input, PackedSequence):
        raise TypeError("input: trace takes a padded tensor, not a PackedSequence")
    # (T, B, I), (L, B, P), (L, B, H)
    weight = module.weight_ih_l0
    x, h0, c0, _, unbatched = module._prepare(input, hx, None, (weight.dtype,), weight.device)
    peep = module.variant.peephole_parameter(module.hidden_size)
    result = {key: [] for key in RECORDED}
    layer_input = x  # (T, B, I)
    for layer in range(module.num_layers):
        p = {name: getattr(module, f"{name}_l{layer}", None)
             for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")}
        bias = p["bias_ih"] + p["bias_hh"] if module.bias else None
        x_proj = F.linear(layer_input, p["weight_ih"], bias)  # (T, B, 4H)
        h, c = h0[layer], c0[layer]
        steps = {key: [] for key in RECORDED}
        for x_t in x_proj.unbind(0):
            record = {}
            a, c = cell_step(x_t + h @ p["weight_hh"].t(), c, module.variant,
                             getattr(module, f"{peep[0]}_l{layer}") if peep else None, record)
            h = a if p["weight_hr"] is None else a @ p["weight_hr"].t()
            record.update(cell=c, output=h)
            for key in RECORDED:
                steps[key].append(record[key])
        layer_input = torch.stack(steps["output"])
        for key in RECORDED:
            stacked = torch.stack(steps[key])  # (T, B, .)
            if unbatched:
                stacked = stacked.squeeze(1)
            elif module.batch_first:
                stacked = stacked.transpose(0, 1)
            result[key].append(stacked)
    return result
