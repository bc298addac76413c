"""The sealing thread: one loop driving one location's tasks through its plan.

``SealingThread.step()`` does one unit of work (start a task, run one stage
and apply its outcome, finish or drop a task); ``run()`` repeats it in a real
thread. Time comes in through a clock object so the logic is tested without
sleeping (see ``RealClock``). All state changes go through ``change_state``;
every change of the record is persisted before anyone can observe it
(``_commit``): WorkerList shows the last *saved* record, so a thread it shows
paused is still paused after a crash.

Behaviour (and where it improves on damocles-worker):

- Temporary errors are retried up to ``max_retries`` times, ``recover_interval``
  apart, then become permanent. Permanent and critical errors pause the
  thread with ``last_error`` = "<level>: <message>". Abort clears
  ``<location>/data`` and starts a new task after ``seal_interval``.
- Pause takes effect at the next stage boundary; the stage in flight finishes
  **and its result is kept** (damocles drops it and redoes the stage). Waits
  (between tasks, retry back-offs, chain waits) are interrupted at once.
  Pausing a paused thread changes nothing.
- Resume acts only on a paused thread (``NotPaused`` otherwise). A target
  state must belong to the task's plan (``InvalidState`` lists the valid
  ones), bypasses the table, and ``Aborted`` drops the task.
- The paused flag and last error are persisted, so they survive a restart.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from worker_agent.api import ThreadState
from worker_agent.config import ThreadConfig
from worker_agent.processors import Done, Interrupted, Outcome, StageContext
from worker_agent.states import NO_STAGE, WAIT_STAGES, Event, Level, Plan, State, plan_named
from worker_agent.store import SectorCounter, Task, TaskStore, ThreadRecord

__all__ = [
    "IllegalTransition",
    "InvalidState",
    "NoTask",
    "NotPaused",
    "RealClock",
    "SealingThread",
    "change_state",
]

log = logging.getLogger("venus_worker.thread")


class IllegalTransition(Exception):
    """A move the plan's table does not allow."""


class NotPaused(Exception):
    """Resume of a thread that is not paused."""


class InvalidState(Exception):
    """A resume target that is not a state of the thread's plan."""


class NoTask(Exception):
    """A resume target state for a thread that has no task to move."""


class _NotQueued(Exception):
    """Inside a commit: no pause is queued (any more), so nothing is to be written."""


class RealClock:
    """Wall and monotonic time, and waits on a condition (which the caller holds)."""

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def wait(
        self, cond: threading.Condition, predicate: Callable[[], bool], timeout: float | None
    ) -> bool:
        return cond.wait_for(predicate, timeout)


def change_state(task: Task, to: State, event: Event | None, now: float) -> None:
    """Move `task` to `to`; the one place a task's state changes.

    With an `event`, the plan's table must allow (state, event) -> `to`;
    without one (an operator's resume --state) the table is bypassed but `to`
    must still be a state of the plan.
    """
    plan = plan_named(task.plan)
    if event is not None:
        expected = plan.next_state(task.state, event)
        if expected is not to:
            raise IllegalTransition(
                f"unexpected event {event} for state {task.state} in plan {plan.name}"
            )
    elif to not in plan.states:
        raise IllegalTransition(f"state {to} is not part of plan {plan.name}")
    task.prev_state, task.state, task.entered_at = task.state, to, now


@dataclass
class _Activity:
    """What the thread is doing right now (WorkerInfo.thread_state); in memory only."""

    state: ThreadState
    since: float  # monotonic
    proc: str | None = None


