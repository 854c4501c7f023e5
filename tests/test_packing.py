"""Packed trials: the plan, and branches that train exactly as they would alone."""

import csv
import dataclasses
import itertools
import os
import pathlib
import signal
import time

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util.tensor_util import make_ndarray

import tfbn
from tfbn.config import load_config
from tfbn.data import load_data, training_batches, training_indices
from tfbn.packed import PackEvaluation, PackedModel
from tfbn.packing import plan_packs
from tfbn.design import apply_factors, design_points, run_name
from tfbn.sweep import run_study
from tfbn.instruments import jacobian_singular_values, spectrum_statistics
from tfbn.training import Target, build_model, build_optimizer, train_pack

from helpers import QUICKSTART, WAIT_S, cli, load, start

COURSE_STUDY = str(pathlib.Path(__file__).parent.parent / "configs" / "course2017_study.yaml")


def scalars(run_dir):
    events = EventAccumulator(str(run_dir), size_guidance={"tensors": 0}).Reload()
    return {tag: [(e.step, float(make_ndarray(e.tensor_proto))) for e in events.Tensors(tag)]
            for tag in events.Tags()["tensors"]
            if events.SummaryMetadata(tag).plugin_data.plugin_name == "scalars"}


# The plan.

def test_that_the_course_study_packs_by_batch_size_whole_seeds_together_and_shares_test_ratios():
    config = load_config(COURSE_STUDY, ["data.source=digits", "data.classes=[0,1]",
                                        "data.max_train_per_class=null"])
    points = design_points(config)
    packs = plan_packs(config, points)
    assert sorted(p for pack in packs for p in map(run_name, pack.points)) == sorted(
        map(run_name, points))
    # Per seed, batch 64 holds the base point, 4 other activations and Adam, in 3 arms:
    # a pack each. Batch sizes 4, 16 and 256 hold 3 arms per seed: one pack of 3 seeds each.
    assert sorted(len(pack.branches) for pack in packs) == [9] * 3 + [18] * 3
    for pack in packs:
        assert len({p.get("batch_size", 64) for p in pack.points}) == 1
        seeds = [p.get("seed", 0) for p in pack.points]
        assert len(set(seeds)) == (1 if pack.batch_size == 64 else 3)
        assert seeds == sorted(seeds)  # a seed's branches side by side
    # The 4 test ratios of a base point are one branch: 9 trainings of 12 points per arm and seed.
    trainings = [branch for pack in packs for branch in pack.branches]
    assert len(trainings) == 81 and len(points) == 108
    shared = [branch for branch in trainings if len(branch) > 1]
    assert len(shared) == 9 and all(
        sorted(p["test_ratio"] for p in branch) == ["1:1", "1:19", "1:9", "1:99"]
        for branch in shared)


def test_that_automatic_packs_split_the_largest_streams_evenly_among_local_workers():
    overrides = ["data.source=digits", "data.classes=[0,1]", "data.max_train_per_class=null"]
    # 18 // workers, rounded up, at most per pack: whole seeds (3 branches each at batch 4,
    # 16 and 256) where they fit, else the 54 batch-64 branches as equal as can be.
    for workers, expected in ((1, [18] * 3 + [9] * 3), (2, [9] * 6 + [9] * 3),
                              (4, [5] * 10 + [4] + [3] * 9), (5, [4] * 12 + [3] * 2 + [3] * 9)):
        config = load_config(COURSE_STUDY, overrides + [f"distribute.parallel_trials={workers}"])
        packs = plan_packs(config, design_points(config))
        assert sorted(len(pack.branches) for pack in packs) == sorted(expected), workers
        assert sorted(map(run_name, (p for pack in packs for p in pack.points))) == sorted(
            map(run_name, design_points(config)))


def test_that_several_workers_get_the_longest_packs_first():
    overrides = ["data.source=digits", "data.classes=[0,1]", "data.max_train_per_class=null"]
    alone = plan_packs(load_config(COURSE_STUDY, overrides), design_points(
        load_config(COURSE_STUDY, overrides)))
    config = load_config(COURSE_STUDY, overrides + ["distribute.parallel_trials=2"])
    packs = plan_packs(config, design_points(config))
    # 9 branches x (256 + 100) > 9 x (64 + 100) > 9 x (16 + 100) > 9 x (4 + 100); equals in
    # the design's order of their first points: each seed's first half, then the second halves.
    assert [(pack.batch_size, len(pack.branches)) for pack in packs] == (
        [(256, 9)] + [(64, 9)] * 6 + [(16, 9), (4, 9)])
    assert [pack.points[0].get("seed", 0) for pack in packs[1:7]] == [0, 1, 2] * 2
    assert packs[0].estimated_cost == 40000 * 9 * (256 + 100)
    # One process: the design's order of each pack's first point.
    assert [(pack.batch_size, len(pack.branches)) for pack in alone] == (
        [(64, 18)] * 3 + [(4, 9), (16, 9), (256, 9)])


