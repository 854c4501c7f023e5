"""Weight histograms and kernel norms over training (claim 3: BN restrains weight growth)."""

import numpy as np

from tfbn import structure, tags
from tfbn.callbacks.periodic import Periodic


class Weights(Periodic):
    """Logs the weights of every layer every ``every`` steps.

    Measures any model that has weights. Tags: ``weights/values/<kernel
    layer>/kernel`` histograms and ``weights/norm/<kernel layer>`` scalars (L2
    norm of the kernel) for every Dense and convolution layer, and
    ``weights/values/<layer>/<variable>`` histograms of every weight of the
    other layers (BN's gamma, beta, moving_mean and moving_variance). Layers
    of nested models count as the model's own.

    Keras's `keras.callbacks.TensorBoard` writes weight histograms only at
    epoch ends against the epoch index; `tfbn.training` runs one epoch per
    evaluation period, so it would neither reach step 0 nor use the
    training step.

    Args:
        log_dir: The run directory, or an `events.Writer` shared with other callbacks.
        every: Training steps between two writes.
    """

    def unmeasurable(self):
        return None if self.model.weights else f"model {self.model.name!r} has no weights"

    def measure(self):
        scalars, histograms = {}, {}
        kernels = {id(layer) for layer in structure.kernel_layers(self.model)}
        for layer in structure.layers(self.model):
            if id(layer) in kernels:
                kernel = layer.kernel.numpy()
                histograms[tags.weights(layer.name, "kernel")] = kernel
                # In float64: a diverging network's float32 squares overflow (a NumPy warning).
                scalars[tags.weight_norm(layer.name)] = np.linalg.norm(kernel.astype(np.float64))
            else:  # BN's gamma, beta and moving statistics; layers without weights add none
                for variable in layer.weights:
                    histograms[tags.weights(layer.name, variable.name)] = variable.numpy()
        return scalars, histograms
