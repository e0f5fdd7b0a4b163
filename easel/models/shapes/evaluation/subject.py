"""DreamBooth suites: a fine-tuned model against its base, on the subject it was taught
(subject fidelity, prior preservation, diversity), judge features standing in for the
DINO features of the DreamBooth paper."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from easel.data import shapes
from easel.models.shapes.evaluation.common import (
    ATTRIBUTES,
    EvalContext,
    SuiteResult,
    generate_images,
    mean_pairwise_pixel_distance,
)
from easel.models.shapes.judge import Judge

# -- DreamBooth suites: a fine-tuned model against its base, on the subject it was taught --
#
# "Feature similarity" below is the cosine of judge features centred on the mean feature of
# real renders of the world (`world_centre`). Uncentred, the judge's features (after a
# SiLU) share a large common component and any two shapes-world images score about 0.9;
# centred, the cosine measures agreement in what sets an image apart from the average one.


INSTANCE_SEED, CLASS_SEED, OTHER_CLASS_SEED = 5000, 6000, 7000  # offsets from `seed`


def world_centre(judge: Judge, num_images: int, seed: int) -> torch.Tensor:
    """(D,) mean judge feature of `num_images` real renders of every combination."""
    specs = shapes.sample_specs(num_images, seed, split="all")
    return judge.features([shapes.render(spec) for spec in specs]).mean(0)


def _centred_cosines(a: torch.Tensor, b: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """(A, B) cosine similarities of the rows of `a` and `b` after subtracting `centre`."""
    normalise = lambda x: torch.nn.functional.normalize(x.float() - centre, dim=-1)
    return normalise(a) @ normalise(b).T


def feature_similarity(a: torch.Tensor, b: torch.Tensor, centre: torch.Tensor) -> float:
    """Mean centred cosine over every (row of `a`, row of `b`) pair: the DreamBooth paper's
    DINO score (generations against real images) with judge features."""
    return float(_centred_cosines(a, b, centre).mean())


def self_similarity(features: torch.Tensor, centre: torch.Tensor) -> float:
    """Mean centred cosine over distinct pairs of rows; 1 minus it is the DIV score."""
    k = len(features)
    assert k >= 2, "self_similarity needs at least two rows"
    cosines = _centred_cosines(features, features, centre)
    return float((cosines.sum() - cosines.diagonal().sum()) / (k * (k - 1)))


def paired_similarity(a: torch.Tensor, b: torch.Tensor, centre: torch.Tensor) -> float:
    """Mean centred cosine of row i of `a` with row i of `b` (same prompt and seed)."""
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(_centred_cosines(a, b, centre).diagonal().mean())


def attribute_shift(predictions: list[dict], reference: list[dict]) -> float:
    """Total variation distance between the judged distributions of each attribute of two
    image sets, averaged over the attributes: 0 same distribution, 1 disjoint."""
    distances = []
    for name in ATTRIBUTES:
        p, q = (
            np.array([sum(x[name] == value for x in group) / len(group) for value in values])
            for group, values in ((predictions, _values(name)), (reference, _values(name)))
        )
        distances.append(0.5 * np.abs(p - q).sum())
    return float(np.mean(distances))


def _values(attribute: str) -> tuple[str, ...]:
    return shapes.SHAPES if attribute == "shape" else shapes.COLOR_NAMES


def subject_reading(judge: Judge, images: list[Image.Image]) -> tuple[str, str]:
    """The (shape, colour) the judge reads most often in the instance images."""
    readings = [(p["shape"], p["color"]) for p in judge.predict(images)]
    return max(set(readings), key=readings.count)


def subject_rate(predictions: list[dict], reading: tuple[str, str]) -> float:
    """Fraction of images the judge reads as the subject's shape and colour."""
    return float(np.mean([(p["shape"], p["color"]) == reading for p in predictions]))


@dataclass
class _Generations:
    images: list[Image.Image]
    features: torch.Tensor  # (N, D) judge features
    predictions: list[dict]


