"""TensorBoard events written as one Summary protobuf per step, one event file per run.

TensorFlow's eager summary ops cost about 0.5 ms per scalar and 10 ms per
histogram, several training steps of the paper's network for every write, and
a pack writes for dozens of trials at every evaluation. Here each event is
built directly as a protobuf (scalars and histograms in the layout of
TensorBoard's v2 summary ops) and appended to the event file as a TFRecord.
"""

import itertools
import os
import socket
import time

import numpy as np
import tensorflow as tf
from tensorboard.compat.proto import event_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
from tensorboard.plugins.histogram import metadata as histogram_metadata
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.util import tensor_util

from tfbn import tags

HISTOGRAM_BUCKETS = 30  # TensorBoard's default


class EventFile:
    """A new event file in a run directory, for `write`; close it when done.

    Events go to TensorFlow's TFRecord writer, one record each, flushed at
    once (TensorBoard sees them live, and a killed run loses none). Our own
    because neither writer at hand is cheap at thousands of events per
    minute: TensorFlow's summary writer runs an eager operation per event
    (about 0.3 ms), and TensorBoard's computes each record's checksum in
    Python (0.5 ms for a 1.5 KB event).

    Args:
        log_dir: The run directory; created if missing.
    """

    _numbers = itertools.count()

    def __init__(self, log_dir):
        tf.io.gfile.makedirs(log_dir)
        # TensorFlow's file name pattern (TensorBoard reads files with "tfevents" in
        # the name) with a suffix of our own: TensorFlow's writers, which the HParams
        # records use in the same folders, number their files from 0 too.
        name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
                f"{os.getpid()}.{next(self._numbers)}.tfbn")
        self._records = tf.io.TFRecordWriter(os.path.join(log_dir, name))
        self.add_event(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def add_event(self, event):
        """Appends an `Event` protobuf."""
        self._records.write(event.SerializeToString())
        self._records.flush()

    def close(self):
        self._records.close()


class Writer:
    """The event file of one run, shared by the callbacks that write to it.

    The file opens at the first write. Each callback calls `open` when
    training begins and `close` when it ends; the file closes when the last
    of them is done, so callbacks sharing a writer write one file. The run
    directory may change until then: keras-tuner gives each trial its own by
    setting ``log_dir`` (`tfbn.callbacks.TensorBoard`).

    Args:
        log_dir: The run directory.
    """

    def __init__(self, log_dir):
        self.log_dir = log_dir
        self._file = None
        self._users = 0

    @classmethod
    def of(cls, log_dir):
        """``log_dir`` if it is a `Writer` already, else a new writer of that directory."""
        return log_dir if isinstance(log_dir, Writer) else cls(log_dir)

    def open(self):
        """Registers one more callback that writes here until it calls `close`."""
        self._users += 1

    def write(self, step, scalars, histograms=None, describe=False):
        """`write`'s event, to this run's file."""
        if self._file is None:
            self._file = EventFile(self.log_dir)
        write(self._file, step, scalars, histograms, describe)

    def close(self):
        """Ends one callback's use; the last one closes the file."""
        self._users = max(self._users - 1, 0)
        if self._users == 0 and self._file is not None:
            self._file.close()
            self._file = None


def write(writer, step, scalars, histograms=None, describe=False):
    """Writes scalars and histograms at ``step`` as one event.

    Args:
        writer: An `EventFile`.
        step: The step the values are recorded against.
        scalars: Dict from tag to a number.
        histograms: Dict from tag to an array of values.
        describe: Add each tag's description (`tfbn.tags.describe`). TensorBoard
            reads a tag's metadata from its first event, so describe the first
            write of each tag only: repeating them grows every event.
    """
    event = event_pb2.Event(wall_time=time.time(), step=int(step))
    for tag, value in scalars.items():
        event.summary.value.add(tag=tag, tensor=_scalar_tensor(value), metadata=(
            scalar_metadata.create_summary_metadata(None, tags.describe(tag)) if describe
            else _SCALAR_METADATA))
    for tag, values in (histograms or {}).items():
        event.summary.value.add(tag=tag, tensor=_histogram_tensor(values), metadata=(
            histogram_metadata.create_summary_metadata(None, tags.describe(tag)) if describe
            else _HISTOGRAM_METADATA))
    writer.add_event(event)


_SCALAR_METADATA = scalar_metadata.create_summary_metadata(None, None)
_HISTOGRAM_METADATA = histogram_metadata.create_summary_metadata(None, None)
_SCALAR_SHAPE = tensor_shape_pb2.TensorShapeProto()


def _scalar_tensor(value):
    """A float32 scalar as TensorBoard's `scalar_pb` stores it."""
    return tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=_SCALAR_SHAPE,
                                  float_val=[np.float32(value)])


def _histogram_tensor(values):
    """The finite values in TensorBoard's histogram layout: rows of (left, right, count)."""
    values = np.asarray(values)
    if values.dtype.kind not in "iuf":  # booleans, say: numbers as NumPy would bin them
        values = values.astype(np.float64)
    low, high = (values.min(), values.max()) if values.size else (np.nan, np.nan)
    if not np.isfinite([low, high]).all():
        # A diverging run keeps logging until TerminateOnNaN stops it; NaN has no bucket.
        values = values.astype(np.float64)
        values = values[np.isfinite(values)]
        low, high = (values.min(), values.max()) if values.size else (0.0, 1.0)  # NumPy's empty range
    # The range in float64 makes the edges, and each value's bucket, those of the
    # values in float64, without converting them all.
    counts, edges = np.histogram(values, bins=HISTOGRAM_BUCKETS, range=(np.float64(low), np.float64(high)))
    return tensor_util.make_tensor_proto(np.stack([edges[:-1], edges[1:], counts], axis=1))
