"""Reading a sweep manifest (SPEC §5): its Parquet files through fsspec, as one table whose
columns each have one type. A manifest unusable as a whole raises `InvalidInput`."""

from __future__ import annotations

import functools
import posixpath
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from easel.data import columns, fusion, storage
from easel.errors import InvalidInput


@dataclass(frozen=True)
class Manifest:
    """The raw table (kept for pass-through columns) and where it came from."""

    table: pa.Table
    uri: str
    root: str  # the folder that relative image paths resolve against
    files: list[str] = field(default_factory=list)
    # each file's version as read (`storage.version_tag`): what a later reader compares
    versions: tuple[str, ...] = ()


def manifest_files(uri: str) -> tuple[list[str], str]:
    """The Parquet files named by `uri` (a file, a folder or a glob) and their root folder."""
    fs, path = storage.filesystem(uri)
    protocol = uri.split("://", 1)[0] + "://" if "://" in uri else ""
    if any(ch in path for ch in "*?["):
        files = sorted(fs.glob(path))
        root = posixpath.dirname(path.split("*", 1)[0].split("?", 1)[0].split("[", 1)[0])
    elif fs.isdir(path):
        files = sorted(p for p in fs.find(path) if p.endswith(".parquet"))
        root = path
    elif fs.exists(path):
        files, root = [path], posixpath.dirname(path)
    else:
        raise InvalidInput(f"manifest {uri!r} does not exist")
    if not files:
        raise InvalidInput(f"manifest {uri!r} names no Parquet file")
    return [_with_protocol(protocol, f) for f in files], _with_protocol(protocol, root)


def _with_protocol(protocol: str, path: str) -> str:
    if protocol in ("", "file://"):
        return path
    return protocol + path


def read_manifest(uri: str) -> Manifest:
    """Read and concatenate the manifest's files; raise `InvalidInput` if it is unusable.

    Read once per process while its files are unchanged (the CLI checks a manifest before
    its flow plans it: one read)."""
    files, root = manifest_files(uri)
    versions = []
    for file_uri in files:
        fs, path = storage.filesystem(file_uri)
        versions.append(storage.version_tag(fs.info(path)))
    return _read_files(uri, root, tuple(files), tuple(versions))


@functools.lru_cache(maxsize=8)
def _read_files(uri: str, root: str, files: tuple[str, ...], versions: tuple[str, ...]):
    tables = []
    for file_uri in files:
        fs, path = storage.filesystem(file_uri)
        try:
            with fs.open(path, "rb") as f:
                tables.append(pq.read_table(f))
        except (pa.ArrowInvalid, OSError) as error:
            raise InvalidInput(
                f"manifest file {file_uri!r} is not a readable Parquet file: {error}"
            ) from None
    table = _concatenated(tables, files, uri)
    if "prompt" not in table.column_names and fusion.COLUMN not in table.column_names:
        raise InvalidInput(
            f"manifest {uri!r} has no `prompt` column (columns: {', '.join(table.column_names)})"
        )
    return Manifest(table=table, uri=uri, root=root, files=list(files), versions=versions)


def _logical(type_: pa.DataType) -> pa.DataType:
    """The type a column's values have, whatever its physical encoding: dictionaries
    decoded, large and view strings (and binaries) as plain ones."""
    if pa.types.is_dictionary(type_):
        type_ = type_.value_type
    if pa.types.is_large_string(type_) or pa.types.is_string_view(type_):
        return pa.string()
    if pa.types.is_large_binary(type_) or pa.types.is_binary_view(type_):
        return pa.binary()
    return type_


def _common_type(types: list[pa.DataType]) -> pa.DataType | None:
    """The type all of `types` (no nulls among them) read as; None if they conflict."""
    distinct = list(dict.fromkeys(types))
    if len(distinct) == 1:
        return distinct[0]
    if all(pa.types.is_integer(t) for t in distinct):
        return pa.int64()
    if all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in distinct):
        return pa.float64()
    if all(_is_struct_list(t) for t in distinct):
        return _merged_struct_list(distinct)
    return None


