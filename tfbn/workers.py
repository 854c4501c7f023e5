"""Chief and worker processes of a study, on one machine or several.

keras-tuner's distributed mode runs one chief, which holds the oracle and serves
it over gRPC, and workers that ask it for trials. It is configured by three
environment variables (``KERASTUNER_TUNER_ID``, ``KERASTUNER_ORACLE_IP``,
``KERASTUNER_ORACLE_PORT``); `set_role` sets them from command-line flags, and
`LocalWorkers` runs one worker per device on this machine.

keras-tuner notices neither a worker that died nor a chief that is gone (its
workers wait an hour for each answer). Here each worker sends its chief a
`Heartbeat` every quarter of ``distribute.worker_timeout``, from a thread of its
own: the chief proposes the pack of a worker it has not heard from for that
long to another worker (`tfbn.sweep.DesignOracle`), and a worker whose chief
has not answered for that long (at most `MAX_CHIEF_SILENCE_S`) stops.
"""

import ctypes
import dataclasses
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

from tfbn import interrupts
from tfbn.errors import ConfigError, UserError

LOOPBACK = "127.0.0.1"
DEFAULT_CHIEF_ADDRESS = f"{LOOPBACK}:8000"
# A worker's exit status after its one pack (``--one-pack``): start a fresh one in its place.
RECYCLE_STATUS = 75
# The environment variables that size TensorFlow's (XLA's too) and the BLAS libraries' thread pools.
THREAD_VARIABLES = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS",
                    "OPENBLAS_NUM_THREADS")
# A worker gives up on a chief that has not answered for this long, whatever worker_timeout says.
MAX_CHIEF_SILENCE_S = 60
# The trial id of a heartbeat: keras-tuner's protocol has no call of its own for
# one, so a worker asks for this "trial", and the chief answers whether the
# worker still holds its pack (RUNNING) or lost it to another worker (STOPPED).
HEARTBEAT_PREFIX = "heartbeat:"
# Seconds between a launcher's looks at its worker processes.
POLL_S = 0.2
# A progress line's mark (`tfbn.callbacks.Progress`), and that of its last line.
PROGRESS_MARK = "  |  step "
FINAL_MARK = "  |  took "
_PR_SET_PDEATHSIG = 1


class WorkersLost(interrupts.Stopped):
    """A study whose chief lost workers: the line names each and what became of its pack."""

    def __init__(self, lost, recorded, points):
        parts = [f"{p.worker} {p.reason} while training pack {p.pack}; "
                 + (f"{p.trained_by} trained it again" if p.trained_by else
                    "it was proposed again" if p.again else
                    "it was given up after its worker was lost twice") for p in lost]
        super().__init__(f"{'; '.join(parts)}. {recorded} of {points} design points are recorded")
        self.resume = recorded < points


class WorkersExited(interrupts.Stopped):
    """The local workers all exited before the study's end."""


class ChiefGone(interrupts.Stopped):
    """A worker's chief stopped answering."""

    resume = False


@dataclasses.dataclass
class LostPack:
    """A pack whose worker died or went silent.

    Attributes:
        worker: The worker's tuner id.
        pack: The pack's name.
        reason: What happened to the worker, e.g. ``was killed by SIGKILL``.
        again: Whether the pack was proposed again (a pack is given up once it
            has lost two workers: it may be what kills them).
        trained_by: The worker that took it up again, once one has.
    """

    worker: str
    pack: str
    reason: str
    again: bool
    trained_by: str = None

    def __str__(self):
        return (f"{self.worker} {self.reason} while training pack {self.pack}; it is "
                + ("proposed again" if self.again else "given up"))