def test_that_pack_off_and_a_maximum_bound_the_branches():
    config = load_config(QUICKSTART, ["study.factors={bn: [none, before, after], seed: [0, 1]}"])
    points = design_points(config)
    sizes = {setting: [len(pack.branches) for pack in plan_packs(
        load_config(QUICKSTART, ["study.factors={bn: [none, before, after], seed: [0, 1]}",
                                 f"train.pack={setting}"]), points)]
             for setting in ("auto", "off", 2)}
    # Both seeds in one pack; at most 2: a seed's 3 branches do not fit, so 6 in packs of 2.
    assert sizes == {"auto": [6], "off": [1] * 6, 2: [2, 2, 2]}


# Training.

def test_that_index_batches_gather_exactly_the_batches_of_the_element_pipeline():
    data = load_data(load_config(QUICKSTART).data)
    for seed in (0, 3):
        batches = iter(training_batches(data, 64, seed))
        indices = iter(training_indices(len(data.y_train), 64, seed))
        for _ in range(25):  # more than one pass over the 1,297 training examples
            x, y = next(batches)
            i = next(indices).numpy()
            np.testing.assert_array_equal(x.numpy(), data.x_train[i])
            np.testing.assert_array_equal(y.numpy(), data.y_train[i])


# Three seeds in one pack: each branch its own initial kernels and its own seed's batches.
MIXED = [{"bn": "none", "activation": "sigmoid", "seed": 0},
         {"bn": "before", "activation": "relu", "seed": 1},
         {"bn": "after", "activation": "tanh", "seed": 0},
         {"bn": "renorm", "activation": "sigmoid", "seed": 2}]


def test_that_a_packed_branch_trains_as_its_solo_run(tmp_path):
    config = load_config(QUICKSTART, ["train.steps=2000", "train.eval_every=100",
                                      "log.instruments=[gradients]", "log.gradients_every=100"])
    packed = train_pack([[Target(apply_factors(config, p), str(tmp_path / "pack" / run_name(p)))]
                         for p in MIXED])
    for point, [result] in zip(MIXED, packed):
        [[solo]] = train_pack([[Target(apply_factors(config, point),
                                       str(tmp_path / "solo" / run_name(point)))]])
        assert result.status == solo.status == "ok"
        assert abs(result.final_accuracy - solo.final_accuracy) <= 0.002, point
        pack_norms = scalars(tmp_path / "pack" / run_name(point))
        solo_norms = scalars(tmp_path / "solo" / run_name(point))
        for layer in ("dense_1", "dense_2", "logits"):
            [(step, norm)] = [s for s in pack_norms[f"gradients/norm/{layer}"] if s[0] == 100]
            [(_, alone)] = [s for s in solo_norms[f"gradients/norm/{layer}"] if s[0] == 100]
            assert norm == pytest.approx(alone, rel=1e-4), (point, layer)
        # The same batches: the training loss of the first period agrees closely.
        assert pack_norms["loss/train"][0][1] == pytest.approx(solo_norms["loss/train"][0][1],
                                                               rel=1e-4)


def test_that_a_pack_restarted_on_a_kept_compiled_model_trains_as_on_a_new_one(tmp_path):
    # Noisy BN's draws, Batch Renormalization's statistics and step count and Adam's
    # moments all start afresh; the second seed's pack reuses the first's compiled model.
    config = load_config(QUICKSTART, ["train.steps=200", "train.eval_every=100", "log.instruments=[]"])

    def pack(seed, name):
        points = [{"bn": "noisy", "seed": seed}, {"bn": "renorm", "optimizer": "adam", "seed": seed + 1}]
        train_pack([[Target(apply_factors(config, p), str(tmp_path / name / run_name(p)))]
                    for p in points])
        return {run_name(p)[:-len(str(seed))]: scalars(tmp_path / name / run_name(p)) for p in points}

    pack(0, "first")
    model = next(reversed(tfbn.training._compiled.values())).model
    restarted = pack(5, "restarted")
    assert next(reversed(tfbn.training._compiled.values())).model is model
    tfbn.training._compiled.clear()
    new = pack(5, "new")
    assert next(reversed(tfbn.training._compiled.values())).model is not model
    assert restarted == new
    assert all(len(runs["loss/train"]) == 2 for runs in new.values())


