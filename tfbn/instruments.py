"""Measurements of a `tfbn.build_mlp` network that the instrument callbacks log.

* `preactivations`: the input of each hidden nonlinearity on a probe set
  (`preactivations_function`: the same, compiled, for measuring repeatedly).
* `jacobian_singular_values`: per-example singular values of each hidden
  block's Jacobian and of the whole network's, from their product structure.
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

BN is evaluated in one of two modes:

* ``"inference"``: BN uses its moving mean and variance, as at test time;
  the Jacobians are those of the deployed network.
* ``"batch"``: BN uses the mean and variance of the probe set itself, held
  constant (not differentiated): the normalisation a training step applies to
  a batch like the probe set, without the coupling between examples that
  differentiating the batch statistics would add.

The noise of noisy BN (`tfbn.noise.DistributionShift`) is left out in both
modes: it is the identity at evaluation, and a probe measures the network,
not one random draw of its training noise. The gradient, covariate-shift and
landscape probes, which differentiate the training loss, do include it.

Example:

```python
spectra = tfbn.instruments.jacobian_singular_values(model, x_test[:1000])
spectra["dense_1"].shape  # (1000, 100)
```
"""

import dataclasses
import functools

import keras
import numpy as np
import tensorflow as tf

from tfbn.renorm import BatchRenormalization

MODES = ("inference", "batch")
# Examples per batch of eigendecompositions: bounds the float64 Gram matrices
# of 100-unit layers to about 20 MB each, at no cost in speed.
CHUNK = 250


@dataclasses.dataclass(frozen=True)
class _Block:
    """One hidden block ``dense_i`` -> BN and nonlinearity ``act_i``, in model order."""

    dense: keras.layers.Layer
    activation: keras.layers.Layer
    bn: keras.layers.Layer = None
    bn_before: bool = False


def _hidden_blocks(model):
    """The hidden blocks of a `tfbn.build_mlp` network, found by layer name."""
    order = {layer.name: position for position, layer in enumerate(model.layers)}
    blocks = []
    while f"dense_{len(blocks) + 1}" in order:
        i = len(blocks) + 1
        bn = model.get_layer(f"bn_{i}") if f"bn_{i}" in order else None
        if bn is not None and not isinstance(bn, (keras.layers.BatchNormalization,
                                                  BatchRenormalization)):
            # Other normalizations need their own gain and batch-mode statistics in `_normalize`.
            raise TypeError(f"{bn.name} is a {type(bn).__name__}; the Jacobian and percentile "
                            "instruments support BatchNormalization and BatchRenormalization")
        blocks.append(_Block(
            dense=model.get_layer(f"dense_{i}"),
            activation=model.get_layer(f"act_{i}"),
            bn=bn,
            bn_before=bn is not None and order[f"bn_{i}"] < order[f"act_{i}"],
        ))
    return blocks


def has_batch_norm(model):
    """Whether any hidden block of a `tfbn.build_mlp` network has BN (or Batch Renormalization)."""
    return any(block.bn is not None for block in _hidden_blocks(model))


def preactivations(model, x, mode="inference"):
    """The input of each hidden nonlinearity: the BN output for BN before it,
    the Dense output otherwise.

    Args:
        model: A `tfbn.build_mlp` network.
        x: Probe inputs, shape ``[num_examples, features]``.
        mode: ``"inference"`` or ``"batch"`` (see the module docstring).

    Returns:
        Dict from nonlinearity name (``act_1``, ...) to a numpy array
        ``[num_examples, units]``.
    """
    return {block.activation.name: u.numpy() for block, u, _ in _forward(model, x, mode)}


def preactivations_function(model, x, mode="inference"):
    """`preactivations` compiled for repeated calls: a function of no arguments.

    Each call measures the model's variables as they are then, on the probe
    inputs ``x`` fixed here. The first call traces the network (about 0.1 s),
    later ones cost a fifth of an eager `preactivations` (2 against 13 ms for
    250 examples through 784-100-100-10 with BN, on one CPU thread).
    """
    _check_mode(mode)
    # A partial, not a closure: TensorFlow counts traces per code object, and would
    # take the first trace of each of many models for a function retracing in a loop.
    compiled = tf.function(functools.partial(_preactivation_tensors, model, tf.constant(x, tf.float32), mode))
    return lambda: {name: u.numpy() for name, u in compiled().items()}


