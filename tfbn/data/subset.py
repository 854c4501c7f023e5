"""Class selection, per-class caps and exact class ratios of a split.

Selection is deterministic and independent of the seed: the first examples of
each class in the split's own order are kept, so every trial of a study sees
the same examples.
"""

import numpy as np

from tfbn.errors import DataError


def parse_ratio(ratio):
    """``"1:9"`` -> ``(1, 9)``."""
    return tuple(int(part) for part in ratio.split(":"))


def ratio_counts(available, ratio, key="ratio"):
    """The largest per-class counts in exactly the given ratio.

    Args:
        available: Examples available per class.
        ratio: Parts per class, e.g. ``(1, 9)``.
        key: The config key of the ratio, for the error message.

    Returns:
        Counts ``k * ratio`` with the largest ``k`` that ``available`` allows.

    Example: ``ratio_counts((980, 1135), (1, 9))`` is ``(126, 1134)``.
    """
    k = min(a // r for a, r in zip(available, ratio))
    if k == 0:
        raise DataError(f"{key} {':'.join(map(str, ratio))} cannot be met with "
                        f"{list(available)} examples per class; lower the ratio or the caps")
    return tuple(k * r for r in ratio)


def select_classes(x, y, classes, max_per_class=None, ratio=None, ratio_key="ratio"):
    """Keeps some classes of a split, capped and in a given ratio.

    Args:
        x: Examples, first axis indexes them.
        y: Integer labels.
        classes: Labels to keep; kept labels become their index in ``classes``.
        max_per_class: Keep at most this many examples of each class.
        ratio: Optional ratio string such as ``"1:9"``, one part per class.
        ratio_key: The config key of the ratio, for the error message.

    Returns:
        ``(x, y)`` of the kept examples in their original order.
    """
    positions = [np.flatnonzero(y == c) for c in classes]
    for c, found in zip(classes, positions):
        if len(found) == 0:
            raise DataError(f"data.classes: class {c} has no examples; labels present: "
                            f"{sorted(set(y.tolist()))}")
    counts = [len(p) if max_per_class is None else min(len(p), max_per_class) for p in positions]
    if ratio is not None:
        counts = ratio_counts(counts, parse_ratio(ratio), ratio_key)
    keep = np.sort(np.concatenate([p[:n] for p, n in zip(positions, counts)]))
    relabel = np.full(int(y.max()) + 1, -1, dtype=np.int64)
    relabel[list(classes)] = np.arange(len(classes))
    return x[keep], relabel[y[keep]]


def distinct_rows(arrays):
    """The distinct rows of several arrays, and where each array's rows lie among them.

    Args:
        arrays: Arrays of examples, first axis indexes them; test splits of
            one data set, for example, which share most of their examples.

    Returns:
        ``(distinct, numbers)``: one array of the distinct rows, in order of
        first appearance, and per input array the integer array of its rows'
        positions in ``distinct``, so that ``distinct[numbers[i]]`` equals
        ``arrays[i]``.
    """
    if len(arrays) == 1:
        return arrays[0], [np.arange(len(arrays[0]))]
    positions, distinct, per_array = {}, [], []
    for x in arrays:
        own = []
        for row in x:
            key = row.tobytes()
            if key not in positions:
                positions[key] = len(distinct)
                distinct.append(row)
            own.append(positions[key])
        per_array.append(np.array(own, dtype=np.int64))
    return np.stack(distinct), per_array
