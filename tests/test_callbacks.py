import copy
import dataclasses
import itertools
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

import tfbn
from tfbn.callbacks import events
from tfbn.callbacks import (ActivationPercentiles, Gradients, JacobianSpectrum, SharedSpectra,
                            TrainingSample, Weights, build_instruments)
from tfbn.config import LogConfig
from tfbn.instruments import jacobian_singular_values, spectrum_statistics

from helpers import get_json, tensorboard_server

EVERY = 6
STEPS_PER_EXECUTION = 4
STEPS = 20
# Chunks of 4 steps end at 4, 8, ..., 20; multiples of 6 are crossed at 8, 12 and 20.
LOGGED_STEPS = [0, 8, 12, 20]
INSTRUMENTS = ("weights", "gradients", "jacobian", "percentiles")
STATISTICS = ("max", "min", "mean", "mean_square", "share_0.5_to_2")


def expected_tags(instrument):
    """(scalar tags, histogram tags) for a two-hidden-layer MLP with BN."""
    dense, bns, acts = ("dense_1", "dense_2", "logits"), ("bn_1", "bn_2"), ("act_1", "act_2")
    if instrument == "weights":
        return ({f"weights/norm/{d}" for d in dense},
                {f"weights/values/{d}/kernel" for d in dense}
                | {f"weights/values/{b}/{v}" for b in bns
                   for v in ("gamma", "beta", "moving_mean", "moving_variance")})
    if instrument == "gradients":
        return ({f"gradients/{kind}/{d}" for d in dense for kind in ("norm", "mean_abs")},
                {f"gradients/values/{d}" for d in dense})
    if instrument == "jacobian":
        layers = ("dense_1", "dense_2", "network")
        return ({f"jacobian/{layer}/{s}" for layer in layers for s in STATISTICS},
                {f"jacobian/{layer}/singular_values" for layer in layers})
    return ({f"percentiles/{a}/{group}/p{q}" for a in acts for group in ("unit_0", "all")
             for q in (15, 50, 85)}, set())


def read_summaries(log_dir):
    """(scalars, histograms) from a run directory: tag -> {step: value or buckets}."""
    accumulator = event_accumulator.EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    accumulator.Reload()
    scalars, histograms = {}, {}
    for tag in accumulator.Tags()["tensors"]:
        plugin = accumulator.SummaryMetadata(tag).plugin_data.plugin_name
        target = {"scalars": scalars, "histograms": histograms}[plugin]
        target[tag] = {e.step: tensor_util.make_ndarray(e.tensor_proto)
                       for e in accumulator.Tensors(tag)}
    return scalars, histograms


def train(callbacks, bn="before"):
    """A small network trained for `STEPS` steps in chunks of 4, with ``callbacks``."""
    model = tfbn.build_mlp((12,), 4, (8, 6), "sigmoid", bn, seed=0)
    model.compile(keras.optimizers.SGD(0.5), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  steps_per_execution=STEPS_PER_EXECUTION)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8 * STEPS, 12)).astype("float32")
    y = rng.integers(0, 4, 8 * STEPS)
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)
    return model


def log_config(*instruments):
    frequencies = {f"{name}_every": EVERY for name in INSTRUMENTS}
    return LogConfig(instruments=instruments, probe_size=20, **frequencies)


@pytest.mark.parametrize("instrument", INSTRUMENTS)
def test_that_each_instrument_writes_exactly_its_tags_at_the_crossed_steps(tmp_path, instrument):
    train(build_instruments(log_config(instrument), str(tmp_path), np.zeros((50, 12), "float32")))
    scalars, histograms = read_summaries(tmp_path)
    expected_scalars, expected_histograms = expected_tags(instrument)
    assert set(scalars) == expected_scalars
    assert set(histograms) == expected_histograms
    steps = LOGGED_STEPS[1:] if instrument == "gradients" else LOGGED_STEPS
    for values in [*scalars.values(), *histograms.values()]:
        assert sorted(values) == steps


@pytest.mark.parametrize("instrument", INSTRUMENTS)
def test_that_each_instrument_also_records_the_last_step_of_training(tmp_path, instrument):
    # Every 7 steps in chunks of 4: multiples crossed at 8 and 16; training ends at 20.
    config = dataclasses.replace(log_config(instrument), **{f"{instrument}_every": 7})
    train(build_instruments(config, str(tmp_path), np.zeros((50, 12), "float32")))
    scalars, _ = read_summaries(tmp_path)
    start = [] if instrument == "gradients" else [0]
    assert all(sorted(values) == [*start, 8, 16, STEPS] for values in scalars.values())


