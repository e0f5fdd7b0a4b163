"""What must not change when the code moves: the request keys of a fixed manifest (an
output folder made by an older easel must not regenerate anything) and the record shards'
schema. The values below were computed before the restructuring and are pinned here.

Edit rows (img2img, inpaint, fusion) changed their keys once, on purpose: since then they
also digest their images' bytes, so an image edited in place is generated again (issue 14).
Their images are fixed bytes here, so their keys do not depend on an encoder's version."""

from __future__ import annotations

import base64

import pytest

from easel.data import storage
from easel.data.manifest import write_manifest
from easel.data.results import RECORD_SCHEMA

ROOT = "memory://easel-pinned-keys"  # a fixed location: image URIs are part of the keys
ROWS = [
    {"id": "sd-text", "prompt": "a red circle on a blue background", "seed": 1},
    {"id": "sd-options", "prompt": "a green star", "seed": 2, "negative_prompt": "circle",
     "scheduler": "euler", "guidance_scale": 3.0, "num_inference_steps": 10, "num_images": 2,
     "width": 64, "height": 64},
    {"id": "sd-img2img", "prompt": "a red star", "seed": 3, "init_image": "scene.png",
     "strength": 0.6},
    {"id": "sd-inpaint", "prompt": "a green circle", "seed": 4, "init_image": "scene.png",
     "mask_image": "mask.png", "strength": 1.0},
    {"id": "k22-text", "prompt": "a red circle on a blue background", "seed": 10,
     "model": "tiny-shapes-k22", "guidance_scale": 4.0},
    {"id": "k22-prior", "prompt": "a yellow square", "seed": 11, "model": "tiny-shapes-k22",
     "negative_prompt": "red", "prior_guidance_scale": 2.0, "prior_num_inference_steps": 10,
     "scheduler": "ddpm"},
    {"id": "k22-img2img", "prompt": "a red star", "seed": 12, "model": "tiny-shapes-k22",
     "init_image": "scene.png", "strength": 0.6},
    {"id": "k22-fusion", "prompt": "a yellow square", "seed": 13, "model": "tiny-shapes-k22",
     "task": "fusion", "init_image": "scene.png", "strength": 0.5},
]  # fmt: skip
# the four edit rows' values: since #14 (they digest their images); the three tiny-shapes-k22
# rows without `prior_guidance_scale`: since its model card recommends 1 (their images
# changed: diffusers' 4 before); a row that sets it keeps its key
PINNED_KEYS = {
    ("sd-text", 0): "c4d66dd48cf27e5f6207b2df376c673f75d944b83b4249bf2acb9e2b6f01363b",
    ("sd-options", 0): "0f54c61776932d9bddf9c828344f782e96273868256a23c394925b55c0b0aeda",
    ("sd-options", 1): "c56260832d7c6e0f57b37216b9583453615f77491153698272761651e3d5db0f",
    ("sd-img2img", 0): "68a3c2fbddbd71962d3e4fd9ada7a71326ab76c00adca2c5fffac4e5cb426278",
    ("sd-inpaint", 0): "93e2db1b80f61d32a5a760fe1a02f62f52d143fd8cece60ea9e0f72baf155dbb",
    ("k22-text", 0): "cd6a9baea40825def9d52560cff24a76e55899bfd8a0a405e5c0a2a3167d5b44",
    ("k22-prior", 0): "fb035818d6cec5b9d09115f9e73a2f50fb88c90628f40e184870d560a9548d2b",
    ("k22-img2img", 0): "bcded28220e420cf331cf039a462d5850c8b5bf03f2bf65757d8db30d8cdad9e",
    ("k22-fusion", 0): "3654a3bde8dead6b39d7c8e6beeec244abff46230823ccf350bd2012cb3cdc40",
}


# a white disc on black, and a white square mask, 64x64 (PNG bytes, fixed)
SCENE_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAEAAAABACAIAAAAlC+aJAAAAqklEQVR42u2YSRLAIAgEhf//2XzAS1hEiu674wyQ"
    "lLoWAAAAAABMRZJ0996HzUReD3D0nZpELlsPj6FV7s2rgjsQY8LRCi1379TR1RwtL79TTV9w79EcOUIZ5TcrD/6I"
    "uwbImx+bPiNEAAIQoFmAjHutR58R6hggb4oMylNHKOWJyqSpl/cLV5v9F4pqgkcnxoH5kuAvgRaWMKSBvE7/SZJ9"
    "jgIAAAAAgF98sG45PIxnrQIAAAAASUVORK5CYII="
)
MASK_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAEAAAABACAAAAACPAi4CAAAAMklEQVR42u3OIQ4AIBDEwML//wwWDY5M3YqbXEmq"
    "GudYF1fz9QMAAAAAAAAAwJeA9EkbxQQBUoi8/+8AAAAASUVORK5CYII="
)


