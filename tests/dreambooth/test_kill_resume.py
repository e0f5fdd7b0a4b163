"""Kill -9 at several points, rerun, and get bitwise the weights of an uninterrupted run,
with the same logged loss curve after each resume point; validation grids while training
change nothing of it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading

import pytest
import torch
from dreambooth_fixtures import make_workspace, tiny_config, train_logged

pytestmark = pytest.mark.slow  # kill -9 at several points, each a training subprocess

RUNNER = textwrap.dedent('''
    import json, os, signal, sys
    import pytorch_lightning as pl
    sys.path.insert(0, sys.argv[4])
    from dreambooth_fixtures import train_logged

    config_path, kill_hook, kill_step = sys.argv[1], sys.argv[2], int(sys.argv[3])
    values = json.load(open(config_path))

    class KillAt(pl.Callback):
        """SIGKILL this process at `kill_hook` of step `kill_step`, like a crash or an OOM kill."""
        def __init__(self):
            self.micro_batches = 0
        def _maybe_kill(self, trainer, hook):
            if hook == kill_hook and trainer.global_step == kill_step:
                os.kill(os.getpid(), signal.SIGKILL)
        def on_train_batch_start(self, trainer, *args):
            self.micro_batches += 1
            if self.micro_batches % 2 == 0:  # the second micro-batch of an accumulation
                self._maybe_kill(trainer, "second_micro_batch")
        def on_save_checkpoint(self, trainer, *args):
            if kill_hook == "during_checkpoint_write" and trainer.global_step == kill_step:
                folder = os.path.join(values["output"], "checkpoints")
                partial = os.path.join(folder, f".step={kill_step:08d}.ckpt.partial.tmp")
                with open(partial, "wb") as f:
                    f.write(b"half a checkpoint")
                os.kill(os.getpid(), signal.SIGKILL)

    train_logged(values, os.environ["MLFLOW_TRACKING_URI"], callbacks=[KillAt()])
''')


def _run(tmp_path, config: dict, kill_hook: str = "none", kill_step: int = -1) -> int:
    config_path = tmp_path / f"{os.path.basename(config['output'])}.json"
    config_path.write_text(json.dumps(config))
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    env = dict(
        os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db", PYTHONPATH=os.getcwd()
    )
    tests_dir = os.path.dirname(os.path.dirname(__file__))  # tests/: dreambooth_fixtures
    done = subprocess.run(
        check=False,
        args=[sys.executable, str(runner), str(config_path), kill_hook, str(kill_step), tests_dir],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if kill_hook == "none":
        assert done.returncode == 0, done.stderr[-3000:]
    return done.returncode


def _loss_curve(tmp_path, output: str) -> dict[int, list[float]]:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    with open(os.path.join(output, "run_id")) as f:
        run_id = f.read()
    curve: dict[int, list[float]] = {}
    for metric in client.get_metric_history(run_id, "train/loss"):
        curve.setdefault(metric.step, []).append(metric.value)
    return curve


def _validation_grids(tmp_path, output: str) -> dict:
    """The `validation` images of the run, by step (the last logged of a step)."""
    import mlflow
    from PIL import Image

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    with open(os.path.join(output, "run_id")) as f:
        run_id = f.read()
    grids = {}
    for artifact in sorted(a.path for a in client.list_artifacts(run_id, "images")):
        key, _, step, *_ = os.path.basename(artifact).split("+")
        if key == "validation" and artifact.endswith(".png"):
            local = client.download_artifacts(run_id, artifact, str(tmp_path))
            grids[int(step)] = Image.open(local).convert("RGB")
    return grids


def test_kill_and_resume_matches_uninterrupted_run_bitwise(tmp_path):
    workspace = make_workspace(str(tmp_path / "ws"))
    settings = {
        "max_steps": 8,
        "gradient_accumulation": 2,
        "checkpoint_every_n_steps": 2,
        "keep_last_n_checkpoints": 2,
    }
    straight = tiny_config(workspace, str(tmp_path / "straight"), **settings)
    resumed = tiny_config(workspace, str(tmp_path / "resumed"), **settings,
                          validation_every_n_steps=2)  # fmt: skip
    train_logged(straight, f"sqlite:///{tmp_path}/mlflow.db")  # in this process: one import less

    kills = [  # mid-accumulation (resumes from step 2), then mid-write of step 6's checkpoint
        ("second_micro_batch", 3),
        ("during_checkpoint_write", 6),
    ]
    for hook, step in kills:
        assert _run(tmp_path, resumed, hook, step) == -9, f"{hook} at {step} did not kill"
    checkpoints = tmp_path / "resumed" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir() if not p.name.startswith(".")) == [
        "step=00000002.ckpt",
        "step=00000004.ckpt",
    ]  # retention kept 2; step 6 never landed
    _run(tmp_path, resumed)  # resumes from step 4, past the half-written step-6 temp file

    final_straight = torch.load(
        tmp_path / "straight/checkpoints/step=00000008.ckpt", weights_only=False
    )
    final_resumed = torch.load(checkpoints / "step=00000008.ckpt", weights_only=False)
    assert final_resumed["global_step"] == 8
    straight_weights, resumed_weights = final_straight["state_dict"], final_resumed["state_dict"]
    assert straight_weights.keys() == resumed_weights.keys()
    for name, tensor in straight_weights.items():
        assert torch.equal(tensor, resumed_weights[name]), name
    assert sorted(p.name for p in checkpoints.iterdir() if not p.name.startswith(".")) == [
        "step=00000006.ckpt",
        "step=00000008.ckpt",
    ]

    # a validation grid (prompts x seeds) of the base weights, then every 2nd step's
    grids = _validation_grids(tmp_path, resumed["output"])
    assert sorted(grids) == [0, 2, 4, 6, 8], sorted(grids)
    from easel.data.contact_sheet import LABEL_LINES, LINE, THUMBNAIL

    labelled = {THUMBNAIL + lines * LINE + 4 for lines in range(2, LABEL_LINES + 1)}
    assert grids[0].width == THUMBNAIL and grids[0].height in labelled  # one prompt x seed
    assert grids[0].tobytes() != grids[8].tobytes()  # the weights moved

    # one point per step, though steps after a checkpoint were trained (and logged) twice
    curve_straight = _loss_curve(tmp_path, straight["output"])
    curve_resumed = _loss_curve(tmp_path, resumed["output"])
    assert sorted(curve_resumed) == list(range(8))
    assert curve_resumed == curve_straight


@pytest.mark.parametrize("leftover", [".step=00000009.ckpt.abc.tmp", "step=00000009.ckpt.tmp"])
def test_half_written_checkpoint_is_never_picked(tmp_path, leftover):
    from easel.models.dreambooth.training import last_complete_checkpoint

    (tmp_path / "step=00000004.ckpt").write_bytes(b"x")
    (tmp_path / leftover).write_bytes(b"half")
    assert last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "step=00000004.ckpt")


CHECKPOINT_ROUND_TRIP = textwrap.dedent("""
    import resource, sys, torch
    from easel.models.checkpoint_io import AtomicCheckpointIO

    def resident_mb(kind):  # from /proc/self/status
        with open("/proc/self/status") as f:
            return int(next(x for x in f if x.startswith(kind + ":")).split()[1]) / 1024

    def peak_mb():  # peak to peak: a library page evicted and read back cannot count
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    state = {f"w{i}": torch.full((2**24,), float(i)) for i in range(4)}
    before = peak_mb()
    AtomicCheckpointIO().save_checkpoint({"state_dict": state}, sys.argv[1])
    saving = peak_mb() - before
    before = resident_mb("RssAnon")
    loaded = AtomicCheckpointIO().load_checkpoint(sys.argv[1])["state_dict"]
    for name, tensor in state.items():  # as a resume copies it into the model
        tensor.copy_(loaded[name])
    print(saving, resident_mb("RssAnon") - before)
