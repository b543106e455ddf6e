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
from scu_jax.runs.checkpointing import Checkpoints
from scu_jax.errors import ConfigError
from scu_jax.config import default_config
from scu_jax.config import method_config
from scu_jax.config import validate_config
from scu_jax.presets import use_reference_protocol
from scu_jax.data import ErasureSplit
from scu_jax.data.augment import crop_keeping_trigger
from scu_jax.data import load_dataset
from scu_jax.data import make_erasure_split
from scu_jax.evaluation import evaluate_system
from scu_jax.evaluation import system_for_evaluation
from scu_jax.losses import adaptive_weights
from scu_jax.losses import codec_loss
from scu_jax.losses import contrastive_compensation
from scu_jax.losses import cosine_similarity
from scu_jax.losses import cross_entropy
from scu_jax.losses import gaussian_kl
from scu_jax.losses import kl_to_prior
from scu_jax.losses import per_image_sse
from scu_jax.losses import reconstruction_mse
from scu_jax.losses import scu_loss
from scu_jax.mi import estimate_infonce
from scu_jax.mi import estimate_mine
from scu_jax.mi import variational_upper_bound
from scu_jax.models import SemanticCodec
from scu_jax.models import System
from scu_jax.models import build_system
from scu_jax.models import init_system
from scu_jax.models import without_channel
from scu_jax.parallel import DataParallel
from scu_jax.parallel import data_parallel
from scu_jax.runs.train import TrainState
from scu_jax.runs.train import create_train_state
from scu_jax.runs.train import make_block_runner
from scu_jax.runs.train import make_codec_step
from scu_jax.runs.train import make_receiver_step
from scu_jax.runs.train import train_and_evaluate
from scu_jax.runs.unlearn import evaluate_workdir
from scu_jax.runs.unlearn import unlearn_and_evaluate
from scu_jax.methods import METHODS
from scu_jax.methods import hbu
from scu_jax.methods import finetune
from scu_jax.methods import retrain
from scu_jax.methods import scu
from scu_jax.methods import scu_no_cc
from scu_jax.methods import vbu

__version__ = "0.1.0"

__all__ = (
    "CHANNELS",
    "METHODS",
    "Channel",
    "Checkpoints",
    "ConfigError",
    "DataParallel",
    "ErasureSplit",
    "SemanticCodec",
    "System",
    "TrainState",
    "adaptive_weights",
    "awgn",
    "build_system",
    "codec_loss",
    "contrastive_compensation",
    "cosine_similarity",
    "create_train_state",
    "crop_keeping_trigger",
    "cross_entropy",
    "data_parallel",
    "default_config",
    "estimate_infonce",
    "estimate_mine",
    "evaluate_system",
    "evaluate_workdir",
    "fading_coefficients",
    "finetune",
    "gaussian_kl",
    "get_channel",
    "hbu",
    "init_system",
    "kl_to_prior",
    "load_dataset",
    "make_block_runner",
    "make_codec_step",
    "make_erasure_split",
    "make_receiver_step",
    "measured_snr_db",
    "method_config",
    "per_image_sse",
    "rayleigh",
    "reconstruction_mse",
    "retrain",
    "rician",
    "scu",
    "scu_loss",
    "scu_no_cc",
    "system_for_evaluation",
    "train_and_evaluate",
    "unlearn_and_evaluate",
    "use_reference_protocol",
    "validate_config",
    "variational_upper_bound",
    "vbu",
    "without_channel",
)
