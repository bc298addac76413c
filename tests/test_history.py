"""The history (worker_agent/history.py) on real files, and the thread's lines in it.

The files are real (tmp_path), the thread is stepped by hand with a fake clock
(as test_agent_thread.py does): every kind of line is checked against what
happened, torn and damaged lines are shown to cost nothing else, rotation to
keep at least the last 100 tasks within its size, and a failed write to be
counted and said. The stage statistics (api.stage_stats, merge_stage_stats)
are checked against figures computed by hand.
"""

from __future__ import annotations

import json
import os
import statistics

import pytest
from agent_helpers import FakeClock

from worker_agent import api
from worker_agent.config import AutoResume, ConfigError, SealingConfig, ThreadConfig, load_config
from worker_agent.history import HistoryFolder, HistoryLog, compute_stats, read_lines
from worker_agent.processors import Done, Failed
from worker_agent.states import Level, State
from worker_agent.store import RangeExhausted, SectorCounter, TaskStore
from worker_agent.thread import SealingThread

# ---------------------------------------------------------------- the file


def entry(sector: str, kind: str = "state", time: float = 1.0, **fields) -> api.HistoryEntry:
    return api.HistoryEntry(time=time, kind=kind, index=0, sector=sector, **fields)


def opened(tmp_path, **options) -> HistoryLog:
    log = HistoryLog(tmp_path, 0, tmp_path / "store0", **options)
    log.open()
    assert log.problem is None
    return log


def test_lines_are_json_with_a_header_and_read_back_exactly(tmp_path):
    log = opened(tmp_path)
    written = entry("s-t01000-1", from_state="Empty", to_state="Allocated", note="ünïcode\nline")
    assert log.append(written)
    lines = read_lines(log.path.read_bytes())
    assert json.loads(lines[0]) == {"history": 1, "location": str(tmp_path / "store0"), "index": 0}
    assert api.HistoryEntry.from_json(json.loads(lines[1])) == written
    assert log.entries() == ([written.to_json()], 1)
    assert oct(log.path.stat().st_mode & 0o777) == "0o640"


def test_a_torn_last_line_is_ignored_and_cut_off_before_the_next_append(tmp_path):
    log = opened(tmp_path)
    for number in range(3):
        log.append(entry(f"s-t01000-{number}"))
    log.close()
    with open(log.path, "ab") as file:
        file.write(b'{"time": 9, "kind": "state", "index": 0, "sec')  # a kill mid-write
    reader = HistoryLog(tmp_path, 0, tmp_path / "store0")
    reader.load()
    assert [e["sector"] for e in reader.entries()[0]] == [f"s-t01000-{n}" for n in range(3)]
    again = opened(tmp_path)
    assert again.torn == len(b'{"time": 9, "kind": "state", "index": 0, "sec')
    again.append(entry("s-t01000-3"))
    assert [e["sector"] for e in again.entries()[0]] == [f"s-t01000-{n}" for n in range(4)]
    assert all(json.loads(line) for line in read_lines(again.path.read_bytes()))


def test_a_damaged_line_costs_only_itself(tmp_path):
    log = opened(tmp_path)
    log.append(entry("s-t01000-1"))
    with open(log.path, "ab") as file:
        file.write(b"\x00\xffnot json at all\n")
    log.append(entry("s-t01000-2"))
    assert [e["sector"] for e in log.entries()[0]] == ["s-t01000-1", "s-t01000-2"]


