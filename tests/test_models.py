import keras
import numpy as np
import pytest

import tfbn
from tfbn.config import load_config
from tfbn.data import load_data
from tfbn.training import build_model

from helpers import QUICKSTART

HIDDEN = (16, 8)


def layer_kinds(model):
    return [(layer.name, type(layer).__name__) for layer in model.layers[1:]]


@pytest.mark.parametrize("bn, expected", [
    ("before", ["dense_1:Dense", "bn_1:BatchNormalization", "act_1:Activation",
                "dense_2:Dense", "bn_2:BatchNormalization", "act_2:Activation", "logits:Dense"]),
    ("after", ["dense_1:Dense", "act_1:Activation", "bn_1:BatchNormalization",
               "dense_2:Dense", "act_2:Activation", "bn_2:BatchNormalization", "logits:Dense"]),
    ("none", ["dense_1:Dense", "act_1:Activation", "dense_2:Dense", "act_2:Activation",
              "logits:Dense"]),
])
def test_that_blocks_come_in_the_order_of_the_bn_placement(bn, expected):
    model = tfbn.build_mlp((20,), 3, HIDDEN, "sigmoid", bn)
    assert [f"{n}:{k}" for n, k in layer_kinds(model)] == expected
    assert model.output_shape == (None, 3)


@pytest.mark.parametrize("bn, has_bias", [("before", False), ("after", True), ("none", True)])
def test_that_hidden_dense_layers_drop_the_bias_only_before_bn(bn, has_bias):
    model = tfbn.build_mlp((20,), 3, HIDDEN, "relu", bn)
    for i in (1, 2):
        assert model.get_layer(f"dense_{i}").use_bias is has_bias
    assert model.get_layer("logits").use_bias


def test_that_bn_layers_take_the_configured_momentum_and_epsilon():
    model = tfbn.build_mlp((20,), 3, HIDDEN, bn="after", bn_momentum=0.9, bn_epsilon=1e-5)
    for i in (1, 2):
        layer = model.get_layer(f"bn_{i}")
        assert layer.momentum == 0.9 and layer.epsilon == 1e-5
    default = tfbn.build_mlp((20,), 3, HIDDEN).get_layer("bn_1")
    assert default.momentum == 0.999 and default.epsilon == 1e-3


def test_that_lrelu_uses_the_configured_slope():
    model = tfbn.build_mlp((4,), 2, (4,), "lrelu", "none", leaky_slope=0.3)
    layer = model.get_layer("act_1")
    assert isinstance(layer, keras.layers.LeakyReLU)
    np.testing.assert_allclose(layer(np.array([[-1.0, 2.0]], "float32")), [[-0.3, 2.0]], rtol=1e-6)
    assert tfbn.build_mlp((4,), 2, (4,), "lrelu").get_layer("act_1").negative_slope == 0.2


def test_that_one_seed_gives_identical_kernels_whatever_the_bn_placement():
    kernels = {}
    for bn in ("none", "before", "after"):
        for activation in ("sigmoid", "relu"):
            model = tfbn.build_mlp((64,), 10, (100, 100, 100), activation, bn, seed=7)
            kernels[bn, activation] = [model.get_layer(n).kernel.numpy()
                                       for n in ("dense_1", "dense_2", "dense_3", "logits")]
    reference = kernels["none", "sigmoid"]
    for arm in kernels.values():
        for a, b in zip(arm, reference):
            assert a.tobytes() == b.tobytes()
    other_seed = tfbn.build_mlp((64,), 10, (100, 100, 100), seed=8).get_layer("dense_1").kernel
    assert not np.array_equal(other_seed.numpy(), reference[0])


def test_that_kernels_follow_a_truncated_normal_with_std_sqrt_2_over_fan_in():
    kernel = tfbn.build_mlp((784,), 10, (100,), seed=0).get_layer("dense_1").kernel.numpy()
    bound = 2 * np.sqrt(2 / 784)
    assert np.abs(kernel).max() <= bound
    # A normal truncated at two std has std 0.8796 of the untruncated one.
    np.testing.assert_allclose(kernel.std(), 0.8796 * np.sqrt(2 / 784), rtol=0.02)


def test_that_an_unknown_activation_or_placement_names_the_choices():
    with pytest.raises(ValueError, match="unknown activation 'swish'.*lrelu, relu, sigmoid"):
        tfbn.build_mlp(activation="swish")
    with pytest.raises(ValueError, match="unknown bn 'middle'.*none, before, after"):
        tfbn.build_mlp(bn="middle")


def test_that_renorm_puts_batch_renormalization_before_the_activation_without_bias():
    model = tfbn.build_mlp((20,), 3, HIDDEN, "sigmoid", "renorm", bn_momentum=0.99)
    assert [f"{n}:{k}" for n, k in layer_kinds(model)][:3] == [
        "dense_1:Dense", "bn_1:BatchRenormalization", "act_1:Activation"]
    assert not model.get_layer("dense_1").use_bias
    assert model.get_layer("bn_2").momentum == 0.99


def test_that_synchronized_statistics_reach_keras_batch_normalization():
    model = tfbn.build_mlp((20,), 3, HIDDEN, bn="after", bn_synchronized=True)
    assert model.get_layer("bn_1").synchronized
    assert not tfbn.build_mlp((20,), 3, HIDDEN, bn="after").get_layer("bn_1").synchronized


def test_that_the_config_chooses_the_hidden_and_the_logits_initializers():
    data = load_data(load_config(QUICKSTART).data)
    course = build_model(load_config(QUICKSTART), data)
    chosen = build_model(load_config(QUICKSTART, ["model.initializer=glorot",
                                                  "model.logits_initializer=0.5"]), data)
    # Glorot uniform on dense_2 (100 -> 100): bounded by sqrt(6 / 200), spread evenly.
    kernel = chosen.get_layer("dense_2").kernel.numpy()
    limit = np.sqrt(6 / 200)
    assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.99 * limit
    assert kernel.std() == pytest.approx(limit / np.sqrt(3), rel=0.02)
    # A truncated normal of std 0.5 (beyond two std redrawn) on the logits: std 0.5 * 0.880.
    logits = chosen.get_layer("logits").kernel.numpy()
    assert np.abs(logits).max() <= 1.0 and logits.std() == pytest.approx(0.5 * 0.8796, rel=0.05)
    # The default is the course project's, on every layer including the logits.
    default = course.get_layer("logits").kernel.numpy()
    assert default.std() == pytest.approx(np.sqrt(2 / 100) * 0.8796, rel=0.1)
    he = tfbn.models.initializer_from("he")(100, 3)((100, 100)).numpy()
    assert he.std() == pytest.approx(np.sqrt(2 / 100), rel=0.03)  # rescaled after truncation


def test_that_an_unknown_initializer_names_the_choices():
    with pytest.raises(tfbn.errors.ConfigError, match="course, glorot, he"):
        tfbn.models.initializer_from("xavier")
