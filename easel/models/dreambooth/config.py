"""The DreamBooth config (SPEC §6): one pydantic model, validated before any work.

The identifier is the rare token that names the subject. It is `identifier` when given,
otherwise the first word of `instance_prompt` that does not occur in `class_prompt`
(`a photo of sks shape` vs `a photo of shape` gives `sks`), filled in when the config is
validated. Either way it must be a word of `instance_prompt` and must not be a word of
`class_prompt`.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from easel.data import limits
from easel.data.limits import InferenceSteps, Side

LR_SCHEDULERS = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
)
PRECISIONS = ("32-true", "16-mixed", "bf16-mixed", "bf16-true")


def _words(prompt: str) -> list[str]:
    return re.findall(r"[\w<>\-]+", prompt.lower())


class DreamBoothConfig(BaseModel):
    """Everything one DreamBooth run needs; unknown keys are an error."""

    model_config = ConfigDict(**limits.PARAMETERS, protected_namespaces=(), frozen=True)

    # What to learn.
    model: str = "tiny-shapes"
    instance_data: str
    class_prompt: str
    identifier: str | None = None
    instance_prompt: str  # after class_prompt and identifier: its check reads them
    prior_preservation: bool = True
    prior_loss_weight: float = Field(1.0, ge=0)
    num_class_images: int = Field(100, ge=1, le=10_000)
    # Class images are sampled without guidance by default: then they are samples of the
    # model's own "class_prompt" distribution, which the prior loss keeps where it is. Guided
    # samples (e.g. 7.5) are a sharper distribution; training on them moves the class prompt
    # towards it and guidance at inference sharpens it again (bench/README.md measures this).
    class_guidance_scale: float = Field(1.0, ge=0)
    class_data: str | None = None  # a folder of class images to use instead of generating them
    class_priors_dir: str | None = None  # the class-prior cache root; default <output>/class_priors

    # How to learn it.
    method: Literal["full", "lora"] = "full"
    lora_rank: int = Field(4, ge=1)
    train_text_encoder: bool = False
    resolution: Side = 512
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
    compile_unet: bool = False  # torch.compile the UNet: faster GPU steps after a one-off compile
    # Recompute activations in the backward pass instead of keeping them: less memory, a
    # slower step (bench/README.md measures both)
    gradient_checkpointing: bool = False

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
    validation_inference_steps: InferenceSteps = 25
    output: str
    register_as: str | None = None  # "NAME" or "NAME@ALIAS"

    @model_validator(mode="before")
    @classmethod
    def _derive_identifier(cls, values):
        """`identifier` unset: the first word of `instance_prompt` not in `class_prompt`."""
        if not isinstance(values, dict) or values.get("identifier") is not None:
            return values
        instance, class_prompt = values.get("instance_prompt"), values.get("class_prompt")
        if isinstance(instance, str) and isinstance(class_prompt, str):
            class_words = set(_words(class_prompt))
            derived = next((w for w in _words(instance) if w not in class_words), None)
            if derived is not None:
                return {**values, "identifier": derived}
        return values

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

    @field_validator("instance_prompt")
    @classmethod
    def _identifier_in_instance_prompt(cls, value: str, info: ValidationInfo) -> str:
        if "class_prompt" not in info.data:  # class_prompt itself is invalid; reported there
            return value
        instance_words, class_words = _words(value), set(_words(info.data["class_prompt"]))
        identifier = info.data.get("identifier")
        if identifier is not None and identifier.lower() not in instance_words:
            raise ValueError(f"must contain the identifier {identifier!r} as a word")
        if identifier is not None and identifier.lower() in class_words:
            raise ValueError(
                f"identifier {identifier!r} also occurs in class_prompt; pick a rare token"
            )
        if identifier is None and all(word in class_words for word in instance_words):
            raise ValueError(
                "has no identifier: every word also occurs in class_prompt; put a rare "
                "token in it (e.g. 'a photo of sks shape') or set `identifier`"
            )
        return value