def test_a_symlink_in_place_of_the_file_is_refused_never_followed(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("precious\n")
    folder = tmp_path / "history"
    folder.mkdir()
    log = HistoryLog(folder, 0, tmp_path / "store0")
    log.path.symlink_to(target)
    log.open()
    assert "symlink" in log.problem
    assert not log.append(entry("s-t01000-1"))
    assert target.read_text() == "precious\n"


def test_a_failed_write_is_cut_back_counted_and_said_by_the_next_line(tmp_path):
    log = opened(tmp_path)
    log.append(entry("s-t01000-1"))
    size = log.path.stat().st_size
    real, log._fd = log._fd, os.open("/dev/full", os.O_WRONLY)  # the disk is full
    try:
        assert not log.append(entry("s-t01000-2"))
        assert not log.append(entry("s-t01000-3"))
    finally:
        os.close(log._fd)
        log._fd = real
    assert log.path.stat().st_size == size
    assert log.append(entry("s-t01000-4"))
    found = log.entries()[0]
    assert [e["kind"] for e in found] == ["state", "lost", "state"]
    assert found[1]["note"].startswith("2 line(s) not written before this one (No space left")


def test_rotation_keeps_two_files_and_at_least_the_last_100_tasks(tmp_path):
    log = opened(tmp_path, rotate_bytes=4096)
    for number in range(1, 451):
        for kind in ("state", "state", "pause"):
            log.append(entry(f"s-t01000-{number}", kind, time=number))
    files = {path.name for path in tmp_path.iterdir()}
    assert files == {log.path.name, log.previous.name}  # the older ones are gone
    kept = {e["sector"] for e in log.entries()[0]}
    last_100 = {f"s-t01000-{n}" for n in range(351, 451)}
    assert last_100 <= kept and "s-t01000-1" not in kept
    # every kept task is whole: three lines each
    counts = [sum(1 for e in log.entries()[0] if e["sector"] == s) for s in last_100]
    assert set(counts) == {3}
    # bounded: both files together within twice the larger of the limit and 101 tasks
    task = len(read_lines(log.path.read_bytes())[1]) * 3
    total = log.path.stat().st_size + log.previous.stat().st_size
    assert total <= 2 * max(4096, 102 * task) + 4096
    # the in-memory view follows: the dropped tasks are not looked for any more
    assert not log.has_sector("s-t01000-1") and log.has_sector("s-t01000-450")


def test_the_folder_finds_a_sector_in_every_thread_and_in_old_stores(tmp_path):
    folder = HistoryFolder(tmp_path / "state")
    (tmp_path / "state").mkdir()
    folder.prepare()
    old = HistoryLog(folder.path, 5, tmp_path / "removed-store")
    old.open()
    old.append(entry("s-t01000-7", time=1.0))
    old.close()
    one = folder.open_log(0, tmp_path / "store0")
    one.append(entry("s-t01000-7", time=3.0))
    one.append(entry("s-t01000-8", time=4.0))
    two = folder.open_log(1, tmp_path / "store1")
    two.append(entry("s-t01000-7", time=2.0, kind="pause"))
    assert [e["time"] for e in folder.sector_entries("s-t01000-7")] == [1.0, 2.0, 3.0]
    assert folder.discover() == sorted(
        [(5, tmp_path / "removed-store"), (0, tmp_path / "store0"), (1, tmp_path / "store1")]
    )


def test_a_planted_symlink_in_place_of_the_folder_is_refused(tmp_path):
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "history").symlink_to(tmp_path)
    with pytest.raises(OSError, match="not a folder of its own"):
        HistoryFolder(tmp_path / "state").prepare()


# ---------------------------------------------------------------- statistics


