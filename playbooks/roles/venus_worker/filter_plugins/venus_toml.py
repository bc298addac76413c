"""Jinja filters that write TOML for the agent's config template.

``toml_value`` renders one value (string, integer, float, boolean, array, or a
mapping as an inline table); ``toml_tables`` renders a mapping as a TOML
document fragment under a table name, with nested mappings as sub-tables and
lists of mappings as arrays of tables. Strings are always basic strings with
JSON-compatible escapes, which TOML accepts, so host variables never break out
of their value.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence

__all__ = ["FilterModule", "toml_tables", "toml_value"]

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(name: object) -> str:
    text = str(name)
    return text if _BARE_KEY.match(text) else json.dumps(text)


def toml_value(value: object) -> str:
    """One TOML value: a scalar, an array, or an inline table."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise ValueError(f"TOML value must be finite, got {value!r}")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, Mapping):
        items = ", ".join(f"{_key(k)} = {toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    if isinstance(value, Sequence):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if value is None:
        raise ValueError("TOML has no null: leave the key out instead")
    raise ValueError(f"cannot write {type(value).__name__} as TOML")


def _is_table_array(value: object) -> bool:
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and bool(value)
        and all(isinstance(v, Mapping) for v in value)
    )


def toml_tables(mapping: Mapping, name: str) -> str:
    """`mapping` as ``[name]`` with its scalars, then its sub-tables and arrays of tables.

    Keys whose value is None are left out (TOML has no null).
    """
    return _table(mapping, name, f"[{name}]")


def _table(mapping: object, path: str, header: str) -> str:
    if not isinstance(mapping, Mapping):
        raise ValueError(f"{header} must be a mapping, got {type(mapping).__name__}")
    lines = [header]
    nested: list[str] = []
    for key, value in mapping.items():
        if value is None:
            continue
        sub = f"{path}.{_key(key)}"
        if isinstance(value, Mapping):
            nested.append(_table(value, sub, f"[{sub}]"))
        elif _is_table_array(value):
            nested.extend(_table(entry, sub, f"[[{sub}]]") for entry in value)
        else:
            lines.append(f"{_key(key)} = {toml_value(value)}")
    return "\n\n".join(["\n".join(lines), *nested])


class FilterModule:
    def filters(self):
        return {"toml_value": toml_value, "toml_tables": toml_tables}
