"""The tag contract: what the instruments write is what the report reads, and every tag describes itself."""


import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tfbn import tags
from tfbn.callbacks.step_metrics import tag as step_metrics_tag
from tfbn.report.figures import draw_figures
from tfbn.report.summaries import summarise_mechanisms
from tfbn.report.trials import load_study
from tfbn.run import main

from helpers import QUICKSTART

INSTRUMENTS = "[weights, gradients, jacobian, percentiles, ics, landscape]"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("logs")
    every = {f"log.{name}_every=100" for name in
             ("weights", "gradients", "jacobian", "percentiles", "ics", "landscape")}
    args = ["--config", QUICKSTART, "--quiet", "--no-report", "--set", f"log.dir={log_dir}",
            "--set", "train.steps=300", "--set", "train.eval_every=100",
            "--set", f"log.instruments={INSTRUMENTS}", "--set", "study.factors.seed=[0, 1]"]
    for override in sorted(every):
        args += ["--set", override]
    assert main(args) == 0
    return load_study(str(log_dir / "quickstart"))


def test_that_every_measure_the_report_reads_exists_in_the_events_the_instruments_wrote(study):
    measures = summarise_mechanisms(study)
    instrument_claims = {2, 3, 4, 5, 7, 8}
    assert {m.claim for m in measures} >= instrument_claims
    for measure in measures:
        if measure.claim in instrument_claims:
            # Both arms of both seeds gave a finite value: the report found what was written.
            assert measure.effect.n == 2, (measure.claim, measure.name)


def test_that_every_figure_of_the_instruments_is_drawn(study, tmp_path):
    plots = {plot.name: plot for plot in draw_figures(study, str(tmp_path))}
    for name in ("grad_norm", "weight_norm", "jacobian_spectra", "percentiles"):
        assert plots[name].path, plots[name].skipped


def test_that_every_tag_written_carries_its_description(study):
    for trial in study.trials:
        events = EventAccumulator(trial.run_dir, size_guidance={"tensors": 0}).Reload()
        # The HParams session and its summary metrics are described by the experiment, not per tag.
        written = [t for t in events.Tags()["tensors"] if not t.startswith(("hparams/", "_hparams_/"))]
        assert len(written) > 50
        for tag in written:
            description = events.SummaryMetadata(tag).summary_description
            assert description and description == tags.describe(tag), tag


def test_that_the_evaluation_tags_are_the_ones_the_report_and_layout_name():
    assert step_metrics_tag("val_accuracy") == tags.TEST_ACCURACY
    assert step_metrics_tag("val_loss") == tags.TEST_LOSS
    assert step_metrics_tag("loss") == tags.TRAIN_LOSS


def test_that_runs_of_earlier_versions_are_read_under_todays_tag_names():
    assert tags.current("grad_norm/dense_1") == tags.gradient_norm("dense_1") == "gradients/norm/dense_1"
    assert tags.current("grad_mean_abs/logits") == tags.gradient_mean_abs("logits")
    assert tags.current("grad/dense_2") == tags.gradient("dense_2") == "gradients/values/dense_2"
    assert tags.current("weight_norm/dense_1") == tags.weight_norm("dense_1") == "weights/norm/dense_1"
    assert tags.current("weights/bn_1/gamma") == tags.weights("bn_1", "gamma") == "weights/values/bn_1/gamma"
    for tag in ("gradients/norm/dense_1", "weights/values/dense_1/kernel", "weights/norm/logits",
                "jacobian/network/max", "accuracy/test"):
        assert tags.current(tag) == tag
