import pathlib
import re

import numpy as np
import pytest
import scipy.stats
import tensorflow as tf
from matplotlib.image import imread
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugin_util import markdown_to_safe_html
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.util.tensor_util import make_ndarray

from tfbn import tags
from tfbn.config import dump_config, load_config, parse_config, to_dict
from tfbn.report import main, write_report
from tfbn.report.stats import holm, verdict
from tfbn.report.document import verdict_table
from tfbn.report.summaries import (claim_sides, claim_verdicts, level_verdicts, relative_steps,
                                   summarise_levels, summarise_mechanisms)
from tfbn.report.trials import load_study, read_events
from tfbn.results import append_row
from tfbn.run import main as run_main
from tfbn.design import design_points, run_name
from tfbn.sweep import result_columns

from helpers import QUICKSTART

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# The synthetic study: sigmoid and relu, BN none and before, four seeds, 400 steps.
STEPS = 400
# BN's built-in effects per (activation, seed): a clear gain in final accuracy
# (claim 1 supported), a zero-mean shift in steps to threshold (inconclusive).
ACCURACY_GAIN = {"sigmoid": (0.10, 0.12, 0.09, 0.11), "relu": (0.03, 0.05, 0.04, 0.02)}
STEP_SHIFT = {"sigmoid": (100, -100, 100, -100), "relu": (50, -50, 0, 0)}
FAILED = "act=relu,bn=before,seed=3"
DIVERGED = "act=sigmoid,bn=none,seed=2"


def synthetic_config(tmp_path):
    return parse_config({
        "experiment": "synthetic", "log": {"dir": str(tmp_path)},
        "train": {"steps": STEPS, "eval_every": 100, "threshold": 0.9},
        "study": {"factors": {"activation": ["sigmoid", "relu"], "bn": ["none", "before"],
                              "seed": [0, 1, 2, 3]}}})


def synthetic_result(point):
    act, bn, seed = point["activation"], point["bn"], point["seed"]
    before = bn == "before"
    accuracy = 0.7 + 0.02 * seed + (0.05 if act == "relu" else 0) + before * ACCURACY_GAIN[act][seed]
    steps = 200 + before * STEP_SHIFT[act][seed]
    if run_name(point) == FAILED:
        return {"status": "failed", "message": "ValueError: boom"}
    status, steps_run = ("diverged", 300) if run_name(point) == DIVERGED else ("ok", STEPS)
    return {"status": status, "steps_run": steps_run, "final_accuracy": accuracy,
            "best_accuracy": accuracy, "steps_to_threshold": steps, "final_loss": 0.5,
            "final_accuracy_batch_stats": accuracy if before else None, "seconds": 1.0}


def write_synthetic_events(run_dir, point, result):
    """Instrument tags as the callbacks of earlier versions wrote them (``grad_norm/``,
    ``weight_norm/``; the report reads them under today's names), with BN's effects built in."""
    before, seed, last = point["bn"] == "before", point["seed"], result["steps_run"]
    rng = np.random.default_rng(seed + 10 * before)
    with tf.summary.create_file_writer(str(run_dir)).as_default():
        for step in range(100, last + 1, 100):
            tf.summary.scalar("accuracy/test", result["final_accuracy"] * step / STEPS, step=step)
            tf.summary.scalar("loss/train", 1 - step / STEPS / 2, step=step)
        for step in range(0, last + 1, 50):
            # Without BN the first layer's gradient vanishes: 100x below the second's.
            first = 0.1 * (1 + 0.1 * seed) if before else 0.001 * (1 + 0.1 * seed)
            for layer, norm in (("dense_1", first), ("dense_2", 0.1), ("logits", 1.0)):
                if step:
                    tf.summary.scalar(f"grad_norm/{layer}", norm, step=step)
                    tf.summary.scalar(f"grad_mean_abs/{layer}", norm / 100, step=step)
            for layer in ("dense_1", "dense_2", "logits"):
                # BN's weights grow more than the plain network's: claim 3 contradicted.
                tf.summary.scalar(f"weight_norm/{layer}", 1 + weight_growth(point) * step / STEPS,
                                  step=step)
            for act in ("act_1", "act_2"):
                # Without BN the median drifts by about 2; with BN by about 0.02.
                median = (0.02 if before else 2 + 0.1 * seed) * step / STEPS + rng.normal(0, 0.001)
                for q, offset in ((15, -1), (50, 0), (85, 1)):
                    tf.summary.scalar(f"percentiles/{act}/unit_0/p{q}", median + offset, step=step)
                    tf.summary.scalar(f"percentiles/{act}/all/p{q}", median + offset, step=step)
        for step in (0, last):
            for layer in ("network", "dense_1", "dense_2"):
                # BN's singular values lie near 1, the plain network's near 0.1.
                values = rng.uniform(0.8, 1.2, 500) if before else rng.uniform(0.05, 0.15, 500)
                tf.summary.histogram(f"jacobian/{layer}/singular_values", values, step=step)
                tf.summary.scalar(f"jacobian/{layer}/mean_square", np.mean(values ** 2), step=step)
        if result["status"] == "diverged":
            # The evaluation that found the loss NaN; what it measured is garbage or NaN.
            tf.summary.scalar("loss/train", np.nan, step=last)
            tf.summary.scalar("accuracy/test", 0.1, step=last)
            tf.summary.scalar("grad_norm/dense_1", np.nan, step=last)
            tf.summary.histogram("jacobian/network/singular_values", [np.nan] * 3, step=last)


