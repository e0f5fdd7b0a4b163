"""Planning rows into batches (`easel.data.batching`), without any model."""

from __future__ import annotations

from dataclasses import replace

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from easel.data.batching import ModelFacts, plan_batches, unsupported
from easel.data.manifest import SweepDefaults, read_manifest, validate_manifest

DEFAULTS = SweepDefaults(model="m", guidance_scale=7.5, num_inference_steps=2,
                         max_pixels=512 * 512)  # fmt: skip
FACTS = ModelFacts(digest="d", native_size=64, default_scheduler="ddpm", family="Kandinsky 2.2",
                   size_multiple=64)  # fmt: skip


def jobs_of(tmp_path, rows):
    path = tmp_path / "manifest.parquet"
    columns = list(dict.fromkeys(key for row in rows for key in row))
    pq.write_table(pa.Table.from_pylist([{k: row.get(k) for k in columns} for row in rows]), path)
    jobs, failures = validate_manifest(read_manifest(str(path)), DEFAULTS, [])
    assert not failures
    return {job.id: job for job in jobs}


def test_a_side_s_error_says_it_came_from_init_image_only_where_it_did(tmp_path):
    Image.new("RGB", (72, 64)).save(tmp_path / "wide.png")
    Image.new("RGB", (64, 64)).save(tmp_path / "square.png")
    edit = {"prompt": "p", "mask_image": "square.png", "init_image": "square.png"}
    jobs = jobs_of(tmp_path, [
        {**edit, "id": "given", "width": 72},  # its own width: not init_image's
        {**edit, "id": "both-given", "width": 72, "height": 64, "init_image": "wide.png",
         "mask_image": "wide.png"},
        {**edit, "id": "taken", "init_image": "wide.png", "mask_image": "wide.png"},
        {**edit, "id": "height-taken", "width": 72},
    ])  # fmt: skip
    model = "Kandinsky 2.2 model 'm'"
    own = f"`width` must be a multiple of 64 for {model} but is 72"
    assert unsupported(jobs["given"], FACTS) == own
    assert unsupported(jobs["both-given"], FACTS) == own
    assert unsupported(jobs["taken"], FACTS) == (
        f"{own} (`init_image`'s width: an edit row without `width` takes it)"
    )
    assert jobs["height-taken"].sides_from_init == ("height",)
    tall = replace(jobs["height-taken"], width=64, height=72)  # as a 64x72 init would make it
    assert unsupported(tall, FACTS) == (
        f"`height` must be a multiple of 64 for {model} but is 72 "
        "(`init_image`'s height: an edit row without `height` takes it)"
    )


def test_batches_of_one_content_for_other_rows_have_their_own_record_names(tmp_path):
    """Two model names of the same files: rows alike but for `model` have the same request
    keys in two batches, whose record shards must not share a name (one would replace the
    other and its row would read as never generated)."""
    row = {"prompt": "p", "seed": 3, "num_images": 2}
    jobs = jobs_of(tmp_path, [{**row, "id": "a", "model": "a"}, {**row, "id": "b", "model": "b"}])
    batches = plan_batches(list(jobs.values()), {"a": FACTS, "b": FACTS}, 8, set())
    first, second = batches
    assert [i.request_key for i in first.images] == [i.request_key for i in second.images]
    assert first.key != second.key
    assert first.key == plan_batches([jobs["a"]], {"a": FACTS}, 8, set())[0].key  # stable


