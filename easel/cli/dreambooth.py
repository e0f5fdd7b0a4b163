"""`easel dreambooth`: the config read (`--set` overrides, old flat keys converted) and
checked before any work, then the DreamBooth flow; and the `dreambooth-tiny` preset as a
ready-made config (the quickstart's)."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from easel import tracking
from easel.data.config import read_yaml, validated
from easel.errors import InvalidInput
from easel.flows.dreambooth import dreambooth_flow
from easel.models.dreambooth.config import DreamBoothConfig
from easel.models.dreambooth.flat_keys import with_overrides
from easel.tasks.dreambooth import check_inputs, resolve_model

PRESET = Path(__file__).resolve().parents[1] / "configs" / "dreambooth-tiny.yaml"


def tiny_shapes_config(out: str, overrides: dict | None = None) -> DreamBoothConfig:
    """The `dreambooth-tiny` preset with its subject images (captioned with their
    backgrounds) written under `out/instance` and its output under `out`: a ready-made short
    run on tiny-shapes (for the quickstart). `overrides`: {dotted key: value}, as `--set`."""
    from easel.data.shapes import write_shape_subject

    values, _ = with_overrides(read_yaml(str(PRESET)), {"output": out, **(overrides or {})})
    caption = values["subject"]["instance_prompt"] + " on a {background} background"
    instance_data = write_shape_subject(f"{out}/instance", caption=caption)
    values["subject"] = {**values["subject"], "instance_data": instance_data}
    return DreamBoothConfig.model_validate(values)


def parse_overrides(items: list[str]) -> dict:
    """`key=value` strings as a mapping, each value read as YAML (numbers, booleans, lists);
    a key is dotted in a group (`train.max_steps`) or an old flat one (`max_steps`)."""
    values = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(f"--set expects KEY=VALUE but got {item!r}")
        try:
            values[key.strip()] = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as error:
            said = " ".join(str(error).split())
            raise InvalidInput(f"--set {item!r}: the value is not valid YAML: {said}") from None
    return values


def load_config(config: str, overrides: list[str] = ()) -> DreamBoothConfig:
    """Read, override (`group.key=null` resets a key) and validate the config, then check its
    inputs; all before any work."""
    values, given = with_overrides(read_yaml(config), parse_overrides(list(overrides)))
    parsed = validated(DreamBoothConfig, values, config, given, "--set ")
    check_inputs(parsed, resolve_model(parsed.model).digest)
    return parsed


def run_dreambooth_command(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    result = dreambooth_flow(config)
    print(f"pipeline:      {result.pipeline}  (use as --model; identifier {result.identifier!r})")
    if result.lora:
        print(f"lora:          {result.lora}  (use in loras on {config.model})")
    print(f"checkpoint:    {result.checkpoint}")
    if result.validation_contact_sheet:
        print(f"validation:    {result.validation_contact_sheet}")
    if result.registered:
        print(f"registered:    {result.registered}")
    print(f"mlflow runs:   {tracking.tracking_uri()}")
    return 0
