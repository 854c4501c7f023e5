"""Santurkar et al.'s (2018) probes over training: internal covariate shift
(claim 7) and the smoothness of the loss along the gradient (claim 8)."""

import dataclasses

import numpy as np

from tfbn import structure, tags
from tfbn.callbacks.periodic import Periodic
from tfbn.instruments import internal_covariate_shift, landscape_smoothness, mean_cross_entropy  # noqa: F401


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
        """``(x, y)``: the batch probed at training step ``step``."""
        rng = np.random.default_rng([self.seed, step])
        chosen = rng.choice(len(self.y), self.batch_size, replace=False)
        return self.x[chosen], self.y[chosen]


@dataclasses.dataclass(frozen=True)
class ProbeBatch:
    """One fixed batch that the probes measure on at every step, for `tfbn.callbacks.instruments`.

    Attributes:
        x, y: The inputs and their labels, as the model's loss expects them.
    """

    x: np.ndarray
    y: np.ndarray

    def batch(self, step):
        """``(x, y)``, the same at every step."""
        return self.x, self.y


class _OptimizationProbe(Periodic):
    """A probe of the training loss on the sample's batch of each written step, with
    the model's own optimizer and compiled loss (see `tfbn.instruments`); training is unchanged.

    Args:
        log_dir: The run directory, or an `events.Writer` shared with other callbacks.
        sample: A `TrainingSample` or a `ProbeBatch`.
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

    def probe_inputs(self):
        return self.sample.x

    def measure(self):
        return self.probe(*self.sample.batch(self._step())), {}

    def probe(self, x, y):
        """The scalars of the probe on the training batch ``(x, y)``."""
        raise NotImplementedError


class CovariateShift(_OptimizationProbe):
    """Logs each kernel layer's internal covariate shift (Santurkar et al. 2018, definition 2.1).

    Measures any model with two or more Dense or convolution layers.
    Computed by `tfbn.instruments.internal_covariate_shift`. Tags:
    ``ics/l2/<layer>`` (``||G - G'||``) and ``ics/cosine/<layer>`` scalars;
    the first kernel layer (``dense_1``) has nothing before it and is left
    out. Arguments as `_OptimizationProbe`'s.
    """

    def unmeasurable(self):
        if len(structure.kernel_layers(self.model)) > 1:
            return None
        return f"model {self.model.name!r} has fewer than two Dense or convolution layers"

    def probe(self, x, y):
        first = structure.kernel_layers(self.model)[0].name
        scalars = {}
        for layer, shift in internal_covariate_shift(self.model, x, y).items():
            if layer != first:
                scalars[tags.ics("l2", layer)] = shift["l2"]
                scalars[tags.ics("cosine", layer)] = shift["cosine"]
        return scalars


class LandscapeSmoothness(_OptimizationProbe):
    """Logs how smooth the loss is along its gradient (Santurkar et al. 2018, section 3.1).

    Measures any model with trainable weights.
    Computed by `tfbn.instruments.landscape_smoothness` at step sizes
    `tfbn.instruments.LANDSCAPE_STEPS` times the optimizer's learning rate.
    Tags: ``landscape/loss_variation``, ``landscape/gradient_predictiveness``
    and ``landscape/beta_smoothness``. Arguments as `_OptimizationProbe`'s.
    """

    def unmeasurable(self):
        return None if self.model.trainable_weights else f"model {self.model.name!r} has no trainable weights"

    def probe(self, x, y):
        measured = landscape_smoothness(self.model, x, y)
        return {tags.landscape(name): value for name, value in measured.items()}
