import csv
import itertools
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import types
from collections import Counter

import pytest
from keras_tuner.src.distribute import oracle_chief
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util.tensor_util import make_ndarray

import tfbn.sweep
from tfbn.config import load_config
from tfbn.errors import ConfigError
from tfbn.results import TrialResult
from tfbn.run import main
from tfbn.sweep import run_study
from tfbn.workers import LOOPBACK, free_port, set_role

from helpers import QUICKSTART

SHORT = ("train.steps=100", "train.eval_every=50", "log.instruments=[]")
# The report written at the end of a command-line run is tfbn.report's business.
FLAGS = ("--config", QUICKSTART, "--quiet", "--no-report")
KERASTUNER_VARIABLES = ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT")
WAIT_S = 240  # for a subprocess to finish; the chief alone may idle 20 s before it exits


@pytest.fixture(autouse=True)
def standalone(monkeypatch):
    """Restores keras-tuner's role variables, which `set_role` writes to os.environ."""
    for name in KERASTUNER_VARIABLES:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


@pytest.fixture
def processes():
    """Subprocesses a test starts; those still running at its end are killed."""
    started = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def overrides(tmp_path, *more):
    return [f"log.dir={tmp_path}", *SHORT, *more]


def set_args(tmp_path, *more):
    return [arg for override in overrides(tmp_path, *more) for arg in ("--set", override)]


def load(tmp_path, *more):
    return load_config(QUICKSTART, overrides(tmp_path, *more))


def cli(tmp_path, *overrides):
    return [sys.executable, "-m", "tfbn.run", *FLAGS,
            *set_args(tmp_path, *overrides)]


def start(processes, command, log_path, **environment):
    env = {k: v for k, v in os.environ.items() if k not in KERASTUNER_VARIABLES}
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   env={**env, **environment})
    processes.append(process)
    return process


def finish(process, log_path):
    """Waits for a subprocess; returns its exit status and the end of its output."""
    process.wait(timeout=WAIT_S)
    return process.returncode, pathlib.Path(log_path).read_text()[-3000:]


