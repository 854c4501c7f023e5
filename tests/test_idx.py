import gzip
import os

import numpy as np
import pytest

from tfbn.config import DataConfig
from tfbn.data import load_data
from tfbn.data.idx import IMAGES_MAGIC, LABELS_MAGIC, load_idx_split, read_idx
from tfbn.data.sources import load_idx, to_unit_interval
from tfbn.errors import DataError

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def idx_bytes(array, magic):
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_split(directory, prefix, images, labels, compress=False):
    for kind, array, magic, dims in (("images", images, IMAGES_MAGIC, 3),
                                     ("labels", labels, LABELS_MAGIC, 1)):
        name = f"{prefix}-{kind}-idx{dims}-ubyte"
        data = idx_bytes(array, magic)
        if compress:
            with gzip.open(os.path.join(directory, name + ".gz"), "wb") as f:
                f.write(data)
        else:
            with open(os.path.join(directory, name), "wb") as f:
                f.write(data)


@pytest.fixture
def idx_dir(tmp_path):
    rng = np.random.default_rng(0)
    write_split(tmp_path, "train", rng.integers(0, 256, (6, 3, 2)), np.arange(6) % 3, compress=True)
    write_split(tmp_path, "t10k", rng.integers(0, 256, (4, 3, 2)), np.array([2, 1, 0, 2]))
    return tmp_path


def test_that_idx_files_are_read_gzipped_or_plain_flattened_and_scaled(idx_dir):
    x_train, y_train, x_test, y_test = load_idx(str(idx_dir))
    images, labels = load_idx_split(str(idx_dir), "train")
    # Kept as uint8 grey levels until a study selects its examples.
    assert x_train.shape == (6, 6) and x_train.dtype == np.uint8
    np.testing.assert_array_equal(x_train, images.reshape(6, 6))
    scaled = to_unit_interval(x_train)
    assert scaled.dtype == np.float32
    np.testing.assert_array_equal(scaled, images.reshape(6, 6) / np.float32(255))
    np.testing.assert_array_equal(y_train, [0, 1, 2, 0, 1, 2])
    np.testing.assert_array_equal(y_test, [2, 1, 0, 2])
    assert x_test.shape == (4, 6)


def test_that_the_dotted_spelling_of_the_file_names_is_found(idx_dir):
    expected = load_idx(str(idx_dir))
    for name in os.listdir(idx_dir):  # train-images-idx3-ubyte.gz -> train-images.idx3-ubyte.gz
        os.rename(idx_dir / name, idx_dir / name.replace("-idx", ".idx"))
    for got, want in zip(load_idx(str(idx_dir)), expected):
        np.testing.assert_array_equal(got, want)


def test_that_a_truncated_file_is_named_with_the_expected_size(idx_dir):
    path = idx_dir / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: 35 bytes, expected 40 .*truncated"):
        load_idx(str(idx_dir))


def test_that_a_wrong_magic_number_is_reported(idx_dir):
    path = idx_dir / "t10k-labels-idx1-ubyte"
    path.write_bytes(idx_bytes(np.zeros(4), IMAGES_MAGIC))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte: magic number 2051, expected 2049"):
        read_idx(str(path), LABELS_MAGIC)


def test_that_a_missing_file_names_the_file_and_the_fix(idx_dir):
    os.remove(idx_dir / "t10k-labels-idx1-ubyte")
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\[.gz\] not found .* data.path"):
        load_idx(str(idx_dir))


def test_that_images_and_labels_of_different_counts_are_refused(tmp_path):
    write_split(tmp_path, "train", np.zeros((3, 2, 2)), np.zeros(2))
    with pytest.raises(DataError, match="holds 3 images but .* holds 2 labels"):
        load_idx_split(str(tmp_path), "train")


def test_that_a_corrupt_gzip_file_is_reported(idx_dir):
    (idx_dir / "train-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b not gzip")
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: cannot be read"):
        load_idx(str(idx_dir))


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST), reason="apt-get install dataset-fashion-mnist")
def test_that_the_real_fashion_mnist_files_load_with_their_known_counts():
    x_train, y_train, x_test, y_test = load_idx(FASHION_MNIST)
    assert x_train.shape == (60000, 784) and x_test.shape == (10000, 784)
    assert np.bincount(y_train).tolist() == [6000] * 10
    assert np.bincount(y_test).tolist() == [1000] * 10
    assert 0 == x_train.min() and x_train.max() == 255


def test_that_a_study_gets_its_selected_examples_scaled_to_float32(idx_dir):
    config = DataConfig(source="idx", path=str(idx_dir), classes=(0, 2), max_train_per_class=1)
    data = load_data(config)
    images, labels = load_idx_split(str(idx_dir), "train")
    # The first example of class 0 and of class 2, in the split's order.
    assert data.x_train.dtype == np.float32
    np.testing.assert_array_equal(data.x_train, images[[0, 2]].reshape(2, 6) / np.float32(255))
    np.testing.assert_array_equal(data.y_train, [0, 1])
