"""What every binary shares: its help, flag parsing and turning user errors into one line and
exit 2."""

from __future__ import annotations

import inspect
import os
import sys
import textwrap
from typing import Callable, NoReturn, Sequence

import ml_collections
from absl import app, flags, logging

from scu_jax import parallel
from scu_jax.errors import CheckpointMismatchError, CheckpointReadError, CheckpointWriteError
from scu_jax.errors import ConfigError
from scu_jax.errors import DatasetUnavailableError, Interrupted, NonFiniteError
from scu_jax.runs import signals
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
    """Runs `body`; user errors become one line and exit 2; a diverged run, a failed save or
    another fault of the machine exit 1; SIGTERM or SIGINT 128 + its number (`runs/signals.py`:
    the run stopped at an epoch boundary and said what it saved)."""

    try:
        body()
    except USAGE_ERRORS as error:
        fail(program, error)
    except Interrupted as error:
        fail(program, error, code=128 + error.signal)
    except (NonFiniteError, CheckpointWriteError) as error:
        fail(program, error, code=1)
    except OSError as error:  # a fault of the machine (a full disk, a lost mount), not of the input
        fail(program, f"{type(error).__name__}: {error}", code=1)
    except KeyboardInterrupt:
        logging.warning("interrupted; the latest complete checkpoint is kept")
        fail(program, "interrupted", code=130)


HELP_FLAGS = ("--help", "-help", "-h", "--helpshort", "-helpshort", "-?")
FULL_HELP_FLAGS = ("--helpfull", "-helpfull")
_WIDTH = 96


def own_flags() -> list[flags.Flag]:
    """The flags scu-jax's modules defined in this process, in the order they were defined: a
    binary's module and this one's `define_*` helpers (absl names a `python -m` module by its
    path, `sys.argv[0]`). Other libraries' (absl, chex, Orbax) are defined in their own modules."""
    by_module = flags.FLAGS.flags_by_module_dict()
    return [flag for module, defined in by_module.items()
            if module.startswith("scu_jax.") or module == sys.argv[0] for flag in defined]


def _required(flag: flags.Flag) -> bool:
    # mark_flags_as_required registers this validator (absl's wording).
    return any("must have a value other than None" in getattr(validator, "message", "")
               for validator in getattr(flag, "validators", ()))


# What a string flag's value is, where its name does not say.
_METAVARS = {"workdir": "DIR", "init_workdir": "DIR", "reference_workdir": "DIR",
             "deployment": "DIR", "compilation_cache": "DIR", "output": "FILE", "ids": "FILE,...",
             "config": "FILE[:VARIANTS]", "shard": "i/n", "coordinator_address": "HOST:PORT",
             "request_id": "NAME"}


def _usage(flag: flags.Flag) -> str:
    if flag.flag_type() == "bool":
        return f"--[no]{flag.name}"
    if isinstance(flag.parser, flags.EnumParser):
        return f"--{flag.name}={{{'|'.join(flag.parser.enum_values)}}}"
    metavar = {"int": "INT", "float": "FLOAT", "comma separated list of strings": "A,B,..."}
    return f"--{flag.name}={_METAVARS.get(flag.name, metavar.get(flag.flag_type(), 'VALUE'))}"


def _help(flag: flags.Flag) -> str:
    text = " ".join(flag.help.split())
    if isinstance(flag.parser, flags.EnumParser):  # absl prefixes the values, shown above
        text = text.removeprefix(f"<{'|'.join(flag.parser.enum_values)}>: ")
    return text


def _default(flag: flags.Flag) -> str | None:
    if _required(flag):
        return "required"
    value = flag.default
    if value is None or (flag.name == "config" and not value):
        return None
    if isinstance(value, bool):
        return f"default: {str(value).lower()}"
    if isinstance(value, (list, tuple)):
        return f"default: {','.join(map(str, value))}"
    return f"default: {value!r}" if isinstance(value, str) else f"default: {value}"


def help_text(program: str, doc: str) -> str:
    """What `program --help` prints: the binary's docstring, then its own flags with their help
    and defaults (absl's, chex's and Orbax's flags are left to `--helpfull`)."""
    lines = [inspect.cleandoc(doc), "", "Flags:"]
    for flag in own_flags():
        default = _default(flag)
        lines.append(f"  {_usage(flag)}" + (f"  ({default})" if default else ""))
        lines.extend(textwrap.wrap(_help(flag), _WIDTH, initial_indent=" " * 6,
                                   subsequent_indent=" " * 6))
    lines += ["", f"Every flag, the libraries' too: {program} --helpfull"]
    return "\n".join(lines)


def _asked(argv: Sequence[str], names: Sequence[str]) -> bool:
    """Whether one of `names` is among the flags (before a `--`, which ends them)."""
    flags_part = argv[:argv.index("--")] if "--" in argv else argv
    return any(arg in names for arg in flags_part)


def entry(program: str, main: Callable[[], None], doc: str) -> Callable[[], None]:
    """A binary's console-script function: `--help` prints `help_text` and exits 0 (`--helpfull`
    adds every library's flags); otherwise parses the flags (an error is one line, exit 2),
    refuses stray positional arguments, then runs `main`."""

    def checked(argv: list[str]) -> None:
        if len(argv) > 1:
            fail(program, f"unexpected arguments: {' '.join(argv[1:])}")
        main()

    def run() -> None:
        if _asked(sys.argv[1:], HELP_FLAGS + FULL_HELP_FLAGS):
            print(help_text(program, doc))
            if _asked(sys.argv[1:], FULL_HELP_FLAGS):
                print("\nAll flags, by the module that defines them:\n")
                print(flags.FLAGS.get_help())
            sys.exit(0)
        signals.handle_signals(program)
        try:
            app.run(checked, flags_parser=flags_parser(program))
        except SystemExit as exit_:
            if exit_.code in (0, None):
                raise
            # A failure's one line is out. The checkpoint library's reads still in flight would
            # call back into its closed event loop at interpreter exit and print tracebacks after
            # that line: leave without the teardown (every file is closed or atomically written).
            sys.stdout.flush()
            sys.stderr.flush()
            logging.flush()
            os._exit(exit_.code if isinstance(exit_.code, int) else 1)

    return run
