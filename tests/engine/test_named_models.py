"""Named models (issue 27): a sweep's `models:` maps short names to specs; a row's `model`
and the default `model` take a name or a plain reference, resolved while planning."""

from __future__ import annotations

import pytest
import yaml
from sweep_helpers import write_manifest

from easel.cli import main
from easel.flows.sweep_parameters import SweepParameters
from easel.models.engine.spec import ModelSpec, named_spec
from easel.models.engine.sweep import plan_sweep
from easel.models.testing.random_pipelines import build_random_sd

ROW = {"prompt": "a red circle", "seed": 5, "width": 32, "height": 32}


@pytest.fixture(scope="module")
def sd(tmp_path_factory) -> str:
    return build_random_sd(str(tmp_path_factory.mktemp("sd") / "model"))


def planned(tmp_path, rows, **parameters):
    manifest = write_manifest(tmp_path / "m.parquet", rows)
    params = SweepParameters(manifest=manifest, out=str(tmp_path / "out"), **parameters)
    return plan_sweep(params.inputs(), check_done=False)[1]


def test_a_name_plans_as_its_path_with_the_same_request_keys(sd, tmp_path):
    rows = [{**ROW, "id": "named", "model": "mine"}, {**ROW, "id": "plain", "model": sd},
            {**ROW, "id": "default"}]  # fmt: skip
    plan = planned(tmp_path, rows, model="mine", models={"mine": {"path": sd, "variant": None}})
    assert not plan.failures
    keys = {image.row_id: image.request_key for b in plan.batches for image in b.images}
    assert keys["named"] == keys["plain"] == keys["default"]
    assert {b.model for b in plan.batches} == {"mine", sd}  # rows keep what they said


def test_an_unknown_name_fails_its_row_naming_column_value_and_names(sd, tmp_path):
    rows = [{**ROW, "id": "typo", "model": "mien"}, {**ROW, "id": "ok", "model": "mine"}]
    plan = planned(tmp_path, rows, models={"mine": {"path": sd}})
    (failure,) = plan.failures
    assert failure.id == "typo" and failure.error.startswith("`model` 'mien': ")
    assert "nor a name in `models`: mine" in failure.error
    assert [image.row_id for b in plan.batches for image in b.images] == ["ok"]


def test_an_unknown_default_is_refused_before_any_run(sd, tmp_path, capsys):
    manifest = write_manifest(tmp_path / "m.parquet", [{**ROW, "id": "r"}])
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"models": {"mine": {"path": sd}}}))
    code = main(["sweep", manifest, "--out", str(tmp_path / "out"), "--model", "mien",
                 "--config", str(tmp_path / "c.yaml")])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "`model` (rows without their own)" in err and "'mien'" in err and "mine" in err
    assert not (tmp_path / "out" / "results.parquet").exists()


def test_a_spec_is_validated_and_the_sweep_can_turn_every_checker_off(sd):
    with pytest.raises(ValueError, match="safety_checker"):
        SweepParameters(manifest="m", out="/o", models={"x": {"path": sd, "safety_checker": "no"}})
    models = {"mine": ModelSpec(path=sd, variant="fp16")}
    assert named_spec("mine", models) == models["mine"]
    assert named_spec(sd, models) == ModelSpec(path=sd)
    off = named_spec("mine", models, "off")
    assert off.safety_checker == "off" and off.variant == "fp16"


def test_yaml_s_bare_off_turns_a_checker_off_as_the_docs_write_it():
    """docs/models.md writes `safety_checker: off` unquoted: YAML reads it as false."""
    params = SweepParameters.model_validate(yaml.safe_load(
        "manifest: m\nout: /tmp/o\nsafety_checker: off\n"
        "models:\n  plain: {path: tiny-shapes, safety_checker: off}\n"
    ))  # fmt: skip
    assert params.safety_checker == "off" and params.models["plain"].safety_checker == "off"
    with pytest.raises(ValueError, match="safety_checker"):
        ModelSpec(path="tiny-shapes", safety_checker="maybe")


def test_two_names_of_the_same_files_each_keep_their_row(tmp_path):
    """`a` and `b` resolve to the same files (one with its checker off, tiny-shapes has none):
    rows identical but for `model` have one request key, two batches and two files, and
    each row ends ok with its own record: the record shards must not share a name."""
    from easel.data import results
    from easel.models.engine.sweep import generate_batches

    rows = [{**ROW, "model": "a", "num_images": 2}, {**ROW, "model": "b", "num_images": 2}]
    manifest = write_manifest(tmp_path / "m.parquet", rows)
    models = {"a": {"path": "tiny-shapes"}, "b": {"path": "tiny-shapes", "safety_checker": "off"}}
    params = SweepParameters(manifest=manifest, out=str(tmp_path / "out"), models=models,
                             num_inference_steps=2, device="cpu")  # fmt: skip
    inputs = params.inputs()
    table, plan = plan_sweep(inputs)
    images = [image for batch in plan.batches for image in batch.images]
    assert len(plan.batches) == 2 and len({image.request_key for image in images}) == 2
    outcome = generate_batches(inputs, plan.batches, None)
    assert (outcome.ok, outcome.failed) == (4, 0)

    summary = results.publish_results(inputs.out, table.table, plan, outcome.ok)
    assert (summary.images_ok, summary.images_failed, summary.rows_failed) == (4, 0, 0)
    written = results.vouching_records(inputs.out)
    assert sorted((r.model_ref, r.image_index) for r in written) == [
        ("a", 0), ("a", 1), ("b", 0), ("b", 1)]  # fmt: skip
    assert plan_sweep(inputs)[1].batches == []  # nothing left for a rerun
