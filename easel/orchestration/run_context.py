"""What a flow knows of its own Prefect flow run: lineage tags for the MLflow runs it makes
(`tracking.LINEAGE_TAGS`) and the placeholders an output location may carry, so that
scheduled runs never overwrite each other."""

from __future__ import annotations

import re
from datetime import timezone

from easel.errors import InvalidInput

# `{scheduled_date}`: the run's scheduled start, YYYY-MM-DD (UTC); `{flow_run_name}`: its
# name. A retry of a run keeps both, so it resumes in the same folder.
PLACEHOLDER = re.compile(r"\{(scheduled_date|flow_run_name)\}")
LOOKS_LIKE_PLACEHOLDER = re.compile(r"\{[A-Za-z_]+\}")  # `{word}`: a misspelt one is refused


def check_placeholders(location: str, field: str) -> str:
    """`location` if every `{word}` in it is a known placeholder, else `ValueError` naming
    `field`, the word and the known ones (a misspelt one would be a folder of that name)."""
    for word in LOOKS_LIKE_PLACEHOLDER.findall(location):
        if not PLACEHOLDER.fullmatch(word):
            raise ValueError(
                f"`{field}` {location!r} has the unknown placeholder {word}: the known ones "
                "are {scheduled_date} and {flow_run_name}"
            )
    return location


def prefect_tags() -> dict[str, str]:
    """The current flow run's id, attempt (`prefect.run_count`: 2 and more are retries) and
    dashboard URL where its server has a UI (empty outside a flow run)."""
    from prefect.runtime import flow_run
    from prefect.utilities.urls import url_for

    if not flow_run.id:
        return {}
    tags = {"prefect.flow_run_id": str(flow_run.id), "prefect.run_count": str(flow_run.run_count)}
    url = url_for("flow-run", obj_id=flow_run.id)  # the dashboard's own path; None: no UI
    if url:  # (Prefect's temporary server)
        tags["prefect.flow_run_url"] = url
    return tags


def expand_placeholders(location: str, field: str) -> str:
    """`location` (the value of `field`) with `{scheduled_date}` and `{flow_run_name}` filled
    in from the current flow run (any other brace is left as it is). A value that is not one
    folder name (a run named `../escaped` or `a/b`, typed in the dashboard) is refused,
    `InvalidInput` naming `field`, the placeholder and the value: the location stays inside
    the folder that holds the placeholder."""
    if not PLACEHOLDER.search(location):
        return location
    from prefect.runtime import flow_run

    values = {
        "scheduled_date": flow_run.scheduled_start_time.astimezone(timezone.utc).strftime(
            "%Y-%m-%d"
        ),
        "flow_run_name": str(flow_run.name),
    }
    for word in PLACEHOLDER.findall(location):
        if not is_folder_name(values[word]):
            raise InvalidInput(
                f"`{field}` {location!r}: {{{word}}} is {values[word]!r}, which is not one "
                "folder name (no '/', '\\', '.' or '..'): rename the flow run"
            )
    return PLACEHOLDER.sub(lambda match: values[match.group(1)], location)


def is_folder_name(value: str) -> bool:
    """Whether `value` names one folder inside its parent: not empty, `.` or `..`, no path
    separator or NUL."""
    return value not in ("", ".", "..") and not any(c in value for c in "/\\\0")