def test_that_weights_logs_the_kernel_norms_and_every_weight_in_its_histograms(tmp_path):
    model = train([Weights(str(tmp_path), EVERY)])
    scalars, histograms = read_summaries(tmp_path)
    for name in ("dense_1", "dense_2", "logits"):
        kernel = model.get_layer(name).kernel.numpy()
        np.testing.assert_allclose(scalars[f"weights/norm/{name}"][STEPS], np.linalg.norm(kernel), rtol=1e-6)
    for layer in ("dense_1", "bn_1", "dense_2", "bn_2", "logits"):
        for variable in model.get_layer(layer).weights:
            if variable.name == "bias":
                continue
            values = variable.numpy()
            buckets = histograms[f"weights/values/{layer}/{variable.name}"][STEPS]
            assert buckets[:, 2].sum() == values.size
            np.testing.assert_allclose([buckets[0, 0], buckets[-1, 1]], [values.min(), values.max()],
                                       rtol=1e-6)
    # At step 0 the moving variances are all one.
    (left, right, count), = [row for row in histograms["weights/values/bn_1/moving_variance"][0] if row[2]]
    assert left <= 1.0 < right and count == 8


def test_that_gradients_logs_the_norm_and_mean_of_the_last_applied_gradient(tmp_path):
    model = train([Gradients(str(tmp_path), EVERY)])
    scalars, histograms = read_summaries(tmp_path)
    for name, variable in model.kernel_gradients.items():
        gradient = variable.numpy()
        assert np.linalg.norm(gradient) > 0
        np.testing.assert_allclose(scalars[f"gradients/norm/{name}"][STEPS], np.linalg.norm(gradient), rtol=1e-6)
        np.testing.assert_allclose(scalars[f"gradients/mean_abs/{name}"][STEPS], np.abs(gradient).mean(),
                                   rtol=1e-6)
        assert histograms[f"gradients/values/{name}"][STEPS][:, 2].sum() == gradient.size
    # Each write reads the gradient of its own step.
    assert scalars["gradients/norm/dense_1"][8] != scalars["gradients/norm/dense_1"][12]


@pytest.mark.parametrize("bn", ["before", "none"])
def test_that_gradients_with_a_training_sample_logs_the_initial_networks_gradient_at_step_0(tmp_path, bn):
    rng = np.random.default_rng(5)
    sample = TrainingSample(rng.normal(size=(100, 12)).astype("float32"), rng.integers(0, 4, 100), 16, 0)
    train([Gradients(str(tmp_path), EVERY, sample)], bn=bn)
    scalars, histograms = read_summaries(tmp_path)
    assert sorted(scalars["gradients/norm/dense_1"]) == LOGGED_STEPS
    # Independently: the same initial network (same seed), its own tape, BN by the batch's statistics.
    initial = tfbn.build_mlp((12,), 4, (8, 6), "sigmoid", bn, seed=0)
    x, y = sample.batch(0)
    with tf.GradientTape() as tape:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, initial(x, training=True))
    layers = ("dense_1", "dense_2", "logits")
    for name, gradient in zip(layers, tape.gradient(loss, [initial.get_layer(n).kernel for n in layers])):
        np.testing.assert_allclose(scalars[f"gradients/norm/{name}"][0], np.linalg.norm(gradient), rtol=1e-5)
        assert histograms[f"gradients/values/{name}"][0][:, 2].sum() == gradient.numpy().size


@pytest.mark.parametrize("mode", ["inference", "batch"])
def test_that_jacobian_spectrum_logs_the_statistics_of_the_probe_spectra(tmp_path, mode):
    probe = np.random.default_rng(1).normal(size=(20, 12)).astype("float32")
    model = train([JacobianSpectrum(str(tmp_path), probe, EVERY, mode)])
    scalars, histograms = read_summaries(tmp_path)
    for layer, values in jacobian_singular_values(model, probe, mode).items():
        for statistic, expected in spectrum_statistics(values).items():
            np.testing.assert_allclose(scalars[f"jacobian/{layer}/{statistic}"][STEPS], expected, rtol=1e-5)
        assert histograms[f"jacobian/{layer}/singular_values"][STEPS][:, 2].sum() == values.size


