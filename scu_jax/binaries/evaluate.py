"""`scu-evaluate`: evaluates any saved system (trained or unlearned) and prints its metrics.

Usage:
  scu-evaluate --workdir=DIR [--reference_workdir=RETRAINED] [--output=FILE]
               [--probes --original_workdir=TRAINED]

The config is the one stored with the checkpoint; --workdir is only read. --output=FILE also
writes the metrics as JSON (atomically). --probes adds the probes of what still crosses the
channel (`probe_*`, docs/is-it-gone.md), with CKA against the original and retrained systems
given.

Example:
  scu-evaluate --workdir=runs/smoke/scu --output=runs/smoke/scu_metrics.json
  scu-evaluate --workdir=runs/demo/seed_0/scu --probes --original_workdir=runs/demo/seed_0/train \
    --reference_workdir=runs/demo/seed_0/retrain
"""

from __future__ import annotations

from absl import flags

from scu_jax.binaries import common
from scu_jax.runs.evaluate import evaluate_workdir

PROGRAM = "scu-evaluate"
_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir holding a saved system.")
_REFERENCE = flags.DEFINE_string("reference_workdir", None,
                                 "Optional: a `retrain` result to measure the distance to.")
_OUTPUT = flags.DEFINE_string("output", None, "Optional JSON file for the metrics.")
_PROBES = flags.DEFINE_boolean("probes", False, "Also probe what crosses the channel (z and y at "
                               "the config's evaluation.probe_snrs).")
_ORIGINAL = flags.DEFINE_string("original_workdir", None,
                                "Optional, with --probes: the trained system an unlearned one "
                                "came from (CKA against it).")
flags.mark_flags_as_required(["workdir"])


def _main() -> None:
    def body() -> None:
        if _ORIGINAL.value and not _PROBES.value:
            raise ValueError("--original_workdir is read by the probes only: add --probes")
        results = evaluate_workdir(_WORKDIR.value, reference_workdir=_REFERENCE.value,
                                   output=_OUTPUT.value, probes=_PROBES.value,
                                   original_workdir=_ORIGINAL.value)
        width = max(len(name) for name in results)
        for name, value in sorted(results.items()):
            if isinstance(value, float):
                print(f"{name:<{width}}  {value:.4f}")
            elif not isinstance(value, (list, dict)):
                print(f"{name:<{width}}  {value}")

    common.run_guarded(PROGRAM, body)


run = common.entry(PROGRAM, _main, __doc__)


if __name__ == "__main__":
    run()
