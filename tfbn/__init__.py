"""tfbn: experiments on why Batch Normalization works.

Functions and classes:

* `build_mlp`: MLPs with BN before, after or without the activation.
* `load_config`, `Config`: a study's typed, validated config from YAML.
* `load_data`, `make_datasets`: the data set a config names, as arrays and as
  `tf.data` pipelines.
* `run_study`: runs a config's study, as ``python -m tfbn.run`` does.

Modules:

* `tfbn.callbacks`: the instruments as Keras callbacks that write TensorBoard runs.
* `tfbn.instruments`: the same measurements as functions of a model and data.
* `tfbn.structure`: where the instruments find what they measure in a Keras model.
* `tfbn.tags`: the TensorBoard tags the instruments write and the report reads.
* `tfbn.report`: the report of a finished study (``python -m tfbn.report``).
* `tfbn.config`, `tfbn.data`, `tfbn.design`, `tfbn.models`, `tfbn.results`,
  `tfbn.sweep`, `tfbn.training`: configs, data sets, study designs, networks,
  results files, the keras-tuner engine and the training loop behind them.
* `tfbn.renorm`, `tfbn.noise`, `tfbn.packed`, `tfbn.packing`: Batch
  Renormalization, noisy BN's shift, and trials trained together as one model.
* `tfbn.errors`: the errors a user's input causes.

Every name loads on first use, so that ``import tfbn`` stays cheap and
``python -m tfbn.run`` can check a config before TensorFlow is imported.
"""

import importlib

__version__ = "0.1.0"

# Loaded on first use (PEP 562).
_EXPORTS = {"Config": "tfbn.config", "load_config": "tfbn.config", "load_data": "tfbn.data",
            "make_datasets": "tfbn.data", "build_mlp": "tfbn.models", "run_study": "tfbn.sweep"}

_SUBMODULES = ("callbacks", "config", "data", "design", "errors", "instruments", "models", "noise",
               "packed", "packing", "renorm", "report", "results", "structure", "sweep", "tags",
               "training")

__all__ = sorted(_EXPORTS) + list(_SUBMODULES)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later look-ups skip this hook
        return value
    if name in _SUBMODULES:  # importing a submodule sets it as this package's attribute
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    # The public names and the module's own dunders, not its internals (`importlib`, `_EXPORTS`).
    return sorted(set(__all__) | {name for name in globals() if name.startswith("__")})