def set_role(role, oracle, tuner_id=None):
    """Sets keras-tuner's environment variables for a chief or a worker.

    Args:
        role: ``"chief"`` or ``"worker"``.
        oracle: ``HOST:PORT`` where the chief serves its oracle; the chief binds
            to that address (use ``0.0.0.0:PORT`` to accept other machines) and
            to `DEFAULT_CHIEF_ADDRESS`, on loopback, when it is None.
        tuner_id: A worker's unique name; defaults to host name and process id.

    Raises:
        ConfigError: a malformed address, a worker id keras-tuner would take for
            the chief's, or a chief's port that is in use.
    """
    if role == "chief" and oracle is None:
        oracle = DEFAULT_CHIEF_ADDRESS
    host, sep, port = (oracle or "").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--oracle {oracle!r}: write HOST:PORT with a port from 1 to 65535, "
                          f"e.g. {LOOPBACK}:8000")
    if role == "chief":
        tuner_id = "chief"
        _check_port_free(host, int(port))
    elif tuner_id and "chief" in tuner_id:
        # keras-tuner takes any tuner id containing "chief" for the chief.
        raise ConfigError(f"--tuner-id {tuner_id!r}: a worker's id must not contain 'chief'")
    os.environ["KERASTUNER_TUNER_ID"] = tuner_id or f"worker-{socket.gethostname()}-{os.getpid()}"
    os.environ["KERASTUNER_ORACLE_IP"] = host
    os.environ["KERASTUNER_ORACLE_PORT"] = port


def _check_port_free(host, port):
    # gRPC binds with SO_REUSEPORT, so a second chief on a port would share it with
    # the first; a plain bind fails while anything listens there.
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as error:
            reason = "in use" if error.errno == errno.EADDRINUSE else error.strerror
            raise ConfigError(f"--oracle {host}:{port}: the chief cannot listen there ({reason}); "
                              "pick another port, e.g. --oracle "
                              f"{host}:{free_port()}") from error


def current_role():
    """This process's role by keras-tuner's environment variables.

    Returns:
        ``"chief"``, ``"worker"``, or None when the variables are unset (a study
        run alone).
    """
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return None
    return "chief" if "chief" in os.environ.get("KERASTUNER_TUNER_ID", "") else "worker"


def chief_address():
    """``HOST:PORT`` of the chief, by keras-tuner's environment variables."""
    return f"{os.environ['KERASTUNER_ORACLE_IP']}:{os.environ['KERASTUNER_ORACLE_PORT']}"


