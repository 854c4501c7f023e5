"""BN's effect with a confidence interval and p-value, Holm's adjustment, and verdicts.

An effect is the mean of paired differences (BN arm minus ``none``, one pair
per seed and factor combination) with a t-interval and a two-sided p-value from
`scipy.stats.ttest_rel`. The p-values of one summary table are adjusted
together (`holm_adjusted`), and a measure's verdict comes from its adjusted
p-value.

The verdict rule, stated in every report (`RULE`):

* adjusted p below `ALPHA` and the mean in the claimed direction: *supported*;
* adjusted p below `ALPHA` and the mean in the opposite direction: *contradicted*;
* otherwise (the interval includes zero, or the adjustment lifts p to `ALPHA`
  or above), or with fewer than two pairs: *inconclusive*.

A claim with several measures is *mixed* when some measure supports it and
another contradicts it (`combine`).
"""

import dataclasses
import math

import numpy as np
import scipy.stats

ALPHA = 0.05
CONFIDENCE = 1 - ALPHA
MIN_PAIRS = 2
SUPPORTED, CONTRADICTED, INCONCLUSIVE, MIXED = "supported", "contradicted", "inconclusive", "mixed"
NOT_TESTED = "not tested by this study"  # a claim none of whose measures has a pair

RULE = (f"A measure is *{SUPPORTED}* when the mean paired difference (BN arm minus `none`; "
        "Student's t over the pairs, `scipy.stats.ttest_rel`, whose "
        f"{CONFIDENCE:.0%} confidence interval is shown) differs from zero in the claimed "
        f"direction with p below {ALPHA:g}, *{CONTRADICTED}* when it does so in the opposite "
        f"direction, and *{INCONCLUSIVE}* otherwise (the interval includes zero, or the "
        f"adjustment below lifts p to {ALPHA:g} or above) or with fewer than {MIN_PAIRS} pairs; "
        "when all differences are equal the interval collapses to that value and p is 0 "
        "(1 when the value is 0). "
        "Each summary table gives the raw p-value and the Holm-adjusted one across the tests "
        "of that table, and the verdicts use the adjusted one. "
        f"A claim is *{MIXED}* when at least one of its measures is {SUPPORTED} and at least one "
        f"{CONTRADICTED}, otherwise {SUPPORTED} or {CONTRADICTED} when at least one measure "
        f"is, and {INCONCLUSIVE} when none is.")


@dataclasses.dataclass(frozen=True)
class Effect:
    """Mean paired difference with its confidence interval, p-values and verdict.

    Attributes:
        n: Number of pairs with a finite value on both sides.
        mean: Mean difference (treated minus control).
        low, high: Bounds of the confidence interval (NaN below `MIN_PAIRS`).
        p: Two-sided p-value of the paired t-test (NaN below `MIN_PAIRS`).
        p_adjusted: ``p`` after `holm_adjusted` across the effect's table;
            ``p`` itself for an effect tested alone.
        better: ``+1`` if the claim says the treatment raises the value,
            ``-1`` if it lowers it.
        verdict: `SUPPORTED`, `CONTRADICTED` or `INCONCLUSIVE`, from ``p_adjusted``.
    """

    n: int
    mean: float
    low: float
    high: float
    p: float
    p_adjusted: float
    better: int
    verdict: str


def paired_effect(treated, control, better):
    """The effect of the treatment on paired measurements, tested alone.

    Args:
        treated: Values of the BN arm, one per pair.
        control: Values of the ``none`` arm, in the same pair order.
        better: ``+1`` if the claim says the treatment raises the value,
            ``-1`` if it lowers it.

    Returns:
        An `Effect` whose ``p_adjusted`` is ``p``; pairs with a non-finite
        value on either side are dropped.
    """
    treated, control = np.asarray(treated, float), np.asarray(control, float)
    finite = np.isfinite(treated) & np.isfinite(control)
    treated, control = treated[finite], control[finite]
    differences = treated - control
    n = len(differences)
    mean = float(differences.mean()) if n else math.nan
    low = high = p = math.nan
    if n >= MIN_PAIRS and np.ptp(differences) == 0:
        low = high = mean  # no spread: the t-interval is undefined, the mean is exact
        p = 0.0 if mean else 1.0
    elif n >= MIN_PAIRS:
        result = scipy.stats.ttest_rel(treated, control)
        low, high = result.confidence_interval(CONFIDENCE)
        p = float(result.pvalue)
    return Effect(n, mean, float(low), float(high), p, p, better, verdict(mean, p, better))


def verdict(mean, p, better):
    """`SUPPORTED` or `CONTRADICTED` by the sign of ``mean`` when ``p < ALPHA``, else `INCONCLUSIVE`."""
    if math.isnan(p) or p >= ALPHA:
        return INCONCLUSIVE
    return SUPPORTED if (mean > 0) == (better > 0) else CONTRADICTED


def holm(p_values):
    """Holm's step-down adjustment of p-values for multiple comparisons.

    The i-th smallest of the m p-values (0-based i) is multiplied by m - i;
    each adjusted value is the running maximum of these products in
    ascending order of p, capped at 1. This controls the family-wise error
    rate under any dependence between the tests.

    Args:
        p_values: A sequence of m p-values (no NaN).

    Returns:
        A list of the m adjusted p-values, in the order of ``p_values``.
    """
    m = len(p_values)
    adjusted = [0.0] * m
    running = 0.0
    for i, k in enumerate(sorted(range(m), key=lambda k: p_values[k])):
        running = max(running, min(1.0, (m - i) * p_values[k]))
        adjusted[k] = running
    return adjusted


def holm_adjusted(effects):
    """The effects of one table with Holm-adjusted p-values and the verdicts from them.

    An effect without a p-value (fewer than `MIN_PAIRS` pairs) is no test:
    it keeps NaN and does not count among the m tests.
    """
    tested = [i for i, e in enumerate(effects) if not math.isnan(e.p)]
    adjusted = dict(zip(tested, holm([effects[i].p for i in tested])))
    return [dataclasses.replace(e, p_adjusted=adjusted.get(i, math.nan),
                                verdict=verdict(e.mean, adjusted.get(i, math.nan), e.better))
            for i, e in enumerate(effects)]


def combine(verdicts):
    """One claim's verdict from its measures' verdicts.

    Mixed when some measure supports the claim and another contradicts it;
    otherwise supported or contradicted when some measure is; inconclusive
    when none is.
    """
    verdicts = set(verdicts)
    if {SUPPORTED, CONTRADICTED} <= verdicts:
        return MIXED
    return next((v for v in (SUPPORTED, CONTRADICTED) if v in verdicts), INCONCLUSIVE)
