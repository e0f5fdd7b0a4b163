"""`easel sweep` as a user runs it: exit codes, messages, and a kill -9 in the middle."""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time

import mlflow
import pytest
from PIL import Image
from sweep_helpers import STEPS, easel, read_results, write_manifest

from easel.cli import main
from easel.data.limits import SCHEDULER_NAMES
from easel.data.results import read_records
from easel.watchdog import KILLED_REASON, descendants, started

pytestmark = pytest.mark.usefixtures("prefect_server")


def assert_refused(returncode, stderr, out, *words):
    assert returncode == 2, stderr
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert not os.path.exists(os.path.join(out, "images"))


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("missing", ["does not exist"]),
        ("not-parquet", ["not a readable Parquet"]),
        ("no-prompt", ["`prompt`"]),
        ("duplicate-ids", ["duplicate", "'twin'"]),
        ("bad-config", ["`--batch-size`", "0"]),  # named as the user gave it
        ("bad-shards", ["`--shards`", "0", "'auto'"]),
        ("unknown-scheduler", ["`scheduler`", "'magic'", *SCHEDULER_NAMES]),
        ("out-is-a-file", ["`out` must be a folder", "is a file"]),
        ("unknown-default-model", ["`model`", "'nosuch'"]),
        ("unknown-placeholder", ["`out`", "{bogus}", "{scheduled_date}"]),
        ("out-under-a-file", ["`out`", "cannot be a folder", "is a file"]),
    ],
)
def test_invalid_manifest_or_invocation_exits_2(tmp_path, capsys, kind, words):
    manifest, out, extra = tmp_path / "m.parquet", str(tmp_path / "out"), []
    if kind == "not-parquet":
        manifest.write_text("id,prompt\na,b\n")
    elif kind == "no-prompt":
        write_manifest(manifest, [{"id": "a", "caption": "a red circle"}])
    elif kind == "duplicate-ids":
        write_manifest(manifest, [{"id": "twin", "prompt": "a"}, {"id": "twin", "prompt": "b"}])
    elif kind == "bad-config":
        write_manifest(manifest, [{"id": "a", "prompt": "a"}])
        extra = ["--batch-size", "0"]
    elif kind == "bad-shards":
        write_manifest(manifest, [{"id": "a", "prompt": "a"}])
        extra = ["--shards", "0"]
    elif kind == "unknown-scheduler":  # a sweep config's default for every row: refused whole
        write_manifest(manifest, [{"id": "a", "prompt": "a"}])
        (tmp_path / "sweep.yaml").write_text("scheduler: magic\n")
        extra = ["--config", str(tmp_path / "sweep.yaml")]
    elif kind == "unknown-default-model":  # rows without a `model` of their own use it
        write_manifest(manifest, [{"id": "a", "prompt": "a", "model": "tiny-shapes"},
                                  {"id": "b", "prompt": "b"}])  # fmt: skip
        extra = ["--model", "nosuch"]
    elif kind == "unknown-placeholder":
        write_manifest(manifest, [{"id": "a", "prompt": "a"}])
        out = str(tmp_path / "o" / "{bogus}")
    elif kind.startswith("out-"):
        write_manifest(manifest, [{"id": "a", "prompt": "a"}])
        (tmp_path / "afile").write_text("")
        out = str(tmp_path / "afile") + ("/sub" if kind == "out-under-a-file" else "")
    returncode = main(["sweep", str(manifest), "--out", out, *extra])
    assert_refused(returncode, capsys.readouterr().err, out, *words)


@pytest.mark.parametrize(
    "command", [["priors", "--class-prompt", "a star", "--num", "2", "--out"], ["eval", "--out"],
                ["quickstart", "--out"]],
)  # fmt: skip
def test_every_command_refuses_a_file_for_its_output_folder(tmp_path, capsys, command):
    (tmp_path / "afile").write_text("")
    returncode = main([*command, str(tmp_path / "afile")])
    assert_refused(returncode, capsys.readouterr().err, str(tmp_path), "`", "is a file")


def test_a_relative_output_folder_is_recorded_from_the_root(tmp_path, monkeypatch, capsys):
    """`--out renders`: the results say where the images are from anywhere."""
    monkeypatch.chdir(tmp_path)
    write_manifest(tmp_path / "m.parquet", [{"id": "a", "prompt": "a red circle",
                                             "num_inference_steps": STEPS}])  # fmt: skip
    assert main(["sweep", "m.parquet", "--out", "renders"]) == 0
    (row,) = read_results(tmp_path / "renders")
    assert row["image_uri"] == str(tmp_path / "renders" / "images" / "a" / "0.png")


