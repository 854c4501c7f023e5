"""Faults a study survives: damaged keras-tuner files, a trial left running, a row cut
short, records that cannot be written. Each ends, after the same call again, with every
design point recorded exactly once and the results of an uninterrupted run."""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections import Counter

import pytest
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.hparams import metadata as hparams_metadata

import tfbn.sweep
from tfbn.results import read_results
from tfbn.sweep import DesignOracle, StorageError, run_study

from helpers import cli, load

# Three trials of their own (no packing): keras-tuner writes a trial file for each.
FACTORS = ("study.factors.bn=[none, before, after]", "train.pack=off")
RUNS = ["bn=none", "bn=before", "bn=after"]


class Killed(BaseException):
    """Ends a study in this process where a kill would, without the cleanup an Exception gets."""


def outcome(rows):
    """What an uninterrupted run must reproduce: each run's status, steps and accuracies."""
    return {row["run"]: (row["status"], row["steps_run"], row["final_accuracy"],
                         row["best_accuracy"], row["final_loss"]) for row in rows}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of the study: its experiment folder and results."""
    log_dir = tmp_path_factory.mktemp("reference")
    results = run_study(load(log_dir, *FACTORS), quiet=True, report=False)
    assert [row["run"] for row in results] == RUNS and not results.missing
    return log_dir / "quickstart", outcome(results)


@pytest.fixture
def study(tmp_path, reference):
    """A copy of the finished reference study whose last trial is not recorded, as after a
    kill before its row: the config, the experiment folder, and its results file's lines."""
    experiment = tmp_path / "quickstart"
    shutil.copytree(reference[0], experiment)
    results = experiment / "results.csv"
    lines = results.read_text().splitlines(keepends=True)
    results.write_text("".join(lines[:-1]))
    return load(tmp_path, *FACTORS), experiment, lines


def resume_and_check(config, experiment, reference, monkeypatch, trained):
    """Runs the study again; checks each point has one row, as uninterrupted, and which trained."""
    seen = []
    train_pack = tfbn.sweep.train_pack

    def listed_train_pack(branches, *args, **kwargs):
        seen.extend(os.path.basename(target.log_dir) for targets in branches for target in targets)
        return train_pack(branches, *args, **kwargs)

    monkeypatch.setattr(tfbn.sweep, "train_pack", listed_train_pack)
    results = run_study(config, quiet=True, report=False)
    assert outcome(results) == reference[1] and not results.missing
    _, rows, dropped = read_results(experiment / "results.csv")
    assert Counter(row["run"] for row in rows) == Counter(RUNS) and dropped == 0
    assert seen == trained


def truncate(path):
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])


DAMAGE = {"truncated": truncate, "emptied": lambda path: path.write_bytes(b""),
          "removed": os.remove}


@pytest.mark.parametrize("damage", DAMAGE)
def test_that_damaged_keras_tuner_files_neither_decide_nor_block_a_resume(
        study, reference, damage, capsys, monkeypatch):
    config, experiment, _ = study
    tuner = experiment / "tuner"
    (tuner / "tuner0.json").write_text("{}")  # as an earlier version left it
    for path in (tuner / "oracle.json", tuner / "trial_2" / "trial.json", tuner / "tuner0.json"):
        DAMAGE[damage](path)
    resume_and_check(config, experiment, reference, monkeypatch, trained=["bn=after"])
    assert capsys.readouterr().err.count("tfbn: resuming from") == 1


def test_that_a_trial_left_running_by_a_kill_is_proposed_again(tmp_path, reference, monkeypatch):
    # keras-tuner writes the new trial's file (RUNNING), then its oracle's: the kill falls
    # between the two, so the trial counts toward max_trials though it never ran.
    save = DesignOracle.save

    def killed_after_the_third_trial_file(oracle):
        if "2" in oracle.trials and oracle.trials["2"].status == "RUNNING":
            raise Killed
        save(oracle)

    config = load(tmp_path, *FACTORS)
    monkeypatch.setattr(DesignOracle, "save", killed_after_the_third_trial_file)
    with pytest.raises(Killed):
        run_study(config, quiet=True, report=False)
    monkeypatch.undo()
    experiment = tmp_path / "quickstart"
    assert '"status": "RUNNING"' in (experiment / "tuner" / "trial_2" / "trial.json").read_text()
    assert [row["run"] for row in read_results(experiment / "results.csv")[1]] == RUNS[:2]
    resume_and_check(config, experiment, reference, monkeypatch, trained=["bn=after"])


def test_that_a_row_cut_short_by_a_crash_is_dropped_and_its_trial_trains_again(
        study, reference, capsys, monkeypatch):
    config, experiment, lines = study
    (experiment / "results.csv").write_text("".join(lines[:-1]) + lines[-1][:-40])
    # Read for a report, the cut row is left out.
    assert [row["run"] for row in read_results(experiment / "results.csv")[1]] == RUNS[:2]
    resume_and_check(config, experiment, reference, monkeypatch, trained=["bn=after"])
    assert "left out 1 line(s)" in capsys.readouterr().err


