"""Unlearning losses by hand, HVP vs finite differences, the shared loop, the methods end to end."""

import importlib
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scu_jax import errors
from scu_jax import config as config_lib
from scu_jax import presets
from scu_jax import evaluation, losses
from scu_jax.runs import erasing, train, unlearn
from scu_jax.runs.checkpointing import Checkpoints
from scu_jax.models import init_system
from scu_jax.data.batching import paired_epoch_indices
from scu_jax.evaluation import system_for_evaluation
from scu_jax.stopping import draws_of, stopping_key, target_rate
from scu_jax.methods import Batch, forget_term, hessian_vector_product, hutchinson_diagonal
from scu_jax.methods import base as base_lib
from scu_jax.runs import build
from scu_jax.runs import saved as saved_lib
from scu_jax.runs.evaluate import evaluate_workdir
from scu_jax.runs.summaries import read_scalars
from scu_jax import engine


# --- Losses -------------------------------------------------------------------------------------

def test_contrastive_compensation_by_hand():
    z_r = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    z_re = jnp.array([[1.0, 1.0], [0.0, 1.0]])  # cosines 1/√2 and 1
    z_e = jnp.array([[0.0, 1.0], [-1.0, 0.0]])  # cosines with z_r: 0 and 0
    expected = ((1 - 1 / np.sqrt(2)) + 0.0) / (1.0 + 1.0)
    np.testing.assert_allclose(losses.contrastive_compensation(z_e, z_r, z_re), expected, rtol=1e-5)


def test_contrastive_compensation_falls_when_positives_move_closer():
    key = jax.random.PRNGKey(0)
    z_e, z_r, noise = jax.random.normal(key, (3, 16, 8))
    far = losses.contrastive_compensation(z_e, z_r, z_r + 2.0 * noise)
    near = losses.contrastive_compensation(z_e, z_r, z_r + 0.2 * noise)
    assert float(near) < 0.2 * float(far)
    # Negatives pushed apart (anti-aligned) lower it too.
    assert float(losses.contrastive_compensation(-z_r, z_r, z_r + noise)) < float(
        losses.contrastive_compensation(z_e, z_r, z_r + noise))


def test_cosine_similarity_clamps_zero_vectors():
    sims = losses.cosine_similarity(jnp.zeros((1, 3)), jnp.ones((1, 3)))
    assert np.isfinite(sims).all() and float(sims[0]) == 0.0


def test_adaptive_weights_and_scu_loss_by_hand():
    a, b = losses.adaptive_weights(jnp.array(-1.0), jnp.array(3.0))
    np.testing.assert_allclose([a, b], [0.25, 0.75], rtol=1e-6)
    # a·L_unl + b·L_ss = 0.25·(−1) + 0.75·3 = 2.0; with opposite signs it equals L_unl + L_ss.
    np.testing.assert_allclose(losses.scu_loss(jnp.array(-1.0), jnp.array(3.0)), 2.0, rtol=1e-6)
    # The switch stops gradients through a and b: d/dx [a(x)·x + b·3] differs.
    grad_through = jax.grad(lambda x: losses.scu_loss(x, jnp.array(3.0)))(jnp.array(1.0))
    grad_stopped = jax.grad(lambda x: losses.scu_loss(x, jnp.array(3.0),
                                                      stop_weight_gradient=True))(jnp.array(1.0))
    np.testing.assert_allclose(grad_stopped, 0.25, rtol=1e-5)  # a = 1/4 held constant
    # Through the weights: d/dx (x² + 9)/(x + 3) at x = 1 is (2·4 − 10)/16 = −1/8.
    np.testing.assert_allclose(grad_through, -0.125, rtol=1e-5)


def test_scu_loss_weighs_with_its_own_view_of_l_ss():
    # The reference's CIFAR weights see |L_ss| = 1 (1·MSE) while the loss carries L_ss = 3 (30·MSE):
    # a = |−1| / (1 + 1) = 1/2, b = 1/2, loss = ½·(−1) + ½·3 = 1.
    np.testing.assert_allclose(losses.scu_loss(jnp.array(-1.0), jnp.array(3.0),
                                               weight_utility_loss=jnp.array(1.0)), 1.0, rtol=1e-6)


def _softmax_ce(logits, labels):
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return float(-np.mean(log_probs[np.arange(len(labels)), labels]))


