"""Weighted fusion of many texts and images in Kandinsky's prior: the manifest's
`fusion_inputs` items, their weights, and what the prior is handed.

A `fusion_inputs` value is a list of items, each a struct `{text, image, weight}`: exactly
one of `text` (a prompt) or `image` (a URI, resolved like `init_image`), and a finite
`weight` >= 0; at least one weight is above 0. The prior turns each item into a CLIP image
embedding (a text through its diffusion, an image through its CLIP image encoder) and
sums them times their weights (diffusers' `KandinskyV22PriorPipeline.interpolate`).

That sum is not normalised: weights summing to 2 double the embedding's length, and the
decoder was only ever trained on embeddings of one scale (the prior's outputs, and the
image encoder's, which the prior imitates). So by default (`fusion_weights: sum_to_one`)
the weights are divided by their sum, which makes the mix a weighted average; a sweep
config with `fusion_weights: raw` hands them to the prior as written, diffusers' own sum.
"""

from __future__ import annotations

import math
import posixpath
from dataclasses import dataclass
from numbers import Real
from typing import Any

from easel.data import limits

COLUMN = "fusion_inputs"
ITEM_KEYS = ("text", "image", "weight")


class FusionInputError(ValueError):
    """A `fusion_inputs` value a row cannot use; the message names the item and the value."""


@dataclass(frozen=True)
class FusionInput:
    """One validated item: a text or an image (its resolved URI), and its weight as the
    prior uses it (after `fusion_weights`)."""

    text: str | None
    image: str | None
    weight: float
    image_sha256: str | None = None  # the bytes the image had when validated


@dataclass(frozen=True)
class FusionConditions:
    """What one request's prior mixes, as `interpolate` takes it: prompts (str) and images
    (PIL), and their weights."""

    images_and_prompts: list
    weights: list[float]


def label(index: int, key: str | None = None) -> str:
    """How messages name an item or one of its keys: fusion_inputs[1].weight."""
    return f"{COLUMN}[{index}]{'' if key is None else '.' + key}"


def read_items(value: Any) -> list[tuple[str | None, str | None, float]]:
    """The (text, image, weight) of each item of a `fusion_inputs` value, checked one by one
    (the image as written; the caller resolves and reads it); `FusionInputError` at the
    first broken rule."""
    if not isinstance(value, list | tuple):
        raise FusionInputError(
            f"`{COLUMN}` must be a list of {{text | image, weight}} items but is {value!r}"
        )
    if not value:
        raise FusionInputError(f"`{COLUMN}` must hold at least one item but is empty")
    if len(value) > limits.MAX_FUSION_INPUTS:
        raise FusionInputError(
            f"`{COLUMN}` holds {len(value)} items; at most {limits.MAX_FUSION_INPUTS} are allowed"
        )
    return [read_item(index, item) for index, item in enumerate(value)]


def read_item(index: int, item: Any) -> tuple[str | None, str | None, float]:
    if not isinstance(item, dict):
        raise FusionInputError(
            f"`{label(index)}` must be an item {{text | image, weight}} but is {item!r}"
        )
    unknown = [key for key, v in item.items() if key not in ITEM_KEYS and v is not None]
    if unknown:
        raise FusionInputError(
            f"`{label(index)}` has unknown key `{unknown[0]}` (value {item[unknown[0]]!r}); "
            f"an item's keys are {', '.join(ITEM_KEYS)}"
        )
    text, image, weight = (item.get(key) for key in ITEM_KEYS)
    for key, given in (("text", text), ("image", image)):
        if given is not None and (not isinstance(given, str) or not given.strip()):
            raise FusionInputError(
                f"`{label(index, key)}` must be a non-empty string but is {given!r}"
            )
    if (text is None) == (image is None):
        raise FusionInputError(
            f"`{label(index)}` must have exactly one of `text` and `image` but is {item!r}"
        )
    if weight is None:
        raise FusionInputError(f"`{label(index, 'weight')}` is missing: every item needs a weight")
    finite = isinstance(weight, Real) and not isinstance(weight, bool) and math.isfinite(weight)
    if not finite or weight < 0:
        raise FusionInputError(
            f"`{label(index, 'weight')}` must be a finite number >= 0 but is {weight!r}"
        )
    return text, image, float(weight)


def prior_weights(weights: list[float], rule: str) -> list[float]:
    """The weights the prior gets: divided by their sum (`sum_to_one`) or as given (`raw`);
    `FusionInputError` when they are all 0 (an embedding of nothing)."""
    assert rule in limits.FUSION_WEIGHTS, rule
    total = sum(weights)
    if total <= 0:
        raise FusionInputError(
            f"`{COLUMN}` weights are all 0 ({weights}): at least one must be above 0"
        )
    return [w / total for w in weights] if rule == "sum_to_one" else list(weights)


def caption(value: Any) -> str | None:
    """A valid `fusion_inputs` value in a few words, weights as written, for a contact
    sheet: "0.7 red.png + 0.3 'a star'"; None for no value."""
    if not value:
        return None
    return " + ".join(
        f"{item['weight']:g} "
        + (posixpath.basename(item["image"]) if item.get("image") else repr(item.get("text")))
        for item in value
    )