def weight_growth(point):
    seed = point["seed"]
    return 0.5 + 0.05 * seed if point["bn"] == "before" else 0.1 + 0.01 * seed


def write_study(config, result_of, write_events=None):
    """An experiment folder as tfbn.run leaves it: config, results rows, event files."""
    experiment = pathlib.Path(config.log.dir) / config.experiment
    experiment.mkdir()
    (experiment / "config.yaml").write_text(dump_config(config))
    for i, point in enumerate(design_points(config)):
        result = result_of(point)
        append_row(str(experiment / "results.csv"), {"trial": i, "run": run_name(point), **point,
                                                     **result}, result_columns(point))
        if write_events and result["status"] != "failed":
            write_events(experiment / run_name(point), point, result)
    return experiment


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """The synthetic study's folder, built once for the tests that read it."""
    config = synthetic_config(tmp_path_factory.mktemp("synthetic"))
    return write_study(config, synthetic_result, write_synthetic_events)


def pair_differences(metric, activations=("sigmoid", "relu")):
    """BN-before minus none of ``metric(point, result)`` over the synthetic study's pairs."""
    differences = []
    for act in activations:
        for seed in range(4):
            arm, control = ({"activation": act, "bn": bn, "seed": seed} for bn in ("before", "none"))
            if FAILED not in (run_name(arm), run_name(control)):
                differences.append(metric(arm, synthetic_result(arm))
                                   - metric(control, synthetic_result(control)))
    return np.array(differences)


def test_that_the_report_gives_the_verdicts_built_into_a_synthetic_study(synthetic):
    study = load_study(str(synthetic))
    measures = summarise_mechanisms(study)
    assert [(m.claim, m.effect.verdict) for m in measures] == [
        (1, "supported"),     # final accuracy
        (1, "inconclusive"),  # steps to threshold, zero mean
        (2, "supported"),     # drift of the median
        (2, "inconclusive"),  # spread unchanged in both arms
        (3, "contradicted"),  # weight growth, larger with BN
        (4, "supported"),     # first layer's gradient
        (4, "supported"),     # first / last layer gradient ratio
        (5, "supported"),     # network Jacobian
        (5, "supported"),     # hidden blocks' Jacobians
        (6, "supported"),     # sigmoid's final accuracy
        (10, "inconclusive"),  # no learning_rate factor: no pairs
    ]
    assert claim_verdicts(measures) == {1: "supported", 2: "supported", 3: "contradicted",
                                        4: "supported", 5: "supported", 6: "supported",
                                        10: "not tested by this study"}
    assert measures[-1].note == ("not tested by this study: configs/learning_rates.yaml sweeps "
                                 "the learning rate")

    accuracy = measures[0].effect
    differences = pair_differences(lambda point, r: r["final_accuracy"])
    assert accuracy.n == len(differences) == 7  # the failed trial's pair is left out
    low, high = scipy.stats.t.interval(0.95, len(differences) - 1, loc=differences.mean(),
                                       scale=scipy.stats.sem(differences))
    assert (accuracy.mean, accuracy.low, accuracy.high) == pytest.approx(
        (differences.mean(), low, high), rel=1e-9)

    diverged = next(t for t in study.trials if t.run == DIVERGED)
    assert list(diverged.scalar("accuracy/test")[0]) == [100, 200]  # not the NaN evaluation at 300
    steps = measures[1].effect
    differences = pair_differences(lambda point, r: r["steps_to_threshold"])
    low, high = scipy.stats.t.interval(0.95, 6, loc=0, scale=scipy.stats.sem(differences))
    assert differences.mean() == 0
    assert (steps.mean, steps.low, steps.high) == pytest.approx((0, low, high), abs=1e-9)

    # Kernel norm growth, last / first: the diverged trial's last finite step is 250, not 400.
    growth = pair_differences(lambda point, r: weight_growth(point) * (
        250 if r["status"] == "diverged" else STEPS) / STEPS)
    assert measures[4].effect.mean == pytest.approx(growth.mean())
    assert measures[9].effect.n == 4 and measures[9].note == "activation sigmoid"


