"""scu-jax: machine unlearning for deep-learning semantic communication in JAX/Flax.

Reference implementation of SCU (Wang et al., IEEE TIFS 2025). The package root re-exports the
library layer only: channels, losses, models, data, methods, the engine, evaluation, MI
estimators, the device mesh and the errors — pure functions with explicit arguments, to import
into your own JAX pipeline. Running in a workdir (checkpoints, results files) is `scu_jax.runs`;
many runs (sweeps, the pipeline, reports) are `scu_jax.experiments`; the command lines are
`scu_jax.binaries`.
"""

from scu_jax.channels import CHANNELS
from scu_jax.channels import Channel
from scu_jax.channels import awgn
from scu_jax.channels import fading_coefficients
from scu_jax.channels import get_channel
from scu_jax.channels import measured_snr_db
from scu_jax.channels import rayleigh
from scu_jax.channels import rician
from scu_jax.data import ErasureSplit
from scu_jax.data import known_positions
from scu_jax.data import load_dataset
from scu_jax.data import make_erasure_split
from scu_jax.data import move_to_erased
from scu_jax.data.augment import crop_keeping_trigger
from scu_jax.engine import Phase
from scu_jax.expansion import flag_like_erased
from scu_jax.expansion import like_known
from scu_jax.engine import Report
from scu_jax.engine import run
from scu_jax.engine import run_many
from scu_jax.errors import CheckpointMismatchError
from scu_jax.errors import CheckpointReadError
from scu_jax.errors import CheckpointWriteError
from scu_jax.errors import ConfigError
from scu_jax.errors import DatasetUnavailableError
from scu_jax.errors import Interrupted
from scu_jax.errors import LedgerMismatchError
from scu_jax.errors import NonFiniteError
from scu_jax.stopping import Draws
from scu_jax.stopping import draws_of
from scu_jax.stopping import target_rate
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
from scu_jax.methods import Batch
from scu_jax.methods import CodecObjective
from scu_jax.methods import Examples
from scu_jax.methods import Method
from scu_jax.methods import Recipe
from scu_jax.methods import TrainState
from scu_jax.methods import UnlearnState
from scu_jax.methods import finetune
from scu_jax.methods import hbu
from scu_jax.methods import l1_sparse
from scu_jax.methods import saliency
from scu_jax.methods import saliency_mask
from scu_jax.methods import salun
from scu_jax.methods import scu
from scu_jax.methods import scu_no_cc
from scu_jax.methods import ssd
from scu_jax.methods import unlearning_phase
from scu_jax.methods import vbu
from scu_jax.methods.training import codec_step
from scu_jax.methods.training import initial_state
from scu_jax.methods.training import receiver_step
from scu_jax.mi import estimate_infonce
from scu_jax.mi import estimate_mine
from scu_jax.mi import variational_upper_bound
from scu_jax.models import SemanticCodec
from scu_jax.models import System
from scu_jax.models import init_system
from scu_jax.models import without_channel
from scu_jax.parallel import DataParallel
from scu_jax.population import correct_class_margin
from scu_jax.population import klom
from scu_jax.population import klom_summary
from scu_jax.population import noise_floor
from scu_jax.population import per_sample_outcomes
from scu_jax.probes import attack_rows
from scu_jax.probes import feature_names as probe_feature_names
from scu_jax.probes import gap_closed
from scu_jax.probes import linear_cka
from scu_jax.probes import probe_system
from scu_jax.probes import separates as probe_separates
from scu_jax.probes import transmitted_features
from scu_jax.probes import verdict as probe_verdict
from scu_jax.sharding import assign_shards
from scu_jax.sharding import sharded_forward
from scu_jax.sharding import shards_program
from scu_jax.worst_case import WorstCase
from scu_jax.worst_case import project_to_budget
from scu_jax.worst_case import set_hardness
from scu_jax.worst_case import worst_case_set
from scu_jax.parallel import mesh_for

__version__ = "0.1.0"

__all__ = (
    "Batch",
    "CHANNELS",
    "Channel",
    "CheckpointMismatchError",
    "CheckpointReadError",
    "CheckpointWriteError",
    "CodecObjective",
    "ConfigError",
    "DataParallel",
    "DatasetUnavailableError",
    "Draws",
    "ErasureSplit",
    "Examples",
    "Interrupted",
    "LedgerMismatchError",
    "Method",
    "NonFiniteError",
    "Phase",
    "Recipe",
    "Report",
    "SemanticCodec",
    "System",
    "TrainState",
    "UnlearnState",
    "WorstCase",
    "adaptive_weights",
    "assign_shards",
    "attack_rows",
    "awgn",
    "codec_loss",
    "codec_step",
    "contrastive_compensation",
    "correct_class_margin",
    "cosine_similarity",
    "crop_keeping_trigger",
    "cross_entropy",
    "draws_of",
    "estimate_infonce",
    "estimate_mine",
    "fading_coefficients",
    "finetune",
    "flag_like_erased",
    "gap_closed",
    "gaussian_kl",
    "get_channel",
    "hbu",
    "init_system",
    "initial_state",
    "kl_to_prior",
    "klom",
    "klom_summary",
    "like_known",
    "known_positions",
    "l1_sparse",
    "linear_cka",
    "load_dataset",
    "make_erasure_split",
    "move_to_erased",
    "noise_floor",
    "measured_snr_db",
    "mesh_for",
    "per_image_sse",
    "per_sample_outcomes",
    "probe_feature_names",
    "probe_separates",
    "probe_system",
    "probe_verdict",
    "project_to_budget",
    "rayleigh",
    "receiver_step",
    "reconstruction_mse",
    "rician",
    "run",
    "run_many",
    "saliency",
    "saliency_mask",
    "salun",
    "scu",
    "scu_loss",
    "scu_no_cc",
    "set_hardness",
    "sharded_forward",
    "shards_program",
    "ssd",
    "target_rate",
    "transmitted_features",
    "unlearning_phase",
    "variational_upper_bound",
    "vbu",
    "without_channel",
    "worst_case_set",
)
