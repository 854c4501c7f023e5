"""Measurements of a Keras model that the instrument callbacks log.

Every function finds what it measures from the model's structure
(`tfbn.structure`): the kernels of its Dense and convolution layers, its
BatchNormalization layers and the inputs of its nonlinearities, whatever the
layers are called. `tfbn.build_mlp` networks are one case of this.

* `preactivations`: the input of each nonlinearity on a probe set
  (`preactivations_function`: the same for a fixed probe set).
* `jacobian_singular_values`: per-example singular values of the Jacobian of
  each block between two kernel layers and of the whole network.
* `jacobian_singular_values_autodiff`: the same by automatic differentiation
  and SVD; slow, the reference that tests compare against.
* `spectrum_statistics`: summary numbers of such singular values.
* `gradient_norms`: L2 norm of the loss gradient with respect to each kernel.
* `kernel_gradients`: that gradient itself.
* `internal_covariate_shift`: how much the update of the earlier layers
  changes each layer's gradient (Santurkar et al. 2018, definition 2.1).
* `landscape_smoothness`: how the loss and its gradient vary along the
  gradient direction (Santurkar et al. 2018, section 3.1).
* `has_batch_norm`: whether a network normalizes at all.

The preactivation and Jacobian instruments evaluate the model step by step
and need it to be a chain of layers (`tfbn.structure.chain`: a Sequential
model, or a functional one without branches). Of any other model,
`jacobian_singular_values` measures the network's Jacobian alone, in
inference mode, by differentiating the model's own call; the rest raise
ValueError. The gradient instruments measure any model.

The loss of the gradient instruments is the one the model was compiled with
(`model.compute_loss`), or a ``loss`` passed in; a model compiled without a
loss (as `tfbn.training`'s networks are) is measured with the mean sparse
categorical cross-entropy of its logits, `tfbn.build_mlp`'s training loss.

BN is evaluated in one of two modes:

* ``"inference"``: BN uses its moving mean and variance, as at test time;
  the Jacobians are those of the deployed network.
* ``"batch"``: BN uses the mean and variance of the probe set itself, held
  constant (not differentiated): the normalisation a training step applies to
  a batch like the probe set, without the coupling between examples that
  differentiating the batch statistics would add.

Dropout and noise layers, noisy BN's among them (`tfbn.noise.DistributionShift`),
are left out in both modes: they are the identity at evaluation, and a probe
measures the network, not one random draw of its training noise. The
gradient, covariate-shift and landscape probes, which differentiate the
training loss, do include them.

The preactivation and Jacobian functions are compiled once per model and BN
mode; TensorFlow traces them again only for inputs of a new shape.

Example:

```python
spectra = tfbn.instruments.jacobian_singular_values(model, x_test[:1000])
spectra["dense_1"].shape  # (1000, 100)
```
"""

import contextlib
import functools
import weakref

import keras
import numpy as np
import tensorflow as tf

from tfbn import structure

MODES = ("inference", "batch")
# Examples per batch of eigendecompositions: bounds the float64 Gram matrices
# of 100-unit layers to about 20 MB each, at no cost in speed.
CHUNK = 250
# Entries of the Jacobians formed by automatic differentiation per chunk (a convolution's block
# is [output size, input size] for each example): fewer examples a chunk where they are large,
# so that a 28x28 feature map's block takes a few hundred MB, not gigabytes.
JACOBIAN_ENTRIES = 2**24
NETWORK = "network"


def has_batch_norm(model):
    """Whether ``model`` has a BatchNormalization (or Batch Renormalization) layer."""
    return bool(structure.batch_norm_layers(model))


