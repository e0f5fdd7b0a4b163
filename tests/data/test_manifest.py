"""Manifest reading and row validation (SPEC §5), without any model."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from easel.data.manifest import SweepDefaults, read_manifest, validate_manifest
from easel.errors import InvalidInput

DEFAULTS = SweepDefaults(model="tiny-shapes", guidance_scale=7.5, num_inference_steps=20,
                         max_pixels=512 * 512)  # fmt: skip


def write(tmp_path, rows, name="manifest.parquet", schema=None):
    path = tmp_path / name
    columns = list(dict.fromkeys(key for row in rows for key in row))  # union, in order
    rows = [{key: row.get(key) for key in columns} for row in rows]
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return str(path)


def validate(tmp_path, rows, roots=()):
    return validate_manifest(read_manifest(write(tmp_path, rows)), DEFAULTS, list(roots))


GOOD = {"id": "good", "prompt": "a red circle"}

# (column, bad value, words the error must contain)
BAD_VALUES = [
    ("prompt", "", ["`prompt`", "''"]),
    ("prompt", "   ", ["`prompt`"]),
    ("id", "../escape", ["`id`", "'../escape'"]),
    ("id", "a b", ["`id`", "'a b'"]),
    ("id", "x" * 129, ["`id`"]),
    ("seed", -1, ["`seed`", "-1"]),
    ("num_images", 0, ["`num_images`", "0"]),
    ("num_images", 65, ["`num_images`", "65"]),
    ("guidance_scale", -0.5, ["`guidance_scale`", "-0.5"]),
    ("num_inference_steps", 0, ["`num_inference_steps`", "0"]),
    ("num_inference_steps", 501, ["`num_inference_steps`", "501"]),
    ("width", 65, ["`width`", "65"]),
    ("height", 4104, ["`height`", "4104"]),
    ("scheduler", "magic", ["`scheduler`", "'magic'"]),
    ("task", "paint", ["`task`", "'paint'"]),
    ("task", "img2img", ["`task`", "init_image"]),
    ("strength", 0.0, ["`strength`", "0.0"]),
    ("strength", 1.5, ["`strength`", "1.5"]),
    ("init_image", "../../etc/passwd", ["`init_image`", "outside"]),
    ("mask_image", "/etc/hosts", ["`mask_image`", "outside"]),
] + [  # every float column refuses NaN and the infinities
    (column, value, [f"`{column}`", "finite", repr(value)])
    for column in ("guidance_scale", "strength", "prior_guidance_scale")
    for value in (float("nan"), float("inf"), float("-inf"))
]


@pytest.mark.parametrize(("column", "value", "words"), BAD_VALUES)
def test_each_rule_fails_its_row_alone(tmp_path, column, value, words):
    bad = {"id": "bad", "prompt": "a blue star", column: value}
    if column == "id":
        bad = {"prompt": "a blue star", "id": value}
    jobs, failures = validate(tmp_path, [GOOD, bad, {"id": "also-good", "prompt": "a square"}])
    assert [job.id for job in jobs] == ["good", "also-good"]
    assert len(failures) == 1 and failures[0].row_index == 1
    for word in words:
        assert word in failures[0].error, failures[0].error


def test_pixel_budget(tmp_path):
    _, failures = validate(
        tmp_path, [GOOD, {"id": "big", "prompt": "p", "width": 4096, "height": 4096}]
    )
    assert len(failures) == 1 and "pixel budget" in failures[0].error
    assert "4096x4096" in failures[0].error


def test_defaults_fill_missing_and_null_columns(tmp_path):
    jobs, failures = validate(tmp_path, [{"prompt": "a red star", "seed": None, "id": None}])
    assert not failures
    job = jobs[0]
    assert job.id.startswith("row-") and job.num_images == 1 and job.task == "text2img"
    assert job.guidance_scale == 7.5 and job.num_inference_steps == 20 and job.strength == 0.75
    assert job.model == "tiny-shapes" and 0 <= job.seed < 2**32
    again, _ = validate(tmp_path, [{"prompt": "a red star"}])
    assert again[0].id == job.id and again[0].seed == job.seed  # derived from content


def test_task_is_inferred_from_images(tmp_path):
    from PIL import Image

    Image.new("RGB", (64, 48)).save(tmp_path / "init.png")
    rows = [
        {"id": "a", "prompt": "p", "init_image": "init.png"},
        {"id": "b", "prompt": "p", "init_image": "init.png", "mask_image": "init.png"},
    ]
    jobs, failures = validate(tmp_path, rows)
    assert not failures
    assert [j.task for j in jobs] == ["img2img", "inpaint"]
    assert jobs[0].init_image == str(tmp_path / "init.png")
    assert (jobs[0].width, jobs[0].height) == (64, 48)  # the init image's size


def test_input_roots_allow_images_elsewhere(tmp_path):
    other = tmp_path / "elsewhere"
    other.mkdir()
    from PIL import Image

    Image.new("RGB", (64, 64)).save(other / "x.png")
    rows = [{"id": "a", "prompt": "p", "init_image": str(other / "x.png")}]
    manifest_dir = tmp_path / "m"
    manifest_dir.mkdir()
    _, failures = validate(manifest_dir, rows)
    assert failures and "outside" in failures[0].error
    jobs, failures = validate(manifest_dir, rows, roots=[str(other)])
    assert not failures and jobs[0].init_image == str(other / "x.png")


def test_real_world_parquet_types(tmp_path):
    """pandas- and pyarrow-written files: int32, large_string, dictionary, nulls, extras."""
    schema = pa.schema([
        ("id", pa.large_string()), ("prompt", pa.dictionary(pa.int32(), pa.string())),
        ("seed", pa.int32()), ("num_images", pa.int64()), ("guidance_scale", pa.float32()),
        ("negative_prompt", pa.large_string()), ("team", pa.string()),
    ])  # fmt: skip
    rows = [
        {"id": "a", "prompt": "a red circle", "seed": 7, "num_images": 2, "guidance_scale": 3.0,
         "negative_prompt": None, "team": "x"},
        {"id": "b", "prompt": "a red circle", "seed": None, "num_images": None,
         "guidance_scale": None, "negative_prompt": "blue", "team": None},
    ]  # fmt: skip
    path = write(tmp_path, rows, schema=schema)
    jobs, failures = validate_manifest(read_manifest(path), DEFAULTS)
    assert not failures
    assert (jobs[0].seed, jobs[0].num_images, jobs[0].guidance_scale) == (7, 2, 3.0)
    assert jobs[1].negative_prompt == "blue" and jobs[1].num_images == 1

    frame = pd.DataFrame({"prompt": ["a", "b"], "seed": pd.array([1, None], dtype="Int32"),
                          "extra": [1.5, 2.5]})  # fmt: skip
    frame.to_parquet(tmp_path / "pandas.parquet")
    jobs, failures = validate_manifest(read_manifest(str(tmp_path / "pandas.parquet")), DEFAULTS)
    assert not failures and jobs[0].seed == 1


def test_folder_and_glob_of_files(tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    write(folder, [{"id": "a", "prompt": "p", "seed": 1}], "part-0.parquet")
    write(
        folder,
        [{"id": "b", "prompt": "q"}],
        "part-1.parquet",
        schema=pa.schema([("id", pa.string()), ("prompt", pa.large_string())]),
    )
    for uri in (str(folder), str(folder / "part-*.parquet")):
        manifest = read_manifest(uri)
        assert manifest.table.num_rows == 2 and manifest.root == str(folder)


def test_memory_filesystem(tmp_path):
    import fsspec

    fs = fsspec.filesystem("memory")
    with fs.open("/manifests/m.parquet", "wb") as f:
        pq.write_table(pa.Table.from_pylist([{"prompt": "p"}]), f)
    assert read_manifest("memory://manifests/m.parquet").table.num_rows == 1


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (None, ["does not exist"]),
        (b"this is not parquet", ["not a readable Parquet"]),
        ("no-prompt", ["no `prompt` column"]),
        ("duplicates", ["duplicate", "'x'"]),
        ("same-content", ["rows 0 and 2 ask for the same content", "`id`", "num_images"]),
    ],
)
def test_bad_manifest_as_a_whole(tmp_path, content, words):
    path = tmp_path / "m.parquet"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "no-prompt":
        write(tmp_path, [{"id": "a", "text": "p"}], "m.parquet")
    elif content == "duplicates":
        write(tmp_path, [{"id": "x", "prompt": "p"}, {"id": "x", "prompt": "q"}], "m.parquet")
    elif content == "same-content":  # no `id` column: ids derived from the rows' content
        write(tmp_path, [{"prompt": "p"}, {"prompt": "q"}, {"prompt": "p"}], "m.parquet")
    with pytest.raises(InvalidInput) as error:
        validate_manifest(read_manifest(str(path)), DEFAULTS)
    for word in words:
        assert word in str(error.value)


def test_rows_are_validated_a_few_at_a_time_with_their_own_index(tmp_path, monkeypatch):
    """Rows become Python values `ROWS_AT_ONCE` at a time: each keeps its index, a bad row
    in a later group fails alone, ids are unique across groups."""
    from easel.data import manifest

    monkeypatch.setattr(manifest, "ROWS_AT_ONCE", 2)
    rows = [{"id": f"r{i}", "prompt": f"shape {i}", "seed": i} for i in range(5)]
    rows[3]["seed"] = -1
    jobs, failures = validate(tmp_path, rows)
    assert [(j.row_index, j.id, j.seed) for j in jobs] == [(0, "r0", 0), (1, "r1", 1),
                                                           (2, "r2", 2), (4, "r4", 4)]
    assert [(f.row_index, f.id) for f in failures] == [(3, "r3")]
    rows[4]["id"] = "r0"  # a duplicate two groups later
    with pytest.raises(InvalidInput, match="duplicate values: 'r0'"):
        validate(tmp_path, rows)
    with pytest.raises(InvalidInput, match="rows 0 and 4 ask for the same content"):
        validate(tmp_path, [{"prompt": p} for p in ("a", "b", "c", "d", "a")])


def test_request_keys_of_existing_sweeps_stay_valid():
    """An image's key decides whether a rerun generates it again: upgrading easel must not
    invalidate finished Stable Diffusion sweeps (this key was recorded before Kandinsky's
    prior settings existed)."""
    from easel.data.batching import BatchSettings, ImageRequest, request_key

    settings = BatchSettings(task="text2img", scheduler="ddim", guidance_scale=7.5,
                             num_inference_steps=20, width=32, height=32, strength=1.0)  # fmt: skip
    request = ImageRequest(prompt="a red circle", negative_prompt=None, seed=3)
    key = "9f1ae858eb13178c1cefa86da909e961f0bcae39c872eb348ff08390517565e2"
    assert request_key("d" * 64, settings, request) == key
    kandinsky = BatchSettings(**{**settings.__dict__, "prior_guidance_scale": 4.0,
                                 "prior_num_inference_steps": 25})  # fmt: skip
    assert request_key("d" * 64, kandinsky, request) != key
    # a fusion of a prompt and `init_image` by `strength`, as keyed before `fusion_inputs`
    fusion = BatchSettings(task="fusion", scheduler="ddpm", guidance_scale=4.0,
                           num_inference_steps=20, width=64, height=64, strength=0.5,
                           prior_guidance_scale=4.0, prior_num_inference_steps=25)  # fmt: skip
    request = ImageRequest(prompt="a yellow square", negative_prompt="red", seed=12,
                           init_image="/m/scene.png", init_image_sha256="a" * 64)  # fmt: skip
    key = "18a4ab9eb6c02d247ac9ea72cbec026cb1d537ffb56c383856f9ce5cc8164c1d"
    assert request_key("d" * 64, fusion, request) == key


def test_request_keys_of_nested_fields_are_the_full_dataclass_digest():
    """Settings with LoRA adapters and a request with `fusion_inputs` (dataclasses inside)
    are keyed as every field of them, nested ones included, as `asdict` writes them."""
    import hashlib
    import json
    from dataclasses import asdict

    from easel.data.batching import BatchSettings, ImageRequest, request_key
    from easel.data.fusion import FusionInput
    from easel.data.loras import LoraRef

    settings = BatchSettings(task="fusion", scheduler="ddpm", guidance_scale=4.0,
                             num_inference_steps=20, width=64, height=64, strength=1.0,
                             loras=(LoraRef(uri="/a.safetensors", scale=0.5, sha256="b" * 64),),
                             prior_guidance_scale=4.0, prior_num_inference_steps=25)  # fmt: skip
    items = (FusionInput(text="a cat", image=None, weight=0.25),
             FusionInput(text=None, image="/m/dog.png", weight=0.75, image_sha256="c" * 64))
    request = ImageRequest(prompt=None, negative_prompt="blur", seed=7, fusion_inputs=items)
    present = {k: v for k, v in asdict(settings).items() if v is not None}
    present["loras"] = [{"sha256": "b" * 64, "scale": 0.5}]
    asked = {k: v for k, v in asdict(request).items() if k not in ("init_image_sha256",
                                                                   "mask_image_sha256")}
    content = {"model": "d" * 64, **present, **asked}  # fields added since, unset: left out
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
    assert request_key("d" * 64, settings, request) == digest
    changed = ImageRequest(prompt=None, negative_prompt="blur", seed=7,
                           fusion_inputs=(items[0], FusionInput(**{**items[1].__dict__,
                                                                   "weight": 0.5})))  # fmt: skip
    assert request_key("d" * 64, settings, changed) != digest


def test_a_manifest_is_read_once_while_its_files_are_unchanged(tmp_path):
    from easel.data.manifest import write_manifest

    path = str(tmp_path / "m.parquet")
    write_manifest(path, [{"id": "a", "prompt": "a red circle"}])
    first = read_manifest(path)
    assert read_manifest(path) is first  # the CLI's check and the flow's plan: one read
    write_manifest(path, [{"id": "a", "prompt": "a blue circle"}])  # same size, new file
    assert read_manifest(path).table.column("prompt").to_pylist() == ["a blue circle"]


def test_a_model_whose_own_scheduler_easel_has_no_name_for_still_runs_with_it():
    from easel.data.batching import BatchSettings, ModelFacts, settings_problem

    facts = ModelFacts(digest="d", native_size=512, default_scheduler="LCMScheduler")
    own = BatchSettings(task="text2img", scheduler="LCMScheduler", guidance_scale=1.0,
                        num_inference_steps=4, width=512, height=512)  # fmt: skip
    assert settings_problem(own, facts, "model 'lcm'") is None
    other = BatchSettings(**{**own.__dict__, "scheduler": "KarrasVeScheduler"})
    assert "`scheduler` 'KarrasVeScheduler'" in settings_problem(other, facts, "model 'lcm'")


def test_a_flow_default_matters_only_to_rows_without_their_own_value():
    import pyarrow as pa

    from easel.data.manifest import uses_default

    assert not uses_default(pa.table({"prompt": ["a"], "model": ["tiny-shapes"]}), "model")
    assert uses_default(pa.table({"prompt": ["a", "b"], "model": ["tiny-shapes", None]}), "model")
    assert uses_default(pa.table({"prompt": ["a"]}), "model")
    assert not uses_default(pa.table({"prompt": pa.array([], pa.string())}), "model")


def test_rows_validated_as_columns_are_those_validated_alone(tmp_path, monkeypatch):
    """`validate_manifest` validates plain rows column by column (`plain_jobs`): every job
    and failure is the one `validate_row` gives the row alone, in the manifest's order, for
    good and bad values of every column, pandas' float columns with gaps, numeric strings,
    a pixel budget broken only by the pair, seeds at the top of their range, and rows that
    are not plain (an image, adapters) beside them."""
    import random

    from easel.data import manifest
    from easel.data.manifest import RowError, validate_row

    monkeypatch.setattr(manifest, "ROWS_AT_ONCE", 50)  # several batches
    draw = random.Random(3)
    choices = {
        "prompt": ["a red circle", "", "  ", "é 猫", None],
        "negative_prompt": [None, "blur", ""],
        "seed": [None, 0, 7, 2**63 - 2, 2**63 - 1, -1],
        "num_images": [None, 1, 2, 64, 65, 0],
        "guidance_scale": [None, 0.0, 7.5, -1.0, float("nan"), float("inf")],
        "num_inference_steps": [None, 1, 20, 501, 0],
        "width": [None, 64, 512, 4096, 7, 8],
        "height": [None, 64, 512, 4096, 5000],
        "scheduler": [None, "ddim", "EulerDiscreteScheduler", "nope"],
        "model": [None, "tiny-shapes", "other"],
        "strength": [None, 0.5, 1.0, 0.0, 1.5],
        "task": [None, "text2img", "img2img", "paint"],
        "prior_guidance_scale": [None, 4.0, -2.0],
        "prior_num_inference_steps": [None, 2, 25, 1, 501],
    }
    rows = []
    for i in range(400):
        row = {"id": {0: f"r {i}", 9: ".." if i == 9 else f"r{i}"}.get(i % 18, f"r{i}")}
        row.update({column: draw.choice(values) if draw.random() < 0.06 else values[0]
                    for column, values in choices.items()})  # fmt: skip
        if i % 23 == 0:
            row["init_image"] = "missing.png"  # not plain: validated alone
        rows.append(row)
    for i, (width, height) in enumerate([(4096, 512), (512, 512), (None, 4096), (64, 4096)]):
        rows.append({"id": f"pair{i}", "prompt": "a square", "width": width, "height": height})
    frame = pd.DataFrame(rows)  # pandas: float columns where integers have gaps
    strings = frame.assign(seed=[None if pd.isna(s) else str(int(s)) for s in frame["seed"]])
    for name, written in (("floats", frame), ("strings", strings)):  # seeds "12", "7.0"
        path = tmp_path / f"{name}.parquet"
        written.to_parquet(path)
        table = read_manifest(str(path))
        jobs, failures = validate_manifest(table, DEFAULTS, [])
        expected_jobs, expected_failures = [], []
        for index, values in enumerate(table.table.to_pylist()):
            try:
                expected_jobs.append(validate_row(index, values["id"], values, DEFAULTS,
                                                  table.root, [table.root]))  # fmt: skip
            except RowError as error:
                expected_failures.append((index, str(error)))
        assert jobs == expected_jobs
        assert [(f.row_index, f.error) for f in failures] == expected_failures
    assert 50 < len(jobs) < 350 and failures  # both kinds, in number
    ids = [r["id"] for r in rows]
    plain = manifest.plain_jobs(table.table.to_batches()[0], range(len(ids)), ids, DEFAULTS)
    assert any(job is not None for job in plain)  # the column path was taken


def test_negative_zero_is_zero_so_equal_rows_share_one_request_key(tmp_path):
    """-0.0 equals 0.0 in Python (one hash): a `guidance_scale` or LoRA `scale` of -0.0
    is read as 0.0, so a row's request key never depends on which of the two came first."""
    import math

    from easel.data import loras

    jobs, failures = validate(tmp_path, [{"id": "a", "prompt": "p", "guidance_scale": 0.0},
                                         {"id": "b", "prompt": "p", "guidance_scale": -0.0},
                                         {"id": "c", "prompt": "p", "guidance_scale": -0.0,
                                          "init_image": "missing.png"}])  # fmt: skip
    assert [math.copysign(1, j.guidance_scale) for j in jobs] == [1, 1]  # c fails alone
    assert failures[0].id == "c"
    assert [math.copysign(1, scale) for _, scale in loras.read_items([{"path": "x",
                                                                       "scale": -0.0}])] == [1]


def test_files_whose_values_do_not_fit_the_shared_type_are_refused_naming_them(tmp_path):
    """An unsigned seed of 2**63 beside signed ones, an integer beyond 2**53 beside floats:
    the manifest as a whole is refused (exit 2), naming the column, the file and the value."""
    folder = tmp_path / "m"
    folder.mkdir()
    for name, first, second in (("uint", pa.array([2**63], pa.uint64()), pa.array([1])),
                                ("big", pa.array([2**53 + 1]), pa.array([1.5]))):  # fmt: skip
        pq.write_table(pa.table({"prompt": ["a"], "seed": first}), folder / f"{name}-0.parquet")
        pq.write_table(pa.table({"prompt": ["b"], "seed": second}), folder / f"{name}-1.parquet")
        with pytest.raises(InvalidInput) as raised:
            read_manifest(str(folder / f"{name}-*.parquet"))
        message = str(raised.value)
        assert "`seed`" in message and f"{name}-0.parquet" in message, message
        assert str(first[0].as_py()) in message, message
