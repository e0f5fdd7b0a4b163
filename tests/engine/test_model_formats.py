"""The models users bring (issue 27), laid out as they ship: fp16-variant folders, a
Kandinsky decoder and prior as two folders or URIs, single-file checkpoints, registered
models from any output; each run through `easel sweep` against diffusers on the same files."""

from __future__ import annotations

import json
import os
import shutil

import fsspec
import mlflow
import numpy as np
import pytest
import torch
from diffusers import KandinskyV22CombinedPipeline, StableDiffusionPipeline
from sweep_helpers import max_pixel_difference, pixels, read_results, write_manifest

from easel.cli import main
from easel.errors import ModelReferenceError
from easel.models.engine.loading import load_model, model_facts
from easel.models.engine.references import resolve_model_reference
from easel.models.engine.spec import ModelSpec
from easel.models.testing.random_pipelines import build_random_kandinsky22, build_random_sd

STEPS, SIZE = 2, 32
ROW = {"id": "r", "prompt": "a red circle on a white background", "seed": 7,
       "guidance_scale": 5.0, "width": SIZE, "height": SIZE,
       "num_inference_steps": STEPS}  # fmt: skip


def sweep(tmp_path, name, model, rows=(ROW,), *extra) -> dict:
    """`easel sweep` of `rows` on `model`; the results by (id, image_index)."""
    manifest = write_manifest(tmp_path / f"{name}.parquet", list(rows))
    out = str(tmp_path / name)
    code = main(["sweep", manifest, "--out", out, "--model", model, *extra])
    if not os.path.exists(f"{out}/results.parquet"):
        return {"code": code}
    return {"code": code, **{(r["id"], r["image_index"]): r for r in read_results(out)}}


