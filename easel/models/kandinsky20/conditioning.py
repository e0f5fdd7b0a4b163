"""Kandinsky 2.0's conditioning stem: what its UNet reads of a prompt.

Two text encoders read the prompt: multilingual CLIP (XLM-RoBERTa-large, 77 tokens x 1024,
and a pooled vector of 640) and mT5-small's encoder (77 tokens x 512). The stem makes of
them, as the original `Text2ImUNet.get_text_emb` does:

- tokens (N, 154, 768): each sequence projected to the model width, concatenated (CLIP's
  first) and layer-normed; the UNet's attention layers prepend their keys and values to
  the image's own (diffusers' added-KV attention);
- a vector (N, 1536), the UNet's time-embedding width: the pooled CLIP vector projected,
  layer-normed, plus an attention pooling of the mT5 sequence, layer-normed; added to the
  time embedding (the UNet's `class_labels` with `class_embed_type="identity"`).

The submodules keep the original's names (`to_model_dim`, `proj`, `proj2`, `ln_model1`...)
so its weights load key for key. No padding mask anywhere, as in the original: padded
positions count in the attention pooling.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class AttentionPooling(nn.Module):
    """Multi-head self-attention over a sequence, projected to `out_dim`; the first
    position's output is the pooled vector. (N, L, in_dim) -> (N, out_dim)."""

    def __init__(self, heads: int, in_dim: int, out_dim: int):
        super().__init__()
        self.heads = heads
        self.q_linear = nn.Linear(in_dim, in_dim)
        self.k_linear = nn.Linear(in_dim, in_dim)
        self.v_linear = nn.Linear(in_dim, in_dim)
        self.out = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, width = x.shape

        def heads(t):
            return t.view(n, length, self.heads, width // self.heads).transpose(1, 2)

        q, k, v = heads(self.q_linear(x)), heads(self.k_linear(x)), heads(self.v_linear(x))
        pooled = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.out(pooled.transpose(1, 2).reshape(n, length, width))[:, 0]


class Kandinsky2TextConditioning(ModelMixin, ConfigMixin):
    """(CLIP tokens, CLIP pooled, mT5 tokens) -> (UNet tokens, time-embedding vector).

    Widths: `clip_width` (XLM-R's hidden size, 1024), `clip_pooled_width` (mCLIP's
    projection, 640), `t5_width` (mT5's d_model, 512), `model_width` (the UNet's
    cross-attention width, 768), `time_embed_width` (4 x the UNet's base channels, 1536),
    `pooling_heads` (8)."""

    @register_to_config
    def __init__(
        self, clip_width: int = 1024, clip_pooled_width: int = 640, t5_width: int = 512,
        model_width: int = 768, time_embed_width: int = 1536, pooling_heads: int = 8,
    ):  # fmt: skip
        super().__init__()
        self.to_model_dim = nn.Linear(clip_width, model_width)
        self.to_model_dim2 = nn.Linear(t5_width, model_width)
        self.proj = nn.Linear(clip_pooled_width, time_embed_width)
        self.proj2 = AttentionPooling(pooling_heads, t5_width, time_embed_width)
        self.ln_model1 = nn.LayerNorm(model_width)
        self.ln_model2 = nn.LayerNorm(time_embed_width)
        self.ln_model3 = nn.LayerNorm(time_embed_width)

    def forward(
        self, clip_tokens: torch.Tensor, clip_pooled: torch.Tensor, t5_tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """clip_tokens (N, 77, clip_width), clip_pooled (N, clip_pooled_width), t5_tokens
        (N, 77, t5_width) -> tokens (N, 154, model_width), vector (N, time_embed_width)."""
        vector = self.ln_model2(self.proj(clip_pooled)) + self.ln_model3(self.proj2(t5_tokens))
        tokens = torch.cat([self.to_model_dim(clip_tokens), self.to_model_dim2(t5_tokens)], 1)
        return self.ln_model1(tokens), vector
