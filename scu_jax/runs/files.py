"""Files of a run directory: checking it, writing results atomically, removing a run's outputs.

A failed or interrupted run never leaves a half-written results file: every JSON file is written
to a temporary file beside it and renamed over it.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import secrets
import shutil
from typing import Any, Iterator

RESULTS_FILE = "results.json"


def check_workdir(path: str | os.PathLike, flag: str = "--workdir") -> None:
    """Raises `ValueError` unless `path` is a directory, or could be created as one, writable.

    Creates nothing: a run checks its output directory before any work, so a path that is a file,
    or under a file, or in a directory it may not write, is refused in one line.
    """
    path = pathlib.Path(path).absolute()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag}={path} exists and is not a directory")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{flag}={path} cannot be created: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{flag}={path} cannot be {'written' if existing == path else 'created'}: "
                         f"no write permission on {existing}")


def remove_run_outputs(workdir: str | os.PathLike, names: tuple[str, ...]) -> None:
    """Deletes the named entries of a run directory (for `--overwrite`), and nothing else in it."""
    root = pathlib.Path(workdir)
    for name in names:
        path = root / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[pathlib.Path]:
    """Yields a temporary path beside `path` (same suffix, so writers that go by the extension
    work); once the block ends without an error the file is flushed to disk and renamed over
    `path`, otherwise it is removed and `path` is left as it was."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkstemp: its files are private (0600), and results, figures and reports are
    # read by others; created here with 0666 & ~umask, like any file the user writes.
    tmp_path = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}")
    os.close(os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp_path
        with open(tmp_path, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Writes `text` to `path` all at once or not at all (see `atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, payload: Any) -> None:
    """Writes `payload` as indented, key-sorted JSON to `path` all at once or not at all."""
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")