def by_diffusers(pipe, row=ROW, size=SIZE) -> np.ndarray:
    """The image a user gets from `pipe` alone for `row`, as uint8 pixels."""
    pipe.set_progress_bar_config(disable=True)
    image = pipe(
        row["prompt"], guidance_scale=row["guidance_scale"], num_inference_steps=STEPS,
        height=size, width=size, generator=torch.Generator().manual_seed(row["seed"]),
        output_type="np",
    ).images[0]  # fmt: skip
    return (image * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def sd(tmp_path_factory) -> str:
    return build_random_sd(str(tmp_path_factory.mktemp("sd") / "model"))


# -- variants ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fp16_only(sd, tmp_path_factory) -> str:
    folder = str(tmp_path_factory.mktemp("fp16") / "sd-fp16")
    pipe = StableDiffusionPipeline.from_pretrained(sd, dtype=torch.float16)
    pipe.save_pretrained(folder, variant="fp16", safe_serialization=True)
    assert os.path.exists(f"{folder}/unet/diffusion_pytorch_model.fp16.safetensors")
    assert not os.path.exists(f"{folder}/unet/diffusion_pytorch_model.safetensors")
    return folder


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_an_fp16_only_folder_sweeps_as_diffusers_with_its_variant(tmp_path, fp16_only):
    results = sweep(tmp_path, "fp16", fp16_only)
    assert results["code"] == 0 and results[("r", 0)]["status"] == "ok"
    pipe = StableDiffusionPipeline.from_pretrained(fp16_only, variant="fp16",
                                                   dtype=torch.float32)  # fmt: skip
    assert max_pixel_difference(pixels(results[("r", 0)]["image_uri"]), by_diffusers(pipe)) <= 2


def test_variants_found_chosen_or_refused_in_one_true_line(fp16_only, tmp_path):
    assert resolve_model_reference(fp16_only).variant == "fp16"
    spec = ModelSpec(path=fp16_only, variant="fp16")
    assert load_model(spec, device="cpu").pipeline.unet.dtype == torch.float32  # upcast
    with pytest.raises(ModelReferenceError) as error:
        model_facts(ModelSpec(path=fp16_only, variant="bf16"))
    assert "`variant` 'bf16'" in str(error.value) and "it has: fp16" in str(error.value)
    assert "\n" not in str(error.value)

    both = tmp_path / "two-variants"
    shutil.copytree(fp16_only, both)
    for weights in both.glob("*/*.fp16.safetensors"):
        shutil.copy(weights, str(weights).replace(".fp16.", ".bf16."))
    with pytest.raises(ModelReferenceError, match=r"only variant weights \(bf16, fp16\).*"
                       "set `variant`"):  # fmt: skip
        model_facts(str(both))
    assert model_facts(ModelSpec(path=str(both), variant="bf16")).family == "Stable Diffusion"

    pickled = tmp_path / "pickled"
    shutil.copytree(fp16_only, pickled)
    for weights in pickled.glob("*/*.safetensors"):
        from safetensors.torch import load_file

        stem = weights.name.split(".")[0]  # transformers' pickle is pytorch_model, not model
        pickled_name = f"{'pytorch_model' if stem == 'model' else stem}.fp16.bin"
        torch.save(load_file(weights), weights.with_name(pickled_name))
        weights.unlink()
    with pytest.raises(ModelReferenceError) as error:
        model_facts(str(pickled))
    message = str(error.value)
    assert "no safetensors weights in text_encoder/, unet/, vae/" in message
    assert "--trust-pickle" in message and "\n" not in message
    assert model_facts(str(pickled), trust_pickle=True).family == "Stable Diffusion"
    assert load_model(str(pickled), device="cpu", trust_pickle=True).model.variant == "fp16"

    empty = tmp_path / "no-weights"
    shutil.copytree(fp16_only, empty)
    for weights in (empty / "unet").glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(ModelReferenceError, match="component unet/ holds no weights"):
        model_facts(str(empty))


def test_a_variant_no_network_has_is_refused_not_loaded_as_the_plain_files(sd, tmp_path):
    """`variant: fp16` on a folder of plain files alone (a random SD folder, the embedded
    tiny-shapes) is refused in one line naming `variant` and the model; a folder where one
    network has the variant and the others only plain files loads it, as does unset."""
    for folder in (sd, "tiny-shapes"):
        with pytest.raises(ModelReferenceError) as error:
            model_facts(ModelSpec(path=folder, variant="fp16"))
        message = str(error.value)
        assert f"model {folder!r} has no `variant` 'fp16' weights in " in message
        assert "unet/" in message and "(it has: plain files)" in message and "\n" not in message
        assert resolve_model_reference(folder).variant is None

    mixed = tmp_path / "unet-fp16"
    shutil.copytree(sd, mixed)
    unet = mixed / "unet" / "diffusion_pytorch_model.safetensors"
    unet.rename(unet.with_name("diffusion_pytorch_model.fp16.safetensors"))
    resolved = resolve_model_reference(ModelSpec(path=str(mixed), variant="fp16"))
    assert resolved.variant == "fp16"
    assert resolve_model_reference(str(mixed)).variant == "fp16"  # found by itself


def test_a_sweep_refuses_a_variant_its_model_lacks(sd, tmp_path, capsys):
    """As the default model: exit 2, nothing generated; as a row's named model: that row
    fails with the same line (docs/models.md, "Named models")."""
    import yaml

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"models": {"t": {"path": sd, "variant": "fp16"}}}))
    manifest = write_manifest(tmp_path / "m.parquet", [ROW])
    out = tmp_path / "default"
    code = main(["sweep", manifest, "--out", str(out), "--model", "t", "--config", str(config)])
    assert code == 2 and not (out / "results.parquet").exists() and not (out / "images").exists()
    err = capsys.readouterr().err
    assert "`variant` 'fp16'" in err and repr(sd) in err and "Traceback" not in err

    from easel.flows.sweep_parameters import SweepParameters
    from easel.models.engine.sweep import plan_sweep

    rows = write_manifest(tmp_path / "rows.parquet", [{**ROW, "model": "t"}])
    params = SweepParameters(manifest=rows, out=str(tmp_path / "rows"),
                             models={"t": {"path": sd, "variant": "fp16"}})  # fmt: skip
    plan = plan_sweep(params.inputs(), check_done=False)[1]
    (failure,) = plan.failures
    assert failure.error.startswith(f"`model` 't': model {sd!r} has no `variant` 'fp16'")
    assert plan.batches == []


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_a_refused_model_is_one_line_before_any_batch(tmp_path, fp16_only, capsys):
    both = tmp_path / "two-variants"
    shutil.copytree(fp16_only, both)
    for weights in both.glob("*/*.fp16.safetensors"):
        shutil.copy(weights, str(weights).replace(".fp16.", ".bf16."))
    results = sweep(tmp_path, "refused", str(both))
    assert results["code"] == 2
    err = capsys.readouterr().err
    assert "set `variant`" in err and "Traceback" not in err


