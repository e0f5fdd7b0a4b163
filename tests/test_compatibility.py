"""What must not change when the code moves: the request keys of a fixed manifest (an
output folder made by an older easel must not regenerate anything) and the record shards'
schema. The values below were computed before the restructuring and are pinned here."""

from __future__ import annotations

import pytest
from PIL import Image, ImageDraw

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
PINNED_KEYS = {
    ("sd-text", 0): "c4d66dd48cf27e5f6207b2df376c673f75d944b83b4249bf2acb9e2b6f01363b",
    ("sd-options", 0): "0f54c61776932d9bddf9c828344f782e96273868256a23c394925b55c0b0aeda",
    ("sd-options", 1): "c56260832d7c6e0f57b37216b9583453615f77491153698272761651e3d5db0f",
    ("sd-img2img", 0): "a38989649714954a4ce4821b4e8d4cece4ef61ff6746f2968a31e28dcb1b0c7a",
    ("sd-inpaint", 0): "3177883991e3c4da60d015116869a30da4870aa1641cf90f631dc020e915f053",
    ("k22-text", 0): "5f9eec625324a88a0fc87f31bd0422b52e8f18614a60b8e7354dac5b896c2b0d",
    ("k22-prior", 0): "fb035818d6cec5b9d09115f9e73a2f50fb88c90628f40e184870d560a9548d2b",
    ("k22-img2img", 0): "55bc1268fd5f9617b9d9ab4d9fd9f553e916c42380121cb26bafdbfaba63851a",
    ("k22-fusion", 0): "9906f88020a70dc755659b6f645cc8a6cfb65cd1ec48f815bf40e207404a790f",
}


def write_pinned_manifest() -> str:
    scene = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(scene).ellipse((16, 16, 48, 48), "white")
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((12, 12, 52, 52), 255)
    storage.write_png_atomic(f"{ROOT}/scene.png", scene)
    storage.write_png_atomic(f"{ROOT}/mask.png", mask)
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
        ("image_sha256", "string"), ("mlflow_run_id", "string"),
    ]  # fmt: skip


@pytest.fixture(autouse=True)
def _clean_memory_filesystem():
    yield
    fs, path = storage.filesystem(ROOT)
    if fs.exists(path):
        fs.rm(path, recursive=True)
