"""The contract between the agent and venusctl: its names, codes and JSON values.

Pure and standard library only (it ships to workers without dependencies,
and venusctl imports it too): both programs take from here

- the method names (``Method``), the JSON-RPC error codes (``RpcCode``) and
  the CLI's exit codes (``AgentExit``);
- the thread states of WorkerInfo (``ThreadState``), the task state names
  and stage labels (``STATE_NAMES``, ``STAGE_NAMES``, ``PLAN_STATES``, read
  from states.py, never copied);
- the JSON values as typed, frozen dataclasses: ``WorkerInfo`` (one sealing
  thread), ``Summary`` (the heartbeat counts) and the one rule that computes
  them (``summarize``), ``Report`` (the heartbeat), ``ErrorInfo`` and
  ``AgentStatus`` (``venus-worker worker status --json``);
- the one duration grammar (``parse_duration``);
- the history (issue 15): ``HistoryKind``, ``HistoryEntry`` (one line of a
  thread's history file), ``Caller`` (who asked), the replies of WorkerHistory,
  SectorHistory and WorkerStats, the sector id grammar (``parse_sector_id``)
  and the one rule for stage statistics (``stage_stats``, ``merge_stage_stats``);
- the report's sector ranges (``SectorRange``).

Every value has ``from_json`` and ``to_json``. ``from_json`` is strict on
what it knows and lenient on what it does not (docs/protocol.md, "Reading
the JSON"):

- a required key that is missing, or a value of the wrong JSON type or
  outside its enum, raises ``WireError`` naming the key
  (``WorkerInfo.thread_state.state: 'Sleeping' is not one of ...``);
- an optional key (a field with a default) that is missing takes its
  default: a newer venusctl still reads an older agent, since fleets are
  upgraded one host at a time;
- a key it does not know is ignored (and so not shown again by venusctl):
  an older venusctl still reads a newer agent.

``to_json`` gives the wire JSON, keys in field order. Adding a field is one
line here (with a default, unless every agent ever shipped sends it) plus
its producer (``thread.py`` for WorkerInfo); the tests compare the
producers' real output with a golden shape.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import re
import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from worker_agent.states import NO_STAGE, PLANS, State

__all__ = [
    "PLAN_STATES",
    "STAGE_NAMES",
    "STAGE_ORDER",
    "STATE_NAMES",
    "SUMMARY_KEYS",
    "ACTOR_HEADER",
    "SECTOR_NUMBERS_LOW",
    "AgentExit",
    "AgentStatus",
    "Caller",
    "ErrorCount",
    "ErrorInfo",
    "HistoryEntry",
    "HistoryKind",
    "Method",
    "Report",
    "RpcCode",
    "SectorLog",
    "SectorRange",
    "StageStats",
    "StageLine",
    "StageLog",
    "StageRun",
    "Summary",
    "ThreadActivity",
    "ThreadHistory",
    "ThreadState",
    "WireError",
    "WorkerInfo",
    "WorkerStats",
    "bucket_seconds",
    "duration_bucket",
    "merge_stage_stats",
    "parse_duration",
    "parse_sector_id",
    "stage_stats",
    "summarize",
]


# ---------------------------------------------------------------- names and codes


class Method(str, enum.Enum):
    """The control API's methods (damocles-worker's names, so one client talks to either)."""

    LIST = "VenusWorker.WorkerList"
    PAUSE = "VenusWorker.WorkerPause"
    RESUME = "VenusWorker.WorkerResume"
    REPORT = "VenusWorker.WorkerReport"
    VERSION = "VenusWorker.WorkerVersion"
    # Ours only (issue 15): a thread's history, one sector's, the stage statistics.
    HISTORY = "VenusWorker.WorkerHistory"
    SECTOR = "VenusWorker.SectorHistory"
    STATS = "VenusWorker.WorkerStats"
    # Ours only: cancel a pause queued while a stage runs (never resumes a paused thread).
    CANCEL_PAUSE = "VenusWorker.WorkerCancelPause"
    # Ours only: what a thread's last stage runs printed (worker_agent/stagelog.py).
    STAGE_LOG = "VenusWorker.WorkerStageLog"


class RpcCode(enum.IntEnum):
    """``error.code`` of a JSON-RPC error reply, and of the CLI's ``--json`` error document."""

    PARSE_ERROR = -32700  # the body is not JSON
    INVALID_REQUEST = -32600  # not a JSON-RPC 2.0 request object, or an empty batch
    METHOD_NOT_FOUND = -32601
    INVALID_PARAMS = -32602  # wrong count or type, worker #N not found, a state not of the plan
    INTERNAL_ERROR = -32603  # the handler failed; the daemon keeps running
    NOT_PAUSED = 1001  # resume of a thread that is not paused
    CHANGE_NOT_SAVED = 1002  # the record write failed (or the store is unusable): nothing changed
    NO_HISTORY = 1003  # the history is off ([worker] history = false) or cannot be read
    AGENT_NOT_RUNNING = -32099  # client side only: nothing answers on the socket
    CONFIG_ERROR = -32098  # CLI only: a usage or configuration error (exit 2)
    # client side only: the socket is there but this user cannot talk to it (permission
    # denied, a timeout, a reset): the agent may well be running
    AGENT_UNREACHABLE = -32097


