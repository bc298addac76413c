"""Crash-safe persistence: each thread's task record, the sector counter, lock files.

Every file is written the same way (``write_json_atomic``): a temp file of
its own (a random name created with ``O_EXCL | O_NOFOLLOW``, so nothing planted
in the folder is ever followed or truncated) in the same directory, fsync,
``os.replace`` over the old file, fsync of the directory. A reader therefore
sees either the old or the new content, never a torn file, whatever moment
the process is killed at.

Files:

- ``<location>/meta/task.json`` — one sealing thread's record (``ThreadRecord``):
  the paused flag, the last error, the task (plan, state, prev_state, sector,
  retry count, when the state was entered, auto-resumes used), a pending
  pause request or auto-resume, the process group of a running command stage,
  and the highest sector numbers the worker had handed out when it was written
  (``last_numbers``: the witness that rebuilds a lost counter). Schema
  ``SCHEMA``; every field is type-checked on load and a bad one is named.
- ``<location>/meta/daemon.lock`` — held (flock) by the daemon using the store.
- ``<state_dir>/sector-counter.json`` — the last sector number handed out per
  miner. It is written *before* a task record uses the number, so a crash
  can skip a number but never hand the same one out twice.
- ``<location>/data/`` — the sector's working files; cleared when a task is
  finished or aborted.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import shutil
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from worker_agent.states import PLANS, State, plan_named, sector_id

__all__ = [
    "SCHEMA",
    "LockHeld",
    "RangeExhausted",
    "SectorCounter",
    "StageProcess",
    "StoreError",
    "Task",
    "TaskStore",
    "ThreadRecord",
    "hold_lock",
    "merge_numbers",
    "read_json",
    "witnessed_numbers",
    "write_json_atomic",
]

SCHEMA = 1
RECORD_NAME = "task.json"
COUNTER_NAME = "sector-counter.json"
LOCK_NAME = "daemon.lock"
_TEMP_MARK = ".tmp-"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class StoreError(Exception):
    """A record that cannot be read or trusted; str() says which file and why."""


class RangeExhausted(Exception):
    """A miner's configured sector range has no number left; str() says which and what to do."""


class LockHeld(Exception):
    """Another process holds a lock file; str() names the file and the holder's pid."""

    def __init__(self, path: Path, pid: int | None):
        holder = f"pid {pid}" if pid else "a process whose pid is not recorded"
        super().__init__(f"{path} is held by {holder}")
        self.path, self.pid = path, pid


# ---------------------------------------------------------------- files


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_temp(path: Path, mode: int) -> tuple[Path, int]:
    """A new temp file beside `path`, never an existing file or a symlink planted there."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | os.O_CLOEXEC
    while True:
        temp = path.with_name(f"{path.name}{_TEMP_MARK}{os.getpid()}-{secrets.token_hex(6)}")
        try:
            return temp, os.open(temp, flags, mode)
        except FileExistsError:
            continue  # 48 random bits taken already: draw again


def write_json_atomic(path: Path, data: Any, mode: int = 0o644, durable: bool = True) -> None:
    """Replace `path` with `data` as JSON so that a reader or a crash sees old or new, never
    half; `durable=False` skips the fsyncs (a file whose loss in a power cut is harmless)."""
    # Compact on purpose: with indent, json falls back to its pure-Python encoder (3x slower),
    # and records are rewritten at every state change of every thread.
    payload = json.dumps(data, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    temp, fd = _create_temp(path, mode)
    try:
        try:
            view = memoryview(payload)
            while view:  # plain syscalls: this runs at every state change of every thread
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)  # replaces a symlink at `path` itself, never its target
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    if durable:
        _fsync_dir(path.parent)


def read_json(path: Path) -> Any:
    """The JSON in `path`; FileNotFoundError if absent, StoreError if unreadable.

    A symlink is not followed: every file the daemon reads it wrote itself.
    """
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as file:
            raw = file.read()
    except FileNotFoundError:
        raise
    except OSError as exc:
        problem = (
            "is a symlink" if exc.errno == errno.ELOOP else f"cannot read: {exc.strerror or exc}"
        )
        raise StoreError(f"{path}: {problem}") from None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise StoreError(f"{path}: not valid JSON ({exc})") from None


def remove_stale_temps(folder: Path) -> None:
    """Delete temp files a killed writer left behind (they were never renamed into place)."""
    with contextlib.suppress(FileNotFoundError):
        for entry in folder.iterdir():
            if _TEMP_MARK in entry.name and (entry.is_symlink() or entry.is_file()):
                entry.unlink()


def hold_lock(path: Path) -> int:
    """Lock `path` (flock, created 0600 if missing, never through a symlink); the open fd.

    The fd is the lock: it is held until closed or until the process dies, so a
    SIGKILLed daemon never leaves a stale lock. The holder's pid is written in
    the file for the message another process gets (``LockHeld``).
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        finally:
            os.close(fd)
        raise LockHeld(path, int(text) if text.isdigit() else None) from None
    except BaseException:
        os.close(fd)
        raise
    with contextlib.suppress(OSError):  # a full disk: the lock holds without the pid
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


