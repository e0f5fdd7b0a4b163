"""A sweep's record state under `OUT/.easel/` (SPEC §5): what it wrote, and what vouches.

Layout:

- `records/<batch key>.parquet`: one small record shard per finished batch, written after
  its images (the marker, last): the unit of commitment.
- `records/part-<p>/compacted-<uuid>.parquet`: many shards' rows (`compact`), spread over
  `PARTS` parts by their slot's digest, so that a shard of a sweep reads only its parts.
  Written whole before the shards they hold are removed, so a kill at any point loses no
  row; a row held twice (the kill fell between the write and the removals) is one record:
  readers drop exact duplicates, and of several records of one slot the later
  `written_at` wins. (An older easel, reading `records/*.parquet` only, sees none of them:
  it generates again what they hold.)
- `progress/<flow run id>~<writer>.json`: what one writer of a shard's flow run has
  recorded so far (`Tally`), rewritten after each batch: the sharded parent's progress
  and outcome come from these small files, never from the records.
- `vouched/<flow run id>.parquet`: a sharded parent's verdict on the output's images
  (`easel.data.verdict`): the ok records its planning pass found stale, handed to its shard
  runs so that they do not list `images/` again; removed when its shards end.
- `quarantine/<name>`: a file of `records/` that could not be read (zero-length, cut
  short, not Parquet), set aside with one warning; its images are checked again as any
  image without a record is, and generated again.

Every read lists `records/` once and fetches its files concurrently (one `cat` of many
paths: parallel requests on an object store).
"""

from __future__ import annotations

import itertools
import json
import logging
import posixpath
import uuid
from dataclasses import asdict, dataclass, field, fields
from typing import Annotated, get_args, get_origin, get_type_hints

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from easel.data import storage
from easel.data.batching import ALL, Shard, slot_hash

log = logging.getLogger(__name__)

LORAS_TYPE = pa.list_(pa.struct([("path", pa.string()), ("scale", pa.float64()),
                                 ("sha256", pa.string())]))  # fmt: skip
COMPACTED_PREFIX = "compacted-"
PART_PREFIX = "part-"
# the parts compacted records are spread over, by slot (`batching.slot_hash`): a shard
# `i` of `n` (n dividing it) reads only the parts p with p % n == i
PARTS = 64
MERGE_AT = 8  # files a part holds before a compaction merges them into one
# small record shards a planning pass finds before it compacts them (a run's end always does)
COMPACT_AT = 64
# the columns that tell one record from another (two files holding the same row: one record)
IDENTITY = ("id", "image_index", "request_key", "status", "written_at", "flow_run_id",
            "image_sha256")  # fmt: skip


@dataclass
class ImageRecord:
    """What happened to one image (or to a whole row that failed before generation). Its
    fields, in order, are the record shards' columns (`RECORD_SCHEMA`): each nullable, typed
    as the annotation says (`str`: string, `int`: int64, `float`: double, an `Annotated`
    Arrow type as given)."""

    id: str
    request_key: str | None
    image_index: Annotated[int | None, pa.int32()]
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
    flow_run_id: str | None = None  # the Prefect flow run that generated it (a shard's own)
    # the PNG's size as written: a file changed since is redone (None: a record written
    # before it; the size is not checked)
    image_bytes: int | None = None
    # when (Unix seconds): of two records of one image, the later wins (None: a record
    # written before it, the oldest)
    written_at: float | None = None
    # the model's safety checker flagged it (the image is black); None: no checker ran (the
    # model has none, or its `safety_checker` is off)
    nsfw_content_detected: bool | None = None
    # the LoRA adapters applied, stacked, as [{path, scale, sha256}] (None: none)
    loras: Annotated[list | None, LORAS_TYPE] = None


ARROW_TYPES = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}


def _arrow_type(hint) -> pa.DataType:
    """The Arrow type of a field's annotation: an `Annotated` one's Arrow type, else the type
    (None aside) through `ARROW_TYPES`."""
    if get_origin(hint) is Annotated:
        return next(extra for extra in get_args(hint)[1:] if isinstance(extra, pa.DataType))
    (kind,) = [arg for arg in get_args(hint) or (hint,) if arg is not type(None)]
    return ARROW_TYPES[kind]


