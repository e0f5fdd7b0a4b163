"""The sweep's report, as a task: its figures, files and results table in its MLflow run,
its results and summary (with the contact sheet) as Prefect artifacts, and its failed rows
in the flow run's logs."""

from __future__ import annotations

import base64
import hashlib
import io
import logging
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from easel import tracking
from easel.data import contact_sheet, storage
from easel.data.results import MAX_LISTED_FAILURES, SweepSummary
from easel.models.engine.sweep import BatchOutcome
from easel.progress import say

SHOWN_ROWS = 500  # rows of results.parquet in the Prefect results artifact
TABLE_ROWS = 100  # rows (and images) in the MLflow results table: each image is uploaded
LINK_SECONDS = 7 * 24 * 3600  # how long a presigned image link opens (S3's longest)
SHOWN_COLUMNS = ("id", "image_index", "prompt", "model", "status", "error", "warning", "seed")
RESULTS_TAG = "easel.results_sha256"  # the digest of the results.parquet a sweep's run logged


@task(name="report-sweep", cache_policy=NONE, persist_result=False)
def report_sweep_task(summary: SweepSummary, pending: int, outcome: BatchOutcome,
                      utilisation: dict[str, float], mlflow_run_id: str) -> None:  # fmt: skip
    """Log the sweep's figures (`pending`: images missing at its start; `utilisation`: the
    device's figures), its results (file and table of the first `TABLE_ROWS` rows with their
    images) and contact sheet to the active MLflow run `mlflow_run_id`; publish the Prefect
    artifacts `sweep-results` (the first `SHOWN_ROWS` rows, images as links) and
    `sweep-summary`; say the failed rows in the run's logs."""
    _log_to_mlflow(summary, pending, outcome)
    tracking.log_metrics(utilisation)
    rows = _read_rows(summary.results_uri)
    _log_table(rows[:TABLE_ROWS])
    tracking.set_tags(mlflow_run_id, {RESULTS_TAG: results_digest(summary.results_uri)})
    _publish_artifacts(summary, rows, mlflow_run_id)
    _say_outcome(summary, rows, mlflow_run_id)


def results_digest(results_uri: str) -> str:
    """The SHA-256 (64 hex digits) of the bytes of `results_uri`."""
    return hashlib.sha256(storage.read_bytes(results_uri)).hexdigest()


def run_holding(experiment: str, results_uri: str) -> str | None:
    """The latest finished MLflow run of `experiment` that logged these very results (the
    bytes of `results_uri`), or None."""
    return tracking.finished_run_with_tag(experiment, RESULTS_TAG, results_digest(results_uri))


@task(name="report-unchanged-sweep", cache_policy=NONE, persist_result=False)
def report_unchanged_task(summary: SweepSummary, mlflow_run_id: str) -> None:
    """A rerun that generated nothing and left `results.parquet` as the MLflow run
    `mlflow_run_id` logged it: no new run; the run's logs and the Prefect artifacts
    `sweep-results` and `sweep-summary` name that run."""
    say(f"nothing to generate and {summary.results_uri} unchanged: no new MLflow run; these "
        f"results are in MLflow run {tracking.run_name_of(mlflow_run_id)!r}: "
        f"{tracking.run_link(mlflow_run_id)}")  # fmt: skip
    rows = _read_rows(summary.results_uri)
    _publish_artifacts(summary, rows, mlflow_run_id)
    _say_outcome(summary, rows, mlflow_run_id)


def _log_to_mlflow(summary: SweepSummary, pending: int, outcome: BatchOutcome) -> None:
    tracking.log_metrics({
        "images_ok": summary.images_ok, "images_failed": summary.images_failed,
        "rows": summary.rows, "rows_failed": summary.rows_failed, "failures": summary.rows_failed,
        "images_generated": outcome.ok, "images_pending_at_start": pending,
        "generation_seconds": outcome.seconds, "images_nsfw": summary.images_nsfw,
    })  # fmt: skip
    tracking.log_artifact(summary.results_uri)
    if summary.contact_sheet_uri:
        tracking.log_artifact(summary.contact_sheet_uri)


def _read_rows(results_uri: str) -> list[dict]:
    import pyarrow.parquet as pq

    with io.BytesIO(storage.read_bytes(results_uri)) as f:
        return pq.read_table(f).to_pylist()


def shown(row: dict) -> dict:
    """What a person reads of a result row: `SHOWN_COLUMNS` (`model`: the reference used)."""
    values = {**row, "model": row.get("model_ref") or row.get("model")}
    return {column: values.get(column) for column in SHOWN_COLUMNS}


