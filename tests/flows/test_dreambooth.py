"""The DreamBooth flow end to end on a tiny random model, under a Prefect test server:
class priors through the sweep engine, training, export, validation sweep, registry."""

from __future__ import annotations

import os

import mlflow
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from dreambooth_fixtures import make_workspace, tiny_config

from easel.cli import main

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.mark.slow
def test_dreambooth_command_trains_exports_validates_and_registers(
    tmp_path, prefect_server, capsys
):
    from diffusers import StableDiffusionPipeline

    from easel.models.engine.references import resolve_model_reference

    workspace = make_workspace(str(tmp_path / "ws"))
    values = tiny_config(
        workspace, str(tmp_path / "out"), max_steps=4, register_as="sks-tiny@candidate",
        validation_every_n_steps=2,
    )
    del values["prior_preservation"]["class_data"]  # generate the class priors
    values["prior_preservation"]["num_class_images"] = 3
    config = tmp_path / "dreambooth.yaml"
    config.write_text(yaml.safe_dump(values))

    assert main(["dreambooth", "--config", str(config)]) == 0
    out = tmp_path / "out"
    printed = capsys.readouterr().out
    assert "identifier 'sks'" in printed and "models:/sks-tiny/1" in printed

    priors = sorted((out / "class_priors").glob("*/images/*/*.png"))  # the content-addressed cache
    assert len(priors) == 3
    results = pq.read_table(next((out / "class_priors").glob("*/results.parquet")))
    assert set(results.column("guidance_scale").to_pylist()) == {1.0}  # class_guidance_scale
    assert sorted(p.name for p in (out / "checkpoints").glob("*.ckpt")) == [
        "step=00000002.ckpt",
        "step=00000004.ckpt",
    ]
    pipeline_dir = out / "pipeline"
    weights = [p.name for p in pipeline_dir.rglob("*") if p.is_file()]
    assert "diffusion_pytorch_model.safetensors" in weights and not any(
        w.endswith(".bin") for w in weights
    )
    assert (out / "validation" / "contact_sheet.png").exists()

    # the export is a plain diffusers pipeline with the trained UNet
    pipeline = StableDiffusionPipeline.from_pretrained(str(pipeline_dir), use_safetensors=True)
    image = pipeline(
        "a photo of sks shape",
        num_inference_steps=2,
        height=16,
        width=16,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert image.shape == (1, 16, 16, 3)
    trained = torch.load(out / "checkpoints" / "step=00000004.ckpt", weights_only=True)[
        "state_dict"
    ]
    assert torch.equal(pipeline.unet.conv_in.weight, trained["unet.conv_in.weight"])

    # MLflow: the flow's run, with the training run nested under it and its loss curve
    client = mlflow.MlflowClient()
    training_run_id = (out / "checkpoints" / "training_run_id").read_text()
    training = client.get_run(training_run_id)
    assert "mlflow.parentRunId" in training.data.tags
    parent = client.get_run(training.data.tags["mlflow.parentRunId"])  # the flow's run
    for tag in ("prefect.flow_run_id", "prefect.flow_run_url"):  # lineage, down to the child
        assert training.data.tags[tag] == parent.data.tags[tag]
    # tidy: names say what ran, unset values are not logged as 'None', a summary on the parent
    assert parent.info.run_name.endswith(": dreambooth 'sks' from instance on model")
    assert training.info.run_name == "training 'sks' (full, 4 steps)"
    for run in (parent, training):
        assert "None" not in run.data.params.values(), run.data.params
    assert parent.data.params["train.max_steps"] == "4"
    assert "train.snr_gamma" not in parent.data.params
    assert parent.data.metrics["steps"] == 4
    assert parent.data.metrics["training/train/loss"] == training.data.metrics["train/loss"]
    # throughput: counted work of a step (3 x the UNet forward of its examples), its time
    speed = training.data.metrics
    assert speed["steps_per_s"] == pytest.approx(1 / speed["step_seconds"])
    assert speed["startup_seconds"] >= speed["first_step_seconds"] > 0
    assert speed["achieved_tflops"] == pytest.approx(
        speed["train_tflop_per_step"] / speed["step_seconds"]
    )
    assert parent.data.metrics["training/steps_per_s"] == speed["steps_per_s"]
    # the validation grids (steps 0, 2, 4) on the training run and on the flow's run
    for run_id in (training_run_id, parent.info.run_id):
        grids = [a.path for a in client.list_artifacts(run_id, "images")]
        names = [os.path.basename(path).split("+") for path in grids]  # key+step+...
        steps = sorted({int(name[2]) for name in names if name[0] == "validation"})
        assert steps == [0, 2, 4], (run_id, grids)
    assert parent.data.tags["easel.pipeline"] == str(out / "pipeline")
    assert [m.step for m in client.get_metric_history(training_run_id, "train/loss")] == [
        0,
        1,
        2,
        3,
    ]

    # registry references resolve to the exported pipeline
    for ref in ("models:/sks-tiny@candidate", "models:/sks-tiny/1"):
        resolved = resolve_model_reference(ref).path
        assert os.path.exists(os.path.join(resolved, "unet", "diffusion_pytorch_model.safetensors"))

    # the registered pyfunc loads the exported pipeline and generates
    import base64
    import io

    import pandas as pd
    from PIL import Image

    pyfunc = mlflow.pyfunc.load_model("models:/sks-tiny@candidate")
    predicted = pyfunc.predict(
        pd.DataFrame({"prompt": ["a photo of sks shape"]}), params={"num_inference_steps": 2}
    )
    png = base64.b64decode(predicted["image_png_base64"][0])
    assert Image.open(io.BytesIO(png)).size == (16, 16)

    # the same command again: nothing left to train, same export
    before = (pipeline_dir / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    assert main(["dreambooth", "--config", str(config), "--set", "register_as=null"]) == 0
    assert (
        pipeline_dir / "unet" / "diffusion_pytorch_model.safetensors"
    ).stat().st_mtime_ns == before
    # not registered this time: the pipeline is logged as a model of the run, by its location
    runs = mlflow.search_runs(experiment_names=["easel-dreambooth"], output_format="list",
                              filter_string=f"tags.`easel.pipeline` = '{pipeline_dir}'")
    (rerun,) = [r for r in runs if r.info.run_id != parent.info.run_id]
    (model,) = mlflow.search_logged_models(
        experiment_ids=[rerun.info.experiment_id], output_format="list",
        filter_string=f"source_run_id = '{rerun.info.run_id}'",
    )  # fmt: skip
    assert model.tags["easel.location"] == str(pipeline_dir)


@pytest.mark.slow
def test_a_model_spec_with_an_fp16_variant_reaches_priors_training_validation_and_export(
    tmp_path, prefect_server, capsys
):
    """`model: {path, variant: fp16}` on an fp16-only folder, method lora: class priors,
    training, validation sweep and export all load the variant files; the adapter lands in
    OUTPUT/lora/, named by the printed summary and the MLflow tag `easel.lora`."""
    from diffusers import StableDiffusionPipeline

    workspace = make_workspace(str(tmp_path / "ws"))
    fp16 = str(tmp_path / "sd-fp16")
    base = StableDiffusionPipeline.from_pretrained(workspace["model"], dtype=torch.float16)
    base.save_pretrained(fp16, variant="fp16", safe_serialization=True)
    assert not os.path.exists(f"{fp16}/unet/diffusion_pytorch_model.safetensors")
    values = tiny_config(workspace, str(tmp_path / "out"), max_steps=2, method="lora",
                         checkpoint_every_n_steps=2)  # fmt: skip
    values["model"] = {"path": fp16, "variant": "fp16"}
    del values["prior_preservation"]["class_data"]  # generated from the spec's model
    values["prior_preservation"]["num_class_images"] = 2
    config = tmp_path / "dreambooth.yaml"
    config.write_text(yaml.safe_dump(values))

    assert main(["dreambooth", "--config", str(config)]) == 0
    out = tmp_path / "out"
    lora = out / "lora" / "pytorch_lora_weights.safetensors"
    printed = capsys.readouterr().out
    assert f"lora:          {lora}  (use in loras on {fp16})" in printed
    assert len(list((out / "class_priors").glob("*/images/*/*.png"))) == 2
    validation = pq.read_table(out / "validation" / "results.parquet").to_pylist()
    assert {row["model_ref"] for row in validation} == {str(out / "pipeline"), "base"}
    assert all(row["status"] == "ok" for row in validation)

    pipeline = StableDiffusionPipeline.from_pretrained(str(out / "pipeline"), use_safetensors=True)
    assert pipeline.unet.dtype == torch.float32  # plain float32 files, loadable without variant
    image = pipeline("a photo of sks shape", num_inference_steps=2, height=16, width=16,
                     output_type="np").images  # fmt: skip
    assert image.shape == (1, 16, 16, 3)
    (run,) = mlflow.search_runs(experiment_names=["easel-dreambooth"], output_format="list",
                                filter_string=f"tags.`easel.lora` = '{lora}'")  # fmt: skip
    assert run.data.params["model.variant"] == "fp16"