class AgentExit(enum.IntEnum):
    """Exit codes of ``venus-worker worker ...`` (the client commands)."""

    OK = 0
    REFUSED = 1  # the agent answered with an error
    USAGE = 2  # usage or configuration error
    NOT_RUNNING = 3  # no socket, or connection refused


class ThreadState(str, enum.Enum):
    """WorkerInfo ``thread_state.state``: what the thread is doing right now."""

    Idle = "Idle"  # between stages or tasks
    Running = "Running"  # a compute stage runs (thread_state.proc says which processor)
    Waiting = "Waiting"  # a chain wait (WaitSeed ...) or a retry back-off
    Paused = "Paused"  # by hand, or by an error (then last_error is set)

    def __str__(self) -> str:
        return self.value


STATE_NAMES: tuple[str, ...] = tuple(state.value for state in State)
PLAN_STATES: dict[str, tuple[str, ...]] = {
    name: tuple(state.value for state in plan.states) for name, plan in PLANS.items()
}
STAGE_NAMES: frozenset[str] = frozenset(
    plan.stage(state) for plan in PLANS.values() for state in State
) - {NO_STAGE}
# The stage labels in the order a task meets them (sealer's first, then the other plans').
STAGE_ORDER: tuple[str, ...] = tuple(
    stage
    for stage in dict.fromkeys(plan.stage(s) for plan in PLANS.values() for s in plan.states)
    if stage != NO_STAGE
)


# ---------------------------------------------------------------- durations

_BARE_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")
# Longest unit first where one is a prefix of another (ms before m, min before m).
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|min|sec|s|m|h|d)\s*")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, *, bare_seconds: bool = False) -> float:
    """Seconds in a duration: one or more NUMBER+UNIT parts, spaces allowed between them.

    Units ms, s (sec), m (min), h, d; numbers may have decimals: ``500ms``,
    ``30s``, ``5m``, ``5min``, ``1.5h``, ``1h30m``, ``1h 30m``, ``2d``.
    With ``bare_seconds`` a plain number is seconds (``600``): venusctl's
    options and inventory always took that; the agent config does not (a
    bare "30" there could mean seconds or milliseconds: write the unit).
    Anything else raises ValueError("invalid duration ...").
    """
    stripped = text.strip() if isinstance(text, str) else ""
    if bare_seconds and _BARE_SECONDS.fullmatch(stripped):
        return float(stripped)
    total, position = 0.0, 0
    while position < len(stripped):
        part = _DURATION_PART.match(stripped, position)
        if part is None:
            break
        total += float(part.group(1)) * _UNIT_SECONDS[part.group(2)]
        position = part.end()
    if not stripped or position < len(stripped):
        raise ValueError(f"invalid duration {stripped or text!r} (examples: 30s, 10m, 1h30m)")
    return total


# ---------------------------------------------------------------- typed JSON


class WireError(ValueError):
    """A JSON value that breaks the contract; str() names the key and what is wrong."""


