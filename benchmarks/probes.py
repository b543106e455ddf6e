"""How long the probes of `scu_jax.probes` take per system, compilation apart.

```
python -m benchmarks.probes --probes_workdir=runs/probes_demo --probes_seeds=0,1,2 \
    [--probes_systems=train,retrain,scu,finetune] [--probes_repeats=3]
```
Reads a `scu-pipeline` workdir (WORKDIR/seed_S/train and WORKDIR/seed_S/<method>), and for
every system runs the whole probe suite of the config stored with the trained system (its
`evaluation.probe_snrs`; CKA against that seed's original and retraining) once to compile, then
`--probes_repeats` times, timed; prints and writes WORKDIR/probe_times.md: per system the best
time, and the first call's (with compilation).
"""

from __future__ import annotations

import pathlib
import sys
import time

from absl import app, flags

_WORKDIR = flags.DEFINE_string("probes_workdir", "runs/probes_demo", "A scu-pipeline workdir.")
_SEEDS = flags.DEFINE_list("probes_seeds", ["0"], "Its seeds to read.")
_SYSTEMS = flags.DEFINE_list("probes_systems", ["train", "retrain", "scu", "finetune"],
                             "Systems of each seed (train: the original).")
_REPEATS = flags.DEFINE_integer("probes_repeats", 3, "Timed runs per system, after the first.")


def time_probes(root: pathlib.Path, seeds, systems, repeats: int) -> list[dict]:
    """One row per (seed, system): `first` (seconds with compilation) and `best` of `repeats`."""
    from scu_jax.config import config_from_json
    from scu_jax.probes import probe_system
    from scu_jax.runs.build import build_for, protocol_of
    from scu_jax.runs.checkpointing import Checkpoints
    from scu_jax.runs.saved import load_variables

    rows = []
    for seed in seeds:
        seed_dir = root / f"seed_{seed}"
        config = config_from_json(Checkpoints(seed_dir / "train", read_only=True)
                                  .saved_config()["config"])
        split, system, shape = build_for(config)
        protocol = protocol_of(config)
        loaded = {name: load_variables(str(seed_dir / name), system, config, shape)[:2]
                  for name in dict.fromkeys(["train", "retrain", *systems])}
        references = {"original": loaded["train"], "retrain": loaded["retrain"]}
        for name in systems:
            times = []
            for _ in range(repeats + 1):
                started = time.perf_counter()
                probe_system(system, *loaded[name], split, protocol,
                             snrs=tuple(config.evaluation.probe_snrs),
                             attack_batch=config.train.batch_size, references=references)
                times.append(time.perf_counter() - started)
            rows.append({"seed": seed, "system": name, "first": times[0], "best": min(times[1:])})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| seed | system | probe suite s (best) | first call s (with compilation) |",
             "|---|---|---|---|"]
    lines += [f"| {r['seed']} | {r['system']} | {r['best']:.2f} | {r['first']:.2f} |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv) -> None:
    del argv
    if _REPEATS.value < 1:
        sys.exit("benchmarks.probes: --probes_repeats must be 1 or more")
    root = pathlib.Path(_WORKDIR.value)
    missing = [str(root / f"seed_{s}" / n) for s in _SEEDS.value
               for n in ("train", "retrain", *_SYSTEMS.value) if not (root / f"seed_{s}" / n).is_dir()]
    if missing:
        sys.exit(f"benchmarks.probes: no system in {missing[0]}: run scu-pipeline there first")
    text = table(time_probes(root, [int(s) for s in _SEEDS.value], _SYSTEMS.value,
                             _REPEATS.value))
    (root / "probe_times.md").write_text(text)
    print(text)


if __name__ == "__main__":
    app.run(main)
