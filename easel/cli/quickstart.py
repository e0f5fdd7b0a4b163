"""`easel quickstart`: the main job end to end on the embedded model.

1. DreamBooth on tiny-shapes: class priors (through the sweep engine, cached by content), a
   short Lightning run with checkpoints, the exported pipeline;
2. a sweep over a sample manifest: text2img with negative prompts, several guidance scales
   and schedulers, img2img, inpainting, rows that use the new subject token on the
   fine-tuned model, and Kandinsky 2.2 rows (text2img, img2img, image fusion of a prompt
   and an image, and of an image and two texts by weight) on `tiny-shapes-k22`. Everything
   is tracked in MLflow.
"""

from __future__ import annotations

import argparse
import sys

from easel import tracking
from easel.cli.sweep import print_summary, run_sweep
from easel.data import storage
from easel.data.samples import (
    EDIT_ROWS,
    KANDINSKY_ROWS,
    SAMPLE_ROWS,
    subject_rows,
    write_sample_manifest,
)
from easel.flows.sweep_parameters import SweepParameters

# The dreambooth-tiny preset (its subject: bench/HISTORY.md, "The quickstart's DreamBooth
# subject"), shortened: fewer class images, no validation sweep (the sweep shows it).
QUICK_DREAMBOOTH = {
    "checkpoints.every_n_steps": 100,
    "prior_preservation.num_class_images": 96,
    "validation.prompts": [],
}


def run_quickstart(args: argparse.Namespace) -> int:
    rows = SAMPLE_ROWS + EDIT_ROWS + KANDINSKY_ROWS
    args.out = storage.absolute(args.out)  # where it says its outputs are: from anywhere
    storage.check_output_folder(args.out, "--out")
    if not args.skip_dreambooth:
        from easel.cli.dreambooth import dreambooth_flow, tiny_shapes_config

        config = tiny_shapes_config(storage.join(args.out, "dreambooth"), QUICK_DREAMBOOTH)
        result = dreambooth_flow(config)
        print(f"dreambooth:      {result.pipeline}  (identifier {result.identifier!r})")
        rows = rows + subject_rows(result.pipeline, result.identifier)
    manifest = write_sample_manifest(storage.join(args.out, "inputs", "manifest.parquet"), rows)
    params = SweepParameters(
        manifest=manifest, out=storage.join(args.out, "sweep"), model="tiny-shapes",
        show_progress=sys.stderr.isatty(), experiment="easel-quickstart",
    )  # fmt: skip
    summary = run_sweep(params)
    print(f"sample manifest: {manifest}")
    print_summary(summary)
    print(f"see the runs:    mlflow ui --backend-store-uri {tracking.tracking_uri()}")
    return 1 if summary.rows_failed else 0
