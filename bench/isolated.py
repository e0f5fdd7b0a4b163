"""What the benches share: each measurement runs in a process of its own (so peak memory is
its own), prints one `RESULT {json}` line, and the parent collects it."""

from __future__ import annotations

import json
import resource
import subprocess
import sys

import torch

_PREFIX = "RESULT "


def peak_memory_mb(device: str = "cpu") -> float:
    """Peak allocated GPU memory on CUDA, else this process's peak resident memory."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def report(result: dict) -> None:
    """In the child: hand `result` to the parent."""
    print(_PREFIX + json.dumps(result), flush=True)


def run(script: str, *args: str, label: str) -> dict:
    """In the parent: `python script args...` in a new process; the result it reported.
    Exits with the child's stderr tail, named by `label`, when it fails."""
    done = subprocess.run(
        [sys.executable, script, *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        sys.exit(f"{label} failed:\n{done.stderr[-4000:]}")
    line = next(x for x in done.stdout.splitlines() if x.startswith(_PREFIX))
    return json.loads(line[len(_PREFIX) :])
