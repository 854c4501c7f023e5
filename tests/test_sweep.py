"""The study engine: which trials keras-tuner runs, and interruption, divergence and failure."""

import itertools
import os
import signal
import time
from collections import Counter

import pytest
from keras_tuner.engine.trial import TrialStatus

import tfbn.sweep
from tfbn.design import design_points
from tfbn.packing import plan_packs
from tfbn.errors import ConfigError
from tfbn.run import main
from tfbn.sweep import run_study

from helpers import (FLAGS, WAIT_S, cli, fake_train_pack, finish, instant_result, load, read_rows,
                     read_scalars, set_args, start, trial_statuses)


# Which trials keras-tuner runs.

@pytest.mark.parametrize("pack, packs", [("auto", 1), ("off", 12), (4, 3)])
def test_that_keras_tuner_runs_each_point_of_a_full_factorial_exactly_once(
        tmp_path, trained, pack, packs):
    # 12 branches, 6 a seed, in packs of at most `pack`: whole seeds where they fit.
    config = load(tmp_path, "study.factors={bn: [none, before, after], activation: [relu, tanh], "
                            "seed: [0, 1]}", f"train.pack={pack}")
    rows = run_study(config, quiet=True, report=False)
    grid = list(itertools.product(["none", "before", "after"], ["relu", "tanh"], [0, 1]))
    assert Counter((c.model.bn, c.model.activation, c.train.seed) for c in trained) == Counter(grid)
    assert [(row["bn"], row["activation"], row["seed"]) for row in rows] == grid
    experiment = tmp_path / "quickstart"
    assert Counter(row["run"] for row in read_rows(experiment)) == {row["run"]: 1 for row in rows}
    assert trial_statuses(experiment) == {"COMPLETED": packs}
    assert len({row["trial"] for row in rows}) == packs

    run_study(config, quiet=True, report=False)  # a rerun finds every trial done
    assert len(trained) == 12 and len(read_rows(experiment)) == 12


def test_that_the_design_oracle_is_finished_once_every_pack_was_proposed_and_has_ended(tmp_path):
    config = load(tmp_path, "study.factors={bn: [none, before], seed: [0, 1]}", "train.pack=off")
    oracle = tfbn.sweep.DesignOracle(plan_packs(config, design_points(config)))
    oracle._set_project_dir(str(tmp_path), "tuner")
    trials = [oracle.create_trial(f"worker{i}") for i in range(3)]
    assert not oracle.finished()  # one pack was never proposed
    trials.append(oracle.create_trial("worker3"))
    for trial in trials:
        assert not oracle.finished()  # a pack is still running
        oracle.update_trial(trial.trial_id, {"final_accuracy": 0.9})
        trial.status = TrialStatus.COMPLETED
        oracle.end_trial(trial)
    assert oracle.finished()
    assert oracle.create_trial("worker4").status == TrialStatus.STOPPED


def test_that_keras_tuner_runs_each_point_of_a_one_at_a_time_design_exactly_once(tmp_path, trained):
    factors = "{activation: [relu, sigmoid], width: [50, 100], bn: [none, before], seed: [0, 1]}"
    config = load(tmp_path, "study.design=one_at_a_time", f"study.factors={factors}")
    run_study(config, quiet=True, report=False)
    # The quickstart's defaults are sigmoid and width 100.
    bases = [("sigmoid", 100), ("relu", 100), ("sigmoid", 50)]
    expected = [(*base, bn, seed) for base in bases for bn in ("none", "before") for seed in (0, 1)]
    seen = [(c.model.activation, c.model.width, c.model.bn, c.train.seed) for c in trained]
    assert Counter(seen) == Counter(expected) and len(seen) == 12
    assert trial_statuses(tmp_path / "quickstart") == {"COMPLETED": 1}  # seeds share a pack


# Interruption, divergence and failure.

