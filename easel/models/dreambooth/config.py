"""The DreamBooth config (SPEC §6): pydantic models, validated before any work.

Keys come in groups, as ai-toolkit's YAML does: `subject` (what to learn),
`prior_preservation` (what keeps the class), `train` (the optimisation), `runtime` (where and
how it computes), `checkpoints`, `validation`; `model`, `output` and `register_as` stay at the
top. The flat keys of earlier releases (`max_steps`, `train_text_encoder: true`, ...) still
read, moved into their groups by `easel.models.dreambooth.flat_keys` with one warning.

The identifier is the rare token that names the subject. It is `identifier` when given,
otherwise the first word of `instance_prompt` that does not occur in `class_prompt`
(`a photo of sks shape` vs `a photo of shape` gives `sks`), filled in when the config is
validated. Either way it must be a word of `instance_prompt` and must not be a word of
`class_prompt`.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from easel.data import limits
from easel.data.limits import COMPILE_MODES, InferenceSteps, Side, yaml_switch
from easel.models.dreambooth.flat_keys import group_flat_keys
from easel.models.engine.spec import ModelSpec, reference_value

LR_SCHEDULERS = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
)
PRECISIONS = ("32-true", "16-mixed", "bf16-mixed", "bf16-true")
TEXT_ENCODER_MODES = ("off", "all", "identifier")  # what of the text encoder trains
# YAML 1.1 reads a bare `off` as false: that is "off", the one spelling
# the grouped spellings: YAML's bare `off` is off; `true` is no choice (the flat keys' was)
TextEncoderMode = Annotated[Literal[TEXT_ENCODER_MODES], yaml_switch()]
UnetCompileMode = Annotated[Literal[COMPILE_MODES], yaml_switch()]
GROUP = ConfigDict(**limits.PARAMETERS, frozen=True)


def words(prompt: str) -> list[str]:
    return re.findall(r"[\w<>\-]+", prompt.lower())


def without_word(prompt: str, word: str) -> str:
    """`prompt` with every occurrence of `word` (as a word, any case) taken out: an instance
    prompt or caption as its class prompt ("a sks dog on a beach" -> "a dog on a beach")."""
    kept = re.sub(rf"(?<![\w<>\-]){re.escape(word)}(?![\w<>\-])", "", prompt, flags=re.I)
    return " ".join(kept.split())


class Subject(BaseModel):
    """What to learn: the instance images and the prompts that name them."""

    model_config = GROUP

    instance_data: str = Field(description="folder (or fsspec URI) of 3-20 images of the subject")
    class_prompt: str = Field(description="the subject's class without the identifier: 'a dog'")
    identifier: str | None = Field(
        None, description="the rare token naming the subject; default: the first word of "
        "`subject.instance_prompt` not in `subject.class_prompt`",
    )  # fmt: skip
    instance_prompt: str = Field(  # after class_prompt and identifier: its check reads them
        description="the subject's prompt with the identifier: 'a photo of sks dog'"
    )
    captions: bool = Field(
        True, description="read an instance image's prompt from NAME.txt beside it when there "
        "is one (it must contain the identifier; name what is not the subject, e.g. 'a sks dog "
        "on a beach'); images without one use `subject.instance_prompt`",
    )  # fmt: skip

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

    @field_validator("instance_prompt", "class_prompt")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
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
                "token in it (e.g. 'a photo of sks shape') or set `subject.identifier`"
            )
        return value


class PriorPreservation(BaseModel):
    """What keeps the class its own look while the subject is learnt."""

    model_config = GROUP

    enabled: bool = Field(True, description="also train on the class, so it keeps its own look")
    method: Literal["class_images", "differential_output"] = Field(
        "class_images", description="what keeps the class: class_images (the paper's: "
        "generated class images and `subject.class_prompt`) or differential_output "
        "(ai-toolkit's: no class images; on each instance example's noisy latent, the "
        "prediction for its prompt without the identifier is pulled to the base model's own; "
        "needs `train.text_encoder` off or identifier)",
    )  # fmt: skip
    loss_weight: float = Field(1.0, ge=0, description="weight of the prior loss")
    num_class_images: int = Field(
        100, ge=1, le=10_000, description="class images generated (about train.batch_size x "
        "train.max_steps / 2 works well)",
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

    @property
    def class_images_used(self) -> bool:
        return self.enabled and self.method == "class_images"

    @property
    def differential_output(self) -> bool:
        return self.enabled and self.method == "differential_output"


class Train(BaseModel):
    """The optimisation: what trains, on what batches, at what rate, for how long."""

    model_config = GROUP

    method: Literal["full", "lora"] = Field(
        "full", description="full: train the UNet's weights; lora: low-rank adapters only"
    )
    lora_rank: int = Field(4, ge=1, description="rank of the LoRA adapters (method lora)")
    text_encoder: TextEncoderMode = Field(
        "off", description="what of the text encoder trains: off, all, or identifier (only the "
        "identifier's token embeddings: textual inversion's update; every other word keeps "
        "its meaning)",
    )  # fmt: skip
    resolution: Side = Field(512, description="training image side in pixels (resize + crop)")
    batch_size: int = Field(1, ge=1, description="instance images per step (as many class)")
    gradient_accumulation: int = Field(1, ge=1, description="micro-batches per optimizer step")
    learning_rate: float = Field(5e-6, gt=0, description="AdamW's learning rate")
    text_encoder_learning_rate: limits.OptionalPositiveNumber = Field(
        None, description="the text encoder's learning rate when it trains (a tenth of "
        "the UNet's keeps its other words' meaning); unset: `train.learning_rate`",
    )  # fmt: skip
    lr_scheduler: Literal[LR_SCHEDULERS] = Field(
        "constant", description="learning-rate schedule (diffusers' get_scheduler names)"
    )
    lr_warmup_steps: int = Field(0, ge=0, description="steps of linear warm-up")
    max_steps: int = Field(400, ge=1, description="optimizer steps in all")
    seed: int = Field(0, ge=0, description="seeds the data order, noise and class images")
    snr_gamma: limits.OptionalPositiveNumber = Field(
        None, description="min-SNR loss weighting's gamma (5 is usual); unset: off"
    )
    offset_noise: float = Field(
        0.0, ge=0, description="offset-noise strength (0.05-0.1 helps very dark or light images)"
    )


class Runtime(BaseModel):
    """Where and how it computes (Lightning's own names and values for the first five)."""

    model_config = GROUP

    accelerator: str = Field("auto", description="Lightning accelerator: auto, cpu, gpu, ...")
    devices: Annotated[int, Field(ge=-1)] | str = Field(
        1, description="Lightning devices per node: a count (-1: all), a list such as '0,1', auto"
    )
    num_nodes: int = Field(1, ge=1, description="Lightning nodes")
    strategy: str = Field("auto", description="Lightning strategy: auto, ddp, fsdp, ...")
    precision: Literal[PRECISIONS] = Field(
        "32-true", description="Lightning precision; 16-mixed or bf16-mixed on a GPU"
    )
    compile_unet: UnetCompileMode = Field(
        "off", description="torch.compile the UNet's forward and backward: off, regional (its "
        "repeated blocks: a short compile) or full (the whole network)",
    )  # fmt: skip
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass: less memory, slower "
        "steps, the same weights",
    )  # fmt: skip