def test_that_a_packed_branch_takes_the_gradient_of_its_own_loss_with_its_own_optimizer():
    data = load_data(load_config(QUICKSTART).data)
    config = load_config(QUICKSTART)
    adam = apply_factors(config, {"optimizer": "adam", "learning_rate": 0.003})
    networks = [tfbn.build_mlp((64,), 10, (20,), "sigmoid", bn, seed=1) for bn in ("none", "before")]
    copies = [tfbn.build_mlp((64,), 10, (20,), "sigmoid", bn, seed=1) for bn in ("none", "before")]
    model = PackedModel(networks, [build_optimizer(config.train), build_optimizer(adam.train)],
                        data.x_train, data.y_train)
    indices = tf.constant(np.arange(32)[:, None])  # one stream
    x, y = data.x_train[:32], data.y_train[:32]
    model.train_step(indices)
    for network, copy, lr, kind in zip(networks, copies, (0.01, 0.003), ("sgd", "adam")):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(
                y, copy(x, training=True), from_logits=True))
        gradients = tape.gradient(loss, copy.trainable_variables)
        for before, gradient, after in zip(copy.trainable_variables, gradients,
                                           network.trainable_variables):
            g = gradient.numpy()
            # Adam's first step: lr * sqrt(1 - b2) / (1 - b1) * m / (sqrt(v) + eps) with
            # m = (1 - b1) g and v = (1 - b2) g^2, that is lr * g / (|g| + eps / sqrt(1 - b2)).
            step = 0.01 * g if kind == "sgd" else lr * g / (np.abs(g) + 1e-7 / np.sqrt(1 - 0.999))
            np.testing.assert_allclose(after.numpy(), before.numpy() - step, atol=2e-6)
        np.testing.assert_allclose(network.kernel_gradients["dense_1"].numpy(),
                                   gradients[0].numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(model.totals.numpy()[:, 2], [32, 32])


def test_that_a_block_of_steps_in_one_call_equals_one_call_per_step():
    # SGD branches train their first-layer kernels side by side in one variable,
    # an Adam branch its own; the branches are published at the end of each call.
    data = load_data(load_config(QUICKSTART).data)
    config = load_config(QUICKSTART).train
    adam = apply_factors(load_config(QUICKSTART), {"optimizer": "adam"}).train

    def pack():
        networks = [tfbn.build_mlp((64,), 10, (20, 20), "sigmoid", bn, seed=1)
                    for bn in ("none", "before", "after")]
        return PackedModel(networks, [build_optimizer(t) for t in (config, adam, config)],
                           data.x_train, data.y_train)

    blocked, stepped = pack(), pack()
    assert [group.branches for group in blocked.kernel_groups] == [[0, 2]]
    block = np.random.default_rng(0).integers(0, len(data.y_train), size=(5, 32, 1))
    blocked.train_step(tf.constant(block))
    for indices in block:
        stepped.train_step(tf.constant(indices))
    for one, other in zip(blocked.branches, stepped.branches):
        assert int(one.optimizer.iterations) == int(other.optimizer.iterations) == 5
        for a, b in zip(one.variables, other.variables):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7, err_msg=a.path)
        for name, recorded in one.kernel_gradients.items():
            np.testing.assert_allclose(recorded.numpy(), other.kernel_gradients[name].numpy(),
                                       rtol=1e-5, atol=1e-7, err_msg=name)
            assert np.abs(recorded.numpy()).max() > 0, name
    np.testing.assert_allclose(blocked.totals.numpy(), stepped.totals.numpy(), rtol=1e-6)


