"""The sweep's fast path: how a loaded pipeline's networks run, set once per loaded model.

- `compile`: `torch.compile` of the denoiser (the UNet) in place: `regional` compiles its
  repeated blocks only (diffusers' `compile_repeated_blocks`: the transformer blocks, one
  compilation reused by every block, seconds instead of minutes), `full` the whole
  network. The first batch of each new shape pays the compilation.
- `channels_last`: the denoiser's and the autoencoder's weights in NHWC memory format
  (what tensor cores' convolutions prefer).
- `attention_backend`: which kernel PyTorch's scaled-dot-product attention may use (every
  family's attention goes through it): `auto` lets PyTorch choose; `flash`, `efficient`,
  `cudnn` and `math` restrict it to one (`torch.nn.attention.sdpa_kernel`).
- `vae_dtype`: the autoencoder's (VAE's; Kandinsky's MOVQ) dtype, loaded from its own
  weights in that dtype; latents are cast at its boundary (float32 decodes an fp16
  pipeline's latents without fp16's overflow, at a cost).

An image still depends on its seed and settings only: every setting applies to every batch
alike. What a setting changes in the pixels, and what it gains, is measured in
bench/HISTORY.md ("The fast path"). The sweep's default is channels-last alone (1.10-1.14x
on CPU, at most 1/255 from eager); compilation pays only for long sweeps, so it is off.
`EAGER` (everything off) is what the other callers of the engine use.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from easel.data.limits import ATTENTION_BACKENDS, CompileMode, DtypeChoice

log = logging.getLogger(__name__)


class Performance(BaseModel):
    """How the networks run (hashable: part of the loaded-model cache key)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    compile: CompileMode = Field(
        "off", description="torch.compile the UNet: off, regional (its repeated blocks: a "
        "short compile) or full (the whole network)",
    )  # fmt: skip
    channels_last: bool = Field(
        True, description="UNet and VAE weights in channels-last (NHWC) memory format"
    )
    attention_backend: Literal[ATTENTION_BACKENDS] = Field(
        "auto", description="the scaled-dot-product attention kernel: auto (PyTorch picks), "
        "flash, efficient, cudnn or math",
    )  # fmt: skip
    vae_dtype: DtypeChoice = Field(
        None, description="the VAE's (Kandinsky: MOVQ's) dtype (None: the weights' dtype)"
    )


EAGER = Performance(channels_last=False)  # diffusers' own defaults: nothing changed


def apply(pipeline, family, performance: Performance) -> None:
    """Set `performance` on a loaded pipeline's networks in place, once, on their device."""
    import torch

    denoiser = family.denoiser(pipeline)
    if performance.channels_last:
        for network in (denoiser, family.autoencoder(pipeline)):
            network.to(memory_format=torch.channels_last)
    if performance.compile == "regional" and getattr(denoiser, "_repeated_blocks", None):
        denoiser.compile_repeated_blocks(fullgraph=True)
    elif performance.compile != "off":
        if performance.compile == "regional":
            log.warning("%s has no repeated blocks: compiling it whole", type(denoiser).__name__)
        denoiser.compile()  # in place: attribute access and config unchanged


def attention(performance: Performance):
    """A context in which attention uses the chosen kernel (nothing for `auto`)."""
    if performance.attention_backend == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {
        "flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH,
    }[performance.attention_backend]  # fmt: skip
    return sdpa_kernel(backend)


def cast_at_boundary(autoencoder, compute_dtype) -> None:
    """Let an autoencoder of another dtype than the denoiser's sit in its pipeline: its
    parts take their inputs in its own dtype, and the latents it encodes leave in
    `compute_dtype` (the pipelines hand it latents and images in the denoiser's dtype)."""
    import torch

    own = autoencoder.dtype

    def cast(value, dtype):
        if torch.is_tensor(value) and value.is_floating_point():
            return value.to(dtype)
        return value

    def inputs_in_own_dtype(module, args, kwargs):
        return tuple(cast(a, own) for a in args), {k: cast(v, own) for k, v in kwargs.items()}

    parts = [getattr(autoencoder, name, None) for name in ("encoder", "decoder", "quant_conv",
                                                           "post_quant_conv")]  # fmt: skip
    for part in filter(None, parts):
        part.register_forward_pre_hook(inputs_in_own_dtype, with_kwargs=True)
    last_of_encoder = getattr(autoencoder, "quant_conv", None) or autoencoder.encoder
    last_of_encoder.register_forward_hook(lambda module, args, output: cast(output, compute_dtype))
