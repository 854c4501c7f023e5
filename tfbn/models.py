"""MLP builders with Batch Normalization before, after or without the activation.

Layer names are stable so that callbacks and reports can address layers:

* ``input``: the flattened image.
* ``dense_<i>``: the Dense layer of hidden block ``i`` (1-based).
* ``bn_<i>``: its BatchNormalization layer (absent when ``bn="none"``).
* ``act_<i>``: its nonlinearity.
* ``logits``: the output Dense layer (no activation; the loss applies softmax).

`build_mlp` returns an `MLP`: a functional `keras.Model` whose training step
also keeps the gradient of each Dense kernel for `tfbn.callbacks.Gradients`.

Block order per hidden layer:

* ``bn="before"``: ``dense_i -> bn_i -> act_i`` and ``dense_i`` has no bias,
  since BN's beta takes its place (Ioffe & Szegedy 2015, section 3.2).
* ``bn="after"``: ``dense_i -> act_i -> bn_i`` (the ablation).
* ``bn="none"``: ``dense_i -> act_i``.
"""

import math
import numbers

import keras
import numpy as np
import tensorflow as tf

from tfbn.errors import ConfigError
from tfbn.noise import DistributionShift
from tfbn.renorm import BatchRenormalization

ACTIVATIONS = ("lrelu", "relu", "sigmoid", "softplus", "tanh", "linear")
BN_PLACEMENTS = ("none", "before", "after", "renorm", "noisy")


def course_initializer(fan_in, seed):
    """Truncated normal with std ``sqrt(2 / fan_in)``, as in the 2017 course project.

    The std is the one passed to the truncated normal (values beyond two std are
    redrawn), matching TensorFlow 1's ``tf.truncated_normal(stddev=...)``.
    """
    return keras.initializers.TruncatedNormal(stddev=math.sqrt(2.0 / fan_in), seed=seed)


# Kernel initializers by name (`initializer_from`); a number is a truncated normal's std.
INITIALIZERS = ("course", "glorot", "he")


def initializer_from(choice):
    """A ``(fan_in, seed)`` -> Keras initializer callable, for `build_mlp`, from a config value.

    Args:
        choice: ``"course"`` (`course_initializer`), ``"glorot"`` (Keras's
            Glorot uniform), ``"he"`` (Keras's He normal, a truncated normal
            rescaled to std ``sqrt(2 / fan_in)`` after truncation) or a positive
            number: a truncated normal with that std for every layer.
    """
    if isinstance(choice, (int, float)) and not isinstance(choice, bool):
        if choice <= 0:
            raise ConfigError(f"initializer: a std must be positive, got {choice}")
        return lambda fan_in, seed: keras.initializers.TruncatedNormal(stddev=float(choice), seed=seed)
    _check_choice("initializer", choice, INITIALIZERS)
    return {
        "course": course_initializer,
        "glorot": lambda fan_in, seed: keras.initializers.GlorotUniform(seed=seed),
        "he": lambda fan_in, seed: keras.initializers.HeNormal(seed=seed),
    }[choice]


