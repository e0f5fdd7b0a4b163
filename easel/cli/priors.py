"""`easel priors`: the parameters from `--config` and the flags, then the class-priors
flow."""

from __future__ import annotations

import argparse
import sys

from easel.data import storage
from easel.data.config import load_parameters
from easel.flows.priors import PriorsParameters, class_priors_flow


def run_priors_command(args: argparse.Namespace) -> int:
    overrides = {
        "class_prompt": args.class_prompt, "num_images": args.num, "out": args.out,
        "model": args.model, "negative_prompt": args.negative_prompt,
        "show_progress": sys.stderr.isatty(),
    }  # fmt: skip
    params = load_parameters(PriorsParameters, args.config, overrides, {"num_images": "--num"})
    storage.check_output_folder(params.out, "out")
    priors = class_priors_flow(params)
    print(
        f"class priors:  {priors.folder}  ({len(priors.image_uris)} images, "
        f"{priors.generated_now} generated now)"
    )
    return 0
