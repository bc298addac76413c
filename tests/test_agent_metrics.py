"""The worker's node_exporter textfile (worker_agent/metrics.py).

Pure tests of the renderer and its inputs, then a real daemon writing the
file, judged by the field's tools: promtool's lint, prometheus_client's
parser, and a real node_exporter serving it. GOLDEN is the contract: a test
fails when a series disappears, appears, or changes its labels.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from agent_helpers import (
    REPO,
    Agent,
    running_agent,
    seed_fault,
    short_tmp,
    wait_until,
    write_config,
)
from promtools import check_metrics, node_exporter, parse, value

from worker_agent.config import ConfigError, load_config
from worker_agent.metrics import (
    STAGE_BUCKETS,
    MetricsError,
    Snapshot,
    StageDurations,
    TaskCounters,
    TextfileWriter,
    render,
)
from worker_agent.states import State
from worker_agent.store import StoreError, Task

THREAD = {"index", "location", "plan"}
# Every series of the textfile: sample name -> label names. Change it only with
# docs/protocol.md's table and the alert rules (monitoring/venus-worker.rules.yml).
GOLDEN = {
    "venus_worker_info": {"name", "version", "textfile"},
    "venus_worker_last_heartbeat_timestamp_seconds": set(),
    "venus_worker_heartbeat_interval_seconds": set(),
    "venus_worker_threads": {"plan", "state"},
    "venus_worker_threads_paused": set(),
    "venus_worker_threads_errors": set(),
    "venus_worker_threads_empty": set(),
    "venus_worker_thread_job_state": THREAD | {"state", "stage"},
    "venus_worker_thread_state_entered_timestamp_seconds": THREAD,
    "venus_worker_thread_paused": THREAD,
    "venus_worker_thread_paused_timestamp_seconds": THREAD,
    "venus_worker_thread_error": THREAD,
    "venus_worker_thread_retries": THREAD,
    "venus_worker_tasks_finished_total": {"plan"},
    "venus_worker_tasks_aborted_total": {"plan"},
    "venus_worker_stage_duration_seconds_bucket": {"stage", "le"},
    "venus_worker_stage_duration_seconds_sum": {"stage"},
    "venus_worker_stage_duration_seconds_count": {"stage"},
}
# prometheus_client names a counter's family without its _total.
FAMILY_TYPES = {
    **{name: "gauge" for name in GOLDEN if name.startswith("venus_worker_thread")},
    "venus_worker_info": "gauge",
    "venus_worker_last_heartbeat_timestamp_seconds": "gauge",
    "venus_worker_heartbeat_interval_seconds": "gauge",
    "venus_worker_tasks_finished": "counter",
    "venus_worker_tasks_aborted": "counter",
    "venus_worker_stage_duration_seconds": "histogram",
}
THREAD_STATES = {"Idle", "Running", "Waiting", "Paused"}
SEALER_AND_UNSEAL_STAGES = {
    "AcquireDeals", "AddPieces", "AssignTicket", "C1", "C2", "PC1", "PC2", "PersistFiles",
    "SubmitPersisted", "SubmitPreCommit", "SubmitProof", "SyntheticPoRep", "TreeD",
    "WaitPCLanded", "WaitProofLanded", "WaitSeed", "Unseal", "UploadPiece",
}  # fmt: skip


def assert_golden(samples: dict, plans: set[str], stages: set[str]) -> None:
    """Exactly GOLDEN's names and labels; every enumerated series present (with 0 if nothing)."""
    names = {}
    for name, labels in samples:
        names.setdefault(name, set()).add(frozenset(key for key, _ in labels))
    assert set(names) == set(GOLDEN)
    for name, label_sets in names.items():
        assert label_sets == {frozenset(GOLDEN[name])}, name

    def label_values(name: str, *keys: str) -> set[tuple]:
        return {tuple(dict(ls)[k] for k in keys) for n, ls in samples if n == name}

    assert label_values("venus_worker_threads", "plan", "state") == {
        (plan, state) for plan in plans for state in THREAD_STATES
    }
    for name in ("venus_worker_tasks_finished_total", "venus_worker_tasks_aborted_total"):
        assert label_values(name, "plan") == {(plan,) for plan in plans}
    buckets = {*(str(bound) for bound in STAGE_BUCKETS), "+Inf"}
    assert label_values("venus_worker_stage_duration_seconds_bucket", "stage", "le") == {
        (stage, le) for stage in stages for le in buckets
    }
    assert label_values("venus_worker_stage_duration_seconds_count", "stage") == {
        (stage,) for stage in stages
    }