def preactivations(model, x, mode="inference"):
    """The input of each nonlinearity: of every activation layer, and of every
    fused ``activation`` (the output of its layer's linear part).

    Args:
        model: A Keras model that is a chain of layers (`tfbn.structure.chain`).
        x: Probe inputs, shape ``[num_examples, ...]``.
        mode: ``"inference"`` or ``"batch"`` (see the module docstring).

    Returns:
        Dict from the name of the layer that holds the nonlinearity (``act_1``,
        ... for `tfbn.build_mlp`) to a numpy array ``[num_examples, ...]``, in
        model order.
    """
    _check_mode(mode)
    compiled = _compiled(model, "preactivations", mode)
    return {name: u.numpy() for name, u in compiled(tf.convert_to_tensor(x, tf.float32)).items()}


def preactivations_function(model, x, mode="inference"):
    """`preactivations` on the fixed probe inputs ``x``: a function of no arguments.

    Each call measures the model's variables as they are then. The first call
    traces the network (about 0.1 s), later ones cost a fifth of an eager
    evaluation (2 against 13 ms for 250 examples through 784-100-100-10 with
    BN, on one CPU thread).
    """
    _check_mode(mode)
    compiled = _compiled(model, "preactivations", mode)
    x = tf.constant(x, tf.float32)
    return lambda: {name: u.numpy() for name, u in compiled(x).items()}


