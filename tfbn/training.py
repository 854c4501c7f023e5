"""Step-based training of one trial: build, compile, fit, summarise.

Training runs ``train.steps`` steps as ``steps / eval_every`` Keras epochs of
``eval_every`` steps each, so that Keras evaluates the test split (with BN's
moving statistics, ``training=False``) exactly every ``eval_every`` steps.
"""

import contextlib
import math
import time

import keras

from tfbn.callbacks import BatchStatisticsEvaluation, StepMetrics, build_instruments
from tfbn.data import make_datasets
from tfbn.errors import DataError
from tfbn.models import build_mlp

# Keras runs this many steps per call into the graph; per-step Python dispatch
# dominates an MLP this small (about 30x slower without it on 2 CPU cores).
MAX_STEPS_PER_EXECUTION = 32


def build_model(config, data):
    """The `tfbn.build_mlp` network a config describes, sized for ``data``."""
    m = config.model
    return build_mlp(
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        hidden_units=(m.width,) * m.depth,
        activation=m.activation,
        bn=m.bn,
        seed=config.train.seed,
        leaky_slope=m.leaky_slope,
        bn_momentum=m.bn_momentum,
        bn_epsilon=m.bn_epsilon,
        bn_synchronized=config.distribute.bn_sync,
    )


def build_optimizer(train_config):
    """SGD (no momentum) or Adam at the configured learning rate."""
    if train_config.optimizer == "adam":
        return keras.optimizers.Adam(train_config.learning_rate)
    return keras.optimizers.SGD(train_config.learning_rate)


def steps_per_execution(eval_every):
    """The largest divisor of ``eval_every`` up to `MAX_STEPS_PER_EXECUTION`."""
    return max(d for d in range(1, min(eval_every, MAX_STEPS_PER_EXECUTION) + 1)
               if eval_every % d == 0)


def train_trial(config, data, log_dir, callbacks=(), strategy=None):
    """Trains the model of one trial config and summarises its test accuracy.

    Args:
        config: The trial's `tfbn.config.Config` (factor levels applied).
        data: The `tfbn.data.Data` to train and evaluate on.
        log_dir: Run directory for its TensorBoard event file.
        callbacks: Further Keras callbacks, e.g. `tfbn.callbacks.Progress`.
        strategy: A `tf.distribute.Strategy` to build and train under, or None.

    Returns:
        A dict of the trial's results; see `summarise`.
    """
    train = config.train
    if train.batch_size > len(data.y_train):
        raise DataError(f"train.batch_size {train.batch_size} exceeds the {len(data.y_train)} "
                        "training examples; lower the batch size")
    with strategy.scope() if strategy else contextlib.nullcontext():
        model = build_model(config, data)
        model.compile(
            optimizer=build_optimizer(train),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
            # Keras 3.15 fails under MirroredStrategy with more than one step per
            # execution ("You must feed a value for placeholder tensor").
            steps_per_execution=(1 if strategy and strategy.num_replicas_in_sync > 1
                                 else steps_per_execution(train.eval_every)),
        )
    train_ds, test_ds = make_datasets(data, train.batch_size, train.seed, train.eval_batch_size)
    metrics = StepMetrics(log_dir)
    evaluations = [BatchStatisticsEvaluation(test_ds)] if config.model.bn != "none" else []
    start = time.monotonic()
    model.fit(
        train_ds,
        steps_per_epoch=train.eval_every,
        epochs=train.steps // train.eval_every,
        validation_data=test_ds,
        callbacks=[keras.callbacks.TerminateOnNaN(), *evaluations, metrics,
                   *build_instruments(config.log, log_dir, data.x_test), *callbacks],
        shuffle=False,  # the pipeline shuffles, seeded
        verbose=0,
    )
    return summarise(metrics.history, train.steps, train.threshold, time.monotonic() - start)


def summarise(history, steps, threshold, seconds):
    """Summary metrics of one trial from its evaluation history.

    Returns:
        A dict with ``status`` (``ok``, or ``diverged`` when the loss became NaN
        or infinite), ``steps_run``, ``final_accuracy`` and ``final_loss`` (test,
        last finite evaluation), ``best_accuracy``, ``steps_to_threshold``
        (first evaluated step whose test accuracy reached ``threshold``, or
        None), ``final_accuracy_batch_stats`` (test accuracy with BN normalizing
        by each test batch's own statistics; None without BN) and ``seconds``.
    """
    finite = [(step, logs) for step, logs in history
              if math.isfinite(logs.get("loss", math.nan))]
    accuracies = [(step, logs["val_accuracy"]) for step, logs in finite]
    last_step = history[-1][0] if history else 0
    reached = [step for step, acc in accuracies if acc >= threshold]
    return {
        "status": "ok" if len(finite) == len(history) and last_step >= steps else "diverged",
        "steps_run": last_step,
        "final_accuracy": accuracies[-1][1] if accuracies else math.nan,
        "best_accuracy": max((acc for _, acc in accuracies), default=math.nan),
        "steps_to_threshold": reached[0] if reached else None,
        "final_loss": finite[-1][1]["val_loss"] if finite else math.nan,
        "final_accuracy_batch_stats": finite[-1][1].get("val_accuracy_batch_stats") if finite else None,
        "seconds": round(seconds, 2),
    }