@pytest.mark.parametrize("objective", ["mse", "ce", "mse+ce"])
def test_forget_term_by_hand(objective):
    config = presets.cifar_config("cifar10")
    config.unlearning.erased_objective = objective
    x = jnp.array([[0.0, 1.0], [0.5, 0.5]])
    x_hat = jnp.array([[0.5, 1.0], [0.5, 0.0]])  # squared errors 0.25, 0, 0, 0.25 → MSE 0.125
    logits = jnp.array([[2.0, 0.0], [0.0, 1.0]])
    targets = jnp.array([0, 0])
    ce = _softmax_ce(logits, [0, 0])  # (log(1 + e^-2) + log(1 + e)) / 2
    expected = {"mse": 0.125, "ce": ce / 30, "mse+ce": 0.125 + ce / 30}[objective]
    np.testing.assert_allclose(forget_term(objective, config.train.ce_weight, x_hat, x, logits,
                                           targets), expected,
                               rtol=1e-5)


def _cifar_style_mlp():
    """The MNIST MLP codec with the CIFAR losses (30·MSE, CE/30, joint receiver): the CIFAR terms
    at an MLP's compile time."""
    config = config_lib.default_config()
    config.train.mse_weight, config.train.ce_weight = 30.0, 1.0 / 30.0
    config.unlearning.erased_objective = "mse+ce"
    config.unlearning.beta_u, config.unlearning.rho = 10.0, 100.0
    system = build.build_system(config, (28, 28, 1), 10)
    variables = init_system(system, jax.random.PRNGKey(0), (28, 28, 1))
    rng = np.random.default_rng(0)
    batch = Batch(jnp.asarray(rng.integers(0, 256, (8, 28, 28, 1)), jnp.uint8), jnp.full((8,), 2),
                  jnp.asarray(rng.integers(0, 256, (8, 28, 28, 1)), jnp.uint8),
                  jnp.asarray(rng.integers(0, 10, 8)))
    return config, system, variables, batch


def _erased_pass(system, params, parts, keys):
    """The erased batch's outputs of a step's codec pass over `parts` (the erased batch first)
    with the step's latent and channel `keys`."""
    (out, *_), _ = base_lib.codec_forward_parts(system, params, {}, parts, *keys)
    images = parts[0]
    logits = system.receiver.apply({"params": params["receiver"]}, out.x_hat)
    x = np.asarray(images, np.float64) / 255.0
    return out, np.asarray(logits), x


@pytest.mark.parametrize("method", ["scu", "scu_no_cc", "vbu"])
def test_cifar_forget_term_has_the_reconstruction_ascent(method):
    """The authors' CIFAR scripts: CIFAR's L_unl is `λ_kl·KL_eo − β_u·MSE − β_u·CE/30` (VBU `−β_u·MSE −
    β_u·CE/30`): the MSE ascent term is there, computed by hand from the step's own pass."""
    config, system, variables, batch = _cifar_style_mlp()
    step = _method(config, system, method)
    key = jax.random.PRNGKey(3)
    _, metrics = step.step(step.init(variables["params"], {}), batch, key)
    folded = jax.random.fold_in(key, 0)
    # VBU passes the erased batch with `split(key)`; SCU passes both batches (the ablation the
    # erased batch alone) with the first two keys of `split(key, 4)`.
    keys = jax.random.split(folded) if method == "vbu" else jax.random.split(folded, 4)[:2]
    parts = ((batch.erased_images, batch.remain_images) if method == "scu"
             else (batch.erased_images,))
    out, logits, x = _erased_pass(system, variables["params"], parts, keys)
    mse = float(np.mean((np.asarray(out.x_hat, np.float64) - x) ** 2))
    expected = mse + _softmax_ce(logits, [2] * 8) / 30
    np.testing.assert_allclose(float(metrics.forget), expected, rtol=1e-4)
    assert mse > 0.01 * expected  # the MSE part is not negligible here
    if method == "vbu":
        np.testing.assert_allclose(float(metrics.loss), -10.0 * expected, rtol=1e-4)