# ---------------------------------------------------------------- pure: render


def view(index: int, location: str, plan: str = "sealer", **changes) -> dict:
    """A SealingThread.metrics_view() as the renderer receives it."""
    base = {
        "index": index,
        "location": location,
        "plan": plan,
        "job_id": None,
        "job_state": "",
        "job_stage": None,
        "thread_state": {"state": "Idle", "elapsed": None, "proc": None},
        "state_elapsed": None,
        "last_error": None,
        "paused_at": None,
        "entered_at": None,
        "retry": 0,
    }
    return {**base, **changes}


ODD_LOCATION = '/srv/a "quoted"\\store\nwith a line feed'


def snapshot(**changes) -> Snapshot:
    paused = view(
        0,
        "/srv/store0",
        job_id="s-t010000-1",
        job_state="C1Done",
        job_stage="C2",
        thread_state={"state": "Paused", "elapsed": 5, "proc": None},
        last_error="permanent: no params",
        paused_at=1_800_000_100.5,
        entered_at=1_800_000_000.25,
        retry=2,
    )
    base = dict(
        name='worker "one"',
        textfile="/var/lib/prometheus/node-exporter/venus-worker.prom",
        heartbeat=1_800_000_200.125,
        interval=30.0,
        plans=("sealer", "unseal"),
        threads=[paused, view(1, ODD_LOCATION), view(2, "/srv/u", plan="unseal")],
    )
    return Snapshot(**{**base, **changes})


def test_render_is_clean_for_promtool_and_holds_the_golden_series():
    text = render(snapshot())
    assert check_metrics(text) == ""
    types, samples = parse(text)
    assert types == FAMILY_TYPES
    assert_golden(samples, {"sealer", "unseal"}, SEALER_AND_UNSEAL_STAGES)


def test_render_values_times_as_timestamps_states_as_labels():
    _, samples = parse(render(snapshot()))
    here = {"index": "0", "location": "/srv/store0", "plan": "sealer"}
    assert value(samples, "venus_worker_thread_job_state", **here) == 1
    job = [ls for n, ls in samples if n == "venus_worker_thread_job_state" and ("index", "0") in ls]
    assert dict(job[0])["state"] == "C1Done" and dict(job[0])["stage"] == "C2"
    name = "venus_worker_thread_state_entered_timestamp_seconds"
    assert value(samples, name, **here) == 1_800_000_000.25
    assert value(samples, "venus_worker_thread_paused_timestamp_seconds", **here) == 1_800_000_100.5
    assert value(samples, "venus_worker_thread_paused", **here) == 1
    assert value(samples, "venus_worker_thread_error", **here) == 1
    assert value(samples, "venus_worker_thread_retries", **here) == 2
    heartbeat = value(samples, "venus_worker_last_heartbeat_timestamp_seconds")
    assert heartbeat == 1_800_000_200.125
    assert value(samples, "venus_worker_heartbeat_interval_seconds") == 30
    assert value(samples, "venus_worker_threads", plan="sealer", state="Paused") == 1
    assert value(samples, "venus_worker_threads", plan="sealer", state="Idle") == 1
    assert value(samples, "venus_worker_threads", plan="unseal", state="Idle") == 1
    assert value(samples, "venus_worker_threads", plan="unseal", state="Running") == 0
    assert value(samples, "venus_worker_threads_paused") == 1
    assert value(samples, "venus_worker_threads_errors") == 1
    assert value(samples, "venus_worker_threads_empty") == 2