def jacobian_singular_values(model, x, mode="inference"):
    """Singular values of the Jacobians of the model's blocks and of the whole network.

    Block ``k`` runs from the input of the k-th kernel layer (Dense or
    convolution) to the input of the next one; the last kernel layer starts
    no block. For a block of a Dense layer on vectors followed by layers that
    act on each unit alone (BN, an elementwise nonlinearity, dropout), as in
    `tfbn.build_mlp`, the Jacobian with respect to the block's input
    ``h_(k-1)`` is ``diag(g) W^T``, where ``W`` is the kernel and ``g`` the
    per-unit gain: the nonlinearity's slope times BN's ``gamma / sqrt(var +
    eps)``. When the network is made of such blocks and ends in a Dense layer
    without activation, its Jacobian is their product with that layer's
    kernel. Any other block (a convolution, pooling), and any other network,
    is differentiated as a function of one example (BN's statistics held
    fixed): the Jacobian of the block as a linear map at each probe example,
    ``[output size, input size]`` with the block's output and input
    flattened, which grows with the square of the feature map size.

    A model that is not a chain of layers (one with branches, say) gets the
    network's Jacobian alone, in inference mode.

    The squared singular values are the eigenvalues of the smaller Gram
    matrix of each Jacobian, computed in float64 so that small singular
    values keep their accuracy.

    Args:
        model: A Keras model.
        x: Probe inputs, shape ``[num_examples, ...]``.
        mode: ``"inference"`` or ``"batch"`` (see the module docstring).

    Returns:
        Dict from the name of each block's kernel layer (``dense_1``, ...)
        and ``"network"`` to a numpy array ``[num_examples, k]`` of singular
        values in descending order, ``k`` the smaller dimension of that
        Jacobian; NaN for examples whose Jacobian is not finite (a diverged
        network).
    """
    _check_mode(mode)
    x = tf.convert_to_tensor(x, tf.float32)
    state = _compiled(model, "forward", mode)(x)
    spectra = _compiled(model, "spectra", mode)
    chunk = min(CHUNK, max(1, JACOBIAN_ENTRIES // int(state["largest_jacobian"])))
    parts = [spectra(x[i:i + chunk], _rows(state, i, chunk), state["statistics"])
             for i in range(0, x.shape[0], chunk)]
    return {name: np.concatenate([_singular_values(*part[name]) for part in parts]) for name in parts[0]}


def jacobian_singular_values_autodiff(model, x, mode="inference"):
    """`jacobian_singular_values` by `tf.GradientTape.batch_jacobian` and SVD.

    Slow and memory-hungry (it forms every Jacobian); tests use it as the
    reference for the fast path. It applies the Keras layers themselves
    (BN by ``training=False``, or by `tf.nn.batch_normalization` with the
    batch's statistics), not the steps the fast path takes.
    """
    _check_mode(mode)
    x = tf.convert_to_tensor(x, tf.float32)
    if structure.chain(model) is None:
        _steps(model, whole=mode == "inference")  # refuses batch mode
        return {NETWORK: _svd(_batch_jacobian(functools.partial(model, training=False), x)[1])}
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    starts = [i for i, layer in enumerate(layers) if isinstance(layer, structure.KERNEL_LAYERS)]

    def apply(part, v):
        for layer in part:
            v = _reference_layer(layer, v, mode)
        return v

    h = apply(layers[:starts[0]], x) if starts else x
    spectra = {}
    for start, end in zip(starts, starts[1:]):
        out, jacobian = _batch_jacobian(functools.partial(apply, layers[start:end]), h)
        spectra[layers[start].name] = _svd(jacobian)
        h = out
    spectra[NETWORK] = _svd(_batch_jacobian(functools.partial(apply, layers), x)[1])
    return spectra


def spectrum_statistics(singular_values):
    """Summary numbers of singular values, pooled over examples.

    Returns:
        Dict with ``max``, ``min``, ``mean``, ``mean_square`` (the mean
        squared singular value, near 1 under dynamical isometry) and
        ``share_0.5_to_2`` (the share of values within [0.5, 2]).
    """
    values = np.asarray(singular_values)
    return {
        "max": float(values.max()),
        "min": float(values.min()),
        "mean": float(values.mean()),
        "mean_square": float(np.mean(values ** 2)),
        "share_0.5_to_2": float(np.mean((values >= 0.5) & (values <= 2.0))),
    }


def gradient_norms(model, x, y, loss=None):
    """L2 norm of the loss gradient with respect to each kernel of a Dense or convolution layer.

    The loss is that of ``model(x, training=True)`` (BN with the batch's
    statistics, as in a training step) on the labels ``y``: the compiled loss,
    or ``loss`` (see the module docstring). BN's moving statistics are left
    untouched.

    Args:
        model: A Keras model.
        x: A batch of inputs.
        y: Their labels, as the loss expects them.
        loss: ``loss(y, y_pred)``, a scalar tensor; by default the compiled loss.

    Returns:
        Dict from layer name to the norm, a float.
    """
    return {name: float(np.linalg.norm(g)) for name, g in kernel_gradients(model, x, y, loss).items()}


def kernel_gradients(model, x, y, loss=None):
    """The loss gradient with respect to each kernel, as `gradient_norms` defines the loss.

    Returns:
        Dict from layer name to the gradient, a numpy array of the kernel's shape.
    """
    trainable = [tf.convert_to_tensor(v) for v in model.trainable_variables]
    non_trainable = [tf.convert_to_tensor(v) for v in model.non_trainable_variables]
    with tf.GradientTape() as tape:
        tape.watch(trainable)
        value = _training_loss(model, x, y, non_trainable, loss)(trainable)
    gradients = dict(zip((v.path for v in model.trainable_variables), tape.gradient(value, trainable)))
    return {layer.name: gradients[layer.kernel.path].numpy() for layer in structure.kernel_layers(model)}


def internal_covariate_shift(model, x, y, loss=None):
    """Internal covariate shift of each kernel layer, as Santurkar et al. (2018) define it.

    For kernel layer i (Dense or convolution), G is the loss gradient with
    respect to its kernel at the current weights on the batch ``(x, y)``, and
    G' the same gradient on the same batch once every layer before it in
    model order (its kernel and bias, BN's gamma and beta) has taken this
    step's update by the model's compiled optimizer, the later layers keeping
    their values, and the non-trainable state of those earlier layers is the
    one the step leaves (BN's moving statistics, which Batch
    Renormalization's corrections read, and noisy BN's next draw). A layer
    with nothing trainable before it (the first kernel layer, usually) has
    l2 0 and cosine 1. BN uses the batch's statistics in every forward pass.
    Nothing changes: the weights, BN's moving statistics and the optimizer's
    state (its step counter and slots) are as they were.

    Args:
        model: A Keras model with an optimizer (``model.optimizer``, as
            ``compile`` sets it).
        x: A batch of inputs.
        y: Their labels, as the loss expects them.
        loss: ``loss(y, y_pred)``, a scalar tensor; by default the compiled
            loss (see the module docstring).

    Returns:
        Dict from kernel layer name to ``{"l2": ||G - G'||, "cosine": cos(G, G')}``.
    """
    if getattr(model, "optimizer", None) is None:
        raise ValueError("internal_covariate_shift needs a model compiled with an optimizer: "
                         "its update is the one whose effect is measured; call model.compile first")
    variables = model.trainable_variables
    index = {v.path: k for k, v in enumerate(variables)}
    weights = [tf.convert_to_tensor(v) for v in variables]
    state_variables = model.non_trainable_variables
    # By identity: the seed generators of noisy BN's layers share one path.
    state_index = {id(v): k for k, v in enumerate(state_variables)}
    state = [tf.convert_to_tensor(v) for v in state_variables]
    _, gradients = _value_and_gradients(_training_loss(model, x, y, state, loss), weights)
    updated = _after_one_update(model.optimizer, variables, gradients)
    _, next_state = model.stateless_call(weights, state, x, training=True)
    kernels = {id(layer) for layer in structure.kernel_layers(model)}
    moved, moved_state = set(), set()
    shifts = {}
    for layer in structure.layers(model):
        if id(layer) in kernels:
            shifts[layer.name] = {"l2": 0.0, "cosine": 1.0}
            if moved:
                shifted = [updated[k] if k in moved else w for k, w in enumerate(weights)]
                shifted_state = [next_state[k] if k in moved_state else v for k, v in enumerate(state)]
                _, shifted_gradients = _value_and_gradients(
                    _training_loss(model, x, y, shifted_state, loss), shifted)
                shifts[layer.name] = _shift(*(t[index[layer.kernel.path]]
                                              for t in (gradients, shifted_gradients)))
        moved.update(index[v.path] for v in layer.trainable_variables)
        moved_state.update(state_index[id(v)] for v in layer.non_trainable_variables)
    return shifts


# The step sizes of the landscape probe, as multiples of the learning rate:
# a geometric grid around the step that training takes.
LANDSCAPE_STEPS = (0.25, 0.5, 1.0, 2.0, 4.0)


def landscape_smoothness(model, x, y, etas=None, loss=None):
    """How smooth the loss is along its gradient (Santurkar et al. 2018, section 3.1).

    With w all trainable variables, g the loss gradient on the batch
    ``(x, y)`` (BN with the batch's statistics) and each eta of ``etas``,
    the probe evaluates L(w - eta g) and its gradient g_eta; norms and
    differences are over all variables concatenated. Nothing of the model
    changes (BN's moving statistics included).

    Args:
        model: A Keras model.
        x: A batch of inputs.
        y: Their labels.
        etas: Positive step sizes; by default `LANDSCAPE_STEPS` times the
            learning rate of ``model.optimizer``.
        loss: ``loss(y, y_pred)``, a scalar tensor; by default the compiled
            loss (see the module docstring).

    Returns:
        ``{"loss_variation": max - min of L(w - eta g) over the etas,
        "gradient_predictiveness": max ||g - g_eta||,
        "beta_smoothness": max ||g - g_eta|| / ||eta g||}``.
    """
    if etas is None:
        if getattr(model, "optimizer", None) is None:
            raise ValueError("landscape_smoothness needs etas, or a model compiled with an "
                             "optimizer whose learning rate sets them")
        rate = float(model.optimizer.learning_rate)
        etas = [rate * multiple for multiple in LANDSCAPE_STEPS]
    etas = [float(eta) for eta in etas]
    if not etas or min(etas) <= 0:
        raise ValueError(f"etas must be positive step sizes, got {etas}")
    weights = [tf.convert_to_tensor(v) for v in model.trainable_variables]
    loss = _training_loss(model, x, y, [tf.convert_to_tensor(v) for v in model.non_trainable_variables],
                          loss)
    _, gradients = _value_and_gradients(loss, weights)
    g = _concatenated(gradients)
    losses, differences, ratios = [], [], []
    for eta in etas:
        value, moved = _value_and_gradients(loss, [w - eta * d for w, d in zip(weights, gradients)])
        difference = np.linalg.norm(g - _concatenated(moved))
        losses.append(value)
        differences.append(difference)
        ratios.append(difference / (eta * np.linalg.norm(g)))
    return {"loss_variation": float(max(losses) - min(losses)),
            "gradient_predictiveness": float(max(differences)),
            "beta_smoothness": float(max(ratios))}


def mean_cross_entropy(y, logits):
    """The training loss of `tfbn.models.MLP` and `tfbn.packed.PackedModel` branches, and the
    loss the gradient instruments take for a model compiled without one."""
    return keras.ops.mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))


