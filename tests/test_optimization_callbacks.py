"""The ics and landscape instruments: what they write, on which batches, and that training is unchanged."""

import keras
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

import tfbn
from tfbn.callbacks import CovariateShift, LandscapeSmoothness, TrainingSample, build_instruments
from tfbn.callbacks.optimization import mean_cross_entropy
from tfbn.config import LogConfig
from tfbn.instruments import internal_covariate_shift, landscape_smoothness

STEPS, EVERY = 20, 6
# Chunks of 4 steps end at 4, 8, ..., 20; multiples of 6 are crossed at 8, 12 and 20.
LOGGED_STEPS = [0, 8, 12, 20]
RNG = np.random.default_rng(0)
X = RNG.normal(size=(8 * STEPS, 12)).astype("float32")
Y = RNG.integers(0, 4, 8 * STEPS)
SAMPLE = TrainingSample(X, Y, batch_size=16, seed=3)


def train(callbacks, bn="before"):
    model = tfbn.build_mlp((12,), 4, (8, 6), "sigmoid", bn, seed=0)
    model.compile(keras.optimizers.Adam(0.05), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  steps_per_execution=4)
    model.fit(X, Y, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)
    return model


def scalars(log_dir):
    accumulator = event_accumulator.EventAccumulator(str(log_dir), size_guidance={"tensors": 0}).Reload()
    return {tag: {e.step: float(tensor_util.make_ndarray(e.tensor_proto)) for e in accumulator.Tensors(tag)}
            for tag in accumulator.Tags()["tensors"]}


def test_that_a_training_sample_gives_the_same_batch_for_the_same_seed_and_step():
    x, y = SAMPLE.batch(8)
    assert x.shape == (16, 12) and len(set(map(bytes, x))) == 16  # drawn without replacement
    np.testing.assert_array_equal(TrainingSample(X, Y, 16, 3).batch(8)[0], x)
    assert not np.array_equal(SAMPLE.batch(12)[0], x)
    assert not np.array_equal(TrainingSample(X, Y, 16, 4).batch(8)[0], x)


def test_that_both_probes_write_their_tags_at_the_crossed_steps_and_the_last_value_is_the_final_models(tmp_path):
    model = train([CovariateShift(str(tmp_path), SAMPLE, EVERY), LandscapeSmoothness(str(tmp_path), SAMPLE, EVERY)])
    logged = scalars(tmp_path)
    layers = ("dense_2", "logits")  # dense_1 has no earlier layer to shift it
    assert set(logged) == ({f"ics/{kind}/{layer}" for kind in ("l2", "cosine") for layer in layers}
                           | {f"landscape/{name}" for name in
                              ("loss_variation", "gradient_predictiveness", "beta_smoothness")})
    assert all(sorted(values) == LOGGED_STEPS for values in logged.values())
    x, y = SAMPLE.batch(STEPS)
    for layer, shift in internal_covariate_shift(model, x, y).items():
        if layer != "dense_1":
            assert logged[f"ics/l2/{layer}"][STEPS] == pytest.approx(shift["l2"], rel=1e-5)
            assert logged[f"ics/cosine/{layer}"][STEPS] == pytest.approx(shift["cosine"], rel=1e-6)
    for name, value in landscape_smoothness(model, x, y).items():
        assert logged[f"landscape/{name}"][STEPS] == pytest.approx(value, rel=1e-5)
    assert logged["ics/l2/logits"][8] != logged["ics/l2/logits"][12]  # a fresh batch at every write


@pytest.mark.parametrize("bn", ["before", "noisy", "renorm"])
def test_that_training_with_the_probes_is_training_without_them(tmp_path, bn):
    probed = train([CovariateShift(str(tmp_path), SAMPLE, 4), LandscapeSmoothness(str(tmp_path), SAMPLE, 4)], bn)
    plain = train([], bn)
    assert len(probed.variables) == len(plain.variables)
    for a, b in zip(probed.variables, plain.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for a, b in zip(probed.optimizer.variables, plain.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_that_the_explicit_loss_is_the_compiled_one():
    model = train([])
    x, y = SAMPLE.batch(0)
    explicit = internal_covariate_shift(model, x, y, loss=mean_cross_entropy)
    for layer, shift in internal_covariate_shift(model, x, y).items():
        assert explicit[layer] == pytest.approx(shift, rel=1e-6)
    assert landscape_smoothness(model, x, y, loss=mean_cross_entropy) == pytest.approx(
        landscape_smoothness(model, x, y), rel=1e-6)


def test_that_build_instruments_wires_the_probes_and_asks_for_their_batches():
    config = LogConfig(instruments=("ics", "landscape"), ics_every=7, landscape_every=9)
    callbacks = build_instruments(config, "logs/run", X, SAMPLE)
    assert [type(c) for c in callbacks] == [CovariateShift, LandscapeSmoothness]
    assert [c.every for c in callbacks] == [7, 9] and all(c.sample is SAMPLE for c in callbacks)
    with pytest.raises(ValueError, match="TrainingSample"):
        build_instruments(config, "logs/run", X)
    assert LogConfig().instruments == ("weights", "gradients", "jacobian", "percentiles")  # on request only
