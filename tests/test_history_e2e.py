"""venusctl sector, history, stats and inventory --check through real sshd and real agents.

The module starts its own fleet (tests/sshfleet.py: one sshd per host on
127.0.0.x), one miner, each host its own sector range, as the deploy role
gives them:

- h1 (1-999): thread #0 fails C2 for good (paused at C1Done with the error),
  thread #1's first task is aborted in AddPieces, then it seals on;
- h2 (1000-1999): seals without faults, PC1 300 ms and C1 150 ms (the stats
  test checks the figures against those), the other stages 20 ms;
- h3 (2000-2999): its threads sit in a chain wait of an hour, so venusctl can
  pause and resume them (the actor test);
- h4 (3000-3999), reached by exec: its agent is stopped once it has a history,
  so its CLI reads the files;
- dam: an original damocles-worker (tests/damocles_standin.py) behind sshd.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import WORKER_TABLE, fleet_agent, fleet_defaults, run, run_json, write_inventory
from helpers import stop_process
from sshfleet import SshFleet

import venusctl

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("isolated_home")]

STANDIN = Path(__file__).with_name("damocles_standin.py")

AGENT = (
    WORKER_TABLE
    + """
[sealing]
miner = 10000
max_retries = 1
recover_interval = "50ms"
seal_interval = "50ms"
sector_numbers = "@NUMBERS@"

[[sealing_thread]]
location = "{dir}/store1"

[[sealing_thread]]
location = "{dir}/store2"

[processors]
kind = "mock"

[processors.mock]
duration = "20ms"
wait_duration = "@WAIT@"
durations = {{ PC1 = "300ms", C1 = "150ms" }}
@FAULTS@
"""
)
H1_FAULTS = """
[[processors.mock.faults]]
stage = "C2"
level = "permanent"
message = "No cached parameters found (history test)"
threads = [0]

