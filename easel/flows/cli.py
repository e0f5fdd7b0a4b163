"""The `easel` command line. Each module of `easel.flows` registers its own sub-command.

A command module exposes `add_command(subparsers)`; the parser it adds sets `run`, a
function of the parsed arguments that returns the exit code (SPEC §3: 0 all work
succeeded, 1 some rows failed, 2 the invocation as a whole is invalid). Only the module
of the command being run is imported (the others would pull Lightning and more for
nothing); `easel --help` imports them all.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from easel.errors import InvalidInput

COMMAND_MODULES = {
    "bootstrap": "easel.flows.bootstrap",
    "dreambooth": "easel.flows.dreambooth",
    "eval": "easel.flows.evaluate",
    "priors": "easel.flows.priors",
    "quickstart": "easel.flows.quickstart",
    "sweep": "easel.flows.sweep",
}


def build_parser(commands: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for `commands` (default: all of them)."""
    parser = argparse.ArgumentParser(prog="easel", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in commands or COMMAND_MODULES:
        importlib.import_module(COMMAND_MODULES[name]).add_command(subparsers)
    return parser


def quiet_libraries() -> None:
    """Keep the terminal for easel's own progress and summary."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # the temporary local server starts slowly on a busy machine; Prefect's default is 20 s
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", category=FutureWarning)


def main(argv: list[str] | None = None) -> int:
    quiet_libraries()
    argv = sys.argv[1:] if argv is None else argv
    chosen = argv[:1] if argv and argv[0] in COMMAND_MODULES else None
    args = build_parser(chosen).parse_args(argv)
    try:
        return int(args.run(args))
    except InvalidInput as error:
        print(f"easel {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