_OMIT_NONE = "omit_none"  # field metadata: left out of to_json() when None
_KEY = "key"  # field metadata: the JSON key, when it is not the field's name
_HINTS: dict[type, dict[str, Any]] = {}


class _Wire:
    """from_json/to_json for the dataclasses below, driven by their field types."""

    @classmethod
    def from_json(cls, data: Any, where: str | None = None) -> Any:
        try:
            return _fast_from_json(cls, data)
        except _Mismatch:
            pass  # the value breaks the contract: the checks below say where and how
        where = where or cls.__name__
        if not isinstance(data, dict):
            raise WireError(f"{where}: expected an object, got {_json_type(data)}")
        hints = _hints(cls)
        values = {}
        for spec in dataclasses.fields(cls):
            key = spec.metadata.get(_KEY, spec.name)
            if key in data:
                values[spec.name] = _decode(data[key], hints[spec.name], f"{where}.{key}")
            elif (
                spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING
            ):
                raise WireError(f"{where}: missing {key!r}")
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        document = {}
        for name, key, _, _, omit_none in _plan(type(self)):
            value = getattr(self, name)
            if value is None and omit_none:
                continue
            document[key] = _encode(value)
        return document


# The fast path of from_json/to_json: each class's fields, keys and value checks worked out
# once (typing's introspection per value made a 300-host answer cost ~0.1 s). A value that
# fails a check goes the slow way, which words the error.


class _Mismatch(Exception):
    """A value the fast path does not take: from_json's checks then say why."""


_PLANS: dict[type, list[tuple[str, str, Any, bool, bool]]] = {}


def _plan(cls: type) -> list[tuple[str, str, Any, bool, bool]]:
    """(field name, JSON key, value check, required, omitted when None) of each field."""
    plan = _PLANS.get(cls)
    if plan is None:
        hints = _hints(cls)
        plan = [
            (
                spec.name,
                spec.metadata.get(_KEY, spec.name),
                _checker(hints[spec.name]),
                spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING,
                bool(spec.metadata.get(_OMIT_NONE)),
            )
            for spec in dataclasses.fields(cls)
        ]
        _PLANS[cls] = plan
    return plan


def _fast_from_json(cls: type, data: Any) -> Any:
    if not isinstance(data, dict):
        raise _Mismatch
    values = {}
    for name, key, check, required, _ in _plan(cls):
        if key in data:
            values[name] = check(data[key])
        elif required:
            raise _Mismatch
    return cls(**values)


def _checker(hint: Any) -> Any:
    """A function value -> decoded value that raises _Mismatch where _decode would fail."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        kinds = [option for option in options if option is not type(None)]
        inner = _checker(kinds[0]) if len(kinds) == 1 else _refuse
        if type(None) not in options:
            return inner
        return lambda value: None if value is None else inner(value)
    if origin is list:
        (item,) = typing.get_args(hint)
        each = _checker(item)

        def check_list(value: Any) -> Any:
            if not isinstance(value, list):
                raise _Mismatch
            return [each(entry) for entry in value]

        return check_list
    if isinstance(hint, type) and issubclass(hint, _Wire):
        return lambda value: _fast_from_json(hint, value)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):

        def check_enum(value: Any) -> Any:
            try:
                return hint(value)
            except ValueError:
                raise _Mismatch from None

        return check_enum
    if hint is float:

        def check_float(value: Any) -> float:
            if _is_number(value):
                return float(value)
            raise _Mismatch

        return check_float
    if hint is int:

        def check_int(value: Any) -> int:
            if _is_number(value) and isinstance(value, int):
                return value
            raise _Mismatch

        return check_int
    if hint in (str, bool):

        def check_plain(value: Any) -> Any:
            if isinstance(value, hint):
                return value
            raise _Mismatch

        return check_plain
    return _refuse


def _refuse(value: Any) -> Any:
    raise _Mismatch


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _decode(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        (kind,) = [option for option in options if option is not type(None)]
        return _decode(value, kind, where)
    if origin is list:
        if not isinstance(value, list):
            raise WireError(f"{where}: expected an array, got {_json_type(value)}")
        (item,) = typing.get_args(hint)
        return [_decode(entry, item, f"{where}[{n}]") for n, entry in enumerate(value)]
    if isinstance(hint, type) and issubclass(hint, _Wire):
        return hint.from_json(value, where)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            valid = ", ".join(str(member.value) for member in hint)
            raise WireError(f"{where}: {value!r} is not one of {valid}") from None
    if hint is float and _is_number(value):
        return float(value)
    if hint is int and _is_number(value) and isinstance(value, int):
        return value
    if hint in (str, bool) and isinstance(value, hint):
        return value
    raise WireError(f"{where}: expected {_TYPE_NAMES[hint]}, got {_json_type(value)}")


def _encode(value: Any) -> Any:
    if isinstance(value, _Wire):
        return value.to_json()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list):
        return [_encode(entry) for entry in value]
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _json_type(value: Any) -> str:
    """How an error message shows a value: its JSON spelling, or its kind when long."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    text = json.dumps(value)
    return text if len(text) <= 40 else f"a {len(text)}-character value"