def _record_schema() -> pa.Schema:
    hints = get_type_hints(ImageRecord, include_extras=True)
    return pa.schema([pa.field(f.name, _arrow_type(hints[f.name])) for f in fields(ImageRecord)])


RECORD_SCHEMA = _record_schema()  # a record shard's columns


def state_dir(out: str, *parts: str) -> str:
    return storage.join(out, ".easel", *parts)


def records_dir(out: str) -> str:
    return state_dir(out, "records")


def quarantine_dir(out: str) -> str:
    return state_dir(out, "quarantine")


def write_record_shard(out: str, name: str, records: list[ImageRecord]) -> str:
    """Write the marker for a finished batch, atomically, after its images."""
    table = pa.Table.from_pylist([asdict(r) for r in records], schema=RECORD_SCHEMA)
    uri = storage.join(records_dir(out), f"{name}.parquet")
    storage.write_parquet_atomic(uri, table)
    return uri


@dataclass
class State:
    """The records of an output as read: `table` (`RECORD_SCHEMA`, exact duplicates
    dropped) and the files it came from (protocol-less paths of `fs`), each with its rows."""

    fs: object
    table: pa.Table
    read: dict[str, pa.Table]

    def records(self) -> list[ImageRecord]:
        return [ImageRecord(**row) for row in self.table.to_pylist()]

    @property
    def files(self) -> list[str]:
        return list(self.read)

    @property
    def crowded(self) -> bool:
        """Compaction is due: `COMPACT_AT` small files, or a part of `MERGE_AT` files."""
        counts: dict = {}
        for file in self.read:
            counts[_part_of_file(file)] = counts.get(_part_of_file(file), 0) + 1
        parts = [n for part, n in counts.items() if part is not None]
        return counts.get(None, 0) >= COMPACT_AT or max(parts, default=0) >= MERGE_AT

    @property
    def small_files(self) -> list[str]:
        """Files not compacted into a part (a part's files are `part-<p>/...`)."""
        return [f for f in self.read if not _part_of_file(f)]


def _part_of_file(file: str) -> int | None:
    folder = posixpath.basename(posixpath.dirname(file))
    return int(folder[len(PART_PREFIX) :]) if folder.startswith(PART_PREFIX) else None


def parts_of(shard: Shard) -> range | list[int]:
    """The parts that hold the slots of `shard`: those p with p % count == index where the
    count divides `PARTS`, else all."""
    if shard.count == 1 or PARTS % shard.count:
        return range(PARTS)
    return [p for p in range(PARTS) if p % shard.count == shard.index]


def read_state(out: str, shard: Shard | None = ALL) -> State:
    """The records under `out` that can hold `shard`'s slots (default: all), read
    concurrently: the small files of `records/` and the parts of `shard` (None: no part).
    A file that vanishes while it is read (another run compacted it: its rows are in a
    newer file) sends the reader back to the listing for the files it has not read; a file
    that cannot be read is quarantined."""
    fs, path = storage.filesystem(records_dir(out))
    read: dict[str, pa.Table] = {}
    while True:
        listed = [f for f in _listing(fs, path, shard) if f not in read]
        if not listed:
            break
        vanished = 0
        for file, data in fs.cat(listed, on_error="return").items():
            if isinstance(data, FileNotFoundError):
                vanished += 1
                continue
            if isinstance(data, BaseException):  # the store failed: not the file's fault
                raise data
            table = _parsed(file, data)
            if table is None:
                quarantine(out, fs, file, data)
                continue
            read[file] = table
        if not vanished:
            break
    table = _without_duplicates(read)
    pa.default_memory_pool().release_unused()  # what decoding the files took and freed
    return State(fs, table, read)


def _listing(fs, path: str, shard: Shard | None) -> list[str]:
    """The record files of `records/` itself and of the parts `shard` needs: the folder
    listed one level deep, then each part needed (all of them: one recursive listing)."""
    if not fs.exists(path):
        return []
    entries = fs.ls(path, detail=True)
    files = [e["name"] for e in entries if e["type"] == "file"]
    parts = {posixpath.basename(e["name"].rstrip("/")) for e in entries if e["type"] != "file"}
    wanted = {f"{PART_PREFIX}{p}" for p in parts_of(shard)} & parts if shard else set()
    if wanted == parts and wanted:
        files = list(fs.find(path))
    else:
        for part in sorted(wanted):
            files += fs.ls(posixpath.join(path, part), detail=False)
    return sorted(f for f in files if f.endswith(".parquet"))


