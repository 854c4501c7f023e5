"""A study as a chief and workers, and the command-line mistakes of roles and addresses."""

import io
import os
import re
import sys
import time
from collections import Counter

import pytest

from tfbn import workers
from tfbn.errors import ConfigError
from tfbn.run import main
from tfbn.sweep import run_study
from tfbn.workers import (LOOPBACK, THREAD_VARIABLES, free_port, set_role, start_workers,
                          threads_per_worker)
from tfbn.workers import _start_worker as start_one_worker

from helpers import FLAGS, QUICKSTART, finish, load, read_rows, run_dirs, set_args, start


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
    # Four packs of two branches (seeds would share one pack): each worker gets some.
    args = [*FLAGS, *set_args(
        tmp_path, "study.factors={bn: [none, before], seed: [0, 1, 2, 3]}", "train.steps=50",
        "train.pack=2")]
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
    # The chief's oracle state only: keras-tuner's tuner files are not written.
    assert {p.name for p in (experiment / "tuner").glob("*.json")} == {"oracle.json"}


def test_that_parallel_trials_runs_a_grid_in_local_worker_processes(tmp_path, monkeypatch):
    # Each worker process trains one pack, and a fresh one starts while a pack waits: one
    # per pack, and one more when two ended at once with one pack left. (The spy counts
    # the real processes started.)
    started = []

    def start_worker(*args, **kwargs):
        started.append(args)
        return start_one_worker(*args, **kwargs)

    monkeypatch.setattr(workers, "_start_worker", start_worker)
    config = load(tmp_path, "study.factors={bn: [none, before], seed: [0, 1]}", "train.steps=50",
                  "distribute.parallel_trials=2", "train.pack=1")
    rows = run_study(config, quiet=True, report=False)
    assert len(started) in (4, 5)
    names = [f"bn={bn},seed={seed}" for bn in ("none", "before") for seed in (0, 1)]
    assert [(row["run"], row["status"], row["steps_run"]) for row in rows] == [
        (name, "ok", 50) for name in names]
    experiment = tmp_path / "quickstart"
    assert len(read_rows(experiment)) == 4 and run_dirs(experiment) == set(names)
    files = {p.name for p in (experiment / "tuner").glob("*.json")}
    assert files == {"oracle.json"}  # keras-tuner's tuner files are not written
    assert not any(name.startswith("KERASTUNER_") for name in os.environ)



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


def test_that_one_pack_without_the_worker_role_exits_2_before_training(tmp_path, capsys):
    assert main(["--config", QUICKSTART, *set_args(tmp_path), "--one-pack"]) == 2
    assert "tfbn: error: --one-pack is a worker's flag; add --role worker" in capsys.readouterr().err
    assert not (tmp_path / "quickstart").exists()


def test_that_local_workers_share_the_cores_through_their_thread_pools(tmp_path):
    cores = len(os.sched_getaffinity(0))
    assert threads_per_worker(1) == cores
    assert threads_per_worker(cores * 2) == 1  # never none
    config_path = tmp_path / "config.yaml"
    config_path.write_text(open(QUICKSTART).read())
    # A worker whose oracle is unreachable: its environment is read while it starts.
    processes = start_workers(str(config_path), 2, f"{LOOPBACK}:{free_port()}", threads=3)
    try:
        for process in processes:
            environment = _started_environment(process.pid)
            for name in THREAD_VARIABLES:
                assert environment[name.encode()] == b"3"
    finally:
        for process in processes:
            process.kill()
            process.wait()


def _started_environment(pid, timeout=30):
    """The environment of a process once its program has started.

    `subprocess.Popen` returns while the kernel is still setting up the new
    program, and until it has, ``/proc/PID/environ`` and ``cmdline`` read empty.
    """
    deadline = time.monotonic() + timeout
    while True:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            started = b"tfbn.workers" in f.read()
        with open(f"/proc/{pid}/environ", "rb") as f:
            data = f.read()
        if (started and data) or time.monotonic() > deadline:
            return dict(item.split(b"=", 1) for item in data.split(b"\0") if b"=" in item)
        time.sleep(0.01)


# Progress of local workers.

class Terminal(io.StringIO):
    """What a terminal receives; `screen` shows what it displays."""

    def isatty(self):
        return True

    def screen(self):
        rows, row = [""], 0
        for part in re.split(r"(\033\[\d+F|\033\[J|\n)", self.getvalue()):
            if part == "\n":
                row += 1
                rows += [""] * (row + 1 - len(rows))
            elif part.endswith("F"):  # to the start of the line that many rows up
                row -= int(part[2:-1])
            elif part == "\033[J":  # clear from the cursor to the end of the screen
                del rows[row:]
                rows.append("")
            else:
                rows[row] += part
        return rows[:-1]


def test_that_the_progress_board_shows_one_line_per_running_pack_below_the_finished_ones():
    terminal = Terminal()
    board = workers.ProgressBoard(terminal)
    pipes = [os.pipe() for _ in range(2)]
    for slot, (read, _) in enumerate(pipes):
        board.follow(slot, f"worker{slot}", os.fdopen(read))

    def show(slot, line, expected):
        os.write(pipes[slot][1], f"{line}\n".encode())
        deadline = time.monotonic() + 10
        while terminal.screen() != expected and time.monotonic() < deadline:
            time.sleep(0.01)
        assert terminal.screen() == expected

    show(0, "trial 1/3  bn=none  |  step 50/400  |  ETA 9s", ["worker0: trial 1/3  bn=none  |  step 50/400  |  ETA 9s"])
    show(1, "trial 2/3  bn=after  |  step 50/400  |  ETA 9s", ["worker0: trial 1/3  bn=none  |  step 50/400  |  ETA 9s",
                                                            "worker1: trial 2/3  bn=after  |  step 50/400  |  ETA 9s"])
    show(0, "trial 1/3  bn=none  |  step 100/400  |  ETA 8s", ["worker0: trial 1/3  bn=none  |  step 100/400  |  ETA 8s",
                                                            "worker1: trial 2/3  bn=after  |  step 50/400  |  ETA 9s"])
    show(1, "trial 2/3  bn=after  |  step 400/400  |  took 9s", ["worker1: trial 2/3  bn=after  |  step 400/400  |  took 9s",
                                                              "worker0: trial 1/3  bn=none  |  step 100/400  |  ETA 8s"])
    os.close(pipes[1][1])  # worker1 ends; a fresh process takes slot 1
    board.note("tfbn: a note")
    read, write = os.pipe()
    board.follow(1, "worker1", os.fdopen(read))
    pipes[1] = read, write
    show(1, "trial 3/3  bn=before  |  step 50/400  |  ETA 9s", [
        "worker1: trial 2/3  bn=after  |  step 400/400  |  took 9s", "tfbn: a note",
        "worker0: trial 1/3  bn=none  |  step 100/400  |  ETA 8s",
        "worker1: trial 3/3  bn=before  |  step 50/400  |  ETA 9s"])
    for _, write in pipes:
        os.close(write)
