"""Sweep records and the results table (SPEC §5).

A batch that finishes writes its images first, then one record shard under
`OUT/.easel/records/` that vouches for them (the marker comes last). A record vouches for
one slot: a row's image k (`images/<id>/<k>.png`) with the content its `request_key`
digests. `results.parquet` is assembled from the manifest and all record shards, so it is
always complete after a rerun, and a rerun skips every slot recorded as ok.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.acero as acero
import pyarrow.compute as pc
import pyarrow.parquet as pq

from easel.data import columns, contact_sheet, fusion, records, storage, verdict
from easel.data.batching import ALL, Shard, SlotSet, SweepPlan
from easel.data.records import (  # noqa: F401 - the names callers import from here
    RECORD_SCHEMA,
    ImageRecord,
    read_record_shard,
    read_records,
    records_dir,
    write_record_shard,
)

log = logging.getLogger(__name__)

RECORD_ONLY = ("id", "request_key", "image_bytes", "written_at")  # not in results.parquet
# what each image adds to its manifest row in results.parquet
RESULT_FIELDS = pa.schema([f for f in RECORD_SCHEMA if f.name not in RECORD_ONLY])
HASHED_PER_READ = 256  # images fetched at once (concurrently) to check their digests
# rows of results.parquet assembled and written at once, as one row group: a bound on the
# memory writing it takes beyond the records (about 10-40 MB of columns a group)
RESULTS_ROW_GROUP = 65_536


def image_uri(out: str, row_id: str, image_index: int) -> str:
    return storage.join(out, "images", row_id, f"{image_index}.png")


SLOT = ("id", "image_index", "request_key")  # the columns of a record's slot


def slot(record: ImageRecord) -> tuple[str, int | None, str | None]:
    """The (row id, image index, request key) a record vouches for."""
    return (record.id, record.image_index, record.request_key)


def vouching_records(out: str, state: records.State | None = None) -> list[ImageRecord]:
    """`vouched`'s records, one object each."""
    return [ImageRecord(**row) for row in vouched(out, state).to_pylist()]


def vouched(out: str, state: records.State | None = None, share: float = 1.0) -> pa.Table:
    """Every record under `out` (`state`: as read by `records.read_state`) but the ok ones
    whose image no longer holds what they wrote: gone, another size, or other bytes than
    their `image_sha256` (replaced since: done again). The image folder is listed once (one
    call per 1,000 files on an object store; on S3 in ranges at once, `share`: about what
    part of the sweep's images `state` holds, as `storage.file_versions`); an image is read
    and hashed only where its listing cannot vouch for it: its size agrees but it was
    modified after a record was written (or a record has no `written_at`), or its records
    disagree on its digest.
    Several files are fetched at once. Columns, not one object per record.

    An image is looked for where it lies in this `out` (`images/<id>/<k>.png`), whatever
    path its record was written with (another host mounting the folder elsewhere), and the
    vouching records name it there (`image_uri`)."""
    table, keep = _judged(out, state or records.read_state(out), share)
    return table if keep.all() else table.filter(pa.array(keep, pa.bool_()))


