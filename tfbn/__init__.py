"""tfbn: experiments on why Batch Normalization works.

* `build_mlp`: MLPs with BN before, after or without the activation.
* `tfbn.config`, `tfbn.data`, `tfbn.study`, `tfbn.sweep`: configs, data sets,
  study designs and the keras-tuner engine behind ``python -m tfbn.run``.
"""

from tfbn.config import Config, load_config
from tfbn.data import load_data, make_datasets
from tfbn.models import build_mlp
from tfbn.sweep import run_study

__version__ = "0.1.0"

__all__ = ["Config", "build_mlp", "load_config", "load_data", "make_datasets", "run_study"]
