"""MLP builders with Batch Normalization before, after or without the activation.

Layer names are stable so that callbacks and reports can address layers:

* ``input``: the flattened image.
* ``dense_<i>``: the Dense layer of hidden block ``i`` (1-based).
* ``bn_<i>``: its BatchNormalization layer (absent when ``bn="none"``).
* ``act_<i>``: its nonlinearity.
* ``logits``: the output Dense layer (no activation; the loss applies softmax).

Block order per hidden layer:

* ``bn="before"``: ``dense_i -> bn_i -> act_i`` and ``dense_i`` has no bias,
  since BN's beta takes its place (Ioffe & Szegedy 2015, section 3.2).
* ``bn="after"``: ``dense_i -> act_i -> bn_i`` (the ablation).
* ``bn="none"``: ``dense_i -> act_i``.
"""

import math

import keras

from tfbn.errors import ConfigError

ACTIVATIONS = ("lrelu", "relu", "sigmoid", "softplus", "tanh", "linear")
BN_PLACEMENTS = ("none", "before", "after")


def course_initializer(fan_in, seed):
    """Truncated normal with std ``sqrt(2 / fan_in)``, as in the 2017 course project.

    The std is the one passed to the truncated normal (values beyond two std are
    redrawn), matching TensorFlow 1's ``tf.truncated_normal(stddev=...)``.
    """
    return keras.initializers.TruncatedNormal(stddev=math.sqrt(2.0 / fan_in), seed=seed)


def build_mlp(
    input_shape=(784,),
    num_classes=10,
    hidden_units=(100, 100),
    activation="sigmoid",
    bn="before",
    *,
    seed=0,
    leaky_slope=0.2,
    bn_momentum=0.999,
    bn_epsilon=1e-3,
    kernel_initializer=None,
):
    """Builds an uncompiled MLP classifier.

    Dense kernels depend only on ``seed``, the layer's position and its shape,
    never on ``bn`` or ``activation``: the arms of a comparison start from
    identical kernels.

    Args:
        input_shape: Shape of one flattened example.
        num_classes: Number of output logits.
        hidden_units: Width of each hidden layer, e.g. ``(100, 100, 100)``.
        activation: One of ``lrelu``, ``relu``, ``sigmoid``, ``softplus``,
            ``tanh`` (``linear`` is accepted for checks with a known answer).
        bn: Where Batch Normalization goes: ``"none"``, ``"before"`` or
            ``"after"`` the activation.
        seed: Seed of the kernel initializers; layer ``i`` uses ``seed + i``.
        leaky_slope: Negative slope of ``lrelu``.
        bn_momentum: Momentum of BN's moving mean and variance.
        bn_epsilon: Epsilon added to BN's variance.
        kernel_initializer: ``None`` for the course project's truncated normal
            with std ``sqrt(2 / fan_in)``, or a callable ``(fan_in, seed)`` that
            returns a Keras initializer.

    Returns:
        An uncompiled `keras.Model` that maps images to logits.

    Example:

    ```python
    model = tfbn.build_mlp(hidden_units=(100, 100, 100), bn="before")
    model.compile("sgd", "sparse_categorical_crossentropy")
    ```
    """
    _check_choice("activation", activation, ACTIVATIONS)
    _check_choice("bn", bn, BN_PLACEMENTS)
    make_initializer = kernel_initializer or course_initializer
    inputs = keras.Input(shape=tuple(input_shape), name="input")
    x = inputs
    fan_in = math.prod(input_shape)
    for i, units in enumerate(hidden_units, start=1):
        x = keras.layers.Dense(
            units,
            use_bias=bn != "before",
            kernel_initializer=make_initializer(fan_in, seed + i),
            name=f"dense_{i}",
        )(x)
        if bn == "before":
            x = _batch_norm(i, bn_momentum, bn_epsilon)(x)
        x = _activation(activation, leaky_slope, f"act_{i}")(x)
        if bn == "after":
            x = _batch_norm(i, bn_momentum, bn_epsilon)(x)
        fan_in = units
    logits = keras.layers.Dense(
        num_classes,
        kernel_initializer=make_initializer(fan_in, seed + len(hidden_units) + 1),
        name="logits",
    )(x)
    return keras.Model(inputs, logits, name=f"mlp_bn_{bn}")


def _batch_norm(index, momentum, epsilon):
    return keras.layers.BatchNormalization(
        momentum=momentum, epsilon=epsilon, name=f"bn_{index}"
    )


def _activation(name, leaky_slope, layer_name):
    if name == "lrelu":
        return keras.layers.LeakyReLU(negative_slope=leaky_slope, name=layer_name)
    return keras.layers.Activation(name, name=layer_name)


def _check_choice(what, value, choices):
    if value not in choices:
        raise ConfigError(
            f"unknown {what} {value!r}; choose one of: {', '.join(choices)}"
        )
