"""A large manifest's validation and planning, stage by stage: time and peak memory, an
earlier easel beside this one (issue 30, item 4). Nothing of an output is read (a first
run's planning).

    python -m bench.bench_manifest                       # 1,000,000 rows, one image each
    python -m bench.bench_manifest --baseline ''         # this easel only

The manifest (tiny-shapes rows: id, prompt, seed) is written to a local temporary folder;
each easel plans it in its own process, so its peak memory (`ru_maxrss`) is the planning's
own plus its imports: read (`read_manifest`), validate (`validate_manifest`: one `RowJob`
a row), plan (`build_plan`: request keys, batches). `--smoke`: 2,000 rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from bench import harness
from bench.bench_scale import argparse_hidden, baseline_tree, inputs


def write(path: str, rows: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": [f"r{i:07d}" for i in range(rows)],
                             "prompt": [f"a red circle number {i}" for i in range(rows)],
                             "seed": list(range(rows))}), path)  # fmt: skip


def stages(path: str) -> dict:
    """In a child (whatever easel `PYTHONPATH` names first): each stage timed once, its
    modules imported before the clock starts."""
    from easel.data import manifest
    from easel.data.batching import build_plan
    from easel.models.engine.sweep import _facts_for

    sweep = inputs(path, tempfile.mkdtemp())
    figures = {"imports_mb": harness.peak_memory_mb()}
    clock = time.perf_counter()
    table = manifest.read_manifest(path)
    figures["read_s"], clock = time.perf_counter() - clock, time.perf_counter()
    jobs, failures = manifest.validate_manifest(table, sweep.defaults, [])
    figures["validate_s"], clock = time.perf_counter() - clock, time.perf_counter()
    plan = build_plan(jobs, failures, _facts_for(sweep), sweep.batch_size, set())
    figures["plan_s"] = time.perf_counter() - clock
    figures.update(images=plan.pending_images, peak_mb=harness.peak_memory_mb())
    return figures


def child(path: str, tree: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([tree, str(harness.ROOT)])}  # that easel first
    done = subprocess.run([sys.executable, "-m", "bench.bench_manifest", "--child", path],
                          capture_output=True, text=True, env=env, cwd=tree)  # fmt: skip
    lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    if done.returncode or not lines:
        sys.exit(f"planning ({tree}) failed:\n{done.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--baseline", default="67d01c9", help="an earlier easel ('': none)")
    parser.add_argument("--child", help=argparse_hidden())
    args = parser.parse_args()
    if args.child:
        return harness.report(stages(args.child))
    rows = 2000 if args.smoke else args.rows
    results = harness.Results("bench_manifest", args)
    results.parameters.update(rows=rows, baseline=args.baseline)
    with tempfile.TemporaryDirectory(prefix="easel-manifest-") as work:
        path = os.path.join(work, "manifest.parquet")
        write(path, rows)
        trees = [("", str(harness.ROOT))]
        if args.baseline:
            trees.insert(0, ("before_", baseline_tree(args.baseline, work)))
        for prefix, tree in trees:
            figures = child(path, tree)
            print(f"{prefix or 'this '}easel: {figures}", flush=True)
            figures["total_s"] = figures["read_s"] + figures["validate_s"] + figures["plan_s"]
            results.parameters[f"{prefix}images"] = figures.pop("images")
            results.add_figures(figures, prefix)
    results.write()


if __name__ == "__main__":
    main()
