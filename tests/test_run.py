import csv
import os
import pathlib
import subprocess
import sys
import warnings

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util.tensor_util import make_ndarray

from tfbn.config import load_config
from tfbn.design import design_points
from tfbn.packing import plan_packs
from tfbn.run import main

from helpers import QUICKSTART

SHORT = ["train.steps=200", "train.eval_every=50", "log.instruments=[]"]


def run(tmp_path, *overrides):
    args = ["--config", QUICKSTART, "--quiet", "--no-report", "--set", f"log.dir={tmp_path}"]
    for override in (*SHORT, *overrides):
        args += ["--set", override]
    return main(args)


def read_events(run_dir):
    events = EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    return events.Reload()


def plugin_tags(events, plugin):
    return {tag for tag in events.Tags()["tensors"]
            if events.SummaryMetadata(tag).plugin_data.plugin_name == plugin}


def read_scalars(run_dir):
    events = read_events(run_dir)
    return {tag: [(e.step, float(make_ndarray(e.tensor_proto))) for e in events.Tensors(tag)]
            for tag in plugin_tags(events, "scalars")}


def test_that_a_digits_study_writes_one_tensorboard_run_per_arm_against_the_step(tmp_path, capsys):
    assert run(tmp_path) == 0
    experiment = tmp_path / "quickstart"
    assert sorted(p.name for p in experiment.iterdir() if p.is_dir()) == [
        "bn=after", "bn=before", "bn=none", "tuner"]
    for arm in ("none", "before", "after"):
        scalars = read_scalars(experiment / f"bn={arm}")
        metrics = {"loss/train", "loss/test", "accuracy/train", "accuracy/test"}
        if arm != "none":
            metrics |= {"loss/test_batch_stats", "accuracy/test_batch_stats"}
        # No arm reaches the threshold in 200 steps: steps_to_threshold is missing, not -1.
        summary = {"hparams/final_accuracy", "hparams/best_accuracy", "hparams/diverged"}
        assert set(scalars) == metrics | summary
        for tag in metrics:
            assert [step for step, _ in scalars[tag]] == [50, 100, 150, 200]
            assert all(0 <= v < 10 for _, v in scalars[tag])
        assert scalars["hparams/final_accuracy"] == [scalars["accuracy/test"][-1]]
        assert scalars["hparams/diverged"] == [(200, 0.0)]
        assert plugin_tags(read_events(experiment / f"bn={arm}"), "hparams") == {
            "_hparams_/session_start_info", "_hparams_/session_end_info"}
    rows = list(csv.DictReader(open(experiment / "results.csv")))
    assert [row["bn"] for row in rows] == ["none", "before", "after"]
    accuracy = read_scalars(experiment / "bn=before")["accuracy/test"]
    row = rows[1]
    assert float(row["final_accuracy"]) == pytest.approx(accuracy[-1][1])
    assert float(row["best_accuracy"]) == pytest.approx(max(v for _, v in accuracy))
    assert row["status"] == "ok" and row["steps_run"] == "200"
    table = capsys.readouterr().out
    assert "bn      final acc  best acc  steps to thr  status" in table
    assert (experiment / "config.yaml").read_text().count("steps: 200") == 1


def test_that_a_rerun_resumes_without_training_again_and_a_changed_config_is_refused(tmp_path, capsys):
    assert run(tmp_path, "study.factors.bn=[none]") == 0
    experiment = tmp_path / "quickstart"
    before = {p: p.stat().st_mtime_ns for p in experiment.rglob("*events*")}
    assert run(tmp_path, "study.factors.bn=[none]") == 0
    assert {p: p.stat().st_mtime_ns for p in experiment.rglob("*events*")} == before
    assert len(list(csv.DictReader(open(experiment / "results.csv")))) == 1

    assert run(tmp_path, "study.factors.bn=[none]", "train.learning_rate=0.1") == 2
    assert "train.learning_rate changed" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in experiment.rglob("*events*")} == before


def test_that_restart_moves_the_earlier_run_aside(tmp_path):
    args = ["--config", QUICKSTART, "--quiet", "--no-report", "--restart", "--set", f"log.dir={tmp_path}",
            *sum((["--set", o] for o in (*SHORT, "study.factors.bn=[none]")), [])]
    assert main(args) == 0
    assert main(args) == 0
    folders = sorted(f for f in os.listdir(tmp_path) if not f.startswith("."))  # not the lock
    assert folders[0] == "quickstart" and folders[1].startswith("quickstart.")
    assert (tmp_path / folders[1] / "results.csv").exists()


def test_that_a_log_dir_that_cannot_be_written_exits_2_before_training(tmp_path, capsys):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("keep me")
    assert run(tmp_path, f"log.dir={blocker}/logs") == 2
    error = capsys.readouterr().err
    assert f"log.dir '{blocker}/logs'" in error and "--set log.dir=" in error
    assert blocker.read_text() == "keep me"


def test_that_the_command_line_starts_without_tensorflow_log_lines(tmp_path):
    command = [sys.executable, "-m", "tfbn.run", "--config", QUICKSTART, "--quiet", "--no-report",
               *sum((["--set", o] for o in (*SHORT, "train.steps=50", "study.factors.bn=[none]",
                                             f"log.dir={tmp_path}")), [])]
    environment = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    quiet = subprocess.run(command, capture_output=True, text=True, env=environment,
                           cwd=pathlib.Path(__file__).parent.parent)
    assert quiet.returncode == 0 and quiet.stderr == ""
    level_3 = subprocess.run([*command, "--set", f"log.dir={tmp_path}/3"], capture_output=True,
                             text=True, env={**environment, "TF_CPP_MIN_LOG_LEVEL": "3"},
                             cwd=pathlib.Path(__file__).parent.parent)
    assert level_3.returncode == 0 and level_3.stderr == ""  # a user's level 3 is quiet too
    verbose = subprocess.run([*command, "--verbose", "--set", f"log.dir={tmp_path}/v"],
                             capture_output=True, text=True, env=environment,
                             cwd=pathlib.Path(__file__).parent.parent)
    assert verbose.returncode == 0 and "I0000" in verbose.stderr  # TensorFlow's own lines


