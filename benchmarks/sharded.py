"""`python -m benchmarks.sharded`: exact unlearning by sharding (`scu_jax.sharding`) against one
system, SCU and retraining, on the main job (the default config: embedded MNIST, backdoor
protocol, EDR 6 %).

  python -m benchmarks.sharded --sharded_workdir=runs/sharded --sharded_counts=2,4,8 \
      [--sharded_slices=4] [--sharded_seeds=0,1,2] [--sharded_requests=10]

Per seed, in WORKDIR/seedS (a rerun reuses every finished system): the single system
(`train_and_evaluate`), its SCU unlearning and its retraining on D_r (`unlearn_and_evaluate`), and
for each S the sharded system of S shards and R slices (`train_sharded`), read with both
aggregations. Then, on copies of each sharded system: `--sharded_requests` requests of one
random training sample each (not of D_e), one after the other (`delete_from_sharded`: time
compilation apart, shards and sample passes retrained; p50 and p95 over requests and seeds), and
the exact deletion of all of D_e, evaluated as the protocol reads every system. Writes
WORKDIR/sharded.md and sharded.json and prints the tables.
"""

from __future__ import annotations

import json
import pathlib
import platform
import shutil
import sys
import time

import numpy as np
from absl import app, flags

_WORKDIR = flags.DEFINE_string("sharded_workdir", "runs/sharded", "Where the systems go.")
_COUNTS = flags.DEFINE_list("sharded_counts", ["2", "4", "8"], "Shard counts S (each ≥ 2).")
_SLICES = flags.DEFINE_integer("sharded_slices", 4, "Slices R of each shard.")
_SEEDS = flags.DEFINE_list("sharded_seeds", ["0"], "Seeds.")
_REQUESTS = flags.DEFINE_integer("sharded_requests", 10, "Single-sample requests in sequence.")
_FROM_JSON = flags.DEFINE_boolean("sharded_from_json", False, "Write the tables and figure again "
                                  "from WORKDIR/sharded.json (a finished run's numbers).")
_SMOKE = flags.DEFINE_boolean("sharded_smoke", False, "The smoke variant (a tiny job: to try the "
                              "command, not to measure).")

PROGRAM = "benchmarks.sharded"
ATTACK_STEPS = (0, 50, 100, 200, 500)
QUALITY = (("accuracy_test", "acc test %", 100), ("accuracy_clean", "acc D_clean %", 100),
           ("mse_clean", "MSE D_clean", 1), ("mse_test", "MSE test", 1),
           ("psnr_test", "PSNR test dB", 1), ("backdoor_accuracy", "backdoor %", 100))


def check_arguments(counts, slices: int, seeds, requests: int) -> tuple[list[int], list[int]]:
    """Raises `ValueError` (one line) on a bad flag; returns the counts and seeds as integers."""
    try:
        counts, seeds = [int(c) for c in counts], [int(s) for s in seeds]
    except ValueError:
        raise ValueError("--sharded_counts and --sharded_seeds are comma-separated "
                         "integers") from None
    if not counts or min(counts) < 2:
        raise ValueError(f"--sharded_counts: each S must be at least 2, got {counts}")
    if slices < 1:
        raise ValueError(f"--sharded_slices must be at least 1, got {slices}")
    if requests < 1:
        raise ValueError(f"--sharded_requests must be at least 1, got {requests}")
    return counts, seeds


def _config(seed: int, count: int = 1, slices: int = 1, method: str = "scu",
            smoke: bool = False):
    from scu_jax.config import default_config
    from scu_jax.presets import apply_variant

    config = apply_variant(default_config(), "smoke" if smoke else None)
    config.seed = seed
    config.evaluation.mi_steps = 0
    config.unlearning.method = method
    config.shards.count, config.shards.slices = count, slices
    return config


def _copy(source: pathlib.Path, target: pathlib.Path) -> pathlib.Path:
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
    return target


def membership_auc(job, workdir: pathlib.Path) -> float:
    """The loss attack of the evaluation (`evaluation.membership_scores`: −SSE, D_e against
    triggered test images no system saw, one draw) on the sharded system in `workdir`."""
    import functools

    import jax

    from scu_jax.evaluation import membership_sets, roc_auc
    from scu_jax.passes import per_sample_metrics, system_for_evaluation
    from scu_jax.runs import sharded
    from scu_jax.runs.build import protocol_of
    from scu_jax.sharding import sharded_metrics

    protocol = protocol_of(job.config)
    params, batch_stats = sharded.load_shards(job, workdir, sharded.read_manifest(workdir)["shards"])
    forward = functools.partial(sharded_metrics, aggregation=job.config.shards.aggregation)
    key = jax.random.fold_in(jax.random.PRNGKey(protocol.seed), 10)
    scores = [-per_sample_metrics(system_for_evaluation(job.system, protocol), params, batch_stats,
                                  images, batch_size=protocol.batch_size,
                                  key=jax.random.fold_in(key, index), forward=forward)["sse"]
              for index, images in enumerate(membership_sets(job.split))]
    return roc_auc(*scores)


