"""Writes training and test metrics to TensorBoard against the training step."""

import keras

from tfbn.callbacks import events


class StepMetrics(keras.callbacks.Callback):
    """Logs ``loss/*`` and ``accuracy/*`` scalars at the optimizer's step count.

    Keras log names map to tags by `tag`: ``accuracy`` -> ``accuracy/train``,
    ``val_accuracy`` -> ``accuracy/test`` (BN's moving statistics) and
    ``val_accuracy_batch_stats`` -> ``accuracy/test_batch_stats``.

    `tfbn.training` runs one Keras "epoch" per evaluation period, so Keras's own
    `keras.callbacks.TensorBoard` would plot against the period index; this
    callback uses the true training step instead and keeps the test history
    for the trial's summary metrics.

    Args:
        log_dir: The run directory the event file goes to.

    Attributes:
        history: List of ``(step, logs)`` with each evaluation's Keras logs.
    """

    def __init__(self, log_dir):
        super().__init__()
        self.log_dir = log_dir
        self.history = []
        self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        logs = dict(logs or {})
        self.history.append((step, logs))
        if self._writer is None:
            self._writer = events.EventFile(self.log_dir)
        events.write(self._writer, step, {tag(name): value for name, value in logs.items()},
                     describe=len(self.history) == 1)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def tag(log_name):
    """The TensorBoard tag of a Keras log name, grouped by metric."""
    split = "test" if log_name.startswith("val_") else "train"
    metric = log_name.removeprefix("val_")
    if metric.endswith("_batch_stats"):
        metric, split = metric.removesuffix("_batch_stats"), split + "_batch_stats"
    return f"{metric}/{split}"
