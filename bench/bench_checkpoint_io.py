"""Host memory and time to write one checkpoint: Lightning's TorchCheckpointIO against
easel's AtomicCheckpointIO (streamed to a temporary file, fsynced, renamed).

    python bench/bench_checkpoint_io.py --gb 2

The checkpoint is a dict of float32 tensors of that total size (a stand-in for weights and
AdamW state). Each writer runs in its own process; "extra" is the peak resident memory
during the save minus the resident memory just before it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

WRITERS = ("lightning", "easel")


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def measure(writer: str, gigabytes: float, folder: str) -> dict:
    import torch
    from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

    from easel.models.dreambooth.training import AtomicCheckpointIO

    per_tensor = 64 * 2**20 // 4  # 64 MiB tensors
    count = max(1, round(gigabytes * 2**30 / (per_tensor * 4)))
    checkpoint = {"state_dict": {f"w{i}": torch.ones(per_tensor) for i in range(count)}}
    io = TorchCheckpointIO() if writer == "lightning" else AtomicCheckpointIO()
    path = os.path.join(folder, f"{writer}.ckpt")
    before = _rss_mb()
    started = time.perf_counter()
    io.save_checkpoint(checkpoint, path)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    size = os.path.getsize(path) / 2**20
    os.remove(path)
    return {
        "writer": writer,
        "checkpoint_mb": round(size),
        "extra_host_memory_mb": round(peak - before),
        "seconds": round(seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0, help="checkpoint size in GiB")
    parser.add_argument("--folder", default=None, help="where to write (default: a temp dir)")
    parser.add_argument("--writer", choices=WRITERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = args.folder or tempfile.mkdtemp(prefix="bench-ckpt-")
    if args.writer:
        print("RESULT " + json.dumps(measure(args.writer, args.gb, folder)))
        return
    rows = []
    for writer in WRITERS:
        command = [sys.executable, __file__, "--gb", str(args.gb), "--folder", folder]
        done = subprocess.run(
            [*command, "--writer", writer], capture_output=True, text=True, check=True
        )
        line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
        rows.append(json.loads(line[len("RESULT ") :]))
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
