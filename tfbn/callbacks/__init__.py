"""Keras callbacks of tfbn; each one stores its arguments only in ``__init__``
(keras-tuner deep-copies callbacks per trial) and opens writers lazily.

`instruments` returns the instruments for a ``fit`` of any Keras model;
`build_instruments` returns the TensorBoard instruments a `LogConfig` enables.

Example:

```python
model.fit(x, y, epochs=5, callbacks=tfbn.callbacks.instruments("logs/cnn", probe=(x[:200], y[:200])))
```
"""

import numbers
import os

from tfbn.callbacks import events
from tfbn.callbacks.batch_statistics import BatchStatisticsEvaluation
from tfbn.callbacks.gradients import Gradients
from tfbn.callbacks.jacobian import JacobianSpectrum, SharedSpectra
from tfbn.callbacks.optimization import CovariateShift, LandscapeSmoothness, ProbeBatch, TrainingSample
from tfbn.callbacks.percentiles import ActivationPercentiles
from tfbn.callbacks.progress import Progress
from tfbn.callbacks.step_metrics import StepMetrics, TensorBoard
from tfbn.callbacks.weights import Weights
from tfbn.errors import UserError
from tfbn.instruments import MODES


__all__ = ["ActivationPercentiles", "BatchStatisticsEvaluation", "CovariateShift", "Gradients",
           "JacobianSpectrum", "LandscapeSmoothness", "ProbeBatch", "Progress", "SharedSpectra",
           "StepMetrics", "TensorBoard", "TrainingSample", "Weights", "build_instruments", "instruments"]

DEFAULT_INSTRUMENTS = ("weights", "gradients", "jacobian", "percentiles")
ALL_INSTRUMENTS = DEFAULT_INSTRUMENTS + ("ics", "landscape")


def instruments(log_dir, probe, every=100, *, include=DEFAULT_INSTRUMENTS, jacobian_mode="inference",
                percentiles_mode="batch"):
    """The instrument callbacks for a ``fit`` of any Keras model, writing one run.

    Each instrument finds what it measures by the model's layer types (see
    its docstring); one that finds nothing warns once, by name, and writes
    nothing. All of them write one event file in ``log_dir``. Inside a
    keras-tuner search each trial writes its own run, ``<log_dir>/<trial
    id>/execution0``, as Keras's own TensorBoard callback does.

    Args:
        log_dir: The run directory.
        probe: ``(x, y)``: inputs on which the Jacobian and percentile
            instruments measure the network, and with their labels (as the
            compiled loss expects them) the batch on which the gradient,
            ``ics`` and ``landscape`` instruments differentiate the compiled
            loss. A few hundred examples is plenty; fewer for a convolutional
            network on large images, whose blocks' Jacobians have (output
            size x input size) entries per example and cost an
            eigendecomposition of the smaller side each (a 28x28 feature map
            with 8 channels: about 1 s an example on 2 CPU cores).
        every: Training steps between two writes.
        include: The instruments, from ``weights``, ``gradients``,
            ``jacobian``, ``percentiles``, ``ics`` and ``landscape``.
        jacobian_mode: BN's mode in the Jacobians: ``"inference"`` (moving
            statistics) or ``"batch"`` (the probe's own); see `tfbn.instruments`.
        percentiles_mode: The same for the percentiles.

    Returns:
        A list of callbacks: a `TensorBoard` (the loss and metrics Keras
        logs, at the training step) and the instruments, in the order of ``include``.

    Raises:
        UserError: An argument would make ``fit`` fail: ``every`` not a
            positive integer, ``probe`` not a pair of as many inputs as labels
            (labels may be None without the gradient instruments), an unknown
            instrument or mode, or ``log_dir`` a file.

    Example:

    ```python
    callbacks = tfbn.callbacks.instruments("logs/cnn", probe=(x_test[:250], y_test[:250]), every=50)
    model.fit(x_train, y_train, epochs=3, callbacks=callbacks)
    ```
    """
    _check_arguments(log_dir, probe, every, include, jacobian_mode, percentiles_mode)
    writer = events.Writer(log_dir)
    batch = ProbeBatch(*probe)
    return [TensorBoard(writer), *_build(include, writer, dict.fromkeys(include, every), batch.x, batch,
                                         jacobian_mode, percentiles_mode)]


