"""The sharpness-aware step of SCU and SalUn (`unlearning.sam_radius`): its defining properties."""

import importlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scu_jax
from scu_jax import config as config_lib
from scu_jax.errors import ConfigError
from scu_jax.methods import base as base_lib
from scu_jax.models import Receiver
from scu_jax.models.mlp import MLP, MLPDecoder

KEY = jax.random.PRNGKey(3)
scu_module = importlib.import_module("scu_jax.methods.scu")  # the package exports the function


def _setup():
    codec = scu_jax.SemanticCodec(MLP(2 * 8, 32), MLPDecoder((28, 28, 1), 32),
                                  scu_jax.Channel("awgn", "paper", 5.0), latent_dim=8)
    system = scu_jax.System(codec, Receiver(10, 32))
    objective = scu_jax.CodecObjective(beta=1e-4)
    variables = scu_jax.init_system(system, jax.random.PRNGKey(0), (28, 28, 1))
    images = jax.random.randint(KEY, (16, 28, 28, 1), 0, 256).astype(jnp.uint8)
    batch = scu_jax.Batch(images, jnp.full((16,), 2), images[::-1],
                          jnp.arange(16, dtype=jnp.int32) % 10)
    return system, objective, variables, batch


def _scu(system, objective, **extra):
    return scu_jax.scu(system, objective, learning_rate=3e-4, grad_clip=5.0, lambda_kl=1.0,
                       beta_u=0.1, rho=1.0, **extra)


def test_the_neighbour_is_at_the_radius_along_the_gradient():
    params = {"a": jnp.ones((3, 4)), "b": {"c": jnp.arange(5.0)}}
    grads = {"a": jnp.full((3, 4), 2.0), "b": {"c": -jnp.arange(5.0)}}
    moved = base_lib.sam_neighbour(params, grads, 0.25)
    shift = jax.tree.map(lambda m, p: m - p, moved, params)
    flat_shift = jnp.concatenate([leaf.ravel() for leaf in jax.tree.leaves(shift)])
    flat_grad = jnp.concatenate([leaf.ravel() for leaf in jax.tree.leaves(grads)])
    np.testing.assert_allclose(jnp.linalg.norm(flat_shift), 0.25, rtol=1e-6)
    cosine = flat_shift @ flat_grad / (jnp.linalg.norm(flat_shift) * jnp.linalg.norm(flat_grad))
    np.testing.assert_allclose(cosine, 1.0, rtol=1e-6)


def test_radius_zero_is_scus_step_bit_for_bit():
    system, objective, variables, batch = _setup()
    steps = []
    for extra in ({}, {"sam_radius": 0.0}):
        method = _scu(system, objective, **extra)
        state = method.init(variables["params"], variables["batch_stats"])
        for _ in range(3):
            state, metrics = jax.jit(method.step)(state, batch, KEY)
        steps.append((state.params, metrics))
    chex.assert_trees_all_equal(steps[0], steps[1])


def test_scus_erased_term_is_read_at_the_neighbour_that_undoes_forgetting(monkeypatch):
    """The step's perturbation: norm ρ_sam, along the gradient of L_unl alone (not the whole
    loss), on the trainable parameters; the step then differs from SCU's."""
    system, objective, variables, batch = _setup()
    recorded = []
    real = scu_module.sam_neighbour

    def recording(params, grads, radius):
        moved = real(params, grads, radius)
        # Traced values inside the step's gradient: read them out through a callback.
        flat = lambda tree: jnp.concatenate([leaf.ravel() for leaf in jax.tree.leaves(tree)])  # noqa: E731
        jax.debug.callback(lambda *values: recorded.append((sorted(params), radius, *values)),
                           flat(moved) - flat(params), flat(grads))
        return moved

    monkeypatch.setattr(scu_module, "sam_neighbour", recording)
    method = _scu(system, objective, sam_radius=0.05)
    state = method.init(variables["params"], variables["batch_stats"])
    sam_state, _ = jax.jit(method.step)(state, batch, KEY)
    names, radius, shift, gradient = recorded[-1]
    assert radius == 0.05 and names == ["codec"]  # the MLP receiver does not train
    np.testing.assert_allclose(np.linalg.norm(shift), 0.05, rtol=1e-4)
    np.testing.assert_allclose(shift @ gradient / (np.linalg.norm(shift) * np.linalg.norm(
        gradient)), 1.0, rtol=1e-4)
    # The direction is L_unl's: the whole SCU loss's gradient (Adam's first moment after one
    # plain step, (1 − b1)·g, clipping keeps its direction) points elsewhere.
    plain = _scu(system, objective)
    plain_state, _ = jax.jit(plain.step)(
        plain.init(variables["params"], variables["batch_stats"]), batch, KEY)
    whole = jnp.concatenate([leaf.ravel() for leaf in jax.tree.leaves(
        plain_state.opt_state[1][0].mu)])
    assert whole @ gradient / (jnp.linalg.norm(whole) * jnp.linalg.norm(gradient)) < 0.99
    assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(sam_state.params),
                                                     jax.tree.leaves(plain_state.params)))


def test_salun_sam_takes_the_gradient_at_the_worst_neighbour_of_the_whole_loss():
    system, objective, variables, batch = _setup()
    mask = jax.tree.map(jnp.ones_like, {"codec": variables["params"]["codec"]})
    results = []
    for radius in (0.0, 0.0, 0.05):
        method = scu_jax.salun(system, objective, learning_rate=3e-4, grad_clip=5.0, mask=mask,
                               sam_radius=radius)
        state, _ = jax.jit(method.step)(method.init(variables["params"], variables["batch_stats"]),
                                        batch, KEY)
        results.append(state.params)
    chex.assert_trees_all_equal(results[0], results[1])
    assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(results[0]),
                                                     jax.tree.leaves(results[2])))


@pytest.mark.parametrize("value", [-0.1, float("nan")])
def test_a_bad_radius_is_a_one_line_error(value):
    config = config_lib.default_config()
    config.unlearning.sam_radius = value
    with pytest.raises(ConfigError, match=r"^config\.unlearning\.sam_radius=.*: must be"):
        config_lib.validate_config(config)
