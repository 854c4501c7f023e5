"""Reader of the IDX files that MNIST and Fashion-MNIST ship as.

An IDX file is a big-endian header (two zero bytes, a type code, the number of
dimensions, then one uint32 per dimension) followed by the raw array. MNIST's
images have magic number 2051 (uint8, 3 dimensions) and its labels 2049
(uint8, 1 dimension). Files may be gzip-compressed (``.gz``).
"""

import gzip
import os

import numpy as np

from tfbn.errors import DataError

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
SPLIT_PREFIXES = {"train": "train", "test": "t10k"}


def find_idx_file(directory, split, kind):
    """Returns the path of ``<prefix>-<kind>-idx?-ubyte[.gz]`` in ``directory``.

    The spelling with a dot before ``idx`` (``train-images.idx3-ubyte``, as
    some mirrors ship MNIST) is accepted too.

    Args:
        directory: Folder holding the four standard IDX files.
        split: ``"train"`` or ``"test"`` (file prefixes ``train`` and ``t10k``).
        kind: ``"images"`` or ``"labels"``.
    """
    dims = 3 if kind == "images" else 1
    stem = f"{SPLIT_PREFIXES[split]}-{kind}-idx{dims}-ubyte"
    dotted = f"{SPLIT_PREFIXES[split]}-{kind}.idx{dims}-ubyte"
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    raise DataError(
        f"IDX file {stem}[.gz] not found in {directory}; point data.path at the folder "
        "holding the four MNIST-format files (Debian's dataset-fashion-mnist installs "
        "them in /usr/share/datasets/fashion-mnist)")


def read_idx(path, magic):
    """Reads one IDX file into a uint8 array, checking its header and length.

    Args:
        path: The file, optionally gzip-compressed.
        magic: The expected magic number, `IMAGES_MAGIC` or `LABELS_MAGIC`.

    Returns:
        A uint8 array of the shape the header declares.

    Raises:
        DataError: naming the file and what was expected.
    """
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot be read ({e}); download the file again")
    if len(raw) < 4 or int.from_bytes(raw[:4], "big") != magic:
        found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else "no header"
        raise DataError(f"{path}: magic number {found}, expected {magic} "
                        f"({'images' if magic == IMAGES_MAGIC else 'labels'}, uint8); "
                        "is this the right file?")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise DataError(f"{path}: {len(raw)} bytes, expected {expected} for shape {shape}; "
                        "the file is truncated or corrupt, download it again")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def load_idx_split(directory, split):
    """Reads the images and labels of one split and checks they agree.

    Returns:
        ``(images, labels)``: uint8 arrays of shapes ``[n, rows, cols]`` and ``[n]``.
    """
    images_path = find_idx_file(directory, split, "images")
    labels_path = find_idx_file(directory, split, "labels")
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if images.ndim != 3:
        raise DataError(f"{images_path}: {images.ndim} dimensions, expected 3 (count, rows, cols)")
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images)} images but {labels_path} "
                        f"holds {len(labels)} labels; the counts must match")
    return images, labels