[[processors.mock.faults]]
stage = "AddPieces"
level = "abort"
message = "deals expired"
threads = [1]
times = 1
"""
RANGES = {"h1": "1-999", "h2": "1000-1999", "h3": "2000-2999", "h4": "3000-3999"}


def config_of(name: str) -> str:
    faults = H1_FAULTS if name == "h1" else ""
    wait = "1h" if name == "h3" else "20ms"
    text = AGENT.replace("@NUMBERS@", RANGES[name]).replace("@WAIT@", wait)
    return text.replace("@FAULTS@", faults)


class HistoryFleet:
    def __init__(self, root: Path):
        self.root = root
        self.ssh = SshFleet(root / "ssh")
        (root / "no-ssh-config").write_text("")  # nothing of the machine's ~/.ssh/config
        self.agents = {}
        self.dam_port = 0

    def table(self, sshd: str, **overrides) -> dict:
        """The [[host]] of sshd host `sshd` (its agent's config, socket and range)."""
        name = sshd
        host = next(h for h in self.ssh.hosts if h.name == name)
        table = {"name": name, "address": host.address, "port": host.port}
        if name in self.agents:
            agent = self.agents[name]
            table.update(config=str(agent.config), socket=str(agent.socket))
            table["sector_numbers"] = RANGES[name]
        if name == "dam":
            table.update(backend="damocles", rpc=f"127.0.0.1:{self.dam_port}")
        return {**table, **overrides}

    def inventory(self, path: Path, *tables: dict) -> Path:
        return write_inventory(
            path / "inventory.toml",
            list(tables),
            **fleet_defaults(self.ssh, ssh_config=str(self.root / "no-ssh-config"), miner=10000),
        )

    def all(self, path: Path) -> Path:
        return self.inventory(
            path, *(self.table(name) for name in ("h1", "h2", "h3")), self.table("dam")
        )


@pytest.fixture(scope="module")
def fleet():
    root = Path(tempfile.mkdtemp(prefix="vch-", dir="/tmp"))
    made = HistoryFleet(root)
    standin = None
    try:
        for name in ("h1", "h2", "h3", "h4", "dam"):
            made.ssh.add_host(name).start()
        for name in RANGES:
            made.agents[name] = fleet_agent(name, root / "agents" / name, config_of(name)).start()
        argv = [sys.executable, str(STANDIN), "--port", "0", "--root", "/mnt"]
        standin = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        made.dam_port = int(re.search(r":(\d+)$", standin.stdout.readline().strip())[1])
        h1, h2 = made.agents["h1"], made.agents["h2"]
        h1.wait_for(lambda infos: infos[0]["thread_state"]["state"] == "Paused", 20)
        h2.wait_for(lambda infos: all(_finished(h2, i) >= 3 for i in (0, 1)), 60, "3 tasks")
        h4 = made.agents["h4"]
        h4.wait_for(lambda infos: _finished(h4, 0) >= 1, 30, "a finished task on h4")
        h4.stop()
        yield made
    finally:
        if standin is not None:
            stop_process(standin)
        for agent in made.agents.values():
            agent.stop()
        made.ssh.stop_all()
        shutil.rmtree(root, ignore_errors=True)


def _finished(agent, index: int) -> int:
    entries = agent.call("WorkerHistory", index, None)["entries"]
    return sum(1 for e in entries if e.get("to") == "Finished")


def entries(agent, index: int) -> list[dict]:
    return agent.call("WorkerHistory", index, None)["entries"]


# ---------------------------------------------------------------- sector


def test_a_sectors_log_after_a_fault_where_it_is_and_why(tmp_path, capsys, fleet):
    sector = fleet.agents["h1"].infos()[0]["job_id"]
    assert re.fullmatch(r"s-t010000-\d{1,3}", sector)  # h1's range
    number = sector.rsplit("-", 1)[1]
    status, out, err = run(capsys, fleet.all(tmp_path), "sector", f"10000:{number}")
    assert status == 0, out + err
    assert "Host:       h1 (" in out and "h2 (" not in out
    assert "Thread:     #0 " in out and "State:      C1Done (stage C2)" in out
    assert "LastErr:    permanent: No cached parameters found (history test)" in out
    log = out.split("Event Log:\n", 1)[1].splitlines()
    assert log[0].startswith(" 0.  ") and "[state]  Empty -> Allocated  ok  (new task)" in log[0]
    assert "[pause]  C1Done  C2 " in log[-1]
    assert log[-1].endswith("permanent: No cached parameters found (history test)")
    status, document = run_json(capsys, fleet.all(tmp_path), "sector", sector)
    (found,) = document["hosts"]
    assert found["name"] == "h1" and found["threads"][0]["job_state"] == "C1Done"
    assert found["entries"][-1]["kind"] == "pause" and document["unreachable"] == []
    assert document["searched"] == 4  # the damocles host too, through its live list


def test_sector_finds_a_finished_sector_on_the_second_of_three_hosts(tmp_path, capsys, fleet):
    h2 = fleet.agents["h2"]
    done = next(e for e in entries(h2, 1) if e.get("to") == "Finished")
    status, out, err = run(capsys, fleet.all(tmp_path), "sector", done["sector"].removeprefix("s-"))
    assert status == 0, err
    assert out.count("Host:       ") == 1 and "Host:       h2 (" in out
    assert "Thread:     #1 (the last to hold it, by the history; no thread holds it now)" in out
    assert "State:      Finished (last entry, " in out
    log = out.split("Event Log:\n", 1)[1].splitlines()
    assert "ProofSubmitted -> Finished  WaitProofLanded" in log[-1]
    assert len(log) == 16  # one line per move of the sealer plan, Empty to Finished


def test_an_aborted_sector_shows_its_abort(tmp_path, capsys, fleet):
    aborted = next(e for e in entries(fleet.agents["h1"], 1) if e["kind"] == "abort")
    status, out, _ = run(capsys, fleet.all(tmp_path), "sector", aborted["sector"])
    assert status == 0
    assert "[abort]  DealsAcquired -> Aborted  AddPieces " in out and "abort: deals expired" in out


def test_a_sector_nobody_has_exits_1_and_a_damocles_host_is_searched_live(tmp_path, capsys, fleet):
    status, out, _ = run(capsys, fleet.all(tmp_path), "sector", "10000:999")
    assert status == 1
    assert "s-t010000-999: on none of the 4 hosts that answered" in out
    dam = fleet.inventory(tmp_path, fleet.table("dam"))
    status, threads = run_json(capsys, dam, "threads")
    job = next(t["job_id"] for t in threads["threads"] if t["job_id"])
    status, document = run_json(capsys, dam, "sector", job)
    assert status == 0
    (found,) = document["hosts"]
    assert found["note"] == "no history from damocles-worker" and found["entries"] == []
    assert found["threads"][0]["job_id"] == job


def test_a_sector_on_two_hosts_is_shown_for_both_with_a_warning(tmp_path, capsys, fleet):
    """Two inventory entries for one agent: what two workers numbering alike look like."""
    twice = fleet.inventory(tmp_path, fleet.table("h1"), fleet.table("h1", name="h1-again"))
    sector = fleet.agents["h1"].infos()[0]["job_id"]
    status, out, _ = run(capsys, twice, "sector", sector)
    assert status == 0
    assert f"WARNING: {sector} is on 2 hosts (h1, h1-again)" in out


def test_bad_sector_ids_are_usage_errors(tmp_path, capsys, fleet):
    status, _, err = run(capsys, fleet.all(tmp_path), "sector", "s-t0x-1")
    assert status == 2 and "examples: s-t01000-2, t01000-2, 1000:2" in err


# ---------------------------------------------------------------- history, who asked


def test_a_pause_and_a_resume_by_venusctl_record_who_asked(tmp_path, capsys, fleet):
    h3 = fleet.agents["h3"]
    h3.wait_for(lambda infos: infos[1]["job_state"] == "PCSubmitted", 20, "h3 #1 waiting")
    inventory = fleet.inventory(tmp_path, fleet.table("h3"))
    status, out, err = run(capsys, inventory, "pause", "h3", "1")
    assert status == 0, err
    h3.wait_for(lambda infos: infos[1]["thread_state"]["state"] == "Paused", 10)
    status, out, err = run(capsys, inventory, "resume", "h3", "1", "PC2Done")
    assert status == 0, err
    found = entries(h3, 1)
    asked = [e for e in found if e["kind"] == "pause_request"][-1]
    resumed = [e for e in found if e["kind"] == "resume"][-1]
    for line in (asked, resumed):
        assert line["by"]["actor"] == venusctl.control_actor()
        assert line["by"]["uid"] == os.getuid()  # the SSH login user, through sshd
        assert line["by"]["pid"] != os.getpid()  # sshd's process, not ours
    assert (resumed["requested"], resumed["from"], resumed["to"]) == (
        "PC2Done",
        "PCSubmitted",
        "PC2Done",
    )
    # through exec the agent's CLI asks, and passes the actor on (VENUS_WORKER_ACTOR)
    by_exec = fleet.inventory(tmp_path, fleet.table("h3", transport="exec"))
    status, document = run_json(capsys, by_exec, "pause", "h3", "0")
    assert status == 0 and document["via"] == "exec"
    asked = [e for e in entries(h3, 0) if e["kind"] == "pause_request"][-1]
    assert asked["by"]["actor"] == venusctl.control_actor()
    assert asked["by"]["uid"] == os.getuid()
    status, document = run_json(capsys, inventory, "history", "h3", "1", "--limit", "5")
    assert status == 0 and document["name"] == "h3" and len(document["entries"]) == 5
    assert any(e["kind"] == "resume" for e in document["entries"])
    status, out, _ = run(capsys, inventory, "history", "h3", "1")
    header, table = out.split("\n", 1)
    assert re.fullmatch(r"h3 #1 \S+/store2: \d+ of \d+ entries", header)
    assert "Time" in table.splitlines()[0] and "By" in table.splitlines()[0]
    resume_row = next(line for line in table.splitlines() if "  resume  " in line)
    assert "PCSubmitted -> PC2Done (to PC2Done)" in resume_row
    assert venusctl.control_actor() in resume_row


def test_history_through_exec_reads_a_stopped_agents_files(tmp_path, capsys, fleet):
    inventory = fleet.inventory(tmp_path, fleet.table("h4", transport="exec"))
    status, document = run_json(capsys, inventory, "history", "h4", "0", "--limit", "0")
    assert status == 0
    assert any(e.get("to") == "Finished" for e in document["entries"])
    sector = document["entries"][0]["sector"]
    status, found = run_json(capsys, inventory, "sector", sector)
    assert status == 0
    assert found["hosts"][0]["note"].startswith("the agent is not running: its history read")


def test_history_of_a_damocles_host_says_it_has_none(tmp_path, capsys, fleet):
    status, _, err = run(
        capsys, fleet.inventory(tmp_path, fleet.table("dam")), "history", "dam", "0"
    )
    assert status == 1 and "no history from damocles-worker" in err


# ---------------------------------------------------------------- stats


def test_stats_figures_are_the_mock_stage_durations(tmp_path, capsys, fleet):
    inventory = fleet.inventory(tmp_path, fleet.table("h2"))
    status, document = run_json(capsys, inventory, "stats", "--since", "1h")
    assert status == 0 and document["hosts"] == ["h2"] and document["window"] == 3600
    stages = {row["stage"]: row for row in document["stages"]}
    assert stages["PC1"]["tasks"] >= 6
    for stage, seconds in (("PC1", 0.3), ("C1", 0.15), ("PC2", 0.02)):
        row = stages[stage]
        assert seconds <= row["p50"] <= seconds * 1.25 + 0.02, (stage, row)
        assert row["p50"] <= row["p90"] <= row["max"], row
        assert row["failures"] == 0
    assert [row["stage"] for row in document["stages"]][:5] == [
        "AcquireDeals",
        "AddPieces",
        "TreeD",
        "AssignTicket",
        "PC1",
    ]


def test_stats_of_the_fleet_by_host_with_failures_and_the_common_error(tmp_path, capsys, fleet):
    status, document = run_json(capsys, fleet.all(tmp_path), "stats", "--by-host", "--stage", "C2")
    assert status == 0
    assert document["no_history"] == [{"name": "dam", "message": "no history from damocles-worker"}]
    rows = {row["host"]: row for row in document["stages"]}
    assert rows["h1"]["failures"] >= 1  # a permanent error: the pause
    assert rows["h1"]["errors"][0]["error"].endswith("No cached parameters found (history test)")
    assert rows["h2"]["tasks"] >= 6 and rows["h2"]["failures"] == 0
    # h2 seals on between two runs: the merged figures lie between the by-host ones
    # taken just before and just after (equal when no task ended meanwhile)
    by_host = [run_json(capsys, fleet.all(tmp_path), "stats", "--by-host", "--stage", "PC1")[1]]
    status, merged = run_json(capsys, fleet.all(tmp_path), "stats", "--stage", "PC1")
    by_host.append(run_json(capsys, fleet.all(tmp_path), "stats", "--by-host", "--stage", "PC1")[1])
    (pc1,) = merged["stages"]
    tasks = [sum(row["tasks"] for row in run["stages"]) for run in by_host]
    assert tasks[0] <= pc1["tasks"] <= tasks[1]
    longest = [max(row["max"] for row in run["stages"]) for run in by_host]
    assert longest[0] <= pc1["max"] <= longest[1]
    # thread selectors: only the threads paused now (h1 #0, whose PC1 ran once)
    status, paused = run_json(capsys, fleet.all(tmp_path), "stats", "--paused", "-l", "h1")
    assert status == 0
    assert {row["stage"]: row["tasks"] for row in paused["stages"]}["PC1"] == 1


def test_stats_on_a_terminal_draws_a_bar_per_stage_scaled_to_the_slowest(tmp_path, fleet):
    class Terminal(io.StringIO):
        encoding = "utf-8"

    out = Terminal()
    env = venusctl.Environment(
        stdout=out,
        stderr=io.StringIO(),
        environ={"VENUSCTL_PERSIST": "0"},
        isatty=lambda stream: stream is out,
        terminal_size=lambda: os.terminal_size((200, 50)),
    )
    inventory = fleet.inventory(tmp_path, fleet.table("h2"))
    assert venusctl.main(["-i", str(inventory), "stats"], env) == 0
    lines = out.getvalue().splitlines()
    assert "p50 / p90" in lines[1]
    bars = {line.split()[0]: line.count("█") + line.count("░") for line in lines[2:]}
    assert max(bars.values()) == venusctl.STATS_BAR_MAX  # the slowest fills the bar
    assert bars["PC1"] > 4 * bars["PC2"]  # 300 ms against 20 ms, at a glance
    piped = io.StringIO()
    env = venusctl.Environment(
        stdout=piped, stderr=io.StringIO(), environ={"VENUSCTL_PERSIST": "0"}
    )
    assert venusctl.main(["-i", str(inventory), "stats"], env) == 0
    assert "█" not in piped.getvalue() and "p50 / p90" not in piped.getvalue()


# ---------------------------------------------------------------- inventory --check


def test_inventory_check_passes_disjoint_ranges_and_names_overlapping_ones(tmp_path, capsys, fleet):
    status, out, _ = run(capsys, fleet.all(tmp_path), "inventory", "--check")
    assert status == 0 and "sector ranges: disjoint for every miner" in out
    tables = [
        fleet.table("h1"),
        fleet.table("h2", sector_numbers="900-1999"),
        fleet.table("h3", sector_numbers=None) | {"miner": 10000},
    ]
    tables[2].pop("sector_numbers")
    status, document = run_json(capsys, fleet.inventory(tmp_path, *tables), "inventory", "--check")
    assert status == 1 and document["ok"] is False
    assert document["problems"] == [
        "miner 10000: h1 (1-999) and h2 (900-1999) overlap: numbers 900-999 could name two sectors",
        "miner 10000: h1 and h3 may number the same sectors: no sector_numbers on h3",
        "miner 10000: h2 and h3 may number the same sectors: no sector_numbers on h3",
    ]
