"""Suites that score one model on the shapes world: adherence, guidance, negative prompt,
diversity, and the judge itself."""

from __future__ import annotations

from collections import Counter
from functools import partial

import numpy as np

from easel.data import shape_languages, shapes
from easel.models.shapes.evaluation.common import (
    ATTRIBUTES,
    EvalContext,
    SuiteResult,
    adherence,
    generate_images,
    mean_pairwise_cosine_distance,
    mean_pairwise_pixel_distance,
    vae_round_trip,
)
from easel.models.shapes.judge import accuracy

# -- suites --------------------------------------------------------------------------------


def _targets(split: shapes.Split, n: int, seed: int) -> list[dict]:
    """`n` (shape, colour, background) targets cycling through a seeded shuffle of `split`."""
    triples = shapes.combinations(split)
    order = np.random.default_rng(seed).permutation(len(triples))
    return [dict(zip(ATTRIBUTES, triples[order[i % len(triples)]], strict=True)) for i in range(n)]


def _prompt(target: dict, language: str = "en") -> str:
    attributes = (target.get("shape"), target.get("color"), target.get("background"))
    return shape_languages.prompt_in(language, *attributes)


def _score(
    context: EvalContext,
    targets: list[dict],
    guidance: float,
    seed: int,
    negative: str | None = None,
    language: str = "en",
):
    s = context.settings
    prompts = [_prompt(t, language) for t in targets]
    seeds = [seed + i for i in range(len(targets))]
    negatives = [negative] * len(prompts) if negative is not None else None
    images = generate_images(
        context.model, prompts, seeds, guidance, s.num_inference_steps, negatives, s.batch_size
    )
    return images, context.judge.predict(images)


def adherence_suite(context: EvalContext) -> SuiteResult:
    """Prompt adherence at the default guidance, on seen and on held-out combinations."""
    s = context.settings
    result = SuiteResult(metrics={})
    for split, name in (("train", "seen"), ("held_out", "held_out")):
        targets = _targets(split, s.adherence_images, s.seed)
        images, predictions = _score(context, targets, s.guidance_scale, s.seed)
        scores = adherence(predictions, targets)
        result.metrics |= {f"adherence/{name}/{k}": v for k, v in scores.items()}
        result.rows.append({"suite": "adherence", "case": name, "images": len(targets)} | scores)
        result.images += images[:8]
    return result


def languages_suite(context: EvalContext) -> SuiteResult:
    """Adherence on seen combinations with the same targets and seeds as `adherence`, the
    prompts written in each of `shape_languages.LANGUAGES` ("красный круг на синем фоне")."""
    s = context.settings
    targets = _targets("train", s.adherence_images, s.seed)
    result = SuiteResult(metrics={})
    for language in shape_languages.LANGUAGES:
        images, predictions = _score(context, targets, s.guidance_scale, s.seed, language=language)
        scores = adherence(predictions, targets)
        result.metrics |= {f"languages/{language}/{k}": v for k, v in scores.items()}
        row = {"suite": "languages", "case": language, "images": len(targets)}
        result.rows.append(row | scores)
        result.images += images[:4]
    return result


def guidance_suite(context: EvalContext) -> SuiteResult:
    """Adherence on seen combinations at each guidance scale (same prompts and seeds)."""
    s = context.settings
    targets = _targets("train", s.guidance_images, s.seed + 1)
    result = SuiteResult(metrics={})
    for scale in s.guidance_scales:
        images, predictions = _score(context, targets, scale, s.seed + 1)
        scores = adherence(predictions, targets)
        result.metrics |= {f"guidance/{scale:g}/{k}": v for k, v in scores.items()}
        result.rows.append(
            {"suite": "guidance", "case": f"guidance {scale:g}", "images": len(targets)} | scores
        )
        result.images += images[:4]
    return result


