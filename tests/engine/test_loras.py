"""LoRA adapters in sweeps (issue 27 item 3): kohya and PEFT files through `easel sweep`,
alone and stacked, against diffusers' own LoRA loaders on the same files and seeds."""

from __future__ import annotations

import logging
import os
import shutil

import pytest
import torch
import yaml
from diffusers import StableDiffusionPipeline
from sweep_helpers import max_pixel_difference, pixels, read_results, write_manifest

from easel.cli import main
from easel.data.batching import ModelFacts, build_plan
from easel.data.manifest import SweepDefaults, read_manifest, validate_manifest
from easel.data.records import read_records
from easel.models.engine import loras as engine_loras
from easel.models.engine.sweep import SweepInputs, plan_sweep
from easel.models.testing.random_loras import build_random_lora
from easel.models.testing.random_pipelines import build_random_sd

STEPS, SIZE, SEED = 2, 32, 7
PROMPT = "a red circle on the background"
BASE = {"prompt": PROMPT, "seed": SEED, "guidance_scale": 5.0, "width": SIZE, "height": SIZE,
        "num_inference_steps": STEPS}  # fmt: skip
DEFAULTS = SweepDefaults(model="m", guidance_scale=5.0, num_inference_steps=STEPS,
                         max_pixels=SIZE * SIZE)  # fmt: skip


@pytest.fixture(scope="module")
def sd(tmp_path_factory) -> str:
    return build_random_sd(str(tmp_path_factory.mktemp("sd") / "model"))


@pytest.fixture(scope="module")
def adapters(sd, tmp_path_factory) -> dict[str, str]:
    """A PEFT-format and a kohya-format adapter file beside the manifests, large enough to
    change the images visibly."""
    folder = tmp_path_factory.mktemp("adapters")
    return {
        format: build_random_lora(
            sd, str(folder / f"{format}.safetensors"), format, seed=seed, magnitude=4.0
        )  # fmt: skip
        for seed, format in enumerate(("peft", "kohya"), start=1)
    }


CASES = {  # row id: its adapters as (format, scale)
    "base": (),
    "peft-1": (("peft", 1.0),),
    "peft-half": (("peft", 0.5),),
    "kohya-1": (("kohya", 1.0),),
    "kohya-half": (("kohya", 0.5),),
    "stacked": (("peft", 1.0), ("kohya", 0.5)),
}


def rows(adapters, scales=None) -> list[dict]:
    return [{"id": row_id, **BASE,
             "loras": [{"path": adapters[f], "scale": (scales or {}).get(row_id, s)}
                       for f, s in stack]}  # fmt: skip
            for row_id, stack in CASES.items()]  # fmt: skip


def by_diffusers(pipe, stack, adapters):
    """The image diffusers gives with `stack` ((format, scale), ...) set on `pipe`, which
    holds every adapter under its format's name."""
    if stack:
        pipe.enable_lora()
        pipe.set_adapters([f for f, _ in stack], [s for _, s in stack])
    else:
        pipe.disable_lora()
    image = pipe(
        PROMPT, guidance_scale=5.0, num_inference_steps=STEPS, height=SIZE, width=SIZE,
        generator=torch.Generator().manual_seed(SEED), output_type="np",
    ).images[0]  # fmt: skip
    return (image * 255).round().astype("uint8")