def test_a_row_s_request_keys_are_request_key_s_for_every_kind_of_value():
    """`row_request_keys` writes the keyed JSON once a row from a template: its keys are
    `request_key`'s, character for character, for texts JSON escapes (quotes, backslashes,
    control characters, non-ASCII, characters beyond the BMP), unset and set optional
    fields, settings of every family, LoRA adapters and a fusion's nested items."""
    import random

    from easel.data.batching import BatchSettings, image_request, request_key, row_request_keys
    from easel.data.fusion import FusionInput
    from easel.data.loras import LoraRef
    from easel.data.manifest import RowJob

    texts = ["a red circle", "100% %s", 'say "hi"', "back\\slash", "tab\there\nnewline\x00\x1f",
             "é ü ß", "красный круг", "猫", "🐱 emoji", "\u2028\u2029", "", " "]  # fmt: skip
    plain = BatchSettings(task="text2img", scheduler="ddim", guidance_scale=7.5,
                          num_inference_steps=20, width=32, height=48)  # fmt: skip
    kandinsky = replace(plain, prior_guidance_scale=4.0, prior_num_inference_steps=25,
                        guidance_scale=0.1 + 0.2)  # fmt: skip
    adapted = replace(plain, loras=(LoraRef(uri="/a.safetensors", scale=0.5, sha256="b" * 64),))
    edit = replace(plain, task="inpaint", strength=0.35)
    items = (FusionInput(text="a cat", image=None, weight=0.25),
             FusionInput(text=None, image="/m/dog.png", weight=0.75, image_sha256="c" * 64))
    draw = random.Random(7)
    for case in range(200):
        settings = draw.choice([plain, kandinsky, adapted, edit])
        init = draw.choice([None, "/m/init \"1\".png", "s3://b/é.png"])
        job = RowJob(
            row_index=case, id=f"r{case}", prompt=draw.choice(texts),
            negative_prompt=draw.choice([None, *texts]), seed=draw.choice([0, 5, 2**63 - 70]),
            num_images=draw.randint(1, 4), guidance_scale=7.5, num_inference_steps=20,
            width=32, height=48, scheduler="ddim", model="m", task=settings.task,
            init_image=init, mask_image=draw.choice([None, "/m/mask.png"]), strength=1.0,
            init_image_sha256=init and "a" * 64, mask_image_sha256=draw.choice([None, "e" * 64]),
            fusion_inputs=items if case % 17 == 0 else None,
        )  # fmt: skip
        digest = draw.choice(["d" * 64, "model \"x\" 50%s %%"])
        expected = [request_key(digest, settings, image_request(job, k))
                    for k in range(job.num_images)]  # fmt: skip
        assert row_request_keys(digest, settings, job) == expected, job


def test_row_settings_read_only_the_fields_planning_keys_them_by():
    """Planning makes one `BatchSettings` for all jobs of one model equal in
    `SETTINGS_FIELDS`: a job field outside them must not change a row's settings, for a
    family with a prior and one without, on every task."""
    from dataclasses import fields

    from easel.data.batching import SETTINGS_FIELDS, row_settings
    from easel.data.fusion import FusionInput
    from easel.data.loras import LoraRef
    from easel.data.manifest import RowJob

    other = {"row_index": 9, "id": "other", "prompt": "another", "negative_prompt": "blur",
             "seed": 99, "num_images": 3, "init_image": "/x.png", "mask_image": "/m.png",
             "init_image_sha256": "a" * 64, "mask_image_sha256": "b" * 64,
             "sides_from_init": ("width",)}  # fmt: skip
    assert set(other) | set(SETTINGS_FIELDS) == {f.name for f in fields(RowJob)}
    prior = replace(FACTS, has_prior=True, prior_guidance_scale=4.0)
    sd = replace(FACTS, has_prior=False)
    items = (FusionInput(text="a", image=None, weight=1.0),)
    for task, fusion in (("text2img", None), ("img2img", None), ("inpaint", None),
                         ("fusion", None), ("fusion", items)):  # fmt: skip
        job = RowJob(row_index=0, id="r", prompt="p", negative_prompt=None, seed=1,
                     num_images=1, guidance_scale=5.0, num_inference_steps=20, width=64,
                     height=64, scheduler="ddim", model="m", task=task, init_image=None,
                     mask_image=None, strength=0.5, prior_guidance_scale=2.0,
                     prior_num_inference_steps=10, fusion_inputs=fusion,
                     loras=(LoraRef(uri="/l", scale=1.0, sha256="c" * 64),))  # fmt: skip
        for facts in (prior, sd):
            assert row_settings(replace(job, **other), facts) == row_settings(job, facts)
