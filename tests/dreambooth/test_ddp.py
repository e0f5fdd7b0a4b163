"""DreamBooth under DDP on CPU: two processes (gloo) train, checkpoint once, and resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from dreambooth_fixtures import make_workspace, tiny_config

pytestmark = pytest.mark.slow  # two training processes (gloo)

SCRIPT = textwrap.dedent("""
    import json, os, sys
    from easel.data.dreambooth import list_images
    from easel.models.dreambooth.config import DreamBoothConfig
    from easel.models.dreambooth.training import train

    config = DreamBoothConfig.model_validate(json.load(open(sys.argv[1])))
    images = (list_images(config.subject.instance_data),
              list_images(config.prior_preservation.class_data))
    final = train(config, config.model, *images,
                  os.path.join(config.output, "checkpoints"), enable_progress_bar=False)
    print("FINAL", os.environ.get("LOCAL_RANK", "0"), final, flush=True)
""")


def test_two_process_ddp_trains_and_checkpoints(tmp_path):
    workspace = make_workspace(str(tmp_path / "ws"))
    config = tiny_config(
        workspace,
        str(tmp_path / "out"),
        strategy="ddp",
        devices=2,
        max_steps=4,
        checkpoint_every_n_steps=2,
        keep_last_n_checkpoints=3,
    )
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "script.py").write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.getcwd(), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, str(tmp_path / "script.py"), str(tmp_path / "config.json")],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("FINAL") == 2  # both ranks finished

    checkpoints = tmp_path / "out" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "step=00000002.ckpt",
        "step=00000004.ckpt",
    ]  # written once, by rank 0, no temp files left
    final = torch.load(checkpoints / "step=00000004.ckpt", weights_only=True)
    middle = torch.load(checkpoints / "step=00000002.ckpt", weights_only=True)
    assert final["global_step"] == 4 and middle["global_step"] == 2
    changed = [
        k
        for k in final["state_dict"]
        if not torch.equal(final["state_dict"][k], middle["state_dict"][k])
    ]
    assert changed  # training moved the weights between the checkpoints
    assert final["optimizer_states"][0]["state"]  # the optimizer state travels with it
