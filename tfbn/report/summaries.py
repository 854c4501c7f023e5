"""The report's two tables: BN's effect per factor level, and the mechanisms behind it.

* `summarise_levels` (Summary I): for each level of each compared factor, and
  over all trials, the effect of each BN arm against ``none`` on final test
  accuracy and on steps to the accuracy threshold.
* `summarise_mechanisms` (Summary II): one row per measure of the claims, BN
  before the activation against ``none`` (and noisy BN against BN), over all pairs.

Each table's p-values are Holm-adjusted across its tests
(`tfbn.report.stats.holm_adjusted`), and its verdicts come from the adjusted ones.
"""

import dataclasses
import math

import numpy as np

from tfbn import tags
from tfbn.config import Threshold
from tfbn.report.stats import NOT_TESTED, combine, holm_adjusted, paired_effect
from tfbn.report.trials import CONTROL, group_key

OVERALL = "all"
SATURATING = ("sigmoid", "tanh")
NOISY = "noisy"
ICS_L2 = tags.prefix(tags.ICS, "l2")
# Instruments that are off unless log.instruments names them.
ON_REQUEST = ("ics", "landscape")

CLAIMS = {
    1: "BN speeds up training and raises accuracy",
    2: "BN keeps the input distribution of each nonlinearity stable",
    3: "BN regularizes the growth of the weights",
    4: "BN tackles vanishing gradients",
    5: "BN improves gradient flow (isometry of backprop)",
    6: "BN lets saturating nonlinearities train",
    7: "BN reduces internal covariate shift",
    8: "BN makes the loss landscape smoother",
    9: "BN's gain rests on a low covariate shift: noisy BN's larger shift costs accuracy",
    10: "BN tolerates higher learning rates",  # the second half of the sources' claim 6
}
# The config that tests claim 10, named where a study does not.
LEARNING_RATE_CONFIG = "configs/learning_rates.yaml"
# Claims whose measures also get a verdict per level of these factors, beside the
# pooled one: sigmoid and ReLU networks answer them in opposite ways (sigmoid
# without BN barely trains at depth, and never diverges), which pooling hides.
PER_LEVEL_CLAIMS = (7, 8, 10)
PER_LEVEL_FACTORS = ("activation",)


@dataclasses.dataclass(frozen=True)
class LevelRow:
    """BN's effect at one factor level (Summary I), Holm-adjusted across all of its tests.

    Attributes:
        factor, level: The level compared, or `OVERALL` twice for all trials.
        arm: The BN arm compared with ``none``.
        accuracy: `Effect` on final test accuracy (claimed: higher).
        steps: `Effect` on steps to threshold (claimed: fewer), never reached
            counting as ``train.steps``.
        never: ``(arm trials, none trials)`` of the pairs that never reached
            the threshold.
        relative: `Effect` on steps to the relative threshold (`relative_steps`),
            never reached counting as ``train.steps``; None without one.
        relative_never: `never` for the relative threshold.
    """

    factor: str
    level: str
    arm: str
    accuracy: object
    steps: object
    never: tuple
    relative: object = None
    relative_never: tuple = (0, 0)


@dataclasses.dataclass(frozen=True)
class Measure:
    """One measure of one claim (Summary II).

    Attributes:
        claim: The claim's number in `CLAIMS`.
        name: What is measured per trial, in words.
        better: ``+1`` if the claim says BN raises it, ``-1`` if BN lowers it.
        effect: BN arm minus ``none``, an `Effect`, Holm-adjusted across
            all of Summary II's measures.
        note: Why there are no pairs, or what the pairs were restricted to.
        level: ``<factor>=<level>`` for a measure on that level's pairs only
            (`PER_LEVEL_CLAIMS`); empty for the pooled measure.
    """

    claim: int
    name: str
    better: int
    effect: object
    note: str = ""
    level: str = ""


def primary_arm(study):
    """The arm the mechanisms are measured on: ``before`` (the paper's), else the first."""
    return "before" if "before" in study.arms else (study.arms or [None])[0]


def final_accuracy(trial):
    """Test accuracy at the last finite evaluation (a diverged trial's last good one)."""
    return trial.number("final_accuracy")


def thresholds(config):
    """``(absolute, relative)`` of ``train.threshold``: an accuracy and a fraction, each None when not set."""
    threshold = config.train.threshold
    if isinstance(threshold, Threshold):
        return threshold.absolute, threshold.relative
    return threshold, None


