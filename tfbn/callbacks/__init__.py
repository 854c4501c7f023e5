"""Keras callbacks of tfbn; each one stores its arguments only in ``__init__``
(keras-tuner deep-copies callbacks per trial) and opens writers lazily.

`build_instruments` returns the TensorBoard instruments a `LogConfig` enables."""

from tfbn.callbacks.batch_statistics import BatchStatisticsEvaluation
from tfbn.callbacks.gradients import Gradients
from tfbn.callbacks.jacobian import JacobianSpectrum, SharedSpectra
from tfbn.callbacks.optimization import CovariateShift, LandscapeSmoothness, TrainingSample
from tfbn.callbacks.percentiles import ActivationPercentiles
from tfbn.callbacks.progress import Progress
from tfbn.callbacks.step_metrics import StepMetrics
from tfbn.callbacks.weights import Weights


__all__ = ["ActivationPercentiles", "BatchStatisticsEvaluation", "CovariateShift", "Gradients",
           "JacobianSpectrum", "LandscapeSmoothness", "Progress", "SharedSpectra", "StepMetrics",
           "TrainingSample", "Weights", "build_instruments"]


def build_instruments(log_config, log_dir, probe_x, sample=None, shared_spectra=None):
    """The instrument callbacks that ``log_config.instruments`` enables.

    Args:
        log_config: A `tfbn.config.LogConfig`: which instruments, how often,
            the probe size and the Jacobian's BN mode.
        log_dir: The trial's run directory; every instrument writes there,
            so TensorBoard shows them as one run.
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
    probe = probe_x[:log_config.probe_size]
    builders = {
        "weights": lambda: Weights(log_dir, log_config.weights_every),
        "gradients": lambda: Gradients(log_dir, log_config.gradients_every, sample),
        "jacobian": lambda: JacobianSpectrum(log_dir, probe, log_config.jacobian_every,
                                             log_config.jacobian_mode, shared_spectra),
        "percentiles": lambda: ActivationPercentiles(log_dir, probe, log_config.percentiles_every),
        "ics": lambda: CovariateShift(log_dir, sample, log_config.ics_every),
        "landscape": lambda: LandscapeSmoothness(log_dir, sample, log_config.landscape_every),
    }
    return [builders[name]() for name in log_config.instruments]
