import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfbn
from tfbn.noise import DistributionShift
from tfbn.renorm import BatchRenormalization
import tfbn.instruments
import tfbn.models
from tfbn.instruments import (gradient_norms, jacobian_singular_values,
                              jacobian_singular_values_autodiff, preactivations,
                              preactivations_function, spectrum_statistics)
from tfbn.models import ACTIVATIONS, BN_PLACEMENTS


def small_mlp(activation="tanh", bn="before", **kwargs):
    """3 inputs -> 5 -> 4 -> 4 classes: every Gram-matrix branch of the fast path runs.

    Block 1 is wider than its input (J^T J), block 2 narrower (J J^T), and the
    network has more outputs than inputs.
    """
    return tfbn.build_mlp((3,), 4, (5, 4), activation, bn, seed=1, **kwargs)


def randomize_bn(model, seed=0):
    """Gives every BN layer gamma, beta and moving statistics away from their initial values."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, (keras.layers.BatchNormalization, BatchRenormalization)):
            n = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 2.0, n))
            layer.beta.assign(rng.normal(0, 0.5, n))
            layer.moving_mean.assign(rng.normal(0, 0.5, n))
            variance = rng.uniform(0.3, 3.0, n)
            if isinstance(layer, BatchRenormalization):
                layer.moving_stddev.assign(np.sqrt(variance + layer.epsilon))
            else:
                layer.moving_variance.assign(variance)


def batch(n=16, features=3, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, features)).astype("float32"), rng.integers(0, classes, n)


def compile_for_sgd_or_adam(model, optimizer):
    model.compile(keras.optimizers.get({"class_name": optimizer, "config": {"learning_rate": 0.1}}),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))


class CompareRecordedGradients(keras.callbacks.Callback):
    """Before each step, computes the gradient norms by a separate tape; after it, reads the record."""

    def __init__(self, x, y, batch_size):
        super().__init__()
        self.x, self.y, self.batch_size = x, y, batch_size
        self.pairs = []

    def on_train_batch_begin(self, batch, logs=None):
        part = slice(batch * self.batch_size, (batch + 1) * self.batch_size)
        self.expected = gradient_norms(self.model, self.x[part], self.y[part])

    def on_train_batch_end(self, batch, logs=None):
        recorded = {name: np.linalg.norm(v.numpy()) for name, v in self.model.kernel_gradients.items()}
        self.pairs.append((recorded, self.expected))


@pytest.mark.parametrize("optimizer", ["SGD", "Adam"])
@pytest.mark.parametrize("bn", BN_PLACEMENTS)
def test_that_the_train_step_records_the_gradients_a_separate_tape_computes(bn, optimizer):
    model = tfbn.build_mlp((12,), 4, (8, 6), "sigmoid", bn, seed=2)
    compile_for_sgd_or_adam(model, optimizer)
    x, y = batch(48, 12)
    compare = CompareRecordedGradients(x, y, 16)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[compare])
    assert len(compare.pairs) == 3
    for recorded, expected in compare.pairs:
        assert recorded.keys() == expected.keys() == {"dense_1", "dense_2", "logits"}
        for name in expected:
            np.testing.assert_allclose(recorded[name], expected[name], rtol=1e-5)
    # Each step records its own gradient, not the first one's.
    assert compare.pairs[0][0]["dense_1"] != compare.pairs[2][0]["dense_1"]


def test_that_gradient_norms_leave_bn_moving_statistics_untouched():
    model = small_mlp()
    randomize_bn(model)
    before = [v.numpy() for v in model.non_trainable_variables]
    gradient_norms(model, *batch())
    for a, b in zip(before, model.non_trainable_variables):
        np.testing.assert_array_equal(a, b.numpy())


@pytest.mark.parametrize("mode", ["inference", "batch"])
@pytest.mark.parametrize("bn", BN_PLACEMENTS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_that_fast_singular_values_equal_the_svd_of_the_autodiff_jacobian(activation, bn, mode):
    model = small_mlp(activation, bn)
    randomize_bn(model)
    x, _ = batch()
    fast = jacobian_singular_values(model, x, mode)
    reference = jacobian_singular_values_autodiff(model, x, mode)
    assert fast.keys() == reference.keys() == {"dense_1", "dense_2", "network"}
    assert [fast[k].shape for k in ("dense_1", "dense_2", "network")] == [(16, 3), (16, 4), (16, 3)]
    for name in fast:
        np.testing.assert_allclose(fast[name], reference[name], rtol=1e-4, atol=1e-5)


def test_that_chunks_of_examples_give_the_spectra_of_the_whole_probe(monkeypatch):
    model = small_mlp("softplus", "after")
    randomize_bn(model)
    x, _ = batch(16)
    whole = jacobian_singular_values(model, x, "batch")
    monkeypatch.setattr(tfbn.instruments, "CHUNK", 5)
    chunked = jacobian_singular_values(model, x, "batch")
    for name in whole:
        assert chunked[name].shape == whole[name].shape
        np.testing.assert_allclose(chunked[name], whole[name], rtol=1e-12)


def test_that_the_two_bn_modes_give_different_spectra():
    model = small_mlp("tanh", "before")
    randomize_bn(model)
    x, _ = batch()
    inference = jacobian_singular_values(model, x, "inference")["dense_2"]
    batch_mode = jacobian_singular_values(model, x, "batch")["dense_2"]
    assert np.abs(inference - batch_mode).max() > 0.01


def test_that_orthogonal_kernels_without_nonlinearity_or_bn_are_isometries():
    model = tfbn.build_mlp((16,), 8, (8, 8), "linear", "none",
                           kernel_initializer=lambda fan_in, seed: keras.initializers.Orthogonal(seed=seed))
    x, _ = batch(10, 16)
    for spectra in (jacobian_singular_values(model, x), jacobian_singular_values_autodiff(model, x)):
        for name, values in spectra.items():
            assert values.shape == (10, 8)
            np.testing.assert_allclose(values, 1.0, atol=1e-5)


def test_that_a_dead_relu_unit_gives_an_exact_zero_singular_value():
    model = tfbn.build_mlp((6,), 3, (4,), "relu", "none", seed=0)
    dense = model.get_layer("dense_1")
    dense.bias.assign([-100.0, 0.0, 0.0, 0.0])  # unit 0 never fires
    values = jacobian_singular_values(model, batch(8, 6)[0])["dense_1"]
    np.testing.assert_allclose(values[:, -1], 0.0, atol=1e-7)
    assert values[:, 0].min() > 0.1


@pytest.mark.parametrize("bn", BN_PLACEMENTS)
def test_that_preactivations_are_the_inputs_keras_feeds_each_nonlinearity(bn):
    model = small_mlp("sigmoid", bn)
    randomize_bn(model)
    x, _ = batch(32)
    for layer in model.layers:
        if isinstance(layer, DistributionShift):
            # The probes leave noisy BN's noise out; make Keras's noise the identity to match.
            layer.shift, layer.scale = (0.0, 0.0), (1.0, 1.0)
    taps = keras.Model(model.input, [model.get_layer(f"act_{i}").input for i in (1, 2)])
    for mode, training in (("inference", False), ("batch", True)):
        compiled = preactivations_function(model, x, mode)
        for got in (preactivations(model, x, mode), compiled()):
            # A training-mode call normalizes by the batch's own statistics, as mode "batch" does.
            expected = taps(x, training=training)
            assert list(got) == ["act_1", "act_2"]
            for g, e in zip(got.values(), expected):
                np.testing.assert_allclose(g, e.numpy(), rtol=1e-5, atol=1e-6)


def test_that_compiled_preactivations_measure_the_variables_as_they_are_at_each_call():
    model = small_mlp("tanh", "before")
    x, _ = batch(32)
    compiled = preactivations_function(model, x, "inference")
    first = compiled()
    for variable in model.trainable_variables + [model.get_layer("bn_1").moving_mean]:
        variable.assign(variable * 0.5 + 0.1)
    later = compiled()
    for name in first:
        assert not np.allclose(first[name], later[name])
        np.testing.assert_allclose(later[name], preactivations(model, x, "inference")[name],
                                   rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("mode", ["inference", "batch"])
def test_that_a_block_with_another_normalization_is_differentiated_and_equals_the_reference(mode, monkeypatch):
    # Layer normalization mixes the units of an example: no diagonal gain, the block's own Jacobian.
    inputs = keras.Input((3,))
    x = keras.layers.Dense(4, name="dense_1")(inputs)
    x = keras.layers.LayerNormalization(name="norm")(x)
    x = keras.layers.Activation("tanh", name="act_1")(x)
    model = tfbn.models.MLP(inputs, keras.layers.Dense(2, name="logits")(x))
    x, _ = batch()
    fast = jacobian_singular_values(model, x, mode)
    reference = jacobian_singular_values_autodiff(model, x, mode)
    assert fast.keys() == reference.keys() == {"dense_1", "network"}
    for name in fast:
        np.testing.assert_allclose(fast[name], reference[name], rtol=1e-4, atol=1e-5)
    # Large differentiated Jacobians (here 4 x 3 entries) take fewer examples a chunk: 3 here.
    monkeypatch.setattr(tfbn.instruments, "JACOBIAN_ENTRIES", 40)
    chunked = jacobian_singular_values(model, x, mode)
    for name in fast:
        np.testing.assert_allclose(chunked[name], fast[name], rtol=1e-5, atol=1e-6)  # float32 Jacobians


def test_that_spectrum_statistics_summarise_all_values():
    values = np.array([[0.25, 0.5, 1.0], [2.0, 3.0, 1.0]])
    assert spectrum_statistics(values) == {
        "max": 3.0, "min": 0.25, "mean": 7.75 / 6, "mean_square": 15.3125 / 6,
        "share_0.5_to_2": 4 / 6}


def test_that_gradients_and_spectra_under_a_mirrored_strategy_equal_single_device_ones(tmp_path):
    # Logical devices must be configured before TensorFlow initialises them: a fresh process.
    out = tmp_path / "mirrored.json"
    subprocess.run([sys.executable, __file__, str(out)], check=True, timeout=300)
    result = json.loads(out.read_text())
    assert result["replicas"] == 2
    for name, expected in result["single_gradient_norms"].items():
        np.testing.assert_allclose(result["mirrored_gradient_norms"][name], expected, rtol=1e-5)
    for name, expected in result["single_spectra"].items():
        np.testing.assert_allclose(result["mirrored_spectra"][name], expected, rtol=1e-5, atol=1e-6)


def compare_under_mirrored_strategy(out):
    """Runs one step on two logical CPUs and writes the single-device references next to it.

    Gradients use bn="none": without synchronized BN each replica normalizes
    by its own half of the batch, which would differ from the global batch.
    Spectra use BN with its moving statistics, which are the same everywhere.
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    x, y = batch(16, 12)
    with strategy.scope():
        mirrored = tfbn.build_mlp((12,), 4, (8, 6), "tanh", "none", seed=3)
        compile_for_sgd_or_adam(mirrored, "SGD")
        mirrored_bn = tfbn.build_mlp((12,), 4, (8, 6), "tanh", "before", seed=3)
        randomize_bn(mirrored_bn)
    single = tfbn.build_mlp((12,), 4, (8, 6), "tanh", "none", seed=3)
    single_bn = tfbn.build_mlp((12,), 4, (8, 6), "tanh", "before", seed=3)
    single_bn.set_weights(mirrored_bn.get_weights())
    result = {
        "replicas": strategy.num_replicas_in_sync,
        "single_gradient_norms": gradient_norms(single, x, y),
        "single_spectra": {k: v.tolist() for k, v in jacobian_singular_values(single_bn, x).items()},
        "mirrored_spectra": {k: v.tolist() for k, v in jacobian_singular_values(mirrored_bn, x).items()},
    }
    mirrored.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    result["mirrored_gradient_norms"] = {name: float(np.linalg.norm(v.numpy()))
                                         for name, v in mirrored.kernel_gradients.items()}
    with open(out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    compare_under_mirrored_strategy(sys.argv[1])


def test_that_many_models_compiling_their_preactivations_print_no_retracing_warning(caplog):
    x, _ = batch(16)
    functions = [preactivations_function(small_mlp("tanh", "before"), x, "batch") for _ in range(8)]
    with caplog.at_level("WARNING"):
        for function in functions:
            function()
    assert not [r for r in caplog.records if "retracing" in r.getMessage()]


def test_that_a_public_instrument_called_again_with_the_same_shapes_traces_nothing_new(caplog):
    model = small_mlp("tanh", "before")
    x, _ = batch(16)
    with caplog.at_level("WARNING"):
        for _ in range(6):
            jacobian_singular_values(model, x)
            jacobian_singular_values(model, x, "batch")
            preactivations(model, x)
        # Many models, one call each, as the trials of a study make.
        for seed in range(6):
            jacobian_singular_values(tfbn.build_mlp((3,), 4, (5, 4), "tanh", "before", seed=seed), x)
    assert not [r for r in caplog.records if "retracing" in r.getMessage()]
    for name in ("forward", "spectra"):
        for mode in ("inference", "batch"):
            assert tfbn.instruments._compiled(model, name, mode).experimental_get_tracing_count() == 1
