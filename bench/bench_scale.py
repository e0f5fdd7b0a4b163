"""A large sweep's bookkeeping on an object store: planning, progress and results, today's
code against this one, on the state of a finished sweep (issue 30).

    python -m bench.bench_scale                              # 16,384 images, 20 ms a request
    python -m bench.bench_scale --images 1000000             # the issue's size (hours, GBs)
    python -m bench.bench_scale --baseline d2612de           # "today": easel at that commit

A local S3 server (moto, in its own process) serves two ports over one store: a direct one
to fabricate the state, and one that waits `--latency-ms` before answering each request, so
that sequential and concurrent reads differ as on a real store. The state: a manifest of
`--images` rows (tiny-shapes, one image each), every image as a small PNG, one record shard
per batch of `--batch` (as a finished sweep leaves them), a tally per shard run. Each figure
is measured in its own process (its peak memory is that process's), through the slow port:

1. today's code (`--baseline`, extracted with `git archive`): a rerun's planning
   (`done_slots`), the parent's first progress poll (every record read), `results.parquet`
   written (`publish_results`);
2. this code on the same state: a rerun's planning (which compacts the record shards it
   finds), the next rerun's planning, one of `--shards` shards' planning, the parent's
   progress poll, `results.parquet` written;
3. the manifest's validation and planning alone (no output read), for scale.
`--smoke`: 256 images, 5 ms.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from bench import harness

BUCKET = "easel-scale"
OUT = f"s3://{BUCKET}/out"
MANIFEST = f"s3://{BUCKET}/manifest.parquet"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
               "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
UPLOAD_CHUNK = 2000  # objects put at once while fabricating


def serve(latency_ms: float) -> None:
    """In the server process: one moto store behind a direct port and a delayed one; prints
    "PORTS direct delayed", then serves until killed."""
    import logging
    import threading

    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    app = DomainDispatcherApplication(create_backend_app)

    def delayed(environ, start_response):
        time.sleep(latency_ms / 1000)
        return app(environ, start_response)

    servers = [make_server("127.0.0.1", 0, a, threaded=True) for a in (app, delayed)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("PORTS", *(s.server_port for s in servers), flush=True)
    threading.Event().wait()


def start_server(latency_ms: float) -> tuple[subprocess.Popen, str, str]:
    process = subprocess.Popen([sys.executable, "-m", "bench.bench_scale", "--serve",
                                str(latency_ms)], stdout=subprocess.PIPE, text=True,
                               cwd=harness.ROOT)  # fmt: skip
    line = process.stdout.readline().split()
    if not line or line[0] != "PORTS":
        process.kill()
        sys.exit(f"the S3 server did not start: {line}")
    return process, f"http://127.0.0.1:{line[1]}", f"http://127.0.0.1:{line[2]}"


def inputs(manifest: str, out: str):
    from easel.data.manifest import SweepDefaults
    from easel.models.engine.sweep import SweepInputs

    defaults = SweepDefaults(model="tiny-shapes", guidance_scale=7.5, num_inference_steps=2,
                             max_pixels=4096 * 4096)  # fmt: skip
    return SweepInputs(manifest=manifest, out=out, defaults=defaults, input_roots=(),
                       batch_size=8, device="cpu", dtype=None, trust_pickle=False)  # fmt: skip


def fabricate(images: int, batch: int, shards: int) -> None:
    """The state of a finished sweep of `images` rows under `OUT` (direct port)."""
    from dataclasses import asdict

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from easel.data import records, results, storage
    from easel.data.batching import shard_of
    from easel.models.engine.sweep import plan_sweep

    fs = storage.filesystem(OUT)[0]
    fs.mkdir(BUCKET)
    rows = pa.table({"id": [f"r{i:07d}" for i in range(images)],
                     "prompt": [f"a red circle number {i}" for i in range(images)],
                     "seed": list(range(images))})  # fmt: skip
    storage.write_parquet_atomic(MANIFEST, rows)
    _, plan = plan_sweep(inputs(MANIFEST, OUT), check_done=False)
    planned = [image for b in plan.batches for image in b.images]
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, format="PNG")
    png = buffer.getvalue()
    for start in range(0, len(planned), UPLOAD_CHUNK):
        chunk = planned[start : start + UPLOAD_CHUNK]
        fs.pipe({storage.path_of(results.image_uri(OUT, i.row_id, i.image_index)): png
                 for i in chunk})  # fmt: skip
    sha = hashlib.sha256(png).hexdigest()
    written_at, tallies, files = time.time() + 1, {}, {}
    for start in range(0, len(planned), batch):
        made = [_record(OUT, image, png, sha, written_at, shard_of(image, shards))
                for image in planned[start : start + batch]]  # fmt: skip
        table = pa.Table.from_pylist([asdict(r) for r in made], schema=records.RECORD_SCHEMA)
        sink = io.BytesIO()
        pq.write_table(table, sink)
        files[storage.path_of(storage.join(records.records_dir(OUT), f"b{start}.parquet"))] = (
            sink.getvalue()
        )
        for r in made:
            tallies.setdefault(r.flow_run_id, records.Tally(r.flow_run_id)).add([r])
        if len(files) >= UPLOAD_CHUNK // 4:
            fs.pipe(files)
            files = {}
    if files:
        fs.pipe(files)
    for tally in tallies.values():
        tally.write(OUT)


def _record(out, image, png, sha, written_at, shard):
    from easel.data import records, results

    return records.ImageRecord(
        id=image.row_id, request_key=image.request_key, image_index=image.image_index,
        image_uri=results.image_uri(out, image.row_id, image.image_index), status="ok",
        error=None, warning=None, seed=image.request.seed, model_ref="tiny-shapes",
        model_digest="d", scheduler="ddim", duration_s=0.01, image_sha256=sha,
        mlflow_run_id="m", flow_run_id=f"shard-{shard}", image_bytes=len(png),
        written_at=written_at,
    )  # fmt: skip


def measure(what: str, shards: int) -> dict:
    """In a measuring child (whatever easel `PYTHONPATH` names): time `what` once, its
    modules imported before the clock starts."""
    from easel.data import results
    from easel.data.batching import Shard
    from easel.models.engine.sweep import plan_sweep
    from easel.orchestration import shards as sharding

    def publish():
        table, plan = plan_sweep(inputs(MANIFEST, OUT), check_done=False)
        return results.publish_results(OUT, table.table, plan, 0).images_ok

    work = {
        "planning": lambda: len(results.done_slots(OUT)),
        "shard_planning": lambda: len(results.done_slots(OUT, Shard(0, shards))),
        "progress": lambda: _poll(sharding, {f"shard-{i}" for i in range(shards)}),
        "manifest": lambda: plan_sweep(inputs(MANIFEST, OUT), check_done=False)[1].pending_images,
        "results": publish,
    }
    if what not in work:
        raise SystemExit(f"--child {what!r}: not one of {sorted(work)}")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    count = work[what]()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "count": count, "peak_mb": peak, "imports_mb": before}


def _poll(shards, run_ids: set) -> int:
    """The sharded parent's progress poll: this easel's, or an older one's `RecordCounter`."""
    if hasattr(shards, "images_recorded"):
        return shards.images_recorded(OUT, run_ids)
    return shards.RecordCounter(OUT).images_by(run_ids)


