"""The DreamBooth config (SPEC §6): one pydantic model, validated before any work.

The identifier is the rare token that names the subject. It is `identifier` when given,
otherwise the first word of `instance_prompt` that does not occur in `class_prompt`
(`a photo of sks shape` vs `a photo of shape` gives `sks`), filled in when the config is
validated. Either way it must be a word of `instance_prompt` and must not be a word of
`class_prompt`.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from easel.data import limits
from easel.data.limits import CompileMode, InferenceSteps, Side

LR_SCHEDULERS = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
)
PRECISIONS = ("32-true", "16-mixed", "bf16-mixed", "bf16-true")


def words(prompt: str) -> list[str]:
    return re.findall(r"[\w<>\-]+", prompt.lower())


def without_word(prompt: str, word: str) -> str:
    """`prompt` with every occurrence of `word` (as a word, any case) taken out: an instance
    prompt or caption as its class prompt ("a sks dog on a beach" -> "a dog on a beach")."""
    kept = re.sub(rf"(?<![\w<>\-]){re.escape(word)}(?![\w<>\-])", "", prompt, flags=re.I)
    return " ".join(kept.split())


class DreamBoothConfig(BaseModel):
    """Everything one DreamBooth run needs; unknown keys are an error."""

    model_config = ConfigDict(**limits.PARAMETERS, protected_namespaces=(), frozen=True)

    # What to learn.
    model: str = Field(
        "tiny-shapes",
        description="the Stable Diffusion model to fine-tune "
        "(a model reference: embedded name, folder, fsspec URI, models:/...)",
    )
    instance_data: str = Field(description="folder (or fsspec URI) of 3-20 images of the subject")
    class_prompt: str = Field(description="the subject's class without the identifier: 'a dog'")
    identifier: str | None = Field(
        None, description="the rare token naming the subject; default: the first word of "
        "`instance_prompt` not in `class_prompt`",
    )  # fmt: skip
    instance_prompt: str = Field(  # after class_prompt and identifier: its check reads them
        description="the subject's prompt with the identifier: 'a photo of sks dog'"
    )
    instance_captions: bool = Field(
        True, description="read an instance image's prompt from NAME.txt beside it when there "
        "is one (it must contain the identifier; name what is not the subject, e.g. 'a sks dog "
        "on a beach'); images without one use `instance_prompt`",
    )  # fmt: skip
    prior_preservation: bool = Field(
        True, description="also train on class images, so the class keeps its own look"
    )
    prior_preservation_method: Literal["class_images", "differential_output"] = Field(
        "class_images", description="with `prior_preservation`, what keeps the class: "
        "class_images (the paper's: generated class images and `class_prompt`) or "
        "differential_output (ai-toolkit's: no class images; on each instance example's noisy "
        "latent, the prediction for its prompt without the identifier is pulled to the base "
        "model's own; needs a frozen or identifier-only text encoder)",
    )  # fmt: skip
    prior_loss_weight: float = Field(1.0, ge=0, description="weight of the prior loss")
    num_class_images: int = Field(
        100, ge=1, le=10_000, description="class images generated (about batch_size x "
        "max_steps / 2 works well)",
    )  # fmt: skip
    # Class images are sampled without guidance by default: then they are samples of the
    # model's own "class_prompt" distribution, which the prior loss keeps where it is. Guided
    # samples (e.g. 7.5) are a sharper distribution; training on them moves the class prompt
    # towards it and guidance at inference sharpens it again (bench/HISTORY.md measures this).
    class_guidance_scale: float = Field(
        1.0, ge=0, description="guidance of the generated class images (1: unguided samples)"
    )
    class_data: str | None = Field(
        None, description="a folder of class images to use instead of generating them"
    )
    class_priors_dir: str | None = Field(
        None, description="the class-prior cache root; default <output>/class_priors"
    )

    # How to learn it.
    method: Literal["full", "lora"] = Field(
        "full", description="full: train the UNet's weights; lora: low-rank adapters only"
    )
    lora_rank: int = Field(4, ge=1, description="rank of the LoRA adapters (method lora)")
    train_text_encoder: bool | Literal["identifier"] = Field(
        False, description="train the text encoder too; identifier: only the identifier's "
        "token embeddings (textual inversion's update; every other word keeps its meaning)",
    )  # fmt: skip
    resolution: Side = Field(512, description="training image side in pixels (resize + crop)")
    batch_size: int = Field(1, ge=1, description="instance images per step (as many class)")
    gradient_accumulation: int = Field(1, ge=1, description="micro-batches per optimizer step")
    learning_rate: float = Field(5e-6, gt=0, description="AdamW's learning rate")
    text_encoder_learning_rate: float | None = Field(
        None, gt=0, description="the text encoder's learning rate when it trains (a tenth of "
        "the UNet's keeps its other words' meaning); unset: `learning_rate`",
    )  # fmt: skip
    lr_scheduler: Literal[LR_SCHEDULERS] = Field(
        "constant", description="learning-rate schedule (diffusers' get_scheduler names)"
    )
    lr_warmup_steps: int = Field(0, ge=0, description="steps of linear warm-up")
    max_steps: int = Field(400, ge=1, description="optimizer steps in all")
    precision: Literal[PRECISIONS] = Field(
        "32-true", description="Lightning precision; 16-mixed or bf16-mixed on a GPU"
    )
    seed: int = Field(0, ge=0, description="seeds the data order, noise and class images")
    snr_gamma: float | None = Field(
        None, gt=0, description="min-SNR loss weighting's gamma (5 is usual); unset: off"
    )
    offset_noise: float = Field(
        0.0, ge=0, description="offset-noise strength (0.05-0.1 helps very dark or light images)"
    )
    compile_unet: CompileMode = Field(
        "off", description="torch.compile the UNet's forward and backward: off, regional (its "
        "repeated blocks: a short compile) or full (the whole network; true means full)",
    )  # fmt: skip
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass: less memory, slower "
        "steps, the same weights",
    )  # fmt: skip

    # Where it runs (Lightning's own names and values).
    accelerator: str = Field("auto", description="Lightning accelerator: auto, cpu, gpu, ...")
    devices: Annotated[int, Field(ge=-1)] | str = Field(
        1, description="Lightning devices per node: a count (-1: all), a list such as '0,1', auto"
    )
    num_nodes: int = Field(1, ge=1, description="Lightning nodes")
    strategy: str = Field("auto", description="Lightning strategy: auto, ddp, fsdp, ...")

    # Checkpoints, validation, output.
    checkpoint_every_n_steps: int = Field(100, ge=1, description="steps between checkpoints")
    keep_last_n_checkpoints: int = Field(2, ge=1, description="checkpoints kept")
    validation_prompts: list[str] = Field(
        default_factory=list, description="prompts sampled on the trained and the base model"
    )
    validation_images_per_prompt: int = Field(2, ge=1, le=16, description="seeds per prompt")
    validation_every_n_steps: int | None = Field(
        None, ge=1, description="while training, every N steps: a grid of the validation "
        "prompts x seeds on the weights so far, logged to the MLflow training run at that step "
        "(None: only the trained-against-base images at the end)",
    )  # fmt: skip
    validation_inference_steps: InferenceSteps = Field(
        25, description="denoising steps of the validation images"
    )
    output: str = Field(
        description="folder or object-store URI for checkpoints, the pipeline, validation"
    )
    register_as: str | None = Field(
        None, description="register the pipeline in MLflow as NAME or NAME@ALIAS"
    )

    @model_validator(mode="before")
    @classmethod
    def _derive_identifier(cls, values):
        """`identifier` unset: the first word of `instance_prompt` not in `class_prompt`."""
        if not isinstance(values, dict) or values.get("identifier") is not None:
            return values
        instance, class_prompt = values.get("instance_prompt"), values.get("class_prompt")
        if isinstance(instance, str) and isinstance(class_prompt, str):
            class_words = set(words(class_prompt))
            derived = next((w for w in words(instance) if w not in class_words), None)
            if derived is not None:
                return {**values, "identifier": derived}
        return values

    @model_validator(mode="after")
    def _identifier_embeddings_with_full(self):
        if self.train_text_encoder == "identifier" and self.method == "lora":
            raise ValueError(
                "`train_text_encoder` 'identifier' needs `method` full (the token embeddings "
                "are trained as they are, not through adapters) but `method` is 'lora'"
            )
        return self

    @model_validator(mode="after")
    def _differential_output_with_the_base_text(self):
        if self.differential_output and self.train_text_encoder is True:
            raise ValueError(
                "`prior_preservation_method` 'differential_output' needs the text encoder "
                "frozen or `train_text_encoder` 'identifier' (its target is the base model's "
                "prediction for the same text) but `train_text_encoder` is true"
            )
        return self

    @property
    def class_images_used(self) -> bool:
        return self.prior_preservation and self.prior_preservation_method == "class_images"

    @property
    def differential_output(self) -> bool:
        return self.prior_preservation and self.prior_preservation_method == "differential_output"

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
        instance_words, class_words = words(value), set(words(info.data["class_prompt"]))
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
