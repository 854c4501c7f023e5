import csv
import os
import pathlib
import socket
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).parent.parent


def command(log_dir, steps, eval_every=100):
    args = [sys.executable, "-m", "tfbn.run", "--config", "configs/quickstart.yaml", "--quiet",
            "--no-report"]
    for override in (f"log.dir={log_dir}", f"train.steps={steps}", f"train.eval_every={eval_every}",
                     "log.instruments=[]", "study.factors.bn=[none]"):
        args += ["--set", override]
    return args


def test_that_a_second_run_into_the_same_experiment_folder_exits_2_naming_the_holder(tmp_path):
    lock = tmp_path / ".quickstart.lock"
    first = subprocess.Popen(command(tmp_path, 50000, 1000), cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (lock.exists() and lock.read_text()):
        assert first.poll() is None and time.monotonic() < deadline, "the first run took no lock"
        time.sleep(0.2)
    second = subprocess.run(command(tmp_path, 50000, 1000), cwd=ROOT, capture_output=True, text=True)
    assert first.poll() is None, "the first run ended before the second one started"
    assert second.returncode == 2
    assert f"(pid {first.pid} on {socket.gethostname()})" in second.stderr
    assert "--set experiment=NAME" in second.stderr
    assert first.wait(timeout=300) == 0
    rows = list(csv.DictReader(open(tmp_path / "quickstart" / "results.csv")))
    assert [(row["run"], row["status"], row["steps_run"]) for row in rows] == [("bn=none", "ok", "50000")]
    assert lock.read_text() == ""  # released and emptied


def test_that_a_lock_left_by_a_run_that_is_gone_is_taken_over_with_a_notice(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".quickstart.lock").write_text(f"pid {dead.pid} on {socket.gethostname()}")
    result = subprocess.run(command(tmp_path, 100), cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0
    assert result.stderr == (f"tfbn: taking over the lock of pid {dead.pid} on "
                             f"{socket.gethostname()}, which is no longer running\n")
    assert os.path.exists(tmp_path / "quickstart" / "results.csv")