def test_stage_stats_are_nearest_rank_and_merge_within_the_bucket_error():
    durations = [float(n) for n in range(1, 101)]
    errors = ["temporary: gpu busy"] * 3 + ["permanent: no params"]
    one = api.stage_stats("PC1", durations, errors)
    assert (one.tasks, one.failures, one.p50, one.p90, one.max) == (100, 4, 50.0, 90.0, 100.0)
    assert one.errors[0] == api.ErrorCount("temporary: gpu busy", 3)
    assert sum(count for _, count in one.buckets) == 100
    other = api.stage_stats("PC1", [d * 3 for d in durations], [])
    merged = api.merge_stage_stats([one, other])
    exact = sorted(durations + [d * 3 for d in durations])
    assert merged.tasks == 200 and merged.max == 300.0 and merged.failures == 4
    for fraction, value in ((0.5, merged.p50), (0.9, merged.p90)):
        truth = exact[max(1, -(-int(fraction * 200) // 1)) - 1]
        assert abs(value - truth) / truth < 0.023, (fraction, value, truth)
    assert api.merge_stage_stats([one]) is one  # one host: exact


def test_compute_stats_takes_the_window_and_the_plan(tmp_path):
    log = opened(tmp_path)

    def run(time, stage, duration, error=None, plan="sealer"):
        fields = {"outcome": "ok"} if error is None else {"outcome": "temporary", "error": error}
        kind = "state" if error is None else "retry"
        log.append(entry("s-t01000-1", kind, time, plan=plan, stage=stage, duration=duration,
                         **fields))  # fmt: skip

    run(10, "PC1", 5.0)
    run(20, "PC1", 7.0)
    run(30, "PC1", 9.0, "x")
    run(40, "C2", 1.0)
    run(50, "PC1", 100.0, plan="snapup")
    log.append(entry("s-t01000-1", "pause", 60))  # no stage run: not counted
    stats = {s.stage: s for s in compute_stats([log])}
    assert stats["PC1"].tasks == 3 and stats["PC1"].failures == 1
    assert stats["PC1"].errors == [api.ErrorCount("temporary: x", 1)]
    recent = {s.stage: s for s in compute_stats([log], since=15, plan="sealer")}
    assert (recent["PC1"].tasks, recent["PC1"].p50, recent["PC1"].max) == (1, 7.0, 7.0)
    assert recent["C2"].tasks == 1
    # read back from the files alone, the same figures
    reader = HistoryLog(tmp_path, 0, tmp_path / "store0")
    reader.load()
    assert compute_stats([reader]) == compute_stats([log])
    seen = []
    HistoryLog(tmp_path, 0, tmp_path / "store0").load(lambda *run: seen.append(run))
    assert seen == []  # these lines have no in_state: nothing for the histogram


@pytest.mark.parametrize(
    ("text", "sector"),
    [
        ("s-t01000-2", "s-t01000-2"),
        ("t01000-2", "s-t01000-2"),
        ("f01000-2", "s-t01000-2"),
        (" 1000:2 ", "s-t01000-2"),
        ("s-t010000-17", "s-t010000-17"),
    ],
)
def test_sector_id_forms(text, sector):
    assert api.parse_sector_id(text) == sector


@pytest.mark.parametrize("text", ["", "1000", "t1000-2", "s-t01000", "1000:2:3", "x-t01000-2"])
def test_bad_sector_ids_are_refused_with_examples(text):
    with pytest.raises(ValueError, match="examples: s-t01000-2, t01000-2, 1000:2"):
        api.parse_sector_id(text)


# ---------------------------------------------------------------- the thread's lines


class Scripted:
    """Done for every stage unless an outcome is queued for it; each run takes 7 s."""

    name = "scripted"

    def __init__(self, clock: FakeClock):
        self.clock = clock
        self.outcomes: dict[str, list] = {}

    def run(self, ctx):
        self.clock.advance(7.0)
        queue = self.outcomes.get(ctx.stage)
        return queue.pop(0) if queue else Done()


@pytest.fixture
def world(tmp_path):
    clock = FakeClock()
    processor = Scripted(clock)
    (tmp_path / "state").mkdir()
    counter = SectorCounter(tmp_path / "state")
    folder = HistoryFolder(tmp_path / "state")
    folder.prepare()

    def make(auto_resume=(), numbers=None, max_retries=2):
        sealing = SealingConfig(1000, max_retries, 60.0, 30.0, tuple(auto_resume), numbers)
        config = ThreadConfig(0, tmp_path / "store", "sealer", sealing)
        store = TaskStore(config.location)
        store.prepare()
        log = folder.open_log(0, config.location)
        return SealingThread(config, store, counter, processor, clock, history=log)

    return clock, processor, make


def kinds(thread: SealingThread) -> list[str]:
    return [e["kind"] for e in thread.history.entries()[0]]


def step_until(thread, predicate, limit=200):
    for _ in range(limit):
        if predicate(thread):
            return
        thread.step()
    raise AssertionError(thread.info())


def test_a_task_writes_a_line_per_state_change_with_stage_run_time_and_outcome(world):
    clock, processor, make = world
    processor.outcomes["PC2"] = [Failed(Level.TEMPORARY, "gpu busy")]
    thread = make()
    step_until(thread, lambda t: t.info()["job_state"] == "PC2Done")
    found = thread.history.entries()[0]
    assert found[0] | {"time": 0} == {
        "time": 0,
        "kind": "state",
        "index": 0,
        "sector": "s-t01000-1",
        "plan": "sealer",
        "from": "Empty",
        "to": "Allocated",
        "outcome": "ok",
        "note": "new task",
    }
    pc1 = next(e for e in found if e.get("stage") == "PC1")
    assert (pc1["from"], pc1["to"], pc1["duration"], pc1["outcome"]) == (
        "TicketAssigned",
        "PC1Done",
        7.0,
        "ok",
    )
    retry = next(e for e in found if e["kind"] == "retry")
    assert retry["stage"] == "PC2" and retry["error"] == "gpu busy" and retry["retry"] == 1
    assert retry["outcome"] == "temporary" and retry["note"] == "retry 1 of 2"
    pc2 = [e for e in found if e.get("stage") == "PC2" and e["kind"] == "state"][0]
    assert pc2["duration"] == 7.0 and pc2["in_state"] > 60  # the retry and its back-off
    samples = {(s.stage, s.error) for s in thread.history.samples()}
    assert ("PC2", "temporary: gpu busy") in samples and ("PC1", None) in samples


def test_pauses_resumes_and_aborts_say_who_asked_and_what_moved(world):
    clock, processor, make = world
    processor.outcomes["C2"] = [Failed(Level.PERMANENT, "no params")]
    thread = make()
    step_until(thread, lambda t: t.info()["thread_state"]["state"] == "Paused")
    alice = api.Caller(uid=1000, pid=42, actor="alice@ctl")
    thread.resume("PC1Done", by=alice)
    thread.request_pause(by=alice)
    thread.step()  # the boundary: the pause as asked
    thread.resume("Aborted", by=api.Caller(uid=0, pid=7))
    found = thread.history.entries()[0]
    pause, resume = found[-5], found[-4]
    assert (pause["kind"], pause["stage"], pause["outcome"], pause["error"]) == (
        "pause",
        "C2",
        "permanent",
        "no params",
    )
    assert resume["kind"] == "resume" and resume["requested"] == "PC1Done"
    assert (resume["from"], resume["to"]) == ("C1Done", "PC1Done")
    assert resume["by"] == {"uid": 1000, "pid": 42, "actor": "alice@ctl"}
    assert resume["note"] == "cleared: permanent: no params"
    assert [e["kind"] for e in found[-3:]] == ["pause_request", "pause", "resume"]
    assert found[-2]["by"]["actor"] == "alice@ctl"  # the pause taken is alice's
    assert found[-1]["to"] == "Aborted" and found[-1]["by"] == {"uid": 0, "pid": 7}


def test_an_abort_error_and_an_auto_resume_are_lines_of_their_own(world):
    clock, processor, make = world
    processor.outcomes["AddPieces"] = [Failed(Level.ABORT, "ticket expired")]
    processor.outcomes["PC1"] = [Failed(Level.PERMANENT, "gpu lost")]
    rule = AutoResume("gpu", __import__("re").compile("gpu"), 5.0, 1)
    thread = make(auto_resume=[rule])
    step_until(thread, lambda t: "abort" in kinds(t))
    abort = next(e for e in thread.history.entries()[0] if e["kind"] == "abort")
    assert (abort["from"], abort["to"], abort["stage"], abort["error"]) == (
        "DealsAcquired",
        "Aborted",
        "AddPieces",
        "ticket expired",
    )
    step_until(thread, lambda t: t.info()["thread_state"]["state"] == "Paused")
    clock.advance(6.0)  # the rule's `after`
    thread.step()
    auto = next(e for e in thread.history.entries()[0] if e["kind"] == "auto_resume")
    assert auto["error"] == "gpu lost" and auto["note"] == "rule 'gpu', 1 of 1 for this task"
    paused = [e for e in thread.history.entries()[0] if e["kind"] == "pause"][-1]
    assert paused["note"] == "auto-resume in 5s"


def test_a_record_ahead_of_its_history_gets_a_recovered_line_at_start(world, tmp_path):
    clock, processor, make = world
    thread = make()
    step_until(thread, lambda t: t.info()["job_state"] == "PC1Done")
    thread.history.close()
    # The last line is lost (a crash between the record's write and the history's).
    lines = thread.history.path.read_bytes().splitlines(keepends=True)
    thread.history.path.write_bytes(b"".join(lines[:-1]))
    again = make()
    last = again.history.entries()[0][-1]
    assert (last["kind"], last["from"], last["to"]) == ("recovered", "TicketAssigned", "PC1Done")
    assert make().history.entries()[0][-1] == last  # in step again: nothing more written


def test_the_range_holds_the_counter_and_a_used_up_one_starts_no_task(world, tmp_path):
    clock, processor, make = world
    counter = SectorCounter(tmp_path / "state")
    assert counter.next(1000, (50, 51)) == 50  # from the range's start
    assert counter.next(1000, (50, 51)) == 51
    with pytest.raises(RangeExhausted, match="range 50-51 of miner 1000 is used up"):
        counter.next(1000, (50, 51))
    assert counter.last(1000) == 51  # nothing handed out past it


def test_sector_numbers_in_the_config(tmp_path):
    def config(sealing: str, thread: str = "") -> object:
        path = tmp_path / "w.toml"
        path.write_text(
            f'[sealing]\n{sealing}\n[[sealing_thread]]\nlocation = "a"\n'
            f'[[sealing_thread]]\nlocation = "b"\n{thread}\n'
        )
        return load_config(path)

    assert config('sector_numbers = "1000-1999"').sector_ranges() == {10000: (1000, 1999)}
    table = config("sector_numbers = { start = 5, count = 10 }")
    assert table.sector_ranges() == {10000: (5, 14)}
    assert config("").sector_ranges() == {}
    with pytest.raises(ConfigError, match=r"sector_numbers: '9-1x': expected \"START-END\""):
        config('sector_numbers = "9-1x"')
    with pytest.raises(ConfigError, match="must start at 1 or more and not end before it"):
        config('sector_numbers = "20-10"')
    with pytest.raises(ConfigError, match="share one sector counter, so one range"):
        config('sector_numbers = "1-9"', 'sealing.sector_numbers = "10-19"')
    # a thread of another miner may have its own range
    other = config('sector_numbers = "1-9"', 'sealing.miner = 2\nsealing.sector_numbers = "1-9"')
    assert other.sector_ranges() == {10000: (1, 9), 2: (1, 9)}


def test_history_settings_in_the_config(tmp_path):
    path = tmp_path / "w.toml"
    path.write_text('[worker]\nhistory_size = "64KiB"\n[[sealing_thread]]\nlocation = "a"\n')
    assert load_config(path).history_size == 64 * 1024 and load_config(path).history
    path.write_text('[worker]\nhistory_size = "1 parsec"\n[[sealing_thread]]\nlocation = "a"\n')
    with pytest.raises(ConfigError, match='history_size: expected a size such as "1MiB"'):
        load_config(path)


def test_stage_durations_of_the_history_match_the_runs(world):
    clock, processor, make = world
    thread = make()
    step_until(thread, lambda t: t.info()["job_state"] == "C2Done")
    stats = {s.stage: s for s in compute_stats([thread.history])}
    assert stats["PC1"].tasks == 1 and stats["PC1"].p50 == 7.0
    assert statistics.mean(s.p50 for s in stats.values()) == 7.0


def test_no_history_no_lines(tmp_path):
    """A thread without a history (the tests' default) works as before."""
    clock = FakeClock()
    (tmp_path / "state").mkdir()
    sealing = SealingConfig(1000, 2, 60.0, 30.0)
    config = ThreadConfig(0, tmp_path / "store", "sealer", sealing)
    store = TaskStore(config.location)
    store.prepare()
    thread = SealingThread(config, store, SectorCounter(tmp_path / "state"), Scripted(clock), clock)
    step_until(thread, lambda t: t.info()["job_state"] == State.PC1Done.value)
    assert not (tmp_path / "state" / "history").exists()