def test_that_summary_one_pairs_trials_per_factor_level(synthetic):
    study = load_study(str(synthetic))
    rows = {(r.factor, r.level): r for r in summarise_levels(study)}
    assert list(rows) == [("activation", "sigmoid"), ("activation", "relu"), ("all", "all")]
    relu = rows[("activation", "relu")]
    differences = pair_differences(lambda point, r: r["final_accuracy"], ["relu"])
    low, high = scipy.stats.t.interval(0.95, 2, loc=differences.mean(),
                                       scale=scipy.stats.sem(differences))
    assert relu.arm == "before" and relu.accuracy.n == 3
    assert (relu.accuracy.low, relu.accuracy.high) == pytest.approx((low, high), rel=1e-9)
    assert rows[("activation", "sigmoid")].steps.verdict == "inconclusive"


def test_that_holm_adjusts_p_values_as_computed_by_hand():
    # Sorted: 0.005 * 4 = 0.02, 0.01 * 3 = 0.03, 0.03 * 2 = 0.06, 0.04 * 1 = 0.04 -> max 0.06.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.6, 0.7]) == [1.0, 1.0]  # 0.6 * 2 = 1.2, capped
    # Tied: 0.02 * 3 = 0.06, then max(0.06, 0.02 * 2) = 0.06; 0.5 * 1 = 0.5.
    assert holm([0.02, 0.02, 0.5]) == pytest.approx([0.06, 0.06, 0.5])
    assert holm([0.3]) == [0.3] and holm([]) == []


def test_that_holm_agrees_with_statsmodels():
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    p_values = np.random.default_rng(0).uniform(0, 0.2, 12)
    expected = multitest.multipletests(p_values, method="holm")[1]
    assert holm(list(p_values)) == pytest.approx(list(expected), rel=1e-12)


def test_that_holm_makes_a_verdict_supported_by_its_raw_p_inconclusive(synthetic):
    rows = summarise_levels(load_study(str(synthetic)))
    relu = next(r for r in rows if r.level == "relu").accuracy
    # BN's gain with relu: +0.03, +0.05, +0.04 (seed 3 failed), raw p 0.020: supported alone.
    differences = pair_differences(lambda point, r: r["final_accuracy"], ["relu"])
    raw = scipy.stats.ttest_1samp(differences, 0).pvalue
    assert relu.p == pytest.approx(raw, rel=1e-9) and raw == pytest.approx(0.0202, abs=1e-4)
    assert verdict(relu.mean, relu.p, +1) == "supported"
    # Summary I's six tests: accuracy p 0.00051 (sigmoid), 0.0014 (all), 0.020 (relu), and
    # steps p 1, 1, 1. Holm multiplies the third smallest by 6 - 2 = 4: 0.081.
    assert sorted(e.p for r in rows for e in (r.accuracy, r.steps))[2] == relu.p
    assert relu.p_adjusted == pytest.approx(4 * raw, rel=1e-9)
    assert relu.verdict == "inconclusive"
    # Sigmoid's gain, raw p 0.00051, stays supported: 6 * 0.00051 = 0.0031.
    sigmoid = rows[0].accuracy
    assert sigmoid.p_adjusted == pytest.approx(6 * sigmoid.p) and sigmoid.verdict == "supported"


def paired_study(tmp_path, gains, step_shifts):
    """BN none and before over one seed per gain, no instruments, sigmoid (the config's default).

    BN adds ``gains[seed]`` to the final accuracy and ``step_shifts[seed]`` to the
    steps to threshold.
    """
    config = parse_config({"experiment": "paired", "log": {"dir": str(tmp_path)},
                           "study": {"factors": {"bn": ["none", "before"],
                                                 "seed": list(range(len(gains)))}}})

    def result(point):
        before, seed = point["bn"] == "before", point["seed"]
        return {"status": "ok", "final_accuracy": 0.8 + 0.01 * seed + before * gains[seed],
                "steps_to_threshold": 1000 + 100 * seed + before * step_shifts[seed]}
    return write_study(config, result)


