"""The worker's own Prometheus metrics: a node_exporter textfile, rewritten at each heartbeat.

With ``[worker] metrics_textfile = PATH`` (a ``*.prom`` file in node_exporter's
``--collector.textfile.directory``) the daemon renders its state in the text
exposition format (0.0.4) and replaces PATH atomically: at start, at every
heartbeat, within about a second of a change of the heartbeat's counts, and
at stop (the reporter's writes of ``report.json``). The Prometheus the
operator already runs scrapes every worker; no fleet fan-out is involved.
Standard library only, like the rest of the agent.

Series (docs/protocol.md has the table with examples; a thread's labels are
``index``, ``location``, ``plan``):

- ``venus_worker_info{name, version, textfile}`` 1;
- ``venus_worker_last_heartbeat_timestamp_seconds``, ``venus_worker_heartbeat_interval_seconds``;
- ``venus_worker_threads{plan, state}`` for every thread state × configured plan,
  and the heartbeat's ``venus_worker_threads_paused``, ``_errors``, ``_empty``;
- per thread: ``venus_worker_thread_job_state{…, state, stage}`` 1 (one series
  per thread, an info-style gauge), ``venus_worker_thread_state_entered_timestamp_seconds``,
  ``venus_worker_thread_paused``, ``venus_worker_thread_paused_timestamp_seconds``,
  ``venus_worker_thread_error``, ``venus_worker_thread_retries``;
- ``venus_worker_tasks_finished_total{plan}``, ``venus_worker_tasks_aborted_total{plan}``:
  counters persisted in ``<state_dir>/task-counters.json``, so they survive restarts;
- ``venus_worker_stage_duration_seconds{stage}``: a histogram of completed stages,
  replayed from the sector history at start (so it survives restarts);
- ``venus_worker_sector_numbers_left{miner}``: the numbers left in each configured
  sector range (``[sealing] sector_numbers``); only with a range.

Conventions, and why: times are Unix timestamps (``time() - x`` in PromQL is
exact at any moment; an exported age is stale by a scrape interval and keeps
its last value when the agent dies); states are label values, never numbers;
every series a configuration implies is there, with 0, from the first write
(an alert on ``x > 0`` then needs no ``absent()``); worker text in label values
is escaped as the exposition format says (backslash, double quote, line feed).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from worker_agent import __version__
from worker_agent.api import ThreadState, WorkerInfo, summarize
from worker_agent.config import Config
from worker_agent.states import NO_STAGE, PLANS, State
from worker_agent.store import SCHEMA, StoreError, Task, read_json, write_json_atomic

__all__ = [
    "COUNTERS_NAME",
    "METRICS",
    "STAGE_BUCKETS",
    "MetricsError",
    "Snapshot",
    "StageDurations",
    "TaskCounters",
    "TextfileWriter",
    "WorkerMetrics",
    "escape_label",
    "render",
    "stage_labels",
]

log = logging.getLogger("venus_worker.metrics")

COUNTERS_NAME = "task-counters.json"
# WorkerInfo thread_state.state values (issue 11's api.py will own this enum).
THREAD_STATES = tuple(state.value for state in ThreadState)
# Upper bounds in seconds, from a chain message (seconds) to PC1 and unseal (half a day
# or more); 1 h, 2 h, 3 h, 4 h, 6 h and 12 h are the stuck limits of `venusctl health`.
STAGE_BUCKETS = (1, 10, 60, 300, 900, 1800, 3600, 7200, 10800, 14400, 21600, 43200, 86400)
_THREAD = ("index", "location", "plan")

# name -> (type, help, label names); the one list of what the textfile holds.
METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "venus_worker_info": (
        "gauge",
        "Always 1: the agent's name, version, and the path of this textfile.",
        ("name", "version", "textfile"),
    ),
    "venus_worker_last_heartbeat_timestamp_seconds": (
        "gauge",
        "When the agent last wrote its heartbeat (and this file), Unix time.",
        (),
    ),
    "venus_worker_heartbeat_interval_seconds": (
        "gauge",
        "The agent's ping_interval: this file is rewritten at least this often.",
        (),
    ),
    "venus_worker_threads": (
        "gauge",
        "Sealing threads by thread state (Idle, Running, Waiting, Paused) and plan.",
        ("plan", "state"),
    ),
    "venus_worker_threads_paused": (
        "gauge",
        "Paused sealing threads (by hand or by an error).",
        (),
    ),
    "venus_worker_threads_errors": ("gauge", "Sealing threads paused by an error.", ()),
    "venus_worker_threads_empty": ("gauge", "Sealing threads without a task (sector).", ()),
    "venus_worker_thread_job_state": (
        "gauge",
        "Always 1: the state of the thread's task and the stage run from it"
        ' (state "Empty", stage "-" without a task).',
        (*_THREAD, "stage", "state"),
    ),
    "venus_worker_thread_state_entered_timestamp_seconds": (
        "gauge",
        "When the thread's task entered its current state, Unix time; 0 without a task.",
        _THREAD,
    ),
    "venus_worker_thread_paused": ("gauge", "1 if the thread is paused, else 0.", _THREAD),
    "venus_worker_thread_paused_timestamp_seconds": (
        "gauge",
        "When the thread was paused, Unix time; 0 while it is not paused.",
        _THREAD,
    ),
    "venus_worker_thread_error": (
        "gauge",
        "1 if the thread is paused by an error (its last_error is set), else 0.",
        _THREAD,
    ),
    "venus_worker_thread_retries": (
        "gauge",
        "Temporary errors retried so far in the task's current state.",
        _THREAD,
    ),
    "venus_worker_tasks_finished_total": (
        "counter",
        "Tasks (sectors) that went through their plan's last stage; kept across restarts.",
        ("plan",),
    ),
    "venus_worker_tasks_aborted_total": (
        "counter",
        "Tasks (sectors) dropped as aborted (an abort error or resume --state Aborted);"
        " kept across restarts.",
        ("plan",),
    ),
    "venus_worker_stage_duration_seconds": (
        "histogram",
        "Completed stages: seconds from entering the state to the stage's success,"
        " retries and pauses included; as far back as the sector history goes.",
        ("stage",),
    ),
    "venus_worker_sector_numbers_left": (
        "gauge",
        "Sector numbers left in the miner's configured range ([sealing] sector_numbers);"
        " only for a miner with a range.",
        ("miner",),
    ),
}


class MetricsError(Exception):
    """The textfile cannot be set up; str() says which file and why."""


# ---------------------------------------------------------------- the text format


def escape_label(value: str) -> str:
    """A label value as the text exposition format wants it between double quotes."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    return ",".join(f'{key}="{escape_label(value)}"' for key, value in pairs)


