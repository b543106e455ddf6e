"""Datasets, the backdoor erasure split, users' forget sets and in-memory batching."""

from scu_jax.data.batching import epoch_permutation
from scu_jax.data.batching import padded_batches
from scu_jax.data.erasure import add_trigger
from scu_jax.data.erasure import ErasureSplit
from scu_jax.data.erasure import known_positions
from scu_jax.data.erasure import make_erasure_split
from scu_jax.data.erasure import move_to_erased
from scu_jax.data.erasure import num_erased
from scu_jax.data.erasure import TRIGGER_SIZE
from scu_jax.data.erasure import trigger_mask
from scu_jax.data.forget import check_ids
from scu_jax.data.forget import class_ids
from scu_jax.data.forget import data_identity
from scu_jax.data.forget import FORGET_KINDS
from scu_jax.data.forget import ids_digest
from scu_jax.data.forget import make_forget_split
from scu_jax.data.forget import random_ids
from scu_jax.data.forget import read_ids
from scu_jax.data.sources import Dataset
from scu_jax.data.sources import DATASETS
from scu_jax.errors import DatasetUnavailableError
from scu_jax.data.sources import load_dataset

__all__ = (
    "DATASETS",
    "Dataset",
    "DatasetUnavailableError",
    "ErasureSplit",
    "FORGET_KINDS",
    "TRIGGER_SIZE",
    "add_trigger",
    "check_ids",
    "class_ids",
    "data_identity",
    "epoch_permutation",
    "ids_digest",
    "known_positions",
    "load_dataset",
    "make_erasure_split",
    "make_forget_split",
    "move_to_erased",
    "num_erased",
    "padded_batches",
    "random_ids",
    "read_ids",
    "trigger_mask",
)
