"""Each sealing thread's history: an append-only JSON Lines file, crash-safe and rotated.

One file per thread's store, in the state folder (which the daemon has
locked and checked like sshd's StrictModes), so a stopped daemon's history
can still be read by whoever may read its heartbeat (the deploy role's
control group)::

    <state_dir>/history/<store name>-<hash of its path>.jsonl     the current file
    <state_dir>/history/<store name>-<hash of its path>.1.jsonl   the one before

Each file starts with a header line ``{"history": 1, "location": ..., "index":
...}``; every other line is one ``api.HistoryEntry`` (docs/protocol.md,
"History").

Crash safety:

- A line is written whole by one ``write`` on an ``O_APPEND`` descriptor and
  fsync'ed (fdatasync) right after the thread's record was, at the same
  points (``thread._commit``): an entry on disk is a change that was saved.
  The record is written first: a crash in between loses at most that line,
  and the next start writes a ``recovered`` line where the record is ahead.
- A reader takes complete lines only: a torn last line (a write cut short by
  a crash) is ignored, and a line that is not valid JSON is skipped, never
  the lines before or after it. At open the writer cuts a torn tail off, so
  its next line starts on a line of its own.
- A write that fails (a full disk) is cut back off the file and counted; the
  next write that succeeds is preceded by a ``lost`` line saying how many.
- Files are opened with ``O_NOFOLLOW`` (a symlink planted there is refused,
  never followed), created ``0640``.

Rotation keeps the files bounded and at least the last ``KEEP_TASKS`` tasks:
when the current file has reached ``rotate_bytes`` and holds more than
KEEP_TASKS sectors, it becomes the ``.1`` file (replacing the older one) and
a new current file begins. Both files together are thus at most about twice
the larger of ``rotate_bytes`` and the size of KEEP_TASKS tasks.

In memory each log keeps what makes the queries cheap: the sectors its files
mention (SectorHistory reads only the files of threads that had the sector)
and one small sample per stage run (WorkerStats, and the stage-duration
histogram replayed at start), never the lines themselves.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import re
import threading
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from worker_agent.api import HistoryEntry, HistoryKind, StageStats, WorkerStats, stage_stats
from worker_agent.store import _fsync_dir  # the one way a folder is flushed

__all__ = [
    "FOLDER_NAME",
    "KEEP_TASKS",
    "ROTATE_BYTES",
    "HistoryFolder",
    "HistoryLog",
    "HistoryUnavailable",
    "Sample",
    "compute_stats",
    "entry_line",
    "read_lines",
]

FOLDER_NAME = "history"
FORMAT = 1
KEEP_TASKS = 100
ROTATE_BYTES = 1 << 20
SUFFIX = ".jsonl"
PREVIOUS = ".1"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_KEY_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]")
# The stage runs a stats sample is taken from: a success, or a failure of the stage.
_FAILED_KINDS = (HistoryKind.RETRY.value, HistoryKind.ABORT.value, HistoryKind.PAUSE.value)

log = logging.getLogger("venus_worker.history")

# Told (stage, in_state seconds) of every successful stage read back at open: the metrics'
# stage-duration histogram (metrics.StageDurations.observe).
Observe = Callable[[str, float], None]
# stage -> (successful durations, failures' error texts): what the statistics are made of.
Runs = dict[str, tuple[list[float], list[str]]]


def entry_line(entry: HistoryEntry) -> bytes:
    """The entry as one line of the file (compact JSON, exact UTF-8, one newline)."""
    text = json.dumps(entry.to_json(), separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8", "surrogateescape") + b"\n"


def history_key(location: Path) -> str:
    """The files' name for a store: readable (its folder's name) and unique (a hash)."""
    name = _KEY_CHARACTERS.sub("_", location.name) or "store"
    digest = hashlib.sha256(os.fsencode(str(location))).hexdigest()[:10]
    return f"{name}-{digest}"


def _open_read(path: Path) -> bytes:
    """A file's bytes, never through a symlink; b"" when it does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return b""
    with os.fdopen(fd, "rb") as file:
        return file.read()


def read_lines(data: bytes) -> list[bytes]:
    """The complete lines of a history file's bytes (a torn last line left out)."""
    end = data.rfind(b"\n")
    return data[: end + 1].splitlines() if end >= 0 else []


