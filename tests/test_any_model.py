"""The instruments on models that tfbn did not build: a functional CNN with BN and a loss of its
own, a Sequential MLP, and a user's own keras-tuner search; read back from the event files."""

import contextlib

import keras
import keras_tuner as kt
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

import tfbn
from tfbn.data import load_digits

EVERY = 10
X_TRAIN, Y_TRAIN, X_TEST, Y_TEST = load_digits()
IMAGES = X_TRAIN[:320].reshape(-1, 8, 8, 1)
LABELS = Y_TRAIN[:320]
PROBE_X, PROBE_Y = X_TEST[:40].reshape(-1, 8, 8, 1), Y_TEST[:40]


def read_run(run_dir):
    """(scalars, histograms) of a run directory: tag -> {step: value or buckets}, and its event files."""
    accumulator = event_accumulator.EventAccumulator(str(run_dir), size_guidance={"tensors": 0}).Reload()
    scalars, histograms = {}, {}
    for tag in accumulator.Tags()["tensors"]:
        plugin = accumulator.SummaryMetadata(tag).plugin_data.plugin_name
        target = {"scalars": scalars, "histograms": histograms}.get(plugin)  # keras-tuner adds hparams
        if target is not None:
            target[tag] = {e.step: tensor_util.make_ndarray(e.tensor_proto) for e in accumulator.Tensors(tag)}
    return scalars, histograms


@contextlib.contextmanager
def state_kept(model):
    """Training-mode calls inside move BN's moving statistics; they are put back."""
    state = [v.numpy() for v in model.non_trainable_variables]
    yield
    for variable, value in zip(model.non_trainable_variables, state):
        variable.assign(value)


def one_hot_cross_entropy(y, y_pred):
    """A loss of the user's own: cross-entropy of softmax outputs against one-hot labels, smoothed."""
    return keras.losses.categorical_crossentropy(y, y_pred, label_smoothing=0.1)


def cnn():
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(6, 3, padding="same", use_bias=False, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="conv_bn")(x)
    x = keras.layers.Activation("relu", name="conv_relu")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(16, activation="tanh", name="hidden")(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name="digits_cnn")
    model.compile(keras.optimizers.SGD(0.1), one_hot_cross_entropy, metrics=["accuracy"])
    return model