# ---------------------------------------------------------------- the values


@dataclass(frozen=True)
class ThreadActivity(_Wire):
    """WorkerInfo ``thread_state``."""

    # None only from a 2022 damocles-worker, which tells paused from not paused only.
    state: ThreadState | None
    elapsed: int | None  # whole seconds in this state (None while Idle)
    proc: str | None  # the processor while Running ("mock", "command")


@dataclass(frozen=True)
class WorkerInfo(_Wire):
    """One sealing thread, as ``VenusWorker.WorkerList`` returns it (docs/protocol.md)."""

    index: int
    location: str | None
    plan: str | None  # None: a 2022 damocles-worker does not say
    job_id: str | None  # the sector, e.g. s-t010000-2; None without a task
    job_state: str  # the task's state name; "" without a task
    job_stage: str | None  # the stage label of the work from job_state; None when there is none
    thread_state: ThreadActivity
    state_elapsed: int | None  # whole seconds since the task entered job_state
    last_error: str | None  # "<level>: <message>"; None when not paused by an error
    # A pause asked for while a stage runs: taken at the stage's end, kept over a restart.
    # Optional: agents before it, and damocles-workers, do not send it.
    pause_requested: bool = False
    # How often [[sealing.auto_resume]] rules resumed the current task (0 without a task).
    # Optional: agents before it, and damocles-workers, do not send it.
    auto_resumes: int = 0

    @property
    def paused(self) -> bool:
        return self.thread_state.state is ThreadState.Paused

    @property
    def busy(self) -> bool:
        """A stage in flight: Running, or Waiting on the chain."""
        return self.thread_state.state in (ThreadState.Running, ThreadState.Waiting)


@dataclass(frozen=True)
class Summary(_Wire):
    """The heartbeat's counts (the keys are damocles-worker's ping names)."""

    threads: int = field(metadata={_KEY: "Threads"})
    empty: int = field(metadata={_KEY: "Empty"})  # threads without a job
    paused: int = field(metadata={_KEY: "Paused"})
    # None when some thread's state is unknown (a 2022 damocles-worker): never a false 0.
    running: int | None = field(metadata={_KEY: "Running"})
    waiting: int | None = field(metadata={_KEY: "Waiting"})
    errors: int = field(metadata={_KEY: "Errors"})  # threads with a last_error


SUMMARY_KEYS: tuple[str, ...] = tuple(spec.metadata[_KEY] for spec in dataclasses.fields(Summary))


def summarize(infos: Iterable[WorkerInfo]) -> Summary:
    """The summary counts of a thread list: the one rule, for the heartbeat and venusctl."""
    infos = list(infos)
    states = [info.thread_state.state for info in infos]
    unknown = None in states
    return Summary(
        threads=len(infos),
        empty=sum(1 for info in infos if not info.job_id),
        paused=states.count(ThreadState.Paused),
        running=None if unknown else states.count(ThreadState.Running),
        waiting=None if unknown else states.count(ThreadState.Waiting),
        errors=sum(1 for info in infos if info.last_error),
    )


