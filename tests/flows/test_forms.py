"""The dashboard's forms (a deployment's "Custom run"): every parameter of every flow has a
description, and every number its limits, in the schema Prefect builds from the flow."""

from __future__ import annotations

import pytest

from easel.flows.bootstrap import bootstrap_flow, bootstrap_k22_flow, bootstrap_k22_inpaint_flow
from easel.flows.dreambooth import dreambooth_flow
from easel.flows.evaluate import eval_flow
from easel.flows.priors import class_priors_flow
from easel.flows.sweep import sweep_flow

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
