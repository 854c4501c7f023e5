"""Runs a study's trials with keras-tuner: our oracle proposes, our tuner trains.

`DesignOracle` hands out the points of a `tfbn.study` design in a fixed order,
each exactly once. keras-tuner's own `GridSearchOracle` derives its next point
from the trials seen so far and does not resume correctly after an
interruption (keras-tuner issue #1055); this oracle's order is a pure function
of the config, and keras-tuner persists which points were tried, so a rerun
continues where it stopped (an interrupted trial is retried from scratch).
"""

import os
import shutil
import time

import keras_tuner

from tfbn.callbacks import Progress
from tfbn.config import dump_config, load_config, to_dict
from tfbn.data import load_data
from tfbn.errors import ConfigError
from tfbn.results import RESULT_COLUMNS, append_row, read_rows
from tfbn.study import LABELS, apply_factors, design_points, run_name, study_factors
from tfbn.training import train_trial

OBJECTIVE = keras_tuner.Objective("final_accuracy", direction="max")


class DesignOracle(keras_tuner.Oracle):
    """An oracle that proposes the points of an explicit design, in order.

    Args:
        points: List of dicts from factor name to a scalar level.
        **kwargs: Passed on to `keras_tuner.Oracle`.
    """

    def __init__(self, points, **kwargs):
        hyperparameters = keras_tuner.HyperParameters()
        for name in points[0]:
            hyperparameters.Choice(name, list(dict.fromkeys(p[name] for p in points)),
                                   ordered=False)
        super().__init__(objective=OBJECTIVE, max_trials=len(points),
                         hyperparameters=hyperparameters, allow_new_entries=False,
                         tune_new_entries=False, **kwargs)
        self.points = points

    def populate_space(self, trial_id):
        for values in self.points:
            if self._compute_values_hash(values) not in self._tried_so_far:
                return {"status": keras_tuner.engine.trial.TrialStatus.RUNNING, "values": values}
        return {"status": keras_tuner.engine.trial.TrialStatus.STOPPED}


class StudyTuner(keras_tuner.Tuner):
    """Trains one trial of a study per call of `run_trial`.

    Args:
        config: The study's `tfbn.config.Config`.
        experiment_dir: ``<log.dir>/<experiment>``: run directories and results.
        quiet: Print no progress lines.
        **kwargs: Passed on to `keras_tuner.Tuner`.
    """

    def __init__(self, config, experiment_dir, quiet=False, **kwargs):
        super().__init__(directory=experiment_dir, project_name="tuner", **kwargs)
        self.config = config
        self.experiment_dir = experiment_dir
        self.quiet = quiet
        self.results_path = os.path.join(experiment_dir, "results.csv")

    def run_trial(self, trial, *args, **kwargs):
        point = {name: trial.hyperparameters.get(name) for name in self.oracle.points[0]}
        trial_config = apply_factors(self.config, point)
        name = run_name(point)
        callbacks = [] if self.quiet else [Progress(
            trial_config.train.steps,
            prefix=f"trial {int(trial.trial_id) + 1}/{len(self.oracle.points)}  "
                   + "  ".join(f"{LABELS[k]}={v}" for k, v in point.items()))]
        result = train_trial(trial_config, load_data(trial_config.data),
                             os.path.join(self.experiment_dir, name), callbacks)
        append_row(self.results_path, {"trial": trial.trial_id, "run": name, **point, **result},
                   result_columns(point))
        return {"final_accuracy": result["final_accuracy"],
                "best_accuracy": result["best_accuracy"]}


def result_columns(point):
    """Columns of the results file: trial id, run name, factors, then results."""
    return ("trial", "run", *point, *RESULT_COLUMNS)


def run_study(config, *, quiet=False, restart=False):
    """Runs (or resumes) every trial of a study and returns their result rows.

    Args:
        config: A validated `tfbn.config.Config`.
        quiet: Print no progress lines.
        restart: Move an earlier run of this experiment aside and start afresh.

    Returns:
        The results-file rows of the design's trials, in design order.
    """
    experiment_dir = os.path.join(config.log.dir, config.experiment)
    _prepare_experiment_dir(experiment_dir, config, restart)
    points = design_points(config)
    oracle = DesignOracle(points, max_consecutive_failed_trials=len(points) + 1)
    oracle.verbose = 0
    tuner = StudyTuner(config, experiment_dir, quiet, oracle=oracle)
    tuner.search()
    latest = {row["run"]: row for row in read_rows(tuner.results_path)}
    return [latest[run_name(p)] for p in points if run_name(p) in latest]


def _prepare_experiment_dir(experiment_dir, config, restart):
    saved_path = os.path.join(experiment_dir, "config.yaml")
    if restart and os.path.exists(experiment_dir):
        aside = f"{experiment_dir}.{time.strftime('%Y%m%d-%H%M%S')}"
        shutil.move(experiment_dir, aside)
        print(f"moved the earlier run aside to {aside}")
    if os.path.exists(saved_path):
        saved, current = _flatten(to_dict(load_config(saved_path))), _flatten(to_dict(config))
        changed = [key for key in current
                   if not key.startswith("log.") and saved.get(key) != current[key]]
        if changed:
            raise ConfigError(
                f"{experiment_dir} holds a run of this experiment with a different config "
                f"({', '.join(changed)} changed). Resume it unchanged, give this one another "
                "name (--set experiment=NAME), or pass --restart to move the old run aside")
    os.makedirs(experiment_dir, exist_ok=True)
    # Written to a temporary file first so that a crash never leaves half a config.
    with open(saved_path + ".tmp", "w") as f:
        f.write(dump_config(config))
    os.replace(saved_path + ".tmp", saved_path)


def _flatten(tree, prefix=""):
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "factors":
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat
