"""Per-layer gradient norms over training (claim 4: BN tackles vanishing gradients)."""

import numpy as np

from tfbn import instruments, structure, tags
from tfbn.callbacks.periodic import Periodic


class Gradients(Periodic):
    """Logs the gradient of the loss with respect to each kernel of a Dense or convolution layer.

    Measures any model with such layers. A `tfbn.models.MLP` (from
    `tfbn.build_mlp`) keeps the gradient its optimizer applied in the step
    that brought the step count to the logged step, and that is the one
    logged; no second backward pass runs. Other models need ``sample``: at
    each write, the gradient of the compiled loss on the sample's batch for
    that step (`tfbn.instruments.kernel_gradients`, BN by the batch's
    statistics), a second backward pass.

    Tags: ``gradients/norm/<layer>`` (L2 norm) and ``gradients/mean_abs/<layer>``
    (mean absolute value) scalars, and ``gradients/values/<layer>`` histograms.

    With a ``sample``, it also writes when training begins, before any step
    has applied a gradient: the initial network's gradient on the sample's
    batch for that step, so that the initial value is visible.

    Args:
        log_dir: The run directory, or an `events.Writer` shared with other callbacks.
        every: Training steps between two writes.
        sample: A `tfbn.callbacks.TrainingSample` or `tfbn.callbacks.ProbeBatch`:
            ``sample.batch(step)`` gives ``(x, y)``; None for an MLP that
            should not write at the start.
    """

    def __init__(self, log_dir, every, sample=None):
        super().__init__(log_dir, every)
        self.sample = sample
        self.log_at_start = sample is not None

    def on_train_begin(self, logs=None):
        if not self._records_gradients() and self.sample is None:
            raise TypeError(f"Gradients needs a tfbn.models.MLP (from tfbn.build_mlp), which keeps the "
                            f"gradients it applies, or sample= a batch to differentiate the loss on; "
                            f"got a {type(self.model).__name__} and no sample")
        super().on_train_begin(logs)

    def unmeasurable(self):
        if structure.kernel_layers(self.model):
            return None
        return f"model {self.model.name!r} has no Dense or convolution layer"

    def probe_inputs(self):
        return None if self.sample is None else self.sample.x

    def measure(self):
        step = self._step()
        if self._records_gradients() and step != self._first_step:
            gradients = {name: v.numpy() for name, v in self.model.kernel_gradients.items()}
        else:  # no step has applied a gradient yet, or the model keeps none
            gradients = instruments.kernel_gradients(self.model, *self.sample.batch(step))
        scalars, histograms = {}, {}
        for name, gradient in gradients.items():
            scalars[tags.gradient_norm(name)] = np.linalg.norm(gradient)
            scalars[tags.gradient_mean_abs(name)] = np.abs(gradient).mean()
            histograms[tags.gradient(name)] = gradient
        return scalars, histograms

    def _records_gradients(self):
        return hasattr(self.model, "kernel_gradients")
