"""The current benchmark table: `bench/README.md`'s section between the results markers,
regenerated from `bench/results/*.json` (the harness's format, bench/harness.py).

    python -m bench.render           # rewrite the section
    python -m bench.render --check   # exit 1 when the README's section is stale
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.harness import RESULTS, ROOT

README = ROOT / "bench" / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def _number(value: float) -> str:
    return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"


def section(result: dict, stem: str) -> str:
    """One result file as Markdown: a heading, where and how it was measured, a table."""
    m = result["machine"]
    facts = [m["device"], m["cpu_count"] and f"{m['cpu_count']} CPUs",
             m["torch"] and f"torch {m['torch']}", m["date"]]  # fmt: skip
    where = ", ".join(str(f) for f in facts if f)
    lines = [f"### {stem}", "", f"{result['source']}; {where}. `{result['command']}`"]
    if result.get("note"):
        lines.append(f"Note: {result['note']}.")
    if result["parameters"]:
        lines.append("Parameters: " + ", ".join(
            f"{k} {json.dumps(v)}" for k, v in result["parameters"].items()) + ".")  # fmt: skip
    lines += ["", "| measurement | median | min | unit | repeats |", "|---|---|---|---|---|"]
    carried = result["source"] != "measured"  # one figure each: no minimum, no count known
    for x in result["measurements"]:
        low, count = ("—", "—") if carried else (_number(x["min"]), len(x["repeats"]))
        lines.append(f"| {x['name']} | {_number(x['median'])} | {low} | {x['unit']} | {count} |")
    return "\n".join(lines)


def table(folder: Path = RESULTS) -> str:
    """Every result in `folder`, by file name, smoke runs left out."""
    parts = []
    for path in sorted(folder.glob("*.json")):
        result = json.loads(path.read_text())
        if not result["smoke"]:
            parts.append(section(result, path.stem))
    return "\n\n".join(parts)


def rendered(readme: str, folder: Path = RESULTS) -> str:
    """`readme` with its results section replaced. Raises ValueError when a marker is missing."""
    if START not in readme or END not in readme:
        raise ValueError(f"bench/README.md: needs the markers {START} and {END}")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table(folder)}\n{END}{tail}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the README is stale")
    args = parser.parse_args()
    current = README.read_text()
    fresh = rendered(current)
    if args.check:
        sys.exit(0 if fresh == current else "bench/README.md is stale: python -m bench.render")
    README.write_text(fresh)


if __name__ == "__main__":
    main()