def _judged(out: str, state: records.State, share: float) -> tuple[pa.Table, np.ndarray]:
    """`state`'s records (their ok ones' `image_uri` where their image lies in `out`) and,
    for each, whether it is kept (`vouched`): a record not ok always is."""
    table, folder = state.table, storage.join(out, "images")
    base, path_base = folder.rstrip("/"), storage.path_of(folder).rstrip("/")
    ok = pc.fill_null(pc.equal(table.column("status"), "ok"), False)
    name = pc.binary_join_element_wise(pc.cast(table.column("image_index"), pa.string()),
                                       ".png", "")  # fmt: skip
    relative = pc.binary_join_element_wise(table.column("id"), name, "/")  # id/k.png
    uris = pc.if_else(ok, pc.binary_join_element_wise(base, relative, "/"),
                      table.column("image_uri"))  # fmt: skip
    table = table.set_column(table.column_names.index("image_uri"), "image_uri", uris)
    checked = pa.table({
        "_row": pa.array(range(table.num_rows), pa.int64()),
        "path": pc.binary_join_element_wise(path_base, relative, "/"),
        **{n: table.column(n) for n in ("image_bytes", "image_sha256", "written_at")},
    }).filter(ok)  # fmt: skip
    del name, relative  # each column freed once used: a million records' peak
    distinct = pc.unique(checked.column("path"))
    every_path_once = len(distinct) == checked.num_rows
    versions = storage.file_versions(folder, distinct.drop_null(), share)
    del distinct
    listed = pc.index_in(checked.column("path"), value_set=versions.column("path").combine_chunks())
    for name in ("size", "mtime"):  # of each record's file as listed: null where it is gone
        checked = checked.append_column(name, versions.column(name).take(listed))
    del versions, listed
    kept = _vouched_rows(folder, checked, every_path_once)
    del checked
    keep = pc.invert(ok).to_numpy(zero_copy_only=False).copy()
    keep[kept] = True
    pa.default_memory_pool().release_unused()  # the listing's and the checks' columns
    return table, keep


def _vouched_rows(folder: str, checked: pa.Table, every_path_once: bool) -> np.ndarray:
    """The `_row`s of the ok records of `checked` (path, image_bytes, image_sha256,
    written_at, and their file's `size` and `mtime` as listed: null where it is gone) whose
    file still holds what they wrote (`_listing_verdict`); a file whose listing cannot tell
    for one of its records, or whose live records disagree on its digest, is read.
    `every_path_once`: no two records name one file (none can disagree)."""
    verdict = _listing_verdict(checked)
    alive = checked.select(["_row", "path", "image_sha256"])  # the columns read below
    alive = alive.append_column("_unsure", pc.is_null(verdict)).filter(
        pc.fill_null(verdict, True))  # fmt: skip
    del verdict
    if every_path_once:
        doubtful = alive.column("path").filter(alive.column("_unsure"))
    else:
        paths = alive.group_by("path", use_threads=False).aggregate([
            ("_unsure", "any"),
            ("image_sha256", "count_distinct", pc.CountOptions(mode="all")),
        ])  # fmt: skip
        unsure = pc.or_(paths.column("_unsure_any"),
                        pc.greater(paths.column("image_sha256_count_distinct"), 1))  # fmt: skip
        doubtful = paths.column("path").filter(unsure)
    if not len(doubtful):  # the usual case: the listing vouches for every live record
        return alive.column("_row").to_numpy()
    in_doubt = pc.is_in(alive.column("path"), doubtful)
    kept = alive.column("_row").filter(pc.invert(in_doubt)).to_numpy()
    doubted = alive.filter(in_doubt)
    digests = _digests(folder, doubtful.to_pylist())
    columns = (doubted.column(n).to_pylist() for n in ("_row", "path", "image_sha256"))
    matched = [row for row, path, digest in zip(*columns, strict=True)
               if digests.get(path) == digest]  # fmt: skip
    return np.concatenate([kept, np.array(matched, np.int64)])


def _listing_verdict(checked: pa.Table) -> pa.ChunkedArray:
    """What the listing says of each ok record's image (`checked`: `_vouched_rows`'): false
    (gone, or another size), true (the same size, untouched since the record was written,
    or a record without a digest: its size is all it vouches for), null (only its bytes can
    tell)."""
    size, recorded = checked.column("size"), checked.column("image_bytes")
    wrong = pc.or_(pc.is_null(size), pc.fill_null(pc.not_equal(recorded, size), False))
    modified, written = checked.column("mtime"), checked.column("written_at")
    untouched = pc.fill_null(pc.less_equal(modified, written), False)
    sure = pc.or_(pc.is_null(checked.column("image_sha256")), untouched)
    return pc.if_else(wrong, False, pc.if_else(sure, True, pa.scalar(None, pa.bool_())))