def test_that_a_sweep_killed_mid_trial_resumes_and_trains_only_the_interrupted_and_later_trials(
        tmp_path, processes):
    # One trial at a time, so that the kill falls between the first trial and the others.
    command = cli(tmp_path, "study.factors.bn=[none,before,after]", "train.steps=500",
                  "train.pack=off")
    experiment = tmp_path / "quickstart"
    first = start(processes, command, tmp_path / "first.log")
    deadline = time.monotonic() + WAIT_S
    while not ((experiment / "results.csv").exists() and len(read_rows(experiment)) == 1
               and list((experiment / "bn=before").glob("*events*"))):
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert [row["run"] for row in read_rows(experiment)] == ["bn=none"]
    partial = set((experiment / "bn=before").iterdir())
    done = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in (experiment / "bn=none").iterdir()}

    second = start(processes, command, tmp_path / "second.log")
    assert finish(second, tmp_path / "second.log")[0] == 0
    rows = read_rows(experiment)
    assert [(row["trial"], row["run"], row["status"]) for row in rows] == [
        ("0", "bn=none", "ok"), ("1", "bn=before", "ok"), ("2", "bn=after", "ok")]
    assert {p: (p.stat().st_mtime_ns, p.stat().st_size)
            for p in (experiment / "bn=none").iterdir()} == done
    assert not partial & set((experiment / "bn=before").iterdir())
    steps = list(range(50, 501, 50))
    for run in ("bn=before", "bn=after"):
        scalars = read_scalars(experiment / run)
        assert [step for step, _ in scalars["loss/train"]] == steps
        assert [step for step, _ in scalars["accuracy/test"]] == steps
    assert trial_statuses(experiment) == {"COMPLETED": 3}


def test_that_a_pack_killed_after_one_branch_was_recorded_resumes_with_each_point_once(
        tmp_path, processes):
    # One pack: at a learning rate of 1e36 BN before diverges at once and is recorded at
    # step 50; its pack-mate trains on. The kill falls between the two rows.
    command = cli(tmp_path, "study.factors={learning_rate: [1.0e+36, 0.01], bn: [before]}",
                  "train.steps=1000")
    experiment = tmp_path / "quickstart"
    first = start(processes, command, tmp_path / "first.log")
    deadline = time.monotonic() + WAIT_S
    while not ((experiment / "results.csv").exists() and len(read_rows(experiment)) == 1):
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    [diverged] = read_rows(experiment)
    assert (diverged["run"], diverged["status"]) == ("lr=1e+36,bn=before", "diverged")
    recorded = {p: p.stat().st_mtime_ns for p in (experiment / diverged["run"]).iterdir()}

    second = start(processes, command, tmp_path / "second.log")
    assert finish(second, tmp_path / "second.log")[0] == 0
    rows = read_rows(experiment)
    assert [(row["run"], row["status"], row["steps_run"]) for row in rows] == [
        ("lr=1e+36,bn=before", "diverged", "50"), ("lr=0.01,bn=before", "ok", "1000")]
    # The recorded point was not trained again; its run folder is untouched.
    assert {p: p.stat().st_mtime_ns for p in (experiment / diverged["run"]).iterdir()} == recorded
    assert [step for step, _ in read_scalars(experiment / rows[1]["run"])["loss/train"]] == list(
        range(50, 1001, 50))
    assert trial_statuses(experiment) == {"COMPLETED": 1}


def test_that_a_diverged_trial_is_recorded_and_its_pack_mates_train_on(tmp_path):
    # At a learning rate of 1e36 the first step's update overflows float32. All four
    # points share the data stream, so they train as one pack.
    assert main([*FLAGS, *set_args(
        tmp_path, "study.factors={learning_rate: [1.0e+36, 0.01], bn: [none, before]}")]) == 0
    experiment = tmp_path / "quickstart"
    rows = {(float(row["learning_rate"]), row["bn"]): row for row in read_rows(experiment)}
    assert set(rows) == {(1e36, "none"), (1e36, "before"), (0.01, "none"), (0.01, "before")}
    assert len({row["trial"] for row in rows.values()}) == 1
    diverged = [row for row in rows.values() if row["status"] == "diverged"]
    assert diverged and all(float(row["learning_rate"]) == 1e36 for row in diverged)
    for row in diverged:
        # Recorded when it diverged, before the pack ended, with the first evaluation's step.
        assert row["steps_run"] == "50"
        assert read_scalars(experiment / row["run"])["hparams/diverged"] == [(50, 1.0)]
    assert list(rows.values())[0]["status"] == "diverged"
    for bn in ("none", "before"):
        assert rows[0.01, bn]["status"] == "ok" and rows[0.01, bn]["steps_run"] == "100"
        assert 0 < float(rows[0.01, bn]["final_accuracy"]) <= 1
    assert trial_statuses(experiment) == {"COMPLETED": 1}