@pytest.fixture(scope="module")
def trained_cnn(tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("cnn")
    model = cnn()
    one_hot = keras.utils.to_categorical(LABELS, 10)
    probe = (PROBE_X, keras.utils.to_categorical(PROBE_Y, 10))
    callbacks = tfbn.callbacks.instruments(str(log_dir), probe=probe, every=EVERY)
    with pytest.WarningsRecorder() as caught:
        model.fit(IMAGES, one_hot, batch_size=32, epochs=2, verbose=0, callbacks=callbacks)
    assert not [w for w in caught if "writes nothing" in str(w.message)]  # every instrument measures
    return model, log_dir, probe


def test_that_the_instruments_of_a_cnn_write_one_event_file_with_their_tags(trained_cnn):
    model, log_dir, _ = trained_cnn
    assert len(list(log_dir.glob("events.out.tfevents.*"))) == 1
    scalars, histograms = read_run(log_dir)
    kernels, blocks = ("conv", "hidden", "probabilities"), ("conv", "hidden", "network")
    nonlinearities = ("conv_relu", "hidden", "probabilities")
    assert {tag for tag in histograms if tag.startswith("weights/")} == (
        {f"weights/values/{k}/kernel" for k in kernels}
        | {f"weights/values/conv_bn/{v}" for v in ("gamma", "beta", "moving_mean", "moving_variance")})
    assert {tag for tag in scalars if tag.startswith("gradients/norm/")} == {
        f"gradients/norm/{k}" for k in kernels}
    assert {tag for tag in histograms if tag.startswith("jacobian/")} == {
        f"jacobian/{b}/singular_values" for b in blocks}
    assert {tag.split("/")[1] for tag in scalars if tag.startswith("percentiles/")} == set(nonlinearities)
    assert {"loss/train", "accuracy/train"} <= set(scalars)
    # 20 steps: written at 0, 10 and 20.
    assert sorted(scalars["weights/norm/conv"]) == sorted(scalars["jacobian/network/max"]) == [0, 10, 20]
    np.testing.assert_allclose(scalars["weights/norm/hidden"][20],
                               np.linalg.norm(model.get_layer("hidden").kernel.numpy()), rtol=1e-6)


def test_that_the_gradient_norms_of_a_cnn_are_those_of_its_compiled_loss(trained_cnn):
    model, log_dir, (x, y) = trained_cnn
    scalars, _ = read_run(log_dir)
    with state_kept(model), tf.GradientTape() as tape:
        loss = tf.reduce_mean(one_hot_cross_entropy(y, model(x, training=True)))
    names = ("conv", "hidden", "probabilities")
    gradients = tape.gradient(loss, [model.get_layer(name).kernel for name in names])
    for name, gradient in zip(names, gradients):
        np.testing.assert_allclose(scalars[f"gradients/norm/{name}"][20], np.linalg.norm(gradient), rtol=1e-4)


def test_that_the_percentiles_of_a_cnn_are_those_of_each_nonlinearitys_input(trained_cnn):
    model, log_dir, (x, _) = trained_cnn
    scalars, _ = read_run(log_dir)
    # The inputs Keras feeds each nonlinearity; BN by the probe's own statistics (the default mode).
    with state_kept(model):
        conv_bn, flat = (keras.Model(model.input, model.get_layer(name).output)(x, training=True).numpy()
                         for name in ("conv_bn", "flatten"))
    hidden = model.get_layer("hidden")
    hidden_input = flat @ hidden.kernel.numpy() + hidden.bias.numpy()
    top = model.get_layer("probabilities")
    logits = np.tanh(hidden_input) @ top.kernel.numpy() + top.bias.numpy()
    for name, inputs in (("conv_relu", conv_bn), ("hidden", hidden_input), ("probabilities", logits)):
        inputs = inputs.reshape(len(inputs), -1)
        for group, data in (("unit_0", inputs[:, 0]), ("all", inputs)):
            for q, expected in zip((15, 50, 85), np.percentile(data, (15, 50, 85))):
                np.testing.assert_allclose(scalars[f"percentiles/{name}/{group}/p{q}"][20], expected,
                                           rtol=1e-4, atol=1e-5)


def test_that_the_network_jacobian_of_a_cnn_has_the_singular_values_of_an_independent_svd(trained_cnn):
    model, log_dir, (x, _) = trained_cnn
    scalars, histograms = read_run(log_dir)
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        outputs = model(x, training=False)
    jacobians = tape.batch_jacobian(outputs, x).numpy().reshape(len(x), 10, 64).astype(np.float64)
    expected = np.linalg.svd(jacobians, compute_uv=False)
    np.testing.assert_allclose(tfbn.instruments.jacobian_singular_values(model, x)["network"], expected,
                               rtol=1e-4, atol=1e-7)
    assert scalars["jacobian/network/max"][20] == pytest.approx(expected.max(), rel=1e-5)
    assert scalars["jacobian/network/mean"][20] == pytest.approx(expected.mean(), rel=1e-5)
    assert histograms["jacobian/network/singular_values"][20][:, 2].sum() == expected.size


def test_that_the_conv_block_jacobian_is_that_of_the_block_as_a_linear_map_at_each_example(trained_cnn):
    model, _, (x, _) = trained_cnn
    block = keras.Model(model.input, model.get_layer("pool").output)  # conv, BN, ReLU, pooling
    x = tf.constant(x[:5])
    with tf.GradientTape() as tape:
        tape.watch(x)
        outputs = block(x, training=False)
    jacobians = tape.batch_jacobian(outputs, x).numpy().reshape(5, 4 * 4 * 6, 64).astype(np.float64)
    np.testing.assert_allclose(tfbn.instruments.jacobian_singular_values(model, x)["conv"],
                               np.linalg.svd(jacobians, compute_uv=False), rtol=1e-4, atol=1e-6)


def test_that_a_sequential_mlp_of_ones_own_is_measured_like_build_mlps(tmp_path):
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="sigmoid"),
                              keras.layers.BatchNormalization(), keras.layers.Dense(10)], name="own_mlp")
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    probe = (X_TEST[:50], Y_TEST[:50])
    model.fit(X_TRAIN[:160], Y_TRAIN[:160], batch_size=16, epochs=1, verbose=0,
              callbacks=tfbn.callbacks.instruments(str(tmp_path), probe, every=5, include=("jacobian", "ics")))
    scalars, _ = read_run(tmp_path)
    dense, top = (layer.name for layer in model.layers if isinstance(layer, keras.layers.Dense))
    spectra = tfbn.instruments.jacobian_singular_values_autodiff(model, probe[0])
    assert set(spectra) == {dense, "network"}
    for name, values in spectra.items():
        assert scalars[f"jacobian/{name}/mean_square"][10] == pytest.approx(np.mean(values ** 2), rel=1e-4)
    assert {tag for tag in scalars if tag.startswith("ics/")} == {f"ics/l2/{top}", f"ics/cosine/{top}"}
    shift = tfbn.instruments.internal_covariate_shift(model, *probe)[top]
    assert scalars[f"ics/l2/{top}"][10] == pytest.approx(shift["l2"], rel=1e-4)


