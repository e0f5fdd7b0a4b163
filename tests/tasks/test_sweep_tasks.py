"""The sweep's and class priors' tasks called through `.fn()` (no flow around them): each
does its unit of work alone, as the flow wires them."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from sweep_helpers import pixels, read_results, write_manifest

from easel.data.manifest import SweepDefaults
from easel.data.priors import PriorSpec
from easel.models.engine.sweep import SweepInputs
from easel.tasks.priors import resolve_prior_spec_task, write_prior_manifest_task
from easel.tasks.sweep import generate_batches_task, plan_sweep_task, write_results_task

DEFAULTS = SweepDefaults(model="tiny-shapes", guidance_scale=7.5, num_inference_steps=2,
                         max_pixels=512 * 512)  # fmt: skip


def sweep_inputs(tmp_path, rows: list[dict]) -> SweepInputs:
    manifest = write_manifest(tmp_path / "manifest.parquet", rows)
    return SweepInputs(manifest=manifest, out=str(tmp_path / "out"), defaults=DEFAULTS,
                       input_roots=(), batch_size=2, device="cpu", dtype=None,
                       trust_pickle=False)  # fmt: skip


def test_plan_sweep_task_plans_good_rows_and_fails_bad_ones_alone(tmp_path):
    rows = [{"id": "a", "prompt": "a red circle on a blue background", "num_images": 3},
            {"id": "bad", "prompt": "a green square", "num_inference_steps": 0}]  # fmt: skip
    table, plan = plan_sweep_task.fn(sweep_inputs(tmp_path, rows))

    assert table.table.num_rows == 2
    assert [failure.id for failure in plan.failures] == ["bad"]
    assert "num_inference_steps" in plan.failures[0].error
    assert [len(batch.images) for batch in plan.batches] == [2, 1]  # batch_size 2
    assert plan.total_images == 3


@pytest.mark.usefixtures("prefect_server")  # write_results holds the output's results
def test_generate_then_write_results_tasks_make_images_rows_and_leave_nothing_to_redo(tmp_path):
    inputs = sweep_inputs(tmp_path, [{"id": "a", "prompt": "a red circle", "num_images": 3}])
    table, plan = plan_sweep_task.fn(inputs)

    outcome = generate_batches_task.fn(inputs, plan.batches, None)
    assert (outcome.ok, outcome.failed) == (3, 0)
    summary = write_results_task.fn(inputs, table, plan, outcome.ok)

    assert (summary.rows, summary.images_ok, summary.generated_now) == (1, 3, 3)
    results = read_results(inputs.out)
    assert sorted(r["image_index"] for r in results) == [0, 1, 2]
    images = [pixels(r["image_uri"]) for r in results]
    assert all(image.std() > 0 for image in images)  # real pictures, not blank
    assert not np.array_equal(images[0], images[1])  # one seed each
    assert plan_sweep_task.fn(inputs)[1].batches == []  # a rerun has nothing to do
    assert len(plan_sweep_task.fn(inputs, check_done=False)[1].batches) == 2


def test_prior_tasks_fill_in_the_model_s_defaults_and_write_one_row_per_image(tmp_path):
    spec = PriorSpec(model_digest=None, class_prompt="a photo of a shape", negative_prompt=None,
                     scheduler=None, num_inference_steps=3, guidance_scale=5.0, width=None,
                     height=None, seed=10)  # fmt: skip
    resolved = resolve_prior_spec_task.fn("tiny-shapes", spec)
    assert None not in (resolved.model_digest, resolved.scheduler, resolved.width)
    assert resolved.key != resolve_prior_spec_task.fn("tiny-shapes", spec.__class__(
        **{**spec.__dict__, "guidance_scale": 6.0})).key  # fmt: skip

    uri = write_prior_manifest_task.fn(str(tmp_path / resolved.key), resolved, 3)
    rows = pq.read_table(uri).to_pylist()
    assert [row["seed"] for row in rows] == [10, 11, 12]
    assert {row["prompt"] for row in rows} == {"a photo of a shape"}
    assert {row["width"] for row in rows} == {resolved.width}
