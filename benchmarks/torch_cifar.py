"""The PyTorch way on CIFAR-10: the ResNet codec's training step and SCU step, as a PyTorch user
would run them on a GPU.

The same system as `scu_jax`'s CIFAR-10 preset (the authors' On_CIFAR scripts): two ResNet-18-style
networks (`scu_jax.models.resnet`: a `Conv1×1(64)` stem, 8 blocks `Conv3×3(stride) → BN → ReLU →
Conv1×1 → BN` with 1×1 projection skips, global average pooling, a Dense head), the encoder's head
giving μ and softplus σ of a 3,072-value latent, the latent reshaped to 3×32×32 for the decoder,
the paper-family AWGN channel on the decoder path, and a `MLP(3072, 10)` receiver trained jointly
(the CE term). Losses: training `β·KL_prior + 30·MSE + CE/30`; SCU as `scu_jax.methods.scu` runs
under the CIFAR-10 preset (`− β_u·(MSE + CE_target/30)` in L_unl, `30·MSE + CE/30` in L_ss, the
weights a, b from that L_ss). Two passes through the codec (erased, remaining) so each batch's
BatchNorm statistics are its own, as `scu_jax` runs a BatchNorm codec.

The strongest PyTorch set-up rather than the authors' literal one: channels-last tensors, fused
Adam (`fused=True` on a GPU), `clip_grad_norm_(foreach)`, TF32 for float32 products (JAX's
default on a GPU), and bfloat16 by `torch.autocast`, the way PyTorch runs mixed precision.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from benchmarks.torch_reference import MLP, contrastive_compensation, gaussian_kl, kl_to_prior

WIDTHS = (64, 64, 128, 128, 256, 256, 512, 512)


class Block(nn.Module):
    def __init__(self, width_in: int, width: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(width_in, width, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.skip = None
        if stride != 1 or width_in != width:
            self.skip = nn.Sequential(nn.Conv2d(width_in, width, 1, stride, bias=False),
                                      nn.BatchNorm2d(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + (x if self.skip is None else self.skip(x)))


class ResNet18(nn.Module):
    """`scu_jax.models.resnet.ResNet18` in PyTorch (NCHW): features → Dense(`features`)."""

    def __init__(self, features: int, channels: int = 3, widths: Sequence[int] = WIDTHS):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(channels, widths[0], 1, bias=False),
                                  nn.BatchNorm2d(widths[0]))
        blocks, previous = [], widths[0]
        for width in widths:
            blocks.append(Block(previous, width, 2 if width > previous else 1))
            previous = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(previous, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.blocks(self.stem(x)).mean(dim=(2, 3))
        with torch.autocast(x.device.type, enabled=False):  # the head in float32, as scu_jax's
            return self.head(features.float())


class Codec(nn.Module):
    """Encoder → z = μ + σ·ε → AWGN (paper family) → decoder, on 3×32×32 images."""

    def __init__(self, widths: Sequence[int] = WIDTHS, snr_db: float = 20.0):
        super().__init__()
        self.size, self.snr = 3 * 32 * 32, 10.0 ** (snr_db / 10.0)
        self.encoder = ResNet18(2 * self.size, widths=widths)
        self.decoder = ResNet18(self.size, widths=widths)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        stats = self.encoder(x)
        mu, pre_sigma = stats[:, :self.size], stats[:, self.size:]
        return mu, 2.0 * torch.log(F.softplus(pre_sigma))

    def forward(self, x: torch.Tensor):
        mu, logvar = self.encode(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        received = z + torch.randn_like(z) * torch.sqrt(z.pow(2).mean() / self.snr)
        image = received.view(-1, 3, 32, 32).contiguous(memory_format=torch.channels_last)
        return z, self.decoder(image), mu, logvar


class Reference:
    """The codec with its joint receiver, a frozen copy θ_o, Adam, on `device`; `dtype`
    "bfloat16" runs the losses under `torch.autocast`."""

    def __init__(self, *, device: str = "cpu", dtype: str = "float32", widths=WIDTHS,
                 learning_rate: float = 5e-4, beta: float = 1e-4, beta_u: float = 10.0,
                 lambda_kl: float = 1.0, rho: float = 100.0, grad_clip: float = 5.0,
                 seed: int = 0, num_classes: int = 10):
        torch.manual_seed(seed)
        self.device = torch.device(device)
        self.autocast = dtype == "bfloat16"
        self.codec = Codec(widths).to(self.device, memory_format=torch.channels_last)
        self.receiver = MLP(3 * 32 * 32, num_classes).to(self.device)
        self.original = copy.deepcopy(self.codec).eval().requires_grad_(False)
        self.parameters = list(self.codec.parameters()) + list(self.receiver.parameters())
        fused = self.device.type == "cuda"
        self.optimizer = torch.optim.Adam(self.parameters, lr=learning_rate, fused=fused)
        self.beta, self.beta_u, self.lambda_kl, self.rho = beta, beta_u, lambda_kl, rho
        self.grad_clip = grad_clip

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """NHWC floats (scu_jax's layout) → NCHW channels-last on the device."""
        return x.to(self.device).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)

    def _context(self):
        return torch.autocast(self.device.type, torch.bfloat16, enabled=self.autocast)

    def _receiver(self, x_hat: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, enabled=False):  # float32, as scu_jax's MLP
            return self.receiver(x_hat.float())

    def update(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.parameters, self.grad_clip, foreach=True)
        self.optimizer.step()

    def train_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with self._context():
            _, x_hat, mu, logvar = self.codec(x)
            logits = self._receiver(x_hat)
            return (self.beta * kl_to_prior(mu.float(), logvar.float())
                    + 30.0 * F.mse_loss(x_hat.float(), x.flatten(1).float())
                    + F.cross_entropy(logits.float(), y) / 30.0)

    def scu_loss(self, x_e: torch.Tensor, y_e: torch.Tensor, x_r: torch.Tensor,
                 y_r: torch.Tensor) -> torch.Tensor:
        with self._context():
            z_e, x_hat_e, mu_e, logvar_e = self.codec(x_e)
            logits_e = self._receiver(x_hat_e)
            with torch.no_grad():
                mu_o, logvar_o = self.original.encode(x_e)
            forget = (F.mse_loss(x_hat_e.float(), x_e.flatten(1).float())
                      + F.cross_entropy(logits_e.float(), y_e) / 30.0)
            unlearn = self.lambda_kl * gaussian_kl(mu_e, logvar_e, mu_o, logvar_o) - self.beta_u * forget
            z_r, x_hat_r, mu_r, logvar_r = self.codec(x_r)
            again = x_hat_r.detach().view(-1, 3, 32, 32).contiguous(memory_format=torch.channels_last)
            mu_re, logvar_re = self.codec.encode(again)
            z_re = mu_re + torch.exp(0.5 * logvar_re) * torch.randn_like(mu_re)
            shared = (self.beta * kl_to_prior(mu_r.float(), logvar_r.float())
                      + contrastive_compensation(z_e.float(), z_r.float(), z_re.float())
                      + F.cross_entropy(self._receiver(x_hat_r), y_r) / 30.0)
            mse_r = F.mse_loss(x_hat_r.float(), x_r.flatten(1).float())
            utility = self.rho * (shared + 30.0 * mse_r)
            total = unlearn.abs() + utility.abs() + 1e-12
            return unlearn.abs() / total * unlearn + utility.abs() / total * utility