def _digests(folder: str, paths: list[str]) -> dict[str, str]:
    """The sha256 (hex) of each file of `paths` (of `folder`'s filesystem) still there."""
    fs, _ = storage.filesystem(folder)
    digests = {}
    for start in range(0, len(paths), HASHED_PER_READ):
        fetched = fs.cat(paths[start : start + HASHED_PER_READ], on_error="return")
        digests.update({path: hashlib.sha256(data).hexdigest()
                        for path, data in fetched.items() if isinstance(data, bytes)})  # fmt: skip
    return digests


def done_slots(
    out: str, shard: Shard = ALL, vouched_by: str | None = None, hand_down: str | None = None
) -> set[tuple[str, int, str]]:
    """The slots whose image is done, of `shard` at least, as (row id, image index, request
    key) tuples (`done_slot_set`: the same as digests, a third of the memory)."""
    ok = _done(out, shard, vouched_by, hand_down)
    return set(zip(*(ok.column(n).to_pylist() for n in SLOT), strict=True))


def done_slot_set(
    out: str, shard: Shard = ALL, vouched_by: str | None = None, hand_down: str | None = None
) -> SlotSet:
    """`done_slots` as a `SlotSet`, made `HASHED_AT_ONCE` records at a time: what planning
    asks of a million done images in about 90 MB."""
    done = SlotSet()
    for batch in _done(out, shard, vouched_by, hand_down).to_batches(HASHED_AT_ONCE):
        done.add_columns(*(batch.column(n).to_pylist() for n in SLOT))
    return done


HASHED_AT_ONCE = 65_536  # records made Python values at a time for their slots' digests


def _done(out: str, shard: Shard, vouched_by: str | None, hand_down: str | None) -> pa.Table:
    """The `SLOT` columns of the ok records whose image is done, of `shard` at least (its
    parts of the compacted records, and every small record file): those of the records
    that vouch (`vouched`), or, given a parent's verdict `vouched_by` (a name,
    `verdict.read_verdict`), of every ok record it does not name, without listing `images/`
    (a verdict gone or unreadable: in full, as without). `hand_down` (a name): vouch in full
    and write what was found as that verdict, for the shards of this run. A planning pass
    that finds compaction due (`records.State.crowded`) compacts what it read
    (`records.compact`)."""
    began = time.time()
    state = records.read_state(out, shard)
    handed = verdict.read_verdict(out, vouched_by) if vouched_by else None
    if handed is not None:
        table = handed.trusted(state.table)
    else:
        table, keep = _judged(out, state, 1 / shard.count)
        if hand_down:  # the ok records that did not vouch (all others are kept)
            verdict.write_verdict(out, hand_down, table.filter(pa.array(~keep)), began)
        table = table.filter(pa.array(keep))
    ok = table.filter(pc.and_(pc.equal(table.column("status"), "ok"),
                              pc.is_valid(table.column("request_key"))))  # fmt: skip
    ok = ok.select(list(SLOT))
    if state.crowded:
        records.compact(out, state)
    return ok


