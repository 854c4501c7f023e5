"""Per-layer gradient norms over training (claim 4: BN tackles vanishing gradients)."""

import numpy as np

from tfbn import instruments, tags
from tfbn.callbacks.periodic import Periodic


class Gradients(Periodic):
    """Logs the gradient of the loss with respect to each Dense kernel.

    The gradient is the one the optimizer applied in the step that brought
    the step count to the logged step, as `tfbn.models.MLP` keeps it; no
    second backward pass runs.

    Tags: ``gradients/norm/<layer>`` (L2 norm) and ``gradients/mean_abs/<layer>``
    (mean absolute value) scalars, and ``gradients/values/<layer>`` histograms.

    With a `tfbn.callbacks.TrainingSample`, it also writes when training
    begins, before any step has applied a gradient: the initial network's
    gradient on the sample's batch for that step
    (`tfbn.instruments.kernel_gradients`), so that the initial value is visible.

    Args:
        log_dir: The run directory the event file goes to.
        every: Training steps between two writes.
        sample: A `tfbn.callbacks.TrainingSample`, or None for no write at the start.
    """

    def __init__(self, log_dir, every, sample=None):
        super().__init__(log_dir, every)
        self.sample = sample
        self.log_at_start = sample is not None

    def on_train_begin(self, logs=None):
        if not hasattr(self.model, "kernel_gradients"):
            raise TypeError(f"Gradients needs a tfbn.models.MLP (from tfbn.build_mlp), "
                            f"got {type(self.model).__name__}")
        super().on_train_begin(logs)

    def measure(self):
        if self._step() == self._first_step:  # no step has applied a gradient yet
            gradients = instruments.kernel_gradients(self.model, *self.sample.batch(self._step()))
        else:
            gradients = {name: v.numpy() for name, v in self.model.kernel_gradients.items()}
        scalars, histograms = {}, {}
        for name, gradient in gradients.items():
            scalars[tags.gradient_norm(name)] = np.linalg.norm(gradient)
            scalars[tags.gradient_mean_abs(name)] = np.abs(gradient).mean()
            histograms[tags.gradient(name)] = gradient
        return scalars, histograms
