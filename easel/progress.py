"""Progress you can follow in a log file (no terminal): one plain line at most every
`PROGRESS_LINE_SECONDS`, and one at the end, with what is done, the rate and the time left.
On a terminal, the commands show a progress bar instead (`SweepProgress`, which also keeps
the sweep's Prefect progress artifact up to date).

Inside a Prefect flow or task run, what `say` writes, and every warning of the `easel`
loggers (`send_easel_logs_to_prefect`), also goes to the run's logs: the dashboard's Logs
tab shows them, at the same cadence as a terminal. Other libraries' logs stay out."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

PROGRESS_LINE_SECONDS = 10.0
ARTIFACT_SECONDS = 10.0  # between updates of a Prefect progress artifact (each an API call)
EASEL_LOGGER = "easel"  # the parent of every easel module's logger


def _run_logger():
    """The Prefect run logger of the flow or task run this code runs in, else None."""
    from prefect.context import FlowRunContext, TaskRunContext
    from prefect.logging import get_run_logger

    if FlowRunContext.get() is None and TaskRunContext.get() is None:
        return None
    return get_run_logger()


def say(text: str, level: int = logging.INFO) -> None:
    """`text` in the Prefect run's logs (and its console) inside a run, else printed."""
    logger = _run_logger()
    if logger is None:
        print(text)
    else:
        logger.log(level, text)


class _InARun(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        from prefect.context import FlowRunContext, TaskRunContext

        return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def send_easel_logs_to_prefect() -> None:
    """Records of the `easel` loggers (warnings and above, as configured) made inside a
    Prefect run go to that run's logs too (Prefect's API handler; the console gets them as
    before). Idempotent."""
    from prefect.logging.handlers import APILogHandler

    logger = logging.getLogger(EASEL_LOGGER)
    if not any(isinstance(handler, APILogHandler) for handler in logger.handlers):
        handler = APILogHandler()
        handler.addFilter(_InARun())
        logger.addHandler(handler)


class ProgressLine:
    """`update(done)` prints "WHAT: done/total UNIT (P%), R UNIT/s, about T left[, EXTRA]"
    when `every` seconds have passed since the last line, or when `done` reaches `total`."""

    def __init__(self, what: str, total: int, unit: str, every: float = PROGRESS_LINE_SECONDS,
                 write: Callable[[str], None] = say):  # fmt: skip
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
    artifact `sweep-progress` (percent, and "N of M images into OUT") updated every
    `ARTIFACT_SECONDS` and at the end. Call `start(total)`, `advance(images)` as they land,
    then `close()`."""

    def __init__(self, out: str, show_bar: bool):
        self.out, self.show_bar = out, show_bar
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
            start, key="sweep-progress", description=self.description()
        )

    def description(self) -> str:
        if not self.total:
            return f"nothing to generate: every image is already in {self.out}"
        return f"{self.done} of {self.total} images generated into {self.out}"

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
        update_progress_artifact(self.artifact, 100.0 * self.done / max(1, self.total),
                                 description=self.description())  # fmt: skip

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.total:
            self._report()
