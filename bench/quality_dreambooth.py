"""DreamBooth quality on tiny-shapes, scored by the judge: subject fidelity and prior
preservation, for the base model and DreamBooth with and without the prior loss.

The subject is a green circle (a pair tiny-shapes never saw together) bound to "sks":
instance prompt "a sks circle", class prompt "a circle".

- subject fidelity: for "a sks circle", the mean cosine similarity of the judge features of
  generations to the mean feature of the instance images, and the fraction the judge reads
  as a green circle;
- prior preservation: for "a circle", the distance of the mean judge feature from the base
  model's (same seeds), the fraction read as green (the subject leaking into its class) and
  the diversity (mean pairwise cosine distance of features).

    python bench/quality_dreambooth.py [--steps 150] [--images 48] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

INSTANCE_PROMPT, CLASS_PROMPT = "a sks circle", "a circle"
GUIDANCE, STEPS = 7.5, 20


def _generate(pipeline, prompt: str, count: int, seed: int):
    from easel.models.evaluation import generate_images

    return generate_images(
        pipeline, [prompt] * count, [seed + k for k in range(count)], GUIDANCE, STEPS
    )


def _load(path: str):
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(
        path, use_safetensors=True, safety_checker=None, requires_safety_checker=False
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _train(base_dir: str, work: str, name: str, instance: str, class_dir: str | None, args) -> str:
    from easel.data.dreambooth import list_images
    from easel.models.dreambooth.config import DreamBoothConfig
    from easel.models.dreambooth.training import train
    from easel.models.export import export_pipeline

    config = DreamBoothConfig(
        model=base_dir,
        instance_data=instance,
        instance_prompt=INSTANCE_PROMPT,
        class_prompt=CLASS_PROMPT,
        prior_preservation=class_dir is not None,
        class_data=class_dir,
        resolution=64,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        max_steps=args.steps,
        checkpoint_every_n_steps=args.steps,
        keep_last_n_checkpoints=1,
        accelerator="cpu",
        output=os.path.join(work, name),
        seed=0,
    )
    final = train(
        config,
        base_dir,
        list_images(instance),
        list_images(class_dir) if class_dir else None,
        os.path.join(config.output, "checkpoints"),
        enable_progress_bar=False,
    )
    return export_pipeline(final, base_dir, "tiny-shapes", os.path.join(config.output, "pipeline"))


def _scores(pipeline, judge, instance_features, base_class_features, args) -> dict:
    from easel.models.evaluation import mean_pairwise_cosine_distance

    subject = _generate(pipeline, INSTANCE_PROMPT, args.images, seed=10_000)
    klass = _generate(pipeline, CLASS_PROMPT, args.images, seed=20_000)
    subject_features, class_features = judge.features(subject), judge.features(klass)
    target = torch.nn.functional.normalize(instance_features.mean(0), dim=0)
    similarity = torch.nn.functional.normalize(subject_features, dim=-1) @ target
    read_subject = judge.predict(subject)
    read_class = judge.predict(klass)
    scores = {
        "subject_feature_similarity": float(similarity.mean()),
        "subject_read_as_green_circle": sum(
            p["shape"] == "circle" and p["color"] == "green" for p in read_subject
        )
        / len(subject),
        "class_read_as_green": sum(p["color"] == "green" for p in read_class) / len(klass),
        "class_read_as_circle": sum(p["shape"] == "circle" for p in read_class) / len(klass),
        "class_diversity": mean_pairwise_cosine_distance(class_features),
    }
    if base_class_features is not None:
        scores["class_shift_from_base"] = float(
            (class_features.mean(0) - base_class_features.mean(0)).norm()
        )
    return scores, class_features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-shapes")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--images", type=int, default=48, help="generations per prompt and model")
    parser.add_argument("--class-images", type=int, default=48)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    work = args.out or tempfile.mkdtemp(prefix="quality-dreambooth-")

    from easel.data.dreambooth import list_images, write_shape_subject
    from easel.data.storage import write_png_atomic
    from easel.models.judge import Judge
    from easel.models.references import resolve_model_reference

    base_dir = resolve_model_reference(args.model).path
    judge = Judge.load()
    instance = write_shape_subject(os.path.join(work, "instance"), count=5, seed=0)
    from PIL import Image

    instance_features = judge.features(
        [Image.open(p).convert("RGB") for p in list_images(instance)]
    )

    base = _load(base_dir)
    class_dir = os.path.join(work, "class")
    if len(list_images(class_dir) if os.path.isdir(class_dir) else []) < args.class_images:
        for k, image in enumerate(_generate(base, CLASS_PROMPT, args.class_images, seed=30_000)):
            write_png_atomic(os.path.join(class_dir, f"{k:04d}.png"), image)

    results = {}
    results["base"], base_class_features = _scores(base, judge, instance_features, None, args)
    results["base"]["class_shift_from_base"] = 0.0
    for name, priors in (("dreambooth_no_prior", None), ("dreambooth_prior", class_dir)):
        exported = _train(base_dir, work, name, instance, priors, args)
        results[name], _ = _scores(
            _load(exported), judge, instance_features, base_class_features, args
        )
    report = {
        "model": args.model,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "images_per_prompt": args.images,
        "results": results,
    }
    print(json.dumps(report, indent=1))
    with open(os.path.join(work, "quality.json"), "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
