"""Batch Renormalization (Ioffe 2017) with the paper's clipping schedule.

Keras's `BatchNormalization(renorm=True)` clips the corrections ``r`` and ``d``
with constants only; the paper starts as plain BN and relaxes the clipping
over training: ``rmax = 1`` and ``dmax = 0`` for the first 5,000 steps, then
linearly up to ``rmax = 3`` at step 40,000 and ``dmax = 5`` at step 25,000.
This layer counts its own training steps to follow that schedule.
"""

import keras
from keras import ops


class BatchRenormalization(keras.layers.Layer):
    """Batch Renormalization over the last axis of a 2-D input.

    In training, with batch mean ``mu_b`` and ``sigma_b = sqrt(var_b + eps)``
    and moving ``mu``, ``sigma``::

        r = stop_gradient(clip(sigma_b / sigma, 1 / rmax, rmax))
        d = stop_gradient(clip((mu_b - mu) / sigma, -dmax, dmax))
        y = gamma * ((x - mu_b) / sigma_b * r + d) + beta

    then ``mu`` and ``sigma`` move towards ``mu_b`` and ``sigma_b`` with
    ``momentum``. In inference ``y = gamma * (x - mu) / sigma + beta``.

    Args:
        momentum: Momentum of the moving mean and standard deviation.
        epsilon: Added to the batch variance.
        warmup_steps: Steps of plain BN (``rmax = 1``, ``dmax = 0``).
        rmax: Final bound of ``r``, reached at step ``rmax_step``.
        rmax_step: Step at which ``rmax`` stops growing.
        dmax: Final bound of ``d``, reached at step ``dmax_step``.
        dmax_step: Step at which ``dmax`` stops growing.
        **kwargs: Passed on to `keras.layers.Layer` (e.g. ``name``).
    """

    def __init__(self, momentum=0.999, epsilon=1e-3, warmup_steps=5000, rmax=3.0,
                 rmax_step=40000, dmax=5.0, dmax_step=25000, **kwargs):
        super().__init__(**kwargs)
        self.momentum = momentum
        self.epsilon = epsilon
        self.warmup_steps = warmup_steps
        self.rmax = rmax
        self.rmax_step = rmax_step
        self.dmax = dmax
        self.dmax_step = dmax_step

    def build(self, input_shape):
        shape = (input_shape[-1],)
        self.gamma = self.add_weight(shape=shape, initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=shape, initializer="zeros", name="beta")
        self.moving_mean = self.add_weight(shape=shape, initializer="zeros",
                                           trainable=False, name="moving_mean")
        self.moving_stddev = self.add_weight(shape=shape, initializer="ones",
                                             trainable=False, name="moving_stddev")
        self.steps = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                     name="steps")

    def clipping(self, step):
        """``(rmax, dmax)`` at a training step, following the schedule."""
        step = ops.convert_to_tensor(step, "float32")

        def ramp(end):
            return ops.clip((step - self.warmup_steps) / (end - self.warmup_steps), 0.0, 1.0)
        return 1.0 + (self.rmax - 1.0) * ramp(self.rmax_step), self.dmax * ramp(self.dmax_step)

    def call(self, x, training=False):
        if not training:
            return self.gamma * (x - self.moving_mean) / self.moving_stddev + self.beta
        mean, variance = ops.moments(x, axes=[0])
        stddev = ops.sqrt(variance + self.epsilon)
        rmax, dmax = self.clipping(self.steps)
        r = ops.stop_gradient(ops.clip(stddev / self.moving_stddev, 1.0 / rmax, rmax))
        d = ops.stop_gradient(ops.clip((mean - self.moving_mean) / self.moving_stddev, -dmax, dmax))
        self.moving_mean.assign(self.momentum * self.moving_mean + (1 - self.momentum) * mean)
        self.moving_stddev.assign(self.momentum * self.moving_stddev + (1 - self.momentum) * stddev)
        self.steps.assign_add(1.0)
        return self.gamma * ((x - mean) / stddev * r + d) + self.beta

    # The instruments read BN's per-unit scale from these, as for Keras's layer.
    scale = True

    @property
    def moving_variance(self):
        """The variance that, with ``epsilon``, gives the moving standard deviation."""
        return ops.square(self.moving_stddev) - self.epsilon

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "epsilon": self.epsilon,
                "warmup_steps": self.warmup_steps, "rmax": self.rmax, "rmax_step": self.rmax_step,
                "dmax": self.dmax, "dmax_step": self.dmax_step}
