"""Loaders of whole data sets as NumPy arrays: digits, tensorflow-datasets, IDX files.

Each loader returns ``(x_train, y_train, x_test, y_test)``: images flattened to
vectors and integer labels. IDX files and tensorflow-datasets keep their uint8 grey
levels, a quarter of the memory of float32 (MNIST's 60,000 training images are 47 MB
against 188 MB), and `to_unit_interval` scales the examples a study selects;
the digits are float32 in [0, 1] already.
"""

import socket

import numpy as np

from tfbn.data.idx import load_idx_split
from tfbn.errors import DataError

# tensorflow-datasets fetches prepared data from this host first.
TFDS_DOWNLOAD_HOST = ("storage.googleapis.com", 443)
REACHABILITY_TIMEOUT_S = 5

DIGITS_TEST_SIZE = 500
DIGITS_SPLIT_SEED = 0


def load_digits():
    """scikit-learn's bundled 8x8 digits (1,797 images, 16 grey levels).

    The split is fixed: a permutation drawn with NumPy seed 0 puts 500 examples
    in the test split and the other 1,297 in the training split.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(y))
    test, train = order[:DIGITS_TEST_SIZE], order[DIGITS_TEST_SIZE:]
    return x[train], y[train], x[test], y[test]


def load_idx(path):
    """The four MNIST-format IDX files in directory ``path``."""
    train_images, train_labels = load_idx_split(path, "train")
    test_images, test_labels = load_idx_split(path, "test")
    return (_flatten(train_images), train_labels.astype(np.int64),
            _flatten(test_images), test_labels.astype(np.int64))


def load_tfds(name, data_dir=None):
    """An image-classification data set of tensorflow-datasets, by name.

    When the data set is not prepared yet, the download host is checked first,
    so that an offline machine fails within seconds instead of retrying for
    minutes.
    """
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(f"tensorflow-datasets has no data set {name!r}; check data.name "
                        "(e.g. mnist, fashion_mnist, kmnist)")
    except AssertionError as error:  # how tensorflow-datasets refuses a version it lacks
        versions = str(error).rpartition('": ')[2]  # "Dataset mnist cannot be loaded at ..."
        raise DataError(f"data.name {name!r}: {versions} Give one of those versions, or the "
                        "name alone for the latest") from None
    if not builder.is_prepared():
        _require_reachable(name, builder.data_dir)
        builder.download_and_prepare()
    arrays = []
    for split in ("train", "test"):
        images, labels = tfds.as_numpy(
            builder.as_dataset(split=split, batch_size=-1, as_supervised=True))
        arrays += [_flatten(images), labels.astype(np.int64)]
    return tuple(arrays)


def _require_reachable(name, data_dir):
    try:
        socket.create_connection(TFDS_DOWNLOAD_HOST, timeout=REACHABILITY_TIMEOUT_S).close()
    except OSError as e:
        raise DataError(
            f"data set {name!r} is not prepared in {data_dir} and its download host "
            f"{TFDS_DOWNLOAD_HOST[0]} is unreachable ({e}). Connect to the network and "
            "run again, or point the config at local files: data.source: idx with "
            "data.path: DIR holding the four *-idx?-ubyte[.gz] files") from None


def to_unit_interval(x):
    """Images as float32 in [0, 1]: uint8 grey levels over 255, floats as they are."""
    if x.dtype == np.uint8:
        return (x / 255.0).astype(np.float32)
    return x


def _flatten(images):
    images = np.asarray(images)
    return images.reshape(len(images), -1)
