"""`python -m benchmarks.forgetting`: forgetting without a backdoor, every method against
retraining on the same D_r, on the embedded MNIST.

  python -m benchmarks.forgetting --workdir=runs/forgetting --seeds=0,1,2 \
      [--settings=class1,random0.02,random0.10,worst0.01] [--output=runs/forgetting.md] \
      [--forget_relearning [--forget_attack_steps=0,10,25,50,100]]

For each seed it trains one system on the clean training set (`forget.kind="random"`: one
system serves every setting), then for each setting (a whole class, or a random fraction drawn
with the seed) retrains on D_r and runs every method from the trained system, the same binaries'
code (`train_and_evaluate`, `unlearn_and_evaluate`) and the default config, with MI estimation
off (evaluation, not forgetting). Every system, the original included, is read under the same
protocol with the retrained system as the membership attack's reference. Rerunning resumes:
finished runs are reused. Prints (and writes to --output) one table per setting, seed means ±
standard deviations. With `--forget_relearning`, every system is then attacked
(`runs/relearn.relearning_curve`: the codec's training step on 10 % of D_e) and a second table
per setting gives D_e's reconstruction error (SSE per image, on the 90 % the attack never saw)
after each number of steps, against retraining's under the same attack (the curves also go to
WORKDIR/relearning.json, which a rerun resumes). A `worstF` setting is the worst-case set of F of
the training set for the seed's system (`scu_jax.worst_case`, found once and cached in
WORKDIR/seedS); beside a `randomF` of the same F, a last table compares every method's gap to
retraining on the two (`--set=evaluation.probes=true` adds the probes to every row). A
`sisaS` method is exact deletion from a sharded system of S shards and 4 slices, trained once a
seed on the clean set (`runs/sharded.py`; docs/exact-unlearning.md).
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

import numpy as np
from absl import app, flags

import jax

from benchmarks.variants import apply_variant, variant_fields
from scu_jax.errors import NonFiniteError
from scu_jax.evaluation import system_for_evaluation
from scu_jax.runs.build import protocol_of
from scu_jax.stopping import gap_closed, gap_stop_data, stopping_key
from scu_jax.runs.build import build_for
from scu_jax.runs.evaluate import evaluate
from scu_jax.runs.files import write_json_atomic, write_text_atomic
from scu_jax.runs.logs import quiet_library_logs
from scu_jax.runs.saved import load_variables
from scu_jax.runs.train import train_and_evaluate
from scu_jax.runs.unlearn import unlearn_and_evaluate

from benchmarks.forget_common import (base_config, check_setting, relearning_markdown,
                                      relearning_rows, setting_config, worst_case_figure,
                                      worst_case_lines, worst_case_of)

_WORKDIR = flags.DEFINE_string("workdir", "runs/forgetting", "Where every run's workdir goes.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (each trains its own system).")
_SETTINGS = flags.DEFINE_list("settings", ["class1", "random0.02", "random0.10"],
                              "classN (every image of class N), randomF (a random fraction F) or "
                              "worstF (the worst-case set of F for the seed's system).")
_METHODS = flags.DEFINE_list("methods", ["scu", "scu_no_cc", "vbu", "hbu", "finetune", "ssd",
                                         "l1_sparse", "salun"],
                             "Methods, or variants of one (benchmarks.variants: scu_e40, "
                             "salun_sam0.01), run against retraining.")
_OUTPUT = flags.DEFINE_string("output", "runs/forgetting.md", "The markdown tables.")
# Names of their own: the benchmarks' modules share absl's flags when imported together.
_RELEARN = flags.DEFINE_boolean("forget_relearning", False, "Also run the relearning attack on "
                                "every system and tabulate how fast D_e's error returns.")
_RELEARN_STEPS = flags.DEFINE_list("forget_attack_steps", ["0", "10", "25", "50", "100"],
                                   "Attack steps to read D_e's error after.")
_CONFIG_ARGS = flags.DEFINE_list("set", [], "Config overrides FIELD=VALUE (JSON values), e.g. "
                                 "train.epochs=20 for a quick look.")

# (column, result key, digits); the Δ columns subtract retraining's value.
COLUMNS = (("MSE D_e", "mse_erased", 2), ("acc D_e", "accuracy_erased", 3),
           ("MSE D_r", "mse_remain", 2), ("acc D_r", "accuracy_remain", 3),
           ("MSE test", "mse_test", 2), ("acc test", "accuracy_test", 3),
           ("MIA AUC (calibrated)", "mia_auc_calibrated", 3), ("MIA AUC (loss)", "mia_auc", 3),
           ("gap closed", "gap_closed", 2))
DELTAS = ("mse_erased", "accuracy_erased", "accuracy_test")


def original_row(config, train_dir: pathlib.Path, retrain_dir: pathlib.Path) -> dict[str, Any]:
    """The trained system before any unlearning, read like every other row."""
    split, system, image_shape = build_for(config)
    params, batch_stats, _ = load_variables(train_dir, system, config, image_shape)
    results = evaluate(system, params, batch_stats, split, config, image_shape,
                       reference_workdir=str(retrain_dir))
    results.update(method="original", unlearn_seconds=0.0, stopped_by="-", epochs=0)
    return results


def gap_closed_of(config, train_dir: pathlib.Path, workdir: pathlib.Path) -> float:
    """The gap rule's reading of the system in `workdir` (the stopping key and sets the rule
    reads): how far retraining, or the original, stands on the rule's scale."""
    split, system, image_shape = build_for(config)
    protocol = protocol_of(config)
    original = load_variables(train_dir, system, config, image_shape)[:2]
    data = gap_stop_data(system, *original, split, protocol, stopping_key(protocol))
    params = load_variables(workdir, system, config, image_shape)[:2]
    reading = jax.jit(gap_closed, static_argnums=0)
    return float(reading(system_for_evaluation(system, protocol), *params, data))