# ---------------------------------------------------------------- typed fields


class RecordError(ValueError):
    """One field of a record is missing or of the wrong type; str() names the field."""


def _describe(value: Any) -> str:
    kind = {
        dict: "an object", list: "an array", bool: "a boolean", str: "a string",
        int: "an integer", float: "a number", type(None): "null",
    }.get(type(value), type(value).__name__)  # fmt: skip
    shown = json.dumps(value)
    return kind if len(shown) > 40 or isinstance(value, (dict, list)) else f"{kind} ({shown})"


_REQUIRED = object()


class _Fields:
    """A JSON object read field by field, each of one exact type (bool is not an int)."""

    def __init__(self, prefix: str, data: Any):
        self.prefix = prefix
        if not isinstance(data, dict):
            where = f"field {prefix.rstrip('.')}: " if prefix else ""
            raise RecordError(f"{where}expected an object, got {_describe(data)}")
        self.data = data

    def _get(self, key: str, default: Any) -> Any:
        if key in self.data:
            return self.data[key]
        if default is _REQUIRED:
            raise RecordError(f"field {self.prefix}{key}: missing")
        return default

    def fail(self, key: str, expected: str, value: Any) -> RecordError:
        return RecordError(f"field {self.prefix}{key}: expected {expected}, got {_describe(value)}")

    def boolean(self, key: str, default: Any = _REQUIRED) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, "true or false", value)
        return value

    def number(self, key: str, default: Any = _REQUIRED, null: bool = False) -> float | None:
        value = self._get(key, default)
        if value is None and null:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(key, "a number" + (" or null" if null else ""), value)
        return float(value)

    def integer(
        self, key: str, default: Any = _REQUIRED, null: bool = False, minimum: int = 0
    ) -> int | None:
        value = self._get(key, default)
        if value is None and null:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            expected = f"an integer of at least {minimum}" + (" or null" if null else "")
            raise self.fail(key, expected, value)
        return value

    def string(self, key: str, default: Any = _REQUIRED, null: bool = False) -> str | None:
        value = self._get(key, default)
        if value is None and null:
            return None
        if not isinstance(value, str):
            raise self.fail(key, "a string" + (" or null" if null else ""), value)
        return value

    def state(self, key: str, null: bool = False) -> State | None:
        name = self.string(key, None if null else _REQUIRED, null)
        if name is None:
            return None
        try:
            return State(name)
        except ValueError:
            raise self.fail(key, "a state name", name) from None

    def counts(self, key: str, default: Any) -> dict[str, int]:
        """An object of non-negative integers (sector numbers per miner, resumes per rule)."""
        value = self._get(key, default)
        if value is None:
            return value
        if not isinstance(value, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value.values()
        ):
            raise self.fail(key, "an object of non-negative integers", value)
        return dict(value)

    def table(self, key: str, default: Any = _REQUIRED) -> _Fields | None:
        value = self._get(key, default)
        return None if value is None else _Fields(f"{self.prefix}{key}.", value)


# ---------------------------------------------------------------- records