def test_that_a_results_file_with_runs_this_version_does_not_name_is_refused_untouched(tmp_path, trained):
    config = load(tmp_path, "study.factors.bn=[none, before]")
    run_study(config, quiet=True, report=False)
    results = tmp_path / "quickstart" / "results.csv"
    # A run name of another version (as when test_ratio was labelled dist=).
    old = results.read_text().replace("bn=before", "arm=before")
    results.write_text(old)
    with pytest.raises(ConfigError, match=r"names runs that this version of tfbn does not "
                                          r"\(e.g. 'arm=before'\).*restart=True"):
        run_study(config, quiet=True, report=False)
    assert results.read_text() == old and len(trained) == 2


def test_that_failed_trials_are_recorded_and_do_not_stop_the_sweep(tmp_path, monkeypatch):
    seeds = []

    def train_one(config):
        seeds.append(config.train.seed)
        if 1 <= config.train.seed <= 5:  # more in a row than keras-tuner's default limit of 3
            raise RuntimeError(f"no data for seed {config.train.seed}")
        return instant_result(config)

    monkeypatch.setattr(tfbn.sweep, "train_pack", fake_train_pack(train_one))
    config = load(tmp_path, "study.factors={seed: [0, 1, 2, 3, 4, 5, 6, 7]}", "train.pack=off")
    rows = run_study(config, quiet=True, report=False)
    assert seeds == list(range(8))
    failed = [(s, "failed", f"RuntimeError: no data for seed {s}") for s in range(1, 6)]
    assert [(row["seed"], row["status"], row["message"]) for row in rows] == [
        (0, "ok", None), *failed, (6, "ok", None), (7, "ok", None)]
    assert [row["final_accuracy"] for row in rows if row["status"] == "failed"] == [None] * 5
    assert [row["final_accuracy"] for row in rows if row["status"] == "ok"] == [0.5] * 3
    assert trial_statuses(tmp_path / "quickstart") == {"FAILED": 5, "COMPLETED": 3}


def test_that_the_command_line_prints_its_table_after_a_failed_trial(tmp_path, monkeypatch, capsys):
    def train_one(config):
        if config.model.bn == "none":
            raise RuntimeError("out of memory")
        return instant_result(config)

    monkeypatch.setattr(tfbn.sweep, "train_pack", fake_train_pack(train_one))
    assert main([*FLAGS,
                 *set_args(tmp_path, "study.factors.bn=[none,before]", "train.pack=off")]) == 0
    table = capsys.readouterr().out
    assert "failed" in table and "before" in table


# The Python API.

def test_that_run_study_returns_typed_results_and_writes_the_report(tmp_path):
    results = run_study(load(tmp_path, "study.factors={learning_rate: [0.01, 1.0e+36]}"), quiet=True)
    ok, diverged = results
    assert (ok["run"], ok["learning_rate"], ok["status"], ok["steps_run"]) == (
        "lr=0.01", 0.01, "ok", 100)
    assert 0 < ok["final_accuracy"] <= ok["best_accuracy"] <= 1 and ok["message"] is None
    assert (diverged["learning_rate"], diverged["status"], diverged["steps_run"]) == (
        1e36, "diverged", 50)
    # The numbers are the file's, read as numbers.
    assert {row["run"]: str(row["final_accuracy"]) for row in results} == {
        row["run"]: row["final_accuracy"] for row in read_rows(tmp_path / "quickstart")}
    assert results.missing == []
    assert results.report == str(tmp_path / "quickstart" / "report" / "report.md")
    assert "lr=0.01" in open(results.report).read()


def test_that_errors_name_the_python_fix_to_python_and_the_flags_to_the_command_line(
        tmp_path, trained, capsys):
    run_study(load(tmp_path), quiet=True, report=False)
    with pytest.raises(ConfigError) as error:
        run_study(load(tmp_path, "train.steps=200"), quiet=True, report=False)
    assert str(error.value).endswith(
        "(train.steps changed). Resume it unchanged, give this one another name "
        "(experiment=NAME among load_config's overrides), or pass restart=True to move the old "
        "run aside")
    assert main([*FLAGS, *set_args(tmp_path, "train.steps=200")]) == 2
    assert capsys.readouterr().err.endswith(
        "(train.steps changed). Resume it unchanged, give this one another name "
        "(--set experiment=NAME), or pass --restart to move the old run aside\n")
    assert len(trained) == 3  # the first run's; neither refused one trained
