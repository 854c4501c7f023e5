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

    Measures any model: it writes the logs Keras gives it.

    Args:
        log_dir: The run directory the events go to, or an `events.Writer`
            that several callbacks share.

    Attributes:
        history: List of ``(step, logs)`` with each evaluation's Keras logs.
    """

    def __init__(self, log_dir):
        super().__init__()
        self.writer = events.Writer.of(log_dir)
        self.history = []

    @property
    def log_dir(self):
        return self.writer.log_dir

    def on_train_begin(self, logs=None):
        self.writer.open()

    def on_epoch_end(self, epoch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        logs = dict(logs or {})
        self.history.append((step, logs))
        self.writer.write(step, {tag(name): value for name, value in logs.items()},
                          describe=len(self.history) == 1)

    def on_train_end(self, logs=None):
        self.writer.close()


class TensorBoard(StepMetrics):
    """`StepMetrics` that keras-tuner gives each trial's run folder, with the instruments sharing its writer.

    keras-tuner treats a callback by its class name ``TensorBoard``: in each
    trial of a search it sets the copy's ``log_dir`` to
    ``<log_dir>/<trial id>/execution<n>`` and adds an HParams record there
    (`keras_tuner.Tuner.run_trial`). Setting ``log_dir`` here moves the
    writer, and with it every instrument of `tfbn.callbacks.instruments`,
    which share it; the copies of one trial share a copy of the writer.

    Measures any model.

    Args:
        log_dir: The run directory, or the `events.Writer` shared with the instruments.
    """

    @StepMetrics.log_dir.setter
    def log_dir(self, value):
        self.writer.log_dir = value


def tag(log_name):
    """The TensorBoard tag of a Keras log name, grouped by metric."""
    split = "test" if log_name.startswith("val_") else "train"
    metric = log_name.removeprefix("val_")
    if metric.endswith("_batch_stats"):
        metric, split = metric.removesuffix("_batch_stats"), split + "_batch_stats"
    return f"{metric}/{split}"
