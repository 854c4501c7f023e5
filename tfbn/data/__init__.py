"""Data sets as `tf.data` pipelines of flattened [0, 1] images and integer labels.

Sources (``data.source`` in the config):

* ``digits``: scikit-learn's 8x8 digits, offline; see `load_digits`.
* ``tfds``: any tensorflow-datasets image-classification set by ``data.name``.
* ``idx``: the four MNIST-format IDX files in ``data.path``.

Example:

```python
data = tfbn.data.load_data(config.data)
train, test = tfbn.data.make_datasets(data, batch_size=64, seed=0)
```
"""

import dataclasses
import functools

import numpy as np
import tensorflow as tf

from tfbn.data.sources import load_digits, load_idx, load_tfds, to_unit_interval
from tfbn.data.subset import select_classes


@dataclasses.dataclass(frozen=True)
class Data:
    """Train and test arrays of one data set after class selection."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def input_shape(self):
        return self.x_train.shape[1:]


@functools.lru_cache(maxsize=4)
def _load_source(source, name, data_dir, path):
    # Cached: every trial of a study reads the same files.
    if source == "digits":
        return load_digits()
    if source == "idx":
        return load_idx(path)
    return load_tfds(name, data_dir)


def release_data():
    """Empties the caches of `load_data`: a process that trains no more frees its arrays."""
    load_data.cache_clear()
    _load_source.cache_clear()


@functools.lru_cache(maxsize=16)
def load_data(data_config):
    """Loads the data set a `tfbn.config.DataConfig` names and keeps its classes.

    Cached: the trials of a study that select the same data get the same
    arrays, which lets trials packed together share their test splits.

    Returns:
        A `Data` whose labels are ``0..num_classes-1``.
    """
    c = data_config
    x_train, y_train, x_test, y_test = _load_source(c.source, c.name, c.data_dir, c.path)
    classes = c.classes if c.classes is not None else tuple(np.unique(y_train).tolist())
    x_train, y_train = select_classes(x_train, y_train, classes, c.max_train_per_class, c.train_ratio,
                                      "data.train_ratio")
    x_test, y_test = select_classes(x_test, y_test, classes, c.max_test_per_class, c.test_ratio,
                                    "data.test_ratio")
    return Data(to_unit_interval(x_train), y_train, to_unit_interval(x_test), y_test, len(classes))


# tf.data's autotuning runs a thread per iterator, whose timed wait the iterator's
# deletion sits out: Keras's `fit` returned 3 to 20 s after its last step in a
# study's worker processes. These pipelines read from memory and have nothing to tune.
_WITHOUT_AUTOTUNE = tf.data.Options()
_WITHOUT_AUTOTUNE.autotune.enabled = False


def _from_memory(dataset):
    """The end of a pipeline over in-memory arrays: one batch prefetched, no autotuning."""
    return dataset.prefetch(1).with_options(_WITHOUT_AUTOTUNE)


def training_batches(data, batch_size, seed):
    """The training pipeline: shuffled with ``seed``, repeated, in whole batches.

    It reshuffles the whole training split every pass with ``seed``, repeats
    forever and drops the last partial batch, so runs with the same seed see
    the same batches in the same order.
    """
    return _from_memory(tf.data.Dataset.from_tensor_slices((data.x_train, data.y_train))
                        .shuffle(len(data.y_train), seed=seed, reshuffle_each_iteration=True)
                        .repeat()
                        .batch(batch_size, drop_remainder=True))


def training_indices(num_examples, batch_size, seed):
    """Batches of indices into the training split, in `training_batches`'s order.

    The shuffle draws the same permutation whatever the elements are, so
    gathering these indices from the training arrays gives exactly the
    batches of `training_batches`.
    """
    return _from_memory(_shuffled_indices(num_examples, batch_size, seed))


def seeded_indices(num_examples, batch_size, seeds):
    """Index batches of several seeds side by side: ``[batch_size, len(seeds)]`` each.

    Column ``s`` is exactly the stream of `training_indices` with ``seeds[s]``,
    so each branch of a `tfbn.packed.PackedModel` that gathers its column from
    the training arrays sees its own seed's batches, as it would alone; the
    arrays themselves are held once.
    """
    streams = tuple(_shuffled_indices(num_examples, batch_size, seed) for seed in seeds)
    return _from_memory(tf.data.Dataset.zip(streams).map(lambda *batches: tf.stack(batches, -1)))


def _shuffled_indices(num_examples, batch_size, seed):
    return (tf.data.Dataset.range(num_examples)
            .shuffle(num_examples, seed=seed, reshuffle_each_iteration=True)
            .repeat()
            .batch(batch_size, drop_remainder=True))


def make_datasets(data, batch_size, seed, eval_batch_size=1000):
    """Builds the training and test pipelines.

    Returns:
        ``(train, test)`` `tf.data.Dataset`s of ``(x, y)`` batches: the
        training batches of `training_batches` and the test split in batches
        of ``eval_batch_size``.
    """
    test = _from_memory(tf.data.Dataset.from_tensor_slices((data.x_test, data.y_test))
                        .batch(eval_batch_size))
    return training_batches(data, batch_size, seed), test