def test_that_a_claim_whose_measures_point_different_ways_is_mixed(tmp_path, capsys):
    # BN raises the final accuracy by 0.10 to 0.13 but needs 300 to 330 more steps.
    experiment = paired_study(tmp_path, (0.10, 0.12, 0.11, 0.13), (300, 330, 310, 320))
    measures = summarise_mechanisms(load_study(str(experiment)))
    accuracy, steps = (m.effect for m in measures[:2])
    # Raw p 0.000386 and 0.0000189; three tests (the instruments recorded nothing, and
    # claim 6's saturating measure repeats the accuracy): Holm 0.00077 and 0.000057.
    assert accuracy.p == pytest.approx(0.000386, rel=1e-3)
    assert steps.p == pytest.approx(0.0000189, rel=1e-2)
    assert (accuracy.p_adjusted, steps.p_adjusted) == pytest.approx((2 * accuracy.p, 3 * steps.p))
    assert (accuracy.verdict, steps.verdict) == ("supported", "contradicted")
    assert claim_verdicts(measures)[1] == "mixed"
    assert claim_sides(measures)[1] == {
        "supported": ["final test accuracy"],
        "contradicted": ["steps to threshold (never reached: train.steps)"]}

    assert main([str(experiment)]) == 0
    assert ("claim 1 (BN speeds up training and raises accuracy): mixed (supported by final test "
            "accuracy; contradicted by steps to threshold (never reached: train.steps))"
            in capsys.readouterr().out)
    report = (experiment / "report" / "report.md").read_text()
    assert ("| 1. BN speeds up training and raises accuracy | *mixed* | final test accuracy "
            "| steps to threshold (never reached: train.steps) |  |") in report
    # Claim 6's halves are claims 6 and 10; this study tests only the first.
    assert "| 6. BN lets saturating nonlinearities train " \
           "| *supported* | final test accuracy, saturating nonlinearities |  |  |" in report
    assert "| 10. BN tolerates higher learning rates | *not tested by this study* |" in report


