"""Each limit and name list is defined once (easel.data.limits): the engine builds every
scheduler the manifest accepts, and the sweeps page (docs/sweeps.md) states the same rules."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from easel.data import limits
from easel.models.engine import kandinsky21, kandinsky22
from easel.models.engine.families import FAMILIES
from easel.models.engine.loading import load_model
from easel.models.engine.schedulers import SCHEDULERS, build_scheduler

SWEEPS_PAGE = (Path(__file__).resolve().parents[2] / "docs" / "sweeps.md").read_text()


def test_the_manifests_scheduler_names_are_the_engines():
    assert tuple(SCHEDULERS) == limits.SCHEDULER_NAMES
    for family in FAMILIES:
        assert set(family.schedulers) <= set(limits.SCHEDULER_NAMES), family.name


@pytest.mark.parametrize("name", limits.SCHEDULER_NAMES)
def test_every_scheduler_name_builds_from_a_models_config(name):
    base = load_model("tiny-shapes", device="cpu").pipeline.scheduler.config
    scheduler = build_scheduler(name, base)
    assert type(scheduler).__name__ == SCHEDULERS[name][0]
    assert scheduler.config.num_train_timesteps == base.num_train_timesteps


def manifest_rule(column: str) -> str:
    """The sweeps page's manifest table's rule for `column`."""
    for line in SWEEPS_PAGE.splitlines():
        if line.startswith(f"| `{column}`"):
            return line
    raise AssertionError(f"docs/sweeps.md's manifest table has no row for `{column}`")


def test_the_sweeps_page_states_the_limits():
    assert f"{limits.MIN_STEPS}..{limits.MAX_STEPS}" in manifest_rule("num_inference_steps")
    assert f"{limits.MIN_IMAGES}..{limits.MAX_IMAGES}" in manifest_rule("num_images")
    sides = manifest_rule("width")
    assert f"multiple of {limits.SIDE_MULTIPLE}" in sides
    assert f"{limits.MIN_SIDE}..{limits.MAX_SIDE}" in sides
    assert f"config ({limits.GUIDANCE_SCALE:g})" in manifest_rule("guidance_scale")
    assert f"config ({limits.NUM_INFERENCE_STEPS})" in manifest_rule("num_inference_steps")
    assert str(limits.STRENGTH) in manifest_rule("strength")
    assert limits.ID_RULE in manifest_rule("id")
    assert f"at most {limits.MAX_INPUT_PIXELS:,} pixels" in manifest_rule("init_image")
    operations = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    assert f"at most\n  {limits.MAX_INPUT_PIXELS:,} pixels" in operations
    prior = manifest_rule("prior_guidance_scale")
    assert f"({limits.PRIOR_GUIDANCE_SCALE:g}, {limits.PRIOR_NUM_INFERENCE_STEPS})" in prior
    assert f"{limits.MIN_PRIOR_STEPS}..{limits.MAX_STEPS}" in prior
    every, kandinsky = manifest_rule("scheduler").split("|")[3].split("(Kandinsky 2.1, 2.2:")
    assert re.findall(r"[a-z_0-9]+", every) == list(limits.SCHEDULER_NAMES)
    kandinsky = kandinsky.split(")")[0]
    for family in (kandinsky21.FAMILY, kandinsky22.FAMILY):
        assert set(re.findall(r"[a-z_0-9]+", kandinsky)) == set(family.schedulers)
    for task in limits.TASKS:
        assert task in manifest_rule("task")
    assert f"1..{limits.MAX_FUSION_INPUTS} items" in manifest_rule("fusion_inputs")
