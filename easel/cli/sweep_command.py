"""`easel sweep`, in two steps: the manifest checked as a whole before Prefect, torch and
diffusers are imported (an invalid manifest exits 2 within about a second, not the
seconds those imports take), then the sweep (`cli/sweep.run_sweep_command`), which reuses
that read of the manifest."""

from __future__ import annotations

import argparse


def check_then_sweep(args: argparse.Namespace) -> int:
    from easel.data import manifest

    manifest.check_manifest(args.manifest)  # InvalidInput: exit 2, one line
    from easel import startup

    with startup.importing():
        from easel.cli.sweep import run_sweep_command
    return run_sweep_command(args)
