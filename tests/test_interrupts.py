"""Interrupts and lost processes: Ctrl-C and SIGTERM mid-pack, a worker killed, a
chief killed or out of reach. Each study ends, after the same command again, with every
design point recorded exactly once and the results of an uninterrupted run."""

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import types
from collections import Counter
from concurrent import futures

import grpc
import pytest
from keras_tuner.src import protos
from keras_tuner.src.distribute.oracle_chief import OracleServicer
from keras_tuner.engine.trial import TrialStatus

from tfbn import interrupts, workers
from tfbn.config import dump_config
from tfbn.design import design_points
from tfbn.errors import ConfigError
from tfbn.interrupts import resume_command
from tfbn.packing import plan_packs
from tfbn.run import main
from tfbn.sweep import DesignOracle, _search_as_chief

from helpers import QUICKSTART, WAIT_S, load, read_rows, set_args

# Two packs of one trial each, long enough that a signal after a pack's first
# progress line (step 50) lands before its end.
STUDY = ("study.factors.bn=[none, before]", "train.pack=1", "train.steps=400")
RUNS = ["bn=none", "bn=before"]


def outcome(rows):
    """What an uninterrupted run must reproduce: each run's status, steps and accuracies."""
    return {row["run"]: (row["status"], row["steps_run"], row["final_accuracy"],
                         row["best_accuracy"], row["final_loss"]) for row in rows}


def study_args(log_dir, *more):
    return ["--config", QUICKSTART, "--no-report", *set_args(log_dir, *STUDY, *more)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The results of the study run without interruption, in this process."""
    log_dir = tmp_path_factory.mktemp("reference")
    assert main([*study_args(log_dir), "--quiet"]) == 0
    rows = read_rows(log_dir / "quickstart")
    assert [row["run"] for row in rows] == RUNS
    return outcome(rows)


def launch(args):
    """``python -m tfbn.run ARGS`` with its output (and error output) on a pipe."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERASTUNER_")}
    return subprocess.Popen([sys.executable, "-m", "tfbn.run", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)


def read_until(process, pattern, count=1):
    """Reads the process's output until ``count`` lines matched ``pattern``; returns all lines."""
    lines = []
    while sum(bool(re.search(pattern, line)) for line in lines) < count:
        line = process.stdout.readline()
        assert line, f"exited ({process.wait()}) before {pattern!r}:\n{''.join(lines)}"
        lines.append(line)
    return lines


def finish(process, lines):
    output, _ = process.communicate(timeout=WAIT_S)
    return process.returncode, ("".join(lines) + output).splitlines()


def children(pid):
    """Process ids whose parent is ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    # The command name, in parentheses, may hold spaces.
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def alive(pid):
    """Whether ``pid`` runs (a zombie, ended and not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pids, timeout=20):
    deadline = time.monotonic() + timeout
    while any(map(alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [pid for pid in pids if alive(pid)]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_that_a_signal_mid_pack_ends_the_study_says_how_to_resume_and_the_same_command_ends_like_an_uninterrupted_run(
        tmp_path, reference, signum):
    args = study_args(tmp_path)
    process = launch([*args, "--restart"])
    lines = read_until(process, r"trial 2/2 .*step 50/400")  # the first pack is recorded
    process.send_signal(signum)
    status, output = finish(process, lines)
    assert status == 128 + signum, output
    assert output[-2:] == [
        f"tfbn: stopped by {signum.name}; every trial that had finished is recorded",
        f"tfbn: to resume, run: {resume_command(args)}"]  # without --restart
    experiment = tmp_path / "quickstart"
    assert [row["run"] for row in read_rows(experiment)] == ["bn=none"]
    assert main(args) == 0
    rows = read_rows(experiment)
    assert Counter(row["run"] for row in rows) == {run: 1 for run in RUNS}
    assert outcome(rows) == reference


def test_that_ctrl_c_stops_a_parallel_study_with_its_workers(tmp_path):
    args = study_args(tmp_path, "distribute.parallel_trials=2")
    process = launch(args)
    lines = read_until(process, r"step 50/400", count=2)  # each worker is in its pack
    pids = children(process.pid)
    assert len(pids) == 2
    process.send_signal(signal.SIGINT)
    status, output = finish(process, lines)
    assert status == 130, output
    assert output[-2:] == ["tfbn: stopped by SIGINT; every trial that had finished is recorded",
                           f"tfbn: to resume, run: {resume_command(args)}"]
    assert not wait_gone(pids)


def test_that_a_killed_workers_pack_is_trained_again_and_the_study_says_so(tmp_path, reference):
    args = study_args(tmp_path, "distribute.parallel_trials=2")
    process = launch(args)
    lines = read_until(process, r"step 50/400", count=2)
    # One progress line per running trial, after its worker's name: both packs train at once.
    started = [re.match(r"(worker[01]): trial ./2  (bn=\w+) .*step 50/400", line)
               for line in lines if "step 50/400" in line]
    assert {match[2] for match in started} == set(RUNS)
    # The worker that has just begun its pack, not one that may have ended its own.
    victim = started[-1][1]
    [pid] = [pid for pid in children(process.pid)
             if f"{victim}\0".encode() in open(f"/proc/{pid}/cmdline", "rb").read()]
    os.kill(pid, signal.SIGKILL)
    status, output = finish(process, lines)
    assert status == 1, output
    assert re.fullmatch(rf"tfbn: {victim} was killed by SIGKILL while training pack {started[-1][2]}; "
                        r"worker[01](\.1)? trained it again\. 2 of 2 design points are recorded",
                        output[-1]), output
    rows = read_rows(tmp_path / "quickstart")
    assert Counter(row["run"] for row in rows) == {run: 1 for run in RUNS}
    assert outcome(rows) == reference


def test_that_local_workers_die_with_the_process_that_started_them(tmp_path):
    # The launcher alone, without TensorFlow: its workers wait for a chief that never answers.
    config = tmp_path / "config.yaml"
    config.write_text(open(QUICKSTART).read())
    launcher = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom tfbn.workers import start_workers\n"
         f"print(*[p.pid for p in start_workers({str(config)!r}, 2, '127.0.0.1:{workers.free_port()}')],"
         " flush=True)\ntime.sleep(600)"], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(pid) for pid in launcher.stdout.readline().split()]
        assert len(pids) == 2 and all(map(alive, pids))
    finally:
        launcher.kill()
        launcher.wait()
    assert not wait_gone(pids)


# A worker and its chief.

def test_that_a_worker_whose_chief_does_not_answer_exits_with_one_line(tmp_path, capsys):
    oracle = f"127.0.0.1:{workers.free_port()}"
    start = time.monotonic()
    assert main(["--config", QUICKSTART, *set_args(tmp_path, "distribute.worker_timeout=1"),
                 "--role", "worker", "--oracle", oracle]) == 2
    assert time.monotonic() - start < 30
    assert capsys.readouterr().err == (f"tfbn: error: no chief answered at {oracle} within 1 s; "
                                       "start the chief first (--role chief) or correct --oracle\n")
    assert not (tmp_path / "quickstart").exists()


@pytest.fixture
def chief_server():
    """A gRPC server on loopback serving nothing yet; yields it and its address."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    port = server.add_insecure_port("127.0.0.1:0")
    yield server, f"127.0.0.1:{port}"
    server.stop(0)


def test_that_a_worker_with_another_config_than_its_chiefs_exits_with_one_line_and_writes_nothing(
        tmp_path, capsys, chief_server):
    server, oracle = chief_server
    server.start()
    saved = tmp_path / "quickstart" / "config.yaml"
    saved.parent.mkdir()
    saved.write_text(dump_config(load(tmp_path)))
    before = saved.read_bytes()
    assert main(["--config", QUICKSTART, *set_args(tmp_path, "train.steps=200"), "--role", "worker",
                 "--oracle", oracle]) == 2
    assert capsys.readouterr().err == (
        "tfbn: error: this worker's config differs from its chief's (train.steps); start the "
        f"worker with --config {saved}\n")
    assert saved.read_bytes() == before
    assert os.listdir(saved.parent) == ["config.yaml"]


def test_that_a_chief_on_a_busy_port_exits_2_with_one_line(tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        oracle = f"127.0.0.1:{busy.getsockname()[1]}"
        assert main(["--config", QUICKSTART, *set_args(tmp_path), "--role", "chief",
                     "--oracle", oracle]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"tfbn: error: --oracle {oracle}: the chief cannot listen there (in use); "
                            "pick another port, e.g. --oracle 127.0.0.1:") and error.count("\n") == 1
    assert not (tmp_path / "quickstart").exists()


def _oracle(tmp_path, timeout):
    config = load(tmp_path, *STUDY)
    oracle = DesignOracle(plan_packs(config, design_points(config)), fixed={"bn_sync": False})
    oracle._set_project_dir(str(tmp_path), "tuner")
    oracle.verbose = 0
    oracle.worker_timeout = timeout
    return oracle


def _end(oracle, trial):
    trial.status = TrialStatus.COMPLETED
    oracle.update_trial(trial.trial_id, {"final_accuracy": 0.5})
    oracle.end_trial(trial)


def test_that_the_oracle_proposes_a_lost_workers_pack_again_once_and_ignores_the_lost_worker(tmp_path):
    oracle = _oracle(tmp_path, timeout=None)
    first, second = oracle.create_trial("a"), oracle.create_trial("b")
    packs = [trial.hyperparameters.values["pack"] for trial in (first, second)]
    assert packs == RUNS
    # Every pack is out: a third worker waits, as b's pack may come back.
    assert oracle.create_trial("c").status == TrialStatus.IDLE
    lost = oracle.lose("b", "was killed by SIGKILL")
    assert (lost.worker, lost.pack, lost.again) == ("b", "bn=before", True)
    again = oracle.create_trial("c")
    assert again.hyperparameters.values["pack"] == "bn=before" and again.trial_id != second.trial_id
    assert lost.trained_by == "c"
    _end(oracle, second)  # b's late word about its old trial changes nothing
    assert set(oracle.ongoing_trials) == {"a", "c"} and not oracle.finished()
    _end(oracle, first)
    assert oracle.lose("c", "exited with status 1").again is False  # given up: twice lost
    assert oracle.finished()
    assert oracle.create_trial("a").status == TrialStatus.STOPPED


def test_that_heartbeats_keep_a_worker_and_stop_it_once_its_pack_went_elsewhere_or_its_chief_is_gone(
        tmp_path, chief_server, monkeypatch):
    server, oracle_address = chief_server
    oracle = _oracle(tmp_path, timeout=1.5)
    protos.get_service_grpc().add_OracleServicer_to_server(OracleServicer(oracle), server)
    server.start()
    host, port = oracle_address.split(":")
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", host)
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", port)
    oracle.create_trial("live")
    oracle.create_trial("silent")
    with interrupts.stop_on_signals(), workers.Heartbeat("live", 1.5):
        time.sleep(2.5)
        # The chief heard from "live" only: "silent"'s pack is proposed again.
        assert interrupts.requested() is None
        assert [lost.worker for lost in oracle.lost] == ["silent"]
    with interrupts.stop_on_signals(), workers.Heartbeat("silent", 1.5):
        time.sleep(1)
        assert "gave this worker's pack to another worker" in str(interrupts.requested())
    with interrupts.stop_on_signals(), workers.Heartbeat("live", 1):
        server.stop(0)
        time.sleep(2)
        with pytest.raises(workers.ChiefGone, match="has not answered for 1 s"):
            interrupts.check()


def test_that_a_chief_says_when_it_loses_a_silent_worker_and_waits_until_its_pack_is_trained_again(
        tmp_path, capsys):
    oracle = _oracle(tmp_path, timeout=None)
    config = load(tmp_path, *STUDY, "distribute.worker_timeout=1")
    oracle.create_trial("silent")
    ended = []

    def busy_worker():  # sends heartbeats, trains its pack, then the silent worker's
        while True:
            trial = oracle.create_trial("busy")
            if trial.status == TrialStatus.STOPPED:
                return
            if trial.status == TrialStatus.IDLE:  # every pack is out: ask again
                time.sleep(0.1)
            if trial.status == TrialStatus.RUNNING:
                for _ in range(5):
                    oracle.get_trial(workers.HEARTBEAT_PREFIX + "busy")
                    time.sleep(0.3)
                _end(oracle, trial)
                ended.append(trial.hyperparameters.values["pack"])

    worker = threading.Thread(target=busy_worker, daemon=True)
    worker.start()
    serving = threading.Event()  # stands for keras-tuner's server thread
    _search_as_chief(lambda: types.SimpleNamespace(search=serving.wait), oracle, config,
                     str(tmp_path), local=False, quiet=True)
    serving.set()
    worker.join(10)
    assert ended == ["bn=before", "bn=none"]
    assert re.fullmatch(r"tfbn: silent sent nothing for \d+ s while training pack bn=none; "
                        r"it is proposed again\n", capsys.readouterr().out)
    assert oracle.lost[0].trained_by == "busy" and oracle.finished()
