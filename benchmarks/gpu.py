"""`python -m benchmarks.gpu`: every number of docs/gpu.md, in one command.

  python -m benchmarks.gpu --gpu_out=runs/gpu                 # on a GPU, within --budget_s
  python -m benchmarks.gpu --gpu_out=/tmp/gpu --tiny          # the same sections at toy sizes

`scripts/gpu.sh` runs it on a lent GPU machine, with the correctness checks. Sections, in order;
each gets its share of `--budget_s` (with what earlier sections left unused, less what they
overran), stops starting new measurements past it or past the whole budget, and lists what it
skipped; one measurement's failure is recorded and the rest go on. After every measurement
`results.json` and `tables.md` in `--gpu_out` are rewritten.

  peaks       the measured ceilings: matrix products (float32, TF32 allowed as JAX allows it on
              a GPU, and bfloat16) in JAX and PyTorch, and the device-to-device copy bandwidth.
  mnist       the MNIST codec's training and SCU steps at batch 16, 128, 1024: JAX per-step
              dispatch and scan, the floor (benchmarks.run), PyTorch eager, the loss under
              torch.compile, and under torch.compile(mode="reduce-overhead") (CUDA graphs).
  cifar       the CIFAR-10 ResNet codec's steps in float32 and bfloat16 at batch 16, 128, 1024
              (JAX dispatch, scan where steps are short, the floor of the convolutions), against
              the PyTorch mirror (benchmarks.torch_cifar) eager and compiled.
  full_scale  retraining and SCU at 60,000 MNIST-shaped and 50,000 CIFAR-shaped images, EDR 6 %
              (benchmarks.full_scale).
  many        independent SCU runs vmapped in one program, N = 1 … 64 (benchmarks.many).

PyTorch runs with TF32 allowed for float32 products and convolutions (JAX's default precision on
a GPU), fused Adam, channels-last tensors and bfloat16 by autocast: the strongest set-up a PyTorch
user picks, so the ratios compare like with like.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time
import traceback
from typing import Any, Callable

from absl import app, flags

from benchmarks import full_scale, run

_OUT = flags.DEFINE_string("gpu_out", "runs/gpu", "Directory of results.json and tables.md.")
_BUDGET = flags.DEFINE_float("budget_s", 300.0, "Seconds the sections share.")
_TINY = flags.DEFINE_boolean("tiny", False, "Toy sizes (any machine; CI runs it on a CPU).")
_SECTIONS = flags.DEFINE_list("sections", ["peaks", "mnist", "cifar", "full_scale", "many"],
                              "Sections to run, in this order.")

SHARES = {"peaks": 0.03, "mnist": 0.17, "cifar": 0.40, "full_scale": 0.24, "many": 0.16}
# (method, dtype, batch, also scan, also floor, torch.compile variants), most wanted first.
CIFAR_PLAN = (
    ("scu", "bfloat16", 128, False, True, ("compile_loss_graphs", "compile_loss")),
    ("scu", "float32", 128, False, False, ("compile_loss",)),
    ("train", "bfloat16", 128, False, False, ()),
    ("train", "float32", 128, False, False, ()),
    ("scu", "bfloat16", 16, True, False, ()),
    ("scu", "float32", 16, True, False, ()),
    ("scu", "bfloat16", 1024, False, True, ()),
    ("scu", "float32", 1024, False, False, ()),
    ("train", "bfloat16", 1024, False, False, ()),
)


class Budget:
    """Each section's deadline: its share of the budget plus what earlier sections left, or less
    what they overran (but at least half its share); no measurement starts past the whole
    budget. `save` runs after every measurement, so a run stopped early keeps what it measured."""

    def __init__(self, seconds: float, save: Callable[[], None] = lambda: None):
        self.seconds, self.banked, self.deadline, self.save = seconds, 0.0, 0.0, save
        self.end_of_all = time.perf_counter() + seconds

    def start(self, section: str) -> None:
        share = self.seconds * SHARES[section]
        self.deadline = time.perf_counter() + max(share + self.banked, share / 2)

    def end(self) -> None:
        self.banked = self.deadline - time.perf_counter()

    def left(self) -> float:
        return min(self.deadline, self.end_of_all) - time.perf_counter()


def _attempt(what: str, budget: Budget, skipped: list[str], fn: Callable[[], Any]) -> Any:
    """`fn()` if the section's time is not spent; its error recorded, not raised."""
    if budget.left() <= 0:
        skipped.append(what)
        return None
    started = time.perf_counter()
    try:
        result = fn()
    except Exception as error:  # one measurement's failure must not lose the others
        traceback.print_exc()
        print(f"benchmarks.gpu: {what} failed: {error!r}", file=sys.stderr, flush=True)
        result = {"error": f"{type(error).__name__}: {error}"}
    else:
        print(f"benchmarks.gpu: {what}: {time.perf_counter() - started:.1f} s", file=sys.stderr,
              flush=True)
    budget.save()
    return result


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _sync() -> None:
    import torch

    if _cuda():
        torch.cuda.synchronize()


