"""The benchmarks: each script runs at its `--smoke` size and writes one result in the
harness's format, and bench/README.md's table is what bench/render.py makes of the
committed results."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import harness, render

ROOT = Path(__file__).resolve().parents[1]
TIME_UNITS = {"s", "ms"}
# script -> extra arguments; the fast tier runs one (the sweep engine's: the harness end to
# end); the others (several processes importing diffusers, a Prefect server, training) are
# marked slow so the fast tier stays under 3 minutes
SCRIPTS = {"sweep_engine": []}
SLOW_SCRIPTS = {
    "checkpoint_io": [],
    "fast_path": [],
    "lora": [],
    "activation_memory": [],
    "mlflow_logging": [],
    "dreambooth": [],
    "dreambooth_steps": [],
    "sweep": [],
    "cli": [],
    "shards": [],
    "bench_scale": [],
    "bench_manifest": [],
    "bootstrap": ["{tmp}/bootstrap", "--no-eval"],
    "dreambooth_quality": ["--out", "{tmp}/quality"],
    "quickstart_subject": ["--out", "{tmp}/quickstart"],
}
CASES = [*SCRIPTS.items(), *(pytest.param(k, v, marks=pytest.mark.slow)
                             for k, v in SLOW_SCRIPTS.items())]  # fmt: skip


def check_result(result: dict, name: str) -> None:
    assert result["benchmark"] == name and result["smoke"] is True
    assert result["source"] == "measured"
    assert set(result["machine"]) >= {"cpu_count", "torch", "device", "date"}
    assert result["measurements"], "no measurement"
    for m in result["measurements"]:
        values = [*m["repeats"], m["median"], m["min"]]
        assert all(math.isfinite(v) for v in values), m
        assert m["min"] == min(m["repeats"]) and m["min"] <= m["median"] <= max(m["repeats"]), m
        if m["unit"] in TIME_UNITS:
            assert m["min"] > 0, m


@pytest.mark.parametrize(("name", "extra"), CASES)
def test_each_bench_runs_at_smoke_size_and_writes_its_result(name, extra, tmp_path):
    arguments = [a.format(tmp=tmp_path) for a in extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", "--smoke", "--results", str(tmp_path / "r"),
         *arguments], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    check_result(json.loads((tmp_path / "r" / f"{name}.json").read_text()), name)


def test_every_bench_script_is_smoke_tested():
    scripts = {p.stem for p in (ROOT / "bench").glob("*.py")} - {"__init__", "harness", "render"}
    assert scripts == set(SCRIPTS) | set(SLOW_SCRIPTS)


def test_the_readme_table_is_what_render_makes_of_the_committed_results():
    written = render.README.read_text()
    assert written == render.rendered(written), "bench/README.md is stale: python -m bench.render"


def test_committed_results_are_full_runs_in_the_harness_format():
    for path in sorted(harness.RESULTS.glob("*.json")):
        result = json.loads(path.read_text())
        assert result["smoke"] is False, path.name
        assert result["source"] == "measured" or result["source"].startswith("carried from")
        for m in result["measurements"]:
            assert m["median"] == harness.measurement(m["name"], m["unit"], m["repeats"])["median"]


def test_a_measurement_names_itself_when_a_sample_is_not_finite():
    with pytest.raises(ValueError, match="'step'"):
        harness.measurement("step", "ms", [1.0, float("nan")])
    with pytest.raises(ValueError, match="'step'"):
        harness.measurement("step", "ms", [])


def test_units_follow_the_figure_names():
    assert [harness.unit_of(k) for k in ("a_ms", "b_s", "c_mb", "images_per_s", "n")] == [
        "ms", "s", "MiB", "/s", ""]  # fmt: skip


def test_render_needs_its_markers():
    with pytest.raises(ValueError, match="results:start"):
        render.rendered("# no markers\n")