def test_cifar_hbu_erased_loss_is_the_codec_loss_by_hand():
    """The authors' reference code: HBU's CIFAR erased loss is `β·KL_prior + 30·MSE + CE/30`."""
    config, system, variables, batch = _cifar_style_mlp()
    method = _method(config, system, "hbu")
    key = jax.random.PRNGKey(4)
    _, metrics = method.step(method.init(variables["params"], {}), batch, key)
    erased_key = jax.random.split(jax.random.fold_in(key, 0), 3)[0]
    out, logits, x = _erased_pass(system, variables["params"], (batch.erased_images,),
                                  jax.random.split(erased_key))
    mu, logvar = np.asarray(out.mu, np.float64), np.asarray(out.logvar, np.float64)
    kl = -0.5 * np.mean(1 + logvar - mu ** 2 - np.exp(logvar))
    mse = np.mean((np.asarray(out.x_hat, np.float64) - x) ** 2)
    expected = 1e-4 * kl + 30 * mse + _softmax_ce(logits, [2] * 8) / 30
    np.testing.assert_allclose(float(metrics.forget), expected, rtol=1e-4)


def test_cifar_scu_weights_see_unit_mse():
    """With `unit_mse_in_weights` the SCU loss differs, and by the amount the weights explain."""
    config, system, variables, batch = _cifar_style_mlp()
    values = {}
    for unit in (False, True):
        config.unlearning.unit_mse_in_weights = unit
        method = _method(config, system, "scu")
        _, metrics = method.step(method.init(variables["params"], {}), batch, jax.random.PRNGKey(5))
        values[unit] = metrics
    # L_unl and L_ss are the same numbers either way; only the weights a, b move.
    np.testing.assert_allclose(values[True].utility, values[False].utility, rtol=1e-6)
    assert abs(float(values[True].loss) - float(values[False].loss)) > 1e-3 * abs(float(values[False].loss))


# --- Hessian-vector products ------------------------------------------------------------------------

def test_hessian_vector_product_matches_finite_differences():
    def loss(params):
        return jnp.sum(jnp.sin(params["w"]) * params["b"] ** 2) + jnp.sum(params["w"] ** 3)

    key = jax.random.PRNGKey(0)
    params = {"w": jax.random.normal(key, (5,)), "b": jax.random.normal(jax.random.PRNGKey(1), (5,))}
    vector = {"w": jax.random.normal(jax.random.PRNGKey(2), (5,)),
              "b": jax.random.normal(jax.random.PRNGKey(3), (5,))}
    hvp = hessian_vector_product(loss, params, vector)
    eps = 1e-3
    grad = jax.grad(loss)
    plus = grad(jax.tree.map(lambda p, v: p + eps * v, params, vector))
    minus = grad(jax.tree.map(lambda p, v: p - eps * v, params, vector))
    finite = jax.tree.map(lambda a, b: (a - b) / (2 * eps), plus, minus)
    chex.assert_trees_all_close(hvp, finite, rtol=1e-3, atol=1e-3)


def test_hutchinson_diagonal_is_unbiased():
    matrix = jnp.array([[2.0, 0.5, 0.0], [0.5, 3.0, -1.0], [0.0, -1.0, 4.0]])

    def quadratic(x):
        return 0.5 * x @ matrix @ x

    keys = jax.random.split(jax.random.PRNGKey(0), 4000)
    estimates = jax.vmap(lambda k: hutchinson_diagonal(quadratic, jnp.zeros(3), k))(keys)
    np.testing.assert_allclose(estimates.mean(0), jnp.diag(matrix), atol=0.05)


# --- The loop and the methods on a smoke system ---------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    config = presets.apply_variant(config_lib.default_config(), "smoke")
    workdir = tmp_path_factory.mktemp("unlearning") / "train"
    train.train_and_evaluate(config, str(workdir))
    return config, workdir


def _method_config(config, method, **unlearning):
    method_config = config.copy_and_resolve_references()
    method_config.unlearning.method = method
    method_config.evaluation.mi_steps = 0
    for name, value in unlearning.items():
        method_config.unlearning[name] = value
    return method_config


def _setup(config, workdir):
    split, system, image_shape = build.build_for(config)
    params, batch_stats, _ = saved_lib.load_variables(workdir, system, config, image_shape)
    return split, system, params, batch_stats


def _method(config, system, name):
    """The erased-data method `name` with `config`'s hyper-parameters."""
    config = config.copy_and_resolve_references()
    config.unlearning.method = name
    return build.method_of(config, system)


def _erased_loop(config, system, split, params, batch_stats):
    """Runs `config.unlearning.method` through the engine (no workdir): (params, stats, info)."""
    return erasing.erased_loop(config, system, split, params, batch_stats, None, None,
                                build.data_parallel(config))


