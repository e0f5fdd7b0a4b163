"""Class-prior generation (SPEC §6): N images of the class prompt through the sweep engine,
cached by content under `OUT/<key>/`."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import pyarrow as pa
from prefect import flow, task
from pydantic import BaseModel, ConfigDict, Field

from easel.data import storage
from easel.data.priors import PriorSpec, prior_rows
from easel.data.results import parquet_bytes
from easel.flows.config import load_parameters
from easel.flows.sweep import SweepParameters, sweep_flow


class PriorsParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    class_prompt: str = Field(min_length=1)
    num_images: int = Field(ge=1, le=100_000)
    out: str = Field(description="cache root; the set goes to OUT/<key>/")
    model: str = "tiny-shapes"
    negative_prompt: str | None = None
    scheduler: str | None = None
    num_inference_steps: int = Field(20, ge=1, le=500)
    # 1: no guidance, so the images are samples of the model's own class distribution, the
    # one DreamBooth's prior loss should preserve (see DreamBoothConfig.class_guidance_scale)
    guidance_scale: float = Field(1.0, ge=0)
    width: int | None = Field(None, ge=8, le=4096, multiple_of=8)
    height: int | None = Field(None, ge=8, le=4096, multiple_of=8)
    seed: int = Field(0, ge=0)
    batch_size: int = Field(8, ge=1, le=256)
    experiment: str = "easel-priors"
    show_progress: bool = False


@dataclass(frozen=True)
class ClassPriors:
    folder: str  # OUT/<key>
    image_uris: list[str]  # images 0..N-1, in order
    generated_now: int


@task(name="resolve-prior-spec")
def resolve_prior_spec(params: PriorsParameters) -> PriorSpec:
    """Fill the model's defaults in, so the cache key names exactly what is generated."""
    from easel.models.generation import model_facts

    facts = model_facts(params.model)
    return PriorSpec(
        model_digest=facts.digest, class_prompt=params.class_prompt,
        negative_prompt=params.negative_prompt,
        scheduler=params.scheduler or facts.default_scheduler,
        num_inference_steps=params.num_inference_steps, guidance_scale=params.guidance_scale,
        width=params.width or facts.native_size, height=params.height or facts.native_size,
        seed=params.seed,
    )  # fmt: skip


@task(name="write-prior-manifest")
def write_prior_manifest(folder: str, spec: PriorSpec, num_images: int) -> str:
    """The sweep manifest of the set's first `num_images` images."""
    uri = storage.join(folder, f"manifest-{num_images}.parquet")
    storage.write_bytes_atomic(
        uri, parquet_bytes(pa.Table.from_pylist(prior_rows(spec, num_images)))
    )
    return uri


@flow(name="class-priors", log_prints=True)
def class_priors_flow(params: PriorsParameters) -> ClassPriors:
    """Generate (or find in the cache) N images of the class prompt."""
    spec = resolve_prior_spec(params)
    folder = storage.join(params.out, spec.key)
    manifest = write_prior_manifest(folder, spec, params.num_images)
    summary = sweep_flow(SweepParameters(
        manifest=manifest, out=folder, model=params.model, batch_size=params.batch_size,
        experiment=params.experiment, show_progress=params.show_progress,
    ))  # fmt: skip
    if summary.images_failed:
        raise RuntimeError(
            f"{summary.images_failed} class-prior images failed; see {summary.results_uri}"
        )
    uris = [
        storage.join(folder, "images", row["id"], "0.png")
        for row in prior_rows(spec, params.num_images)
    ]
    return ClassPriors(folder=folder, image_uris=uris, generated_now=summary.generated_now)


# --- CLI -----------------------------------------------------------------------------


def add_command(subparsers) -> None:
    parser = subparsers.add_parser("priors", help="generate class-prior images (cached by content)")
    parser.add_argument("--class-prompt", required=True)
    parser.add_argument("--num", type=int, required=True, help="number of images")
    parser.add_argument("--out", required=True, help="cache root (fsspec URI)")
    parser.add_argument("--model", help="model reference (default tiny-shapes)")
    parser.add_argument("--negative-prompt")
    parser.add_argument("--config", help="YAML file of prior parameters")
    parser.set_defaults(run=run_priors_command)


def run_priors_command(args: argparse.Namespace) -> int:
    overrides = {
        "class_prompt": args.class_prompt, "num_images": args.num, "out": args.out,
        "model": args.model, "negative_prompt": args.negative_prompt,
        "show_progress": sys.stderr.isatty(),
    }  # fmt: skip
    params = load_parameters(PriorsParameters, args.config, overrides)
    priors = class_priors_flow(params)
    print(
        f"class priors:  {priors.folder}  ({len(priors.image_uris)} images, "
        f"{priors.generated_now} generated now)"
    )
    return 0
