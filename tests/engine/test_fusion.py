"""Weighted fusion of many texts and images on Kandinsky 2.2 (`fusion_inputs`): the column's
rules, its weights and request keys without a model; then what the prior makes of the items
on the embedded `tiny-shapes-k22` (read back by the judge), and on random-weight components
against diffusers' own `interpolate`."""

from __future__ import annotations

import math
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from sweep_helpers import (
    fusion_by_diffusers,
    max_pixel_difference,
    pixels,
    read_results,
    write_manifest,
)

from easel.data import shapes
from easel.data.batching import ModelFacts, planned_images
from easel.data.manifest import SweepDefaults, read_manifest, validate_manifest
from easel.flows.sweep import SweepParameters, sweep_flow

DEFAULTS = SweepDefaults(model="tiny-shapes-k22", guidance_scale=4.0, num_inference_steps=20,
                         max_pixels=512 * 512)  # fmt: skip
FACTS = ModelFacts(digest="d" * 64, native_size=64, default_scheduler="ddpm",
                   family="Kandinsky 2.2", tasks=("text2img", "img2img", "fusion"),
                   has_prior=True)  # fmt: skip
STEPS = 20  # the embedded model's decoder steps (0.2 s an image on a CPU)


def item(weight, text=None, image=None) -> dict:
    return {"text": text, "image": image, "weight": weight}


def shape_image(folder, name, shape, colour, ground) -> str:
    """A shapes-world picture the embedded model knows, beside the manifest."""
    shapes.render(shapes.ShapeSpec(shape, colour, ground, 18, (32, 32))).save(folder / name)
    return name


@pytest.fixture
def pictures(tmp_path) -> tuple[str, str]:
    """A red circle on blue and a yellow square on green; and a file that is no image."""
    (tmp_path / "notes.png").write_text("not a picture")
    return (shape_image(tmp_path, "red.png", "circle", "red", "blue"),
            shape_image(tmp_path, "yellow.png", "square", "yellow", "green"))  # fmt: skip


def validate(folder, rows, defaults=DEFAULTS, name="m.parquet"):
    return validate_manifest(read_manifest(write_manifest(folder / name, rows)), defaults)


# -- the column's rules ---------------------------------------------------------------------

# (the bad row's `fusion_inputs`, words its error must hold)
BAD_ITEMS = {
    "negative": ([item(1.0, text="a star"), item(-0.5, image="red.png")],
                 ["`fusion_inputs[1].weight`", "finite number >= 0", "-0.5"]),
    "nan": ([item(math.nan, image="red.png")], ["`fusion_inputs[0].weight`", "nan"]),
    "inf": ([item(1.0, text="a star"), item(math.inf, text="a circle")],
            ["`fusion_inputs[1].weight`", "inf"]),
    "all-zero": ([item(0.0, image="red.png"), item(0.0, text="a star")],
                 ["`fusion_inputs`", "all 0", "[0.0, 0.0]"]),
    "missing-weight": ([item(None, image="red.png")], ["`fusion_inputs[0].weight`", "missing"]),
    "missing-image": ([item(1.0, text="a star"), item(1.0, image="gone.png")],
                      ["`fusion_inputs[1].image`", "gone.png", "does not exist"]),
    "unreadable-image": ([item(1.0, image="notes.png")],
                         ["`fusion_inputs[0].image`", "notes.png", "not an image"]),
    "outside": ([item(1.0, image="../elsewhere.png")],
                ["`fusion_inputs[0].image`", "'../elsewhere.png'", "outside"]),
    "unknown-key": ([item(1.0, text="a star"), {**item(1.0, text="a circle"), "colour": "red"}],
                    ["`fusion_inputs[1]`", "unknown key `colour`", "'red'"]),
    "empty-list": ([], ["`fusion_inputs`", "empty"]),
    "text-and-image": ([item(1.0, text="a star", image="red.png")],
                       ["`fusion_inputs[0]`", "exactly one of `text` and `image`"]),
    "neither": ([item(1.0)], ["`fusion_inputs[0]`", "exactly one of `text` and `image`"]),
    "empty-text": ([item(1.0, text=" ")], ["`fusion_inputs[0].text`", "non-empty", "' '"]),
    "too-many": ([item(1.0, text="a star")] * 17, ["`fusion_inputs`", "17 items", "at most 16"]),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_ITEMS)
