"""Stage logs: what each stage run printed, the tail of it, kept in the thread's store.

The last stderr line says why a stage failed; the lines before it usually say
more. Every run of a stage command (and of a mock stage) is kept here, the
last ``KEEP_RUNS`` per thread, at most ``MAX_RUN_BYTES`` each on disk, and
served by ``VenusWorker.WorkerStageLog`` (docs/protocol.md) to ``venus-worker
worker logs`` and ``venusctl logs``.

Layout, in the thread's store (``<location>/meta/stagelog/``)::

    00000042/run.json     what ran: stage, state, plan, sector, argv, started,
                          ended (null while it runs), exit status, timed out,
                          outcome, and how many lines were dropped
    00000042/out.jsonl    the output, one JSON object a line:
                          {"n": 12, "t": 1764282000.123, "s": "stderr", "text": "..."}
    00000042/out.1.jsonl  the older half, once out.jsonl reached MAX_RUN_BYTES / 2

``n`` counts the run's lines from 0 across both streams, in the order they
came; a line longer than ``MAX_LINE`` bytes is cut (``"cut": true``). When
out.jsonl reaches half the bound it becomes out.1.jsonl (the previous one is
dropped), so a run keeps between half and all of MAX_RUN_BYTES of its last
output whatever it prints, and a reader always finds whole lines (a line
being written is read only once it ends with a newline).

These are diagnostics, not state: nothing here is fsynced, and a write that
fails (a full disk) stops this run's log with one warning; it never fails
the stage.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from worker_agent.store import write_json_atomic

__all__ = [
    "KEEP_RUNS",
    "MAX_LINE",
    "MAX_RUN_BYTES",
    "StageLog",
    "QueryError",
    "check_query",
    "read_stage_log",
    "stage_log_dir",
]

KEEP_RUNS = 8
MAX_RUN_BYTES = 1 << 20
MAX_LINE = 16 * 1024
SCHEMA = 1
RUN_NAME = "run.json"
OUT_NAME = "out.jsonl"
OLD_NAME = "out.1.jsonl"

log = logging.getLogger("venus_worker.stagelog")


def stage_log_dir(location: Path) -> Path:
    return Path(location) / "meta" / "stagelog"


def _write_run(folder: Path, record: dict) -> None:
    """run.json replaced whole (a reader never sees half of it); not fsynced, as the rest."""
    write_json_atomic(folder / RUN_NAME, record, durable=False)


def _run_numbers(folder: Path) -> list[int]:
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    return sorted(int(name) for name in names if name.isdigit() and len(name) == 8)


class StageLog:
    """One stage run's log, written as the stage prints (``feed``), closed by ``end``.

    ``begin`` never raises: when the folder cannot be written the stage runs
    without a log (one warning). ``feed`` and ``end`` are called from the one
    thread that runs the stage.
    """

    def __init__(self, folder: Path | None, record: dict):
        self.folder = folder
        self.record = record
        self._out = None
        self._bytes = 0
        self._lines = 0  # the next line's n
        self._segment_lines = [0, 0]  # lines in out.1.jsonl, in out.jsonl
        self._partial = {"stdout": bytearray(), "stderr": bytearray()}
        if folder is not None:
            self._out = open(folder / OUT_NAME, "ab")  # noqa: SIM115 - closed by end()

    @classmethod
    def begin(
        cls,
        location: Path,
        *,
        index: int,
        stage: str,
        state: str,
        plan: str,
        sector_id: str | None,
        processor: str,
        argv: Sequence[str] | None = None,
        now: Callable[[], float] = time.time,
    ) -> StageLog:
        root = stage_log_dir(location)
        record = {
            "schema": SCHEMA,
            "index": index,
            "stage": stage,
            "state": state,
            "plan": plan,
            "sector_id": sector_id,
            "processor": processor,
            "argv": list(argv) if argv is not None else None,
            "started": round(now(), 3),
            "ended": None,
            "exit_status": None,
            "timed_out": False,
            "outcome": None,
            "dropped": 0,
        }
        try:
            root.mkdir(parents=True, exist_ok=True)
            numbers = _run_numbers(root)
            run = (numbers[-1] + 1) if numbers else 1
            for old in numbers[: max(0, len(numbers) - (KEEP_RUNS - 1))]:
                shutil.rmtree(root / f"{old:08d}", ignore_errors=True)
            folder = root / f"{run:08d}"
            folder.mkdir()
            record["run"] = run
            _write_run(folder, record)
            return cls(folder, record)
        except OSError as exc:
            log.warning(
                "thread #%d: stage %s runs without a stage log: %s", index, stage, exc
            )  # fmt: skip
            record["run"] = None
            return cls(None, record)

    def feed(self, stream: str, chunk: bytes) -> None:
        """Bytes from the stage's stdout or stderr; complete lines are written at once."""
        if self._out is None:
            return
        buffer = self._partial[stream]
        buffer += chunk
        while True:
            end = buffer.find(b"\n")
            if end < 0:
                break
            self._line(stream, bytes(buffer[:end]))
            del buffer[: end + 1]
        if len(buffer) > MAX_LINE:  # a line without an end in sight: cut it here
            self._line(stream, bytes(buffer))
            buffer.clear()

    def _line(self, stream: str, raw: bytes) -> None:
        cut = len(raw) > MAX_LINE
        text = raw[:MAX_LINE].decode("utf-8", "replace").rstrip("\r")
        entry = {"n": self._lines, "t": round(time.time(), 3), "s": stream, "text": text}
        if cut:
            entry["cut"] = True
        data = (json.dumps(entry, ensure_ascii=False) + "\n").encode()
        try:
            if self._bytes + len(data) > MAX_RUN_BYTES // 2 and self._bytes:
                self._rotate()
            self._out.write(data)
            self._out.flush()  # a follower sees each line as it comes
        except OSError as exc:
            self._stop(exc)
            return
        self._bytes += len(data)
        self._lines += 1
        self._segment_lines[1] += 1

    def _rotate(self) -> None:
        self._out.close()
        os.replace(self.folder / OUT_NAME, self.folder / OLD_NAME)
        self.record["dropped"] += self._segment_lines[0]
        self._segment_lines = [self._segment_lines[1], 0]
        self._out = open(self.folder / OUT_NAME, "ab")  # noqa: SIM115 - closed by end()
        self._bytes = 0

    def _stop(self, exc: OSError) -> None:
        record = self.record
        log.warning(
            "thread #%d: stage log of %s stopped: %s", record["index"], record["stage"], exc
        )
        with contextlib.suppress(OSError):
            self._out.close()
        self._out = None

    def end(self, outcome: str, exit_status: int | None = None, timed_out: bool = False) -> None:
        """The run is over: the last partial lines, then run.json with how it ended."""
        for stream, buffer in self._partial.items():
            if buffer and self._out is not None:
                self._line(stream, bytes(buffer))
            buffer.clear()
        self.record.update(
            ended=round(time.time(), 3),
            exit_status=exit_status,
            timed_out=timed_out,
            outcome=outcome,
        )
        if self.folder is None:
            return
        if self._out is not None:
            with contextlib.suppress(OSError):
                self._out.close()
            self._out = None
        try:
            _write_run(self.folder, self.record)
        except OSError as exc:
            log.warning("thread #%d: cannot finish its stage log: %s", self.record["index"], exc)


