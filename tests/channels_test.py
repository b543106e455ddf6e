"""Tests for scu_jax.channels."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scu_jax import channels

# Inputs are reused across tests on purpose: eager JAX compiles each primitive
# once per shape, so a few shared shapes keep the suite fast on CPU.
BATCH, DIM = 2048, 64
SMALL = (16, 10)
FADING_CHANNELS = ("rayleigh", "rician")
NOISY_CHANNELS = ("awgn",) + FADING_CHANNELS


def _normal(shape, seed=0):
    # numpy, not jax.random: avoids compiling a sampler for every test shape.
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


@pytest.fixture(scope="module")
def latents():
    return _normal((BATCH, DIM))


def _key(seed=1):
    return jax.random.PRNGKey(seed)


def _linear(snr_db):
    return 10.0 ** (snr_db / 10.0)


def _measured_linear_snr(clean, noisy):
    return _linear(float(channels.measured_snr_db(clean, noisy)))


@pytest.mark.parametrize("family,options", [("paper", {}), ("physical", {"equalizer": "zf"})])
@pytest.mark.parametrize("snr_db", [0.0, 5.0, 10.0, 20.0])
def test_awgn_measured_snr_matches_request(latents, family, options, snr_db):
    received = channels.awgn(_key(), latents, snr_db, family=family, **options)
    ratio = _measured_linear_snr(latents, received) / _linear(snr_db)
    assert abs(ratio - 1.0) < 0.03


def test_physical_mmse_beats_zero_forcing_at_low_snr(latents):
    mse = {}
    for equalizer in channels.EQUALIZERS:
        received = channels.awgn(_key(), latents, 0.0, equalizer=equalizer)
        mse[equalizer] = float(jnp.mean((received - latents) ** 2))
    # At 0 dB MMSE scales by 1/(1 + 1/snr) = 1/2, which halves the expected MSE.
    assert mse["mmse"] < 0.6 * mse["zf"]


def test_paper_rayleigh_noise_variance(latents):
    snr_db = 5.0
    noise = channels.rayleigh(_key(), latents, snr_db, family="paper") - latents
    expected = float(jnp.mean(latents ** 2)) / (2.0 * _linear(snr_db))
    assert abs(float(jnp.var(noise)) / expected - 1.0) < 0.03
    assert abs(float(jnp.mean(noise))) < 0.01


@pytest.mark.parametrize("k_factor", [2.0, 10.0])
def test_paper_rician_noise_is_rice_distributed(latents, k_factor):
    snr_db = 5.0
    received = channels.rician(_key(), latents, snr_db, family="paper", k_factor=k_factor)
    noise = np.asarray(received - latents)
    assert np.all(noise > 0)

    # Large-sample numpy reference for E sqrt(X^2 + Y^2).
    sigma = np.sqrt(float(jnp.mean(latents ** 2)) / ((k_factor + 1.0) * _linear(snr_db)))
    rng = np.random.default_rng(0)
    in_phase = rng.normal(np.sqrt(k_factor) * sigma, sigma, 1_000_000)
    quadrature = rng.normal(0.0, sigma, 1_000_000)
    reference_mean = np.mean(np.hypot(in_phase, quadrature))
    assert abs(noise.mean() / reference_mean - 1.0) < 0.01


@pytest.mark.parametrize("kind,k_factor", [("rayleigh", 0.0), ("rician", 2.0), ("rician", 10.0)])
def test_fading_coefficients_statistics(kind, k_factor):
    h = np.asarray(channels.fading_coefficients(_key(), (500_000,), kind=kind, k_factor=k_factor))
    assert h.dtype == np.complex64
    assert abs(np.mean(np.abs(h) ** 2) - 1.0) < 0.02
    if kind == "rician":
        mean = h.mean()
        estimated_k = np.abs(mean) ** 2 / np.mean(np.abs(h - mean) ** 2)
        assert abs(estimated_k / k_factor - 1.0) < 0.10


def test_fading_coefficients_awgn_is_ones():
    h = channels.fading_coefficients(_key(), (3, 4), kind="awgn")
    assert h.dtype == jnp.complex64
    np.testing.assert_array_equal(h, np.ones((3, 4)))


@pytest.mark.parametrize("name", NOISY_CHANNELS)
@pytest.mark.parametrize("fading", channels.FADINGS)
def test_physical_zero_forcing_is_transparent_at_high_snr(latents, name, fading):
    options = {} if name == "awgn" else {"fading": fading}
    received = channels.get_channel(name)(_key(), latents, 100.0, equalizer="zf", **options)
    relative_error = jnp.linalg.norm(received - latents) / jnp.linalg.norm(latents)
    assert float(relative_error) < 1e-3


@pytest.mark.parametrize("name", FADING_CHANNELS)
def test_block_fading_gain_is_constant_within_a_sample(name):
    # Same key for +z and -z gives the same h and noise, so (y(z) - y(-z)) / 2z
    # isolates the real MMSE gain |h|^2 / (|h|^2 + 1/snr) of every symbol.
    rng = np.random.default_rng(3)
    magnitudes = rng.uniform(0.5, 1.5, (BATCH, DIM)) * rng.choice([-1.0, 1.0], (BATCH, DIM))
    z = jnp.asarray(magnitudes, jnp.float32)
    channel = channels.get_channel(name)
    gains = {}
    for fading in channels.FADINGS:
        difference = (channel(_key(), z, 0.0, fading=fading)
                      - channel(_key(), -z, 0.0, fading=fading))
        gains[fading] = np.asarray(difference / (2.0 * z))
    block = gains["block"]
    assert np.max(np.std(block, axis=1)) < 1e-4
    assert np.std(block[:, 0]) > 0.05
    assert np.mean(np.std(gains["symbol"], axis=1)) > 0.05


@pytest.mark.parametrize("family,options", [("paper", {}), ("physical", {"equalizer": "zf"})])
def test_per_sample_snr(latents, family, options):
    half = BATCH // 2
    snr_db = jnp.concatenate([jnp.zeros(half), jnp.full(half, 20.0)])
    received = channels.awgn(_key(), latents, snr_db, family=family, **options)
    for rows, requested_db in ((slice(None, half), 0.0), (slice(half, None), 20.0)):
        ratio = _measured_linear_snr(latents[rows], received[rows]) / _linear(requested_db)
        assert abs(ratio - 1.0) < 0.03


@pytest.fixture(scope="module")
def gradients():
    z = _normal(SMALL).at[0].set(0.0)  # an all-zero sample stresses the normalisation

    def all_gradients(x):
        return {(name, family): jax.grad(lambda x: jnp.sum(
                    channels.get_channel(name)(_key(), x, 5.0, family=family) ** 2))(x)
                for name in NOISY_CHANNELS for family in channels.FAMILIES}

    # One compile for all twelve graphs instead of twelve.
    return jax.jit(all_gradients)(z)


@pytest.mark.parametrize("family", channels.FAMILIES)
@pytest.mark.parametrize("name", NOISY_CHANNELS)
def test_gradients_are_finite(gradients, family, name):
    grad = np.asarray(gradients[name, family])
    assert np.all(np.isfinite(grad))
    assert np.any(grad != 0.0)


def test_jit_matches_eager(latents):
    jitted = jax.jit(channels.awgn, static_argnames=("family", "equalizer"))
    for family in channels.FAMILIES:
        np.testing.assert_allclose(
            jitted(_key(), latents, 5.0, family=family),
            channels.awgn(_key(), latents, 5.0, family=family), rtol=1e-5, atol=1e-5)


def test_vmap_over_keys_and_determinism(latents):
    keys = jax.random.split(_key(), 4)
    received = jax.jit(jax.vmap(lambda key: channels.awgn(key, latents, 5.0)))(keys)
    assert received.shape == (4, BATCH, DIM)
    assert not np.allclose(received[0], received[1])
    first = channels.awgn(keys[0], latents, 5.0)
    np.testing.assert_array_equal(first, channels.awgn(keys[0], latents, 5.0))
    np.testing.assert_allclose(received[0], first, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape,dtype", [
    ((2, 32, 32, 3), jnp.float32), ((5, 7), jnp.float32), ((5, 7), jnp.bfloat16)])
@pytest.mark.parametrize("name", sorted(channels.CHANNELS))
def test_shape_and_dtype_preserved(shape, dtype, name):
    z = _normal(shape).astype(dtype)
    received = channels.get_channel(name)(_key(), z, 10.0, family="physical")
    assert received.shape == shape and received.dtype == dtype
    assert np.all(np.isfinite(np.asarray(received, np.float32)))


@pytest.mark.parametrize("bad_snr", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_snr_raises(bad_snr):
    z = jnp.ones(SMALL)
    with pytest.raises(ValueError, match="finite"):
        channels.awgn(_key(), z, bad_snr)
    with pytest.raises(ValueError, match="finite"):
        channels.rayleigh(_key(), z, jnp.zeros(SMALL[0]).at[3].set(bad_snr), family="paper")


def test_snr_shape_mismatch_raises():
    with pytest.raises(ValueError, match="per-sample"):
        channels.awgn(_key(), jnp.ones(SMALL), jnp.zeros(SMALL[0] + 1))


@pytest.mark.parametrize("options,allowed", [
    ({"family": "digital"}, "paper, physical"),
    ({"fading": "fast"}, "block, symbol"),
    ({"equalizer": "ml"}, "mmse, zf"),
])
def test_unknown_options_raise(options, allowed):
    with pytest.raises(ValueError, match=allowed):
        channels.rician(_key(), jnp.ones(SMALL), 5.0, **options)


def test_unknown_channel_raises():
    with pytest.raises(ValueError, match="choose one of: awgn, none, rayleigh, rician"):
        channels.get_channel("x")
    with pytest.raises(ValueError, match="choose one of: awgn, rayleigh, rician"):
        channels.fading_coefficients(_key(), (2,), kind="nakagami")


def test_identity_is_noiseless(latents):
    assert channels.identity(_key(), latents, 0.0, family="paper") is latents


def test_linen_layer_matches_function(latents):
    z = latents
    layer = channels.Channel(channel="awgn", family="paper", snr_db=5.0)
    # make_rng folds the module path into the key, so two Channel layers in one
    # model draw independent noise; derive the key the layer sees the same way.
    layer_key = layer.apply({}, rngs={"channel": _key()}, method=lambda m: m.make_rng("channel"))
    out = layer.apply({}, z, rngs={"channel": _key()})
    np.testing.assert_array_equal(out, channels.awgn(layer_key, z, 5.0, family="paper"))
    np.testing.assert_array_equal(layer.apply({}, z, deterministic=True), z)

    rician_layer = channels.Channel(channel="rician", k_factor=4.0, fading="symbol", equalizer="zf")
    np.testing.assert_array_equal(
        rician_layer.apply({}, z, 12.0, rngs={"channel": _key()}),
        channels.rician(layer_key, z, 12.0, k_factor=4.0, fading="symbol", equalizer="zf"))
    np.testing.assert_array_equal(channels.Channel(channel="none").apply({}, z), z)


# --- The reference's scalar draw (the authors' reference code) ------------------------------------

_SCALAR_CALLS = 4000


def _scalar_noise(name, z, snr_db, **options):
    """One call per key, vmapped: the (calls, B, d) noise `channel(z) − z` of `_SCALAR_CALLS` calls."""
    keys = jax.random.split(_key(7), _SCALAR_CALLS)
    fn = channels.get_channel(name)
    received = jax.jit(jax.vmap(lambda k: fn(k, z, snr_db, family="paper", draw="scalar", **options)))(keys)
    return received - z[None]


@pytest.mark.parametrize("name,share", [("awgn", 1.0), ("rayleigh", 0.5)])
def test_scalar_draw_is_one_value_per_call_with_the_formula_variance(name, share):
    z = _normal(SMALL, seed=3)
    snr_db = 5.0
    noise = _scalar_noise(name, z, snr_db)
    per_call = noise[:, 0, 0]
    # One value per call, added to every element of every sample.
    np.testing.assert_allclose(noise, per_call[:, None, None] * jnp.ones_like(noise), atol=1e-5)
    expected = share * float(jnp.mean(z ** 2)) / _linear(snr_db)
    # The variance across calls is the formula's (4,000 calls: a relative standard error of 2.2 %).
    assert abs(float(jnp.var(per_call)) / expected - 1.0) < 0.08
    assert abs(float(jnp.mean(per_call))) < 4 * np.sqrt(expected / _SCALAR_CALLS)


def test_scalar_rician_draws_one_x_and_one_y_per_call():
    z = _normal(SMALL, seed=4)
    snr_db, k = 6.0, 2.0
    noise = _scalar_noise("rician", z, snr_db, k_factor=k)
    per_call = noise[:, 0, 0]
    np.testing.assert_allclose(noise, per_call[:, None, None] * jnp.ones_like(noise), atol=1e-5)
    s2 = float(jnp.mean(z ** 2)) / ((k + 1.0) * _linear(snr_db))
    # sqrt(X² + Y²) with X ~ N(√K s, s²), Y ~ N(0, s²): positive, E[n²] = (K + 2) s².
    assert float(jnp.min(per_call)) >= 0.0
    assert abs(float(jnp.mean(per_call ** 2)) / ((k + 2.0) * s2) - 1.0) < 0.06


@pytest.mark.parametrize("name", NOISY_CHANNELS)
def test_scalar_draw_passes_no_gradient_through_the_noise_scale(name):
    z = _normal(SMALL, seed=5)

    def total(draw):
        fn = channels.get_channel(name)
        return jax.grad(lambda x: jnp.sum(fn(_key(), x, 0.0, family="paper", draw=draw)))(z)

    # torch.normal detaches its std: d(sum y)/dz is exactly 1 per element.
    np.testing.assert_array_equal(total("scalar"), jnp.ones_like(z))
    # Per element, the scale mean(z²) carries a gradient (the check above can fail).
    assert float(jnp.max(jnp.abs(total("element") - 1.0))) > 1e-3


def test_scalar_draw_with_per_sample_snr_and_in_the_linen_layer():
    z = _normal(SMALL, seed=6)
    snr = jnp.linspace(0.0, 30.0, SMALL[0])
    noise = channels.awgn(_key(), z, snr, family="paper", draw="scalar") - z
    # One standard-normal value, scaled per sample by its own SNR.
    unit = noise[:, 0] / jnp.sqrt(jnp.mean(z ** 2) / _linear(snr))
    np.testing.assert_allclose(unit, unit[0] * jnp.ones_like(unit), rtol=1e-4)
    layer = channels.Channel(channel="awgn", family="paper", snr_db=5.0, draw="scalar")
    received = layer.apply({}, z, rngs={"channel": _key()})
    assert float(jnp.std(received - z)) < 1e-5 and float(jnp.abs(jnp.mean(received - z))) > 0


def test_scalar_draw_of_the_physical_family_is_refused():
    with pytest.raises(ValueError, match="paper family"):
        channels.awgn(_key(), _normal(SMALL), 5.0, family="physical", draw="scalar")
    with pytest.raises(ValueError, match="unknown draw"):
        channels.awgn(_key(), _normal(SMALL), 5.0, family="paper", draw="batch")