class Checkpoints(BaseModel):
    """When checkpoints are written (`OUTPUT/checkpoints/step=NNNNNNNN.ckpt`) and how many stay."""

    model_config = GROUP

    every_n_steps: int = Field(100, ge=1, description="steps between checkpoints")
    keep_last_n: int = Field(2, ge=1, description="checkpoints kept")


class Validation(BaseModel):
    """Images that show what was learnt: the trained model against the base, same seeds."""

    model_config = GROUP

    prompts: list[str] = Field(
        default_factory=list, description="prompts sampled on the trained and the base model"
    )
    images_per_prompt: int = Field(2, ge=1, le=16, description="seeds per prompt")
    every_n_steps: limits.OptionalCount = Field(
        None, description="while training, every N steps: a grid of the validation "
        "prompts x seeds on the weights so far, logged to the MLflow training run at that step "
        "(unset: only the trained-against-base images at the end)",
    )  # fmt: skip
    inference_steps: InferenceSteps = Field(
        25, description="denoising steps of the validation images"
    )


class DreamBoothConfig(BaseModel):
    """Everything one DreamBooth run needs, in groups; unknown keys are an error."""

    model_config = ConfigDict(**limits.PARAMETERS, protected_namespaces=(), frozen=True)

    model: str | ModelSpec = Field(
        "tiny-shapes",
        description="the Stable Diffusion model to fine-tune: a name in `models`, a model "
        "reference (embedded name, folder, single file, fsspec URI, models:/...) or a spec "
        "{path, variant, config} (docs/models.md)",
    )
    models: dict[str, ModelSpec] = Field(
        default_factory=dict, description="named models: a short name (usable as `model`) -> "
        "`{path, variant, config}` (docs/models.md)",
    )  # fmt: skip
    subject: Subject = Field(description="what to learn: the images, prompts and identifier")
    prior_preservation: PriorPreservation = Field(
        PriorPreservation(), description="what keeps the class's own look: class images or "
        "differential output, and their weight",
    )  # fmt: skip
    train: Train = Field(Train(), description="how to learn it: method, steps, optimiser, seed")
    runtime: Runtime = Field(
        Runtime(), description="where it runs: accelerator, devices, precision, compile"
    )
    checkpoints: Checkpoints = Field(
        Checkpoints(), description="how often a resumable checkpoint is saved, how many kept"
    )
    validation: Validation = Field(
        Validation(), description="images generated from the prompts while training"
    )
    output: str = Field(
        description="folder or object-store URI for checkpoints, the pipeline, validation"
    )
    register_as: str | None = Field(
        None, description="register the pipeline in MLflow as NAME or NAME@ALIAS"
    )

    @model_validator(mode="before")
    @classmethod
    def _flat_keys(cls, values):
        """The flat keys of earlier releases, moved into their groups (one warning)."""
        return group_flat_keys(values) if isinstance(values, dict) else values

    @model_validator(mode="after")
    def _identifier_embeddings_with_full(self):
        if self.train.text_encoder == "identifier" and self.train.method == "lora":
            raise ValueError(
                "`train.text_encoder` 'identifier' needs `train.method` full (the token "
                "embeddings are trained as they are, not through adapters) but `train.method` "
                "is 'lora'"
            )
        return self

    @model_validator(mode="after")
    def _differential_output_with_the_base_text(self):
        if self.prior_preservation.differential_output and self.train.text_encoder == "all":
            raise ValueError(
                "`prior_preservation.method` 'differential_output' needs `train.text_encoder` "
                "off or 'identifier' (its target is the base model's prediction for the same "
                "text) but `train.text_encoder` is 'all'"
            )
        return self

    @field_validator("model", mode="before")
    @classmethod
    def _model_spec(cls, value):
        return reference_value(value)

    @model_validator(mode="before")
    @classmethod
    def _named_model(cls, values):
        """`model` naming one of `models`: that spec, validated as a `model` spec is."""
        if isinstance(values, dict) and isinstance(values.get("models"), dict):
            name = values.get("model")
            if isinstance(name, str) and name in values["models"]:
                return {**values, "model": values["models"][name]}
        return values

    @field_validator("model")
    @classmethod
    def _no_adapters_on_the_base(cls, value: str | ModelSpec) -> str | ModelSpec:
        if isinstance(value, ModelSpec) and value.loras:
            raise ValueError(
                "DreamBooth trains the base model's own weights, so `model.loras` would not be "
                f"applied; remove them (given: {[a.path for a in value.loras]})"
            )
        return value

    @field_validator("register_as")
    @classmethod
    def _registry_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9._-]+(@[A-Za-z0-9_-]+)?", value):
            raise ValueError(f"must be NAME or NAME@ALIAS (letters, digits, ._-) but is {value!r}")
        return value