def _parse(line: bytes) -> dict | None:
    """One line as a JSON object; None for a damaged line or the header."""
    try:
        value = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(value, dict) or "history" in value or "kind" not in value:
        return None
    return value


class Sample(NamedTuple):
    """One run of a stage, as much of it as the statistics need."""

    time: float
    plan: str | None
    stage: str
    duration: float | None  # the run's own seconds
    error: str | None  # None: it succeeded; else "<level>: <text>"


def _sample(entry: dict) -> tuple[Sample, float | None] | None:
    """The stage run a line records, and its in_state (for the metrics' replay)."""
    stage, kind = entry.get("stage"), entry.get("kind")
    if not isinstance(stage, str) or not isinstance(entry.get("time"), (int, float)):
        return None
    outcome = entry.get("outcome")
    if kind == HistoryKind.STATE.value and outcome == "ok":
        error = None
    elif kind in _FAILED_KINDS and isinstance(outcome, str) and outcome != "ok":
        error = f"{outcome}: {entry.get('error') or ''}".rstrip()
    else:
        return None
    plan = entry.get("plan")
    sample = Sample(
        time=float(entry["time"]),
        plan=plan if isinstance(plan, str) else None,
        stage=stage,
        duration=_seconds(entry.get("duration")),
        error=error,
    )
    return sample, _seconds(entry.get("in_state"))


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


# (plan, stage) pairs as small numbers, shared by every log of the process.
_KEYS: list[tuple[str | None, str]] = []
_KEY_CODES: dict[tuple[str | None, str], int] = {}
_KEYS_LOCK = threading.Lock()


def _key_code(plan: str | None, stage: str) -> int:
    key = (plan, stage)
    code = _KEY_CODES.get(key)
    if code is None:
        with _KEYS_LOCK:
            code = _KEY_CODES.setdefault(key, len(_KEYS))
            if code == len(_KEYS):
                _KEYS.append(key)
    return code


class _Part:
    """What one file of a log holds, in memory: its sectors and its stage runs, packed.

    The runs are kept as arrays (about 22 bytes each, not Python objects): a
    worker of 128 threads with full histories holds a million of them without
    the garbage collector walking them.
    """

    def __init__(self) -> None:
        self.sectors: set[str] = set()
        self.times = array("d")
        self.durations = array("d")  # NaN: not recorded
        self.keys = array("H")  # _KEYS codes
        self.errors = array("i")  # -1: it succeeded; else an index into error_texts
        self.error_texts: list[str] = []
        self._error_codes: dict[str, int] = {}

    def add(self, entry: dict, observe: Observe | None = None) -> None:
        sector = entry.get("sector")
        if isinstance(sector, str):
            self.sectors.add(sector)
        found = _sample(entry)
        if found is None:
            return
        sample, in_state = found
        self.times.append(sample.time)
        self.durations.append(math.nan if sample.duration is None else sample.duration)
        self.keys.append(_key_code(sample.plan, sample.stage))
        if sample.error is None:
            self.errors.append(-1)
            if observe is not None and in_state is not None:
                observe(sample.stage, in_state)
        else:
            code = self._error_codes.setdefault(sample.error, len(self.error_texts))
            if code == len(self.error_texts):
                self.error_texts.append(sample.error)
            self.errors.append(code)

    def samples(self) -> Iterator[Sample]:
        for position, time in enumerate(self.times):
            plan, stage = _KEYS[self.keys[position]]
            duration = self.durations[position]
            error = self.errors[position]
            yield Sample(
                time,
                plan,
                stage,
                None if math.isnan(duration) else duration,
                None if error < 0 else self.error_texts[error],
            )

    def collect(self, runs: Runs, since: float | None, plan: str | None) -> None:
        """Add this part's runs at or after `since` of `plan` to `runs` (stage -> lists)."""
        times, durations, keys, errors = self.times, self.durations, self.keys, self.errors
        texts = self.error_texts
        for position in range(len(times)):
            # every run is looked at: a clock that stepped back leaves the times unsorted
            if since is not None and times[position] < since:
                continue
            key_plan, stage = _KEYS[keys[position]]
            if plan and key_plan != plan:
                continue
            successes, failures = runs.setdefault(stage, ([], []))
            error = errors[position]
            if error >= 0:
                failures.append(texts[error])
            elif not math.isnan(duration := durations[position]):
                successes.append(duration)


