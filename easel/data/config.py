"""Flow parameters from a YAML file plus command-line overrides, validated by pydantic.

Any error becomes one `InvalidInput` line that names the field and the value."""

from __future__ import annotations

from collections.abc import Collection
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from easel.data import storage
from easel.errors import InvalidInput

Parameters = TypeVar("Parameters", bound=BaseModel)


def read_yaml(uri: str) -> dict:
    try:
        content = yaml.safe_load(storage.read_bytes(uri)) or {}
    except FileNotFoundError:
        raise InvalidInput(f"config file {uri!r} does not exist") from None
    except yaml.YAMLError as error:  # its message spans lines: one line here
        said = " ".join(str(error).split())
        raise InvalidInput(f"config file {uri!r} is not valid YAML: {said}") from None
    if not isinstance(content, dict):
        raise InvalidInput(
            f"config file {uri!r} must hold a mapping of keys, not {type(content).__name__}"
        )
    return content


def validation_message(error: ValidationError, source: str = "", flag: str | None = None) -> str:
    """The first problem, as `field `x`: message (value: ...)` (`flag`: as `--x: message`,
    for a value given as that command-line option)."""
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "(root)"
    if first["type"] == "extra_forbidden":
        return f"{source}unknown field `{field}` (value: {first.get('input')!r})"
    said = f"`{flag}`" if flag else f"field `{field}`"
    message = first["msg"].removeprefix("Value error, ")  # pydantic's prefix to our own words
    return f"{source}{said}: {message} (value: {first.get('input')!r})"


def load_parameters(model: type[Parameters], config: str | None, overrides: dict,
                    flags: dict[str, str] | None = None) -> Parameters:  # fmt: skip
    """`config`'s values, then the command line's `overrides` (None: not given), validated;
    an error names where the bad value came from: the file, or the command line's option
    (`--field-name`, or as `flags` maps the field, e.g. {"num_images": "--num"})."""
    values = read_yaml(config) if config else {}
    given = {k: v for k, v in overrides.items() if v is not None}
    options = {field: (flags or {}).get(field, "--" + field.replace("_", "-")) for field in given}
    return validated(model, {**values, **given}, config, given, "", options)


def validated(model: type[Parameters], values: dict, config: str | None,
              given: Collection[str], given_as: str,
              options: dict[str, str] | None = None) -> Parameters:  # fmt: skip
    """`values` validated as `model`; an error names where the bad value came from: the
    command line (`given`: the keys it set, `group.key` in a group; said as `given_as`, e.g.
    "--set ", or as the field's option in `options`) or the file `config`."""
    try:
        return model.model_validate(values)
    except ValidationError as error:
        loc = error.errors()[0]["loc"]
        field = loc[0] if loc else None  # a group's key was given as `group.key`, or the group
        path = ".".join(str(part) for part in loc)
        named = field in given or path in given
        source = given_as if named else (f"{config}: " if config else "")
        flag = (options or {}).get(field)
        raise InvalidInput(validation_message(error, source, flag)) from None
