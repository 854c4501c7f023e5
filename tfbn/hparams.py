"""TensorBoard HParams dashboard entries: factors and final metrics of each trial.

keras-tuner's own `TensorBoard` integration logs per epoch under its own folder
layout; tfbn's runs are one folder per trial named from its factors, so the
experiment description and each trial's session are written here directly.

Every trial is its own session and its own session group, named
``<experiment>/<run name>``: TensorBoard groups sessions by group name and
averages their metrics, so trials of two studies with the same factor values
must never share one (TensorBoard's default group name is a hash of the values).
"""

import dataclasses
import time

import tensorflow as tf
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import summary as hparams_summary
from tensorboard.plugins.hparams import summary_v2 as hparams_v2

from tfbn import tags
from tfbn.results import TrialResult

# Summary metrics, written once per trial at its last step, and the curves
# StepMetrics writes at every evaluation (the dashboard's "Show Metrics" draws them).
METRICS = {
    **{f"hparams/{field.name}": field.metadata["hparams"]
       for field in dataclasses.fields(TrialResult) if field.metadata["hparams"]},
    "hparams/diverged": "1 if the loss became NaN or infinite",
    tags.TEST_ACCURACY: "test accuracy at each evaluation (BN moving statistics)",
    tags.TEST_LOSS: "test cross-entropy at each evaluation (BN moving statistics)",
}

_STATUS = {"ok": api_pb2.STATUS_SUCCESS, "diverged": api_pb2.STATUS_FAILURE,
           "failed": api_pb2.STATUS_FAILURE}


def dashboard_value(level):
    """A factor level as the dashboard shows it: integers as their digits, not ``2.0000``."""
    if isinstance(level, bool) or not isinstance(level, int):
        return level
    return str(level)


def write_experiment(experiment_dir, levels, constants):
    """Describes the study's hyperparameters and metrics for the HParams dashboard.

    Args:
        experiment_dir: The folder holding all trials' runs.
        levels: Dict from factor name to its levels in design order; each
            level is listed once.
        constants: Dict of settings that are the same in every trial; they go
            in the experiment's description rather than in a column each.
    """
    hparams = [hparams_v2.HParam(name, hparams_v2.Discrete(
        list(dict.fromkeys(dashboard_value(level) for level in values))))
        for name, values in levels.items()]
    infos = []
    for hparam in hparams:
        info = api_pb2.HParamInfo(name=hparam.name)
        hparam.domain.update_hparam_info(info)
        infos.append(info)
    metrics = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag), description=why)
               for tag, why in METRICS.items()]
    description = "Constant in every trial: " + ", ".join(
        f"{name}={value}" for name, value in constants.items()) if constants else ""
    summary = hparams_summary.experiment_pb(infos, metrics, description=description)
    _write(experiment_dir, summary)


def start_trial(run_dir, group, values):
    """Opens a trial's session: its factor values, shown as running until `end_trial`.

    Args:
        run_dir: The trial's run directory.
        group: The session group name, unique across studies: ``<experiment>/<run name>``.
        values: Dict from factor name to the trial's level.
    """
    values = {name: dashboard_value(level) for name, level in values.items()}
    _write(run_dir, hparams_v2.hparams_pb(values, trial_id=group))


def end_trial(run_dir, result):
    """Closes a trial's session with its summary metrics and its real status.

    Args:
        run_dir: The trial's run directory.
        result: Its `tfbn.results.TrialResult`. A metric that is None (steps
            to a threshold never reached: any number would sort among the real
            ones) is left out; a failed trial has only its status.
    """
    with tf.summary.create_file_writer(run_dir).as_default():
        if result.status != "failed":
            step = result.steps_run
            for field in dataclasses.fields(result):
                value = getattr(result, field.name)
                if field.metadata["hparams"] and value is not None:
                    tf.summary.scalar(f"hparams/{field.name}", value, step=step)
            tf.summary.scalar("hparams/diverged", float(result.status == "diverged"), step=step)
        end = hparams_summary.session_end_pb(_STATUS[result.status], end_time_secs=time.time())
        tf.summary.experimental.write_raw_pb(end.SerializeToString(), step=0)


def _write(log_dir, summary):
    with tf.summary.create_file_writer(log_dir).as_default():
        tf.summary.experimental.write_raw_pb(summary.SerializeToString(), step=0)
