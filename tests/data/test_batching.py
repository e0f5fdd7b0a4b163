"""Planning rows into batches (`easel.data.batching`), without any model."""

from __future__ import annotations

from dataclasses import replace

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from easel.data.batching import ModelFacts, plan_batches, unsupported
from easel.data.manifest import SweepDefaults, read_manifest, validate_manifest

DEFAULTS = SweepDefaults(model="m", guidance_scale=7.5, num_inference_steps=2,
                         max_pixels=512 * 512)  # fmt: skip
FACTS = ModelFacts(digest="d", native_size=64, default_scheduler="ddpm", family="Kandinsky 2.2",
                   size_multiple=64)  # fmt: skip


def jobs_of(tmp_path, rows):
    path = tmp_path / "manifest.parquet"
    columns = list(dict.fromkeys(key for row in rows for key in row))
    pq.write_table(pa.Table.from_pylist([{k: row.get(k) for k in columns} for row in rows]), path)
    jobs, failures = validate_manifest(read_manifest(str(path)), DEFAULTS, [])
    assert not failures
    return {job.id: job for job in jobs}


def test_a_side_s_error_says_it_came_from_init_image_only_where_it_did(tmp_path):
    Image.new("RGB", (72, 64)).save(tmp_path / "wide.png")
    Image.new("RGB", (64, 64)).save(tmp_path / "square.png")
    edit = {"prompt": "p", "mask_image": "square.png", "init_image": "square.png"}
    jobs = jobs_of(tmp_path, [
        {**edit, "id": "given", "width": 72},  # its own width: not init_image's
        {**edit, "id": "both-given", "width": 72, "height": 64, "init_image": "wide.png",
         "mask_image": "wide.png"},
        {**edit, "id": "taken", "init_image": "wide.png", "mask_image": "wide.png"},
        {**edit, "id": "height-taken", "width": 72},
    ])  # fmt: skip
    model = "Kandinsky 2.2 model 'm'"
    own = f"`width` must be a multiple of 64 for {model} but is 72"
    assert unsupported(jobs["given"], FACTS) == own
    assert unsupported(jobs["both-given"], FACTS) == own
    assert unsupported(jobs["taken"], FACTS) == (
        f"{own} (`init_image`'s width: an edit row without `width` takes it)"
    )
    assert jobs["height-taken"].sides_from_init == ("height",)
    tall = replace(jobs["height-taken"], width=64, height=72)  # as a 64x72 init would make it
    assert unsupported(tall, FACTS) == (
        f"`height` must be a multiple of 64 for {model} but is 72 "
        "(`init_image`'s height: an edit row without `height` takes it)"
    )


def test_batches_of_one_content_for_other_rows_have_their_own_record_names(tmp_path):
    """Two model names of the same files: rows alike but for `model` have the same request
    keys in two batches, whose record shards must not share a name (one would replace the
    other and its row would read as never generated)."""
    row = {"prompt": "p", "seed": 3, "num_images": 2}
    jobs = jobs_of(tmp_path, [{**row, "id": "a", "model": "a"}, {**row, "id": "b", "model": "b"}])
    batches = plan_batches(list(jobs.values()), {"a": FACTS, "b": FACTS}, 8, set())
    first, second = batches
    assert [i.request_key for i in first.images] == [i.request_key for i in second.images]
    assert first.key != second.key
    assert first.key == plan_batches([jobs["a"]], {"a": FACTS}, 8, set())[0].key  # stable
