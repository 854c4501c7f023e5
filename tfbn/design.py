"""The design of a study: which factor values each trial runs with, and its name.

A design point is a dict from factor name to one level: a name of
`tfbn.config.FACTORS` or a scalar key of the ``model``, ``train`` or ``data``
section by its dotted path (``model.bn_momentum``). Two designs:

* ``full_factorial``: every combination of the levels.
* ``one_at_a_time``: the 2017 course project's design. From the default point
  (the config's own ``model``/``train``/``data`` values), one factor at a time
  takes each of its levels while the others keep their defaults; every such
  point is crossed with all levels of ``bn`` and ``seed``.

Without factors a study is a grid of one: the config's BN placement.
"""

import dataclasses
import itertools

from tfbn.config import factor_field

# Factors crossed with every point of a one-at-a-time design.
CROSSED = ("bn", "seed")

# Short names of `tfbn.config.FACTORS` in run names and progress lines; a dotted
# factor is labelled by its key's own name (``bn_momentum`` for model.bn_momentum).
LABELS = {
    "activation": "act", "optimizer": "opt", "learning_rate": "lr", "batch_size": "bs",
    "test_ratio": "test", "train_ratio": "train", "bn": "bn", "depth": "depth",
    "width": "width", "seed": "seed",
}


def study_factors(config):
    """The factors of a config in declared order, name -> levels."""
    return config.study.factors or {"bn": (config.model.bn,)}


def default_value(config, factor):
    """The value a factor takes in the config's own sections."""
    section, field = factor_field(factor)
    return getattr(getattr(config, section), field)


def design_points(config):
    """All trials of a study, in the order they run.

    Returns:
        A list of dicts from factor name to level, each point once.
    """
    factors = study_factors(config)
    if config.study.design == "full_factorial":
        return [dict(zip(factors, combo)) for combo in itertools.product(*factors.values())]
    crossed = {name: factors.get(name, (default_value(config, name),)) for name in CROSSED}
    varied = [name for name in factors if name not in CROSSED]
    base = {name: default_value(config, name) for name in varied}
    bases = [base] + [{**base, name: level} for name in varied for level in factors[name]]
    points = []
    for point in bases:
        for combo in itertools.product(*crossed.values()):
            full = {**point, **dict(zip(crossed, combo))}
            if full not in points:
                points.append(full)
    return points


def apply_factors(config, point):
    """Returns the config of one trial: the config with the point's levels set."""
    changes = {}
    for factor, value in point.items():
        section, field = factor_field(factor)
        changes.setdefault(section, {})[field] = value
    return dataclasses.replace(config, **{
        section: dataclasses.replace(getattr(config, section), **fields)
        for section, fields in changes.items()})


def labels(point):
    """A point's factor assignments as short strings, e.g. ``["act=relu", "bn_momentum=0.9"]``."""
    return [f"{LABELS.get(name) or name.rpartition('.')[2]}={value}" for name, value in point.items()]


def run_name(point):
    """A readable, unique TensorBoard run name, e.g. ``act=sigmoid,bn=before``."""
    return ",".join(labels(point))
