"""The one runner every bench script shares.

A script builds its options on `parser(__doc__)` (which adds `--smoke`, `--repeats`,
`--results`, `--label`, `--note`), measures, and hands each figure to a `Results`, which
writes one JSON file, `<results>/<name>[-<label>].json`:

    {"benchmark": str, "command": str, "smoke": bool, "source": "measured",
     "note": str, "machine": {"cpu_count", "torch", "python", "platform", "device", "date"},
     "parameters": {str: JSON value},
     "measurements": [{"name": str, "unit": str, "repeats": [float, ...],
                       "median": float, "min": float}, ...]}

A measurement that must not share a process with another (its peak memory, its compile
cache, its imports) runs through `isolated(module, args)`: `python -m <module> args` in a
child that hands back one dict with `report(dict)`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
# How a bench script starts the `easel` command line (one place, should the module move).
EASEL = [sys.executable, "-m", "easel.cli"]
SHARED_NOTE = "the machine is shared with other jobs; figures vary between runs"
_PREFIX = "RESULT "
_UNIT_SUFFIXES = (("_per_s", "/s"), ("_ms", "ms"), ("_mb", "MiB"), ("_s", "s"), ("_seconds", "s"))


def parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser described by `doc`'s first line, with the options every bench has."""
    made = argparse.ArgumentParser(
        description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    made.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat: a check")
    made.add_argument("--repeats", type=int, default=None, help="times each measurement runs")
    made.add_argument("--results", default=str(RESULTS), help="folder for the JSON result")
    made.add_argument("--label", default="", help="suffix of the result file's name")
    made.add_argument("--note", default="", help="said in the result (e.g. the machine's load)")
    return made


def repeats(args: argparse.Namespace, normal: int) -> int:
    """`--repeats` if given, else 1 under `--smoke`, else `normal`."""
    if args.repeats is not None:
        if args.repeats < 1:
            raise SystemExit(f"--repeats must be at least 1, got {args.repeats}")
        return args.repeats
    return 1 if args.smoke else normal


def unit_of(key: str) -> str:
    """The unit a figure's key names by its suffix (`_ms`, `_s`/`_seconds`, `_mb`, `_per_s`),
    else ''."""
    return next((unit for suffix, unit in _UNIT_SUFFIXES if key.endswith(suffix)), "")


def machine(device: str) -> dict:
    """Facts about where a result was measured."""
    import torch

    return {
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "device": device,
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
    }


def measurement(name: str, unit: str, samples: list[float]) -> dict:
    """One figure: its samples (seconds, MiB, ...: `unit`), their median and minimum.
    Raises ValueError, naming it, when `samples` is empty or holds a non-finite number."""
    values = [float(s) for s in samples]
    if not values or not all(math.isfinite(v) for v in values):
        raise ValueError(f"measurement {name!r}: samples must be finite numbers, got {samples!r}")
    return {"name": name, "unit": unit, "repeats": values,
            "median": statistics.median(values), "min": min(values)}  # fmt: skip


class Results:
    """What one bench run measured; `write()` saves it as the JSON described above."""

    def __init__(self, name: str, args: argparse.Namespace, device: str = "cpu"):
        self.name, self.args, self.device = name, args, device
        self.parameters: dict = {}
        self.measurements: list[dict] = []

    def add(self, name: str, unit: str, samples: list[float] | float) -> None:
        """Record `samples` (or one number) of the figure `name`, in `unit`."""
        listed = samples if isinstance(samples, list) else [samples]
        self.measurements.append(measurement(name, unit, listed))

    def add_figures(self, figures: dict, prefix: str = "") -> None:
        """Each number of `figures` as a one-sample measurement (unit from its key's suffix);
        the rest (names, flags, lists) as parameters."""
        for key, value in figures.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                self.add(prefix + key, unit_of(key), value)
            else:
                self.parameters[prefix + key] = value

    def document(self) -> dict:
        shared = SHARED_NOTE if self.device == "cpu" else ""
        note = "; ".join(n for n in (self.args.note, shared) if n)
        return {
            "benchmark": self.name,
            "command": shlex.join(["python", "-m", f"bench.{self.name}", *sys.argv[1:]]),
            "smoke": bool(self.args.smoke),
            "source": "measured",
            "note": note,
            "machine": machine(self.device),
            "parameters": self.parameters,
            "measurements": self.measurements,
        }

    def write(self) -> Path:
        """Write `<results>/<name>[-<label>].json`; its path. Prints the measurements too."""
        folder = Path(self.args.results)
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{self.name}-{self.args.label}" if self.args.label else self.name
        path = folder / f"{stem}.json"
        path.write_text(json.dumps(self.document(), indent=1) + "\n")
        for m in self.measurements:
            print(f"{m['name']}: median {m['median']:.4g} {m['unit']} (min {m['min']:.4g}, "
                  f"n={len(m['repeats'])})")  # fmt: skip
        print(f"wrote {path}")
        return path


def timed(function, sync=lambda: None) -> float:
    """Seconds `function()` takes, `sync()` (e.g. torch.cuda.synchronize) before the clock stops."""
    start = time.perf_counter()
    function()
    sync()
    return time.perf_counter() - start


def peak_memory_mb(device: str = "cpu") -> float:
    """Peak allocated GPU memory on CUDA, else this process's peak resident memory (MiB)."""
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def report(result: dict) -> None:
    """In an isolated child: hand `result` (JSON-able) to the parent."""
    print(_PREFIX + json.dumps(result), flush=True)


def isolated(module: str, *args: str, label: str) -> dict:
    """In the parent: `python -m module args...` from the repository root in a new process;
    the dict it `report`ed. Exits with the child's stderr tail, named by `label`, if it fails."""
    done = subprocess.run([sys.executable, "-m", module, *args], capture_output=True,
                          text=True, check=False, cwd=ROOT)  # fmt: skip
    lines = [x for x in done.stdout.splitlines() if x.startswith(_PREFIX)]
    if done.returncode != 0 or not lines:
        sys.exit(f"{label} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(lines[-1][len(_PREFIX) :])
