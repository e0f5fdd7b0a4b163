"""DreamBooth quality on tiny-shapes, through the real commands: `easel dreambooth` trains
each variant, `easel eval` scores it against the base model with the judge (the DreamBooth
suites `subject_fidelity`, `prior_preservation`, `dreambooth_diversity`; definitions in
docs/tiny-shapes.md). This script only writes the subject's images, runs the commands and
gathers their `report.json` files into one table.

Subject: a `--color` `--shape` (default a blue star, a pair tiny-shapes never saw together)
on varied backgrounds, 5 images, each captioned with its background ("a v star on a green
background"), bound to `--identifier` (default "v", the preset's): instance prompt "a v
star", class prompt "a star". Variants, all from the `dreambooth-tiny` preset:

- `no_prior`: instance loss only;
- `prior`: plus the prior loss on class images sampled without guidance (the default);
- `prior_guided_classes`: the same with class images sampled at guidance 7.5;
- `prior_classes_guidance_3`: the same at guidance 3;
- `differential_output`: no class images; the prompt without the identifier pulled to the
  base model's prediction (ai-toolkit's differential output preservation).

Columns: the subject suites, the class prompt's preservation and diversity, and context
(`subject_context`: backgrounds no instance image shows, asked of "a star" and "a v star").

    python -m bench.dreambooth_quality [--out DIR] [--steps 400] [--class-images 400]
                                       [--images 48] [--shape circle --color green] [--seed 0]
                                       [--identifier sks] [--learning-rate 1e-4]

`--seed` is the training seed (DreamBooth's `seed`, which also seeds the class images:
image i has seed `seed + i`), so repeated runs with other seeds measure the spread.
Each variant's metrics go into the bench result. `--smoke`: 2 steps, 2 class images,
2 generations, the `no_prior` variant alone.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess

from bench import harness

REPO = str(harness.ROOT)

PRESET = os.path.join(REPO, "easel", "configs", "dreambooth-tiny.yaml")
VARIANTS = {
    "no_prior": ["prior_preservation=false"],
    "prior": [],
    "prior_guided_classes": ["class_guidance_scale=7.5"],
    "prior_classes_guidance_3": ["class_guidance_scale=3"],
    "differential_output": ["prior_preservation_method=differential_output"],
}
COLUMNS = {  # table column -> metric under the report's metrics, {case} filled per row
    "subject feature sim": "subject_fidelity/{case}/feature_similarity",
    "read as subject": "subject_fidelity/{case}/subject_rate",
    "class: sim to base, same seed": "prior_preservation/{case}/base_similarity",
    "class: attribute shift": "prior_preservation/{case}/attribute_shift",
    "class: PRES": "prior_preservation/{case}/subject_similarity",
    "class: DIV": "dreambooth_diversity/class/{case}/feature_distance",
    "subject: DIV": "dreambooth_diversity/instance/{case}/feature_distance",
    "context: class prompt": "context/{context_case}/background_rate",
    "context: subject prompt": "context/{case}_subject/subject_and_background_rate",
}


def instance_prompt(args) -> str:
    return f"a {args.identifier} {args.shape}"


def run(command: list[str]) -> None:
    print("$", shlex.join(command), flush=True)
    subprocess.run(command, check=True, cwd=REPO)


def train(args, name: str, instance: str) -> str:
    """`easel dreambooth` on the preset with this variant's overrides; the pipeline folder."""
    output = os.path.join(args.out, name)
    overrides = [
        f"instance_data={instance}",
        f"instance_prompt={instance_prompt(args)}",
        f"class_prompt=a {args.shape}",
        f"max_steps={args.steps}",
        f"checkpoint_every_n_steps={args.steps}",
        f"num_class_images={args.class_images}",
        *([f"learning_rate={args.learning_rate}"] if args.learning_rate else []),
        f"seed={args.seed}",
        f"class_priors_dir={os.path.join(args.out, 'class_priors')}",
        "validation_prompts=[]",
        f"output={output}",
        *VARIANTS[name],
    ]
    sets = [a for o in overrides for a in ("--set", o)]
    run([*harness.EASEL, "dreambooth", "--config", PRESET, *sets])
    return os.path.join(output, "pipeline")


def evaluate(args, name: str, pipeline: str, instance: str) -> dict:
    """`easel eval` of the DreamBooth suites against tiny-shapes; its report."""
    out = os.path.join(args.out, name, "eval")
    run(
        [*harness.EASEL, "eval", "--model", pipeline, "--base-model", "tiny-shapes", "--out", out]
        + ["--instance-data", instance, "--instance-prompt", instance_prompt(args)]
        + ["--class-prompt", f"a {args.shape}", "--subject-images", str(args.images)]
    )
    with open(os.path.join(out, "report.json")) as f:
        return json.load(f)


def table(reports: dict[str, dict]) -> str:
    """Markdown: the base model (from the first report), then one row per variant."""
    first = next(iter(reports.values()))["metrics"]
    rows = [("base tiny-shapes", first, "base")]
    rows += [(name, report["metrics"], "fine_tuned") for name, report in reports.items()]
    lines = ["| model | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for label, metrics, case in rows:
        context_case = "base" if case == "base" else "fine_tuned"
        cells = [metrics.get(key.format(case=case, context_case=context_case))
                 for key in COLUMNS.values()]  # fmt: skip
        lines.append(
            f"| {label} | " + " | ".join("" if c is None else f"{c:.3f}" for c in cells) + " |"
        )
    floor = first["prior_preservation/base_other_seeds/attribute_shift"]
    unrelated = first["prior_preservation/base_other_seeds/base_similarity"]
    lines.append(
        f"\nReference, the base model with other seeds: class attribute shift {floor:.3f} "
        f"(sampling noise), similarity of unrelated pairs {unrelated:.3f}; instance images "
        f"against each other: {first['subject_fidelity/instance_images/feature_similarity']:.3f}."
    )
    return "\n".join(lines)


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--out", default="easel-out/quality-dreambooth")
    parser.add_argument("--shape", default="star")
    parser.add_argument("--color", default="blue")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--learning-rate", type=float, help="default: the preset's")
    parser.add_argument("--identifier", default="v", help="the subject's word (the preset's)")
    parser.add_argument("--class-images", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0, help="training seed (DreamBooth `seed`)")
    parser.add_argument("--images", type=int, default=48, help="generations per prompt, model")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.class_images, args.images, args.variants = 2, 2, 2, ["no_prior"]
    args.out = os.path.abspath(args.out)

    from easel.data.shapes import write_shape_subject

    caption = instance_prompt(args) + " on a {background} background"
    instance = write_shape_subject(
        os.path.join(args.out, "instance"), shape=args.shape, color=args.color, caption=caption
    )
    reports = {}
    for name in args.variants:
        reports[name] = evaluate(args, name, train(args, name, instance), instance)
    summary = table(reports)
    print(summary)
    with open(os.path.join(args.out, "quality.md"), "w") as f:
        f.write(summary + "\n")
    results = harness.Results("dreambooth_quality", args)
    results.parameters.update(shape=args.shape, color=args.color, steps=args.steps,
                              class_images=args.class_images, seed=args.seed,
                              images=args.images, identifier=args.identifier)  # fmt: skip
    for name, report in reports.items():
        for column, key in COLUMNS.items():
            value = report["metrics"].get(key.format(case="fine_tuned", context_case="fine_tuned"))
            if value is not None:
                results.add(f"{name}: {column}", "rate" if "rate" in key else "score", value)
    results.write()


if __name__ == "__main__":
    main()
