"""DreamBooth configs edited between runs (issue 14): a resume honours exactly what it can
(more steps on a constant schedule, checkpoint cadence, validation), refuses the rest before
any work naming each change, and refuses a `max_steps` below the last checkpoint."""

from __future__ import annotations

import mlflow
import pytest
import torch
import yaml
from dreambooth_fixtures import make_workspace, tiny_config

import easel.flows.dreambooth  # noqa: F401  Prefect sets up its log handler on import: not under capsys
from easel.cli import main

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return make_workspace(str(tmp_path_factory.mktemp("ws")))


def config_file(tmp_path, workspace, output: str) -> str:
    values = tiny_config(workspace, str(tmp_path / output), max_steps=2,
                         checkpoint_every_n_steps=2, validation_prompts=[])  # fmt: skip
    path = tmp_path / f"{output}.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def unet(output) -> dict:
    return torch.load(output / "checkpoints" / "step=00000004.ckpt", weights_only=True)[
        "state_dict"
    ]


@pytest.mark.slow
def test_edited_configs_on_resume(tmp_path, workspace, capsys):
    config = config_file(tmp_path, workspace, "edited")
    out = tmp_path / "edited"
    assert main(["dreambooth", "--config", config]) == 0  # trained to step 2
    capsys.readouterr()
    checkpoints = sorted(p.name for p in (out / "checkpoints").glob("*.ckpt"))

    # a change a resume cannot honour exactly: refused before any work, each key named
    changed = ["--set", "train.learning_rate=5e-4", "--set", "train.max_steps=4",
               "--set", "train.seed=3"]  # fmt: skip
    assert main(["dreambooth", "--config", config, *changed]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    for words in ("`train.learning_rate` 0.001 -> 0.0005", "`train.seed` 0 -> 3", "step 2",
                  "start fresh", str(out / "checkpoints")):
        assert words in error, error  # fmt: skip
    assert "max_steps" not in error  # more steps on a constant schedule: honoured
    assert sorted(p.name for p in (out / "checkpoints").glob("*.ckpt")) == checkpoints

    # what can be honoured is applied and recorded: the same weights as one straight run
    honoured = ["--set", "train.max_steps=4", "--set", "checkpoints.every_n_steps=1",
                "--set", "validation.prompts=[a photo of sks shape]"]  # fmt: skip
    assert main(["dreambooth", "--config", config, *honoured]) == 0
    straight = config_file(tmp_path, workspace, "straight")
    assert main(["dreambooth", "--config", straight, "--set", "train.max_steps=4"]) == 0
    resumed, uninterrupted = unet(out), unet(tmp_path / "straight")
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)
    run_id = (out / "checkpoints" / "training_run_id").read_text()
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    assert run.data.tags["easel.resumed.train.max_steps"] == "`train.max_steps` 2 -> 4"
    assert run.data.params["train.max_steps"] == "2"
    assert run.data.params["train.learning_rate"] == "0.001"
    steps = [m.step for m in client.get_metric_history(run_id, "train/loss")]
    assert steps == [0, 1, 2, 3]  # one point per step across the resume
    assert (out / "validation" / "contact_sheet.png").exists()

    # a goal below the last checkpoint: refused, naming both
    assert main(["dreambooth", "--config", config, "--set", "train.max_steps=1"]) == 2
    error = capsys.readouterr().err.strip()
    assert "`train.max_steps` 1" in error and "step of the last checkpoint, 4" in error, error
    assert (out / "checkpoints" / "step=00000004.ckpt").exists()


def test_the_same_subject_under_another_path_is_honoured(tmp_path, workspace, capsys):
    import shutil

    config = config_file(tmp_path, workspace, "moved")
    assert main(["dreambooth", "--config", config]) == 0
    copy = shutil.copytree(workspace["instance_data"], tmp_path / "copy")
    assert main(["dreambooth", "--config", config, "--set", f"subject.instance_data={copy}",
                 "--set", "train.max_steps=3"]) == 0  # fmt: skip
    (copy / "00.png").write_bytes((copy / "01.png").read_bytes())  # other images, same path
    capsys.readouterr()
    assert main(["dreambooth", "--config", config, "--set", f"subject.instance_data={copy}",
                 "--set", "train.max_steps=4"]) == 2  # fmt: skip
    assert "`subject.instance_data`" in capsys.readouterr().err