def run_seed(root: pathlib.Path, seed: int, counts, slices: int, requests: int,
             smoke: bool = False) -> dict:
    from scu_jax.runs import relearn, sharded, sharded_requests
    from scu_jax.runs.train import train_and_evaluate
    from scu_jax.runs.unlearn import unlearn_and_evaluate

    root.mkdir(parents=True, exist_ok=True)
    single_dir = root / "single"
    train_and_evaluate(_config(seed, smoke=smoke), str(single_dir))
    single = json.loads((single_dir / "results.json").read_text())
    from scu_jax.evaluation import membership_inference_auc
    from scu_jax.runs.build import build_for, protocol_of
    from scu_jax.runs.saved import load_variables

    split, system, shape = build_for(_config(seed, smoke=smoke))
    single["mia_auc"] = membership_inference_auc(
        system, *load_variables(str(single_dir), system, _config(seed, smoke=smoke), shape)[:2],
        split, protocol_of(_config(seed, smoke=smoke)))
    methods = {name: unlearn_and_evaluate(_config(seed, method=name, smoke=smoke),
                                          str(single_dir), str(root / name))
               for name in ("retrain", "scu")}
    out = {"seed": seed, "single": single, "methods": methods, "sharded": {}}
    for count in counts:
        config = _config(seed, count, slices, smoke=smoke)
        path = root / f"S{count}"
        best = sharded.train_sharded(config, str(path))
        job = sharded.setup(config)
        digests = sharded.read_manifest(path)["shards"]
        vote = sharded.evaluate_sharded(job, path, digests, job.split, "vote")
        erased = np.flatnonzero(job.split.train_is_erased)
        rng = np.random.default_rng([seed, count, 17])
        picks = rng.choice(np.flatnonzero(~job.split.train_is_erased), requests, replace=False)
        copy = _copy(path, root / f"S{count}_requests")
        records = [sharded_requests.delete_from_sharded(str(copy), [int(i)], request_id=f"one-{i}")
                   for i in picks]
        copy = _copy(path, root / f"S{count}_erased")
        begun = time.perf_counter()
        erasure = sharded_requests.delete_from_sharded(str(copy), erased, request_id="D_e")
        erasure["wall_seconds"] = time.perf_counter() - begun
        after = sharded.evaluate_sharded(job, copy, sharded.read_manifest(copy)["shards"],
                                         job.split, original=path)
        relearned = relearn.sharded_relearning_curve(copy, steps=ATTACK_STEPS, seed=seed,
                                                     original=path)
        best["mia_auc"], after["mia_auc"] = membership_auc(job, path), membership_auc(job, copy)
        out["sharded"][str(count)] = {"best": best, "vote": vote, "requests": records,
                                      "erasure": erasure, "after_erasure": after,
                                      "relearning": relearned}
    out["relearning"] = {name: relearn.relearning_curve(_config(seed, method=name, smoke=smoke),
                                                        root / name, steps=ATTACK_STEPS, seed=seed)
                         for name in ("retrain", "scu")}
    return out


