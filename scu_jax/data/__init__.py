"""Datasets, the backdoor erasure split and in-memory batching."""

from scu_jax.data.batching import epoch_permutation
from scu_jax.data.batching import padded_batches
from scu_jax.data.erasure import add_trigger
from scu_jax.data.erasure import ErasureSplit
from scu_jax.data.erasure import make_erasure_split
from scu_jax.data.erasure import num_erased
from scu_jax.data.erasure import TRIGGER_SIZE
from scu_jax.data.erasure import trigger_mask
from scu_jax.data.sources import Dataset
from scu_jax.data.sources import DATASETS
from scu_jax.errors import DatasetUnavailableError
from scu_jax.data.sources import load_dataset

__all__ = (
    "DATASETS",
    "Dataset",
    "DatasetUnavailableError",
    "ErasureSplit",
    "TRIGGER_SIZE",
    "add_trigger",
    "epoch_permutation",
    "load_dataset",
    "make_erasure_split",
    "num_erased",
    "padded_batches",
    "trigger_mask",
)
