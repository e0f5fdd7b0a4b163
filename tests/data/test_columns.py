"""Columns cast to another type, nested ones holding a null-typed field included (the
`fusion_inputs` of items that all lack a text), whole, chunked and sliced."""

from __future__ import annotations

import decimal

import pyarrow as pa
import pytest

from easel.data import columns

ITEM = pa.struct([("text", pa.null()), ("image", pa.string()), ("weight", pa.float32())])
WIDE_ITEM = pa.struct([("text", pa.null()), ("image", pa.string()), ("weight", pa.float64())])
ITEMS = [{"text": None, "image": "red.png", "weight": 1.0},
         {"text": None, "image": "blue.png", "weight": 0.5}]  # fmt: skip

# (values, their type, the type they are cast to): pyarrow's own cast (25.0) returns an
# invalid array for the first five; the others it casts right
CASES = {
    "list<struct<null>> to itself": ([ITEMS, ITEMS[:1], None], pa.list_(ITEM), pa.list_(ITEM)),
    "list field renamed": (
        [ITEMS, None, ITEMS],
        pa.list_(pa.field("element", ITEM)),
        pa.list_(ITEM),
    ),
    "a null list inside, a sibling widened": (
        [{"a": [None, None], "w": 1.0}, {"a": [None], "w": 2.0}, None],
        pa.struct([("a", pa.list_(pa.null())), ("w", pa.float32())]),
        pa.struct([("a", pa.list_(pa.null())), ("w", pa.float64())]),
    ),
    "large list of items": ([ITEMS, [], ITEMS[1:]], pa.large_list(ITEM), pa.large_list(ITEM)),
    "list of lists of null": (
        [[[None], [None, None]], [], None],
        pa.list_(pa.list_(pa.null())),
        pa.list_(pa.list_(pa.null())),
    ),
    "fixed-size list": ([ITEMS, ITEMS, None], pa.list_(ITEM, 2), pa.list_(WIDE_ITEM, 2)),
    "map to nulls": (
        [[("k", None), ("j", None)], [], None],
        pa.map_(pa.string(), pa.null()),
        pa.map_(pa.large_string(), pa.null()),
    ),
    "items' null text to strings": (
        [ITEMS, None],
        pa.list_(ITEM),
        pa.list_(
            pa.struct([("text", pa.string()), ("image", pa.string()), ("weight", pa.float64())])
        ),
    ),
    "decimals widened": (
        [decimal.Decimal("1.25"), None, decimal.Decimal("-3.50")],
        pa.decimal128(5, 2),
        pa.decimal128(12, 4),
    ),
}


def shapes(values: list, type_: pa.DataType) -> dict[str, pa.ChunkedArray]:
    """The values as one chunk, as two chunks, and as a slice of a longer column."""
    whole = pa.array(values, type_)
    longer = pa.array(values + values + values, type_)
    return {
        "one chunk": pa.chunked_array([whole]),
        "two chunks": pa.chunked_array([whole.slice(0, 1), whole.slice(1)]),
        "sliced": pa.chunked_array([longer]).slice(len(values), len(values)),
    }


@pytest.mark.parametrize("case", CASES)
def test_a_cast_column_is_valid_and_holds_the_same_values(case):
    values, source, target = CASES[case]
    for shape, column in shapes(values, source).items():
        cast = columns.cast(column, target)
        cast.validate(full=True)
        assert cast.type == target, shape
        assert cast.to_pylist() == pa.array(values, source).to_pylist(), shape


def test_a_column_of_the_type_asked_is_returned_as_it_is():
    column = pa.chunked_array([pa.array([ITEMS], pa.list_(ITEM))])
    assert columns.cast(column, pa.list_(ITEM)) is column


def test_a_value_the_type_cannot_hold_raises_as_pyarrow_does():
    with pytest.raises(pa.ArrowInvalid, match="300"):
        columns.cast(pa.chunked_array([pa.array([1, 300])]), pa.int8())