@pytest.mark.parametrize("bn", ["before", "after", "renorm", "noisy"])
def test_that_evaluation_with_batch_statistics_changes_no_variable(bn):
    data = load_data(load_config(QUICKSTART).data)
    network = tfbn.build_mlp((64,), 10, (20, 20), "sigmoid", bn, seed=1)
    model = PackedModel([network], [build_optimizer(load_config(QUICKSTART).train)],
                        data.x_train, data.y_train)
    for _ in range(3):
        model.train_step(tf.constant(np.arange(64)[:, None]))
    before = [v.numpy().copy() for v in network.variables]
    [[measured]] = PackEvaluation(model, [[(data.x_test, data.y_test)]], 100)()
    assert [v.path for v in network.variables] and all(
        np.array_equal(a, v.numpy()) for a, v in zip(before, network.variables))
    # Batch statistics of 5 batches of 100: the same as calling the network in
    # training mode on each batch, which does change the moving statistics
    # (and, as at any evaluation, without noisy BN's noise).
    with tfbn.noise.suspended():
        logits = np.concatenate([network(data.x_test[s:s + 100], training=True).numpy()
                                 for s in range(0, 500, 100)])
    assert measured["val_accuracy_batch_stats"] == pytest.approx(
        np.mean(logits.argmax(1) == data.y_test), abs=1e-12)
    assert measured["val_accuracy"] == pytest.approx(
        np.mean(network(data.x_test).numpy().argmax(1) == data.y_test), abs=1e-12)


def test_that_nested_test_splits_share_one_first_layer_product_and_measure_as_alone():
    base = load_config(QUICKSTART, ["data.classes=[0, 1]", "data.train_ratio='1:1'"])
    split = {ratio: load_data(apply_factors(base, {"test_ratio": ratio}).data)
             for ratio in ("1:1", "1:3", "3:1")}
    other = load_data(dataclasses.replace(base.data, classes=(2, 3)))  # no example in common
    networks = [tfbn.build_mlp((64,), 2, (20, 20), "sigmoid", bn, seed=s)
                for s, bn in enumerate(("before", "none", "after"))]
    model = PackedModel(networks, [build_optimizer(base.train) for _ in networks],
                        split["1:1"].x_train, split["1:1"].y_train)
    for _ in range(3):
        model.train_step(tf.constant(np.arange(64)[:, None]))
    uses = [[split["1:1"], split["1:3"], split["3:1"]], [split["1:3"]], [split["3:1"], other]]
    evaluation = PackEvaluation(model, [[(d.x_test, d.y_test) for d in used] for used in uses], 50)
    measured = evaluation()
    # One first-layer product per branch over the distinct examples of its splits
    # (none shared: each branch here has a different union).
    assert sorted(len(x) for x, _, _ in evaluation._groups) == sorted(
        len(np.unique(np.concatenate([d.x_test for d in used]), axis=0)) for used in uses)
    assert len(evaluation._groups[0][0]) < sum(len(d.y_test) for d in uses[0])
    for network, used, results in zip(networks, uses, measured):
        assert len(results) == len(used)
        for data, result in zip(used, results):
            logits = network(data.x_test).numpy()
            losses = tf.keras.losses.sparse_categorical_crossentropy(
                data.y_test, logits, from_logits=True).numpy()
            assert result["val_accuracy"] == pytest.approx(
                np.mean(logits.argmax(1) == data.y_test), abs=1e-12)
            assert result["val_loss"] == pytest.approx(losses.astype(np.float64).mean(), rel=1e-5)
    # Batch statistics last: a network called in training mode changes its moving statistics.
    for network, used, results in zip(networks, uses, measured):
        for data, result in zip(used, results):
            if not tfbn.instruments.has_batch_norm(network):
                assert "val_accuracy_batch_stats" not in result
                continue
            logits = np.concatenate([network(data.x_test[s:s + 50], training=True).numpy()
                                     for s in range(0, len(data.y_test), 50)])
            assert result["val_accuracy_batch_stats"] == pytest.approx(
                np.mean(logits.argmax(1) == data.y_test), abs=1e-12)


# Through the sweep.