def test_that_shared_spectra_give_each_probe_set_its_own_spectra_computed_once_a_step(
        tmp_path, monkeypatch):
    computed = []  # the examples of each computation, which still runs

    def counted(model, x, mode="inference"):
        computed.append(len(x))
        return jacobian_singular_values(model, x, mode)

    monkeypatch.setattr(tfbn.callbacks.jacobian, "jacobian_singular_values", counted)
    rng = np.random.default_rng(2)
    pool = rng.normal(size=(30, 12)).astype("float32")
    # Overlapping probe sets in different orders, as test splits of one data set give.
    probes = [pool[:20], pool[10:30], np.concatenate([pool[25:], pool[:5]])]
    shared = SharedSpectra(probes)
    assert len(shared.examples) == 30
    callbacks = [JacobianSpectrum(str(tmp_path / str(i)), probe, EVERY, shared=shared)
                 for i, probe in enumerate(probes)]
    model = train(callbacks)
    # One computation per logged step, on the distinct examples, for all three callbacks.
    assert computed == [30] * len(LOGGED_STEPS)
    for i, probe in enumerate(probes):
        alone = jacobian_singular_values(model, probe)
        together = shared.singular_values(model, probe)
        assert together.keys() == alone.keys()
        for layer, values in alone.items():
            np.testing.assert_allclose(together[layer], values, rtol=1e-6)
        scalars, _ = read_summaries(tmp_path / str(i))
        for statistic, expected in spectrum_statistics(alone["network"]).items():
            np.testing.assert_allclose(scalars[f"jacobian/network/{statistic}"][STEPS], expected,
                                       rtol=1e-5)
    with pytest.raises(ValueError, match="not one of those"):
        shared.singular_values(model, pool[:7])
    with pytest.raises(ValueError, match="mode must be 'inference'"):
        JacobianSpectrum(str(tmp_path), probes[0], EVERY, "batch", shared)


@pytest.mark.parametrize("bn", ["before", "after", "none"])
@pytest.mark.parametrize("mode", ["batch", "inference"])
def test_that_logged_percentiles_equal_numpy_percentiles_of_the_nonlinearity_inputs(tmp_path, bn, mode):
    probe = np.random.default_rng(1).normal(size=(50, 12)).astype("float32")
    model = train([ActivationPercentiles(str(tmp_path), probe, EVERY, unit=3, mode=mode)], bn=bn)
    scalars, _ = read_summaries(tmp_path)
    taps = keras.Model(model.input, [model.get_layer(f"act_{i}").input for i in (1, 2)])
    # A training-mode call normalizes by the probe's own statistics, as mode "batch" does.
    for i, inputs in enumerate(taps(probe, training=mode == "batch"), start=1):
        inputs = inputs.numpy()
        for group, data in (("unit_3", inputs[:, 3]), ("all", inputs)):
            for q, expected in zip((15, 50, 85), np.percentile(data, (15, 50, 85))):
                np.testing.assert_allclose(scalars[f"percentiles/act_{i}/{group}/p{q}"][STEPS], expected,
                                           rtol=1e-5, atol=1e-6)


def test_that_a_diverged_network_is_logged_with_nans_instead_of_failing(tmp_path):
    model = tfbn.build_mlp((12,), 4, (8, 6), "relu", "before", seed=0)
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.get_layer("dense_2").kernel.assign(np.full((8, 6), np.nan))
    for callback in build_instruments(log_config(*INSTRUMENTS), str(tmp_path), np.ones((20, 12), "float32")):
        callback.set_model(model)
        callback.write(0)
        callback.on_train_end()
    scalars, histograms = read_summaries(tmp_path)
    assert np.isfinite(scalars["jacobian/dense_1/max"][0])
    for tag in ("jacobian/dense_2/max", "jacobian/network/mean", "weights/norm/dense_2",
                "percentiles/act_2/all/p50"):
        assert np.isnan(scalars[tag][0])
    assert histograms["weights/values/dense_2/kernel"][0][:, 2].sum() == 0
    assert histograms["weights/values/dense_1/kernel"][0][:, 2].sum() == 12 * 8


