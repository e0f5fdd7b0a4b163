"""Exported pipelines in the MLflow model registry.

`register_pipeline` logs a pyfunc model whose only artifact is the exported diffusers
directory, registers it and optionally points an alias at the new version.
`resolve_registry_reference("models:/NAME@ALIAS")` (or `models:/NAME/VERSION`) downloads that
directory once into the local cache and returns its path.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import uuid

import mlflow.pyfunc

from easel.errors import ModelReferenceError

_REFERENCE = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))$")
PIPELINE_ARTIFACT = "pipeline"


class DiffusersPipelineModel(mlflow.pyfunc.PythonModel):
    """A pyfunc that loads the exported pipeline; predict takes a `prompt` column (and an
    optional `seed`) and returns one base64 PNG per prompt."""

    def load_context(self, context) -> None:
        from diffusers import StableDiffusionPipeline

        self.pipeline = StableDiffusionPipeline.from_pretrained(
            context.artifacts[PIPELINE_ARTIFACT],
            use_safetensors=True,
            safety_checker=None,
            requires_safety_checker=False,
        )

    def predict(self, context, model_input, params=None):
        import pandas as pd
        import torch

        steps = int((params or {}).get("num_inference_steps", 25))
        images = []
        for i, prompt in enumerate(model_input["prompt"]):
            seed = int(model_input["seed"].iloc[i]) if "seed" in model_input else i
            image = self.pipeline(
                prompt, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed)
            ).images[0]
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            images.append(base64.b64encode(buffer.getvalue()).decode())
        return pd.DataFrame({"image_png_base64": images})


def register_pipeline(pipeline_dir: str, register_as: str) -> str:
    """Log and register `pipeline_dir` under `register_as` ("NAME" or "NAME@ALIAS") in the
    active MLflow run; return the reference `models:/NAME/VERSION`."""
    name, _, alias = register_as.partition("@")
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=DiffusersPipelineModel(),
        artifacts={PIPELINE_ARTIFACT: pipeline_dir},
        registered_model_name=name,
        pip_requirements=["torch", "diffusers", "transformers", "safetensors"],
    )
    version = info.registered_model_version
    if alias:
        mlflow.MlflowClient().set_registered_model_alias(name, alias, version)
    return f"models:/{name}/{version}"


def resolve_registry_reference(ref: str) -> str:
    """The local directory of the pipeline registered as `ref` (downloaded once)."""
    from easel.models.references import cache_dir
    from easel.tracking import configure_mlflow

    match = _REFERENCE.match(ref)
    if not match:
        raise ModelReferenceError(
            f"registry reference must be models:/NAME@ALIAS or models:/NAME/VERSION but is {ref!r}"
        )
    configure_mlflow()
    client = mlflow.MlflowClient()
    name = match["name"]
    try:
        version = (
            client.get_model_version_by_alias(name, match["alias"])
            if match["alias"]
            else client.get_model_version(name, match["version"])
        )
    except mlflow.exceptions.MlflowException as error:
        raise ModelReferenceError(
            f"registry reference {ref!r} not found: {str(error).splitlines()[0]}"
        ) from None
    target = cache_dir() / "registry" / name / str(version.version)
    pipeline = target / "artifacts" / PIPELINE_ARTIFACT
    if not (pipeline / "model_index.json").exists():
        staging = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
        staging.mkdir(parents=True)
        try:
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{name}/{version.version}", dst_path=str(staging)
            )
            if target.exists():
                shutil.rmtree(target)
            os.rename(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if not (pipeline / "model_index.json").exists():
        raise ModelReferenceError(f"registry reference {ref!r} holds no diffusers pipeline")
    return str(pipeline)
