"""lstmkit.LSTM: a drop-in superset of torch.nn.LSTM."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import backends
from ._common import LSTMBase, accepted_dtypes, autocast_dtype, check_floating, check_shape


class LSTM(LSTMBase):
    r"""A multi-layer LSTM, computed as the lecture teaches it; a drop-in for ``torch.nn.LSTM``.

    For each layer and direction, at each time step t, with the lecture's names on the left and
    PyTorch's on the right (:math:`\sigma` = f, the gate activation; g and h default to tanh)::

        z   = W_z x^t + R_z h^{t-1} + b_z       g_t = tanh(W_ig x_t + b_ig + W_hg h_{t-1} + b_hg)
        z_i = W_i x^t + R_i h^{t-1} + b_i       i_t = sigma(W_ii x_t + b_ii + W_hi h_{t-1} + b_hi)
        z_f = W_f x^t + R_f h^{t-1} + b_f       f_t = sigma(W_if x_t + b_if + W_hf h_{t-1} + b_hf)
        z_o = W_o x^t + R_o h^{t-1} + b_o       o_t = sigma(W_io x_t + b_io + W_ho h_{t-1} + b_ho)
        c^t = g(z) f(z_i) + c^{t-1} f(z_f)      c_t = f_t * c_{t-1} + i_t * g_t
        h^t = h(c^t) f(z_o)                     h_t = o_t * tanh(c_t)

    With ``proj_size`` P > 0, h^t = W_hr (h(c^t) f(z_o)) is what recurs and is output. The input
    of layer k > 0 is the output of layer k - 1 (both directions concatenated), with dropout.

    Args:
        input_size: features of x, I.
        hidden_size: cells per layer, H.
        num_layers: stacked layers. Default 1.
        bias: use bias_ih and bias_hh. Default True.
        batch_first: input and output are (N, L, ...) instead of (L, N, ...). Default False.
        dropout: dropout on each layer's output except the last, in training. Default 0.
        bidirectional: D = 2 directions instead of 1. Default False.
        proj_size: P > 0 projects h to P features (LSTMP); 0 = none. Must be < hidden_size.
        device, dtype: of the parameters.
        peephole: None, ``"diagonal"`` (Gers & Schmidhuber, ONNX's P: z_i += p_i c^{t-1},
            z_f += p_f c^{t-1}, z_o += p_o c^t; parameter ``weight_peep_l{k}`` (3, H)) or
            ``"full"`` (the lecture's extension: z_* += Q_* c^{t-1} for all four z; parameter
            ``weight_ch_l{k}`` (4H, H)).
        activations: (f, g, h), each a name or (name, alpha, beta) from ONNX's set: sigmoid,
            tanh, identity, relu, hard_sigmoid, leaky_relu, thresholded_relu, scaled_tanh,
            affine, elu, softsign, softplus. Default ("sigmoid", "tanh", "tanh").
        coupled_gates: forget gate = 1 - f(z_i) (CIFG, ONNX input_forget). The z_f rows of the
            weights keep nn.LSTM's shape so state dicts stay compatible; they are unused and
            get zero gradient.
        gates: the gates that exist, a subset of "ifo"; a dropped gate is fixed to 1 (its
            weight rows are unused and get zero gradient). Default "ifo".
        clip: clamp the four gate inputs to [-clip, clip] before activation (ONNX clip).
        cell_clip: clamp c^t to [-cell_clip, cell_clip] after the update (TF1 cell_clip).
        forget_bias: added to the forget part of bias_ih at initialisation. Default 0.
        backend: "auto" (default) or a name from ``lstmkit.backends.BACKENDS``.

    Inputs: ``input, (h_0, c_0), lengths``:
        input: (L, N, I), (N, L, I) if batch_first, (L, I) unbatched, or a PackedSequence.
        h_0: (D * num_layers, N, P or H); c_0: (D * num_layers, N, H). Default zeros.
        lengths: (N,) integers in [0, L], for padded input only (ONNX sequence_lens):
            outputs past a sequence's length are 0 and its final state is the state at its
            last valid step; a reverse direction starts at that step. A length of 0 returns
            zero outputs and the initial state unchanged.

    Outputs: ``output, (h_n, c_n)``:
        output: (L, N, D * (P or H)) (or batch_first, unbatched, or packed as the input);
        h_n: (D * num_layers, N, P or H); c_n: (D * num_layers, N, H).

    Example:
        >>> import torch, lstmkit
        >>> _ = torch.manual_seed(0)
        >>> lstm = lstmkit.LSTM(10, 20, num_layers=2, peephole="diagonal")
        >>> output, (h_n, c_n) = lstm(torch.randn(5, 3, 10))
        >>> output.shape, h_n.shape, c_n.shape
        (torch.Size([5, 3, 20]), torch.Size([2, 3, 20]), torch.Size([2, 3, 20]))
        >>> reference = torch.nn.LSTM(10, 20)
        >>> same = lstmkit.LSTM.from_torch(reference)
        >>> x = torch.randn(5, 3, 10)
        >>> torch.allclose(same(x)[0], reference(x)[0], atol=1e-6)
        True
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
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
        backend: str = "auto",
    ) -> None:
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(proj_size, bool) or not isinstance(proj_size, int) or proj_size < 0:
            raise ValueError(f"proj_size must be a non-negative integer, got {proj_size!r}")
        if proj_size >= hidden_size:
            raise ValueError(f"proj_size must be smaller than hidden_size ({hidden_size}), got {proj_size}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout <= 1:
            raise ValueError(f"dropout must be a number in [0, 1], got {dropout!r}")
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                "dropout option adds dropout after all but last recurrent layer, so non-zero dropout expects "
                f"num_layers greater than 1, but got dropout={dropout} and num_layers={num_layers}", stacklevel=2)
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.bidirectional = bool(bias), bool(batch_first), bool(bidirectional)
        self.dropout, self.proj_size = float(dropout), proj_size
        self.backend = backends.check_backend(backend)
        self._init_options(
            hidden_size, bias, forget_bias, peephole=peephole, activations=activations,
            coupled_gates=coupled_gates, gates=gates, clip=clip, cell_clip=cell_clip,
        )
        factory = {"device": device, "dtype": dtype}
        directions = 2 if bidirectional else 1
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else (proj_size or hidden_size) * directions
            for suffix in self._suffixes(layer):
                self._add_parameters(suffix, layer_input, hidden_size, proj_size, bias, factory)
        self.reset_parameters()

    def _suffixes(self, layer: int) -> tuple[str, ...]:
        return (f"_l{layer}",) + ((f"_l{layer}_reverse",) if self.bidirectional else ())

    @property
    def _flat_weights_names(self) -> list[str]:
        return [name for name, _ in self.named_parameters()]

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        """Parameters per layer and direction, as torch.nn.LSTM.all_weights."""
        return [
            [p for name, p in self.named_parameters() if name.endswith(suffix)]
            for layer in range(self.num_layers)
            for suffix in self._suffixes(layer)
        ]

    def flatten_parameters(self) -> None:
        """No-op, for code written for torch.nn.LSTM (lstmkit keeps no flat cuDNN buffer)."""

    @classmethod
    def from_torch(cls, module: nn.LSTM, **options) -> LSTM:
        """An lstmkit.LSTM with ``module``'s arguments and weights, plus lstmkit ``options``.

        Peephole weights, if asked for, start at zero, so the result first computes what
        ``module`` does (for options that leave the vanilla cell unchanged at that point).
        """
        if not isinstance(module, nn.LSTM):
            raise TypeError(f"module must be a torch.nn.LSTM, got {type(module).__name__}")
        p = next(module.parameters())
        new = cls(
            module.input_size, module.hidden_size, module.num_layers, module.bias, module.batch_first,
            module.dropout, module.bidirectional, module.proj_size, device=p.device, dtype=p.dtype, **options,
        )
        new._load_from_torch(module)
        return new

    def to_torch(self) -> nn.LSTM:
        """The equivalent torch.nn.LSTM (vanilla variant only)."""
        self._check_torch_compatible("torch.nn.LSTM")
        p = next(self.parameters())
        module = nn.LSTM(
            self.input_size, self.hidden_size, self.num_layers, self.bias, self.batch_first, self.dropout,
            self.bidirectional, self.proj_size, device=p.device, dtype=p.dtype,
        )
        module.load_state_dict(self.state_dict())
        return module.train(self.training)

    @classmethod
    def from_onnx_node(cls, node, initializers, **options):
        """The lstmkit module for one ONNX LSTM node: see :func:`lstmkit.onnx.from_onnx_node`
        (needs ``pip install "lstmkit[onnx]"``). direction="reverse" gives a ReverseLSTM."""
        from .onnx import from_onnx_node

        return from_onnx_node(node, initializers, **options)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        for name, default in (("proj_size", 0), ("num_layers", 1), ("bias", True), ("batch_first", False),
                              ("dropout", 0.0), ("bidirectional", False), ("backend", "auto")):  # nn.LSTM's order
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)!r}"
        options = self.variant_repr()
        return s + (", " + options if options else "")

    def forward(self, input, hx=None, lengths=None):
        if torch.jit.is_tracing() and torch.onnx.is_in_onnx_export():  # torch.onnx.export: ONNX LSTM nodes
            from .onnx.symbolic import export_forward

            return export_forward(self, input, hx, lengths)
        if isinstance(input, PackedSequence) and torch.compiler.is_compiling():
            # as it is, between graphs: Dynamo of torch 2.5 and 2.6 cannot trace pad_packed_sequence
            return torch.compiler.disable(self._forward)(input, hx, lengths)
        return self._forward(input, hx, lengths)

    def _forward(self, input, hx, lengths):
        weight = self.weight_ih_l0
        amp = autocast_dtype(weight.device, weight.dtype)
        dtypes = accepted_dtypes(weight.dtype, amp)
        x, h0, c0, lengths, unbatched = self._prepare(input, hx, lengths, dtypes, weight.device)
        if lengths is not None:  # padding is never read: inf or nan there cannot reach outputs or gradients
            valid = torch.arange(x.shape[0], device=x.device)[:, None] < lengths  # (T, B)
            x = torch.where(valid[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device))
        packed = isinstance(input, PackedSequence)
        if amp is None:
            output, h_n, c_n = self._run_layers(x, h0, c0, lengths)
        else:  # autocast: computed in the module's dtype, returned in the dtypes nn.LSTM returns there
            out_dtypes = self._autocast_dtypes(amp, x.device, packed, h0.dtype, c0.dtype)
            output, h_n, c_n = self._run_layers(x.to(weight.dtype), h0.to(weight.dtype), c0.to(weight.dtype), lengths)
            output, h_n, c_n = (t.to(dtype) for t, dtype in zip((output, h_n, c_n), out_dtypes))

        if packed:  # back to the caller's PackedSequence layout (batch_sizes, sorted order)
            order = input.sorted_indices
            if order is not None:
                output = output.index_select(1, order)
            packed_lengths = lengths.cpu() if order is None else lengths.cpu()[order.cpu()]
            data = pack_padded_sequence(output, packed_lengths, enforce_sorted=True).data
            output = PackedSequence(data, input.batch_sizes, order, input.unsorted_indices)
        elif unbatched:
            output, h_n, c_n = output.squeeze(1), h_n.squeeze(1), c_n.squeeze(1)
        elif self.batch_first:
            output = output.transpose(0, 1)
        return output, (h_n, c_n)

    def _autocast_dtypes(self, amp, device, packed, h0_dtype, c0_dtype) -> tuple[torch.dtype, ...]:
        """The dtypes of (output, h_n, c_n) that nn.LSTM returns under autocast."""
        if device.type == "cuda":  # cuDNN's autocast wrapper casts all of them to float16
            return (torch.float16,) * 3
        if packed and not self.proj_size:  # nn.LSTM does not autocast there: the states' dtype
            return (torch.promote_types(h0_dtype, c0_dtype),) * 3
        return amp, amp, c0_dtype if self.proj_size else amp

    def _prepare(self, input, hx, lengths, dtypes, device):
        """Check the inputs (of ``dtypes``, on the module's ``device``); return time-major x (T, B, I),
        h0, c0 (D*num_layers, B, .), lengths (B,) or None, and whether the input was unbatched."""
        unbatched = False
        if isinstance(input, PackedSequence):
            if lengths is not None:
                raise ValueError("lengths: a PackedSequence carries its own lengths; pass lengths only with a padded tensor")
            check_floating("input", input.data, dtypes, device)
            x, lengths = pad_packed_sequence(input)  # (T, B, I) in the caller's batch order
        else:
            check_floating("input", input, dtypes, device)
            if input.dim() not in (2, 3):
                raise ValueError(f"input must be 2-D (L, I) unbatched or 3-D batched, got shape {tuple(input.shape)}")
            unbatched = input.dim() == 2
            x = input.unsqueeze(1) if unbatched else (input.transpose(0, 1) if self.batch_first else input)
        if x.shape[-1] != self.input_size:
            raise ValueError(f"input: expected {self.input_size} features (input_size), got {x.shape[-1]}")
        steps, batch = x.shape[0], x.shape[1]
        lengths = self._check_lengths(lengths, steps, batch, x.device)
        h0, c0 = self._initial_state(hx, batch, unbatched, x, dtypes)
        return x, h0, c0, lengths, unbatched

    def _check_lengths(self, lengths, steps: int, batch: int, device: torch.device) -> torch.Tensor | None:
        if lengths is None:
            return None
        if not isinstance(lengths, torch.Tensor):
            try:
                lengths = torch.as_tensor(lengths)
            except (TypeError, ValueError, RuntimeError) as error:
                raise TypeError(f"lengths must be a 1-D tensor or sequence of integers, got {lengths!r}") from error
        if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
            raise TypeError(f"lengths must hold integers, got dtype {lengths.dtype}")
        if lengths.shape != (batch,):
            raise ValueError(f"lengths must have shape ({batch},) (one length per sequence), got {tuple(lengths.shape)}")
        span = _min_max(lengths) if batch else None
        if span is not None:
            lo, hi = span
            if lo < 0:
                raise ValueError(f"lengths must be >= 0, got {lo}")
            if hi > steps:
                raise ValueError(f"lengths must be <= the sequence length {steps}, got {hi}")
        return lengths.to(device=device, dtype=torch.int64)

    def _initial_state(self, hx, batch: int, unbatched: bool, x: torch.Tensor, dtypes):
        layers = self.num_layers * (2 if self.bidirectional else 1)
        h_out = self.proj_size or self.hidden_size
        if hx is None:
            return x.new_zeros(layers, batch, h_out), x.new_zeros(layers, batch, self.hidden_size)
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError("hx must be a tuple (h_0, c_0)")
        states = []
        for name, state, size in (("h_0", hx[0], h_out), ("c_0", hx[1], self.hidden_size)):
            check_floating(name, state, dtypes, x.device)
            expected = (layers, size) if unbatched else (layers, batch, size)
            check_shape(name, state, expected, "(D*num_layers, [N,] H_out)" if name == "h_0" else "(D*num_layers, [N,] H)")
            states.append(state.unsqueeze(1) if unbatched else state)
        return states

    def _run_layers(self, x, h0, c0, lengths):
        recurrence = backends.select(self.backend, x.device, self.variant)
        params = self._parameters

        def weight(name):  # as an attribute where parametrizations, pruning or weight drop replaced it
            found = params.get(name)
            return found if found is not None else getattr(self, name)

        peephole = self.variant.peephole_parameter(self.hidden_size)  # (name, shape) or None
        h_n, c_n = [], []
        layer_input = x
        for layer in range(self.num_layers):
            outputs = []
            for direction, suffix in enumerate(self._suffixes(layer)):
                index = layer * len(self._suffixes(layer)) + direction
                bias = weight(f"bias_ih{suffix}") + weight(f"bias_hh{suffix}") if self.bias else None
                y, h, c = recurrence(  # the backend projects layer_input (T, B, I) by W = weight_ih itself
                    layer_input, h0[index], c0[index], weight(f"weight_hh{suffix}"), self.variant,
                    peephole_weight=weight(f"{peephole[0]}{suffix}") if peephole else None,
                    weight_hr=weight(f"weight_hr{suffix}") if self.proj_size else None,
                    lengths=lengths, reverse=direction == 1, bias=bias, weight_ih=weight(f"weight_ih{suffix}"),
                )
                outputs.append(y)
                h_n.append(h)
                c_n.append(c)
            layer_input = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        return layer_input, torch.stack(h_n), torch.stack(c_n)  # copies: h_n.detach_() must work


def _min_max(lengths: torch.Tensor) -> tuple[int, int] | None:
    """The smallest and largest length, or None under vmap, which batches them out of sight (and
    while Dynamo traces a torch.func transform)."""
    transformed = torch._C._are_functorch_transforms_active()
    if transformed and torch.compiler.is_compiling():
        return None
    try:
        lo, hi = (int(v) for v in torch.aminmax(lengths))
    except RuntimeError:
        if transformed:
            return None
        raise
    return lo, hi