def sweep(manifest, out, adapters, *extra) -> dict:
    """`easel sweep` with the adapters' folder as an input root; results by row id."""
    root = os.path.dirname(adapters["peft"])
    assert main(["sweep", manifest, "--out", out, "--input-root", root, *extra]) == 0
    return {r["id"]: r for r in read_results(out)}


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_kohya_and_peft_adapters_sweep_as_diffusers_applies_them(tmp_path, sd, adapters):
    manifest = write_manifest(tmp_path / "m.parquet", rows(adapters))
    out = str(tmp_path / "out")
    before = engine_loras.LOADS.copy()
    results = sweep(manifest, out, adapters, "--model", sd)
    # each adapter file loaded once in this process, whatever the rows and sets naming it
    loads = engine_loras.LOADS - before
    assert sorted(loads.values()) == [1, 1] and len(loads) == 2

    pipe = StableDiffusionPipeline.from_pretrained(sd)
    pipe.set_progress_bar_config(disable=True)
    for format, path in adapters.items():
        pipe.load_lora_weights(path, adapter_name=format)
    expected = {row_id: by_diffusers(pipe, stack, adapters) for row_id, stack in CASES.items()}
    for row_id, stack in CASES.items():
        result = results[row_id]
        assert result["status"] == "ok", result["error"]
        assert max_pixel_difference(pixels(result["image_uri"]), expected[row_id]) <= 2, row_id
        assert [(a["path"], a["scale"]) for a in result["loras"] or []] == [
            (adapters[f], s) for f, s in stack
        ]
        if stack:  # the adapter changes the image, in diffusers and in easel alike
            assert max_pixel_difference(expected[row_id], expected["base"]) > 20, row_id
            assert max_pixel_difference(pixels(result["image_uri"]),
                                        pixels(results["base"]["image_uri"])) > 20  # fmt: skip

    # a rerun generates nothing; a changed scale regenerates only its row
    written = {row_id: r["image_sha256"] for row_id, r in results.items()}
    recorded = {(r.id, r.written_at) for r in read_records(out)}
    sweep(manifest, out, adapters, "--model", sd)
    assert {(r.id, r.written_at) for r in read_records(out)} == recorded
    write_manifest(tmp_path / "m.parquet", rows(adapters, {"peft-half": 0.75}))
    again = sweep(manifest, out, adapters, "--model", sd)
    new_records = {(r.id, r.written_at) for r in read_records(out)} - recorded
    assert {row_id for row_id, _ in new_records} == {"peft-half"}
    assert again["peft-half"]["image_sha256"] != written["peft-half"]
    assert {k: r["image_sha256"] for k, r in again.items() if k != "peft-half"} == {
        k: v for k, v in written.items() if k != "peft-half"
    }

    # the sweep key `loras` for rows without the column: the same image as the column's
    plain = write_manifest(tmp_path / "plain.parquet", [{"id": "peft-1", **BASE}])
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump({"loras": [{"path": adapters["peft"]}]}))
    keyed = sweep(plain, str(tmp_path / "keyed"), adapters, "--model", sd, "--config", str(config))
    assert keyed["peft-1"]["image_sha256"] == written["peft-1"]
    assert keyed["peft-1"]["loras"][0]["scale"] == 1.0


# -- planning (fast) -----------------------------------------------------------------------


def validated(tmp_path, row_values, defaults=DEFAULTS, roots=()):
    manifest = write_manifest(tmp_path / "v.parquet", row_values)
    return validate_manifest(read_manifest(manifest), defaults, list(roots))


@pytest.fixture
def adapter_file(tmp_path) -> str:
    path = tmp_path / "style.safetensors"
    path.write_bytes(b"not read by planning beyond its digest")
    return str(path)


def test_loras_paths_resolve_against_the_manifest_and_scale_defaults_to_one(tmp_path, adapter_file):
    jobs, failures = validated(tmp_path, [{"id": "a", "prompt": "p",
                                           "loras": [{"path": "style.safetensors"}]}])  # fmt: skip
    assert failures == []
    (adapter,) = jobs[0].loras
    assert (adapter.uri, adapter.scale) == (adapter_file, 1.0)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([{"path": "missing.safetensors"}], "is not a readable file"),
        ([{"path": "../outside.safetensors"}], "resolves outside the manifest's folder"),
        ([{"path": "style.safetensors", "scale": float("nan")}], "`scale` must be a finite"),
        ([{"path": ""}], "`path` must be a non-empty string"),
        ([{"path": "style.safetensors", "scale": 20.0}], "`scale` must be in -16..16"),
        ("style.safetensors", "must be a list of {path, scale} items"),
    ],
)
def test_a_bad_loras_value_fails_its_row_naming_the_column(tmp_path, adapter_file, value,
                                                           message):  # fmt: skip
    (tmp_path.parent / "outside.safetensors").write_bytes(b"x")
    jobs, failures = validated(tmp_path, [{"id": "bad", "prompt": "p", "loras": value},
                                          {"id": "good", "prompt": "p"}])  # fmt: skip
    assert [job.id for job in jobs] == ["good"]
    (failure,) = failures
    assert "`loras`" in failure.error and message in failure.error


def test_rows_without_loras_take_the_sweeps_and_an_empty_list_takes_none(tmp_path, adapter_file):
    defaults = SweepDefaults(**{**DEFAULTS.__dict__, "loras": ((adapter_file, 0.5),)})
    jobs, _ = validated(tmp_path, [{"id": "a", "prompt": "p"},
                                   {"id": "b", "prompt": "p", "loras": []}], defaults)  # fmt: skip
    assert [(a.uri, a.scale) for a in jobs[0].loras] == [(adapter_file, 0.5)]
    assert jobs[1].loras == ()


