"""The sealing thread's logic, stepped by hand with a fake clock: no sleeping."""

from __future__ import annotations

import errno
import json
import re
from pathlib import Path

import pytest
from agent_helpers import FakeClock

from worker_agent.config import AutoResume, SealingConfig, ThreadConfig
from worker_agent.processors import Done, Failed, Interrupted
from worker_agent.states import Event, Level, State
from worker_agent.store import SectorCounter, TaskStore
from worker_agent.thread import (
    IllegalTransition,
    InvalidState,
    NoTask,
    NotPaused,
    RecordNotSaved,
    SealingThread,
    change_state,
)


class ScriptedProcessor:
    """Returns queued outcomes per stage (Done when none); can run a hook mid-stage."""

    name = "scripted"

    def __init__(self):
        self.outcomes: dict[str, list] = {}
        self.hooks: dict[str, object] = {}
        self.ran: list[str] = []

    def fail(self, stage: str, *outcomes) -> None:
        self.outcomes.setdefault(stage, []).extend(outcomes)

    def run(self, ctx):
        self.ran.append(ctx.stage)
        hook = self.hooks.pop(ctx.stage, None)
        if hook:
            hook(ctx)
        queue = self.outcomes.get(ctx.stage)
        if queue:
            return queue.pop(0)
        (ctx.data_dir / f"{ctx.sector_id}.{ctx.stage}").write_text("x")
        return Done()


@pytest.fixture
def world(tmp_path):
    clock = FakeClock()
    processor = ScriptedProcessor()
    counter = SectorCounter(tmp_path / "state")
    (tmp_path / "state").mkdir()

    def make(plan="sealer", max_retries=2, recover=60.0, seal=30.0, auto_resume=()):
        sealing = SealingConfig(10000, max_retries, recover, seal, tuple(auto_resume))
        config = ThreadConfig(0, tmp_path / "store", plan, sealing)
        store = TaskStore(config.location)
        store.prepare()
        return SealingThread(config, store, counter, processor, clock)

    return clock, processor, counter, make


def step_until(thread: SealingThread, predicate, limit: int = 100) -> None:
    for _ in range(limit):
        if predicate(thread):
            return
        thread.step()
    raise AssertionError(f"not reached after {limit} steps: {thread.info()}")


def state_of(thread: SealingThread) -> str:
    return thread.info()["job_state"]


def test_runs_a_sector_from_allocation_to_finished_then_starts_the_next(world):
    clock, processor, counter, make = world
    thread = make()
    thread.step()
    assert thread.info()["job_id"] == "s-t010000-1" and state_of(thread) == "Allocated"
    step_until(thread, lambda t: t.record.task is None)
    assert processor.ran[0] == "AcquireDeals" and processor.ran[-1] == "WaitProofLanded"
    assert list(thread.store.data_dir.iterdir()) == []  # finished: data cleaned
    waited_before = list(clock.waits)
    thread.step()  # waits seal_interval, then allocates the next sector
    assert clock.waits[len(waited_before) :] == [30.0]
    assert thread.info()["job_id"] == "s-t010000-2"
    assert counter.last(10000) == 2


def test_temporary_errors_retry_with_recover_interval_then_become_permanent(world):
    clock, processor, _, make = world
    thread = make(max_retries=2, recover=60.0)
    step_until(thread, lambda t: state_of(t) == "TicketAssigned")
    processor.fail("PC1", *[Failed(Level.TEMPORARY, "disk busy")] * 3)
    clock.waits.clear()
    thread.step()
    thread.step()
    assert thread.record.task.retry == 2 and clock.waits == [60.0, 60.0]
    thread.step()  # third failure: retries exhausted
    info = thread.info()
    assert info["thread_state"]["state"] == "Paused"
    assert info["last_error"] == "permanent: disk busy (still failing after 2 retries)"
    assert info["job_state"] == "TicketAssigned" and thread.record.task.retry == 0


