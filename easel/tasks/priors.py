"""Tasks of the class-priors flow: thin adapters over `easel.data.priors` and the engine."""

from __future__ import annotations

from prefect import task

from easel.data import manifest, storage
from easel.data.priors import PriorSpec, prior_rows
from easel.models.engine.loading import model_facts
from easel.models.engine.spec import ModelReference


@task(name="resolve-prior-spec")
def resolve_prior_spec_task(model: ModelReference, spec: PriorSpec) -> PriorSpec:
    """Fill the model's defaults in, so the cache key names exactly what is generated."""
    return spec.resolved(model_facts(model))


@task(name="write-prior-manifest")
def write_prior_manifest_task(folder: str, spec: PriorSpec, num_images: int) -> str:
    """The sweep manifest of the set's first `num_images` images."""
    uri = storage.join(folder, f"manifest-{num_images}.parquet")
    return manifest.write_manifest(uri, prior_rows(spec, num_images))