def test_a_named_model_s_loras_apply_to_its_rows_without_their_own(tmp_path, adapter_file):
    from easel.flows.sweep_parameters import SweepParameters

    other = shutil.copy(adapter_file, tmp_path / "sweep-wide.safetensors")
    params = SweepParameters(
        manifest="unused", out=str(tmp_path / "out"), loras=[{"path": str(other)}],
        models={"styled": {"path": "tiny-shapes", "loras": [{"path": adapter_file, "scale": 0.7}]}},
    )  # fmt: skip
    jobs, _ = validated(tmp_path, [{"id": "named", "prompt": "p", "model": "styled"},
                                   {"id": "own", "prompt": "p", "model": "styled", "loras": []},
                                   {"id": "plain", "prompt": "p"}], params.inputs().defaults)
    assert [(a.uri, a.scale) for a in jobs[0].loras] == [(adapter_file, 0.7)]
    assert jobs[1].loras == ()  # the row's own value wins, even an empty one
    assert [a.uri for a in jobs[2].loras] == [str(other)]  # other rows: the sweep's


def plan(jobs, facts):
    return build_plan(jobs, [], lambda ref: facts, batch_size=8, done=set())


def test_request_keys_digest_each_adapters_content_and_scale_not_its_path(tmp_path, adapter_file):
    copy = shutil.copy(adapter_file, tmp_path / "copy.safetensors")
    row_loras = [[], [{"path": adapter_file}], [{"path": str(copy)}],
                 [{"path": adapter_file, "scale": 0.5}]]  # fmt: skip
    jobs, _ = validated(tmp_path, [{"id": f"r{i}", "prompt": "p", "seed": 1, "loras": value}
                                   for i, value in enumerate(row_loras)])  # fmt: skip
    facts = ModelFacts(digest="d", native_size=SIZE, default_scheduler="ddpm")
    keys = [image.request_key for batch in plan(jobs, facts).batches for image in batch.images]
    by_row = {image.row_id: image.request_key
              for batch in plan(jobs, facts).batches for image in batch.images}  # fmt: skip
    assert len(keys) == 4 and by_row["r1"] == by_row["r2"]
    assert len({by_row["r0"], by_row["r1"], by_row["r3"]}) == 3
    # rows are grouped by adapter set: one batch per set (r1 and r2 name different files)
    assert sorted(len(b.images) for b in plan(jobs, facts).batches) == [1, 1, 1, 1]


def test_a_family_without_lora_loaders_fails_the_row_at_planning(tmp_path, adapter_file):
    jobs, _ = validated(tmp_path, [{"id": "a", "prompt": "p", "loras": [{"path": adapter_file}]},
                                   {"id": "b", "prompt": "p"}])  # fmt: skip
    facts = ModelFacts(digest="d", native_size=SIZE, default_scheduler="ddpm",
                       family="Kandinsky 2.2", takes_loras=False)  # fmt: skip
    planned = plan(jobs, facts)
    assert [job.id for job in planned.jobs] == ["b"]
    (failure,) = planned.failures
    assert failure.id == "a" and "`loras`" in failure.error and adapter_file in failure.error


def test_a_column_named_like_loras_is_a_warning_naming_loras(tmp_path, sd, caplog):
    manifest = write_manifest(tmp_path / "w.parquet", [{"prompt": "p", "lora": "x.safetensors",
                                                        "lora_scale": 0.5}])  # fmt: skip
    inputs = SweepInputs(manifest=manifest, out=str(tmp_path / "out"),
                         defaults=SweepDefaults(**{**DEFAULTS.__dict__, "model": sd}),
                         input_roots=(), batch_size=1, device="cpu", dtype=None,
                         trust_pickle=False)  # fmt: skip
    with caplog.at_level(logging.WARNING):
        plan_sweep(inputs, check_done=False)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2 and all("`loras`" in message for message in warned)
    assert any("`lora_scale`" in message for message in warned)


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_adapters_on_a_compiled_unet_draw_as_on_the_eager_one(tmp_path, sd, adapters):
    """`performance.compile` and adapter sets switching between batches: the compiled UNet
    takes each set (PEFT's layers inside compiled blocks) and draws as the eager one."""
    chosen = {"base", "peft-1", "stacked"}
    manifest = write_manifest(tmp_path / "m.parquet",
                              [r for r in rows(adapters) if r["id"] in chosen])  # fmt: skip
    eager = sweep(manifest, str(tmp_path / "eager"), adapters, "--model", sd)
    for mode in ("regional",):  # full compiles the same blocks and more (minutes on a CPU)
        config = tmp_path / f"{mode}.yaml"
        config.write_text(yaml.safe_dump({"performance": {"compile": mode}}))
        compiled = sweep(manifest, str(tmp_path / mode), adapters, "--model", sd,
                         "--config", str(config), "--batch-size", "1")  # fmt: skip
        for row_id in chosen:
            assert compiled[row_id]["status"] == "ok", compiled[row_id]["error"]
            difference = max_pixel_difference(pixels(compiled[row_id]["image_uri"]),
                                              pixels(eager[row_id]["image_uri"]))  # fmt: skip
            assert difference <= 2, (mode, row_id, difference)