def steps_to_threshold(study):
    """Per-trial steps to threshold; a trial that never reached it counts ``train.steps``."""
    return _never_as_total(study, lambda trial: trial.number("steps_to_threshold"))


def relative_steps(study):
    """Per trial: the first evaluated step whose test accuracy reached the relative
    threshold's fraction of the best final accuracy of its group (the trials that
    differ from it only in ``bn``); NaN when it never did, or without a relative threshold.

    The group's best arm reaches it by definition (at its last evaluation at the
    latest), so the measure has a value on any data, unlike an absolute accuracy.
    """
    fraction = thresholds(study.config)[1]
    best = {}
    for trial in study.select():
        accuracy = final_accuracy(trial)
        if fraction is not None and not math.isnan(accuracy):
            best[group_key(trial)] = max(best.get(group_key(trial), -math.inf), accuracy)

    def steps(trial):
        if group_key(trial) not in best:
            return math.nan
        evaluated, accuracy = trial.scalar(tags.TEST_ACCURACY)
        reached = evaluated[accuracy >= fraction * best[group_key(trial)]]
        return float(reached[0]) if len(reached) else math.nan
    return steps


def _never_as_total(study, steps):
    def counted(trial):
        value = steps(trial)
        return float(study.config.train.steps) if math.isnan(value) else value
    return counted


def summarise_levels(study):
    """Summary I: BN's effect per factor level and overall, one row per BN arm.

    Returns:
        A list of `LevelRow`: the compared factors' levels in config order,
        then the `OVERALL` rows; empty when no trial pairs with a ``none`` one.
        The accuracy and steps effects of all rows are adjusted together.
    """
    if not any(study.pairs(arm) for arm in study.arms):
        return []
    groups = [(f, level) for f in study.compared for level in study.factors[f]]
    relative = relative_steps(study) if thresholds(study.config)[1] is not None else None
    rows = []
    for factor, level in [*groups, (OVERALL, OVERALL)]:
        levels = {} if factor == OVERALL else {factor: level}
        for arm in study.arms:
            pairs = study.pairs(arm, **levels)
            row = LevelRow(factor, level, arm, _effect(pairs, final_accuracy, +1),
                           _effect(pairs, steps_to_threshold(study), -1),
                           _never(pairs, lambda t: t.number("steps_to_threshold")))
            if relative:
                row = dataclasses.replace(row, relative=_effect(pairs, _never_as_total(study, relative), -1),
                                          relative_never=_never(pairs, relative))
            rows.append(row)
    tests = [(r.accuracy, r.steps, r.relative) if relative else (r.accuracy, r.steps) for r in rows]
    adjusted = iter(holm_adjusted([e for effects in tests for e in effects]))
    return [dataclasses.replace(r, accuracy=next(adjusted), steps=next(adjusted),
                                relative=next(adjusted) if relative else None) for r in rows]


def _never(pairs, steps):
    """``(arm trials, control trials)`` of the pairs whose ``steps`` are NaN (never reached)."""
    return tuple(sum(math.isnan(steps(t)) for t in side) for side in zip(*pairs)) if pairs else (0, 0)


@dataclasses.dataclass(frozen=True)
class FactorSpread:
    """How much one factor changes one BN arm's effect, across the factor's levels.

    Attributes:
        factor, arm: The factor and the BN arm.
        accuracy_range: Largest minus smallest mean effect on final accuracy.
        lowest, highest: The levels with the smallest and the largest mean effect.
        lowest_mean, highest_mean: Those mean effects.
        steps_range: The same range for steps to threshold (NaN without values).
    """

    factor: str
    arm: str
    accuracy_range: float
    lowest: str
    highest: str
    lowest_mean: float
    highest_mean: float
    steps_range: float


def factor_spread(rows):
    """How much each factor changes BN's effect: the range of level means.

    Returns:
        A list of `FactorSpread`, largest accuracy range first; factors with
        one level are left out.
    """
    spreads = []
    for key in dict.fromkeys((r.factor, r.arm) for r in rows if r.factor != OVERALL):
        group = [r for r in rows if (r.factor, r.arm) == key and not math.isnan(r.accuracy.mean)]
        if len(group) < 2:
            continue
        by_accuracy = sorted(group, key=lambda r: r.accuracy.mean)
        steps = [r.steps.mean for r in group if not math.isnan(r.steps.mean)]
        low, high = by_accuracy[0], by_accuracy[-1]
        spreads.append(FactorSpread(*key, high.accuracy.mean - low.accuracy.mean, low.level, high.level,
                                    low.accuracy.mean, high.accuracy.mean,
                                    max(steps) - min(steps) if steps else math.nan))
    return sorted(spreads, key=lambda s: -s.accuracy_range)


