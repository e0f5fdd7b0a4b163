"""`easel quickstart`: the main job end to end on the embedded model."""

from __future__ import annotations

import os

import mlflow
import pytest
from sweep_helpers import read_results

from easel.flows.cli import main

pytestmark = pytest.mark.usefixtures("prefect_server")


def test_quickstart_runs_every_stage(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["quickstart", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "contact sheet:" in printed and "dreambooth:" in printed
    pipeline = out / "dreambooth" / "pipeline"
    assert (pipeline / "model_index.json").exists()
    assert os.listdir(out / "dreambooth" / "checkpoints")
    results = read_results(out / "sweep")
    by_id = {}
    for row in results:
        by_id.setdefault(row["id"], []).append(row)
    assert all(row["status"] == "ok" for row in results)
    assert {"edit-img2img", "edit-inpaint", "edit-inpaint-soft", "subject-white"} <= set(by_id)
    k22 = {"k22-red-circle", "k22-img2img", "k22-fusion", "k22-russian", "k22-german",
           "k22-fusion-many"}  # fmt: skip
    assert k22 <= set(by_id)  # Kandinsky 2.2, prompts in three languages
    assert by_id["k22-fusion"][0]["model_ref"] == "tiny-shapes-k22"
    assert by_id["subject-white"][0]["model_ref"] == str(pipeline)
    assert len({row["scheduler"] for row in results}) >= 3
    assert (out / "sweep" / "contact_sheet.png").exists()
    run = mlflow.MlflowClient().get_run(results[0]["mlflow_run_id"])
    assert run.data.metrics["images_ok"] == len(results)
