"""The history and the sector ranges through a real daemon on a real socket, and its CLI.

Who asked comes from the kernel (SO_PEERCRED) and the Venus-Actor header;
the replies have the golden shapes of tests/wire.py; the CLI reads the files
of a stopped daemon; a SIGKILL mid-write costs at most the torn last line; the
rotation keeps the files bounded; the stage-duration histogram survives a
restart; a sector range holds the counter, and its end is reported, exported
(promtool-clean) and refused past.
"""

from __future__ import annotations

import json
import os
import time

import pytest
import wire
from agent_helpers import (
    Agent,
    cli,
    cli_json,
    one_response,
    post,
    running_agent,
    seed_fault,
    wait_until,
    write_config,
)
from promtools import check_metrics, parse, value

from worker_agent import api
from worker_agent.history import read_lines

pytestmark = pytest.mark.e2e

FAST = 'duration = "10ms"\nwait_duration = "10ms"'


def history_files(agent: Agent) -> list:
    return sorted((agent.state_dir / "history").glob("*.jsonl"))


def entries_of(agent: Agent, index: int) -> list[dict]:
    return agent.call("WorkerHistory", index, None)["entries"]


def test_pause_and_resume_record_the_peer_and_the_actor(tmp_path):
    config = write_config(tmp_path, threads=1, mock='duration = "200ms"\nwait_duration = "10ms"')
    with running_agent(config) as agent:
        agent.wait_for(lambda infos: infos[0]["job_id"] is not None)
        request = json.dumps(
            {"jsonrpc": "2.0", "id": 1, "method": "VenusWorker.WorkerPause", "params": [0]}
        ).encode()
        status, body = one_response(agent.socket, post(request, "Venus-Actor: alice@ctl\r\n"))
        assert status == 200 and json.loads(body)["result"] is True
        agent.wait_for(lambda infos: infos[0]["thread_state"]["state"] == "Paused")
        # no header: the damocles-compatible shape still works, the ids are still recorded
        agent.call("WorkerResume", 0, None)
        history = agent.call("WorkerHistory", 0, 10)
        wire.assert_shape(history, wire.THREAD_HISTORY)
        assert api.ThreadHistory.from_json(history).to_json() == history
        kinds = [e["kind"] for e in history["entries"]]
        asked = history["entries"][kinds.index("pause_request")]
        assert asked["by"] == {"uid": os.getuid(), "pid": os.getpid(), "actor": "alice@ctl"}
        paused = history["entries"][kinds.index("pause")]
        assert paused["by"]["actor"] == "alice@ctl"
        resumed = history["entries"][kinds.index("resume")]
        assert resumed["by"] == {"uid": os.getuid(), "pid": os.getpid()}
        # the CLI's --actor
        status, _, _ = cli("worker", "-c", str(config), "--actor", "bob", "pause", "--index", "0")
        assert status == 0
        entries = entries_of(agent, 0)
        assert [e["by"]["actor"] for e in entries if e["kind"] == "pause_request"][-1] == "bob"


def test_the_replies_have_their_golden_shapes_and_the_cli_reads_a_stopped_daemon(tmp_path):
    config = write_config(tmp_path, faults=seed_fault() + "threads = [0]\n", mock=FAST)
    with running_agent(config) as agent:
        infos = agent.wait_for(lambda infos: infos[0]["thread_state"]["state"] == "Paused")
        sector = infos[0]["job_id"]
        live = agent.call("SectorHistory", sector.replace("s-t0", "t0"))  # another form
        wire.assert_shape(live, wire.SECTOR_LOG)
        assert [t["index"] for t in live["threads"]] == [0]
        assert live["entries"][-1]["kind"] == "pause"
        assert (
            live["entries"][-1]["error"]
            == "No cached parameters found" + (live["entries"][-1]["error"].split("found", 1)[1])
        )
        stats = agent.call("WorkerStats", 3600, None, "sealer")
        wire.assert_shape(stats, wire.WORKER_STATS)
        assert api.WorkerStats.from_json(stats).to_json() == stats
        c2 = next(s for s in stats["stages"] if s["stage"] == "C2")
        assert c2["failures"] >= 1 and c2["errors"][0]["error"].startswith("permanent: No cached")
        _, from_cli = cli_json("worker", "-c", str(config), "history", "--index", "0")
        assert from_cli == agent.call("WorkerHistory", 0, 100)
        agent.terminate()
    # The daemon is down: the same commands read its files.
    status, offline = cli_json("worker", "-c", str(config), "sector", sector)
    assert status == 0 and offline["threads"] is None
    wire.assert_shape(offline, wire.SECTOR_LOG)
    assert offline["entries"][: len(live["entries"])] == live["entries"]
    status, history = cli_json(
        "worker", "--state-dir", str(tmp_path / "state"), "history", "-i", "0"
    )
    assert status == 0 and history["entries"][-1]["kind"] == "pause"
    status, stats = cli_json("worker", "-c", str(config), "stats", "--since", "1h")
    assert status == 0 and {s["stage"] for s in stats["stages"]} >= {"PC1", "C2"}
    status, text, _ = cli("worker", "-c", str(config), "sector", "1:1")
    assert status == 1 and "not on this worker" in text


