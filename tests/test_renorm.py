import numpy as np
import pytest
import tensorflow as tf

from tfbn.renorm import BatchRenormalization


def numpy_renorm_step(x, upstream, gamma, beta, mu, sigma, rmax, dmax, eps, momentum):
    """Ioffe (2017), algorithm 1, forward and backward, written out in NumPy."""
    mu_b = x.mean(0)
    sigma_b = np.sqrt(x.var(0) + eps)
    r = np.clip(sigma_b / sigma, 1 / rmax, rmax)
    d = np.clip((mu_b - mu) / sigma, -dmax, dmax)
    x_hat = (x - mu_b) / sigma_b * r + d
    y = gamma * x_hat + beta
    # r and d are constants for the gradient; the batch statistics are not.
    g_hat = upstream * gamma * r / sigma_b
    normalized = (x - mu_b) / sigma_b
    dx = g_hat - g_hat.mean(0) - normalized * (g_hat * normalized).mean(0)
    return {"y": y, "dx": dx, "dgamma": (upstream * x_hat).sum(0), "dbeta": upstream.sum(0),
            "mu": momentum * mu + (1 - momentum) * mu_b,
            "sigma": momentum * sigma + (1 - momentum) * sigma_b}


@pytest.mark.parametrize("step, rmax, dmax", [
    (0, 1.0, 0.0), (5000, 1.0, 0.0), (15000, 1 + 2 * 10000 / 35000, 5 * 10000 / 20000),
    (30000, 1 + 2 * 25000 / 35000, 5.0), (50000, 3.0, 5.0),
])
def test_that_the_clipping_follows_the_paper_schedule(step, rmax, dmax):
    got = BatchRenormalization().clipping(float(step))
    np.testing.assert_allclose([float(got[0]), float(got[1])], [rmax, dmax], rtol=1e-6)


@pytest.mark.parametrize("step", [0, 20000])
def test_that_one_training_step_matches_numpy(step):
    rng = np.random.default_rng(step)
    x = rng.normal(2.0, 3.0, (16, 5)).astype("float32")
    upstream = rng.normal(size=(16, 5)).astype("float32")
    layer = BatchRenormalization(momentum=0.9, epsilon=1e-3)
    layer.build((None, 5))
    gamma, beta = rng.random(5) + 0.5, rng.normal(size=5)
    mu, sigma = rng.normal(size=5), rng.random(5) + 0.5
    for variable, value in ((layer.gamma, gamma), (layer.beta, beta), (layer.moving_mean, mu),
                            (layer.moving_stddev, sigma), (layer.steps, step)):
        variable.assign(np.asarray(value, "float32"))
    x_var = tf.Variable(x)
    with tf.GradientTape() as tape:
        y = layer(x_var, training=True)
        loss = tf.reduce_sum(y * upstream)
    dx, dgamma, dbeta = tape.gradient(loss, [x_var, layer.gamma, layer.beta])
    rmax, dmax = (float(v) for v in BatchRenormalization().clipping(float(step)))
    expected = numpy_renorm_step(x, upstream, gamma, beta, mu, sigma, rmax, dmax, 1e-3, 0.9)
    if step == 0:  # the warm-up is plain BN: r = 1 and d = 0
        assert (rmax, dmax) == (1.0, 0.0)
    else:  # the corrections are active, and r is clipped for some units
        assert 1 < rmax < 3 and 0 < dmax < 5
        assert np.any(np.sqrt(x.var(0) + 1e-3) / sigma > rmax)
    np.testing.assert_allclose(y, expected["y"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dx, expected["dx"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dgamma, expected["dgamma"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dbeta, expected["dbeta"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(layer.moving_mean, expected["mu"], rtol=1e-5)
    np.testing.assert_allclose(layer.moving_stddev, expected["sigma"], rtol=1e-5)
    assert float(layer.steps) == step + 1


def test_that_inference_uses_the_moving_statistics():
    layer = BatchRenormalization()
    layer.build((None, 2))
    layer.moving_mean.assign([1.0, -1.0])
    layer.moving_stddev.assign([2.0, 0.5])
    layer.gamma.assign([3.0, 1.0])
    layer.beta.assign([0.5, 0.0])
    np.testing.assert_allclose(layer(np.array([[3.0, 0.0]], "float32")), [[3.5, 2.0]])
    assert float(layer.steps) == 0
