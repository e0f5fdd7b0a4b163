"""Arrow columns cast to another type, nested ones included (manifests, results)."""

from __future__ import annotations

import pyarrow as pa


def cast(column: pa.ChunkedArray, type_: pa.DataType) -> pa.ChunkedArray:
    """`column` (any length, any number of chunks) as `type_`, as `ChunkedArray.cast` makes
    it; returned as it is when it has that type already. Raises what that cast raises
    (`pa.ArrowInvalid`, `pa.ArrowNotImplementedError`, `pa.ArrowTypeError`) where a value
    does not fit `type_`.

    pyarrow's cast (25.0 and before) of a list (list, large, fixed-size, map) whose values
    keep their type but hold a field of type null, at any depth (the `text` of fusion items
    that all lack one: `list<struct<text: null, ...>>`), returns an invalid array: that
    field as long as the list, not its values. Such a result is found by its structural
    check (`validate`, no data read) and cast again through Python values, one chunk at a
    time."""
    if column.type.equals(type_):
        return column
    result = column.cast(type_)
    try:
        result.validate()
    except pa.ArrowInvalid:
        chunks = [pa.array(chunk.to_pylist(), type_) for chunk in column.chunks]
        result = pa.chunked_array(chunks, type_)
    return result
