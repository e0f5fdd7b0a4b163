"""A model as a user names it: a reference and what the folder or file cannot say itself.

`ModelSpec(path, variant, config, prior)`: `path` is any model reference
(`references.resolve_model_reference`); `variant` picks weight files such as
`diffusion_pytorch_model.fp16.safetensors` (found by itself when only one variant's files
exist); `config` is a local diffusers folder giving a single-file checkpoint's
configuration and tokenizer; `prior` is a Kandinsky decoder's prior, a reference that
overrides its model card's. A plain string is the spec `ModelSpec(path=string)`.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ModelSpec(BaseModel):
    """A model reference with the facts its files cannot tell (hashable: a cache key)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(min_length=1, description="any model reference")
    variant: str | None = Field(None, description="weight files' variant, e.g. fp16")
    config: str | None = Field(None, description="a single file's diffusers config folder")
    prior: str | None = Field(None, description="a Kandinsky decoder's prior reference")

    def __str__(self) -> str:
        return self.path


ModelReference = str | ModelSpec  # what every engine entry point takes


def as_spec(ref: ModelReference) -> ModelSpec:
    """`ref` as a spec: a string is its path alone."""
    return ref if isinstance(ref, ModelSpec) else ModelSpec(path=ref)