def test_that_an_instrument_with_nothing_to_measure_says_so_once_and_writes_nothing(tmp_path):
    inputs = keras.Input((64,))
    branches = [keras.layers.Dense(10, activation="tanh")(inputs), keras.layers.Dense(10)(inputs)]
    model = keras.Model(inputs, keras.layers.Add()(branches), name="two_branches")
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    callbacks = tfbn.callbacks.instruments(str(tmp_path), (X_TEST[:20], Y_TEST[:20]), every=5)
    with pytest.WarningsRecorder() as caught:
        model.fit(X_TRAIN[:80], Y_TRAIN[:80], batch_size=16, verbose=0, callbacks=callbacks)
    said = sorted(str(w.message) for w in caught if "'two_branches' is not a chain" in str(w.message))
    assert [message.split(":")[0] for message in said] == [
        "ActivationPercentiles writes nothing", "JacobianSpectrum writes the network's Jacobian only"]
    scalars, histograms = read_run(tmp_path)
    assert not [tag for tag in scalars if tag.startswith("percentiles/")]
    assert {tag for tag in histograms if tag.startswith("jacobian/")} == {"jacobian/network/singular_values"}
    x = tf.constant(X_TEST[:20])
    with tf.GradientTape() as tape:
        tape.watch(x)
        outputs = model(x)
    expected = np.linalg.svd(tape.batch_jacobian(outputs, x).numpy().astype(np.float64), compute_uv=False)
    assert scalars["jacobian/network/mean"][5] == pytest.approx(expected.mean(), rel=1e-5)
    with pytest.raises(ValueError, match="BN's batch mode, measure chains of layers"):
        tfbn.instruments.jacobian_singular_values(model, x, "batch")
    assert {tag for tag in scalars if tag.startswith("gradients/norm/")} == {
        f"gradients/norm/{layer.name}" for layer in model.layers if isinstance(layer, keras.layers.Dense)}


def test_that_a_users_grid_search_writes_each_trial_to_its_own_run(tmp_path):
    def build(hp):
        model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(hp.Choice("units", [4, 8, 12]), "relu", name="hidden"),
                                  keras.layers.Dense(10)])
        model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        return model

    tuner = kt.GridSearch(build, objective="val_accuracy", directory=str(tmp_path / "tuner"), project_name="p")
    callbacks = tfbn.callbacks.instruments(str(tmp_path / "logs"), (X_TEST[:30], Y_TEST[:30]), every=4,
                                           include=("weights", "percentiles"))
    tuner.search(X_TRAIN[:96], Y_TRAIN[:96], batch_size=16, epochs=2, verbose=0, callbacks=callbacks,
                 validation_data=(X_TEST[:30], Y_TEST[:30]))
    runs = sorted(p.parent for p in (tmp_path / "logs").rglob("events.out.tfevents.*.tfbn"))
    assert len(runs) == 3 and all(run.name == "execution0" for run in runs)
    units = {}
    for run in runs:
        scalars, histograms = read_run(run)
        assert sorted(scalars["loss/train"]) == [6, 12]  # one trial's steps, not three
        assert sorted(scalars["percentiles/hidden/all/p50"]) == [0, 4, 8, 12]
        units[run.parent.name] = histograms["weights/values/hidden/kernel"][12][:, 2].sum() / 64
    trials = {t.trial_id: t.hyperparameters.get("units") for t in tuner.oracle.trials.values()}
    assert units == trials