""")


def test_checkpoints_take_no_second_copy_of_the_state_in_memory(tmp_path):
    """Lightning's writer would hold the serialised checkpoint in memory, its reader all of
    it before the copy into the model (measured: +1 GiB each for a 1 GiB checkpoint,
    bench/checkpoint_io.py); easel streams the write and memory-maps the read."""
    path = tmp_path / "step=00000001.ckpt"
    done = subprocess.run(
        [sys.executable, "-c", CHECKPOINT_ROUND_TRIP, str(path)],
        capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": os.getcwd()},
    )  # fmt: skip
    saving_mb, loading_mb = map(float, done.stdout.split()[-2:])
    assert saving_mb < 128, f"saving a 256 MiB checkpoint took {saving_mb:.0f} MiB more memory"
    assert loading_mb < 128, f"loading a 256 MiB checkpoint took {loading_mb:.0f} MiB more"
    state = torch.load(path, weights_only=True)["state_dict"]
    assert [float(state[f"w{i}"][-1]) for i in range(4)] == [0.0, 1.0, 2.0, 3.0]
    assert os.listdir(tmp_path) == [path.name]  # no temporary left beside it


def test_a_checkpoint_that_fails_to_serialise_leaves_nothing(tmp_path):
    from easel.models.checkpoint_io import AtomicCheckpointIO

    path = tmp_path / "step=00000002.ckpt"
    with pytest.raises(TypeError, match="pickle"):
        AtomicCheckpointIO().save_checkpoint({"state": threading.Lock()}, path)
    assert os.listdir(tmp_path) == []