def negative_prompt_suite(context: EvalContext) -> SuiteResult:
    """Prompts that leave the shape colour open, without and with the negative prompt
    `negative_attribute` (None: the colour the model draws most often on them): how often,
    and how strongly, the judge sees that colour."""
    s = context.settings
    targets = _targets("all", s.negative_images * 4, s.seed + 2)
    colour = s.negative_attribute
    if colour is None:
        free = [{**t, "color": None} for t in targets[: s.negative_images]]
        _, predictions = _score(context, free, s.guidance_scale, s.seed + 2)
        colour = Counter(p["color"] for p in predictions).most_common(1)[0][0]
    open_targets = [{**t, "color": None} for t in targets if t["background"] != colour]
    open_targets = open_targets[: s.negative_images]
    result = SuiteResult(metrics={})
    for case, negative in (("without", None), ("with", colour)):
        images, predictions = _score(context, open_targets, s.guidance_scale, s.seed + 2, negative)
        probability = context.judge.probabilities(images)["color"][
            :, shapes.COLOR_NAMES.index(colour)
        ]
        rate = float(np.mean([p["color"] == colour for p in predictions]))
        metrics = {"rate": rate, "mean_probability": float(probability.mean())}
        metrics |= adherence(predictions, open_targets)
        result.metrics |= {f"negative_prompt/{case}/{k}": v for k, v in metrics.items()}
        result.rows.append(
            {
                "suite": "negative prompt",
                "case": f"{case} '{colour}'",
                "images": len(images),
                "colour_rate": rate,
                "p(colour)": metrics["mean_probability"],
            }
        )
        result.images += images[:4]
    without, with_ = (result.metrics[f"negative_prompt/{c}/rate"] for c in ("without", "with"))
    result.metrics["negative_prompt/rate_drop"] = without - with_
    return result


def diversity_suite(context: EvalContext) -> SuiteResult:
    """Spread across seeds of one prompt (judge features and pixels), against the spread of
    real renders of the same prompts (the world's own variety in size and position)."""
    s = context.settings
    targets = _targets("train", s.diversity_prompts, s.seed + 3)
    rng = np.random.default_rng(s.seed + 3)
    generated_features, generated_pixels, real_features, real_pixels = [], [], [], []
    result = SuiteResult(metrics={})
    for index, target in enumerate(targets):
        prompts = [_prompt(target)] * s.diversity_seeds
        seeds = [s.seed + 1000 * index + k for k in range(s.diversity_seeds)]
        images = generate_images(
            context.model,
            prompts,
            seeds,
            s.guidance_scale,
            s.num_inference_steps,
            None,
            s.batch_size,
        )
        real = [
            shapes.render(
                shapes.spec_for(target["shape"], target["color"], target["background"], rng)
            )
            for _ in seeds
        ]
        generated_features.append(mean_pairwise_cosine_distance(context.judge.features(images)))
        real_features.append(mean_pairwise_cosine_distance(context.judge.features(real)))
        generated_pixels.append(mean_pairwise_pixel_distance(images))
        real_pixels.append(mean_pairwise_pixel_distance(real))
        result.images += images[:2]
    result.metrics = {
        "diversity/feature_distance": float(np.mean(generated_features)),
        "diversity/pixel_distance": float(np.mean(generated_pixels)),
        "diversity/real_feature_distance": float(np.mean(real_features)),
        "diversity/real_pixel_distance": float(np.mean(real_pixels)),
    }
    result.rows.append(
        {"suite": "diversity", "case": f"{s.diversity_seeds} seeds x {len(targets)} prompts"}
        | {
            "feature_dist": result.metrics["diversity/feature_distance"],
            "real_feature_dist": result.metrics["diversity/real_feature_distance"],
            "pixel_dist": result.metrics["diversity/pixel_distance"],
            "real_pixel_dist": result.metrics["diversity/real_pixel_distance"],
        }
    )
    return result


def judge_suite(context: EvalContext) -> SuiteResult:
    """The examiner's own accuracy per attribute, on fresh renders of every combination;
    and on the same renders passed through the model's VAE: the ceiling of adherence that
    the autoencoder leaves to the UNet."""
    s = context.settings
    result = SuiteResult(metrics={})
    cases = (
        ("fresh renders", "accuracy", None),
        ("VAE round trip", "vae_round_trip", partial(vae_round_trip, context.model)),
    )
    for case, key, transform in cases:
        scores = accuracy(context.judge, s.judge_images, s.seed + 4, transform)
        result.metrics |= {f"judge/{key}/{k}": v for k, v in scores.items()}
        result.rows.append({"suite": "judge", "case": case, "images": s.judge_images} | scores)
    return result
