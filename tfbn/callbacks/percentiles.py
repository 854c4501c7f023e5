"""Percentiles of each nonlinearity's input over training (claim 2; Ioffe & Szegedy fig. 1b,c)."""

import numpy as np

from tfbn import structure, tags
from tfbn.callbacks.periodic import Periodic
from tfbn.instruments import preactivations_function

PERCENTILES = (15, 50, 85)


class ActivationPercentiles(Periodic):
    """Logs the 15th, 50th and 85th percentiles of the input to each nonlinearity.

    Measures any model that is a chain of layers (`tfbn.structure.chain`)
    with a nonlinearity: an activation layer, or a layer's fused
    ``activation``, whose input is the output of that layer's linear part.
    The input is taken over the probe set (`tfbn.instruments.preactivations`):
    BN's output when BN comes before the nonlinearity, the Dense output
    otherwise. Tags: ``percentiles/<layer>/unit_<unit>/p<q>`` for one fixed
    unit (as in the paper's figure) and ``percentiles/<layer>/all/p<q>`` over
    all units and examples of the layer pooled; ``<layer>`` is the layer
    that holds the nonlinearity.

    BN uses the probe set's own statistics by default (``mode="batch"``):
    that is the distribution a training step feeds the nonlinearity, which
    the claim is about. With ``mode="inference"`` the moving statistics,
    which trail the batch statistics by about ``1 / (1 - momentum)`` steps,
    would show a drift early in training that training never sees.

    Args:
        log_dir: The run directory, or an `events.Writer` shared with other callbacks.
        probe_x: The probe inputs, the same for every trial.
        every: Training steps between two writes.
        unit: The unit followed in each layer, an index into each example's
            flattened input (for a convolution: position and channel); 0 by default.
        mode: ``"batch"`` or ``"inference"``; see `tfbn.instruments`.
    """

    def __init__(self, log_dir, probe_x, every, unit=0, mode="batch"):
        super().__init__(log_dir, every)
        self.probe_x = probe_x
        self.unit = unit
        self.mode = mode
        self._preactivations = None

    def set_model(self, model):
        super().set_model(model)
        self._preactivations = None  # compiled for the model set, at its first measurement

    def probe_inputs(self):
        return self.probe_x

    def unmeasurable(self):
        reason = structure.chain_problem(self.model)
        if reason is None and not any(step.kind == structure.NONLINEARITY
                                      for step in structure.chain(self.model)):
            reason = f"model {self.model.name!r} has no nonlinearity"
        return reason

    def measure(self):
        scalars = {}
        if self._preactivations is None:
            self._preactivations = preactivations_function(self.model, self.probe_x, self.mode)
        for layer, values in self._preactivations().items():
            values = values.reshape(len(values), -1)
            for group, data in ((f"unit_{self.unit}", values[:, self.unit]), ("all", values)):
                for q, value in zip(PERCENTILES, np.percentile(data, PERCENTILES)):
                    scalars[tags.percentile(layer, group, q)] = value
        return scalars, {}
