"""`easel quickstart`: the main job end to end on the embedded model."""

from __future__ import annotations

import argparse
import sys

from easel.data import storage
from easel.data.samples import write_sample_manifest
from easel.flows.sweep import SweepParameters, print_summary, run_sweep


def add_command(subparsers) -> None:
    parser = subparsers.add_parser("quickstart", help="run the main job on the embedded model")
    parser.add_argument("--out", default="easel-out", help="output folder (default easel-out)")
    parser.set_defaults(run=run_quickstart)


def run_quickstart(args: argparse.Namespace) -> int:
    manifest = write_sample_manifest(storage.join(args.out, "inputs", "manifest.parquet"))
    params = SweepParameters(
        manifest=manifest, out=storage.join(args.out, "sweep"), model="tiny-shapes",
        show_progress=sys.stderr.isatty(), experiment="easel-quickstart",
    )  # fmt: skip
    summary = run_sweep(params)
    print(f"sample manifest: {manifest}")
    print_summary(summary)
    return 1 if summary.rows_failed else 0