class SealingThread:
    """One sealing thread. Public methods are safe to call from any thread."""

    def __init__(
        self,
        config: ThreadConfig,
        store: TaskStore,
        counter: SectorCounter,
        processor,
        clock=None,
        observer=None,
    ):
        self.config = config
        self.index = config.index
        self.store = store
        self.counter = counter
        self.processor = processor
        self.clock = clock or RealClock()
        # Told of each stage that completed and each task that ended (metrics.py's
        # WorkerMetrics: stage_done(plan, stage, seconds), task_ended(location, task)).
        self.observer = observer
        self._cond = threading.Condition()  # guards everything below
        self._save_lock = threading.Lock()  # orders writes of the record
        self.record: ThreadRecord = store.load()
        # a request saved before a crash or a stop is honoured at the first boundary
        self._pause_requested = self.record.pause_requested and not self.record.paused
        self._stopping = False
        self._next_task_at = self.clock.monotonic()
        self._activity = _Activity(
            ThreadState.Paused if self.record.paused else ThreadState.Idle, self._mono()
        )
        # info() is on the WorkerList hot path: its unchanging part is rebuilt only after
        # a change (the version moves), so a call costs a dict copy and three subtractions.
        self._version = 0
        self._view_version = -1
        self._view: dict = {}
        self._view_times: tuple[float | None, float | None] = (None, None)
        self._view_retry = 0
        self._saving = False  # a changed record is being written: views keep the saved one
        self._json_key: tuple | None = None
        self._json = ""

    # ------------------------------------------------------------ helpers

    def _mono(self) -> float:
        return self.clock.monotonic()

    def _set_activity(self, state: ThreadState, proc: str | None = None) -> None:
        with self._cond:
            if self._activity.state != state or self._activity.proc != proc:
                self._activity = _Activity(state, self._mono(), proc)
                self._version += 1

    def _commit(
        self, mutate: Callable[[ThreadRecord], None], activity: ThreadState | None = None
    ) -> None:
        """Apply `mutate` to the record and persist it before returning.

        The state lock is held only while mutating (so WorkerList never waits
        for a disk flush); the save lock keeps the writes in mutation order.
        Until the write is done, views show the record as it was saved before
        (``_saving``), and the new `activity` is set only after it. If
        `mutate` raises, nothing changes and nothing is written.
        """
        with self._save_lock:
            with self._cond:
                self._refresh_view()
                mutate(self.record)
                data = self.record.to_json()
                self._saving = True
            try:
                self.store.save(data)
            finally:
                with self._cond:
                    self._saving = False
                    if activity is not None:
                        self._activity = _Activity(activity, self._mono())
                    self._version += 1
                    self._cond.notify_all()

    def _interrupt_requested(self) -> bool:
        return self._pause_requested or self._stopping

    def _wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True if a pause or stop request cut it short."""
        with self._cond:
            if seconds <= 0:
                return self._interrupt_requested()
            return self.clock.wait(self._cond, self._interrupt_requested, seconds)

    def _sleep(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True if a stop request cut it short (pauses do not)."""
        with self._cond:
            if seconds <= 0:
                return self._stopping
            return self.clock.wait(self._cond, lambda: self._stopping, seconds)

    @property
    def plan(self) -> Plan:
        task = self.record.task
        return plan_named(task.plan if task else self.config.plan)

    # ------------------------------------------------------------ the loop

    def run(self) -> None:
        """Thread body: step until stopped; block without polling while paused."""
        while True:
            with self._cond:
                if self._stopping:
                    return
                if self.record.paused:
                    self._cond.wait_for(lambda: self._stopping or not self.record.paused)
                    continue
            try:
                self.step()
            except Exception as exc:  # a bug or disk failure must pause this thread, not kill it
                log.exception("thread #%d: unexpected failure", self.index)
                self._pause_after_crash(f"{Level.CRITICAL}: {type(exc).__name__}: {exc}")

    def step(self) -> None:
        """One unit of work; returns at every stage boundary."""
        if self._take_pause_request():
            return
        task = self.record.task
        if task is None:
            self._start_task_when_due()
        elif task.state in (State.Finished, State.Aborted):
            self._drop_task(task.state)
        elif task.state is not State.Empty and task.state not in plan_named(task.plan).table:
            self._pause(f"{Level.CRITICAL}: unexpected state {task.state} in plan {task.plan}")
        else:
            outcome = self._execute(task)
            self._apply(task, outcome)

    def _take_pause_request(self) -> bool:
        """At a boundary: True if the thread is stopping or paused (now or before)."""
        with self._cond:
            if self.record.paused:
                return True
            if not self._pause_requested:
                return self._stopping
        # Also when stopping: a drain followed by a service stop must stay paused.
        try:
            self._pause(None, requested=True)
        except _NotQueued:  # cancelled (cancel_pause) before this boundary was reached
            return self._stopping
        return True

    def _start_task_when_due(self) -> None:
        self._set_activity(ThreadState.Idle)
        if self._wait(self._next_task_at - self._mono()):
            return
        miner = self.config.sealing.miner
        number = self.counter.next(miner)  # persisted before any record uses it
        plan = plan_named(self.config.plan)
        event = plan.happy_event(State.Empty)
        to = plan.next_state(State.Empty, event)
        now = self.clock.now()

        def start(record: ThreadRecord) -> None:
            task = Task(plan.name, State.Empty, None, miner, number, 0, now)
            change_state(task, to, event, now)
            record.task = task

        self._commit(start)
        log.info("thread #%d: new task %s (%s)", self.index, self.record.task.sector_id, plan.name)

    def _drop_task(self, state: State) -> None:
        """Finished or Aborted: clear the data folder, forget the task, wait seal_interval."""
        if self.observer is not None:
            # Before the drop is saved: a crash in between tells it again after the
            # restart, and the observer counts a sector once (it remembers the last one).
            self.observer.task_ended(str(self.config.location), self.record.task)
        self.store.clear_data()

        def drop(record: ThreadRecord) -> None:
            record.task = None

        sector = self.record.task.sector_id
        self._commit(drop)
        self._next_task_at = self._mono() + self.config.sealing.seal_interval
        log.info("thread #%d: task %s %s", self.index, sector, state.value.lower())

    def _context(self, task: Task, plan: Plan) -> StageContext:
        return StageContext(
            index=self.index,
            location=self.config.location,
            data_dir=self.store.data_dir,
            plan=plan,
            state=task.state,
            stage=plan.stage(task.state),
            sector_id=task.sector_id,
            miner=task.miner,
            number=task.number,
            wait=self._wait,
            sleep=self._sleep,
        )

    def _execute(self, task: Task) -> Outcome:
        plan = plan_named(task.plan)
        if task.state is State.Empty:
            return Done()  # a task reset to Empty keeps its sector: just allocate again
        stage = plan.stage(task.state)
        if stage in WAIT_STAGES:
            self._set_activity(ThreadState.Waiting)
        else:
            self._set_activity(ThreadState.Running, self.processor.name)
        try:
            return self.processor.run(self._context(task, plan))
        finally:
            self._set_activity(ThreadState.Idle)

    def _apply(self, task: Task, outcome: Outcome) -> None:
        if isinstance(outcome, Interrupted):
            return  # state unchanged; the next step sees the pause or stop request
        if isinstance(outcome, Done):
            self._advance(task, outcome.event)
        elif outcome.level is Level.TEMPORARY:
            self._retry_later(outcome.message)
        elif outcome.level is Level.ABORT:
            self._abort(outcome.message)
        else:
            self._pause(f"{outcome.level}: {outcome.message}")

    def _advance(self, task: Task, event: Event | None) -> None:
        plan = plan_named(task.plan)
        event = event or plan.happy_event(task.state)
        to = plan.next_state(task.state, event)
        if to is None:
            self._pause(f"{Level.CRITICAL}: unexpected event {event} for state {task.state}")
            return
        now = self.clock.now()
        entered_at, stage = task.entered_at, plan.stage(task.state)
        self._commit(lambda record: change_state(record.task, to, event, now))
        if self.observer is not None and stage != NO_STAGE:
            self.observer.stage_done(plan.name, stage, max(0.0, now - entered_at))

    def _retry_later(self, message: str) -> None:
        limit = self.config.sealing.max_retries
        if self.record.task.retry >= limit:
            # Escalate: reset the count and pause in one write, so a crash cannot split them.
            self._pause(
                f"{Level.PERMANENT}: {message} (still failing after {limit} retries)",
                also=lambda record: setattr(record.task, "retry", 0),
            )
            return

        def count(record: ThreadRecord) -> None:
            record.task.retry += 1

        self._commit(count)
        retry = self.record.task.retry
        log.warning("thread #%d: temporary: %s (retry %d/%d)", self.index, message, retry, limit)
        self._set_activity(ThreadState.Idle)
        self._wait(self.config.sealing.recover_interval)

    def _abort(self, message: str) -> None:
        log.warning("thread #%d: abort: %s", self.index, message)
        now = self.clock.now()
        # Persist Aborted first: a crash during the clean-up then finishes it on restart.
        self._commit(lambda record: change_state(record.task, State.Aborted, None, now))
        self._drop_task(State.Aborted)

    def _pause(
        self,
        last_error: str | None,
        also: Callable[[ThreadRecord], None] | None = None,
        requested: bool = False,
    ) -> None:
        now = self.clock.now()

        def pause(record: ThreadRecord) -> None:
            # Checked again under the state lock: a cancel may have come first.
            if requested and not self._pause_requested:
                raise _NotQueued
            if also is not None:
                also(record)
            record.paused, record.paused_at, record.last_error = True, now, last_error
            record.pause_requested = self._pause_requested = False

        self._commit(pause, activity=ThreadState.Paused)
        if last_error:
            log.error("thread #%d: paused: %s", self.index, last_error)
        else:
            log.info("thread #%d: paused", self.index)

    def _pause_after_crash(self, last_error: str) -> None:
        try:
            self._pause(last_error)
        except OSError as exc:
            # The disk refuses even this write: pause in memory so an operator sees it.
            log.error("thread #%d: cannot persist pause: %s", self.index, exc)
            with self._cond:
                self.record.paused, self.record.last_error = True, last_error
                self.record.paused_at = self.clock.now()
                self._activity = _Activity(ThreadState.Paused, self._mono())
                self._version += 1

    # ------------------------------------------------------------ control

    def request_pause(self) -> None:
        """Pause at the next boundary; waits end at once. No-op on a paused thread.

        The request is saved before this returns (outside the state lock: a
        commit takes the save lock first), so it survives a crash or a stop.
        """
        with self._cond:
            if self.record.paused or self._pause_requested:
                return
            self._pause_requested = True
            self._cond.notify_all()

        def save_request(record: ThreadRecord) -> None:
            # The thread may have reached its boundary and paused meanwhile.
            record.pause_requested = self._pause_requested and not record.paused

        self._commit(save_request)

    def cancel_pause(self) -> bool:
        """Cancel a pause queued while a stage runs; True if one was cancelled.

        Never resumes: a thread that already took its pause (or was paused by an
        error meanwhile) stays paused and the answer is False, so a late cancel can
        never undo a pause. The request and its cancel are decided under the state
        lock, in the order of their writes: the thread pauses, or it does not.
        """

        def cancel(record: ThreadRecord) -> None:
            if record.paused or not self._pause_requested:
                raise _NotQueued
            record.pause_requested = self._pause_requested = False

        try:
            self._commit(cancel)
        except _NotQueued:
            return False
        log.info("thread #%d: queued pause cancelled", self.index)
        return True

    def resume(self, state_name: str | None = None) -> None:
        """Resume a paused thread, optionally moving its task to `state_name` first."""
        target = self._resume_target(state_name)
        now = self.clock.now()

        def resume(record: ThreadRecord) -> None:
            if not record.paused:
                raise NotPaused(f"worker #{self.index} is not paused")
            if target is not None:
                if record.task is None:
                    if target not in (State.Empty, State.Aborted):
                        raise NoTask(f"worker #{self.index} has no task to move to {target}")
                elif target is not record.task.state:
                    change_state(record.task, target, None, now)
                    record.task.retry = 0
            record.paused, record.paused_at, record.last_error = False, None, None
            record.pause_requested = self._pause_requested = False

        self._commit(resume, activity=ThreadState.Idle)
        log.info("thread #%d: resumed%s", self.index, f" at {target}" if target else "")

    def _resume_target(self, state_name: str | None) -> State | None:
        if state_name is None:
            return None
        with self._cond:
            plan = self.plan
        valid = [s.value for s in plan.states]
        if state_name not in valid:
            raise InvalidState(
                f'invalid state "{state_name}" for plan {plan.name}; valid states: '
                + ", ".join(valid)
            )
        return State(state_name)

    def request_stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    # ------------------------------------------------------------ views

    def info(self) -> dict:
        """This thread as WorkerInfo JSON (api.WorkerInfo, docs/protocol.md)."""
        with self._cond:
            self._refresh_view()
            return self._info(*self._elapsed())

    def info_json(self) -> str:
        """info() as JSON text, re-encoded only when something in it changed.

        WorkerList is the hot path of the control API (fleet tools poll it):
        with this cache a call costs a few comparisons per thread instead of
        building and encoding every WorkerInfo again.
        """
        with self._cond:
            self._refresh_view()
            key = (self._version, *self._elapsed())
            if key != self._json_key:
                self._json = json.dumps(self._info(key[1], key[2]), separators=(",", ":"))
                self._json_key = key
            return self._json

    def metrics_view(self) -> dict:
        """info() plus the saved record's `retry`, `paused_at` and `entered_at` (metrics.py)."""
        with self._cond:
            self._refresh_view()
            info = self._info(*self._elapsed())
            info["paused_at"], info["entered_at"] = self._view_times
            info["retry"] = self._view_retry
        return info

    def _elapsed(self) -> tuple[int | None, int | None]:
        """(thread-state elapsed, state_elapsed) in whole seconds; caller holds the lock."""
        paused_at, entered_at = self._view_times
        activity = self._activity
        now = self.clock.now()
        if activity.state is ThreadState.Paused and paused_at is not None:
            elapsed = int(max(0.0, now - paused_at))
        elif activity.state is ThreadState.Idle:
            elapsed = None
        else:
            elapsed = int(max(0.0, self._mono() - activity.since))
        return elapsed, None if entered_at is None else int(max(0.0, now - entered_at))

    def _refresh_view(self) -> None:
        """Rebuild the cached view from the record if it changed and is saved (lock held)."""
        if self._view_version != self._version and not self._saving:
            self._view = self._static_info()
            task = self.record.task
            self._view_times = (self.record.paused_at, task.entered_at if task else None)
            self._view_retry = task.retry if task else 0
            self._view_version = self._version

    def _info(self, elapsed: int | None, state_elapsed: int | None) -> dict:
        """The WorkerInfo dict; caller holds the lock and refreshed the view."""
        activity = self._activity
        info = dict(self._view)
        info["thread_state"] = {
            "state": activity.state.value,
            "elapsed": elapsed,
            "proc": activity.proc if activity.state is ThreadState.Running else None,
        }
        info["state_elapsed"] = state_elapsed
        return info

    def _static_info(self) -> dict:
        """The WorkerInfo fields that change only with the record (caller holds the lock)."""
        task = self.record.task
        stage = plan_named(task.plan).stage(task.state) if task else NO_STAGE
        return {
            "index": self.index,
            "location": str(self.config.location),
            "plan": task.plan if task else self.config.plan,
            "job_id": task.sector_id if task else None,
            "job_state": task.state.value if task else "",
            "job_stage": None if stage == NO_STAGE else stage,
            "thread_state": None,
            "state_elapsed": None,
            "last_error": self.record.last_error,
            "pause_requested": self.record.pause_requested,
        }
