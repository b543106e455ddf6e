"""The protocol every erased-data method runs under: paired batches and the stopping rules.

An epoch is ⌈|D_e|/B⌉ steps (⌊|D_e|/B⌋ with `drop_partial`); each takes one erased batch and one
remaining batch of the same size (D_e is reshuffled and, for the last batch, wrapped around; the
D_r batches are redrawn every epoch). Early stop: once a batch's backdoor accuracy falls below
`batch_stop`, the rest of that epoch's steps are skipped; the run stops once the epoch's backdoor
accuracy is below `epoch_stop` (0 switches that rule off). "The epoch's backdoor accuracy" is, as
in the reference, the mean over the epoch's erased batches as each step saw them
(`stop_on="epoch_batches"`), or (`stop_on="eval"`) all of D_e re-evaluated in evaluation mode
after the epoch, on device in the same dispatch (`evaluate`).
"""

from __future__ import annotations

from typing import Any, Callable

import jax

from scu_jax.data.batching import paired_epoch_indices
from scu_jax.engine import Phase
from scu_jax.methods.base import Batch, Method

UNLEARNING = "unlearning"


def gather_pair(data: Batch, indices: tuple[jax.Array, jax.Array]) -> Batch:
    """One step's erased and remaining batch from all of D_e and D_r."""
    erased, remain = indices
    return Batch(data.erased_images[erased], data.erased_targets[erased],
                 data.remain_images[remain], data.remain_labels[remain])


def unlearning_phase(method: Method, *, seed: int, num_erased: int, num_remain: int,
                     batch_size: int, max_epochs: int, drop_partial: bool = False,
                     early_stop: bool = True, batch_stop: float = 0.0, epoch_stop: float = 0.0,
                     stop_on: str = "epoch_batches",
                     evaluate: Callable[[Any, Any], jax.Array] | None = None) -> Phase:
    """The engine phase of an erased-data method (see the module docstring).

    Args:
      method: the method; its `step` takes a `Batch`.
      seed: seeds each epoch's batches with the epoch number.
      num_erased, num_remain: |D_e| and |D_r|.
      batch_size: B, for both batches of a step.
      max_epochs: the most epochs the phase runs.
      drop_partial: ⌊|D_e|/B⌋ steps per epoch (the reference's CIFAR loops).
      early_stop, batch_stop, epoch_stop, stop_on: the stopping rules.
      evaluate: `evaluate(state, eval_data)` → the backdoor accuracy on all of D_e, read after
        each epoch as `erased_backdoor`; needed by `stop_on="eval"`, and made only then.
    """
    def batches(epoch: int):
        return paired_epoch_indices(seed, epoch, num_erased, num_remain, batch_size,
                                    drop_partial=drop_partial)

    stops_on_eval = early_stop and epoch_stop > 0 and stop_on == "eval"
    if stops_on_eval and evaluate is None:
        raise ValueError("stop_on='eval' needs an evaluate function")
    watched = "erased_backdoor" if stop_on == "eval" else "backdoor"

    def stop(summary: dict[str, Any]) -> bool:
        value = summary.get(watched)
        return value is not None and value < epoch_stop

    return Phase(
        UNLEARNING, method.step, range(max_epochs), batches, gather_pair,
        batch_stop=(lambda metrics: metrics.backdoor < batch_stop) if early_stop else None,
        evaluate=evaluate if stops_on_eval else None, evaluation_name="erased_backdoor",
        stop=stop if early_stop and epoch_stop > 0 else None)