def test_an_interrupt_ends_in_one_line_and_code_130(monkeypatch, capsys):
    from easel import cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "command_function", lambda run: interrupted)
    assert cli.main(["sweep", "m.parquet", "--out", "out"]) == 130
    assert capsys.readouterr().err == "easel sweep: interrupted\n"


def test_exit_2_from_a_real_process(tmp_path):
    manifest, out = tmp_path / "m.parquet", str(tmp_path / "out")
    manifest.write_bytes(b"PAR1 broken")
    result = easel("sweep", str(manifest), "--out", out)
    assert_refused(result.returncode, result.stderr, out, "not a readable Parquet")


def test_a_bad_row_exits_1_and_the_rest_is_done(tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", [
        {"id": "fine", "prompt": "a red circle", "num_inference_steps": STEPS},
        {"id": "bad", "prompt": "a red circle", "width": 65},
    ])  # fmt: skip
    out = str(tmp_path / "out")
    result = easel("sweep", manifest, "--out", out)
    assert result.returncode == 1, result.stderr
    statuses = {r["id"]: (r["status"], r["error"]) for r in read_results(out)}
    assert statuses["fine"] == ("ok", None)
    assert statuses["bad"][0] == "failed" and "`width`" in statuses["bad"][1]
    assert "results:" in result.stdout
    assert "failed: 1 images in 1 rows" in result.stderr  # exit 1 says which row and why
    assert "  bad: `width` must be divisible by 8 but is 65" in result.stderr
    logged = result.stdout + result.stderr  # one batch: its progress line has a rate too
    assert re.search(r"sweep: 1/1 images \(100%\), [0-9.]+ images/s", logged), logged


@pytest.mark.slow
def test_kill_9_then_rerun_does_each_image_exactly_once(tmp_path):
    rows = [{"id": f"r{i:02d}", "prompt": f"a red circle number {i}", "seed": i,
             "num_inference_steps": 20} for i in range(16)]  # fmt: skip
    manifest, out = write_manifest(tmp_path / "m.parquet", rows), str(tmp_path / "out")
    command = [sys.executable, "-m", "easel.cli", "sweep", manifest, "--out", out,
               "--batch-size", "1"]  # fmt: skip
    shell = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # a user's shell
    process = subprocess.Popen(command, env=shell, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    records = os.path.join(out, ".easel", "records")
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        shards = os.listdir(records) if os.path.isdir(records) else []
        if sum(not name.startswith(".") for name in shards) >= 4:  # not a shard being written
            break
        time.sleep(0.05)
    assert process.poll() is None, "the sweep finished before it could be killed"
    started_by_it = {pid: started(pid) for pid in descendants(process.pid)}
    assert len(started_by_it) >= 2  # its watchdog, Prefect's temporary server
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.time() + 15  # nothing it started outlives it: the watchdog stops them
    while any(started(pid) == start for pid, start in started_by_it.items()):
        assert time.time() < deadline, {p: started(p) for p in started_by_it}
        time.sleep(0.2)
    assert not os.path.exists(os.path.join(out, "results.parquet"))
    recorded = {r.id: r for r in read_records(out) if r.status == "ok"}
    assert len(recorded) >= 4
    stamps = {i: os.stat(r.image_uri).st_mtime_ns for i, r in recorded.items()}
    assert_only_whole_pngs(out)
    killed = next(iter(recorded.values())).mlflow_run_id  # its MLflow run: ended, not RUNNING
    client, deadline = mlflow.MlflowClient(), time.time() + 60
    while client.get_run(killed).info.status == "RUNNING":
        assert time.time() < deadline, "the killed command's MLflow run stays RUNNING"
        time.sleep(0.5)
    assert client.get_run(killed).info.status == "KILLED"
    assert client.get_run(killed).data.tags["easel.ended_by"] == KILLED_REASON

    result = easel("sweep", manifest, "--out", out, "--batch-size", "1")
    assert result.returncode == 0, result.stderr
    # a log, not a terminal: no progress bars nor escape codes; easel's own progress lines
    logged = result.stdout + result.stderr
    assert "\x1b[" not in logged and "\r" not in logged and "it/s]" not in logged, logged
    assert f"sweep: {16 - len(recorded)}/{16 - len(recorded)} images (100%)" in logged, logged
    results = read_results(out)
    assert sorted(r["id"] for r in results) == [row["id"] for row in rows]  # each exactly once
    assert all(r["status"] == "ok" for r in results)
    leftovers = [n for _, _, names in os.walk(out) for n in names if n.endswith(".tmp")]
    assert leftovers == []  # what the killed run was writing is cleaned up
    for row in results:  # what the killed run recorded was kept, not generated again
        if row["id"] in recorded:
            assert row["mlflow_run_id"] == recorded[row["id"]].mlflow_run_id
            assert os.stat(row["image_uri"]).st_mtime_ns == stamps[row["id"]]
    assert len({r["mlflow_run_id"] for r in results}) == 2
    assert {client.get_run(r["mlflow_run_id"]).info.status for r in results} == {
        "KILLED", "FINISHED"}  # fmt: skip
    assert_only_whole_pngs(out)


def assert_only_whole_pngs(out):
    """Every visible file under images/ is a complete PNG (temporary names are hidden)."""
    for folder, _, files in os.walk(os.path.join(out, "images")):
        for name in files:
            if name.startswith("."):
                continue
            with Image.open(os.path.join(folder, name)) as image:
                image.load()


HEAVY = ("torch", "prefect", "diffusers", "mlflow", "pytorch_lightning", "transformers")


@pytest.mark.parametrize("command", ["", "sweep", "priors", "dreambooth", "quickstart", "eval",
                                     "bootstrap"])  # fmt: skip
def test_help_answers_without_importing_a_model_library(command):
    """`easel --help` and `easel CMD --help` import no model or orchestration library (it
    took 8.5 s when each command's module was imported to build its parser)."""
    argv = [command, "--help"] if command else ["--help"]
    check = "\n".join([
        "import sys", "from easel.cli import main", "try:", f"    main({argv!r})",
        "except SystemExit:", "    pass",
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))",
    ])  # fmt: skip
    found = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip().splitlines()[-1] == "[]", found.stdout
    assert "usage: easel" in found.stdout


