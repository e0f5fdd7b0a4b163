"""`easel eval`: the parameters from `--config` and the flags, checked before any work
(exit 2), then the eval flow; the report as a table on the terminal."""

from __future__ import annotations

import argparse
import os

from easel import tracking
from easel.data import storage
from easel.data.config import load_parameters
from easel.errors import InvalidInput
from easel.flows.evaluate import SUBJECT_FIELDS, EvalParameters, eval_flow
from easel.models.engine.references import resolve_model_reference


def format_table(rows: list[dict]) -> str:
    """The rows as an aligned text table; numbers with 3 decimals, missing cells blank."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    cell = lambda v: f"{v:.3f}" if isinstance(v, float) else ("" if v is None else str(v))
    widths = {c: max(len(c), *(len(cell(r.get(c))) for r in rows)) for c in columns}
    lines = [
        "  ".join(c.ljust(widths[c]) for c in columns),
        "  ".join("-" * widths[c] for c in columns),
    ]
    lines += ["  ".join(cell(r.get(c)).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def run_eval_command(args: argparse.Namespace) -> int:
    keys = (
        "model",
        "judge",
        "out",
        "suites",
        "guidance_scale",
        "num_inference_steps",
        "seed",
        "quick",
        *SUBJECT_FIELDS,
        "subject_images",
    )
    flags = {"num_inference_steps": "--steps", "suites": "--suite"}
    params = load_parameters(EvalParameters, args.config, {k: getattr(args, k) for k in keys},
                             flags)  # fmt: skip
    if params.judge is not None and not os.path.exists(os.path.join(params.judge, "config.json")):
        raise InvalidInput(f"`--judge` {params.judge!r} is not a judge folder (no config.json)")
    storage.check_output_folder(params.out, "out")
    resolve_model_reference(params.model)  # a bad reference fails here: exit 2, nothing generated
    if params.subject():
        try:
            resolve_model_reference(params.base_model)
        except InvalidInput as error:
            raise InvalidInput(f"`base_model`: {error}") from None
    report = eval_flow(params)
    print(format_table(report["rows"]))
    print(f"report:      {report['report_path']}")
    print(f"mlflow runs: {tracking.tracking_uri()} (run {report['mlflow_run_id']})")
    return 0