class HistoryLog:
    """One thread's history files; `append` is the only writer, and never raises.

    Safe from any thread: one lock orders appends, rotations and reads.
    """

    def __init__(
        self,
        folder: Path,
        index: int,
        location: Path,
        rotate_bytes: int = ROTATE_BYTES,
        keep_tasks: int = KEEP_TASKS,
        key: str | None = None,
    ):
        self.index, self.location = index, location
        key = key or history_key(location)
        self.path = folder / f"{key}{SUFFIX}"
        self.previous = folder / f"{key}{PREVIOUS}{SUFFIX}"
        self.rotate_bytes, self.keep_tasks = rotate_bytes, keep_tasks
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._writing = False  # open() made it the writer, until close()
        self._size = 0
        self._current = _Part()  # of self.path
        self._before = _Part()  # of self.previous
        self._lost = 0
        self._lost_reason = ""
        self.last: dict | None = None  # the newest entry
        self.problem: str | None = None  # why the files cannot be used (None: fine)
        self.torn = 0  # bytes of a torn last line cut off at open

    # ------------------------------------------------------------ open

    def load(self, observe: Observe | None = None) -> None:
        """Read both files into memory (what a reader of a stopped daemon's files does);
        `observe` is told of every successful stage read."""
        with self._lock:
            self._before, _ = self._replay(_open_read(self.previous), observe)
            self._current, self.last = self._replay(_open_read(self.path), observe)
            if self.last is None:
                self.last = self._last_of(self.previous)

    def open(self, observe: Observe | None = None) -> None:
        """Load, then open the current file for appending (the daemon's side).

        A problem (a symlink, a permission) is kept in `problem` and logged: the
        thread seals on without its history, and readers are told why.
        """
        try:
            self.load(observe)
            with self._lock:
                self._open_current()
                self._writing = True
        except OSError as exc:
            self.problem = _describe(exc, self.path)
            log.error("thread #%d: history not kept: %s", self.index, self.problem)

    def _open_current(self) -> None:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW | os.O_CLOEXEC
        existed = os.path.lexists(self.path)
        fd = os.open(self.path, flags, 0o640)
        try:
            size = os.fstat(fd).st_size
            if size:
                size = self._cut_torn_tail(fd, size)
            if size == 0:
                size = self._write_header(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._size = fd, size
        if not existed:
            _fsync_dir(self.path.parent)

    def _cut_torn_tail(self, fd: int, size: int) -> int:
        """Drop a last line without its newline (a crash mid-write); the new size."""
        data = _open_read(self.path)
        keep = data.rfind(b"\n") + 1
        if keep < len(data):
            os.ftruncate(fd, keep)
            os.fsync(fd)
            self.torn = len(data) - keep
            log.warning(
                "thread #%d: history %s: a torn last line (%d bytes, a write cut short by "
                "a crash) was dropped; every line before it is kept",
                self.index, self.path, self.torn,
            )  # fmt: skip
        return keep

    def _write_header(self, fd: int) -> int:
        header = {"history": FORMAT, "location": str(self.location), "index": self.index}
        line = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        _write_all(fd, line, 0)
        os.fsync(fd)
        return len(line)

    def _replay(self, data: bytes, observe: Observe | None) -> tuple[_Part, dict | None]:
        part, last = _Part(), None
        for line in read_lines(data):
            entry = _parse(line)
            if entry is not None:
                part.add(entry, observe)
                last = entry
        return part, last

    def _last_of(self, path: Path) -> dict | None:
        for line in reversed(read_lines(_open_read(path))):
            entry = _parse(line)
            if entry is not None:
                return entry
        return None

    def close(self) -> None:
        with self._lock:
            self._writing = False
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    # ------------------------------------------------------------ write

    def append(self, entry: HistoryEntry) -> bool:
        """Write `entry` and flush it to disk; False (logged, counted) if it could not be."""
        line = entry_line(entry)
        with self._lock:
            if self.problem is not None or not self._writing:  # a reader, or closed
                return False
            try:
                if self._fd is None:  # a rotation that could not open the new file
                    self._open_current()
                if self._size >= self.rotate_bytes and len(self._current.sectors) > self.keep_tasks:
                    self._rotate()
                if self._lost:
                    self._write(entry_line(self._lost_entry(entry)))
                    log.warning("thread #%d: history writes again", self.index)
                    self._lost, self._lost_reason = 0, ""
                self._write(line)
            except OSError as exc:
                if not self._lost:
                    log.error(
                        "thread #%d: cannot write history %s: %s (the sealing goes on; the "
                        "lines missed are counted)",
                        self.index, self.path, exc.strerror or exc,
                    )  # fmt: skip
                self._lost += 1
                self._lost_reason = exc.strerror or str(exc)
                return False
            value = entry.to_json()
            self._current.add(value)
            self.last = value
            return True

    def _write(self, line: bytes) -> None:
        _write_all(self._fd, line, self._size)
        os.fdatasync(self._fd)
        self._size += len(line)

    def _lost_entry(self, entry: HistoryEntry) -> HistoryEntry:
        return HistoryEntry(
            time=entry.time,
            kind=HistoryKind.LOST.value,
            index=self.index,
            note=f"{self._lost} line(s) not written before this one ({self._lost_reason})",
        )

    def _rotate(self) -> None:
        """The current file becomes the previous one; a new current file begins."""
        os.replace(self.path, self.previous)
        old, self._fd = self._fd, None
        os.close(old)
        self._before, self._current = self._current, _Part()
        _fsync_dir(self.path.parent)
        self._open_current()
        log.info("thread #%d: history rotated (%s)", self.index, self.previous.name)

    # ------------------------------------------------------------ read

    def lines(self) -> list[bytes]:
        """Every complete line of both files, oldest first (the headers included)."""
        with self._lock:
            return read_lines(_open_read(self.previous)) + read_lines(_open_read(self.path))

    def entries(self, limit: int | None = None) -> tuple[list[dict], int]:
        """The last `limit` entries (all with None), oldest first, and how many are kept."""
        found = [entry for entry in map(_parse, self.lines()) if entry is not None]
        return (found[-limit:] if limit else found), len(found)

    def has_sector(self, sector: str) -> bool:
        with self._lock:
            return sector in self._current.sectors or sector in self._before.sectors

    def sector_entries(self, sector: str) -> list[dict]:
        """The entries of one sector, oldest first (only the lines naming it are parsed)."""
        if not self.has_sector(sector):
            return []
        return _sector_entries(self.lines(), sector)

    def samples(self) -> list[Sample]:
        """Every stage run kept, oldest first (for tests and readers of one thread)."""
        with self._lock:
            return [*self._before.samples(), *self._current.samples()]

    def collect(self, runs: Runs, since: float | None = None, plan: str | None = None) -> None:
        with self._lock:
            self._before.collect(runs, since, plan)
            self._current.collect(runs, since, plan)


def _sector_entries(lines: Iterable[bytes], sector: str) -> list[dict]:
    needle = json.dumps(sector).encode()
    found = []
    for line in lines:
        if needle in line:
            entry = _parse(line)
            if entry is not None and entry.get("sector") == sector:
                found.append(entry)
    return found


def _write_all(fd: int, line: bytes, size: int) -> None:
    """One line, whole, or nothing: a short or failed write is cut back off the file."""
    try:
        written = os.write(fd, line)
        if written != len(line):
            raise OSError(errno.ENOSPC, "short write (disk full?)")
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)
        raise


