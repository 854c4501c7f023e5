"""Which design points train together: packs of branches, branches of trials.

Points that share the data stream (the training data selected, ``train.seed``,
``batch_size``, ``steps``, ``eval_every``) can train as branches of one
`tfbn.packed.PackedModel`. Points that differ only in the test split
(``data.test_ratio``) are one branch: one trained network, evaluated on each
point's own test split. ``train.pack`` bounds the branches per pack; a stream
with more branches splits into packs of equal size (within one).

The plan is a pure function of the config, so a resumed study proposes the
same packs in the same order: the design's order of each pack's first point.
"""

import dataclasses
import math

from tfbn.design import apply_factors, run_name

# Branches per pack with `train.pack: auto`. On 2 CPU cores, in steady state (graph
# traced, batch 64), the CPU time per branch-step fell from about 2.0 ms alone to 1.2 ms
# in a pack of 6 and 0.9 ms in a pack of 15; bench/bench_study.py, whose 2,000-step
# calls include tracing, favours 3 over 15 at batch 4 and 64 and 15 at batch 256.
# 18 keeps the 18 branches of one seed of the course project's study in one pack; a
# 9-branch pack measured the same CPU time per branch-step as an 18-branch one (single
# thread, 4,000 steps: 38 s against 75 s), so sharing them among workers costs nothing.
AUTO_BRANCHES = 18


@dataclasses.dataclass(frozen=True)
class Pack:
    """Design points to train together.

    Attributes:
        branches: Tuple of branches, each a tuple of design points that
            differ only in the test split and so share one training.
    """

    branches: tuple

    @property
    def points(self):
        return [point for branch in self.branches for point in branch]

    @property
    def name(self):
        """Names the pack by its trials' run names, e.g. ``bn=none+bn=before``."""
        return "+".join(run_name(point) for point in self.points)


def max_branches(config):
    """Branches per pack for a config's ``train.pack``: ``auto``, ``off`` or a number.

    With ``auto`` and ``distribute.parallel_trials`` workers, the limit is
    `AUTO_BRANCHES` shared among the workers, so that the largest streams
    split into packs for each of them instead of leaving workers idle while
    one trains a large pack.
    """
    setting = config.train.pack
    if setting == "auto":
        return math.ceil(AUTO_BRANCHES / config.distribute.parallel_trials)
    if setting == "off":
        return 1
    return setting


def _split(branches, limit):
    """Splits branches into the fewest packs of at most ``limit``, as equal in size as can be."""
    count = math.ceil(len(branches) / limit)
    size, larger = divmod(len(branches), count)
    packs, start = [], 0
    for i in range(count):
        end = start + size + (i < larger)
        packs.append(Pack(tuple(branches[start:end])))
        start = end
    return packs


def plan_packs(config, points):
    """Groups a study's design points into packs, in design order.

    Args:
        config: The study's `tfbn.config.Config`.
        points: Its design points (`tfbn.design.design_points`).

    Returns:
        A list of `Pack`s that holds every point exactly once.
    """
    limit = max_branches(config)
    streams = {}  # stream key -> {branch key -> [points]}, both in first-seen order
    for point in points:
        trial = apply_factors(config, point)
        data = dataclasses.replace(trial.data, test_ratio=None, max_test_per_class=None)
        stream = (data, trial.train.seed, trial.train.batch_size, trial.train.steps,
                  trial.train.eval_every)
        network = (trial.model, trial.train)
        streams.setdefault(stream, {}).setdefault(network, []).append(point)
    packs = []
    for branches in streams.values():
        branches = [tuple(points) for points in branches.values()]
        packs += _split(branches, limit)
    first = {run_name(point): position for position, point in enumerate(points)}
    return sorted(packs, key=lambda pack: first[run_name(pack.points[0])])
