"""The obvious plain-Keras script for a small study: one `fit` per design point.

    python bench/plain_keras_study.py DIR [--steps 2000] [--activations sigmoid relu ...]
                                          [--no-autotune]

Trains the 784-100-100-10 MLP of the course project (SGD 0.01, batch 64) for
every activation and BN arm (none, before, after), one network after another,
each with `fit`, ``steps_per_execution=32``, an in-memory `tf.data` pipeline and
validation on the whole test split every 100 steps, on the IDX files in DIR.
`bench/bench_study.py` times it beside ``python -m tfbn.run`` on the same study,
as written (``prefetch(AUTOTUNE)``) and with ``--no-autotune`` (see
`training_pipeline`).
"""

import argparse
import gzip
import pathlib
import time

import keras
import numpy as np
import tensorflow as tf


def read_idx(path):
    with gzip.open(path) as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def training_pipeline(x, y, batch_size, autotune=True):
    """The training batches: the training split shuffled, repeated, batched and prefetched.

    As written, with ``prefetch(AUTOTUNE)``, tf.data runs an autotuning thread,
    and deleting the iterator when `fit` ends can wait out that thread's timed
    wait (tfbn's own pipelines turn autotuning off for that reason). On 2 CPU
    cores, in three interleaved rounds of the sigmoid and relu networks, a
    network took 5.4 to 11.2 s as written and 5.8 to 8.3 s with
    ``autotune=False``: 44-53 s against 39-44 s a round. The wait comes in some
    runs only: in two runs of ``bench/bench_study.py`` the 15 networks took 134.7
    and 140.3 s as written, 139.2 and 117.8 s without autotuning.
    """
    train = (tf.data.Dataset.from_tensor_slices((x, y))
             .shuffle(len(y), seed=0).repeat().batch(batch_size, drop_remainder=True))
    if autotune:
        return train.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.autotune.enabled = False
    return train.prefetch(1).with_options(options)


def fit(model, train, x_test, y_test, steps):
    """Trains ``model`` as the script does: `fit` with SGD 0.01, ``steps_per_execution=32``
    and validation on the whole test split every 100 steps. Returns `fit`'s history."""
    model.compile(keras.optimizers.SGD(0.01),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], steps_per_execution=32)
    return model.fit(train, steps_per_epoch=100, epochs=steps // 100,
                     validation_data=(x_test, y_test), verbose=0)


def network(activation, bn):
    layers = [keras.Input((784,))]
    for _ in range(2):
        layers.append(keras.layers.Dense(100, use_bias=bn != "before"))
        if bn == "before":
            layers.append(keras.layers.BatchNormalization(momentum=0.999, epsilon=1e-3))
        layers.append(keras.layers.LeakyReLU(0.2) if activation == "lrelu"
                      else keras.layers.Activation(activation))
        if bn == "after":
            layers.append(keras.layers.BatchNormalization(momentum=0.999, epsilon=1e-3))
    layers.append(keras.layers.Dense(10))
    return keras.Sequential(layers)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--activations", nargs="+",
                        default=["sigmoid", "relu", "tanh", "softplus", "lrelu"])
    parser.add_argument("--no-autotune", action="store_true",
                        help="turn tf.data's autotuning off (see training_pipeline)")
    args = parser.parse_args()
    folder = pathlib.Path(args.data)
    x_train = read_idx(folder / "train-images-idx3-ubyte.gz").reshape(-1, 784) / np.float32(255)
    y_train = read_idx(folder / "train-labels-idx1-ubyte.gz").astype(np.int64)
    x_test = read_idx(folder / "t10k-images-idx3-ubyte.gz").reshape(-1, 784) / np.float32(255)
    y_test = read_idx(folder / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    train = training_pipeline(x_train, y_train, 64, autotune=not args.no_autotune)
    for activation in args.activations:
        for bn in ("none", "before", "after"):
            start = time.monotonic()
            history = fit(network(activation, bn), train, x_test, y_test, args.steps)
            print(f"{activation:8s} {bn:6s} test acc {history.history['val_accuracy'][-1]:.4f}  "
                  f"{time.monotonic() - start:.1f} s", flush=True)


if __name__ == "__main__":
    main()
