"""Helpers shared by the test modules (fixtures live in conftest.py).

- `worker_info`, `report`: typed values (worker_agent/api.py) for the pure
  tests, from the wire JSON a real agent sends;
- `wait_until`: poll a condition within one deadline;
- `stop_process`: SIGTERM, then SIGKILL if it is ignored.
"""

from __future__ import annotations

import subprocess
import time
from typing import Any

from worker_agent import api


def worker_info(**fields: Any) -> api.WorkerInfo:
    """A WorkerInfo as an agent sends it: a thread running PC2; `fields` override keys."""
    document: dict[str, Any] = {
        "index": 0,
        "location": "/srv/store0",
        "plan": "sealer",
        "job_id": "s-t010000-1",
        "job_state": "PC1Done",
        "job_stage": "PC2",
        "thread_state": {"state": "Running", "elapsed": 3, "proc": None},
        "state_elapsed": 5,
        "last_error": None,
    }
    document.update(fields)
    return api.WorkerInfo.from_json(document)


def report(age: float | None = 2.5, summary: dict | None = None, **fields: Any) -> api.Report:
    """A heartbeat report as an agent answers it, `age` seconds old."""
    counts = dict.fromkeys(api.SUMMARY_KEYS, 0)
    counts.update(summary or {})
    document: dict[str, Any] = {
        "schema": 1,
        "name": "worker",
        "version": "0.1.0",
        "pid": 4242,
        "time": 1764282000.25,
        "socket": "/run/venus-worker/venus-worker.sock",
        "ping_interval": 30.0,
        "summary": counts,
        "age": age,
    }
    document.update(fields)
    return api.Report.from_json(document)


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    """predicate()'s first true value within one deadline, else AssertionError naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


STOP_GRACE = 5.0  # seconds a process gets to exit on SIGTERM before SIGKILL


def stop_process(process: subprocess.Popen, grace: float = STOP_GRACE) -> None:
    """Stop a process we started: SIGTERM, and SIGKILL when it is still there after `grace`.

    ssh with a forwarding in flight can sit on SIGTERM; a teardown must not hang on it.
    """
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
