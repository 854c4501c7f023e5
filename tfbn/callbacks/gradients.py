"""Per-layer gradient norms over training (claim 4: BN tackles vanishing gradients)."""

import numpy as np

from tfbn.callbacks.periodic import Periodic


class Gradients(Periodic):
    """Logs the gradient of the loss with respect to each Dense kernel.

    The gradient is the one the optimizer applied in the step that brought
    the step count to the logged step, as `tfbn.models.MLP` keeps it; no
    second backward pass runs.

    Tags: ``grad_norm/<layer>`` (L2 norm) and ``grad_mean_abs/<layer>`` (mean
    absolute value) scalars, and ``grad/<layer>`` histograms.

    Args:
        log_dir: The run directory the event file goes to.
        every: Training steps between two writes.
    """

    log_at_start = False  # no gradient has been computed yet

    def on_train_begin(self, logs=None):
        if not hasattr(self.model, "kernel_gradients"):
            raise TypeError(f"Gradients needs a tfbn.models.MLP (from tfbn.build_mlp), "
                            f"got {type(self.model).__name__}")
        super().on_train_begin(logs)

    def measure(self):
        scalars, histograms = {}, {}
        for name, variable in self.model.kernel_gradients.items():
            gradient = variable.numpy()
            scalars[f"grad_norm/{name}"] = np.linalg.norm(gradient)
            scalars[f"grad_mean_abs/{name}"] = np.abs(gradient).mean()
            histograms[f"grad/{name}"] = gradient
        return scalars, histograms