def free_port():
    """A TCP port on loopback that is free right now."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def chief_silence(worker_timeout):
    """Seconds a worker waits for its chief to answer before it gives up."""
    return min(worker_timeout, MAX_CHIEF_SILENCE_S)


def wait_for_chief(timeout):
    """Waits until this worker's chief accepts connections.

    Raises:
        UserError: no chief answered within ``timeout`` seconds.
    """
    import grpc

    with grpc.insecure_channel(chief_address()) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise UserError(f"no chief answered at {chief_address()} within {timeout:g} s; start "
                            "the chief first (--role chief) or correct --oracle") from None


class Heartbeat:
    """A worker's sign of life to its chief, and its watch on the chief.

    While active, a thread asks the chief every ``timeout / 4`` seconds whether
    this worker still holds its pack. When the chief answers that the pack went
    to another worker, or has not answered for ``timeout`` seconds, the worker
    is asked to stop (`tfbn.interrupts.request`), at its next block of steps.
    keras-tuner's own calls to the chief give up after ``timeout`` too, instead
    of after an hour.

    Args:
        tuner_id: This worker's id.
        timeout: Seconds; see `chief_silence`.
    """

    def __init__(self, tuner_id, timeout):
        self.tuner_id = tuner_id
        self.timeout = timeout
        self._done = threading.Event()
        self._thread = None

    def __enter__(self):
        from keras_tuner.src.distribute import oracle_client

        self._saved_timeout = oracle_client.TIMEOUT
        oracle_client.TIMEOUT = self.timeout  # read by each of keras-tuner's calls
        self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, kind, error, traceback):
        from keras_tuner.src.distribute import oracle_client

        self._done.set()
        self._thread.join()
        oracle_client.TIMEOUT = self._saved_timeout
        if error is not None and _is_rpc_error(error):
            raise ChiefGone(f"the chief at {chief_address()} stopped answering ({error.code().name}); "
                            "this worker stops, its finished trials are recorded") from None

    def _beat(self):
        import grpc
        from keras_tuner.src import protos
        from keras_tuner.src.engine.trial import Trial, TrialStatus

        interval = self.timeout / 4
        answered = time.monotonic()
        request = protos.get_service().GetTrialRequest(trial_id=HEARTBEAT_PREFIX + self.tuner_id)
        with grpc.insecure_channel(chief_address()) as channel:
            stub = protos.get_service_grpc().OracleStub(channel)
            while not self._done.wait(interval):
                try:
                    reply = Trial.from_proto(stub.GetTrial(request, timeout=interval).trial)
                except grpc.RpcError:
                    if time.monotonic() - answered > self.timeout:
                        interrupts.request(ChiefGone(
                            f"the chief at {chief_address()} has not answered for "
                            f"{self.timeout:g} s; this worker stops, its finished trials are "
                            "recorded"))
                    continue
                answered = time.monotonic()
                if reply.status == TrialStatus.STOPPED:
                    interrupts.request(ChiefGone(
                        f"the chief gave this worker's pack to another worker (it had not heard "
                        f"from {self.tuner_id} for {self.timeout:g} s); this worker stops"))


def _is_rpc_error(error):
    import grpc

    return isinstance(error, grpc.RpcError) and hasattr(error, "code")


def check_same_config(config, saved_path, free_keys):
    """Refuses a worker whose config differs from its chief's; writes nothing.

    Args:
        config: The worker's `tfbn.config.Config`.
        saved_path: The chief's saved ``config.yaml``.
        free_keys: Keys that may differ (where and how fast trials run).

    Returns:
        The chief's config.

    Raises:
        UserError: the chief saved no config there, or it differs.
    """
    from tfbn.config import flatten, load_config, to_dict

    if not os.path.exists(saved_path):
        raise UserError(f"{saved_path} does not exist: the chief saves its config there; give "
                        "this worker the chief's log.dir and experiment")
    chief = load_config(saved_path)
    saved, current = flatten(to_dict(chief)), flatten(to_dict(config))
    changed = [key for key in current if key not in free_keys and saved.get(key) != current[key]]
    if changed:
        raise ConfigError(f"this worker's config differs from its chief's ({', '.join(changed)}); "
                          f"start the worker with --config {saved_path}")
    return chief


class LocalWorkers:
    """Worker processes on this machine, until the study has no pack left.

    Each worker process trains one pack, then exits and a fresh process takes
    its place (same id, same device) while a pack waits: TensorFlow keeps what it compiled for
    every model a process trained (XLA's programs: 150 to 300 MB a pack), so a
    long-lived worker would grow with every pack.

    The workers die with this process (the parent-death signal), even when it
    is killed outright; a SIGINT or SIGTERM it receives is passed on to them
    once (they run in process groups of their own, so a Ctrl-C in the terminal
    reaches this process only). A worker that dies holding a pack, or that the
    oracle has not heard from for ``distribute.worker_timeout`` (then it is
    killed), is replaced by a fresh process under a new id, and its pack is
    proposed again.

    Args:
        config_path: The study's saved config.
        count: Worker processes at once; worker ``i`` sees only GPU ``i``
            through ``CUDA_VISIBLE_DEVICES``, so each pack has a device to itself.
        oracle: ``HOST:PORT`` of the chief's oracle.
        chief: The `tfbn.sweep.DesignOracle` this process serves.
        threads: CPU threads of each worker's TensorFlow and BLAS thread pools;
            None leaves them at their defaults (one thread per core each).
        quiet: The workers print no progress lines; otherwise each running
            pack has one (`ProgressBoard`).
    """

    def __init__(self, config_path, count, oracle, chief, threads=None, quiet=False):
        self.config_path = config_path
        self.oracle = oracle
        self.chief = chief
        self.threads = threads
        self.quiet = quiet
        self.board = None if quiet else ProgressBoard()
        self.codes = [None] * count
        self._processes = [None] * count
        self._ids = [f"worker{i}" for i in range(count)]
        self._replaced = [0] * count
        self._forwarded = None

    def run(self):
        """Runs the workers until each has exited; returns their last exit statuses.

        Raises:
            tfbn.interrupts.Interrupted: SIGINT or SIGTERM stopped the study.
        """
        interrupts.check()
        for i in range(len(self._processes)):
            self._start(i)
        while any(p is not None for p in self._processes):
            time.sleep(POLL_S)
            self._forward_stop()
            self.chief.check_workers()
            for i, process in enumerate(self._processes):
                if self._ids[i] in self.chief.silenced and process is not None and process.poll() is None:
                    self._note(f"tfbn: {self._ids[i]} sent nothing for {self.chief.worker_timeout:g} s; "
                               "it is stopped and its pack proposed again")
                    process.kill()
            for i, process in enumerate(self._processes):
                if process is not None and process.poll() is not None:
                    self._ended(i, process.returncode)
        interrupts.check()
        return self.codes

    def _forward_stop(self):
        stop = interrupts.requested()
        if isinstance(stop, interrupts.Interrupted) and self._forwarded is None:
            self._forwarded = stop.signum
            for process in self._processes:
                if process is not None and process.poll() is None:
                    process.send_signal(stop.signum)

    def _ended(self, i, status):
        self._processes[i] = None
        if self._forwarded is not None:
            self.codes[i] = status
            return
        if status == RECYCLE_STATUS:
            # A fresh process only if a pack waits for one: a pack that comes back later
            # (its worker lost) gets the replacement started for that worker.
            if self.chief.waiting_packs():
                self._start(i)
            else:
                self.codes[i] = 0
            return
        # A worker that held no pack lost nothing; the others go on.
        lost = None if status == 0 else self.chief.lose(self._ids[i], describe_exit(status))
        if lost is not None:
            self._note(f"tfbn: {lost}")
        if (lost is not None or self._ids[i] in self.chief.silenced) and not self.chief.finished():
            self._replaced[i] += 1
            self._ids[i] = f"worker{i}.{self._replaced[i]}"
            self._start(i)
        else:
            self.codes[i] = status

    def _start(self, i):
        self._processes[i] = _start_worker(self.config_path, self._ids[i], self.oracle, i,
                                           self.threads, quiet=self.quiet)
        if self.board:
            self.board.follow(i, self._ids[i], self._processes[i].stdout)

    def _note(self, line):
        if self.board:
            self.board.note(line)
        else:
            print(line, flush=True)


def run_local_workers(config_path, count, oracle, chief, threads=None, quiet=False):
    """Runs `LocalWorkers` until the study has no pack left; returns their exit statuses."""
    return LocalWorkers(config_path, count, oracle, chief, threads, quiet).run()


def describe_exit(status):
    """``-9`` -> ``'was killed by SIGKILL'``; ``1`` -> ``'exited with status 1'``."""
    if status < 0:
        return f"was killed by {signal.Signals(-status).name}"
    return f"exited with status {status}"


def start_workers(config_path, count, oracle, devices=None, threads=None, one_pack=False):
    """Starts ``count`` worker processes of the study in ``config_path``.

    Worker ``i`` sees only GPU ``devices[i]`` (or ``i``) through
    ``CUDA_VISIBLE_DEVICES``, so each trial has a device to itself. They die
    with this process.

    Args:
        config_path: The study's saved config.
        count: Worker processes to start.
        oracle: ``HOST:PORT`` of the chief's oracle.
        devices: GPU indices, one per worker; None: ``0 .. count - 1``.
        threads: CPU threads of each worker's TensorFlow and BLAS thread pools;
            None leaves them at their defaults (one thread per core each).
        one_pack: Each worker trains one pack and exits with `RECYCLE_STATUS`.

    Returns:
        The `subprocess.Popen` objects.
    """
    return [_start_worker(config_path, f"worker{i}", oracle, devices[i] if devices else i, threads,
                          one_pack=one_pack, quiet=True)
            for i in range(count)]


def _start_worker(config_path, tuner_id, oracle, device, threads, one_pack=True, quiet=False):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(device)}
    if threads:
        env.update({name: str(threads) for name in THREAD_VARIABLES})
    for name in ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"):
        env.pop(name, None)
    return subprocess.Popen(
        [sys.executable, "-m", "tfbn.workers", str(os.getpid()), "--config", config_path,
         "--role", "worker", "--oracle", oracle, "--tuner-id", tuner_id,
         *(["--quiet"] if quiet else []), *(["--one-pack"] if one_pack else [])],
        env=env, stdout=None if quiet else subprocess.PIPE, text=True,
        # A group of its own: a Ctrl-C in the terminal reaches the launcher only, which passes it on once.
        process_group=0)


def _die_with(parent):
    """Ends this process with SIGKILL when its parent ``parent`` (a process id) ends.

    Set in the new process rather than between fork and exec (``preexec_fn``),
    which would need a plain fork of a process that runs threads.
    """
    if ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent ended before the signal was set
        sys.exit(f"tfbn: the process that started this worker ({parent}) has ended")


class ProgressBoard:
    """The progress lines of local workers: one line per running pack.

    Each worker prints plain progress lines (its output is a pipe), shown after
    its name; on a terminal the board keeps each worker's latest line at the
    bottom, rewritten in place, and prints final lines and any other output
    above them. Elsewhere (a log file) every line is printed as it comes.

    Args:
        stream: Where to print; standard output by default.
    """

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self._live = {}
        self._drawn = 0
        self._lock = threading.Lock()

    def follow(self, slot, name, pipe):
        """Shows what ``pipe`` prints, each line after ``name``, as the live line of ``slot``."""
        threading.Thread(target=self._read, args=(slot, name, pipe), daemon=True).start()

    def note(self, line):
        """Prints ``line`` above the live lines."""
        with self._lock:
            self._draw([line])

    def _read(self, slot, name, pipe):
        with pipe:
            for line in pipe:
                line = f"{name}: {line.rstrip()}"
                progress = PROGRESS_MARK in line and self.stream.isatty()
                with self._lock:
                    if progress and FINAL_MARK not in line:
                        self._live[slot] = line
                        self._draw([])
                    else:
                        if progress:  # its pack's last line: no live line until the next pack
                            self._live.pop(slot, None)
                        self._draw([line])
        with self._lock:
            if self._live.pop(slot, None) is not None:
                self._draw([])

    def _draw(self, lines):
        if not self.stream.isatty():
            self.stream.write("".join(f"{line}\n" for line in lines))
            self.stream.flush()
            return
        width = shutil.get_terminal_size().columns - 1
        live = [line[:width] for _, line in sorted(self._live.items())]
        # Up to the first live line, clear to the end of the screen, print the new
        # lines there and the live lines below them.
        self.stream.write((f"\033[{self._drawn}F" if self._drawn else "") + "\033[J"
                          + "".join(f"{line}\n" for line in [*lines, *live]))
        self.stream.flush()
        self._drawn = len(live)


def threads_per_worker(count):
    """CPU threads for each of ``count`` workers that share this machine's cores.

    Workers that train on the CPU compete for its cores: each gets its share,
    at least one. (A network this small gains little from a second thread: on
    2 cores, ``course2017_study`` took 25.0 min with two single-threaded
    workers and 47.1 min in one process with both threads.)
    """
    return max(1, len(os.sched_getaffinity(0)) // count)


def _main(argv):
    """A local worker: ``python -m tfbn.workers PARENT_PID <tfbn.run arguments>``."""
    _die_with(int(argv[0]))
    from tfbn.run import main

    return main(argv[1:])


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
