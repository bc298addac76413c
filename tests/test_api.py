"""worker_agent/api.py, the contract both programs import: pure, no I/O.

The producers' real output is checked against the same golden shapes in
test_api_wire.py (a real daemon and the real CLI).
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import sys
from pathlib import Path

import pytest
import wire

from worker_agent import api
from worker_agent.states import PLANS, State

INFO = {
    "index": 0,
    "location": "/srv/store1",
    "plan": "sealer",
    "job_id": "s-t010000-2",
    "job_state": "C1Done",
    "job_stage": "C2",
    "thread_state": {"state": "Paused", "elapsed": 17, "proc": None},
    "state_elapsed": 42,
    "last_error": "permanent: No cached parameters found",
    "pause_requested": False,
    "auto_resumes": 0,
}
REPORT = {
    "schema": 1,
    "name": "worker-1",
    "version": "0.1.0",
    "pid": 1234,
    "time": 1764282000.25,
    "socket": "/run/venus-worker/venus-worker.sock",
    "ping_interval": 30.0,
    "summary": {"Threads": 3, "Empty": 0, "Paused": 3, "Running": 0, "Waiting": 0, "Errors": 3},
    "sector_ranges": [{"miner": 10000, "start": 1000, "end": 1999, "last": 1500, "left": 499}],
}


def test_worker_info_round_trips_in_the_golden_shape():
    info = api.WorkerInfo.from_json(INFO)
    assert info.thread_state.state is api.ThreadState.Paused and info.paused and not info.busy
    assert info.to_json() == INFO and list(info.to_json()) == list(INFO)
    wire.assert_shape(info.to_json(), wire.WORKER_INFO)


def test_report_status_and_errors_round_trip_in_their_golden_shapes():
    report = api.Report.from_json(REPORT)
    assert report.age is None and report.to_json() == REPORT  # the file has no age
    wire.assert_shape(report.to_json(), wire.REPORT_FILE)
    aged = api.Report.from_json({**REPORT, "age": 2})
    assert aged.age == 2.0
    wire.assert_shape(aged.to_json(), wire.REPORT)
    status = {"report": {**REPORT, "age": 1.5}, "threads": [INFO], "error": None}
    assert api.AgentStatus.from_json(status).to_json() == status
    wire.assert_shape(status, wire.STATUS)
    down = {"report": None, "threads": None, "error": {"code": -32099, "message": "x"}}
    parsed = api.AgentStatus.from_json(down)
    assert parsed.error == api.ErrorInfo(api.RpcCode.AGENT_NOT_RUNNING, "x")
    assert parsed.to_json() == down
    wire.assert_shape(down, wire.STATUS)


def test_the_golden_shapes_are_the_api_types():
    """A field added to api.py without its golden shape (or the reverse) fails here."""

    def keys(cls) -> list[str]:
        return [spec.metadata.get("key", spec.name) for spec in dataclasses.fields(cls)]

    assert keys(api.WorkerInfo) == list(wire.WORKER_INFO)
    assert keys(api.ThreadActivity) == list(wire.THREAD_STATE)
    assert keys(api.Summary) == list(wire.SUMMARY) == list(api.SUMMARY_KEYS)
    assert keys(api.Report) == list(wire.REPORT)
    assert keys(api.ErrorInfo) == list(wire.ERROR)
    assert keys(api.AgentStatus) == list(wire.STATUS)
    assert keys(api.SectorRange) == list(wire.SECTOR_RANGE)
    assert keys(api.Caller) == list(wire.CALLER)
    assert keys(api.HistoryEntry) == list(wire.HISTORY_ENTRY)
    assert keys(api.ThreadHistory) == list(wire.THREAD_HISTORY)
    assert keys(api.SectorLog) == list(wire.SECTOR_LOG)
    assert keys(api.StageStats) == list(wire.STAGE_STATS)
    assert keys(api.ErrorCount) == list(wire.ERROR_COUNT)
    assert keys(api.WorkerStats) == list(wire.WORKER_STATS)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("job_state"), "WorkerInfo: missing 'job_state'"),
        (lambda d: d.update(index="0"), 'WorkerInfo.index: expected an integer, got "0"'),
        (lambda d: d.update(index=True), "WorkerInfo.index: expected an integer, got true"),
        (lambda d: d.update(job_id=2), "WorkerInfo.job_id: expected a string, got 2"),
        (lambda d: d.update(pause_requested="no"), "WorkerInfo.pause_requested: expected true"),
        (lambda d: d.update(thread_state="Paused"), "WorkerInfo.thread_state: expected an object"),
        (
            lambda d: d["thread_state"].update(state="Sleeping"),
            "WorkerInfo.thread_state.state: 'Sleeping' is not one of Idle, Running, Waiting,",
        ),
        (lambda d: d["thread_state"].pop("proc"), "WorkerInfo.thread_state: missing 'proc'"),
    ],
)
def test_worker_info_is_strict_on_types_and_required_keys(change, message):
    broken = copy.deepcopy(INFO)
    change(broken)
    with pytest.raises(api.WireError) as caught:
        api.WorkerInfo.from_json(broken)
    assert str(caught.value).startswith(message)


def test_an_older_agent_without_optional_keys_still_parses_and_unknown_keys_are_ignored():
    older = {k: v for k, v in INFO.items() if k not in ("pause_requested", "auto_resumes")}
    assert api.WorkerInfo.from_json(older).pause_requested is False
    assert api.WorkerInfo.from_json(older).auto_resumes == 0
    newer = {**INFO, "sector_history": 3, "thread_state": {**INFO["thread_state"], "cpu": 9}}
    assert api.WorkerInfo.from_json(newer).to_json() == INFO


def test_report_is_strict_too():
    with pytest.raises(api.WireError, match=r"Report.summary: missing 'Empty'"):
        api.Report.from_json({**REPORT, "summary": {"Threads": 1}})
    with pytest.raises(api.WireError, match=r"Report.time: expected a number, got \"now\""):
        api.Report.from_json({**REPORT, "time": "now"})
    with pytest.raises(api.WireError, match=r"AgentStatus.threads\[1\]: expected an object"):
        api.AgentStatus.from_json({"report": None, "threads": [INFO, 3], "error": None})


def test_one_summary_rule():
    def info(state, job_id="s-t010000-1", last_error=None):
        return dataclasses.replace(
            api.WorkerInfo.from_json(INFO),
            job_id=job_id,
            last_error=last_error,
            thread_state=api.ThreadActivity(state, None, None),
        )

    threads = [
        info(api.ThreadState.Paused, last_error="permanent: x"),
        info(api.ThreadState.Running),
        info(api.ThreadState.Waiting),
        info(api.ThreadState.Idle, job_id=None),
    ]
    assert api.summarize(threads).to_json() == {
        "Threads": 4,
        "Empty": 1,
        "Paused": 1,
        "Running": 1,
        "Waiting": 1,
        "Errors": 1,
    }
    # A thread whose state nobody knows (2022 damocles): Running/Waiting unknown, not 0.
    unknown = api.summarize([*threads, info(None)])
    assert (unknown.running, unknown.waiting, unknown.paused) == (None, None, 1)


def test_codes_and_names_are_the_contracts_values():
    assert [int(code) for code in api.RpcCode] == [
        -32700,
        -32600,
        -32601,
        -32602,
        -32603,
        1001,
        1002,
        1003,
        -32099,
        -32098,
        -32097,  # issue 10: the socket is there, this user cannot talk to it
    ]
    assert [int(code) for code in api.AgentExit] == [0, 1, 2, 3]
    assert [state.value for state in api.ThreadState] == ["Idle", "Running", "Waiting", "Paused"]
    assert api.Method.LIST.value == "VenusWorker.WorkerList"
    # read from states.py, never copied
    assert tuple(state.value for state in State) == api.STATE_NAMES
    assert api.PLAN_STATES["snapup"] == tuple(state.value for state in PLANS["snapup"].states)
    assert {"PC1", "C2", "WaitSeed", "SnapEncode", "UploadPiece"} <= api.STAGE_NAMES
    assert "-" not in api.STAGE_NAMES


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30), ("2sec", 2), ("5m", 300), ("5min", 300), ("1.5h", 5400),
     ("1h30m", 5400), ("1h 30m", 5400), (" 1h  30m ", 5400), ("2d", 172800), ("0s", 0)],
)  # fmt: skip
def test_one_duration_grammar(text, seconds):
    assert api.parse_duration(text) == pytest.approx(seconds)
    assert api.parse_duration(text, bare_seconds=True) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", " ", "m", "3x", "10m5", "-5s", "1 h", "5 min", "1 hour"])
def test_what_no_duration_is(text):
    for bare in (False, True):
        with pytest.raises(ValueError, match="invalid duration"):
            api.parse_duration(text, bare_seconds=bare)


def test_a_bare_number_is_seconds_only_where_asked():
    assert api.parse_duration("600", bare_seconds=True) == 600
    assert api.parse_duration("1.5", bare_seconds=True) == 1.5
    with pytest.raises(ValueError, match="invalid duration '600'"):
        api.parse_duration("600")


def test_api_imports_only_the_standard_library_and_states():
    """It ships to workers without dependencies: nothing else may creep in."""
    tree = ast.parse(Path(api.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module)
    ours = {name for name in imported if name.split(".")[0] not in sys.stdlib_module_names}
    assert ours == {"worker_agent.states"}