def read_rows(experiment):
    with open(experiment / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_that_packing_on_and_off_give_the_same_rows(tmp_path):
    rows = {}
    for pack in ("auto", "off"):
        config = load_config(QUICKSTART, [
            f"log.dir={tmp_path / pack}", "train.steps=300", "log.instruments=[]",
            "study.factors={bn: [none, before, renorm], activation: [sigmoid, relu]}",
            f"train.pack={pack}"])
        rows[pack] = run_study(config, quiet=True, report=False)
    assert [row["run"] for row in rows["auto"]] == [row["run"] for row in rows["off"]]
    assert len({row["trial"] for row in rows["auto"]}) == 1
    assert len({row["trial"] for row in rows["off"]}) == 6
    for packed, alone in zip(rows["auto"], rows["off"]):
        assert packed["status"] == alone["status"] == "ok"
        for column in ("final_accuracy", "best_accuracy", "final_accuracy_batch_stats"):
            if alone[column]:
                assert float(packed[column]) == pytest.approx(float(alone[column]), abs=0.002)
        assert packed["steps_to_threshold"] == alone["steps_to_threshold"]


def test_that_points_differing_only_in_test_ratio_share_one_training_with_their_own_rows(tmp_path):
    config = load_config(QUICKSTART, [
        f"log.dir={tmp_path}", "train.steps=200", "log.instruments=[weights, percentiles, jacobian]",
        "data.classes=[0, 1]", "data.train_ratio='1:1'", "data.test_ratio='1:1'",
        "study.factors={test_ratio: ['1:1', '1:3'], bn: [none, before]}"])
    rows = run_study(config, quiet=True, report=False)
    experiment = tmp_path / "quickstart"
    assert [row["run"] for row in rows] == [
        "test=1:1,bn=none", "test=1:1,bn=before", "test=1:3,bn=none", "test=1:3,bn=before"]
    runs = {row["run"]: scalars(experiment / row["run"]) for row in rows}
    for bn in ("none", "before"):
        even, skewed = runs[f"test=1:1,bn={bn}"], runs[f"test=1:3,bn={bn}"]
        # One training: the same training curve and weights in both runs...
        assert even["loss/train"] == skewed["loss/train"]
        assert even["weights/norm/dense_1"] == skewed["weights/norm/dense_1"]
        # ...measured on two different test splits.
        assert even["accuracy/test"] != skewed["accuracy/test"]
        assert even["percentiles/act_1/all/p50"] != skewed["percentiles/act_1/all/p50"]
    splits = {ratio: load_data(apply_factors(config, {"test_ratio": ratio}).data)
              for ratio in ("1:1", "1:3")}
    assert len(splits["1:1"].y_test) != len(splits["1:3"].y_test)
    # Each run's Jacobian spectra are those of its own probe set, here of the initial network.
    for ratio, bn in itertools.product(("1:1", "1:3"), ("none", "before")):
        trial, data = apply_factors(config, {"test_ratio": ratio, "bn": bn}), splits[ratio]
        spectra = jacobian_singular_values(build_model(trial, data), data.x_test[:trial.log.probe_size])
        for statistic, expected in spectrum_statistics(spectra["network"]).items():
            assert runs[f"test={ratio},bn={bn}"][f"jacobian/network/{statistic}"][0] == (
                0, pytest.approx(expected, rel=1e-5))


def test_that_a_mixed_seed_pack_killed_after_some_branches_were_recorded_resumes_with_each_point_once(
        tmp_path, processes):
    # One pack of two seeds: at a learning rate of 1e36 a branch diverges at once and is
    # recorded at step 50 while its pack-mates train on. The kill falls between the rows.
    overrides = ["study.factors={learning_rate: [1.0e+36, 0.01], seed: [0, 1]}", "model.bn=before",
                 "train.steps=3000", "train.eval_every=50"]
    experiment = tmp_path / "quickstart"
    killed = start(processes, cli(tmp_path, *overrides), tmp_path / "killed.log")
    deadline = time.monotonic() + WAIT_S
    while not ((experiment / "results.csv").exists() and len(read_rows(experiment)) == 2):
        assert killed.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert sorted(row["run"] for row in read_rows(experiment)) == ["lr=1e+36,seed=0", "lr=1e+36,seed=1"]
    recorded = {run: {p: p.stat().st_mtime_ns for p in (experiment / run).iterdir()}
                for run in ("lr=1e+36,seed=0", "lr=1e+36,seed=1")}

    rows = run_study(load(tmp_path, *overrides), quiet=True)
    assert sorted((row["run"], row["status"], row["steps_run"]) for row in read_rows(experiment)) == [
        ("lr=0.01,seed=0", "ok", "3000"), ("lr=0.01,seed=1", "ok", "3000"),
        ("lr=1e+36,seed=0", "diverged", "50"), ("lr=1e+36,seed=1", "diverged", "50")]
    assert len(rows) == 4
    for run, files in recorded.items():  # not trained again
        assert {p: p.stat().st_mtime_ns for p in (experiment / run).iterdir()} == files
    for seed in (0, 1):  # trained once, from the start
        assert [step for step, _ in scalars(experiment / f"lr=0.01,seed={seed}")["loss/train"]] == list(
            range(50, 3001, 50))
