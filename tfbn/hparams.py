"""TensorBoard HParams dashboard entries: factors and final metrics of each trial.

keras-tuner's own `TensorBoard` integration logs per epoch under its own folder
layout; tfbn's runs are one folder per trial named from its factors, so the
experiment description and each trial's session are written here directly.

Every trial is its own session and its own session group, named
``<experiment>/<run name>``: TensorBoard groups sessions by group name and
averages their metrics, so trials of two studies with the same factor values
must never share one (TensorBoard's default group name is a hash of the values).

TensorBoard 2.21 reads one experiment definition per log dir, that of whichever
run it lists first, so that every study in a log dir keeps its factors there,
each study's definition holds every study's factors: its own first, marked as
differing, then the other studies' (rewritten whenever a study starts in that
log dir, from the ``hparams.json`` each study leaves in its folder). The
dashboard shows the first five hyperparameters (those that differ first, then
by name) and the first five metrics (in definition order), and its parallel
coordinates leave out every trial missing a shown metric: so a study's own
factors are the shown ones, the metrics that every finished trial has come
first, and a study with more than five factors shows its seed last, its
replicates being rows of one design point.
"""

import contextlib
import dataclasses
import fcntl
import glob
import json
import math
import os
import time

import tensorflow as tf
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.plugins.hparams import summary as hparams_summary
from tensorboard.plugins.hparams import summary_v2 as hparams_v2

from tfbn import tags
from tfbn.results import TrialResult

_SUMMARY_METRICS = {f"hparams/{field.name}": field.metadata["hparams"]
                    for field in dataclasses.fields(TrialResult) if field.metadata["hparams"]}
_DEFINITION = ".hparams"  # the file name suffix of a study's definition
_SHOWN = 5  # hyperparameters and metrics the dashboard shows before any is ticked

# Summary metrics, written once per trial at its last step, and the curves
# StepMetrics writes at every evaluation (the dashboard's "Show Metrics" draws them).
# The first five are shown by default: steps to threshold, missing where the
# threshold was never reached, comes after them.
METRICS = {
    **{tag: why for tag, why in _SUMMARY_METRICS.items() if tag != "hparams/steps_to_threshold"},
    tags.TEST_ACCURACY: "test accuracy at each evaluation (BN moving statistics)",
    tags.TEST_LOSS: "test cross-entropy at each evaluation (BN moving statistics)",
    "hparams/diverged": "1 if the loss became NaN or infinite",
    "hparams/steps_to_threshold": _SUMMARY_METRICS["hparams/steps_to_threshold"],
}

_TYPES = {float: api_pb2.DATA_TYPE_FLOAT64, bool: api_pb2.DATA_TYPE_BOOL, str: api_pb2.DATA_TYPE_STRING}
_STATUS = {"ok": api_pb2.STATUS_SUCCESS, "diverged": api_pb2.STATUS_FAILURE,
           "failed": api_pb2.STATUS_FAILURE}


def dashboard_value(level):
    """A factor level as the dashboard holds it: numbers as numbers (they sort as such), else text."""
    if isinstance(level, (bool, int, float)):
        return level
    return str(level)


def _info(name, levels, differs):
    """The `api_pb2.HParamInfo` of a factor: each level once, numbers as numbers (ordered as such)."""
    values = list(dict.fromkeys(
        float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
        for v in map(dashboard_value, levels)))
    if len({type(v) for v in values}) > 1:  # e.g. a number beside a name: a domain holds one type
        values = list(dict.fromkeys(str(v) for v in values))
    info = api_pb2.HParamInfo(name=name, type=_TYPES[type(values[0])],
                              differs=differs and len(values) > 1)
    info.domain_discrete.extend(sorted(values) if info.type == api_pb2.DATA_TYPE_FLOAT64 else values)
    return info


def write_experiment(experiment_dir, levels, constants):
    """Describes the study's hyperparameters and metrics for the HParams dashboard.

    Writes ``hparams.json`` and the definition in ``experiment_dir``, and
    rewrites the definitions of the other studies in its log dir to add its factors.

    Args:
        experiment_dir: The folder holding all trials' runs, ``<log.dir>/<experiment>``.
        levels: Dict from factor name to its levels in design order; each
            level is listed once.
        constants: Dict of settings that are the same in every trial; they go
            in the experiment's description rather than in a column each.
    """
    log_dir = os.path.dirname(os.path.abspath(experiment_dir))
    with _locked(os.path.join(log_dir, ".hparams.lock")):
        with open(os.path.join(experiment_dir, "hparams.json"), "w") as f:
            json.dump({"levels": {name: list(map(dashboard_value, values)) for name, values in levels.items()},
                       "constants": {name: str(value) for name, value in constants.items()}}, f)
        studies = {}
        for path in sorted(glob.glob(os.path.join(log_dir, "*", "hparams.json"))):
            with open(path) as f:
                studies[os.path.dirname(path)] = json.load(f)
        for study_dir, study in studies.items():
            _write(study_dir, _definition(study, [other for other in studies.values() if other is not study]),
                   suffix=_DEFINITION)


def _definition(study, others):
    """A study's experiment definition: its own factors, then those only other studies have.

    Each factor's levels are those of every study: the dashboard's filter
    leaves out the rows whose level its definition does not list.
    """
    levels = {name: list(values) for name, values in study["levels"].items()}
    own = list(levels)
    for other in others:
        for name, values in other["levels"].items():
            levels.setdefault(name, []).extend(values)
    infos = [_info(name, values, differs=name in own and not (name == "seed" and len(own) > _SHOWN))
             for name, values in levels.items()]
    constants = study["constants"]
    description = "Constant in every trial: " + ", ".join(
        f"{name}={value}" for name, value in constants.items()) if constants else ""
    metrics = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag), description=why)
               for tag, why in METRICS.items()]
    return hparams_summary.experiment_pb(infos, metrics, description=description)


def read_definition(experiment_dir):
    """The `api_pb2.Experiment` a study's folder holds, or None."""
    for path in glob.glob(os.path.join(experiment_dir, f"events.out.tfevents.*{_DEFINITION}")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == hparams_metadata.EXPERIMENT_TAG:
                    return hparams_metadata.parse_experiment_plugin_data(value.metadata.plugin_data.content)
    return None


@contextlib.contextmanager
def _locked(path):
    # Studies started at once in one log dir each rewrite the others' definitions.
    with open(path, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        yield


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
            ones) or NaN is left out, as TensorBoard would show none; a failed
            trial has only its status.
    """
    with tf.summary.create_file_writer(run_dir).as_default():
        if result.status != "failed":
            step = result.steps_run
            for field in dataclasses.fields(result):
                value = getattr(result, field.name)
                if field.metadata["hparams"] and value is not None and not math.isnan(value):
                    tf.summary.scalar(f"hparams/{field.name}", value, step=step)
            tf.summary.scalar("hparams/diverged", float(result.status == "diverged"), step=step)
        end = hparams_summary.session_end_pb(_STATUS[result.status], end_time_secs=time.time())
        tf.summary.experimental.write_raw_pb(end.SerializeToString(), step=0)


def _write(log_dir, summary, suffix=".v2"):
    if suffix != ".v2":  # the one file of that suffix holds this summary alone
        for old in glob.glob(os.path.join(log_dir, f"events.out.tfevents.*{suffix}")):
            os.remove(old)
    writer = tf.summary.create_file_writer(log_dir, filename_suffix=suffix)
    with writer.as_default():
        tf.summary.experimental.write_raw_pb(summary.SerializeToString(), step=0)
    writer.close()
