"""Each loss against a value computed by hand on tiny arrays."""

import jax
import jax.numpy as jnp
import numpy as np

from scu_jax import losses


def test_kl_to_prior_by_hand():
    mu = jnp.array([[1.0, 0.0]])
    logvar = jnp.array([[0.0, jnp.log(4.0)]])
    # Elements: −½(1 + 0 − 1 − 1) = 0.5 and −½(1 + log 4 − 0 − 4) = 1.5 − ½·log 4; mean of two.
    expected = (0.5 + 1.5 - 0.5 * np.log(4.0)) / 2
    np.testing.assert_allclose(losses.kl_to_prior(mu, logvar), expected, rtol=1e-6)
    assert float(losses.kl_to_prior(jnp.zeros((3, 4)), jnp.zeros((3, 4)))) == 0.0


def test_gaussian_kl_by_hand_and_zero_when_equal():
    mu_q, lv_q = jnp.array([[1.0]]), jnp.array([[0.0]])
    mu_p, lv_p = jnp.array([[0.0]]), jnp.array([[jnp.log(2.0)]])
    # KL(N(1,1) ‖ N(0,2)) = ½(log 2 − 0 + (1 + 1)/2 − 1) = ½ log 2.
    np.testing.assert_allclose(losses.gaussian_kl(mu_q, lv_q, mu_p, lv_p), 0.5 * np.log(2.0), rtol=1e-6)
    mu = jax.random.normal(jax.random.PRNGKey(0), (4, 6))
    lv = jax.random.normal(jax.random.PRNGKey(1), (4, 6))
    np.testing.assert_allclose(losses.gaussian_kl(mu, lv, mu, lv), 0.0, atol=1e-7)
    # Against the prior it equals kl_to_prior.
    np.testing.assert_allclose(losses.gaussian_kl(mu, lv, jnp.zeros_like(mu), jnp.zeros_like(lv)),
                               losses.kl_to_prior(mu, lv), rtol=1e-6)


def test_reconstruction_losses_by_hand():
    x = jnp.zeros((2, 2, 2, 1))
    x_hat = x.at[0, 0, 0, 0].set(1.0).at[1].set(0.5)
    # Squared errors: image 0 sums to 1, image 1 to 4·0.25 = 1; eight pixels in all.
    np.testing.assert_allclose(losses.per_image_sse(x_hat, x), [1.0, 1.0])
    np.testing.assert_allclose(losses.reconstruction_mse(x_hat, x), 2.0 / 8)


def test_cross_entropy_and_codec_loss():
    logits = jnp.array([[0.0, 0.0], [jnp.log(3.0), 0.0]])
    labels = jnp.array([0, 0])
    expected_ce = (np.log(2.0) + np.log(4.0 / 3.0)) / 2
    np.testing.assert_allclose(losses.cross_entropy(logits, labels), expected_ce, rtol=1e-6)
    mu, logvar = jnp.ones((2, 3)), jnp.zeros((2, 3))  # KL_prior = 0.5
    x, x_hat = jnp.zeros((2, 4)), jnp.full((2, 4), 0.5)  # MSE = 0.25
    mnist = losses.codec_loss(mu, logvar, x_hat, x, beta=1e-4)
    np.testing.assert_allclose(mnist, 1e-4 * 0.5 + 0.25, rtol=1e-6)
    cifar = losses.codec_loss(mu, logvar, x_hat, x, beta=1e-4, mse_weight=30.0,
                              receiver_logits=logits, labels=labels, ce_weight=1 / 30)
    np.testing.assert_allclose(cifar, 1e-4 * 0.5 + 30 * 0.25 + expected_ce / 30, rtol=1e-6)
