"""Sweep records and the results table (SPEC §5).

A batch that finishes writes its images first, then one record shard under
`OUT/.easel/records/` that vouches for them (the marker comes last). `results.parquet`
is assembled from the manifest and all record shards, so it is always complete after a
rerun, and a rerun skips every image whose `request_key` is recorded as ok.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from easel.data import storage

RESULT_FIELDS = pa.schema([
    ("image_index", pa.int32()),
    ("image_uri", pa.string()),
    ("status", pa.string()),
    ("error", pa.string()),
    ("warning", pa.string()),
    ("seed", pa.int64()),
    ("model_ref", pa.string()),
    ("model_digest", pa.string()),
    ("scheduler", pa.string()),
    ("duration_s", pa.float64()),
    ("image_sha256", pa.string()),
    ("mlflow_run_id", pa.string()),
])  # fmt: skip
RECORD_SCHEMA = pa.schema([("id", pa.string()), ("request_key", pa.string()), *RESULT_FIELDS])


@dataclass
class ImageRecord:
    """What happened to one image (or to a whole row that failed before generation)."""

    id: str
    request_key: str | None
    image_index: int | None
    image_uri: str | None
    status: str  # "ok" | "failed"
    error: str | None
    warning: str | None
    seed: int | None
    model_ref: str | None
    model_digest: str | None
    scheduler: str | None
    duration_s: float | None
    image_sha256: str | None
    mlflow_run_id: str | None


def image_uri(out: str, row_id: str, image_index: int) -> str:
    return storage.join(out, "images", row_id, f"{image_index}.png")


def records_dir(out: str) -> str:
    return storage.join(out, ".easel", "records")


def parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def write_record_shard(out: str, name: str, records: list[ImageRecord]) -> str:
    """Write the marker for a finished batch, atomically, after its images."""
    table = pa.Table.from_pylist([asdict(r) for r in records], schema=RECORD_SCHEMA)
    uri = storage.join(records_dir(out), f"{name}.parquet")
    storage.write_bytes_atomic(uri, parquet_bytes(table))
    return uri


def read_records(out: str) -> list[ImageRecord]:
    fs, path = storage.filesystem(records_dir(out))
    if not fs.exists(path):
        return []
    records = []
    for file in sorted(fs.glob(path.rstrip("/") + "/*.parquet")):
        with fs.open(file, "rb") as f:
            records.extend(ImageRecord(**row) for row in pq.read_table(f).to_pylist())
    return records


def done_request_keys(out: str) -> set[str]:
    """Images recorded as ok whose file still exists."""
    return {
        r.request_key for r in read_records(out)
        if r.status == "ok" and r.request_key and storage.exists(r.image_uri)
    }  # fmt: skip


def assemble_results(
    manifest: pa.Table, row_indices: list[int], records: list[ImageRecord]
) -> pa.Table:
    """One output row per record: the manifest row's columns, then the result fields.

    `seed` and `scheduler` are replaced in place by their resolved values; every other
    input column passes through with its original type. A manifest without an `id`
    column gets the derived ids, the names of the image folders.
    """
    assert len(row_indices) == len(records)
    base = manifest.take(pa.array(row_indices, type=pa.int64()))
    if "id" not in base.column_names:
        ids = pa.array([r.id for r in records], pa.string())
        base = base.append_column(pa.field("id", pa.string()), ids)
    result = pa.Table.from_pylist(
        [{f.name: getattr(r, f.name) for f in RESULT_FIELDS} for r in records], schema=RESULT_FIELDS
    )
    for field in RESULT_FIELDS:
        if field.name in base.column_names:  # seed, scheduler: the resolved values
            position = base.column_names.index(field.name)
            base = base.set_column(position, field, result.column(field.name))
        else:
            base = base.append_column(field, result.column(field.name))
    return base


def write_results(out: str, table: pa.Table) -> str:
    uri = storage.join(out, "results.parquet")
    storage.write_bytes_atomic(uri, parquet_bytes(table))
    return uri