@dataclass(frozen=True)
class Report(_Wire):
    """The heartbeat report (``<state_dir>/report.json``, ``WorkerReport``, ``worker report``)."""

    schema: int
    name: str
    version: str
    pid: int
    time: float  # Unix seconds on the worker's clock
    socket: str
    ping_interval: float
    summary: Summary
    # Each miner's configured [sealing] sector_numbers and how much of it is left ([]
    # without any). Optional: agents before sector ranges do not send it (None).
    sector_ranges: list[SectorRange] | None = field(default=None, metadata={_OMIT_NONE: True})
    # Seconds since `time` on the reader's clock: added by WorkerReport and the CLI, not in
    # the file.
    age: float | None = field(default=None, metadata={_OMIT_NONE: True})


@dataclass(frozen=True)
class StageLine(_Wire):
    """One line a stage run printed (``WorkerStageLog``; worker_agent/stagelog.py)."""

    n: int  # the run's line number, from 0, over both streams
    t: float  # Unix seconds on the worker's clock
    s: str  # "stdout" or "stderr"
    text: str  # exact (worker text: escape it before a terminal)
    # True: the line was longer than stagelog.MAX_LINE (sent only then)
    cut: bool | None = field(default=None, metadata={_OMIT_NONE: True})


@dataclass(frozen=True)
class StageRun(_Wire):
    """One stage run of a thread and its kept lines."""

    run: int
    stage: str
    state: str
    plan: str | None
    sector_id: str | None
    processor: str
    argv: list[str] | None
    started: float
    ended: float | None  # None while it runs
    exit_status: int | None
    timed_out: bool
    outcome: str | None  # "done", "interrupted: ...", "<level>: <message>"; None while it runs
    dropped: int  # lines dropped by the bound (before first_line)
    first_line: int
    lines_total: int
    lines: list[StageLine]


@dataclass(frozen=True)
class StageLog(_Wire):
    """``VenusWorker.WorkerStageLog``'s result: the runs a query asked for, oldest first."""

    index: int
    location: str
    runs: list[StageRun]
    kept_runs: int
    max_run_bytes: int


@dataclass(frozen=True)
class ErrorInfo(_Wire):
    """A JSON-RPC error object, also the CLI's ``{"error": ...}``."""

    code: int
    message: str


@dataclass(frozen=True)
class AgentStatus(_Wire):
    """``venus-worker worker status --json``: the fleet tool's host row in one call."""

    report: Report | None  # None when no heartbeat was ever written
    threads: list[WorkerInfo] | None  # None when the daemon could not be asked ...
    error: ErrorInfo | None  # ... and then why


# ---------------------------------------------------------------- sector ranges

# A range with fewer numbers left than this is reported low (health's sector-range-low
# finding; monitoring/venus-worker.rules.yml's VenusWorkerSectorNumbersLow uses it too).
SECTOR_NUMBERS_LOW = 100


@dataclass(frozen=True)
class SectorRange(_Wire):
    """One miner's ``[sealing] sector_numbers`` in the report: the range and what is left."""

    miner: int
    start: int
    end: int
    last: int  # the last number handed out; start - 1 before the first one
    left: int  # numbers still to hand out: end - last

    @property
    def low(self) -> bool:
        return self.left < SECTOR_NUMBERS_LOW


# ---------------------------------------------------------------- history

# The HTTP header a control client names itself in (venusctl sends user@control-host);
# the agent records it beside the socket peer's uid and pid (docs/protocol.md, "History").
ACTOR_HEADER = "Venus-Actor"

_SECTOR_FORMS = re.compile(r"(?:s-)?[tf]0([0-9]{1,19})-([0-9]{1,19})|([0-9]{1,19}):([0-9]{1,19})")


def parse_sector_id(text: str) -> str:
    """The agent's name of a sector: ``s-t01000-2``, also written ``t01000-2``,
    ``f01000-2`` or ``1000:2`` (miner 1000, number 2). ValueError for anything else."""
    match = _SECTOR_FORMS.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"invalid sector id {text!r} (examples: s-t01000-2, t01000-2, 1000:2)")
    miner, number = (int(part) for part in (match[1] or match[3], match[2] or match[4]))
    return f"s-t0{miner}-{number}"