def test_a_thread_without_a_task_reads_empty_and_zero():
    _, samples = parse(render(snapshot()))
    here = {"index": "2", "location": "/srv/u", "plan": "unseal"}
    job = [ls for n, ls in samples if n == "venus_worker_thread_job_state" and ("index", "2") in ls]
    assert (dict(job[0])["state"], dict(job[0])["stage"]) == ("Empty", "-")
    for name in (
        "venus_worker_thread_state_entered_timestamp_seconds",
        "venus_worker_thread_paused",
        "venus_worker_thread_paused_timestamp_seconds",
        "venus_worker_thread_error",
        "venus_worker_thread_retries",
    ):
        assert value(samples, name, **here) == 0, name


def test_worker_text_in_labels_is_escaped_and_parses_back_exactly():
    text = render(snapshot())
    assert 'location="/srv/a \\"quoted\\"\\\\store\\nwith a line feed"' in text
    assert 'name="worker \\"one\\""' in text
    _, samples = parse(text)
    assert value(samples, "venus_worker_thread_paused", location=ODD_LOCATION) == 0
    assert value(samples, "venus_worker_info", name='worker "one"') == 1
    assert all("\n" not in line for line in text.splitlines())


def test_a_task_under_a_plan_no_longer_configured_keeps_its_series():
    # The config now says unseal only; thread 0's task started as sealer and finishes so.
    _, samples = parse(render(snapshot(plans=("unseal",))))
    assert value(samples, "venus_worker_threads", plan="sealer", state="Paused") == 1
    assert value(samples, "venus_worker_tasks_finished_total", plan="sealer") == 0
    assert value(samples, "venus_worker_stage_duration_seconds_count", stage="PC1") == 0


def test_counters_and_histogram_values():
    durations = StageDurations()
    for seconds in (0.5, 30, 30, 4000, 200_000):
        durations.observe("PC1", seconds)
    text = render(
        snapshot(finished={"sealer": 7}, aborted={"unseal": 2}, durations=durations.snapshot())
    )
    assert check_metrics(text) == ""
    _, samples = parse(text)
    assert value(samples, "venus_worker_tasks_finished_total", plan="sealer") == 7
    assert value(samples, "venus_worker_tasks_finished_total", plan="unseal") == 0
    assert value(samples, "venus_worker_tasks_aborted_total", plan="unseal") == 2
    name = "venus_worker_stage_duration_seconds"
    cumulative = {"1": 1, "10": 1, "60": 3, "3600": 3, "7200": 4, "86400": 4, "+Inf": 5}
    for le, count in cumulative.items():
        assert value(samples, f"{name}_bucket", stage="PC1", le=le) == count, le
    assert value(samples, f"{name}_sum", stage="PC1") == pytest.approx(204060.5)
    assert value(samples, f"{name}_count", stage="PC1") == 5
    assert value(samples, f"{name}_count", stage="C2") == 0
    # a stage observed outside the configured plans still shows
    durations.observe("SnapEncode", 100)
    _, samples = parse(render(snapshot(durations=durations.snapshot())))
    assert value(samples, f"{name}_bucket", stage="SnapEncode", le="300") == 1


# ---------------------------------------------------------------- pure: inputs


def finished_task(number: int, plan: str = "sealer", state: State = State.Finished) -> Task:
    return Task(plan, state, None, 10000, number, 0, 1_800_000_000.0)


def test_task_counters_persist_and_count_a_sector_once(tmp_path):
    counters = TaskCounters(tmp_path / "task-counters.json")
    counters.load()  # no file yet: zeros
    counters.task_ended("/srv/a", finished_task(1))
    counters.task_ended("/srv/a", finished_task(1))  # told again after a crash
    counters.task_ended("/srv/b", finished_task(2, state=State.Aborted))
    counters.task_ended("/srv/a", finished_task(3, plan="snapup"))
    assert counters.snapshot() == ({"sealer": 1, "snapup": 1}, {"sealer": 1})
    again = TaskCounters(tmp_path / "task-counters.json")
    again.load()
    assert again.snapshot() == ({"sealer": 1, "snapup": 1}, {"sealer": 1})
    again.task_ended("/srv/a", finished_task(3, plan="snapup"))  # the last one, again
    assert again.snapshot()[0] == {"sealer": 1, "snapup": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["task-counters.json"]  # no temp left


def test_unusable_task_counters_name_the_file(tmp_path):
    path = tmp_path / "task-counters.json"
    path.write_text('{"schema": 1, "finished": []}')
    with pytest.raises(StoreError, match=r"task-counters\.json: unusable task counters"):
        TaskCounters(path).load()


def test_textfile_writer_is_atomic_readable_and_exclusive(tmp_path):
    path = tmp_path / "venus-worker.prom"
    stale = tmp_path / ".venus-worker.prom.abc123.tmp"
    stale.write_text("half a file")
    other = tmp_path / "apt.prom"
    other.write_text("# not ours\n")
    writer = TextfileWriter(path)
    writer.open()
    assert not stale.exists() and other.exists()
    writer.write("a 1\n")
    writer.write("a 2\n")
    assert path.read_text() == "a 2\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # node_exporter runs as another user
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".venus-worker.prom.lock",
        "apt.prom",
        "venus-worker.prom",
    ]
    second = TextfileWriter(path)
    with pytest.raises(MetricsError, match="is written by another daemon"):
        second.open()
    writer.close()
    second.open()  # free again once the first let go
    second.close()


