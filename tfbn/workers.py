"""Chief and worker processes of a study, on one machine or several.

keras-tuner's distributed mode runs one chief, which holds the oracle and serves
it over gRPC, and workers that ask it for trials. It is configured by three
environment variables (``KERASTUNER_TUNER_ID``, ``KERASTUNER_ORACLE_IP``,
``KERASTUNER_ORACLE_PORT``); `set_role` sets them from command-line flags, and
`start_workers` starts one worker per device on this machine.
"""

import os
import socket
import subprocess
import sys
import time

from tfbn.errors import ConfigError

LOOPBACK = "127.0.0.1"
DEFAULT_CHIEF_ADDRESS = f"{LOOPBACK}:8000"
# A worker's exit status after its one pack (``--one-pack``): start a fresh one in its place.
RECYCLE_STATUS = 75
# The environment variables that size TensorFlow's (XLA's too) and the BLAS libraries' thread pools.
THREAD_VARIABLES = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS",
                    "OPENBLAS_NUM_THREADS")


def set_role(role, oracle, tuner_id=None):
    """Sets keras-tuner's environment variables for a chief or a worker.

    Args:
        role: ``"chief"`` or ``"worker"``.
        oracle: ``HOST:PORT`` where the chief serves its oracle; the chief binds
            to that address (use ``0.0.0.0:PORT`` to accept other machines) and
            to `DEFAULT_CHIEF_ADDRESS`, on loopback, when it is None.
        tuner_id: A worker's unique name; defaults to host name and process id.
    """
    if role == "chief" and oracle is None:
        oracle = DEFAULT_CHIEF_ADDRESS
    host, sep, port = (oracle or "").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--oracle {oracle!r}: write HOST:PORT with a port from 1 to 65535, "
                          f"e.g. {LOOPBACK}:8000")
    if role == "chief":
        tuner_id = "chief"
    elif tuner_id and "chief" in tuner_id:
        # keras-tuner takes any tuner id containing "chief" for the chief.
        raise ConfigError(f"--tuner-id {tuner_id!r}: a worker's id must not contain 'chief'")
    os.environ["KERASTUNER_TUNER_ID"] = tuner_id or f"worker-{socket.gethostname()}-{os.getpid()}"
    os.environ["KERASTUNER_ORACLE_IP"] = host
    os.environ["KERASTUNER_ORACLE_PORT"] = port


def current_role():
    """This process's role by keras-tuner's environment variables.

    Returns:
        ``"chief"``, ``"worker"``, or None when the variables are unset (a study
        run alone).
    """
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return None
    return "chief" if "chief" in os.environ.get("KERASTUNER_TUNER_ID", "") else "worker"


def free_port():
    """A TCP port on loopback that is free right now."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def start_workers(config_path, count, oracle, devices=None, threads=None, one_pack=False):
    """Starts ``count`` worker processes of the study in ``config_path``.

    Worker ``i`` sees only GPU ``devices[i]`` (or ``i``) through
    ``CUDA_VISIBLE_DEVICES``, so each trial has a device to itself.

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
    return [_start_worker(config_path, i, oracle, devices[i] if devices else i, threads, one_pack)
            for i in range(count)]


def run_local_workers(config_path, count, oracle, threads=None):
    """Runs ``count`` workers on this machine until the study has no pack left.

    Each worker process trains one pack, then exits and a fresh process takes
    its place (same id, same device): TensorFlow keeps what it compiled for
    every model a process trained (XLA's programs: 150 to 300 MB a pack), so a
    long-lived worker would grow with every pack.

    Returns:
        The workers' last exit statuses: 0 for each once the chief has no pack left.
    """
    processes = start_workers(config_path, count, oracle, threads=threads, one_pack=True)
    codes = [None] * count
    while None in codes:
        time.sleep(0.2)
        for i, process in enumerate(processes):
            if codes[i] is None and process.poll() is not None:
                if process.returncode == RECYCLE_STATUS:
                    processes[i] = _start_worker(config_path, i, oracle, i, threads, one_pack=True)
                else:
                    codes[i] = process.returncode
    return codes


def _start_worker(config_path, index, oracle, device, threads, one_pack):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(device)}
    if threads:
        env.update({name: str(threads) for name in THREAD_VARIABLES})
    for name in ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"):
        env.pop(name, None)
    return subprocess.Popen(
        [sys.executable, "-m", "tfbn.run", "--config", config_path, "--role", "worker",
         "--oracle", oracle, "--tuner-id", f"worker{index}", "--quiet",
         *(["--one-pack"] if one_pack else [])], env=env)


def threads_per_worker(count):
    """CPU threads for each of ``count`` workers that share this machine's cores.

    Workers that train on the CPU compete for its cores: each gets its share,
    at least one. (A network this small gains little from a second thread: on
    2 cores, ``course2017_study`` took 25.0 min with two single-threaded
    workers and 47.1 min in one process with both threads.)
    """
    return max(1, len(os.sched_getaffinity(0)) // count)
