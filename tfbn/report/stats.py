"""BN's effect with a confidence interval, and the verdict on a claim.

An effect is the mean of paired differences (BN arm minus ``none``, one pair
per seed and factor combination) with a t-interval from `scipy.stats.ttest_rel`.

The verdict rule, stated in every report (`RULE`):

* the 95% interval excludes zero in the claimed direction: *supported*;
* it excludes zero in the opposite direction: *contradicted*;
* otherwise, or with fewer than two pairs: *inconclusive*.
"""

import dataclasses
import math

import numpy as np
import scipy.stats

CONFIDENCE = 0.95
MIN_PAIRS = 2
SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"

RULE = (f"A claim's measure is *{SUPPORTED}* when the {CONFIDENCE:.0%} confidence interval of the "
        "mean paired difference (BN arm minus `none`; Student's t over the pairs, "
        "`scipy.stats.ttest_rel`) excludes zero in the claimed direction, "
        f"*{CONTRADICTED}* when it excludes zero in the opposite direction, and "
        f"*{INCONCLUSIVE}* otherwise or with fewer than {MIN_PAIRS} pairs. When all differences "
        "are equal the interval collapses to that value. Each measure is tested on its own, "
        "with no correction for the number of tests.")


@dataclasses.dataclass(frozen=True)
class Effect:
    """Mean paired difference with its confidence interval and verdict.

    Attributes:
        n: Number of pairs with a finite value on both sides.
        mean: Mean difference (treated minus control).
        low, high: Bounds of the confidence interval (NaN below `MIN_PAIRS`).
        p: Two-sided p-value of the paired t-test (NaN when undefined).
        verdict: `SUPPORTED`, `CONTRADICTED` or `INCONCLUSIVE`.
    """

    n: int
    mean: float
    low: float
    high: float
    p: float
    verdict: str


def paired_effect(treated, control, better):
    """The effect of the treatment on paired measurements.

    Args:
        treated: Values of the BN arm, one per pair.
        control: Values of the ``none`` arm, in the same pair order.
        better: ``+1`` if the claim says the treatment raises the value,
            ``-1`` if it lowers it.

    Returns:
        An `Effect`; pairs with a non-finite value on either side are dropped.
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
    elif n >= MIN_PAIRS:
        result = scipy.stats.ttest_rel(treated, control)
        low, high = result.confidence_interval(CONFIDENCE)
        p = float(result.pvalue)
    return Effect(n, mean, float(low), float(high), p, verdict(low, high, better))


def verdict(low, high, better):
    """`SUPPORTED`, `CONTRADICTED` or `INCONCLUSIVE` for an interval and a claimed sign."""
    if math.isnan(low) or math.isnan(high) or low <= 0 <= high:
        return INCONCLUSIVE
    return SUPPORTED if (low > 0) == (better > 0) else CONTRADICTED


def combine(verdicts):
    """One claim's verdict from its measures' verdicts.

    Supported when some measure supports it and none contradicts it,
    contradicted in the mirror case, inconclusive otherwise.
    """
    verdicts = set(verdicts)
    if SUPPORTED in verdicts and CONTRADICTED not in verdicts:
        return SUPPORTED
    if CONTRADICTED in verdicts and SUPPORTED not in verdicts:
        return CONTRADICTED
    return INCONCLUSIVE
