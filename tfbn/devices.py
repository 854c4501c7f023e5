"""Distribution strategies of the ``distribute`` config section, and what this machine can run.

`check_memory` needs no TensorFlow, so that a network too large to train is
refused before TensorFlow loads; the functions that ask TensorFlow for the
machine's devices import it when called.
"""

import os

from tfbn.config import KNOWN_DATA
from tfbn.errors import ConfigError

# Bytes a parameter takes in training: its float32 value, its gradient, the
# optimizer's slots (Adam keeps two) and the gradient copy tfbn.models.MLP keeps.
TRAINING_BYTES_PER_PARAMETER = 4 * 5


def check_memory(config):
    """Refuses a trial whose network's parameters alone exceed this machine's memory.

    The data sets of `tfbn.config.KNOWN_DATA` give the input width; for others
    one feature is assumed, which makes the estimate a lower bound.
    """
    m, data = config.model, config.data
    if m.builder is not None:
        return  # the user's function decides the network's size
    name = "digits" if data.source == "digits" else (data.name or "").partition(":")[0]
    classes, features = KNOWN_DATA.get(name, (2, 1))
    classes = len(data.classes) if data.classes else classes
    parameters = m.width * (features + 1) + (m.depth - 1) * m.width * (m.width + 1) + (m.width + 1) * classes
    needed = parameters * TRAINING_BYTES_PER_PARAMETER
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if needed > available:
        raise ConfigError(
            f"model.width {m.width} x model.depth {m.depth}: about {parameters:.2g} parameters, "
            f"{needed / 2**30:,.0f} GiB to train, but this machine has {available / 2**30:,.0f} GiB; "
            "lower model.width or model.depth")


def check_devices(distribute_config):
    """Refuses devices, a strategy or a number of workers that this machine does not have.

    Raises:
        ConfigError: naming the key and what the machine has.
    """
    import tensorflow as tf

    c = distribute_config
    present = {(d.device_type, int(d.name.rpartition(":")[2])) for d in tf.config.list_logical_devices()}
    gpus = sum(kind == "GPU" for kind, _ in present)
    named = []
    for name in c.devices or ():
        try:
            spec = tf.DeviceSpec.from_string(name)
        except ValueError:
            spec = None
        if spec is None or spec.device_type is None:
            raise ConfigError(f"distribute.devices: {name!r} is not a device; write /gpu:0 or /cpu:0")
        if (spec.device_type, spec.device_index or 0) not in present:
            raise ConfigError(
                f"distribute.devices: this machine has no {name} (it has "
                f"{', '.join(sorted(f'/{kind.lower()}:{i}' for kind, i in present))}); "
                "list devices it has, or set distribute.devices to null")
        named.append((spec.device_type, spec.device_index or 0))
    if len(set(named)) != len(named):
        raise ConfigError(f"distribute.devices: {list(c.devices)} names a device twice; list each once")
    if c.strategy == "mirrored" and len(named if named else range(gpus)) < 2:
        have = f"distribute.devices lists {len(named)}" if named else f"this machine has {gpus} GPUs"
        raise ConfigError(f"distribute.strategy: mirrored needs two or more devices, and {have}; "
                          "set distribute.strategy to auto or none")
    workers = max(len(os.sched_getaffinity(0)), gpus)
    if c.parallel_trials > workers:
        raise ConfigError(
            f"distribute.parallel_trials: {c.parallel_trials} workers, but this machine has "
            f"{len(os.sched_getaffinity(0))} CPU cores and {gpus} GPUs; give at most {workers}")


def build_strategy(distribute_config):
    """The `tf.distribute` strategy a config asks for, or None for the default.

    ``auto`` mirrors over all visible GPUs when there are two or more; ``mirrored``
    mirrors over ``devices`` (all GPUs when null); ``none`` uses TensorFlow's
    default strategy. The devices are checked first (`check_devices`).
    """
    import tensorflow as tf

    c = distribute_config
    check_devices(c)
    if c.strategy == "none":
        return None
    if c.strategy == "auto":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.MirroredStrategy() if len(gpus) >= 2 else None
    try:
        return tf.distribute.MirroredStrategy(list(c.devices) if c.devices else None)
    except (ValueError, RuntimeError) as e:
        raise ConfigError(f"distribute.devices {list(c.devices or [])}: {e}; "
                          "list devices as /gpu:0, /gpu:1 (or /cpu:0)") from None


def check_batch_split(batch_size, replicas):
    """Refuses a global batch that the replicas cannot share evenly."""
    if batch_size % replicas:
        raise ConfigError(
            f"batch size {batch_size} cannot be split evenly across {replicas} replicas; "
            f"use a multiple of {replicas} or fewer devices (distribute.devices)")
