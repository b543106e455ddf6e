"""Where the MNIST SCU step's time goes: the step against its parts, side by side in one process.

```
python -m benchmarks.profile_step [--batch=16] [--steps=600] [--windows=3] [--repeats=3]
```
Each row is a `lax.scan` of `--steps` steps, timed as `benchmarks.run` times every rate (best of
`--windows` windows, `--repeats` repeats; the table gives the range over repeats), on the same
synthetic batches:

- **SCU step**: the step the engine runs (loss, gradient, global-norm clip, Adam);
- **SCU, clip + SGD**: the same loss and gradient, clip, and a plain SGD update;
- **SCU, SGD**: the same loss and gradient and a plain SGD update;
- **clip + Adam alone**: the optimiser's update of the codec's parameters on a fixed gradient
  (no loss, no gradient), what the first row has and the third has not;
- **floor**: the six dense layers' forward and backward (`benchmarks.run`'s floor).

Differences between rows are the parts' costs (a profile by subtraction: XLA fuses what it
can across a step, so the parts alone need not add up exactly).
"""

from __future__ import annotations

import sys
from typing import Any
from unittest import mock

from absl import app, flags

from benchmarks import run

# --steps, --windows and --repeats are `benchmarks.run`'s flags (defined when it is imported).
_BATCH = flags.DEFINE_integer("batch", 16, "Batch size (the erased and the remaining batch each).")


def measure(batch_size: int, repeats: int, steps: int, windows: int) -> list[dict[str, Any]]:
    """One row per part: its name and its steps/s, one value per repeat."""
    import jax
    import jax.numpy as jnp
    import optax

    from scu_jax.methods import base
    from scu_jax.methods.base import make_optimizer, trainable_params

    config, system, train_state, images, labels = run._setup("mnist", batch_size)
    rate = config.unlearning.learning_rate
    clip = config.unlearning.grad_clip
    optimizers = {
        "SCU step (clip + Adam)": None,
        "SCU, clip + SGD": optax.chain(optax.clip_by_global_norm(clip), optax.sgd(rate)),
        "SCU, SGD": optax.sgd(rate),
    }
    rows = []
    for name, optimizer in optimizers.items():
        # The method's own step, its optimiser swapped where it is built (`gradient_method`).
        patch = (mock.patch.object(base, "make_optimizer", lambda *_: optimizer)
                 if optimizer is not None else mock.patch.object(base, "make_optimizer",
                                                                  make_optimizer))
        with patch:
            one, state = run._step_function("scu", config, system, train_state, images, labels)
            window, _ = run._scan_window(one, state, steps, 1)
        rows.append({"part": name, "steps_per_s": run.rates(window, steps, windows, repeats)})

    tx = make_optimizer(rate, clip)
    params = trainable_params(train_state.params, False)
    gradient = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), params)

    def update(carry, _):
        params, opt_state = carry
        updates, opt_state = tx.update(gradient, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    def adam_one(carry, i):
        del i
        return update(carry, None)

    window, _ = run._scan_window(adam_one, (params, tx.init(params)), steps, 1)
    rows.append({"part": "clip + Adam alone (fixed gradient)",
                 "steps_per_s": run.rates(window, steps, windows, repeats)})
    floor = run.floor_throughput("mnist", batch_size, repeats, steps, windows, "scu")
    rows.append({"part": f"floor ({floor['floor']})", "steps_per_s": floor["floor_steps_per_s"]})
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    step = rows[0]["steps_per_s"]
    lines = ["| part | steps/s | µs a step | of the SCU step's time |", "|---|---|---|---|"]
    for row in rows:
        rates = row["steps_per_s"]
        micros = sorted(1e6 / r for r in rates)
        shares = sorted(min(step) / r for r in rates) if row is not rows[0] else None
        lines.append(f"| {row['part']} | {run._fmt(rates)} | {micros[0]:.0f}–{micros[-1]:.0f} | "
                     + (f"{100 * shares[0]:.0f}–{100 * shares[-1]:.0f} %" if shares else "100 %")
                     + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        sys.exit(f"benchmarks.profile_step: error: unexpected arguments: {' '.join(argv[1:])}")
    steps, windows, repeats = run._STEPS.value, run._WINDOWS.value, run._REPEATS.value
    if min(_BATCH.value, windows, repeats) < 1 or steps < 2:
        sys.exit("benchmarks.profile_step: error: --batch, --windows, --repeats >= 1 and "
                 "--steps >= 2")
    print(table(measure(_BATCH.value, repeats, steps, windows)))


if __name__ == "__main__":
    app.run(main)
