"""Base class of the instrument callbacks: write summaries every N training steps."""

import keras
import numpy as np
import tensorflow as tf
from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.histogram import metadata as histogram_metadata
from tensorboard.plugins.scalar.summary_v2 import scalar_pb
from tensorboard.util import tensor_util

from tfbn import tags

HISTOGRAM_BUCKETS = 30  # TensorBoard's default


class Periodic(keras.callbacks.Callback):
    """Writes `measure`'s summaries whenever the training step crosses a multiple of ``every``.

    The step is the optimizer's iteration count. Keras runs batch hooks once
    per chunk of ``steps_per_execution`` steps, so the step reached may lie
    past the multiple by less than one chunk: the model is then measured at
    the step reached and written against that step. Subclasses with
    ``log_at_start`` also write once when training begins (step 0 for a new
    model), so that the initial state is visible. Every instrument also
    writes when training ends, unless it just wrote that step, so that the
    last recorded step is the end of training.

    Args:
        log_dir: The run directory the event file goes to.
        every: Training steps between two writes.
    """

    log_at_start = True

    def __init__(self, log_dir, every):
        super().__init__()
        self.log_dir = log_dir
        self.every = every
        self._writer = None
        self._first_step = self._previous_step = self._written_step = None

    def measure(self):
        """Returns ``(scalars, histograms)``: dicts from tag to a number and to an array."""
        raise NotImplementedError

    def on_train_begin(self, logs=None):
        self._first_step = self._previous_step = self._step()
        if self.log_at_start:
            self.write(self._previous_step)

    def on_train_batch_end(self, batch, logs=None):
        step = self._step()
        if step // self.every > self._previous_step // self.every:
            self.write(step)
        self._previous_step = step

    def on_train_end(self, logs=None):
        step = self._step()
        if self._first_step is not None and step not in (self._first_step, self._written_step):
            self.write(step)
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def write(self, step):
        """Measures the model and writes the summaries at ``step``."""
        scalars, histograms = self.measure()
        # One serialized Summary per write, built in NumPy: TensorFlow's eager
        # summary ops cost about 0.5 ms per scalar and 10 ms per histogram,
        # several training steps of the paper's network for every write.
        summary = summary_pb2.Summary()
        # Descriptions with the first write only: TensorBoard reads a tag's metadata there,
        # and repeating them would grow every event.
        describe = tags.describe if self._written_step is None else lambda tag: None
        for tag, value in scalars.items():
            summary.MergeFrom(scalar_pb(tag, value, description=describe(tag)))
        for tag, values in histograms.items():
            summary.value.add(tag=tag, tensor=_histogram_tensor(values),
                              metadata=histogram_metadata.create_summary_metadata(None, describe(tag)))
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        with self._writer.as_default():
            tf.summary.experimental.write_raw_pb(summary.SerializeToString(), step=step)
        self._written_step = step

    def _step(self):
        return int(self.model.optimizer.iterations.numpy())


def _histogram_tensor(values):
    """The finite values in TensorBoard's histogram layout: rows of (left, right, count)."""
    values = np.asarray(values, np.float64)
    # A diverging run keeps logging until TerminateOnNaN stops it; NaN has no bucket.
    counts, edges = np.histogram(values[np.isfinite(values)], bins=HISTOGRAM_BUCKETS)
    return tensor_util.make_tensor_proto(np.stack([edges[:-1], edges[1:], counts], axis=1))
