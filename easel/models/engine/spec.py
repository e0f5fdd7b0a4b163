"""A model as a user names it: a reference and what the folder or file cannot say itself.

`ModelSpec(path, variant, config, prior, safety_checker, loras)`: `path` is any model reference
(`references.resolve_model_reference`); `variant` picks weight files such as
`diffusion_pytorch_model.fp16.safetensors` (found by itself when only one variant's files
exist); `config` gives a single-file checkpoint's configuration and tokenizer: a local
diffusers folder or the name of one easel ships (`standard_configs`); `prior` is a Kandinsky
decoder's prior, a reference that overrides its model card's; `safety_checker` runs the
model's own checker (`auto`) or not (`off`); `loras` are the LoRA adapters applied by
default (`LoraAdapter(path, scale)`). A plain string is the spec `ModelSpec(path=string)`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from easel.data.limits import LoraScale, SafetyCheckerMode


class LoraAdapter(BaseModel):
    """One LoRA adapter and its weight (diffusers' `set_adapters(..., adapter_weights)`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(min_length=1, description="a LoRA .safetensors file (kohya/A1111 or "
                      "diffusers/PEFT keys), any fsspec URI")  # fmt: skip
    scale: LoraScale = Field(1.0, allow_inf_nan=False, description="the adapter's weight")


class ModelSpec(BaseModel):
    """A model reference with the facts its files cannot tell (hashable: a cache key)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(min_length=1, description="any model reference")
    variant: str | None = Field(None, description="weight files' variant, e.g. fp16")
    config: str | None = Field(None, description="a single file's configuration: a diffusers "
                               "folder or a shipped name (stable-diffusion-v1-5, ...)")  # fmt: skip
    prior: str | None = Field(None, description="a Kandinsky decoder's prior reference")
    safety_checker: SafetyCheckerMode = Field(
        "auto", description="auto: run the model's safety checker where it has one; off: never"
    )
    loras: tuple[LoraAdapter, ...] = Field((), description="LoRA adapters applied by default")

    def __str__(self) -> str:
        return self.path


ModelReference = str | ModelSpec  # what every engine entry point takes
SPEC_NAME = "base"  # a spec's name in a sweep made for it alone (`as_named`)


def as_spec(ref: ModelReference) -> ModelSpec:
    """`ref` as a spec: a string is its path alone."""
    return ref if isinstance(ref, ModelSpec) else ModelSpec(path=ref)


def reference_value(value):
    """A config's `model` value (a pydantic `before` validator): a mapping validated as a
    `ModelSpec` (its errors located inside it, e.g. `model.varient`), a spec of a `path`
    alone as that plain reference, anything else as it is."""
    if isinstance(value, Mapping):
        value = ModelSpec.model_validate(value)
    if isinstance(value, ModelSpec) and value == ModelSpec(path=value.path):
        return value.path
    return value


def as_named(model: ModelReference) -> tuple[str, dict[str, ModelSpec]]:
    """How a sweep takes `model` (its `model` value and its `models` mapping): a plain
    reference as itself, a spec as the named model `SPEC_NAME`."""
    return (SPEC_NAME, {SPEC_NAME: model}) if isinstance(model, ModelSpec) else (model, {})


def named_spec(
    model: str, models: Mapping[str, ModelSpec], safety_checker: Literal["auto", "off"] = "auto"
) -> ModelSpec:
    """The spec a `model` value means: the named model `models[model]`, else the plain
    reference `model`; a sweep's `safety_checker: off` turns every model's checker off."""
    spec = models.get(model) or ModelSpec(path=model)
    return spec if safety_checker == "auto" else spec.model_copy(update={"safety_checker": "off"})
