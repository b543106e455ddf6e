"""Noisy channels for deep-learning semantic communication.

Every channel maps a batch of encoder latents ``z`` of shape ``(B, ...)`` to a
received batch of the same shape and dtype. All functions are pure,
deterministic for a given PRNG key, and safe under ``jit``, ``vmap`` and
``grad``. SNR is given in dB and converted with ``snr = 10 ** (snr_db / 10)``;
``snr_db`` may be a scalar or have shape ``(B,)`` (one SNR per sample).

Two families of channel models are provided.

``family="paper"`` reproduces the additive formulas of the reference PyTorch
code. With ``P = mean(z ** 2)`` taken over the whole batch tensor:

* AWGN:     ``y = z + n``, ``n ~ N(0, P / snr)``.
* Rayleigh: ``y = z + n``, ``n ~ N(0, P / (2 snr))`` -- the reference applies
  no fading, only halves the noise variance.
* Rician:   ``s2 = P / ((K + 1) snr)``, ``X ~ N(sqrt(K s2), s2)``,
  ``Y ~ N(0, s2)``, ``y = z + sqrt(X ** 2 + Y ** 2)`` -- again no fading; the
  noise is a positive, Rice-distributed offset.

Two draws of that noise (``draw``):

* ``"element"`` (the default): every element gets an i.i.d. draw, which is
  what the formulas describe; the noise scale is differentiable through ``P``.
* ``"scalar"``: what the reference code actually ran. ``P`` is 0-dimensional,
  so each ``torch.normal(mean, std)`` call returned ONE scalar, added to every
  element of every sample of the batch (for Rician, one scalar each for X and
  Y), and ``torch.normal`` passes no gradient to its std: the noise scale is
  ``stop_gradient``-ed. One draw per call, so a constant shift of the whole
  batch; the paper's published numbers were produced with it.

With a per-sample SNR the noise of sample ``i`` uses ``snr_i`` but the same
batch-wide ``P`` (and, with ``draw="scalar"``, the same standard-normal draw).

``family="physical"`` is a complex-baseband link. Each sample is flattened to
``n`` reals (zero-padded to even length) and consecutive pairs form complex
symbols ``s``. Each sample is normalised to unit average symbol power,
``s~ = s / sqrt(P_i + eps)`` with ``P_i = mean(|s_i| ** 2)``, sent through

  ``y = h s~ + w``,  ``w ~ CN(0, 1 / snr)``,

with ``h = 1`` (AWGN), ``h ~ CN(0, 1)`` (Rayleigh) or
``h = sqrt(K / (K + 1)) + sqrt(1 / (K + 1)) CN(0, 1)`` (Rician), drawn once per
sample (``fading="block"``) or once per symbol (``fading="symbol"``). The
receiver knows ``h`` and equalises, by zero forcing ``s^ = y / h`` or by MMSE
``s^ = conj(h) y / (|h| ** 2 + 1 / snr)``, then undoes the power normalisation.
The SNR at the receiver input is exactly the requested one, so for AWGN with
zero forcing ``measured_snr_db(z, y)`` matches ``snr_db``.
"""

from typing import Any, Callable, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
SnrDb = Union[float, Array]

FAMILIES = ("paper", "physical")
DRAWS = ("element", "scalar")
FADINGS = ("block", "symbol")
EQUALIZERS = ("mmse", "zf")
_FADING_KINDS = ("awgn", "rayleigh", "rician")

# Keeps an all-zero sample from dividing by zero when normalising its power;
# far below any real latent power, so it does not bias the SNR.
_POWER_EPS = 1e-12