def test_that_a_resume_refuses_a_changed_bn_sync_by_name_and_accepts_a_changed_device_setting(
        tmp_path, capsys):
    assert run(tmp_path, "study.factors.bn=[before]") == 0
    saved = (tmp_path / "quickstart" / "config.yaml").read_text()
    assert "bn_sync: true" in saved.split("train:")[0]  # in the model section
    assert run(tmp_path, "study.factors.bn=[before]", "model.bn_sync=false") == 2
    assert "model.bn_sync changed" in capsys.readouterr().err
    with pytest.warns(FutureWarning, match="distribute.bn_sync is now model.bn_sync"):
        assert run(tmp_path, "study.factors.bn=[before]", "distribute.bn_sync=false") == 2
    assert "model.bn_sync changed" in capsys.readouterr().err
    assert (tmp_path / "quickstart" / "config.yaml").read_text() == saved
    assert run(tmp_path, "study.factors.bn=[before]", "distribute.parallel_trials=1",
               "log.gradients_every=20") == 0
    assert len(list(csv.DictReader(open(tmp_path / "quickstart" / "results.csv")))) == 1


def test_that_a_dotted_factor_runs_as_a_study_and_its_packed_trials_equal_solo_ones(tmp_path):
    factors = "study.factors={bn: [before], model.bn_momentum: [0.9, 0.99]}"
    assert run(tmp_path, factors, "train.steps=100") == 0
    assert run(tmp_path, factors, "train.steps=100", "train.pack=off", "experiment=solo") == 0
    packed = list(csv.DictReader(open(tmp_path / "quickstart" / "results.csv")))
    solo = list(csv.DictReader(open(tmp_path / "solo" / "results.csv")))
    assert [(row["run"], row["model.bn_momentum"], row["status"]) for row in packed] == [
        ("bn=before,bn_momentum=0.9", "0.9", "ok"), ("bn=before,bn_momentum=0.99", "0.99", "ok")]
    accuracies = [float(row["final_accuracy"]) for row in packed]
    # The momentum changes the moving statistics that the test accuracy normalizes by.
    assert abs(accuracies[0] - accuracies[1]) > 0.02
    # As the packing equivalence tests allow: one test example of the 500.
    assert accuracies == pytest.approx([float(row["final_accuracy"]) for row in solo], abs=0.002)


USER_MODELS = """
import keras

calls = []


def build(input_shape, num_classes, hidden_units, bn, seed):
    calls.append((input_shape, num_classes, hidden_units, bn, seed))
    inputs = keras.Input(input_shape, name="input")
    x = keras.layers.Dense(hidden_units[0], name="dense_1",
                           kernel_initializer=keras.initializers.GlorotUniform(seed))(inputs)
    if bn == "before":
        x = keras.layers.BatchNormalization(name="bn_1")(x)
    x = keras.layers.Activation("relu", name="act_1")(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, name="logits")(x))
"""


def test_that_a_model_builder_study_trains_the_users_function_one_trial_a_pack(
        tmp_path, monkeypatch, capsys):
    (tmp_path / "user_models.py").write_text(USER_MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert run(tmp_path, "model.builder=user_models:build", "model.width=16",
                   "study.factors.bn=[none, before]", "log.instruments=[weights]") == 0
    assert not [w for w in caught if "structure" in str(w.message)]  # called as Keras expects
    import user_models

    config = load_config(QUICKSTART, ["model.builder=user_models:build", "study.factors.bn=[none, before]"])
    assert [len(pack.points) for pack in plan_packs(config, design_points(config))] == [1, 1]
    # In design order, each building its network once.
    assert user_models.calls == [((64,), 10, (16, 16), "none", 0), ((64,), 10, (16, 16), "before", 0)]
    experiment = tmp_path / "quickstart"
    assert [row["status"] for row in csv.DictReader(open(experiment / "results.csv"))] == ["ok", "ok"]
    # The user's one hidden layer, not build_mlp's two.
    assert {tag.split("/")[-1] for tag in read_scalars(experiment / "bn=before")
            if tag.startswith("weights/norm/")} == {"dense_1", "logits"}
    assert run(tmp_path, "model.builder=user_models:absent", "experiment=other") == 2
    assert "model.builder 'user_models:absent': user_models has no function absent" in (
        capsys.readouterr().err)


def test_that_output_paths_of_the_wrong_kind_are_refused_before_anything_is_written(tmp_path, capsys):
    (tmp_path / "quickstart" / "results.csv").mkdir(parents=True)
    before = sorted(tmp_path.rglob("*"))
    assert run(tmp_path) == 2
    assert capsys.readouterr().err == (f"tfbn: error: {tmp_path}/quickstart/results.csv is not a regular "
                                       "file; move it away, or pass --restart to move the earlier run aside\n")
    assert main(["--config", QUICKSTART, "--restart", "--set", f"log.dir={tmp_path}",
                 "--set", "experiment=.."]) == 2  # nothing outside log.dir is moved aside
    assert "experiment: '..' is not one plain folder name" in capsys.readouterr().err
    assert sorted(tmp_path.rglob("*")) == before