def _preactivation_tensors(model, x, mode):
    return {block.activation.name: u for block, u, _ in _forward(model, x, mode)}


def jacobian_singular_values(model, x, mode="inference"):
    """Singular values of the hidden blocks' and the network's Jacobians.

    The Jacobian of block ``l`` with respect to its input ``h_(l-1)`` is
    ``diag(g) W^T``, where ``W`` is the kernel of ``dense_l`` and ``g`` the
    per-unit gain: the nonlinearity's slope times BN's ``gamma /
    sqrt(var + eps)`` (either order, both are diagonal). The network's is
    the product of the blocks' with the ``logits`` kernel. The squared
    singular values are the eigenvalues of the smaller Gram matrix of each
    Jacobian (at most units x units), computed in float64 so that small
    singular values keep their accuracy.

    Args:
        model: A `tfbn.build_mlp` network.
        x: Probe inputs, shape ``[num_examples, features]``.
        mode: ``"inference"`` or ``"batch"`` (see the module docstring).

    Returns:
        Dict from ``dense_1``, ``dense_2``, ... and ``"network"`` to a numpy
        array ``[num_examples, k]`` of singular values in descending order,
        ``k`` the smaller dimension of that Jacobian; NaN for examples whose
        Jacobian is not finite (a diverged network).
    """
    blocks, _, gains = zip(*_forward(model, x, mode))
    num_examples = gains[0].shape[0]
    parts = [_spectra(model, blocks, [gain[i:i + CHUNK] for gain in gains])
             for i in range(0, num_examples, CHUNK)]
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def jacobian_singular_values_autodiff(model, x, mode="inference"):
    """`jacobian_singular_values` by `tf.GradientTape.batch_jacobian` and SVD.

    Slow and memory-hungry (it forms every Jacobian); tests use it as the
    reference for the fast path.
    """
    _check_mode(mode)
    x = tf.convert_to_tensor(x, tf.float32)
    spectra = {}
    h = x
    for block in _hidden_blocks(model):
        out, jacobian = _batch_jacobian(lambda v: _apply_block(block, v, mode), h)
        spectra[block.dense.name] = _svd(jacobian)
        h = out

    def network(v):
        for block in _hidden_blocks(model):
            v = _apply_block(block, v, mode)
        return model.get_layer("logits")(v)

    spectra["network"] = _svd(_batch_jacobian(network, x)[1])
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


def gradient_norms(model, x, y):
    """L2 norm of the loss gradient with respect to each Dense kernel.

    The loss is the mean sparse categorical cross-entropy of the logits of
    ``model(x, training=True)`` (BN with the batch's statistics, as in a
    training step). BN's moving statistics are left untouched.

    Args:
        model: A network whose ``dense_*`` and ``logits`` layers have kernels.
        x: A batch of inputs.
        y: Their integer labels.

    Returns:
        Dict from layer name to the norm, a float.
    """
    return {name: float(np.linalg.norm(g)) for name, g in kernel_gradients(model, x, y).items()}


def kernel_gradients(model, x, y):
    """The loss gradient with respect to each Dense kernel, as `gradient_norms` defines the loss.

    Returns:
        Dict from layer name to the gradient, a numpy array of the kernel's shape.
    """
    trainable = [tf.convert_to_tensor(v) for v in model.trainable_variables]
    non_trainable = [tf.convert_to_tensor(v) for v in model.non_trainable_variables]
    with tf.GradientTape() as tape:
        tape.watch(trainable)
        # stateless_call: a training-mode call without updating BN's moving statistics.
        logits, _ = model.stateless_call(trainable, non_trainable, x, training=True)
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))
    gradients = dict(zip((v.path for v in model.trainable_variables), tape.gradient(loss, trainable)))
    return {layer.name: gradients[layer.kernel.path].numpy()
            for layer in model.layers if isinstance(layer, keras.layers.Dense)}


