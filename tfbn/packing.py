"""Which design points train together: packs of branches, branches of trials.

Points that share the training data selected, ``batch_size``, ``steps`` and
``eval_every`` can train as branches of one `tfbn.packed.PackedModel`, whatever
their ``train.seed``: each branch draws its own seed's batches from the one
training split. Points that differ only in the test split
(``data.test_ratio``) are one branch: one trained network, evaluated on each
point's own test split. ``train.pack`` bounds the branches per pack; a stream
with more branches splits into packs of equal size (within one), the branches
of one seed side by side, so that a seed's arms train together and packs of
whole seeds have the same shapes (and one compiled model, `tfbn.training`).

The plan is a pure function of the config, so a resumed study proposes the
same packs in the same order: the design's order of each pack's first point,
or, with several ``distribute.parallel_trials`` workers, the longest packs
first (by `estimated_cost`), so that no worker starts a long pack while the
others run out of work.
"""

import dataclasses
import math

from tfbn.config import factor_field
from tfbn.design import apply_factors, run_name

# Branches per pack with `train.pack: auto`. On 2 CPU cores, in steady state (graph
# traced, batch 64), the CPU time per branch-step fell from about 2.0 ms alone to 1.2 ms
# in a pack of 6 and 0.9 ms in a pack of 15; bench/bench_study.py, whose 2,000-step
# calls include tracing, favours 3 over 15 at batch 4 and 64 and 15 at batch 256.
# 18 keeps the 18 branches of one seed of the course project's study in one pack; a
# 9-branch pack measured the same CPU time per branch-step as an 18-branch one (single
# thread, 4,000 steps: 38 s against 75 s), so sharing them among workers costs nothing.
AUTO_BRANCHES = 18

# Per-branch cost of a step beyond its examples (the tail's small operations, the
# evaluations, the instruments), in examples' worth: the whole course2017_study's
# 3-branch packs at batch 4, 16 and 256 and 9-branch packs at batch 64 took 51, 62, 178
# and 255 s (two workers on 2 cores), which branches x (batch + 100) matches within 10%.
BRANCH_STEP_EXAMPLES = 100


@dataclasses.dataclass(frozen=True)
class Pack:
    """Design points to train together.

    Attributes:
        branches: Tuple of branches, each a tuple of design points that
            differ only in the test split and so share one training.
    """

    branches: tuple
    steps: int = 0
    batch_size: int = 0

    @property
    def points(self):
        return [point for branch in self.branches for point in branch]

    @property
    def estimated_cost(self):
        """Relative training time: steps x branches x (batch size + `BRANCH_STEP_EXAMPLES`)."""
        return self.steps * len(self.branches) * (self.batch_size + BRANCH_STEP_EXAMPLES)

    @property
    def name(self):
        """Names the pack by its trials' run names, e.g. ``bn=none+bn=before``."""
        return "+".join(run_name(point) for point in self.points)


# Keys whose one value a pack applies to all its branches: the batch size of its
# evaluations, and the packing itself.
PACK_KEYS = (("train", "eval_batch_size"), ("train", "pack"))


def _trains_alone(trial, point):
    """Whether a design point trains in a pack of its own: its network is the user's
    (``model.builder``; the packing equivalence tests cover `tfbn.build_mlp`'s
    networks only), or it varies one of `PACK_KEYS`."""
    return trial.model.builder is not None or any(factor_field(name) in PACK_KEYS for name in point)


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


def _split(seeds, limit, train):
    """Splits the branches of a stream into the fewest packs of at most ``limit``, as equal
    in size as can be.

    Args:
        seeds: Per seed, its branches. Where every seed has as many branches and
            they fit in a pack, packs hold whole seeds (as many seeds each as can
            be), so that their shapes repeat.
        limit: Branches per pack, at most.
        train: The stream's train section.
    """
    sizes = {len(branches) for branches in seeds}
    if len(sizes) == 1 and max(sizes) <= limit:
        units, per_pack = seeds, limit // max(sizes)
    else:
        units, per_pack = [[branch] for branches in seeds for branch in branches], limit
    count = math.ceil(len(units) / per_pack)
    size, larger = divmod(len(units), count)
    packs, start = [], 0
    for i in range(count):
        end = start + size + (i < larger)
        branches = tuple(branch for unit in units[start:end] for branch in unit)
        packs.append(Pack(branches, train.steps, train.batch_size))
        start = end
    return packs


def plan_packs(config, points):
    """Groups a study's design points into packs, in design order (longest first for workers).

    Args:
        config: The study's `tfbn.config.Config`.
        points: Its design points (`tfbn.design.design_points`).

    Returns:
        A list of `Pack`s that holds every point exactly once.
    """
    limit = max_branches(config)
    streams = {}  # stream key -> {branch key -> [points]}, both in first-seen order
    trains = {}  # stream key -> the train section its points share
    for point in points:
        trial = apply_factors(config, point)
        data = dataclasses.replace(trial.data, test_ratio=None, max_test_per_class=None)
        stream = (data, trial.train.batch_size, trial.train.steps, trial.train.eval_every)
        if _trains_alone(trial, point):
            stream += (run_name(point),)  # a stream, and so a pack, of its own
        network = (trial.model, trial.train)
        streams.setdefault(stream, {}).setdefault(network, []).append(point)
        trains.setdefault(stream, trial.train)
    packs = []
    for stream, branches in streams.items():
        seeds = {}  # seed -> its branches, both in first-seen order
        for (model, train), branch in branches.items():
            seeds.setdefault(train.seed, []).append(tuple(branch))
        packs += _split(list(seeds.values()), limit, trains[stream])
    first = {run_name(point): position for position, point in enumerate(points)}
    packs.sort(key=lambda pack: first[run_name(pack.points[0])])
    if config.distribute.parallel_trials > 1:
        packs.sort(key=lambda pack: -pack.estimated_cost)  # stable: design order among equals
    return packs
