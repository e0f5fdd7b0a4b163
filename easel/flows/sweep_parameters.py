"""The sweep flow's parameters (`SweepParameters`): everything a sweep run takes, each key
with its default, limits and description (the dashboard's form, `docs/configuration.md`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from easel.data import limits, storage, verdict
from easel.data.limits import (
    BatchSizeSetting,
    DeviceSetting,
    DtypeChoice,
    FusionWeights,
    GuidanceScale,
    InferenceSteps,
    PriorInferenceSteps,
    SafetyCheckerMode,
    SchedulerChoice,
    ShardsSetting,
)
from easel.data.manifest import SweepDefaults
from easel.models.engine.performance import Performance
from easel.models.engine.spec import LoraAdapter, ModelSpec
from easel.models.engine.sweep import SweepInputs
from easel.orchestration.run_context import (
    LOOKS_LIKE_PLACEHOLDER,
    PLACEHOLDER,
    check_placeholders,
)

INTERNAL_FIELDS = ("shard", "parent_mlflow_run_id", "vouched_by")  # set by a sharded parent
# `out` as JSON Schema checks it (the dashboard's form, the API): no `{word}` other than
# the known placeholders (the field's validator says which one is wrong)
OUT_PATTERN = rf"^(?!.*(?!{PLACEHOLDER.pattern}){LOOKS_LIKE_PLACEHOLDER.pattern}).*$"


def _internal_fields_hidden(schema: dict) -> None:
    """The form shows `properties`: the internal fields move to `patternProperties`, where
    the API still checks them (and refuses any other unknown key)."""
    hidden = {name: schema["properties"].pop(name) for name in INTERNAL_FIELDS}
    schema["patternProperties"] = {f"^{name}$": prop for name, prop in hidden.items()}


class SweepParameters(BaseModel):
    """A prompt sweep: every row of a Parquet manifest rendered to images by its model, with
    `results.parquet`, a contact sheet, an MLflow run and Prefect artifacts; a rerun makes
    only what is missing (docs/sweeps.md)."""

    model_config = ConfigDict(**limits.PARAMETERS, json_schema_extra=_internal_fields_hidden)

    manifest: str = Field(description="Parquet file, folder or glob (any fsspec URI)")
    out: str = Field(
        json_schema_extra={"pattern": OUT_PATTERN},
        description="output folder (any fsspec URI); `{scheduled_date}` (YYYY-MM-DD, UTC) and "
        "`{flow_run_name}` in it are filled in from the run, so scheduled runs keep their "
        "outputs apart (any other `{word}` is refused); a local folder is made absolute"
    )
    model: str = Field(
        "tiny-shapes", description="default for rows without a `model`: a name in `models` or "
        "a model reference",
    )  # fmt: skip
    models: dict[str, ModelSpec] = Field(
        default_factory=dict, description="named models: a short name (usable as `model`) -> "
        "`{path, variant, config, prior, safety_checker, loras}` (docs/models.md)",
    )  # fmt: skip
    safety_checker: SafetyCheckerMode = Field(
        "auto", description="auto: run each model's safety checker where it has one (flagged "
        "images are written black, `nsfw_content_detected`); off: never",
    )  # fmt: skip
    loras: list[LoraAdapter] = Field(
        default_factory=list, description="LoRA adapters for rows without a `loras` value: "
        "[{path, scale}] (scale 1.0 by default; several stack; a local path relative to the "
        "working directory)",
    )  # fmt: skip
    batch_size: BatchSizeSetting = Field(
        limits.BATCH_SIZE, description="images per pipeline call, or `auto`: the largest the "
        "device's free memory holds, measured for each model and settings (CUDA; elsewhere "
        f"{limits.BATCH_SIZE})",
    )  # fmt: skip
    guidance_scale: GuidanceScale = Field(
        limits.GUIDANCE_SCALE, description="default for rows without a `guidance_scale`"
    )
    num_inference_steps: InferenceSteps = Field(
        limits.NUM_INFERENCE_STEPS, description="default for rows without `num_inference_steps`"
    )
    scheduler: SchedulerChoice = Field(
        None, description="default for rows without a `scheduler` (default: the model's own)"
    )
    prior_guidance_scale: limits.OptionalGuidanceScale = Field(
        None, description="Kandinsky's prior: default guidance (unset: the model card's "
        f"`prior_guidance_scale`, else diffusers' {limits.PRIOR_GUIDANCE_SCALE:g})",
    )  # fmt: skip
    prior_num_inference_steps: PriorInferenceSteps = Field(
        limits.PRIOR_NUM_INFERENCE_STEPS, description="Kandinsky's prior: default steps"
    )
    fusion_weights: FusionWeights = Field(
        "sum_to_one", description="Kandinsky fusion: `fusion_inputs` weights divided by their "
        "sum, so the mixed embedding keeps the scale the decoder knows (`sum_to_one`), or as "
        "written (`raw`: diffusers' `interpolate`, which sums the weighted embeddings as they are)",
    )  # fmt: skip
    max_pixels: int = Field(
        limits.DEFAULT_MAX_PIXELS, ge=limits.MIN_MAX_PIXELS,
        description="pixel budget for width x height",
    )  # fmt: skip
    input_roots: list[str] = Field(
        default_factory=list, description="folders init, mask and fusion images may come from, "
        "besides the manifest's",
    )  # fmt: skip
    device: DeviceSetting = Field(
        None, description="torch device: cpu, cuda, cuda:1, mps... (default: cuda if present)"
    )
    dtype: DtypeChoice = Field(
        None, description="weights' dtype (default: float16 on cuda, else float32)"
    )
    trust_pickle: bool = Field(False, description="allow pickle (.bin/.ckpt) weights")
    performance: Performance = Field(
        Performance(), description="the fast path: compile, channels_last, attention_backend, "
        "vae_dtype (docs/performance.md)",
    )  # fmt: skip
    experiment: str = Field("easel-sweep", description="the MLflow experiment")
    show_progress: bool = Field(False, description="a progress bar on the terminal")
    images_per_task: int = Field(
        256, ge=1, le=100_000, description="images per Prefect task (a retry unit)"
    )
    shards: ShardsSetting = Field(
        1, description="flow runs the work is split into, by content (the same on every "
        "rerun): a deployment's run starts each on any worker of its pool, a run from a shell "
        "runs them one after the other; runs into one output should use the same number. "
        f"auto: from the pending images, the pool's workers and a shard's measured fixed cost "
        f"(at most {limits.SHARD_START_SHARE:.0%} of its time), decided once per output",
    )  # fmt: skip
    shard: int | None = Field(
        None, ge=0, lt=limits.MAX_SHARDS,
        description="set by the parent run: the one shard this run generates (leave empty)",
    )  # fmt: skip
    parent_mlflow_run_id: str | None = Field(
        None, description="set by the parent run: its MLflow run (leave empty)"
    )
    vouched_by: str | None = Field(
        None, pattern=verdict.NAME_PATTERN,
        description="set by the parent run: its verdict on the output's images, which this "
        "shard trusts instead of listing them (leave empty)",
    )  # fmt: skip

    @field_validator("out")
    @classmethod
    def _placeholders_known_and_local_folders_absolute(cls, out: str) -> str:
        """A misspelt placeholder refused; a local folder made absolute, so that the
        results' `image_uri`s do not depend on where they are read from."""
        return storage.absolute(check_placeholders(out, "out"))

    @field_validator("loras")
    @classmethod
    def _local_adapters_absolute(cls, loras: list[LoraAdapter]) -> list[LoraAdapter]:
        """Local adapter files made absolute: the flow may run in another folder."""
        return [absolute_adapter(adapter) for adapter in loras]

    @field_validator("models")
    @classmethod
    def _named_models_adapters_absolute(cls, models: dict[str, ModelSpec]) -> dict:
        return {name: spec.model_copy(update={"loras": tuple(map(absolute_adapter, spec.loras))})
                for name, spec in models.items()}  # fmt: skip

    @model_validator(mode="after")
    def _shard_in_range(self):
        if self.shard is not None and self.shards == "auto":
            raise ValueError(f"`shard` {self.shard} is set by the parent with a number of "
                             "`shards`, but `shards` is 'auto'")  # fmt: skip
        if self.shard is not None and self.shard >= self.shards:
            raise ValueError(f"`shard` {self.shard} must be below `shards` ({self.shards})")
        return self

    def inputs(self) -> SweepInputs:
        defaults = SweepDefaults(
            model=self.model, guidance_scale=self.guidance_scale,
            num_inference_steps=self.num_inference_steps, max_pixels=self.max_pixels,
            scheduler=self.scheduler, prior_guidance_scale=self.prior_guidance_scale,
            prior_num_inference_steps=self.prior_num_inference_steps,
            fusion_weights=self.fusion_weights,
            loras=adapter_pairs(self.loras),
            model_loras=tuple((name, adapter_pairs(spec.loras))
                              for name, spec in self.models.items() if spec.loras),
        )  # fmt: skip
        return SweepInputs(
            manifest=self.manifest, out=self.out, defaults=defaults,
            input_roots=tuple(self.input_roots), batch_size=self.batch_size, device=self.device,
            dtype=self.dtype, trust_pickle=self.trust_pickle, performance=self.performance,
            models=self.models, safety_checker=self.safety_checker,
        )  # fmt: skip


def absolute_adapter(adapter: LoraAdapter) -> LoraAdapter:
    return adapter.model_copy(update={"path": storage.absolute(adapter.path)})


def adapter_pairs(adapters) -> tuple[tuple[str, float], ...]:
    """(path, scale) of each adapter, as the manifest's defaults take them."""
    return tuple((adapter.path, adapter.scale) for adapter in adapters)
