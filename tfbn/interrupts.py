"""Stopping a study cleanly: Ctrl-C and SIGTERM end it between training steps.

The first SIGINT or SIGTERM only asks the study to stop: training checks at the
end of each block of steps (one compiled call, `tfbn.training`) and before each
pack, and stops there by raising `Interrupted`. Every branch that had finished
is recorded by then, and no file is left half-written, because no write is cut
short. A second signal ends the process at once, as ``kill -9`` would (the
study's files stay resumable): after the first, both signals have their
default action again, which works even while a compiled call runs.

Example:

```python
with interrupts.stop_on_signals():
    train()  # calls interrupts.check() at safe points
```
"""

import contextlib
import shlex
import signal
import sys
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(BaseException):
    """A study that stopped before its end, with the command's exit status.

    A `BaseException`, as `KeyboardInterrupt` is: keras-tuner and tfbn record an
    `Exception` raised by a trial as that trial's failure, and a stop is none.

    Attributes:
        status: The exit status of the command line.
        resume: Whether running the same command again continues the study.
    """

    status = 1
    resume = True


class Interrupted(Stopped):
    """SIGINT or SIGTERM stopped the study; exit status 128 + the signal's number."""

    def __init__(self, signum):
        self.signum = signum
        self.status = 128 + signum
        super().__init__(f"stopped by {signal.Signals(signum).name}; every trial that had "
                         "finished is recorded")


class _Request:
    """The stop asked for, if any: set by a signal handler or another thread."""

    stop = None


_request = _Request()


@contextlib.contextmanager
def stop_on_signals():
    """Turns SIGINT and SIGTERM into a stop at the next `check` while active.

    Outside the main thread (where Python cannot handle signals) it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _request.stop = None
    previous = {signum: signal.signal(signum, _ask_to_stop) for signum in SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _request.stop = None


def _ask_to_stop(signum, frame):
    request(Interrupted(signum))
    # A second signal ends the process at once, even inside a compiled call.
    for each in SIGNALS:
        signal.signal(each, signal.SIG_DFL)


def request(stop):
    """Asks the study to stop with ``stop`` (a `Stopped`) at the next `check`.

    The first request is kept: it names what stopped the study.
    """
    if _request.stop is None:
        _request.stop = stop


def requested():
    """The `Stopped` asked for, or None."""
    return _request.stop


def check():
    """Raises the `Stopped` asked for, if any.

    Raises:
        Stopped: a signal or another thread asked the study to stop.
    """
    if _request.stop is not None:
        raise _request.stop


def stop_callback():
    """A Keras callback that calls `check` at the end of each block of steps of `Model.fit`.

    It raises rather than setting ``model.stop_training``: Keras would still end
    the epoch and the training, and `tfbn.training` would then summarise the
    unfinished branches as if they had ended.
    """
    import keras  # here: the command line checks its input before TensorFlow loads

    return keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: check())


def resume_command(argv=None):
    """The command line that resumes a study started with ``argv``.

    ``--restart`` is left out: it would move aside what the study has done.
    """
    argv = sys.argv[1:] if argv is None else argv
    return shlex.join(["python", "-m", "tfbn.run", *(a for a in argv if a != "--restart")])
