"""`easel bootstrap`: the parameters of the chosen model's recipe from `--config` and the
flags, then its flow."""

from __future__ import annotations

import argparse
import sys

from easel import tracking
from easel.data.config import load_parameters
from easel.flows.bootstrap import (
    BootstrapK22InpaintParameters,
    BootstrapK22Parameters,
    BootstrapParameters,
    bootstrap_flow,
    bootstrap_k22_flow,
    bootstrap_k22_inpaint_flow,
)

FLOWS = {  # `easel bootstrap --model NAME`: its flow and parameters
    "tiny-shapes": (bootstrap_flow, BootstrapParameters),
    "tiny-shapes-k22": (bootstrap_k22_flow, BootstrapK22Parameters),
    "tiny-shapes-k22-inpaint": (bootstrap_k22_inpaint_flow, BootstrapK22InpaintParameters),
}


def run_bootstrap_command(args: argparse.Namespace) -> int:
    overrides = {
        "out": args.out,
        "work_dir": args.work_dir,
        "seed": args.seed,
        "show_progress": sys.stderr.isatty(),
    }
    bootstrap, parameters = FLOWS[args.model]
    result = bootstrap(load_parameters(parameters, args.config, overrides))
    for name in ("judge", "model", "samples"):
        if name in result:
            print(f"{name + ':':12} {result[name]}")
    print(f"mlflow runs: {tracking.tracking_uri()} (run {result['mlflow_run_id']})")
    return 0
