"""The quickstart's DreamBooth subject under other settings, read by the judge.

Trains `easel quickstart`'s DreamBooth (the dreambooth-tiny preset, its instance images
captioned with their backgrounds, `QUICK_DREAMBOOTH`) with `--set KEY=VALUE` overrides on
top, then generates each context prompt at seeds 100..100+N-1 (guidance 7.5, 20 steps, the
sweep's defaults) and prints, per prompt, how often the judge reads the subject (a blue
star) and the prompt's background.

    OMP_NUM_THREADS=1 python -m bench.quickstart_subject --out OUT [--set KEY=VALUE ...]

`--smoke`: 2 training steps, 2 generations per prompt of 2 steps.
"""

from __future__ import annotations

import time

import yaml

from bench import harness

SUBJECT = ("star", "blue")
BACKGROUNDS = ("white", "orange", "red", "green")  # green: a quickstart instance's


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--images", type=int, default=16, help="generations per prompt")
    parser.add_argument(
        "--background",
        help="all instance images on this background "
        "(a user's photos of one place); default: the quickstart's, varied",
    )
    parser.add_argument("--count", type=int, default=4, help="instance images, --background")
    args = parser.parse_args()
    steps = 2 if args.smoke else 20
    if args.smoke:
        args.images, args.overrides = 2, [*args.overrides, "max_steps=2"]

    from easel.cli.dreambooth import dreambooth_flow, tiny_shapes_config
    from easel.cli.quickstart import QUICK_DREAMBOOTH
    from easel.data.shapes import write_shape_subject
    from easel.models.engine.generation import text_to_image
    from easel.models.engine.loading import load_model
    from easel.models.shapes.judge import Judge

    overrides = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in args.overrides)}
    start = time.monotonic()
    config = tiny_shapes_config(args.out, {**QUICK_DREAMBOOTH, **overrides})
    if args.background:
        caption = config.subject.instance_prompt + " on a {background} background"
        instance = write_shape_subject(f"{args.out}/one-background", args.count,
                                       caption=caption, background=args.background)  # fmt: skip
        subject = config.subject.model_copy(update={"instance_data": instance})
        config = config.model_copy(update={"subject": subject})
    result = dreambooth_flow(config)
    results = harness.Results("quickstart_subject", args)
    results.parameters.update(overrides=overrides, images=args.images)
    results.add("train", "s", time.monotonic() - start)
    model, judge = load_model(result.pipeline, device="cpu"), Judge.load()
    seeds = [100 + k for k in range(args.images)]
    for background in BACKGROUNDS:
        prompt = f"a {result.identifier} star on a {background} background"
        images = text_to_image(model, [prompt] * len(seeds), seeds, 7.5, steps, None, 64)
        readings = [(p["shape"], p["color"], p["background"]) for p in judge.predict(images)]
        subject = sum(r[:2] == SUBJECT for r in readings) / len(readings)
        context = sum(r[2] == background for r in readings) / len(readings)
        results.add(f"{background} background: read as the subject", "rate", subject)
        results.add(f"{background} background: its background read", "rate", context)
    results.write()


if __name__ == "__main__":
    main()