# -- what the digest covers -------------------------------------------------------------------


def test_the_digest_covers_only_what_the_pipeline_loads(sd, tmp_path):
    folder = tmp_path / "with-a-stray-checkpoint"
    shutil.copytree(sd, folder)
    before = resolve_model_reference(str(folder)).digest
    (folder / "v1-5-pruned.safetensors").write_bytes(b"a full single-file checkpoint")
    (folder / "unet" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"unused")
    assert resolve_model_reference(str(folder)).digest == before

    fs = fsspec.filesystem("memory")
    fs.put(str(folder), "/store/stray", recursive=True)
    copied = resolve_model_reference("memory://store/stray")
    assert copied.digest == before
    assert not os.path.exists(os.path.join(copied.path, "v1-5-pruned.safetensors"))


# -- scheduler names ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_a_default_scheduler_without_a_short_name_is_accepted_back(sd, tmp_path):
    lcm = tmp_path / "lcm"
    shutil.copytree(sd, lcm)
    from diffusers import LCMScheduler

    config = dict(StableDiffusionPipeline.load_config(sd))
    LCMScheduler.from_pretrained(sd, subfolder="scheduler").save_pretrained(lcm / "scheduler")
    config["scheduler"] = ["diffusers", "LCMScheduler"]
    (lcm / "model_index.json").write_text(json.dumps(config))
    first = sweep(tmp_path, "first", str(lcm))
    assert first[("r", 0)]["scheduler"] == "LCMScheduler"
    again = {**ROW, "scheduler": "LCMScheduler"}
    other = {**again, "id": "other", "model": "tiny-shapes"}
    second = sweep(tmp_path, "second", str(lcm), [again, other])
    assert second[("r", 0)]["status"] == "ok"
    assert max_pixel_difference(first[("r", 0)]["image_uri"], second[("r", 0)]["image_uri"]) == 0
    assert second[("other", None)]["status"] == "failed"
    assert "`scheduler` 'LCMScheduler' does not work with" in second[("other", None)]["error"]


# -- Kandinsky as shipped ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def k22(tmp_path_factory) -> str:
    return build_random_kandinsky22(str(tmp_path_factory.mktemp("k22") / "model"))


def split_kandinsky(combined_dir: str, root, prior_name: str, card_prior: str) -> str:
    """The hub's layout: a decoder folder whose card names its prior, and the prior."""
    combined = KandinskyV22CombinedPipeline.from_pretrained(combined_dir)
    combined.prior_pipe.save_pretrained(root / prior_name)
    combined.decoder_pipe.save_pretrained(root / "decoder")
    (root / "decoder" / "README.md").write_text(f"---\nprior: {card_prior}\n---\nA decoder.\n")
    return str(root / "decoder")


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_a_decoder_uri_pairs_the_prior_beside_it_whatever_the_working_folder(
    k22, tmp_path, monkeypatch
):  # fmt: skip
    decoder = split_kandinsky(k22, tmp_path / "shipped", "prior", "../prior")
    fs = fsspec.filesystem("memory")
    fs.put(str(tmp_path / "shipped"), "/bucket/k22", recursive=True)
    # a decoy beside the working folder: what `../prior` meant from the shell
    build_random_kandinsky22(str(tmp_path / "work" / "combined"), seed=3)
    split_kandinsky(str(tmp_path / "work" / "combined"), tmp_path / "work", "prior", "x")
    os.makedirs(tmp_path / "work" / "here")
    monkeypatch.chdir(tmp_path / "work" / "here")

    resolved = resolve_model_reference("memory://bucket/k22/decoder")
    assert resolved.prior.ref == "memory://bucket/k22/prior"
    assert resolved.prior.digest == resolve_model_reference(str(tmp_path / "shipped/prior")).digest
    row = {**ROW, "width": 16, "height": 16}
    uri = sweep(tmp_path, "uri", "memory://bucket/k22/decoder", [row])
    local = sweep(tmp_path, "local", decoder, [row])
    whole = sweep(tmp_path, "whole", k22, [row])
    assert uri[("r", 0)]["status"] == "ok"
    assert max_pixel_difference(uri[("r", 0)]["image_uri"], whole[("r", 0)]["image_uri"]) == 0
    assert max_pixel_difference(local[("r", 0)]["image_uri"], whole[("r", 0)]["image_uri"]) == 0