# ---------------------------------------------------------------- reading


class QueryError(ValueError):
    """A stage log query that is not one (bad type or value); str() says which key."""


QUERY_KEYS = ("stage", "runs", "lines", "after")


def check_query(query: Any) -> dict:
    """The query of WorkerStageLog, checked: {"stage": name or null, "runs": N >= 1 or null
    (every kept run), "lines": N >= 0 or null (every kept line), "after": {"run": R,
    "line": N} or null}. Missing keys take stage null, runs 1, lines 100, after null."""
    if query is None:
        query = {}
    if not isinstance(query, dict):
        raise QueryError(f"query must be an object, got {query!r}")
    unknown = sorted(set(query) - set(QUERY_KEYS))
    if unknown:
        raise QueryError(f"unknown query key {unknown[0]!r} (known: {', '.join(QUERY_KEYS)})")
    checked = {"stage": None, "runs": 1, "lines": 100, "after": None, **query}
    if checked["stage"] is not None and not isinstance(checked["stage"], str):
        raise QueryError(f"stage must be a string or null, got {checked['stage']!r}")
    for key, low in (("runs", 1), ("lines", 0)):
        value = checked[key]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise QueryError(f"{key} must be an integer or null, got {value!r}")
        if value is not None and value < low:
            raise QueryError(f"{key} must be {low} or more, got {value}")
    after = checked["after"]
    if after is not None:
        if not isinstance(after, dict) or set(after) != {"run", "line"}:
            raise QueryError(f'after must be {{"run": R, "line": N}} or null, got {after!r}')
        if not all(isinstance(after[k], int) and not isinstance(after[k], bool) for k in after):
            raise QueryError(f"after.run and after.line must be integers, got {after!r}")
    return checked


def _read_lines(path: Path) -> list[dict]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    lines = []
    for raw in data.split(b"\n")[:-1]:  # the last piece is a line still being written
        with contextlib.suppress(ValueError):
            lines.append(json.loads(raw))
    return lines


def _read_run(folder: Path) -> dict | None:
    try:
        record = json.loads((folder / RUN_NAME).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def read_stage_log(location: Path, query: Any = None) -> dict:
    """The runs a (checked) query asks for, oldest first, each with its kept lines.

    Without `after`: the newest `runs` runs (of `stage`, if given), each with
    its last `lines` lines. With `after` (a follower's cursor: the last line
    it has): the lines of that run after `line`, and every newer run whole
    (`lines` still caps each). A run's `first_line` is the n of its first
    kept line, `lines_total` how many it has printed so far.
    """
    query = check_query(query)
    root = stage_log_dir(location)
    runs = []
    for number in _run_numbers(root):
        record = _read_run(root / f"{number:08d}")
        if record is None or (query["stage"] and record.get("stage") != query["stage"]):
            continue
        runs.append((number, root / f"{number:08d}", record))
    after = query["after"]
    if after is not None:
        runs = [run for run in runs if run[0] >= after["run"]]
    elif query["runs"] is not None:
        runs = runs[-query["runs"] :]
    answer = []
    for number, folder, record in runs:
        lines = _read_lines(folder / OLD_NAME) + _read_lines(folder / OUT_NAME)
        total = lines[-1]["n"] + 1 if lines else 0
        first = lines[0]["n"] if lines else total
        if after is not None and number == after["run"]:
            lines = [line for line in lines if line["n"] > after["line"]]
        if query["lines"] is not None:
            lines = lines[-query["lines"] :] if query["lines"] else []
        answer.append(
            {
                **{k: v for k, v in record.items() if k not in ("schema", "index")},
                "run": number,
                "first_line": first,
                "lines_total": total,
                "lines": lines,
            }
        )
    return {"runs": answer, "kept_runs": KEEP_RUNS, "max_run_bytes": MAX_RUN_BYTES}
