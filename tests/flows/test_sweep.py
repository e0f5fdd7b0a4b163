"""The sweep flow end to end on the embedded model: pixels, files, rows, MLflow, Prefect."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil

import mlflow
import pytest
import torch
from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionPipeline
from sweep_helpers import (
    STEPS,
    flow_run_logs,
    max_pixel_difference,
    read_results,
    write_manifest,
)

from easel.flows.sweep import SweepParameters, sweep_flow
from easel.models.engine.references import resolve_model_reference
from easel.orchestration.run_context import prefect_tags

pytestmark = pytest.mark.usefixtures("prefect_server")

PROMPTS = [
    "a red circle on a blue background", "a green star on a white background",
    "a yellow square on a black background", "a blue heart on a yellow background",
    "a purple triangle on a orange background", "a white cross on a red background",
    "a black star on a green background",
]  # fmt: skip


def run(tmp_path, name, rows, **params):
    manifest = write_manifest(tmp_path / f"{name}.parquet", rows)
    out = str(tmp_path / name)
    values = {"num_inference_steps": STEPS, **params}
    return sweep_flow(SweepParameters(manifest=manifest, out=out, **values)), out


@pytest.mark.parametrize("scheduler", ["ddim", "euler_a"])
def test_same_image_whatever_the_batch_and_as_bare_diffusers(tmp_path, scheduler):
    row = {"id": "subject", "prompt": "a red star on a blue background", "seed": 42,
           "negative_prompt": "green", "guidance_scale": 5.0, "scheduler": scheduler}  # fmt: skip
    neighbours = [{"id": f"n{i}", "prompt": p, "seed": i, "guidance_scale": 5.0,
                   "scheduler": scheduler} for i, p in enumerate(PROMPTS)]  # fmt: skip
    _, alone = run(tmp_path, "alone", [row], batch_size=1)
    _, crowd = run(tmp_path, "crowd", [*neighbours[:3], row, *neighbours[3:]], batch_size=8)
    image = os.path.join("images", "subject", "0.png")
    assert max_pixel_difference(f"{alone}/{image}", f"{crowd}/{image}") <= 2

    pipe = StableDiffusionPipeline.from_pretrained(resolve_model_reference("tiny-shapes").path)
    if scheduler == "euler_a":
        pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    direct = pipe(
        row["prompt"], negative_prompt=row["negative_prompt"], guidance_scale=5.0,
        num_inference_steps=STEPS, generator=torch.Generator().manual_seed(42),
        output_type="np",
    ).images[0]  # fmt: skip
    ours = torch.tensor(read_png(f"{alone}/{image}"))
    expected = torch.tensor((direct * 255).round().astype("int16"))
    assert int((ours - expected).abs().max()) <= 2


def read_png(path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_bad_rows_fail_alone_and_everything_is_tracked(tmp_path):
    rows = [
        {"id": "ok-1", "prompt": PROMPTS[0], "num_images": 2, "team": "vision"},
        {"id": "bad-steps", "prompt": PROMPTS[1], "num_inference_steps": 9999, "team": "x"},
        {"id": "bad-model", "prompt": PROMPTS[2], "model": str(tmp_path / "nowhere")},
        {"id": "ok-2", "prompt": PROMPTS[3], "scheduler": "dpmpp_2m"},
    ]
    summary, out = run(tmp_path, "mixed", rows)
    assert (summary.images_ok, summary.rows_failed) == (3, 2)
    results = read_results(out)
    assert [(r["id"], r["image_index"], r["status"]) for r in results] == [
        ("ok-1", 0, "ok"), ("ok-1", 1, "ok"), ("bad-steps", None, "failed"),
        ("bad-model", None, "failed"), ("ok-2", 0, "ok"),
    ]  # fmt: skip
    errors = {r["id"]: r["error"] for r in results if r["status"] == "failed"}
    assert "`num_inference_steps`" in errors["bad-steps"] and "9999" in errors["bad-steps"]
    assert "`model`" in errors["bad-model"] and "nowhere" in errors["bad-model"]
    ok = [r for r in results if r["status"] == "ok"]
    assert all(os.path.exists(r["image_uri"]) for r in ok)
    assert [r["seed"] for r in ok[:2]] == [ok[0]["seed"], ok[0]["seed"] + 1]
    assert {r["scheduler"] for r in ok} == {"ddim", "dpmpp_2m"}
    assert results[0]["team"] == "vision"  # pass-through column
    assert all(len(r["image_sha256"]) == 64 and r["model_digest"] for r in ok)
    assert os.path.exists(os.path.join(out, "contact_sheet.png"))
    assert results[0]["warning"] is None

    run_id = ok[0]["mlflow_run_id"]
    client = mlflow.MlflowClient()
    tracked = client.get_run(run_id)
    assert tracked.data.params["manifest"].endswith("mixed.parquet")
    # named after the flow run (reruns told apart) and the work; its source, its view
    flow_run_name, named = tracked.info.run_name.split(": ", 1)
    assert named == "sweep mixed.parquet on tiny-shapes"
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as prefect:
        flow_run = prefect.read_flow_run(tracked.data.tags["prefect.flow_run_id"])
    assert flow_run.name == flow_run_name
    assert tracked.data.tags["mlflow.source.name"] == "easel flow sweep"
    experiment = client.get_experiment(tracked.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # training
    assert "None" not in tracked.data.params.values() and "scheduler" not in tracked.data.params
    assert tracked.data.metrics["images_ok"] == 3 and tracked.data.metrics["failures"] == 2
    assert tracked.data.metrics["images_per_s"] > 0
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"results.parquet", "contact_sheet.png"} <= artifacts


def test_overlong_prompt_is_truncated_with_a_warning_and_derived_ids_are_recorded(tmp_path):
    words = " ".join(["a red circle on a blue background"] * 4)  # past tiny-shapes' 16 tokens
    _, out = run(tmp_path, "long", [{"prompt": words}, {"prompt": "красный круг"}])
    long, other = read_results(out)
    assert long["status"] == "ok" and "truncated" in long["warning"]
    said = flow_run_logs(long["flow_run_id"], "images with a warning")  # the Logs tab
    assert said[f"  {long['id']}/0: {long['warning']}"] == logging.WARNING
    assert other["status"] == "ok"  # any script reaches the tokenizer
    for row in (long, other):  # no `id` column: results name each row's image folder
        assert row["id"].startswith("row-") and f"/images/{row['id']}/0.png" in row["image_uri"]


def flow_run_artifacts(state) -> dict:
    """The artifacts of the flow run whose final state is `state`, by key."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    run_filter = ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=run_filter))
    return {a.key: a for a in found}