def peaks(tiny: bool) -> dict[str, Any]:
    """FLOP/s of square products (best of 3 windows of 10 after a warm-up) and copy bytes/s."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    size = 256 if tiny else 8192
    host = np.random.default_rng(0).standard_normal((size, size), np.float32)
    flops = 2 * size**3 * 10
    result: dict[str, Any] = {"size": size}
    for dtype in ("float32", "bfloat16"):
        a = jnp.asarray(host, dtype)
        product = jax.jit(lambda x: x @ x)

        def jax_window():
            for _ in range(10):
                out = product(a)
            out.block_until_ready()

        result[f"jax_{dtype}_flops"] = run.rates(jax_window, 1, 3, 1)[0] * flops
        t = torch.from_numpy(host).to("cuda" if _cuda() else "cpu", getattr(torch, dtype))

        def torch_window():
            for _ in range(10):
                t @ t
            _sync()

        result[f"torch_{dtype}_flops"] = run.rates(torch_window, 1, 3, 1)[0] * flops
    count = (1 << 20) if tiny else (1 << 30)  # 4 GiB of float32 read and written on a GPU
    source = torch.ones(count, device="cuda" if _cuda() else "cpu")
    target = torch.empty_like(source)

    def copy_window():
        for _ in range(5):
            target.copy_(source)
        _sync()

    result["copy_bytes_per_s"] = run.rates(copy_window, 1, 3, 1)[0] * 5 * 2 * 4 * count
    return result


def _device() -> str:
    return "cuda" if _cuda() else "cpu"


def _step_row(codec: str, method: str, batch: int, dtype: str, *, steps: int, windows: int,
              repeats: int, scan: bool, floor: bool, variants: tuple[str, ...],
              budget: Budget, skipped: list[str]) -> dict[str, Any]:
    label = f"{codec} {method} {dtype} batch {batch}"
    row = run.jax_step_throughput(method, batch, repeats, codec, steps, windows, (1,),
                                  dtype=dtype, scan=scan)
    if floor:
        row.update(_attempt(f"{label} floor", budget, skipped, lambda: run.floor_throughput(
            codec, batch, repeats, steps, windows, method, dtype=dtype)) or {})
    for variant in ("eager", *variants):
        row.update(_attempt(f"{label} PyTorch {variant}", budget, skipped,
                            lambda v=variant: run.torch_step_throughput(
                                method, batch, repeats, steps, windows, codec=codec,
                                dtype=dtype, device=_device(), variants=(v,))) or {})
    return row


def mnist(tiny: bool, budget: Budget, skipped: list[str], rows: list[dict[str, Any]]) -> None:
    # torch.compile for the SCU step (CUDA graphs first: a small step is launch-bound); the
    # training step's compiled variants are left out for time. Both steps at each batch before
    # the next batch, so that a short budget cuts the largest batch, not a whole step.
    compiled = ("compile_loss_graphs", "compile_loss") if _cuda() else ()
    for batch in ((4,) if tiny else (16, 128, 1024)):
        for method in ("scu", "train"):
            steps = 4 if tiny else max(20, 600 * 16 // batch)
            row = _attempt(f"mnist {method} batch {batch}", budget, skipped, lambda: _step_row(
                "mnist", method, batch, "float32", steps=steps, windows=1 if tiny else 2,
                repeats=1 if tiny else 2, scan=True, floor=True,
                variants=compiled if method == "scu" else (), budget=budget, skipped=skipped))
            if row:
                rows.append(row)


def cifar(tiny: bool, budget: Budget, skipped: list[str], rows: list[dict[str, Any]]) -> None:
    # Tiny: one row at batch 2 (a ResNet step's compilation alone takes a CPU half a minute).
    for method, dtype, batch, scan, floor, variants in CIFAR_PLAN[4:5] if tiny else CIFAR_PLAN:
        if not _cuda():  # CUDA graphs are a GPU's
            variants = tuple(v for v in variants if v != "compile_loss_graphs")
        batch = 2 if tiny else batch
        row = _attempt(f"cifar {method} {dtype} batch {batch}", budget, skipped,
                       lambda: _step_row("cifar", method, batch, dtype,
                                         steps=2 if tiny else max(5, 5120 // batch),
                                         windows=1 if tiny else 2, repeats=1 if tiny else 2,
                                         scan=scan, floor=floor, variants=variants,
                                         budget=budget, skipped=skipped))
        if row:
            rows.append(row)


def scale(tiny: bool, budget: Budget, skipped: list[str], results: list[dict[str, Any]]) -> None:
    plan = ([("mnist", dict(size=3000, fraction=0.1, scu_epochs=2))] if tiny else
            [("mnist", dict(fraction=1.0)),
             ("cifar10", dict(fraction=0.05, scu_epochs=2)),
             ("cifar10", dict(fraction=0.05, scu_epochs=2, dtype="bfloat16"))])
    for dataset, arguments in plan:
        result = _attempt(f"full scale {dataset} {arguments}", budget, skipped,
                          lambda: full_scale.measure(dataset, **arguments))
        if result:
            results.append(result)


def many_runs(tiny: bool, budget: Budget, skipped: list[str], rows: list[dict[str, Any]]) -> None:
    """The curve one N at a time (each its own measurement), against N = 1's runs one by one."""
    from benchmarks import many

    counts = [1, 2] if tiny else [1, 2, 4, 8, 16, 32, 64]
    first = _attempt("many runs N=1, and one by one", budget, skipped,
                     lambda: many.measure(counts[:1], many_epochs(tiny), 1))
    if not isinstance(first, list):
        return
    rows += first
    alone = (first[0]["alone_runs_per_s"], first[0]["alone_compile_s_per_run"])
    for count in counts[1:]:
        got = _attempt(f"many runs N={count}", budget, skipped,
                       lambda n=count: many.measure([n], many_epochs(tiny), 1, alone=False))
        if isinstance(got, list):
            rows.append({**got[0], **many.against_alone(got[0], *alone)})


