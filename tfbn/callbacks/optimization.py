"""Santurkar et al.'s (2018) probes over training: internal covariate shift
(claim 7) and the smoothness of the loss along the gradient (claim 8)."""

import dataclasses

import keras
import numpy as np

from tfbn import tags
from tfbn.callbacks.periodic import Periodic
from tfbn.instruments import internal_covariate_shift, landscape_smoothness


@dataclasses.dataclass(frozen=True)
class TrainingSample:
    """The training batches the probes measure on.

    The probes need a training batch, not the probe set of test inputs: the
    batch at step ``t`` is ``batch_size`` training examples drawn without
    replacement by a generator seeded with ``(seed, t)``, so trials with the
    same seed are probed on the same batches whatever their arm.

    Attributes:
        x, y: The training inputs and their integer labels (NumPy arrays).
        batch_size: Examples per batch, the training batch size.
        seed: The trial's ``train.seed``.
    """

    x: np.ndarray
    y: np.ndarray
    batch_size: int
    seed: int

    def batch(self, step):
        rng = np.random.default_rng([self.seed, step])
        chosen = rng.choice(len(self.y), self.batch_size, replace=False)
        return self.x[chosen], self.y[chosen]


def mean_cross_entropy(y, logits):
    """The training loss of `tfbn.models.MLP` and `tfbn.packed.PackedModel` branches."""
    return keras.ops.mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))


class _OptimizationProbe(Periodic):
    """A probe of the training loss on the `TrainingSample` batch of each written step,
    with the model's own optimizer; training is unchanged.

    Args:
        log_dir: The run directory the event file goes to.
        sample: A `TrainingSample`.
        every: Training steps between two writes.
    """

    def __init__(self, log_dir, sample, every):
        super().__init__(log_dir, every)
        self.sample = sample

    def on_train_begin(self, logs=None):
        if getattr(self.model, "optimizer", None) is None:
            raise TypeError(f"{type(self).__name__} needs the model's optimizer (model.optimizer): "
                            "its update is part of the measurement")
        super().on_train_begin(logs)

    def measure(self):
        return self.probe(*self.sample.batch(self._step())), {}

    def probe(self, x, y):
        """The scalars of the probe on the training batch ``(x, y)``."""
        raise NotImplementedError


class CovariateShift(_OptimizationProbe):
    """Logs each Dense layer's internal covariate shift (Santurkar et al. 2018, definition 2.1).

    Computed by `tfbn.instruments.internal_covariate_shift`. Tags:
    ``ics/l2/<layer>`` (``||G - G'||``) and ``ics/cosine/<layer>`` scalars;
    ``dense_1`` has nothing before it and is left out. Arguments as
    `_OptimizationProbe`'s.
    """

    def probe(self, x, y):
        scalars = {}
        for layer, shift in internal_covariate_shift(self.model, x, y, mean_cross_entropy).items():
            if layer != "dense_1":
                scalars[tags.ics("l2", layer)] = shift["l2"]
                scalars[tags.ics("cosine", layer)] = shift["cosine"]
        return scalars


class LandscapeSmoothness(_OptimizationProbe):
    """Logs how smooth the loss is along its gradient (Santurkar et al. 2018, section 3.1).

    Computed by `tfbn.instruments.landscape_smoothness` at step sizes
    `tfbn.instruments.LANDSCAPE_STEPS` times the optimizer's learning rate.
    Tags: ``landscape/loss_variation``, ``landscape/gradient_predictiveness``
    and ``landscape/beta_smoothness``. Arguments as `_OptimizationProbe`'s.
    """

    def probe(self, x, y):
        measured = landscape_smoothness(self.model, x, y, loss=mean_cross_entropy)
        return {tags.landscape(name): value for name, value in measured.items()}
