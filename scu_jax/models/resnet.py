"""The CIFAR semantic codec of the authors' reference code: two ResNet-18-style networks.

The variant differs from torchvision's ResNet-18: a `Conv1×1(64)` stem with no pooling, and blocks
of `Conv3×3(stride) → BN → ReLU → Conv1×1 → BN` (the second convolution is 1×1), skip = identity or
`Conv1×1(stride) + BN`, output `ReLU(block + skip)`; 8 blocks of widths 64, 64, 128, 128, 256, 256,
512, 512 with stride 2 where the width grows; global average pooling; a Dense head.
BatchNorm uses batch statistics while training or unlearning and running averages in evaluation.
"""

from __future__ import annotations

import math
import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from scu_jax.models.initializers import layer_inits

WIDTHS = (64, 64, 128, 128, 256, 256, 512, 512)


def _batch_norm(train: bool, dtype: jnp.dtype, name: str) -> nn.BatchNorm:
    # PyTorch's defaults (momentum 0.1 on the new value, eps 1e-5) so running averages match.
    return nn.BatchNorm(
        use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype, name=name
    )


class ResidualBlock(nn.Module):
    """`ReLU(BN(Conv1×1(ReLU(BN(Conv3×3_stride(x))))) + skip(x))`."""

    width: int
    stride: int = 1
    dtype: jnp.dtype = jnp.float32
    initializer: str = "flax"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        # No biases: the initialiser choice sets the kernels only.
        conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                                 **layer_inits(self.initializer, 1, bias=False))
        strides = (self.stride, self.stride)
        y = conv(self.width, (3, 3), strides, padding=1, name="conv1")(x)
        y = nn.relu(_batch_norm(train, self.dtype, "bn1")(y))
        y = conv(self.width, (1, 1), name="conv2")(y)
        y = _batch_norm(train, self.dtype, "bn2")(y)
        skip = x
        if self.stride != 1 or x.shape[-1] != self.width:
            skip = conv(self.width, (1, 1), strides, name="skip_conv")(x)
            skip = _batch_norm(train, self.dtype, "skip_bn")(skip)
        return nn.relu(y + skip)


class ResNet18(nn.Module):
    """ResNet-18-style feature extractor with a Dense head of `features` outputs."""

    features: int
    widths: Sequence[int] = WIDTHS
    dtype: jnp.dtype = jnp.float32
    initializer: str = "flax"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = x.astype(self.dtype)
        x = nn.Conv(self.widths[0], (1, 1), use_bias=False, dtype=self.dtype, name="stem_conv",
                    **layer_inits(self.initializer, 1, bias=False))(x)
        x = _batch_norm(train, self.dtype, "stem_bn")(x)
        previous = self.widths[0]
        for index, width in enumerate(self.widths):
            stride = 2 if width > previous else 1
            x = ResidualBlock(width, stride, self.dtype, self.initializer, name=f"block{index}")(x, train)
            previous = width
        x = jnp.mean(x, axis=(1, 2))
        # The head stays in float32: it sets the latent statistics and the reconstruction.
        return nn.Dense(self.features, name="head",
                        **layer_inits(self.initializer, x.shape[-1]))(x.astype(jnp.float32))


class ResNetDecoder(nn.Module):
    """Reshapes the latent to an image and maps it to a raw (un-squashed) reconstruction."""

    image_shape: Sequence[int]
    widths: Sequence[int] = WIDTHS
    dtype: jnp.dtype = jnp.float32
    initializer: str = "flax"

    @nn.compact
    def __call__(self, z: jax.Array, train: bool = False) -> jax.Array:
        size = math.prod(self.image_shape)
        x = z.reshape((z.shape[0], *self.image_shape))
        x_hat = ResNet18(size, self.widths, self.dtype, self.initializer, name="net")(x, train)
        return x_hat.reshape((z.shape[0], *self.image_shape))


class ResNetReceiver(nn.Module):
    """The reference's CIFAR-100 receiver: a ResNet-18-style classifier on x̂ as an image.

    Its BatchNorm statistics live in the system's `batch_stats` under "receiver".
    """

    num_classes: int
    image_shape: Sequence[int]
    widths: Sequence[int] = WIDTHS
    dtype: jnp.dtype = jnp.float32
    initializer: str = "flax"

    @nn.compact
    def __call__(self, x_hat: jax.Array, train: bool = False) -> jax.Array:
        x = x_hat.reshape((x_hat.shape[0], *self.image_shape)).astype(jnp.float32)
        return ResNet18(self.num_classes, self.widths, self.dtype, self.initializer, name="net")(x, train)
