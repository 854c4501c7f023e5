"""Distribution strategies of the ``distribute`` config section."""

import tensorflow as tf

from tfbn.errors import ConfigError


def build_strategy(distribute_config):
    """The `tf.distribute` strategy a config asks for, or None for the default.

    ``auto`` mirrors over all visible GPUs when there are two or more; ``mirrored``
    mirrors over ``devices`` (all GPUs, or the CPU, when null); ``none`` uses
    TensorFlow's default strategy.
    """
    c = distribute_config
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