def test_a_hub_id_prior_is_found_in_a_sibling_folder_or_named_in_one_line(k22, tmp_path):
    hub_id = "kandinsky-community/kandinsky-2-2-prior"
    decoder = split_kandinsky(k22, tmp_path, "kandinsky-2-2-prior", hub_id)
    resolved = resolve_model_reference(decoder)
    assert resolved.prior.path == str(tmp_path / "kandinsky-2-2-prior")
    shutil.rmtree(tmp_path / "kandinsky-2-2-prior")
    with pytest.raises(ModelReferenceError) as error:
        resolve_model_reference(decoder)
    message = str(error.value)
    assert f"the model card of {decoder!r} (README.md)" in message and hub_id in message
    assert "kandinsky-2-2-prior" in message and "set `prior:` in that card" in message
    assert "\n" not in message
    # a spec's prior overrides the card's
    prior_dir = tmp_path / "elsewhere"
    KandinskyV22CombinedPipeline.from_pretrained(k22).prior_pipe.save_pretrained(prior_dir)
    spec = ModelSpec(path=decoder, prior=str(prior_dir))
    assert resolve_model_reference(spec).prior.path == str(prior_dir)


# -- the registry ----------------------------------------------------------------------------


def test_a_folder_of_any_name_registers_as_a_loadable_model(sd, tmp_path):
    from easel import tracking
    from easel.models.engine import serving

    folder = tmp_path / "exported-model"
    shutil.copytree(sd, folder)
    with mlflow.start_run():
        ref = tracking.register_model(str(folder), "any-name", serving.load_registered,
                                      serving.predict)  # fmt: skip
    resolved = resolve_model_reference(ref)
    assert resolved.digest == resolve_model_reference(sd).digest


def test_a_tracking_store_is_named_alike_from_any_working_folder(tmp_path, monkeypatch):
    from easel.tracking import store_identity

    monkeypatch.chdir(tmp_path)
    assert store_identity("sqlite:///mlflow.db") == f"sqlite:///{tmp_path}/mlflow.db"
    assert store_identity(f"sqlite:///{tmp_path}/mlflow.db") == f"sqlite:///{tmp_path}/mlflow.db"
    assert store_identity("mlruns") == store_identity(f"file://{tmp_path}/mlruns")
    for remote in ("http://mlflow:5000", "databricks", "databricks://profile"):
        assert store_identity(remote) == remote


def register_in_store(store: str, folder: str, name: str) -> str:
    """`folder` registered as `name` in the SQLite tracking store `store` (made the current
    one); returns its reference."""
    from easel import tracking
    from easel.models.engine import serving

    os.environ["MLFLOW_TRACKING_URI"] = store
    mlflow.set_tracking_uri(store)
    with mlflow.start_run(experiment_id="0"):  # each new store's Default, whatever is active
        return tracking.register_model(folder, name, serving.load_registered, serving.predict)


