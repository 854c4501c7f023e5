"""The Custom Scalars layout: one multi-line chart per key measure, served by real TensorBoard."""

import re
import time

from tfbn.config import load_config
from tfbn.layout import study_layout
from tfbn.tags import JACOBIAN_STATISTICS, describe, jacobian
from tfbn.run import main

from helpers import QUICKSTART, get_json, read_scalars, tensorboard_server


def test_that_the_layout_has_a_chart_per_layer_of_each_recorded_instrument():
    config = load_config(QUICKSTART, ["log.instruments=[gradients, jacobian, ics]", "model.depth=3"])
    layout = study_layout(config)
    assert [c.title for c in layout.category] == [
        "accuracy and loss", "gradient norm per layer",
        "Jacobian mean squared singular value", "internal covariate shift ||G - G'||"]
    assert [chart.title for chart in layout.category[1].chart] == ["dense_1", "dense_2", "dense_3", "logits"]
    assert list(layout.category[2].chart[0].multiline.tag) == [r"^jacobian/network/mean_square$"]
    assert [chart.title for chart in layout.category[3].chart] == ["dense_2", "dense_3", "logits"]


def test_that_each_jacobian_statistic_charted_has_its_own_description():
    descriptions = {s: describe(jacobian("dense_1", s)) for s in JACOBIAN_STATISTICS}
    assert len(set(descriptions.values())) == len(JACOBIAN_STATISTICS)
    assert descriptions["share_0.5_to_2"] == describe(jacobian("network", "singular_values")) + (
        "; this one: the share of singular values within [0.5, 2], neither shrinking nor "
        "stretching a direction more than twofold (1: all of them)")


def test_that_tensorboard_serves_each_chart_once_for_two_studies_and_it_matches_every_trials_tags(tmp_path):
    # Evaluations every tenth of the run: the instruments see the steps where they end.
    for experiment, bn, steps in (("quickstart", "[none, before, after]", 200), ("other", "[before]", 100)):
        assert main(["--config", QUICKSTART, "--quiet", "--no-report", "--set", f"log.dir={tmp_path}",
                     "--set", f"experiment={experiment}", "--set", f"study.factors.bn={bn}",
                     "--set", f"train.steps={steps}", "--set", f"train.eval_every={steps // 10}"]) == 0
    trials = ["quickstart/bn=none", "quickstart/bn=before", "quickstart/bn=after", "other/bn=before"]
    with tensorboard_server(tmp_path) as url:
        deadline = time.monotonic() + 90
        while True:
            try:
                layout = get_json(f"{url}/data/plugin/custom_scalars/layout")
                tags = get_json(f"{url}/data/plugin/scalars/tags")
                if layout and all(run in tags for run in trials):
                    break
            except OSError:  # not listening yet
                pass
            assert time.monotonic() < deadline, "TensorBoard did not serve the layout in 90 s"
            time.sleep(0.5)
    # log.jacobian_every's default gives a run of any length 10 spectra after step 0.
    assert [step for step, _ in read_scalars(tmp_path / "quickstart" / "bn=none")[
        "jacobian/network/mean_square"]] == list(range(0, 201, 20))
    assert [step for step, _ in read_scalars(tmp_path / "other" / "bn=before")[
        "jacobian/network/mean_square"]] == list(range(0, 101, 10))
    # Both studies wrote the same layout: TensorBoard shows it once.
    titles = [category["title"] for category in layout["category"]]
    assert titles == ["accuracy and loss", "gradient norm per layer", "kernel norm per layer",
                      "Jacobian mean squared singular value", "median input of each nonlinearity"]
    assert [chart["title"] for chart in layout["category"][1]["chart"]] == [
        "dense_1", "dense_2", "logits"]
    for category in layout["category"]:
        for chart in category["chart"]:
            [pattern] = chart["multiline"]["tag"]
            # Every arm of either study draws a line on every chart (BN's own measures
            # aside, all are shared); the run filter selects a study.
            for run in trials:
                assert any(re.search(pattern, tag) for tag in tags[run]), (chart["title"], run)