def test_that_build_instruments_follows_the_log_config():
    config = LogConfig(instruments=("jacobian", "weights", "percentiles"), weights_every=7,
                       jacobian_every=11, percentiles_every=13, probe_size=5, jacobian_mode="batch")
    probe_x = np.arange(40, dtype="float32").reshape(10, 4)
    callbacks = build_instruments(config, "logs/run", probe_x)
    assert [type(c) for c in callbacks] == [JacobianSpectrum, Weights, ActivationPercentiles]
    assert [c.every for c in callbacks] == [11, 7, 13]
    assert {c.log_dir for c in callbacks} == {"logs/run"}
    assert callbacks[0].mode == "batch"
    np.testing.assert_array_equal(callbacks[0].probe_x, probe_x[:5])
    np.testing.assert_array_equal(callbacks[2].probe_x, probe_x[:5])
    # keras-tuner deep-copies the callbacks of every trial.
    assert [type(c) for c in copy.deepcopy(callbacks)] == [type(c) for c in callbacks]
    assert build_instruments(LogConfig(instruments=()), "logs/run", probe_x) == []


def test_that_gradients_names_the_model_it_needs():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile("sgd", "mse")
    with pytest.raises(TypeError, match="tfbn.models.MLP"):
        model.fit(np.zeros((4, 3)), np.zeros((4, 2)), verbose=0, callbacks=[Gradients("unused", 1)])


def test_that_tensorboard_serves_every_instrument_of_a_run_as_one_run(tmp_path):
    run = tmp_path / "trial_0"
    train(build_instruments(log_config(*INSTRUMENTS), str(run), np.ones((30, 12), "float32")))
    expected_scalars = set().union(*(expected_tags(i)[0] for i in INSTRUMENTS))
    expected_histograms = set().union(*(expected_tags(i)[1] for i in INSTRUMENTS))
    with tensorboard_server(tmp_path) as url:
        deadline = time.monotonic() + 90
        while True:
            try:
                runs = get_json(f"{url}/data/runs")
                scalars = get_json(f"{url}/data/plugin/scalars/tags").get("trial_0", {})
                histograms = get_json(f"{url}/data/plugin/histograms/tags").get("trial_0", {})
                if set(scalars) == expected_scalars and set(histograms) == expected_histograms:
                    break
            except OSError:  # not listening yet
                pass
            assert time.monotonic() < deadline, "TensorBoard did not serve all tags in 90 s"
            time.sleep(0.5)
        assert runs == ["trial_0"]
        series = get_json(f"{url}/data/plugin/scalars/scalars?run=trial_0&tag=jacobian/network/max")
        assert [step for _, step, _ in series] == LOGGED_STEPS


def test_that_percentiles_measure_the_model_they_were_given_last():
    probe = np.random.default_rng(1).normal(size=(30, 12)).astype("float32")
    callback = ActivationPercentiles("unused", probe, EVERY)
    first_model, second_model = (tfbn.build_mlp((12,), 4, (8, 6), "tanh", "before", seed=s) for s in (0, 1))
    callback.set_model(first_model)
    first, _ = callback.measure()
    callback.set_model(second_model)
    second, _ = callback.measure()
    inputs = tfbn.instruments.preactivations(second_model, probe, "batch")["act_2"]
    assert second["percentiles/act_2/all/p50"] == pytest.approx(np.percentile(inputs, 50), abs=1e-6)
    assert second["percentiles/act_2/all/p50"] != pytest.approx(first["percentiles/act_2/all/p50"])


def test_that_event_files_never_replace_the_files_of_tensorflows_writers(tmp_path, monkeypatch):
    # TensorFlow's writers (the HParams records use them) share run folders with ours.
    with tf.summary.create_file_writer(str(tmp_path)).as_default():
        tf.summary.scalar("theirs/first", 1.0, step=0)
    [their_file] = tmp_path.glob("events.out.tfevents.*")
    # Our next file takes the number TensorFlow's next one will take, in the same second.
    monkeypatch.setattr(events.EventFile, "_numbers", itertools.count(int(their_file.name.split(".")[-2]) + 1))
    ours = events.EventFile(str(tmp_path))
    events.write(ours, 0, {"ours": 2.0})
    ours.close()
    with tf.summary.create_file_writer(str(tmp_path)).as_default():
        tf.summary.scalar("theirs/second", 3.0, step=0)
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 3
    scalars, _ = read_summaries(tmp_path)
    assert {tag: values[0] for tag, values in scalars.items()} == {
        "theirs/first": 1.0, "ours": 2.0, "theirs/second": 3.0}
