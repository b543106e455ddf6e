"""The protocol every erased-data method runs under: paired batches and the stopping rules.

An epoch is ⌈|D_e|/B⌉ steps (⌊|D_e|/B⌋ with `drop_partial`); each takes one erased batch and one
remaining batch of the same size (D_e is reshuffled and, for the last batch, wrapped around; the
D_r batches are redrawn every epoch). Early stop: once a batch's backdoor accuracy falls below
`batch_stop`, the rest of that epoch's steps are skipped; the run stops once the epoch's backdoor
accuracy is below `epoch_stop` (0 switches that rule off). "The epoch's backdoor accuracy" is, as
in the reference, the mean over the epoch's erased batches as each step saw them
(`stop_on="epoch_batches"`), or (`stop_on="eval"`) all of D_e re-evaluated in evaluation mode
after the epoch, on device in the same dispatch (`evaluate`).

A forget set without a backdoor has no target label to watch: its rule (`rule="gap"`) stops once
`evaluate` (`stopping.gap_closed`: the fraction of the original system's generalisation gap by
which D_e's reconstruction error has risen, read after each epoch) reaches `1 − gap_tolerance`:
the system then reconstructs the erased images as it would images it never saw, which is what
the retrained system does. Comparing D_e's error with held-out images' directly does not work:
on the embedded MNIST (docs/results.md "Forget requests against retraining", seed 0) a random 80-image D_e
is 5 % harder than the test images for the original system and 12 % for the retrained one, so the
images' difficulty swamps the 6 % that training on them gained; relative to the original's error
on the same images it cancels, and retrained systems then read 0.72–1.24 of the gap on six random
sets, hence the default 0.75. There is no in-epoch stop. A whole class has no held-out images the
system never learnt from (its test images are of a class it knows), so its rule (`rule="class"`)
stops once the receiver recognises the class on x̂(D_e) (`evaluate`: the fraction labelled with
the class, read after each epoch) below `class_stop`, chance for 10 classes by default: the class
is no longer transmitted. That asks more than retraining gives on MNIST, whose codec still
transmits a never-seen "1" recognisably (docs/results.md).
"""

from __future__ import annotations

from typing import Any, Callable

import jax

from scu_jax.data.batching import paired_epoch_indices
from scu_jax.engine import Phase
from scu_jax.methods.base import Batch, Method

UNLEARNING = "unlearning"
STOP_RULES = ("backdoor", "gap", "class")


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
                     rule: str = "backdoor", gap_tolerance: float = 0.25,
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
        `rule="gap"`, the fraction of the generalisation gap closed, read as `gap_closed`; under
        `rule="class"`, the class's recognition rate on x̂(D_e), read as `erased_accuracy`.
      rule: "backdoor" (the rules above), "gap" or "class" (the module docstring;
        `batch_stop`, `epoch_stop` and `stop_on` unused).
      gap_tolerance: the gap rule stops once `1 − gap_tolerance` of the gap is closed.
      class_stop: the class rule stops below this recognition rate.

    Returns:
      A `Phase` for `run` (one run) or `run_many` (many as one program).

    Example:
      >>> method = scu_jax.vbu(system, objective, learning_rate=1e-4, grad_clip=5.0, beta_u=0.1)
      >>> phase = scu_jax.unlearning_phase(method, seed=0, num_erased=32, num_remain=64,
      ...                                  batch_size=16, max_epochs=3)
      >>> phase.name, list(phase.epochs), [indices.shape for indices in phase.batches(0)]
      ('unlearning', [0, 1, 2], [(2, 16), (2, 16)])
    """
    def batches(epoch: int):
        return paired_epoch_indices(seed, epoch, num_erased, num_remain, batch_size,
                                    drop_partial=drop_partial)

    if rule in ("gap", "class"):
        if early_stop and evaluate is None:
            raise ValueError(f"the {rule} rule needs an evaluate function")
        if rule == "gap":
            name, threshold = "gap_closed", 1.0 - gap_tolerance

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
