"""A sweep whose manifest, model and output all live on an S3-compatible server."""

from __future__ import annotations

import io

import fsspec
import pyarrow.parquet as pq
import pytest
from PIL import Image
from sweep_helpers import STEPS, write_manifest

from easel.flows.sweep import SweepParameters, sweep_flow
from easel.models.engine.loading import model_facts
from easel.models.engine.references import resolve_model_reference

pytestmark = pytest.mark.usefixtures("prefect_server")


def test_sweep_reads_and_writes_s3(tmp_path, s3_server):
    s3 = fsspec.filesystem("s3")
    s3.mkdir("easel-test")
    s3.put(resolve_model_reference("tiny-shapes").path, "easel-test/models/tiny", recursive=True)
    local = write_manifest(tmp_path / "m.parquet", [
        {"id": "a", "prompt": "a red circle", "num_images": 2},
        {"id": "b", "prompt": "a blue star", "num_inference_steps": 0},
    ])  # fmt: skip
    s3.put(local, "easel-test/manifests/m.parquet")
    params = SweepParameters(
        manifest="s3://easel-test/manifests/m.parquet", out="s3://easel-test/out",
        model="s3://easel-test/models/tiny", num_inference_steps=STEPS,
    )  # fmt: skip
    summary = sweep_flow(params)
    assert (summary.images_ok, summary.rows_failed) == (2, 1)
    s3.invalidate_cache()
    with s3.open("easel-test/out/results.parquet", "rb") as f:
        rows = pq.read_table(f).to_pylist()
    assert [(r["id"], r["status"]) for r in rows] == [("a", "ok"), ("a", "ok"), ("b", "failed")]
    assert rows[0]["image_uri"] == "s3://easel-test/out/images/a/0.png"
    with Image.open(io.BytesIO(s3.cat_file("easel-test/out/images/a/1.png"))) as image:
        side = model_facts("tiny-shapes").native_size
        assert image.format == "PNG" and image.size == (side, side)
    assert s3.exists("easel-test/out/contact_sheet.png")
    assert sweep_flow(params).generated_now == 0  # the rerun finds the work recorded on S3
