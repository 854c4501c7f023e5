import csv
import dataclasses
import json
import time
import urllib.request

import pytest
from tensorboard.plugins.hparams import api_pb2

from tfbn.hparams import METRICS, read_definition, write_experiment
from tfbn.results import RESULT_COLUMNS, TrialResult
from tfbn.run import main
from tfbn.sweep import result_columns

from helpers import QUICKSTART, tensorboard_server

STATUSES = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]


def run_study(log_dir, experiment, *overrides):
    args = ["--config", QUICKSTART, "--quiet", "--no-report"]
    for override in (f"log.dir={log_dir}", f"experiment={experiment}", "train.eval_every=100",
                     "log.instruments=[]", *overrides):
        args += ["--set", override]
    assert main(args) == 0
    with open(log_dir / experiment / "results.csv") as f:
        return {row["run"]: row for row in csv.DictReader(f)}


def post(url, path, body):
    request = urllib.request.Request(f"{url}/data/plugin/hparams/{path}", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as response:
        return json.load(response)


def session_groups(url, expected):
    deadline = time.monotonic() + 90
    while True:
        try:
            groups = post(url, "session_groups", {"allowedStatuses": STATUSES, "sliceSize": 100})
            if len(groups.get("sessionGroups", [])) >= expected:
                return groups["sessionGroups"]
        except OSError:  # not listening yet
            pass
        assert time.monotonic() < deadline, "TensorBoard served no HParams sessions in 90 s"
        time.sleep(0.5)


def test_that_two_studies_in_one_log_dir_never_share_an_hparams_session_group(tmp_path):
    # Same factor values in both studies, different lengths: grouping them would average.
    # Seeds 10 and 9 sort the other way as text.
    short = run_study(tmp_path, "short", "train.steps=200", "study.factors.bn=[none,before]")
    long = run_study(tmp_path, "long", "train.steps=400", "train.threshold=0.05",
                     "study.factors={bn: [before], seed: [10, 9]}")
    rows = {f"short/{run}": row for run, row in short.items()}
    rows |= {f"long/{run}": row for run, row in long.items()}
    with tensorboard_server(tmp_path) as url:
        groups = {group["name"]: group for group in session_groups(url, len(rows))}
        experiment = post(url, "experiment", {})
    assert set(groups) == set(rows)
    for name, group in groups.items():
        [session] = group["sessions"]
        assert session["name"] == name
        assert session["status"] == "STATUS_SUCCESS"
        metrics = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
        row = rows[name]
        assert metrics["hparams/final_accuracy"] == pytest.approx(float(row["final_accuracy"]), rel=1e-6)
        assert metrics["accuracy/test"] == pytest.approx(float(row["final_accuracy"]), rel=1e-6)
        assert "loss/test" in metrics
        # Every trial has the metrics shown by default, so parallel coordinates draws it.
        assert set(list(METRICS)[:5]) <= set(metrics)
        if row["steps_to_threshold"]:
            assert metrics["hparams/steps_to_threshold"] == float(row["steps_to_threshold"])
        else:  # never reached: missing, not a number that sorts among the real ones
            assert "hparams/steps_to_threshold" not in metrics
    assert "hparams/steps_to_threshold" in {m["name"]["tag"] for m in groups["long/bn=before,seed=9"]["metricValues"]}
    # Levels are numbers where they are numbers, so they sort as such.
    assert groups["long/bn=before,seed=9"]["hparams"] == {"bn": "before", "seed": 9}
    assert groups["short/bn=none"]["hparams"] == {"bn": "none"}
    # Each study's definition lists every study's factors, its own first and shown
    # (differing), each level once, numbers ordered as numbers, constants in the
    # description, not in a column; TensorBoard serves one of them.
    own = {study: read_definition(tmp_path / study) for study in ("long", "short")}
    for definition in own.values():
        assert definition.description == "Constant in every trial: bn_sync=True"
        assert [m.name.tag for m in definition.metric_infos] == list(METRICS)
    assert [(i.name, i.differs) for i in own["long"].hparam_infos] == [("bn", True), ("seed", True)]
    assert [(i.name, i.differs) for i in own["short"].hparam_infos] == [("bn", True), ("seed", False)]
    infos = {info["name"]: info for info in experiment["hparamInfos"]}
    assert experiment["description"] == "Constant in every trial: bn_sync=True"
    assert set(infos) == {"bn", "seed"}
    assert sorted(infos["bn"]["domainDiscrete"]) == ["before", "none"]
    assert infos["seed"]["type"] == "DATA_TYPE_FLOAT64"
    assert infos["seed"]["domainDiscrete"] == [9, 10]
    assert [m["name"]["tag"] for m in experiment["metricInfos"]] == list(METRICS)


def test_that_a_study_of_six_factors_shows_its_five_design_factors_and_its_seed_last(tmp_path):
    levels = {"activation": ["relu", "tanh"], "optimizer": ["sgd"], "batch_size": [64, 4, 16],
              "test_ratio": ["1:1", "1:9"], "bn": ["none", "before"], "seed": [0, 1], "model.width": [8, 16]}
    (tmp_path / "study").mkdir()
    write_experiment(str(tmp_path / "study"), levels, constants={})
    experiment = read_definition(tmp_path / "study")
    infos = {info.name: info for info in experiment.hparam_infos}
    # The dashboard shows five: those that differ, then by name; one level differs in nothing.
    assert sorted(name for name, info in infos.items() if info.differs) == [
        "activation", "batch_size", "bn", "model.width", "test_ratio"]
    assert [v.number_value for v in infos["batch_size"].domain_discrete.values] == [4, 16, 64]
    assert infos["model.width"].type == api_pb2.DATA_TYPE_FLOAT64


def test_that_the_hparams_metrics_and_the_results_columns_come_from_one_trial_result():
    assert RESULT_COLUMNS == tuple(f.name for f in dataclasses.fields(TrialResult))
    assert result_columns({"bn": "none"}) == ("trial", "run", "bn", *RESULT_COLUMNS)
    assert RESULT_COLUMNS[-1] == "message"  # the header of earlier runs' results.csv
    assert list(METRICS) == [
        "hparams/final_accuracy", "hparams/best_accuracy", "accuracy/test", "loss/test",
        "hparams/diverged", "hparams/steps_to_threshold"]