def assemble_results(manifest: pa.Table, row_indices, result: pa.Table,
                     rules: AssemblyRules | None = None) -> pa.Table:  # fmt: skip
    """One output row per record of `result` (`RECORD_SCHEMA`), the record of manifest row
    `row_indices[i]` (a list or an Arrow integer array): the manifest row's columns, then
    the result fields.

    `seed` and `scheduler` are replaced in place by their resolved values; every other
    input column passes through with its original type. A manifest without an `id`
    column gets the derived ids, the names of the image folders. `rules`: as
    `assembly_rules` decided them for all the rows this one slice of them belongs to
    (None: for these rows).
    """
    assert len(row_indices) == result.num_rows
    rules = rules or assembly_rules(manifest, row_indices)
    base = manifest.take(pa.array(row_indices, type=pa.int64()))
    ids = result.column("id")
    if "id" not in base.column_names:
        base = base.append_column(pa.field("id", pa.string()), ids)
    elif rules.derived_ids:  # rows without an id: the derived ids
        base = base.set_column(base.column_names.index("id"), pa.field("id", pa.string()), ids)
    for field in RESULT_FIELDS:
        values = result.column(field.name)
        if field.name not in base.column_names:
            base = base.append_column(field, values)
            continue
        given = base.column(field.name)  # seed, scheduler: the resolved values replace it,
        if field.name in rules.kept_given:  # a row that failed keeps the value it gave
            values = pc.coalesce(values, given.cast(field.type))
        base = base.set_column(base.column_names.index(field.name), field, values)
    return base


@dataclass(frozen=True)
class AssemblyRules:
    """What `assemble_results` decides once for all the rows of a results table, so that
    its slices, assembled one by one, agree with the table assembled whole."""

    derived_ids: bool  # the manifest's `id` column is null in one of the rows
    # integer result fields whose manifest values fill their nulls (all of them fit its type)
    kept_given: frozenset[str]


def assembly_rules(manifest: pa.Table, row_indices) -> AssemblyRules:
    """`AssemblyRules` of the manifest rows `row_indices` (as `assemble_results`'); reads
    only the manifest's `id` column and the result fields it also has."""
    rows = pa.array(row_indices, type=pa.int64())
    names = manifest.column_names
    derived = "id" in names and manifest.column("id").take(rows).null_count > 0
    kept = set()
    for field in RESULT_FIELDS:
        if field.name not in names or not pa.types.is_integer(field.type):
            continue
        given = manifest.column(field.name)
        if not pa.types.is_integer(given.type):
            continue
        try:
            given.take(rows).cast(field.type)
            kept.add(field.name)
        except pa.ArrowInvalid:  # a value beyond the field's range: it failed for it
            pass
    return AssemblyRules(derived, frozenset(kept))


def assembled(manifest: pa.Table, row_indices: pa.Array, result: pa.Table | FinalRecords,
              rows_at_once: int = RESULTS_ROW_GROUP) -> Iterator[pa.Table]:  # fmt: skip
    """`assemble_results(manifest, row_indices, result)` in slices of `rows_at_once` rows,
    in order (one empty slice for no rows): only one slice's manifest and result columns
    at a time (`result`: a table, or `FinalRecords`, copied a slice at a time)."""
    rules = assembly_rules(manifest, row_indices)
    for start in range(0, max(result.num_rows, 1), rows_at_once):
        yield assemble_results(manifest, row_indices.slice(start, rows_at_once),
                               result.slice(start, rows_at_once), rules)  # fmt: skip


def results_uri(out: str) -> str:
    """Where the results of the output `out` are: `OUT/results.parquet`."""
    return storage.join(out, "results.parquet")


def write_results(out: str, table: pa.Table | Iterable[pa.Table], ids=None,
                  row_group: int = RESULTS_ROW_GROUP) -> str:  # fmt: skip
    """`results.parquet` of `out`: `table`, then the rows of the one already there whose
    `id` `table` lacks (another manifest swept into the same output keeps its rows).
    `table`: one table, or its slices in order (`assembled`), all of one schema, with
    `ids` the `id` column of them all. Streamed in row groups of at most `row_group` rows
    into a temporary file that appears whole (`storage.atomic_writer`): memory holds one
    slice, not the table. Hold the output's results lock around the read and write."""
    if isinstance(table, pa.Table):
        table, ids = [table], table.column("id")
    slices = iter(table)
    first = next(slices)
    uri = results_uri(out)
    others = _other_rows(uri, ids)
    schema, as_text = first.schema, []
    if others is not None:
        sample, others = _agreeing(first.slice(0, 0), others)
        as_text = [n for n in sample.column_names if sample.schema.field(n) != schema.field(n)]
        schema = pa.unify_schemas([sample.schema, others.schema], promote_options="permissive")
    # pandas' metadata as the whole table's: of the first rows (a dictionary's categories)
    schema = with_pandas_metadata(_conformed(_texted(first.slice(0, 0), as_text), schema)).schema
    with storage.atomic_writer(uri) as f, pq.ParquetWriter(f, schema) as writer:
        for part in itertools.chain([first], slices):
            writer.write_table(_conformed(_texted(part, as_text), schema), row_group_size=row_group)
        for start in range(0, others.num_rows if others is not None else 0, row_group):
            writer.write_table(_conformed(others.slice(start, row_group), schema))
    return uri


