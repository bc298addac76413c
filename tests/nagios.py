"""Plugin output read as Nagios and Icinga read it, strictly, from the Nagios plugin
development guidelines ("Plugin Output for Nagios", "Performance data"), not from venusctl.

- The first line is the status line, `TEXT OUTPUT | OPTIONAL PERFDATA`: the first `|`
  ends the text; the text never holds another.
- The lines after it are the long output; a `|` in them starts more performance data,
  which runs to the end of the output (Nagios 3). A report whose long output must stay
  text therefore holds no `|` at all (`parse` refuses one: venusctl writes none there).
- Performance data is a space-separated list of `'label'=value[UOM];[warn];[crit];[min];[max]`:
  the label quoted with single quotes when it holds a space (a quote in a quoted label
  written as two), no `=` in it; value, min and max of the class [-0-9.] (or a literal
  `U` value); UOM one of none, s, ms, us, %, B, KB, MB, TB, c, the same for all three;
  warn and crit in the range format `[@][start:][end]` (`~` for minus infinity);
  trailing empty fields may be left out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

UNITS = ("", "s", "ms", "us", "%", "B", "KB", "MB", "TB", "c")
NUMBER = r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
RANGE = re.compile(rf"@?(?:(?:{NUMBER}|~):)?(?:{NUMBER})?")
LABEL = r"'(?:[^'=]|'')+'|[^'= ]+"
ITEM = re.compile(
    rf"(?P<label>{LABEL})=(?P<value>{NUMBER}|U)(?P<uom>[a-zA-Z%]*)"
    rf"(?:;(?P<warn>[^; ]*)(?:;(?P<crit>[^; ]*)(?:;(?P<min>{NUMBER})?(?:;(?P<max>{NUMBER})?)?)?)?)?"
)
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class Perf:
    label: str
    value: float | None  # None: "U", undetermined
    uom: str
    warn: str
    crit: str
    min: float | None
    max: float | None


@dataclass(frozen=True)
class PluginOutput:
    text: str  # the status line's text
    perfdata: list[Perf]
    long_output: list[str]


class NotPluginOutput(AssertionError):
    """What a monitoring system would misread."""


def parse_perfdata(text: str) -> list[Perf]:
    items, position = [], 0
    text = text.strip()
    while position < len(text):
        match = ITEM.match(text, position)
        if match is None:
            raise NotPluginOutput(f"bad performance data at {text[position:]!r}")
        end = match.end()
        if end < len(text) and text[end] != " ":
            raise NotPluginOutput(f"bad performance data at {text[position:]!r}")
        if match["uom"] not in UNITS:
            raise NotPluginOutput(f"unit {match['uom']!r} is not one of {UNITS}")
        for name in ("warn", "crit"):
            if match[name] and not RANGE.fullmatch(match[name]):
                raise NotPluginOutput(f"{name} {match[name]!r} is not a range")
        label = match["label"]
        if label.startswith("'"):
            label = label[1:-1].replace("''", "'")
        elif " " in label:
            raise NotPluginOutput(f"label {label!r} with a space must be quoted")
        items.append(
            Perf(
                label,
                None if match["value"] == "U" else float(match["value"]),
                match["uom"],
                match["warn"] or "",
                match["crit"] or "",
                float(match["min"]) if match["min"] else None,
                float(match["max"]) if match["max"] else None,
            )
        )
        position = end
        while position < len(text) and text[position] == " ":
            position += 1
    return items


def parse(output: str) -> PluginOutput:
    """A plugin's whole stdout, checked; raises NotPluginOutput for what Nagios would misread."""
    if not output.endswith("\n"):
        raise NotPluginOutput("the output does not end with a newline")
    lines = output[:-1].split("\n")
    for line in lines:
        if CONTROL.search(line):
            raise NotPluginOutput(f"a control character in {line!r}")
    status, long_output = lines[0], lines[1:]
    text, bar, perf = status.partition("|")
    if not bar:
        raise NotPluginOutput(f"no performance data in {status!r}")
    for line in long_output:
        if "|" in line:
            raise NotPluginOutput(f"'|' in the long output starts performance data: {line!r}")
    return PluginOutput(text.rstrip(), parse_perfdata(perf), long_output)