@dataclass
class Task:
    """The sector a thread works on. Mutated only through thread.change_state()."""

    plan: str
    state: State
    prev_state: State | None
    miner: int
    number: int | None
    retry: int
    entered_at: float
    # auto-resumes used on this task, per [[sealing.auto_resume]] rule (its `match` text)
    auto_resumes: dict[str, int] = field(default_factory=dict)

    @property
    def sector_id(self) -> str | None:
        return None if self.number is None else sector_id(self.miner, self.number)

    def to_json(self) -> dict:
        return {
            "plan": self.plan,
            "state": self.state.value,
            "prev_state": self.prev_state.value if self.prev_state else None,
            "miner": self.miner,
            "number": self.number,
            "sector_id": self.sector_id,
            "retry": self.retry,
            "entered_at": self.entered_at,
            "auto_resumes": dict(self.auto_resumes),
        }

    @classmethod
    def from_json(cls, data: Any) -> Task:
        fields = _Fields("task.", data)
        plan = fields.string("plan")
        if plan not in PLANS:
            raise fields.fail("plan", f"one of {', '.join(PLANS)}", plan)
        state = fields.state("state")
        if state not in plan_named(plan).states:
            raise fields.fail("state", f"a state of plan {plan}", state.value)
        task = cls(
            plan=plan,
            state=state,
            prev_state=fields.state("prev_state", null=True),
            miner=fields.integer("miner", minimum=1),
            number=fields.integer("number", None, null=True, minimum=1),
            retry=fields.integer("retry", 0),
            entered_at=fields.number("entered_at"),
            auto_resumes=fields.counts("auto_resumes", {}),
        )
        fields.string("sector_id", None, null=True)  # derived; checked for its type only
        return task

    def copy(self) -> Task:
        return replace(self, auto_resumes=dict(self.auto_resumes))


@dataclass(frozen=True)
class StageProcess:
    """A command stage's process group, saved while it runs (killed if left from a crash).

    Saved twice: with the token before the command starts (so nothing it
    starts is ever unknown to the record), then with its process group.
    """

    pgid: int | None
    token: str  # VENUS_STAGE_TOKEN in the stage's environment: tells our processes from others
    boot_id: str  # a pgid means nothing after a reboot
    stage: str

    def to_json(self) -> dict:
        return {
            "pgid": self.pgid,
            "token": self.token,
            "boot_id": self.boot_id,
            "stage": self.stage,
        }

    @classmethod
    def from_json(cls, fields: _Fields) -> StageProcess:
        return cls(
            pgid=fields.integer("pgid", null=True, minimum=2),
            token=fields.string("token"),
            boot_id=fields.string("boot_id"),
            stage=fields.string("stage"),
        )


@dataclass
class ThreadRecord:
    """Everything about one sealing thread that must survive a restart."""

    paused: bool = False
    paused_at: float | None = None
    last_error: str | None = None
    task: Task | None = None
    # A pause asked for while a stage ran: saved at once, so a crash or a service
    # stop before the stage boundary does not forget it.
    pause_requested: bool = False
    # When an [[sealing.auto_resume]] rule resumes this error pause (wall clock), if one does.
    auto_resume_at: float | None = None
    # The command stage running now (its process group), None between stages.
    stage_process: StageProcess | None = None
    # The sector counter (per miner) when this record was written: every number at or
    # below it may have been used. None in records written before it existed.
    last_numbers: dict[str, int] | None = None

    def to_json(self) -> dict:
        return {
            "schema": SCHEMA,
            "paused": self.paused,
            "paused_at": self.paused_at,
            "last_error": self.last_error,
            "pause_requested": self.pause_requested,
            "auto_resume_at": self.auto_resume_at,
            "stage_process": self.stage_process.to_json() if self.stage_process else None,
            "last_numbers": self.last_numbers,
            "task": self.task.to_json() if self.task else None,
        }

    @classmethod
    def from_json(cls, data: Any) -> ThreadRecord:
        """The record in `data`; RecordError naming the first bad field.

        Fields added after schema 1 came out (pause_requested, auto_resume_at,
        stage_process, last_numbers, task.auto_resumes) may be absent.
        """
        fields = _Fields("", data)
        if data.get("schema") != SCHEMA:
            raise RecordError(f"schema {data.get('schema')!r}, this agent reads schema {SCHEMA}")
        task = data.get("task")
        stage_process = fields.table("stage_process", None)
        return cls(
            paused=fields.boolean("paused"),
            paused_at=fields.number("paused_at", None, null=True),
            last_error=fields.string("last_error", None, null=True),
            task=Task.from_json(task) if task is not None else None,
            pause_requested=fields.boolean("pause_requested", False),
            auto_resume_at=fields.number("auto_resume_at", None, null=True),
            stage_process=StageProcess.from_json(stage_process) if stage_process else None,
            last_numbers=fields.counts("last_numbers", None),
        )

    def copy(self) -> ThreadRecord:
        """A copy to change: the record in use only ever holds what is on disk."""
        return replace(
            self,
            task=self.task.copy() if self.task else None,
            last_numbers=None if self.last_numbers is None else dict(self.last_numbers),
        )


