"""Base class of the instrument callbacks: write summaries every N training steps."""

import warnings

import keras

from tfbn import structure
from tfbn.callbacks import events
from tfbn.errors import UserError


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

    A model in which the instrument finds nothing to measure (`unmeasurable`)
    gets a warning naming the instrument when training begins, and no writes.

    Args:
        log_dir: The run directory the events go to, or an `events.Writer`
            that several callbacks share (one event file for all of them).
        every: Training steps between two writes.
    """

    log_at_start = True

    def __init__(self, log_dir, every):
        super().__init__()
        self.writer = events.Writer.of(log_dir)
        self.every = every
        self._first_step = self._previous_step = self._written_step = None
        self._idle = False

    @property
    def log_dir(self):
        return self.writer.log_dir

    def measure(self):
        """Returns ``(scalars, histograms)``: dicts from tag to a number and to an array."""
        raise NotImplementedError

    def unmeasurable(self):
        """Why the model has nothing this instrument measures, or None if it has."""
        return None

    def probe_inputs(self):
        """The inputs the model is evaluated on, checked against its input shape when training begins."""
        return None

    def on_train_begin(self, logs=None):
        reason = self.unmeasurable()
        self._idle = reason is not None
        if self._idle:
            warnings.warn(f"{type(self).__name__} writes nothing: {reason}", stacklevel=2)
            return
        problem = structure.input_problem(self.model, self.probe_inputs())
        if problem:
            raise UserError(f"{type(self).__name__}: {problem}; give probe inputs shaped as the training data")
        self.writer.open()
        self._first_step = self._previous_step = self._step()
        if self.log_at_start:
            self.write(self._previous_step)

    def on_train_batch_end(self, batch, logs=None):
        if self._idle:
            return
        step = self._step()
        if step // self.every > self._previous_step // self.every:
            self.write(step)
        self._previous_step = step

    def on_train_end(self, logs=None):
        if self._idle:
            return
        step = self._step()
        if self._first_step is not None and step not in (self._first_step, self._written_step):
            self.write(step)
        self.writer.close()

    def write(self, step):
        """Measures the model and writes the summaries at ``step``."""
        scalars, histograms = self.measure()
        self.writer.write(step, scalars, histograms, describe=self._written_step is None)
        self._written_step = step

    def _step(self):
        return int(self.model.optimizer.iterations.numpy())
