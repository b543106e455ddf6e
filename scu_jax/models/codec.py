"""The semantic communication system: VAE encoder → channel → decoder, plus the receiver.

The system model of the paper (Wang et al., IEEE TIFS 2025):
```
x ─► encoder ─► (μ, σ) ─► z = μ + σ·ε ─► channel(z; SNR) ─► decoder ─► x̂ ─► receiver ─► y
```
The encoder emits 2d values: μ = the first d, σ = softplus(the last d), logvar = log σ².
Channel noise is applied on the decoder path only; the KL and contrastive terms use z before it.
"""

from __future__ import annotations

import itertools
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from scu_jax.channels import Channel

MODELS = ("mlp", "resnet18")
RECEIVER_MODELS = ("mlp", "resnet18")


class CodecOutput(NamedTuple):
    """What one pass of the system returns (all batch-leading)."""

    z: jax.Array  # latent sample before the channel, (B, d)
    x_hat: jax.Array  # reconstruction from the channel output, image shaped
    mu: jax.Array  # posterior mean, (B, d)
    logvar: jax.Array  # posterior log-variance log σ², (B, d)


def _log_softplus(s: jax.Array) -> jax.Array:
    """log(softplus(s)), exact where softplus underflows (s < -20 gives log softplus(s) ≈ s)."""
    safe = jnp.maximum(s, -20.0)
    return jnp.where(s < -20.0, s, jnp.log(jax.nn.softplus(safe)))