def summarise_mechanisms(study):
    """Summary II: every measure of the six claims, `primary_arm` against ``none``.

    Returns:
        A list of `Measure`, in claim order, their effects adjusted together;
        empty when no `primary_arm` trial pairs with a ``none`` one.
    """
    arm = primary_arm(study)
    pairs = study.pairs(arm) if arm else []
    if not pairs:
        return []
    unit = "the last hidden layer's unit input"
    absolute, relative = thresholds(study.config)
    specs = [  # claim, what is measured, the claimed sign of BN's effect, per-trial value, instrument
        (1, "final test accuracy", +1, final_accuracy, None),
        *([(1, "steps to threshold (never reached: train.steps)", -1, steps_to_threshold(study), None)]
          if absolute is not None else []),
        *([(1, f"steps to {relative:g} x the group's best final accuracy (never reached: train.steps)",
            -1, _never_as_total(study, relative_steps(study)), None)] if relative is not None else []),
        (2, f"|drift of the median| of {unit}, first to last step", -1, _median_drift, "percentiles"),
        (2, f"|change of the 15-85 percentile spread| of {unit}", -1, _spread_change, "percentiles"),
        (3, "weight norm growth, last / first, mean over layers", -1, _weight_growth, "weights"),
        (4, "mean over training of log10 gradient norm, first hidden layer", +1, _first_gradient,
         "gradients"),
        (4, "|mean log10 gradient norm ratio, first / last hidden layer|", -1, _gradient_ratio,
         "gradients"),
        (5, "|ln mean squared singular value|, network Jacobian, last step", -1,
         _isometry("network"), "jacobian"),
        (5, "|ln mean squared singular value|, hidden blocks' Jacobians (mean)", -1,
         _isometry("dense_"), "jacobian"),
        (7, "mean over training and layers of log10 ||G - G'||", -1, _mean_log10(ICS_L2), "ics"),
        (7, "mean over training and layers of cos(G, G')", +1,
         _mean(tags.prefix(tags.ICS, "cosine")), "ics"),
        (8, "mean over training of log10 loss variation along the gradient", -1,
         _mean_log10(tags.landscape("loss_variation")), "landscape"),
        (8, "mean over training of log10 gradient predictiveness ||g - g_eta||", -1,
         _mean_log10(tags.landscape("gradient_predictiveness")), "landscape"),
        (8, "mean over training of log10 effective beta-smoothness", -1,
         _mean_log10(tags.landscape("beta_smoothness")), "landscape"),
    ]
    measures = []
    for claim, name, better, value, instrument in specs:
        if instrument in ON_REQUEST and instrument not in study.config.log.instruments:
            continue  # claims 7 and 8 appear where a study asked for their instruments
        for level, chosen in _levels(study, claim):
            effect = _effect(study.pairs(arm, **chosen), value, better)
            note = (f"no data: the {instrument} instrument was off or recorded too little "
                    f"(lower log.{instrument}_every)" if instrument and not effect.n else "")
            measures.append(Measure(claim, name, better, effect, note, level))
    measures += _saturating_measures(study, arm)
    measures += [m for level, chosen in _levels(study, 10)
                 for m in _learning_rate_measures(study, arm, level, chosen)]
    if "ics" in study.config.log.instruments:
        measures += _noise_measures(study, arm)
    measures.sort(key=lambda m: m.claim)
    return [dataclasses.replace(m, effect=effect)
            for m, effect in zip(measures, holm_adjusted([m.effect for m in measures]))]


def _levels(study, claim):
    """``(level label, levels to select)`` a claim's measures are taken on: all pairs
    pooled, then for `PER_LEVEL_CLAIMS` each level of the `PER_LEVEL_FACTORS` the study varies."""
    split = [f for f in PER_LEVEL_FACTORS if f in study.compared and len(study.factors[f]) > 1]
    return [("", {}), *((f"{f}={level}", {f: level}) for f in split for level in study.factors[f]
                        if claim in PER_LEVEL_CLAIMS)]


def claim_verdicts(measures, level=""):
    """Claim number -> its verdict from its measures (`tfbn.report.stats.combine`);
    `NOT_TESTED` when none of its measures has a pair.

    Args:
        measures: Summary II's `Measure` list.
        level: The pooled measures' verdicts (empty), or those of one ``<factor>=<level>``.
    """
    tested = {m.claim for m in measures if m.level == level and m.effect.n}
    return {claim: combine(sides) if claim in tested else NOT_TESTED
            for claim, sides in claim_sides(measures, level).items()}