def internal_covariate_shift(model, x, y, loss=None):
    """Internal covariate shift of each Dense layer, as Santurkar et al. (2018) define it.

    For layer i, G is the loss gradient with respect to its kernel at the
    current weights on the batch ``(x, y)``, and G' the same gradient on the
    same batch once the hidden blocks before i (their Dense kernel and bias,
    BN gamma and beta) have taken this step's update by the model's compiled
    optimizer, the later layers keeping their values, and the non-trainable
    state of those earlier blocks is the one the step leaves (BN's moving
    statistics, which Batch Renormalization's corrections read, and noisy
    BN's next draw). The ``logits`` layer
    counts as the last layer; ``dense_1`` has no earlier layers (l2 0, cosine 1).
    BN uses the batch's statistics in every forward pass. Nothing changes:
    the weights, BN's moving statistics and the optimizer's state (its step
    counter and slots) are as they were.

    Args:
        model: A `tfbn.build_mlp` network with an optimizer (``model.optimizer``,
            as ``compile`` sets it) and, unless ``loss`` is given, a compiled loss.
        x: A batch of inputs.
        y: Their labels, as the loss expects them.
        loss: ``loss(y, logits)``, a scalar tensor; by default the compiled loss.

    Returns:
        Dict from Dense layer name to ``{"l2": ||G - G'||, "cosine": cos(G, G')}``.
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
    depth = len(_hidden_blocks(model))
    moved, moved_state = set(), set()
    shifts = {}
    for i, layer in enumerate([model.get_layer(f"dense_{j}") for j in range(1, depth + 1)]
                              + [model.get_layer("logits")]):
        if i > 0:
            for earlier in _block_layers(model, i):
                moved.update(index[v.path] for v in earlier.trainable_variables)
                moved_state.update(state_index[id(v)] for v in earlier.non_trainable_variables)
        if not moved:  # the first layer: nothing before it moves
            shifts[layer.name] = {"l2": 0.0, "cosine": 1.0}
            continue
        shifted = [updated[k] if k in moved else w for k, w in enumerate(weights)]
        shifted_state = [next_state[k] if k in moved_state else v for k, v in enumerate(state)]
        _, shifted_gradients = _value_and_gradients(
            _training_loss(model, x, y, shifted_state, loss), shifted)
        g, g_shifted = (tf.reshape(t[index[layer.kernel.path]], [-1]).numpy().astype(np.float64)
                        for t in (gradients, shifted_gradients))
        l2 = float(np.linalg.norm(g - g_shifted))
        scale = np.linalg.norm(g) * np.linalg.norm(g_shifted)
        cosine = float(g @ g_shifted / scale) if scale > 0 else float(l2 == 0)
        shifts[layer.name] = {"l2": l2, "cosine": cosine}
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
        model: A `tfbn.build_mlp` network compiled with a loss, unless ``loss`` is given.
        x: A batch of inputs.
        y: Their labels.
        etas: Positive step sizes; by default `LANDSCAPE_STEPS` times the
            learning rate of ``model.optimizer``.
        loss: ``loss(y, logits)``, a scalar tensor; by default the compiled loss.

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


def _block_layers(model, i):
    """The layers of hidden block ``i`` of a `tfbn.build_mlp` network (Dense, BN, noise, nonlinearity)."""
    names = {f"{kind}_{i}" for kind in ("dense", "bn", "noise", "act")}
    return [layer for layer in model.layers if layer.name in names]


def _training_loss(model, x, y, non_trainable, loss=None):
    """The loss (by default the compiled one) of a training-mode call with the given
    variable values, stateless."""

    def training_loss(trainable):
        logits, _ = model.stateless_call(trainable, non_trainable, x, training=True)
        if loss is not None:
            return loss(y, logits)
        return model.compute_loss(x=x, y=y, y_pred=logits, training=True)

    return training_loss


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


def _forward(model, x, mode):
    """Per hidden block: (block, nonlinearity input, gain = d h_l / d(dense output) per unit)."""
    _check_mode(mode)
    h = tf.convert_to_tensor(x, tf.float32)
    out = []
    for block in _hidden_blocks(model):
        u = block.dense(h)
        gain = 1.0
        if block.bn_before:
            u, gain = _normalize(block.bn, u, mode)
        with tf.GradientTape() as tape:
            tape.watch(u)
            h = block.activation(u)
        # The nonlinearity acts elementwise, so the gradient of the sum is its slope.
        slope = tape.gradient(h, u)
        if block.bn is not None and not block.bn_before:
            h, gain = _normalize(block.bn, h, mode)
        out.append((block, u, tf.cast(slope * gain, tf.float64)))
    return out


def _apply_block(block, h, mode):
    """The block's output, by the Keras layers and `tf.nn`: independent of `_normalize`."""
    def bn(v):
        if mode == "inference":
            return block.bn(v, training=False)
        mean, variance = (tf.stop_gradient(m) for m in tf.nn.moments(v, axes=[0]))
        return tf.nn.batch_normalization(v, mean, variance, block.bn.beta, block.bn.gamma,
                                         block.bn.epsilon)

    u = block.dense(h)
    if block.bn_before:
        u = bn(u)
    h = block.activation(u)
    if block.bn is not None and not block.bn_before:
        h = bn(h)
    return h


