"""Progress you can follow in a log file (no terminal): one plain line at most every
`PROGRESS_LINE_SECONDS`, and one at the end, with what is done, the rate and the time left.
On a terminal, the commands show a progress bar instead (`SweepProgress`, which also keeps
the sweep's Prefect progress artifact up to date)."""

from __future__ import annotations

import time
from collections.abc import Callable

PROGRESS_LINE_SECONDS = 10.0
ARTIFACT_SECONDS = 10.0  # between updates of a Prefect progress artifact (each an API call)


class ProgressLine:
    """`update(done)` prints "WHAT: done/total UNIT (P%), R UNIT/s, about T left[, EXTRA]"
    when `every` seconds have passed since the last line, or when `done` reaches `total`."""

    def __init__(self, what: str, total: int, unit: str, every: float = PROGRESS_LINE_SECONDS,
                 write: Callable[[str], None] = print):  # fmt: skip
        self.what, self.total, self.unit, self.every, self.write = what, total, unit, every, write
        self.started = self.printed = time.monotonic()
        self.first_done: int | None = None

    def update(self, done: int, extra: str = "") -> None:
        now = time.monotonic()
        if self.first_done is None:  # the rate counts from the first update (a resume: later)
            self.first_done, self.started = done, now
        if now - self.printed < self.every and done < self.total:
            return
        self.printed = now
        self.write(self.line(done, now - self.started, extra))

    def line(self, done: int, seconds: float, extra: str = "") -> str:
        rate = (done - (self.first_done or 0)) / seconds if seconds > 0 else 0.0
        share = 100 * done / max(1, self.total)
        text = f"{self.what}: {done}/{self.total} {self.unit} ({share:.0f}%)"
        if rate > 0:
            text += f", {rate:.3g} {self.unit}/s"
            if done < self.total:
                text += f", about {_duration((self.total - done) / rate)} left"
        return text + (f", {extra}" if extra else "")


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class SweepProgress:
    """A sweep's images done: a terminal progress bar (elsewhere, a progress line every
    `PROGRESS_LINE_SECONDS`: a log file gets no escape codes), and the Prefect progress
    artifact `sweep-progress` (percent) updated every `ARTIFACT_SECONDS`. Call `start(total)`,
    `advance(images)` as they land, then `close()`."""

    def __init__(self, description: str, show_bar: bool):
        self.description, self.show_bar = description, show_bar
        self.total, self.done, self.bar, self.line, self.artifact = 0, 0, None, None, None

    def start(self, total: int) -> None:
        from prefect.artifacts import create_progress_artifact
        from tqdm import tqdm

        self.total, self.reported_at = total, time.monotonic()
        self.bar = tqdm(total=total, unit="img", desc="sweep", disable=not self.show_bar)
        self.line = None if self.show_bar else ProgressLine("sweep", total, "images")
        if self.line and total:
            self.line.update(0)  # the rate counts from here (a one-batch sweep has one too)
        start = 0.0 if total else 100.0
        self.artifact = create_progress_artifact(
            start, key="sweep-progress", description=self.description
        )

    def advance(self, images: int) -> None:
        self.done += images
        self.bar.update(images)
        if self.line:
            self.line.update(self.done)
        if time.monotonic() - self.reported_at > ARTIFACT_SECONDS:
            self._report()

    def _report(self) -> None:
        from prefect.artifacts import update_progress_artifact

        self.reported_at = time.monotonic()
        update_progress_artifact(self.artifact, 100.0 * self.done / max(1, self.total))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.total:
            self._report()
