"""The sealing thread: one loop driving one location's tasks through its plan.

``SealingThread.step()`` does one unit of work (start a task, run one stage
and apply its outcome, finish or drop a task); ``run()`` repeats it in a real
thread. Time comes in through a clock object so the logic is tested without
sleeping (see ``RealClock``). All state changes go through ``change_state``;
every change of the record goes through ``_commit``, the one write path: the
change is made on a copy, the copy is written, and only a copy that reached
the disk becomes the thread's record. WorkerList therefore shows what is on
disk and nothing else: a change whose write failed did not happen (the RPC
caller gets ``RecordNotSaved``), and a thread shown paused is still paused
after a crash.

Behaviour (and where it improves on damocles-worker):

- Temporary errors are retried up to ``max_retries`` times, ``recover_interval``
  apart, then become permanent. Permanent and critical errors pause the
  thread with ``last_error`` = "<level>: <message>". Abort clears
  ``<location>/data`` and starts a new task after ``seal_interval``.
- An error pause whose text matches an ``[[sealing.auto_resume]]`` rule is
  resumed by itself after the rule's ``after``, at most ``max`` times per task
  and rule (counted in the task, so a restart does not reset it). A pause an
  operator asked for is never auto-resumed, and pausing an error-paused
  thread cancels its pending auto-resume.
- Pause takes effect at the next stage boundary; the stage in flight finishes
  **and its result is kept** (damocles drops it and redoes the stage). Waits
  (between tasks, retry back-offs, chain waits) are interrupted at once.
  Pausing a paused thread changes nothing (but the auto-resume above).
- Resume acts only on a paused thread (``NotPaused`` otherwise). A target
  state must belong to the task's plan (``InvalidState`` lists the valid
  ones), bypasses the table, and ``Aborted`` drops the task.
- The paused flag and last error are persisted, so they survive a restart.
- The thread's own writes that fail (a full or read-only disk) are retried
  every ``WRITE_RETRY`` seconds, the thread showing ``Waiting`` and the write
  error as its last_error meanwhile; nothing after the last saved state is
  assumed done.
- A store whose record cannot be loaded (bad JSON, a field of the wrong type)
  or whose folders cannot be created leaves only that thread paused, with the
  file and field in last_error; resume tries again, and ``resume --state
  Aborted`` sets an unusable record aside and starts afresh.
- A command stage's process group is saved in the record while it runs; at
  the start of a thread, what a crashed daemon left of it is killed before
  anything reruns.
- With a history (history.py), every change ``_commit`` saves also gets its
  line there, written right after the record (``_Note``): state changes with
  the stage, its run time and outcome; retries, aborts, pauses, resumes and
  auto-resumes, with who asked (``api.Caller``) where someone did.
- A worker whose sector range (``[sealing] sector_numbers``) is used up starts
  no new task: its idle threads show ``Waiting`` and the reason as last_error.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from worker_agent.api import Caller, HistoryEntry, HistoryKind, ThreadState
from worker_agent.children import LeftoversAlive, kill_leftovers
from worker_agent.config import AutoResume, ThreadConfig
from worker_agent.guard import InsecurePath, check_folder
from worker_agent.processors import Done, Interrupted, Outcome, StageContext
from worker_agent.states import NO_STAGE, WAIT_STAGES, Event, Level, Plan, State, plan_named
from worker_agent.store import (
    LockHeld,
    RangeExhausted,
    SectorCounter,
    StageProcess,
    StoreError,
    Task,
    TaskStore,
    ThreadRecord,
    merge_numbers,
)

__all__ = [
    "IllegalTransition",
    "InvalidState",
    "NoTask",
    "NotPaused",
    "RealClock",
    "RecordNotSaved",
    "SealingThread",
    "StoreUnusable",
    "change_state",
]

log = logging.getLogger("venus_worker.thread")

# How often a thread retries a record write the disk refused.
WRITE_RETRY = 5.0

# A change's history line, made from the record before and after it (inside the commit).
_Note = Callable[["ThreadRecord", "ThreadRecord"], "HistoryEntry | None"]


class IllegalTransition(Exception):
    """A move the plan's table does not allow."""


class NotPaused(Exception):
    """Resume of a thread that is not paused."""


class InvalidState(Exception):
    """A resume target that is not a state of the thread's plan."""


