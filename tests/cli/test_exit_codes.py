"""Every exit code of the `easel` command (README's table), each as one line on stderr with no
traceback unless `--debug`: 2 invalid input (a model folder missing its scheduler config, a
poisoned checkpoint), 3 the infrastructure (MLflow or Prefect unreachable at start, a disk
full, a connection lost), 1 failed rows or an error easel does not expect, 130 ^C."""

from __future__ import annotations

import errno
import re
import shutil
import socket
import time
from pathlib import Path

import httpx
import pytest
from sweep_helpers import write_manifest

from easel import cli, errors, servers
from easel.models.engine.references import EMBEDDED_MODELS

README = Path(__file__).resolve().parents[2] / "README.md"


def closed_port_url() -> str:
    """An http URL on loopback where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def raising(monkeypatch, error: BaseException) -> None:
    """The command's function raises `error` (as a failure deep in its work would)."""

    def command(args):
        raise error

    monkeypatch.setattr(cli, "command_function", lambda run: command)


def test_the_readme_and_the_help_list_every_code(capsys):
    rows = re.findall(r"^\| (\d+) \| (.+) \|$", README.read_text(), re.MULTILINE)
    assert [int(code) for code, _ in rows] == [0, 1, 2, 3, 130]
    assert "unreachable" in dict(rows)["3"]
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert all(f"{code} " in help_text for code in ("0", "1", "2", "3", "130"))
    assert "--debug" in help_text


def test_mlflow_unreachable_at_start_exits_3_within_30_s_naming_it(monkeypatch, capsys):
    uri = closed_port_url()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    started = time.monotonic()
    assert cli.main(["sweep", "m.parquet", "--out", "out"]) == errors.INFRASTRUCTURE
    assert time.monotonic() - started < 30
    line = one_line(capsys.readouterr().err)
    assert uri in line and "MLFLOW_TRACKING_URI" in line, line


def test_prefect_unreachable_at_start_exits_3_naming_it(monkeypatch, capsys):
    url = closed_port_url() + "/api"
    monkeypatch.setenv("PREFECT_API_URL", url)
    monkeypatch.setattr(servers, "WAIT_SECONDS", 2.0)
    assert cli.main(["priors", "--class-prompt", "a dog", "--num", "1", "--out", "x"]) == 3
    line = one_line(capsys.readouterr().err)
    assert url in line and "PREFECT_API_URL" in line, line


def test_a_command_that_never_tracks_is_not_held_back_by_mlflow(monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", closed_port_url())
    monkeypatch.setattr(cli, "command_function", lambda run: lambda args: 0)
    assert cli.main(["automations"]) == errors.DONE


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (OSError(errno.ENOSPC, "No space left on device", "/data/out/images/a/0.png"),
         ["disk full", "/data/out/images/a/0.png"]),
        (RuntimeError("writing the record failed"), []),  # a library's error over ENOSPC
        (httpx.ConnectError("[Errno 111] Connection refused"), ["did not answer", "refused"]),
    ],
)  # fmt: skip
def test_infrastructure_failures_exit_3_in_one_line(monkeypatch, capsys, error, words):
    if not words:
        error.__cause__ = OSError(errno.ENOSPC, "No space left on device", "/data/x")
        words = ["disk full", "/data/x"]
    raising(monkeypatch, error)
    assert cli.main(["sweep", "m.parquet", "--out", "out"]) == errors.INFRASTRUCTURE
    line = one_line(capsys.readouterr().err)
    assert line.startswith("easel sweep: error: ") and all(w in line for w in words), line


def test_mlflow_lost_mid_run_exits_3(monkeypatch, capsys):
    """MLflow's client wraps the connection error it gave up on (raised while handling it)."""
    import requests
    from mlflow.exceptions import MlflowException

    def command(args):
        try:
            raise requests.exceptions.ConnectionError("Max retries exceeded with url: /api/2.0")
        except requests.exceptions.ConnectionError as error:
            raise MlflowException(f"API request to http://mlflow:5000 failed with {error}")  # noqa: B904

    monkeypatch.setattr(cli, "command_function", lambda run: command)
    assert cli.main(["sweep", "m.parquet", "--out", "out"]) == errors.INFRASTRUCTURE
    line = one_line(capsys.readouterr().err)
    assert "did not answer" in line and "http://mlflow:5000" in line, line


