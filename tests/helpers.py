"""What several test modules share: the quickstart config, running a study in this
process or as a subprocess, and a real TensorBoard server."""

import contextlib
import csv
import json
import os
import pathlib
import subprocess
import sys
import urllib.request
from collections import Counter

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util.tensor_util import make_ndarray

from tfbn.config import load_config
from tfbn.results import TrialResult
from tfbn.workers import free_port

QUICKSTART = str(pathlib.Path(__file__).parent.parent / "configs" / "quickstart.yaml")


@contextlib.contextmanager
def tensorboard_server(logdir):
    """A real TensorBoard serving ``logdir`` on a free loopback port; yields its URL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1",
         "--port", str(port), "--reload_interval", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def get_json(url):
    """The JSON a TensorBoard URL answers."""
    # No proxy: the server is on the loopback interface.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as response:
        return json.load(response)


SHORT = ("train.steps=100", "train.eval_every=50", "log.instruments=[]")
# The report written at the end of a command-line run is tfbn.report's business.
FLAGS = ("--config", QUICKSTART, "--quiet", "--no-report")
KERASTUNER_VARIABLES = ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT")
WAIT_S = 240  # for a subprocess to finish; a chief process may idle 20 s before it exits


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