def _parsed(file: str, data: bytes) -> pa.Table | None:
    """The records of one file's bytes as `RECORD_SCHEMA` (older shards lack the newer,
    optional columns: nulls), or None when they are not a readable record file."""
    try:
        with pq.ParquetFile(pa.BufferReader(data)) as file:  # not `read_table`: 5x its speed
            return conformed(file.read())
    except (pa.ArrowException, OSError, ValueError, KeyError) as error:
        log.debug("record file %s unreadable: %s", file, error)
        return None


def conformed(table: pa.Table) -> pa.Table:
    """`table` with `RECORD_SCHEMA`'s columns, in order: a missing one as nulls."""
    columns = [
        table.column(f.name).cast(f.type) if f.name in table.column_names
        else pa.nulls(table.num_rows, f.type)
        for f in RECORD_SCHEMA
    ]  # fmt: skip
    return pa.Table.from_arrays(columns, schema=RECORD_SCHEMA)


def _concat(tables: list[pa.Table]) -> pa.Table:
    return pa.concat_tables(tables) if tables else RECORD_SCHEMA.empty_table()


def _without_duplicates(read: dict[str, pa.Table]) -> pa.Table:
    """The rows of the files `read`, exact duplicates dropped (`unique_rows`) part by part:
    two equal rows share their slot, so their part; a part whose rows come from one file
    alone (a compacted output: one file a part) is taken as it is, its rows never hashed.
    The small files' rows are taken together (deduplicated at once, then split by part):
    an older layout's thousands of files cost a few calls, not a few calls each."""
    pieces: dict[int, list[pa.Table]] = {}
    small = []
    for file, table in read.items():
        part = _part_of_file(file)
        if part is None:
            small.append(table)
        else:
            pieces.setdefault(part, []).append(table)
    if small:
        rows = _concat(small) if len(small) == 1 else unique_rows(_concat(small))
        for part, table in _split_by_part(rows):
            pieces.setdefault(part, []).append(table)
    return _concat([tables[0] if len(tables) == 1 else unique_rows(_concat(tables))
                    for tables in pieces.values()])  # fmt: skip


def _split_by_part(table: pa.Table) -> list[tuple[int, pa.Table]]:
    """The rows of `table` of each part (`part_of_rows`), in their order, part by part."""
    parts = part_of_rows(table)
    order = pc.sort_indices(parts)  # stable: each part's rows keep their order
    table, ordered = table.take(order), parts.take(order).to_numpy()
    starts = [0, *(np.flatnonzero(ordered[1:] != ordered[:-1]) + 1), len(ordered)]
    return [(int(ordered[start]), table.slice(start, end - start))
            for start, end in itertools.pairwise(starts) if end > start]  # fmt: skip


def part_of_rows(table: pa.Table) -> pa.Array:
    """The part (of `PARTS`) each record of `table` falls in, by its slot's digest."""
    slots = zip(*(table.column(n).to_pylist() for n in ("id", "image_index", "request_key")),
                strict=True)  # fmt: skip
    return pa.array([slot_hash(s) % PARTS for s in slots], pa.int64())


def unique_rows(table: pa.Table) -> pa.Table:
    """`table` without rows that repeat an earlier one's `IDENTITY` (the same record held
    by a compacted file and by the shard it was compacted from)."""
    if table.num_rows < 2:
        return table
    numbered = table.select(list(IDENTITY)).append_column("_row", pa.array(range(table.num_rows)))
    first = numbered.group_by(list(IDENTITY), use_threads=False).aggregate([("_row", "min")])
    rows = first.column("_row_min")
    if len(rows) == table.num_rows:
        return table
    return table.take(rows.sort())


