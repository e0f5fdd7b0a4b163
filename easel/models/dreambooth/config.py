"""The DreamBooth config (SPEC §6): one pydantic model, validated before any work.

The identifier is the rare token that names the subject. It is `identifier` when given,
otherwise the first word of `instance_prompt` that does not occur in `class_prompt`
(`a photo of sks shape` vs `a photo of shape` gives `sks`). Either way it must be a word of
`instance_prompt` and must not be a word of `class_prompt`.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from easel.errors import InvalidInput

LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts",
                 "polynomial")
PRECISIONS = ("32-true", "16-mixed", "bf16-mixed", "bf16-true")


def _words(prompt: str) -> list[str]:
    return re.findall(r"[\w<>\-]+", prompt.lower())


class DreamBoothConfig(BaseModel):
    """Everything one DreamBooth run needs; unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), frozen=True)

    # What to learn.
    model: str = "tiny-shapes"
    instance_data: str
    instance_prompt: str
    class_prompt: str
    identifier: str | None = None
    prior_preservation: bool = True
    prior_loss_weight: float = Field(1.0, ge=0)
    num_class_images: int = Field(100, ge=1, le=10_000)
    class_data: str | None = None  # a folder of class images to use instead of generating them

    # How to learn it.
    method: Literal["full", "lora"] = "full"
    lora_rank: int = Field(4, ge=1)
    train_text_encoder: bool = False
    resolution: int = Field(512, ge=8, le=4096)
    batch_size: int = Field(1, ge=1)
    gradient_accumulation: int = Field(1, ge=1)
    learning_rate: float = Field(5e-6, gt=0)
    lr_scheduler: Literal[LR_SCHEDULERS] = "constant"
    lr_warmup_steps: int = Field(0, ge=0)
    max_steps: int = Field(400, ge=1)
    precision: Literal[PRECISIONS] = "32-true"
    seed: int = Field(0, ge=0)
    snr_gamma: float | None = Field(None, gt=0)  # min-SNR loss weighting; None disables it
    offset_noise: float = Field(0.0, ge=0)

    # Where it runs (Lightning's own names and values).
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = Field(1, ge=1)
    strategy: str = "auto"

    # Checkpoints, validation, output.
    checkpoint_every_n_steps: int = Field(100, ge=1)
    keep_last_n_checkpoints: int = Field(2, ge=1)
    validation_prompts: list[str] = Field(default_factory=list)
    validation_images_per_prompt: int = Field(2, ge=1, le=16)
    validation_inference_steps: int = Field(25, ge=1, le=500)
    output: str
    register_as: str | None = None  # "NAME" or "NAME@ALIAS"

    @field_validator("resolution")
    @classmethod
    def _resolution_multiple_of_8(cls, value: int) -> int:
        if value % 8:
            raise ValueError(f"must be a multiple of 8 but is {value}")
        return value

    @field_validator("instance_prompt", "class_prompt")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("register_as")
    @classmethod
    def _registry_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9._-]+(@[A-Za-z0-9_-]+)?", value):
            raise ValueError(f"must be NAME or NAME@ALIAS (letters, digits, ._-) but is {value!r}")
        return value

    @model_validator(mode="after")
    def _identifier_in_instance_prompt(self) -> DreamBoothConfig:
        instance_words, class_words = _words(self.instance_prompt), set(_words(self.class_prompt))
        if self.identifier is not None:
            if self.identifier.lower() not in instance_words:
                raise ValueError(f"identifier {self.identifier!r} must be a word of instance_prompt "
                                 f"but instance_prompt is {self.instance_prompt!r}")
            if self.identifier.lower() in class_words:
                raise ValueError(f"identifier {self.identifier!r} must not occur in class_prompt "
                                 f"{self.class_prompt!r}")
        elif not any(word not in class_words for word in instance_words):
            raise ValueError(f"instance_prompt {self.instance_prompt!r} has no identifier: every "
                             f"word also occurs in class_prompt {self.class_prompt!r}; put a rare "
                             "token in instance_prompt (e.g. 'a photo of sks shape') or set `identifier`")
        return self

    @property
    def subject_token(self) -> str:
        """The identifier, given or derived (see the module docstring)."""
        if self.identifier is not None:
            return self.identifier
        class_words = set(_words(self.class_prompt))
        return next(w for w in _words(self.instance_prompt) if w not in class_words)


def _format_error(error: ValidationError) -> str:
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "config"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        return f"unknown config key `{field}` (value {first['input']!r})"
    if first["type"] == "missing":
        return f"config field `{field}` is required"
    if not first["loc"]:
        return message
    return f"config field `{field}` {message} (value {first['input']!r})"


def parse_config(values: dict[str, Any]) -> DreamBoothConfig:
    """Validate a mapping; a problem becomes one InvalidInput naming the field and value."""
    try:
        return DreamBoothConfig.model_validate(values)
    except ValidationError as error:
        raise InvalidInput(_format_error(error)) from None


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key=value` strings (the value read as YAML: numbers, booleans, lists)."""
    values = dict(values)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(f"--set expects key=value but got {item!r}")
        values[key.strip()] = yaml.safe_load(raw) if raw else ""
    return values


def load_config(path: str, overrides: list[str] = ()) -> DreamBoothConfig:
    """Read a YAML config (any fsspec URI), apply overrides, validate."""
    from easel.data.storage import exists, read_bytes

    if not exists(path):
        raise InvalidInput(f"config file {path!r} does not exist")
    try:
        values = yaml.safe_load(read_bytes(path)) or {}
    except yaml.YAMLError as error:
        raise InvalidInput(f"config file {path!r} is not valid YAML: {error}".splitlines()[0]) from None
    if not isinstance(values, dict):
        raise InvalidInput(f"config file {path!r} must hold a mapping of keys to values")
    return parse_config(apply_overrides(values, list(overrides)))
