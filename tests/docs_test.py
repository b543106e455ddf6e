"""The documentation cannot drift: every binary's --help, the generated pages (docs/cli.md,
docs/api.md) against scripts/docs.py, every API example, the README's and library.md's code,
every relative link and image, and every flag a documented command names."""

import doctest
import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_spec = importlib.util.spec_from_file_location("scu_docs", ROOT / "scripts" / "docs.py")
docs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(docs)
# absl's, chex's and Orbax's flags: what --help must leave to --helpfull.
OTHER_LIBRARIES_FLAGS = ("logtostderr", "only_check_args", "chex_n_cpu_devices",
                         "experimental_orbax_use_distributed_process_id", "test_tmpdir")


@pytest.fixture(scope="module")
def helps():
    return docs.every_help()


def _defined_flags(module: str) -> set[str]:
    """The flags a binary's module defines, read from its source (not from absl)."""
    source = (ROOT / (module.replace(".", "/") + ".py")).read_text()
    names = set(re.findall(r"DEFINE_\w+\(\s*\"(\w+)\"", source))
    if "define_overwrite_flag()" in source:
        names.add("overwrite")
    if "define_distributed_flags()" in source:
        names |= {"coordinator_address", "num_processes", "process_id"}
    return names


def _help_flags(text: str) -> set[str]:
    """The flags a --help text lists under `Flags:`."""
    listing = text.split("\nFlags:\n", 1)[1]
    return set(re.findall(r"^  --(?:\[no\])?([a-z_]+)", listing, re.M))


def test_every_binary_help_is_its_docstring_and_its_own_flags(helps):
    import tomllib
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert list(helps) == list(scripts) and len(helps) == 7
    for name, module in docs.binaries():
        text = helps[name]
        source = (ROOT / (module.replace(".", "/") + ".py")).read_text()
        first_line = re.search(r'^"""(.*)$', source, re.M).group(1)
        assert text.startswith(first_line) and first_line.startswith(f"`{name}`: "), name
        assert "\nUsage:\n" in text and "\nExample" in text, name
        assert _help_flags(text) == _defined_flags(module), name
        assert not any(flag in text for flag in OTHER_LIBRARIES_FLAGS), name
        assert text.rstrip().endswith(f"{name} --helpfull"), name


def test_help_exits_0_in_every_spelling_and_helpfull_adds_the_libraries_flags():
    short = docs.help_of("scu_jax.binaries.report", "-h")
    full = docs.help_of("scu_jax.binaries.report", "--helpfull")
    assert short.returncode == 0 and full.returncode == 0
    assert short.stdout.startswith("`scu-report`: ")
    assert full.stdout.startswith(short.stdout.rstrip("\n"))
    for flag in OTHER_LIBRARIES_FLAGS:
        assert flag not in short.stdout and flag in full.stdout, flag
    # After `--`, --help is no flag: the binary parses it as an argument and refuses it.
    after = docs.help_of("scu_jax.binaries.report", "--workdir=x", "--", "--help")
    assert after.returncode == 2 and "unexpected arguments: --help" in after.stderr


def test_cli_page_is_every_help(helps):
    assert (ROOT / "docs" / "cli.md").read_text() == docs.render_cli(helps), \
        "docs/cli.md is stale: run python scripts/docs.py"


def test_api_page_is_the_docstrings():
    assert (ROOT / "docs" / "api.md").read_text() == docs.render_api(), \
        "docs/api.md is stale: run python scripts/docs.py"


def test_every_public_name_has_a_summary_and_an_example_that_runs():
    import scu_jax
    names = {name for name, _ in docs.examples()}
    assert names == set(scu_jax.__all__)
    for name, _, doc in docs.public_names():
        summary, _, example = docs.docstring_parts(doc)
        assert summary and example.startswith(">>>"), name
    globs = {}
    exec(docs.SETUP, globs)  # pylint: disable=exec-used
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    failed = []
    for name, test in docs.examples():
        test.globs = dict(globs)
        if runner.run(test, out=lambda text: None).failed:
            failed.append(name)
    assert not failed, f"examples that fail (python -m doctest-style run of scripts/docs.py): {failed}"


