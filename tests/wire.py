"""The golden shapes of the agent's wire JSON (docs/protocol.md), and their checker.

A shape maps each key to the JSON types its value may have ("int", "str",
"null", "bool", "number"), to a nested shape, to `[shape]` (an array of
them), to `Nullable(shape)` or to `Optional(shape)` (a key that may be
missing). `assert_shape` wants exactly those keys: a key added, dropped or renamed by accident, or a
value of another type, fails the test that checks a producer's real output.
Change a shape only with docs/protocol.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Nullable:
    """A nested object that may be null instead."""

    shape: Any


@dataclass(frozen=True)
class Optional:
    """A key that may be left out (the history's lines omit their null keys)."""

    shape: Any


THREAD_STATE = {"state": "str", "elapsed": "int|null", "proc": "str|null"}
WORKER_INFO = {
    "index": "int",
    "location": "str",
    "plan": "str",
    "job_id": "str|null",
    "job_state": "str",
    "job_stage": "str|null",
    "thread_state": THREAD_STATE,
    "state_elapsed": "int|null",
    "last_error": "str|null",
    "pause_requested": "bool",
    "auto_resumes": "int",
}
SECTOR_RANGE = dict.fromkeys(("miner", "start", "end", "last", "left"), "int")
SUMMARY = dict.fromkeys(("Threads", "Empty", "Paused", "Running", "Waiting", "Errors"), "int")
# report.json as the daemon writes it; readers (WorkerReport, the CLI) add "age".
REPORT_FILE = {
    "schema": "int",
    "name": "str",
    "version": "str",
    "pid": "int",
    "time": "number",
    "socket": "str",
    "ping_interval": "number",
    "summary": SUMMARY,
    "sector_ranges": [SECTOR_RANGE],
}
REPORT = {**REPORT_FILE, "age": "number"}
ERROR = {"code": "int", "message": "str"}
CLI_ERROR = {"error": ERROR}
RPC_ERROR_REPLY = {"jsonrpc": "str", "id": "int|str|null", "error": ERROR}
# venus-worker worker status --json
STATUS = {"report": Nullable(REPORT), "threads": Nullable([WORKER_INFO]), "error": Nullable(ERROR)}
# The history (issue 15): one line of a thread's file, and the three replies.
CALLER = {"uid": Optional("int"), "pid": Optional("int"), "actor": Optional("str")}
HISTORY_ENTRY = {
    "time": "number",
    "kind": "str",
    "index": "int",
    "sector": Optional("str"),
    "plan": Optional("str"),
    "from": Optional("str"),
    "to": Optional("str"),
    "stage": Optional("str"),
    "duration": Optional("number"),
    "in_state": Optional("number"),
    "outcome": Optional("str"),
    "error": Optional("str"),
    "retry": Optional("int"),
    "requested": Optional("str"),
    "by": Optional(CALLER),
    "note": Optional("str"),
}
THREAD_HISTORY = {"index": "int", "location": "str", "entries": [HISTORY_ENTRY], "kept": "int"}
SECTOR_LOG = {"sector": "str", "threads": Nullable([WORKER_INFO]), "entries": [HISTORY_ENTRY]}
ERROR_COUNT = {"error": "str", "count": "int"}
STAGE_STATS = {
    "stage": "str",
    "tasks": "int",
    "failures": "int",
    "p50": "number|null",
    "p90": "number|null",
    "max": "number|null",
    "total": "number",
    "buckets": "array",
    "errors": [ERROR_COUNT],
}
WORKER_STATS = {
    "time": "number",
    "window": "number|null",
    "threads": "array",
    "stages": [STAGE_STATS],
}


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    return {float: "float", str: "str", list: "array", dict: "object"}[type(value)]


def assert_shape(value: Any, shape: Any, where: str = "$") -> None:
    """`value` has exactly `shape`'s keys, each of an allowed type (recursively)."""
    if isinstance(shape, Nullable):
        if value is not None:
            assert_shape(value, shape.shape, where)
        return
    if isinstance(shape, Optional):
        assert_shape(value, shape.shape, where)
        return
    if isinstance(shape, list):
        assert isinstance(value, list), f"{where}: expected an array, got {value!r:.60}"
        for position, item in enumerate(value):
            assert_shape(item, shape[0], f"{where}[{position}]")
        return
    if isinstance(shape, str):
        allowed = set(shape.split("|"))
        kind = json_type(value)
        if "number" in allowed:
            allowed |= {"int", "float"}
        assert kind in allowed, f"{where}: {kind} ({value!r:.60}), expected {shape}"
        return
    assert isinstance(value, dict), f"{where}: expected an object, got {value!r:.60}"
    required = {key for key, inner in shape.items() if not isinstance(inner, Optional)}
    assert required <= set(value) <= set(shape), (
        f"{where}: keys {sorted(set(value) - set(shape))} not in the contract,"
        f" {sorted(required - set(value))} missing"
    )
    for key, inner in shape.items():
        if key in value:
            assert_shape(value[key], inner, f"{where}.{key}")