def many_epochs(tiny: bool) -> int:
    return 1 if tiny else 10


def machine() -> dict[str, Any]:
    import flax
    import jax
    import optax
    import torch

    from scu_jax.experiments.machine import machine_info

    info = machine_info()
    info.update(jax=jax.__version__, flax=flax.__version__, optax=optax.__version__,
                torch=torch.__version__, jax_devices=[str(d) for d in jax.devices()],
                torch_tf32=bool(torch.backends.cuda.matmul.allow_tf32))
    if _cuda():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _ratio_text(values: list[float], reference: list[float] | None) -> str:
    return run._fmt(run._ratios(values, reference), 1, 1) + "×" if reference else "–"


def tables(results: dict[str, Any]) -> str:
    parts = [f"Machine: {json.dumps(results.get('machine', {}))}", ""]
    p = results.get("peaks") or {}
    if "size" in p:
        parts += [f"Ceilings ({p['size']}² products, best of 3 windows of 10): JAX float32 "
                  f"{p['jax_float32_flops'] / 1e12:.1f}, bfloat16 {p['jax_bfloat16_flops'] / 1e12:.1f}; "
                  f"PyTorch float32 {p['torch_float32_flops'] / 1e12:.1f}, bfloat16 "
                  f"{p['torch_bfloat16_flops'] / 1e12:.1f} TFLOP/s; copy "
                  f"{p['copy_bytes_per_s'] / 1e12:.2f} TB/s (read + written)", ""]
    steps = [r for r in results.get("mnist", []) + results.get("cifar", []) if "codec" in r]
    for dtype in ("float32", "bfloat16"):
        rows = [r for r in steps if (dtype in r["codec"]) or (r["codec"] == "mnist"
                                                              and dtype == "float32")]
        peak = p.get(f"jax_{dtype}_flops")
        if rows and peak:
            parts += [f"Steps, {dtype} (peaks against the JAX {dtype} product):",
                      run._table(rows, [peak]), ""]
    if results.get("full_scale"):
        good = [r for r in results["full_scale"] if "retrain" in r]
        if good:
            parts += ["Full scale (synthetic data of the real shapes, EDR 6 %):",
                      full_scale.markdown(good), ""]
    if [r for r in results.get("many") or [] if "runs" in r]:
        from benchmarks import many

        epochs = results['many_epochs']
        parts += [f"Independent SCU runs ({epochs} epoch{'s' * (epochs != 1)} each) vmapped in one "
                  "program:",
                  many.table(results["many"]), ""]
    parts += targets(results)
    if results.get("skipped"):
        parts += ["", "Skipped (time budget): " + "; ".join(results["skipped"])]
    return "\n".join(parts) + "\n"