def erased_backdoor_accuracy(system, params, batch_stats, split, config):
    """The receiver's backdoor accuracy on all of D_e, as the stopping rule reads it."""
    draws = draws_of(split.erased_images, build.protocol_of(config))
    eval_system = system_for_evaluation(system, build.protocol_of(config))
    return float(jax.jit(target_rate, static_argnums=(0, 4))(
        eval_system, params, batch_stats, draws, split.target_class,
        stopping_key(build.protocol_of(config))))


def test_epoch_indices():
    erased, remain = paired_epoch_indices(0, 0, num_erased=37, num_remain=500, batch_size=16)
    assert erased.shape == remain.shape == (3, 16)  # ⌈37/16⌉ steps
    assert set(erased.ravel()) == set(range(37))  # every erased sample, wrapping for the last batch
    assert len(set(remain.ravel())) == 48  # distinct remaining samples
    again = paired_epoch_indices(0, 0, 37, 500, 16)
    other = paired_epoch_indices(0, 1, 37, 500, 16)
    np.testing.assert_array_equal(erased, again[0])
    assert not np.array_equal(remain, other[1])
    # The reference's CIFAR loops skip the last partial batch: ⌊37/16⌋ steps of distinct images.
    dropped, kept = paired_epoch_indices(0, 0, 37, 500, 16, drop_partial=True)
    assert dropped.shape == kept.shape == (2, 16) and len(set(dropped.ravel())) == 32


def test_scu_step_traces_once(trained):
    config, workdir = trained
    config = _method_config(config, "scu")
    split, system, params, batch_stats = _setup(config, workdir)
    method = _method(config, system, "scu")
    step = jax.jit(chex.assert_max_traces(method.step, n=1), donate_argnums=0)
    trained_codec = jax.tree.map(np.asarray, params["codec"])  # the state's buffers get donated
    state = method.init(params, batch_stats)
    batch = Batch(jnp.asarray(split.erased_images[:16]), jnp.asarray(split.erased_labels[:16]),
                  jnp.asarray(split.remain_images[:16]), jnp.asarray(split.remain_labels[:16]))
    for _ in range(5):
        state, metrics = step(state, batch, jax.random.PRNGKey(0))
    assert int(state.step) == 5 and np.isfinite(float(metrics.loss))
    chex.assert_tree_all_finite(state.params)
    # θ_o is frozen: still equal to the trained codec.
    chex.assert_trees_all_close(state.original["params"], trained_codec)


@pytest.mark.parametrize("protocol", ["default"])
def test_scu_fused_passes_draw_as_separate_passes(trained, monkeypatch, protocol):
    """SCU passes the MLP codec's erased and remaining batches as one batch. That changes the
    step's draws (one ε draw for both), not their distribution: from the trained state, over 256
    keys, the loss and its terms have the mean of separate passes to 4 standard errors. The
    reference protocol's fused pass (Rician, one channel draw a pass) is checked without noise
    below and its per-part scalar draw in models_test, which checks the arithmetic draw for
    draw (the suite's time keeps this statistical test to one protocol)."""
    import functools

    scu_module = importlib.import_module("scu_jax.methods.scu")
    config, workdir = trained
    config = _method_config(config, "scu")
    if protocol == "reference":
        config.channel.family, config.channel.draw = "paper", "scalar"
        config.channel.name, config.channel.snr_db, config.channel.k_factor = "rician", 6.0, 2.0
    split, system, params, batch_stats = _setup(config, workdir)
    batch = Batch(jnp.asarray(split.erased_images[:16]), jnp.asarray(split.erased_labels[:16]),
                  jnp.asarray(split.remain_images[:16]), jnp.asarray(split.remain_labels[:16]))
    keys = jax.random.split(jax.random.PRNGKey(0), 256)

    def terms(fuse):
        monkeypatch.setattr(scu_module, "codec_forward_parts",
                            functools.partial(base_lib.codec_forward_parts, fuse=fuse))
        method = _method(config, system, "scu")
        state = method.init(params, batch_stats)
        metrics = jax.jit(jax.vmap(lambda key: method.step(state, batch, key)[1]))(keys)
        return {name: np.asarray(getattr(metrics, name), np.float64)
                for name in ("loss", "forget", "utility")}

    fused, separate = terms(True), terms(False)
    for name in fused:
        assert not np.array_equal(fused[name], separate[name])  # other draws
        error = np.sqrt((fused[name].var() + separate[name].var()) / len(keys))
        assert abs(fused[name].mean() - separate[name].mean()) < 4 * error, name


