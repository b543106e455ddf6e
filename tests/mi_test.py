"""Mutual-information estimators against correlated Gaussians, whose MI is known in closed form.

For x ~ N(0, I_d) and z = ρ·x + sqrt(1 − ρ²)·ε, every coordinate pair is a bivariate Gaussian
with correlation ρ, so I(x; z) = −½·d·log(1 − ρ²) nats (0.5108·d for ρ = 0.8).
"""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scu_jax
from scu_jax import mi

RHO = 0.8
NUM_SAMPLES = 10_000
# Small critics train in about a second per estimate on CPU and are still within a few % here.
HIDDEN = (64, 64)


def gaussian_mi(dim: int, rho: float = RHO) -> float:
    return -0.5 * dim * math.log(1.0 - rho**2)


def correlated_gaussians(key, num_samples: int, dim: int, rho: float = RHO):
    x_key, noise_key = jax.random.split(key)
    x = jax.random.normal(x_key, (num_samples, dim))
    z = rho * x + math.sqrt(1.0 - rho**2) * jax.random.normal(noise_key, (num_samples, dim))
    return x, z


def independent_gaussians(key, num_samples: int, dim: int):
    x_key, z_key = jax.random.split(key)
    return (jax.random.normal(x_key, (num_samples, dim)),
            jax.random.normal(z_key, (num_samples, dim)))


# --- Public API -------------------------------------------------------------------------------


def test_package_exports_what_it_lists():
    assert len(set(mi.__all__)) == len(mi.__all__)
    for name in mi.__all__:
        assert getattr(mi, name) is not None, name
    assert mi.estimate_mine is scu_jax.estimate_mine
    assert mi.variational_upper_bound is scu_jax.variational_upper_bound


# --- Variational upper bound ------------------------------------------------------------------


def test_variational_upper_bound_by_hand():
    mu = jnp.array([[1.0, 0.0], [0.0, 0.0]])
    logvar = jnp.array([[0.0, math.log(4.0)], [0.0, 0.0]])
    # Sample 0 sums −½(1 + 0 − 1 − 1) = 0.5 and −½(1 + log 4 − 0 − 4) = 1.5 − ½·log 4;
    # sample 1 is the prior itself (0). The bound is the mean over the two samples.
    expected = (0.5 + 1.5 - 0.5 * math.log(4.0)) / 2
    np.testing.assert_allclose(mi.variational_upper_bound(mu, logvar), expected, rtol=1e-6)
    assert float(mi.variational_upper_bound(jnp.zeros((3, 5)), jnp.zeros((3, 5)))) == 0.0


def test_variational_upper_bound_is_the_mi_of_a_gaussian_encoder():
    # q(z|x) = N(ρx, (1 − ρ²)I) with x ~ N(0, I) has aggregate posterior N(0, I): the bound is
    # tight, E KL(q(z|x) ‖ N(0, I)) = −½ d log(1 − ρ²) = I(x; z).
    dim = 4
    x = jax.random.normal(jax.random.PRNGKey(0), (100_000, dim))
    mu = RHO * x
    logvar = jnp.full_like(x, math.log(1.0 - RHO**2))
    bound = float(mi.variational_upper_bound(mu, logvar))
    np.testing.assert_allclose(bound, gaussian_mi(dim), rtol=0.02)
    assert bound >= 0.98 * gaussian_mi(dim)


# --- InfoNCE bound of a score matrix ----------------------------------------------------------


def test_infonce_bound_by_hand_and_saturation():
    a = 2.0
    scores = jnp.array([[a, 0.0], [0.0, a]])
    expected = math.log(2.0) + a - math.log(math.exp(a) + 1.0)
    np.testing.assert_allclose(mi.infonce_bound(scores), expected, rtol=1e-6)
    # However perfect the critic, the bound never exceeds log B.
    perfect = 1e3 * jnp.eye(8)
    np.testing.assert_allclose(mi.infonce_bound(perfect), math.log(8.0), rtol=1e-6)


def test_infonce_lower_bound_matches_dense_scores_when_chunked():
    x, z = correlated_gaussians(jax.random.PRNGKey(0), 37, 3)
    state = mi.infonce_init(jax.random.PRNGKey(1), 3, 3, hidden=(16,), embedding_dim=8)
    dense = mi.infonce_bound(state.critic.apply(state.params, x, z))
    # 37 rows in chunks of 8 leaves a ragged last chunk.
    chunked = mi.infonce_lower_bound(state, x, z, row_chunk=8)
    np.testing.assert_allclose(chunked, dense, rtol=1e-5, atol=1e-6)


# --- MINE steps -------------------------------------------------------------------------------


