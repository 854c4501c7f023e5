"""The TensorBoard tag scheme: the one definition the instruments write and the report,
the layout and the tests read.

Each instrument's tags start with its own name (``gradients/``, ``weights/``,
``jacobian/``, ...); `describe` gives the one-line description that TensorBoard
shows beside a tag (what it measures, which claim), and `current` reads the tag
names of runs written by earlier versions.

Example:

```python
tfbn.tags.gradient_norm("dense_1")          # "gradients/norm/dense_1"
tfbn.tags.layer_of(tfbn.tags.GRADIENT_NORM, "gradients/norm/dense_1")  # "dense_1"
```
"""

import re

# Evaluations (`tfbn.callbacks.StepMetrics`).
TEST_ACCURACY = "accuracy/test"
TEST_LOSS = "loss/test"
TRAIN_LOSS = "loss/train"

# Tag families: prefix + "/" + the rest.
GRADIENT_NORM = "gradients/norm"
GRADIENT_MEAN_ABS = "gradients/mean_abs"
GRADIENT = "gradients/values"
WEIGHT_NORM = "weights/norm"
WEIGHTS = "weights/values"
JACOBIAN = "jacobian"
PERCENTILES = "percentiles"
ICS = "ics"
LANDSCAPE = "landscape"

JACOBIAN_STATISTICS = ("max", "min", "mean", "mean_square", "share_0.5_to_2")
PERCENTILE_GROUPS = ("unit", "all")
LANDSCAPE_MEASURES = ("loss_variation", "gradient_predictiveness", "beta_smoothness")


def gradient_norm(layer):
    return f"{GRADIENT_NORM}/{layer}"


def gradient_mean_abs(layer):
    return f"{GRADIENT_MEAN_ABS}/{layer}"


def gradient(layer):
    return f"{GRADIENT}/{layer}"


def weight_norm(layer):
    return f"{WEIGHT_NORM}/{layer}"


def weights(layer, variable):
    return f"{WEIGHTS}/{layer}/{variable}"


def jacobian(layer, statistic):
    """``jacobian/<layer>/<statistic>``; ``statistic`` is one of `JACOBIAN_STATISTICS` or
    ``singular_values`` (the histogram)."""
    return f"{JACOBIAN}/{layer}/{statistic}"


def percentile(activation, group, q):
    """``percentiles/<layer>/<unit_u or all>/p<q>`` of the input of a layer's nonlinearity
    (``act_i`` in `tfbn.build_mlp`)."""
    return f"{PERCENTILES}/{activation}/{group}/p{q}"


def ics(kind, layer):
    """``ics/<l2 or cosine>/<layer>``."""
    return f"{ICS}/{kind}/{layer}"


def landscape(measure):
    return f"{LANDSCAPE}/{measure}"


def prefix(family, *parts):
    """The prefix every tag of ``family`` (and ``parts``) starts with: ``prefix(ICS, "l2")`` is ``ics/l2/``."""
    return "/".join((family, *parts)) + "/"


def layer_of(family, tag):
    """The layer a ``<family>/<layer>`` tag names, or None for another tag."""
    layer = tag.removeprefix(family + "/")
    return layer if tag.startswith(family + "/") and layer and "/" not in layer else None


# Earlier versions' names: old prefix -> current prefix.
_LEGACY = {"grad_norm/": GRADIENT_NORM + "/", "grad_mean_abs/": GRADIENT_MEAN_ABS + "/",
           "grad/": GRADIENT + "/", "weight_norm/": WEIGHT_NORM + "/"}


def current(tag):
    """A tag under its current name: runs of earlier versions wrote ``grad_norm/dense_1``,
    ``weights/dense_1/kernel`` and the like."""
    for old, new in _LEGACY.items():
        if tag.startswith(old):
            return new + tag.removeprefix(old)
    head, _, rest = tag.partition("/")
    if head == "weights" and not rest.startswith(("norm/", "values/")):
        return f"{WEIGHTS}/{rest}"
    return tag


def hidden_index(layer):
    """``i`` of a hidden block's ``dense_i`` or ``act_i``; None for other layers."""
    match = re.fullmatch(r"(?:dense|act)_(\d+)", layer)
    return int(match.group(1)) if match else None


_DESCRIPTIONS = {
    GRADIENT_NORM: "L2 norm of the loss gradient with respect to this Dense or convolution kernel: "
                   "the one the optimizer applied, or on the probe batch (claim 4)",
    GRADIENT_MEAN_ABS: "mean absolute value of the loss gradient of this Dense or convolution kernel "
                       "(claim 4)",
    GRADIENT: "values of the loss gradient of this Dense or convolution kernel (claim 4)",
    WEIGHT_NORM: "L2 norm of this Dense or convolution kernel (claim 3: does BN regularize weight "
                 "growth?)",
    WEIGHTS: "values of this kernel or BN parameter or statistic (claim 3)",
    JACOBIAN: "singular values of the Jacobian of the block from this kernel layer to the next "
              "(or of the network) over the probe set; mean square 1 is isometry (claim 5)",
    PERCENTILES: "percentile over the probe set of this nonlinearity's input (claim 2, Ioffe "
                 "& Szegedy figure 1)",
    ICS: "internal covariate shift: this layer's kernel gradient before against after the "
         "earlier layers' update, Santurkar et al. definition 2.1 (claim 7)",
    LANDSCAPE: "loss landscape along the gradient over 0.25x to 4x the learning rate, "
               "Santurkar et al. section 3.1 (claim 8)",
    "accuracy": "accuracy: train over the last evaluation period; test on the test split "
                "(test_batch_stats: BN by each test batch's own statistics) (claim 1)",
    "loss": "cross-entropy: train over the last evaluation period; test on the test split (claim 1)",
}


# What each summary number of a Jacobian spectrum is, appended to the family's description.
_JACOBIAN_STATISTICS = {
    "max": "this one: the largest singular value over the probe set",
    "min": "this one: the smallest singular value over the probe set",
    "mean": "this one: the mean singular value over the probe set",
    "mean_square": "this one: the mean squared singular value over the probe set",
    "share_0.5_to_2": "this one: the share of singular values within [0.5, 2], neither "
                      "shrinking nor stretching a direction more than twofold (1: all of them)",
}


def describe(tag):
    """The one-line description of a tag's family, for TensorBoard; empty for unknown tags."""
    families = [family for family in _DESCRIPTIONS if tag.startswith(family + "/")]
    statistic = tag.rpartition("/")[2]
    if tag.startswith(JACOBIAN + "/") and statistic in _JACOBIAN_STATISTICS:
        return f"{_DESCRIPTIONS[JACOBIAN]}; {_JACOBIAN_STATISTICS[statistic]}"
    return _DESCRIPTIONS[max(families, key=len)] if families else ""
