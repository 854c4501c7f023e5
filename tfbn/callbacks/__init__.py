"""Keras callbacks of tfbn; each one stores its arguments only in ``__init__``
(keras-tuner deep-copies callbacks per trial) and opens writers lazily."""

from tfbn.callbacks.batch_statistics import BatchStatisticsEvaluation
from tfbn.callbacks.progress import Progress
from tfbn.callbacks.step_metrics import StepMetrics
