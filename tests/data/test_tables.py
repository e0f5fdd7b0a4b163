"""Parquet from the wild (issue 14): manifest folders written by several tools whose files
disagree on a column's physical type, and results that read back with pandas, pyarrow and
polars whatever types and pandas metadata the manifest carried."""

from __future__ import annotations

import os

import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import easel.flows.sweep  # noqa: F401  Prefect sets up its log handler on import: not under capsys
from easel.data.manifest import SweepDefaults, read_manifest, validate_manifest
from easel.errors import InvalidInput

DEFAULTS = SweepDefaults(model="tiny-shapes", guidance_scale=7.5, num_inference_steps=20,
                         max_pixels=512 * 512)  # fmt: skip
STRINGS = {
    "string": lambda values: pa.array(values, pa.string()),
    "large_string": lambda values: pa.array(values, pa.large_string()),
    "string_view": lambda values: pa.array(values, pa.string_view()),
    "dictionary": lambda values: pa.array(values, pa.string()).dictionary_encode(),
    "all null": lambda values: pa.nulls(len(values)),
}
INTEGERS = {
    "int32": lambda values: pa.array(values, pa.int32()),
    "int64": lambda values: pa.array(values, pa.int64()),
    "uint16": lambda values: pa.array(values, pa.uint16()),
    "all null": lambda values: pa.nulls(len(values)),
}
FLOATS = {
    "float32": lambda values: pa.array(values, pa.float32()),
    "float64": lambda values: pa.array(values, pa.float64()),
    "int64": lambda values: pa.array([int(v) for v in values], pa.int64()),
    "all null": lambda values: pa.nulls(len(values)),
}
# (column, its variants, the values of file 1 and file 2)
COLUMNS = [
    ("negative_prompt", STRINGS, ["blurry", "red"], ["green", "dark"]),
    ("seed", INTEGERS, [1, 2], [3, 4]),
    ("guidance_scale", FLOATS, [3.0, 4.0], [5.0, 6.0]),
]
PAIRS = [
    (column, a, b, first, second)
    for column, variants, first, second in COLUMNS
    for a in variants for b in variants if a < b
]  # fmt: skip


def write_file(path, column: str, array: pa.Array, prompts: list[str]) -> None:
    pq.write_table(pa.table({"prompt": pa.array(prompts), column: array}), path)


@pytest.mark.parametrize(("column", "a", "b", "first", "second"), PAIRS,
                         ids=[f"{p[0]}:{p[1]}+{p[2]}" for p in PAIRS])  # fmt: skip
def test_a_folder_whose_files_disagree_on_physical_types_reads_as_one_table(
    tmp_path, column, a, b, first, second
):
    variants = dict(COLUMNS_BY_NAME[column])
    write_file(tmp_path / "1.parquet", column, variants[a](first), ["p1", "p2"])
    write_file(tmp_path / "2.parquet", column, variants[b](second), ["p3", "p4"])
    manifest = read_manifest(str(tmp_path))
    values = manifest.table.column(column).to_pylist()
    expected = [*(first if a != "all null" else [None] * 2),
                *(second if b != "all null" else [None] * 2)]  # fmt: skip
    assert values == pytest.approx(expected) if column == "guidance_scale" else values == expected
    jobs, failures = validate_manifest(manifest, DEFAULTS)
    assert len(jobs) == 4 and not failures, failures


COLUMNS_BY_NAME = {column: variants for column, variants, _, _ in COLUMNS}


@pytest.mark.parametrize("numbers", ["float64", "int64"])
def test_a_true_type_conflict_names_the_column_and_the_files(tmp_path, numbers):
    write_file(tmp_path / "a.parquet", "guidance_scale", FLOATS[numbers]([3.0, 4.0]), ["p", "q"])
    write_file(tmp_path / "b.parquet", "guidance_scale", pa.array(["3", "4"]), ["r", "s"])
    with pytest.raises(InvalidInput) as error:
        read_manifest(str(tmp_path))
    message = str(error.value)
    arrow_name = {"float64": "double", "int64": "int64"}[numbers]
    for words in ("`guidance_scale`", "a.parquet", "b.parquet", "string", arrow_name):
        assert words in message, message