def _training_loss(model, x, y, non_trainable, loss=None):
    """The loss of a training-mode call with the given variable values, stateless: ``loss``,
    else the compiled loss, else the mean cross-entropy of logits (see the module docstring)."""

    def training_loss(trainable):
        y_pred, _ = model.stateless_call(trainable, non_trainable, x, training=True)
        if loss is not None:
            return loss(y, y_pred)
        if model.loss is not None:
            return model.compute_loss(x=x, y=y, y_pred=y_pred, training=True)
        return mean_cross_entropy(y, y_pred)

    return training_loss


def _shift(gradient, shifted):
    """``{"l2": ||G - G'||, "cosine": cos(G, G')}`` in float64."""
    g, g_shifted = (tf.reshape(t, [-1]).numpy().astype(np.float64) for t in (gradient, shifted))
    l2 = float(np.linalg.norm(g - g_shifted))
    scale = np.linalg.norm(g) * np.linalg.norm(g_shifted)
    return {"l2": l2, "cosine": float(g @ g_shifted / scale) if scale > 0 else float(l2 == 0)}


def _value_and_gradients(loss, weights):
    with tf.GradientTape() as tape:
        tape.watch(weights)
        value = loss(weights)
    return float(value), tape.gradient(value, weights)


def _after_one_update(optimizer, variables, gradients):
    """The variables' values after ``optimizer`` applies ``gradients``; all state restored."""
    if not optimizer.built:
        optimizer.build(variables)
    state = [v.numpy() for v in optimizer.variables]
    values = [v.numpy() for v in variables]
    optimizer.apply_gradients(zip(gradients, variables))
    updated = [tf.convert_to_tensor(v.numpy()) for v in variables]
    for variable, value in zip([*optimizer.variables, *variables], [*state, *values]):
        variable.assign(value)
    return updated