def test_temporary_error_then_success_moves_on(world):
    clock, processor, _, make = world
    thread = make()
    step_until(thread, lambda t: state_of(t) == "TicketAssigned")
    processor.fail("PC1", Failed(Level.TEMPORARY, "flaky"))
    thread.step()
    thread.step()
    assert state_of(thread) == "PC1Done" and not thread.record.paused


@pytest.mark.parametrize("level", [Level.PERMANENT, Level.CRITICAL])
def test_permanent_and_critical_errors_pause_with_prefixed_last_error(world, level):
    _, processor, _, make = world
    thread = make()
    processor.fail("C2", Failed(level, "No cached parameters found"))
    step_until(thread, lambda t: t.record.paused)
    info = thread.info()
    assert info["job_state"] == "C1Done" and info["job_stage"] == "C2"
    assert info["last_error"] == f"{level.value}: No cached parameters found"
    thread.step()  # paused: a step does nothing
    assert state_of(thread) == "C1Done"


def test_abort_clears_data_and_starts_a_new_task(world):
    clock, processor, _, make = world
    thread = make()
    processor.fail("PC2", Failed(Level.ABORT, "ticket expired"))
    step_until(thread, lambda t: state_of(t) == "PC1Done")
    assert any(thread.store.data_dir.iterdir())
    thread.step()
    assert thread.record.task is None and not thread.record.paused
    assert list(thread.store.data_dir.iterdir()) == []
    thread.step()
    assert thread.info()["job_id"] == "s-t010000-2"  # never reuses number 1


def test_pause_during_a_stage_keeps_that_stages_result(world):
    _, processor, _, make = world
    thread = make()
    step_until(thread, lambda t: state_of(t) == "TicketAssigned")
    processor.hooks["PC1"] = lambda ctx: thread.request_pause()
    thread.step()  # PC1 completes although a pause arrived while it ran
    assert state_of(thread) == "PC1Done"
    assert thread.store.load().task.state is State.PC1Done  # persisted, not thrown away
    thread.step()  # the boundary: now it pauses
    assert thread.info()["thread_state"]["state"] == "Paused"
    assert thread.info()["last_error"] is None  # paused by hand: no error
    assert processor.ran.count("PC1") == 1


def test_pause_interrupts_a_retry_back_off_at_once(world):
    clock, processor, _, make = world
    thread = make(recover=3600.0)
    step_until(thread, lambda t: state_of(t) == "TicketAssigned")
    processor.fail("PC1", Failed(Level.TEMPORARY, "busy"))
    clock.on_wait = thread.request_pause  # the pause arrives during the one-hour back-off
    before = clock.monotonic()
    thread.step()
    assert clock.monotonic() == before  # the back-off ended at once
    thread.step()
    assert thread.record.paused and state_of(thread) == "TicketAssigned"


def test_pause_interrupts_the_wait_between_tasks(world):
    clock, _, _, make = world
    thread = make(seal=3600.0)
    thread._next_task_at = clock.monotonic() + 3600.0
    clock.on_wait = thread.request_pause
    thread.step()
    thread.step()
    assert thread.record.paused and thread.record.task is None and clock.waits == []


def test_chain_wait_is_cut_short_by_pause(world):
    clock, processor, _, make = world
    thread = make()
    step_until(thread, lambda t: state_of(t) == "PersistanceSubmitted")

    def wait_for_seed(ctx):
        thread.request_pause()
        processor.fail("WaitSeed", Interrupted() if ctx.wait(600) else Done())

    processor.hooks["WaitSeed"] = wait_for_seed
    clock.waits.clear()
    thread.step()
    thread.step()
    assert clock.waits == []  # the 600 s wait never started counting
    assert thread.record.paused and state_of(thread) == "PersistanceSubmitted"


