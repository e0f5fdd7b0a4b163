"""Every limit and name list of easel's inputs, defined once.

The manifest rules (`easel.data.manifest`), the flow parameters and configs (pydantic
fields built from the annotated types below), the CLI help and the docs all read these;
`tests/data/test_limits.py` checks that docs/sweeps.md states the same values.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    TypeAdapter,
    WithJsonSchema,
)

# -- names -------------------------------------------------------------------------------
TASKS = ("text2img", "img2img", "inpaint", "fusion")
EDIT_TASKS = ("img2img", "inpaint")  # generate at the init image's size
# The manifest's `scheduler` values; the engine builds each one (easel.models.engine.schedulers)
SCHEDULER_NAMES = ("ddim", "ddpm", "pndm", "euler", "euler_a", "dpmpp_2m", "unipc", "lms", "heun")
SchedulerName = Literal[SCHEDULER_NAMES]
# A model's own scheduler without a short name is recorded by its diffusers class
# (`LCMScheduler`); the manifest takes that back, and planning checks it is the row model's
SCHEDULER_CLASS = re.compile(r"[A-Z][A-Za-z0-9]*Scheduler")
# The sweep's fast path (easel.models.engine.performance)
COMPILE_MODES = ("off", "regional", "full")


def yaml_switch(on: str | None = None) -> BeforeValidator:
    """YAML reads a bare `off` as false and `on` as true: false is the choice `off`, true is
    `on` (where a choice means it; else true is refused as the Literal refuses it)."""
    return BeforeValidator(
        lambda v: ("off" if not v else on or v) if isinstance(v, bool) else v
    )


UNSET_CHOICE = "default"  # a choice left to easel (None in Python), as forms and JSON name it


def left_to_easel(kind, schema: dict):
    """`kind` or None (easel decides), named `UNSET_CHOICE` in JSON (and read back as None),
    its JSON Schema `schema` with `UNSET_CHOICE` as default: the dashboard's form shows the
    field itself (an optional one shows as a "str | None" toggle instead)."""
    return Annotated[
        kind | None,
        BeforeValidator(lambda v: None if v == UNSET_CHOICE else v),
        PlainSerializer(lambda v: UNSET_CHOICE if v is None else v, when_used="json"),
        WithJsonSchema(schema),
        Field(json_schema_extra={"default": UNSET_CHOICE}),  # a field's default is None
    ]


def optional_number(limited):
    """`limited` (a number type with its limits, e.g. `GuidanceScale`) or None (unset). Its
    JSON Schema is the number's alone, with no null default: the dashboard's form shows a
    plain number field with its limits, which may be left empty (an optional number shows as
    a "float | None" toggle), and Prefect's validation takes null for a field without a
    default. With a default (`Field(1)`), Prefect's validation refuses null."""
    return Annotated[limited | None, WithJsonSchema(TypeAdapter(limited).json_schema()),
                     Field(json_schema_extra=_without_null_default)]  # fmt: skip


def _without_null_default(schema: dict) -> None:
    if "default" in schema and schema["default"] is None:
        del schema["default"]


def default_or(choices: tuple[str, ...]):
    """A choice among `choices` that may be left to easel: one `enum` (`UNSET_CHOICE` and
    `choices`), which the form shows as a dropdown."""
    return left_to_easel(Literal[choices], {"type": "string", "enum": [UNSET_CHOICE, *choices]})


DTYPES = ("float32", "float16", "bfloat16")  # weights' dtypes a run may ask for
DtypeChoice = default_or(DTYPES)
SchedulerChoice = default_or(SCHEDULER_NAMES)  # a default scheduler (None: the model's own)
DeviceSetting = left_to_easel(str, {"type": "string", "minLength": 1})  # a torch device
CompileMode = Annotated[Literal[COMPILE_MODES], yaml_switch(on="full")]  # true: whole network
# Whether a model's safety checker runs (`auto`: where the model has one)
SAFETY_CHECKER_MODES = ("auto", "off")
SafetyCheckerMode = Annotated[Literal[SAFETY_CHECKER_MODES], yaml_switch(on="auto")]
ATTENTION_BACKENDS = ("auto", "flash", "efficient", "cudnn", "math")  # PyTorch's SDPA kernels
# How a fusion's weights reach Kandinsky's prior (easel.data.fusion): divided by their sum,
# or as written (diffusers' `interpolate` sums the weighted embeddings as they are)
FUSION_WEIGHTS = ("sum_to_one", "raw")
FusionWeights = Literal[FUSION_WEIGHTS]

ID_RULE = "[A-Za-z0-9._-]{1,128}"
ID_PATTERN = re.compile(ID_RULE)

