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
    assert default.momentum == keras.layers.BatchNormalization().momentum == 0.99
    assert default.epsilon == 1e-3


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


@pytest.mark.parametrize("arguments, message", [
    ({"input_shape": (8, 8)}, r"^input_shape=\(8, 8\): build_mlp takes flat examples; pass input_shape=\(64,\) "
                              r"and reshape the data to \(n, 64\)$"),
    ({"input_shape": "64"}, r"^input_shape='64': give the width of one flat example, e\.g\. input_shape=\(64,\)$"),
    ({"hidden_units": "100"}, r"^hidden_units='100': give the width of each hidden layer, at least one,"),
    ({"hidden_units": 100}, r"^hidden_units=100: .*e\.g\. hidden_units=\(100, 100\)$"),
    ({"hidden_units": ()}, r"^hidden_units=\(\): give the width of each hidden layer, at least one"),
    ({"hidden_units": (100, 0)}, r"^hidden_units=\(100, 0\): .*positive integers"),
    ({"num_classes": 0}, r"^num_classes=0: give an integer >= 2, e\.g\. num_classes=10$"),
    ({"num_classes": 1}, r"^num_classes=1: give an integer >= 2"),  # one softmax logit has loss 0
    ({"bn_momentum": 2}, r"^bn_momentum=2: give a finite number in \[0, 1\], e\.g\. bn_momentum=0\.99$"),
    ({"bn_epsilon": -1e-3}, r"^bn_epsilon=-0\.001: give a finite number in \[0, inf\]"),
    ({"activation": "lrelu", "leaky_slope": "x"}, r"^leaky_slope='x': give a finite number, e\.g\. leaky_slope"),
    ({"seed": None}, r"^seed=None: give an integer, e\.g\. seed=0; for a fresh network, seed=random\.randrange"),
    ({"seed": 1.5}, r"^seed=1\.5: give an integer"),
    ({"seed": True}, r"^seed=True: give an integer"),
    ({"kernel_initializer": "glorotx"}, r"^kernel_initializer='glorotx': unknown initializer; choose one of: "
                                        r"course, glorot, he, a Keras initializer name such as 'he_normal'"),
    ({"logits_initializer": [0.1]}, r"^logits_initializer=\[0\.1\]: give an initializer name, a std"),
    ({"kernel_initializer": -1}, r"^kernel_initializer=-1: a truncated normal's std must be a finite positive"),
    ({"kernel_initializer": float("inf")}, r"^kernel_initializer=inf: a truncated normal's std must be"),
    ({"logits_initializer": float("nan")}, r"^logits_initializer=nan: a truncated normal's std must be"),
    ({"activation": 3}, r"^unknown activation 3; choose one of: .*, or a callable such as keras\.activations\.gelu$"),
])
def test_that_each_bad_argument_gets_one_line_naming_it_and_the_fix(arguments, message):
    with pytest.raises(tfbn.errors.ConfigError, match=message):
        tfbn.build_mlp(**arguments)


def test_that_hidden_units_may_be_a_numpy_array():
    widths = [layer.units for layer in tfbn.build_mlp(64, 10, np.array([7, 5])).layers[1:]
              if isinstance(layer, keras.layers.Dense)]
    assert widths == [7, 5, 10]


def test_that_an_integer_input_shape_is_the_width_of_a_flat_example():
    model = tfbn.build_mlp(64, 10, HIDDEN, seed=np.int64(2))
    assert model.input_shape == (None, 64)
    reference = tfbn.build_mlp((64,), 10, HIDDEN, seed=2).get_layer("dense_1").kernel.numpy()
    assert model.get_layer("dense_1").kernel.numpy().tobytes() == reference.tobytes()


@pytest.mark.parametrize("initializer", [
    "he", "he_normal", "HeNormal", keras.initializers.HeNormal, keras.initializers.HeNormal(seed=99)])
def test_that_a_keras_initializer_by_name_class_or_object_draws_with_each_layers_seed(initializer):
    model = tfbn.build_mlp((20,), 3, HIDDEN, bn="after", seed=5, kernel_initializer=initializer)
    for i, (name, shape) in enumerate([("dense_1", (20, 16)), ("dense_2", (16, 8)), ("logits", (8, 3))], start=1):
        expected = keras.initializers.HeNormal(seed=5 + i)(shape).numpy()
        assert model.get_layer(name).kernel.numpy().tobytes() == expected.tobytes()


def test_that_an_initializer_without_a_seed_is_used_as_it_is():
    model = tfbn.build_mlp((20,), 3, HIDDEN, kernel_initializer="glorot",
                           logits_initializer=keras.initializers.Zeros())
    assert not model.get_layer("logits").kernel.numpy().any()
    limit = np.sqrt(6 / (20 + 16))  # Glorot uniform on dense_1
    kernel = model.get_layer("dense_1").kernel.numpy()
    assert np.abs(kernel).max() <= limit and kernel.std() == pytest.approx(limit / np.sqrt(3), rel=0.1)


def test_that_an_activation_callable_is_the_nonlinearity_of_every_block():
    x = np.random.default_rng(0).normal(size=(5, 20)).astype("float32")
    by_name = tfbn.build_mlp((20,), 3, HIDDEN, "relu", "after", seed=1)
    by_callable = tfbn.build_mlp((20,), 3, HIDDEN, keras.activations.relu, "after", seed=1)
    np.testing.assert_array_equal(by_callable(x), by_name(x))
    doubled = tfbn.build_mlp((20,), 3, HIDDEN, lambda t: 2 * t, "none", seed=1)
    linear = tfbn.build_mlp((20,), 3, HIDDEN, "linear", "none", seed=1)
    hidden = keras.Model(linear.input, linear.get_layer("act_2").output)
    hidden_doubled = keras.Model(doubled.input, doubled.get_layer("act_2").output)
    np.testing.assert_allclose(hidden_doubled(x), 4 * hidden(x), rtol=1e-5)