def level_verdicts(measures):
    """Claim number -> {``<factor>=<level>``: verdict} for the claims measured per level."""
    verdicts = {}
    for level in dict.fromkeys(m.level for m in measures if m.level):
        for claim, verdict in claim_verdicts(measures, level).items():
            verdicts.setdefault(claim, {})[level] = verdict
    return verdicts


def claim_sides(measures, level=""):
    """Claim number -> {verdict: names of the claim's measures with it}, in measure order:
    the pooled measures' (``level`` empty), or those of one ``<factor>=<level>``."""
    sides = {}
    for m in measures:
        if m.level == level:
            sides.setdefault(m.claim, {}).setdefault(m.effect.verdict, []).append(m.name)
    return sides


def _saturating_measures(study, arm):
    if "activation" in study.compared:
        levels = [a for a in study.factors["activation"] if a in SATURATING]
        pairs = [p for a in levels for p in study.pairs(arm, activation=a)]
        note = f"activation {', '.join(levels)}" if levels else "no saturating activation in this study"
    elif study.config.model.activation in SATURATING:
        pairs, note = study.pairs(arm), f"all trials use {study.config.model.activation}"
    else:
        pairs, note = [], "no saturating activation in this study"
    return [Measure(6, "final test accuracy, saturating nonlinearities", +1,
                    _effect(pairs, final_accuracy, +1), note)]


def _learning_rate_measures(study, arm, level="", chosen=None):
    """Claim 10: the largest learning rate each arm tolerates, per seed and other levels
    (those of ``chosen`` only, labelled ``level``)."""
    chosen = chosen or {}
    rates = sorted(map(float, study.factors.get("learning_rate", ())))
    name = "log10 of the largest learning rate that reached the threshold without diverging"
    if len(rates) < 2:  # said once, not per level
        return [] if level else [Measure(10, name, +1, paired_effect([], [], +1),
                                         f"not tested by this study: {LEARNING_RATE_CONFIG} sweeps "
                                         "the learning rate")]
    # A group that no rate trains counts one decade below the grid.
    floor = math.log10(rates[0]) - 1
    reached = _reached(study)

    def tolerated(trials):
        groups = {}
        for t in trials:
            key = tuple((f, v) for f, v in t.levels.items() if f not in ("bn", "learning_rate"))
            groups.setdefault(key, []).append(t)
        return {key: max((math.log10(float(t.levels["learning_rate"])) for t in group
                          if t.status == "ok" and not math.isnan(reached(t))), default=floor)
                for key, group in groups.items()}

    treated = tolerated(study.select(**chosen, bn=arm))
    control = tolerated(study.select(**chosen, bn=CONTROL))
    keys = [k for k in treated if k in control]
    top = next(level for level in study.factors["learning_rate"] if float(level) == rates[-1])
    return [Measure(10, name, +1, paired_effect([treated[k] for k in keys], [control[k] for k in keys], +1),
                    f"rates {', '.join(f'{r:g}' for r in rates)}; none trained: {10 ** floor:g}", level),
            Measure(10, "final test accuracy, highest learning rate", +1,
                    _effect(study.pairs(arm, **chosen, learning_rate=top), final_accuracy, +1),
                    f"learning_rate {top}", level)]


def _reached(study):
    """Per trial: the step it reached the threshold at, NaN if never: the absolute threshold's,
    else the relative one's."""
    if thresholds(study.config)[0] is not None:
        return lambda trial: trial.number("steps_to_threshold")
    return relative_steps(study)


def _noise_measures(study, arm):
    """Claim 9, noisy BN against BN (Santurkar et al. 2018): the noise raises the
    covariate shift by design; if a low shift were why BN helps, it would cost
    accuracy and speed as well."""
    if NOISY not in study.arms or arm == NOISY:
        return []
    pairs = study.pairs(NOISY, against=arm)
    note = f"noisy minus {arm}"
    return [Measure(9, "mean over training and layers of log10 ||G - G'|| (the noise's effect)", +1,
                    _effect(pairs, _mean_log10(ICS_L2), +1), note),
            Measure(9, "final test accuracy", -1, _effect(pairs, final_accuracy, -1), note),
            # BN's moving statistics were gathered with the noise on, and evaluation has it
            # off; with each test batch's own statistics that mismatch is gone.
            Measure(9, "final test accuracy, test-batch statistics", -1,
                    _effect(pairs, _batch_statistics_accuracy, -1), note),
            Measure(9, "steps to threshold (never reached: train.steps)", +1,
                    _effect(pairs, _never_as_total(study, _reached(study)), +1), note)]


