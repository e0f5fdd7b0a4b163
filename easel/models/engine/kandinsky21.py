"""Kandinsky 2.1: prompt → diffusion prior → CLIP image embedding → decoder → MOVQ, the
decoder also reading the prompt through a multilingual CLIP text encoder (XLM-RoBERTa).

Kandinsky 2.2's structure (`kandinsky22.py`): one folder holding prior and decoder, as
`KandinskyCombinedPipeline` saves it, or a decoder folder whose model card names its prior
(the hub's `kandinsky-2-1`); the prior's embeddings drawn row by row from each image's own
generator; fusion through the prior's `interpolate`. What differs is the decoder
(`KandinskyPipeline`, `KandinskyImg2ImgPipeline`, `KandinskyInpaintPipeline`): its UNet
cross-attends to the prompt's tokens from the multilingual encoder (so a prompt in any of
its languages reaches the decoder as written) beside the image embedding, and guides away
from the negative prompt's tokens.

- text2img, img2img, inpaint: the decoder reads the row's prompt, and its negative prompt,
  which also steers the prior (diffusers' combined pipelines hand the negative prompt to
  the prior only; without one, the image is exactly the combined pipeline's).
- fusion: the decoder reads an empty prompt, as in diffusers' `interpolate` example: the
  mix of texts and images lives in the image embedding, and the row's prompt, which a
  one-prompt-one-image fusion weighs by `1 - strength`, would weigh in again unweighted.
- inpaint: the decoder takes a batch of init images and masks row by row (unlike 2.2's,
  which blends every row with the first), so inpainting requests share a decoder call.
"""

from __future__ import annotations

from easel.data.batching import BatchSettings, ImageRequest
from easel.models.engine.kandinsky22 import Kandinsky22

DECODERS = {
    "text2img": "KandinskyPipeline",
    "fusion": "KandinskyPipeline",
    "img2img": "KandinskyImg2ImgPipeline",
    "inpaint": "KandinskyInpaintPipeline",
}
COMBINED = ("KandinskyCombinedPipeline", "KandinskyImg2ImgCombinedPipeline",
            "KandinskyInpaintCombinedPipeline")  # fmt: skip
DECODER_TOKENS = 77  # the decoder's pipelines tokenize to this length, whatever the tokenizer


class Kandinsky21(Kandinsky22):
    name = "Kandinsky 2.1"
    pipeline_classes = (*COMBINED, *DECODERS.values())
    decoder_classes = tuple(dict.fromkeys(DECODERS.values()))
    prior_class = "KandinskyPriorPipeline"
    decoders = DECODERS
    combined_class = COMBINED[0]
    hub_decoder = "kandinsky-2-1"
    inpaints_in_batches = True

    def decoder_texts(self, settings: BatchSettings, requests: list[ImageRequest]) -> dict:
        """The prompts (a fusion's: empty) and negative prompts, one per request."""
        prompts = [
            "" if settings.task == "fusion" else request.prompt for request in requests
        ]  # fmt: skip
        return {"prompt": prompts, "negative_prompt": [r.negative_prompt or "" for r in requests]}

    def context_length(self, pipeline) -> int:
        return DECODER_TOKENS

    def prompt_limits(self, pipeline, column: str, task: str) -> list[tuple]:
        """Every text goes through the prior's CLIP tokenizer; the negative prompt, and the
        prompt outside a fusion, also through the decoder's multilingual one."""
        prior = pipeline.prior_tokenizer
        limits = [("the prior's text encoder", prior, prior.model_max_length)]
        if column == "negative_prompt" or (column == "prompt" and task != "fusion"):
            limits.append(("the multilingual text encoder", pipeline.tokenizer, DECODER_TOKENS))
        return limits


FAMILY = Kandinsky21()