def test_a_pause_asked_for_mid_stage_survives_a_crash_before_the_boundary(world):
    _, processor, _, make = world
    thread = make()
    step_until(thread, lambda t: state_of(t) == "TicketAssigned")
    restarted = []

    def crash_mid_stage(ctx):
        thread.request_pause()
        assert thread.store.load().pause_requested  # on disk before request_pause returns
        restarted.append(make())  # the daemon dies here and starts again

    processor.hooks["PC1"] = crash_mid_stage
    thread.step()
    again = restarted[0]
    again.step()  # first boundary after the restart: the saved request pauses it
    assert again.info()["thread_state"]["state"] == "Paused"
    assert again.info()["last_error"] is None
    assert state_of(again) == "TicketAssigned"  # the lost PC1 run reruns on resume
    record = again.store.load()
    assert record.paused and not record.pause_requested
    assert processor.ran.count("PC1") == 1


def test_a_pause_pending_at_shutdown_is_saved_at_the_boundary(world):
    _, processor, _, make = world
    thread = make()
    step_until(thread, lambda t: state_of(t) == "TicketAssigned")

    def pause_then_stop(ctx):
        thread.request_pause()
        thread.request_stop()  # SIGTERM while the stage runs (a drain, then a service stop)

    processor.hooks["PC1"] = pause_then_stop
    thread.step()
    thread.step()  # the boundary, while stopping
    record = thread.store.load()
    assert record.task.state is State.PC1Done and record.paused
    assert make().info()["thread_state"]["state"] == "Paused"


def test_pausing_twice_changes_nothing_and_resume_clears_error(world):
    _, processor, _, make = world
    thread = make()
    processor.fail("C2", Failed(Level.PERMANENT, "boom"))
    step_until(thread, lambda t: t.record.paused)
    paused_at = thread.record.paused_at
    thread.request_pause()
    thread.step()
    assert thread.record.paused_at == paused_at and thread.info()["last_error"] == "permanent: boom"
    thread.resume()
    assert not thread.record.paused and thread.info()["last_error"] is None
    thread.step()
    assert state_of(thread) == "C2Done"  # retried C2 from C1Done, no stale pause token


def test_list_shows_only_saved_changes(world):
    # WorkerList must never show a pause (or a state) that a crash could still undo.
    _, processor, _, make = world
    thread = make()
    step_until(thread, lambda t: state_of(t) == "C1Done")
    processor.fail("C2", Failed(Level.PERMANENT, "boom"))
    seen_while_saving = []
    save = thread.store.save

    def save_and_look(data):
        seen_while_saving.append((thread.info(), json.loads(thread.info_json())))
        save(data)

    thread.store.save = save_and_look
    thread.step()  # C2 fails: the thread pauses
    for info in seen_while_saving[0]:
        assert info["thread_state"]["state"] != "Paused" and info["last_error"] is None
        assert info["job_state"] == "C1Done"
    assert thread.info()["thread_state"]["state"] == "Paused"
    assert thread.info()["last_error"] == "permanent: boom"
    seen_while_saving.clear()
    thread.resume("C2Done")
    for info in seen_while_saving[0]:
        assert info["thread_state"]["state"] == "Paused" and info["job_state"] == "C1Done"
        assert info["last_error"] == "permanent: boom"
    info = thread.info()
    assert (info["thread_state"]["state"], info["job_state"], info["last_error"]) == (
        "Idle",
        "C2Done",
        None,
    )


def test_resume_of_a_running_thread_is_refused(world):
    _, _, _, make = world
    thread = make()
    thread.step()
    with pytest.raises(NotPaused, match="worker #0 is not paused"):
        thread.resume()


def test_resume_state_is_checked_against_the_plan(world):
    _, processor, _, make = world
    thread = make(plan="unseal")
    processor.fail("Unseal", Failed(Level.PERMANENT, "no piece"))
    step_until(thread, lambda t: t.record.paused)
    with pytest.raises(InvalidState) as caught:
        thread.resume("PC1Done")
    assert str(caught.value) == (
        'invalid state "PC1Done" for plan unseal; valid states: '
        "Empty, Allocated, Finished, Aborted, Unsealed"
    )
    assert thread.record.paused  # refused: still paused


