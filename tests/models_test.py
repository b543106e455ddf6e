"""Shapes, parameter counts and BatchNorm behaviour of the codec models (the paper's system model)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scu_jax import channels
from scu_jax import config as config_lib
from scu_jax import presets
from scu_jax.runs.build import build_system
from scu_jax.models import (apply_receiver, init_system, receiver_of, resnet,
                            with_receiver)


def _count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _mnist_system(channel="awgn"):
    config = config_lib.default_config()
    config.channel.name = channel
    system = build_system(config, (28, 28, 1), 10)
    variables = init_system(system, jax.random.PRNGKey(0), (28, 28, 1))
    return system, variables


def test_mnist_parameter_counts():
    _, variables = _mnist_system()
    params = variables["params"]
    # Encoder MLP(784 → 96 → 40): 784·96 + 96 + 96·40 + 40.
    assert _count(params["codec"]["encoder"]) == 784 * 96 + 96 + 96 * 40 + 40 == 79_240
    # Decoder MLP(20 → 96 → 784): 20·96 + 96 + 96·784 + 784.
    assert _count(params["codec"]["decoder"]) == 20 * 96 + 96 + 96 * 784 + 784 == 78_064
    # Receiver MLP(784 → 96 → 10).
    assert _count(params["receiver"]) == 784 * 96 + 96 + 96 * 10 + 10 == 76_330
    assert variables["batch_stats"] == {}


def test_mnist_apply_shapes_and_vae_head():
    system, variables = _mnist_system()
    x = jax.random.uniform(jax.random.PRNGKey(1), (5, 28, 28, 1))
    rngs = {"latent": jax.random.PRNGKey(2), "channel": jax.random.PRNGKey(3)}
    out = system.codec.apply({"params": variables["params"]["codec"]}, x, rngs=rngs)
    assert out.z.shape == out.mu.shape == out.logvar.shape == (5, 20)
    assert out.x_hat.shape == (5, 28, 28, 1)
    assert float(out.x_hat.min()) >= 0.0 and float(out.x_hat.max()) <= 1.0  # sigmoid
    # logvar = log σ² with σ = softplus of the encoder's last d outputs.
    stats = system.codec.apply({"params": variables["params"]["codec"]}, x,
                               method=lambda m, x: m.encoder(x))
    sigma = jax.nn.softplus(stats[:, 20:])
    np.testing.assert_allclose(out.mu, stats[:, :20], rtol=1e-6)
    np.testing.assert_allclose(out.logvar, jnp.log(sigma**2), rtol=1e-5, atol=1e-6)
    logits = system.receiver.apply({"params": variables["params"]["receiver"]}, out.x_hat)
    assert logits.shape == (5, 10)


def test_channel_noise_only_on_decoder_path():
    noisy_system, variables = _mnist_system("awgn")
    clean_system, _ = _mnist_system("none")
    x = jax.random.uniform(jax.random.PRNGKey(1), (8, 28, 28, 1))
    rngs = {"latent": jax.random.PRNGKey(2), "channel": jax.random.PRNGKey(3)}
    params = {"params": variables["params"]["codec"]}
    noisy = noisy_system.codec.apply(params, x, rngs=rngs)
    clean = clean_system.codec.apply(params, x, rngs=rngs)
    np.testing.assert_array_equal(noisy.z, clean.z)
    np.testing.assert_array_equal(noisy.mu, clean.mu)
    assert float(jnp.mean((noisy.x_hat - clean.x_hat) ** 2)) > 1e-6
    # Another channel key changes x̂ but not z.
    other = noisy_system.codec.apply(params, x, rngs={**rngs, "channel": jax.random.PRNGKey(9)})
    np.testing.assert_array_equal(other.z, noisy.z)
    assert not np.allclose(other.x_hat, noisy.x_hat)


def _reference_channel(config):
    """`config`'s channel set to the reference protocol's MNIST one (paper Rician, one draw)."""
    config.channel.family, config.channel.draw = "paper", "scalar"
    config.channel.name, config.channel.snr_db, config.channel.k_factor = "rician", 6.0, 2.0
    return config


def test_forward_parts_computes_separate_passes_as_one_batch():
    """Without channel noise and with the same ε, each part's outputs are those of its own pass."""
    system, variables = _mnist_system("none")
    params = {"params": variables["params"]["codec"]}
    erased, remain = jax.random.uniform(jax.random.PRNGKey(1), (2, 16, 28, 28, 1))
    outs = system.codec.apply(params, (erased, remain), rngs={"latent": jax.random.PRNGKey(2)},
                              method="forward_parts")
    for part, out in zip((erased, remain), outs):
        mu, logvar = system.codec.apply(params, part, method="encode")
        np.testing.assert_allclose(out.mu, mu, atol=1e-5)
        np.testing.assert_allclose(out.logvar, logvar, atol=1e-5)
        decoded = system.codec.apply(params, out.z, method=lambda m, z: m.decoder(z))
        np.testing.assert_allclose(out.x_hat, decoded, atol=1e-5)
        assert out.z.shape == (16, 20) and out.x_hat.shape == (16, 28, 28, 1)
    # One part is the codec's __call__, draw for draw.
    rngs = {"latent": jax.random.PRNGKey(2), "channel": jax.random.PRNGKey(3)}
    noisy, _ = _mnist_system("awgn")
    (alone,) = noisy.codec.apply(params, (erased,), rngs=rngs, method="forward_parts")
    called = noisy.codec.apply(params, erased, rngs=rngs)
    for a, b in zip(alone, called):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("protocol", ["default", "reference"])
