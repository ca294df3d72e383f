"""Comparison helpers shared by the tests."""

import torch

# SPEC section 4: relative error in the norm ||out - ref|| / ||ref||.
TOLERANCE = {
    torch.float64: {"forward": 1e-10, "grad": 1e-10},
    torch.float32: {"forward": 1e-5, "grad": 1e-4},
    torch.bfloat16: {"forward": 1e-2, "grad": 1e-2},
    torch.float16: {"forward": 1e-2, "grad": 1e-2},
}


def ran_the_kernel(tensor) -> bool:
    """Whether the fused CPU kernel's autograd node is in ``tensor``'s graph."""
    nodes, seen = [tensor.grad_fn], set()
    while nodes:
        node = nodes.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ == "FusedRecurrenceBackward":
            return True
        nodes.extend(n for n, _ in node.next_functions)
    return False


def relative_error(actual, expected) -> float:
    actual = torch.as_tensor(actual).detach().to("cpu", torch.float64)
    expected = torch.as_tensor(expected).detach().to("cpu", torch.float64)
    scale = expected.norm().item()
    diff = (actual - expected).norm().item()
    return diff / scale if scale > 0 else diff


def assert_close(actual, expected, tol: float, what: str = "") -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    err = relative_error(actual, expected)
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:.1g}"


def reference_lstm(module, x, h0, c0, lengths, grad_output, grad_h_n, grad_c_n):
    """lstmkit.reference (float64, one layer and direction) composed into ``module``'s layers
    and directions, forward and backward. Time-major tensors; dropout must be 0.

    Returns (output, h_n, c_n, grads) as float64 tensors; grads maps parameter names and
    "input", "h_0", "c_0" to gradients.
    """
    import numpy as np

    from lstmkit import reference

    def np64(t):
        return None if t is None else t.detach().double().cpu().numpy()

    params = {name: np64(p) for name, p in module.named_parameters()}
    directions = 2 if module.bidirectional else 1
    suffixes = ["_reverse" if d else "" for d in range(directions)]
    peep = module.variant.peephole_parameter(module.hidden_size)
    h0, c0, lengths = np64(h0), np64(c0), None if lengths is None else np.asarray(lengths)
    layer_input, caches, h_n, c_n = np64(x), [], [], []
    for layer in range(module.num_layers):
        outputs = []
        for d, rev in enumerate(suffixes):
            s = f"_l{layer}{rev}"
            bias = params[f"bias_ih{s}"] + params[f"bias_hh{s}"] if module.bias else None
            y, h, c, cache = reference.forward(
                layer_input, params[f"weight_ih{s}"], params[f"weight_hh{s}"], bias,
                h0[layer * directions + d], c0[layer * directions + d], module.variant,
                peephole_weight=params.get(f"{peep[0]}{s}") if peep else None,
                weight_hr=params.get(f"weight_hr{s}"), lengths=lengths, reverse=d == 1,
            )
            outputs.append(y)
            h_n.append(h)
            c_n.append(c)
            caches.append((s, cache))
        layer_input = np.concatenate(outputs, axis=-1)

    grads = {}
    grad_h_n, grad_c_n = np64(grad_h_n), np64(grad_c_n)
    grad_h0, grad_c0 = np.zeros_like(h0), np.zeros_like(c0)
    grad_layer = np64(grad_output)
    for layer in reversed(range(module.num_layers)):
        grad_below = 0.0
        pieces = np.split(grad_layer, directions, axis=-1)
        for d in range(directions):
            index = layer * directions + d
            s, cache = caches[index]
            g = reference.backward(cache, pieces[d], grad_h_n[index], grad_c_n[index])
            grads[f"weight_ih{s}"], grads[f"weight_hh{s}"] = g["weight_ih"], g["weight_hh"]
            if module.bias:
                grads[f"bias_ih{s}"] = grads[f"bias_hh{s}"] = g["bias"]
            if peep:
                grads[f"{peep[0]}{s}"] = g["peephole_weight"]
            if g["weight_hr"] is not None:
                grads[f"weight_hr{s}"] = g["weight_hr"]
            grad_h0[index], grad_c0[index] = g["h0"], g["c0"]
            grad_below = grad_below + g["x"]
        grad_layer = grad_below
    grads.update(input=grad_layer, h_0=grad_h0, c_0=grad_c0)
    to_t = torch.from_numpy
    return to_t(layer_input), to_t(np.stack(h_n)), to_t(np.stack(c_n)), {k: to_t(v) for k, v in grads.items()}