def _concatenated(tensors):
    return np.concatenate([tf.reshape(t, [-1]).numpy().astype(np.float64) for t in tensors])


# Compiled instruments of each model: {model: {(name, mode): tf.function}}. Weak, so that a
# model's traces go with it; the functions hold its layers, or the model weakly.
_COMPILED = weakref.WeakKeyDictionary()


def _compiled(model, name, mode):
    """The tf.function of ``_<name>(steps, mode, ...)`` for ``model``, made once."""
    functions = _COMPILED.setdefault(model, {})
    if (name, mode) not in functions:
        steps = _steps(model, whole=name != "preactivations" and mode == "inference")
        # A partial, not a closure: TensorFlow counts traces per code object, and would
        # take the first trace of each of many models for a function retracing in a loop.
        functions[name, mode] = tf.function(functools.partial(_FUNCTIONS[name], steps, mode))
    return functions[name, mode]


def _steps(model, whole=False):
    """The model's chain of steps; with ``whole``, a model that is not a chain is one step, its own call."""
    steps = structure.chain(model)
    if steps is not None:
        return steps
    if whole:
        return [structure.Step(weakref.proxy(model), structure.OTHER)]
    raise ValueError(f"the preactivation and block Jacobian instruments, and BN's batch mode, "
                     f"measure chains of layers: {structure.chain_problem(model)}")