def test_prefect_artifacts_are_published(tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", [{"id": "a", "prompt": PROMPTS[0]}])
    params = SweepParameters(manifest=manifest, out=str(tmp_path / "o"), num_inference_steps=STEPS)
    state = sweep_flow(params, return_state=True)
    assert state.is_completed()
    by_key = flow_run_artifacts(state)
    assert set(by_key) == {"sweep-results", "sweep-summary", "sweep-progress"}
    assert "contact sheet" in by_key["sweep-summary"].data
    assert by_key["sweep-progress"].data == 100.0
    assert by_key["sweep-progress"].description.startswith("1 of 1 images generated into")
    results = by_key["sweep-results"].data  # what a person reads, the image a link
    assert PROMPTS[0] in results and "| ok |" in results and "[open](file://" in results
    assert "| figure | count |" in by_key["sweep-summary"].data  # a header, not empty cells
    # the run's Logs tab: the progress line and the MLflow link, from the run logger
    said = "\n".join(flow_run_logs(state.state_details.flow_run_id, "1 images ok, 0 failed"))
    assert "sweep: 1/1 images (100%)" in said and "1 images ok, 0 failed" in said
    assert ": sweep m.parquet on tiny-shapes': run " in said  # the MLflow run, named
    # linked both ways: the MLflow run names the flow run, the summary names the MLflow run
    run_id = read_results(tmp_path / "o")[0]["mlflow_run_id"]
    tags = mlflow.MlflowClient().get_run(run_id).data.tags
    assert tags["prefect.flow_run_id"] == str(state.state_details.flow_run_id)
    assert tags["prefect.flow_run_url"].endswith(str(state.state_details.flow_run_id))
    assert run_id in by_key["sweep-summary"].data
    # the MLflow results table, with its image
    table = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id)}
    assert "results.json" in table and "table_images" in table


def mlflow_runs_into(out) -> list:
    """The MLflow runs of sweeps into `out`, the latest first."""
    return mlflow.search_runs(search_all_experiments=True, output_format="list",
                              filter_string=f"params.out = '{out}'",
                              order_by=["attributes.start_time DESC"])  # fmt: skip