def test_a_sigkill_mid_write_costs_at_most_the_torn_last_line(tmp_path):
    config = write_config(tmp_path, threads=4, mock='duration = "1ms"\nwait_duration = "1ms"',
                          sealing='seal_interval = "1ms"')  # fmt: skip
    agent = Agent(config)
    try:
        for _ in range(8):
            agent.start()
            time.sleep(0.3 + 0.2 * os.urandom(1)[0] / 255)
            agent.kill()
            for path in history_files(agent):
                data = path.read_bytes()
                complete = read_lines(data)
                for line in complete:
                    json.loads(line)  # every complete line is whole JSON
        # a write cut short by the kill (as a kill between write's bytes would leave it)
        torn = history_files(agent)[0]
        with open(torn, "ab") as file:
            file.write(b'{"time": 1, "kind": "sta')
        before = read_lines(torn.read_bytes())
        agent.start()
        agent.wait_for(lambda infos: all(i["job_id"] for i in infos))
        agent.call("WorkerPause", 0)
        agent.wait_for(lambda infos: infos[0]["thread_state"]["state"] == "Paused")
        agent.terminate()
        after = read_lines(torn.read_bytes()) if torn.exists() else []
        rotated = torn.with_name(torn.name.replace(".jsonl", ".1.jsonl"))
        if rotated.exists():
            after = read_lines(rotated.read_bytes()) + after
        assert after[: len(before)] == before or set(before) <= set(after)
        for path in history_files(agent):
            assert path.read_bytes().endswith(b"\n")
            for line in read_lines(path.read_bytes()):
                json.loads(line)
        assert "torn last line" in agent.log_text()
    finally:
        agent.close()


def test_rotation_keeps_the_files_bounded_and_the_last_100_tasks(tmp_path):
    worker = 'ping_interval = "1s"\nhistory_size = "4KiB"'
    config = write_config(tmp_path, threads=1, worker=worker,
                          mock='duration = "1ms"\nwait_duration = "1ms"',
                          sealing='seal_interval = "1ms"')  # fmt: skip
    with running_agent(config) as agent:
        folder = agent.state_dir / "history"
        wait_until(lambda: len(list(folder.glob("*.1.jsonl"))) == 1, 60, 0.2, "a rotation")
        first = agent.infos()[0]["job_id"]
        wait_until(lambda: agent.infos()[0]["job_id"] != first, 20, 0.05, "the next task")
        agent.call("WorkerPause", 0)
        agent.wait_for(lambda infos: infos[0]["thread_state"]["state"] == "Paused")
        history = agent.call("WorkerHistory", 0, None)
        # (a pause taken between two tasks names no sector)
        sectors = list(dict.fromkeys(e["sector"] for e in history["entries"] if "sector" in e))
        assert len(sectors) >= 100
        files = sorted(folder.iterdir())
        assert len(files) == 2
        task = max(len(read_lines(files[0].read_bytes())[1]), 300) * 20
        assert sum(path.stat().st_size for path in files) <= 2 * max(4096, 101 * task)
        # the newest task is there, whole, from its first line
        newest = [e for e in history["entries"] if e.get("sector") == sectors[-1]]
        assert newest[0]["note"] == "new task"