def sisa_count(method: str) -> int | None:
    """S of a `sisaS` method (exact deletion from S shards, `runs/sharded.py`), else None."""
    if not method.startswith("sisa"):
        return None
    if not method[4:].isdigit() or int(method[4:]) < 2:
        raise ValueError(f"{method!r}: sisaS names S ≥ 2 shards, e.g. sisa8")
    return int(method[4:])


def sisa_row(base, config, seed: int, root: pathlib.Path, where: pathlib.Path,
             method: str) -> dict[str, Any]:
    """Exact deletion of the setting's D_e from the seed's sharded system (S shards, 4 slices;
    trained once a seed on the clean set, a copy a setting), read like every row: by the
    receivers of the system before the deletion. Cached in WHERE/METHOD.json."""
    import shutil

    from scu_jax.runs import sharded, sharded_requests
    from scu_jax.runs.build import load_split

    cached = where / f"{method}.json"
    if cached.exists():
        return json.loads(cached.read_text())
    system_config = base.copy_and_resolve_references()
    system_config.seed = seed
    system_config.shards.count, system_config.shards.slices = sisa_count(method), 4
    system_dir = root / f"seed{seed}" / method
    sharded.train_sharded(system_config, str(system_dir))
    copy = where / method
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(system_dir, copy)
    split = load_split(config)
    record = sharded_requests.delete_from_sharded(str(copy), split.erased_indices,
                                                  request_id=where.name)
    job = sharded.setup(system_config)
    results = sharded.evaluate_sharded(job, copy, sharded.read_manifest(copy)["shards"], split,
                                       original=system_dir)
    results.update(method=method, unlearn_seconds=record["seconds"], stopped_by="exact",
                   epochs=0, shards_retrained=len(record["shards_retrained"]),
                   sample_passes=record["sample_passes"])
    write_json_atomic(cached, results)
    return results


def run_seed(base, seed: int, root: pathlib.Path, settings, methods) -> list[dict[str, Any]]:
    train_dir = root / f"seed{seed}" / "train"
    train_config = base.copy_and_resolve_references()
    train_config.seed = seed
    train_and_evaluate(train_config, str(train_dir))
    rows = []
    for setting in settings:
        config = setting_config(base, setting, seed, root)
        extra = ({"worst_case_seconds": worst_case_of(root, seed, setting)["search_seconds"]}
                 if setting.startswith("worst") else {})
        where = root / f"seed{seed}" / setting
        retrain_dir = where / "retrain"
        config.unlearning.method = "retrain"
        results = [unlearn_and_evaluate(config, str(train_dir), str(retrain_dir),
                                        reference_workdir=str(retrain_dir))]
        results.append(original_row(config, train_dir, retrain_dir))
        for method in methods:  # a method, or a variant of one (`benchmarks.variants`)
            if sisa_count(method):
                results.append(sisa_row(base, config, seed, root, where, method))
                continue
            try:
                results.append({**unlearn_and_evaluate(
                    apply_variant(config, method), str(train_dir), str(where / method),
                    reference_workdir=str(retrain_dir)), "method": method})
            except NonFiniteError as error:
                # A diverging baseline is a result of the comparison (a row), not its end.
                results.append({"method": method, "status": "non-finite", "error": str(error),
                                "num_erased": results[0]["num_erased"]})
        for result in results:
            row = {k: v for k, v in result.items() if k != "history"}
            if config.forget.kind != "class" and result.get("status") != "non-finite":
                if result["method"] == "retrain":  # the original reads 0 by construction
                    row["gap_closed"] = gap_closed_of(config, train_dir, retrain_dir)
                elif result.get("history") and "gap_closed" in result["history"][-1]:
                    row["gap_closed"] = result["history"][-1]["gap_closed"]
            rows.append({"seed": seed, "setting": setting, **extra, **row})
    return rows