def _preactivations(steps, mode, x):
    inputs, _ = _pass(steps, mode, x)
    return {step.layer.name: h for step, h in zip(steps, inputs) if step.kind == structure.NONLINEARITY}


def _forward(steps, mode, x):
    """BN's statistics over the probe, per block its gains if it is diagonal, else its input,
    and the entries per example of the largest Jacobian that `_spectra` differentiates."""
    inputs, statistics = _pass(steps, mode, x)
    gains, block_inputs, sizes = {}, {}, [1]
    for name, (start, end) in _blocks(steps).items():
        if _is_diagonal(steps[start:end], inputs[start]):
            gains[name] = _gain(steps[start + 1:end], inputs[start + 1:end + 1], statistics)
        else:
            block_inputs[name] = inputs[start]
            sizes.append(_size(inputs[start]) * _size(inputs[end]))
    if not _is_product(gains, block_inputs, steps):
        sizes.append(_size(x) * _size(inputs[-1]))
    return {"statistics": statistics, "gains": gains, "block_inputs": block_inputs,
            "largest_jacobian": tf.constant(max(sizes), tf.int64)}


def _pass(steps, mode, x):
    """The input of every step on the probe and then the output, and the statistics BN normalizes by."""
    inputs, statistics = [], {}
    h = x
    for step in steps:
        inputs.append(h)
        if step.kind == structure.NORMALIZATION:
            statistics[step.layer.name] = _statistics(step.layer, h, mode)
        h = _apply(step, h, statistics)
    return inputs + [h], statistics


def _spectra(steps, mode, x, rows, statistics):
    """Eigenvalues and finiteness of every block's and the network's Gram matrix, for one chunk.

    ``rows`` holds the chunk's rows of `_forward`'s gains and block inputs.
    """
    grams = {}
    for name, (start, end) in _blocks(steps).items():
        if name in rows["gains"]:
            grams[name] = _block_gram(_kernel(steps[start].layer), rows["gains"][name])
        else:
            block = functools.partial(_apply_all, steps[start:end], statistics=statistics)
            grams[name] = _gram(_jacobian(block, rows["block_inputs"][name]))
    if _is_product(rows["gains"], rows["block_inputs"], steps):
        grams[NETWORK] = _network_gram(steps, list(rows["gains"].values()))
    else:
        grams[NETWORK] = _gram(_jacobian(functools.partial(_apply_all, steps, statistics=statistics), x))
    return {name: _eigenvalues(gram) for name, gram in grams.items()}


_FUNCTIONS = {"preactivations": _preactivations, "forward": _forward, "spectra": _spectra}


def _rows(state, start, chunk):
    return {part: {name: t[start:start + chunk] for name, t in state[part].items()}
            for part in ("gains", "block_inputs")}


def _blocks(steps):
    """Block name -> (start, end) of its steps: from a kernel layer's linear part to the next one's."""
    starts = _kernel_steps(steps)
    return {steps[start].layer.name: (start, end) for start, end in zip(starts, starts[1:])}


def _kernel_steps(steps):
    return [i for i, step in enumerate(steps) if step.kind == structure.LINEAR]


def _is_diagonal(block, h):
    """Whether the block is a Dense layer on vectors followed by steps that act on each unit alone."""
    return (isinstance(block[0].layer, keras.layers.Dense) and h.shape.rank == 2
            and all(step.elementwise for step in block[1:]))


def _is_product(gains, block_inputs, steps):
    """Whether the network's Jacobian is the product of its blocks' and the last kernel."""
    return bool(gains) and not block_inputs and _is_plain(steps)