@pytest.mark.parametrize("protocol", ["default", "reference"])
def test_scu_fused_passes_are_separate_passes_with_the_same_draws(monkeypatch, protocol):
    """With every normal draw zero (so both paths draw the same), SCU's step through the fused
    pass computes what separate passes compute: the loss and its terms, and the gradient (as
    Adam's first moment, 0.1·g after one step)."""
    import functools

    scu_module = importlib.import_module("scu_jax.methods.scu")
    monkeypatch.setattr(jax.random, "normal",
                        lambda key, shape=(), dtype=jnp.float32: jnp.zeros(shape, dtype))
    config, system, variables, batch = _cifar_style_mlp()
    if protocol == "reference":
        config = presets.use_reference_protocol(config_lib.default_config())
        system = build.build_system(config, (28, 28, 1), 10)
    results = []
    for fuse in (True, False):
        monkeypatch.setattr(scu_module, "codec_forward_parts",
                            functools.partial(base_lib.codec_forward_parts, fuse=fuse))
        method = _method(config, system, "scu")
        state, metrics = jax.jit(method.step)(method.init(variables["params"], {}), batch,
                                              jax.random.PRNGKey(0))
        results.append((metrics, state.opt_state[1][0].mu))
    (fused, fused_mu), (separate, separate_mu) = results
    for name in ("loss", "forget", "utility", "a", "b", "backdoor"):
        np.testing.assert_allclose(getattr(fused, name), getattr(separate, name), rtol=1e-5,
                                   err_msg=name)
    chex.assert_trees_all_close(fused_mu, separate_mu, rtol=1e-4, atol=1e-9)


def test_one_scu_epoch_lowers_backdoor_accuracy(trained):
    """One epoch is 4 steps on the smoke system, so where it lands depends on the draws: at
    lr 3e-3 the backdoor accuracy after it ranged 0.14-0.34 (from 0.32) over 14 seeds, with the
    separate passes' draws as with the fused pass's. At lr 5e-3 seeds 0-2 read 0.23, 0.26, 0.18;
    their mean must fall by 0.05."""
    config, workdir = trained
    config = _method_config(config, "scu", learning_rate=5e-3, beta_u=1.0, early_stop=False)
    config.unlearning.max_epochs = 1
    afters = []
    for seed in range(3):
        config.seed = seed
        split, system, params, batch_stats = _setup(config, workdir)
        before = erased_backdoor_accuracy(system, params, batch_stats, split, config)
        params, batch_stats, report = _erased_loop(config, system, split, params, batch_stats)
        # No D_e evaluation can stop this run (early_stop=False), so the loop skips it.
        assert "erased_backdoor" not in report["history"][-1]
        afters.append(erased_backdoor_accuracy(system, params, batch_stats, split, config))
        assert report["steps"] == int(np.ceil(len(split.erased_images) / 16))
        assert report["epochs"] == 1
        # The epoch summary holds every metric's mean, SCU's adaptive weights a + b = 1 among them.
        assert report["history"][-1]["a"] + report["history"][-1]["b"] == pytest.approx(1.0,
                                                                                        abs=1e-5)
    assert before > 0.2  # the smoke system learned the backdoor (measured ≈ 0.3)
    assert np.mean(afters) < before - 0.05, (before, afters)


def test_per_step_epochs_equal_the_scan_fused_epoch(trained, monkeypatch):
    """The engine's `per_step` epochs (one dispatch per step, as the ResNet runs on a CPU) give
    the scan-fused epoch's steps, early stops, stopping evaluations and parameters."""
    config, workdir = trained
    config = _method_config(config, "scu", max_epochs=2)
    split, system, params, batch_stats = _setup(config, workdir)
    params, batch_stats = jax.device_get((params, batch_stats))  # each run donates its state
    runs = {}
    for per_step in (False, True):
        monkeypatch.setattr(erasing, "convolutions_slow_in_loops", lambda config, p=per_step: p)
        new_params, _, report = _erased_loop(config, system, split, params, batch_stats)
        runs[per_step] = (jax.device_get(new_params), report)
    assert runs[True][1]["steps"] == runs[False][1]["steps"] > 0
    assert "erased_backdoor" in runs[True][1]["history"][0]
    for fused, stepped in zip(runs[False][1]["history"], runs[True][1]["history"]):
        assert stepped["steps"] == fused["steps"]
        assert stepped["erased_backdoor"] == pytest.approx(fused["erased_backdoor"], abs=1e-6)
    chex.assert_trees_all_close(runs[True][0], runs[False][0], atol=1e-5)


