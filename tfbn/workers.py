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

from tfbn.errors import ConfigError

LOOPBACK = "127.0.0.1"
DEFAULT_CHIEF_ADDRESS = f"{LOOPBACK}:8000"
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


def start_workers(config_path, count, oracle, devices=None, threads=None):
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

    Returns:
        The `subprocess.Popen` objects.
    """
    workers = []
    for i in range(count):
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(devices[i] if devices else i)}
        if threads:
            env.update({name: str(threads) for name in THREAD_VARIABLES})
        for name in ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"):
            env.pop(name, None)
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "tfbn.run", "--config", config_path, "--role", "worker",
             "--oracle", oracle, "--tuner-id", f"worker{i}", "--quiet"], env=env))
    return workers


def threads_per_worker(count):
    """CPU threads for each of ``count`` workers that share this machine's cores.

    Workers that train on the CPU compete for its cores: each gets its share,
    at least one. (A network this small gains little from a second thread; on
    2 cores, two single-threaded workers train about twice as many steps per
    second as one worker with both.)
    """
    return max(1, len(os.sched_getaffinity(0)) // count)
