"""Flax Linen models of the semantic communication system."""

from scu_jax.models.codec import MODELS
from scu_jax.models.codec import RECEIVER_MODELS
from scu_jax.models.codec import apply_receiver
from scu_jax.models.codec import receiver_of
from scu_jax.models.codec import with_receiver
from scu_jax.models.codec import CodecOutput
from scu_jax.models.codec import SemanticCodec
from scu_jax.models.codec import System
from scu_jax.models.codec import init_system
from scu_jax.models.codec import to_unit_interval
from scu_jax.models.codec import without_channel
from scu_jax.models.initializers import INITS
from scu_jax.models.initializers import layer_inits
from scu_jax.models.mlp import MLP
from scu_jax.models.mlp import MLPDecoder
from scu_jax.models.mlp import Receiver
from scu_jax.models.resnet import ResNet18
from scu_jax.models.resnet import ResNetDecoder
from scu_jax.models.resnet import ResNetReceiver
from scu_jax.models.resnet import ResidualBlock

__all__ = (
    "INITS",
    "MODELS",
    "RECEIVER_MODELS",
    "CodecOutput",
    "MLP",
    "MLPDecoder",
    "Receiver",
    "ResNet18",
    "ResNetDecoder",
    "ResNetReceiver",
    "ResidualBlock",
    "SemanticCodec",
    "System",
    "apply_receiver",
    "init_system",
    "layer_inits",
    "receiver_of",
    "to_unit_interval",
    "with_receiver",
    "without_channel",
)
