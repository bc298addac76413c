"""Crash safety: SIGKILL the daemon many times while fast mock threads run.

After every kill the records are read straight from disk and compared with
the previous snapshot: every record parses, a task only moved along its
plan's table (or was aborted/finished and replaced), no sector number shows
up twice, the counter is ahead of every number in use, and paused threads
are still paused — both on disk and in the restarted daemon's WorkerList.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from agent_helpers import Agent, short_tmp, write_config
from agent_soak import MOCK_FAULTS, soak

from worker_agent.states import State, plan_named
from worker_agent.store import ThreadRecord

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

KILLS = int(os.environ.get("AGENT_CRASH_KILLS", "50"))
PLANS = ["sealer", "sealer", "snapup", "rebuild"]
FAULTS = MOCK_FAULTS  # temporary, abort and permanent faults


@dataclass
class Seen:
    record: ThreadRecord
    plan: str


def read_records(folder: Path) -> list[ThreadRecord]:
    records = []
    for index in range(len(PLANS)):
        path = folder / f"store{index}/meta/task.json"
        if not path.exists():
            records.append(ThreadRecord())
            continue
        data = json.loads(path.read_text())  # a torn file fails right here
        records.append(ThreadRecord.from_json(data))
    return records


def counter_value(folder: Path) -> int:
    path = folder / "state/sector-counter.json"
    return json.loads(path.read_text())["last"].get("10000", 0) if path.exists() else 0


def check_move(index: int, old: ThreadRecord, new: ThreadRecord) -> None:
    if old.task is None or new.task is None or old.task.number != new.task.number:
        return
    plan = plan_named(old.task.plan)
    assert new.task.plan == old.task.plan
    allowed = plan.reachable_from(old.task.state) | {State.Aborted}
    assert new.task.state in allowed, (
        f"thread {index}: {old.task.sector_id} jumped {old.task.state} -> {new.task.state}"
    )


def test_sigkill_many_times_never_tears_or_rewinds_state():
    rng = random.Random(1234)
    with short_tmp() as folder:
        config = write_config(
            folder,
            threads=0,
            sealing='seal_interval = "0s"\nrecover_interval = "5ms"\nmax_retries = 2',
            mock='duration = "4ms"\nwait_duration = "4ms"',
            faults=FAULTS,
        )
        threads = "".join(
            f'[[sealing_thread]]\nlocation = "store{i}"\nplan = "{plan}"\n'
            for i, plan in enumerate(PLANS)
        )
        config.write_text(config.read_text().replace("[processors]", threads + "[processors]"))
        agent = Agent(config)
        owner: dict[int, int] = {}  # sector number -> thread index that used it
        retired: set[int] = set()  # numbers whose task ended: must never come back
        previous = [ThreadRecord() for _ in PLANS]
        previous_counter = 0
        paused_rounds = [0] * len(PLANS)
        sectors_seen, pauses_checked = 0, 0
        try:
            for round_number in range(KILLS):
                agent.start()
                infos = agent.infos()
                resumed = set()
                for index, record in enumerate(previous):
                    if record.paused:
                        info = infos[index]
                        assert info["thread_state"]["state"] == "Paused", (index, info)
                        assert info["job_id"] == (record.task.sector_id if record.task else None)
                        assert info["last_error"] == record.last_error
                        pauses_checked += 1
                        paused_rounds[index] += 1
                        if paused_rounds[index] >= 3:  # keep the threads busy: resume it
                            agent.call("WorkerResume", index, None)
                            resumed.add(index)
                            paused_rounds[index] = 0
                    for temp in (folder / f"store{index}/meta").glob("*.tmp-*"):
                        writer_pid = int(temp.name.split(".tmp-")[1].split("-")[0])
                        # the running daemon's own writes in flight are fine; a dead one's are not
                        assert writer_pid == agent.proc.pid, f"stale temp file: {temp}"
                if round_number % 5 == 2:
                    agent.call("WorkerPause", round_number % len(PLANS))
                time.sleep(rng.uniform(0.02, 0.15))
                agent.kill()

                current = read_records(folder)
                counter = counter_value(folder)
                for index, (old, new) in enumerate(zip(previous, current, strict=True)):
                    if old.paused and index not in resumed:
                        assert new.paused, f"thread {index} lost its pause"
                        assert new.task == old.task and new.last_error == old.last_error
                    check_move(index, old, new)
                    if old.task and (new.task is None or new.task.number != old.task.number):
                        retired.add(old.task.number)
                    if new.task is None or new.task.number is None:
                        continue
                    number = new.task.number
                    assert number not in retired, f"sector {number} came back on thread {index}"
                    assert owner.setdefault(number, index) == index, f"sector {number} used twice"
                    assert number <= counter, "a record uses a number the counter never gave"
                    if old.task is None or old.task.number != number:
                        assert number > previous_counter, f"sector {number} reused"
                        sectors_seen += 1
                previous, previous_counter = current, counter
        finally:
            agent.close()
        # The test is only worth something if the threads really moved and paused.
        assert sectors_seen >= 2 * len(PLANS), f"only {sectors_seen} new sectors seen"
        assert pauses_checked >= 5, f"only {pauses_checked} paused threads checked"


def test_a_short_crash_soak_of_both_processors_finds_nothing():
    # bench/crash_soak.py runs this with 200+ kills (BENCHMARKS.md); the same checks here.
    with short_tmp() as folder:
        figures = soak(folder, kills=int(os.environ.get("AGENT_SOAK_KILLS", "16")), threads=3,
                       rng=random.Random(12))  # fmt: skip
    assert figures.problems == []
    assert figures.torn == 0 and figures.duplicated == [] and figures.duplicate_stage_runs == 0
    assert figures.pauses_lost == figures.resumes_lost == 0
    assert figures.leaders_alive_after_kill == 0
    # worth something only if the daemons really sealed, paused and left helpers to kill
    assert len(figures.issued) >= 10 and figures.helpers_left_by_kills > 0
    assert figures.pauses_acked + figures.resumes_acked > 0
