"""Host memory and time to write and read back one checkpoint: Lightning's TorchCheckpointIO
against easel's AtomicCheckpointIO (streamed to a temporary file, fsynced, renamed; read
back memory-mapped).

    python bench/bench_checkpoint_io.py --gb 2

The checkpoint is a dict of float32 tensors of that total size (a stand-in for weights and
AdamW state). Each writer runs in its own process. Saving: "extra" is the peak resident
memory after the save minus the peak before it. Loading, as a resume does
(read, then copy into the live tensors): "extra" is the anonymous (not file-backed, so not
reclaimable) resident memory after the copy, the loaded checkpoint still held, minus before.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import isolated  # noqa: E402 (beside this file)

WRITERS = ("lightning", "easel")


def _anonymous_mb() -> float:
    """Resident memory that is not file-backed (/proc/self/status RssAnon)."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("RssAnon:"))
    return int(line.split()[1]) / 1024


def measure(writer: str, gigabytes: float, folder: str) -> dict:
    import torch
    from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

    from easel.models.checkpoint_io import AtomicCheckpointIO

    per_tensor = 64 * 2**20 // 4  # 64 MiB tensors
    count = max(1, round(gigabytes * 2**30 / (per_tensor * 4)))
    checkpoint = {"state_dict": {f"w{i}": torch.ones(per_tensor) for i in range(count)}}
    io = TorchCheckpointIO() if writer == "lightning" else AtomicCheckpointIO()
    path = os.path.join(folder, f"{writer}.ckpt")
    # peak to peak, not from the current figure: a library page evicted under memory
    # pressure and read back during the save would count otherwise
    before = isolated.peak_memory_mb()
    started = time.perf_counter()
    io.save_checkpoint(checkpoint, path)
    save_seconds = time.perf_counter() - started
    save_extra = isolated.peak_memory_mb() - before

    before = _anonymous_mb()
    started = time.perf_counter()
    loaded = io.load_checkpoint(path)
    for name, tensor in checkpoint["state_dict"].items():  # as load_state_dict does
        tensor.copy_(loaded["state_dict"][name])
    load_seconds = time.perf_counter() - started
    load_extra = _anonymous_mb() - before
    size = os.path.getsize(path) / 2**20
    del loaded
    os.remove(path)
    return {
        "writer": writer,
        "checkpoint_mb": round(size),
        "save_extra_host_memory_mb": round(save_extra),
        "save_seconds": round(save_seconds, 2),
        "load_extra_anonymous_memory_mb": round(load_extra),
        "load_seconds": round(load_seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0, help="checkpoint size in GiB")
    parser.add_argument("--folder", default=None, help="where to write (default: a temp dir)")
    parser.add_argument("--writer", choices=WRITERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = args.folder or tempfile.mkdtemp(prefix="bench-ckpt-")
    if args.writer:
        isolated.report(measure(args.writer, args.gb, folder))
        return
    arguments = ["--gb", str(args.gb), "--folder", folder]
    rows = [isolated.run(__file__, *arguments, "--writer", w, label=w) for w in WRITERS]
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
