"""The PyTorch way: the MNIST semantic codec's training step and SCU step in eager mode.

This is how the authors' reference code runs (On_MNIST/Unlearning_Semantic_VAE_on_Backdoor.py):
`nn.Module`s called step by step from Python, `loss.backward()`, `clip_grad_norm_(…, 5)` and
`Adam.step()`. Same architecture (MLP blocks `Linear(96) → ReLU → Linear`), same VAE head (μ,
softplus σ), the paper-family AWGN channel on the decoder path, the same losses and batch size as
`scu_jax`, so the benchmark compares the same arithmetic. `load_jax_params` copies a `scu_jax`
system's parameters in, so tests can check that both compute the same losses.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class MLP(nn.Module):
    def __init__(self, features_in: int, features_out: int, hidden: int = 96):
        super().__init__()
        self.hidden = nn.Linear(features_in, hidden)
        self.out = nn.Linear(hidden, features_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.hidden(x.flatten(1))))


class Codec(nn.Module):
    """Encoder → z = μ + σ·ε → AWGN (paper family) → decoder, as `scu_jax.models.SemanticCodec`."""

    def __init__(self, image_size: int = 784, latent_dim: int = 20, hidden: int = 96,
                 snr_db: float = 5.0):
        super().__init__()
        self.latent_dim, self.snr = latent_dim, 10.0 ** (snr_db / 10.0)
        self.encoder = MLP(image_size, 2 * latent_dim, hidden)
        self.decoder = MLP(latent_dim, image_size, hidden)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        stats = self.encoder(x)
        mu, pre_sigma = stats[:, :self.latent_dim], stats[:, self.latent_dim:]
        return mu, 2.0 * torch.log(F.softplus(pre_sigma))

    def channel(self, z: torch.Tensor) -> torch.Tensor:
        # Paper family: y = z + n, n ~ N(0, mean(z²)/snr), the power taken over the batch.
        power = z.pow(2).mean()
        return z + torch.randn_like(z) * torch.sqrt(power / self.snr)

    def forward(self, x: torch.Tensor):
        mu, logvar = self.encode(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        x_hat = torch.sigmoid(self.decoder(self.channel(z)))
        return z, x_hat, mu, logvar


def kl_to_prior(mu, logvar):
    return -0.5 * torch.mean(1 + logvar - mu.pow(2) - logvar.exp())


def gaussian_kl(mu_q, logvar_q, mu_p, logvar_p):
    return 0.5 * torch.mean(logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p).pow(2))
                            / logvar_p.exp() - 1.0)


def contrastive_compensation(z_e, z_r, z_r_reencoded, eps: float = 1e-6):
    positives = 1 - F.cosine_similarity(z_r, z_r_reencoded, dim=1, eps=eps)
    negatives = 1 - F.cosine_similarity(z_e, z_r, dim=1, eps=eps)
    return positives.sum() / negatives.sum()


class Reference:
    """The codec, a frozen receiver, a frozen copy θ_o and Adam, as the authors' scripts hold them."""

    def __init__(self, *, snr_db: float = 5.0, learning_rate: float = 1e-4, beta: float = 1e-4,
                 beta_u: float = 0.1, lambda_kl: float = 1.0, rho: float = 1.0,
                 grad_clip: float = 5.0, seed: int = 0, num_classes: int = 10,
                 device: str = "cpu"):
        torch.manual_seed(seed)
        self.device = torch.device(device)
        self.codec = Codec(snr_db=snr_db).to(self.device)
        self.receiver = MLP(784, num_classes).to(self.device)
        self.receiver.requires_grad_(False)
        self.original = Codec(snr_db=snr_db).to(self.device)
        self.original.load_state_dict(self.codec.state_dict())
        self.original.requires_grad_(False)
        # On a GPU the strongest PyTorch optimiser: fused Adam (one kernel for every parameter).
        self.optimizer = torch.optim.Adam(self.codec.parameters(), lr=learning_rate,
                                          fused=self.device.type == "cuda" or None)
        self.beta, self.beta_u, self.lambda_kl, self.rho = beta, beta_u, lambda_kl, rho
        self.grad_clip = grad_clip

    def _update(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.codec.parameters(), self.grad_clip)
        self.optimizer.step()

    def train_loss(self, x: torch.Tensor) -> torch.Tensor:
        _, x_hat, mu, logvar = self.codec(x)
        return self.beta * kl_to_prior(mu, logvar) + F.mse_loss(x_hat, x.flatten(1))

    def train_step(self, x: torch.Tensor) -> float:
        loss = self.train_loss(x)
        self._update(loss)
        return loss.detach()

    def scu_loss(self, x_e: torch.Tensor, x_r: torch.Tensor) -> torch.Tensor:
        z_e, x_hat_e, mu_e, logvar_e = self.codec(x_e)
        self.receiver(x_hat_e)  # the backdoor rate the early stop reads (forward only)
        with torch.no_grad():
            mu_o, logvar_o = self.original.encode(x_e)
        unlearn = (self.lambda_kl * gaussian_kl(mu_e, logvar_e, mu_o, logvar_o)
                   - self.beta_u * F.mse_loss(x_hat_e, x_e.flatten(1)))
        z_r, x_hat_r, mu_r, logvar_r = self.codec(x_r)
        mu_re, logvar_re = self.codec.encode(x_hat_r.detach())
        z_re = mu_re + torch.exp(0.5 * logvar_re) * torch.randn_like(mu_re)
        utility = self.rho * (self.beta * kl_to_prior(mu_r, logvar_r)
                              + contrastive_compensation(z_e, z_r, z_re)
                              + F.mse_loss(x_hat_r, x_r.flatten(1)))
        total = unlearn.abs() + utility.abs() + 1e-12
        return unlearn.abs() / total * unlearn + utility.abs() / total * utility

    def scu_step(self, x_e: torch.Tensor, x_r: torch.Tensor) -> float:
        loss = self.scu_loss(x_e, x_r)
        self._update(loss)
        return loss.detach()


def load_jax_params(reference: Reference, params: dict[str, Any]) -> None:
    """Copies a `scu_jax` MLP system's parameters (Flax Dense kernels are (in, out)) into torch."""

    def dense(layer: nn.Linear, flax_dense: dict[str, Any]) -> None:
        layer.weight.data = torch.from_numpy(np.asarray(flax_dense["kernel"]).T.copy())
        layer.bias.data = torch.from_numpy(np.asarray(flax_dense["bias"]).copy())

    codec = params["codec"]
    for target in (reference.codec, reference.original):
        dense(target.encoder.hidden, codec["encoder"]["hidden"])
        dense(target.encoder.out, codec["encoder"]["out"])
        dense(target.decoder.hidden, codec["decoder"]["mlp"]["hidden"])
        dense(target.decoder.out, codec["decoder"]["mlp"]["out"])
    dense(reference.receiver.hidden, params["receiver"]["mlp"]["hidden"])
    dense(reference.receiver.out, params["receiver"]["mlp"]["out"])
    reference.optimizer = torch.optim.Adam(reference.codec.parameters(),
                                           lr=reference.optimizer.param_groups[0]["lr"])
