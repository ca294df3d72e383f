"""The PyTorch activations against the reference's independent NumPy forms and PyTorch built-ins."""

import numpy as np
import pytest
import torch

from lstmkit import reference
from lstmkit.activations import torch_activation
from lstmkit.variant import ACTIVATION_DEFAULTS, Activation


@pytest.mark.parametrize("name", sorted(ACTIVATION_DEFAULTS))
def test_values_and_derivatives_match_the_reference(name):
    act = Activation.parse((name, 0.7, 0.3)[: 1 + sum(d is not None for d in ACTIVATION_DEFAULTS[name])])
    x = torch.linspace(-30, 30, 2001, dtype=torch.float64).requires_grad_()  # avoids the kinks at 0, 0.7, ...
    x = (x + 1e-3).detach().requires_grad_()
    y = torch_activation(act)(x)
    y.sum().backward()
    fn, deriv = reference.ACTIVATIONS[name]
    expected = fn(x.detach().numpy(), act.alpha, act.beta)
    np.testing.assert_allclose(y.detach().numpy(), expected, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(x.grad.numpy(), deriv(x.detach().numpy(), act.alpha, act.beta), rtol=1e-12, atol=1e-15)


def test_onnx_defaults_and_builtin_equivalents():
    x = torch.linspace(-5, 5, 101, dtype=torch.float64)
    act = {name: torch_activation(Activation.parse(name)) for name in ACTIVATION_DEFAULTS}
    assert torch.allclose(act["hard_sigmoid"](x), torch.clamp(0.2 * x + 0.5, 0, 1))
    assert torch.allclose(act["leaky_relu"](x), torch.nn.functional.leaky_relu(x, 0.01))
    assert torch.allclose(act["elu"](x), torch.nn.functional.elu(x))
    assert torch.allclose(act["softplus"](x), torch.log1p(torch.exp(x)))
    assert torch.allclose(act["thresholded_relu"](x), torch.where(x > 1.0, x, 0.0))
    assert torch.equal(act["identity"](x), x) and torch.equal(act["affine"](x), x)
    assert torch.allclose(act["scaled_tanh"](x), torch.tanh(x))


@pytest.mark.parametrize("spelling, name", [("HardSigmoid", "hard_sigmoid"), ("linear", "identity"),
                                            ("LeakyRelu", "leaky_relu"), ("Tanh", "tanh")])
def test_onnx_and_lecture_spellings(spelling, name):
    assert Activation.parse(spelling).name == name