def test_forward_parts_applies_the_channel_to_each_part(protocol):
    """The channel normalises its noise over the batch it is given, and the reference's scalar
    draw is one value per call: each part gets its own, as when sent alone."""
    config = config_lib.default_config()
    if protocol == "reference":
        _reference_channel(config)
    system = build_system(config, (28, 28, 1), 10)
    params = {"params": init_system(system, jax.random.PRNGKey(0), (28, 28, 1))["params"]["codec"]}
    images = jax.random.uniform(jax.random.PRNGKey(1), (512, 28, 28, 1))
    # The second part's latents carry ~50× the first's power.
    parts = (images, 30.0 * images)
    outs, captured = system.codec.apply(
        params, parts, train=True, method="forward_parts", capture_intermediates=True,
        rngs={"latent": jax.random.PRNGKey(2), "channel": jax.random.PRNGKey(3)},
        mutable=["intermediates"])
    received = captured["intermediates"]["channel"]["__call__"]
    assert len(received) == 2
    powers = [float(jnp.mean(out.z ** 2)) for out in outs]
    assert powers[1] > 10 * powers[0]
    if protocol == "default":  # AWGN, one draw an element: SNR as configured in each part
        for out, y in zip(outs, received):
            assert float(channels.measured_snr_db(out.z, y)) == pytest.approx(5.0, abs=0.2)
    else:  # Rician, one draw a call: a constant shift a part, scaled to that part's power
        shifts = [np.asarray(y - out.z) for out, y in zip(outs, received)]
        for shift in shifts:
            np.testing.assert_allclose(shift, shift.flat[0], rtol=1e-3, atol=1e-4)
        assert shifts[0].flat[0] != shifts[1].flat[0]


def _expected_resnet_params(widths, in_channels, features):
    """Counts the reference's ResNet-18 variant by hand: kernels + BN scale/bias + Dense head."""
    count = in_channels * widths[0] + 2 * widths[0]  # stem Conv1×1 (no bias) + BN
    previous = widths[0]
    for width in widths:
        count += 9 * previous * width + 2 * width  # Conv3×3 + BN
        count += width * width + 2 * width  # Conv1×1 + BN
        if width != previous:
            count += previous * width + 2 * width  # projection skip Conv1×1 + BN
        previous = width
    return count + previous * features + features


@pytest.mark.parametrize("widths", [(64, 64, 128, 128, 256, 256, 512, 512), (8, 8, 16, 16)])
def test_resnet_parameter_count_matches_spec(widths):
    model = resnet.ResNet18(features=12, widths=widths)
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
    assert _count(variables["params"]) == _expected_resnet_params(widths, 3, 12)