def test_resume_to_a_state_bypasses_the_table(world):
    _, processor, _, make = world
    thread = make()
    processor.fail("C2", Failed(Level.PERMANENT, "boom"))
    step_until(thread, lambda t: t.record.paused)
    thread.resume("TreeDBuilt")  # not reachable by any event from C1Done
    task = thread.store.load().task
    assert (task.state, task.prev_state) == (State.TreeDBuilt, State.C1Done)
    thread.step()
    assert state_of(thread) == "TicketAssigned"


def test_resume_to_aborted_drops_the_task(world):
    _, processor, counter, make = world
    thread = make()
    processor.fail("PC2", Failed(Level.PERMANENT, "bad"))
    step_until(thread, lambda t: t.record.paused)
    thread.resume("Aborted")
    thread.step()
    assert thread.record.task is None and list(thread.store.data_dir.iterdir()) == []
    thread.step()
    assert thread.info()["job_id"] == "s-t010000-2"


def test_resume_with_state_needs_a_task(world):
    _, _, _, make = world
    thread = make()
    thread.request_pause()
    thread.step()
    assert thread.record.paused and thread.record.task is None
    with pytest.raises(NoTask):
        thread.resume("PC1Done")
    thread.resume("Empty")
    assert not thread.record.paused


def test_a_restarted_thread_continues_where_it_was_and_stays_paused(world):
    clock, processor, counter, make = world
    thread = make()
    step_until(thread, lambda t: state_of(t) == "SeedAssigned")
    thread.request_pause()
    thread.step()
    again = make()  # same location: as after a daemon restart
    assert again.record.paused and state_of(again) == "SeedAssigned"
    assert again.info()["thread_state"]["state"] == "Paused"
    again.step()
    assert state_of(again) == "SeedAssigned"
    again.resume()
    again.step()
    assert state_of(again) == "C1Done"


def test_change_state_refuses_moves_off_the_table(world):
    _, _, _, make = world
    thread = make()
    thread.step()
    task = thread.record.task
    with pytest.raises(IllegalTransition, match="unexpected event C2 for state Allocated"):
        change_state(task, State.C2Done, Event.C2, 0.0)
    with pytest.raises(IllegalTransition, match="not part of plan sealer"):
        change_state(task, State.SnapEncoded, None, 0.0)
    assert task.state is State.Allocated


def test_an_unknown_event_from_a_stage_pauses_critically(world):
    _, processor, _, make = world
    thread = make()
    processor.fail("AcquireDeals", Done(Event.C2))
    thread.step()
    thread.step()
    assert thread.info()["last_error"] == "critical: unexpected event C2 for state Allocated"


def test_info_reports_times_from_the_clock(world):
    clock, processor, _, make = world
    thread = make()
    processor.fail("C2", Failed(Level.PERMANENT, "boom"))
    step_until(thread, lambda t: t.record.paused)
    clock.advance(17.4)
    info = thread.info()
    assert info["thread_state"] == {"state": "Paused", "elapsed": 17, "proc": None}
    assert info["state_elapsed"] == 17 and info["plan"] == "sealer"


def test_counter_survives_and_is_raised_above_numbers_in_records(tmp_path: Path):
    counter = SectorCounter(tmp_path)
    assert [counter.next(10000), counter.next(10000), counter.next(20000)] == [1, 2, 1]
    reloaded = SectorCounter(tmp_path)
    reloaded.load()
    assert reloaded.next(10000) == 3
    reloaded.ensure_above(10000, 41)
    assert reloaded.next(10000) == 42


