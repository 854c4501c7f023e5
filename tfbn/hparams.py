"""TensorBoard HParams dashboard entries: factors and final metrics of each trial.

keras-tuner's own `TensorBoard` integration logs per epoch under its own folder
layout; tfbn's runs are one folder per trial named from its factors, so the
experiment description and each trial's session are written here directly.
"""

import tensorflow as tf
from tensorboard.plugins.hparams import api as hparams_api

METRICS = {
    "hparams/final_accuracy": "test accuracy at the last step (BN moving statistics)",
    "hparams/best_accuracy": "best test accuracy over the evaluations",
    "hparams/steps_to_threshold": "first step reaching train.threshold (-1: never)",
    "hparams/diverged": "1 if the loss became NaN or infinite",
}


def write_experiment(experiment_dir, levels):
    """Describes the study's hyperparameters and metrics for the HParams dashboard.

    Args:
        experiment_dir: The folder holding all trials' runs.
        levels: Dict from hyperparameter name to its list of levels.
    """
    hparams = [hparams_api.HParam(name, hparams_api.Discrete(list(values)))
               for name, values in levels.items()]
    metrics = [hparams_api.Metric(tag, description=why) for tag, why in METRICS.items()]
    with tf.summary.create_file_writer(experiment_dir).as_default():
        hparams_api.hparams_config(hparams=hparams, metrics=metrics)


def write_trial(run_dir, values, result):
    """Records a finished trial's hyperparameters and summary metrics in its run."""
    with tf.summary.create_file_writer(run_dir).as_default():
        hparams_api.hparams(values)
        step = result["steps_run"]
        tf.summary.scalar("hparams/final_accuracy", result["final_accuracy"], step=step)
        tf.summary.scalar("hparams/best_accuracy", result["best_accuracy"], step=step)
        reached = result["steps_to_threshold"]
        tf.summary.scalar("hparams/steps_to_threshold", -1 if reached is None else reached, step=step)
        tf.summary.scalar("hparams/diverged", float(result["status"] == "diverged"), step=step)
