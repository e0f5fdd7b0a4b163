"""Progress you can follow in a log file (no terminal): one plain line at most every
`PROGRESS_LINE_SECONDS`, and one at the end, with what is done, the rate and the time left.
On a terminal, the commands show a progress bar instead."""

from __future__ import annotations

import time
from collections.abc import Callable

PROGRESS_LINE_SECONDS = 10.0


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