def test_textfile_writer_in_a_missing_folder_says_so(tmp_path):
    with pytest.raises(MetricsError, match=r"cannot write in .*/absent: No such file"):
        TextfileWriter(tmp_path / "absent" / "venus-worker.prom").open()


# ---------------------------------------------------------------- config


def config_text(line: str = "") -> str:
    return f'[worker]\n{line}\n[[sealing_thread]]\nlocation = "s"\n'


def test_metrics_textfile_is_off_by_default_and_resolves_like_other_paths(tmp_path):
    (tmp_path / "a.toml").write_text(config_text())
    assert load_config(tmp_path / "a.toml").metrics_textfile is None
    (tmp_path / "b.toml").write_text(config_text('metrics_textfile = "prom/venus-worker.prom"'))
    assert load_config(tmp_path / "b.toml").metrics_textfile == tmp_path / "prom/venus-worker.prom"


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('metrics_textfile = "venus.txt"', r"venus\.txt: must be a file named \*\.prom"),
        ('metrics_textfile = ""', "must not be empty"),
        ("metrics_textfile = 1", "expected a string, got int"),
        ('metrics_textfile = "d.prom"', r"d\.prom is a folder"),
    ],
)
def test_bad_metrics_textfile_is_one_clear_line(tmp_path, line, problem):
    (tmp_path / "d.prom").mkdir()
    (tmp_path / "w.toml").write_text(config_text(line))
    with pytest.raises(ConfigError, match=rf"w\.toml: worker\.metrics_textfile: .*{problem}"):
        load_config(tmp_path / "w.toml")


# ---------------------------------------------------------------- a real daemon


METRICS_WORKER = 'ping_interval = "200ms"\nmetrics_textfile = "prom/venus-worker.prom"'
# Thread 0 pauses at C1Done on the seed's C2 error; thread 1 seals, its first
# task aborted in AddPieces; thread 2 (unseal) finishes one task an hour.
UNSEAL = '[[sealing_thread]]\nlocation = "store2"\nplan = "unseal"\nsealing.seal_interval = "1h"\n'
FAULTS = (
    seed_fault()
    + "threads = [0]\n"
    + seed_fault("AddPieces", "abort", "ticket expired")
    + "threads = [1]\ntimes = 1\n"
)


def metrics_config(folder: Path) -> Path:
    (folder / "prom").mkdir()
    config = write_config(folder, threads=2, faults=FAULTS, worker=METRICS_WORKER)
    config.write_text(config.read_text().replace("[processors]", UNSEAL + "[processors]"))
    return config


def read_samples(path: Path) -> dict:
    return parse(path.read_text())[1]


def settled(samples: dict) -> bool:
    """Thread 0 paused by its error, one abort and one finished sealer task, unseal done."""
    try:
        return (
            value(samples, "venus_worker_thread_error", index="0") == 1
            and value(samples, "venus_worker_tasks_aborted_total", plan="sealer") == 1
            and value(samples, "venus_worker_tasks_finished_total", plan="sealer") >= 1
            and value(samples, "venus_worker_tasks_finished_total", plan="unseal") == 1
        )
    except AssertionError:
        return False


