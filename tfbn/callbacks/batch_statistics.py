"""Test metrics with BN normalizing by each test batch's own statistics."""

import keras
import numpy as np
import tensorflow as tf

from tfbn import noise


class BatchStatisticsEvaluation(keras.callbacks.Callback):
    """Adds ``val_loss_batch_stats`` and ``val_accuracy_batch_stats`` to the epoch logs.

    Keras evaluates BN with its moving statistics, the correct inference mode.
    Some studies (the 2017 course project among them) evaluated with the
    statistics of the test batch itself, which makes a skewed test batch change
    its own normalization; this callback measures that second mode so both can
    be compared. Every non-trainable variable (BN's moving statistics, Batch
    Renormalization's step counter) is restored afterwards, so training is
    unaffected; noisy BN's noise is off, as at any evaluation. Place it before `tfbn.callbacks.StepMetrics`, which logs it.

    Measures any classifier that outputs logits for integer labels, as
    `tfbn.build_mlp`'s networks do: the loss is their sparse cross-entropy.

    Args:
        test: A `tf.data.Dataset` of ``(x, y)`` test batches; each batch is
            normalized by its own statistics.
    """

    def __init__(self, test):
        super().__init__()
        self.test = test
        self._forward = None

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        # Every non-trainable variable: BN's moving statistics, and Batch
        # Renormalization's step counter too, which training mode advances.
        moving = self.model.non_trainable_variables
        saved = [v.numpy() for v in moving]
        if self._forward is None:
            self._forward = tf.function(self._batch_statistics_forward)
        losses, correct, count = [], 0, 0
        for x, y in self.test:
            logits = self._forward(x)
            losses.append(keras.losses.sparse_categorical_crossentropy(
                y, logits, from_logits=True).numpy())
            correct += int(np.sum(np.argmax(logits.numpy(), axis=-1) == y.numpy()))
            count += len(y)
        for variable, value in zip(moving, saved):
            variable.assign(value)
        logs["val_loss_batch_stats"] = float(np.mean(np.concatenate(losses)))
        logs["val_accuracy_batch_stats"] = correct / count

    def _batch_statistics_forward(self, x):
        with noise.suspended():  # training mode for BN's statistics only: noisy BN's noise stays off
            return self.model(x, training=True)
