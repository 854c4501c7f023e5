"""Claims 7 to 9 of the report, from a real study with the ics and landscape instruments."""

import dataclasses

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util.tensor_util import make_ndarray

from tfbn.report.figures import _landscape, _layer_grid, draw_figures
from tfbn.report.summaries import CLAIMS, summarise_mechanisms
from tfbn.report.trials import load_study
from tfbn.run import main

from helpers import QUICKSTART

SEEDS = (0, 1)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("logs")
    assert main(["--config", QUICKSTART, "--quiet", "--no-report", "--set", f"log.dir={log_dir}",
                 "--set", "train.steps=200", "--set", "train.eval_every=100",
                 "--set", "log.instruments=[ics, landscape]", "--set", "log.ics_every=50",
                 "--set", "log.landscape_every=50", "--set", "study.factors.bn=[none, before, noisy]",
                 "--set", f"study.factors.seed={list(SEEDS)}"]) == 0
    return load_study(str(log_dir / "quickstart"))


def logged(run_dir, prefix):
    """Every value of the scalar tags under ``prefix``, read with TensorBoard's own reader."""
    events = EventAccumulator(str(run_dir), size_guidance={"tensors": 0}).Reload()
    return np.array([float(make_ndarray(e.tensor_proto)) for tag in events.Tags()["tensors"]
                     if tag.startswith(prefix) for e in events.Tensors(tag)])


def mean_difference(study, arm, against, prefix, transform):
    return np.mean([transform(logged(f"{study.experiment_dir}/bn={arm},seed={s}", prefix)).mean()
                    - transform(logged(f"{study.experiment_dir}/bn={against},seed={s}", prefix)).mean()
                    for s in SEEDS])


def test_that_claims_7_8_and_9_are_measured_on_the_pairs_from_the_events_written(study):
    measures = summarise_mechanisms(study)
    by_claim = {claim: [m for m in measures if m.claim == claim] for claim in (7, 8, 9)}
    assert [len(by_claim[c]) for c in (7, 8, 9)] == [2, 3, 4]
    assert all(m.effect.n == len(SEEDS) for c in (7, 8, 9) for m in by_claim[c])
    shift, cosine = by_claim[7]
    # 2 layers (dense_2, logits) x 5 writes (steps 0, 50, ..., 200) per trial.
    assert len(logged(f"{study.experiment_dir}/bn=none,seed=0", "ics/l2/")) == 10
    assert shift.effect.mean == pytest.approx(mean_difference(study, "before", "none", "ics/l2/", np.log10))
    assert cosine.effect.mean == pytest.approx(mean_difference(study, "before", "none", "ics/cosine/",
                                                               lambda v: v))
    for measure, name in zip(by_claim[8], ("loss_variation", "gradient_predictiveness", "beta_smoothness")):
        assert measure.effect.mean == pytest.approx(
            mean_difference(study, "before", "none", f"landscape/{name}", np.log10))
    noisy_shift = by_claim[9][0]
    assert noisy_shift.effect.mean == pytest.approx(
        mean_difference(study, "noisy", "before", "ics/l2/", np.log10))
    assert noisy_shift.effect.mean > 1  # the noise moves the gradients by more than ten times BN's shift
    rows = {t.run: t for t in study.trials}
    for measure, column in zip(by_claim[9][1:3], ("final_accuracy", "final_accuracy_batch_stats")):
        assert measure.effect.mean == pytest.approx(np.mean(
            [rows[f"bn=noisy,seed={s}"].number(column) - rows[f"bn=before,seed={s}"].number(column)
             for s in SEEDS]))
    assert measures == sorted(measures, key=lambda m: m.claim)
    assert set(CLAIMS) >= {7, 8, 9}


def test_that_a_study_without_the_instruments_has_no_rows_for_their_claims(study):
    log = dataclasses.replace(study.config.log, instruments=("weights",))
    config = dataclasses.replace(study.config, log=log)
    measures = summarise_mechanisms(dataclasses.replace(study, config=config))
    assert {m.claim for m in measures} & {7, 8, 9} == set()


def test_that_the_ics_and_landscape_figures_draw_each_arms_mean_over_seeds(study, tmp_path):
    plots = {plot.name: plot for plot in draw_figures(study, str(tmp_path))}
    for name in ("ics_l2", "ics_cosine", "landscape"):
        assert plots[name].path and plots[name].skipped is None
    # One panel per layer (dense_2, logits) and per measure, in both the PNG and the panels.
    assert [title for title, _ in plots["ics_l2"].panels] == ["act=sigmoid  dense_2", "act=sigmoid  logits"]
    figures = {"ics_l2": _layer_grid(study, "ics/l2", "||G - G'||", "ics", True),
               "landscape": _landscape(study)}
    for name, tag in (("ics_l2", "ics/l2/logits"), ("landscape", "landscape/beta_smoothness")):
        ax = figures[name].axes[-1]
        lines = {line.get_label(): line for line in ax.lines}
        assert set(lines) == {"bn=none", "bn=before", "bn=noisy"}
        for arm, line in lines.items():
            runs = [logged_series(f"{study.experiment_dir}/{arm},seed={s}", tag) for s in SEEDS]
            assert line.get_xdata().tolist() == runs[0][0]  # 0, 50, ..., 200
            np.testing.assert_allclose(line.get_ydata(), np.mean([values for _, values in runs], 0))
        assert ax.get_yscale() == "log"


def logged_series(run_dir, tag):
    events = EventAccumulator(str(run_dir), size_guidance={"tensors": 0}).Reload()
    points = sorted((e.step, float(make_ndarray(e.tensor_proto))) for e in events.Tensors(tag))
    return [step for step, _ in points], [value for _, value in points]
