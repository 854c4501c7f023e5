"""The noise of noisy BN: a deliberate shift of each unit's input distribution.

Santurkar, Tsipras, Ilyas & Madry (2018) put noise after BN that moves the
distribution each unit sees at every step, so that the network trains with
a large internal covariate shift despite BN. `DistributionShift` is that
noise: at every training call each unit's values are multiplied by a scale
and offset by a shift, both drawn afresh per unit (one draw for the whole
batch, so the distribution moves rather than gaining per-example noise)
from uniform distributions; at evaluation it is the identity.
"""

import keras


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
        if not training:
            return inputs
        units = (inputs.shape[-1],)
        scale = keras.random.uniform(units, *self.scale, seed=self.seed_generator)
        shift = keras.random.uniform(units, *self.shift, seed=self.seed_generator)
        return inputs * scale + shift

    def get_config(self):
        return {**super().get_config(), "shift": self.shift, "scale": self.scale, "seed": self.seed}
