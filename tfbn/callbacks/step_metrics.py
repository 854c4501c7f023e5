"""Writes training and test metrics to TensorBoard against the training step."""

import keras
import tensorflow as tf


class StepMetrics(keras.callbacks.Callback):
    """Logs ``loss/*`` and ``accuracy/*`` scalars at the optimizer's step count.

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
            self._writer = tf.summary.create_file_writer(self.log_dir)
        with self._writer.as_default(step=step):
            for name, value in logs.items():
                split = "test" if name.startswith("val_") else "train"
                tf.summary.scalar(f"{name.removeprefix('val_')}/{split}", value)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
