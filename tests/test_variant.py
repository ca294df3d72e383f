"""The shared variant description: normalisation and validation."""

import pytest

from lstmkit.variant import Activation, Variant


def test_default_is_vanilla_and_hashable():
    assert Variant.create().is_vanilla and Variant() == Variant.create(gates="oif")
    assert not Variant.create(peephole="diagonal").is_vanilla
    assert len({Variant(), Variant.create(), Variant.create(clip=1)}) == 2


def test_activation_parameters_resolve_to_onnx_defaults():
    assert Activation.parse("hard_sigmoid") == Activation("hard_sigmoid", 0.2, 0.5)
    assert Activation.parse(("leaky_relu", 0.3)) == Activation("leaky_relu", 0.3, None)
    assert Activation.parse(("affine", 2)) == Activation("affine", 2.0, 0.0)


@pytest.mark.parametrize("spec, error", [(("elu", float("nan")), ValueError), (("affine", "x"), ValueError),
                                         (3, TypeError), (("sigmoid", 1.0), ValueError)])
def test_bad_activation(spec, error):
    with pytest.raises(error, match="activations"):
        Activation.parse(spec)


def test_coupled_gates_may_drop_the_output_gate():
    assert Variant.create(coupled_gates=True, gates="if").gates == "if"