def test_the_stop_read_on_device_stops_at_the_host_readings_epoch(trained, monkeypatch):
    """Several epochs per dispatch, the stopping rule read on device, stop after the same epoch
    with the same parameters as one epoch per dispatch with the rule read on the host."""
    config, workdir = trained
    config = _method_config(config, "scu", max_epochs=12, epoch_stop=0.2, batch_stop=0.0)
    split, system, params, batch_stats = _setup(config, workdir)
    params, batch_stats = jax.device_get((params, batch_stats))
    runs = {}
    for per_dispatch in (1, 4):
        monkeypatch.setattr(erasing, "EPOCHS_PER_DISPATCH", per_dispatch)
        new_params, _, report = _erased_loop(config, system, split, params, batch_stats)
        runs[per_dispatch] = (jax.device_get(new_params), report)
    (host, host_report), (device, device_report) = runs[1], runs[4]
    assert 1 < host_report["epochs"] < 12 and host_report["stopped_by"] == "backdoor"
    assert (device_report["epochs"], device_report["steps"], device_report["stopped_by"]) == (
        host_report["epochs"], host_report["steps"], "backdoor")
    assert [h["erased_backdoor"] for h in device_report["history"]] == pytest.approx(
        [h["erased_backdoor"] for h in host_report["history"]], abs=1e-6)
    chex.assert_trees_all_close(device, host, atol=1e-5)


def test_batch_early_stop_skips_rest_of_epoch(trained):
    config, workdir = trained
    # Every batch of the smoke system is below 100 % backdoor accuracy, so each epoch stops early.
    config = _method_config(config, "vbu", batch_stop=1.0, epoch_stop=0.0, max_epochs=2)
    split, system, params, batch_stats = _setup(config, workdir)
    _, _, report = _erased_loop(config, system, split, params, batch_stats)
    assert report["steps"] == 2 and report["epochs"] == 2  # one step per epoch, then it ends


def test_diverging_method_stops_naming_the_step(trained, tmp_path, monkeypatch):
    config, workdir = trained
    config = _method_config(config, "vbu", early_stop=False)
    real = build.vbu

    def diverging(system, objective, **hyperparameters):
        method = real(system, objective, **hyperparameters)

        def step(state, batch, key):
            new_state, metrics = method.step(state, batch, key)
            return new_state, metrics._replace(loss=jnp.where(state.step >= 6, jnp.inf, metrics.loss))

        return method._replace(step=step)

    monkeypatch.setattr(build, "vbu", diverging)
    with pytest.raises(errors.NonFiniteError,
                       match=r"^vbu: unlearning loss became non-finite at step 6 \(epoch 2\)"):
        unlearn.unlearn_and_evaluate(config, str(workdir), str(tmp_path / "out"))
    assert Checkpoints(tmp_path / "out").latest_step() is None
    assert not (tmp_path / "out" / "results.json").exists()


@pytest.mark.parametrize("method", ["retrain", "scu", "scu_no_cc", "vbu", "hbu", "salun",
                                    "finetune", "l1_sparse"])