def _describe(exc: OSError, path: Path) -> str:
    if exc.errno == errno.ELOOP:
        return f"{exc.filename or path} is a symlink: refusing to follow it"
    return f"{exc.filename or path}: {exc.strerror or exc}"


# ---------------------------------------------------------------- the folder


class HistoryUnavailable(Exception):
    """A thread whose history cannot be read; str() says which and why."""


class HistoryFolder:
    """``<state_dir>/history``: every thread's log, and the files of stores no longer used."""

    def __init__(self, state_dir: Path, rotate_bytes: int = ROTATE_BYTES):
        self.path = state_dir / FOLDER_NAME
        self.rotate_bytes = rotate_bytes
        self.logs: dict[int, HistoryLog] = {}

    def prepare(self) -> None:
        """Create the folder (0750); a symlink or a file in its place is refused."""
        try:
            os.mkdir(self.path, 0o750)
        except FileExistsError:
            if os.path.islink(self.path) or not self.path.is_dir():
                raise OSError(
                    errno.ENOTDIR, "not a folder of its own (a symlink or a file)", str(self.path)
                ) from None

    def open_log(self, index: int, location: Path, observe: Observe | None = None) -> HistoryLog:
        """The thread's log, opened for appending (its problem, if any, in `problem`)."""
        history = HistoryLog(self.path, index, location, self.rotate_bytes)
        history.open(observe)
        self.logs[index] = history
        return history

    def load_logs(self, threads: Sequence[tuple[int, Path]]) -> None:
        """Read every thread's files without writing (a stopped daemon's, for the CLI)."""
        for index, location in threads:
            history = HistoryLog(self.path, index, location, self.rotate_bytes)
            try:
                history.load()
            except OSError as exc:
                history.problem = _describe(exc, history.path)
            self.logs[index] = history

    def discover(self) -> list[tuple[int, Path]]:
        """The (index, location) of every current history file, from its header (what a
        reader without the daemon's config goes by)."""
        found = []
        with contextlib.suppress(FileNotFoundError):
            for entry in sorted(self.path.iterdir()):
                name = entry.name
                if not name.endswith(SUFFIX) or name.endswith(PREVIOUS + SUFFIX):
                    continue
                with contextlib.suppress(OSError, ValueError):
                    lines = read_lines(_open_read(entry)[:4096])
                    header = json.loads(lines[0]) if lines else None
                    if (
                        isinstance(header, dict)
                        and isinstance(header.get("index"), int)
                        and isinstance(header.get("location"), str)
                    ):
                        found.append((header["index"], Path(header["location"])))
        return sorted(found)

    def close(self) -> None:
        for history in self.logs.values():
            history.close()

    def thread_history(self, index: int, limit: int | None) -> dict:
        """WorkerHistory's reply (api.ThreadHistory) for thread `index`; HistoryUnavailable."""
        history = self.logs.get(index)
        if history is None or history.problem:
            why = history.problem if history is not None else "not kept"
            raise HistoryUnavailable(f"worker #{index}: no history: {why}")
        entries, kept = history.entries(limit)
        return {"index": index, "location": str(history.location), "entries": entries, "kept": kept}

    def stats(
        self, now: float, window: float | None, indexes: Sequence[int] | None, plan: str | None
    ) -> WorkerStats:
        """WorkerStats' reply: the runs of the last `window` seconds before `now` (None: all
        kept) of threads `indexes` (None: all) and tasks of `plan` (None: all)."""
        chosen = [
            history
            for index, history in sorted(self.logs.items())
            if not history.problem and (indexes is None or index in indexes)
        ]
        since = None if window is None else now - window
        return WorkerStats(
            time=round(now, 3),
            window=None if window is None else float(window),
            threads=[history.index for history in chosen],
            stages=compute_stats(chosen, since, plan),
        )

    def _other_files(self) -> Iterator[Path]:
        """History files of stores that are not (any more) one of the configured threads."""
        own = {path for h in self.logs.values() for path in (h.path, h.previous)}
        with contextlib.suppress(FileNotFoundError):
            for entry in sorted(self.path.iterdir()):
                if entry.name.endswith(SUFFIX) and entry not in own and not entry.is_symlink():
                    yield entry

    def sector_entries(self, sector: str) -> list[dict]:
        """Every entry naming `sector`, in every thread's files, oldest first."""
        found = []
        for history in self.logs.values():
            found += history.sector_entries(sector)
        for path in self._other_files():
            with contextlib.suppress(OSError):
                found += _sector_entries(read_lines(_open_read(path)), sector)
        found.sort(key=lambda entry: entry.get("time", 0))
        return found


def compute_stats(
    logs: Iterable[HistoryLog], since: float | None = None, plan: str | None = None
) -> list[StageStats]:
    """Per stage (by name), over the logs' runs at or after `since` of `plan` (None: all)."""
    runs: Runs = {}
    for history in logs:
        history.collect(runs, since, plan)
    return [stage_stats(stage, *runs[stage]) for stage in sorted(runs)]
