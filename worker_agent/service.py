"""The control API's handlers: plain data in, plain data out, no sockets.

Each handler takes the positional params list and returns the JSON result or
raises ``RpcError`` (codes: ``api.RpcCode``). ``WorkerService.methods`` is the
table the server dispatches on, by ``api.Method`` name; ``methods_for(caller)``
is that table for one request, with who asked (``api.Caller``) given to the
handlers that change a thread, for its history.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

from worker_agent import __version__
from worker_agent.api import Caller, Method, RpcCode, parse_sector_id
from worker_agent.history import HistoryFolder, HistoryUnavailable
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
        history: HistoryFolder | None = None,
    ):
        self.threads = list(threads)
        self._last_report = last_report
        self._clock = clock
        self.history = history
        self.methods = {
            Method.LIST.value: self.worker_list,
            Method.PAUSE.value: self.worker_pause,
            Method.RESUME.value: self.worker_resume,
            Method.REPORT.value: self.worker_report,
            Method.VERSION.value: self.worker_version,
            Method.HISTORY.value: self.worker_history,
            Method.SECTOR.value: self.sector_history,
            Method.STATS.value: self.worker_stats,
            Method.CANCEL_PAUSE.value: self.worker_cancel_pause,
            Method.STAGE_LOG.value: self.worker_stage_log,
        }
        # The handlers that record who asked (the history's `by`).
        self._with_caller = (Method.PAUSE.value, Method.RESUME.value, Method.CANCEL_PAUSE.value)

    def methods_for(self, caller: Caller | None) -> dict[str, Callable[[list], Any]]:
        """The method table for one request: who sent it goes to the handlers that use it."""
        if caller is None:
            return self.methods
        table = dict(self.methods)
        for name in self._with_caller:
            table[name] = functools.partial(self.methods[name], caller=caller)
        return table

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

    def worker_pause(self, params: list, caller: Caller | None = None) -> bool:
        _check_count(params, 1, 1)
        thread = self._thread(params[0])
        try:
            thread.request_pause(by=caller)
        except RecordNotSaved as exc:
            raise _not_saved(thread, exc) from None
        return True

    def worker_cancel_pause(self, params: list, caller: Caller | None = None) -> bool:
        """True: a queued pause was cancelled; False: none was queued (or it was taken)."""
        _check_count(params, 1, 1)
        return self._thread(params[0]).cancel_pause(by=caller)

    def worker_resume(self, params: list, caller: Caller | None = None) -> bool:
        _check_count(params, 1, 2)
        thread = self._thread(params[0])
        state = params[1] if len(params) == 2 else None
        if state is not None and not isinstance(state, str):
            raise RpcError(
                RpcCode.INVALID_PARAMS,
                f"invalid params: state must be a string or null, got {state!r}",
            )
        try:
            thread.resume(state, by=caller)
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

    # ------------------------------------------------------------ history

    def _history(self):
        if self.history is None:
            raise RpcError(
                RpcCode.NO_HISTORY, "no history: this worker keeps none ([worker] history = false)"
            )
        return self.history

    def worker_history(self, params: list) -> dict:
        """[index, limit]: the thread's last `limit` entries (all with null), oldest first."""
        _check_count(params, 1, 2)
        thread = self._thread(params[0])
        limit = params[1] if len(params) == 2 else None
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 1
        ):
            raise RpcError(
                RpcCode.INVALID_PARAMS,
                f"invalid params: limit must be an integer >= 1 or null, got {limit!r}",
            )
        try:
            return self._history().thread_history(thread.index, limit)
        except HistoryUnavailable as exc:
            raise RpcError(RpcCode.NO_HISTORY, str(exc)) from None

    def sector_history(self, params: list) -> dict:
        """[sector_id]: the threads working on it now, and every entry naming it."""
        _check_count(params, 1, 1)
        try:
            sector = parse_sector_id(params[0])
        except ValueError as exc:
            raise RpcError(RpcCode.INVALID_PARAMS, f"invalid params: {exc}") from None
        live = [info for info in (t.info() for t in self.threads) if info["job_id"] == sector]
        entries = self._history().sector_entries(sector)
        return {"sector": sector, "threads": live, "entries": entries}

    def worker_stats(self, params: list) -> dict:
        """[window, indexes, plan]: per stage over the history of the runs in the last
        `window` seconds (null: all kept), of these threads (null: all), of `plan`."""
        _check_count(params, 0, 3)
        window, indexes, plan = (list(params) + [None, None, None])[:3]
        if window is not None and (
            isinstance(window, bool) or not isinstance(window, (int, float)) or window <= 0
        ):
            raise RpcError(
                RpcCode.INVALID_PARAMS,
                f"invalid params: window must be seconds > 0 or null, got {window!r}",
            )
        if indexes is None:
            chosen = self.threads
        elif isinstance(indexes, list):
            chosen = [self._thread(index) for index in indexes]
        else:
            raise RpcError(
                RpcCode.INVALID_PARAMS,
                f"invalid params: indexes must be an array or null, got {indexes!r}",
            )
        if plan is not None and not isinstance(plan, str):
            raise RpcError(
                RpcCode.INVALID_PARAMS,
                f"invalid params: plan must be a string or null, got {plan!r}",
            )
        indexes = None if indexes is None else [thread.index for thread in chosen]
        return self._history().stats(self._clock(), window, indexes, plan).to_json()