def _normalize(bn, v, mode):
    """BN's output and its per-unit scale ``gamma / sqrt(var + eps)``."""
    if mode == "inference":
        mean, variance = bn.moving_mean, bn.moving_variance
    else:
        mean, variance = (tf.stop_gradient(m) for m in keras.ops.moments(v, axes=[0]))
    out = keras.ops.batch_normalization(v, mean, variance, axis=-1, offset=bn.beta,
                                        scale=bn.gamma, epsilon=bn.epsilon)
    scale = tf.math.rsqrt(tf.convert_to_tensor(variance) + bn.epsilon)
    if bn.scale:
        scale = scale * bn.gamma
    return out, scale


def _kernel(layer):
    return tf.cast(layer.kernel, tf.float64)


def _spectra(model, blocks, gains):
    """Singular values of every block's and the network's Jacobian for one chunk of examples."""
    spectra = {block.dense.name: _singular_values(_block_gram(_kernel(block.dense), gain))
               for block, gain in zip(blocks, gains)}
    # d logits / d x = W_L^T diag(g_n) W_n^T ... diag(g_1) W_1^T, built from the logits side;
    # the Gram matrix takes the last factor W_1^T so that no [classes, features] matrix is formed.
    jacobian = tf.transpose(_kernel(model.get_layer("logits")))[None]
    for block, gain in reversed(list(zip(blocks, gains))[1:]):
        jacobian = (jacobian * gain[:, None, :]) @ tf.transpose(_kernel(block.dense))
    spectra["network"] = _singular_values(_gram(jacobian * gains[0][:, None, :], _kernel(blocks[0].dense)))
    return spectra


def _block_gram(kernel, gain):
    """Gram matrix of ``J = diag(gain) W^T`` on its smaller side."""
    fan_in, units = kernel.shape
    if units <= fan_in:  # J J^T: gain_i (W^T W)_ij gain_j
        return gain[:, :, None] * (tf.transpose(kernel) @ kernel) * gain[:, None, :]
    return (kernel * tf.square(gain)[:, None, :]) @ tf.transpose(kernel)  # J^T J


def _gram(left, kernel):
    """Gram matrix of ``J = left W^T`` on its smaller side; ``left`` is batched."""
    if left.shape[1] <= kernel.shape[0]:
        return left @ (tf.transpose(kernel) @ kernel) @ tf.transpose(left, [0, 2, 1])
    jacobian = left @ tf.transpose(kernel)
    return tf.transpose(jacobian, [0, 2, 1]) @ jacobian


def _singular_values(gram):
    """Descending square roots of the eigenvalues; NaN for a non-finite Gram matrix."""
    # A diverged network has non-finite Jacobians, which the eigensolver rejects.
    finite = tf.reduce_all(tf.math.is_finite(gram), axis=[1, 2]).numpy()
    if not finite.all():
        gram = tf.where(finite[:, None, None], gram, 0.0)
    eigenvalues = tf.linalg.eigvalsh(gram).numpy()[:, ::-1]
    # Round-off can leave the zero eigenvalues of a rank-deficient Jacobian slightly negative.
    return np.where(finite[:, None], np.sqrt(np.maximum(eigenvalues, 0.0)), np.nan)


def _batch_jacobian(f, x):
    """``f(x)`` and its per-example Jacobians ``[examples, outputs, inputs]``."""
    # A loop over the outputs: pfor's vectorisation compiles a graph per call,
    # which costs seconds for these small models.
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = f(x)
    return y, tape.batch_jacobian(y, x, experimental_use_pfor=False)


def _svd(jacobians):
    return np.linalg.svd(jacobians.numpy().astype(np.float64), compute_uv=False)


def _check_mode(mode):
    if mode not in MODES:
        raise ValueError(f"unknown BN mode {mode!r}; choose one of: {', '.join(MODES)}")
