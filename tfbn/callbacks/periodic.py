"""Base class of the instrument callbacks: write summaries every N training steps."""

import keras

from tfbn.callbacks import events


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
        if self._writer is None:
            self._writer = events.EventFile(self.log_dir)
        events.write(self._writer, step, scalars, histograms, describe=self._written_step is None)
        self._written_step = step

    def _step(self):
        return int(self.model.optimizer.iterations.numpy())