def _check_arguments(log_dir, probe, every, include, jacobian_mode, percentiles_mode):
    """Refuses `instruments`' arguments that would fail only once ``fit`` runs, in one line each."""
    if not isinstance(log_dir, (str, os.PathLike)):
        raise UserError(f"log_dir={log_dir!r}: give the run directory as a path, e.g. log_dir='logs/cnn'")
    if os.path.exists(log_dir) and not os.path.isdir(log_dir):
        raise UserError(f"log_dir={os.fspath(log_dir)!r} is a file; give a directory the events can go to")
    if not (isinstance(every, numbers.Integral) and not isinstance(every, bool) and every > 0):
        raise UserError(f"every={every!r}: give the training steps between two writes, a positive integer, "
                        "e.g. every=100")
    if isinstance(include, str):
        raise UserError(f"include={include!r}: give a list of instruments, e.g. include=[{include!r}]")
    unknown = sorted(set(include) - set(ALL_INSTRUMENTS))
    if unknown:
        raise UserError(f"unknown instruments {unknown}; choose from: {', '.join(ALL_INSTRUMENTS)}")
    for argument, mode in (("jacobian_mode", jacobian_mode), ("percentiles_mode", percentiles_mode)):
        if mode not in MODES:
            raise UserError(f"{argument}={mode!r}: choose one of: {', '.join(MODES)}")
    if not (isinstance(probe, (tuple, list)) and len(probe) == 2):
        raise UserError("probe must be a pair (x, y) of inputs and their labels, "
                        "e.g. probe=(x_test[:250], y_test[:250])")
    x, y = probe
    if y is None and {"gradients", "ics", "landscape"} & set(include):
        raise UserError("probe=(x, None): the gradient instruments differentiate the compiled loss on the "
                        "probe and need its labels, e.g. probe=(x_test[:250], y_test[:250])")
    if hasattr(x, "shape") and (not len(x) or (hasattr(y, "shape") and len(y) != len(x))):
        raise UserError(f"probe holds {len(x)} inputs and {len(y)} labels; give one or more examples "
                        "with a label each, e.g. probe=(x_test[:250], y_test[:250])")


def build_instruments(log_config, log_dir, probe_x, sample=None, shared_spectra=None):
    """The instrument callbacks that ``log_config.instruments`` enables.

    Args:
        log_config: A `tfbn.config.LogConfig`: which instruments, how often,
            the probe size and the Jacobian's BN mode.
        log_dir: The trial's run directory, where every instrument writes, in
            one event file, so that TensorBoard shows them as one run; or the
            `events.Writer` of the trial's `StepMetrics`, to share its file.
        probe_x: Test inputs; the first ``log_config.probe_size`` of them
            form the probe set of the Jacobian and percentile instruments.
        sample: A `TrainingSample`, the training batches of the ``ics`` and
            ``landscape`` instruments (needed when either is enabled) and of
            the ``gradients`` instrument's write at the start of training.
        shared_spectra: A `SharedSpectra` that the ``jacobian`` instrument
            takes its spectra from (inference mode only), or None.

    Returns:
        A list of callbacks, in the order of ``log_config.instruments``.

    Example:

    ```python
    sample = TrainingSample(data.x_train, data.y_train, config.train.batch_size, config.train.seed)
    callbacks = build_instruments(config.log, log_dir, data.x_test, sample)
    ```
    """
    if sample is None and {"ics", "landscape"} & set(log_config.instruments):
        raise ValueError("the ics and landscape instruments probe training batches: "
                         "pass sample=TrainingSample(...)")
    every = {name: getattr(log_config, f"{name}_every") for name in log_config.instruments}
    return _build(log_config.instruments, events.Writer.of(log_dir), every, probe_x[:log_config.probe_size],
                  sample, log_config.jacobian_mode, "batch", shared_spectra)


def _build(names, writer, every, probe_x, sample, jacobian_mode, percentiles_mode, shared_spectra=None):
    """The instruments ``names``, all writing with ``writer``; ``every`` maps each name to its period."""
    builders = {
        "weights": lambda: Weights(writer, every["weights"]),
        "gradients": lambda: Gradients(writer, every["gradients"], sample),
        "jacobian": lambda: JacobianSpectrum(writer, probe_x, every["jacobian"], jacobian_mode,
                                             shared_spectra),
        "percentiles": lambda: ActivationPercentiles(writer, probe_x, every["percentiles"],
                                                     mode=percentiles_mode),
        "ics": lambda: CovariateShift(writer, sample, every["ics"]),
        "landscape": lambda: LandscapeSmoothness(writer, sample, every["landscape"]),
    }
    return [builders[name]() for name in names]