@pytest.fixture(scope="module")
def metrics_agent():
    with short_tmp() as folder:
        agent = Agent(metrics_config(folder)).start()
        try:
            textfile = folder / "prom" / "venus-worker.prom"
            wait_until(
                lambda: textfile.exists() and settled(read_samples(textfile)),
                what="thread 0 paused, an abort, finished tasks in the textfile",
            )
            yield agent, textfile
        finally:
            agent.close()


@pytest.mark.e2e
def test_real_daemon_textfile_passes_promtool_and_holds_the_golden_series(metrics_agent):
    agent, textfile = metrics_agent
    text = textfile.read_text()
    assert check_metrics(text) == ""
    types, samples = parse(text)
    assert types == FAMILY_TYPES
    assert_golden(samples, {"sealer", "unseal"}, SEALER_AND_UNSEAL_STAGES)
    location = str(agent.folder / "store0")
    job = [ls for n, ls in samples if n == "venus_worker_thread_job_state" and ("index", "0") in ls]
    assert dict(job[0]) == {
        "index": "0",
        "location": location,
        "plan": "sealer",
        "state": "C1Done",
        "stage": "C2",
    }
    assert value(samples, "venus_worker_thread_paused", index="0") == 1
    paused_at = value(samples, "venus_worker_thread_paused_timestamp_seconds", index="0")
    assert time.time() - 60 < paused_at <= time.time()
    heartbeat = value(samples, "venus_worker_last_heartbeat_timestamp_seconds")
    assert time.time() - 5 < heartbeat <= time.time() + 1
    info = [dict(ls) for n, ls in samples if n == "venus_worker_info"]
    assert info == [{"name": "test-worker", "version": "0.1.0", "textfile": str(textfile)}]
    # the sealing thread's completed stages, C2 included; the paused one's C2 never completed
    assert value(samples, "venus_worker_stage_duration_seconds_count", stage="C2") >= 1
    assert value(samples, "venus_worker_stage_duration_seconds_count", stage="Unseal") == 1


@pytest.mark.e2e
def test_real_daemon_textfile_agrees_with_worker_list(metrics_agent):
    agent, textfile = metrics_agent

    def agree():
        # the unseal thread is quiet for an hour; compare its row and the paused one
        infos = agent.infos()
        samples = read_samples(textfile)
        for info in (infos[0], infos[2]):
            labels = {"index": str(info["index"]), "location": info["location"]}
            state = info["thread_state"]["state"]
            if value(samples, "venus_worker_thread_paused", **labels) != (state == "Paused"):
                return False
        return True

    wait_until(agree, what="the textfile to agree with WorkerList")


@pytest.mark.e2e
def test_real_daemon_rewrites_the_textfile_at_every_heartbeat_and_leaves_no_temp(metrics_agent):
    _, textfile = metrics_agent
    first = value(read_samples(textfile), "venus_worker_last_heartbeat_timestamp_seconds")
    wait_until(
        lambda: (
            value(read_samples(textfile), "venus_worker_last_heartbeat_timestamp_seconds") > first
        ),
        what="a newer heartbeat in the textfile",
    )
    assert stat.S_IMODE(textfile.stat().st_mode) == 0o644
    names = {p.name for p in textfile.parent.iterdir()}
    assert names <= {"venus-worker.prom", ".venus-worker.prom.lock"} | {
        n
        for n in names
        if n.endswith(".tmp")  # one being written right now, at most
    }
    assert len([n for n in names if n.endswith(".tmp")]) <= 1


@pytest.mark.e2e
def test_node_exporter_serves_the_textfile(metrics_agent, tmp_path):
    agent, textfile = metrics_agent
    with node_exporter(textfile.parent, tmp_path / "node_exporter.log") as scrape:
        text = scrape()
    _, samples = parse(text)
    assert value(samples, "node_textfile_scrape_error") == 0
    assert value(samples, "node_textfile_mtime_seconds", file=str(textfile)) > 0
    assert value(samples, "venus_worker_thread_error", index="0") == 1
    served = {name for name, _ in samples if name.startswith("venus_worker_")}
    assert served == set(GOLDEN)


