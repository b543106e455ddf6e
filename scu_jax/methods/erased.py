"""The protocol every erased-data method runs under: paired batches and the stopping rules.

An epoch is ⌈|D_e|/B⌉ steps (⌊|D_e|/B⌋ with `drop_partial`); each takes one erased batch and one
remaining batch of the same size (D_e is reshuffled and, for the last batch, wrapped around; the
D_r batches are redrawn every epoch). Early stop: once a batch's backdoor accuracy falls below
`batch_stop`, the rest of that epoch's steps are skipped; the run stops once the epoch's backdoor
accuracy is below `epoch_stop` (0 switches that rule off). "The epoch's backdoor accuracy" is, as
in the reference, the mean over the epoch's erased batches as each step saw them
(`stop_on="epoch_batches"`), or (`stop_on="eval"`) all of D_e re-evaluated in evaluation mode
after the epoch, on device in the same dispatch (`evaluate`).

A forget set without a backdoor has no target label to watch: its rule (`rule="parity"`) stops
once `evaluate` (the ratio of D_e's mean per-image reconstruction error to that of held-out images
of D_e's classes, read after each epoch) reaches `1 − parity_tolerance`: the system then
reconstructs the erased images no better than images it never saw, which is what the retrained
system does (README "Forget requests" has the measurement); there is no in-epoch stop. A whole
class has no held-out images the system never learnt from (its test images are of a class it
knows), so its rule (`rule="class"`) stops once the receiver recognises the class on x̂(D_e)
(`evaluate`: the fraction labelled with the class, read after each epoch) below `class_stop`,
chance for 10 classes by default: the class is no longer transmitted, as after retraining.
"""

from __future__ import annotations

from typing import Any, Callable

import jax

from scu_jax.data.batching import paired_epoch_indices
from scu_jax.engine import Phase
from scu_jax.methods.base import Batch, Method

UNLEARNING = "unlearning"
STOP_RULES = ("backdoor", "parity", "class")


def gather_pair(data: Batch, indices: tuple[jax.Array, jax.Array]) -> Batch:
    """One step's erased and remaining batch from all of D_e and D_r."""
    erased, remain = indices
    return Batch(data.erased_images[erased], data.erased_targets[erased],
                 data.remain_images[remain], data.remain_labels[remain])


def unlearning_phase(method: Method, *, seed: int, num_erased: int, num_remain: int,
                     batch_size: int, max_epochs: int, drop_partial: bool = False,
                     early_stop: bool = True, batch_stop: float = 0.0, epoch_stop: float = 0.0,
                     stop_on: str = "epoch_batches",
                     evaluate: Callable[[Any, Any], jax.Array] | None = None,
                     rule: str = "backdoor", parity_tolerance: float = 0.02,
                     class_stop: float = 0.1) -> Phase:
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
        each epoch as `erased_backdoor`; needed by `stop_on="eval"`, and made only then. Under
        `rule="parity"`, the erased-to-held-out error ratio, read as `erased_to_heldout`; under
        `rule="class"`, the class's recognition rate on x̂(D_e), read as `erased_accuracy`.
      rule: "backdoor" (the rules above), "parity" or "class" (the module docstring;
        `batch_stop`, `epoch_stop` and `stop_on` unused).
      parity_tolerance: the parity rule stops at a ratio of `1 − parity_tolerance`.
      class_stop: the class rule stops below this recognition rate.
    """
    def batches(epoch: int):
        return paired_epoch_indices(seed, epoch, num_erased, num_remain, batch_size,
                                    drop_partial=drop_partial)

    if rule in ("parity", "class"):
        if early_stop and evaluate is None:
            raise ValueError(f"the {rule} rule needs an evaluate function")
        if rule == "parity":
            name, threshold = "erased_to_heldout", 1.0 - parity_tolerance

            def reached(summary):
                return summary[name] >= threshold
        else:
            name = "erased_accuracy"

            def reached(summary):
                return summary[name] < class_stop
        return Phase(UNLEARNING, method.step, range(max_epochs), batches, gather_pair,
                     evaluate=evaluate if early_stop else None, evaluation_name=name,
                     stop=reached if early_stop else None)
    if rule != "backdoor":
        raise ValueError(f"rule must be one of {STOP_RULES}, got {rule!r}")

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