def test_that_a_chain_splits_fused_activations_and_refuses_branches():
    model = cnn()
    steps = [(step.layer.name, step.kind, step.without_activation) for step in tfbn.structure.chain(model)]
    assert steps == [("conv", "linear", False), ("conv_bn", "normalization", False),
                     ("conv_relu", "nonlinearity", False), ("pool", "other", False),
                     ("flatten", "other", False), ("hidden", "linear", True), ("hidden", "nonlinearity", False),
                     ("probabilities", "linear", True), ("probabilities", "nonlinearity", False)]
    assert [layer.name for layer in tfbn.structure.kernel_layers(model)] == ["conv", "hidden", "probabilities"]
    inputs = keras.Input((4,))
    skip = keras.Model(inputs, keras.layers.Add()([inputs, keras.layers.Dense(4)(inputs)]), name="skip")
    assert tfbn.structure.chain(skip) is None
    assert "model 'skip' is not a chain of layers" in tfbn.structure.chain_problem(skip)


@pytest.mark.parametrize("arguments, message", [
    ({"every": 0}, r"^every=0: give the training steps between two writes, a positive integer, e\.g\. every=100$"),
    ({"every": 2.5}, r"^every=2\.5: give the training steps"),
    ({"include": "weights"}, r"^include='weights': give a list of instruments, e\.g\. include=\['weights'\]$"),
    ({"include": ["weights", "telepathy"]}, r"^unknown instruments \['telepathy'\]; choose from: weights, "),
    ({"jacobian_mode": "exact"}, r"^jacobian_mode='exact': choose one of: inference, batch$"),
    ({"probe": PROBE_X}, r"^probe must be a pair \(x, y\)"),
    ({"probe": (PROBE_X, PROBE_Y[:5])}, r"^probe holds 40 inputs and 5 labels; give one or more examples"),
    ({"probe": (PROBE_X[:0], PROBE_Y[:0])}, r"^probe holds 0 inputs and 0 labels"),
    ({"probe": (PROBE_X, None)}, r"^probe=\(x, None\): the gradient instruments differentiate the compiled loss"),
    ({"log_dir": None}, r"^log_dir=None: give the run directory as a path"),
])
def test_that_instruments_refuse_bad_arguments_before_fit_in_one_line(tmp_path, arguments, message):
    arguments = {"log_dir": tmp_path, "probe": (PROBE_X, PROBE_Y), **arguments}
    with pytest.raises(tfbn.errors.UserError, match=message):
        tfbn.callbacks.instruments(**arguments)


def test_that_instruments_refuse_a_log_dir_that_is_a_file(tmp_path):
    (tmp_path / "run").write_text("")
    with pytest.raises(tfbn.errors.UserError, match=r"is a file; give a directory the events can go to$"):
        tfbn.callbacks.instruments(tmp_path / "run", probe=(PROBE_X, PROBE_Y))


def test_that_the_probe_labels_may_be_left_out_when_no_instrument_needs_them(tmp_path):
    callbacks = tfbn.callbacks.instruments(tmp_path, probe=(PROBE_X, None), include=["weights", "jacobian"])
    assert [type(c).__name__ for c in callbacks] == ["TensorBoard", "Weights", "JacobianSpectrum"]


def test_that_probe_inputs_of_another_shape_than_the_models_are_refused_when_training_begins(tmp_path):
    model = cnn()
    callbacks = tfbn.callbacks.instruments(tmp_path, probe=(X_TEST[:20], keras.utils.to_categorical(Y_TEST[:20], 10)))
    with pytest.raises(tfbn.errors.UserError, match=r"^Gradients: model 'digits_cnn' takes examples of shape "
                                                     r"\(8, 8, 1\), the probe's have the shape \(64,\); give"):
        model.fit(IMAGES[:32], keras.utils.to_categorical(LABELS[:32], 10), callbacks=callbacks, verbose=0)
    assert model.optimizer.iterations.numpy() == 0
