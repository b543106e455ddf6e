"""The package's layers: imports point down only, no cycle, and the library imports alone.

library (channels, losses, models, data, methods, engine, evaluation, mi, parallel, errors)
  < config (config, presets) < runs (one run in a workdir) < experiments < binaries.
"""

import ast
import pathlib
import subprocess
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "scu_jax"
LAYERS = {"config": 1, "presets": 1, "runs": 2, "experiments": 3, "binaries": 4}


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.get(parts[1], 0) if len(parts) > 1 else 0  # the root re-exports the library


def _imports() -> dict[str, set[str]]:
    """{module: the scu_jax modules it imports, anywhere in its body}."""
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module, found = _module_name(path), set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names if alias.name.startswith("scu_jax"))
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("scu_jax"):
                for alias in node.names:  # `from scu_jax.runs import train` names a module
                    candidate = f"{node.module}.{alias.name}"
                    is_module = (PACKAGE.parent / candidate.replace(".", "/")).with_suffix(".py")
                    is_package = PACKAGE.parent / candidate.replace(".", "/") / "__init__.py"
                    found.add(candidate if is_module.exists() or is_package.exists()
                              else node.module)
        graph[module] = found - {module}
    return graph


def test_no_import_points_up():
    upward = [f"{module} ({_layer(module)}) imports {target} ({_layer(target)})"
              for module, targets in _imports().items() for target in targets
              if _layer(target) > _layer(module)]
    assert not upward, upward


def test_the_library_never_reads_the_config():
    graph = _imports()
    library = [module for module in graph if _layer(module) == 0]
    assert {"scu_jax.engine.loop", "scu_jax.methods.scu", "scu_jax.evaluation"} <= set(library)
    readers = [m for m in library if any(t.split(".")[1:2] == ["config"] for t in graph[m])]
    assert not readers, readers


_WRITERS = {"write_text", "write_bytes", "savez", "savez_compressed", "mkdir", "unlink", "rmtree",
            "makedirs", "os.replace", "os.rename", "json.dump", "pickle.dump", "np.save"}


def test_the_library_reads_no_config_and_writes_no_file():
    """Library modules take explicit values (no ConfigDict) and leave files to the layers above."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        if _layer(module) != 0:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""])
                found += [f"{module} imports {n}" for n in names if n.startswith("ml_collections")]
            elif isinstance(node, ast.Call):
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                owner = getattr(func.value, "id", "") if isinstance(func, ast.Attribute) else ""
                if called in _WRITERS or f"{owner}.{called}" in _WRITERS:
                    found.append(f"{module}:{node.lineno} calls {called}")
                if called == "open" and any(isinstance(a, ast.Constant) and isinstance(a.value, str)
                                            and set(a.value) & set("wax") for a in node.args[1:]):
                    found.append(f"{module}:{node.lineno} opens a file for writing")
    assert not found, found


def test_no_import_cycle():
    graph = _imports()
    # The root package is imported implicitly by everything; its own imports are tested above.
    graph = {m: {t for t in targets if t != "scu_jax"} for m, targets in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(module, path):
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    # A package's __init__ importing its own submodules is not a cycle of behaviour.
    real = [c for c in cycles if not all(b.startswith(a + ".") or a.startswith(b + ".")
                                         for a, b in zip(c, c[1:]))]
    assert not real, real


@pytest.mark.parametrize("module", ["scu_jax", "scu_jax.engine", "scu_jax.methods",
                                    "scu_jax.evaluation", "scu_jax.mi"])
def test_a_library_module_imports_alone(module):
    """In a fresh process the library loads without the config, the runs, the experiments, the
    binaries or matplotlib."""
    code = (f"import sys, {module}\n"
            "print(sorted(m for m in sys.modules if m.startswith(('scu_jax.config', "
            "'scu_jax.presets', 'scu_jax.runs', 'scu_jax.experiments', 'scu_jax.binaries', "
            "'matplotlib', 'tensorboardX'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"},
                            cwd=PACKAGE.parent)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]", result.stdout


def test_every_module_is_short():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long
