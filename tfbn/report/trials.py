"""A finished study as the report reads it: config, trials, and each trial's TensorBoard run.

`load_study` joins ``config.yaml``, ``results.csv`` (the latest row of each run)
and the run folders. A trial's event files are read on first use, so tables
that need only ``results.csv`` never touch them.
"""

import collections
import dataclasses
import functools
import glob
import math
import os

import numpy as np
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.compat.proto import types_pb2
from tensorboard.util.tensor_util import make_ndarray

from tfbn import tags
from tfbn.config import load_config
from tfbn.errors import UserError
from tfbn.results import read_rows
from tfbn.design import default_value, design_points, run_name, study_factors

# Factors that a comparison pairs over rather than compares: BN is the treatment
# and seeds are the replicates.
PAIRED = ("bn", "seed")
CONTROL = "none"
# The only histograms the report draws; weight and gradient histograms, a few
# thousand per long trial, are not kept.
HISTOGRAMS = (tags.prefix(tags.JACOBIAN),)
LOSS = tags.TRAIN_LOSS  # its first non-finite value marks a divergence


@dataclasses.dataclass(frozen=True)
class Events:
    """Scalars and histograms of one TensorBoard run.

    Attributes:
        scalars: Tag -> ``(steps, values)``, two float arrays sorted by step.
        histograms: Tag -> list of ``(step, buckets)`` for the tags that start
            with one of `HISTOGRAMS`; buckets a ``[k, 3]`` array of (left edge,
            right edge, count), sorted by step.
    """

    scalars: dict
    histograms: dict


def read_events(run_dir):
    """Every scalar, and the histograms in `HISTOGRAMS`, of the event files in ``run_dir``.

    The files are read in name order, as TensorBoard reads a run, by
    TensorBoard's own loader (which also converts values written in older
    formats). TensorBoard's `EventAccumulator` is not used: it keeps every
    value of every tag, the weight and gradient histograms among them, and
    took twice as long for a 108-trial study's runs.
    """
    # Per tag: "scalars", "histograms" (one of `HISTOGRAMS`) or None (not kept), decided by
    # its first value that names a plugin. Values are converted as they are read, and those
    # of tags not kept skipped: a long study's runs hold a million values.
    kinds = {}
    pending = collections.defaultdict(list)  # values read before their tag's plugin was named
    kept = {"scalars": collections.defaultdict(list), "histograms": collections.defaultdict(list)}
    for path in sorted(glob.glob(os.path.join(run_dir, "*tfevents*"))):
        for event in EventFileLoader(path).Load():
            step = event.step
            for value in event.summary.value:
                tag = value.tag
                if tag not in kinds:
                    plugin = value.metadata.plugin_data.plugin_name
                    if not plugin:
                        pending[tag].append((step, value.tensor))
                        continue
                    kinds[tag] = _kind(plugin, tags.current(tag))
                    for point in pending.pop(tag, ()):
                        _keep(kept, kinds[tag], tag, *point)
                _keep(kept, kinds[tag], tag, step, value.tensor)
    scalars, histograms = {}, {}
    for tag, points in kept["scalars"].items():
        points.sort(key=lambda point: point[0])
        scalars[tags.current(tag)] = (np.array([step for step, _ in points], float),
                                      np.array([value for _, value in points]))
    for tag, points in kept["histograms"].items():
        points.sort(key=lambda point: point[0])
        histograms[tags.current(tag)] = [(step, make_ndarray(tensor)) for step, tensor in points]
    return Events(scalars, histograms)


def _kind(plugin, name):
    """What `read_events` keeps of a tag: "scalars", "histograms" or None."""
    if plugin == "scalars" or (plugin == "histograms" and name.startswith(HISTOGRAMS)):
        return plugin
    return None


def _keep(kept, kind, tag, step, tensor):
    """Adds a value of a tag of ``kind`` to `read_events`' lists: a scalar as a float."""
    if kind == "scalars":
        kept[kind][tag].append((step, _scalar(tensor)))
    elif kind:
        kept[kind][tag].append((step, tensor))


def _scalar(tensor):
    """The value of a scalar's tensor proto as a Python float."""
    # The common case read directly: `make_ndarray` costs 30 us a value, most of
    # the time of reading a long study's scalars.
    if tensor.dtype == types_pb2.DT_FLOAT and len(tensor.float_val) == 1 and not tensor.tensor_content:
        return tensor.float_val[0]
    return float(make_ndarray(tensor))