def _is_plain(steps):
    """Whether the network is its blocks and a last Dense layer without activation (up to flattening)."""
    last = _kernel_steps(steps)[-1]
    head, tail = steps[:_kernel_steps(steps)[0]], steps[last:]
    return (all(step.kind == structure.IDENTITY or isinstance(step.layer, keras.layers.Flatten)
                for step in head)
            and isinstance(tail[0].layer, keras.layers.Dense)
            and all(step.kind == structure.IDENTITY for step in tail[1:]))


def _gain(steps, inputs, statistics):
    """d(block output) / d(Dense output) per unit, in float64: the slopes times BN's scales.

    ``inputs`` are those of ``steps`` and then the block's output.
    """
    gain = tf.ones_like(inputs[0])
    for step, u in zip(steps, inputs):
        if step.kind == structure.NORMALIZATION:
            gain = gain * _scale(step.layer, statistics[step.layer.name][1])
        elif step.kind == structure.NONLINEARITY:
            with tf.GradientTape() as tape:
                tape.watch(u)
                out = _apply(step, u, statistics)
            # The nonlinearity acts elementwise, so the gradient of the sum is its slope.
            gain = gain * tape.gradient(out, u)
    return tf.cast(gain, tf.float64)


def _network_gram(steps, gains):
    """Gram matrix of the network's Jacobian, from its blocks' gains and kernels."""
    kernels = [_kernel(steps[i].layer) for i in _kernel_steps(steps)]
    # d out / d x = W_L^T diag(g_n) W_n^T ... diag(g_1) W_1^T, built from the output side;
    # the Gram matrix takes the last factor W_1^T so that no [outputs, features] matrix is formed.
    jacobian = tf.transpose(kernels[-1])[None]
    for kernel, gain in reversed(list(zip(kernels[:-1], gains))[1:]):
        jacobian = (jacobian * gain[:, None, :]) @ tf.transpose(kernel)
    return _product_gram(jacobian * gains[0][:, None, :], kernels[0])


def _apply_all(steps, h, statistics):
    for step in steps:
        h = _apply(step, h, statistics)
    return h


def _apply(step, h, statistics):
    """One step at evaluation, BN with the given statistics."""
    layer = step.layer
    if step.kind == structure.NORMALIZATION:
        mean, variance = statistics[layer.name]
        return keras.ops.batch_normalization(h, mean, variance, axis=_channel_axis(layer), offset=layer.beta,
                                             scale=layer.gamma, epsilon=layer.epsilon)
    if step.kind == structure.IDENTITY:
        return h
    if step.kind == structure.NONLINEARITY and structure.has_fused_activation(layer):
        return layer.activation(h)
    if step.without_activation:
        with _activation_left_out(layer):
            return layer(h, training=False)
    return layer(h, training=False)


@contextlib.contextmanager
def _activation_left_out(layer):
    """The layer's linear part: its fused activation replaced by the identity while traced."""
    activation = layer.activation
    layer.activation = keras.activations.linear
    try:
        yield
    finally:
        layer.activation = activation


def _statistics(bn, v, mode):
    """The mean and variance BN normalizes ``v`` by: its moving ones, or ``v``'s own held fixed."""
    if mode == "inference":
        return tf.convert_to_tensor(bn.moving_mean), tf.convert_to_tensor(bn.moving_variance)
    return tuple(tf.stop_gradient(m) for m in keras.ops.moments(v, axes=_reduction_axes(bn, v)))


def _scale(bn, variance):
    """BN's per-unit scale ``gamma / sqrt(var + eps)``."""
    scale = tf.math.rsqrt(variance + bn.epsilon)
    return scale * bn.gamma if bn.scale else scale


def _channel_axis(bn):
    return getattr(bn, "axis", -1)  # Batch Renormalization normalizes the last axis


def _reduction_axes(bn, v):
    channel = _channel_axis(bn) % v.shape.rank
    return [axis for axis in range(v.shape.rank) if axis != channel]


