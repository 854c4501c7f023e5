"""Prints training progress: step, loss, accuracy, test accuracy and ETA."""

import sys
import time

import keras

# When the output is not a terminal, print at most one line per this many seconds.
PLAIN_LINE_INTERVAL_S = 10.0


class Progress(keras.callbacks.Callback):
    """Prints one progress line per evaluation period.

    On a terminal the line is rewritten in place; otherwise (a log file) a plain
    line is printed at most every `PLAIN_LINE_INTERVAL_S` seconds and at the end.
    Works with any model: it prints the ``loss``, ``accuracy`` and
    ``val_accuracy`` that Keras logs (NaN where a model logs none).

    Args:
        total_steps: Steps the training runs for.
        prefix: Text that opens every line, e.g. ``trial 2/3  bn=before``.
        trials_after: Trials of the sweep still to run after this one; when
            given, the line ends with the sweep's ETA.
        seconds_per_trial: Mean duration of the sweep's finished trials, if
            any (otherwise this trial's projected duration, shared by the
            trials of its pack, stands in).
        pack_size: Trials that train together with this one, itself included.
        live: Print lines before the end; in a pack, one trial does, and
            every trial prints its final line.
        stream: Where to print; standard output by default.
    """

    def __init__(self, total_steps, prefix="", trials_after=None, seconds_per_trial=None,
                 stream=None, pack_size=1, live=True):
        super().__init__()
        self.total_steps = total_steps
        self.prefix = prefix
        self.trials_after = trials_after
        self.seconds_per_trial = seconds_per_trial
        self.stream = stream
        self.pack_size = pack_size
        self.live = live
        self._start = None
        self._last_print = None
        self._first = None

    def on_train_begin(self, logs=None):
        self._start = time.monotonic()
        self._last_print = float("-inf")
        self._first = None

    def on_epoch_end(self, epoch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        now = time.monotonic()
        done = step >= self.total_steps
        interactive = self._stream.isatty()
        if not (done or self.live and (interactive or now - self._last_print >= PLAIN_LINE_INTERVAL_S)):
            return
        self._last_print = now
        elapsed = now - self._start
        if self._first is None:
            # The first period includes tracing the graph: no measure of the rate.
            self._first = (now, step)
        since, first_step = self._first
        rate = (step - first_step) / (now - since) if step > first_step else None
        eta = (self.total_steps - step) / rate if rate else None
        line = (f"{self.prefix}  |  step {step}/{self.total_steps}  "
                f"loss {logs.get('loss', float('nan')):.4f}  acc {logs.get('accuracy', float('nan')):.3f}  "
                f"test acc {logs.get('val_accuracy', float('nan')):.3f}  |  "
                f"{'took ' + format_duration(elapsed) if done else 'ETA ' + format_duration(eta)}")
        if self.trials_after and (done or eta is not None):
            per_trial = self.seconds_per_trial or (elapsed + (0 if done else eta)) / self.pack_size
            line += f"  |  ETA sweep {format_duration((0 if done else eta) + self.trials_after * per_trial)}"
        end = "\n" if done or not interactive else ""
        print(("\r\033[K" if interactive else "") + line, end=end, file=self._stream, flush=True)

    @property
    def _stream(self):
        return self.stream or sys.stdout


def format_duration(seconds):
    """``75.2`` -> ``'1m15s'``; None (not known yet) -> ``'?'``."""
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
