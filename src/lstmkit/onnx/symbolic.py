"""lstmkit modules inside a user model exported with ``torch.onnx.export(..., dynamo=False)``.

During that (TorchScript) export, :class:`lstmkit.LSTM` and :class:`ReverseLSTM` call
:func:`export_forward`: it computes the usual result and records, for the exporter, the same
ONNX LSTM nodes that :func:`lstmkit.onnx.export` writes (no unrolled loop). The default
``dynamo=True`` exporter traces the Python loop instead; docs/onnx.md says how to get LSTM
nodes there.
"""

from __future__ import annotations

import numpy as np
import torch
from onnx import TensorProto

from .export import check_exportable, emit, unwrap


class SymbolicBuilder:
    """The builder interface of :class:`lstmkit.onnx.export.GraphBuilder` over the exporter's graph."""

    def __init__(self, g) -> None:
        self.g = g

    def const(self, name: str, array: np.ndarray):
        return self.g.op("Constant", value_t=torch.from_numpy(np.ascontiguousarray(array)))

    def op(self, op_type: str, inputs: list, outputs: list[str], **attributes):
        kinds = {int: "i", float: "f", str: "s"}
        typed = {}
        for name, value in attributes.items():
            sample = value[0] if isinstance(value, list) else value
            typed[f"{name}_{kinds[type(sample)]}"] = value
        inputs = [self.none() if i is None else i for i in inputs]
        result = self.g.op(op_type, *inputs, outputs=len(outputs), **typed)
        return list(result) if len(outputs) > 1 else [result]

    def none(self):
        value = self.g.op("prim::Constant")
        value.setType(torch._C.OptionalType.ofTensor())
        return value


class _ExportedLSTM(torch.autograd.Function):
    """Forward: the module's own result; symbolic: ONNX LSTM nodes (see module docstring)."""

    @staticmethod
    def forward(ctx, x, lengths, h0, c0, module):
        state = torch._C._get_tracing_state()
        torch._C._set_tracing_state(None)  # compute only (and the modules run as usual, not via export_forward)
        try:
            with torch.no_grad():
                output, (h_n, c_n) = module(x, None if h0 is None else (h0, c0), lengths=lengths)
        finally:
            torch._C._set_tracing_state(state)
        ctx.mark_non_differentiable(output, h_n, c_n)  # export is inference; the tracer needs this
        return output, h_n, c_n

    @staticmethod
    def symbolic(g, x, lengths, h0, c0, module):
        b = SymbolicBuilder(g)
        if lengths is not None:
            lengths = g.op("Cast", lengths, to_i=TensorProto.INT32)  # ONNX's sequence_lens is int32
        return emit(b, module, x, lengths, h0, c0)


def export_forward(module, input, hx=None, lengths=None):
    """``module(input, hx, lengths=lengths)`` recorded as ONNX LSTM nodes (padded, batched input)."""
    lstm, _ = unwrap(module)
    check_exportable(lstm)  # refuse here, not with a half-built graph
    if not isinstance(input, torch.Tensor) or input.dim() != 3:
        raise ValueError("torch.onnx.export of an lstmkit LSTM needs a batched, padded 3-D input tensor "
                         "(pass lengths= instead of a PackedSequence; add a batch axis to an unbatched input)")
    if hx is not None and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
        raise TypeError("hx must be a tuple (h_0, c_0)")
    if lengths is not None and not isinstance(lengths, torch.Tensor):
        lengths = torch.as_tensor(lengths)
    h0, c0 = (None, None) if hx is None else hx
    output, h_n, c_n = _ExportedLSTM.apply(input, lengths, h0, c0, module)
    return output, (h_n, c_n)
