"""scu-jax: machine unlearning for deep-learning semantic communication in JAX/Flax.

Reference implementation of SCU (Wang et al., IEEE TIFS 2025): pure channel functions, the
semantic codec, losses and jitted training steps, importable into your own JAX pipeline.
"""

from scu_jax.channels import CHANNELS
from scu_jax.channels import Channel
from scu_jax.channels import awgn
from scu_jax.channels import fading_coefficients
from scu_jax.channels import get_channel
from scu_jax.channels import measured_snr_db
from scu_jax.channels import rayleigh
from scu_jax.channels import rician
from scu_jax.checkpointing import Checkpoints
from scu_jax.config import ConfigError
from scu_jax.config import default_config
from scu_jax.config import validate_config
from scu_jax.data import ErasureSplit
from scu_jax.data import load_dataset
from scu_jax.data import make_erasure_split
from scu_jax.evaluation import evaluate_system
from scu_jax.losses import codec_loss
from scu_jax.losses import cross_entropy
from scu_jax.losses import gaussian_kl
from scu_jax.losses import kl_to_prior
from scu_jax.losses import per_image_sse
from scu_jax.losses import reconstruction_mse
from scu_jax.models import SemanticCodec
from scu_jax.models import System
from scu_jax.models import build_system
from scu_jax.models import init_system
from scu_jax.train import TrainState
from scu_jax.train import create_train_state
from scu_jax.train import make_codec_step
from scu_jax.train import make_receiver_step
from scu_jax.train import train_and_evaluate

__version__ = "0.1.0"

__all__ = (
    "CHANNELS",
    "Channel",
    "Checkpoints",
    "ConfigError",
    "ErasureSplit",
    "SemanticCodec",
    "System",
    "TrainState",
    "awgn",
    "build_system",
    "codec_loss",
    "create_train_state",
    "cross_entropy",
    "default_config",
    "evaluate_system",
    "fading_coefficients",
    "gaussian_kl",
    "get_channel",
    "init_system",
    "kl_to_prior",
    "load_dataset",
    "make_codec_step",
    "make_erasure_split",
    "make_receiver_step",
    "measured_snr_db",
    "per_image_sse",
    "rayleigh",
    "reconstruction_mse",
    "rician",
    "train_and_evaluate",
    "validate_config",
)