def _generate_subject(context: EvalContext, model, prompt: str, seed: int) -> _Generations:
    """`subject_images` generations of `prompt`, seeds seed, seed + 1, ...: the same seeds for
    the base and the fine-tuned model, so their images can be compared pair by pair."""
    s = context.settings
    images = generate_images(
        model,
        [prompt] * s.subject_images,
        [seed + k for k in range(s.subject_images)],
        s.guidance_scale,
        s.num_inference_steps,
        None,
        s.batch_size,
    )
    return _Generations(images, context.judge.features(images), context.judge.predict(images))


def _subject_models(context: EvalContext) -> tuple[tuple[str, object], ...]:
    assert context.subject is not None and context.base_model is not None, (
        "the DreamBooth suites need EvalContext.subject and EvalContext.base_model"
    )
    return (("base", context.base_model), ("fine_tuned", context.model))


def subject_fidelity_suite(context: EvalContext) -> SuiteResult:
    """Instance-prompt generations of the base and the fine-tuned model against the instance
    images: feature similarity (the paper's DINO) and how often the judge reads the subject.
    The instance images against each other give the ceiling."""
    s, judge, models = context.settings, context.judge, _subject_models(context)
    subject = context.subject
    centre = world_centre(judge, s.world_images, s.seed)
    reference = judge.features(subject.instance_images)
    reading = subject_reading(judge, subject.instance_images)
    ceiling = self_similarity(reference, centre)
    result = SuiteResult(metrics={"subject_fidelity/instance_images/feature_similarity": ceiling})
    result.rows.append(
        {
            "suite": "subject fidelity",
            "case": "instance images",
            "images": len(subject.instance_images),
            "feature_sim": ceiling,
        }
    )
    for case, model in models:
        generated = _generate_subject(
            context, model, subject.instance_prompt, s.seed + INSTANCE_SEED
        )
        scores = {
            "feature_similarity": feature_similarity(generated.features, reference, centre),
            "subject_rate": subject_rate(generated.predictions, reading),
        }
        result.metrics |= {f"subject_fidelity/{case}/{k}": v for k, v in scores.items()}
        result.rows.append(
            {"suite": "subject fidelity", "case": f"{case}: {subject.instance_prompt!r}"}
            | {"images": s.subject_images, "feature_sim": scores["feature_similarity"]}
            | {"subject_rate": scores["subject_rate"]}
        )
        result.images += generated.images[:8]
    result.metrics["subject_fidelity/gain"] = (
        result.metrics["subject_fidelity/fine_tuned/feature_similarity"]
        - result.metrics["subject_fidelity/base/feature_similarity"]
    )
    return result


def prior_preservation_suite(context: EvalContext) -> SuiteResult:
    """Class-prompt generations of the fine-tuned model against the base model's, same
    seeds: how close they stay (pair by pair, and as judged attribute distributions) and how
    much they look like the subject (the paper's PRES). The base model with other seeds is
    the reference: unrelated pairs, and the sampling noise of the distribution distance."""
    s, models, subject = context.settings, _subject_models(context), context.subject
    base_model, fine_tuned = (model for _, model in models)
    centre = world_centre(context.judge, s.world_images, s.seed)
    reference = context.judge.features(subject.instance_images)
    reading = subject_reading(context.judge, subject.instance_images)
    base = _generate_subject(context, base_model, subject.class_prompt, s.seed + CLASS_SEED)
    generations = {
        "base_other_seeds": _generate_subject(
            context, base_model, subject.class_prompt, s.seed + OTHER_CLASS_SEED
        ),
        "base": base,
        "fine_tuned": _generate_subject(
            context, fine_tuned, subject.class_prompt, s.seed + CLASS_SEED
        ),
    }
    result = SuiteResult(metrics={})
    for case, generated in generations.items():
        scores = {
            "base_similarity": paired_similarity(generated.features, base.features, centre),
            "attribute_shift": attribute_shift(generated.predictions, base.predictions),
            "subject_similarity": feature_similarity(generated.features, reference, centre),
            "subject_rate": subject_rate(generated.predictions, reading),
        }
        result.metrics |= {f"prior_preservation/{case}/{k}": v for k, v in scores.items()}
        result.rows.append(
            {"suite": "prior preservation", "case": f"{case}: {subject.class_prompt!r}"}
            | {"images": s.subject_images, "base_sim": scores["base_similarity"]}
            | {"attr_shift": scores["attribute_shift"], "pres": scores["subject_similarity"]}
            | {"subject_rate": scores["subject_rate"]}
        )
        result.images += generated.images[:8]
    return result