def test_that_the_report_lists_failed_and_diverged_trials_and_skips_what_it_lacks(synthetic, capsys):
    experiment = synthetic
    assert main([str(experiment)]) == 0
    out = capsys.readouterr().out
    assert "claim 3 (BN regularizes the growth of the weights): contradicted" in out
    report = (experiment / "report" / "report.md").read_text()
    assert f"`{FAILED}`: ValueError: boom" in report
    assert f"`{DIVERGED}`: stopped at step 300" in report
    # The per-trial table, from results.csv (synthetic_result: sigmoid, none, seed 2 is 0.74).
    assert f"| `{DIVERGED}` | diverged | 0.7400 | 0.7400 | 200 | – | 1.0 |" in report
    assert f"| `{FAILED}` | failed | – | – | – | – | – |" in report
    assert "Each design point ran with one seed" not in report
    assert ("Skipped: the study has no test_ratio factor (configs/course2017_class_ratio.yaml "
            "varies it).") in report
    assert "| 3. BN regularizes the growth of the weights | *contradicted* |" in report
    # Both p-values beside each test; relu's gain is supported by its raw p alone, not after Holm.
    assert ("| activation | relu | before | 3 | +0.0400 [+0.0152, +0.0648] | 0.02 | 0.081 "
            "| inconclusive |") in report
    assert "Holm-adjusted one across the tests of that table" in report
    page = (experiment / "report" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 5  # all figures but the class ratio's
    assert "<em>contradicted</em>" in page


def test_that_a_one_at_a_time_level_is_compared_at_the_point_that_varies_it(tmp_path):
    config = parse_config({
        "experiment": "oat", "log": {"dir": str(tmp_path)},
        "study": {"design": "one_at_a_time", "factors": {
            "activation": ["sigmoid", "relu"], "batch_size": [32, 64], "bn": ["none", "before"]}}})
    study = load_study(str(write_study(config, lambda point: {
        "status": "ok", "final_accuracy": 0.5 + 0.1 * (point["bn"] == "before")})))
    assert [t.run for t, _ in study.pairs("before", activation="sigmoid")] == [
        "act=sigmoid,bs=64,bn=before,seed=0"]
    assert [t.run for t, _ in study.pairs("before")] == [
        "act=sigmoid,bs=64,bn=before,seed=0", "act=relu,bs=64,bn=before,seed=0",
        "act=sigmoid,bs=32,bn=before,seed=0"]
    rows = {(r.factor, r.level): r.accuracy for r in summarise_levels(study)}
    assert rows[("batch_size", "32")].n == rows[("activation", "relu")].n == 1
    assert rows[("all", "all")].n == 3 and rows[("all", "all")].mean == pytest.approx(0.1)
    assert rows[("all", "all")].verdict == "supported"  # no spread: the interval is the mean


def test_that_a_study_without_a_none_arm_gets_no_verdicts(tmp_path):
    config = parse_config({"experiment": "arms", "log": {"dir": str(tmp_path)},
                           "study": {"factors": {"bn": ["before", "after"], "seed": [0, 1]}}})
    experiment = write_study(config, lambda point: {"status": "ok", "final_accuracy": 0.9})
    write_report(str(experiment))
    report = pathlib.Path(write_report(str(experiment))).read_text()
    # A second report replaces the first's TensorBoard run instead of adding to it.
    assert len(list((experiment / "report").glob("events.out.tfevents.*"))) == 1
    assert "No verdicts: the study has no BN arm paired with `none`" in report
    assert "| `bn=after,seed=1` | ok | 0.9000 | – | never | – | – |" in report
    assert report.count("No BN arm to compare with `none`.") == 2
    assert "Skipped: no trial logged accuracy/test." in report


def test_that_the_report_names_the_data_that_was_read(tmp_path):
    # An IDX run of a config written for tfds keeps its tfds name, which it ignores.
    config = parse_config({"experiment": "idx", "log": {"dir": str(tmp_path)},
                           "data": {"source": "idx", "path": "/data/fashion", "name": "mnist",
                                    "classes": [0, 1]},
                           "study": {"factors": {"bn": ["none", "before"]}}})
    experiment = write_study(config, lambda point: {"status": "ok", "final_accuracy": 0.9})
    report = pathlib.Path(write_report(str(experiment))).read_text()
    assert "Config defaults: data IDX files in /data/fashion, classes [0, 1];" in report


def test_that_the_class_ratio_figure_takes_seeds_with_equal_accuracy(tmp_path):
    config = parse_config({
        "experiment": "ratio", "log": {"dir": str(tmp_path)}, "data": {"classes": [0, 1]},
        "study": {"factors": {"test_ratio": ["1:1", "1:9"], "bn": ["none", "before"], "seed": [0, 1, 2]}}})
    # The float64 mean of three 0.7s is 0.7 - 1.1e-16: below their minimum.
    experiment = write_study(config, lambda point: {
        "status": "ok", "final_accuracy": 0.7, "final_accuracy_batch_stats": 0.7})
    write_report(str(experiment))
    assert (experiment / "report" / "class_ratio.png").read_bytes().startswith(b"\x89PNG")


def test_that_jacobian_spectra_of_step_zero_alone_give_no_isometry_measure(tmp_path):
    config = parse_config({"experiment": "early", "log": {"dir": str(tmp_path)},
                           "study": {"factors": {"bn": ["none", "before"], "seed": [0, 1]}}})

    def initial_spectra_only(run_dir, point, result):
        with tf.summary.create_file_writer(str(run_dir)).as_default():
            for layer in ("network", "dense_1"):
                mean_square = 0.5 if point["bn"] == "none" else 0.6 + 0.1 * point["seed"]
                tf.summary.scalar(f"jacobian/{layer}/mean_square", mean_square, step=0)

    study = load_study(str(write_study(
        config, lambda point: {"status": "ok", "final_accuracy": 0.9}, initial_spectra_only)))
    isometry = [m for m in summarise_mechanisms(study) if m.claim == 5]
    assert len(isometry) == 2
    for measure in isometry:
        assert measure.effect.n == 0 and measure.effect.verdict == "inconclusive"
        assert measure.note == ("no data: the jacobian instrument was off or recorded too little "
                                "(lower log.jacobian_every)")


def test_that_claim_10_compares_the_largest_learning_rate_each_arm_trains_at(tmp_path):
    rates = [0.01, 0.1, 1.0]
    config = parse_config({"experiment": "rates", "log": {"dir": str(tmp_path)},
                           "train": {"steps": 1000, "threshold": 0.9},
                           "study": {"factors": {"learning_rate": rates, "bn": ["none", "before"],
                                                 "seed": [0, 1, 2]}}})
    # Largest rate that reaches 0.9 without diverging, per seed: none 0.1, 0.01 and no rate at
    # all (the floor, a decade below the grid: 0.001); before 1.0 (diverging at 1.0 with
    # seed 1, so 0.1 there) and 1.0.
    tolerated = {"none": (0.1, 0.01, None), "before": (1.0, 0.1, 1.0)}

    def result(point):
        largest = tolerated[point["bn"]][point["seed"]]
        rate = point["learning_rate"]
        diverged = point["bn"] == "before" and point["seed"] == 1 and rate == 1.0
        reached = largest is not None and rate <= largest or diverged
        return {"status": "diverged" if diverged else "ok", "final_accuracy": 0.95 if reached else 0.5,
                "steps_to_threshold": 400 if reached else None}

    measures = summarise_mechanisms(load_study(str(write_study(config, result))))
    largest, top = [m for m in measures if m.claim == 10]
    assert largest.effect.n == 3
    # log10 differences: 0 - (-1), -1 - (-2), 0 - (-3).
    assert largest.effect.mean == pytest.approx(np.mean([1, 1, 3]))
    assert largest.note == "rates 0.01, 0.1, 1; none trained: 0.001"
    assert top.effect.n == 3 and top.note == "learning_rate 1.0"
    assert top.effect.mean == pytest.approx(np.mean([0.45, 0.45, 0.45]))


def test_that_the_command_line_names_a_folder_without_a_study(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "holds no finished study" in capsys.readouterr().err


def test_that_a_digits_study_gets_every_figure_and_both_tables(tmp_path):
    overrides = ["train.steps=200", "train.eval_every=50", "data.classes=[0,1]",
                 "study.factors={test_ratio: ['1:1', '1:9'], bn: [none, before], seed: [0, 1]}",
                 "log.weights_every=100", "log.jacobian_every=200", "log.percentiles_every=100",
                 "log.probe_size=200", f"log.dir={tmp_path}"]
    args = ["--config", QUICKSTART, "--quiet"]
    for override in overrides:
        args += ["--set", override]
    assert run_main(args) == 0
    experiment = tmp_path / "quickstart"
    path = write_report(str(experiment))
    assert path == str(experiment / "report" / "report.md")

    report = pathlib.Path(path).read_text()
    assert ("| factor | level | bn | pairs | Δ final accuracy | p | p (Holm) | verdict "
            "| Δ steps to threshold | p | p (Holm) | verdict |") in report
    assert "| claim | measure | claimed | pairs | Δ mean [95% CI] | p | p (Holm) | verdict |" in report
    for level, pairs in (("1:1", 2), ("1:9", 2)):
        assert f"| test_ratio | {level} | before | {pairs} |" in report
    assert "| all | all | before | 4 |" in report
    figures = {"accuracy_test_ratio", "class_ratio", "grad_norm", "jacobian_spectra", "weight_norm",
               "percentiles"}
    assert "Skipped" not in report
    for name in figures:
        png = experiment / "report" / f"{name}.png"
        assert png.read_bytes()[:8] == PNG_SIGNATURE and png.stat().st_size > 10_000
        pixels = imread(png)
        assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 10
        assert f"]({name}.png)" in report
    page = (experiment / "report" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(figures)

    events = EventAccumulator(str(experiment / "report"), size_guidance={"tensors": 0})
    events.Reload()
    plugins = {tag: events.SummaryMetadata(tag).plugin_data.plugin_name for tag in events.Tags()["tensors"]}
    images = {tag: events.Tensors(tag) for tag, plugin in plugins.items() if plugin == "images"}
    # The figures form their own group in the Images tab, each figure whole and, when it has
    # several panels, each panel as its own image (readable without "actual size").
    wholes = {tag for tag in images if tag.count("/") == 1}
    assert wholes == {f"report/{name}" for name in figures}
    sizes = {}
    for tag, (event,) in images.items():
        width, height, encoded = make_ndarray(event.tensor_proto)
        assert encoded[:8] == PNG_SIGNATURE
        sizes[tag] = (int(height), int(width))
    for tag in wholes:
        assert imread(experiment / "report" / f"{tag.removeprefix('report/')}.png").shape[:2] == sizes[tag]
    # Gradient norms: one panel per Dense layer (dense_1, dense_2, logits) in one row.
    panels = sorted(tag for tag in images if tag.startswith("report/grad_norm/"))
    assert panels == ["report/grad_norm/1", "report/grad_norm/2", "report/grad_norm/3"]
    for tag in panels:
        height, width = sizes[tag]
        assert 250 < width < sizes["report/grad_norm"][1] / 2 and height > 200
    # The Text tab: the config used, the verdicts and the whole report.
    texts = {tag: make_ndarray(events.Tensors(tag)[0].tensor_proto).item().decode()
             for tag, plugin in plugins.items() if plugin == "text"}
    assert set(texts) == {"report/config", "report/verdicts", "report/report"}
    assert texts["report/config"] == "```yaml\n" + (experiment / "config.yaml").read_text() + "```"
    # The Text tab keeps no image from a file or a data: URI: it names each figure's tag
    # in the Images tab, with a link filtered to it, where the file has the image.
    pointed = re.sub(r"!\[(.*?)\]\((\w+)\.png\)", lambda m: (
        f"*Figure: {m[1]}* (Images tab, tag `report/{m[2]}`: "
        f"[show](#images&tagFilter=%5Ereport%2F{m[2]}%28%2F%7C%24%29))"), report)
    assert texts["report/report"] == pointed != report
    assert set(re.findall(r"tag `(report/\w+)`", pointed)) == wholes
    assert "<img" not in markdown_to_safe_html(texts["report/report"])
    assert texts["report/verdicts"].startswith("| claim | verdict |")
    assert "| 1. BN speeds up training and raises accuracy |" in texts["report/verdicts"]


def test_that_events_read_as_tensorboard_reads_them_from_several_files_and_formats(tmp_path):
    """Two writers' files, float32 and float64 scalars, a legacy ``simple_value``, a kept and
    a dropped histogram, a scalar whose plugin is named only by the second file, steps out
    of order: `read_events` gives TensorBoard's values."""
    kept = tags.jacobian("dense_1", "singular_values")
    for writer_number, steps in enumerate(((20, 0), (10,))):
        writer = tf.summary.create_file_writer(str(tmp_path), filename_suffix=f".{writer_number}")
        with writer.as_default():
            for step in steps:
                tf.summary.scalar("val_accuracy", 0.1 + step / 3, step=step)
                tf.summary.write("double_scalar", tf.constant(step / 7, tf.float64), step=step,
                                 metadata=scalar_metadata.create_summary_metadata(None, None))
                tf.summary.write("named_late", tf.constant(step / 3), step=step, metadata=(
                    scalar_metadata.create_summary_metadata(None, None) if writer_number else None))
                tf.summary.histogram(kept, np.arange(step + 3.0), step=step)
                tf.summary.histogram("weights/dense_1/kernel", np.ones(4) * step, step=step)
                legacy = tf.compat.v1.Summary(value=[tf.compat.v1.Summary.Value(
                    tag="legacy_loss", simple_value=2.0 - step / 11)])
                tf.summary.experimental.write_raw_pb(legacy.SerializeToString(), step=step)
        writer.close()
    read = read_events(str(tmp_path))
    accumulator = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0}).Reload()
    expected = {}
    for tag in accumulator.Tags()["tensors"]:
        events = sorted(accumulator.Tensors(tag), key=lambda e: e.step)
        expected[tag] = ([e.step for e in events], [make_ndarray(e.tensor_proto) for e in events])
    # TensorBoard's accumulator keeps a legacy value apart; its loader converts it, as does ours.
    legacy = sorted(accumulator.Scalars("legacy_loss"), key=lambda e: e.step)
    expected["legacy_loss"] = ([e.step for e in legacy], [np.float32(e.value) for e in legacy])
    assert set(read.scalars) == {"val_accuracy", "double_scalar", "legacy_loss", "named_late"}
    for tag, (steps, values) in read.scalars.items():
        assert steps.tolist() == expected[tag][0] == [0, 10, 20]
        assert values.tolist() == [float(v) for v in expected[tag][1]]
    assert read.scalars["double_scalar"][1].tolist() == [0.0, 10 / 7, 20 / 7]  # float64 kept whole
    assert set(read.histograms) == {kept}
    assert [step for step, _ in read.histograms[kept]] == [0, 10, 20]
    for (_, buckets), want in zip(read.histograms[kept], expected[kept][1]):
        np.testing.assert_array_equal(buckets, want)


def test_that_claim_10_gets_a_verdict_per_activation_beside_the_pooled_one(tmp_path):
    config = parse_config({"experiment": "opposite", "log": {"dir": str(tmp_path)},
                           "train": {"steps": 1000, "threshold": 0.9},
                           "study": {"factors": {"activation": ["sigmoid", "relu"],
                                                 "learning_rate": [0.01, 0.1, 1.0],
                                                 "bn": ["none", "before"], "seed": [0, 1, 2]}}})
    # Largest rate that trains: with sigmoid BN 1.0 and none 0.01; with relu the other way.
    tolerated = {("sigmoid", "before"): 1.0, ("sigmoid", "none"): 0.01,
                 ("relu", "before"): 0.01, ("relu", "none"): 1.0}

    def result(point):
        reached = point["learning_rate"] <= tolerated[point["activation"], point["bn"]]
        return {"status": "ok", "final_accuracy": 0.95 if reached else 0.5,
                "steps_to_threshold": 400 if reached else None}

    measures = summarise_mechanisms(load_study(str(write_study(config, result))))
    rate = {m.level: m for m in measures if m.claim == 10 and m.name.startswith("log10")}
    assert list(rate) == ["", "activation=sigmoid", "activation=relu"]
    assert [rate[level].effect.mean for level in rate] == pytest.approx([0, 2, -2])
    assert [rate[level].effect.n for level in rate] == [6, 3, 3]
    assert claim_verdicts(measures)[10] == "inconclusive"  # pooled: +2 and -2 cancel
    assert level_verdicts(measures) == {10: {"activation=sigmoid": "supported",
                                             "activation=relu": "contradicted"}}
    # Holm's adjustment covers every test of the table, the per-level ones among them.
    tested = [m.effect for m in measures if not np.isnan(m.effect.p)]
    assert len(tested) == 9  # claims 1 (2), 6, and 10's two measures x (pooled + 2 levels)
    assert [e.p_adjusted for e in tested] == pytest.approx(holm([e.p for e in tested]))
    table = verdict_table(measures)
    assert table.header[:3] == ("claim", "verdict", "per level")
    row = next(r for r in table.rows if r[0].startswith("10."))
    assert row[1:3] == ("*inconclusive*", "activation=sigmoid: *supported*; activation=relu: *contradicted*")


def test_that_a_relative_threshold_times_each_arm_against_its_groups_best(tmp_path):
    config = parse_config({"experiment": "relative", "log": {"dir": str(tmp_path)},
                           "train": {"steps": 1000, "eval_every": 100,
                                     "threshold": {"relative": 0.98, "absolute": 0.99}},
                           "study": {"factors": {"bn": ["none", "before"], "seed": [0, 1]}}})
    # Test accuracy at steps 100, ..., 1000 of each (bn, seed).
    curves = {("none", 0): [0.095 * k for k in range(1, 11)],       # best of seed 0: 0.95
              ("before", 0): [0.6 + 0.03 * k for k in range(1, 11)],  # ends at 0.9 < 0.98 * 0.95
              ("none", 1): [0.5] * 10,
              ("before", 1): [min(0.9, 0.18 * k) for k in range(1, 11)]}  # 0.9 from step 500

    def result(point):
        return {"status": "ok", "steps_run": 1000, "final_accuracy": curves[point["bn"], point["seed"]][-1],
                "steps_to_threshold": None}

    def events(run_dir, point, _):
        with tf.summary.create_file_writer(str(run_dir)).as_default():
            for k, accuracy in enumerate(curves[point["bn"], point["seed"]], start=1):
                tf.summary.scalar("accuracy/test", accuracy, step=100 * k)

    experiment = write_study(config, result, events)
    study = load_study(str(experiment))
    assert str(study.config.train.threshold) == "relative 0.98, absolute 0.99"  # as tfbn.run prints it
    steps = relative_steps(study)
    # Seed 0: 0.98 * 0.95 = 0.931, which none reaches at step 1000 (0.95) and before never;
    # seed 1: 0.98 * 0.9 = 0.882, which before reaches at step 500 and none never.
    assert {t.run: steps(t) for t in study.trials} == pytest.approx(
        {"bn=none,seed=0": 1000, "bn=before,seed=0": np.nan, "bn=none,seed=1": np.nan,
         "bn=before,seed=1": 500}, nan_ok=True)
    [row] = summarise_levels(study)
    # Never reached counts as train.steps: (1000 - 1000 + 500 - 1000) / 2.
    assert row.relative.mean == -250 and row.relative.n == 2 and row.relative_never == (1, 1)
    assert row.steps.mean == 0 and row.never == (2, 2)
    [speed] = [m for m in summarise_mechanisms(study) if m.name.startswith("steps to 0.98")]
    assert speed.effect.mean == -250
    report = pathlib.Path(write_report(str(experiment))).read_text()
    assert "| `bn=before,seed=1` | ok | 0.9000 | – | never | 500 |" in report
    assert "| `bn=before,seed=0` | ok | 0.9000 | – | never | never |" in report
    assert "**4 of 4 trials never reached the accuracy threshold 0.99**" in report
    # Differences -0.05 and +0.4 (mean 0.175, standard error 0.225), 0 and -500 (mean -250,
    # standard error 250); t(0.975, 1 degree of freedom) = 12.706.
    assert ("| all | all | before | 2 | +0.1750 [-2.6839, +3.0339] | 0.58 | 1 | inconclusive "
            "| +0 [+0, +0] | 1 | 1 | inconclusive | 2 / 2 | -250 [-3427, +2927] | 0.5 | 1 | inconclusive "
            "| 1 / 1 |") in report


def test_that_each_fashion_config_is_its_mnist_study_on_the_idx_files_with_a_relative_threshold():
    configs = pathlib.Path(QUICKSTART).parent
    fashion = sorted(p for p in configs.glob("fashion_*.yaml") if p.name != "fashion_mnist_idx.yaml")
    mnist = sorted(p for p in configs.glob("*.yaml") if "name: mnist" in p.read_text())
    assert [p.name for p in fashion] == [f"fashion_{p.name}" for p in mnist]
    for ours, theirs in zip(fashion, mnist):
        ours, theirs = (to_dict(load_config(str(p))) for p in (ours, theirs))
        assert ours.pop("experiment") == f"fashion_{theirs.pop('experiment')}"
        assert ours["data"].pop("source") == "idx" and ours["data"].pop("path") == "/usr/share/datasets/fashion-mnist"
        assert theirs["data"].pop("source") == "tfds" and theirs["data"].pop("name") == "mnist"
        del ours["data"]["name"], theirs["data"]["path"]
        threshold = ours["train"].pop("threshold")
        assert threshold["relative"] == 0.98 and threshold["absolute"] < theirs["train"].pop("threshold")
        assert ours == theirs
