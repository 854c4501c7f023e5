"""The internal-covariate-shift and loss-landscape probes against a separate computation.

The reference trains nothing through the probes' code: it copies the weights
(and the optimizer's state) into a second network, takes gradients with its
own tape and loss, and moves the weights itself.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfbn
from tfbn.instruments import internal_covariate_shift, landscape_smoothness
from tfbn.models import BN_PLACEMENTS

HIDDEN = (6, 5, 4)


def network(bn, optimizer):
    model = tfbn.build_mlp((7,), 3, HIDDEN, "tanh", bn, seed=3)
    model.compile(keras.optimizers.get({"class_name": optimizer, "config": {"learning_rate": 0.05}}),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 7)).astype("float32"), rng.integers(0, 3, n)


def trained(bn, optimizer):
    """A network a few steps into training, so that BN and the optimizer hold state."""
    model = network(bn, optimizer)
    model.fit(*data(64, seed=1), batch_size=16, epochs=1, shuffle=False, verbose=0)
    return model


def twin(model, bn, optimizer):
    """A second network with the same weights, BN statistics and optimizer state."""
    copy = network(bn, optimizer)
    for mine, theirs in zip(copy.variables, model.variables):  # noisy BN's seeds too
        mine.assign(theirs)
    copy.optimizer.build(copy.trainable_variables)
    for mine, theirs in zip(copy.optimizer.variables, model.optimizer.variables):
        mine.assign(theirs)
    return copy


def reference_gradients(model, x, y, keep_state=False):
    """Loss and gradients by a plain tape and tf.nn's cross-entropy.

    The training-mode call moves BN's statistics and noisy BN's draws on; they
    are put back unless ``keep_state``.
    """
    state = [v.numpy() for v in model.non_trainable_variables]
    with tf.GradientTape() as tape:
        logits = model(x, training=True)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
    gradients = tape.gradient(loss, model.trainable_variables)
    if not keep_state:
        restore(model.non_trainable_variables, state)
    return float(loss), [g.numpy().astype(np.float64) for g in gradients]


def restore(variables, values):
    for variable, value in zip(variables, values):
        variable.assign(value)


def snapshot(model):
    return [v.numpy() for v in (*model.variables, *model.optimizer.variables)]


@pytest.mark.parametrize("optimizer", ["SGD", "Adam"])
@pytest.mark.parametrize("bn", BN_PLACEMENTS)
def test_that_internal_covariate_shift_is_the_gradient_change_the_earlier_layers_update_makes(
        bn, optimizer):
    model = trained(bn, optimizer)
    x, y = data(seed=2)
    before = snapshot(model)
    shifts = internal_covariate_shift(model, x, y)
    for a, b in zip(before, snapshot(model)):
        np.testing.assert_array_equal(a, b)  # weights, BN statistics and optimizer state

    reference = twin(model, bn, optimizer)
    variables = reference.trainable_variables
    current = [v.numpy() for v in variables]
    state = [v.numpy() for v in reference.non_trainable_variables]
    _, g = reference_gradients(reference, x, y, keep_state=True)  # the step's own forward
    reference.optimizer.apply_gradients(zip([tf.constant(t, tf.float32) for t in g], variables))
    updated = [v.numpy() for v in variables]
    after_step = [v.numpy() for v in reference.non_trainable_variables]
    layers = [f"dense_{i}" for i in range(1, len(HIDDEN) + 1)] + ["logits"]
    assert list(shifts) == layers
    for i, name in enumerate(layers):
        earlier = {id(v) for layer in reference.layers for v in layer.variables
                   if layer.name in {f"{kind}_{j}" for kind in ("dense", "bn", "noise")
                                     for j in range(1, i + 1)}}
        for group, old, new in ((variables, current, updated),
                                (reference.non_trainable_variables, state, after_step)):
            restore(group, [b if id(v) in earlier else a for v, a, b in zip(group, old, new)])
        _, g_shifted = reference_gradients(reference, x, y)
        k = [v.path for v in variables].index(reference.get_layer(name).kernel.path)
        a, b = g[k].ravel(), g_shifted[k].ravel()
        np.testing.assert_allclose(shifts[name]["l2"], np.linalg.norm(a - b), rtol=1e-4, atol=1e-9)
        np.testing.assert_allclose(shifts[name]["cosine"],
                                   a @ b / np.linalg.norm(a) / np.linalg.norm(b), rtol=1e-5)
    assert shifts["dense_1"] == {"l2": 0.0, "cosine": 1.0}
    assert shifts["logits"]["l2"] > 0  # the earlier layers' update did move it


@pytest.mark.parametrize("bn", BN_PLACEMENTS)
def test_that_landscape_smoothness_follows_the_loss_along_the_gradient(bn):
    model = trained(bn, "SGD")
    x, y = data(seed=3)
    before = snapshot(model)
    etas = [0.0125, 0.05, 0.2]
    smoothness = landscape_smoothness(model, x, y, etas)
    for a, b in zip(before, snapshot(model)):
        np.testing.assert_array_equal(a, b)

    reference = twin(model, bn, "SGD")
    weights = [v.numpy().astype(np.float64) for v in reference.trainable_variables]
    _, g = reference_gradients(reference, x, y)
    flat = np.concatenate([t.ravel() for t in g])
    losses, differences, ratios = [], [], []
    for eta in etas:
        for variable, w, d in zip(reference.trainable_variables, weights, g):
            variable.assign(w - eta * d)
        loss, moved = reference_gradients(reference, x, y)
        difference = np.linalg.norm(flat - np.concatenate([t.ravel() for t in moved]))
        losses.append(loss)
        differences.append(difference)
        ratios.append(difference / (eta * np.linalg.norm(flat)))
    np.testing.assert_allclose(smoothness["loss_variation"], max(losses) - min(losses), rtol=1e-4)
    np.testing.assert_allclose(smoothness["gradient_predictiveness"], max(differences), rtol=1e-4)
    np.testing.assert_allclose(smoothness["beta_smoothness"], max(ratios), rtol=1e-4)
    assert smoothness["loss_variation"] > 0


def test_that_noisy_bn_shows_a_much_larger_internal_covariate_shift_than_bn():
    x, y = data(seed=5)
    shifts = {bn: internal_covariate_shift(network(bn, "SGD"), x, y) for bn in ("before", "noisy")}
    for layer in ("dense_2", "dense_3", "logits"):
        # Measured: 56x, 59x and 4.1x BN's.
        assert shifts["noisy"][layer]["l2"] > 3 * shifts["before"][layer]["l2"]
        assert shifts["noisy"][layer]["cosine"] < shifts["before"][layer]["cosine"]


def test_that_the_default_step_sizes_are_a_grid_around_the_learning_rate():
    model = trained("before", "SGD")
    x, y = data(seed=4)
    default = landscape_smoothness(model, x, y)
    explicit = landscape_smoothness(model, x, y, [0.05 * m for m in (0.25, 0.5, 1, 2, 4)])
    assert default == pytest.approx(explicit, rel=1e-6)  # the rate is held in float32
    assert default != landscape_smoothness(model, x, y, [0.05])


def test_that_the_probes_name_what_they_need():
    model = tfbn.build_mlp((7,), 3, HIDDEN, "tanh", "before")
    x, y = data()
    with pytest.raises(ValueError, match="compiled with an optimizer"):
        internal_covariate_shift(model, x, y)
    with pytest.raises(ValueError, match="etas must be positive"):
        landscape_smoothness(network("before", "SGD"), x, y, [0.1, -0.1])