def test_every_command_runs_a_function_of_its_flow():
    from easel.cli import build_parser, command_function

    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, sub in subparsers.choices.items():
        run = sub.get_default("run")
        assert run.startswith(("easel.cli.", "easel.flows.")), name
        assert callable(command_function(run)), name


@pytest.mark.slow
def test_two_sweeps_at_once_into_one_local_folder_generate_each_image_once(tmp_path):
    """Two processes, one manifest, one output on a local disk, a Prefect server between
    them: one holds the output's shard and generates; the other waits, then finds it done.
    Then a sharded run (shards run one after the other here) adds a second manifest's rows
    to the same results without losing the first's."""
    import pyarrow.parquet as pq

    from easel.data.results import read_records

    first = write_manifest(tmp_path / "a.parquet", [
        {"id": f"a{i}", "prompt": "a red circle", "num_inference_steps": 8, "num_images": 2}
        for i in range(4)
    ])  # fmt: skip
    out = str(tmp_path / "out")
    command = [sys.executable, "-m", "easel.cli", "sweep", first, "--out", out,
               "--batch-size", "2"]  # fmt: skip
    both = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]  # fmt: skip
    outputs = [p.communicate(timeout=300) for p in both]
    assert [p.returncode for p in both] == [0, 0], outputs
    generated = sorted(int(o.split("ok, 0 failed, ")[1].split(" generated")[0]) for o, _ in outputs)
    assert generated == [0, 8], outputs  # one generated all 8, the other none
    assert len({r.flow_run_id for r in read_records(out)}) == 1

    second = write_manifest(tmp_path / "b.parquet", [
        {"id": f"b{i}", "prompt": "a blue square", "num_inference_steps": 2} for i in range(4)
    ])  # fmt: skip
    sharded = easel("sweep", second, "--out", out, "--shards", "3")
    assert sharded.returncode == 0, sharded.stderr
    results = pq.read_table(os.path.join(out, "results.parquet")).to_pylist()
    assert sorted(r["id"] for r in results) == sorted([f"a{i}" for i in range(4)] * 2 +
                                                      [f"b{i}" for i in range(4)])  # fmt: skip
    b_runs = {r["flow_run_id"] for r in results if r["id"].startswith("b")}
    assert 1 < len(b_runs) <= 3  # the shards' own flow runs
