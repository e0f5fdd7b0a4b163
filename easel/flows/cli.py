"""The `easel` command line. Each module of `easel.flows` registers its own sub-command.

A command module exposes `add_command(subparsers)`; the parser it adds sets `run`, a
function of the parsed arguments that returns the exit code (SPEC §3: 0 all work
succeeded, 1 some rows failed, 2 the invocation as a whole is invalid).
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import warnings

from easel.errors import InvalidInput


def command_modules() -> list[str]:
    """Every module of `easel.flows` that registers a command (defines `add_command`)."""
    import easel.flows

    names = [info.name for info in pkgutil.iter_modules(easel.flows.__path__)]
    return [f"easel.flows.{name}" for name in sorted(names) if name not in ("cli", "config")]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="easel", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in command_modules():
        module = importlib.import_module(name)
        if hasattr(module, "add_command"):
            module.add_command(subparsers)
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
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except InvalidInput as error:
        print(f"easel {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
