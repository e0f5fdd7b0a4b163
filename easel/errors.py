"""Errors a user can act on. The CLI turns `InvalidInput` into exit code 2, one line on stderr."""


class InvalidInput(ValueError):
    """The invocation, config or manifest as a whole is invalid; nothing was generated."""


class ModelReferenceError(InvalidInput):
    """A model reference cannot be resolved (missing path, no network for a hub id, ...)."""