def test_rerun_does_only_missing_or_changed_work(tmp_path):
    rows = [{"id": "a", "prompt": PROMPTS[0]}, {"id": "b", "prompt": PROMPTS[1], "num_images": 2}]
    first, out = run(tmp_path, "rerun", rows)
    assert first.generated_now == 3
    [made] = mlflow_runs_into(out)
    stamps = {p: os.stat(p).st_mtime_ns for p in (f"{out}/images/a/0.png", f"{out}/images/b/1.png")}
    manifest = str(tmp_path / "rerun.parquet")
    params = SweepParameters(manifest=manifest, out=out, num_inference_steps=STEPS)
    state = sweep_flow(params, return_state=True)  # nothing to do: no second, identical run
    again = state.result()
    assert again.generated_now == 0 and again.images_ok == 3
    assert {p: os.stat(p).st_mtime_ns for p in stamps} == stamps
    assert [r.info.run_id for r in mlflow_runs_into(out)] == [made.info.run_id]
    said = "\n".join(flow_run_logs(state.state_details.flow_run_id, "no new MLflow run"))
    assert f"no new MLflow run; these results are in MLflow run {made.info.run_name!r}" in said
    assert made.info.run_id in said  # its link, in the Logs tab, and in the summary
    assert made.info.run_id in flow_run_artifacts(state)["sweep-summary"].data
    rows[0]["team"] = "vision"  # results change, nothing to generate: a run records them
    noted, _ = run(tmp_path, "rerun", rows)
    assert noted.generated_now == 0 and read_results(out)[0]["team"] == "vision"
    latest = mlflow_runs_into(out)
    assert len(latest) == 2 and latest[0].data.metrics["images_generated"] == 0
    rows[1]["prompt"] = PROMPTS[2]  # a changed row is generated again, the other is kept
    changed, _ = run(tmp_path, "rerun", rows)
    assert changed.generated_now == 2
    assert os.stat(f"{out}/images/a/0.png").st_mtime_ns == stamps[f"{out}/images/a/0.png"]
    assert len(read_results(out)) == 3 and len(mlflow_runs_into(out)) == 3


def test_an_output_location_carries_the_runs_date_and_name(tmp_path):
    """Scheduled runs keep their outputs apart; a run resumes in its own folder."""
    from datetime import datetime, timezone

    from prefect.client.orchestration import get_client

    manifest = write_manifest(tmp_path / "m.parquet", [{"id": "a", "prompt": PROMPTS[0]}])
    out = str(tmp_path / "nightly" / "{scheduled_date}" / "{flow_run_name}")
    params = SweepParameters(manifest=manifest, out=out, num_inference_steps=STEPS)
    state = sweep_flow(params, return_state=True)
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
    day = run.expected_start_time.astimezone(timezone.utc).strftime("%Y-%m-%d")
    assert day == datetime.now(timezone.utc).strftime("%Y-%m-%d")
    folder = tmp_path / "nightly" / day / run.name
    assert (folder / "results.parquet").exists() and (folder / "images" / "a" / "0.png").exists()
    assert state.result().out == str(folder)


def test_a_flow_run_named_to_escape_its_folder_is_refused_naming_out_and_the_name(tmp_path):
    """Run names are typed in the dashboard: `renders/{flow_run_name}` with a run named
    `../escaped` writes nothing, outside `renders/` or in it."""
    from easel.errors import InvalidInput

    manifest = write_manifest(tmp_path / "m.parquet", [{"id": "a", "prompt": PROMPTS[0]}])
    out = str(tmp_path / "renders" / "{flow_run_name}")
    params = SweepParameters(manifest=manifest, out=out, num_inference_steps=STEPS)
    with pytest.raises(InvalidInput) as error:
        sweep_flow.with_options(flow_run_name="../escaped")(params)
    message = str(error.value)
    assert "`out`" in message and "'../escaped'" in message and "{flow_run_name}" in message
    assert sorted(os.listdir(tmp_path)) == ["m.parquet"]


@pytest.mark.parametrize("name", ["..", ".", "a/b", "a\\b", ""])
def test_a_placeholder_value_must_be_one_folder_name(name, monkeypatch):
    from prefect.runtime import flow_run

    from easel.errors import InvalidInput
    from easel.orchestration.run_context import expand_placeholders

    monkeypatch.setitem(flow_run.FIELDS, "name", lambda: name)
    with pytest.raises(InvalidInput, match="`out` 'r/{flow_run_name}': {flow_run_name} is "):
        expand_placeholders("r/{flow_run_name}", "out")
    monkeypatch.setitem(flow_run.FIELDS, "name", lambda: "..nightly.. 2")
    assert expand_placeholders("r/{flow_run_name}", "out") == "r/..nightly.. 2"