def test_info_json_is_cached_until_something_in_it_changes(world):
    clock, processor, _, make = world
    thread = make()
    thread.step()
    first = thread.info_json()
    assert json.loads(first) == thread.info()
    assert thread.info_json() is first  # nothing changed: the same encoded text
    clock.advance(1.0)  # state_elapsed moved on
    second = thread.info_json()
    assert second is not first and json.loads(second)["state_elapsed"] == 1
    thread.step()
    assert json.loads(thread.info_json())["job_state"] == "DealsAcquired"


# ---------------------------------------------------------------- issue 12: disk errors


def _full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_change_the_disk_refuses_does_not_happen(world):
    _, processor, _, make = world
    thread = make()
    processor.fail("C2", Failed(Level.PERMANENT, "boom"))
    step_until(thread, lambda t: t.record.paused)
    shown = thread.info()
    thread.store.save = _full_disk
    with pytest.raises(RecordNotSaved, match="task.json: No space left on device"):
        thread.resume("C2Done")
    assert thread.info() == shown and thread.record.paused
    assert thread.record.task.state is State.C1Done
    other = make()  # a fresh start reads what the disk has: the same
    assert other.info()["last_error"] == shown["last_error"]


def test_a_pause_the_disk_refuses_is_not_taken_either(world):
    _, processor, _, make = world
    thread = make()
    step_until(thread, lambda t: state_of(t) == "TicketAssigned")
    save = thread.store.save
    thread.store.save = _full_disk
    with pytest.raises(RecordNotSaved):
        thread.request_pause()
    thread.store.save = save
    thread.step()
    thread.step()
    assert not thread.record.paused and state_of(thread) == "PC2Done"


def test_the_threads_own_write_is_retried_until_the_disk_takes_it(world):
    clock, processor, _, make = world
    thread = make()
    step_until(thread, lambda t: state_of(t) == "TicketAssigned")
    save, calls, seen = thread.store.save, [], []

    def flaky(data):
        calls.append(data)
        if len(calls) <= 2:
            seen.append(thread.info())
            raise OSError(errno.EIO, "Input/output error")
        save(data)

    thread.store.save = flaky
    clock.waits.clear()
    thread.step()  # PC1 done; its result is saved on the third try
    assert clock.waits == [5.0, 5.0] and len(calls) == 3
    assert seen[1]["thread_state"]["state"] == "Waiting"
    assert seen[1]["job_state"] == "TicketAssigned"  # still what the disk had
    assert seen[1]["last_error"] == (
        f"critical: cannot save {thread.store.path}: Input/output error (retrying every 5s)"
    )
    assert state_of(thread) == "PC1Done" and thread.info()["last_error"] is None


# ---------------------------------------------------------------- issue 12: auto-resume


def _rule(match: str, after: float, limit: int) -> AutoResume:
    return AutoResume(match, re.compile(match), after, limit)


def test_a_matching_error_pause_resumes_after_the_delay_at_most_max_times(world):
    clock, processor, _, make = world
    thread = make(auto_resume=[_rule("gpu", 600.0, 2)])
    processor.fail("C2", *[Failed(Level.PERMANENT, "gpu busy")] * 3)
    step_until(thread, lambda t: t.record.paused)
    assert thread.record.auto_resume_at == clock.now() + 600
    clock.advance(599)
    thread.step()
    assert thread.record.paused  # not yet
    clock.advance(1)
    thread.step()
    assert not thread.record.paused and thread.info()["auto_resumes"] == 1
    thread.step()  # C2 fails again
    assert thread.record.paused and thread.record.auto_resume_at is not None
    restarted = make(auto_resume=[_rule("gpu", 600.0, 2)])  # the count and the time persist
    clock.advance(600)
    restarted.step()
    assert not restarted.record.paused and restarted.info()["auto_resumes"] == 2
    restarted.step()  # third failure: max reached
    assert restarted.record.paused and restarted.record.auto_resume_at is None
    assert restarted.store.load().task.auto_resumes == {"gpu": 2}


