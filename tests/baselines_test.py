"""The field's baselines, each by its defining property: SSD scales only the parameters whose
D_e importance exceeds α times their overall importance, by the formula; ℓ1-sparse adds the
decayed penalty's gradient; SalUn's updates are exactly zero outside its saliency mask."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from scu_jax import config as config_lib
from scu_jax import presets
from scu_jax.methods import Batch, training
from scu_jax.methods.base import objective_loss, trainable_params
from scu_jax.methods.salun import salun, saliency, saliency_mask
from scu_jax.methods.finetune import l1_sparse
from scu_jax.methods.sparse import l1_penalty, l1_strength
from scu_jax.methods.ssd import ssd
from scu_jax.runs import build


@pytest.fixture(scope="module")
def smoke():
    config = presets.apply_variant(config_lib.default_config(), "smoke")
    system = build.build_system(config, (28, 28, 1), 10)
    state = training.initial_state(system, build.recipe_of(config), 0, (28, 28, 1))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 8, 28, 28, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, (3, 8)).astype(np.int32)
    return config, system, state, images, labels


def test_ssd_importance_is_the_mean_squared_gradient_over_batches(smoke):
    config, system, state, images, labels = smoke
    objective = build.objective_of(config)
    method = ssd(system, objective)
    key = jax.random.PRNGKey(5)
    found = method.importance(state.params, state.batch_stats, images, labels, key)
    # By hand: each batch's gradient of the codec objective, with the key that batch gets.
    loss = objective_loss(system, objective)
    trainable = trainable_params(state.params, objective.joint_receiver)
    grads = [jax.grad(loss)(trainable, state.params, state.batch_stats, images[i], labels[i],
                            jax.random.fold_in(key, i)) for i in range(3)]
    expected = jax.tree.map(lambda *g: sum(np.square(np.asarray(x)) for x in g) / 3, *grads)
    assert jax.tree.structure(found) == jax.tree.structure(expected)
    for ours, theirs in zip(jax.tree.leaves(found), jax.tree.leaves(expected)):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-12)
    assert sum(float(np.sum(leaf)) for leaf in jax.tree.leaves(expected)) > 0


def test_ssd_dampens_exactly_the_selected_parameters_by_the_formula():
    params = {"codec": {"w": jnp.array([1.0, -2.0, 3.0, 4.0, 5.0, -6.0])}, "receiver": {}}
    i_all = {"codec": {"w": jnp.array([1.0, 1.0, 1.0, 0.0, 2.0, 0.5])}}
    i_erased = {"codec": {"w": jnp.array([5.0, 20.0, 10.0, 0.0, 40.0, 50.0])}}
    method = ssd(None, training.CodecObjective(), alpha=9.0, dampening=2.0)
    dampened, count = method.dampen(params, i_all, i_erased)
    # Selected where I_e > 9·I_D: entries 1 (20 > 9), 2 (10 > 9), 4 (40 > 18), 5 (50 > 4.5);
    # each scaled by min(2·I_D / I_e, 1): 0.1, 0.2, 0.1, 0.02. Entry 0 (5 ≤ 9) and entry 3
    # (0 ≤ 0) are untouched.
    np.testing.assert_allclose(dampened["codec"]["w"],
                               [1.0, -2.0 * 0.1, 3.0 * 0.2, 4.0, 5.0 * 0.1, -6.0 * 0.02],
                               rtol=1e-6)
    assert int(count) == 4 and dampened["receiver"] == {}
    # λ large enough that the factor would exceed 1: capped, the parameter is never scaled up.
    generous = ssd(None, training.CodecObjective(), alpha=9.0, dampening=100.0)
    capped, _ = generous.dampen(params, i_all, i_erased)
    np.testing.assert_allclose(capped["codec"]["w"], params["codec"]["w"])


def test_l1_penalty_adds_the_decayed_subgradient_of_the_l1_norm():
    params = {"a": jnp.array([0.5, -1.5, 2.0]), "b": jnp.array([[-0.25]])}
    grads = {"a": jnp.array([0.1, 0.2, -0.3]), "b": jnp.array([[0.4]])}
    tx = l1_penalty(0.01, steps_per_epoch=2, epochs=4)
    state = tx.init(params)
    for count, gamma in enumerate([0.01, 0.01, 0.0075, 0.0075, 0.005, 0.005, 0.0025, 0.0025,
                                   0.0, 0.0]):
        assert float(l1_strength(0.01, 2, 4, jnp.int32(count))) == pytest.approx(gamma)
        updates, state = tx.update(grads, state, params)
        # The gradient of γ‖θ‖₁ by autodiff, added to the loss's gradient.
        penalty = jax.grad(lambda p: gamma * sum(jnp.sum(jnp.abs(x)) for x in
                                                 jax.tree.leaves(p)))(params)
        for name in params:
            np.testing.assert_allclose(updates[name], grads[name] + penalty[name], rtol=1e-6)
    # In the recipe: the codec phase's optimiser is the penalty, then the clip and Adam.
    recipe = l1_sparse(training.Recipe(training.CodecObjective(), 1e-3, 1e-3, 5.0, 16, 3, 10),
                       learning_rate=1e-3, batch_size=16, epochs=5, strength=0.01,
                       steps_per_epoch=7)
    assert (recipe.receiver_epochs, recipe.epochs, recipe.l1_strength) == (0, 5, 0.01)
    plain = optax.chain(optax.clip_by_global_norm(5.0), optax.adam(1e-3))
    with_l1 = training._optimizers(recipe)[training.CODEC]
    ours, _ = with_l1.update(grads, with_l1.init(params), params)
    by_hand, _ = plain.update(jax.tree.map(lambda g, p: g + 0.01 * jnp.sign(p), grads, params),
                              plain.init(params), params)
    for name in params:
        np.testing.assert_allclose(ours[name], by_hand[name], rtol=1e-6)


def test_salun_mask_keeps_the_top_fraction_and_updates_nothing_outside_it(smoke):
    config, system, state, images, labels = smoke
    objective = build.objective_of(config)
    scores = saliency(system, objective, state.params, state.batch_stats, images, labels,
                      jax.random.PRNGKey(1))
    mask = saliency_mask(scores, 0.5)
    total = sum(leaf.size for leaf in jax.tree.leaves(mask))
    kept = sum(float(jnp.sum(leaf)) for leaf in jax.tree.leaves(mask))
    assert kept == pytest.approx(total / 2, abs=2)  # ties at the threshold aside
    kept_scores = min(float(jnp.min(jnp.where(m > 0, s, jnp.inf)))
                      for m, s in zip(jax.tree.leaves(mask), jax.tree.leaves(scores)))
    dropped_scores = max(float(jnp.max(jnp.where(m > 0, -jnp.inf, s)))
                         for m, s in zip(jax.tree.leaves(mask), jax.tree.leaves(scores)))
    assert kept_scores >= dropped_scores  # one threshold across every parameter
    method = salun(system, objective, learning_rate=1e-2, grad_clip=5.0, mask=mask)
    unlearn_state = method.init(state.params, state.batch_stats)
    batch = Batch(images[0], labels[0], images[1], labels[1])
    stepped, metrics = jax.jit(method.step)(unlearn_state, batch, jax.random.PRNGKey(2))
    stepped, metrics = jax.jit(method.step)(stepped, batch, jax.random.PRNGKey(3))
    assert np.isfinite(float(metrics.loss))
    before = trainable_params(state.params, objective.joint_receiver)
    after = trainable_params(stepped.params, objective.joint_receiver)
    moved = 0
    for m, b, a in zip(jax.tree.leaves(mask), jax.tree.leaves(before), jax.tree.leaves(after)):
        m, b, a = np.asarray(m), np.asarray(b), np.asarray(a)
        np.testing.assert_array_equal(a[m == 0], b[m == 0])  # exactly untouched
        moved += int(np.sum(a[m == 1] != b[m == 1]))
    assert moved > 0.9 * kept