def test_mine_moving_average_follows_its_recurrence():
    ema_rate = 0.25
    x, z = correlated_gaussians(jax.random.PRNGKey(0), 32, 2)
    state = mi.mine_init(jax.random.PRNGKey(1), 2, 2, hidden=(8,), ema_rate=ema_rate)

    def batch_mean_exp(state, key):
        shuffled = z[jax.random.permutation(key, x.shape[0])]
        return float(jnp.mean(jnp.exp(state.critic.apply(state.params, x, shuffled))))

    step = jax.jit(mi.mine_step)  # Op-by-op dispatch of a gradient step is slower than a compile.
    keys = jax.random.split(jax.random.PRNGKey(2), 2)
    first = batch_mean_exp(state, keys[0])
    state, _ = step(state, x, z, keys[0])
    # The first step seeds ma with the batch value (no bias towards an arbitrary start).
    np.testing.assert_allclose(state.moving_average, first, rtol=1e-5)
    second = batch_mean_exp(state, keys[1])
    state, _ = step(state, x, z, keys[1])
    np.testing.assert_allclose(state.moving_average, (1 - ema_rate) * first + ema_rate * second,
                               rtol=1e-5)


def test_mine_step_traces_once_and_its_bound_rises():
    dim, batch_size, num_steps = 3, 256, 300
    x, z = correlated_gaussians(jax.random.PRNGKey(0), NUM_SAMPLES, dim)
    step = jax.jit(chex.assert_max_traces(mi.mine_step, n=1), donate_argnums=0)
    state = mi.mine_init(jax.random.PRNGKey(1), dim, dim, hidden=HIDDEN)
    estimates = []
    for index in range(num_steps):
        start = (index * batch_size) % (NUM_SAMPLES - batch_size)
        state, dv = step(state, x[start:start + batch_size], z[start:start + batch_size],
                         jax.random.fold_in(jax.random.PRNGKey(2), index))
        estimates.append(float(dv))
    assert int(state.step) == num_steps
    early, late = np.mean(estimates[:30]), np.mean(estimates[-30:])
    assert early < 0.3 and late > 1.0 and late > early + 0.7, (early, late)


# --- Estimates against the truth ---------------------------------------------------------------


@pytest.mark.parametrize("dim", [2, 4])
def test_mine_estimates_gaussian_mi_within_15_percent(dim):
    x, z = correlated_gaussians(jax.random.PRNGKey(dim), NUM_SAMPLES, dim)
    estimate = mi.estimate_mine(jax.random.PRNGKey(10 + dim), x, z, steps=2000, hidden=HIDDEN)
    truth = gaussian_mi(dim)
    assert abs(estimate - truth) < 0.15 * truth, (estimate, truth)


@pytest.mark.parametrize("dim", [2, 4])
def test_infonce_estimates_gaussian_mi_within_15_percent(dim):
    batch_size = 256
    truth = gaussian_mi(dim)
    # The bound saturates at log B (5.5 nats here): keep it far above the MI to be measured.
    assert math.log(batch_size) > 2.5 * truth
    x, z = correlated_gaussians(jax.random.PRNGKey(dim), NUM_SAMPLES, dim)
    estimate = mi.estimate_infonce(jax.random.PRNGKey(10 + dim), x, z, steps=2000,
                                   batch_size=batch_size, hidden=HIDDEN)
    assert abs(estimate - truth) < 0.15 * truth, (estimate, truth)


def test_estimates_stay_near_zero_on_independent_data():
    dim = 4
    x, z = independent_gaussians(jax.random.PRNGKey(0), 2 * NUM_SAMPLES, dim)
    # Twice the data and half the steps of the MI tests: the critic then fits little noise, and
    # the Jensen gap −Var(T)/2 of a noise-fitting critic on held-out data stays small.
    mine = mi.estimate_mine(jax.random.PRNGKey(1), x, z, steps=1000, hidden=HIDDEN)
    assert abs(mine) < 0.05, mine
    # The held-out InfoNCE bound of an overfitted critic is below 0 here; it must not invent MI.
    infonce = mi.estimate_infonce(jax.random.PRNGKey(1), x, z, steps=1000, hidden=HIDDEN)
    assert infonce < 0.05, infonce


def test_estimates_are_deterministic_for_a_key():
    # The configuration of the dim-2 MI tests, so the compiled programs are shared.
    x, z = correlated_gaussians(jax.random.PRNGKey(0), NUM_SAMPLES, 2)
    kwargs = dict(steps=2000, batch_size=256, hidden=HIDDEN)
    first = mi.estimate_mine(jax.random.PRNGKey(1), x, z, **kwargs)
    assert mi.estimate_mine(jax.random.PRNGKey(1), x, z, **kwargs) == first
    assert mi.estimate_mine(jax.random.PRNGKey(2), x, z, **kwargs) != first
    first = mi.estimate_infonce(jax.random.PRNGKey(1), x, z, **kwargs)
    assert mi.estimate_infonce(jax.random.PRNGKey(1), x, z, **kwargs) == first


def test_estimators_reject_bad_inputs():
    x, z = correlated_gaussians(jax.random.PRNGKey(0), 100, 2)
    with pytest.raises(ValueError, match="equal N"):
        mi.estimate_mine(jax.random.PRNGKey(0), x, z[:50])
    with pytest.raises(ValueError, match="training samples"):
        mi.estimate_infonce(jax.random.PRNGKey(0), x, z, batch_size=512)
    with pytest.raises(ValueError, match="eval_fraction"):
        mi.estimate_mine(jax.random.PRNGKey(0), x, z, eval_fraction=1.0)
    with pytest.raises(ValueError, match="ema_rate"):
        mi.mine_init(jax.random.PRNGKey(0), 2, 2, ema_rate=0.0)
