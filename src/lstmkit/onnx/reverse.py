"""ReverseLSTM: ONNX's direction="reverse", which lstmkit.LSTM (forward or bidirectional) lacks."""

from __future__ import annotations

import torch
from torch import nn

from ..lstm import LSTM


def flip_time(x: torch.Tensor, lengths: torch.Tensor | None, time_dim: int) -> torch.Tensor:
    """Reverse each sequence within its own length: x'[t] = x[L_b - 1 - t] for t < L_b, and
    padding (t >= L_b) stays where it is. The map is its own inverse.

    Args:
        x: (T, B, ...) or, with time_dim=1, (B, T, ...).
        lengths: (B,) integers in [0, T], or None for all T.
    """
    steps = x.shape[time_dim]
    if lengths is None:
        return x.flip(time_dim)
    t = torch.arange(steps, device=x.device)[:, None]  # (T, 1)
    lengths = lengths.to(device=x.device, dtype=torch.int64)[None, :]  # (1, B)
    index = torch.where(t < lengths, lengths - 1 - t, t)  # (T, B)
    if time_dim == 1:
        index = index.t()  # (B, T)
    index = index.reshape(index.shape + (1,) * (x.dim() - 2)).expand_as(x)
    return x.gather(time_dim, index)


class ReverseLSTM(nn.Module):
    """A stack of reverse-only LSTM layers (ONNX direction="reverse"): each layer runs
    t = L_b - 1 .. 0 from its initial state, on the previous layer's output.

    Because reversing time twice is the identity, this is ``lstm`` (a forward lstmkit.LSTM)
    run on the time-flipped input, with its output flipped back; h_n and c_n are ``lstm``'s.
    Lengths are honoured: each sequence is flipped within its own length, so a sequence starts
    at its own last valid step, as ONNX's ``sequence_lens`` says.

    Args:
        lstm: a forward (bidirectional=False) :class:`lstmkit.LSTM` holding the weights.

    Inputs and outputs are those of :class:`lstmkit.LSTM` for padded tensors (batched or
    unbatched, batch_first as ``lstm`` says, optional ``lengths``).
    """

    def __init__(self, lstm: LSTM) -> None:
        super().__init__()
        if not isinstance(lstm, LSTM) or lstm.bidirectional:
            raise TypeError(f"lstm must be a forward (bidirectional=False) lstmkit.LSTM, got {lstm!r}")
        self.lstm = lstm

    def forward(self, input: torch.Tensor, hx=None, lengths=None):
        if torch.jit.is_tracing() and torch.onnx.is_in_onnx_export():  # torch.onnx.export: ONNX LSTM nodes
            from .symbolic import export_forward

            return export_forward(self, input, hx, lengths)
        if not isinstance(input, torch.Tensor) or input.dim() not in (2, 3):
            got = f"shape {tuple(input.shape)}" if isinstance(input, torch.Tensor) else type(input).__name__
            raise TypeError(f"input must be a 2-D or 3-D padded torch.Tensor (ReverseLSTM takes no PackedSequence), got {got}")
        unbatched = input.dim() == 2
        x = input.unsqueeze(1) if unbatched else input  # (T, B, I) or (B, T, I)
        time_dim = 1 if self.lstm.batch_first and not unbatched else 0
        lengths = self.lstm._check_lengths(lengths, x.shape[time_dim], x.shape[1 - time_dim], x.device)
        flipped = flip_time(x, lengths, time_dim)
        output, state = self.lstm(flipped.squeeze(1) if unbatched else flipped, hx, lengths=lengths)
        output = flip_time(output.unsqueeze(1) if unbatched else output, lengths, time_dim)
        return (output.squeeze(1) if unbatched else output), state