def test_a_bad_item_fails_its_row_naming_the_column_the_item_and_the_value(tmp_path, case,
                                                                          pictures):  # fmt: skip
    value, words = BAD_ITEMS[case]
    rows = [
        {"id": "text", "prompt": "a red circle"},
        {"id": "bad", "fusion_inputs": value},
        {"id": "mix", "fusion_inputs": [item(0.5, image="red.png"), item(0.5, text="a star")]},
    ]
    jobs, failures = validate(tmp_path, rows)
    assert [job.id for job in jobs] == ["text", "mix"]
    assert [(f.id, f.row_index) for f in failures] == [("bad", 1)]
    for word in words:
        assert word in failures[0].error, failures[0].error


@pytest.mark.parametrize(("row", "words"), [
    ({"prompt": "a star"}, ["`prompt`", "'a star'", "leave `prompt` empty"]),
    ({"init_image": "red.png"}, ["`init_image`", "'red.png'", "leave it empty"]),
    ({"mask_image": "red.png"}, ["`mask_image`", "leave it empty"]),
    ({"strength": 0.5}, ["`strength`", "0.5"]),
    ({"task": "img2img"}, ["`task`", "'img2img'", "'fusion'"]),
])  # fmt: skip
def test_a_fusion_row_takes_no_prompt_image_or_strength_outside_its_items(
    tmp_path, pictures, row, words
):
    fused = {"fusion_inputs": [item(1.0, image="yellow.png")]}
    jobs, failures = validate(tmp_path, [{"id": "ok", **fused}, {"id": "bad", **fused, **row}])
    assert [job.id for job in jobs] == ["ok"] and len(failures) == 1
    for word in words:
        assert word in failures[0].error, failures[0].error


def test_weights_sum_to_one_unless_the_sweep_keeps_them_raw(tmp_path, pictures):
    items = [item(3, image="red.png"), item(1, text="a green star")]
    rows = [{"id": "mix", "negative_prompt": "blurry", "fusion_inputs": items}]
    [job], failures = validate(tmp_path, rows)
    assert not failures and (job.task, job.prompt, job.negative_prompt) == ("fusion", None,
                                                                            "blurry")
    red, star = job.fusion_inputs
    assert (red.image, red.text, red.weight) == (str(tmp_path / "red.png"), None, 0.75)
    assert (star.image, star.text, star.weight) == (None, "a green star", 0.25)
    assert red.image_sha256 and star.image_sha256 is None
    raw = SweepDefaults(**{**DEFAULTS.__dict__, "fusion_weights": "raw"})
    [job], _ = validate(tmp_path, rows, raw, "raw.parquet")
    assert [i.weight for i in job.fusion_inputs] == [3.0, 1.0]


def test_the_sweep_config_names_one_of_the_two_weight_rules(tmp_path):
    from pydantic import ValidationError

    values = {"manifest": "m.parquet", "out": str(tmp_path)}
    assert SweepParameters(**values).inputs().defaults.fusion_weights == "sum_to_one"
    assert SweepParameters(**values, fusion_weights="raw").inputs().defaults.fusion_weights == "raw"
    with pytest.raises(ValidationError, match="fusion_weights"):
        SweepParameters(**values, fusion_weights="normalised")


def test_request_keys_follow_the_weights_the_prior_gets_and_the_image_bytes(tmp_path, pictures):
    def key(weights, defaults=DEFAULTS):
        items = [item(w, image=name) for w, name in zip(weights, pictures, strict=True)]
        [job], _ = validate(tmp_path, [{"id": "r", "seed": 1, "fusion_inputs": items}], defaults)
        return planned_images(job, FACTS)[0].request_key

    raw = SweepDefaults(**{**DEFAULTS.__dict__, "fusion_weights": "raw"})
    assert key([1, 1]) == key([2, 2]) == key([0.5, 0.5], raw)  # the same embedding, the same key
    assert len({key([1, 1]), key([2, 2], raw), key([1, 3])}) == 3
    before = key([1, 1])
    shape_image(tmp_path, pictures[0], "star", "white", "black")  # edited in place
    assert key([1, 1]) != before