def test_an_unexpected_error_is_one_line_and_debug_shows_its_traceback(monkeypatch, capsys):
    raising(monkeypatch, RuntimeError("something easel did not foresee"))
    assert cli.main(["sweep", "m.parquet", "--out", "out"]) == errors.ROWS_FAILED
    line = one_line(capsys.readouterr().err)
    assert "RuntimeError: something easel did not foresee" in line and "--debug" in line
    for argv in (["--debug", "sweep", "m.parquet", "--out", "o"],
                 ["sweep", "m.parquet", "--out", "o", "--debug"]):  # fmt: skip
        assert cli.main(argv) == errors.ROWS_FAILED
        err = capsys.readouterr().err
        assert "Traceback" in err and "something easel did not foresee" in err


def test_invalid_input_exits_2_and_an_interrupt_130(monkeypatch, capsys):
    raising(monkeypatch, errors.InvalidInput("`out` 'x' is a file"))
    assert cli.main(["sweep", "m.parquet", "--out", "x"]) == errors.INVALID
    assert one_line(capsys.readouterr().err) == "easel sweep: error: `out` 'x' is a file"
    raising(monkeypatch, KeyboardInterrupt())
    assert cli.main(["sweep", "m.parquet", "--out", "x"]) == errors.INTERRUPTED
    assert one_line(capsys.readouterr().err) == "easel sweep: interrupted"


def test_a_model_folder_without_its_scheduler_config_exits_2(tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(EMBEDDED_MODELS["tiny-shapes"], model)
    (model / "scheduler" / "scheduler_config.json").unlink()
    manifest = write_manifest(tmp_path / "m.parquet", [{"id": "a", "prompt": "a red circle"}])
    out = tmp_path / "out"
    assert cli.main(["sweep", manifest, "--out", str(out), "--model", str(model)]) == 2
    line = one_line(capsys.readouterr().err)
    assert "scheduler/scheduler_config.json" in line and str(model) in line, line
    assert not out.exists()


class Hostile:
    """Unpickling this would run a command."""

    def __reduce__(self):
        import os

        return (os.system, ("touch pwned",))


@pytest.mark.usefixtures("prefect_server")
def test_a_poisoned_resume_checkpoint_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    import torch
    import yaml
    from dreambooth_fixtures import make_workspace, tiny_config

    monkeypatch.chdir(tmp_path)
    output = tmp_path / "dreambooth"
    (output / "checkpoints").mkdir(parents=True)
    torch.save({"global_step": 2, "state_dict": Hostile()},
               output / "checkpoints" / "step=00000002.ckpt")  # fmt: skip
    config = tmp_path / "config.yaml"
    workspace = make_workspace(str(tmp_path / "ws"))
    config.write_text(yaml.safe_dump(tiny_config(workspace, str(output), max_steps=2)))
    assert cli.main(["dreambooth", "--config", str(config)]) == errors.INVALID
    line = one_line(capsys.readouterr().err)
    assert "step=00000002.ckpt" in line and "posix.system" in line, line
    assert "weights_only" not in line and not (tmp_path / "pwned").exists()


FULL_DISK = """
import errno, sys
from easel.data import results
def full(out, *args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", out + "/results.parquet")
results.publish_results = full
from easel.cli import main
sys.exit(main())
"""


@pytest.mark.usefixtures("prefect_server")
def test_a_disk_full_inside_the_flow_is_one_line_without_prefect_s_tracebacks(tmp_path):
    """A real `easel sweep` process whose results cannot be written (ENOSPC, raised where
    the disk would raise it, inside a Prefect task): exit 3, and neither easel nor Prefect's
    log of the failed task and flow prints a traceback."""
    import subprocess
    import sys

    manifest = write_manifest(tmp_path / "m.parquet", [{"id": "a", "prompt": "a red circle",
                                                        "num_inference_steps": 2}])  # fmt: skip
    out = str(tmp_path / "out")
    done = subprocess.run([sys.executable, "-c", FULL_DISK, "sweep", manifest, "--out", out],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == errors.INFRASTRUCTURE, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert f"easel sweep: error: disk full: {out}/results.parquet" in done.stderr.splitlines()
