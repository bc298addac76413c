"""The control API's handlers: plain data in, plain data out, no sockets.

Each handler takes the positional params list and returns the JSON result or
raises ``RpcError`` (codes: ``api.RpcCode``). ``WorkerService.methods`` is the
table the server dispatches on, by ``api.Method`` name.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from worker_agent import __version__
from worker_agent.api import Method, RpcCode
from worker_agent.protocol import RawJSON, RpcError
from worker_agent.stagelog import QueryError, read_stage_log
from worker_agent.thread import (
    InvalidState,
    NoTask,
    NotPaused,
    RecordNotSaved,
    SealingThread,
    StoreUnusable,
)

__all__ = ["WorkerService"]


def _check_count(params: list, low: int, high: int) -> None:
    if not low <= len(params) <= high:
        wanted = f"{low}" if low == high else f"{low} or {high}"
        raise RpcError(
            RpcCode.INVALID_PARAMS, f"invalid params: expected {wanted}, got {len(params)}"
        )


def _not_saved(thread: SealingThread, error: RecordNotSaved) -> RpcError:
    return RpcError(
        RpcCode.CHANGE_NOT_SAVED,
        f"change not saved: worker #{thread.index} is unchanged ({error})",
    )


class WorkerService:
    def __init__(
        self,
        threads: Sequence[SealingThread],
        last_report: Callable[[], dict | None],
        clock: Callable[[], float] = time.time,
    ):
        self.threads = list(threads)
        self._last_report = last_report
        self._clock = clock
        self.methods = {
            Method.LIST.value: self.worker_list,
            Method.PAUSE.value: self.worker_pause,
            Method.RESUME.value: self.worker_resume,
            Method.REPORT.value: self.worker_report,
            Method.VERSION.value: self.worker_version,
            Method.CANCEL_PAUSE.value: self.worker_cancel_pause,
            Method.STAGE_LOG.value: self.worker_stage_log,
        }

    def _thread(self, value: Any) -> SealingThread:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RpcError(
                RpcCode.INVALID_PARAMS, f"invalid params: index must be an integer, got {value!r}"
            )
        if not 0 <= value < len(self.threads):
            raise RpcError(RpcCode.INVALID_PARAMS, f"worker #{value} not found")
        return self.threads[value]

    def worker_list(self, params: list) -> RawJSON:
        _check_count(params, 0, 0)
        return RawJSON("[" + ",".join(thread.info_json() for thread in self.threads) + "]")

    def worker_pause(self, params: list) -> bool:
        _check_count(params, 1, 1)
        thread = self._thread(params[0])
        try:
            thread.request_pause()
        except RecordNotSaved as exc:
            raise _not_saved(thread, exc) from None
        return True

    def worker_cancel_pause(self, params: list) -> bool:
        """True: a queued pause was cancelled; False: none was queued (or it was taken)."""
        _check_count(params, 1, 1)
        return self._thread(params[0]).cancel_pause()

    def worker_resume(self, params: list) -> bool:
        _check_count(params, 1, 2)
        thread = self._thread(params[0])
        state = params[1] if len(params) == 2 else None
        if state is not None and not isinstance(state, str):
            raise RpcError(
                RpcCode.INVALID_PARAMS,
                f"invalid params: state must be a string or null, got {state!r}",
            )
        try:
            thread.resume(state)
        except (InvalidState, NoTask) as exc:
            raise RpcError(RpcCode.INVALID_PARAMS, str(exc)) from None
        except NotPaused as exc:
            raise RpcError(RpcCode.NOT_PAUSED, str(exc)) from None
        except RecordNotSaved as exc:
            raise _not_saved(thread, exc) from None
        except StoreUnusable as exc:
            raise RpcError(RpcCode.CHANGE_NOT_SAVED, f"change not made: {exc}") from None
        return True

    def worker_stage_log(self, params: list) -> dict:
        """[index, query or null]: the thread's last stage runs and their output (stagelog.py)."""
        _check_count(params, 1, 2)
        thread = self._thread(params[0])
        try:
            found = read_stage_log(thread.config.location, params[1] if len(params) == 2 else None)
        except QueryError as exc:
            raise RpcError(RpcCode.INVALID_PARAMS, f"invalid params: {exc}") from None
        return {"index": thread.index, "location": str(thread.config.location), **found}

    def worker_report(self, params: list) -> dict:
        _check_count(params, 0, 0)
        report = self._last_report()
        if report is None:
            raise RpcError(RpcCode.INTERNAL_ERROR, "no heartbeat report written yet")
        return dict(report, age=round(self._clock() - report["time"], 3))

    def worker_version(self, params: list) -> str:
        _check_count(params, 0, 0)
        return __version__