def _conformed(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table`'s columns as `schema` orders and types them (`columns.cast`: nested ones
    too), null where it lacks one."""
    conformed = [columns.cast(table.column(f.name), f.type) if f.name in table.column_names
                 else pa.nulls(table.num_rows, f.type) for f in schema]  # fmt: skip
    return pa.Table.from_arrays(conformed, schema=schema)


def _texted(table: pa.Table, names: list[str]) -> pa.Table:
    """`table` with its columns `names` as text (`_as_text`)."""
    for name in names:
        table = _replaced(table, name, _as_text(table.column(name)))
    return table


def _other_rows(uri: str, ids) -> pa.Table | None:
    """The rows of the `results.parquet` at `uri` whose `id` is not among `ids` (another
    manifest's), or None: there are none, there is no file, or it cannot be read (empty,
    cut short: rebuilt from the records, with one warning; the rows of other manifests it
    held are lost with it). The file is opened, not fetched whole: its `id` column is read
    first, then only the row groups holding such rows. An error of the store (opening or
    reading it) is raised: the file is not at fault, and its rows must not be lost."""
    try:
        with storage.open_for_parsing(uri) as handle:
            return _other_rows_in(uri, handle, ids)
    except FileNotFoundError:
        return None


def _other_rows_in(uri: str, handle, ids) -> pa.Table | None:
    try:
        with pq.ParquetFile(handle) as file:
            if "id" not in file.schema_arrow.names:
                return None
            other = pc.invert(pc.is_in(file.read(columns=["id"]).column("id"), ids))
            if not pc.any(other).as_py():
                return None
            return _row_groups_filtered(file, other)
    except storage.StoreReadFailed as failed:
        raise failed.__cause__ from None
    except (pa.ArrowException, OSError) as error:
        log.warning("%s is unreadable (%s): rebuilt from the records", uri, error)
        return None


def _row_groups_filtered(file: pq.ParquetFile, keep: pa.ChunkedArray) -> pa.Table:
    """The rows of `file` where `keep` (one value a row) holds, read a row group at a time
    (a group without one is not read)."""
    parts, start = [], 0
    for group in range(file.num_row_groups):
        rows = file.metadata.row_group(group).num_rows
        kept = keep.slice(start, rows)
        start += rows
        if pc.any(kept).as_py():
            parts.append(file.read_row_group(group).filter(kept))
    return pa.concat_tables(parts)


def _agreeing(table: pa.Table, others: pa.Table) -> tuple[pa.Table, pa.Table]:
    """`table` and an earlier manifest's rows `others` with every column they share of one
    type: the earlier values cast to the new type where that loses nothing (cast back, they
    are the same values: an int32 as int64, not "007" as 7, a struct without one of its
    fields, or a zoned time as a naive one), else both as text (JSON for nested values): a
    pass-through column two manifests type differently (an int, then a string) must not
    cost either manifest its rows nor change their values."""
    for name in set(table.column_names) & set(others.column_names):
        new, old = table.schema.field(name).type, others.schema.field(name).type
        if new == old or pa.types.is_null(new) or pa.types.is_null(old):
            continue
        cast = _lossless_cast(others.column(name), new)
        if cast is not None:
            others = _replaced(others, name, cast)
        else:
            table = _replaced(table, name, _as_text(table.column(name)))
            others = _replaced(others, name, _as_text(others.column(name)))
    return table, others


def _lossless_cast(column: pa.ChunkedArray, type_: pa.DataType) -> pa.ChunkedArray | None:
    """`column` as `type_` where cast back it holds the very same values; else None."""
    if pa.types.is_timestamp(column.type) and pa.types.is_timestamp(type_):
        if column.type.tz != type_.tz:  # the instant kept, the zone lost (or made up)
            return None
    try:
        cast = columns.cast(column, type_)
        back = columns.cast(cast, column.type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None
    return cast if back.equals(column) else None


def _replaced(table: pa.Table, name: str, column) -> pa.Table:
    return table.set_column(table.column_names.index(name), name, column)


def _as_text(column) -> pa.Array:
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return column.cast(pa.string())
    if pa.types.is_nested(column.type):
        import json

        return pa.array([None if v is None else json.dumps(v, default=str)
                         for v in column.to_pylist()], pa.string())  # fmt: skip
    return column.cast(pa.string())


def with_pandas_metadata(table: pa.Table) -> pa.Table:
    """`table` with pandas' schema metadata describing its integer columns as nullable
    (Int64...): without it pandas reads an integer column holding a null (a failed row's
    `seed`, `image_index`) as float64, and seeds above 2**53 lose their last digits. The
    data are unchanged; pyarrow and polars ignore the metadata."""
    import pandas as pd

    nullable = {pa.int8(): pd.Int8Dtype(), pa.int16(): pd.Int16Dtype(),
                pa.int32(): pd.Int32Dtype(), pa.int64(): pd.Int64Dtype()}  # fmt: skip
    try:
        empty = table.slice(0, 0).to_pandas(types_mapper=nullable.get)
        metadata = pa.Table.from_pandas(empty, preserve_index=False).schema.metadata
    except (pa.ArrowException, TypeError, ValueError):  # a type pandas cannot hold: as it is
        return table
    return table.replace_schema_metadata(metadata)


def failed_row(row_id: str, error: str) -> ImageRecord:
    """The one record of a row that failed as a whole."""
    return ImageRecord(
        id=row_id, request_key=None, image_index=None, image_uri=None, status="failed",
        error=error, warning=None, seed=None, model_ref=None, model_digest=None, scheduler=None,
        duration_s=None, image_sha256=None, mlflow_run_id=None,
    )  # fmt: skip


def final_records(plan: SweepPlan, recorded: pa.Table) -> pa.Table:
    """The record (`RECORD_SCHEMA`, with its manifest row's index in `_row`) of every
    requested image, in manifest order (`chosen_records`), as one table."""
    return chosen_records(plan, recorded).table()


@dataclass(frozen=True)
class FinalRecords:
    """The records `chosen_records` picks, not yet copied: the rows `taken` of `source`
    (the records read, then the failed ones made), each of manifest row `rows`. Read a
    column or a slice at a time, so that the whole table is never held twice."""

    source: pa.Table
    taken: pa.Array
    rows: pa.Array

    @property
    def num_rows(self) -> int:
        return len(self.taken)

    def column(self, name: str) -> pa.ChunkedArray:
        return self.source.column(name).take(self.taken)

    def slice(self, start: int, length: int) -> pa.Table:
        return self.source.take(self.taken.slice(start, length))

    def at(self, positions: pa.Array) -> pa.Table:
        """The records at `positions` (of this order), with their `_row`."""
        rows = self.rows.take(positions)
        return self.source.take(self.taken.take(positions)).append_column("_row", rows)

    def table(self) -> pa.Table:
        return self.source.take(self.taken).append_column("_row", self.rows)


def chosen_records(plan: SweepPlan, recorded: pa.Table) -> FinalRecords:
    """The record of every requested image (`SweepPlan.requested`), each the record of its
    own slot (its row, its index, its content), failed images included, in manifest order;
    a row that failed before any of its images was tried (at validation, or a run stopped
    first) keeps one. Of several records of one slot an ok one wins over a failed try, a
    later one over an earlier. In Arrow columns: the slots matched by a join, nothing
    copied but the failed records made."""
    requested = plan.requested()
    found = _best_records(requested, recorded)
    is_found = pc.is_valid(found).to_numpy(zero_copy_only=False)
    rows = requested.column("_row").to_numpy()
    index = requested.column("image_index").to_numpy()
    missing = _not_generated(rows, index, is_found)
    failures, lost = plan.failures, len(plan.failures) + int(missing.sum())
    failed = pa.table({
        "id": pa.concat_arrays([pa.array([f.id for f in failures], pa.string()),
                                requested.column("id").filter(missing).combine_chunks()]),
        "status": pa.array(["failed"] * lost, pa.string()),
        "error": pa.array([f.error for f in failures] + [NOT_GENERATED] * (lost - len(failures)),
                          pa.string()),
    })  # fmt: skip
    source = pa.concat_tables([recorded, _conformed(failed, recorded.schema)])
    order = pa.table({
        "_row": np.concatenate([rows[is_found], np.array([f.row_index for f in failures], np.int64),
                                rows[missing]]),
        "image_index": pa.concat_arrays([pa.array(index[is_found], pa.int64()),
                                         pa.nulls(lost, pa.int64())]),
        "_taken": np.concatenate([found.filter(pa.array(is_found)).to_numpy(zero_copy_only=False),
                                  np.arange(recorded.num_rows, source.num_rows)]).astype(np.int64),
    }).sort_by([("_row", "ascending"), ("image_index", "ascending")])  # fmt: skip
    return FinalRecords(source, order.column("_taken").combine_chunks(),
                        order.column("_row").combine_chunks())  # fmt: skip


def _not_generated(rows: np.ndarray, index: np.ndarray, is_found: np.ndarray) -> np.ndarray:
    """Which requested images (of manifest rows `rows`, image `index`) no record was found
    for (`is_found` false) get a failed record: each of a row some of whose images were
    found, and of a row none of whose were, its first alone."""
    row_found = np.zeros(rows.max() + 1 if len(rows) else 0, bool)
    row_found[rows[is_found]] = True
    return ~is_found & (row_found[rows] | (index == 0))


def _best_records(requested: pa.Table, recorded: pa.Table) -> pa.Array:
    """For each image of `requested` (`SweepPlan.requested`), the row of `recorded` that
    speaks for its slot (`SLOT`), null where none: an ok one over a failed try, a later one
    over an earlier (a record without a time last), an earlier row over a later one."""
    right = pa.table({  # a record without a key (a row failed whole) matches no slot
        **{n: recorded.column(n).cast(requested.schema.field(n).type) for n in SLOT},
        "written_at": recorded.column("written_at"),
        "_ok": pc.fill_null(pc.equal(recorded.column("status"), "ok"), False),
        "_taken": np.arange(recorded.num_rows),
    })  # fmt: skip
    left = requested.select(list(SLOT)).append_column(
        "_wanted", pa.array(np.arange(requested.num_rows)))  # fmt: skip
    joined = _joined(left, right, ["_wanted"], ["_ok", "written_at", "_taken"])
    del left, right
    joined = joined.sort_by([
        ("_wanted", "ascending"), ("_ok", "descending"), ("written_at", "descending"),
        ("_taken", "ascending")])  # fmt: skip
    wanted = joined.column("_wanted").to_numpy()
    first = np.ones(len(wanted), bool)  # the best of each image's matches: its first
    first[1:] = wanted[1:] != wanted[:-1]
    return joined.column("_taken").filter(pa.array(first)).combine_chunks()


def _joined(left: pa.Table, right: pa.Table, left_output: list[str],
            right_output: list[str]) -> pa.Table:  # fmt: skip
    """`left` joined with `right` on the `SLOT` columns (a left outer join: each row of
    `left` with each row of `right` of its slot, or nulls), only `left_output` and
    `right_output` copied out (`Table.join` copies every column)."""
    keys = list(SLOT)
    join = acero.HashJoinNodeOptions("left outer", keys, keys, left_output, right_output)
    sources = [acero.Declaration("table_source", acero.TableSourceNodeOptions(t))
               for t in (left, right)]  # fmt: skip
    return acero.Declaration("hashjoin", join, sources).to_table(use_threads=False)


NOT_GENERATED = "not generated: the run stopped before this image"


MAX_LISTED_FAILURES = 20  # on stderr when a sweep exits 1; all of them are in results


@dataclass(frozen=True)
class SweepSummary:
    """Where a sweep's outputs are and what they count."""

    out: str
    results_uri: str
    contact_sheet_uri: str | None
    rows: int
    images_ok: int
    images_failed: int
    rows_failed: int
    generated_now: int
    failures: tuple[str, ...] = ()  # "id[/k]: error" of the first failed images
    images_nsfw: int = 0  # ok images the safety checker flagged (written black)


def row_captions(manifest: pa.Table, row_indices: list[int]) -> list[str | None]:
    """What each row asked for, in words: its prompt, or its fusion's items."""
    columns = [name for name in ("prompt", fusion.COLUMN) if name in manifest.column_names]
    rows = manifest.select(columns).take(pa.array(row_indices, type=pa.int64())).to_pylist()
    return [row.get("prompt") or fusion.caption(row.get(fusion.COLUMN)) for row in rows]


def publish_results(out: str, manifest: pa.Table, plan: SweepPlan, generated_now: int,
                    row_group: int = RESULTS_ROW_GROUP):  # fmt: skip
    """`results.parquet` assembled from the manifest and every record under `out` that
    vouches (`vouched`), in Arrow columns, written in row groups of `row_group` rows as it
    is assembled (`write_results`), and the contact sheet of its first images; returns the
    `SweepSummary`."""
    final = chosen_records(plan, vouched(out))
    slices = assembled(manifest, final.rows, final, row_group)
    results_uri = write_results(out, slices, final.column("id"), row_group)
    # one array (a column of no chunks, as no image gives, crashes `indices_nonzero`)
    is_ok = pc.fill_null(pc.equal(final.column("status"), "ok"), False).combine_chunks()
    ok, failed = pc.indices_nonzero(is_ok), pc.indices_nonzero(pc.invert(is_ok))
    sheet = None
    if len(ok):
        shown = final.at(ok.slice(0, contact_sheet.MAX_IMAGES)).to_pylist()
        captions = row_captions(manifest, [r["_row"] for r in shown])
        labels = [contact_sheet.tile_label(r["id"], r["image_index"], caption)
                  for r, caption in zip(shown, captions, strict=True)]  # fmt: skip
        sheet = contact_sheet.write_contact_sheet(out, [r["image_uri"] for r in shown], labels)
    listed = final.at(failed.slice(0, MAX_LISTED_FAILURES)).to_pylist()
    return SweepSummary(
        out=out, results_uri=results_uri, contact_sheet_uri=sheet, rows=manifest.num_rows,
        images_ok=len(ok), images_failed=len(failed),
        rows_failed=pc.count_distinct(final.column("id").take(failed)).as_py(),
        generated_now=generated_now,
        images_nsfw=pc.sum(final.column("nsfw_content_detected").take(ok)).as_py() or 0,
        failures=tuple(_failure_line(r) for r in listed),
    )  # fmt: skip


def _failure_line(record: dict) -> str:
    """"id[/k]: error" of a failed record."""
    index = record["image_index"]
    return f"{record['id']}{'' if index is None else f'/{index}'}: {record['error']}"
