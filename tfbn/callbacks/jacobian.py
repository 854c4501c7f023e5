"""Jacobian spectra on a fixed probe set (claim 5: BN brings backprop near isometry)."""

import warnings

import numpy as np

from tfbn import structure, tags
from tfbn.callbacks.periodic import Periodic
from tfbn.data.subset import distinct_rows
from tfbn.instruments import jacobian_singular_values, spectrum_statistics


class JacobianSpectrum(Periodic):
    """Logs the singular values of each block's Jacobian and the network's.

    Measures any model: the blocks of a chain of layers (a Sequential model,
    or a functional one without branches: `tfbn.structure.chain`), each from
    one Dense or convolution layer to the next, and the network; of any
    other model the network alone, in inference mode, with a warning when
    training begins. Computed per probe
    example by `tfbn.instruments.jacobian_singular_values`, which says what
    a convolutional block's Jacobian is. Tags: ``jacobian/<kernel layer or
    network>/singular_values`` histograms of all examples' singular values,
    and ``jacobian/<...>/<statistic>`` scalars from
    `tfbn.instruments.spectrum_statistics`.

    Args:
        log_dir: The run directory, or an `events.Writer` shared with other callbacks.
        probe_x: The probe inputs, the same for every trial.
        every: Training steps between two writes.
        mode: ``"inference"`` (BN's moving statistics) or ``"batch"`` (the
            probe set's own statistics); see `tfbn.instruments`.
        shared: A `SharedSpectra` that holds ``probe_x`` among its probe sets,
            for trials measured on one network; None computes alone.
    """

    def __init__(self, log_dir, probe_x, every, mode="inference", shared=None):
        super().__init__(log_dir, every)
        self.probe_x = probe_x
        self.mode = mode
        self.shared = shared
        if shared is not None and mode != "inference":
            raise ValueError("shared spectra use BN's moving statistics: mode must be 'inference'")

    def on_train_begin(self, logs=None):
        problem = structure.chain_problem(self.model)
        if problem and self.mode == "inference":
            warnings.warn(f"JacobianSpectrum writes the network's Jacobian only: {problem}", stacklevel=2)
        super().on_train_begin(logs)

    def unmeasurable(self):
        problem = structure.chain_problem(self.model)
        return f"{problem}, as BN's batch mode needs" if problem and self.mode != "inference" else None

    def probe_inputs(self):
        return self.probe_x

    def measure(self):
        if self.shared is None:
            spectra = jacobian_singular_values(self.model, self.probe_x, self.mode)
        else:
            spectra = self.shared.singular_values(self.model, self.probe_x)
        scalars, histograms = {}, {}
        for layer, values in spectra.items():
            histograms[tags.jacobian(layer, "singular_values")] = values
            for statistic, value in spectrum_statistics(values).items():
                scalars[tags.jacobian(layer, statistic)] = value
        return scalars, histograms


class SharedSpectra:
    """Inference-mode Jacobian spectra of one network for several probe sets, computed once a step.

    Trials that differ only in their test split train one network and take
    their probe sets from their own splits, which keep each class's first
    examples and so share most of them (``course2017_study``'s four test
    ratios: 365 distinct examples in 4 x 250). With BN's moving statistics an
    example's singular values depend on that example alone, so the first
    request at a training step computes them for the distinct examples of
    all the probe sets, and every probe set takes its own rows from that.

    Args:
        probes: The probe sets (arrays ``[examples, features]``) it serves.

    Attributes:
        examples: The distinct examples among the probe sets.
    """

    def __init__(self, probes):
        self.examples, numbers = distinct_rows(list(probes))
        self._rows = {_key(probe): rows for probe, rows in zip(probes, numbers)}
        self._state = None  # the network and training step that _spectra measured
        self._spectra = None

    def singular_values(self, model, probe_x):
        """`tfbn.instruments.jacobian_singular_values` of ``model`` on ``probe_x`` in inference mode.

        ``probe_x`` must equal one of the probe sets given at construction.
        """
        rows = self._rows.get(_key(probe_x))
        if rows is None:
            raise ValueError("this probe set is not one of those the SharedSpectra was built for")
        state = (id(model), int(model.optimizer.iterations.numpy()))
        if state != self._state:
            self._spectra = jacobian_singular_values(model, self.examples, "inference")
            self._state = state
        return {name: values[rows] for name, values in self._spectra.items()}


def _key(probe):
    return np.ascontiguousarray(probe).tobytes()
