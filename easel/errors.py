"""Errors a user can act on, and the exit code of each kind (`exit_code`): the `easel`
command prints one line on stderr for each, with no traceback unless `--debug`. The codes
(README, `easel --help`): 0 done; 1 finished, some rows failed; 2 invalid invocation,
config, manifest or model (nothing generated); 3 infrastructure: a store, the tracking or
the Prefect server unreachable, or a disk full; 130 interrupted.
"""

from __future__ import annotations

import errno

DONE, ROWS_FAILED, INVALID, INFRASTRUCTURE = 0, 1, 2, 3
INTERRUPTED = 130  # the shell's code for a command ended by SIGINT (128 + 2)
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class InvalidInput(ValueError):
    """The invocation, config or manifest as a whole is invalid; nothing was generated."""


class ModelReferenceError(InvalidInput):
    """A model reference cannot be resolved (missing path, no network for a hub id, ...)."""


class UntrustedCheckpoint(InvalidInput):
    """A checkpoint holds more than tensors and plain types (a pickle that could run code):
    refused, never loaded."""


class Unreachable(ConnectionError):
    """A server or store the run needs does not answer (the message names it and the
    setting that points at it): the infrastructure, not the work, failed."""


def exit_code(error: BaseException) -> int | None:
    """The exit code of an error easel knows (`INVALID`, `INFRASTRUCTURE`, `INTERRUPTED`);
    None for any other (a bug: its traceback is worth showing)."""
    if isinstance(error, KeyboardInterrupt):
        return INTERRUPTED
    if isinstance(error, InvalidInput):
        return INVALID
    if any(_disk_full(cause) or _transport_error(cause) for cause in _chain(error)):
        return INFRASTRUCTURE
    return None


def _chain(error: BaseException) -> list[BaseException]:
    """`error` and the errors it was raised from or while handling (a library's own error
    over a failed connection: MLflow's over requests', Prefect's over httpx's)."""
    chain = [error]
    while len(chain) < 8:
        last = chain[-1]
        below = last.__cause__ or (None if last.__suppress_context__ else last.__context__)
        if below is None:
            break
        chain.append(below)
    return chain


def describe(error: BaseException) -> str:
    """One line for `error`: its message, or for an infrastructure failure easel did not
    word itself, what failed."""
    if isinstance(error, Unreachable) or exit_code(error) != INFRASTRUCTURE:
        return " ".join(str(error).split()) or type(error).__name__
    cause = next(c for c in _chain(error) if _disk_full(c) or _transport_error(c))
    if _disk_full(cause):
        return f"disk full: {cause.filename or cause}"
    said = error if str(error) else cause  # the library's words (its URL) before its cause's
    return f"a server did not answer ({type(said).__name__}: {' '.join(str(said).split())})"


def _disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in DISK_FULL


def _transport_error(error: BaseException) -> bool:
    """A connection that failed or timed out, in any of the HTTP clients the libraries use
    (httpx: Prefect; requests/urllib3: MLflow; botocore/aiohttp: S3), by class name so that
    none of them is imported here."""
    names = {cls.__name__ for cls in type(error).__mro__}
    return bool(names & {"TransportError", "ConnectionError", "ConnectTimeout",
                         "EndpointConnectionError", "ClientConnectorError",
                         "ServerTimeoutError", "NewConnectionError"})  # fmt: skip