class HistoryKind(str, enum.Enum):
    """``HistoryEntry.kind``: what one line of a thread's history records.

    A reader takes any string there (an agent newer than the reader may write
    kinds it does not know: shown as they are); new kinds are added here.
    """

    STATE = "state"  # the task moved from -> to: its stage succeeded (from Empty: a new task)
    RETRY = "retry"  # the stage failed with a temporary error: it runs again
    ABORT = "abort"  # the stage failed with an abort error: the task moved to Aborted
    PAUSE_REQUEST = "pause_request"  # someone asked for a pause (`by`), taken at a boundary
    PAUSE_CANCEL = "pause_cancel"  # someone cancelled the pause still queued (`by`)
    PAUSE = "pause"  # the thread paused: by an error (outcome, error) or as asked
    RESUME = "resume"  # someone resumed it (`by`), maybe into the `requested` state
    AUTO_RESUME = "auto_resume"  # an [[sealing.auto_resume]] rule resumed it
    # At start: the record is past the history's last line for the task (a crash
    # between the record's write and the history's, or the history begins here).
    RECOVERED = "recovered"
    LOST = "lost"  # lines the agent could not write (a disk error); how many in `note`

    def __str__(self) -> str:
        return self.value


def _optional(key: str | None = None) -> Any:
    """An optional field left out of the JSON when None (history lines stay short)."""
    metadata = {_OMIT_NONE: True} if key is None else {_OMIT_NONE: True, _KEY: key}
    return field(default=None, metadata=metadata)


@dataclass(frozen=True)
class Caller(_Wire):
    """Who asked for a change: the control socket peer's uid and pid (SO_PEERCRED, from
    the kernel) and the name the client gave in its Venus-Actor header (a claim)."""

    uid: int | None = _optional()
    pid: int | None = _optional()
    actor: str | None = _optional()


@dataclass(frozen=True)
class HistoryEntry(_Wire):
    """One line of a thread's history file (JSON Lines, docs/protocol.md "History")."""

    time: float  # Unix seconds, the worker's clock
    kind: str  # a HistoryKind value
    index: int  # the thread
    sector: str | None = _optional()
    plan: str | None = _optional()
    from_state: str | None = _optional("from")  # the task's state before
    to_state: str | None = _optional("to")  # and after (the same when it did not move)
    stage: str | None = _optional()  # the stage that ran (state, retry, abort, pause)
    duration: float | None = _optional()  # seconds that run of the stage took
    in_state: float | None = _optional()  # seconds the task had been in `from` by then
    outcome: str | None = _optional()  # "ok", or the error's level (temporary, permanent ...)
    error: str | None = _optional()  # the error's text, without its level
    retry: int | None = _optional()  # retry: how many the task has used in this state
    requested: str | None = _optional()  # resume: the state asked for
    by: Caller | None = _optional()  # pause_request, resume: who asked
    note: str | None = _optional()


@dataclass(frozen=True)
class ThreadHistory(_Wire):
    """``VenusWorker.WorkerHistory [index, limit]``: the last entries of one thread."""

    index: int
    location: str
    entries: list[HistoryEntry]  # oldest first
    kept: int  # entries in the thread's history files (the reply has the last `limit`)


@dataclass(frozen=True)
class SectorLog(_Wire):
    """``VenusWorker.SectorHistory [sector_id]``: where a sector is and what happened to it."""

    sector: str
    # The threads working on it now; None when the live list could not be asked (the
    # CLI reading the files of a stopped daemon).
    threads: list[WorkerInfo] | None
    entries: list[HistoryEntry]  # every thread's entries for it, oldest first


@dataclass(frozen=True)
class ErrorCount(_Wire):
    error: str  # "<level>: <text>"
    count: int


@dataclass(frozen=True)
class StageStats(_Wire):
    """One stage's runs over the history (``stage_stats``); seconds."""

    stage: str
    tasks: int  # runs that succeeded (a task went through the stage)
    failures: int  # runs that failed: temporary (retried), permanent, abort, critical
    p50: float | None  # of the successful runs' durations; None without any
    p90: float | None
    max: float | None
    total: float  # seconds of all successful runs
    # The successful durations as [bucket, count] pairs (``duration_bucket``): what lets a
    # fleet tool merge hosts' figures into fleet quantiles (``merge_stage_stats``).
    buckets: list[list[int]]
    errors: list[ErrorCount]  # the most common first, at most STATS_ERRORS


