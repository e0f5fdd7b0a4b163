"""`easel eval`: the offline quality report of a shapes-world model (SPEC §8).

Each suite of `easel.models.evaluation.EVAL_SUITES` runs as one task; the report is a table
on the terminal, `report.json` in `--out`, and an MLflow run with every metric and the
suites' sample grids."""

from __future__ import annotations

import argparse
import os
from dataclasses import replace

from prefect import flow
from pydantic import BaseModel, ConfigDict, Field, field_validator

from easel import tracking
from easel.flows.config import load_parameters
from easel.models import evaluation

QUICK = {
    "adherence_images": 16,
    "guidance_images": 8,
    "negative_images": 8,
    "diversity_prompts": 2,
    "diversity_seeds": 3,
    "judge_images": 100,
}


class EvalParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field("tiny-shapes", description="model reference (SPEC §4)")
    judge: str | None = Field(None, description="judge folder (default: the committed judge)")
    out: str = Field("easel-out/eval", description="folder for report.json and sample grids")
    suites: list[str] = Field(default_factory=lambda: list(evaluation.EVAL_SUITES))
    guidance_scale: float = Field(evaluation.EvalSettings.guidance_scale, ge=0)
    num_inference_steps: int = Field(evaluation.EvalSettings.num_inference_steps, ge=1, le=500)
    seed: int = 0
    quick: bool = Field(False, description="small samples: a smoke check, not a measurement")
    experiment: str = "easel-eval"

    @field_validator("suites")
    @classmethod
    def _known_suites(cls, suites: list[str]) -> list[str]:
        unknown = [s for s in suites if s not in evaluation.EVAL_SUITES]
        if unknown:
            raise ValueError(f"unknown suites {unknown}; known: {list(evaluation.EVAL_SUITES)}")
        return suites

    def settings(self) -> evaluation.EvalSettings:
        settings = evaluation.EvalSettings(
            guidance_scale=self.guidance_scale,
            num_inference_steps=self.num_inference_steps,
            seed=self.seed,
        )
        return replace(settings, **QUICK) if self.quick else settings


@flow(name="eval")
def eval_flow(params: EvalParameters) -> dict:
    """Resolve the model, run each suite as a task, write and log the report."""
    import mlflow

    from easel.models.references import resolve_model_reference
    from easel.tasks.tiny_shapes import eval_suite_task, write_report_task

    resolved = resolve_model_reference(params.model)
    settings = params.settings()
    tracking.configure_mlflow()
    mlflow.set_experiment(params.experiment)
    with mlflow.start_run(run_name=f"eval {params.model}") as run:
        mlflow.log_params(
            {
                "model": params.model,
                "model_digest": resolved.digest,
                "judge": params.judge or "committed",
            }
            | {f"settings.{k}": v for k, v in settings.__dict__.items()}
        )
        suites = {
            name: eval_suite_task(name, resolved.path, params.judge, settings, params.out)
            for name in params.suites
        }
        metrics = {k: v for suite in suites.values() for k, v in suite["metrics"].items()}
        mlflow.log_metrics(metrics)
        report = {
            "model": params.model,
            "model_digest": resolved.digest,
            "settings": settings.__dict__,
            "metrics": metrics,
            "rows": [row for suite in suites.values() for row in suite["rows"]],
            "mlflow_run_id": run.info.run_id,
        }
        report_path = write_report_task(report, params.out)
        mlflow.log_artifact(report_path)
        for suite in suites.values():
            if suite["grid"]:
                mlflow.log_artifact(suite["grid"], artifact_path="grids")
    return report | {"report_path": report_path}


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


def add_command(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="score a shapes-world model with the judge")
    parser.add_argument("--model", help="model reference (default tiny-shapes)")
    parser.add_argument("--judge", help="judge folder (default: the committed judge)")
    parser.add_argument("--out", help="folder for report.json and grids (default easel-out/eval)")
    parser.add_argument("--config", help="YAML file of eval parameters")
    parser.add_argument(
        "--suite", action="append", dest="suites", help="a suite to run (repeatable; default all)"
    )
    parser.add_argument("--guidance-scale", type=float)
    parser.add_argument("--steps", type=int, dest="num_inference_steps")
    parser.add_argument("--seed", type=int)
    parser.add_argument(
        "--quick", action="store_true", default=None, help="small samples (a smoke check)"
    )
    parser.set_defaults(run=run_eval_command)


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
    )
    params = load_parameters(EvalParameters, args.config, {k: getattr(args, k) for k in keys})
    if params.judge is not None and not os.path.exists(os.path.join(params.judge, "config.json")):
        from easel.errors import InvalidInput

        raise InvalidInput(f"`--judge` {params.judge!r} is not a judge folder (no config.json)")
    from easel.models.references import resolve_model_reference

    resolve_model_reference(params.model)  # a bad reference fails here: exit 2, nothing generated
    report = eval_flow(params)
    print(format_table(report["rows"]))
    print(f"report:      {report['report_path']}")
    print(f"mlflow runs: {tracking.tracking_uri()} (run {report['mlflow_run_id']})")
    return 0