@dataclasses.dataclass
class Trial:
    """One finished (or failed) trial: its factor levels and results row.

    Attributes:
        run: The run name, e.g. ``act=relu,bn=none,seed=1``.
        run_dir: Its TensorBoard run folder.
        levels: Factor name -> level as text, for every factor of the study
            and always ``bn`` and ``seed``.
        row: Its ``results.csv`` row (strings).
    """

    run: str
    run_dir: str
    levels: dict
    row: dict

    @property
    def status(self):
        return self.row["status"]

    def number(self, column):
        """A numeric column of the results row; NaN when empty."""
        text = self.row.get(column) or ""
        return float(text) if text else math.nan

    @functools.cached_property
    def events(self):
        return read_events(self.run_dir)

    @functools.cached_property
    def diverged_at(self):
        """The first evaluated step whose training loss is not finite, or infinity."""
        steps, losses = self.events.scalars.get(LOSS, (np.empty(0), np.empty(0)))
        return float(steps[~np.isfinite(losses)].min(initial=math.inf))

    def scalar(self, tag):
        """``(steps, values)`` of a scalar tag before any divergence, finite values only.

        After a divergence the weights are NaN, and what is measured on them
        (test accuracy among it) means nothing.
        """
        steps, values = self.events.scalars.get(tag, (np.empty(0), np.empty(0)))
        keep = np.isfinite(values) & (steps < self.diverged_at)
        return steps[keep], values[keep]

    def histograms(self, tag):
        """``[(step, buckets)]`` of a histogram tag before any divergence, finite ones only."""
        return [(step, buckets) for step, buckets in self.events.histograms.get(tag, [])
                if step < self.diverged_at and np.isfinite(buckets).all()]

    def tags(self, prefix):
        """Scalar and histogram tags that start with ``prefix``."""
        return {t for t in (*self.events.scalars, *self.events.histograms) if t.startswith(prefix)}


@dataclasses.dataclass
class FinishedStudy:
    """A study's config and trials, with the selections the report compares.

    Attributes:
        experiment_dir: ``<log.dir>/<experiment>``.
        config: Its `tfbn.config.Config`.
        factors: Factor name -> levels as text, in the config's order.
        trials: Trials with a results row, in design order.
        missing: Run names of design points without a results row yet.
    """

    experiment_dir: str
    config: object
    factors: dict
    trials: list
    missing: list

    @property
    def compared(self):
        """Factors whose levels the report compares: all but ``bn`` and ``seed``."""
        return [f for f in self.factors if f not in PAIRED]

    @property
    def arms(self):
        """The BN levels other than ``none`` that some trial ran, in config order."""
        present = {t.levels["bn"] for t in self.trials}
        return [level for level in self.factors.get("bn", ()) if level != CONTROL and level in present]

    @property
    def bn_levels(self):
        """``none`` (when present) followed by `arms`."""
        return ([CONTROL] if any(t.levels["bn"] == CONTROL for t in self.trials) else []) + self.arms

    def default(self, factor):
        return str(default_value(self.config, factor))

    def select(self, **levels):
        """Trials at the given levels; failed trials are left out.

        In a one-at-a-time design, fixing a compared factor fixes the other
        compared factors at their defaults, so that a level is compared only
        with the point that varies it. In a full factorial, the other factors'
        levels are pooled.
        """
        fixed = dict(levels)
        if self.config.study.design == "one_at_a_time" and set(levels) & set(self.compared):
            fixed = {**{f: self.default(f) for f in self.compared}, **levels}
        return [t for t in self.trials if t.status != "failed"
                and all(t.levels[f] == str(v) for f, v in fixed.items())]

    def pairs(self, arm, against=CONTROL, **levels):
        """``(arm trial, against trial)`` pairs that differ only in ``bn``, against ``none`` by default.

        Same seed and factor levels mean the same initial kernels and the
        same batches in the same order, so a pair isolates BN's effect.
        """
        controls = {group_key(t): t for t in self.select(**levels, bn=against)}
        return [(t, controls[group_key(t)]) for t in self.select(**levels, bn=arm)
                if group_key(t) in controls]


def group_key(trial):
    """A trial's levels but ``bn``: the same for the trials that differ only in BN."""
    return tuple((f, v) for f, v in trial.levels.items() if f != "bn")


def load_study(experiment_dir):
    """Reads a study's ``config.yaml`` and ``results.csv``.

    Raises:
        UserError: when the folder holds no study run by ``python -m tfbn.run``.
    """
    config_path = os.path.join(experiment_dir, "config.yaml")
    results_path = os.path.join(experiment_dir, "results.csv")
    if not os.path.exists(config_path) or not read_rows(results_path):
        raise UserError(f"{experiment_dir} holds no finished study (config.yaml and results.csv); "
                        "pass the folder <log.dir>/<experiment> of a study run by python -m tfbn.run")
    config = load_config(config_path)
    latest = {row["run"]: row for row in read_rows(results_path)}
    factors = {name: tuple(str(v) for v in levels) for name, levels in study_factors(config).items()}
    trials, missing = [], []
    for point in design_points(config):
        name = run_name(point)
        if name not in latest:
            missing.append(name)
            continue
        levels = {**{f: str(default_value(config, f)) for f in PAIRED},
                  **{f: str(v) for f, v in point.items()}}
        trials.append(Trial(name, os.path.join(experiment_dir, name), levels, latest[name]))
    return FinishedStudy(experiment_dir, config, factors, trials, missing)
