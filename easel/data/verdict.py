"""A sharded sweep's vouching done once: the parent's verdict handed down to its shards.

A sharded parent vouches for every record of the output in its planning pass (one listing
of `images/`: about 1,112 requests at a million images). Its shard runs, moments later,
need the same answer for their own records, but their images lie all over the folder: each
would list it whole again. So the parent writes what its pass found to
`OUT/.easel/vouched/<name>.parquet` (`name`: its Prefect flow run id), a small file: the
identities (`COLUMNS`) of the ok records that did not vouch (their image gone, another size,
other bytes), usually none, and in its schema metadata the Unix time its pass began. A
shard run given the name reads only its own records and trusts every ok one the verdict
does not name; a record written after the pass (a crashed earlier attempt of the shard, a
concurrent run) is not named, so trusted: it was written after its image, later than the
check. A verdict that is gone or unreadable is no verdict: the shard vouches in full.

The parent hands down its plan too: `vouched/<name>-rows.parquet` names, for each shard,
the manifest rows that hold its pending images, and the manifest's version as the parent
read it. A shard run validates and plans only those rows (a sixteenth of a manifest, not
all of it), keeping of their images those its slots assign it, as always. Where the file
is gone or unreadable, or the manifest has changed since (another version of a file), the
shard plans the whole manifest. An image of a row the parent did not name is one the
parent found done: the same trust as the verdict's.

What this gives up: an image deleted between the parent's check and its shard's planning
is not generated again by that shard; the results step lists `images/` again and does not
claim it, and the next rerun generates it.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from easel.data import records, storage

log = logging.getLogger(__name__)

FOLDER = "vouched"  # under OUT/.easel/
ROWS_SUFFIX = "-rows"  # the parent's plan: `vouched/<name>-rows.parquet`
ROWS_SCHEMA = pa.schema([("shard", pa.int32()), ("row_index", pa.int64())])
MANIFEST_VERSIONS = b"easel.manifest_versions"  # rows' metadata: the manifest as planned
COLUMNS = ("id", "image_index", "request_key", "written_at")  # a record's identity in it
CHECKED_AT = b"easel.checked_at"  # schema metadata: when the parent's pass began (Unix s)
NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"  # a flow run id or a uuid: never a path


def verdict_uri(out: str, name: str) -> str:
    """Where the verdict `name` of output `out` lies: `OUT/.easel/vouched/<name>.parquet`."""
    return records.state_dir(out, FOLDER, f"{name}.parquet")


def rows_uri(out: str, name: str) -> str:
    """Where the parent `name`'s plan lies: `OUT/.easel/vouched/<name>-rows.parquet`."""
    return verdict_uri(out, f"{name}{ROWS_SUFFIX}")


def new_name(flow_run_id: str | None) -> str:
    """The name of a parent's verdict: its flow run id, or a fresh uuid outside a flow run."""
    return flow_run_id or uuid.uuid4().hex


@dataclass(frozen=True)
class Verdict:
    """A parent's verdict: the identities (`COLUMNS`) of the ok records that did not vouch,
    and when its check began (`checked_at`, Unix seconds)."""

    stale: pa.Table
    checked_at: float

    def trusted(self, table: pa.Table) -> pa.Table:
        """`table` (`RECORD_SCHEMA`) without its ok records that the verdict names (null
        values compared as equal); every other record kept, in order."""
        if not self.stale.num_rows or not table.num_rows:
            return table
        ok = pc.fill_null(pc.equal(table.column("status"), "ok"), False)
        rows = pa.array(range(table.num_rows), pa.int64())
        stale = _keys(self.stale)
        named = _keys(table).append_column("_row", rows).filter(ok).join(
            stale, keys=stale.column_names, join_type="left semi", use_threads=False)  # fmt: skip
        if not named.num_rows:
            return table
        return table.filter(pc.invert(pc.is_in(rows, named.column("_row").combine_chunks())))


def _keys(table: pa.Table) -> pa.Table:
    """`COLUMNS` of `table` as null-safe join keys: each a null flag and its value (nulls
    filled with the type's zero), so that two nulls match."""
    keys = {}
    for name in COLUMNS:
        column = table.column(name).cast(records.RECORD_SCHEMA.field(name).type)
        keys[f"{name}_null"] = pc.is_null(column)
        keys[name] = pc.fill_null(column, pa.scalar("" if pa.types.is_string(column.type) else 0,
                                                    column.type))  # fmt: skip
    return pa.table(keys)


def write_verdict(out: str, name: str, stale: pa.Table, checked_at: float) -> str:
    """Write the verdict `name` of `out`, atomically: `stale`'s `COLUMNS` (the ok records
    that did not vouch) and `checked_at` (Unix seconds); returns its URI."""
    table = stale.select(list(COLUMNS)).cast(_schema())
    uri = verdict_uri(out, name)
    storage.write_parquet_atomic(
        uri, table.replace_schema_metadata({CHECKED_AT: repr(float(checked_at)).encode()})
    )
    return uri