def _fenced_blocks(path: pathlib.Path, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", path.read_text(), re.M | re.S)


def test_the_readme_and_library_python_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = _fenced_blocks(ROOT / "README.md", "python") + _fenced_blocks(ROOT / "docs" / "library.md",
                                                                       "python")
    assert len(blocks) == 2
    for block in blocks:
        exec(compile(block, "<docs>", "exec"), {"__name__": "__docs__"})  # pylint: disable=exec-used


def test_the_readme_smoke_commands_run(tmp_path):
    """Every fenced bash block of README.md that names a smoke config, run as written from a
    directory that holds the project's configs and .venv."""
    blocks = [block for block in _fenced_blocks(ROOT / "README.md", "bash") if ":smoke" in block]
    assert blocks
    for name in ("configs", ".venv"):
        (tmp_path / name).symlink_to(ROOT / name)
    environment = {**os.environ, "JAX_PLATFORMS": "cpu"}
    for block in blocks:
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path,
                                capture_output=True, text=True, env=environment, timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "runs" / "smoke" / "scu" / "results.json").exists()
    assert "backdoor_accuracy" in result.stdout  # scu-evaluate printed the metrics


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: pathlib.Path) -> set[str]:
    seen, anchors = {}, set()
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
    for heading in re.findall(r"^#{1,6} (.*)$", text, re.M):
        slug = _slug(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def test_every_relative_link_image_and_anchor_exists():
    checked = 0
    for page in PAGES:
        text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            path_part, _, anchor = target.partition("#")
            resolved = (page.parent / path_part).resolve() if path_part else page
            assert resolved.exists(), f"{page.relative_to(ROOT)}: {target} does not exist"
            if anchor:
                assert anchor in _anchors(resolved), f"{page.relative_to(ROOT)}: no anchor {target}"
            checked += 1
    assert checked > 100
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for image in re.findall(r"(docs/[\w\-]+\.png)", readme):
        assert (ROOT / image).exists(), image
    # Every docs page is reachable from the README's table.
    for page in (ROOT / "docs").glob("*.md"):
        assert f"(docs/{page.name})" in readme, f"README links no docs/{page.name}"


def _commands(page: pathlib.Path) -> list[tuple[str, str]]:
    """(binary, its command line) of every scu-* command in the page's code."""
    text = page.read_text()
    code = re.findall(r"^```(?:bash|text)?\n(.*?)^```", text, re.M | re.S)
    code += re.findall(r"`([^`\n]*scu-[a-z]+ --[^`\n]*)`", text)
    commands = []
    for block in code:
        block = re.sub(r"\\\n\s*", " ", block)
        for line in block.splitlines():
            for match in re.finditer(r"(?:^|[\s=;(|&])(?:\.venv/bin/)?(scu-[a-z]+)(\s.*)?$", line):
                commands.append((match.group(1), match.group(2) or ""))
    return commands


def _config_paths(config, prefix=""):
    paths = set()
    for key, value in config.items():
        path = f"{prefix}{key}"
        paths.add(path)
        if hasattr(value, "items"):
            paths |= _config_paths(value, path + ".")
    return paths


def test_every_flag_a_documented_command_names_is_real(helps):
    from scu_jax import presets
    from scu_jax.config import METHODS
    system_fields = _config_paths(presets.cifar_config("cifar100")) | _config_paths(
        presets.preset("mnist5k"))
    spec = importlib.util.spec_from_file_location("edr", ROOT / "configs/experiments/edr_sweep.py")
    edr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(edr)
    experiment_fields = _config_paths(edr.get_config("mnist5k"))
    own = {name: _help_flags(text) | {"help", "helpfull"} for name, text in helps.items()}
    checked = 0
    for page in PAGES:
        for binary, line in _commands(page):
            assert binary in own, f"{page.name}: unknown binary {binary}"
            for flag in re.findall(r"(?<![\w-])--([a-zA-Z_][\w.]*)", line.split(" # ")[0]):
                where = f"{page.relative_to(ROOT)}: {binary} --{flag}"
                if not flag.startswith("config."):
                    name = flag[2:] if flag.startswith("no") and flag[2:] in own[binary] else flag
                    assert name in own[binary], f"{where} is no flag of {binary}"
                elif not re.search(r"\.[A-Z]", "." + flag):  # FIELD, AXIS: placeholders
                    field = re.sub(r"per_method\.(%s)\." % "|".join(METHODS), "", flag[7:])
                    fields = experiment_fields if binary == "scu-experiment" else system_fields
                    if binary == "scu-experiment" and field.startswith("bases."):
                        field = ".".join(field.split(".")[2:])
                        fields = system_fields
                    assert field in fields, f"{where}: no config field {field}"
                checked += 1
    assert checked > 150


def test_every_test_the_docs_name_exists():
    """A guarantee names the tests that check it: each must be a test function of that file."""
    checked = 0
    for page in PAGES:
        current = None
        for span in re.findall(r"`([^`\n]+)`", page.read_text()):
            named = re.fullmatch(r"(tests/\w+\.py)::(\w+)(?:\[.*\])?", span)
            relative = re.fullmatch(r"::(\w+)(?:\[.*\])?", span)
            if named:
                current, name = named.groups()
            elif relative and current:
                name = relative.group(1)
            else:
                continue
            source = (ROOT / current).read_text()
            assert re.search(rf"^def {name}\(", source, re.M), f"{page.name}: no {current}::{name}"
            checked += 1
    assert checked > 40