class SemanticCodec(nn.Module):
    """Encoder (transmitter), channel and decoder (receiver side) trained jointly as a VAE.

    Randomness comes from two Flax RNG streams: `latent` (the reparameterisation ε) and `channel`
    (the channel noise and fading), so either can be fixed independently.

    Attributes:
      encoder: a module mapping images to `2·latent_dim` values, the posterior's μ and pre-σ.
      decoder: a module mapping latents back to images.
      channel: a `Channel` layer, between encoder and decoder.
      latent_dim: d, the latent's width.

    Calling it (`apply`) on images in [0, 1] returns a `CodecOutput(z, x_hat, mu, logvar)`;
    `encode`, `decode`, `forward_parts` and `sample_and_decode` are its other entry points.

    Example:
      >>> variables = scu_jax.init_system(system, key, (28, 28, 1))
      >>> out = codec.apply({"params": variables["params"]["codec"]}, images / 255.0,
      ...                   rngs={"latent": key, "channel": key})
      >>> out.z.shape, out.x_hat.shape
      ((16, 20), (16, 28, 28, 1))
    """

    encoder: nn.Module
    decoder: nn.Module
    channel: nn.Module
    latent_dim: int

    def encode(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        """Returns the posterior `(μ, logvar)` of q(z|x)."""
        stats = self.encoder(x, train)
        mu, pre_sigma = stats[:, : self.latent_dim], stats[:, self.latent_dim :]
        return mu, 2.0 * _log_softplus(pre_sigma)

    def decode(self, z: jax.Array, train: bool = False, snr_db: Any = None) -> jax.Array:
        """Sends z through the channel and decodes the channel output."""
        return self.decoder(self.channel(z, snr_db), train)

    def __call__(self, x: jax.Array, train: bool = False, snr_db: Any = None) -> CodecOutput:
        return self.forward_parts((x,), train, snr_db)[0]

    def forward_parts(self, parts: Sequence[jax.Array], train: bool = False,
                      snr_db: Any = None) -> tuple[CodecOutput, ...]:
        """Passes several batches through the system as if each were sent alone, with the encoder
        and decoder run once on their concatenation (one matrix multiply a layer, not one a part).

        The channel is applied to each part on its own: its noise power is taken over the batch
        it is given, and the reference's `draw="scalar"` is one draw per forward call, so each
        part gets its own draw, as in separate calls. The latent noise ε is i.i.d. per element
        either way. Only for codecs without BatchNorm: with it, the parts' batch statistics
        would mix (`methods.base.codec_forward_parts` chooses). One part is `__call__`, with the
        same draws; with several, `snr_db` (one value) applies to every part.
        """
        sizes = [part.shape[0] for part in parts]
        ends = list(itertools.accumulate(sizes))[:-1]
        x = parts[0] if len(parts) == 1 else jnp.concatenate(parts)
        mu, logvar = self.encode(x, train)
        eps = jax.random.normal(self.make_rng("latent"), mu.shape, mu.dtype)
        z = mu + jnp.exp(0.5 * logvar) * eps
        received = [self.channel(part, snr_db) for part in jnp.split(z, ends)]
        x_hat = self.decoder(received[0] if len(parts) == 1 else jnp.concatenate(received), train)
        return tuple(CodecOutput(*fields) for fields in
                     zip(*(jnp.split(a, ends) for a in (z, x_hat, mu, logvar))))

    def sample_and_decode(self, mu: jax.Array, logvar: jax.Array, train: bool = False,
                          snr_db: Any = None) -> CodecOutput:
        """Draws z from the posterior `(μ, logvar)`, sends it and decodes: `__call__` after the
        encoder, with the same draws for the same keys (so a set's posterior can be computed once
        and sent many times)."""
        eps = jax.random.normal(self.make_rng("latent"), mu.shape, mu.dtype)
        z = mu + jnp.exp(0.5 * logvar) * eps
        return CodecOutput(z, self.decode(z, train, snr_db), mu, logvar)


class System(NamedTuple):
    """The two Linen modules of a semantic communication system.

    Attributes:
      codec: the `SemanticCodec` (transmitter, channel, decoder).
      receiver: the classifier that reads the reconstructions (`Receiver`, an MLP, or a ResNet).

    Example:
      >>> system.codec.latent_dim, type(system.receiver).__name__
      (20, 'Receiver')
    """

    codec: SemanticCodec
    receiver: nn.Module  # Receiver (MLP) or ResNetReceiver


def without_channel(system: System) -> System:
    """The same system with the channel switched off: the decoder reads the clean latent sample.

    How the authors' reference code evaluates on MNIST (its evaluation forward skips the noise,
    On_MNIST/Unlearning_Semantic_VAE_on_Backdoor.py). The channel holds no parameters, so the
    variables of `system` apply unchanged.

    Example:
      >>> scu_jax.without_channel(system).codec.channel.channel
      'none'
    """
    return system._replace(codec=system.codec.clone(channel=Channel(channel="none")))


def init_system(system: System, key: jax.Array, image_shape: Sequence[int]) -> dict[str, Any]:
    """Initialises the variables: `{'params': {'codec', 'receiver'}, 'batch_stats': {...}}`.

    Args:
      system: the two modules.
      key: PRNG key of the initial parameters.
      image_shape: `(H, W, C)` of one image.

    Returns:
      The variables; `batch_stats` is empty for codecs without BatchNorm.

    Example:
      >>> variables = scu_jax.init_system(system, key, (28, 28, 1))
      >>> sorted(variables["params"]), variables["batch_stats"]
      (['codec', 'receiver'], {})
    """
    codec_key, receiver_key, latent_key, channel_key = jax.random.split(key, 4)
    dummy = jnp.zeros((2, *image_shape), jnp.float32)
    codec_variables = system.codec.init(
        {"params": codec_key, "latent": latent_key, "channel": channel_key}, dummy, train=False
    )
    receiver_variables = system.receiver.init(receiver_key, dummy)
    batch_stats = dict(codec_variables.get("batch_stats", {}))
    if "batch_stats" in receiver_variables:  # a BatchNorm receiver's statistics sit beside the codec's
        batch_stats["receiver"] = receiver_variables["batch_stats"]
    return {
        "params": {"codec": codec_variables["params"], "receiver": receiver_variables["params"]},
        "batch_stats": batch_stats,
    }


def apply_receiver(system: System, params: dict[str, Any], batch_stats: dict[str, Any],
                   x_hat: jax.Array, *, train: bool = False) -> tuple[jax.Array, dict[str, Any]]:
    """The receiver's logits on x̂, and `batch_stats` with its BatchNorm statistics updated.

    An MLP receiver has no statistics (`batch_stats` comes back unchanged); a ResNet receiver keeps
    them under `batch_stats["receiver"]`, in training mode from the batch (and updated), in
    evaluation mode from the running averages. `params["receiver"]` may be stop-gradient-ed by
    the caller.
    """
    if "receiver" not in batch_stats:
        return system.receiver.apply({"params": params["receiver"]}, x_hat), batch_stats
    variables = {"params": params["receiver"], "batch_stats": batch_stats["receiver"]}
    if not train:
        return system.receiver.apply(variables, x_hat, train=False), batch_stats
    logits, mutated = system.receiver.apply(variables, x_hat, train=True, mutable=["batch_stats"])
    return logits, {**batch_stats, "receiver": mutated["batch_stats"]}


def receiver_of(params: dict[str, Any], batch_stats: dict[str, Any]) -> tuple[Any, Any]:
    """A system's receiver: `(its parameters, its BatchNorm statistics or None)`."""
    return params["receiver"], batch_stats.get("receiver")


def with_receiver(params: dict[str, Any], batch_stats: dict[str, Any],
                  receiver: tuple[Any, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`(params, batch_stats)` with the receiver `receiver` (from `receiver_of`) in place."""
    receiver_params, receiver_stats = receiver
    params = {**params, "receiver": receiver_params}
    if receiver_stats is not None:
        batch_stats = {**batch_stats, "receiver": receiver_stats}
    return params, batch_stats


def to_unit_interval(images: jax.Array) -> jax.Array:
    """uint8 images → float32 in [0, 1]; float images pass through unchanged."""
    if images.dtype == jnp.uint8:
        return images.astype(jnp.float32) / 255.0
    return images.astype(jnp.float32)
