import keras
import numpy as np
import tensorflow as tf

import tfbn
from tfbn.callbacks import BatchStatisticsEvaluation


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def test_that_batch_statistics_evaluation_matches_numpy_and_leaves_moving_statistics_alone():
    rng = np.random.default_rng(0)
    x = rng.random((40, 6)).astype("float32")
    y = rng.integers(0, 3, 40)
    model = tfbn.build_mlp((6,), 3, (5,), "sigmoid", "before", seed=1)
    bn = model.get_layer("bn_1")
    bn.gamma.assign(rng.random(5) + 0.5)
    bn.beta.assign(rng.random(5) - 0.5)
    bn.moving_mean.assign(rng.random(5))
    bn.moving_variance.assign(rng.random(5) + 1)
    moving = [bn.moving_mean.numpy(), bn.moving_variance.numpy()]

    callback = BatchStatisticsEvaluation(tf.data.Dataset.from_tensor_slices((x, y)).batch(20))
    callback.set_model(model)
    logs = {}
    callback.on_epoch_end(0, logs)

    w1 = model.get_layer("dense_1").kernel.numpy()
    w2, b2 = (v.numpy() for v in model.get_layer("logits").weights)
    correct, losses = 0, []
    for batch in (slice(0, 20), slice(20, 40)):
        h = x[batch] @ w1
        normed = (h - h.mean(0)) / np.sqrt(h.var(0) + bn.epsilon)
        logits = sigmoid(bn.gamma.numpy() * normed + bn.beta.numpy()) @ w2 + b2
        log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        losses += list(-log_p[np.arange(20), y[batch]])
        correct += np.sum(logits.argmax(1) == y[batch])
    assert logs["val_accuracy_batch_stats"] == correct / 40
    np.testing.assert_allclose(logs["val_loss_batch_stats"], np.mean(losses), rtol=1e-5)
    np.testing.assert_array_equal(bn.moving_mean.numpy(), moving[0])
    np.testing.assert_array_equal(bn.moving_variance.numpy(), moving[1])
    # With the moving statistics the loss differs: the two modes are distinct.
    inference_loss = keras.losses.sparse_categorical_crossentropy(
        y, model(x, training=False), from_logits=True).numpy().mean()
    assert abs(inference_loss - logs["val_loss_batch_stats"]) > 1e-3


def test_that_batch_statistics_evaluation_restores_batch_renormalization_state_too():
    rng = np.random.default_rng(0)
    x = rng.random((40, 6)).astype("float32")
    y = rng.integers(0, 3, 40)
    model = tfbn.build_mlp((6,), 3, (5,), "sigmoid", "renorm", seed=1)
    model(x[:2])
    before = [v.numpy().copy() for v in model.non_trainable_variables]
    callback = BatchStatisticsEvaluation(tf.data.Dataset.from_tensor_slices((x, y)).batch(10))
    callback.set_model(model)
    callback.on_epoch_end(0, {})
    # The step counter and moving statistics of Batch Renormalization included.
    assert model.get_layer("bn_1").steps.numpy() == 0
    for saved, variable in zip(before, model.non_trainable_variables):
        np.testing.assert_array_equal(variable.numpy(), saved)
