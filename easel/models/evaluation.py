"""The offline quality report: metric math and the suites `easel eval` runs.

A suite is a function `(EvalContext) -> SuiteResult`, registered in `EVAL_SUITES` under
its name; `run_suites` runs the chosen ones. A new suite adds one function and one registry
entry, nothing else. Every image is generated through `generate_images`, the one place that
calls the pipeline.

Two kinds of suite: `MODEL_SUITES` score one model; `SUBJECT_SUITES` score a DreamBooth
model against its base on the subject it was taught (`EvalContext.base_pipeline` and
`EvalContext.subject`), the judge's features standing in for the DINO features of the
DreamBooth paper (see `SUBJECT_SUITES` and docs/tiny-shapes.md).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from easel.data import shapes
from easel.models.judge import Judge, accuracy

ATTRIBUTES = ("shape", "color", "background")


@dataclass(frozen=True)
class EvalSettings:
    guidance_scale: float = 7.5
    num_inference_steps: int = 20
    # per split (seen, held-out); 192 images: a standard error of about 3 points at 80%
    adherence_images: int = 192
    guidance_scales: tuple[float, ...] = (0.0, 1.0, 3.0, 5.0, 7.5)
    guidance_images: int = 96  # per scale
    negative_images: int = 96  # per arm (without / with the negative prompt)
    negative_attribute: str = "red"
    diversity_prompts: int = 8
    diversity_seeds: int = 4
    judge_images: int = 600  # fresh renders for the judge's own accuracy
    seed: int = 0
    batch_size: int = 64
    subject_images: int = 48  # per prompt and model, in the DreamBooth suites
    world_images: int = 512  # real renders whose mean judge feature centres the similarities


@dataclass
class SuiteResult:
    metrics: dict[str, float]  # flat, MLflow-ready: "adherence/seen/all" -> 0.93
    rows: list[dict] = field(default_factory=list)  # for the terminal table
    images: list[Image.Image] = field(default_factory=list)  # a few, for the report's grid


@dataclass(frozen=True)
class Subject:
    """What a DreamBooth model was taught: its instance images and its two prompts."""

    instance_images: list[Image.Image]
    instance_prompt: str  # with the identifier: "a sks circle"
    class_prompt: str  # without it: "a circle"


@dataclass
class EvalContext:
    pipeline: object  # a diffusers StableDiffusionPipeline
    judge: Judge
    settings: EvalSettings
    base_pipeline: object | None = None  # the model `pipeline` was fine-tuned from
    subject: Subject | None = None


# -- generation ----------------------------------------------------------------------------


def generate_images(
    pipeline,
    prompts: list[str],
    seeds: list[int],
    guidance_scale: float,
    num_inference_steps: int,
    negative_prompts: list[str] | None = None,
    batch_size: int = 64,
) -> list[Image.Image]:
    """One image per (prompt, seed), each from `torch.Generator().manual_seed(seed)`, so an
    image does not depend on its batch. The only place evaluation calls the pipeline."""
    assert len(prompts) == len(seeds), (len(prompts), len(seeds))
    images: list[Image.Image] = []
    for start in range(0, len(prompts), batch_size):
        stop = start + batch_size
        negatives = negative_prompts[start:stop] if negative_prompts is not None else None
        output = pipeline(
            prompt=prompts[start:stop],
            negative_prompt=negatives,
            guidance_scale=guidance_scale,
            num_inference_steps=num_inference_steps,
            generator=[torch.Generator().manual_seed(seed) for seed in seeds[start:stop]],
            output_type="pil",
        )
        images.extend(output.images)
    return images


# -- metric math ---------------------------------------------------------------------------


def adherence(predictions: list[dict], targets: list[dict]) -> dict[str, float]:
    """Fraction of images whose judged attributes match the target, per attribute and for
    all of them at once ("all"). Targets may leave attributes out (None: not scored)."""
    scores: dict[str, list[bool]] = {name: [] for name in (*ATTRIBUTES, "all")}
    for predicted, target in zip(predictions, targets, strict=True):
        matches = [predicted[name] == target[name] for name in ATTRIBUTES if target.get(name)]
        for name in ATTRIBUTES:
            if target.get(name):
                scores[name].append(predicted[name] == target[name])
        scores["all"].append(all(matches))
    return {name: float(np.mean(values)) for name, values in scores.items() if values}


def mean_pairwise_cosine_distance(features: torch.Tensor) -> float:
    """Mean of 1 - cos(a, b) over distinct pairs of rows of (K, D) `features`."""
    normalised = torch.nn.functional.normalize(features.float(), dim=-1)
    similarity = normalised @ normalised.T
    k = len(features)
    off_diagonal = similarity.sum() - similarity.diagonal().sum()
    return float(1 - off_diagonal / (k * (k - 1)))


def mean_pairwise_pixel_distance(images: list[Image.Image]) -> float:
    """Mean absolute pixel difference (0..1) over distinct pairs of images."""
    arrays = [np.asarray(image.convert("RGB"), dtype=np.float32) / 255 for image in images]
    pairs = list(itertools.combinations(arrays, 2))
    return float(np.mean([np.abs(a - b).mean() for a, b in pairs]))


# -- suites --------------------------------------------------------------------------------


def _targets(split: shapes.Split, n: int, seed: int) -> list[dict]:
    """`n` (shape, colour, background) targets cycling through a seeded shuffle of `split`."""
    triples = shapes.combinations(split)
    order = np.random.default_rng(seed).permutation(len(triples))
    return [dict(zip(ATTRIBUTES, triples[order[i % len(triples)]], strict=True)) for i in range(n)]


def _prompt(target: dict) -> str:
    return shapes.prompt_for(target.get("shape"), target.get("color"), target.get("background"))


def _score(
    context: EvalContext,
    targets: list[dict],
    guidance: float,
    seed: int,
    negative: str | None = None,
):
    s = context.settings
    prompts = [_prompt(t) for t in targets]
    seeds = [seed + i for i in range(len(targets))]
    negatives = [negative] * len(prompts) if negative is not None else None
    images = generate_images(
        context.pipeline, prompts, seeds, guidance, s.num_inference_steps, negatives, s.batch_size
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
    `negative_attribute`: how often, and how strongly, the judge sees that colour."""
    s = context.settings
    colour = s.negative_attribute
    open_targets = [
        {"shape": t["shape"], "color": None, "background": t["background"]}
        for t in _targets("all", s.negative_images * 4, s.seed + 2)
        if t["background"] != colour
    ][: s.negative_images]
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
                f"{colour}_rate": rate,
                f"p({colour})": metrics["mean_probability"],
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
            context.pipeline,
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
        ("VAE round trip", "vae_round_trip", _vae_round_trip(context)),
    )
    for case, key, transform in cases:
        scores = accuracy(context.judge, s.judge_images, s.seed + 4, transform)
        result.metrics |= {f"judge/{key}/{k}": v for k, v in scores.items()}
        result.rows.append({"suite": "judge", "case": case, "images": s.judge_images} | scores)
    return result


