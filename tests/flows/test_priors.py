"""Class priors (SPEC §6): generated through the sweep engine, cached by content."""

from __future__ import annotations

import os

import pytest
from sweep_helpers import STEPS, easel

from easel.flows.priors import PriorsParameters, class_priors_flow

pytestmark = pytest.mark.usefixtures("prefect_server")


def test_cache_generates_only_the_difference(tmp_path):
    base = {"class_prompt": "a red shape", "out": str(tmp_path / "priors"),
            "num_inference_steps": STEPS}  # fmt: skip
    first = class_priors_flow(PriorsParameters(num_images=3, **base))
    assert first.generated_now == 3 and len(first.image_uris) == 3
    assert all(os.path.exists(uri) for uri in first.image_uris)
    stamps = [os.stat(uri).st_mtime_ns for uri in first.image_uris]

    same = class_priors_flow(PriorsParameters(num_images=3, **base))
    assert same.generated_now == 0 and same.folder == first.folder

    more = class_priors_flow(PriorsParameters(num_images=5, **base))
    assert more.generated_now == 2 and more.folder == first.folder
    assert [os.stat(uri).st_mtime_ns for uri in more.image_uris[:3]] == stamps

    other = class_priors_flow(PriorsParameters(num_images=1, guidance_scale=3.0, **base))
    assert other.folder != first.folder and other.generated_now == 1  # the key includes guidance


def test_priors_command(tmp_path):
    out = str(tmp_path / "cache")
    result = easel("priors", "--class-prompt", "a blue shape", "--num", "2", "--out", out)
    assert result.returncode == 0, result.stderr
    assert "2 generated now" in result.stdout
    bad = easel("priors", "--class-prompt", "", "--num", "2", "--out", out)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "`--class-prompt`" in bad.stderr  # named as the user typed it


def test_a_bad_option_is_named_as_the_user_typed_it(capsys):
    from easel.cli import main

    assert main(["priors", "--class-prompt", "a star", "--num", "0", "--out", "unused"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("easel priors: error: `--num`:") and "(value: 0)" in err, err
