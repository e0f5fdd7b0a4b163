"""The `easel` command line. Each flow module registers its own sub-command.

A command module exposes `add_command(subparsers)`; the parser it adds sets `run`, a
function of the parsed arguments that returns the exit code (SPEC §3: 0 all work
succeeded, 1 some rows failed, 2 the invocation as a whole is invalid).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from easel.errors import InvalidInput

COMMAND_MODULES = [
    "easel.flows.quickstart",
    "easel.flows.sweep",
    "easel.flows.dreambooth",
    "easel.flows.bootstrap",
    "easel.flows.evaluate",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="easel", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_command(subparsers)
    return parser


def quiet_libraries() -> None:
    """Keep the terminal for easel's own progress and summary."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", category=FutureWarning)


def main(argv: list[str] | None = None) -> int:
    quiet_libraries()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except InvalidInput as error:
        print(f"easel {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
