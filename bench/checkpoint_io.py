"""Host memory and time to write and read back one checkpoint: Lightning's TorchCheckpointIO
against easel's AtomicCheckpointIO (streamed to a temporary file, fsynced, renamed; read
back memory-mapped).

    python -m bench.checkpoint_io --gb 2 [--repeats 3]

The checkpoint is a dict of float32 tensors of that total size (a stand-in for weights and
AdamW state). Each writer runs in its own process. Saving: "extra" is the peak resident
memory after the save minus the peak before it. Loading, as a resume does
(read, then copy into the live tensors): "extra" is the anonymous (not file-backed, so not
reclaimable) resident memory after the copy, the loaded checkpoint still held, minus before.
`--smoke`: a 64 MiB checkpoint.
"""

from __future__ import annotations

import os
import tempfile
import time

from bench import harness

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
    before = harness.peak_memory_mb()
    started = time.perf_counter()
    io.save_checkpoint(checkpoint, path)
    save_seconds = time.perf_counter() - started
    save_extra = harness.peak_memory_mb() - before

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
        "checkpoint_mb": size,
        "save_extra_host_memory_mb": save_extra,
        "save_s": save_seconds,
        "load_extra_anonymous_memory_mb": load_extra,
        "load_s": load_seconds,
    }


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--gb", type=float, default=1.0, help="checkpoint size in GiB")
    parser.add_argument("--folder", default=None, help="where to write (default: a temp dir)")
    parser.add_argument("--writer", choices=WRITERS, help=harness.argparse.SUPPRESS)
    args = parser.parse_args()
    gigabytes = 1 / 16 if args.smoke else args.gb
    folder = args.folder or tempfile.mkdtemp(prefix="bench-ckpt-")
    if args.writer:
        harness.report(measure(args.writer, gigabytes, folder))
        return
    results = harness.Results("checkpoint_io", args)
    results.parameters["checkpoint_gib"] = gigabytes
    for writer in WRITERS:
        arguments = ["--gb", str(gigabytes), "--folder", folder, "--writer", writer]
        runs = [harness.isolated("bench.checkpoint_io", *arguments, label=writer)
                for _ in range(harness.repeats(args, 1))]  # fmt: skip
        for key in runs[0]:
            results.add(f"{writer}: {key}", harness.unit_of(key), [r[key] for r in runs])
    results.write()


if __name__ == "__main__":
    main()
