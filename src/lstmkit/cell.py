"""lstmkit.LSTMCell: one step of the lecture's memory cell; a drop-in for torch.nn.LSTMCell."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import LSTMBase, accepted_dtypes, autocast_dtype, check_floating, check_shape
from .backends.torch_loop import cell_step


class LSTMCell(LSTMBase):
    r"""One LSTM step, as the lecture draws the memory cell; a drop-in for ``torch.nn.LSTMCell``.

    Given x (the input x^t) and the state (h, c) = (h^{t-1}, c^{t-1}), lecture notation on the
    left, PyTorch's on the right (sigma = f, the gate activation; g and h default to tanh)::

        z   = W_z x + R_z h + b_z        g = tanh(W_ig x + b_ig + W_hg h + b_hg)
        z_i = W_i x + R_i h + b_i        i = sigma(W_ii x + b_ii + W_hi h + b_hi)
        z_f = W_f x + R_f h + b_f        f = sigma(W_if x + b_if + W_hf h + b_hf)
        z_o = W_o x + R_o h + b_o        o = sigma(W_io x + b_io + W_ho h + b_ho)
        c'  = g(z) f(z_i) + c f(z_f)     c' = f * c + i * g
        a   = h(c') f(z_o)               h' = o * tanh(c')

    Args:
        input_size: features of x, I.
        hidden_size: H, the number of cells.
        bias: use bias_ih and bias_hh (each (4H,)). Default True.
        device, dtype: of the parameters.
        peephole, activations, coupled_gates, gates, clip, cell_clip, forget_bias: as in
            :class:`lstmkit.LSTM` (peephole weight ``weight_peep`` (3, H) or ``weight_ch`` (4H, H)).

    Inputs: ``input, (h_0, c_0)``: input (N, I) or (I,); h_0 and c_0 (N, H) or (H,), default zeros.

    Outputs: ``(h_1, c_1)``, each (N, H) or (H,).

    A vanilla cell (no lstmkit option) runs PyTorch's own fused step, ``torch.lstm_cell``, so it
    gives torch.nn.LSTMCell's numbers at its speed; every other variant runs the lecture's step
    (:func:`lstmkit.backends.torch_loop.cell_step`), about 100 us per step at B=1, H=128 on one
    CPU core against nn.LSTMCell's 55 (a one-step call into the fused CPU kernel costs more).

    Example (the lecture's cell: x1 enters the memory when the input gate is open):
        >>> import torch, lstmkit
        >>> cell = lstmkit.LSTMCell(3, 1, activations=("sigmoid", "identity", "identity"))
        >>> with torch.no_grad():
        ...     _ = cell.weight_hh.zero_(), cell.bias_hh.zero_()
        ...     _ = cell.weight_ih.copy_(torch.tensor([[0., 100, 0], [0, 100, 0], [1, 0, 0], [0, 0, 100]]))
        ...     _ = cell.bias_ih.copy_(torch.tensor([-10., 10, 0, -10]))
        ...     h, c = cell(torch.tensor([3., 1, 0]))              # x2 = 1: add 3 to the memory
        ...     h, c = cell(torch.tensor([4., 0, 1]), (h, c))      # x3 = 1: output the memory
        >>> round(c.item(), 3), round(h.item(), 3)
        (3.0, 3.0)
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        device=None,
        dtype=None,
        *,
        peephole: str | None = None,
        activations=None,
        coupled_gates: bool = False,
        gates: str = "ifo",
        clip: float | None = None,
        cell_clip: float | None = None,
        forget_bias: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bool(bias)
        self._init_options(
            hidden_size, bias, forget_bias, peephole=peephole, activations=activations,
            coupled_gates=coupled_gates, gates=gates, clip=clip, cell_clip=cell_clip,
        )
        self._add_parameters("", input_size, hidden_size, 0, bias, {"device": device, "dtype": dtype})
        self.reset_parameters()

    @classmethod
    def from_torch(cls, module: nn.LSTMCell, **options) -> LSTMCell:
        """An lstmkit.LSTMCell with ``module``'s arguments and weights, plus lstmkit ``options``."""
        if not isinstance(module, nn.LSTMCell):
            raise TypeError(f"module must be a torch.nn.LSTMCell, got {type(module).__name__}")
        p = module.weight_ih
        new = cls(module.input_size, module.hidden_size, module.bias, device=p.device, dtype=p.dtype, **options)
        new._load_from_torch(module)
        return new

    def to_torch(self) -> nn.LSTMCell:
        """The equivalent torch.nn.LSTMCell (vanilla variant only)."""
        self._check_torch_compatible("torch.nn.LSTMCell")
        p = self.weight_ih
        module = nn.LSTMCell(self.input_size, self.hidden_size, self.bias, device=p.device, dtype=p.dtype)
        module.load_state_dict(self.state_dict())
        return module.train(self.training)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}" + ("" if self.bias else ", bias=False")
        options = self.variant_repr()
        return s + (", " + options if options else "")

    def forward(self, input: torch.Tensor, hx=None) -> tuple[torch.Tensor, torch.Tensor]:
        weight = self.weight_ih
        dtypes = accepted_dtypes(weight.dtype, autocast_dtype(weight.device, weight.dtype))
        check_floating("input", input, dtypes, weight.device)
        if input.dim() not in (1, 2) or input.shape[-1] != self.input_size:
            raise ValueError(
                f"input must have shape (N, {self.input_size}) or ({self.input_size},) (input_size), "
                f"got {tuple(input.shape)}"
            )
        unbatched = input.dim() == 1
        x = input.unsqueeze(0) if unbatched else input  # (B, I)
        if hx is None:
            h = c = x.new_zeros(x.shape[0], self.hidden_size)
        else:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError("hx must be a tuple (h_0, c_0)")
            expected = tuple(input.shape[:-1]) + (self.hidden_size,)
            for name, state in zip(("h_0", "c_0"), hx):
                check_floating(name, state, dtypes, weight.device)
                check_shape(name, state, expected, "(N, hidden_size) or (hidden_size,) to match input")
            h, c = (s.unsqueeze(0) if unbatched else s for s in hx)
        if self.variant.is_vanilla:  # torch.nn.LSTMCell's own fused step: its speed and its numbers
            biases = (self.bias_ih, self.bias_hh) if self.bias else (None, None)
            a, c = torch.lstm_cell(x, (h, c), weight, self.weight_hh, *biases)
            return (a.squeeze(0), c.squeeze(0)) if unbatched else (a, c)
        bias = self.bias_ih + self.bias_hh if self.bias else None
        zs = F.linear(x, weight, bias) + h @ self.weight_hh.t()  # (B, 4H)
        peephole = self.variant.peephole_parameter(self.hidden_size)
        dtype = torch.promote_types(zs.dtype, c.dtype)  # torch.lstm_cell's, also under autocast
        peephole_weight = None if peephole is None else getattr(self, peephole[0])
        a, c = (t.to(dtype) for t in cell_step(zs, c, self.variant, peephole_weight))
        return (a.squeeze(0), c.squeeze(0)) if unbatched else (a, c)