def _batch_statistics_accuracy(trial):
    return trial.number("final_accuracy_batch_stats")


def _values(trial, prefix):
    """Every finite value of the trial's scalar tags that start with ``prefix``."""
    return np.concatenate([trial.scalar(t)[1] for t in sorted(trial.tags(prefix))] or [[]])


def _mean(prefix):
    """Per trial: the mean of every finite value of the scalar tags that start with ``prefix``."""
    def mean(trial):
        values = _values(trial, prefix)
        return float(np.mean(values)) if len(values) else math.nan
    return mean


def _mean_log10(prefix):
    """Per trial: the mean log10 of the positive values of the scalar tags that start with ``prefix``."""
    def mean(trial):
        values = _values(trial, prefix)
        values = values[values > 0]
        return float(np.mean(np.log10(values))) if len(values) else math.nan
    return mean


def _effect(pairs, measure, better):
    return paired_effect([measure(a) for a, _ in pairs], [measure(b) for _, b in pairs], better)


def _aligned(trial, names):
    """Values of several scalar tags at their common steps, finite everywhere: [steps, tags]."""
    series = [dict(zip(*trial.scalar(tag))) for tag in names]
    steps = sorted(set.intersection(*(set(s) for s in series)))
    return np.array([[s[step] for s in series] for step in steps]).reshape(len(steps), len(names))


def last_hidden_unit(trial):
    """``percentiles/act_<last>/unit_<u>``, the deepest nonlinearity's followed unit."""
    followed = {}  # hidden index -> prefix of the followed unit's tags
    for tag in sorted(trial.tags(tags.prefix(tags.PERCENTILES))):
        _, activation, group, q = tag.split("/")
        if group.startswith("unit_") and q == "p50" and tags.hidden_index(activation):
            followed[tags.hidden_index(activation)] = tag.removesuffix("/p50")
    return followed[max(followed)] if followed else None


def _percentiles(trial, *qs):
    prefix = last_hidden_unit(trial)
    return _aligned(trial, [f"{prefix}/p{q}" for q in qs]) if prefix else np.empty((0, len(qs)))


def _median_drift(trial):
    median = _percentiles(trial, 50)[:, 0]
    return abs(median[-1] - median[0]) if len(median) > 1 else math.nan


def _spread_change(trial):
    values = _percentiles(trial, 15, 85)
    spread = values[:, 1] - values[:, 0]
    return abs(spread[-1] - spread[0]) if len(spread) > 1 else math.nan


def _weight_growth(trial):
    ratios = [values[-1] / values[0] for values in
              (trial.scalar(tag)[1] for tag in sorted(trial.tags(tags.prefix(tags.WEIGHT_NORM))))
              if len(values) > 1 and values[0] > 0]
    return float(np.mean(ratios)) if ratios else math.nan


def _hidden_gradient_tags(trial):
    """``gradients/norm/dense_<i>`` tags, first hidden layer first."""
    hidden = {tags.hidden_index(tags.layer_of(tags.GRADIENT_NORM, t) or ""): t
              for t in trial.tags(tags.prefix(tags.GRADIENT_NORM))}
    return [hidden[i] for i in sorted(i for i in hidden if i)]


def _first_gradient(trial):
    hidden = _hidden_gradient_tags(trial)
    values = trial.scalar(hidden[0])[1] if hidden else np.empty(0)
    values = values[values > 0]
    return float(np.mean(np.log10(values))) if len(values) else math.nan


def _gradient_ratio(trial):
    hidden = _hidden_gradient_tags(trial)
    if len(hidden) < 2:
        return math.nan
    values = _aligned(trial, [hidden[0], hidden[-1]])
    values = values[(values > 0).all(axis=1)]
    return abs(float(np.mean(np.log10(values[:, 0] / values[:, 1])))) if len(values) else math.nan


def _isometry(layer_prefix):
    def distance(trial):
        squares = [t for t in trial.tags(tags.JACOBIAN + "/" + layer_prefix)
                   if t == tags.jacobian(t.split("/")[1], "mean_square")]
        # A spectrum from step 0 only is the initial network's, the same in every arm.
        last = [values[-1] for steps, values in (trial.scalar(t) for t in squares)
                if len(values) and steps[-1] > 0 and values[-1] > 0]
        return float(np.mean(np.abs(np.log(last)))) if last else math.nan
    return distance