# -- ranges (inclusive) ------------------------------------------------------------------
MIN_STEPS, MAX_STEPS = 1, 500  # num_inference_steps (and the prior's, from 2)
MIN_PRIOR_STEPS = 2  # Kandinsky's prior (unCLIP scheduler) divides by steps - 1
MIN_IMAGES, MAX_IMAGES = 1, 64  # num_images of one row
MAX_FUSION_INPUTS = 16  # items of one row's fusion_inputs (each text is one prior run)
MIN_SIDE, MAX_SIDE, SIDE_MULTIPLE = 8, 4096, 8  # width, height, resolution (pixels)
MAX_SEED = 2**63 - 1
MIN_BATCH, MAX_BATCH = 1, 256  # images per pipeline call
MAX_SHARDS = 256  # flow runs one sweep may split into
# `shards: auto`: the most of a shard run's time its fixed cost (start, model load, planning)
# may take
SHARD_START_SHARE = 0.05
DEFAULT_MAX_PIXELS = 2048 * 2048  # the sweep's pixel budget for width x height
# The most pixels an input image (init image, mask, fusion or DreamBooth image) may declare
# in its header: checked before it is decoded, so reading one takes at most ~1 GiB
# (4 bytes a pixel in its widest mode, plus an RGB copy). 8192 x 8192; a 108 MP phone photo
# is downscaled first.
MAX_INPUT_PIXELS = 8192 * 8192
MIN_MAX_PIXELS = 64

# -- defaults ----------------------------------------------------------------------------
GUIDANCE_SCALE = 7.5
NUM_INFERENCE_STEPS = 20
MAX_LORA_SCALE = 16.0  # |scale| of a LoRA adapter (`loras`); far beyond any use

STRENGTH = 0.75
BATCH_SIZE = 8
# Kandinsky's diffusion prior: diffusers' defaults (its combined pipelines' arguments)
PRIOR_GUIDANCE_SCALE, PRIOR_NUM_INFERENCE_STEPS = 4.0, 25

# -- the same rules for pydantic models ----------------------------------------------------
# Every flow parameter and config model: unknown keys and non-finite floats (NaN, ±inf, as
# YAML's .nan and .inf) are refused before any work.
PARAMETERS = ConfigDict(extra="forbid", allow_inf_nan=False)
InferenceSteps = Annotated[int, Field(ge=MIN_STEPS, le=MAX_STEPS)]
PriorInferenceSteps = Annotated[int, Field(ge=MIN_PRIOR_STEPS, le=MAX_STEPS)]
GuidanceScale = Annotated[float, Field(ge=0)]
PositiveNumber = Annotated[float, Field(gt=0)]  # a rate, a weighting's constant
Count = Annotated[int, Field(ge=1)]  # steps between two things, threads
LoraScale = Annotated[float, Field(ge=-MAX_LORA_SCALE, le=MAX_LORA_SCALE)]
Side = Annotated[int, Field(ge=MIN_SIDE, le=MAX_SIDE, multiple_of=SIDE_MULTIPLE)]
# Optional numbers as plain form fields (`optional_number`)
OptionalGuidanceScale = optional_number(GuidanceScale)
OptionalPositiveNumber = optional_number(PositiveNumber)
OptionalCount = optional_number(Count)
OptionalSide = optional_number(Side)
BatchSize = Annotated[int, Field(ge=MIN_BATCH, le=MAX_BATCH)]


def _count_or_auto(low: int, high: int) -> BeforeValidator:
    """A whole number low..high or "auto", with one message for anything else."""

    def check(value):
        if value == "auto":
            return value
        number = value if isinstance(value, int) and not isinstance(value, bool) else None
        if isinstance(value, str) and value.strip().isdigit():
            number = int(value)
        if number is None or not low <= number <= high:
            raise ValueError(f"must be a whole number {low}..{high} or 'auto'")
        return number

    return BeforeValidator(check)


# auto: the largest batch the device's memory holds
BatchSizeSetting = Annotated[BatchSize | Literal["auto"], _count_or_auto(MIN_BATCH, MAX_BATCH)]
Shards = Annotated[int, Field(ge=1, le=MAX_SHARDS)]
# auto: from the pending images, the pool's workers and a shard's measured fixed cost
# (easel.data.shard_sizing)
ShardsSetting = Annotated[Shards | Literal["auto"], _count_or_auto(1, MAX_SHARDS)]


def scheduler_error(scheduler: str) -> str | None:
    """Why `scheduler` cannot be a row's `scheduler` (a short name, or a diffusers class
    name as results record a model's own), or None."""
    if scheduler in SCHEDULER_NAMES or SCHEDULER_CLASS.fullmatch(scheduler):
        return None
    return (
        f"`scheduler` must be one of {', '.join(SCHEDULER_NAMES)} (or the model's own "
        f"scheduler class, as results record it) but is {scheduler!r}"
    )


def side_error(column: str, side: int) -> str | None:
    """Why `side` (pixels) cannot be a `column` (width, height), or None."""
    if not MIN_SIDE <= side <= MAX_SIDE:
        return f"`{column}` must be in {MIN_SIDE}..{MAX_SIDE} but is {side}"
    if side % SIDE_MULTIPLE:
        return f"`{column}` must be divisible by {SIDE_MULTIPLE} but is {side}"
    return None