def read_rows(experiment):
    with open(experiment / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def run_dirs(experiment):
    return {p.name for p in experiment.iterdir() if p.is_dir()} - {"tuner"}


def trial_statuses(experiment):
    return Counter(json.loads(p.read_text())["status"]
                   for p in (experiment / "tuner").glob("trial_*/trial.json"))


def read_scalars(run_dir):
    events = EventAccumulator(str(run_dir), size_guidance={"tensors": 0}).Reload()
    return {tag: [(e.step, float(make_ndarray(e.tensor_proto))) for e in events.Tensors(tag)]
            for tag in events.Tags()["tensors"]
            if events.SummaryMetadata(tag).plugin_data.plugin_name == "scalars"}


def instant_result(config):
    return TrialResult(status="ok", steps_run=config.train.steps, final_accuracy=0.5,
                       best_accuracy=0.5, steps_to_threshold=None, final_loss=1.0, seconds=0.0)


def fake_train_pack(train_one):
    """A stand-in for `tfbn.training.train_pack` that gives each trial ``train_one(config)``."""
    def train_pack(branches, strategy=None, on_result=None):
        results = []
        for targets in branches:
            results.append([])
            for target in targets:
                results[-1].append(train_one(target.config))
                on_result(target, results[-1][-1])
        return results
    return train_pack


@pytest.fixture
def trained(monkeypatch):
    """Replaces training by an instant result; lists each trained trial's config."""
    configs = []

    def train_one(config):
        configs.append(config)
        return instant_result(config)

    monkeypatch.setattr(tfbn.sweep, "train_pack", fake_train_pack(train_one))
    return configs


# Which trials keras-tuner runs.

@pytest.mark.parametrize("pack, packs", [("auto", 2), ("off", 12), (4, 4)])
def test_that_keras_tuner_runs_each_point_of_a_full_factorial_exactly_once(
        tmp_path, trained, pack, packs):
    # Each seed is its own data stream: 6 branches per seed, in packs of at most `pack`.
    config = load(tmp_path, "study.factors={bn: [none, before, after], activation: [relu, tanh], "
                            "seed: [0, 1]}", f"train.pack={pack}")
    rows = run_study(config, quiet=True)
    grid = list(itertools.product(["none", "before", "after"], ["relu", "tanh"], [0, 1]))
    assert Counter((c.model.bn, c.model.activation, c.train.seed) for c in trained) == Counter(grid)
    assert [(row["bn"], row["activation"], row["seed"]) for row in rows] == [
        (bn, act, str(seed)) for bn, act, seed in grid]
    experiment = tmp_path / "quickstart"
    assert Counter(row["run"] for row in read_rows(experiment)) == {row["run"]: 1 for row in rows}
    assert trial_statuses(experiment) == {"COMPLETED": packs}
    assert len({row["trial"] for row in rows}) == packs
    assert all(len({row["seed"] for row in rows if row["trial"] == trial}) == 1
               for trial in {row["trial"] for row in rows})

    run_study(config, quiet=True)  # a rerun finds every trial done
    assert len(trained) == 12 and len(read_rows(experiment)) == 12


def test_that_keras_tuner_runs_each_point_of_a_one_at_a_time_design_exactly_once(tmp_path, trained):
    factors = "{activation: [relu, sigmoid], width: [50, 100], bn: [none, before], seed: [0, 1]}"
    config = load(tmp_path, "study.design=one_at_a_time", f"study.factors={factors}")
    run_study(config, quiet=True)
    # The quickstart's defaults are sigmoid and width 100.
    bases = [("sigmoid", 100), ("relu", 100), ("sigmoid", 50)]
    expected = [(*base, bn, seed) for base in bases for bn in ("none", "before") for seed in (0, 1)]
    seen = [(c.model.activation, c.model.width, c.model.bn, c.train.seed) for c in trained]
    assert Counter(seen) == Counter(expected) and len(seen) == 12
    assert trial_statuses(tmp_path / "quickstart") == {"COMPLETED": 2}  # a pack per seed


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
    run_study(config, quiet=True)
    results = tmp_path / "quickstart" / "results.csv"
    # A run name of another version (as when test_ratio was labelled dist=).
    old = results.read_text().replace("bn=before", "arm=before")
    results.write_text(old)
    with pytest.raises(ConfigError, match=r"names runs that this version of tfbn does not "
                                          r"\(e.g. 'arm=before'\).*--restart"):
        run_study(config, quiet=True)
    assert results.read_text() == old and len(trained) == 2


def test_that_failed_trials_are_recorded_and_do_not_stop_the_sweep(tmp_path, monkeypatch):
    seeds = []

    def train_one(config):
        seeds.append(config.train.seed)
        if 1 <= config.train.seed <= 5:  # more in a row than keras-tuner's default limit of 3
            raise RuntimeError(f"no data for seed {config.train.seed}")
        return instant_result(config)

    monkeypatch.setattr(tfbn.sweep, "train_pack", fake_train_pack(train_one))
    config = load(tmp_path, "study.factors={seed: [0, 1, 2, 3, 4, 5, 6, 7]}")
    rows = run_study(config, quiet=True)
    assert seeds == list(range(8))
    failed = [(str(s), "failed", f"RuntimeError: no data for seed {s}") for s in range(1, 6)]
    assert [(row["seed"], row["status"], row["message"]) for row in rows] == [
        ("0", "ok", ""), *failed, ("6", "ok", ""), ("7", "ok", "")]
    assert [row["final_accuracy"] for row in rows if row["status"] == "failed"] == [""] * 5
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


# Chief and workers.

# A worker of a pair that asks the chief for each trial only when the other one is
# ready to ask too: both get a first trial, and both get keras-tuner's stop signal at
# once (the chief polls every 20 s for workers still busy). Usage:
#   python -c LOCKSTEP_WORKER <folder> <name> <tfbn.run arguments>
# <folder>/<name> lists the runs the worker trained.
LOCKSTEP_WORKER = """
import os, sys, time
import tfbn.sweep
from tfbn.run import main

folder, name = sys.argv[1], sys.argv[2]
rounds = 0

def pre_create_trial(self):
    global rounds
    rounds += 1
    open(os.path.join(folder, f"{name}.round{rounds}"), "w").close()
    deadline = time.monotonic() + 120
    while (len([f for f in os.listdir(folder) if f.endswith(f".round{rounds}")]) < 2
           and time.monotonic() < deadline):
        time.sleep(0.02)

train = tfbn.sweep.train_pack

def train_pack(branches, *args, **kwargs):
    with open(os.path.join(folder, name), "a") as f:
        f.writelines(os.path.basename(t.log_dir) + "\\n" for targets in branches for t in targets)
    return train(branches, *args, **kwargs)

tfbn.sweep.StudyTuner.pre_create_trial = pre_create_trial
tfbn.sweep.train_pack = train_pack
sys.exit(main(sys.argv[3:]))
"""


def test_that_a_chief_and_two_workers_one_set_up_by_environment_alone_run_each_trial_once(
        tmp_path, processes):
    args = [*FLAGS, *set_args(
        tmp_path, "study.factors={bn: [none, before], seed: [0, 1, 2, 3]}", "train.steps=50")]
    port = free_port()
    oracle = f"{LOOPBACK}:{port}"
    folder = tmp_path / "workers"
    folder.mkdir()
    chief = start(processes, [sys.executable, "-m", "tfbn.run", *args, "--role", "chief",
                              "--oracle", oracle], tmp_path / "chief.log")
    worker = [sys.executable, "-c", LOCKSTEP_WORKER, str(folder)]
    flags = start(processes, [*worker, "flags", *args, "--role", "worker", "--oracle", oracle,
                              "--tuner-id", "flags"], tmp_path / "flags.log")
    # keras-tuner's own convention, with no --role: what a cluster scheduler would set.
    environment = start(processes, [*worker, "environment", *args], tmp_path / "environment.log",
                        KERASTUNER_TUNER_ID="environment", KERASTUNER_ORACLE_IP=LOOPBACK,
                        KERASTUNER_ORACLE_PORT=str(port))
    for process, name in ((flags, "flags"), (environment, "environment"), (chief, "chief")):
        status, output = finish(process, tmp_path / f"{name}.log")
        assert status == 0, output

    experiment = tmp_path / "quickstart"
    names = {f"bn={bn},seed={seed}" for bn in ("none", "before") for seed in range(4)}
    rows = read_rows(experiment)
    assert Counter(row["run"] for row in rows) == {name: 1 for name in names}
    assert {(row["status"], row["steps_run"]) for row in rows} == {("ok", "50")}
    assert run_dirs(experiment) == names
    ran = {name: (folder / name).read_text().split() for name in ("flags", "environment")}
    assert ran["flags"] and ran["environment"]
    assert Counter(ran["flags"] + ran["environment"]) == {name: 1 for name in names}
    # Each process kept its own tuner state; none ran the study alone (tuner0).
    assert {p.name for p in (experiment / "tuner").glob("*.json")} == {
        "oracle.json", "chief.json", "flags.json", "environment.json"}


def test_that_parallel_trials_runs_a_grid_in_local_worker_processes(tmp_path, monkeypatch):
    # This process is the chief; keras-tuner's chief looks every 20 s for workers still busy.
    monkeypatch.setattr(oracle_chief, "time", types.SimpleNamespace(
        sleep=lambda seconds: time.sleep(min(seconds, 0.5))))
    config = load(tmp_path, "study.factors={bn: [none, before], seed: [0, 1]}", "train.steps=50",
                  "distribute.parallel_trials=2")
    rows = run_study(config, quiet=True)
    names = [f"bn={bn},seed={seed}" for bn in ("none", "before") for seed in (0, 1)]
    assert [(row["run"], row["status"], row["steps_run"]) for row in rows] == [
        (name, "ok", "50") for name in names]
    experiment = tmp_path / "quickstart"
    assert len(read_rows(experiment)) == 4 and run_dirs(experiment) == set(names)
    files = {p.name for p in (experiment / "tuner").glob("*.json")}
    # This process served the trials as the chief and trained none of them.
    assert {"oracle.json", "chief.json"} < files <= {
        "oracle.json", "chief.json", "worker0.json", "worker1.json"}
    assert not any(name.startswith("KERASTUNER_") for name in os.environ)


# Devices.

# Splits the CPU into two logical devices, which must happen before TensorFlow starts.
ON_TWO_CPUS = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from tfbn.run import main
sys.exit(main(sys.argv[1:]))
"""
MIRRORED = ("distribute.strategy=mirrored", "distribute.devices=[/cpu:0,/cpu:1]")


def run_on_two_cpus(tmp_path, *overrides):
    return subprocess.run([sys.executable, "-c", ON_TWO_CPUS, *FLAGS,
                           *set_args(tmp_path, *MIRRORED, *overrides)],
                          capture_output=True, text=True, timeout=WAIT_S)


def test_that_a_batch_two_replicas_cannot_share_is_refused_before_training(tmp_path):
    result = run_on_two_cpus(tmp_path, "train.batch_size=3")
    assert result.returncode == 2
    [message] = [line for line in result.stderr.splitlines() if line.startswith("tfbn: error:")]
    assert message.startswith("tfbn: error: batch size 3 ") and " 2 replicas" in message
    assert not (tmp_path / "quickstart").exists()


def test_that_a_batch_two_replicas_can_share_trains_with_mirrored_strategy(tmp_path):
    result = run_on_two_cpus(tmp_path, "study.factors.bn=[before]", "train.batch_size=4")
    rows = read_rows(tmp_path / "quickstart")
    assert [(row["status"], row["steps_run"]) for row in rows] == [("ok", "100")], rows
    assert result.returncode == 0, result.stderr[-3000:]


# Command-line mistakes.

@pytest.mark.parametrize("oracle", ["127.0.0.1", "127.0.0.1:port", ":8000", "127.0.0.1:"])
def test_that_a_malformed_oracle_address_exits_2_naming_the_expected_form(tmp_path, capsys, oracle):
    assert main(["--config", QUICKSTART, *set_args(tmp_path), "--role", "worker",
                 "--oracle", oracle]) == 2
    error = capsys.readouterr().err
    assert (f"tfbn: error: --oracle {oracle!r}: write HOST:PORT with a port from 1 to 65535, "
            "e.g. 127.0.0.1:8000\n") in error
    assert "KERASTUNER_ORACLE_IP" not in os.environ and not (tmp_path / "quickstart").exists()


def test_that_a_worker_without_an_oracle_address_exits_2(tmp_path, capsys):
    assert main(["--config", QUICKSTART, *set_args(tmp_path), "--role", "worker"]) == 2
    assert "write HOST:PORT" in capsys.readouterr().err


def test_that_a_worker_id_that_keras_tuner_would_take_for_the_chief_is_refused():
    with pytest.raises(ConfigError, match="must not contain 'chief'"):
        set_role("worker", "127.0.0.1:8000", "mischief-1")


def test_that_a_chief_without_an_address_binds_to_loopback(monkeypatch):
    for name in ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"):
        monkeypatch.setenv(name, "restored after the test")  # teardown then undoes set_role
    set_role("chief", None)
    assert (os.environ["KERASTUNER_TUNER_ID"], os.environ["KERASTUNER_ORACLE_IP"],
            os.environ["KERASTUNER_ORACLE_PORT"]) == ("chief", "127.0.0.1", "8000")


def test_that_an_oracle_port_out_of_range_is_refused():
    with pytest.raises(ConfigError, match="99999"):
        set_role("worker", "127.0.0.1:99999")


def test_that_an_oracle_address_without_a_role_exits_2(tmp_path, trained):
    assert main([*FLAGS, *set_args(tmp_path, "study.factors.bn=[none]"),
                 "--oracle", "127.0.0.1:8000"]) == 2
