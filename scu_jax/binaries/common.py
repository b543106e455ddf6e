"""What every binary shares: flag parsing and turning user errors into one line and exit 2."""

from __future__ import annotations

import sys
from typing import Callable, NoReturn, Sequence

import ml_collections
from absl import app, flags, logging

from scu_jax import parallel
from scu_jax.errors import CheckpointMismatchError, CheckpointReadError
from scu_jax.errors import ConfigError
from scu_jax.errors import DatasetUnavailableError, NonFiniteError
from scu_jax.runs.logs import quiet_library_logs

# Bad input: the user can fix it by changing a flag, a config field or a path.
USAGE_ERRORS = (ConfigError, CheckpointMismatchError, CheckpointReadError, DatasetUnavailableError,
                ValueError, FileNotFoundError, FileExistsError)
EXIT_USAGE = 2


def define_overwrite_flag():
    """`--overwrite`, which every binary that writes a workdir shares."""
    return flags.DEFINE_boolean(
        "overwrite", False, "Replace a run of another configuration found in --workdir (its "
        "checkpoints and results only) instead of refusing.")


def define_distributed_flags():
    """The flags `jax.distributed.initialize` needs, for a run over several processes (hosts).

    Start one process per host with the same command, the same `--coordinator_address` (process
    0's host and a free port) and `--num_processes`, and its own `--process_id`; set
    `--config.parallel.devices=0` so the mesh spans every device of every process.
    """
    return (
        flags.DEFINE_string("coordinator_address", None,
                            "Multi-host: HOST:PORT of process 0, which coordinates the run."),
        flags.DEFINE_integer("num_processes", None, "Multi-host: how many processes take part."),
        flags.DEFINE_integer("process_id", None, "Multi-host: this process's index, 0 .. "
                             "num_processes - 1."),
    )


def initialize_distributed(program: str, holders, config: "ml_collections.ConfigDict") -> None:
    """Joins the multi-process run the distributed flags describe (a bad set: one line, exit 2)."""
    coordinator, processes, process_id = (holder.value for holder in holders)
    try:
        parallel.initialize_distributed(coordinator, processes, process_id,
                                        config.parallel.devices)
    except ValueError as error:
        fail(program, error)


def fail(program: str, message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Prints `program: error: message` as one line on stderr and exits."""
    one_line = " ".join(str(message).split())
    print(f"{program}: error: {one_line}", file=sys.stderr, flush=True)
    sys.exit(code)


def flags_parser(program: str) -> Callable[[Sequence[str]], list[str]]:
    """An `app.run` flags parser that reports any flag or config-file error in one line."""

    def parse(argv: Sequence[str]) -> list[str]:
        quiet_library_logs()
        try:
            return flags.FLAGS(argv)
        except flags.Error as error:
            message = str(error)
            if "Traceback (most recent call last)" in message:
                # A config file raised inside config_flags: keep the flag and the exception line.
                lines = [line.strip() for line in message.splitlines() if line.strip()]
                message = f"{message.split(':', 1)[0]}: {lines[-1]}"
            fail(program, message)
        except Exception as error:  # A config file that raises while loading.
            fail(program, f"cannot load the config: {type(error).__name__}: {error}")

    return parse


def config_or_fail(program: str, holder) -> "ml_collections.ConfigDict":
    """The parsed `--config`; a file that is missing or raises while loading gives one line."""
    try:
        config = holder.value
        config.keys()  # config_flags defers load errors to the first access.
    except Exception as error:  # pylint: disable=broad-except
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        fail(program, f"cannot load --config: {lines[-1] if lines else type(error).__name__}")
    return config


def run_guarded(program: str, body: Callable[[], None]) -> None:
    """Runs `body`; user errors become one line and exit 2, a diverged run exit 1."""

    try:
        body()
    except USAGE_ERRORS as error:
        fail(program, error)
    except NonFiniteError as error:
        fail(program, error, code=1)
    except KeyboardInterrupt:
        logging.warning("interrupted; the latest complete checkpoint is kept")
        fail(program, "interrupted", code=130)


def entry(program: str, main: Callable[[], None]) -> Callable[[], None]:
    """A binary's console-script function: parses the flags (an error is one line, exit 2),
    refuses stray positional arguments, then runs `main`."""

    def checked(argv: list[str]) -> None:
        if len(argv) > 1:
            fail(program, f"unexpected arguments: {' '.join(argv[1:])}")
        main()

    return lambda: app.run(checked, flags_parser=flags_parser(program))