def quarantine(out: str, fs, file: str, data: bytes) -> None:
    """Move an unreadable record file under `OUT/.easel/quarantine/`, with one warning."""
    target = storage.path_of(storage.join(quarantine_dir(out), posixpath.basename(file)))
    if fs.exists(target):
        target = f"{target}.{uuid.uuid4().hex[:8]}"
    fs.makedirs(posixpath.dirname(target), exist_ok=True)
    try:
        fs.mv(file, target)
    except FileNotFoundError:  # another reader set it aside first
        return
    reason = "empty" if not data else "not a readable Parquet file"
    log.warning("record file %s is unreadable (%s): moved to %s; its images are checked and "
                "generated again as needed", file, reason, target)  # fmt: skip


def read_records(out: str) -> list[ImageRecord]:
    """Every record under `out` (`read_state`), one object each."""
    return read_state(out).records()


def read_record_shard(fs, file: str) -> list[ImageRecord]:
    """The records of one shard file (older shards lack the newer, optional fields)."""
    with fs.open(file, "rb") as f:
        return [ImageRecord(**row) for row in conformed(pq.read_table(f)).to_pylist()]


def compact(out: str, state: State | None = None) -> list[str]:
    """Move the rows of `state`'s small files (default: `read_state(out, None)`, the small
    files alone) into the parts their slots fall in, one new file per part written whole
    (a part of `state` holding `MERGE_AT` files or more merged into it), then remove the
    files read into them; returns
    the new files' URIs ([]: nothing to compact). Safe against a kill at any step and
    against another run compacting at the same time: a file is removed only after its rows
    are in a file written before."""
    state = state or read_state(out, None)
    by_part: dict[int, list[str]] = {}
    for file in state.read:
        by_part.setdefault(_part_of_file(file), []).append(file)
    merged = [f for p, fs in by_part.items() if p is not None and len(fs) >= MERGE_AT for f in fs]
    moved = state.small_files + merged
    if not moved:
        return []
    rows = unique_rows(_concat([state.read[f] for f in moved]))
    part = part_of_rows(rows)
    written = []
    for p in sorted(set(part.to_pylist())):
        name = f"{COMPACTED_PREFIX}{uuid.uuid4().hex}.parquet"
        uri = storage.join(records_dir(out), f"{PART_PREFIX}{p}", name)
        storage.write_parquet_atomic(uri, rows.filter(pc.equal(part, p)))
        written.append(uri)
    _remove(state.fs, moved)
    return written


def compact_after_run(out: str) -> None:
    """A run's end: `compact(out)`, the small record files alone; a store that fails it
    fails no finished work (one warning: the next run compacts them)."""
    try:
        compact(out)
    except OSError as error:
        log.warning("record files of %s not compacted (%s): the next run compacts them", out,
                    error)  # fmt: skip


def _remove(fs, files: list[str]) -> None:
    """Remove `files`: in one request per 1,000 on an object store; one by one if some are
    gone already (another run compacted them too)."""
    try:
        fs.rm(files)
    except FileNotFoundError:
        for file in files:
            try:
                fs.rm(file)
            except FileNotFoundError:
                pass


@dataclass
class Tally:
    """What one batch writer of flow run `flow_run_id` recorded: images ok and failed, and
    their generation seconds. Written whole to `progress/<flow_run_id>~<writer>.json`."""

    flow_run_id: str
    ok: int = 0
    failed: int = 0
    seconds: float = 0.0
    writer: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def add(self, written: list[ImageRecord]) -> None:
        ok = sum(r.status == "ok" for r in written)
        self.ok, self.failed = self.ok + ok, self.failed + len(written) - ok
        self.seconds += sum(r.duration_s or 0.0 for r in written)

    def write(self, out: str) -> None:
        name = f"{self.flow_run_id}~{self.writer}.json"
        storage.write_text_atomic(state_dir(out, "progress", name), json.dumps(asdict(self)))


def tallies(out: str, flow_run_ids: set[str]) -> list[Tally]:
    """The tallies of the given flow runs' writers: one listing, the files fetched at once."""
    fs, path = storage.filesystem(state_dir(out, "progress"))
    if not fs.exists(path):
        return []
    names = [f for f in fs.ls(path, detail=False)
             if posixpath.basename(f).split("~")[0] in flow_run_ids]  # fmt: skip
    fetched = fs.cat(names, on_error="omit") if names else {}
    return [Tally(**json.loads(data)) for data in fetched.values()]