def test_two_tracking_stores_sharing_one_cache_each_serve_their_own_model(
    sd, tmp_path, monkeypatch
):  # fmt: skip
    """`models:/subject/1` of a second store is never served from the first's cached copy."""
    other = tmp_path / "other-model"
    shutil.copytree(sd, other)
    config = json.loads((other / "scheduler" / "scheduler_config.json").read_text())
    config["steps_offset"] = 1 - config.get("steps_offset", 0)  # another model's files
    (other / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    monkeypatch.chdir(tmp_path)  # each store's artifacts under ./mlruns
    monkeypatch.setenv("MLFLOW_TRACKING_URI", os.environ["MLFLOW_TRACKING_URI"])
    first, second = f"sqlite:///{tmp_path / 'first.db'}", f"sqlite:///{tmp_path / 'second.db'}"
    try:
        assert register_in_store(first, sd, "subject") == "models:/subject/1"
        from_first = resolve_model_reference("models:/subject/1")  # now in the cache
        assert register_in_store(second, str(other), "subject") == "models:/subject/1"
        from_second = resolve_model_reference("models:/subject/1")
        os.environ["MLFLOW_TRACKING_URI"] = first
        again = resolve_model_reference("models:/subject/1")
    finally:
        mlflow.set_tracking_uri(None)  # back to the environment's
    assert from_first.digest == resolve_model_reference(sd).digest
    assert from_second.digest == resolve_model_reference(str(other)).digest != from_first.digest
    assert from_second.path != from_first.path and again.path == from_first.path


# -- single-file checkpoints -----------------------------------------------------------------


@pytest.fixture(scope="module")
def single_file(sd, tmp_path_factory) -> str:
    from ldm_checkpoint import write_single_file

    return write_single_file(sd, str(tmp_path_factory.mktemp("civitai") / "tiny-sd.safetensors"))


def test_the_fixture_single_file_loads_back_in_diffusers_with_identical_weights(sd, single_file):
    original = StableDiffusionPipeline.from_pretrained(sd)
    loaded = StableDiffusionPipeline.from_single_file(single_file, config=sd,
                                                      local_files_only=True)  # fmt: skip
    for name in ("unet", "vae", "text_encoder"):
        theirs = getattr(loaded, name).state_dict()
        for key, value in getattr(original, name).state_dict().items():
            assert torch.equal(theirs[key], value), (name, key)


def test_a_single_file_with_config_is_converted_once_and_draws_as_diffusers(
    sd, single_file, monkeypatch
):  # fmt: skip
    from easel.models.engine import single_file as module
    from easel.models.engine.generation import text_to_image

    conversions = []
    convert = module.convert
    monkeypatch.setattr(
        module, "convert", lambda *a, **k: conversions.append(a) or convert(*a, **k)
    )
    spec = ModelSpec(path=single_file, config=sd)
    loaded = load_model(spec, device="cpu")
    image = text_to_image(loaded, [ROW["prompt"]], [ROW["seed"]], ROW["guidance_scale"], STEPS)[0]
    pipe = StableDiffusionPipeline.from_single_file(single_file, config=sd, local_files_only=True)
    native = by_diffusers(pipe, size=image.size[0])  # text_to_image: the native size
    assert max_pixel_difference(np.asarray(image), native) <= 2
    assert len(conversions) == 1
    again = resolve_model_reference(spec)
    assert again.path == loaded.model.path and again.digest == loaded.model.digest
    assert model_facts(spec).family == "Stable Diffusion" and len(conversions) == 1


def test_a_single_file_without_config_is_one_line_naming_config(single_file, tmp_path):
    with pytest.raises(ModelReferenceError) as error:
        model_facts(single_file)
    assert "give `config`" in str(error.value) and "\n" not in str(error.value)
    pickled = tmp_path / "tiny-sd.ckpt"
    pickled.write_bytes(b"not read: refused first")
    with pytest.raises(ModelReferenceError, match="is a pickle.*--trust-pickle"):
        model_facts(ModelSpec(path=str(pickled), config=str(tmp_path)))
    with pytest.raises(ModelReferenceError, match="name the file: tiny-sd"):
        model_facts(str(os.path.dirname(single_file)))


def test_a_single_file_that_is_no_pipeline_is_one_line_naming_the_file(sd, tmp_path):
    """A LoRA file or a truncated download given as a model: refused at planning."""
    from safetensors.torch import save_file

    wrong = tmp_path / "mine.safetensors"
    save_file({"lora_unet_down.lora_down.weight": torch.zeros(2, 2)}, str(wrong))
    with pytest.raises(ModelReferenceError) as error:
        model_facts(ModelSpec(path=str(wrong), config=sd))
    message = str(error.value)
    assert str(wrong) in message and "`config`" in message and "\n" not in message


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_register_as_from_an_s3_dreambooth_output_then_sweep_its_registry_reference(
    tmp_path, s3_server
):  # fmt: skip
    import yaml
    from dreambooth_fixtures import make_workspace, tiny_config

    fsspec.filesystem("s3").mkdir("easel-registry")
    workspace = make_workspace(str(tmp_path / "ws"))
    values = tiny_config(workspace, "s3://easel-registry/sks", max_steps=1,
                         checkpoint_every_n_steps=1, validation_prompts=[],
                         register_as="sks-from-s3@prod")  # fmt: skip
    (tmp_path / "db.yaml").write_text(yaml.safe_dump(values))
    assert main(["dreambooth", "--config", str(tmp_path / "db.yaml")]) == 0
    results = sweep(tmp_path, "registered", "models:/sks-from-s3@prod")
    assert results["code"] == 0 and results[("r", 0)]["status"] == "ok"
    pipeline = resolve_model_reference("s3://easel-registry/sks/pipeline")
    assert results[("r", 0)]["model_digest"] == pipeline.digest
    assert resolve_model_reference("models:/sks-from-s3/1").digest == pipeline.digest


@pytest.fixture(scope="module")
def sd_ldm(sd, tmp_path_factory) -> str:
    """A tiny SD folder whose UNet and VAE an LDM `.yaml` can describe."""
    from ldm_checkpoint import ldm_expressible_sd

    return ldm_expressible_sd(sd, str(tmp_path_factory.mktemp("sd32") / "model"))


def with_sidecar(folder: str, root, parameterization: str = "eps") -> str:
    """`folder` as a single file with its A1111 `.yaml` beside it, under `root`."""
    from ldm_checkpoint import write_ldm_yaml, write_single_file

    write_ldm_yaml(folder, str(root / "tiny-sd.yaml"), parameterization)
    return write_single_file(folder, str(root / "tiny-sd.safetensors"))


def test_a_sidecar_yaml_saying_v_gives_a_v_prediction_scheduler(sd_ldm, tmp_path):
    path = with_sidecar(sd_ldm, tmp_path, "v")
    scheduler = json.loads(open(f"{sd_ldm}/scheduler/scheduler_config.json").read())
    assert scheduler["prediction_type"] == "epsilon"  # the config folder's; the yaml wins
    loaded = load_model(ModelSpec(path=path, config=sd_ldm), device="cpu")
    assert loaded.pipeline.scheduler.config.prediction_type == "v_prediction"
    eps = tmp_path / "eps"
    eps.mkdir()
    plain = load_model(ModelSpec(path=with_sidecar(sd_ldm, eps), config=sd_ldm), device="cpu")
    assert plain.pipeline.scheduler.config.prediction_type == "epsilon"


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_a_single_file_with_a_sidecar_yaml_sweeps_by_name_as_diffusers(sd_ldm, tmp_path):
    import yaml

    path = with_sidecar(sd_ldm, tmp_path)
    config = {"models": {"civitai": {"path": path, "config": sd_ldm}}}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(config))
    results = sweep(tmp_path, "sidecar", "civitai", [ROW], "--config", str(tmp_path / "sweep.yaml"))
    assert results["code"] == 0 and results[("r", 0)]["model_ref"] == "civitai"
    pipe = StableDiffusionPipeline.from_single_file(
        path, config=sd_ldm, original_config=str(tmp_path / "tiny-sd.yaml"), local_files_only=True
    )
    assert max_pixel_difference(pixels(results[("r", 0)]["image_uri"]), by_diffusers(pipe)) <= 2


