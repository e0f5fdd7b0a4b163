"""The quickstart's DreamBooth subject under other settings, read by the judge.

Trains `easel quickstart`'s DreamBooth (the dreambooth-tiny preset, its instance images
captioned with their backgrounds, `QUICK_DREAMBOOTH`) with `--set KEY=VALUE` overrides on
top, then generates each context prompt at seeds 100..100+N-1 (guidance 7.5, 20 steps, the
sweep's defaults) and prints, per prompt, how often the judge reads the subject (a blue
star) and the prompt's background.

    OMP_NUM_THREADS=1 python bench/quickstart_subject.py --out OUT [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import time

import yaml

SUBJECT = ("star", "blue")
BACKGROUNDS = ("white", "orange", "red", "green")  # green is an instance background


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--images", type=int, default=16, help="generations per prompt")
    args = parser.parse_args()

    from easel.flows.dreambooth import dreambooth_flow, tiny_shapes_config
    from easel.flows.quickstart import QUICK_DREAMBOOTH
    from easel.models.engine.generation import text_to_image
    from easel.models.engine.loading import load_model
    from easel.models.shapes.judge import Judge

    overrides = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in args.overrides)}
    start = time.monotonic()
    config = tiny_shapes_config(args.out, **{**QUICK_DREAMBOOTH, **overrides})
    result = dreambooth_flow(config)
    report = {"overrides": overrides, "train_s": round(time.monotonic() - start)}
    model, judge = load_model(result.pipeline, device="cpu"), Judge.load()
    seeds = [100 + k for k in range(args.images)]
    for background in BACKGROUNDS:
        prompt = f"a {result.identifier} star on a {background} background"
        images = text_to_image(model, [prompt] * len(seeds), seeds, 7.5, 20, None, 64)
        readings = [(p["shape"], p["color"], p["background"]) for p in judge.predict(images)]
        report[background] = {
            "subject": sum(r[:2] == SUBJECT for r in readings) / len(readings),
            "context": sum(r[2] == background for r in readings) / len(readings),
        }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
