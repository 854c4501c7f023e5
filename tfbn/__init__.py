"""tfbn: experiments on why Batch Normalization works.

* `build_mlp`: MLPs with BN before, after or without the activation.
* `tfbn.config`, `tfbn.data`, `tfbn.design`, `tfbn.sweep`: configs, data sets,
  study designs and the keras-tuner engine behind ``python -m tfbn.run``.
"""

import importlib

__version__ = "0.1.0"

# Loaded on first use (PEP 562), so that ``python -m tfbn.run`` can load
# TensorFlow quietly before anything imports it.
_EXPORTS = {"Config": "tfbn.config", "load_config": "tfbn.config", "load_data": "tfbn.data",
            "make_datasets": "tfbn.data", "build_mlp": "tfbn.models", "run_study": "tfbn.sweep"}

_SUBMODULES = ("callbacks", "config", "data", "design", "instruments", "models", "packed",
               "packing", "renorm", "report", "sweep", "training")

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _SUBMODULES:  # `tfbn.instruments.gradient_norms` after a plain `import tfbn`
        return importlib.import_module(f"tfbn.{name}")
    raise AttributeError(f"module 'tfbn' has no attribute {name!r}")