def test_every_method_end_to_end(trained, tmp_path_factory, monkeypatch, method):
    config, workdir = trained
    config = _method_config(config, method, learning_rate=1e-3)
    out = tmp_path_factory.mktemp(method) / "out"
    runs, real_run = [], engine.run

    def recording_run(phases, *args, name, **kwargs):
        runs.append((name, [phase.name for phase in phases]))
        return real_run(phases, *args, name=name, **kwargs)

    monkeypatch.setattr(engine, "run", recording_run)
    results = unlearn.unlearn_and_evaluate(config, str(workdir), str(out))
    # Every method runs on the one engine: the erased-data loop, fine-tuning and retraining alike.
    expected_phases = {"retrain": ["receiver", "codec"], "finetune": ["codec"],
                       "l1_sparse": ["codec"]}
    assert runs == [(method, expected_phases.get(method, ["unlearning"]))]
    saved = json.loads((out / "results.json").read_text())
    assert saved["method"] == method and saved["steps"] == results["steps"] > 0
    # Its curves are in TensorBoard summaries under the workdir, one point per epoch at least.
    curves = read_scalars(out / "summaries")
    phases = expected_phases.get(method, ["unlearning"])
    assert sum(len(curves[f"{phase}/epoch/loss"]) for phase in phases) == saved["epochs"]
    assert curves[f"{phases[-1]}/epoch/loss"][-1][0] == saved["steps"]
    if method in ("scu", "scu_no_cc", "vbu", "hbu", "salun"):
        assert {f"unlearning/epoch/{n}" for n in ("backdoor", "forget", "utility")} <= set(curves)
        assert all(0 <= v <= 1 for _, v in curves["unlearning/epoch/backdoor"])
    if method == "scu":  # SCU's adaptive weights a and b, each epoch's means: a + b = 1
        weights = zip(curves["unlearning/epoch/a"], curves["unlearning/epoch/b"], strict=True)
        for (step_a, a), (step_b, b) in weights:
            assert step_a == step_b and a + b == pytest.approx(1.0, abs=1e-5)
    assert saved["unlearn_seconds"] > 0 and saved["compile_seconds"] > 0
    for name in ("backdoor_accuracy", "accuracy_clean", "mse_clean", "mse_erased", "mia_auc",
                 "mi_upper_erased", "psnr_clean", "ssim_clean"):
        assert np.isfinite(saved[name]), name
    assert 0.0 <= saved["mia_auc"] <= 1.0
    assert saved["receiver"] == "original" and saved["evaluation_channel"] == "train"
    if method == "retrain":
        # From scratch on D_r: its own receiver never saw a trigger, so the backdoor is gone; the
        # original receiver (trained with the trigger) still reads raw triggered images as 2.
        assert saved["own_receiver_backdoor_accuracy"] < 0.2
        assert saved["input_backdoor_accuracy"] > 0.5
        assert saved["epochs"] == config.train.receiver_epochs + config.train.epochs
        # Every row is read by the original receiver; retraining's own is an extra reading.
        split, system, trained_params, _ = _setup(config, workdir)
        params, batch_stats, _ = saved_lib.load_variables(out, system, config, (28, 28, 1))
        protocol = build.protocol_of(config)
        by_original = evaluation.evaluate_system(
            system, {**params, "receiver": trained_params["receiver"]}, batch_stats, split, protocol)
        by_own = evaluation.evaluate_system(system, params, batch_stats, split, protocol)
        for name in evaluation.RECEIVER_METRICS:
            assert saved[name] == pytest.approx(by_original[name], abs=1e-9)
            assert saved[f"own_receiver_{name}"] == pytest.approx(by_own[name], abs=1e-9)
        # Two instruments that differ (the check above could not pass by reading one twice).
        assert any(by_original[name] != by_own[name] for name in evaluation.RECEIVER_METRICS)
        # scu-evaluate reads the workdir alone, with the receiver kept in its checkpoint.
        alone = evaluate_workdir(str(out))
        assert alone["accuracy_clean"] == pytest.approx(saved["accuracy_clean"], abs=1e-9)
    else:
        # The MNIST receiver is frozen: the system's own receiver is the original one.
        assert not any(key.startswith("own_receiver_") for key in saved)
    # A rerun reuses the finished result instead of unlearning again.
    again = unlearn.unlearn_and_evaluate(config, str(workdir), str(out))
    assert again["steps"] == results["steps"] and again["backdoor_accuracy"] == results["backdoor_accuracy"]