def test_an_operators_pause_is_never_auto_resumed(world):
    clock, processor, _, make = world
    thread = make(auto_resume=[_rule(".", 60.0, 5)])
    step_until(thread, lambda t: state_of(t) == "C1Done")
    processor.hooks["C2"] = lambda ctx: thread.request_pause()  # asked while C2 runs ...
    processor.fail("C2", Failed(Level.PERMANENT, "gpu busy"))  # ... which then fails
    thread.step()
    assert thread.record.paused and thread.record.auto_resume_at is None
    thread.resume()
    processor.fail("C2", Failed(Level.PERMANENT, "gpu busy"))
    thread.step()
    assert thread.record.auto_resume_at is not None
    thread.request_pause()  # pausing an error-paused thread makes it the operator's pause
    assert thread.record.paused and thread.record.auto_resume_at is None
    clock.advance(3600)
    thread.step()
    assert thread.record.paused and thread.info()["auto_resumes"] == 0


# -- cancel a queued pause (issue 10: WorkerCancelPause) ----------------------------------------


def test_a_queued_pause_cancelled_mid_stage_is_never_taken(world):
    _, processor, _, make = world
    thread = make()
    step_until(thread, lambda t: state_of(t) == "TicketAssigned")
    cancelled = []

    def pause_then_cancel(ctx):
        thread.request_pause()
        assert thread.info()["pause_requested"]
        cancelled.append(thread.cancel_pause())
        assert not thread.store.load().pause_requested  # the cancel is saved at once

    processor.hooks["PC1"] = pause_then_cancel
    thread.step()
    assert cancelled == [True]
    thread.step()  # the boundary: nothing queued any more, the thread goes on
    assert not thread.record.paused and state_of(thread) == "PC2Done"
    assert thread.info()["pause_requested"] is False
    assert make().info()["thread_state"]["state"] != "Paused"  # nor after a restart


def test_cancel_never_resumes_a_thread_that_took_its_pause_or_an_error(world):
    _, processor, _, make = world
    thread = make()
    step_until(thread, lambda t: state_of(t) == "TicketAssigned")
    processor.hooks["PC1"] = lambda ctx: thread.request_pause()
    thread.step()
    thread.step()  # took the pause at the boundary
    assert thread.record.paused
    assert thread.cancel_pause() is False and thread.record.paused
    thread.resume()
    processor.fail("PC2", Failed(Level.PERMANENT, "boom"))
    thread.step()
    assert thread.record.paused and thread.cancel_pause() is False
    assert thread.info()["last_error"] == "permanent: boom"  # the error stays for an operator
    assert thread.cancel_pause() is False  # nothing queued: nothing changes


def test_a_cancel_that_comes_after_the_boundary_decided_changes_nothing(world):
    # The thread decided to pause (under the state lock) before the cancel: it stays paused,
    # and the cancel says False. And the other way round: cancel first, no pause.
    _, processor, _, make = world
    thread = make()
    step_until(thread, lambda t: state_of(t) == "TicketAssigned")
    thread.request_pause()
    thread.step()
    assert thread.record.paused and thread.cancel_pause() is False
    thread.resume()
    thread.request_pause()
    assert thread.cancel_pause() is True
    thread.step()
    assert not thread.record.paused


def test_a_cancel_between_the_boundary_check_and_its_write_wins(world):
    # The thread saw the request, then the cancel is committed before the thread's own
    # write of the pause: the pause is not taken, so the cancel's True is the truth.
    _, _, _, make = world
    thread = make()
    step_until(thread, lambda t: state_of(t) == "TicketAssigned")
    thread.request_pause()
    answers = []
    pause = thread._pause

    def cancel_first(*args, **kwargs):
        answers.append(thread.cancel_pause())
        return pause(*args, **kwargs)

    thread._pause = cancel_first
    thread.step()
    assert answers == [True] and not thread.record.paused
    assert not thread.store.load().paused