@dataclass(frozen=True)
class WorkerStats(_Wire):
    """``VenusWorker.WorkerStats [window, indexes, plan]``: per stage, over the history."""

    time: float  # the worker's clock when computed
    window: float | None  # seconds back from `time`; None: all the history kept
    threads: list[int]  # the threads counted
    stages: list[StageStats]


# Stage durations are counted in logarithmic buckets, 16 per doubling: a bucket's
# middle is within 2.2 % of every duration in it, which is what a fleet-wide p50/p90
# merged from several hosts' buckets may be off by (one host's own are exact).
BUCKETS_PER_DOUBLING = 16
STATS_ERRORS = 5
_SMALLEST = 0.001  # durations below a millisecond share the lowest bucket


def duration_bucket(seconds: float) -> int:
    """The bucket of a duration (bucket i holds [2^(i/16), 2^((i+1)/16)) seconds)."""
    return math.floor(math.log2(max(seconds, _SMALLEST)) * BUCKETS_PER_DOUBLING)


def bucket_seconds(bucket: int) -> float:
    """The middle of a bucket (geometric), the value a merged quantile takes."""
    return 2 ** ((bucket + 0.5) / BUCKETS_PER_DOUBLING)


def _rank(count: int, fraction: float) -> int:
    """Nearest rank: the 1-based position of the `fraction` quantile among `count`."""
    return max(1, math.ceil(fraction * count))


def stage_stats(stage: str, durations: Iterable[float], errors: Iterable[str]) -> StageStats:
    """One stage's figures from its successful run durations and its failures' texts."""
    ordered = sorted(durations)
    buckets: dict[int, int] = {}
    for seconds in ordered:
        bucket = duration_bucket(seconds)
        buckets[bucket] = buckets.get(bucket, 0) + 1
    counted: dict[str, int] = {}
    failures = 0
    for error in errors:
        failures += 1
        counted[error] = counted.get(error, 0) + 1
    count = len(ordered)
    return StageStats(
        stage=stage,
        tasks=count,
        failures=failures,
        p50=ordered[_rank(count, 0.5) - 1] if ordered else None,
        p90=ordered[_rank(count, 0.9) - 1] if ordered else None,
        max=ordered[-1] if ordered else None,
        total=round(sum(ordered), 3),
        buckets=[[bucket, n] for bucket, n in sorted(buckets.items())],
        errors=_top_errors(counted),
    )


def _top_errors(counted: dict[str, int]) -> list[ErrorCount]:
    ranked = sorted(counted.items(), key=lambda item: (-item[1], item[0]))
    return [ErrorCount(error, count) for error, count in ranked[:STATS_ERRORS]]


def merge_stage_stats(parts: Sequence[StageStats]) -> StageStats:
    """Several hosts' figures of one stage as one: counts and max exact, p50/p90 from the
    merged buckets (within 2.2 %; one part is returned as it is, exact), errors summed."""
    if len(parts) == 1:
        return parts[0]
    buckets: dict[int, int] = {}
    counted: dict[str, int] = {}
    for part in parts:
        for bucket, count in part.buckets:
            buckets[bucket] = buckets.get(bucket, 0) + count
        for error in part.errors:
            counted[error.error] = counted.get(error.error, 0) + error.count
    tasks = sum(part.tasks for part in parts)
    highest = max((part.max for part in parts if part.max is not None), default=None)

    def quantile(fraction: float) -> float | None:
        if not tasks:
            return None
        rank, seen = _rank(tasks, fraction), 0
        for bucket, count in sorted(buckets.items()):
            seen += count
            if seen >= rank:
                return min(bucket_seconds(bucket), highest)
        return highest

    return StageStats(
        stage=parts[0].stage,
        tasks=tasks,
        failures=sum(part.failures for part in parts),
        p50=quantile(0.5),
        p90=quantile(0.9),
        max=highest,
        total=round(sum(part.total for part in parts), 3),
        buckets=[[bucket, n] for bucket, n in sorted(buckets.items())],
        errors=_top_errors(counted),
    )