def _check_choice(what: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; choose one of: {', '.join(allowed)}")


def _check_concrete(what: str, value: Any, *, non_negative: bool = False) -> None:
    # Tracers carry no values; validation only happens where it is possible.
    if isinstance(value, jax.core.Tracer):
        return
    values = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{what} must be finite, got {value!r}")
    if non_negative and np.any(values < 0):
        raise ValueError(f"{what} must be non-negative, got {value!r}")


def _linear_snr(snr_db: SnrDb, z: Array, dtype: Any) -> Array:
    """Returns linear SNR broadcastable against ``z`` (batch axis first)."""
    _check_concrete("snr_db", snr_db)
    snr_db = jnp.asarray(snr_db, dtype)
    if snr_db.ndim == 1:
        if snr_db.shape[0] != z.shape[0]:
            raise ValueError(
                f"per-sample snr_db has shape {snr_db.shape}, expected ({z.shape[0]},)")
        snr_db = snr_db.reshape((-1,) + (1,) * (z.ndim - 1))
    elif snr_db.ndim > 1:
        raise ValueError(f"snr_db must be a scalar or have shape (B,), got {snr_db.shape}")
    return 10.0 ** (snr_db / 10.0)


def _compute_dtype(z: Array) -> Any:
    # Low-precision latents (bf16) would make the noise statistics coarse.
    return jnp.result_type(z.dtype, jnp.float32)


def _safe_sqrt(x: Array) -> Array:
    """sqrt with a zero (not NaN/inf) gradient at ``x <= 0``."""
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def fading_coefficients(key: Array, shape: tuple[int, ...], *, kind: str,
                        k_factor: float = 2.0) -> Array:
    """Draws unit-power complex fading coefficients.

    Args:
      key: PRNG key.
      shape: shape of the returned array.
      kind: ``"awgn"`` (``h = 1``), ``"rayleigh"`` (``h ~ CN(0, 1)``) or
        ``"rician"`` (``h = sqrt(K/(K+1)) + sqrt(1/(K+1)) CN(0, 1)``).
      k_factor: Rician K, the line-of-sight to scattered power ratio.

    Returns:
      complex64 array of ``shape`` with ``E|h|^2 = 1``.

    Example:
      >>> h = scu_jax.fading_coefficients(key, (100_000,), kind="rician", k_factor=2.0)
      >>> h.dtype, round(float(jnp.mean(jnp.abs(h) ** 2)), 1)
      (dtype('complex64'), 1.0)
    """
    _check_choice("fading kind", kind, _FADING_KINDS)
    if kind == "awgn":
        return jnp.ones(shape, jnp.complex64)
    real, imag = jax.random.normal(key, (2, *shape), jnp.float32)
    scattered = (real + 1j * imag) / np.sqrt(2.0)
    if kind == "rayleigh":
        return scattered.astype(jnp.complex64)
    _check_concrete("k_factor", k_factor, non_negative=True)
    line_of_sight = jnp.sqrt(k_factor / (k_factor + 1.0))
    return (line_of_sight + jnp.sqrt(1.0 / (k_factor + 1.0)) * scattered).astype(jnp.complex64)


def _paper(key: Array, z: Array, snr_db: SnrDb, kind: str, k_factor: float,
           draw: str = "element") -> Array:
    """The reference's additive noise, drawn per element or as one scalar per call."""
    dtype = _compute_dtype(z)
    x = z.astype(dtype)
    snr = _linear_snr(snr_db, x, dtype)
    # Batch-wide power. Per element, gradients flow through it; the reference's scalar draw
    # (torch.normal) passes none to its std.
    power = jnp.mean(x ** 2)
    if draw == "scalar":
        power = jax.lax.stop_gradient(power)
    # One standard-normal value per element, or one for the whole batch (broadcast).
    shape = x.shape if draw == "element" else ()
    if kind == "rician":
        _check_concrete("k_factor", k_factor, non_negative=True)
        sigma = _safe_sqrt(power / ((k_factor + 1.0) * snr))
        in_phase, quadrature = jax.random.normal(key, (2, *shape), dtype)
        in_phase = sigma * (jnp.sqrt(k_factor) + in_phase)
        quadrature = sigma * quadrature
        noise = _safe_sqrt(in_phase ** 2 + quadrature ** 2)
    else:
        variance = power / snr if kind == "awgn" else power / (2.0 * snr)
        noise = _safe_sqrt(variance) * jax.random.normal(key, shape, dtype)
    return (x + noise).astype(z.dtype)


def _physical(key: Array, z: Array, snr_db: SnrDb, kind: str, k_factor: float,
              fading: str, equalizer: str) -> Array:
    """Complex-baseband link with per-sample power normalisation and CSI."""
    dtype = _compute_dtype(z)
    batch, num_reals = z.shape[0], int(np.prod(z.shape[1:]))
    flat = z.reshape(batch, num_reals).astype(dtype)
    flat = jnp.pad(flat, ((0, 0), (0, num_reals % 2)))
    pairs = flat.reshape(batch, -1, 2)
    symbols = pairs[..., 0] + 1j * pairs[..., 1]

    # mean |s|^2 from the real pairs (two reals per symbol), keeping the power real-valued.
    symbol_power = 2.0 * jnp.mean(pairs ** 2, axis=(1, 2))[:, None]
    amplitude = jnp.sqrt(symbol_power + _POWER_EPS)
    normalised = symbols / amplitude

    snr = _linear_snr(snr_db, normalised, dtype)
    fading_key, noise_key = jax.random.split(key)
    fading_shape = (batch, 1) if fading == "block" else normalised.shape
    h = fading_coefficients(fading_key, fading_shape, kind=kind, k_factor=k_factor)
    h = h.astype(normalised.dtype)
    noise = jax.random.normal(noise_key, (2, *normalised.shape), dtype)
    noise = (noise[0] + 1j * noise[1]) * jnp.sqrt(1.0 / (2.0 * snr))
    received = h * normalised + noise

    if equalizer == "zf":
        estimate = received / h
    else:
        estimate = jnp.conj(h) * received / (h.real ** 2 + h.imag ** 2 + 1.0 / snr)

    estimate = estimate * amplitude
    reals = jnp.stack([estimate.real, estimate.imag], axis=-1).reshape(batch, -1)
    return reals[:, :num_reals].reshape(z.shape).astype(z.dtype)


def _channel(key: Array, z: Array, snr_db: SnrDb, *, kind: str, family: str,
             k_factor: float, fading: str, equalizer: str, draw: str) -> Array:
    _check_choice("family", family, FAMILIES)
    _check_choice("fading", fading, FADINGS)
    _check_choice("equalizer", equalizer, EQUALIZERS)
    _check_choice("draw", draw, DRAWS)
    if family == "paper":
        return _paper(key, z, snr_db, kind, k_factor, draw)
    if draw != "element":
        raise ValueError("draw='scalar' is the reference's quirk of the paper family; the "
                         "physical family draws its noise per symbol")
    return _physical(key, z, snr_db, kind, k_factor, fading, equalizer)


def awgn(key: Array, z: Array, snr_db: SnrDb, *, family: str = "physical",
         equalizer: str = "mmse", draw: str = "element") -> Array:
    """Additive white Gaussian noise channel.

    ``paper``: ``y = z + n``, ``n ~ N(0, mean(z^2) / snr)``.
    ``physical``: ``y = s~ + w``, ``w ~ CN(0, 1/snr)`` on power-normalised
    complex symbols, then equalised (ZF leaves ``y`` unchanged).

    Args:
      key: PRNG key.
      z: latents of shape ``(B, ...)``.
      snr_db: SNR in dB, scalar or shape ``(B,)``.
      family: ``"paper"`` or ``"physical"`` (see module docstring).
      equalizer: ``"mmse"`` or ``"zf"``; physical family only.
      draw: ``"element"`` or ``"scalar"`` (the reference's one draw per call);
        paper family only.

    Returns:
      Received latents, same shape and dtype as ``z``.

    Example:
      >>> y = scu_jax.awgn(key, z, 5.0, family="paper")
      >>> y.shape, round(float(scu_jax.measured_snr_db(z, y)))
      ((128, 20), 5)
    """
    return _channel(key, z, snr_db, kind="awgn", family=family, k_factor=0.0,
                    fading="block", equalizer=equalizer, draw=draw)


def rayleigh(key: Array, z: Array, snr_db: SnrDb, *, family: str = "physical",
             fading: str = "block", equalizer: str = "mmse", draw: str = "element") -> Array:
    """Rayleigh fading channel.

    ``paper``: ``y = z + n``, ``n ~ N(0, mean(z^2) / (2 snr))`` (no fading).
    ``physical``: ``y = h s~ + w``, ``h ~ CN(0, 1)``, ``w ~ CN(0, 1/snr)``,
    then equalised with known ``h``.

    Args:
      key: PRNG key.
      z: latents of shape ``(B, ...)``.
      snr_db: SNR in dB, scalar or shape ``(B,)``.
      family: ``"paper"`` or ``"physical"``.
      fading: ``"block"`` (one ``h`` per sample) or ``"symbol"`` (one per
        complex symbol); physical family only.
      equalizer: ``"mmse"`` or ``"zf"``; physical family only.
      draw: ``"element"`` or ``"scalar"``; paper family only.

    Returns:
      Received latents, same shape and dtype as ``z``.

    Example:
      >>> y = scu_jax.rayleigh(key, z, jnp.full((128,), 10.0), fading="symbol", equalizer="zf")
      >>> y.shape, y.dtype
      ((128, 20), dtype('float32'))
    """
    return _channel(key, z, snr_db, kind="rayleigh", family=family, k_factor=0.0,
                    fading=fading, equalizer=equalizer, draw=draw)


def rician(key: Array, z: Array, snr_db: SnrDb, *, family: str = "physical",
           k_factor: float = 2.0, fading: str = "block",
           equalizer: str = "mmse", draw: str = "element") -> Array:
    """Rician fading channel with K-factor ``k_factor``.

    ``paper``: ``s2 = mean(z^2) / ((K+1) snr)``, ``X ~ N(sqrt(K s2), s2)``,
    ``Y ~ N(0, s2)``, ``y = z + sqrt(X^2 + Y^2)`` (no fading).
    ``physical``: ``y = h s~ + w``,
    ``h = sqrt(K/(K+1)) + sqrt(1/(K+1)) CN(0, 1)``, ``w ~ CN(0, 1/snr)``,
    then equalised with known ``h``.

    Args:
      key: PRNG key.
      z: latents of shape ``(B, ...)``.
      snr_db: SNR in dB, scalar or shape ``(B,)``.
      family: ``"paper"`` or ``"physical"``.
      k_factor: line-of-sight to scattered power ratio ``K >= 0``.
      fading: ``"block"`` or ``"symbol"``; physical family only.
      equalizer: ``"mmse"`` or ``"zf"``; physical family only.
      draw: ``"element"`` or ``"scalar"`` (one X and one Y per call); paper
        family only.

    Returns:
      Received latents, same shape and dtype as ``z``.

    Example:
      >>> # The reference's draw: one Rice-distributed shift for the whole batch.
      >>> y = scu_jax.rician(key, z, 6.0, family="paper", draw="scalar")
      >>> bool(jnp.allclose(y - z, (y - z)[0, 0])), bool((y - z)[0, 0] > 0)
      (True, True)
    """
    return _channel(key, z, snr_db, kind="rician", family=family, k_factor=k_factor,
                    fading=fading, equalizer=equalizer, draw=draw)


def identity(key: Array, z: Array, snr_db: SnrDb, **unused: Any) -> Array:
    """Noiseless channel ``y = z``; takes the same arguments as the others."""
    del key, snr_db, unused
    return z


#: The channel functions by name: ``awgn``, ``rayleigh``, ``rician`` and ``none`` (``y = z``),
#: each called as ``f(key, z, snr_db, **options)``; the config's ``channel.name`` is one of them.
#:
#: Example:
#:   >>> sorted(scu_jax.CHANNELS)
#:   ['awgn', 'none', 'rayleigh', 'rician']
CHANNELS: dict[str, Callable[..., Array]] = {
    "awgn": awgn, "rayleigh": rayleigh, "rician": rician, "none": identity}


def get_channel(name: str) -> Callable[..., Array]:
    """Looks up a channel function, ``f(key, z, snr_db, **options)``, by name (a key of
    ``CHANNELS``); an unknown name raises ``ValueError``.

    Example:
      >>> scu_jax.get_channel("rician") is scu_jax.rician
      True
    """
    if name not in CHANNELS:
        raise ValueError(f"unknown channel {name!r}; choose one of: {', '.join(sorted(CHANNELS))}")
    return CHANNELS[name]


def measured_snr_db(clean: Array, noisy: Array) -> Array:
    """Empirical SNR ``10 log10(mean(clean^2) / mean((noisy - clean)^2))`` in dB: a scalar over
    every element of ``clean`` (what was sent) and ``noisy`` (what was received, same shape).

    Example:
      >>> round(float(scu_jax.measured_snr_db(z, 1.1 * z)), 3)   # noise = z / 10
      20.0
    """
    clean = jnp.asarray(clean, jnp.float32)
    noise = jnp.asarray(noisy, jnp.float32) - clean
    return 10.0 * jnp.log10(jnp.mean(clean ** 2) / jnp.mean(noise ** 2))


class Channel(nn.Module):
    """Linen layer applying a channel, drawing noise from the ``"channel"`` RNG.

    Attributes:
      channel: name in ``CHANNELS``.
      family: ``"paper"`` or ``"physical"``.
      snr_db: default SNR in dB when the call gives none.
      k_factor: Rician K-factor.
      fading: ``"block"`` or ``"symbol"``.
      equalizer: ``"mmse"`` or ``"zf"``.
      draw: ``"element"`` or ``"scalar"`` (paper family).

    Called as ``layer(z, snr_db=None, *, deterministic=False)``: ``snr_db`` (scalar or ``(B,)``)
    overrides the attribute; ``deterministic=True`` passes ``z`` through.

    Example:
      >>> layer = scu_jax.Channel("rayleigh", "physical", snr_db=10.0)
      >>> layer.apply({}, z, rngs={"channel": key}).shape
      (128, 20)
    """
    channel: str = "awgn"
    family: str = "physical"
    snr_db: float = 5.0
    k_factor: float = 2.0
    fading: str = "block"
    equalizer: str = "mmse"
    draw: str = "element"

    @nn.compact
    def __call__(self, z: Array, snr_db: SnrDb | None = None, *,
                 deterministic: bool = False) -> Array:
        channel_fn = get_channel(self.channel)
        if deterministic or self.channel == "none":
            return z
        snr_db = self.snr_db if snr_db is None else snr_db
        options = {"family": self.family, "equalizer": self.equalizer, "draw": self.draw}
        if self.channel != "awgn":
            options["fading"] = self.fading
        if self.channel == "rician":
            options["k_factor"] = self.k_factor
        return channel_fn(self.make_rng("channel"), z, snr_db, **options)