def test_refuses_to_write_into_the_trained_workdir_or_reuse_another_method(trained, tmp_path):
    config, workdir = trained
    with pytest.raises(ValueError, match="never written to"):
        unlearn.unlearn_and_evaluate(_method_config(config, "vbu"), str(workdir), str(workdir))
    with pytest.raises(ValueError, match="never written to"):
        unlearn.unlearn_and_evaluate(_method_config(config, "vbu"), str(workdir), str(workdir / "x"))
    unlearn.unlearn_and_evaluate(_method_config(config, "vbu", max_epochs=1), str(workdir),
                                 str(tmp_path / "out"))
    with pytest.raises(ValueError, match="another method or configuration"):
        unlearn.unlearn_and_evaluate(_method_config(config, "hbu", max_epochs=1), str(workdir),
                                     str(tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        unlearn.unlearn_and_evaluate(_method_config(config, "vbu"), str(tmp_path / "none"),
                                     str(tmp_path / "out2"))


@pytest.mark.slow
def test_hbu_fixed_probe_reuses_one_rademacher_vector(monkeypatch):
    """The reference draws HBU's Rademacher probe once, from a fixed seed; by default
    each step draws its own (two eager steps, the probe keys recorded)."""
    import importlib

    hbu_module = importlib.import_module("scu_jax.methods.hbu")
    key = jax.random.PRNGKey(6)
    steps = [hbu_module.probe_key(key, jnp.asarray(step), fixed=False) for step in (0, 1)]
    assert not np.array_equal(steps[0], steps[1])
    config, system, variables, batch = _cifar_style_mlp()
    config.unlearning.hbu_fixed_probe = True
    probes = []
    real = hbu_module.hutchinson_diagonal

    def recording(loss, params, key):
        probes.append(np.asarray(jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
                                 else key))
        return real(loss, params, key)

    monkeypatch.setattr(hbu_module, "hutchinson_diagonal", recording)
    method = _method(config, system, "hbu")
    state = method.init(variables["params"], {})
    for _ in range(2):
        state, _ = method.step(state, batch, key)
    assert len(probes) == 2 and np.array_equal(probes[0], probes[1])
    np.testing.assert_array_equal(probes[0], hbu_module.probe_key(key, jnp.asarray(5), fixed=True))


def test_a_result_saved_before_new_fields_is_reused(trained, tmp_path):
    """Fields added to the schema since a result was saved take their defaults (what it ran
    with), so the rerun reuses it instead of refusing the workdir."""
    config, workdir = trained
    config = _method_config(config, "vbu", max_epochs=1)
    out = tmp_path / "vbu"
    first = unlearn.unlearn_and_evaluate(config, str(workdir), str(out))
    meta_file = next(out.rglob("config/metadata"))
    meta = json.loads(meta_file.read_text())
    del meta["unlearning_fingerprint"]["unlearning"]["partial_batch"]
    del meta["unlearning_fingerprint"]["training"]["model"]["init"]
    meta_file.write_text(json.dumps(meta))
    saved = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p != out / "results.json"}
    again = unlearn.unlearn_and_evaluate(config, str(workdir), str(out))
    assert again["unlearn_seconds"] == first["unlearn_seconds"]  # not run again
    assert {p: p.read_bytes() for p in saved} == saved
    config.unlearning.partial_batch = "drop"  # a real difference is still refused
    with pytest.raises(ValueError, match="another method or configuration"):
        unlearn.unlearn_and_evaluate(config, str(workdir), str(out))


@pytest.mark.slow
def test_relearning_attack_trains_on_part_of_d_e_and_reads_the_rest(trained):
    from scu_jax.runs.relearn import relearning_curve

    config, workdir = trained
    curve = relearning_curve(config, workdir, fraction=0.1, steps=(0, 3, 6))
    split = build.load_split(config)
    count = len(split.erased_images)
    attack = max(round(0.1 * count), min(16, count - 1))
    assert [entry["steps"] for entry in curve] == [0, 3, 6]
    assert all(entry["attack_images"] == attack and entry["heldout_images"] == count - attack
               for entry in curve)
    assert all(0.0 <= entry["backdoor_accuracy"] <= 1.0 for entry in curve)
    # Step 0 is the saved system itself, read on the images the attack leaves out, with the
    # stopping key and the original receiver.
    _, system, image_shape = build.build_for(config)
    params, batch_stats, _ = saved_lib.load_variables(workdir, system, config, image_shape)
    heldout = np.random.default_rng(0).permutation(count)[attack:]
    protocol = build.protocol_of(config)
    direct = target_rate(system_for_evaluation(system, protocol), params, batch_stats,
                         draws_of(split.erased_images[heldout], protocol), split.target_class,
                         stopping_key(protocol))
    assert curve[0]["backdoor_accuracy"] == pytest.approx(float(direct), abs=1e-6)
    # A rerun repeats the attack exactly (its draws and batches are seeded).
    assert relearning_curve(config, workdir, fraction=0.1, steps=(0, 3, 6)) == curve
    for bad in ({"fraction": 1.0}, {"steps": (3, 3)}, {"steps": (-1, 2)}):
        with pytest.raises(ValueError):
            relearning_curve(config, workdir, **bad)
