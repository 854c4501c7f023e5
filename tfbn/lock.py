"""One run per experiment folder: a lock held for the run's lifetime.

Two runs of the same experiment at once would both train every trial and
remove each other's run folders. The lock is an advisory `fcntl.flock` on
``<log.dir>/.<experiment>.lock``, beside the experiment folder (``--restart``
moves that folder aside), which the kernel releases when its holder exits,
however it exits. The file names its holder (pid and host) for the message a
second run gets; a file left by a holder that is gone is taken over with a
notice. Workers of a distributed study do not take it: they are not second
runs but the chief's helpers.
"""

import contextlib
import fcntl
import os
import socket
import sys

from tfbn.errors import ConfigError


@contextlib.contextmanager
def experiment_lock(log_dir, experiment, rename="give this run another name (--set experiment=NAME)"):
    """Holds the lock of ``<log_dir>/<experiment>`` while the block runs.

    Args:
        log_dir: The study's ``log.dir``.
        experiment: Its experiment name.
        rename: How the message to a second run says to rename the experiment.

    Raises:
        ConfigError: another live run holds it (naming its pid and host and
            what to do), or ``log_dir`` cannot be written.
    """
    path = os.path.join(log_dir, f".{experiment}.lock")
    try:
        os.makedirs(log_dir, exist_ok=True)
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise ConfigError(f"log.dir {log_dir!r}: cannot write {path} ({error.strerror}); "
                          "set log.dir to a folder you can write, e.g. --set log.dir=logs") from error
    with os.fdopen(descriptor, "r+") as lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = lock_file.read().strip() or "another process"
            raise ConfigError(
                f"{os.path.join(log_dir, experiment)} is in use by a run of this experiment "
                f"({holder}); wait for it to finish (rerun then to resume), or {rename}") from None
        previous = lock_file.read().strip()
        if previous:  # the kernel released it: that holder is gone
            print(f"tfbn: taking over the lock of {previous}, which is no longer running",
                  file=sys.stderr)
        lock_file.seek(0)
        lock_file.truncate()
        lock_file.write(f"pid {os.getpid()} on {socket.gethostname()}")
        lock_file.flush()
        try:
            yield
        finally:
            # Emptied before release: a filled file without a holder means one that died.
            lock_file.seek(0)
            lock_file.truncate()
            lock_file.flush()
