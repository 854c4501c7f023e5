"""The noise of noisy BN: a deliberate shift of each unit's input distribution.

Santurkar, Tsipras, Ilyas & Madry (2018) put noise after BN that moves the
distribution each unit sees at every step, so that the network trains with
a large internal covariate shift despite BN. `DistributionShift` is that
noise: at every training call each unit's values are multiplied by a scale
and offset by a shift, both drawn afresh per unit (one draw for the whole
batch, so the distribution moves rather than gaining per-example noise)
from uniform distributions; at evaluation it is the identity.

Evaluation with test-batch statistics calls a network in training mode so that
BN normalizes by the batch; `suspended` keeps the noise off there.
"""

import contextlib
import contextvars

import keras

# Read when a call is traced: a tf.function traced inside `suspended` has no noise.
_SUSPENDED = contextvars.ContextVar("tfbn_noise_suspended", default=False)


@contextlib.contextmanager
def suspended():
    """Makes every `DistributionShift` the identity in the calls made inside it, training ones too.

    Keras passes one ``training`` flag to all layers; evaluating with BN's
    batch statistics needs training mode for BN and evaluation for the noise.

    Example:

    ```python
    with tfbn.noise.suspended():
        logits = model(x_test_batch, training=True)  # BN by batch statistics, no noise
    ```
    """
    token = _SUSPENDED.set(True)
    try:
        yield
    finally:
        _SUSPENDED.reset(token)


@keras.saving.register_keras_serializable(package="tfbn")
class DistributionShift(keras.layers.Layer):
    """Scales and shifts each unit by amounts drawn afresh at every training step.

    Args:
        shift: ``(low, high)`` of the uniform shift; the default ``(0, 1)`` has
            mean 0.5, so the unit's mean moves away from BN's zero.
        scale: ``(low, high)`` of the uniform scale; the default ``(1, 2)``
            multiplies BN's unit variance by 1 to 4.
        seed: Seed of the draws; the same seed gives the same sequence of draws.
    """

    def __init__(self, shift=(0.0, 1.0), scale=(1.0, 2.0), seed=None, **kwargs):
        super().__init__(**kwargs)
        self.shift, self.scale, self.seed = tuple(shift), tuple(scale), seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=False):
        if not training or _SUSPENDED.get():
            return inputs
        units = (inputs.shape[-1],)
        scale = keras.random.uniform(units, *self.scale, seed=self.seed_generator)
        shift = keras.random.uniform(units, *self.shift, seed=self.seed_generator)
        return inputs * scale + shift

    def get_config(self):
        return {**super().get_config(), "shift": self.shift, "scale": self.scale, "seed": self.seed}
