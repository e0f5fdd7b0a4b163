"""`easel sweep` once its manifest is checked (`cli/sweep_command.py`): the parameters from
`--config` and the flags, the checks of the invocation as a whole (exit 2, nothing
generated), the flow, and the summary on the terminal."""

from __future__ import annotations

import argparse
import sys

from easel import tracking
from easel.data import manifest, storage
from easel.data.config import load_parameters
from easel.data.results import SweepSummary
from easel.errors import InvalidInput
from easel.flows.sweep import sweep_flow
from easel.flows.sweep_parameters import SweepParameters
from easel.models.engine.references import resolve_model_reference
from easel.models.engine.sweep import unknown_name_hint
from easel.orchestration.run_context import PLACEHOLDER


def run_sweep_command(args: argparse.Namespace) -> int:
    overrides = {
        "manifest": args.manifest, "out": args.out, "model": args.model,
        "batch_size": args.batch_size, "shards": args.shards, "input_roots": args.input_roots,
        "trust_pickle": args.trust_pickle, "show_progress": sys.stderr.isatty(),
    }  # fmt: skip
    params = load_parameters(SweepParameters, args.config, overrides,
                             {"input_roots": "--input-root"})  # fmt: skip
    summary = run_sweep(params)
    print_summary(summary)
    return 1 if summary.rows_failed else 0


def run_sweep(params: SweepParameters) -> SweepSummary:
    """Check the manifest as a whole first (exit 2, no flow run, nothing generated), then run
    the flow, which validates each row (a bad row fails alone)."""
    checked = manifest.check_manifest(params.manifest)
    if not PLACEHOLDER.search(params.out):  # else known once the flow run is
        storage.check_output_folder(params.out, "out")
    if manifest.uses_default(checked.table, "model"):  # a default no row can use: refused whole
        try:
            resolve_model_reference(params.inputs().spec(params.model), params.trust_pickle)
        except InvalidInput as error:
            hint = unknown_name_hint(params.model, params.models)
            raise InvalidInput(f"`model` (rows without their own): {error}{hint}") from None
    return sweep_flow(params)


def print_summary(summary: SweepSummary) -> None:
    print(
        f"images:        {summary.out}/images  ({summary.images_ok} ok, "
        f"{summary.images_failed} failed, {summary.generated_now} generated now)"
    )
    if summary.images_nsfw:
        print(f"safety:        {summary.images_nsfw} images flagged by the model's safety "
              "checker, written black (`nsfw_content_detected`)")  # fmt: skip
    print(f"results:       {summary.results_uri}")
    if summary.contact_sheet_uri:
        print(f"contact sheet: {summary.contact_sheet_uri}")
    print(f"mlflow runs:   {tracking.tracking_uri()}")
    if summary.failures:
        print(
            f"failed: {summary.images_failed} images in {summary.rows_failed} rows (the first "
            f"{len(summary.failures)} below; every one is in results.parquet):", file=sys.stderr,
        )  # fmt: skip
        for failure in summary.failures:
            print(f"  {failure}", file=sys.stderr)
