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


def start_workers(config_path, count, oracle, devices=None):
    """Starts ``count`` worker processes of the study in ``config_path``.

    Worker ``i`` sees only GPU ``devices[i]`` (or ``i``) through
    ``CUDA_VISIBLE_DEVICES``, so each trial has a device to itself.

    Returns:
        The `subprocess.Popen` objects.
    """
    workers = []
    for i in range(count):
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(devices[i] if devices else i)}
        for name in ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"):
            env.pop(name, None)
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "tfbn.run", "--config", config_path, "--role", "worker",
             "--oracle", oracle, "--tuner-id", f"worker{i}", "--quiet"], env=env))
    return workers
