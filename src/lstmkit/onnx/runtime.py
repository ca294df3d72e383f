"""Run an imported module with an ONNX LSTM node's inputs and outputs (layouts and all)."""

from __future__ import annotations

import numpy as np
import torch

from ..lstm import LSTM
from .reverse import ReverseLSTM


def onnx_outputs(module: LSTM | ReverseLSTM, X, sequence_lens=None, initial_h=None, initial_c=None):
    """``module`` called as the ONNX LSTM node it was imported from is called.

    Args (NumPy arrays or tensors, shapes for layout=0; layout=1 = the module's batch_first
    swaps the first two axes of each):
        X: (T, B, I). sequence_lens: (B,) integers.
        initial_h, initial_c: (D, B, H) (D*num_layers for a stack); default zeros.

    Returns:
        Y (T, D, B, H), Y_h (D, B, H), Y_c (D, B, H) as tensors; layout=1: Y (B, T, D, H),
        Y_h and Y_c (B, D, H).
    """
    lstm = module.lstm if isinstance(module, ReverseLSTM) else module
    dtype = lstm.weight_ih_l0.dtype

    def tensor(value):
        return None if value is None else torch.as_tensor(np.asarray(value), dtype=dtype)

    x, h0, c0 = tensor(X), tensor(initial_h), tensor(initial_c)
    if lstm.batch_first:  # layout=1: states are (B, D, H)
        h0, c0 = (None if s is None else s.transpose(0, 1) for s in (h0, c0))
    if h0 is None and c0 is None:
        hx = None
    else:
        shape = (x.shape[0] if lstm.batch_first else x.shape[1], lstm.hidden_size)
        zeros = x.new_zeros((lstm.num_layers * (2 if lstm.bidirectional else 1),) + shape)
        hx = (zeros if h0 is None else h0.contiguous(), zeros if c0 is None else c0.contiguous())
    lengths = None if sequence_lens is None else torch.as_tensor(np.asarray(sequence_lens)).long()
    with torch.no_grad():
        output, (h_n, c_n) = module(x, hx, lengths=lengths)
    d = 2 if lstm.bidirectional else 1
    y = output.reshape(output.shape[:2] + (d, lstm.hidden_size))  # (T, B, D, H) or (B, T, D, H)
    if lstm.batch_first:
        return y, h_n.transpose(0, 1), c_n.transpose(0, 1)
    return y.transpose(1, 2), h_n, c_n