def test_a_single_file_at_a_uri_with_its_yaml_is_fetched_and_converted_once(
    sd_ldm, tmp_path, monkeypatch
):  # fmt: skip
    """`memory://` stands for any fsspec store: the file and its `.yaml` beside it are
    downloaded once, converted once, and give the same digest as the local file."""
    from easel.models.engine import single_file as module

    local = with_sidecar(sd_ldm, tmp_path, "v")
    store = fsspec.filesystem("memory")
    store.put_file(local, "/civitai/tiny-sd.safetensors")
    store.put_file(str(tmp_path / "tiny-sd.yaml"), "/civitai/tiny-sd.yaml")
    spec = ModelSpec(path="memory://civitai/tiny-sd.safetensors", config=sd_ldm)
    remote = resolve_model_reference(spec)
    assert remote.digest == resolve_model_reference(ModelSpec(path=local, config=sd_ldm)).digest
    loaded = load_model(spec, device="cpu")
    assert loaded.pipeline.scheduler.config.prediction_type == "v_prediction"  # its yaml's
    monkeypatch.setattr(module, "convert", lambda *a, **k: pytest.fail("converted again"))
    monkeypatch.setattr(store, "get_file", lambda *a, **k: pytest.fail("downloaded again"))
    assert resolve_model_reference(spec).path == remote.path
    with pytest.raises(ModelReferenceError, match="does not exist"):
        resolve_model_reference(ModelSpec(path="memory://civitai/gone.safetensors", config=sd_ldm))
    with pytest.raises(ModelReferenceError, match="is a pickle"):
        resolve_model_reference("memory://civitai/model.ckpt")