def test_counters_survive_a_restart_and_the_last_write_is_on_disk(tmp_path):
    with short_tmp() as folder:
        agent = Agent(metrics_config(folder)).start()
        textfile = folder / "prom" / "venus-worker.prom"
        try:
            wait_until(lambda: settled(read_samples(textfile)), what="settled counters")
            assert agent.terminate() == 0
            before = read_samples(textfile)
            saved = json.loads((agent.state_dir / "task-counters.json").read_text())
            finished = value(before, "venus_worker_tasks_finished_total", plan="sealer")
            assert saved["finished"]["sealer"] == finished
            assert saved["aborted"] == {"sealer": 1}
            agent.start()
            after = read_samples(textfile)  # written at start, before the threads run
            for plan in ("sealer", "unseal"):
                for name in (
                    "venus_worker_tasks_finished_total",
                    "venus_worker_tasks_aborted_total",
                ):
                    old = value(before, name, plan=plan)
                    assert value(after, name, plan=plan) >= old, (name, plan)
            assert value(after, "venus_worker_tasks_aborted_total", plan="sealer") == 1
            assert value(after, "venus_worker_tasks_finished_total", plan="unseal") == 1
        finally:
            agent.close()


def start_failure(config: Path) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "worker_agent", "daemon", "-c", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
    )
    return done.returncode, done.stderr


def test_daemon_refuses_a_textfile_another_daemon_writes(metrics_agent):
    _, textfile = metrics_agent
    with short_tmp() as folder:
        worker = f'ping_interval = "200ms"\nmetrics_textfile = "{textfile}"'
        config = write_config(folder, threads=1, worker=worker)
        config.write_text(config.read_text().replace('"test-worker"', '"intruder"'))
        status, err = start_failure(config)
        _, samples = parse(textfile.read_text())
    assert status == 1
    assert f"metrics_textfile {textfile} is written by another daemon" in err
    assert len(err.strip().splitlines()) == 1, err
    # the daemon that failed to start wrote nothing there, not even at its stop
    assert [dict(ls)["name"] for n, ls in samples if n == "venus_worker_info"] == ["test-worker"]


def test_daemon_refuses_to_start_without_the_textfile_folder():
    with short_tmp() as folder:
        config = write_config(folder, threads=1, worker=METRICS_WORKER)  # no prom/ folder
        status, err = start_failure(config)
    assert status == 1
    assert "metrics_textfile" in err and "prom: No such file or directory" in err


def test_metrics_off_writes_no_textfile_and_no_counters():
    with short_tmp() as folder:
        agent = Agent(write_config(folder, threads=1)).start()
        try:
            wait_until(
                lambda: (agent.state_dir / "report.json").exists(), what="the first heartbeat"
            )
            wait_until(lambda: agent.infos()[0]["job_id"] is not None, what="a task")
            time.sleep(0.5)
            assert not (agent.state_dir / "task-counters.json").exists()
            assert not any(p.suffix == ".prom" for p in folder.rglob("*"))
        finally:
            agent.close()


@pytest.mark.e2e
def test_a_change_of_the_counts_is_written_without_waiting_for_the_heartbeat():
    """Issue 16 point 1: the textfile is rewritten when the counts change, not only at the
    heartbeat: with an hour between heartbeats, the thread's pause (a few 0.3 s stages
    after the start) is in the file within about a second."""
    with short_tmp() as folder:
        (folder / "prom").mkdir()
        worker = 'ping_interval = "1h"\nmetrics_textfile = "prom/venus-worker.prom"'
        mock = 'duration = "300ms"\nwait_duration = "300ms"'
        config = write_config(folder, threads=1, faults=seed_fault(), worker=worker, mock=mock)
        textfile = folder / "prom" / "venus-worker.prom"
        with running_agent(config) as agent:
            wait_until(textfile.exists, what="the first textfile")
            assert value(read_samples(textfile), "venus_worker_threads_paused") == 0
            wait_until(lambda: agent.infos()[0]["thread_state"]["state"] == "Paused")
            paused_at = time.monotonic()
            wait_until(
                lambda: value(read_samples(textfile), "venus_worker_threads_paused") == 1,
                timeout=3,
                what="the pause in the textfile",
            )
            assert time.monotonic() - paused_at < 2.5
            assert value(read_samples(textfile), "venus_worker_thread_paused", index="0") == 1