def markdown(rows: list[dict[str, Any]], settings, methods) -> str:
    out = []
    order = ["original", *methods, "retrain"]
    for setting in settings:
        chosen = [r for r in rows if r["setting"] == setting]
        if not chosen:
            continue
        sizes = sorted({r["num_erased"] for r in chosen})
        seeds = sorted({r["seed"] for r in chosen})
        out.append(f"\n**{setting}** (|D_e| = {', '.join(map(str, sizes))}; seeds "
                   f"{', '.join(map(str, seeds))}; Δ: minus retraining, same seed)\n")
        header = ["method"]
        for title, key, _ in COLUMNS:
            header.append(title)
            if key in DELTAS:
                header.append("Δ")
        header += ["seconds", "stopped by"]
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "---|" * len(header))
        retrain = {r["seed"]: r for r in chosen if r["method"] == "retrain"}
        for method in order:
            everything = [r for r in chosen if r["method"] == method]
            mine = [r for r in everything if r.get("status") != "non-finite"]
            diverged = len(everything) - len(mine)
            if diverged:
                out_of = f"{diverged} of {len(everything)} diverged"
                if not mine:
                    out.append(f"| {method} ({out_of}) |" + " – |" * (len(header) - 1))
                    continue
                method = f"{method} ({out_of})"
            if not mine:
                continue
            cells = [method]
            for _, key, digits in COLUMNS:
                values = np.array([r.get(key, np.nan) for r in mine], float)
                cells.append("–" if np.isnan(values).all() else
                             f"{values.mean():.{digits}f} ± {values.std():.{digits}f}")
                if key in DELTAS:
                    delta = np.array([r[key] - retrain[r["seed"]][key] for r in mine], float)
                    cells.append(f"{delta.mean():+.{digits}f}")
            seconds = np.array([r["unlearn_seconds"] for r in mine], float)
            cells.append(f"{seconds.mean():.2f}")
            stops = sorted({str(r.get("stopped_by")) for r in mine})
            epochs = [int(r.get("epochs", 0)) for r in mine]
            cells.append(f"{'/'.join(stops)} ({min(epochs)}–{max(epochs)} ep.)"
                         if method not in ("original",) else "–")
            out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main(argv) -> None:
    del argv
    try:
        steps = [int(k) for k in _RELEARN_STEPS.value]
    except ValueError:
        sys.exit("benchmarks.forgetting: error: --forget_attack_steps must be integers")
    if not steps or steps[0] < 0 or any(b <= a for a, b in zip(steps, steps[1:])):
        sys.exit("benchmarks.forgetting: error: --forget_attack_steps must increase from >= 0")
    try:
        for method in _METHODS.value:
            if not sisa_count(method):
                variant_fields(method)
    except ValueError as error:
        sys.exit(f"benchmarks.forgetting: error: --methods: {error}")
    try:
        for setting in _SETTINGS.value:
            check_setting(setting)
    except ValueError as error:
        sys.exit(f"benchmarks.forgetting: error: {error}")
    quiet_library_logs()
    base = base_config(_CONFIG_ARGS.value)
    root = pathlib.Path(_WORKDIR.value)
    rows = []
    for seed in map(int, _SEEDS.value):
        rows += run_seed(base, seed, root, _SETTINGS.value, _METHODS.value)
        write_json_atomic(root / "rows.json", rows)
    table = markdown(rows, _SETTINGS.value, _METHODS.value)
    table += "\n".join(worst_case_lines(rows, _SETTINGS.value, _METHODS.value))
    figure = pathlib.Path(_OUTPUT.value).with_suffix(".png")
    if worst_case_figure(rows, _SETTINGS.value, _METHODS.value, figure):
        table += f"\n![worst case against random]({figure.name})\n"
    if _RELEARN.value:
        # Resumes: curves of these steps already in relearning.json are kept, not recomputed,
        # and the file only ever grows (one of other steps is left alone: a new file is named).
        path = root / "relearning.json"
        curves = json.loads(path.read_text()) if path.exists() else []
        if any(c.get("steps") != steps for c in curves):
            path = root / f"relearning_{'_'.join(map(str, steps))}.json"
            curves = json.loads(path.read_text()) if path.exists() else []
        done = {(c["seed"], c["setting"], c["method"]) for c in curves}
        for seed in map(int, _SEEDS.value):
            curves += relearning_rows(base, seed, root, _SETTINGS.value,
                                      [m for m in _METHODS.value if not sisa_count(m)], steps,
                                      done)
            write_json_atomic(path, curves)
        table += relearning_markdown(curves, _SETTINGS.value, _METHODS.value)
    command = "python -m benchmarks.forgetting " + " ".join(sys.argv[1:])
    write_text_atomic(_OUTPUT.value, f"<!-- {command} -->\n{table}")
    print(table)


if __name__ == "__main__":
    app.run(main)