def write_pinned_manifest() -> str:
    storage.write_bytes_atomic(f"{ROOT}/scene.png", base64.b64decode(SCENE_PNG))
    storage.write_bytes_atomic(f"{ROOT}/mask.png", base64.b64decode(MASK_PNG))
    return write_manifest(f"{ROOT}/manifest.parquet", ROWS)


def planned_keys() -> dict[tuple[str, int], str]:
    from easel.data.batching import build_plan
    from easel.data.manifest import SweepDefaults, read_manifest, validate_manifest
    from easel.models.engine.loading import model_facts

    manifest = read_manifest(write_pinned_manifest())
    defaults = SweepDefaults(model="tiny-shapes", guidance_scale=7.5, num_inference_steps=20,
                             max_pixels=2048 * 2048)  # fmt: skip
    jobs, failures = validate_manifest(manifest, defaults)
    assert not failures, failures
    plan = build_plan(jobs, [], model_facts, batch_size=8, done=set())
    assert not plan.failures, plan.failures
    return {
        (image.row_id, image.image_index): image.request_key
        for batch in plan.batches
        for image in batch.images
    }


def test_request_keys_are_pinned():
    keys = planned_keys()
    assert len(keys) == 9
    assert keys == PINNED_KEYS


def test_record_shard_schema_is_pinned():
    assert [(f.name, str(f.type)) for f in RECORD_SCHEMA] == [
        ("id", "string"), ("request_key", "string"), ("image_index", "int32"),
        ("image_uri", "string"), ("status", "string"), ("error", "string"),
        ("warning", "string"), ("seed", "int64"), ("model_ref", "string"),
        ("model_digest", "string"), ("scheduler", "string"), ("duration_s", "double"),
        ("image_sha256", "string"), ("mlflow_run_id", "string"), ("flow_run_id", "string"),
        ("image_bytes", "int64"), ("written_at", "double"), ("nsfw_content_detected", "bool"),
        ("loras", "list<item: struct<path: string, scale: double, sha256: string>>"),
    ]  # fmt: skip


def test_the_schemas_derived_from_image_record_are_those_written_before():
    """`RECORD_SCHEMA` and `RESULT_FIELDS` come from `ImageRecord`'s fields: the same Arrow
    schemas as the lists written out before (names, types, order, every column nullable, no
    metadata)."""
    from easel.data.results import RESULT_FIELDS

    record = (
        "id: string\nrequest_key: string\nimage_index: int32\nimage_uri: string\n"
        "status: string\nerror: string\nwarning: string\nseed: int64\nmodel_ref: string\n"
        "model_digest: string\nscheduler: string\nduration_s: double\nimage_sha256: string\n"
        "mlflow_run_id: string\nflow_run_id: string\nimage_bytes: int64\nwritten_at: double\n"
        "nsfw_content_detected: bool\n"
        "loras: list<item: struct<path: string, scale: double, sha256: string>>\n"
        "  child 0, item: struct<path: string, scale: double, sha256: string>\n"
        "      child 0, path: string\n      child 1, scale: double\n      child 2, sha256: string"
    )
    assert RECORD_SCHEMA.to_string(show_schema_metadata=True) == record
    assert all(field.nullable for field in RECORD_SCHEMA) and RECORD_SCHEMA.metadata is None
    lines = record.split("\n")
    inner = lines[2:15] + lines[17:]  # without id, request_key, image_bytes, written_at
    assert RESULT_FIELDS.to_string(show_schema_metadata=True) == "\n".join(inner)
    assert all(field.nullable for field in RESULT_FIELDS)


def test_record_shards_written_before_flow_run_ids_and_sizes_still_read(tmp_path):
    """Shards from before `flow_run_id`, `image_bytes` and `written_at` existed vouch for
    their images as before (whatever their size)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from easel.data.results import done_slots, read_records, records_dir

    newer = ("flow_run_id", "image_bytes", "written_at", "loras")
    old = pa.schema([f for f in RECORD_SCHEMA if f.name not in newer])
    out = tmp_path / "out"
    (out / "images" / "a").mkdir(parents=True)
    (out / "images" / "a" / "0.png").write_bytes(b"an image")
    row = {"id": "a", "request_key": "k", "image_index": 0, "status": "ok", "seed": 1,
           "image_uri": str(out / "images" / "a" / "0.png"), "mlflow_run_id": "r"}  # fmt: skip
    folder = out / records_dir("")
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([row], schema=old), folder / "b.parquet")
    (record,) = read_records(str(out))
    assert (record.id, record.status, record.flow_run_id, record.written_at) == (
        "a", "ok", None, None)  # fmt: skip
    assert done_slots(str(out)) == {("a", 0, "k")}


@pytest.fixture(autouse=True)
def _clean_memory_filesystem():
    yield
    fs, path = storage.filesystem(ROOT)
    if fs.exists(path):
        fs.rm(path, recursive=True)
