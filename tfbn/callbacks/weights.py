"""Weight histograms and kernel norms over training (claim 3: BN restrains weight growth)."""

import keras
import numpy as np

from tfbn import tags
from tfbn.callbacks.periodic import Periodic


class Weights(Periodic):
    """Logs the weights of every Dense and BN layer every ``every`` steps.

    Tags: ``weights/values/<dense layer>/kernel`` and ``weights/values/<bn
    layer>/<gamma, beta, moving_mean, moving_variance>`` histograms (every
    weight of any other layer that has weights, too), and
    ``weights/norm/<dense layer>`` scalars (L2 norm of the kernel).

    Keras's `keras.callbacks.TensorBoard` writes weight histograms only at
    epoch ends against the epoch index; `tfbn.training` runs one epoch per
    evaluation period, so it would neither reach step 0 nor use the
    training step.

    Args:
        log_dir: The run directory the event file goes to.
        every: Training steps between two writes.
    """

    def measure(self):
        scalars, histograms = {}, {}
        for layer in self.model.layers:
            if isinstance(layer, keras.layers.Dense):
                kernel = layer.kernel.numpy()
                histograms[tags.weights(layer.name, "kernel")] = kernel
                scalars[tags.weight_norm(layer.name)] = np.linalg.norm(kernel)
            else:  # BN's gamma, beta and moving statistics; layers without weights add none
                for variable in layer.weights:
                    histograms[tags.weights(layer.name, variable.name)] = variable.numpy()
        return scalars, histograms
