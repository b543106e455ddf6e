"""`python -m benchmarks.population`: a population of retrained codecs as the reference (issue 33,
part 2), on the main job (the default config: embedded MNIST, backdoor protocol, EDR 6 %).

  python -m benchmarks.population --population_workdir=runs/population --population_runs=16 \
      [--population_retrain_alone=4] [--population_method_alone=-1] [--population_method=scu] \
      [--population_bins=4] [--population_binning=width] \
      [--population_smoothing=0.1] [--population_remain=1000] \
      [--population_retime] [--population_set=train.epochs=2,...]

N originals (original i trained with seed i), N retrainings on D_r (retrain i with seed i) and N
SCU runs (run i unlearns original i with seed i) are each trained as ONE vmapped program
(`runs/train.train_and_evaluate_many`, `runs/train.fit_many` on D_r,
`runs/unlearn.unlearn_and_evaluate_many`), each in its own workdir under the given one, so a rerun
reuses what is finished. The retraining and SCU populations are timed as one program against runs
one by one (`fit_with_checkpoints`, `runs/erasing.erased_loop`), side by side in this process,
compilation apart (and with it, in a column of its own); a timing reused from an earlier process is
marked so (`--population_retime` trains and times the retrainings again, on a quieter machine), the
method's are the best of `--population_repeats`, and the machine's load average at the start and
end of each timing is given. Every system is then read on D_e, a fixed seeded subsample of the
samples every run's D_r holds (D_r is seeded: each seed leaves out other images) and the test set
(`scu_jax.population.per_sample_outcomes`: the correct-class margin read by original i's receiver,
as the evaluation reads every system, and the reconstruction SSE, over the protocol's 8 draws), and
KLOM (`scu_jax.population.klom`) compares, sample by sample, the method's N runs and the N
originals (doing nothing) with retraining's N runs, beside retraining's two halves against each
other (the noise floor, N/2 a side; the method's and the originals' first halves against the same
second half of retraining are given too, like for like). Writes population_METHOD.md, .json,
.png and outcomes_METHOD.npz (every per-sample value and score) into the workdir for each of the
comma-separated `--population_method`s, which share the originals and retrainings (a later call
with another method in the same workdir reuses them too).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import platform
import shutil
import sys
import time
from typing import Any, Sequence

import jax
import numpy as np
from absl import app, flags

from scu_jax import population
from scu_jax.binaries.common import fail, flags_parser
from scu_jax.config import ERASED_LOOP_METHODS, default_config, method_config, validate_config
from scu_jax.errors import NonFiniteError
from scu_jax.models import receiver_of
from scu_jax.parallel import DataParallel
from scu_jax.runs import train, unlearn
from scu_jax.runs.build import build_for, protocol_of, recipe_of
from scu_jax.runs.checkpointing import Checkpoints
from scu_jax.runs.erasing import erased_loop, erased_loops_together
from scu_jax.runs.files import check_workdir, write_json_atomic, write_text_atomic
from scu_jax.runs.logs import quiet_library_logs
from scu_jax.runs.saved import load_variables

PROGRAM = "benchmarks.population"
# Names of their own: the benchmarks' modules share absl's flags when imported together.
_WORKDIR = flags.DEFINE_string("population_workdir", "runs/population",
                               "Where every run's workdir and the outputs go.")
_RUNS = flags.DEFINE_integer("population_runs", 16, "N: runs per population (seeds 0..N-1).")
_RETRAIN_ALONE = flags.DEFINE_integer(
    "population_retrain_alone", 4, "Retrainings timed one by one (0 skips; fewer than N: the "
    "one-by-one time is extrapolated to N, and the output says so).")
_METHOD_ALONE = flags.DEFINE_integer(
    "population_method_alone", -1, "Method runs timed one by one (-1: all N; 0 skips).")
_METHOD = flags.DEFINE_string("population_method", "scu",
                              "The erased-data methods compared, comma-separated (one population "
                              "each, against the same originals and retrainings).")
_BINS = flags.DEFINE_integer("population_bins", 4, "KLOM bins per sample.")
_SMOOTHING = flags.DEFINE_float("population_smoothing", 0.1,
                                "KLOM pseudo-counts added to every bin.")
_BINNING = flags.DEFINE_string("population_binning", "width",
                               "KLOM bins: width (equal widths over the union's range) or "
                               "quantile (the union's quantiles).")
_REMAIN = flags.DEFINE_integer("population_remain", 1000,
                               "D_r samples read (from those in every run's D_r).")
_REPEATS = flags.DEFINE_integer(
    "population_repeats", 2, "The method's timings (one program, one by one) are the best of "
    "this many (retraining's are timed once: it is the long part).")
_RETIME = flags.DEFINE_boolean(
    "population_retime", False, "Delete the retraining population's and the one-by-one "
    "retrainings' workdirs first, so they are trained and timed again (on a quieter machine); "
    "the originals and the method's runs are reused.")
_SET = flags.DEFINE_list("population_set", [], "Config overrides FIELD=VALUE (JSON values), e.g. "
                         "train.epochs=2 for a quick look.")

SETS = ("erased", "remain", "test")
SET_NAMES = {"erased": "D_e", "remain": "D_r", "test": "test"}
OUTCOMES = ("margin", "sse")


def check_arguments(runs: int, retrain_alone: int, method_alone: int, method: str, bins: int,
                    binning: str, smoothing: float, remain: int, repeats: int = 1
                    ) -> tuple[int, int]:
    """Raises `ValueError` (one line) on a bad flag value; returns the runs timed one by one
    (retraining, method), -1 resolved to N."""
    if runs < 2:
        raise ValueError(f"--population_runs must be at least 2 (the noise floor splits "
                         f"retraining in halves), got {runs}")
    if method_alone == -1:
        method_alone = runs
    for flag, value in (("population_retrain_alone", retrain_alone),
                        ("population_method_alone", method_alone)):
        if not 0 <= value <= runs:
            raise ValueError(f"--{flag} must lie in [0, --population_runs={runs}], got {value}")
    methods = method.split(",")
    for name in methods:
        if name not in ERASED_LOOP_METHODS:
            raise ValueError(f"--population_method must be one of "
                             f"{', '.join(ERASED_LOOP_METHODS)} (comma-separated), got {name!r}")
    if len(set(methods)) < len(methods):
        raise ValueError(f"--population_method names a method twice: {method}")
    if bins < 1:
        raise ValueError(f"--population_bins must be at least 1, got {bins}")
    if binning not in population.BINNINGS:
        raise ValueError(f"--population_binning must be width or quantile, got {binning!r}")
    if not (np.isfinite(smoothing) and smoothing > 0):
        raise ValueError(f"--population_smoothing must be a positive number, got {smoothing}")
    if remain < 1:
        raise ValueError(f"--population_remain must be at least 1, got {remain}")
    if repeats < 1:
        raise ValueError(f"--population_repeats must be at least 1, got {repeats}")
    return retrain_alone, method_alone


def base_config(overrides: Sequence[str], method: str):
    """The main job's config, MI estimation off (evaluation, not unlearning), `overrides`."""
    config = default_config()
    config.evaluation.mi_steps = 0
    config.unlearning.method = method
    for item in overrides:
        field, equals, value = item.partition("=")
        if not equals:
            raise ValueError(f"--population_set: {item!r} is not FIELD=VALUE")
        node = config
        *parents, leaf = field.split(".")
        try:
            for part in parents:
                node = node[part]
            if leaf not in node:
                raise KeyError(f"no field {field!r}")
            node[leaf] = json.loads(value)
        except (KeyError, AttributeError, TypeError, ValueError, json.JSONDecodeError) as error:
            raise ValueError(f"--population_set: {item!r}: {error}") from None
    validate_config(config)
    return config