def test_the_flow_run_address_is_the_dashboard_s_and_none_without_one(monkeypatch):
    """The tag links to the run's page on the dashboard (`/runs/flow-run/ID`); Prefect's
    temporary server has no dashboard (its runtime's `ui_url` reads "None/flow-runs/...")."""
    from prefect.runtime import flow_run
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

    monkeypatch.setitem(flow_run.FIELDS, "id", lambda: "7f0c")
    monkeypatch.setitem(flow_run.FIELDS, "run_count", lambda: 1)
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:4200/api"}):
        url = prefect_tags()["prefect.flow_run_url"]
    assert url == "http://127.0.0.1:4200/runs/flow-run/7f0c"
    with temporary_settings({PREFECT_API_URL: None, PREFECT_UI_URL: None}):
        assert prefect_tags() == {"prefect.flow_run_id": "7f0c", "prefect.run_count": "1"}


def test_an_image_changed_since_it_was_written_is_made_again(tmp_path):
    """A file truncated or replaced after its record vouched for it is generated again (a
    rerun compares each image's size with the recorded one), and so is one changed in place
    at the same size (modified after its record: its bytes are hashed); results name the
    digest each file has."""
    rows = [{"id": f"r{i}", "prompt": p, "seed": i} for i, p in enumerate(PROMPTS[:3])]
    first, out = run(tmp_path, "o", rows)
    before = {r["id"]: r for r in read_results(out)}
    shutil.copy(before["r0"]["image_uri"], tmp_path / "r0.png")
    with open(before["r0"]["image_uri"], "w") as f:
        f.write("x")  # replaced
    size = os.path.getsize(before["r1"]["image_uri"])
    with open(before["r1"]["image_uri"], "wb") as f:
        f.write(b"\0" * size)  # changed in place, same size

    again, _ = run(tmp_path, "o", rows)
    assert (again.generated_now, again.images_ok) == (2, 3)
    after = {r["id"]: r for r in read_results(out)}
    for row in after.values():
        with open(row["image_uri"], "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == row["image_sha256"]
    assert after["r1"]["mlflow_run_id"] != before["r1"]["mlflow_run_id"]
    assert max_pixel_difference(after["r0"]["image_uri"], tmp_path / "r0.png") <= 2  # again
    assert after["r0"]["mlflow_run_id"] != before["r0"]["mlflow_run_id"]  # made by the rerun
    assert after["r2"] == before["r2"]
    assert os.path.exists(again.contact_sheet_uri)


def test_a_damaged_record_file_and_results_heal_on_a_rerun(tmp_path):
    """A record file cut to zero bytes (power loss) and an empty `results.parquet`: the
    rerun sets the file aside under `.easel/quarantine/`, generates its images again, and
    rebuilds complete results; then a seed edited A -> B -> A ends with results naming the
    digest each file holds."""
    rows = [{"id": f"r{i}", "prompt": p, "seed": i} for i, p in enumerate(PROMPTS[:2])]
    _, out = run(tmp_path, "o", rows)
    state = [os.path.join(folder, name) for folder, _, names in os.walk(f"{out}/.easel/records")
             for name in names]  # fmt: skip
    for file in state:  # the run compacted its record shards into parts
        open(file, "wb").close()
    open(f"{out}/results.parquet", "wb").close()
    again, _ = run(tmp_path, "o", rows)
    assert (again.generated_now, again.images_ok) == (2, 2)
    quarantined = os.listdir(f"{out}/.easel/quarantine")
    assert sorted(quarantined) == sorted(os.path.basename(f) for f in state)
    assert sorted(r["id"] for r in read_results(out)) == ["r0", "r1"]
    for seed in (7, 8, 7):
        rows[0]["seed"] = seed
        run(tmp_path, "o", rows)
        for row in read_results(out):
            with open(row["image_uri"], "rb") as f:
                assert hashlib.sha256(f.read()).hexdigest() == row["image_sha256"], seed
            assert row["seed"] == (seed if row["id"] == "r0" else 1)


def test_a_sharded_sweep_counts_from_its_shards_tallies_and_compacts_their_records(tmp_path):
    """Shards run one after another in this process: the parent's outcome comes from each
    shard run's tally, and each shard compacts its records into the parts it owns."""
    rows = [{"id": f"r{i}", "prompt": PROMPTS[i % len(PROMPTS)], "seed": i} for i in range(6)]
    summary, out = run(tmp_path, "sharded", rows, shards=2, batch_size=1)
    assert (summary.generated_now, summary.images_ok) == (6, 6)
    tallies = os.listdir(f"{out}/.easel/progress")
    assert len({name.split("~")[0] for name in tallies}) == 2  # one flow run per shard
    folders = {os.path.relpath(folder, f"{out}/.easel/records")
               for folder, _, names in os.walk(f"{out}/.easel/records") if names}  # fmt: skip
    assert folders and all(f.startswith("part-") for f in folders)
    assert sorted(r["id"] for r in read_results(out)) == [f"r{i}" for i in range(6)]


def test_a_sharded_rerun_lists_the_images_once_and_its_shards_trust_the_parent(
    tmp_path, monkeypatch
):
    """An image deleted before a sharded rerun: the parent lists `images/` once, hands its
    verdict to the shard run (the one with work) instead of a second listing, the rerun
    makes exactly that image again, and the verdict is removed after the run; an `auto`
    rerun deciding one shard plans again in this run without listing again."""
    from easel.data import manifest, storage, verdict

    rows = [{"id": f"r{i}", "prompt": PROMPTS[i % len(PROMPTS)], "seed": i} for i in range(4)]
    _, out = run(tmp_path, "o", rows, shards=2, batch_size=1)
    listed, written, read, validated = [], [], [], []
    for module, name, calls in ((storage, "file_versions", listed),
                                (verdict, "write_verdict", written),
                                (verdict, "read_verdict", read),
                                (manifest, "validate_manifest", validated)):  # fmt: skip
        monkeypatch.setattr(module, name, counted(getattr(module, name), calls))
    for shards, row in ((2, "r1"), ("auto", "r2")):
        listed.clear()
        before = {r["id"]: r for r in read_results(out)}
        os.remove(before[row]["image_uri"])
        again, _ = run(tmp_path, "o", rows, shards=shards, batch_size=1)
        assert (again.generated_now, again.images_ok) == (1, 4), shards
        after = {r["id"]: r for r in read_results(out)}
        assert after[row]["mlflow_run_id"] != before[row]["mlflow_run_id"]
        assert {k: v for k, v in after.items() if k != row} == {
            k: v for k, v in before.items() if k != row}  # fmt: skip
        images = [call[0] for call in listed if call[0].endswith("/images")]
        assert images == [f"{out}/images"] * 2  # the parent's, the results'
        assert [call[1] for call in read] == [written[-1][1]], shards  # the shard's planning
        # the parent validates the whole manifest; a shard handed its plan only its row
        handed = [call[3] for call in validated]  # the rows asked for (None: all)
        assert handed == ([None, [int(row[1:])]] if shards == 2 else [None, None]), shards
        read.clear()
        validated.clear()
        assert os.listdir(f"{out}/.easel/vouched") == []
    assert len({call[1] for call in written}) == 2  # one verdict a parent run


def counted(function, calls: list):
    """`function`, noting each call's positional arguments in `calls`."""

    def call(*args, **kwargs):
        calls.append(args)
        return function(*args, **kwargs)

    return call


def test_auto_shards_keep_the_outputs_count_and_each_shard_measures_its_fixed_cost(tmp_path):
    """`shards: auto` from a shell (one worker) decides one shard and records it; an output
    whose recorded count is 2 splits in 2 on every auto run; every shard run logs and keeps
    its fixed cost."""
    rows = [{"id": f"r{i}", "prompt": PROMPTS[i % len(PROMPTS)], "seed": i} for i in range(4)]
    summary, out = run(tmp_path, "alone", rows, shards="auto", batch_size=2)
    assert summary.generated_now == 4
    assert json.loads(open(f"{out}/.easel/shards.json").read())["shards"] == 1
    cost = json.loads(open(f"{out}/.easel/shard_cost.json").read())
    assert cost["images"] == 4 and cost["fixed_s"] > 0 and cost["image_s"] > 0

    split = tmp_path / "split"
    os.makedirs(split / ".easel")
    (split / ".easel" / "shards.json").write_text(json.dumps(
        {"shards": 2, "pending_images": 4, "workers": 2, "fixed_s": 1.0, "image_s": 1.0,
         "decided_at": 0.0}))  # fmt: skip
    summary, out = run(tmp_path, "split", rows, shards="auto", batch_size=2)
    assert (summary.generated_now, summary.images_ok) == (4, 4)
    runs = {name.split("~")[0] for name in os.listdir(f"{out}/.easel/progress")}
    assert len(runs) == 2  # one flow run per shard
    children = mlflow.search_runs(filter_string="attributes.run_name LIKE '%sweep shard %'",
                                  search_all_experiments=True, output_format="list")  # fmt: skip
    measured = [r.data.metrics for r in children
                if r.data.tags.get("prefect.flow_run_id") in runs]  # fmt: skip
    assert len(measured) == 2 and all(m["shard_fixed_s"] > 0 for m in measured)