class TaskStore:
    """One location's record file, lock file and data folder."""

    def __init__(self, location: Path):
        self.location = location
        self.meta_dir = location / "meta"
        self.data_dir = location / "data"
        self.path = self.meta_dir / RECORD_NAME
        self.lock_path = self.meta_dir / LOCK_NAME
        self._lock_fd: int | None = None

    def prepare(self) -> None:
        """Create the location's folders (like damocles ≥0.9) and drop stale temp files."""
        self.meta_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.meta_dir)

    def lock(self) -> None:
        """Hold this store for the daemon's life; LockHeld if another process has it."""
        if self._lock_fd is None:
            self._lock_fd = hold_lock(self.lock_path)

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def has_record(self) -> bool:
        return os.path.lexists(self.path)

    def load(self) -> ThreadRecord:
        """The saved record, or a fresh one if this location never had one."""
        try:
            data = read_json(self.path)
        except FileNotFoundError:
            return ThreadRecord()
        try:
            return ThreadRecord.from_json(data)
        except RecordError as exc:
            raise StoreError(f"{self.path}: {exc}") from None

    def save(self, data: dict) -> None:
        write_json_atomic(self.path, data)

    def set_aside(self) -> Path:
        """Rename an unusable record out of the way (kept for a post-mortem); the new name."""
        aside = self.path.with_name(f"{RECORD_NAME}.unusable-{time.strftime('%Y%m%dT%H%M%S')}")
        os.replace(self.path, aside)
        _fsync_dir(self.meta_dir)
        return aside

    def clear_data(self) -> None:
        """Delete the sector's working files (abort / finish), keeping the folder."""
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)


# ---------------------------------------------------------------- sector numbers


class SectorCounter:
    """Hands out sector numbers per miner; persisted before use, never reused."""

    def __init__(self, state_dir: Path):
        self.path = state_dir / COUNTER_NAME
        self._lock = threading.Lock()
        self._last: dict[str, int] = {}

    def load(self) -> bool:
        """Read the counter file; False if there is none (StoreError if unusable)."""
        try:
            data = read_json(self.path)
        except FileNotFoundError:
            return False
        try:
            if data["schema"] != SCHEMA:
                raise ValueError(f"schema {data['schema']!r}")
            last = data["last"]
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in last.values()):
                raise ValueError("numbers must be integers")
            self._last = {str(k): v for k, v in last.items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StoreError(f"{self.path}: unusable sector counter ({exc})") from None
        return True

    def last(self, miner: int) -> int:
        with self._lock:
            return self._last.get(str(miner), 0)

    def snapshot(self) -> dict[str, int]:
        """Every miner's last number (what each record keeps as the counter's witness)."""
        with self._lock:
            return dict(self._last)

    def ensure_above(self, miner: int | str, number: int) -> None:
        """Never hand out `number` or below (used with the numbers found in records at start)."""
        with self._lock:
            if self._last.get(str(miner), 0) < number:
                self._save({**self._last, str(miner): number})

    def save_now(self) -> None:
        """Write the counter as it is (a fresh worker's first start)."""
        with self._lock:
            self._save(dict(self._last))

    def next(self, miner: int, sector_numbers: tuple[int, int] | None = None) -> int:
        """The next number of `miner`, within its `sector_numbers` range (start, end) if
        it has one (the daemon put the counter in it at start); RangeExhausted past its end."""
        with self._lock:
            number = self._last.get(str(miner), 0) + 1
            if sector_numbers is not None:
                start, end = sector_numbers
                number = max(number, start)
                if number > end:
                    raise RangeExhausted(
                        f"the sector range {start}-{end} of miner {miner} is"
                        " used up: no new task until the worker gets a new range ([sealing]"
                        " sector_numbers) and restarts"
                    )
            self._save({**self._last, str(miner): number})
            return number

    def _save(self, last: dict[str, int]) -> None:
        """Write `last`, and only then use it: a failed write changes nothing."""
        write_json_atomic(self.path, {"schema": SCHEMA, "last": last})
        self._last = last


def merge_numbers(*maps: dict[str, int] | None) -> dict[str, int]:
    """The highest number per miner over `maps` (None entries are skipped)."""
    merged: dict[str, int] = {}
    for numbers in maps:
        for miner, number in (numbers or {}).items():
            merged[miner] = max(merged.get(miner, 0), number)
    return merged


def witnessed_numbers(record: ThreadRecord) -> dict[str, int]:
    """The sector numbers a record proves were handed out: its counter copy and its task's."""
    task = record.task
    own = {str(task.miner): task.number} if task is not None and task.number else None
    return merge_numbers(record.last_numbers, own)
