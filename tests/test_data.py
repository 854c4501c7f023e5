import socket
import time

import numpy as np
import pytest

from tfbn.config import DataConfig
from tfbn.data import load_data, make_datasets, training_indices
from tfbn.data.sources import load_tfds
from tfbn.data.subset import ratio_counts, select_classes
from tfbn.errors import DataError


@pytest.mark.parametrize("ratio, expected", [
    ((1, 1), (980, 980)), ((1, 9), (126, 1134)), ((1, 19), (59, 1121)), ((1, 99), (11, 1089)),
])
def test_that_ratio_counts_are_the_largest_exact_multiples(ratio, expected):
    # MNIST's test split has 980 zeros and 1,135 ones.
    assert ratio_counts((980, 1135), ratio) == expected


def test_that_an_unreachable_ratio_is_refused():
    with pytest.raises(DataError, match="ratio 1:99 cannot be met with \\[5, 50\\]"):
        ratio_counts((5, 50), (1, 99))


def test_that_class_selection_caps_relabels_and_keeps_the_order():
    y = np.array([3, 1, 3, 2, 1, 3, 1, 3, 3, 1])
    x = np.arange(10)
    kept_x, kept_y = select_classes(x, y, classes=(3, 1), max_per_class=4, ratio="1:1")
    np.testing.assert_array_equal(kept_x, [0, 1, 2, 4, 5, 6, 7, 9])
    np.testing.assert_array_equal(kept_y, [0, 1, 0, 1, 0, 1, 0, 1])
    kept_x, kept_y = select_classes(x, y, classes=(1, 3), ratio="1:2")
    # Four 1s and five 3s: 1:2 keeps the first two 1s and the first four 3s.
    np.testing.assert_array_equal(kept_x, [0, 1, 2, 4, 5, 7])
    np.testing.assert_array_equal(kept_y, [1, 0, 1, 0, 1, 1])


def test_that_a_missing_class_lists_the_labels_present():
    with pytest.raises(DataError, match=r"class 7 has no examples; labels present: \[0, 1\]"):
        select_classes(np.zeros(3), np.array([0, 1, 1]), classes=(0, 7))


def test_that_digits_has_a_fixed_split_and_the_binary_task_has_exact_ratios():
    full = load_data(DataConfig())
    assert (len(full.y_train), len(full.y_test), full.num_classes) == (1297, 500, 10)
    assert full.x_train.shape[1] == 64 and full.x_train.max() == 1.0
    binary = load_data(DataConfig(classes=(0, 1), train_ratio="1:1", test_ratio="1:9",
                                  max_train_per_class=100))
    assert np.bincount(binary.y_train).tolist() == [100, 100]
    zeros_in_test = np.sum(full.y_test == 0)
    ones_in_test = np.sum(full.y_test == 1)
    k = min(zeros_in_test, ones_in_test // 9)
    assert np.bincount(binary.y_test).tolist() == [k, 9 * k]
    assert binary.num_classes == 2


def test_that_the_same_seed_gives_the_same_batches_and_another_seed_does_not():
    data = load_data(DataConfig())
    def first_labels(seed):
        train, _ = make_datasets(data, batch_size=64, seed=seed)
        return np.concatenate([y.numpy() for _, y in train.take(30)])
    first = first_labels(3)
    np.testing.assert_array_equal(first, first_labels(3))
    assert not np.array_equal(first, first_labels(4))
    # 30 batches of 64 span more than one pass over 1,297 examples: every example is seen.
    assert len(first) == 1920


def test_that_the_pipelines_start_no_autotuning_thread():
    """Deleting an iterator waits out its autotuning thread's timed sleep, which made
    Keras's `fit` return seconds after its last step; the pipelines, and the step blocks
    that training batches from the indices, must have no such thread."""
    train, test = make_datasets(load_data(DataConfig(source="digits")), batch_size=16, seed=0)
    blocks = training_indices(1000, 16, seed=0).batch(50, drop_remainder=True)
    for dataset in (train, test, blocks):
        assert dataset.options().autotune.enabled is False


def test_that_an_offline_machine_without_prepared_data_fails_fast(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("Network is unreachable")
    monkeypatch.setattr(socket, "create_connection", no_network)
    start = time.monotonic()
    with pytest.raises(DataError) as error:
        load_tfds("mnist", data_dir=str(tmp_path))
    assert time.monotonic() - start < 10
    message = str(error.value)
    assert "'mnist' is not prepared" in message and "storage.googleapis.com is unreachable" in message
    assert "data.source: idx" in message and "Connect to the network" in message


def test_that_an_unknown_tfds_name_is_reported(tmp_path):
    with pytest.raises(DataError, match="no data set 'mnistt'"):
        load_tfds("mnistt", data_dir=str(tmp_path))