def targets(results: dict[str, Any]) -> list[str]:
    """The issue's targets, each met or missed, from the measured numbers."""
    lines = ["Targets:"]
    scale_rows = [r for r in results.get("full_scale", []) if r.get("dataset") == "mnist"
                  and "scu" in r]
    for r in scale_rows:
        seconds = r["scu"]["most_epochs_seconds"]
        lines.append(f"- MNIST-scale SCU unlearning < 1 s after compilation: {seconds:.2f} s "
                     f"({'met' if seconds < 1 else 'missed'})")
    peak = (results.get("peaks") or {}).get("jax_bfloat16_flops")
    for r in results.get("cifar", []):
        if r.get("method") != "scu" or "dispatch_steps_per_s" not in r:
            continue
        best = r.get("scan_steps_per_s") or r["dispatch_steps_per_s"]
        eager = r.get("torch_eager_steps_per_s")
        compiled = [v for k in ("torch_compile_loss_steps_per_s",
                                "torch_compile_loss_graphs_steps_per_s")
                    for v in r.get(k) or []]
        text = f"- CIFAR SCU step, {r['codec']}, batch {r['batch_size']}: "
        if eager:
            text += (f"{_ratio_text(best, eager)} PyTorch eager "
                     f"({'met' if min(best) / max(eager) >= 3 else 'missed'} ≥ 3×)")
        if compiled:
            text += (f", {_ratio_text(best, [max(compiled)])} the fastest torch.compile "
                     f"({'ahead' if min(best) > max(compiled) else 'not ahead'})")
        if peak and "bfloat16" in r["codec"] and r["xla_flops_per_step"] > 0:
            share = max(best) * r["xla_flops_per_step"] / peak
            text += f"; {100 * share:.0f} % of the bf16 product peak ({'met' if share >= 0.4 else 'missed'} ≥ 40 %)"
        lines.append(text)
    return lines


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        sys.exit(f"benchmarks.gpu: error: unexpected arguments: {' '.join(argv[1:])}")
    unknown = set(_SECTIONS.value) - set(SHARES)
    if unknown or _BUDGET.value <= 0:
        sys.exit(f"benchmarks.gpu: error: --sections from {', '.join(SHARES)} and --budget_s > 0")
    out = pathlib.Path(_OUT.value)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        sys.exit(f"benchmarks.gpu: error: cannot make --gpu_out={out}: {error.strerror}")
    import torch

    from scu_jax.runs.files import write_text_atomic
    from scu_jax.runs.logs import quiet_library_logs

    quiet_library_logs()
    # As XLA picks its convolution algorithms when it compiles: cuDNN's search, in the warm-up.
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    started, tiny = time.perf_counter(), _TINY.value
    results: dict[str, Any] = {"machine": machine(), "tiny": tiny, "skipped": [],
                               "many_epochs": many_epochs(tiny), "peaks": {}}

    def save() -> None:
        results["seconds"] = time.perf_counter() - started
        write_text_atomic(out / "results.json", json.dumps(results, indent=2) + "\n")
        write_text_atomic(out / "tables.md", tables(results))

    budget = Budget(_BUDGET.value, save)
    sections = {"peaks": lambda s, _: results["peaks"].update(
                    _attempt("peaks", budget, s, lambda: peaks(tiny)) or {}),
                "mnist": lambda s, rows: mnist(tiny, budget, s, rows),
                "cifar": lambda s, rows: cifar(tiny, budget, s, rows),
                "full_scale": lambda s, rows: scale(tiny, budget, s, rows),
                "many": lambda s, rows: many_runs(tiny, budget, s, rows)}
    try:
        for name in _SECTIONS.value:
            budget.start(name)
            results.setdefault(name, [])
            sections[name](results["skipped"], results[name])
            budget.end()
    except KeyboardInterrupt:  # `timeout -s INT`: keep and print what was measured
        results["interrupted"] = True
    save()
    print(tables(results), end="")
    if results.get("interrupted"):
        sys.exit("benchmarks.gpu: interrupted; results.json holds what was measured")


if __name__ == "__main__":
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.45")  # PyTorch shares the GPU
    app.run(main)