@pytest.mark.usefixtures("prefect_server")
def test_a_true_type_conflict_exits_2_from_the_command(tmp_path, capsys):
    from easel.cli import main

    write_file(tmp_path / "a.parquet", "seed", pa.array([1, 2]), ["p", "q"])
    write_file(tmp_path / "b.parquet", "seed", pa.array(["x", "y"]), ["r", "s"])
    assert main(["sweep", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert "`seed`" in error and len(error.splitlines()) == 1, error


def pandas_manifest(path) -> None:
    """What a data team's pandas writes: categoricals, int32 with gaps, a named index."""
    frame = pd.DataFrame(
        {"prompt": pd.Categorical(["a red circle", "a blue square", "a red circle"]),
         "seed": pd.array([7, None, None], dtype="Int32"),  # easel derives 2 seeds > 2**31
         "scheduler": pd.Categorical(["euler", None, "ddim"]),
         "batch": pd.array([1, 1, 2], dtype="int8"), "status": ["draft", "final", "final"]},
        index=pd.Index(["x", "y", "z"], name="key"),
    )  # fmt: skip
    frame.to_parquet(path)


def polars_manifest(path) -> None:
    frame = pl.DataFrame({"id": ["p-1", "p-2"], "prompt": ["a green star", "a heart"],
                          "num_images": pl.Series([2, 1], dtype=pl.UInt8)})  # fmt: skip
    frame.write_parquet(path)


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize("writer", [pandas_manifest, polars_manifest])
def test_results_read_back_with_pandas_pyarrow_and_polars(tmp_path, writer):
    from easel.flows.sweep import SweepParameters, sweep_flow

    manifest = tmp_path / "manifest.parquet"
    writer(manifest)
    out = tmp_path / "out"
    summary = sweep_flow(SweepParameters(manifest=str(manifest), out=str(out),
                                         num_inference_steps=1))  # fmt: skip
    results = os.path.join(out, "results.parquet")
    table = pq.read_table(results)
    frame = pd.read_parquet(results)
    polars_frame = pl.read_parquet(results)
    expected_rows = summary.images_ok + summary.images_failed
    assert table.num_rows == len(frame) == polars_frame.height == expected_rows
    assert frame["seed"].tolist() == table.column("seed").to_pylist()
    assert str(frame["seed"].dtype) == "Int64"  # nullable: exact above 2**53, nulls as <NA>
    assert polars_frame["image_uri"].to_list() == table.column("image_uri").to_pylist()
    assert all(status == "ok" for status in table.column("status").to_pylist())
    if writer is pandas_manifest:
        seeds = table.column("seed").to_pylist()
        assert seeds[0] == 7 and all(s > 2**31 for s in seeds[1:])  # resolved, beyond int32
        assert table.column("scheduler").to_pylist() == ["euler", "ddim", "ddim"]
        assert frame["status"].tolist() == ["ok"] * 3  # the result field, not the manifest's
        assert frame["key"].tolist() == ["x", "y", "z"]  # pandas' index, passed through


def test_pandas_all_nan_columns_and_empty_partitions_take_the_others_types(tmp_path):
    """pandas writes a string column holding only NaN, and every column of an empty
    partition, as double: no value there, so no conflict."""
    import numpy as np

    pd.DataFrame({"id": ["a"], "prompt": ["a red circle"], "negative_prompt": ["blue"]}).to_parquet(
        tmp_path / "a.parquet"
    )
    pd.DataFrame({"id": ["f"], "prompt": ["a red circle"], "negative_prompt": [np.nan]}).to_parquet(
        tmp_path / "f.parquet"
    )
    pd.DataFrame({"id": [], "prompt": [], "negative_prompt": []}).to_parquet(tmp_path / "c.parquet")
    manifest = read_manifest(str(tmp_path))
    assert manifest.table.column("negative_prompt").to_pylist() == ["blue", None]
    assert manifest.table.schema.field("id").type == pa.string()


@pytest.mark.usefixtures("prefect_server")
def test_rows_without_an_id_in_an_id_column_get_their_derived_id_in_results(tmp_path):
    from easel.flows.sweep import SweepParameters, sweep_flow

    pq.write_table(pa.table({"id": ["given", None], "prompt": ["a red circle", "a blue star"]}),
                   tmp_path / "m.parquet")  # fmt: skip
    sweep_flow(SweepParameters(manifest=str(tmp_path / "m.parquet"), out=str(tmp_path / "out"),
                               num_inference_steps=1))  # fmt: skip
    rows = pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()
    assert rows[0]["id"] == "given" and rows[1]["id"].startswith("row-")
    assert f"/images/{rows[1]['id']}/0.png" in rows[1]["image_uri"]


@pytest.mark.usefixtures("prefect_server")
def test_a_seed_beyond_2_to_the_53_reads_back_exactly_with_pandas_next_to_a_failed_row(tmp_path):
    from easel.flows.sweep import SweepParameters, sweep_flow

    big = 2**53 + 1
    pq.write_table(pa.table({"id": ["big", "bad"], "prompt": ["a red circle", "a star"],
                             "seed": [big, 5], "width": [64, 65]}), tmp_path / "m.parquet")
    sweep_flow(SweepParameters(manifest=str(tmp_path / "m.parquet"), out=str(tmp_path / "out"),
                               num_inference_steps=1))  # fmt: skip
    frame = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert frame["seed"].tolist() == [big, 5]  # the failed row keeps its seed too
    assert frame["image_index"].isna().tolist() == [False, True]


def test_manifests_typing_a_column_differently_keep_their_rows_in_one_output(tmp_path):
    """Two manifests into one output, a pass-through column an int in one and a string (or a
    list of items) in the other: both keep their rows, the column as text where no cast
    joins them."""
    from easel.data.results import write_results

    out = str(tmp_path)
    write_results(out, pa.table({"id": ["a"], "note": [1], "items": [[{"w": 1.0}]]}))
    write_results(out, pa.table({"id": ["b"], "note": ["hello"], "items": ["plain"]}))
    table = pq.read_table(os.path.join(out, "results.parquet"))
    assert table.column("id").to_pylist() == ["b", "a"]
    assert table.column("note").to_pylist() == ["hello", "1"]
    assert table.column("items").to_pylist() == ["plain", '[{"w": 1.0}]']
    write_results(out, pa.table({"id": ["c"], "note": [2.5], "items": [None]}))  # cast to it
    assert pq.read_table(os.path.join(out, "results.parquet")).num_rows == 3