def _mean(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    return f"{np.mean(values):.2f}" + (f" ± {np.std(values):.2f}" if len(values) > 1 else "")


def tables(runs: list[dict], counts, slices: int) -> str:
    lines = ["## Quality of the sharded system against one system", "",
             "| system | " + " | ".join(label for _, label, _ in QUALITY)
             + " | train s (compile s) | × one system's time |",
             "|---|" + "---|" * (len(QUALITY) + 2)]

    def row(name, results, reference=None):
        cells = [_mean([r.get(key, np.nan) * scale for r in results]) for key, _, scale in QUALITY]
        seconds = _mean([r["train_seconds"] for r in results])
        compile_ = _mean([r.get("compile_seconds", 0.0) for r in results])
        ratio = (_mean([r["train_seconds"] / s["train_seconds"]
                        for r, s in zip(results, reference)]) if reference else "1")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {seconds} ({compile_}) | {ratio} |")

    singles = [run["single"] for run in runs]
    row("one system", singles)
    for count in counts:
        best = [run["sharded"][str(count)]["best"] for run in runs]
        vote = [{**run["sharded"][str(count)]["vote"], "train_seconds": b["train_seconds"],
                 "compile_seconds": b["compile_seconds"]} for run, b in zip(runs, best)]
        row(f"S = {count}, R = {slices}, best-of-S", best, singles)
        row(f"S = {count}, R = {slices}, vote", vote, singles)
    retrain = [run["methods"]["retrain"]["unlearn_seconds"] for run in runs]
    scu = [run["methods"]["scu"]["unlearn_seconds"] for run in runs]
    lines += ["", "## The cost of a deletion", "",
              f"Requests of one training sample each (not of D_e), "
              f"{len(runs[0]['sharded'][str(counts[0])]['requests'])} in sequence a seed; seconds of the programs, compilation apart. Retraining (one "
              f"system on D_r): {_mean(retrain)} s; SCU on D_e: {_mean(scu)} s.", "",
              "| S | R | one request p50 s | p95 s | compile s (first) | shards retrained | "
              "sample passes (mean) | × faster than retraining (p50) | p50 / SCU's time | "
              "requests in sequence, s |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for count in counts:
        records = [r for run in runs for r in run["sharded"][str(count)]["requests"]]
        seconds = np.array([r["seconds"] for r in records])
        p50, p95 = np.percentile(seconds, 50), np.percentile(seconds, 95)
        totals = [sum(r["seconds"] for r in run["sharded"][str(count)]["requests"]) for run in runs]
        first = [run["sharded"][str(count)]["requests"][0]["compile_seconds"] for run in runs]
        lines.append(
            f"| {count} | {slices} | {p50:.2f} | {p95:.2f} | {_mean(first)} | "
            f"{np.mean([len(r['shards_retrained']) for r in records]):.1f} | "
            f"{np.mean([r['sample_passes'] for r in records]):,.0f} | "
            f"**{np.mean(retrain) / p50:.1f}×** | {p50 / np.mean(scu):.1f} | {_mean(totals)} |")
    lines += ["", "## Exact deletion of D_e (the backdoor protocol)", "",
              "Read by the original's receiver(s), as the protocol reads every system.", "",
              "| system | seconds (compile s) | shards retrained | backdoor % | acc test % | "
              "acc D_clean % | MSE D_clean | MIA AUC (loss) |", "|---|---|---|---|---|---|---|---|"]
    for name in ("retrain", "scu"):
        results = [run["methods"][name] for run in runs]
        lines.append(f"| one system, {name} | {_mean([r['unlearn_seconds'] for r in results])} "
                     f"({_mean([r.get('compile_seconds', 0.0) for r in results])}) | – | "
                     + " | ".join(_mean([r[k] * s for r in results]) for k, s in (
                         ("backdoor_accuracy", 100), ("accuracy_test", 100),
                         ("accuracy_clean", 100), ("mse_clean", 1), ("mia_auc", 1))) + " |")
    for name, key in (("one system, original", "single"),):
        results = [run[key] for run in runs]
        lines.append(f"| {name} | – | – | " + " | ".join(_mean([r.get(k, np.nan) * s for r in results])
                     for k, s in (("backdoor_accuracy", 100), ("accuracy_test", 100),
                                  ("accuracy_clean", 100), ("mse_clean", 1), ("mia_auc", 1)))
                     + " |")
    for count in counts:
        befores = [run["sharded"][str(count)]["best"] for run in runs]
        lines.append(f"| S = {count}, R = {slices}, before | – | – | " + " | ".join(
            _mean([b[k] * s for b in befores]) for k, s in (
                ("backdoor_accuracy", 100), ("accuracy_test", 100), ("accuracy_clean", 100),
                ("mse_clean", 1), ("mia_auc", 1))) + " |")
    for count in counts:
        erasures = [run["sharded"][str(count)]["erasure"] for run in runs]
        afters = [run["sharded"][str(count)]["after_erasure"] for run in runs]
        lines.append(f"| S = {count}, R = {slices}, after | {_mean([e['seconds'] for e in erasures])} "
                     f"({_mean([e['compile_seconds'] for e in erasures])}) | "
                     f"{np.mean([len(e['shards_retrained']) for e in erasures]):.0f} | "
                     + " | ".join(_mean([a[k] * s for a in afters]) for k, s in (
                         ("backdoor_accuracy", 100), ("accuracy_test", 100),
                         ("accuracy_clean", 100), ("mse_clean", 1), ("mia_auc", 1))) + " |")
    lines += ["", "## The relearning attack after the deletion of D_e", "",
              "Backdoor accuracy on the 90 % of D_e the attacker never saw, after training on a "
              "seeded tenth of it (sharded: every shard's codec trained on the same batches). "
              "Every system is read as the protocol reads it, by the receiver of the system it "
              "was unlearned from (sharded: the shards' receivers before the deletion).", "",
              "| system | " + " | ".join(f"{s} steps" for s in ATTACK_STEPS) + " |",
              "|---|" + "---|" * len(ATTACK_STEPS)]

    def curve_row(name, curves):
        cells = [_mean([c[i]["backdoor_accuracy"] * 100 for c in curves])
                 for i in range(len(ATTACK_STEPS))]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

    for name in ("retrain", "scu"):
        curve_row(f"one system, {name}", [run["relearning"][name] for run in runs])
    for count in counts:
        curve_row(f"S = {count}, exact deletion",
                  [run["sharded"][str(count)]["relearning"] for run in runs])
    return "\n".join(lines) + "\n"


def figure(runs: list[dict], counts, path: pathlib.Path) -> None:
    """Quality and the cost of one deletion against S (one system at S = 1), mean over seeds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [1, *counts]
    retrain = np.mean([run["methods"]["retrain"]["unlearn_seconds"] for run in runs])
    scu = np.mean([run["methods"]["scu"]["unlearn_seconds"] for run in runs])
    fig, (quality, cost) = plt.subplots(1, 2, figsize=(10, 3.8))

    def curve(key, aggregation, scale):
        return [np.mean([run["single"][key] for run in runs]) * scale] + [
            np.mean([run["sharded"][str(c)][aggregation][key] for run in runs]) * scale
            for c in counts]

    quality.plot(xs, curve("accuracy_test", "best", 100), "C0o-", label="test accuracy, best-of-S")
    quality.plot(xs, curve("accuracy_test", "vote", 100), "C0o:", label="test accuracy, vote")
    quality.set_ylabel("test accuracy %")
    psnr = quality.twinx()  # the vote changes the receivers only: one PSNR curve
    psnr.plot(xs, curve("psnr_test", "best", 1), "C1s-", label="test PSNR")
    psnr.set_ylabel("test PSNR dB")
    psnr.legend(loc="lower right", fontsize=8)
    quality.legend(loc="lower left", fontsize=8)
    quality.set_xscale("log", base=2)
    quality.set_xlabel("shards S (1: one system)")
    quality.set_title("quality")
    p50 = [np.percentile([r["seconds"] for run in runs for r in run["sharded"][str(c)]["requests"]],
                         50) for c in counts]
    cost.plot(counts, p50, "C2o-", label="one request, sharded (p50)")
    cost.axhline(retrain, color="C3", label="retraining one system")
    cost.axhline(scu, color="C4", linestyle="--", label="SCU on D_e")
    cost.set_xscale("log", base=2)
    cost.set_yscale("log")
    cost.set_xlabel("shards S")
    cost.set_ylabel("seconds (compilation apart)")
    cost.set_title("the cost of one deletion")
    cost.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv) -> None:
    from scu_jax.binaries.common import fail
    from scu_jax.runs.logs import quiet_library_logs

    if len(argv) > 1:
        fail(PROGRAM, f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        counts, seeds = check_arguments(_COUNTS.value, _SLICES.value, _SEEDS.value,
                                        _REQUESTS.value)
    except ValueError as error:
        fail(PROGRAM, str(error))
    quiet_library_logs()
    root = pathlib.Path(_WORKDIR.value)
    begun = time.perf_counter()
    if _FROM_JSON.value:  # the tables and figure again, from a finished run's numbers
        saved = json.loads((root / "sharded.json").read_text())
        if isinstance(saved, list):  # written before the file kept its header
            runs, header = saved, (root / "sharded.md").read_text().split("## Quality")[0]
        else:
            runs, header = saved["runs"], saved["header"]
    else:
        runs = [run_seed(root / f"seed{seed}", seed, counts, _SLICES.value, _REQUESTS.value,
                         _SMOKE.value) for seed in seeds]
        import jax

        header = (f"# Exact unlearning by sharding\n\n`python -m {PROGRAM} "
                  f"{' '.join(sys.argv[1:])}`\n\nMain job (embedded MNIST, backdoor protocol, "
                  f"EDR 6 %), seeds {seeds}; {platform.machine()} CPU, {jax.device_count()} "
                  f"device(s), jax {jax.__version__}; {time.strftime('%Y-%m-%d')}; wall time "
                  f"{(time.perf_counter() - begun) / 60:.1f} min.\n\n")
        (root / "sharded.json").write_text(json.dumps({"header": header, "runs": runs},
                                                      indent=1, default=float))
    text = (header + tables(runs, counts, _SLICES.value)
            + "\n![quality and deletion cost](sharded.png)\n")
    figure(runs, counts, root / "sharded.png")
    (root / "sharded.md").write_text(text)
    print(text)


if __name__ == "__main__":
    app.run(main)