def test_cifar_codec_shapes_and_batchnorm_modes():
    config = presets.apply_variant(presets.cifar_config("cifar10"), "smoke")
    system = build_system(config, (32, 32, 3), 10)
    variables = init_system(system, jax.random.PRNGKey(0), (32, 32, 3))
    x = jax.random.uniform(jax.random.PRNGKey(1), (4, 32, 32, 3))
    rngs = {"latent": jax.random.PRNGKey(2), "channel": jax.random.PRNGKey(3)}
    codec_vars = {"params": variables["params"]["codec"], "batch_stats": variables["batch_stats"]}
    out, mutated = system.codec.apply(codec_vars, x, train=True, rngs=rngs, mutable=["batch_stats"])
    assert out.z.shape == (4, 3072) and out.x_hat.shape == (4, 32, 32, 3)
    # Training updates the running averages; evaluation reads them and changes nothing.
    before = jax.tree.leaves(variables["batch_stats"])
    after = jax.tree.leaves(mutated["batch_stats"])
    assert any(not np.allclose(a, b) for a, b in zip(before, after))
    eval_out = system.codec.apply(codec_vars, x, train=False, rngs=rngs)
    assert not np.allclose(eval_out.mu, out.mu)  # batch stats vs running averages
    # In evaluation one image's output does not depend on the rest of the batch.
    single = system.codec.apply(codec_vars, x[:1], train=False, rngs=rngs, method="encode")
    batch = system.codec.apply(codec_vars, x, train=False, rngs=rngs, method="encode")
    np.testing.assert_allclose(single[0][0], batch[0][0], rtol=1e-4, atol=1e-5)


def test_torch_initialisers_match_pytorch_reset_parameters():
    """`model.init = "torch"` (`scu_jax.models.initializers`): kernels U(±1/√fan_in)
    (kaiming-uniform, a = √5), biases the same bound; a convolution's fan_in counts its window.
    Flax's default has zero biases."""
    config = config_lib.default_config()
    config.model.init = "torch"
    system = build_system(config, (28, 28, 1), 10)
    params = init_system(system, jax.random.PRNGKey(0), (28, 28, 1))["params"]
    for layer, fan_in in ((params["codec"]["encoder"]["hidden"], 784),
                          (params["codec"]["decoder"]["mlp"]["out"], 96),
                          (params["receiver"]["mlp"]["hidden"], 784)):
        kernel, bias = np.asarray(layer["kernel"]), np.asarray(layer["bias"])
        bound = 1 / np.sqrt(fan_in)
        assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.98 * bound
        assert kernel.var() == pytest.approx(bound ** 2 / 3, rel=0.05)  # uniform: bound²/3
        assert np.abs(bias).max() <= bound and np.abs(bias).max() > 0.5 * bound
    flax_params = _mnist_system()[1]["params"]
    assert not np.any(np.asarray(flax_params["codec"]["encoder"]["hidden"]["bias"]))
    cifar = presets.apply_variant(presets.cifar_config("cifar10"), "smoke")
    cifar.model.init = "torch"
    cifar_system = build_system(cifar, (32, 32, 3), 10)
    conv = init_system(cifar_system, jax.random.PRNGKey(0), (32, 32, 3))[
        "params"]["codec"]["encoder"]["block0"]["conv1"]["kernel"]
    bound = 1 / np.sqrt(3 * 3 * conv.shape[2])  # 3×3 window × input channels
    assert np.abs(conv).max() <= bound and np.abs(conv).max() > 0.9 * bound


def test_resnet_receiver_keeps_its_batchnorm_statistics_beside_the_codecs():
    """The reference's CIFAR-100 receiver (`model.receiver = "resnet18"`): 20 logits from x̂ as an
    image; its statistics sit in batch_stats["receiver"], updated in training mode only."""
    config = presets.apply_variant(presets.cifar_config("cifar100"), "smoke")
    config.model.receiver = "resnet18"
    system = build_system(config, (32, 32, 3), 20)
    variables = init_system(system, jax.random.PRNGKey(0), (32, 32, 3))
    params, stats = variables["params"], variables["batch_stats"]
    assert set(stats) == {"encoder", "decoder", "receiver"}
    x_hat = jax.random.uniform(jax.random.PRNGKey(1), (4, 32, 32, 3))
    logits, same = apply_receiver(system, params, stats, x_hat)
    assert logits.shape == (4, 20) and same is stats  # evaluation mode: running averages, no update
    logits, updated = apply_receiver(system, params, stats, x_hat, train=True)
    assert set(updated) == set(stats) and updated["encoder"] is stats["encoder"]
    moved = [float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(updated["receiver"]),
                                                         jax.tree.leaves(stats["receiver"]))]
    assert max(moved) > 1e-3  # the batch moved the running averages (momentum 0.9)
    original = receiver_of(params, stats)
    swapped_params, swapped_stats = with_receiver(params, updated, original)
    assert swapped_stats["receiver"] is stats["receiver"] and swapped_params["receiver"] is params["receiver"]