def _vae_round_trip(context: EvalContext):
    vae = context.pipeline.vae

    @torch.no_grad()
    def round_trip(images: list[Image.Image]) -> list[Image.Image]:
        x = torch.from_numpy(np.stack([np.asarray(i) for i in images])).permute(0, 3, 1, 2)
        x = x.to(vae.device, vae.dtype) / 127.5 - 1
        decoded = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
        pixels = ((decoded + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(p) for p in pixels]

    return round_trip


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


def _generate_subject(context: EvalContext, pipeline, prompt: str, seed: int) -> _Generations:
    """`subject_images` generations of `prompt`, seeds seed, seed + 1, ...: the same seeds for
    the base and the fine-tuned model, so their images can be compared pair by pair."""
    s = context.settings
    images = generate_images(
        pipeline,
        [prompt] * s.subject_images,
        [seed + k for k in range(s.subject_images)],
        s.guidance_scale,
        s.num_inference_steps,
        None,
        s.batch_size,
    )
    return _Generations(images, context.judge.features(images), context.judge.predict(images))


def _subject_models(context: EvalContext) -> tuple[tuple[str, object], ...]:
    assert context.subject is not None and context.base_pipeline is not None, (
        "the DreamBooth suites need EvalContext.subject and EvalContext.base_pipeline"
    )
    return (("base", context.base_pipeline), ("fine_tuned", context.pipeline))


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
    for case, pipeline in models:
        generated = _generate_subject(
            context, pipeline, subject.instance_prompt, s.seed + INSTANCE_SEED
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
    base_pipeline, fine_tuned = (pipeline for _, pipeline in models)
    centre = world_centre(context.judge, s.world_images, s.seed)
    reference = context.judge.features(subject.instance_images)
    reading = subject_reading(context.judge, subject.instance_images)
    base = _generate_subject(context, base_pipeline, subject.class_prompt, s.seed + CLASS_SEED)
    generations = {
        "base_other_seeds": _generate_subject(
            context, base_pipeline, subject.class_prompt, s.seed + OTHER_CLASS_SEED
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
        for case, pipeline in models:
            generated = _generate_subject(context, pipeline, prompt, s.seed + offset)
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


Suite = Callable[[EvalContext], SuiteResult]
MODEL_SUITES: dict[str, Suite] = {
    "judge": judge_suite,
    "adherence": adherence_suite,
    "guidance": guidance_suite,
    "negative_prompt": negative_prompt_suite,
    "diversity": diversity_suite,
}
SUBJECT_SUITES: dict[str, Suite] = {  # need EvalContext.base_pipeline and .subject
    "subject_fidelity": subject_fidelity_suite,
    "prior_preservation": prior_preservation_suite,
    "dreambooth_diversity": dreambooth_diversity_suite,
}
EVAL_SUITES: dict[str, Suite] = MODEL_SUITES | SUBJECT_SUITES


def run_suites(context: EvalContext, names: list[str] | None = None) -> dict[str, SuiteResult]:
    """Run the named suites (default: every model suite, in registry order)."""
    names = list(MODEL_SUITES) if names is None else names
    unknown = [name for name in names if name not in EVAL_SUITES]
    if unknown:
        raise ValueError(f"`suites` must be among {list(EVAL_SUITES)} but has {unknown}")
    return {name: EVAL_SUITES[name](context) for name in names}


def image_grid(images: list[Image.Image], columns: int = 8) -> Image.Image:
    """Images (same size) tiled row by row, `columns` wide."""
    assert images, "image_grid needs at least one image"
    width, height = images[0].size
    rows = -(-len(images) // columns)
    grid = Image.new("RGB", (columns * width, rows * height), "white")
    for index, image in enumerate(images):
        grid.paste(image.convert("RGB"), ((index % columns) * width, (index // columns) * height))
    return grid