def test_a_manifest_of_fusions_needs_no_prompt_column_and_its_files_may_differ(tmp_path, pictures):
    """Items with different keys or number types, written by pyarrow, pandas and polars
    (large lists, large strings, a key of type null), read as one list of structs."""
    import pandas as pd
    import polars as pl

    parts = tmp_path / "parts"
    parts.mkdir()
    pq.write_table(pa.Table.from_pylist([{"id": "a", "fusion_inputs": [item(1, text="a star")]}]),
                   parts / "1.parquet")  # fmt: skip
    images = [{"image": "../red.png", "weight": 0.5}]
    pd.DataFrame([{"id": "b", "fusion_inputs": images}]).to_parquet(parts / "2.parquet")
    pl.DataFrame([{"id": "c", "fusion_inputs": [item(2.0, text="a circle"), item(2.0, text="x")]}]
                 ).write_parquet(parts / "3.parquet")  # fmt: skip
    manifest = read_manifest(str(parts))
    jobs, failures = validate_manifest(manifest, DEFAULTS, [str(tmp_path)])
    assert not failures, failures
    assert [(j.id, [(i.text, i.weight) for i in j.fusion_inputs]) for j in jobs] == [
        ("a", [("a star", 1.0)]), ("b", [(None, 1.0)]), ("c", [("a circle", 0.5), ("x", 0.5)])
    ]  # fmt: skip
    assert os.path.samefile(jobs[1].fusion_inputs[0].image, tmp_path / "red.png")


def test_a_value_that_is_not_a_list_of_items_fails_its_row(tmp_path):
    for name, values in (("json", ['[{"text": "a star", "weight": 1}]', None]),
                         ("strings", [["a star"], None])):  # fmt: skip
        rows = [{"id": "bad", "fusion_inputs": values[0]},
                {"id": "text", "prompt": "a star", "fusion_inputs": values[1]}]  # fmt: skip
        jobs, failures = validate(tmp_path, rows, name=f"{name}.parquet")
        assert [job.id for job in jobs] == ["text"] and len(failures) == 1
        assert "`fusion_inputs" in failures[0].error and "a star" in failures[0].error


# -- on a model ------------------------------------------------------------------------------


def sweep(tmp_path, name, rows, **params):
    """A sweep of `rows` (one image each) on the embedded model unless `model` is given;
    (summary, result row by id)."""
    manifest = write_manifest(tmp_path / f"{name}.parquet", rows)
    values = {"model": "tiny-shapes-k22", "num_inference_steps": STEPS, "guidance_scale": 4.0,
              **params}  # fmt: skip
    summary = sweep_flow(SweepParameters(manifest=manifest, out=str(tmp_path / name), **values))
    return summary, {r["id"]: r for r in read_results(tmp_path / name)}


@pytest.mark.usefixtures("prefect_server")
def test_a_half_and_half_fusion_lies_between_its_endpoints_in_the_judges_eyes(tmp_path, pictures):
    """Per seed, the judge's features of the 0.5/0.5 fusion of two pictures are nearer to
    each 1/0 fusion than those are to each other, and project between them."""
    from easel.models.shapes.judge import Judge

    red, yellow = pictures
    mixes = {"red": (1.0, 0.0), "half": (0.5, 0.5), "yellow": (0.0, 1.0)}
    rows = [{"id": f"{name}-{seed}", "seed": seed,
             "fusion_inputs": [item(r, image=red), item(y, image=yellow)]}
            for seed in range(3) for name, (r, y) in mixes.items()]  # fmt: skip
    summary, results = sweep(tmp_path, "between", rows)
    assert summary.rows_failed == 0
    judge = Judge.load()
    for seed in range(3):
        images = [Image.open(results[f"{name}-{seed}"]["image_uri"]) for name in mixes]
        red_end, half, yellow_end = judge.features(images).double()
        span = (yellow_end - red_end).norm()
        assert (half - red_end).norm() < span and (half - yellow_end).norm() < span, seed
        along = float((half - red_end) @ (yellow_end - red_end)) / float(span) ** 2
        assert 0 < along < 1, (seed, along)  # 0.44-0.51 measured: an orange shape on green


@pytest.mark.usefixtures("prefect_server")
def test_weights_one_and_zero_reproduce_the_single_image_variation_exactly(tmp_path, pictures):
    red, yellow = pictures
    fusions = {
        "single": [item(1.0, image=red)],
        "one-zero": [item(1.0, image=red), item(0.0, image=yellow)],
        "zero-four": [item(0.0, image=yellow), item(4.0, image=red)],  # 4 sums to one: 1
        "half": [item(1.0, image=red), item(1.0, image=yellow)],
    }
    rows = [{"id": name, "seed": 5, "fusion_inputs": value} for name, value in fusions.items()]
    rows += [{"id": f"{name}-negative", "seed": 5, "fusion_inputs": fusions[name],
              "negative_prompt": "a yellow square"} for name in ("single", "one-zero")]  # fmt: skip
    summary, results = sweep(tmp_path, "variation", rows)
    assert summary.rows_failed == 0
    image = {name: pixels(row["image_uri"]) for name, row in results.items()}
    assert max_pixel_difference(image["single"], image["one-zero"]) == 0
    assert max_pixel_difference(image["single"], image["zero-four"]) == 0
    assert max_pixel_difference(image["single"], image["half"]) > 10
    # the negative prompt reaches the prior, the same way with or without the zero weight
    assert max_pixel_difference(image["single-negative"], image["one-zero-negative"]) == 0
    assert max_pixel_difference(image["single"], image["single-negative"]) > 0


