"""Planning rows into batches (`easel.data.batching`), without any model."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from easel.data.batching import ModelFacts, plan_batches
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
