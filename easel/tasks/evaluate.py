"""Tasks of `easel eval`: thin adapters over `easel.models.shapes.evaluation`."""

from __future__ import annotations

import json
import os

import torch
from prefect import task

from easel.data import storage
from easel.data.dreambooth import list_images
from easel.data.images import read_rgb
from easel.models.engine.loading import load_model
from easel.models.shapes import evaluation
from easel.models.shapes.judge import Judge


def _load(model_path: str):
    """The model at `model_path` (either family), fp32 on the default device."""
    return load_model(model_path, dtype=torch.float32)


def _load_subject(instance_data: str, instance_prompt: str, class_prompt: str):
    images = [read_rgb(uri, "instance_data") for uri in list_images(instance_data)]
    return evaluation.Subject(images, instance_prompt, class_prompt)


@task(name="eval-suite")
def eval_suite_task(
    name: str,
    model_path: str,
    judge_path: str | None,
    settings: evaluation.EvalSettings,
    out_dir: str,
    base_model_path: str | None = None,
    subject: dict[str, str] | None = None,
) -> dict:
    """Run one suite; write its sample grid to `out_dir/<name>.png`; return metrics and rows.

    The DreamBooth suites also take the base model and `subject`: `instance_data`,
    `instance_prompt` and `class_prompt`."""
    context = evaluation.EvalContext(
        _load(model_path),
        Judge.load(judge_path),
        settings,
        base_model=_load(base_model_path) if base_model_path else None,
        subject=_load_subject(**subject) if subject else None,
    )
    result = evaluation.run_suites(context, [name])[name]
    grid = None
    if result.images:
        grid = os.path.join(out_dir, f"{name}.png")
        storage.write_png_atomic(grid, evaluation.image_grid(result.images, columns=8))
    return {"metrics": result.metrics, "rows": result.rows, "grid": grid}


@task(name="write-report")
def write_report_task(report: dict, out_dir: str) -> str:
    path = os.path.join(out_dir, "report.json")
    storage.write_text_atomic(path, json.dumps(report, indent=2, sort_keys=True) + "\n")
    return path