def dreambooth_diversity_suite(context: EvalContext) -> SuiteResult:
    """Spread across seeds of the class prompt and of the instance prompt (the paper's DIV:
    1 - mean feature similarity of distinct pairs; and mean pixel distance), base and
    fine-tuned model."""
    s, models, subject = context.settings, _subject_models(context), context.subject
    centre = world_centre(context.judge, s.world_images, s.seed)
    prompts = (
        ("class", subject.class_prompt, CLASS_SEED),
        ("instance", subject.instance_prompt, INSTANCE_SEED),
    )
    result = SuiteResult(metrics={})
    for prompt_name, prompt, offset in prompts:
        for case, model in models:
            generated = _generate_subject(context, model, prompt, s.seed + offset)
            scores = {
                "feature_distance": 1 - self_similarity(generated.features, centre),
                "pixel_distance": mean_pairwise_pixel_distance(generated.images),
            }
            key = f"dreambooth_diversity/{prompt_name}/{case}"
            result.metrics |= {f"{key}/{k}": v for k, v in scores.items()}
            result.rows.append(
                {"suite": "dreambooth diversity", "case": f"{case}: {prompt!r}"}
                | {"images": s.subject_images, "div": scores["feature_distance"]}
                | {"pixel_dist": scores["pixel_distance"]}
            )
            result.images += generated.images[:4]
    return result


CONTEXT_SEED = 8000  # offset from `seed`
CONTEXTS = 3  # backgrounds asked for, none of them an instance image's


def context_backgrounds(judge: Judge, subject) -> list[str]:
    """`CONTEXTS` backgrounds the instance images do not show (as the judge reads them),
    nor the subject's own colour: new contexts for the subject."""
    shown = {p["background"] for p in judge.predict(subject.instance_images)}
    colour = subject_reading(judge, subject.instance_images)[1]
    return [c for c in shapes.COLOR_NAMES if c not in shown and c != colour][:CONTEXTS]


def subject_context_suite(context: EvalContext) -> SuiteResult:
    """Context prompts ("... on a white background", backgrounds the instance images do not
    show): how often the judge reads the asked background for the class prompt on the base
    and on the fine-tuned model, and for the instance prompt on the fine-tuned model (with
    the subject too: `subject_and_background_rate`). `context/drop`: the base's class-prompt
    rate minus the fine-tuned instance prompt's (what fine-tuning cost the context)."""
    s, judge, subject = context.settings, context.judge, context.subject
    base_model, fine_tuned = (model for _, model in _subject_models(context))
    reading = subject_reading(judge, subject.instance_images)
    grounds = context_backgrounds(judge, subject)
    cases = (("base", base_model, subject.class_prompt),
             ("fine_tuned", fine_tuned, subject.class_prompt),
             ("fine_tuned_subject", fine_tuned, subject.instance_prompt))  # fmt: skip
    result = SuiteResult(metrics={})
    for case, model, prompt in cases:
        asked = [grounds[k % len(grounds)] for k in range(s.subject_images)]
        prompts = [f"{prompt} on a {ground} background" for ground in asked]
        seeds = [s.seed + CONTEXT_SEED + k for k in range(s.subject_images)]
        images = generate_images(model, prompts, seeds, s.guidance_scale, s.num_inference_steps,
                                 None, s.batch_size)  # fmt: skip
        predictions = judge.predict(images)
        honoured = [p["background"] == ground for p, ground in zip(predictions, asked, strict=True)]
        both = [h and (p["shape"], p["color"]) == reading
                for h, p in zip(honoured, predictions, strict=True)]  # fmt: skip
        scores = {"background_rate": float(np.mean(honoured)),
                  "subject_and_background_rate": float(np.mean(both))}  # fmt: skip
        result.metrics |= {f"context/{case}/{k}": v for k, v in scores.items()}
        result.rows.append({"suite": "subject context", "case": f"{case}: {prompt!r} + context",
                            "images": len(images)} | scores)  # fmt: skip
        result.images += images[:4]
    result.metrics["context/drop"] = (
        result.metrics["context/base/background_rate"]
        - result.metrics["context/fine_tuned_subject/background_rate"]
    )
    return result
