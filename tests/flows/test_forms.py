"""The dashboard's forms (a deployment's "Custom run"): every parameter of every flow has a
description, and every number its limits, in the schema Prefect builds from the flow."""

from __future__ import annotations

import pytest

from easel.flows.bootstrap import bootstrap_flow, bootstrap_k22_flow, bootstrap_k22_inpaint_flow
from easel.flows.dreambooth import dreambooth_flow
from easel.flows.evaluate import eval_flow
from easel.flows.priors import class_priors_flow
from easel.flows.sweep import sweep_flow
from easel.flows.sweep_parameters import SweepParameters

FLOWS = [sweep_flow, class_priors_flow, dreambooth_flow, eval_flow, bootstrap_flow,
         bootstrap_k22_flow, bootstrap_k22_inpaint_flow]  # fmt: skip


def numeric(prop: dict) -> bool:
    kinds = [prop.get("type")] + [option.get("type") for option in prop.get("anyOf", [])]
    return any(kind in ("integer", "number") for kind in kinds)


def limited(prop: dict) -> bool:
    options = [prop, *prop.get("anyOf", [])]
    return any("minimum" in o or "exclusiveMinimum" in o for o in options)


@pytest.mark.parametrize("flow", FLOWS, ids=[f.name for f in FLOWS])
def test_every_parameter_has_a_description_and_every_number_limits(flow):
    schema = flow.parameters.model_dump()
    for model in schema["definitions"].values():  # the parameters, and nested settings
        fields = model["properties"]
        assert fields
        for name, prop in fields.items():
            assert prop.get("description"), f"{flow.name}: `{name}` has no description"
            if numeric(prop):
                assert limited(prop), f"{flow.name}: `{name}` has no lower limit"


def properties(flow) -> dict[str, dict]:
    """Every field of the flow's form, nested settings included, as "Model.field"."""
    definitions = flow.parameters.model_dump()["definitions"]
    return {f"{model}.{name}": prop for model, schema in definitions.items()
            for name, prop in schema["properties"].items()}  # fmt: skip


@pytest.mark.parametrize("flow", FLOWS, ids=[f.name for f in FLOWS])
def test_every_choice_is_one_dropdown_not_a_type_toggle(flow):
    """An optional enum (anyOf enum, null) shows as a "str | None" toggle; one enum with
    `default` among its values shows as a dropdown."""
    for name, prop in properties(flow).items():
        options = prop.get("anyOf", [])
        assert not any("enum" in option for option in options), f"{name}: {options}"
    if flow.name in ("sweep", "class-priors"):
        scheduler = next(p for n, p in properties(flow).items() if n.endswith(".scheduler"))
        assert scheduler["enum"][0] == scheduler["default"] == "default"
        assert "ddim" in scheduler["enum"]


@pytest.mark.parametrize("flow", FLOWS, ids=[f.name for f in FLOWS])
def test_every_optional_number_is_one_plain_number_field_not_a_type_toggle(flow):
    """An optional number (anyOf number, null) shows as a "float | None" toggle; a plain
    number field without a default may be left empty (Prefect's validation takes null)."""
    for name, prop in properties(flow).items():
        options = prop.get("anyOf", [])
        if any(option.get("type") == "null" for option in options):
            assert not any(numeric(option) for option in options), f"{name}: {options}"
        if numeric(prop) and "anyOf" not in prop:
            assert prop.get("default", 0) is not None, f"{name}: a null default"


def test_optional_numbers_show_their_limits_and_take_null_only_without_a_default():
    from prefect.utilities.schema_tools.validation import is_valid

    from easel.flows.bootstrap import BootstrapParameters

    schema = sweep_flow.parameters.model_dump()
    prior = properties(sweep_flow)["SweepParameters.prior_guidance_scale"]
    assert (prior["type"], prior["minimum"], "default" in prior) == ("number", 0, False)
    base = {"manifest": "s3://prompts/m.parquet", "out": "s3://renders/a"}
    for value, valid in ((2.5, True), (0, True), (None, True), (-1, False), ("x", False)):
        params = {**base, "prior_guidance_scale": value}
        assert is_valid({"params": params}, schema) is valid, value
    assert SweepParameters(**base).model_dump(mode="json")["prior_guidance_scale"] is None
    side = properties(class_priors_flow)["PriorsParameters.width"]
    assert (side["type"], side["minimum"], side["maximum"], side["multipleOf"]) == (
        "integer", 8, 4096, 8)  # fmt: skip
    learning_rate = properties(dreambooth_flow)["Train.text_encoder_learning_rate"]
    assert learning_rate["exclusiveMinimum"] == 0 and "default" not in learning_rate
    threads = properties(bootstrap_flow)["BootstrapParameters.threads"]
    assert (threads["type"], threads["minimum"], threads["default"]) == ("integer", 1, 1)
    assert BootstrapParameters(threads=None).threads is None  # Python and YAML: torch's own


def test_sweep_form_hides_internal_fields_and_refuses_what_json_schema_can_express():
    from prefect.utilities.schema_tools.validation import is_valid

    schema = sweep_flow.parameters.model_dump()
    fields = properties(sweep_flow)
    internal = {"shard", "parent_mlflow_run_id", "vouched_by"}
    assert not {f"SweepParameters.{name}" for name in internal} & set(fields)
    assert fields["SweepParameters.dtype"]["enum"] == ["default", "float32", "float16", "bfloat16"]
    assert fields["Performance.vae_dtype"]["enum"][0] == "default"
    assert fields["Performance.compile"]["enum"] == ["off", "regional", "full"]
    assert fields["SweepParameters.device"] == {**fields["SweepParameters.device"],
                                                "type": "string", "default": "default"}  # fmt: skip
    base = {"manifest": "s3://prompts/m.parquet", "out": "s3://renders/{scheduled_date}"}
    assert is_valid({"params": base}, schema)
    assert is_valid({"params": {**base, "shards": "auto"}}, schema)
    for bad in ({"out": "s3://renders/{schedule_date}"}, {"batch_size": 0}, {"typo": 1},
                {"shards": 0}, {"shards": "many"},
                {"scheduler": "magic"}, {"shard": "first"},
                {"vouched_by": "../../elsewhere"}):  # fmt: skip
        assert not is_valid({"params": {**base, **bad}}, schema), bad
    # a shard's run, as its parent starts it through the API, passes the same schema
    child = SweepParameters(**base, shards=2, shard=1, parent_mlflow_run_id="r",
                            vouched_by="0f5c1a8e-6d2b-4c3e-9a47-1b2c3d4e5f60")  # fmt: skip
    sent = child.model_dump(mode="json")
    assert sent["scheduler"] == "default" and is_valid({"params": sent}, schema)
    assert SweepParameters(**sent) == child  # "default" reads back as unset
