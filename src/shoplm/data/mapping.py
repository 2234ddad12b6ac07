"""Map a shop's own column names onto shoplm's fields."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from shoplm.data.readers import InputError


def resolve_columns(
    path: Path,
    columns: Iterable[str],
    mapping: dict[str, str],
    fields: Iterable[str],
    required: Iterable[str],
) -> dict[str, str]:
    """``{shoplm field: file column}`` for every field the file has.

    A field named in ``mapping`` must exist under its mapped name; an unmapped field is
    looked up under its own name. A missing required field is an :class:`InputError` that
    says which column was looked for and which columns the file has.
    """
    present = list(columns)
    resolved: dict[str, str] = {}
    for name in fields:
        source = mapping.get(name, name)
        if source in present:
            resolved[name] = source
        elif name in mapping:
            raise InputError(
                f"{path}: column {source!r} (mapped to {name}) is not in the file; "
                f"its columns are {present}"
            )
    missing = [name for name in required if name not in resolved]
    if missing:
        raise InputError(
            f"{path}: required column(s) {missing} not found; the file has {present} "
            "(map your own names in shoplm.toml)"
        )
    return resolved