def test_the_stage_histogram_survives_a_restart(tmp_path):
    (tmp_path / "prom").mkdir()
    worker = 'ping_interval = "200ms"\nmetrics_textfile = "prom/w.prom"'
    config = write_config(tmp_path, threads=1, worker=worker, mock=FAST,
                          faults=seed_fault() + "threads = [0]\n")  # fmt: skip
    textfile = tmp_path / "prom" / "w.prom"
    with running_agent(config) as agent:
        agent.wait_for(lambda infos: infos[0]["thread_state"]["state"] == "Paused")
        time.sleep(0.5)
        before = value(
            parse(textfile.read_text())[1], "venus_worker_stage_duration_seconds_count", stage="PC1"
        )
        agent.terminate()
    assert before == 1
    textfile.unlink()
    with running_agent(config) as agent:
        wait_until(textfile.exists, 10, 0.05, "the textfile")
        samples = parse(textfile.read_text())[1]
        assert value(samples, "venus_worker_stage_duration_seconds_count", stage="PC1") == before
        assert value(samples, "venus_worker_stage_duration_seconds_count", stage="C1") == 1


def test_a_range_holds_the_counter_is_reported_exported_and_refused_past(tmp_path):
    (tmp_path / "prom").mkdir()
    worker = 'ping_interval = "200ms"\nmetrics_textfile = "prom/w.prom"'
    sealing = 'seal_interval = "10ms"\nsector_numbers = "50-52"'
    config = write_config(tmp_path, threads=1, worker=worker, mock=FAST, sealing=sealing)
    with running_agent(config) as agent:
        first = agent.wait_for(lambda infos: infos[0]["job_id"])[0]["job_id"]
        assert first == "s-t010000-50"  # a fresh worker starts at its range
        infos = agent.wait_for(lambda infos: "used up" in (infos[0]["last_error"] or ""), 20)
        assert infos[0]["thread_state"]["state"] == "Waiting" and infos[0]["job_id"] is None
        assert infos[0]["last_error"] == (
            "critical: the sector range 50-52 of miner 10000 is used up: no new task until the"
            " worker gets a new range ([sealing] sector_numbers) and restarts"
        )
        report = agent.call("WorkerReport")
        assert report["sector_ranges"] == [
            {"miner": 10000, "start": 50, "end": 52, "last": 52, "left": 0}
        ]
        wire.assert_shape(report, wire.REPORT)
        text = (tmp_path / "prom" / "w.prom").read_text()
        assert check_metrics(text) == ""
        assert value(parse(text)[1], "venus_worker_sector_numbers_left", miner="10000") == 0
        assert "only 3 sector numbers left in the range 50-52" in agent.log_text()  # once
    # Past its end (the range made smaller): refused, and said why.
    config.write_text(config.read_text().replace('"50-52"', '"40-51"'))
    status, _, err = cli("daemon", "-c", str(config))
    assert status == 1
    assert "is at 52, past the end of its range 40-51" in err
    # Below its start (a new range above): refused until set-counter says so.
    config.write_text(config.read_text().replace('"40-51"', '"1000-1999"'))
    status, _, err = cli("daemon", "-c", str(config))
    assert status == 1 and "below its range 1000-1999" in err and "--last 999" in err
    assert cli("set-counter", "-c", str(config), "--last", "999")[0] == 0
    with running_agent(config) as agent:
        assert agent.wait_for(lambda infos: infos[0]["job_id"])[0]["job_id"] == "s-t010000-1000"


def test_history_off_keeps_no_files_and_says_so(tmp_path):
    config = write_config(tmp_path, threads=1, worker='ping_interval = "200ms"\nhistory = false')
    with running_agent(config) as agent:
        agent.wait_for(lambda infos: infos[0]["job_id"])
        request = {"jsonrpc": "2.0", "id": 1, "method": "VenusWorker.WorkerHistory", "params": [0]}
        _, body = one_response(agent.socket, post(json.dumps(request).encode()))
        assert json.loads(body)["error"]["code"] == api.RpcCode.NO_HISTORY
        assert not (agent.state_dir / "history").exists()


def test_a_history_folder_others_can_write_in_refuses_the_start(tmp_path):
    config = write_config(tmp_path, threads=1)
    (tmp_path / "state" / "history").mkdir(parents=True)
    (tmp_path / "state" / "history").chmod(0o777)
    status, _, err = cli("daemon", "-c", str(config))
    assert status == 1
    assert "the history folder" in err and "is writable by" in err