def _schema() -> pa.Schema:
    return pa.schema([records.RECORD_SCHEMA.field(name) for name in COLUMNS])


def read_verdict(out: str, name: str) -> Verdict | None:
    """The verdict `name` of `out`, or None (with one log line) where it is gone or cannot
    be read as one (cut short, written by another easel): the caller then vouches in full.
    A store that fails the read (not the file's fault) raises."""

    def parsed(table: pa.Table) -> Verdict:
        checked_at = float((table.schema.metadata or {})[CHECKED_AT])
        return Verdict(table.select(list(COLUMNS)).cast(_schema()), checked_at)

    return _read(verdict_uri(out, name), "verdict", "vouching for every image here", parsed)


def _read(uri: str, what: str, instead: str, parsed):
    """`parsed(table)` of the Parquet file at `uri` (the parent's `what`), or None with one
    warning saying it is gone or unreadable and what is done `instead`. A store that fails
    the read (not the file's fault) raises."""
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        log.warning("the parent's %s %s is gone: %s", what, uri, instead)
        return None
    try:
        return parsed(pq.read_table(io.BytesIO(data)))
    except (pa.ArrowException, OSError, ValueError, KeyError) as error:
        log.warning("the parent's %s %s is unreadable (%s): %s", what, uri, error, instead)
        return None


def write_rows(out: str, name: str, pending: dict[int, dict[int, int]], versions) -> str:
    """Write the parent `name`'s plan for its shards, atomically: the manifest rows holding
    each shard's pending images (`pending`: `SweepPlan.pending_rows`), and the manifest's
    file `versions` (`Manifest.versions`) as planned; returns its URI."""
    shards = [index for index, rows in pending.items() for _ in rows]
    rows = [row for held in pending.values() for row in held]
    table = pa.table([pa.array(shards, pa.int32()), pa.array(rows, pa.int64())],
                     schema=ROWS_SCHEMA)  # fmt: skip
    metadata = {MANIFEST_VERSIONS: json.dumps(list(versions)).encode()}
    uri = rows_uri(out, name)
    storage.write_parquet_atomic(uri, table.replace_schema_metadata(metadata))
    return uri


def read_rows(out: str, name: str, shard: int, versions) -> list[int] | None:
    """The manifest rows (ascending) the parent `name` planned for shard `shard`, or None
    (with one log line) where its plan is gone or unreadable, or was made from another
    version of the manifest (`versions`: `Manifest.versions` now): plan it all."""

    def parsed(table: pa.Table) -> tuple[list, list[int]]:
        planned = json.loads((table.schema.metadata or {})[MANIFEST_VERSIONS])
        held = table.filter(pc.equal(table.column("shard"), shard)).column("row_index")
        return planned, sorted(held.cast(pa.int64()).to_pylist())

    read = _read(rows_uri(out, name), "plan", "planning the whole manifest", parsed)
    if read is None:
        return None
    if read[0] != list(versions):
        log.warning("the manifest changed since the parent planned it: planning it whole")
        return None
    return read[1]


def remove_verdict(out: str, name: str) -> None:
    """Remove the verdict `name` of `out` and its plan, best effort: a file that stays is
    small and harmless (no run reads a verdict it was not handed)."""
    for uri in (verdict_uri(out, name), rows_uri(out, name)):
        _remove(uri)


def _remove(uri: str) -> bool:
    """Remove `uri`, best effort; whether it was."""
    try:
        storage.remove(uri)
        return True
    except OSError as error:  # gone already, or the store refused: left behind
        log.debug("%s not removed: %s", uri, error)
        return False


# a verdict or plan this old is one a killed parent left: removed by the next parent (a
# shard still reading it would find none and vouch in full: slower, never wrong)
LEFT_AFTER_S = 7 * 24 * 3600.0


def remove_left(out: str, now: float | None = None) -> int:
    """Remove the verdicts and plans under `out` older than `LEFT_AFTER_S` (those of parents
    killed before their block ended), best effort; returns how many were removed."""
    now = time.time() if now is None else now
    folder = records.state_dir(out, FOLDER)
    found = storage.file_versions(folder).to_pylist()
    left = [file["path"].rsplit("/", 1)[-1] for file in found
            if file["mtime"] is not None and file["mtime"] < now - LEFT_AFTER_S]  # fmt: skip
    return sum(_remove(storage.join(folder, name)) for name in left)


@contextlib.contextmanager
def handed_down(out: str, name: str | None) -> Iterator[None]:
    """The block in which a parent's verdict `name` (None: none) serves its shards; removed
    when the block ends, however it ends (and, as it begins, what killed parents left:
    `remove_left`)."""
    if name is not None:
        remove_left(out)
    try:
        yield
    finally:
        if name is not None:
            remove_verdict(out, name)