@pytest.mark.usefixtures("prefect_server")
def test_a_three_way_fusion_writes_its_image_and_the_results_keep_its_items(tmp_path, pictures):
    import pandas as pd
    import polars as pl

    red, yellow = pictures
    long_text = "a white star on a black background, " * 3  # beyond the prior's 16 tokens
    three = [item(0.4, image=red), item(0.4, image=yellow), item(0.2, text=long_text)]
    rows = [{"id": "three", "seed": 7, "negative_prompt": "blue", "fusion_inputs": three},
            {"id": "text", "seed": 8, "prompt": "a green heart on a white background"}]
    summary, results = sweep(tmp_path, "three", rows)
    assert summary.rows_failed == 0 and summary.contact_sheet_uri
    row = results["three"]
    with Image.open(row["image_uri"]) as image:
        assert image.size == (64, 64) and row["image_sha256"]
    assert "`fusion_inputs[2].text` has" in row["warning"]
    assert row["fusion_inputs"] == three and row["prompt"] is None  # as the manifest gave them
    uri = tmp_path / "three" / "results.parquet"
    assert pd.read_parquet(uri).set_index("id").loc["three", "fusion_inputs"][2]["weight"] == 0.2
    assert pl.read_parquet(uri).filter(pl.col("id") == "three")["fusion_inputs"].to_list() == [
        three
    ]


@pytest.mark.usefixtures("prefect_server")
def test_bad_items_fail_their_rows_alone_in_a_sweep(tmp_path, pictures):
    cases = ("negative", "nan", "all-zero", "missing-image", "unreadable-image", "unknown-key",
             "empty-list")  # fmt: skip
    rows = [{"id": case, "fusion_inputs": BAD_ITEMS[case][0]} for case in cases]
    good = [item(0.5, image=pictures[0]), item(0.5, text="a star")]
    rows += [{"id": "good", "seed": 3, "fusion_inputs": good},
             {"id": "on-sd", "model": "tiny-shapes", "fusion_inputs": good}]  # fmt: skip
    summary, results = sweep(tmp_path, "bad", rows)
    errors = {row_id: row["error"] for row_id, row in results.items() if row["status"] == "failed"}
    assert set(errors) == {*cases, "on-sd"} and summary.rows_failed == len(cases) + 1
    for case in cases:
        for word in BAD_ITEMS[case][1]:
            assert word in errors[case], errors[case]
    assert "`task` 'fusion'" in errors["on-sd"] and "Stable Diffusion" in errors["on-sd"]
    assert results["good"]["status"] == "ok" and results["good"]["image_sha256"]


@pytest.fixture(scope="module")
def k22(tmp_path_factory) -> str:
    from easel.models.testing.random_pipelines import build_random_kandinsky22

    return build_random_kandinsky22(str(tmp_path_factory.mktemp("k22") / "model"))


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize(("fusion_weights", "prior_weights"), [
    ("sum_to_one", [0.5, 0.2, 0.3]),  # [1, 0.4, 0.6] / 2
    ("raw", [1.0, 0.4, 0.6]),  # diffusers' own weighted sum
])  # fmt: skip
def test_the_prior_gets_diffusers_interpolate_with_the_configured_weights(
    tmp_path, pictures, k22, fusion_weights, prior_weights
):
    red, yellow = pictures
    items = [item(1.0, image=red), item(0.4, text="a blue square"), item(0.6, image=yellow)]
    row = {"id": "r", "seed": 11, "negative_prompt": "green", "fusion_inputs": items}
    summary, results = sweep(tmp_path, fusion_weights, [row], model=k22, num_inference_steps=3,
                             fusion_weights=fusion_weights)  # fmt: skip
    assert summary.rows_failed == 0
    conditions = [Image.open(tmp_path / red).convert("RGB"), "a blue square",
                  Image.open(tmp_path / yellow).convert("RGB")]  # fmt: skip
    expected = fusion_by_diffusers(k22, conditions, prior_weights, 11, 16, 3,
                                   negative_prior_prompt="green")  # fmt: skip
    assert max_pixel_difference(pixels(results["r"]["image_uri"]), expected) <= 2