def _log_table(rows: list[dict]) -> None:
    """The MLflow table `results.json`: each row's `SHOWN_COLUMNS` and its image (a grey
    tile for a failed one), which the run's artifact view shows."""
    from PIL import Image

    columns = {column: [shown(row)[column] for row in rows] for column in SHOWN_COLUMNS}
    images = []
    for row in rows:
        image = Image.new("RGB", (contact_sheet.THUMBNAIL,) * 2, "grey")
        if row["status"] == "ok":
            with Image.open(io.BytesIO(storage.read_bytes(row["image_uri"]))) as found:
                image = found.convert("RGB")
        images.append(image)
    if rows:  # the image beside the id: the MLflow table shows it without scrolling
        tracking.log_table({"id": columns.pop("id"), "image": images, **columns}, "results.json")


def browser_link(uri: str) -> str:
    """An address a browser opens for the file `uri`: a presigned URL on a store that signs
    (S3: valid `LINK_SECONDS`), a file:// URL for a local file, else `uri` itself."""
    fs, path = storage.filesystem(uri)
    if storage.is_local(uri):
        return Path(path).absolute().as_uri()
    try:
        return fs.sign(path, expiration=LINK_SECONDS)
    except NotImplementedError:
        return uri


def _cell(value) -> str:
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def results_markdown(rows: list[dict]) -> str:
    """A Markdown table of `rows`: `SHOWN_COLUMNS`, then a link to each row's image."""
    lines = [f"| {' | '.join(SHOWN_COLUMNS)} | image |", "|---" * (len(SHOWN_COLUMNS) + 1) + "|"]
    for row in rows:
        link = f"[open]({browser_link(row['image_uri'])})" if row.get("image_uri") else ""
        lines.append(f"| {' | '.join(_cell(v) for v in shown(row).values())} | {link} |")
    return "\n".join(lines) + "\n"


def _publish_artifacts(summary: SweepSummary, rows: list[dict], mlflow_run_id: str) -> None:
    create_markdown_artifact(
        f"# Results of `{summary.out}`\n\n`{summary.results_uri}`: {len(rows)} rows"
        f"{'' if len(rows) <= SHOWN_ROWS else f'; the first {SHOWN_ROWS} shown'}\n\n"
        + results_markdown(rows[:SHOWN_ROWS]),
        key="sweep-results", description=f"{summary.results_uri} ({len(rows)} rows)",
    )  # fmt: skip
    markdown = (
        f"# Sweep into `{summary.out}`\n\n| figure | count |\n|---|---|\n"
        f"| rows | {summary.rows} |\n| images ok | {summary.images_ok} |\n"
        f"| images failed | {summary.images_failed} |\n"
        f"| rows failed | {summary.rows_failed} |\n| flagged by the safety checker | "
        f"{summary.images_nsfw} |\n| generated by this run | "
        f"{summary.generated_now} |\n\nResults: `{summary.results_uri}`\n\n"
        f"MLflow: {tracking.run_link(mlflow_run_id)}\n"
    )
    if summary.contact_sheet_uri:
        png, factor = contact_sheet.embeddable_png(storage.read_bytes(summary.contact_sheet_uri))
        scale = "" if factor == 1 else f" (1/{factor} of its size: the whole is in the folder)"
        markdown += (f"\nContact sheet: `{summary.contact_sheet_uri}`{scale}\n\n"
                     f"![contact sheet](data:image/png;base64,{base64.b64encode(png).decode()})\n")
    create_markdown_artifact(markdown, key="sweep-summary", description="sweep summary")


def _say_outcome(summary: SweepSummary, rows: list[dict], mlflow_run_id: str) -> None:
    """The run's logs: what it made, where, each failed image and each image with a warning
    (the first `MAX_LISTED_FAILURES` of each)."""
    say(f"{summary.images_ok} images ok, {summary.images_failed} failed "
        f"({summary.generated_now} generated now); results: {summary.results_uri}; MLflow: "
        f"{tracking.run_link(mlflow_run_id)}")  # fmt: skip
    if summary.failures:
        say(f"failed: {summary.images_failed} images in {summary.rows_failed} rows (the first "
            f"{len(summary.failures)} below; every one is in results.parquet)",
            logging.WARNING)  # fmt: skip
        for failure in summary.failures:
            say(f"  {failure}", logging.WARNING)
    warned = [row for row in rows if row.get("warning")]
    if warned:
        say(f"{len(warned)} images with a warning (the first {MAX_LISTED_FAILURES} below):",
            logging.WARNING)  # fmt: skip
        for row in warned[:MAX_LISTED_FAILURES]:
            say(f"  {row['id']}/{row['image_index']}: {row['warning']}", logging.WARNING)
