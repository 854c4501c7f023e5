"""Where the instruments find what they measure in a Keras model: by layer type, not name.

* `kernel_layers`: the Dense and convolution layers, whose kernels the
  weight, gradient and covariate-shift instruments follow.
* `batch_norm_layers`: BatchNormalization and Batch Renormalization layers.
* `chain`: the model as a sequence of `Step`s from its input to its output,
  for the instruments that evaluate it piece by piece (preactivations and
  Jacobians). A Sequential model is a chain; so is a functional model whose
  every layer takes the previous layer's output only. A layer with a fused
  ``activation`` (``Dense(100, activation="relu")``) gives two steps: its
  linear part and the nonlinearity.

Layers of a nested model count as layers of the model for `kernel_layers`
and `batch_norm_layers`; in a `chain` the nested model is one opaque step.
"""

import dataclasses

import keras

from tfbn.noise import DistributionShift
from tfbn.renorm import BatchRenormalization

KERNEL_LAYERS = (keras.layers.Dense, keras.layers.EinsumDense, keras.layers.Conv1D, keras.layers.Conv2D,
                 keras.layers.Conv3D, keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose,
                 keras.layers.Conv3DTranspose)
BATCH_NORM_LAYERS = (keras.layers.BatchNormalization, BatchRenormalization)
ACTIVATION_LAYERS = (keras.layers.Activation, keras.layers.ReLU, keras.layers.LeakyReLU,
                     keras.layers.ELU, keras.layers.PReLU, keras.layers.Softmax)
# Identity at evaluation, which is how the probes evaluate a network.
IDENTITY_AT_EVALUATION = (keras.layers.Dropout, keras.layers.GaussianNoise, keras.layers.GaussianDropout,
                          keras.layers.AlphaDropout, DistributionShift)
# Nonlinearities that mix the units: no per-unit slope.
_MIXING = (keras.activations.softmax, keras.activations.log_softmax)

LINEAR = "linear"  # a kernel layer's linear part (the whole layer when it has no fused activation)
NONLINEARITY = "nonlinearity"
NORMALIZATION = "normalization"  # BN or Batch Renormalization
IDENTITY = "identity"  # identity at evaluation: dropout, noise
OTHER = "other"  # anything else, applied as Keras applies it at evaluation


@dataclasses.dataclass(frozen=True)
class Step:
    """One step of a `chain`: a layer, or one of the two parts of a layer with a fused activation.

    Attributes:
        layer: The Keras layer.
        kind: `LINEAR`, `NONLINEARITY`, `NORMALIZATION`, `IDENTITY` or `OTHER`.
        without_activation: The layer applied with its fused activation left
            out; the next step is that activation.
    """

    layer: keras.layers.Layer
    kind: str
    without_activation: bool = False

    @property
    def elementwise(self):
        """Whether the step acts on each unit alone (a diagonal Jacobian)."""
        if self.kind in (NORMALIZATION, IDENTITY):
            return True
        return self.kind == NONLINEARITY and not isinstance(self.layer, keras.layers.Softmax) and (
            _activation(self.layer) not in _MIXING)


def layers(model):
    """Every layer of ``model``, those of nested models in their place."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from layers(layer)
        else:
            yield layer


def kernel_layers(model):
    """The Dense and convolution layers of ``model``, in model order."""
    return [layer for layer in layers(model) if isinstance(layer, KERNEL_LAYERS)]


def batch_norm_layers(model):
    """The BatchNormalization and Batch Renormalization layers of ``model``, in model order."""
    return [layer for layer in layers(model) if isinstance(layer, BATCH_NORM_LAYERS)]


def chain(model):
    """The `Step`s of ``model`` from input to output, or None if it is not a chain of layers."""
    ordered = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    if not isinstance(model, keras.Sequential):
        if len(model.inputs) != 1 or len(model.outputs) != 1 or not ordered:
            return None
        previous = model.inputs[0]
        for layer in ordered:
            if layer.input is not previous:  # a branch, a merge or a shared layer
                return None
            previous = layer.output
        if model.outputs[0] is not previous:
            return None
    return [step for layer in ordered for step in _steps(layer)]


def chain_problem(model):
    """Why ``model`` is not a chain of layers, for a warning; None if it is one."""
    if chain(model) is None:
        return (f"model {model.name!r} is not a chain of layers (one input, one output, each layer "
                "taking the previous layer's output only), which is evaluated layer by layer")
    return None


def input_problem(model, x):
    """Why inputs ``x`` do not fit ``model``'s single input, for an error; None if they fit or it cannot tell."""
    inputs = getattr(model, "inputs", None) or ()
    if len(inputs) != 1 or not hasattr(x, "shape"):
        return None
    expected, given = tuple(inputs[0].shape[1:]), tuple(x.shape[1:])
    if len(given) == len(expected) and all(e is None or e == g for e, g in zip(expected, given)):
        return None
    return f"model {model.name!r} takes examples of shape {expected}, the probe's have the shape {given}"


def has_fused_activation(layer):
    """Whether ``layer`` applies an ``activation`` of its own other than linear (``Dense(10, "relu")``)."""
    return (not isinstance(layer, ACTIVATION_LAYERS)
            and getattr(layer, "activation", None) not in (None, keras.activations.linear))


def _steps(layer):
    if isinstance(layer, ACTIVATION_LAYERS):
        return [Step(layer, NONLINEARITY)]
    if isinstance(layer, BATCH_NORM_LAYERS):
        return [Step(layer, NORMALIZATION)]
    if isinstance(layer, IDENTITY_AT_EVALUATION):
        return [Step(layer, IDENTITY)]
    kind = LINEAR if isinstance(layer, KERNEL_LAYERS) else OTHER
    if has_fused_activation(layer):
        return [Step(layer, kind, without_activation=True), Step(layer, NONLINEARITY)]
    return [Step(layer, kind)]


def _activation(layer):
    return getattr(layer, "activation", None)