class _Text:
    """The exposition being built: one family at a time, HELP and TYPE first."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str) -> None:
        kind, help_text, _ = METRICS[name]
        self.lines.append(f"# HELP {name} {_escape_help(help_text)}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, labels: str, value: float) -> None:
        text = _number(value)
        self.lines.append(f"{name}{{{labels}}} {text}" if labels else f"{name} {text}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


# ---------------------------------------------------------------- what is rendered


@dataclass(frozen=True)
class Snapshot:
    """Everything one textfile says, taken at one moment; `render` turns it into text."""

    name: str
    textfile: str
    heartbeat: float  # Unix time
    interval: float
    plans: Sequence[str]  # configured plans, in config order
    threads: Sequence[dict]  # SealingThread.metrics_view() of each thread
    finished: dict[str, int] = field(default_factory=dict)  # plan -> count
    aborted: dict[str, int] = field(default_factory=dict)
    durations: dict[str, tuple[list[int], float, int]] = field(default_factory=dict)
    version: str = __version__
    numbers_left: dict[str, int] = field(default_factory=dict)  # miner -> left in its range


def stage_labels(plans: Iterable[str]) -> list[str]:
    """Every stage label of these plans (the work done from one of their states), sorted."""
    labels = {PLANS[name].stage(state) for name in plans for state in PLANS[name].states}
    return sorted(labels - {NO_STAGE})


def render(snapshot: Snapshot) -> str:
    """The textfile: text exposition format 0.0.4, families in METRICS order."""
    out = _Text()
    out.family("venus_worker_info")
    info = (("name", snapshot.name), ("version", snapshot.version), ("textfile", snapshot.textfile))
    out.sample("venus_worker_info", _labels(info), 1)
    out.family("venus_worker_last_heartbeat_timestamp_seconds")
    out.sample("venus_worker_last_heartbeat_timestamp_seconds", "", round(snapshot.heartbeat, 3))
    out.family("venus_worker_heartbeat_interval_seconds")
    out.sample("venus_worker_heartbeat_interval_seconds", "", snapshot.interval)
    _thread_counts(out, snapshot)
    _per_thread(out, snapshot.threads)
    plans = _plans(snapshot)
    for name, counts in (
        ("venus_worker_tasks_finished_total", snapshot.finished),
        ("venus_worker_tasks_aborted_total", snapshot.aborted),
    ):
        out.family(name)
        for plan in sorted(set(plans) | set(counts)):
            out.sample(name, _labels((("plan", plan),)), counts.get(plan, 0))
    _histogram(out, "venus_worker_stage_duration_seconds", snapshot)
    if snapshot.numbers_left:  # no range, no series: "left" of an unbounded counter means nothing
        out.family("venus_worker_sector_numbers_left")
        for miner, left in sorted(snapshot.numbers_left.items(), key=lambda item: int(item[0])):
            out.sample("venus_worker_sector_numbers_left", _labels((("miner", miner),)), left)
    return out.text()


def _plans(snapshot: Snapshot) -> list[str]:
    """Configured plans, and the plan of any task started under an earlier configuration."""
    return sorted(set(snapshot.plans) | {view["plan"] for view in snapshot.threads})


def _thread_counts(out: _Text, snapshot: Snapshot) -> None:
    counts = dict.fromkeys(((plan, s) for plan in _plans(snapshot) for s in THREAD_STATES), 0)
    for view in snapshot.threads:
        key = (view["plan"], view["thread_state"]["state"])
        counts[key] = counts.get(key, 0) + 1
    out.family("venus_worker_threads")
    for (plan, state), count in counts.items():
        out.sample("venus_worker_threads", _labels((("plan", plan), ("state", state))), count)
    summary = summarize(WorkerInfo.from_json(view) for view in snapshot.threads).to_json()
    for name, key in (("paused", "Paused"), ("errors", "Errors"), ("empty", "Empty")):
        out.family(f"venus_worker_threads_{name}")
        out.sample(f"venus_worker_threads_{name}", "", summary[key])


def _per_thread(out: _Text, views: Sequence[dict]) -> None:
    labels = [
        _labels((("index", str(v["index"])), ("location", v["location"]), ("plan", v["plan"])))
        for v in views
    ]
    out.family("venus_worker_thread_job_state")
    for view, own in zip(views, labels, strict=True):
        state = view["job_state"] or State.Empty.value
        where = _labels((("stage", view["job_stage"] or NO_STAGE), ("state", state)))
        out.sample("venus_worker_thread_job_state", f"{own},{where}", 1)
    columns = (
        ("venus_worker_thread_state_entered_timestamp_seconds", lambda v: v["entered_at"] or 0),
        ("venus_worker_thread_paused", lambda v: int(_paused(v))),
        ("venus_worker_thread_paused_timestamp_seconds", _paused_at),
        ("venus_worker_thread_error", lambda v: int(v["last_error"] is not None)),
        ("venus_worker_thread_retries", lambda v: v["retry"]),
    )
    for name, value in columns:
        out.family(name)
        for view, own in zip(views, labels, strict=True):
            out.sample(name, own, value(view))


def _paused(view: dict) -> bool:
    return view["thread_state"]["state"] == "Paused"


def _paused_at(view: dict) -> float:
    return (view["paused_at"] or 0) if _paused(view) else 0


def _histogram(out: _Text, name: str, snapshot: Snapshot) -> None:
    out.family(name)
    empty = ([0] * len(STAGE_BUCKETS), 0.0, 0)
    stages = sorted(set(stage_labels(_plans(snapshot))) | set(snapshot.durations))
    for stage in stages:
        buckets, total, count = snapshot.durations.get(stage, empty)
        own = _labels((("stage", stage),))
        for bound, cumulative in zip(STAGE_BUCKETS, buckets, strict=True):
            out.sample(f"{name}_bucket", f'{own},le="{bound}"', cumulative)
        out.sample(f"{name}_bucket", f'{own},le="+Inf"', count)
        out.sample(f"{name}_sum", own, round(total, 3))
        out.sample(f"{name}_count", own, count)


# ---------------------------------------------------------------- the inputs


class StageDurations:
    """The stage-duration histogram; `observe` is its one input.

    The sealing threads feed it as their stages complete, and at start the
    daemon replays every thread's history (history.py) through the same
    `observe`: the histogram survives restarts, as far back as the history
    files go (a rotation that drops the oldest file lowers it: a counter reset
    to Prometheus' rate(), as a restart used to be).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stages: dict[str, tuple[list[int], float, int]] = {}

    def observe(self, stage: str, seconds: float) -> None:
        with self._lock:
            buckets, total, count = self._stages.get(stage) or ([0] * len(STAGE_BUCKETS), 0.0, 0)
            for position, bound in enumerate(STAGE_BUCKETS):
                if seconds <= bound:
                    buckets[position] += 1  # cumulative: every bucket from here up
            self._stages[stage] = (buckets, total + seconds, count + 1)

    def snapshot(self) -> dict[str, tuple[list[int], float, int]]:
        with self._lock:
            return {
                stage: (list(b), total, count) for stage, (b, total, count) in self._stages.items()
            }


class TaskCounters:
    """Finished and aborted tasks per plan, persisted at once so they survive restarts.

    `<state_dir>/task-counters.json` also remembers the last sector counted per
    location: a thread killed between the count and saving the task's drop
    reports the same sector again after the restart, and it is counted once.
    """

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._counts: dict[str, dict[str, int]] = {"finished": {}, "aborted": {}}
        self._last: dict[str, str] = {}

    def load(self) -> None:
        """Read the saved counts; StoreError names the file when it is unusable."""
        try:
            data = read_json(self.path)
        except FileNotFoundError:
            return
        try:
            if data["schema"] != SCHEMA:
                raise ValueError(f"schema {data['schema']!r}, this agent reads schema {SCHEMA}")
            counts = {
                kind: {str(plan): int(n) for plan, n in data[kind].items()}
                for kind in ("finished", "aborted")
            }
            last = {str(location): str(sector) for location, sector in data["last"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StoreError(f"{self.path}: unusable task counters ({exc})") from None
        self._counts, self._last = counts, last

    def task_ended(self, location: str, task: Task) -> None:
        """Count `task` (state Finished or Aborted) once, and save the counts before returning."""
        kind = "finished" if task.state is State.Finished else "aborted"
        sector = task.sector_id
        with self._lock:
            if sector is not None and self._last.get(location) == sector:
                return  # the same drop, told again after a restart
            counts = self._counts[kind]
            counts[task.plan] = counts.get(task.plan, 0) + 1
            if sector is not None:
                self._last[location] = sector
            data = {"schema": SCHEMA, **self._counts, "last": self._last}
            try:
                write_json_atomic(self.path, data)
            except OSError as exc:  # sealing goes on; the count is kept in memory
                log.error("cannot save task counters %s: %s", self.path, exc)

    def snapshot(self) -> tuple[dict[str, int], dict[str, int]]:
        """(finished, aborted) per plan."""
        with self._lock:
            return dict(self._counts["finished"]), dict(self._counts["aborted"])


# ---------------------------------------------------------------- the file


class TextfileWriter:
    """Replaces one textfile atomically; a lock file keeps a second daemon off it.

    Each write: a unique temp file in the same folder (a dot name without the
    .prom suffix, which node_exporter never reads), fsync, mode 0644 (node_exporter
    runs as another user), rename over the file, fsync of the folder.
    """

    def __init__(self, path: Path):
        self.path = path
        self.folder = path.parent
        self._prefix = f".{path.name}."
        self._lock_fd: int | None = None

    def open(self) -> None:
        """Take the lock and drop temp files a killed daemon left; MetricsError says why not."""
        lock = self.folder / f"{self._prefix}lock"
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise MetricsError(
                f"metrics_textfile {self.path}: cannot write in {self.folder}:"
                f" {exc.strerror or exc}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise MetricsError(
                f"metrics_textfile {self.path} is written by another daemon (lock {lock})"
            ) from None
        self._lock_fd = fd
        with contextlib.suppress(OSError):
            for entry in self.folder.iterdir():
                if entry.name.startswith(self._prefix) and entry.name.endswith(".tmp"):
                    entry.unlink()

    def write(self, text: str) -> None:
        """Replace the file with `text`; raises OSError (the old file is then unchanged)."""
        payload = text.encode("utf-8", "backslashreplace")
        fd, temp = tempfile.mkstemp(prefix=self._prefix, suffix=".tmp", dir=self.folder)
        try:
            try:
                view = memoryview(payload)
                while view:
                    view = view[os.write(fd, view) :]
                os.fchmod(fd, 0o644)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        folder = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)

    @property
    def is_open(self) -> bool:
        return self._lock_fd is not None

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


# ---------------------------------------------------------------- the daemon's side


class WorkerMetrics:
    """What the daemon holds when metrics_textfile is set.

    It is each sealing thread's observer (`stage_done`, `task_ended`) and
    renders the textfile when the reporter writes its heartbeat (`write`).
    """

    def __init__(self, config: Config):
        assert config.metrics_textfile is not None
        self.config = config
        self.plans = tuple(dict.fromkeys(thread.plan for thread in config.threads))
        self.textfile = TextfileWriter(config.metrics_textfile)
        self.counters = TaskCounters(config.state_dir / COUNTERS_NAME)
        self.durations = StageDurations()

    def open(self) -> None:
        """Before the threads start: lock the textfile, read the saved counters."""
        self.textfile.open()
        self.counters.load()

    def snapshot(
        self, heartbeat: float, threads: Sequence, numbers_left: dict[str, int] | None = None
    ) -> Snapshot:
        finished, aborted = self.counters.snapshot()
        return Snapshot(
            name=self.config.name,
            textfile=str(self.textfile.path),
            heartbeat=heartbeat,
            interval=self.config.ping_interval,
            plans=self.plans,
            threads=[thread.metrics_view() for thread in threads],
            finished=finished,
            aborted=aborted,
            durations=self.durations.snapshot(),
            numbers_left=dict(numbers_left or {}),
        )

    def write(
        self, heartbeat: float, threads: Sequence, numbers_left: dict[str, int] | None = None
    ) -> bool:
        """Render and replace the textfile; a failure is logged (the next heartbeat retries).

        Nothing is written unless open() took the lock: a daemon that failed to
        start must not overwrite the file of the one that holds it.
        """
        if not self.textfile.is_open:
            return False
        text = render(self.snapshot(heartbeat, threads, numbers_left))
        try:
            self.textfile.write(text)
        except OSError as exc:
            log.error("cannot write metrics textfile %s: %s", self.textfile.path, exc)
            return False
        return True

    def close(self) -> None:
        self.textfile.close()

    # the sealing threads' observer

    def stage_done(self, plan: str, stage: str, seconds: float) -> None:
        self.durations.observe(stage, seconds)

    def task_ended(self, location: str, task: Task) -> None:
        self.counters.task_ended(location, task)
