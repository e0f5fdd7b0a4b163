"""DreamBooth on a pod: `output` on an object store. Checkpoints, class priors, the exported
pipeline and validation land there (each file whole, the export's marker last), and a rerun
on a fresh machine (an empty local cache) resumes from the store, to the same weights as an
uninterrupted run."""

from __future__ import annotations

import shutil

import fsspec
import pytest
import torch
import yaml
from dreambooth_fixtures import make_workspace, tiny_config

import easel.flows.dreambooth  # noqa: F401  Prefect sets up its log handler on import: not under capsys
from easel.cli import main
from easel.models.checkpoint_io import load_checkpoint_file
from easel.models.engine.references import cache_dir

pytestmark = pytest.mark.usefixtures("prefect_server")


def test_dreambooth_into_s3_resumes_on_a_fresh_machine(tmp_path, s3_server):
    s3 = fsspec.filesystem("s3")
    s3.mkdir("easel-db")
    workspace = make_workspace(str(tmp_path / "ws"))
    values = tiny_config(workspace, "s3://easel-db/sks", max_steps=2, checkpoint_every_n_steps=1,
                         keep_last_n_checkpoints=2)  # fmt: skip
    del values["prior_preservation"]["class_data"]  # class priors generated into the store too
    values["prior_preservation"]["num_class_images"] = 2
    config = tmp_path / "db.yaml"
    config.write_text(yaml.safe_dump(values))
    assert main(["dreambooth", "--config", str(config)]) == 0
    s3.invalidate_cache()
    assert sorted(p.rsplit("/", 1)[-1] for p in s3.glob("easel-db/sks/checkpoints/*.ckpt")) == [
        "step=00000001.ckpt", "step=00000002.ckpt"
    ]  # fmt: skip
    assert s3.exists("easel-db/sks/pipeline/unet/diffusion_pytorch_model.safetensors")
    assert s3.exists("easel-db/sks/pipeline/easel_export.json")
    assert s3.glob("easel-db/sks/class_priors/*/images/*/0.png")
    assert s3.exists("easel-db/sks/validation/results.parquet")

    shutil.rmtree(cache_dir())  # a fresh machine: nothing local but the config
    assert main(["dreambooth", "--config", str(config), "--set", "train.max_steps=4"]) == 0
    s3.invalidate_cache()
    names = sorted(p.rsplit("/", 1)[-1] for p in s3.glob("easel-db/sks/checkpoints/*.ckpt"))
    assert names == ["step=00000003.ckpt", "step=00000004.ckpt"]  # resumed, pruned

    straight = tiny_config(workspace, str(tmp_path / "straight"), max_steps=4,
                           checkpoint_every_n_steps=1, validation_prompts=[])  # fmt: skip
    del straight["prior_preservation"]["class_data"]
    straight["prior_preservation"]["num_class_images"] = 2
    (tmp_path / "straight.yaml").write_text(yaml.safe_dump(straight))
    assert main(["dreambooth", "--config", str(tmp_path / "straight.yaml")]) == 0
    resumed = load_checkpoint_file("s3://easel-db/sks/checkpoints/step=00000004.ckpt")
    uninterrupted = torch.load(tmp_path / "straight" / "checkpoints" / "step=00000004.ckpt",
                               weights_only=True)  # fmt: skip
    for key, value in uninterrupted["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key