def build_mlp(
    input_shape=(784,),
    num_classes=10,
    hidden_units=(100, 100),
    activation="sigmoid",
    bn="before",
    *,
    seed=0,
    leaky_slope=0.2,
    bn_momentum=0.99,
    bn_epsilon=1e-3,
    bn_synchronized=False,
    noise_shift=(0.0, 1.0),
    noise_scale=(1.0, 2.0),
    kernel_initializer=None,
    logits_initializer=None,
):
    """Builds an uncompiled MLP classifier.

    Dense kernels depend only on ``seed``, the layer's position and its shape,
    never on ``bn`` or ``activation``: the arms of a comparison start from
    identical kernels.

    Args:
        input_shape: Width of one flat example, ``(n,)`` or ``n``; reshape
            images to vectors first (8x8 digits: ``(64,)``).
        num_classes: Number of output logits.
        hidden_units: Width of each hidden layer, e.g. ``(100, 100, 100)``; at
            least one, since BN's placement is a property of the hidden blocks.
        activation: One of ``lrelu``, ``relu``, ``sigmoid``, ``softplus``,
            ``tanh`` (``linear`` is accepted for checks with a known answer), or
            a callable such as ``keras.activations.gelu``.
        bn: Where Batch Normalization goes: ``"none"``, ``"before"`` or
            ``"after"`` the activation, or ``"renorm"``: Batch Renormalization
            (`tfbn.renorm.BatchRenormalization`, with the paper's schedule)
            before the activation, or ``"noisy"``: BN before the activation
            followed by `tfbn.noise.DistributionShift` (Santurkar et al. 2018).
        seed: Integer seed of the kernel initializers; layer ``i`` uses
            ``seed + i``. There is no unseeded mode, since comparisons rest on
            identical kernels; for a fresh network pass e.g.
            ``random.randrange(2**31)``.
        leaky_slope: Negative slope of ``lrelu``.
        bn_momentum: Momentum of BN's moving mean and variance (Keras's
            default). They average over about ``1 / (1 - bn_momentum)`` steps:
            100 at 0.99; at 0.999 (the 2017 course project's) 1,000, which lag
            behind the changing weights in short runs.
        bn_epsilon: Epsilon added to BN's variance.
        bn_synchronized: Under a distribution strategy, normalize by the
            statistics of the global batch rather than each replica's slice.
        noise_shift: ``(low, high)`` of noisy BN's per-unit uniform shift.
        noise_scale: ``(low, high)`` of noisy BN's per-unit uniform scale.
        kernel_initializer: The hidden Dense kernels' initializer: ``None`` or
            ``"course"`` for the course project's truncated normal with std
            ``sqrt(2 / fan_in)``; ``"glorot"`` or ``"he"`` (`initializer_from`);
            a positive number, a truncated normal's std; a Keras initializer
            name (``"he_normal"``) or object, which each layer copies with its
            own seed ``seed + i`` (the object's own seed is not used); or a
            callable ``(fan_in, seed)`` that returns a Keras initializer.
        logits_initializer: The same for the ``logits`` layer; ``None``: as
            ``kernel_initializer``.

    Returns:
        An uncompiled `MLP` that maps examples to logits: compile it with a loss
        that takes logits.

    Raises:
        ConfigError: An argument is not one of the forms above.

    Example:

    ```python
    model = tfbn.build_mlp(hidden_units=(100, 100, 100), bn="before")
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ```
    """
    width = _input_width(input_shape)
    hidden_units = _hidden_widths(hidden_units)
    num_classes = _integer("num_classes", num_classes, "num_classes=10", minimum=2)
    seed = _integer("seed", seed, "seed=0; for a fresh network, seed=random.randrange(2**31)")
    _check_number("leaky_slope", leaky_slope, "leaky_slope=0.2")
    _check_number("bn_momentum", bn_momentum, "bn_momentum=0.99", low=0, high=1)
    _check_number("bn_epsilon", bn_epsilon, "bn_epsilon=1e-3", low=0)
    if not callable(activation):
        _check_choice("activation", activation, ACTIVATIONS, "or a callable such as keras.activations.gelu")
    _check_choice("bn", bn, BN_PLACEMENTS)
    make_initializer = _initializer_factory("kernel_initializer", kernel_initializer)
    make_logits_initializer = (make_initializer if logits_initializer is None
                               else _initializer_factory("logits_initializer", logits_initializer))
    inputs = keras.Input(shape=(width,), name="input")
    x = inputs
    fan_in = width
    for i, units in enumerate(hidden_units, start=1):
        x = keras.layers.Dense(
            units,
            use_bias=bn not in ("before", "renorm", "noisy"),
            kernel_initializer=make_initializer(fan_in, seed + i),
            name=f"dense_{i}",
        )(x)
        if bn in ("before", "renorm", "noisy"):
            x = _batch_norm(i, bn, bn_momentum, bn_epsilon, bn_synchronized)(x)
        if bn == "noisy":
            x = DistributionShift(noise_shift, noise_scale, seed=seed + i, name=f"noise_{i}")(x)
        x = _activation(activation, leaky_slope, f"act_{i}")(x)
        if bn == "after":
            x = _batch_norm(i, bn, bn_momentum, bn_epsilon, bn_synchronized)(x)
        fan_in = units
    logits = keras.layers.Dense(
        num_classes,
        kernel_initializer=make_logits_initializer(fan_in, seed + len(hidden_units) + 1),
        name="logits",
    )(x)
    return MLP(inputs, logits, name=f"mlp_bn_{bn}")


