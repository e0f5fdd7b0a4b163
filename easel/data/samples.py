"""The sample manifest `easel quickstart` sweeps: what a data team would hand over."""

from __future__ import annotations

import pyarrow as pa

from easel.data import storage
from easel.data.results import parquet_bytes

SAMPLE_ROWS = [
    {"id": "red-circle", "prompt": "a red circle on a blue background", "seed": 1, "num_images": 2},
    {"id": "green-star", "prompt": "a green star on a white background", "seed": 2,
     "negative_prompt": "red", "scheduler": "euler"},
    {"id": "yellow-square-g3", "prompt": "a yellow square on a black background", "seed": 3,
     "guidance_scale": 3.0},
    {"id": "yellow-square-g7", "prompt": "a yellow square on a black background", "seed": 3,
     "guidance_scale": 7.5},
    {"id": "blue-heart", "prompt": "a blue heart on a yellow background", "seed": 4,
     "negative_prompt": "green", "scheduler": "dpmpp_2m", "num_images": 2},
    {"id": "purple-triangle", "prompt": "a purple triangle on a orange background", "seed": 5},
]  # fmt: skip


def write_sample_manifest(uri: str, rows: list[dict] = SAMPLE_ROWS) -> str:
    storage.write_bytes_atomic(uri, parquet_bytes(pa.Table.from_pylist(rows)))
    return uri
