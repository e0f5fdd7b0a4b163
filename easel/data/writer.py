"""Writing finished batches on a background thread, so that encoding and uploading images
overlaps with generating the next batch.

For each batch, in order: every image (atomically), then the batch's record shard, which
vouches for them. At most `max_pending` batches wait in memory; `close()` waits for all
and re-raises the first write error.
"""

from __future__ import annotations

import hashlib
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace

from easel.data import records, results, storage
from easel.data.batching import PlannedBatch
from easel.data.results import ImageRecord


def write_batch(
    out: str, batch: PlannedBatch, outputs: list, records: list[ImageRecord]
) -> list[ImageRecord]:
    """Write the batch's images, then its record shard. `records` hold everything but the
    per-image outcome; `outputs` are PIL images or the exceptions that replaced them."""
    written = []
    for image, output, record in zip(batch.images, outputs, records, strict=True):
        if isinstance(output, Exception):
            written.append(replace(record, status="failed", written_at=time.time(),
                                   error=str(output) or type(output).__name__))  # fmt: skip
            continue
        uri = results.image_uri(out, image.row_id, image.image_index)
        data = storage.write_png_atomic(uri, output)
        written.append(replace(record, status="ok", image_uri=uri, image_bytes=len(data),
                               image_sha256=hashlib.sha256(data).hexdigest(),
                               written_at=time.time()))  # fmt: skip
    results.write_record_shard(out, batch.key, written)
    return written


class BatchWriter:
    """Writes batches in order on one thread; after each, its `records.Tally` (what this
    writer recorded, for the sharded parent's progress)."""

    def __init__(self, out: str, max_pending: int = 2):
        self.out = out
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="easel-writer")
        self._slots = threading.Semaphore(max_pending)
        self._futures: list[Future] = []
        self._tally: records.Tally | None = None

    def _write(self, batch: PlannedBatch, outputs: list, pending: list[ImageRecord]):
        written = write_batch(self.out, batch, outputs, pending)
        if written and written[0].flow_run_id:  # a shard's own flow run: its parent polls
            self._tally = self._tally or records.Tally(written[0].flow_run_id)
            self._tally.add(written)
            self._tally.write(self.out)
        return written

    def submit(self, batch: PlannedBatch, outputs: list, records: list[ImageRecord]) -> None:
        self._slots.acquire()  # back-pressure: generation waits if writing falls behind
        future = self._pool.submit(self._write, batch, outputs, records)
        future.add_done_callback(lambda _: self._slots.release())
        self._futures.append(future)

    def close(self) -> list[ImageRecord]:
        """Wait for every write; the records written, or the first error raised."""
        self._pool.shutdown(wait=True)
        return [record for future in self._futures for record in future.result()]

    def __enter__(self) -> BatchWriter:
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown(wait=True)