class MLP(keras.Model):
    """A functional model whose training step keeps its kernels' gradients.

    After each training step, ``kernel_gradients[name]`` holds the gradient of
    the loss with respect to the kernel of Dense layer ``name`` that the
    optimizer applied in that step: under a distribution strategy the sum over
    replicas (each replica's loss is already divided by their number, so this
    equals one replica's gradient on the whole global batch), divided by the
    optimizer's loss scale factor if it has one. Copying the gradients into
    these variables costs little (``bench/bench_instruments.py`` measures it);
    `tfbn.callbacks.Gradients` reads them only every so many steps.

    Construct it like a functional `keras.Model`: ``MLP(inputs, outputs)``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Plain tf.Variables, so that they stay out of the model's weights and
        # parameter counts. One value for all replicas: they hold reduced gradients.
        self.kernel_gradients = {
            layer.name: tf.Variable(
                tf.zeros(layer.kernel.shape, layer.kernel.dtype), trainable=False,
                name=f"{layer.name}_kernel_gradient",
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            for layer in self.layers if isinstance(layer, keras.layers.Dense)
        }

    def train_step(self, data):
        # Keras's own TensorFlow train_step, plus the recording of the gradients.
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(x, y, y_pred, sample_weight, training=True)
            scaled_loss = self.optimizer.scale_loss(loss)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        loss_tracker = next(m for m in self.metrics if m.name == "loss")
        loss_tracker.update_state(loss * replicas, sample_weight=tf.shape(x)[0])
        gradients = tape.gradient(scaled_loss, self.trainable_weights)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_weights))
        self.record_gradients(dict(zip((v.path for v in self.trainable_weights), gradients)))
        return self.compute_metrics(x, y, y_pred, sample_weight)

    def record_gradients(self, gradients):
        """Keeps the applied gradients of the Dense kernels; ``gradients`` maps variable paths to them."""
        kernels = [gradients[self.get_layer(name).kernel.path] for name in self.kernel_gradients]
        if self.optimizer.loss_scale_factor is not None:
            kernels = [g / self.optimizer.loss_scale_factor for g in kernels]
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            # The optimizer sums the replicas' gradients internally; sum a copy here.
            kernels = context.all_reduce(tf.distribute.ReduceOp.SUM, kernels)
        for variable, gradient in zip(self.kernel_gradients.values(), kernels):
            variable.assign(gradient)


def _batch_norm(index, bn, momentum, epsilon, synchronized):
    if bn == "renorm":
        return BatchRenormalization(momentum=momentum, epsilon=epsilon, name=f"bn_{index}")
    return keras.layers.BatchNormalization(
        momentum=momentum, epsilon=epsilon, synchronized=synchronized, name=f"bn_{index}"
    )


def _activation(name, leaky_slope, layer_name):
    if name == "lrelu":
        return keras.layers.LeakyReLU(negative_slope=leaky_slope, name=layer_name)
    return keras.layers.Activation(name, name=layer_name)


def _input_width(input_shape):
    shape = (input_shape,) if _is_integer(input_shape) else input_shape
    if not (isinstance(shape, (tuple, list)) and shape and all(_is_integer(d) and d > 0 for d in shape)):
        raise ConfigError(f"input_shape={input_shape!r}: give the width of one flat example, e.g. input_shape=(64,)")
    if len(shape) > 1:
        width = math.prod(shape)
        raise ConfigError(f"input_shape={tuple(shape)}: build_mlp takes flat examples; pass "
                          f"input_shape=({width},) and reshape the data to (n, {width})")
    return int(shape[0])


def _hidden_widths(hidden_units):
    widths = tuple(hidden_units) if isinstance(hidden_units, (tuple, list, range, np.ndarray)) else ()
    if not widths or not all(_is_integer(w) and w > 0 for w in widths):
        raise ConfigError(f"hidden_units={hidden_units!r}: give the width of each hidden layer, at least one, "
                          "as positive integers, e.g. hidden_units=(100, 100)")
    return tuple(int(w) for w in widths)


def _integer(argument, value, example, minimum=None):
    if not _is_integer(value) or (minimum is not None and value < minimum):
        wanted = "an integer" if minimum is None else f"an integer >= {minimum}"
        raise ConfigError(f"{argument}={value!r}: give {wanted}, e.g. {example}")
    return int(value)


def _check_number(argument, value, example, low=None, high=None):
    """Refuses a value that is not a finite real number in ``[low, high]``."""
    in_range = (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
                and (low is None or value >= low) and (high is None or value <= high))
    if not in_range:
        bounds = "" if low is None else f" in [{low}, {'inf' if high is None else high}]"
        raise ConfigError(f"{argument}={value!r}: give a finite number{bounds}, e.g. {example}")


def _is_integer(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _initializer_factory(argument, choice):
    """``choice`` (see `build_mlp`'s ``kernel_initializer``) as a ``(fan_in, seed)`` -> initializer callable."""
    if choice is None:
        return course_initializer
    if isinstance(choice, keras.initializers.Initializer) or (
            isinstance(choice, type) and issubclass(choice, keras.initializers.Initializer)) or (
            isinstance(choice, str) and choice not in INITIALIZERS):
        try:
            initializer = keras.initializers.get(choice)
        except ValueError:
            raise ConfigError(
                f"{argument}={choice!r}: unknown initializer; choose one of: {', '.join(INITIALIZERS)}, "
                "a Keras initializer name such as 'he_normal', or a keras.initializers object") from None
        return lambda fan_in, seed: _reseeded(initializer, seed)
    if isinstance(choice, numbers.Real) and not isinstance(choice, bool) and not 0 < choice < math.inf:
        raise ConfigError(f"{argument}={choice!r}: a truncated normal's std must be a finite positive number, "
                          f"e.g. {argument}=0.1")
    if isinstance(choice, (str, numbers.Real)) and not isinstance(choice, bool):
        return initializer_from(choice)
    if callable(choice):
        return choice
    raise ConfigError(f"{argument}={choice!r}: give an initializer name, a std, a keras.initializers object "
                      "or a callable (fan_in, seed) -> initializer")


def _reseeded(initializer, seed):
    """A copy of a Keras initializer that draws with ``seed`` (one without a seed, e.g. Zeros, as it is)."""
    config = initializer.get_config()
    if "seed" in config:
        config["seed"] = seed
    return type(initializer).from_config(config)


def _check_choice(what, value, choices, alternative=None):
    if value not in choices:
        raise ConfigError(
            f"unknown {what} {value!r}; choose one of: {', '.join(choices)}"
            + (f", {alternative}" if alternative else "")
        )