def test_that_an_emptied_results_file_starts_the_study_again(study, reference, monkeypatch):
    config, experiment, _ = study
    (experiment / "results.csv").write_bytes(b"")  # a full disk: truncated, nothing written
    resume_and_check(config, experiment, reference, monkeypatch, trained=RUNS)


def test_that_a_trial_recorded_without_its_session_end_gets_it_on_resuming(
        study, reference, monkeypatch):
    config, experiment, lines = study
    (experiment / "results.csv").write_text("".join(lines))  # every trial recorded
    run = experiment / "bn=after"
    [end] = session_ends(run)
    end.unlink()  # an earlier version wrote the session end after the row
    resume_and_check(config, experiment, reference, monkeypatch, trained=[])
    assert len(session_ends(run)) == 1


def session_ends(run_dir):
    """The event files of a run that hold an HParams session end."""
    return [path for path in run_dir.glob("events.out.tfevents.*")
            if any(value.tag == hparams_metadata.SESSION_END_INFO_TAG
                   for event in EventFileLoader(str(path)).Load() for value in event.summary.value)]


@contextlib.contextmanager
def before(monkeypatch, call, trial, action):
    """Runs ``action`` just before ``tfbn.hparams.<call>`` for the study's ``trial``-th trial
    (0-based): ``start_trial`` as it starts, ``end_trial`` just before its row."""
    write = getattr(tfbn.hparams, call)
    calls = []

    def act_then_write(run_dir, *args):
        calls.append(run_dir)
        if len(calls) == trial + 1:
            action()
        write(run_dir, *args)

    monkeypatch.setattr(tfbn.hparams, call, act_then_write)
    yield
    monkeypatch.undo()


def test_that_a_results_file_that_cannot_be_written_stops_the_study_without_a_failed_row(
        tmp_path, reference, monkeypatch):
    config = load(tmp_path, *FACTORS)
    experiment = tmp_path / "quickstart"
    results = experiment / "results.csv"
    saved = []

    def replace_with_a_folder():
        saved.append(results.read_bytes())
        results.unlink()
        results.mkdir()

    with before(monkeypatch, "end_trial", 1, replace_with_a_folder):
        with pytest.raises(StorageError) as stop:
            run_study(config, quiet=True, report=False)
    assert (stop.value.path, stop.value.cause) == (str(results), "Is a directory")
    assert stop.value.status == 1 and "cannot write" in str(stop.value)
    results.rmdir()
    results.write_bytes(saved[0])
    assert [row["run"] for row in read_results(results)[1]] == RUNS[:1]  # nothing marked failed
    resume_and_check(config, experiment, reference, monkeypatch, trained=RUNS[1:])


def test_that_a_removed_experiment_folder_stops_the_study(tmp_path, reference, monkeypatch):
    config = load(tmp_path, *FACTORS)
    experiment = tmp_path / "quickstart"
    with before(monkeypatch, "end_trial", 1, lambda: shutil.rmtree(experiment)):
        with pytest.raises(StorageError) as stop:
            run_study(config, quiet=True, report=False)
    assert stop.value.path == str(experiment)
    assert not (experiment / "results.csv").exists()
    resume_and_check(config, experiment, reference, monkeypatch, trained=RUNS)


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs: a disk that can be filled (needs root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.mark.parametrize("call", ["start_trial", "end_trial"])
def test_that_a_full_disk_stops_the_study_and_the_next_run_trains_what_it_lost(
        small_disk, reference, monkeypatch, call):
    config = load(small_disk, *FACTORS)
    experiment = small_disk / "quickstart"
    filler = small_disk / "filler"

    def fill():
        with open(filler, "wb") as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 65536)
                f.flush()

    with before(monkeypatch, call, 1, fill):
        with pytest.raises(StorageError) as stop:
            run_study(config, quiet=True, report=False)
    assert stop.value.cause == "No space left on device"
    assert stop.value.path.startswith(str(experiment / "bn=before"))  # the trial's own file
    filler.unlink()
    assert [row["run"] for row in read_results(experiment / "results.csv")[1]] == RUNS[:1]
    resume_and_check(config, experiment, reference, monkeypatch, trained=RUNS[1:])


def test_that_a_kill_while_keras_tuner_writes_a_trial_file_loses_nothing(
        tmp_path, reference, monkeypatch):
    # keras-tuner writes a trial's file in place: killed once it has emptied the file of
    # the study's third trial and written half of it.
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(textwrap.dedent('''
        import os, signal
        import keras_tuner.src.utils as utils

        def save_json(path, obj, _save=utils.save_json):
            if path.endswith(os.path.join("trial_2", "trial.json")):
                text = utils.json.dumps(obj)
                with open(path, "w") as f:
                    f.write(text[:len(text) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
            return _save(path, obj)

        utils.save_json = save_json
    '''))
    killed = subprocess.run(cli(tmp_path, *FACTORS), capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(hook)})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    experiment = tmp_path / "quickstart"
    assert [row["run"] for row in read_results(experiment / "results.csv")[1]] == RUNS[:2]
    resume_and_check(load(tmp_path, *FACTORS), experiment, reference, monkeypatch,
                     trained=["bn=after"])
