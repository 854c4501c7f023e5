"""Jacobian spectra on a fixed probe set (claim 5: BN brings backprop near isometry)."""

from tfbn import tags
from tfbn.callbacks.periodic import Periodic
from tfbn.instruments import jacobian_singular_values, spectrum_statistics


class JacobianSpectrum(Periodic):
    """Logs the singular values of each hidden block's Jacobian and the network's.

    Computed per probe example by `tfbn.instruments.jacobian_singular_values`.
    Tags: ``jacobian/<dense layer or network>/singular_values`` histograms of
    all examples' singular values, and ``jacobian/<...>/<statistic>`` scalars
    from `tfbn.instruments.spectrum_statistics`.

    Args:
        log_dir: The run directory the event file goes to.
        probe_x: The probe inputs, the same for every trial.
        every: Training steps between two writes.
        mode: ``"inference"`` (BN's moving statistics) or ``"batch"`` (the
            probe set's own statistics); see `tfbn.instruments`.
    """

    def __init__(self, log_dir, probe_x, every, mode="inference"):
        super().__init__(log_dir, every)
        self.probe_x = probe_x
        self.mode = mode

    def measure(self):
        scalars, histograms = {}, {}
        for layer, values in jacobian_singular_values(self.model, self.probe_x, self.mode).items():
            histograms[tags.jacobian(layer, "singular_values")] = values
            for statistic, value in spectrum_statistics(values).items():
                scalars[tags.jacobian(layer, statistic)] = value
        return scalars, histograms
