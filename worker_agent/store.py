"""Crash-safe persistence: each thread's task record and the sector counter.

Every file is written the same way (``write_json_atomic``): a temp file in
the same directory, fsync, ``os.replace`` over the old file, fsync of the
directory. A reader therefore sees either the old or the new content, never
a torn file, whatever moment the process is killed at.

Files:

- ``<location>/meta/task.json`` — one sealing thread's record (``ThreadRecord``):
  the paused flag, the last error and the task (plan, state, prev_state,
  sector, retry count, when the state was entered). Schema ``SCHEMA``.
- ``<state_dir>/sector-counter.json`` — the last sector number handed out per
  miner. It is written *before* a task record uses the number, so a crash
  can skip a number but never hand the same one out twice.
- ``<location>/data/`` — the sector's working files; cleared when a task is
  finished or aborted.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker_agent.states import PLANS, State, sector_id

__all__ = [
    "SCHEMA",
    "SectorCounter",
    "StoreError",
    "Task",
    "TaskStore",
    "ThreadRecord",
    "read_json",
    "write_json_atomic",
]

SCHEMA = 1
RECORD_NAME = "task.json"
COUNTER_NAME = "sector-counter.json"
_TEMP_MARK = ".tmp-"


class StoreError(Exception):
    """A record that cannot be read or trusted; str() says which file and why."""


# ---------------------------------------------------------------- files


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: Any, mode: int = 0o644) -> None:
    """Replace `path` with `data` as JSON so that a crash leaves old or new, never half."""
    temp = path.with_name(f"{path.name}{_TEMP_MARK}{os.getpid()}-{threading.get_ident()}")
    # Compact on purpose: with indent, json falls back to its pure-Python encoder (3x slower),
    # and records are rewritten at every state change of every thread.
    payload = json.dumps(data, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            view = memoryview(payload)
            while view:  # plain syscalls: this runs at every state change of every thread
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    _fsync_dir(path.parent)


def read_json(path: Path) -> Any:
    """The JSON in `path`; FileNotFoundError if absent, StoreError if unreadable."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise StoreError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise StoreError(f"{path}: not valid JSON ({exc})") from None


def remove_stale_temps(folder: Path) -> None:
    """Delete temp files a killed writer left behind (they were never renamed into place)."""
    with contextlib.suppress(FileNotFoundError):
        for entry in folder.iterdir():
            if _TEMP_MARK in entry.name and entry.is_file():
                entry.unlink()


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
        }

    @classmethod
    def from_json(cls, data: dict) -> Task:
        plan = data["plan"]
        if plan not in PLANS:
            raise ValueError(f"unknown plan {plan!r}")
        prev = data.get("prev_state")
        number = data.get("number")
        if number is not None and not isinstance(number, int):
            raise ValueError("sector number is not an integer")
        return cls(
            plan=plan,
            state=State(data["state"]),
            prev_state=State(prev) if prev else None,
            miner=int(data["miner"]),
            number=number,
            retry=int(data.get("retry", 0)),
            entered_at=float(data["entered_at"]),
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

    def to_json(self) -> dict:
        return {
            "schema": SCHEMA,
            "paused": self.paused,
            "paused_at": self.paused_at,
            "last_error": self.last_error,
            "pause_requested": self.pause_requested,
            "task": self.task.to_json() if self.task else None,
        }

    @classmethod
    def from_json(cls, data: Any) -> ThreadRecord:
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        if data.get("schema") != SCHEMA:
            raise ValueError(f"schema {data.get('schema')!r}, this agent reads schema {SCHEMA}")
        task = data.get("task")
        return cls(
            paused=bool(data["paused"]),
            paused_at=data.get("paused_at"),
            last_error=data.get("last_error"),
            task=Task.from_json(task) if task is not None else None,
            # absent in records written before it existed: same schema, no request
            pause_requested=bool(data.get("pause_requested", False)),
        )


class TaskStore:
    """One location's record file and data folder."""

    def __init__(self, location: Path):
        self.location = location
        self.meta_dir = location / "meta"
        self.data_dir = location / "data"
        self.path = self.meta_dir / RECORD_NAME

    def prepare(self) -> None:
        """Create the location's folders (like damocles ≥0.9) and drop stale temp files."""
        self.meta_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.meta_dir)

    def load(self) -> ThreadRecord:
        """The saved record, or a fresh one if this location never had one."""
        try:
            data = read_json(self.path)
        except FileNotFoundError:
            return ThreadRecord()
        try:
            return ThreadRecord.from_json(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"{self.path}: unusable task record ({exc})") from None

    def save(self, data: dict) -> None:
        write_json_atomic(self.path, data)

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

    def load(self) -> None:
        try:
            data = read_json(self.path)
        except FileNotFoundError:
            return
        try:
            if data["schema"] != SCHEMA:
                raise ValueError(f"schema {data['schema']!r}")
            self._last = {str(k): int(v) for k, v in data["last"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StoreError(f"{self.path}: unusable sector counter ({exc})") from None

    def last(self, miner: int) -> int:
        with self._lock:
            return self._last.get(str(miner), 0)

    def ensure_above(self, miner: int, number: int) -> None:
        """Never hand out `number` or below (used with the numbers found in records at start)."""
        with self._lock:
            if self._last.get(str(miner), 0) < number:
                self._last[str(miner)] = number
                self._save()

    def next(self, miner: int) -> int:
        with self._lock:
            number = self._last.get(str(miner), 0) + 1
            self._last[str(miner)] = number
            self._save()
            return number

    def _save(self) -> None:
        write_json_atomic(self.path, {"schema": SCHEMA, "last": dict(self._last)})
