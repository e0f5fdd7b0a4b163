"""Non-finite numbers (issue 14): NaN, inf and -inf are refused in every float of every
config and flow parameter (exit 2 before any work), as they are in manifest cells (the
row fails)."""

from __future__ import annotations

import math
import typing

import pytest
from pydantic import BaseModel, ValidationError
from sweep_helpers import write_manifest

from easel.cli import main
from easel.flows.bootstrap import BootstrapK22Parameters, BootstrapParameters
from easel.flows.evaluate import EvalParameters
from easel.flows.priors import PriorsParameters
from easel.flows.sweep import SweepParameters
from easel.models.dreambooth.config import DreamBoothConfig

REQUIRED = {  # the least each model needs to be valid
    SweepParameters: {"manifest": "m.parquet", "out": "out"},
    PriorsParameters: {"class_prompt": "a star", "num_images": 2, "out": "priors"},
    DreamBoothConfig: {"subject": {"instance_data": "subject", "instance_prompt": "a sks star",
                                   "class_prompt": "a star"}, "output": "db"},
    EvalParameters: {},
    BootstrapParameters: {},
    BootstrapK22Parameters: {},
}  # fmt: skip
NON_FINITE = [math.nan, math.inf, -math.inf]


def float_fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    """The float keys of `model`, a group's as `group.key`."""
    def has_float(annotation) -> bool:
        return annotation is float or any(has_float(a) for a in typing.get_args(annotation))

    names = []
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            names += float_fields(field.annotation, f"{prefix}{name}.")
        elif has_float(field.annotation):
            names.append(prefix + name)
    return names


CASES = [(model, name) for model in REQUIRED for name in float_fields(model)]


def test_the_cases_cover_the_float_fields_users_meet():
    names = {(model.__name__, name) for model, name in CASES}
    for expected in [("SweepParameters", "guidance_scale"), ("SweepParameters",
                     "prior_guidance_scale"), ("DreamBoothConfig", "train.learning_rate"),
                     ("DreamBoothConfig", "train.snr_gamma"),
                     ("DreamBoothConfig", "train.offset_noise"),
                     ("PriorsParameters", "guidance_scale"), ("EvalParameters",
                     "guidance_scale"), ("BootstrapParameters", "diffusion_ema_decay")]:
        assert expected in names  # fmt: skip
    assert len(CASES) >= 10


@pytest.mark.parametrize("value", NON_FINITE, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize(("model", "name"), CASES, ids=[f"{m.__name__}.{n}" for m, n in CASES])
def test_every_float_refuses_non_finite_values(model, name, value):
    with pytest.raises(ValidationError) as error:
        *group, key = name.split(".")
        given = {group[0]: {key: value}} if group else {key: value}
        model.model_validate({**REQUIRED[model], **given})
    (problem,) = error.value.errors()
    assert problem["loc"] == tuple(name.split(".")), problem
    assert problem["type"] == "finite_number", problem


@pytest.mark.usefixtures("prefect_server")
def test_an_infinite_guidance_in_a_sweep_config_exits_2_before_any_work(tmp_path, capsys):
    manifest = write_manifest(tmp_path / "m.parquet", [{"id": "a", "prompt": "a red circle"}])
    config = tmp_path / "sweep.yaml"
    config.write_text("guidance_scale: .inf\n")
    out = tmp_path / "out"
    assert main(["sweep", manifest, "--out", str(out), "--config", str(config)]) == 2
    error = capsys.readouterr().err.strip()
    assert "`guidance_scale`" in error and "inf" in error and "finite" in error, error
    assert len(error.splitlines()) == 1 and not out.exists()


def test_an_infinite_learning_rate_in_a_dreambooth_config_exits_2(tmp_path, capsys):
    config = tmp_path / "db.yaml"
    config.write_text(
        "subject: {instance_data: subject, instance_prompt: a sks star, class_prompt: a star}\n"
        f"output: {tmp_path / 'db'}\ntrain: {{learning_rate: .inf}}\n"
    )
    for extra in ([], ["--set", "train.learning_rate=.nan"]):
        assert main(["dreambooth", "--config", str(config), *extra]) == 2
        error = capsys.readouterr().err.strip()
        assert "`train.learning_rate`" in error and "finite" in error, error
    assert not (tmp_path / "db").exists()
