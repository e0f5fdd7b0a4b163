"""The configuration reference (`docs/configuration.md`), generated from the parameter
models themselves, so that every key is documented with its real default and limits.

    python -m easel.cli.reference > docs/configuration.md

`tests/test_docs.py` fails when the file and the models disagree."""

from __future__ import annotations

import json
import types
from typing import Annotated, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

HEADER = """# Configuration reference

Every key of a sweep (`easel sweep --config FILE`, a deployment's `params`), a class-prior
run (`params`) and a DreamBooth run (`easel dreambooth --config FILE`, a deployment's
`config`), with its default and limits. Generated from the code
(`python -m easel.cli.reference > docs/configuration.md`); a key set on the command line
(`--set key=value` for DreamBooth, the flags for sweeps) wins over the file. An unknown key
or a value out of its limits is refused before any work, naming the key and the value.
"""


DREAMBOOTH_INTRO = """Keys come in groups (`subject:`, `train:`, ... in the YAML;
`--set train.max_steps=50` on the command line). The flat keys of earlier releases
(`max_steps`, `train_text_encoder: true`) are still read, moved into their groups with one
warning naming each.

"""


def _default(field: FieldInfo) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "**required**"
    value = field.default_factory() if field.default_factory else field.default
    return "unset" if value is None else f"`{json.dumps(value)}`"


def _limits(field: FieldInfo) -> str:
    words = []
    items = list(field.metadata)
    for arg in get_args(field.annotation):  # a union with an annotated member: its limits
        if get_origin(arg) is Annotated:
            for extra in get_args(arg)[1:]:
                items += extra.metadata if isinstance(extra, FieldInfo) else [extra]
    for item in items:
        for name, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            if getattr(item, name, None) is not None:
                words.append(f"{sign} {getattr(item, name)}")
    return ", ".join(words)


def _type(annotation) -> str:
    """`int`, `str or None`, `list of str`, `one of "a", "b"`."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _type(args[0])
    if origin in (Union, types.UnionType):
        return " or ".join(_type(arg) for arg in args)
    if origin is Literal:
        return "one of " + ", ".join(json.dumps(arg) for arg in args)
    if origin is list:
        return f"list of {_type(args[0])}"
    return "None" if annotation is type(None) else getattr(annotation, "__name__", str(annotation))


def table(model: type[BaseModel], prefix: str = "") -> str:
    """One row per key: name, type, default, limits, meaning."""
    rows = ["| key | type | default | limits | meaning |", "|---|---|---|---|---|"]
    return "\n".join(rows + _rows(model, prefix))


def _rows(model: type[BaseModel], prefix: str) -> list[str]:
    """A nested settings model (`performance`) gives one row per key, as `outer.inner`."""
    rows = []
    for name, field in model.model_fields.items():
        if _is_group(field):
            rows += _rows(field.annotation, f"{prefix}{name}.")
        else:
            rows.append(_row(f"{prefix}{name}", field))
    return rows


def _row(key: str, field: FieldInfo) -> str:
    meaning = (field.description or "").replace("|", "\\|")
    kind = _type(field.annotation)
    return f"| `{key}` | {kind} | {_default(field)} | {_limits(field)} | {meaning} |"


def grouped_tables(model: type[BaseModel]) -> str:
    """The top-level keys in one table, then a table per group (a nested model), keys as
    `group.key`, each under the group's own description."""
    top = {n: f for n, f in model.model_fields.items() if not _is_group(f)}
    rows = ["| key | type | default | limits | meaning |", "|---|---|---|---|---|"]
    parts = ["\n".join(rows + [_row(name, field) for name, field in top.items()])]
    for name, field in model.model_fields.items():
        if _is_group(field):
            group = field.annotation
            intro = f"### `{name}`: {(group.__doc__ or '').strip()}\n\n"
            parts.append(intro + table(group, f"{name}."))
    return "\n\n".join(parts)


def _is_group(field: FieldInfo) -> bool:
    return isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)


def results_table() -> str:
    """The columns easel adds to each manifest row in `results.parquet`."""
    from easel.data.results import RESULT_FIELDS

    rows = ["| column | Arrow type |", "|---|---|"]
    rows += [f"| `{field.name}` | {field.type} |" for field in RESULT_FIELDS]
    return "\n".join(rows)


def reference_markdown() -> str:
    from easel.flows.priors import PriorsParameters
    from easel.flows.sweep_parameters import SweepParameters
    from easel.models.dreambooth.config import DreamBoothConfig

    sections = [
        HEADER,
        "## Sweep (`easel sweep`, the `sweep` flow)\n\n" + table(SweepParameters),
        "## Class priors (the `class-priors` flow)\n\n" + table(PriorsParameters),
        "## DreamBooth (`easel dreambooth`, the `dreambooth` flow)\n\n" + DREAMBOOTH_INTRO
        + grouped_tables(DreamBoothConfig),
        "## Results (`OUT/results.parquet`)\n\nEvery column of the manifest row, then:\n\n"
        + results_table(),
    ]
    return "\n\n".join(sections) + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")
