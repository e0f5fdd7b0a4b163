"""The `easel` command line.

`easel.cli.commands` defines every command's parser (light: `--help` imports no model
library); the parser sets `run`, the `module:function` that runs the command, imported only
once it is chosen. The function returns the exit code (0 or 1); an error it raises
becomes one line on stderr and its code (`easel.errors.exit_code`), its traceback only
with `--debug`.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import logging
import os
import sys
import traceback
import warnings

from easel import errors, servers, startup, watchdog
from easel.cli.commands import add_commands
from easel.tracking import tracking_uri


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command."""
    parser = argparse.ArgumentParser(prog="easel", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an error, not one line"
    )
    parser.set_defaults(tracked=True)  # the command talks to MLflow (not `automations`)
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_commands(subparsers)
    for command in subparsers.choices.values():  # also after the command: `easel sweep --debug`
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help=argparse.SUPPRESS)  # fmt: skip
    return parser


DESCRIPTION = (
    "Diffusion image work as Prefect batch pipelines tracked in MLflow: prompt sweeps over "
    "Parquet manifests, class priors, DreamBooth. Exit codes: 0 done, 1 some rows failed, "
    "2 invalid invocation, config or manifest, 3 infrastructure (a store, the tracking or "
    "the Prefect server unreachable, a disk full), 130 interrupted."
)


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("easel")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def command_function(run: str):
    """The function `module:function` names (its module imported now)."""
    module, _, function = run.partition(":")
    return getattr(importlib.import_module(module), function)


def quiet_libraries() -> None:
    """Keep the terminal for easel's own progress and summary."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # the temporary local server starts slowly on a busy machine; Prefect's default is 20 s
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", category=FutureWarning)


def main(argv: list[str] | None = None) -> int:
    """The `easel` command; `argv` given (a test, a script): in this process, unwatched."""
    quiet_libraries()
    if argv is not None:
        return run(argv)
    watchdog.watch()  # the command itself: nothing it starts may outlive it (kill -9)
    startup.begin()
    try:
        return run(sys.argv[1:])
    finally:  # however it ends (argparse's exit included), it was not killed
        watchdog.disarm()
        startup.before_exit()


def run(argv: list[str]) -> int:
    """Parse `argv`, run the command, turn its end into the exit code."""
    args = build_parser().parse_args(argv)
    try:
        if args.tracked:  # an unreachable server: one line now, not minutes of retries
            servers.check_servers(tracking_uri())
        with startup.importing():
            function = command_function(args.run)
        if not args.debug:
            console_without_tracebacks()
        return int(function(args))
    except (Exception, KeyboardInterrupt) as error:
        return report(args, error)


def console_without_tracebacks() -> None:
    """Prefect's console log of a failed task or flow run keeps its line and loses its
    traceback (the command's own line says what failed; `--debug` keeps them). Set on the
    handler's class: Prefect makes new handlers when its temporary server starts."""
    from prefect.logging.handlers import PrefectConsoleHandler

    if not getattr(PrefectConsoleHandler.format, "without_traceback", False):
        PrefectConsoleHandler.format = without_traceback(PrefectConsoleHandler.format)


def without_traceback(format_record):
    """`format_record(handler, record)` given a copy of the record without its traceback
    (the record itself is shared: Prefect's API log keeps the traceback)."""

    def format(handler: logging.Handler, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text or record.stack_info:
            record = copy.copy(record)
            record.exc_info = record.exc_text = record.stack_info = None
        return format_record(handler, record)

    format.without_traceback = True
    return format


def report(args: argparse.Namespace, error: BaseException) -> int:
    """One line on stderr for `error` (its traceback too with `--debug`); its exit code."""
    code = errors.exit_code(error)
    if args.debug:
        traceback.print_exception(error, file=sys.stderr)
    if code == errors.INTERRUPTED:  # ^C: what is done stays done; a rerun does the rest
        print(f"easel {args.command}: interrupted", file=sys.stderr)
    elif code is None:  # not an error easel words: a bug, or a library's own failure
        hint = "" if args.debug else " (--debug shows the traceback)"
        print(f"easel {args.command}: error: {type(error).__name__}: "
              f"{errors.describe(error)}{hint}", file=sys.stderr)  # fmt: skip
    else:
        print(f"easel {args.command}: error: {errors.describe(error)}", file=sys.stderr)
    return errors.ROWS_FAILED if code is None else code
