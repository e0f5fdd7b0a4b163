"""The `easel` process's imports and exit, made cheaper by pausing Python's cyclic garbage
collector where it only costs time.

Importing torch, diffusers, transformers, Prefect and MLflow creates millions of
long-lived objects and almost no garbage, yet the collector scans them again and again as
they accumulate (about 1 s on a 2-core CPU), and once more while the interpreter tears them
down at exit (about 1.3 s). `importing()` pauses the collector around a first import (a
command's modules, MLflow and its store, a model family's diffusers pipelines), then moves
everything imported into its permanent generation (`gc.freeze`: never scanned again) and
resumes it, so the work itself runs with the collector on; `before_exit()` freezes what is
left, so exiting skips the scan. Both act only in the `easel` process itself (after
`begin()`); in a test or another program they do nothing. Standard library only: any layer
may use it.

Callers wrap imports, never work: what is frozen is never collected, so a block that
created garbage holding tensors would keep it for the process's life.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

_began = False


def begin() -> None:
    """This is the `easel` process: `importing()` and `before_exit()` act from now on."""
    global _began
    _began = True


@contextmanager
def importing() -> Iterator[None]:
    """The collector paused while the block imports, what it imported then frozen."""
    if not _began or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def before_exit() -> None:
    """Leave everything left to the process's exit, unscanned."""
    if _began:
        gc.freeze()