def child(what: str, endpoint: str, shards: int, tree: str) -> dict:
    path = os.pathsep.join([tree, str(harness.ROOT)])  # that easel first
    env = {**os.environ, **CREDENTIALS, "FSSPEC_S3_ENDPOINT_URL": endpoint,
           "OMP_NUM_THREADS": "1", "PYTHONPATH": path}  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "bench.bench_scale", "--child", what,
                           "--shards", str(shards)], capture_output=True, text=True, env=env,
                          cwd=tree)  # fmt: skip
    lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    if done.returncode or not lines:
        sys.exit(f"{what} ({tree}) failed:\n{done.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def baseline_tree(commit: str, work: str) -> str:
    """easel at `commit`, extracted under `work` (its own package folder)."""
    tree = os.path.join(work, f"easel-{commit}")
    os.makedirs(tree)
    archive = subprocess.run(["git", "archive", commit, "easel"], cwd=harness.ROOT,
                             capture_output=True, check=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", tree], input=archive, check=True)
    return tree


def options():
    parser = harness.parser(__doc__)
    parser.add_argument("--images", type=int, default=16384, help="rows of the manifest")
    parser.add_argument("--batch", type=int, default=8, help="images per record shard")
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--latency-ms", type=float, default=20.0, help="added per request")
    parser.add_argument("--baseline", default="d2612de", help="today's easel ('': none)")
    parser.add_argument("--serve", type=float, help=argparse_hidden())
    parser.add_argument("--child", help=argparse_hidden())
    return parser


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


def main() -> None:
    args = options().parse_args()
    if args.serve is not None:
        return serve(args.serve)
    if args.child:
        print("RESULT " + json.dumps(measure(args.child, args.shards)), flush=True)
        return
    if args.smoke:
        args.images, args.latency_ms = 256, 5.0
    server, direct, delayed = start_server(args.latency_ms)
    work = tempfile.mkdtemp(prefix="easel-scale-")
    try:
        result = run(args, direct, delayed, work)
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)
    result.write()


def run(args, direct: str, delayed: str, work: str) -> harness.Results:
    os.environ.update(CREDENTIALS, FSSPEC_S3_ENDPOINT_URL=direct)
    import fsspec.config

    fsspec.config.conf.setdefault("s3", {})["endpoint_url"] = direct
    results = harness.Results("bench_scale", args)
    started = time.perf_counter()
    fabricate(args.images, args.batch, args.shards)
    results.parameters.update(images=args.images, batch=args.batch, shards=args.shards,
                              latency_ms=args.latency_ms, baseline=args.baseline,
                              record_shards=-(-args.images // args.batch),
                              fabricated_s=round(time.perf_counter() - started, 1))  # fmt: skip
    steps = []
    if args.baseline:
        tree = baseline_tree(args.baseline, work)
        steps += [("today_rerun_planning", "planning", tree),
                  ("today_progress_poll", "progress", tree),
                  ("today_results_written", "results", tree)]  # fmt: skip
    root = str(harness.ROOT)
    steps += [(name, what, root) for name, what in (
        ("first_rerun_planning", "planning"), ("rerun_planning", "planning"),
        ("shard_planning", "shard_planning"), ("progress_poll", "progress"),
        ("results_written", "results"), ("manifest_planning", "manifest"))]  # fmt: skip
    for name, what, tree in steps:
        figures = child(what, delayed, args.shards, tree)
        print(f"{name}: {figures}", flush=True)
        results.add(f"{name}_s", "s", figures["seconds"])
        results.add(f"{name}_peak_mb", "MiB", figures["peak_mb"])
        results.parameters[f"{name}_count"] = figures["count"]
    return results


if __name__ == "__main__":
    main()
