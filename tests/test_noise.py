"""Noisy BN: BN before the activation, then a per-step shift of each unit's distribution."""

import csv

import numpy as np
import pytest
import tensorflow as tf

import tfbn
from tfbn.callbacks import BatchStatisticsEvaluation
from tfbn.config import load_config
from tfbn.data import load_data
from tfbn.errors import ConfigError
from tfbn.noise import DistributionShift
from tfbn.packed import PackEvaluation, PackedModel
from tfbn.training import build_optimizer

from helpers import QUICKSTART


def test_that_noisy_bn_is_bn_before_the_activation_and_the_same_network_at_evaluation():
    noisy = tfbn.build_mlp((6,), 3, (5, 4), "sigmoid", "noisy", seed=4)
    before = tfbn.build_mlp((6,), 3, (5, 4), "sigmoid", "before", seed=4)
    assert [layer.name for layer in noisy.layers] == [
        "input", "dense_1", "bn_1", "noise_1", "act_1", "dense_2", "bn_2", "noise_2", "act_2", "logits"]
    assert not noisy.get_layer("dense_1").use_bias
    x = np.random.default_rng(0).normal(size=(10, 6)).astype("float32")
    np.testing.assert_array_equal(noisy(x, training=False), before(x, training=False))
    assert not np.allclose(noisy(x, training=True), before(x, training=True))


def test_that_each_training_call_scales_and_shifts_every_unit_by_fresh_draws_within_bounds():
    layer = DistributionShift(shift=(0.0, 1.0), scale=(1.0, 2.0), seed=7)
    x = np.random.default_rng(1).normal(size=(50, 8)).astype("float32")
    draws = []
    for _ in range(2):
        out = np.asarray(layer(x, training=True))
        # One affine map per unit, the same for every example of the batch.
        scale = (out[1] - out[0]) / (x[1] - x[0])
        shift = out[0] - scale * x[0]
        np.testing.assert_allclose(out, x * scale + shift, rtol=1e-4, atol=1e-5)
        assert np.all((1 <= scale) & (scale <= 2)) and np.all((0 <= shift) & (shift <= 1))
        draws.append(scale)
    assert not np.allclose(draws[0], draws[1])  # drawn afresh at every step
    replay = np.asarray(DistributionShift(seed=7)(x, training=True))
    np.testing.assert_allclose(replay, x * draws[0] + (replay[0] - draws[0] * x[0]), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(layer(x, training=False), x)


def test_that_evaluation_with_test_batch_statistics_runs_bn_in_training_mode_without_the_noise():
    config = load_config(QUICKSTART)
    data = load_data(config.data)
    networks = {bn: tfbn.build_mlp((64,), 10, (20, 20), "sigmoid", bn, seed=1) for bn in ("noisy", "before")}
    x = data.x_test[:200]
    assert not np.allclose(networks["noisy"](x, training=True), networks["before"](x, training=True))
    packed = {bn: PackEvaluation(PackedModel([network], [build_optimizer(config.train)], data.x_train,
                                             data.y_train), [[(data.x_test, data.y_test)]], 100)()[0][0]
              for bn, network in networks.items()}
    callbacks = {}
    for bn, network in networks.items():
        callback = BatchStatisticsEvaluation(tf.data.Dataset.from_tensor_slices(
            (data.x_test, data.y_test)).batch(100))
        callback.set_model(network)
        callback.on_epoch_end(0, callbacks.setdefault(bn, {}))
    for measured in (packed, callbacks):
        for name in ("val_loss_batch_stats", "val_accuracy_batch_stats"):
            assert measured["noisy"][name] == pytest.approx(measured["before"][name], rel=1e-6)
    # Training calls outside the evaluation still draw the noise.
    assert not np.allclose(networks["noisy"](x, training=True), networks["before"](x, training=True))


def test_that_the_noise_bounds_come_from_the_config_and_a_bad_interval_is_named():
    config = load_config(QUICKSTART, ["model.bn=noisy", "model.noise_shift=[-1, 1]"])
    assert config.model.noise_shift == (-1.0, 1.0) and config.model.noise_scale == (1.0, 2.0)
    with pytest.raises(ConfigError, match=r"model.noise_scale: give \[low, high\] with low <= high"):
        load_config(QUICKSTART, ["model.noise_scale=[2, 1]"])


def test_that_a_study_trains_noisy_bn_beside_bn_with_every_instrument(tmp_path):
    from tfbn.run import main
    assert main(["--config", str(QUICKSTART), "--quiet", "--no-report", "--set", f"log.dir={tmp_path}",
                 "--set", "train.steps=200", "--set", "train.eval_every=100",
                 "--set", "study.factors.bn=[before, noisy]"]) == 0
    with open(tmp_path / "quickstart" / "results.csv") as f:
        rows = {row["bn"]: row for row in csv.DictReader(f)}
    assert set(rows) == {"before", "noisy"}
    assert all(row["status"] == "ok" for row in rows.values())
    assert rows["before"]["final_loss"] != rows["noisy"]["final_loss"]  # the noise trained it differently