class NoTask(Exception):
    """A resume target state for a thread that has no task to move."""


class RecordNotSaved(Exception):
    """The record could not be written, so the change was not made; str() names file and error."""


class StoreUnusable(Exception):
    """Resume of a thread whose store still cannot be used; str() says why."""


class _Stopping(Exception):
    """The daemon stops while the thread waits for the disk: leave the loop."""


class _Nothing(Exception):
    """A mutation found nothing left to do (e.g. an auto-resume the operator cancelled)."""


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
        problem: str | None = None,
        history=None,
        strict_modes: bool = True,
        on_change: Callable[[], None] | None = None,
    ):
        """`problem`: why the store cannot be used (the daemon could not create or lock it).

        `history`: the thread's history.HistoryLog (None: none is kept). `strict_modes`:
        the daemon's [worker] strict_modes, for a store opened again by a resume.
        `on_change`: called after each change of what info() shows, with the thread's lock
        held, so it must not block (the daemon's reporter sleeps until then).
        """
        self.config = config
        self.strict_modes = strict_modes
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
        self._unusable: str | None = None  # why the store cannot be used (paused meanwhile)
        self.record: ThreadRecord = self._load(problem)
        # a request saved before a crash or a stop is honoured at the first boundary
        self._pause_requested = self.record.pause_requested and not self.record.paused
        self._stopping = False
        self._write_error: str | None = None  # shown as last_error while the disk refuses
        self._next_task_at = self.clock.monotonic()
        self._activity = _Activity(
            ThreadState.Paused if self.record.paused else ThreadState.Idle, self._mono()
        )
        # info() is on the WorkerList hot path: its unchanging part is rebuilt only after
        # a change (the version moves), so a call costs a dict copy and three subtractions.
        self._version = 0
        self._view_version = -1
        self._view: dict = {}
        self.on_change = on_change
        self._view_times: tuple[float | None, float | None] = (None, None)
        self._view_retry = 0
        self._json_key: tuple | None = None
        self._json = ""
        self.history = history
        self._last_run: float | None = None  # seconds the last stage run took
        self._pause_by: Caller | None = None  # who asked for the pause now queued
        if history is not None and self.usable:
            self._reconcile_history()

    def _load(self, problem: str | None) -> ThreadRecord:
        if problem is None:
            try:
                return self.store.load()
            except StoreError as exc:
                problem = str(exc)
        log.error("thread #%d: paused: its store cannot be used: %s", self.index, problem)
        self._unusable = problem
        return ThreadRecord(
            paused=True, paused_at=self.clock.now(), last_error=f"{Level.CRITICAL}: {problem}"
        )

    @property
    def usable(self) -> bool:
        return self._unusable is None

    # ------------------------------------------------------------ helpers

    def _mono(self) -> float:
        return self.clock.monotonic()

    def _changed(self) -> None:
        """What info() shows has changed (call with the lock held)."""
        self._version += 1
        if self.on_change is not None:
            self.on_change()

    def _set_activity(self, state: ThreadState, proc: str | None = None) -> None:
        with self._cond:
            if self._activity.state != state or self._activity.proc != proc:
                self._activity = _Activity(state, self._mono(), proc)
                self._changed()

    def _commit(
        self,
        mutate: Callable[[ThreadRecord], None],
        activity: ThreadState | None = None,
        after: Callable[[], None] | None = None,
        note: _Note | None = None,
    ) -> None:
        """Apply `mutate` to a copy of the record, write the copy, then make it the record.

        The one write path of a record. The state lock is held only while
        mutating (so WorkerList never waits for a disk flush); the save lock
        keeps the writes in mutation order. Until the write is done, everyone
        sees the record as it was saved before; `after` (the change's effects
        outside the record) and the new `activity` apply only once it is on
        disk. If `mutate` raises, or the write fails (``RecordNotSaved``),
        nothing changes. Every record also carries the sector counter's
        numbers (``last_numbers``), the witness for a lost counter.

        `note(old, new)` makes the change's history line; it is appended (and
        flushed) once the record is on disk, still in the save lock, so the
        history is in the order of the records. A history that cannot be
        written never fails the change: the record is the truth.
        """
        with self._save_lock:
            with self._cond:
                old = self.record
                new = old.copy()
                mutate(new)
                new.last_numbers = merge_numbers(new.last_numbers, self.counter.snapshot())
                data = new.to_json()
                entry = None if note is None or self.history is None else note(old, new)
            try:
                self.store.save(data)
            except OSError as exc:
                raise RecordNotSaved(f"{self.store.path}: {exc.strerror or exc}") from exc
            if entry is not None:
                self.history.append(entry)
            with self._cond:
                self.record = new
                if after is not None:
                    after()
                if activity is not None:
                    self._activity = _Activity(activity, self._mono())
                self._changed()
                self._cond.notify_all()

    def _save(
        self,
        mutate: Callable[[ThreadRecord], None],
        activity: str | None = None,
        after: Callable[[], None] | None = None,
        note: _Note | None = None,
    ) -> None:
        """``_commit`` for the sealing thread's own changes, made between stages.

        No stage runs, so the saved process group is cleared. A write the disk
        refuses is retried every WRITE_RETRY seconds until it succeeds or the
        daemon stops (``_Stopping``).
        """

        def between_stages(record: ThreadRecord) -> None:
            record.stage_process = None
            mutate(record)

        while True:
            try:
                self._commit(between_stages, activity, after, note)
            except RecordNotSaved as exc:
                self._blocked(f"cannot save {exc}")
                continue
            self._unblocked()
            return

    def _blocked(self, problem: str, retrying: bool = True) -> None:
        """The disk refused a write: show it, wait WRITE_RETRY, let the caller try again."""
        with self._cond:
            first = self._write_error is None
            again = f" (retrying every {WRITE_RETRY:g}s)" if retrying else ""
            self._write_error = f"{Level.CRITICAL}: {problem}{again}"
            self._changed()
        if first:
            log.error("thread #%d: %s%s", self.index, problem, again)
        self._set_activity(ThreadState.Waiting)
        if self._sleep(WRITE_RETRY):
            raise _Stopping()

    def _unblocked(self) -> None:
        with self._cond:
            if self._write_error is None:
                return
            self._write_error = None
            self._changed()
        log.info("thread #%d: the disk takes writes again", self.index)

    def _entry(
        self,
        kind: HistoryKind,
        old: ThreadRecord,
        new: ThreadRecord,
        now: float | None = None,
        **fields,
    ) -> HistoryEntry:
        """A history line about a change from record `old` to `new` (the task's, or the
        task the change dropped)."""
        task = new.task or old.task
        before = old.task.state.value if old.task else None
        after = new.task.state.value if new.task else before
        return HistoryEntry(
            time=round(self.clock.now() if now is None else now, 3),
            kind=kind.value,
            index=self.index,
            sector=task.sector_id if task else None,
            plan=task.plan if task else None,
            from_state=before,
            to_state=after,
            **fields,
        )

    def _run_fields(self, stage: str | None) -> dict:
        """The stage and its last run's time, for a line about that run's outcome."""
        if stage is None or stage == NO_STAGE:
            return {}
        run = self._last_run
        return {"stage": stage, "duration": None if run is None else round(run, 3)}

    def _reconcile_history(self) -> None:
        """At start: a task the record has moved past the history's last line gets a line.

        The record is written before its history line, so a crash between the
        two leaves the history one change behind; a history that begins with
        this start (an upgrade, a lost folder) has no line for the task at all.
        """
        task = self.record.task
        if task is None:
            return
        last = self.history.last
        same = last is not None and last.get("sector") == task.sector_id
        if same and last.get("to") == task.state.value:
            return
        self.history.append(
            HistoryEntry(
                time=round(self.clock.now(), 3),
                kind=HistoryKind.RECOVERED.value,
                index=self.index,
                sector=task.sector_id,
                plan=task.plan,
                from_state=last.get("to") if same else None,
                to_state=task.state.value,
                note="the record was ahead of the history at start (a crash between the two writes)"
                if same
                else "the history of this task begins here",
            )
        )

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
                    delay = self._auto_resume_delay()
                    if delay is None or delay > 0:
                        self.clock.wait(
                            self._cond, lambda: self._stopping or not self.record.paused, delay
                        )
                        continue
            try:
                self.step()
            except _Stopping:
                return
            except RangeExhausted as exc:  # no new task: shown until a restart with a range
                try:
                    self._blocked(str(exc), retrying=False)
                except _Stopping:
                    return
            except OSError as exc:  # the disk (data folder, sector counter): wait and redo
                where = f"{exc.filename}: " if exc.filename else ""
                try:
                    self._blocked(f"{where}{exc.strerror or exc}")
                except _Stopping:
                    return
            except Exception as exc:  # a bug must pause this thread, not kill it
                log.exception("thread #%d: unexpected failure", self.index)
                try:
                    self._pause_after_crash(f"{Level.CRITICAL}: {type(exc).__name__}: {exc}")
                except _Stopping:
                    return

    def step(self) -> None:
        """One unit of work; returns at every stage boundary."""
        if self.record.stage_process is not None:
            self._kill_leftover_stage()
            return
        if self._auto_resume_delay() == 0:
            self._auto_resume()
            return
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

    def _kill_leftover_stage(self) -> None:
        """Kill what a crashed daemon left running of this thread's stage, before any rerun."""
        process = self.record.stage_process
        try:
            killed = kill_leftovers(process.pgid, process.token, process.boot_id)
        except LeftoversAlive as exc:
            # Keep the saved group: the stage must not run again beside it, even after a resume.
            self._pause(
                f"{Level.CRITICAL}: stage {process.stage} of the previous run is still running "
                f"(process group {process.pgid}): {exc}",
                also=lambda record: setattr(record, "stage_process", process),
            )
            return
        if killed:
            log.warning(
                "thread #%d: killed %d process(es) of stage %s left running by the previous "
                "daemon (process group %s); the stage reruns",
                self.index, killed, process.stage, process.pgid,
            )  # fmt: skip
        self._save(lambda record: None)  # forget the group

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
        except _Nothing:  # cancelled (cancel_pause) before this boundary was reached
            return self._stopping
        return True

    def _start_task_when_due(self) -> None:
        self._set_activity(ThreadState.Idle)
        if self._wait(self._next_task_at - self._mono()):
            return
        miner = self.config.sealing.miner
        # persisted before any record uses it; RangeExhausted past the end of sector_numbers
        number = self.counter.next(miner, self.config.sealing.sector_numbers)
        plan = plan_named(self.config.plan)
        event = plan.happy_event(State.Empty)
        to = plan.next_state(State.Empty, event)
        now = self.clock.now()

        def start(record: ThreadRecord) -> None:
            task = Task(plan.name, State.Empty, None, miner, number, 0, now)
            change_state(task, to, event, now)
            record.task = task

        def started(old: ThreadRecord, new: ThreadRecord) -> HistoryEntry:
            entry = self._entry(HistoryKind.STATE, old, new, now, outcome="ok", note="new task")
            return replace(entry, from_state=State.Empty.value)

        self._save(start, note=started)
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
        self._save(drop)
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
            started=self._stage_started,
        )

    def _stage_started(self, process: StageProcess) -> None:
        """A command stage starts: save its token and group, so a restart can kill what is left."""
        try:
            self._commit(lambda record: setattr(record, "stage_process", process))
        except RecordNotSaved as exc:
            log.warning(
                "thread #%d: cannot save the process group of stage %s (%s); if the daemon "
                "is killed now, only PR_SET_PDEATHSIG stops it",
                self.index, process.stage, exc,
            )  # fmt: skip

    def _execute(self, task: Task) -> Outcome:
        plan = plan_named(task.plan)
        if task.state is State.Empty:
            return Done()  # a task reset to Empty keeps its sector: just allocate again
        stage = plan.stage(task.state)
        if stage in WAIT_STAGES:
            self._set_activity(ThreadState.Waiting)
        else:
            self._set_activity(ThreadState.Running, self.processor.name)
        started = self._mono()
        try:
            return self.processor.run(self._context(task, plan))
        finally:
            self._last_run = max(0.0, self._mono() - started)
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
            self._pause(f"{outcome.level}: {outcome.message}", stage=self._stage_of(task))

    def _stage_of(self, task: Task) -> str:
        return plan_named(task.plan).stage(task.state)

    def _advance(self, task: Task, event: Event | None) -> None:
        plan = plan_named(task.plan)
        event = event or plan.happy_event(task.state)
        to = plan.next_state(task.state, event)
        if to is None:
            self._pause(f"{Level.CRITICAL}: unexpected event {event} for state {task.state}")
            return
        now = self.clock.now()
        entered_at, stage = task.entered_at, plan.stage(task.state)

        def moved(old: ThreadRecord, new: ThreadRecord) -> HistoryEntry:
            in_state = round(max(0.0, now - entered_at), 3)
            fields = self._run_fields(stage)
            return self._entry(
                HistoryKind.STATE, old, new, now, outcome="ok", in_state=in_state, **fields
            )

        self._save(lambda record: change_state(record.task, to, event, now), note=moved)
        if self.observer is not None and stage != NO_STAGE:
            self.observer.stage_done(plan.name, stage, max(0.0, now - entered_at))

    def _retry_later(self, message: str) -> None:
        limit = self.config.sealing.max_retries
        if self.record.task.retry >= limit:
            # Escalate: reset the count and pause in one write, so a crash cannot split them.
            self._pause(
                f"{Level.PERMANENT}: {message} (still failing after {limit} retries)",
                also=lambda record: setattr(record.task, "retry", 0),
                stage=self._stage_of(self.record.task),
            )
            return

        def count(record: ThreadRecord) -> None:
            record.task.retry += 1

        def retried(old: ThreadRecord, new: ThreadRecord) -> HistoryEntry:
            return self._entry(
                HistoryKind.RETRY,
                old,
                new,
                outcome=Level.TEMPORARY.value,
                error=message,
                retry=new.task.retry,
                note=f"retry {new.task.retry} of {limit}",
                **self._run_fields(self._stage_of(old.task)),
            )

        self._save(count, note=retried)
        retry = self.record.task.retry
        log.warning("thread #%d: temporary: %s (retry %d/%d)", self.index, message, retry, limit)
        self._set_activity(ThreadState.Idle)
        self._wait(self.config.sealing.recover_interval)

    def _abort(self, message: str) -> None:
        log.warning("thread #%d: abort: %s", self.index, message)
        now = self.clock.now()
        stage = self._stage_of(self.record.task)

        def aborted(old: ThreadRecord, new: ThreadRecord) -> HistoryEntry:
            return self._entry(
                HistoryKind.ABORT,
                old,
                new,
                now,
                outcome=Level.ABORT.value,
                error=message,
                in_state=round(max(0.0, now - old.task.entered_at), 3),
                **self._run_fields(stage),
            )

        # Persist Aborted first: a crash during the clean-up then finishes it on restart.
        self._save(lambda record: change_state(record.task, State.Aborted, None, now), note=aborted)
        self._drop_task(State.Aborted)

    def _pause(
        self,
        last_error: str | None,
        also: Callable[[ThreadRecord], None] | None = None,
        stage: str | None = None,
        requested: bool = False,
    ) -> None:
        """Pause now; `stage`: the stage whose run failed with `last_error` (for the history)."""
        now = self.clock.now()

        def pause(record: ThreadRecord) -> None:
            # Checked again under the state lock: a cancel (cancel_pause) may have come first.
            if requested and not record.pause_requested:
                raise _Nothing()
            # A pause an operator asked for (saved in the record) is never auto-resumed.
            rule = None if record.pause_requested else self._auto_resume_rule(record, last_error)
            record.paused, record.paused_at, record.last_error = True, now, last_error
            record.pause_requested = False
            record.auto_resume_at = now + rule.after if rule else None
            if also is not None:
                also(record)

        def paused(old: ThreadRecord, new: ThreadRecord) -> HistoryEntry:
            if last_error is None:
                note = "at the stage boundary, as asked" if old.pause_requested else None
                return self._entry(HistoryKind.PAUSE, old, new, now, by=self._pause_by, note=note)
            level, _, text = last_error.partition(": ")
            due = new.auto_resume_at
            note = None if due is None else f"auto-resume in {due - now:g}s"
            run = self._run_fields(stage) if stage else {}
            return self._entry(
                HistoryKind.PAUSE, old, new, now, outcome=level, error=text, note=note, **run
            )

        self._save(
            pause, activity=ThreadState.Paused, after=self._forget_pause_request, note=paused
        )
        if last_error:
            due = self.record.auto_resume_at
            when = f" (auto-resume in {due - now:g}s)" if due is not None else ""
            log.error("thread #%d: paused: %s%s", self.index, last_error, when)
        else:
            log.info("thread #%d: paused", self.index)

    def _forget_pause_request(self) -> None:
        self._pause_requested = False
        self._pause_by = None

    def _pause_after_crash(self, last_error: str) -> None:
        self._pause(last_error)

    # ------------------------------------------------------------ auto-resume

    def _auto_resume_rule(self, record: ThreadRecord, last_error: str | None) -> AutoResume | None:
        """The first rule matching `last_error` with resumes left for the record's task."""
        if not last_error or record.task is None:
            return None
        for rule in self.config.sealing.auto_resume:
            if rule.pattern.search(last_error):
                if record.task.auto_resumes.get(rule.match, 0) < rule.max:
                    return rule
                log.warning(
                    "thread #%d: auto-resume rule %r used %d times on %s already: staying paused",
                    self.index, rule.match, rule.max, record.task.sector_id,
                )  # fmt: skip
        return None

    def _auto_resume_delay(self) -> float | None:
        """Seconds until a pending auto-resume (0 when due), None when none is pending."""
        with self._cond:
            due = self.record.auto_resume_at if self.record.paused else None
        return None if due is None else max(0.0, due - self.clock.now())

    def _auto_resume(self) -> None:
        used = {}

        def resume(record: ThreadRecord) -> None:
            if not record.paused or record.auto_resume_at is None:
                raise _Nothing()  # an operator resumed or paused it meanwhile
            rule = self._auto_resume_rule(record, record.last_error)
            if rule is None:  # the config changed since the pause
                record.auto_resume_at = None
                return
            count = record.task.auto_resumes.get(rule.match, 0) + 1
            record.task.auto_resumes[rule.match] = count
            used.update(rule=rule, count=count, error=record.last_error)
            record.paused, record.paused_at, record.last_error = False, None, None
            record.auto_resume_at, record.pause_requested = None, False

        def resumed(old: ThreadRecord, new: ThreadRecord) -> HistoryEntry | None:
            if not used:
                return None
            level, _, text = used["error"].partition(": ")
            rule = used["rule"]
            return self._entry(
                HistoryKind.AUTO_RESUME,
                old,
                new,
                outcome=level,
                error=text,
                note=f"rule {rule.match!r}, {used['count']} of {rule.max} for this task",
            )

        try:
            self._save(resume, note=resumed)
        except _Nothing:
            return
        if not used:
            log.info("thread #%d: no auto-resume rule matches any more: staying paused", self.index)
            return
        self._set_activity(ThreadState.Idle)
        rule = used["rule"]
        log.warning(
            "thread #%d: auto-resumed %s (rule %r, %d of %d for this task) after: %s",
            self.index, self.record.task.sector_id, rule.match, used["count"], rule.max,
            used["error"],
        )  # fmt: skip

    # ------------------------------------------------------------ control

    def request_pause(self, by: Caller | None = None) -> None:
        """Pause at the next boundary; waits end at once. No-op on a paused thread.

        The request is saved before this returns, and takes effect only once
        saved: a pause reported as failed (``RecordNotSaved``) did not happen.
        On a thread paused by an error, it cancels a pending auto-resume.
        `by`: who asked (the history's pause_request line, and the pause's).
        """
        with self._cond:
            if not self.usable:
                return
            if self.record.paused and self.record.auto_resume_at is None:
                return
            if not self.record.paused and self._pause_requested:
                return

        def save_request(record: ThreadRecord) -> None:
            # The thread may have reached its boundary and paused meanwhile.
            if record.paused:
                record.auto_resume_at = None  # now the operator's pause
            else:
                record.pause_requested = True

        def take_effect() -> None:
            if not self.record.paused:
                self._pause_requested = True  # the waits end (notify) right after this
                self._pause_by = by

        def asked(old: ThreadRecord, new: ThreadRecord) -> HistoryEntry:
            note = (
                "cancels the pending auto-resume: the pause is the operator's now"
                if old.paused
                else "taken at the next stage boundary"
            )
            return self._entry(HistoryKind.PAUSE_REQUEST, old, new, by=by, note=note)

        self._commit(save_request, after=take_effect, note=asked)
        log.info("thread #%d: pause requested", self.index)

    def cancel_pause(self, by: Caller | None = None) -> bool:
        """Cancel a pause queued while a stage runs; True if one was cancelled.

        Never resumes: a thread that already took its pause (or was paused by an
        error meanwhile) stays paused and the answer is False, so a late cancel can
        never undo a pause. The request and its cancel are decided under the state
        lock, in the order of their writes: the thread pauses, or it does not.
        `by`: who asked (the history's pause_cancel line).
        """

        def cancel(record: ThreadRecord) -> None:
            if record.paused or not record.pause_requested:
                raise _Nothing()
            record.pause_requested = False

        def cancelled(old: ThreadRecord, new: ThreadRecord) -> HistoryEntry:
            return self._entry(
                HistoryKind.PAUSE_CANCEL, old, new, by=by, note="the queued pause will not happen"
            )

        try:
            self._commit(cancel, after=self._forget_pause_request, note=cancelled)
        except _Nothing:
            return False
        log.info("thread #%d: queued pause cancelled", self.index)
        return True

    def resume(self, state_name: str | None = None, by: Caller | None = None) -> None:
        """Resume a paused thread, optionally moving its task to `state_name` first.

        `by`: who asked (the history's resume line).
        """
        if not self.usable:
            self._resume_unusable(state_name, by)
            return
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
            record.pause_requested, record.auto_resume_at = False, None

        def resumed(old: ThreadRecord, new: ThreadRecord) -> HistoryEntry:
            requested = target.value if target is not None else None
            cleared = f"cleared: {old.last_error}" if old.last_error else None
            return self._entry(
                HistoryKind.RESUME, old, new, now, requested=requested, by=by, note=cleared
            )

        self._commit(
            resume, activity=ThreadState.Idle, after=self._forget_pause_request, note=resumed
        )
        log.info("thread #%d: resumed%s", self.index, f" at {target}" if target else "")

    def _resume_unusable(self, state_name: str | None, by: Caller | None) -> None:
        """Try the store again; `Aborted` sets an unusable record aside (a fresh start)."""
        with self._save_lock:
            record = self._reopen_store(set_aside=state_name == State.Aborted.value)
            with self._cond:
                self.record, self._unusable = record, None
                self._pause_requested = record.pause_requested and not record.paused
                self._activity = _Activity(
                    ThreadState.Paused if record.paused else ThreadState.Idle, self._mono()
                )
                self._changed()
                self._cond.notify_all()
        log.info("thread #%d: store usable again", self.index)
        if record.paused:
            self.resume(state_name, by)

    def _reopen_store(self, set_aside: bool) -> ThreadRecord:
        """The store's record, now that someone may have fixed it; StoreUnusable if not."""
        try:
            self.store.prepare()
            if self.strict_modes:  # as the daemon checks each store before it first opens it
                check_folder(self.store.location, "store")
            self.store.lock()
        except LockHeld as exc:
            raise StoreUnusable(f"worker #{self.index}: store in use: {exc}") from None
        except InsecurePath as exc:
            raise StoreUnusable(
                f"worker #{self.index}: {exc} (or set [worker] strict_modes = false);"
                " fix it and resume again"
            ) from None
        except OSError as exc:
            raise StoreUnusable(
                f"worker #{self.index}: {_os_problem(exc)}; fix it and resume again"
            ) from None
        try:
            return self.store.load()
        except StoreError as exc:
            if not set_aside:
                raise StoreUnusable(
                    f"worker #{self.index}: {exc}; fix it and resume again, or resume with "
                    "state Aborted to set the record aside and start afresh"
                ) from None
        try:
            aside = self.store.set_aside()
        except OSError as exc:
            raise StoreUnusable(f"worker #{self.index}: {_os_problem(exc)}") from None
        log.warning("thread #%d: unusable record set aside as %s", self.index, aside)
        return ThreadRecord()

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

    def save_witness(self) -> None:
        """Rewrite the record as it is: it then carries the counter's numbers (an upgrade)."""
        self._commit(lambda record: None)

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
        """Rebuild the cached view from the record if it changed (lock held)."""
        if self._view_version != self._version:
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
            "last_error": self._write_error or self.record.last_error,
            "pause_requested": self.record.pause_requested,
            "auto_resumes": sum(task.auto_resumes.values()) if task else 0,
        }


def _os_problem(exc: OSError) -> str:
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}"