def _kernel(layer):
    return tf.cast(layer.kernel, tf.float64)


def _jacobian(f, h):
    """Per-example Jacobians of ``f`` at ``h``, ``[examples, output size, input size]`` in float64."""
    with tf.GradientTape() as tape:
        tape.watch(h)
        out = f(h)
    jacobian = tape.batch_jacobian(out, h)
    examples = tf.shape(h)[0]
    return tf.cast(tf.reshape(jacobian, [examples, _size(out), _size(h)]), tf.float64)


def _size(t):
    return int(np.prod(t.shape[1:]))


def _gram(jacobian):
    """Gram matrix of batched Jacobians on their smaller side."""
    if jacobian.shape[1] <= jacobian.shape[2]:
        return jacobian @ tf.transpose(jacobian, [0, 2, 1])
    return tf.transpose(jacobian, [0, 2, 1]) @ jacobian


def _block_gram(kernel, gain):
    """Gram matrix of ``J = diag(gain) W^T`` on its smaller side."""
    fan_in, units = kernel.shape
    if units <= fan_in:  # J J^T: gain_i (W^T W)_ij gain_j
        return gain[:, :, None] * (tf.transpose(kernel) @ kernel) * gain[:, None, :]
    return (kernel * tf.square(gain)[:, None, :]) @ tf.transpose(kernel)  # J^T J


def _product_gram(left, kernel):
    """Gram matrix of ``J = left W^T`` on its smaller side; ``left`` is batched."""
    if left.shape[1] <= kernel.shape[0]:
        return left @ (tf.transpose(kernel) @ kernel) @ tf.transpose(left, [0, 2, 1])
    jacobian = left @ tf.transpose(kernel)
    return tf.transpose(jacobian, [0, 2, 1]) @ jacobian


def _eigenvalues(gram):
    """Descending eigenvalues, and which Gram matrices were finite (the others give zeros)."""
    # A diverged network has non-finite Jacobians, which the eigensolver rejects.
    finite = tf.reduce_all(tf.math.is_finite(gram), axis=[1, 2])
    gram = tf.where(finite[:, None, None], gram, tf.zeros_like(gram))
    return tf.reverse(tf.linalg.eigvalsh(gram), [1]), finite


def _singular_values(eigenvalues, finite):
    """Square roots of the eigenvalues; NaN for a non-finite Gram matrix."""
    # Round-off can leave the zero eigenvalues of a rank-deficient Jacobian slightly negative.
    return np.where(finite.numpy()[:, None], np.sqrt(np.maximum(eigenvalues.numpy(), 0.0)), np.nan)


def _reference_layer(layer, v, mode):
    """A layer as Keras applies it at evaluation; BN in batch mode by `tf.nn` and the batch's statistics."""
    if mode == "batch" and isinstance(layer, structure.BATCH_NORM_LAYERS):
        mean, variance = (tf.stop_gradient(m) for m in tf.nn.moments(v, axes=_reduction_axes(layer, v)))
        return tf.nn.batch_normalization(v, mean, variance, layer.beta, layer.gamma, layer.epsilon)
    return layer(v, training=False)


def _batch_jacobian(f, x):
    """``f(x)`` and its per-example Jacobians ``[examples, output size, input size]``."""
    # A loop over the outputs: pfor's vectorisation compiles a graph per call,
    # which costs seconds for these small models.
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = f(x)
    jacobian = tape.batch_jacobian(y, x, experimental_use_pfor=False)
    return y, tf.reshape(jacobian, [x.shape[0], _size(y), _size(x)])


def _svd(jacobians):
    return np.linalg.svd(jacobians.numpy().astype(np.float64), compute_uv=False)


def _check_mode(mode):
    if mode not in MODES:
        raise ValueError(f"unknown BN mode {mode!r}; choose one of: {', '.join(MODES)}")