def _is_struct_list(type_: pa.DataType) -> bool:
    is_list = pa.types.is_list(type_) or pa.types.is_large_list(type_)
    return is_list and pa.types.is_struct(type_.value_type)


def _merged_struct_list(types: list[pa.DataType]) -> pa.DataType | None:
    """Lists of structs (`fusion_inputs` items written with different keys or number types)
    as one list of structs holding every key; None if a key's types conflict."""
    keys: dict[str, list[pa.DataType]] = {}
    for type_ in types:
        for item_field in type_.value_type:
            keys.setdefault(item_field.name, []).append(_logical(item_field.type))
    # a key no item of a file sets has type null there: it takes the others' type
    merged = [(name, _common_type([t for t in key_types if not pa.types.is_null(t)] or [pa.null()]))
              for name, key_types in keys.items()]  # fmt: skip
    if any(common is None for _, common in merged):
        return None
    return pa.list_(pa.struct(merged))


def _concatenated(tables: list[pa.Table], files: tuple[str, ...], uri: str) -> pa.Table:
    """The files' tables as one, each column of one type: physical variants (string,
    large_string, dictionary; int32 and int64) agree, and a column that holds no value in a
    file (all null, whatever type the writer gave it, as pandas writes an all-NaN column or
    an empty partition as double) takes the others' type; a true conflict (strings in one
    file, numbers in another) is `InvalidInput` naming the column and the files. Pandas'
    schema metadata, which describes one file, is dropped."""
    names = list(dict.fromkeys(name for table in tables for name in table.column_names))
    schema = []
    for name in names:
        typed = [(file, _logical(table.schema.field(name).type))
                 for file, table in zip(files, tables, strict=True)
                 if name in table.column_names
                 and table.column(name).null_count < table.num_rows]  # fmt: skip
        if not typed:  # no value anywhere: the type its first file gives it
            first = next(table for table in tables if name in table.column_names)
            typed = [(files[0], _logical(first.schema.field(name).type))]
        common = _common_type([t for _, t in typed])
        if common is None:
            shown = "; ".join(f"{t} in {file!r}" for file, t in typed[:4])
            raise InvalidInput(f"manifest {uri!r}: column `{name}` has conflicting types: {shown}")
        schema.append(pa.field(name, common))
    schema = pa.schema(schema)
    unified = []
    for file, table in zip(files, tables, strict=True):
        arrays = [
            _as_common(table, f, file, uri)
            if f.name in table.column_names
            and table.column(f.name).null_count < table.num_rows
            else pa.nulls(table.num_rows, f.type)  # absent, or no value in this file
            for f in schema
        ]  # fmt: skip
        unified.append(pa.Table.from_arrays(arrays, schema=schema))
    return pa.concat_tables(unified)


def _as_common(table: pa.Table, field: pa.Field, file: str, uri: str) -> pa.ChunkedArray:
    """A file's column as the type all files read as; `InvalidInput` naming the column, the
    file and the value that does not fit it (an unsigned 2**63 among signed integers, an
    integer beyond 2**53 among floats)."""
    try:
        return columns.cast(table.column(field.name), field.type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
        raise InvalidInput(
            f"manifest {uri!r}: column `{field.name}` of {file!r} "
            f"({table.schema.field(field.name).type}) does not fit the type the manifest's "
            f"files share ({field.type}): {error}; write it with one type in every file"
        ) from None


def write_manifest(uri: str, rows: list[dict[str, Any]]) -> str:
    """Write `rows` as a manifest (columns: the union of their keys, in order), atomically."""
    keys = list(dict.fromkeys(key for row in rows for key in row))
    table = pa.Table.from_pylist([{key: row.get(key) for key in keys} for row in rows])
    storage.write_parquet_atomic(uri, table)
    return uri