def seeded(config, seed: int):
    config = config.copy_and_resolve_references()
    config.seed = seed
    return method_config(config)


def shared_remain(splits, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` samples (a fixed seeded choice, in dataset order) of those in EVERY split's D_r:
    (images, labels)."""
    common = functools.reduce(np.intersect1d, [split.remain_indices for split in splits])
    if len(common) == 0:
        raise ValueError("no training sample is in every run's D_r")
    chosen = np.sort(np.random.default_rng([seed, 33]).choice(
        common, min(count, len(common)), replace=False))
    indices = np.asarray(splits[0].remain_indices)
    order = np.argsort(indices, kind="stable")
    rows = order[np.searchsorted(indices[order], chosen)]
    return splits[0].remain_images[rows], splits[0].remain_labels[rows]


def _host(params, batch_stats):
    """Host copies (the steps donate their states; these are read again)."""
    return jax.tree.map(np.array, jax.device_get((params, batch_stats)))


def _max_difference(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _checkpoint(workdir: pathlib.Path, config=None) -> tuple[int | None, dict[str, Any]]:
    """The latest step in `workdir` and its metadata (checked against `config` if given)."""
    checkpoints = Checkpoints(workdir, read_only=True)
    try:
        if config is not None:
            checkpoints.check_compatible(config)
        step = checkpoints.latest_step()
        return step, {} if step is None else checkpoints.saved_config()
    finally:
        checkpoints.close()


def _load() -> float:
    """The machine's 1-minute load average: what else ran beside a timing (2 on an idle
    2-core machine running one program that fills both cores)."""
    return round(os.getloadavg()[0], 2)


def _saved_time(workdir: pathlib.Path) -> dict[str, Any]:
    meta = _checkpoint(workdir)[1]
    return {"seconds": float(meta.get("train_seconds", 0.0)),
            "compile_seconds": float(meta.get("compile_seconds", 0.0)),
            "runs_together": int(meta.get("runs_together", 1))}


def retrain_population(configs, root: pathlib.Path) -> tuple[list, dict[str, Any]]:
    """Retraining i: the training recipe from scratch on seed i's D_r with seed i (what
    `unlearn._retrain` runs), every run that starts from scratch as one program (`fit_many`),
    checkpointed in root/retrain/seed<i> (a "train" checkpoint of D_r: its data says so).

    runs/ retrains one run at a time (`unlearn._retrain`); `train.fit_many` trains several as
    one program but takes `train._Training` jobs, so this builds them, their split's training
    set replaced by D_r (`unlearn._remain_set`, what `_retrain` trains on)."""
    jobs, total = [], recipe_of(configs[0]).total_epochs
    for config in configs:
        split, system, shape = build_for(config)
        images, labels = unlearn._remain_set(config, split)  # pylint: disable=protected-access
        on_remain = dataclasses.replace(split, train_images=images, train_labels=labels,
                                        source={**split.source, "trained_on": "D_r"})
        workdir = root / "retrain" / f"seed{config.seed}"
        _checkpoint(workdir, config)  # another configuration's run is refused before any work
        jobs.append(train._Training(  # pylint: disable=protected-access
            config, DataParallel(), workdir, on_remain, system, shape))
    fresh = [job for job in jobs if _checkpoint(job.workdir)[0] is None]
    states, load = {}, [_load()]
    if len(fresh) > 1:
        for job, (state, _) in zip(fresh, train.fit_many(fresh)):
            states[id(job)] = state
    for job in jobs:  # resumed, alone, or finished earlier: `fit_with_checkpoints` reads it
        if id(job) not in states:
            states[id(job)] = train.fit_with_checkpoints(
                job.system, recipe_of(job.config), job.config, job.workdir,
                job.split.train_images, job.split.train_labels, parallel=job.parallel,
                kind="train", image_shape=job.image_shape, data=job.split.source)[0]
    load.append(_load())
    times = [_saved_time(job.workdir) for job in jobs]
    assert all(_checkpoint(job.workdir)[0] == total for job in jobs)
    timing = {"seconds": max(t["seconds"] for t in times),
              "compile_seconds": max(t["compile_seconds"] for t in times),
              "runs_together": min(t["runs_together"] for t in times),
              "measured_now": len(fresh) == len(jobs), "load_average": load}
    return [_host(states[id(job)].params, states[id(job)].batch_stats) for job in jobs], timing


def retrain_alone(configs, root: pathlib.Path, together: list) -> dict[str, Any]:
    """The first retrainings one by one (`fit_with_checkpoints`, as `unlearn._retrain` runs
    one), in root/alone/retrain/seed<i>; their times and largest parameter difference to the
    same seeds' in the population."""
    seconds = compile_seconds = difference = 0.0
    measured_now, load = True, [_load()]
    for config, variables in zip(configs, together):
        split, system, shape = build_for(config)
        images, labels = unlearn._remain_set(config, split)  # pylint: disable=protected-access
        workdir = root / "alone" / "retrain" / f"seed{config.seed}"
        measured_now &= _checkpoint(workdir)[0] is None
        state, report = train.fit_with_checkpoints(
            system, recipe_of(config), config, workdir, images, labels, parallel=DataParallel(),
            kind="retrain", image_shape=shape, data={**split.source, "trained_on": "D_r"})
        seconds += report.seconds
        compile_seconds += report.compile_seconds
        difference = max(difference, _max_difference(_host(state.params, state.batch_stats),
                                                     variables))
    return {"runs": len(configs), "seconds": seconds, "compile_seconds": compile_seconds,
            "max_param_difference": difference, "measured_now": measured_now,
            "load_average": [*load, _load()]}


def method_timing(configs, originals: list, saved: list, alone: int,
                  repeats: int = 1) -> dict[str, Any]:
    """The method's N runs as one program (`erased_loops_together`) and its first `alone` runs
    one by one (`erased_loop`), both timed now, compilation apart, each the best of `repeats`
    (seconds; compile seconds of the first); the largest parameter difference of each to the
    saved population's, and the epochs each run ran before its stop (the program runs every run
    until the last one stops)."""
    built = [build_for(config) for config in configs]
    system, splits = built[0][1], [b[0] for b in built]
    timing: dict[str, Any] = {"measured_now": True, "repeats": repeats}
    for repeat in range(repeats):
        load = _load()
        together = erased_loops_together(configs, system, splits, originals)
        if together is None:
            raise ValueError("the method's runs cannot share one program "
                             "(erased_loops_together)")
        info = together[0][2]
        timing.setdefault("all_seconds", []).append(info["unlearn_seconds"])
        timing.setdefault("load_average", [load, _load()])
        if repeat == 0:
            timing.update(compile_seconds=info["compile_seconds"],
                          runs_together=info.get("runs_together", 1),
                          epochs=[run[2]["epochs"] for run in together],
                          max_param_difference_to_saved=max(
                              _max_difference(_host(p, b), s) for (p, b, _), s in
                              zip(together, saved)))
    timing["seconds"] = min(timing["all_seconds"])
    if alone:
        part: dict[str, Any] = {"runs": alone, "measured_now": True, "all_seconds": []}
        for repeat in range(repeats):
            seconds = compile_seconds = difference = 0.0
            load, epochs = _load(), []
            for config, (split, _, shape), trained, variables in zip(configs[:alone], built,
                                                                      originals, saved):
                params, batch_stats, run = erased_loop(config, system, split, *trained, None,
                                                       shape, DataParallel())
                seconds += run["unlearn_seconds"]
                compile_seconds += run["compile_seconds"]
                epochs.append(run["epochs"])
                difference = max(difference,
                                 _max_difference(_host(params, batch_stats), variables))
            part["all_seconds"].append(seconds)
            if repeat == 0:
                part.update(compile_seconds=compile_seconds, max_param_difference=difference,
                            load_average=[load, _load()], epochs=epochs)
        part["seconds"] = min(part["all_seconds"])
        timing["alone"] = part
    return timing


def speedup(timing: dict[str, Any], runs: int) -> dict[str, Any] | None:
    """One by one against one program: the one-by-one time of N runs (extrapolated from the
    runs timed where fewer) over the program's, compilation apart, and with it (each run alone
    compiles its own program; the population compiles one)."""
    alone = timing.get("alone")
    if not alone or not alone["runs"]:
        return None
    scale = runs / alone["runs"]
    estimate = alone["seconds"] * scale
    return {"alone_seconds_for_n": estimate, "extrapolated": alone["runs"] < runs,
            "speedup": estimate / timing["seconds"],
            "speedup_with_compile": (estimate + alone["compile_seconds"] * scale)
            / (timing["seconds"] + timing["compile_seconds"])}


def outcomes(configs, systems: dict[str, list], originals: list, sets: dict, protocol
             ) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """{population: {set: {outcome: (runs, samples)}}}; run i read by original i's receiver,
    every system with the same key on a set."""
    system = build_for(configs[0])[1]
    values: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for name, variables in systems.items():
        values[name] = {}
        for index, (set_name, (images, labels)) in enumerate(sets.items()):
            key = jax.random.fold_in(jax.random.PRNGKey(protocol.seed), 90 + index)
            rows = [population.per_sample_outcomes(system, *v, images, labels, protocol=protocol,
                                                   key=key, receiver=receiver_of(*o))
                    for v, o in zip(variables, originals)]
            values[name][set_name] = {k: np.stack([r[k] for r in rows]) for k in OUTCOMES}
    return values


def klom_scores(values, method: str, **settings) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """{set: {outcome: {comparison: per-sample scores}}}: the method and the originals against
    retraining (N a side), retraining's halves (the noise floor), and the method's and the
    originals' first halves against retraining's second (N/2 a side, like the floor)."""
    scores: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for set_name in values["retrain"]:
        scores[set_name] = {}
        for outcome in OUTCOMES:
            reference = values["retrain"][set_name][outcome]
            half = len(reference) // 2
            row = {}
            for name in (method, "original"):
                mine = values[name][set_name][outcome]
                row[name] = population.klom(mine, reference, **settings)
                row[f"{name}_half"] = population.klom(mine[:half], reference[half:2 * half],
                                                      **settings)
            row["noise_floor"] = population.noise_floor(reference, **settings)
            scores[set_name][outcome] = row
    return scores


def report_of(command: str, method: str, job: str, settings: dict[str, Any], sets: dict,
              timing: dict[str, Any], values, scores) -> dict[str, Any]:
    """The JSON report: timings and speed-ups, KLOM summaries and mean outcomes."""
    runs = len(values["retrain"]["erased"]["margin"])
    return {
        "command": command, "method": method, "runs": runs, "seeds": list(range(runs)),
        "job": job, "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, jax "
                               f"{jax.__version__} on {jax.default_backend()}",
        "klom_settings": settings,
        "sizes": {name: int(len(images)) for name, (images, _) in sets.items()},
        "timing": timing, "speedup": {name: speedup(t, runs) for name, t in timing.items()},
        "klom": {s: {o: {k: population.klom_summary(v) for k, v in row.items()}
                     for o, row in by_outcome.items()} for s, by_outcome in scores.items()},
        "means": {name: {s: {o: float(v.mean()) for o, v in by_outcome.items()}
                         for s, by_outcome in by_set.items()} for name, by_set in values.items()},
        "wall_seconds": 0.0}


def markdown(report: dict[str, Any]) -> str:
    """population.md from the JSON report."""
    method, runs = report["method"], report["runs"]
    lines = [f"# A population of {runs} retrained codecs as the reference", "",
             f"`{report['command']}`", "",
             f"{report['job']}; {runs} runs a population (seeds 0–{runs - 1}); "
             f"{report['machine']}; total wall time {report['wall_seconds'] / 60:.1f} min.", "",
             "## One program against one by one", "",
             "| population | N | one program s (compile s) | one by one, runs timed | one by one "
             "s for N (compile s a run) | × faster | × faster with compilation | max parameter "
             "difference, one by one − one program |", "|---|---|---|---|---|---|---|---|"]
    for name in ("retrain", method):
        timing = report["timing"][name]
        alone, gain = timing.get("alone"), report["speedup"].get(name)
        program = f"{timing['seconds']:.1f} ({timing['compile_seconds']:.1f})" + (
            "" if timing["measured_now"] else ", earlier process")
        if not alone or not gain:
            lines.append(f"| {name} | {runs} | {program} | skipped | – | – | – | – |")
            continue
        timed = f"{alone['runs']} of {runs}" + (", extrapolated ×" f"{runs / alone['runs']:g}"
                                                if gain["extrapolated"] else "")
        if not alone["measured_now"]:
            timed += ", earlier process"
        lines.append(f"| {name} | {runs} | {program} | {timed} | {gain['alone_seconds_for_n']:.1f}"
                     f" ({alone['compile_seconds'] / alone['runs']:.1f}) | "
                     f"**{gain['speedup']:.2f}×** | {gain['speedup_with_compile']:.2f}× | "
                     f"{alone['max_param_difference']:.1e} |")
    notes = []
    for name in ("retrain", method):
        timing = report["timing"][name]
        if timing.get("repeats", 1) > 1:
            notes.append(f"{name}: best of {timing['repeats']} timings each way")
        if timing.get("epochs"):
            epochs = timing["epochs"]
            notes.append(f"{name}: the runs stopped after {min(epochs)}–{max(epochs)} epochs "
                         f"(mean {np.mean(epochs):.1f}); the program runs every run until the "
                         "last one stops")
        for what, part in (("one program", timing), ("one by one", timing.get("alone") or {})):
            if part.get("load_average"):
                notes.append(f"load average (1 min) at the start and end of {name} {what}: "
                             + " → ".join(f"{x:g}" for x in part["load_average"]))
    if notes:
        lines += ["", "Compilation apart in the × faster column; an idle 2-core machine running "
                  "one program reads a load average of about 2. " + "; ".join(notes) + "."]
    settings = report["klom_settings"]
    lines += ["", "## KLOM against retraining (nats per sample: median / p95 over samples)", "",
              f"Per sample, KL(population ‖ retraining) of the binned distributions over runs "
              f"({settings['bins']} {settings['binning']} bins from the union, "
              f"{settings['smoothing']:g} pseudo-counts a bin). Margin: the correct-class margin "
              f"(D_e: its training label, the backdoor target) read by original i's receiver; "
              f"SSE: the reconstruction's. Noise floor: retraining's first {runs // 2} runs "
              f"against its last {runs // 2}; the N/2 columns put the first {runs // 2} runs "
              f"against the same last {runs // 2} of retraining.", "",
              f"| set | outcome | {method} | original (do nothing) | noise floor | {method}, "
              f"N/2 | original, N/2 |", "|---|---|---|---|---|---|---|"]
    for set_name, by_outcome in report["klom"].items():
        for outcome, row in by_outcome.items():
            cells = [f"{row[k]['median']:.2f} / {row[k]['p95']:.2f}" for k in (
                method, "original", "noise_floor", f"{method}_half", "original_half")]
            lines.append(f"| {SET_NAMES[set_name]} ({report['sizes'][set_name]}) | {outcome} | "
                         + " | ".join(cells) + " |")
    lines += ["", "## Mean outcome over runs and samples", "",
              f"| set | outcome | original | retrain | {method} |", "|---|---|---|---|---|"]
    for set_name, by_outcome in report["means"]["retrain"].items():
        for outcome in by_outcome:
            cells = [f"{report['means'][name][set_name][outcome]:.2f}"
                     for name in ("original", "retrain", method)]
            lines.append(f"| {SET_NAMES[set_name]} | {outcome} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def figure(scores, method: str, path: pathlib.Path) -> None:
    """The per-sample KLOM distributions (empirical CDFs), a panel per outcome and set."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(scores)
    fig, axes = plt.subplots(len(OUTCOMES), len(sets), figsize=(4.2 * len(sets), 6.4),
                             squeeze=False)
    styles = {method: ("C0", method), "original": ("C3", "original (do nothing)"),
              "noise_floor": ("C7", "noise floor (retrain N/2 vs N/2)")}
    for row, outcome in enumerate(OUTCOMES):
        for column, set_name in enumerate(sets):
            ax = axes[row][column]
            for name, (colour, label) in styles.items():
                values = np.sort(scores[set_name][outcome][name])
                ax.step(values, np.arange(1, len(values) + 1) / len(values), where="post",
                        color=colour, label=label)
            ax.set_title(f"{outcome}, {SET_NAMES[set_name]}")
            ax.set_xlim(left=0.0)
            ax.set_xlabel("KLOM per sample (nats)")
            ax.set_ylabel("share of samples ≤")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    temporary = path.with_suffix(".tmp.png")
    fig.savefig(temporary, dpi=120)
    plt.close(fig)
    os.replace(temporary, path)


def run(root: pathlib.Path, runs: int, retrain_alone_runs: int, method_alone_runs: int,
        method: str, settings: dict[str, Any], remain: int, overrides: Sequence[str],
        command: str, retime: bool = False, repeats: int = 1) -> dict[str, Any]:
    begun = time.perf_counter()
    base = base_config(overrides, method)
    configs = [seeded(base, seed) for seed in range(runs)]
    original_dirs = [str(root / "original" / f"seed{seed}") for seed in range(runs)]
    train.train_and_evaluate_many(configs, original_dirs)
    system, shape = build_for(configs[0])[1:]
    originals = [_host(*load_variables(d, system, c, shape)[:2])
                 for d, c in zip(original_dirs, configs)]
    if retime:
        for stale in (root / "retrain", root / "alone" / "retrain"):
            shutil.rmtree(stale, ignore_errors=True)
    retrained, retrain_timing = retrain_population(configs, root)
    if retrain_alone_runs:
        retrain_timing["alone"] = retrain_alone(configs[:retrain_alone_runs], root, retrained)
    method_dirs = [str(root / method / f"seed{seed}") for seed in range(runs)]
    results = unlearn.unlearn_and_evaluate_many(configs, original_dirs, method_dirs)
    diverged = [str(r) for r in results if isinstance(r, NonFiniteError)]
    if diverged:
        raise NonFiniteError(f"{len(diverged)} {method} runs diverged: {diverged[0]}")
    unlearned = [_host(*load_variables(d, system, c, shape)[:2])
                 for d, c in zip(method_dirs, configs)]
    method_timing_ = method_timing(configs, originals, unlearned, method_alone_runs, repeats)

    splits = [build_for(config)[0] for config in configs]
    if any(not np.array_equal(s.erased_images, splits[0].erased_images) for s in splits):
        raise ValueError("the runs' D_e differ: their samples cannot be compared")
    protocol = protocol_of(configs[0])
    sets = {"erased": (splits[0].erased_images, splits[0].erased_labels),
            "remain": shared_remain(splits, remain, protocol.seed),
            "test": (splits[0].test_images, splits[0].test_labels)}
    values = outcomes(configs, {"original": originals, "retrain": retrained, method: unlearned},
                      originals, sets, protocol)
    scores = klom_scores(values, method, **settings)
    timing = {"retrain": retrain_timing, method: method_timing_}
    job = (f"{configs[0].dataset}, backdoor protocol, EDR {configs[0].erasure.edr:g}, "
           f"{protocol.draws} channel draws a sample")
    report = report_of(command, method, job, settings, sets, timing, values, scores)
    report["overrides"] = list(overrides)
    report["results"] = [{k: r[k] for k in ("backdoor_accuracy", "accuracy_clean",
                                            "accuracy_test", "unlearn_seconds", "epochs")
                          if k in r} for r in results]
    report["wall_seconds"] = time.perf_counter() - begun
    arrays = {f"{name}/{s}/{o}": v for name, by_set in values.items()
              for s, by_outcome in by_set.items() for o, v in by_outcome.items()}
    arrays.update({f"klom/{s}/{o}/{k}": v for s, by_outcome in scores.items()
                   for o, row in by_outcome.items() for k, v in row.items()})
    np.savez_compressed(root / f"outcomes_{method}.npz", **arrays)
    write_json_atomic(root / f"population_{method}.json", report)
    write_text_atomic(root / f"population_{method}.md", markdown(report))
    figure(scores, method, root / f"population_{method}.png")
    return report


def main(argv) -> None:
    if len(argv) > 1:
        fail(PROGRAM, f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        retrain_alone_runs, method_alone_runs = check_arguments(
            _RUNS.value, _RETRAIN_ALONE.value, _METHOD_ALONE.value, _METHOD.value, _BINS.value,
            _BINNING.value, _SMOOTHING.value, _REMAIN.value, _REPEATS.value)
        base_config(_SET.value, _METHOD.value.split(",")[0])
        check_workdir(_WORKDIR.value, "--population_workdir")
    except ValueError as error:
        fail(PROGRAM, str(error))
    quiet_library_logs()
    root = pathlib.Path(_WORKDIR.value)
    root.mkdir(parents=True, exist_ok=True)
    command = f"python -m {PROGRAM} " + " ".join(sys.argv[1:])
    settings = {"bins": _BINS.value, "binning": _BINNING.value,
                "smoothing": _SMOOTHING.value}
    for index, method in enumerate(_METHOD.value.split(",")):  # one shared reference
        report = run(root, _RUNS.value, retrain_alone_runs, method_alone_runs, method, settings,
                     _REMAIN.value, _SET.value, command, _RETIME.value and index == 0,
                     _REPEATS.value)
        print(markdown(report))


if __name__ == "__main__":
    app.run(main, flags_parser=flags_parser(PROGRAM))
