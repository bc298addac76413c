"""venusctl against original damocles-workers of every release line, through real sshd.

The workers are tests/damocles_standin.py, one release per line (E2E_TAGS),
bound to 127.0.0.1 and reached only through a direct-tcpip channel of a real
OpenSSH sshd: with `AllowTcpForwarding no` on that sshd the same inventory
fails, so nothing goes around SSH.

Per release the module starts, once, three stand-ins in this process (their
connection counts are read by the tests) behind the one sshd `dam`:

- `ro`: threads no test changes (list, info, threads, health read them);
- `act`: one thread per pause/resume/drain test, each test its own;
- `gap`: five config entries, one a duplicate location (skipped: from v0.7.0
  its number is missing from WorkerList, and the RPC takes list positions).

Then list, info, pause, resume with and without a state, threads, health and
drain run against each. The tests of one release share its stand-ins, so
pytest runs a release's tests together (module-scoped parameter).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from conftest import fleet_defaults, free_loopback_port, run, run_json, write_inventory
from damocles_standin import FROZEN, Release, StandinServer, ThreadSpec, Worker, release_of
from helpers import stop_process
from sshfleet import SshFleet

import venusctl

STANDIN = Path(__file__).with_name("damocles_standin.py")
# An anyhow chain, as damocles-worker sends it (Debug of its Failure): several lines.
ERROR = (
    "permanent: c2 failed\n\nCaused by:\n"
    "    0: No cached parameters found for stacked-proof-of-replication\n    1: standin"
)
ERROR_ESCAPED = ERROR.replace("\n", "\\n")
# One release per line, and both sides of v0.7.0 (WorkerVersion, the index gap) in v0.5's.
E2E_TAGS = ["v0.1.2", "v0.3.1", "v0.6.6", "v0.7.4", "v0.8.4", "v0.13.0"]
LINE_NAMES = {  # the stand-in's line -> venusctl's name for it
    "v0.1": "v0.1",
    "v0.2": "v0.2-v0.4",
    "v0.5": "v0.5-v0.7",
    "v0.8": "v0.8",
    "v0.9": "v0.9+",
}


pytestmark = [
    pytest.mark.e2e,
    # nothing of the machine's ~/.ssh, ssh-agent or $VENUSCTL_INVENTORY leaks in
    pytest.mark.usefixtures("isolated_home"),
]


@pytest.fixture(scope="module")
def damocles_sshd():
    """Two sshd hosts for damocles workers: `dam`, and `notcp` with AllowTcpForwarding no."""
    root = Path(tempfile.mkdtemp(prefix="vcd-", dir="/tmp"))
    try:
        fleet = SshFleet(root / "ssh")
        try:
            fleet.add_host("dam")
            fleet.add_host("notcp", sshd_options={"AllowTcpForwarding": "no"})
            for host in fleet.hosts:
                host.start()
            yield fleet
        finally:
            fleet.stop_all()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def standin():
    """start(*options) -> port of a fresh stand-in process on 127.0.0.1, e.g.
    start("--release", "v0.8.0"); its default threads are paused with a C2 error, PC1
    running for hours, asking for work. Stopped after the test."""
    processes = []

    def start(*options: str) -> int:
        argv = [sys.executable, str(STANDIN), "--port", "0", "--root", "/mnt", *options]
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        processes.append(process)
        line = process.stdout.readline()
        match = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)\n", line)
        assert match, f"stand-in did not start: {line!r}"
        return int(match.group(1))

    yield start
    for process in processes:
        stop_process(process)


def damocles_table(fleet: SshFleet, name: str, port: int, sshd: str = "dam") -> dict:
    """A [[host]] for a damocles worker on sshd host `sshd`, with its own key settings.

    identity_file and known_hosts are per host so these hosts mix with the
    session fleet's in one inventory.
    """
    host = next(h for h in fleet.hosts if h.name == sshd)
    return {
        "name": name,
        "address": host.address,
        "port": host.port,
        "backend": "damocles",
        "rpc": f"127.0.0.1:{port}",
        "identity_file": str(fleet.client_key),
        "known_hosts": str(fleet.known_hosts),
    }


def inventory(path: Path, fleet: SshFleet, *tables: dict) -> Path:
    return write_inventory(path, list(tables), **fleet_defaults(fleet))


def rows_by_name(out: str) -> tuple[list[str], dict[str, list[str]]]:
    """A table's headers and rows by first cell; the last cell may hold spaces (LastErr)."""
    header, *lines = out.splitlines()
    headers = header.split()
    rows = {}
    for line in lines:
        cells = re.split(r"\s{2,}", line.strip(), maxsplit=len(headers) - 1)
        rows[cells[0]] = cells
    return headers, rows


# -- one release line: its three stand-ins behind sshd -------------------------------------------


def ro_threads(release: Release) -> list[ThreadSpec]:
    threads = [
        ThreadSpec("/mnt/err", "sealer", "C1Done", 2, "paused", 17, ERROR),
        ThreadSpec("/mnt/pc1", "sealer", "TicketAssigned", 3, "run", 100),
        ThreadSpec("/mnt/idle", "sealer", None, None, "run", 0),
        ThreadSpec("/mnt/poll", "sealer", "PCSubmitted", 4, "run", 50),
    ]
    if release.at_least("v0.2"):
        threads.append(ThreadSpec("/mnt/snap", "snapup", "SnapProved", 5, "paused", 20))
    if release.at_least("v0.8"):
        threads.append(ThreadSpec(None, "wdpost"))
    return threads


ACT_THREADS = [
    ThreadSpec("/mnt/run", "sealer", "TicketAssigned", 10, "run", 100),  # 0: pause
    ThreadSpec("/mnt/ask", "sealer", None, None, "run", 0),  # 1: pause, asking for work
    ThreadSpec("/mnt/hand", "sealer", "PC1Done", 12, "paused", 30),  # 2: resume
    ThreadSpec("/mnt/to", "sealer", "C1Done", 13, "paused", 30, ERROR),  # 3: resume to a state
    ThreadSpec("/mnt/stale", "sealer", "PC1Done", 14, "paused", 40, pause_queued=True),  # 4
    ThreadSpec("/mnt/drain", "sealer", "PCSubmitted", 15, "run", 5),  # 5: drain
    ThreadSpec("/mnt/refuse", "sealer", "C1Done", 16, "paused", 30, ERROR),  # 6: refusals
]


GAP_THREADS = [  # every thread polls the chain: it takes a pause at once
    ThreadSpec(location, "sealer", "PCSubmitted", number + 20, "run", 1)
    for number, location in enumerate(["/mnt/g0", "/mnt/g1", "/mnt/g1/", "/mnt/g3", "/mnt/g4"])
]


@dataclass
class Line:
    """A release's stand-ins behind sshd `dam`, and an inventory naming them ro, act, gap."""

    release: Release
    path: Path
    servers: dict[str, StandinServer]

    @property
    def name(self) -> str:
        return LINE_NAMES[self.release.line]

    @property
    def thread_state(self) -> bool:
        return self.release.at_least("v0.9")


@pytest.fixture(scope="module", params=E2E_TAGS)
def line(request, damocles_sshd, tmp_path_factory):
    release = release_of(request.param)
    threads = {"ro": ro_threads(release), "act": ACT_THREADS, "gap": GAP_THREADS}
    servers = {
        name: StandinServer(Worker(release, specs, replace(FROZEN), sectors=0)).start()
        for name, specs in threads.items()
    }
    try:
        folder = tmp_path_factory.mktemp(f"damocles-{request.param}")
        tables = [damocles_table(damocles_sshd, name, s.port) for name, s in servers.items()]
        yield Line(release, inventory(folder / "inventory.toml", damocles_sshd, *tables), servers)
    finally:
        for server in servers.values():
            server.close()


def info_json(capsys, line: Line, host: str) -> list[dict]:
    status, document = run_json(capsys, line.path, "info", host)
    assert status == 0, document
    return document["threads"]


def thread_at(capsys, line: Line, host: str, index: int) -> dict:
    return next(t for t in info_json(capsys, line, host) if t["index"] == index)


# -- list, info, threads: every line in the same columns -----------------------------------------


def test_list_counts_every_line_right_and_names_the_line(line, capsys):
    before = line.servers["ro"].accepted
    status, out, err = run(capsys, line.path, "list", "--wide", "-l", "ro")
    assert status == 0, err
    assert line.servers["ro"].accepted == before + 1  # List and Version: one channel
    headers, rows = rows_by_name(out)
    assert headers == venusctl.LIST_WIDE_HEADERS
    release = line.release
    version = release.version_string() if release.version_method else "-"
    snap, wdpost = release.at_least("v0.2"), release.at_least("v0.8")
    running = ["1", "0"] if line.thread_state else ["-", "-"]
    assert rows["ro"][2:] == [
        "-",  # Jump: reached directly
        f"{version} ({line.name} API)",
        str(4 + snap + wdpost),  # Threads
        str(1 + wdpost),  # Empty: asking for work, and the wdpost thread
        str(1 + snap),  # Paused
        "-",  # Queued (issue 10): a damocles-worker shows no queued pause
        *running,  # Running, Waiting: only v0.9+ says
        "1",  # Errors
        "0s",  # LastPing: no heartbeat, the age of this answer
    ]
    status, document = run_json(capsys, line.path, "list", "-l", "ro")
    (entry,) = document["hosts"]
    assert (entry["backend"], entry["via"], entry["release_line"]) == (
        "damocles",
        "direct-tcpip",
        line.name,
    )
    assert entry["last_ping"] == 0.0 and entry["error"] is None


def test_info_shows_every_line_in_the_same_columns_one_row_per_thread(line, capsys):
    status, out, err = run(capsys, line.path, "info", "ro")
    assert status == 0, err
    threads = ro_threads(line.release)
    assert len(out.splitlines()) == 1 + len(threads)  # the multi-line error stays in its row
    headers, rows = rows_by_name(out)
    assert headers == venusctl.INFO_HEADERS
    index, loc, sector, paused, elapsed, state, error = rows["0"]
    assert (loc, sector, paused, state, error) == (
        "/mnt/err",
        "s-t01000-2",
        "true",
        "C1Done",
        ERROR_ESCAPED,
    )
    assert re.fullmatch(r"1[78]s", elapsed), elapsed
    assert rows["1"][1:] == ["/mnt/pc1", "s-t01000-3", "false", "-", "TicketAssigned", "-"]
    assert rows["2"][1:] == ["/mnt/idle", "-", "false", "-", "Empty", "-"]
    assert rows["3"][1:] == ["/mnt/poll", "s-t01000-4", "false", "-", "PCSubmitted", "-"]
    if line.release.at_least("v0.2"):
        assert rows["4"][1:5] == ["/mnt/snap", "s-t01000-5", "true", rows["4"][4]]
    if line.release.at_least("v0.8"):
        # wdpost has no location ("-") and, asking for work, no job
        assert rows["5"][1:] == ["-", "-", "false", "-", "Empty", "-"]

    status, out, _ = run(capsys, line.path, "info", "ro", "--wide")
    _, wide = rows_by_name(out)
    plan, stage, thread_state = wide["1"][6:9]
    if line.thread_state:
        assert (plan, stage) == ("sealer", "PC1")
        assert re.fullmatch(r"Running\(1m4\d+s\) builtin PC1", thread_state), thread_state
        assert wide["3"][6:9] == ["sealer", "WaitPCLanded", "Idle"]
    else:  # not said before v0.9: never a made-up Idle or Running
        assert (plan, stage, thread_state) == ("sealer", "-", "-")
    if line.release.at_least("v0.2"):
        assert wide["4"][6] == "snapup"  # sent from v0.5, inferred from SnapProved before
    # asking for work: the plan is not sent before v0.5, and Empty does not tell it
    assert wide["2"][6] == ("-" if line.name == "v0.2-v0.4" else "sealer")


def test_info_json_is_our_agents_worker_info_with_the_error_exact(line, capsys):
    status, document = run_json(capsys, line.path, "info", "ro")
    assert status == 0 and document["release_line"] == line.name
    first = document["threads"][0]
    assert set(first) == {field.name for field in venusctl.WorkerInfo.__dataclass_fields__.values()}
    assert first["last_error"] == ERROR  # JSON keeps the worker's text as it is
    assert first["thread_state"] == {
        "state": "Paused",
        "elapsed": first["thread_state"]["elapsed"],
        "proc": None,
    }


def test_threads_fleet_wide_selects_on_every_line(line, capsys):
    status, out, err = run(capsys, line.path, "threads", "-l", "ro,act,gap", "--errors")
    assert status == 0, err
    width = len(out.splitlines()[0].split())
    rows = [re.split(r"\s{2,}", row, maxsplit=width - 1) for row in out.splitlines()[1:-1]]
    assert [row[:2] for row in rows] == [["act", "3"], ["act", "6"], ["ro", "0"]]
    assert {row[-1] for row in rows} == {ERROR_ESCAPED}
    status, out, _ = run(capsys, line.path, "threads", "-l", "ro", "--state", "PCSubmitted")
    assert status == 0 and out.splitlines()[-1] == "1 thread on 1 host"


# -- health: what can be judged, and what cannot ---------------------------------------------------


def test_health_judges_threads_and_lists_what_it_cannot(line, capsys):
    argv = ["-i", str(line.path), "health", "-l", "ro", "--stuck", "PC1=0s"]
    status = venusctl.main([*argv, "--verbose"])
    lines = capsys.readouterr().out.splitlines()
    assert status == 1, lines  # WARNING
    error = re.escape(f": {ERROR_ESCAPED}")
    assert re.fullmatch(
        rf"WARNING ro #0 s-t01000-2 C1Done: paused by an error for \d+s{error}", lines[1]
    )
    unjudged = "not judged (damocles-worker does not report time in state)"
    info = [text for text in lines if text.startswith("INFO ")]
    if line.thread_state:  # a running stage's elapsed is reported: PC1 is judged
        assert re.fullmatch(r"WARNING ro #1 s-t01000-3 TicketAssigned: stage PC1 for .*", lines[2])
        # the chain poll shows Idle, without a time
        assert info == [
            "INFO ro #3 s-t01000-4 PCSubmitted: stage WaitPCLanded: --stuck"
            f" WaitPCLanded=6h0m0s {unjudged}"
        ]
    else:  # only a paused thread's time is reported
        assert info == [
            f"INFO ro #1 s-t01000-3 TicketAssigned: state TicketAssigned: --stuck"
            f" default=6h0m0s {unjudged}",
            f"INFO ro #3 s-t01000-4 PCSubmitted: state PCSubmitted: --stuck default=6h0m0s"
            f" {unjudged}",
        ]
    # without --verbose: the findings only
    assert venusctl.main(argv) == 1
    quiet = capsys.readouterr().out.splitlines()

    # the two runs may straddle a second: compare them without the elapsed times
    def timeless(texts):
        return [re.sub(r"\b\d+(\.\d+)?s\b", "Ns", text) for text in texts]

    assert timeless(quiet) == timeless(text for text in lines if not text.startswith("INFO "))


# -- pause -----------------------------------------------------------------------------------------


def test_pause_says_when_each_thread_takes_it(line, capsys):
    status, out, _ = run(capsys, line.path, "pause", "act", "0")
    assert status == 0
    if line.thread_state:
        assert out == (
            "act #0: pause queued: it stops after its running stage PC1; damocles-worker drops"
            " that stage's result and runs it again on resume\n"
        )
    else:
        assert out.startswith("act #0: pause queued: it stops at its next stage boundary (this")
    # a second pause while the first is still queued: damocles answers false
    status, document = run_json(capsys, line.path, "pause", "act", "0")
    assert status == 0 and document["ok"] is True
    assert document["note"].startswith("pause already queued (damocles-worker answered false")
    # asking for work: at once, except on v0.1 (its allocation retry sleeps)
    status, out, _ = run(capsys, line.path, "pause", "act", "1")
    assert status == 0
    if line.release.line == "v0.1":
        assert out.startswith("act #1: pause queued: it has no task; it takes the pause when")
        assert thread_at(capsys, line, "act", 1)["thread_state"]["state"] is None
    else:
        assert out == "act #1: paused\n"
        assert thread_at(capsys, line, "act", 1)["thread_state"]["state"] == "Paused"
        status, out, _ = run(capsys, line.path, "pause", "act", "1")
        assert status == 0 and out == "act #1: already paused (nothing sent)\n"


# -- resume ----------------------------------------------------------------------------------------


def test_resume_without_a_state_reads_the_thread_back(line, capsys):
    status, out, err = run(capsys, line.path, "resume", "act", "2")
    assert (status, err) == (0, "")
    doing = ", Running(0s) builtin PC2" if line.thread_state else ""
    assert out == f"act #2: resumed (now in PC1Done{doing})\n"
    status, _, err = run(capsys, line.path, "resume", "act", "2")
    # issue 10: and what a damocles-worker cannot do about a queued pause
    assert status == 1
    assert err == f"act #2: resume refused: worker #2 is not paused; {venusctl.DAMOCLES_QUEUED}\n"


def test_resume_with_a_state_moves_it_there(line, capsys):
    status, document = run_json(capsys, line.path, "resume", "act", "3", "TreeDBuilt")
    assert status == 0, document
    doing = ", Idle" if line.thread_state else ""
    assert document["note"] == f"resumed in state TreeDBuilt (now in TreeDBuilt{doing})"
    thread = thread_at(capsys, line, "act", 3)
    assert (thread["job_state"], thread["last_error"]) == ("TreeDBuilt", None)


def test_resume_states_are_checked_before_anything_is_sent(line, capsys):
    # v0.8+ would ignore a typo and resume in C1Done: venusctl refuses a name no plan has
    # before any connection (issue 10), and normalises a case-only difference
    status, out, err = run(capsys, line.path, "resume", "act", "6", "C1Dnoe")
    assert status == 2 and out == "" and "unknown state 'C1Dnoe'; did you mean C1Done" in err
    # a state of another plan would abort the task; the state it is in would re-pause it
    status, out, err = run(capsys, line.path, "resume", "act", "6", "SnapEncoded")
    assert status == 1 and out == ""
    assert err.startswith(
        f'act #6: resume refused: invalid state "SnapEncoded" for plan sealer on damocles-worker'
        f" {line.name}; valid states: Empty, Allocated,"
    )
    assert ("SyntheticPoRepNeeded" in err) == line.thread_state  # a state of v0.9+ only
    status, _, err = run(capsys, line.path, "resume", "act", "6", "c1done")
    assert status == 1 and "worker #6 is already in C1Done: damocles-worker would pause" in err
    assert thread_at(capsys, line, "act", 6)["thread_state"]["state"] == "Paused"
    if line.release.at_least("v0.2"):  # a snapup thread (plan inferred before v0.5)
        status, _, err = run(capsys, line.path, "resume", "ro", "4", "C1Done")
        assert status == 1 and 'invalid state "C1Done" for plan snapup' in err


def test_a_stale_pause_token_is_said_and_the_next_resume_holds(line, capsys):
    status, out, err = run(capsys, line.path, "resume", "act", "4", "TreeDBuilt")
    assert (status, out) == (1, "")
    assert err == (
        "act #4: resume failed: the worker took it, but the thread paused again at once: a"
        " pause queued earlier (a stale pause token) was taken and dropped the requested"
        " state TreeDBuilt; still in PC1Done: resume it again\n"
    )
    status, document = run_json(capsys, line.path, "resume", "act", "4")
    assert status == 0 and document["note"].startswith("resumed (now in PC1Done")


# -- drain ----------------------------------------------------------------------------------------


def test_drain_pauses_and_waits_over_one_channel(line, capsys):
    before = line.servers["act"].accepted
    argv = ["drain", "act", "--state", "PCSubmitted", "--timeout", "20s", "--interval", "100ms"]
    status, out, err = run(capsys, line.path, *argv)
    assert status == 0, err
    assert out.splitlines()[-1].startswith("drained 1 thread on 1 host in ")
    assert re.search(r"act +5 +s-t01000-15 +PCSubmitted +PCSubmitted +Paused", out), out
    # status, the pause, every poll: one direct-tcpip channel for the whole run
    assert line.servers["act"].accepted == before + 1


# -- index gaps: never another thread --------------------------------------------------------------


def test_pause_hits_the_thread_listed_with_that_index(line, capsys):
    listed = [thread["index"] for thread in info_json(capsys, line, "gap")]
    gap = line.release.index_gap
    assert listed == ([0, 1, 3, 4] if gap else [0, 1, 2, 3])
    status, out, err = run(capsys, line.path, "pause", "gap", "3")
    assert (status, out, err) == (0, "gap #3: paused\n", "")
    paused = {
        t["index"]: t["location"]
        for t in info_json(capsys, line, "gap")
        if t["thread_state"]["state"] == "Paused"
    }
    # the thread listed as #3: config entry 3, or entry 4 where the duplicate was dropped first
    assert paused == {3: "/mnt/g3" if gap else "/mnt/g4"}
    status, out, _ = run(capsys, line.path, "pause", "gap", str(listed[-1]))
    assert status == 0 and (gap or out == "gap #3: already paused (nothing sent)\n")
    assert thread_at(capsys, line, "gap", listed[-1])["location"] == "/mnt/g4"
    assert thread_at(capsys, line, "gap", listed[-1])["thread_state"]["state"] == "Paused"
    if gap:
        status, _, err = run(capsys, line.path, "pause", "gap", "2")
        assert status == 1 and err == (
            "gap #2: pause refused: worker #2 not found: this damocles-worker skipped #2 of its"
            " config (a duplicate location); its threads are #0, #1, #3, #4\n"
        )


# -- failures ------------------------------------------------------------------------------------


def test_a_closed_rpc_port_is_that_hosts_error_row(tmp_path, capsys, damocles_sshd, standin):
    closed = free_loopback_port()
    path = inventory(
        tmp_path / "inventory.toml",
        damocles_sshd,
        damocles_table(damocles_sshd, "up", standin("--release", "v0.9.0")),
        damocles_table(damocles_sshd, "stopped", closed),
    )
    status, out, _ = run(capsys, path, "list")
    assert status == 1
    headers, rows = rows_by_name(out)
    assert headers[-1] == "Error"
    assert rows["up"][2] == "3"
    assert rows["stopped"][2:] == [
        "-",
        "-",
        "-",
        "-",
        "-",
        f"damocles RPC not reachable at 127.0.0.1:{closed}",
    ]
    status, _, err = run(capsys, path, "pause", "stopped", "0")
    assert status == 1
    assert err == f"stopped #0: pause failed: damocles RPC not reachable at 127.0.0.1:{closed}\n"
    status, document = run_json(capsys, path, "info", "stopped")
    assert status == 1 and document["error"]["kind"] == "damocles-not-reachable"


def test_a_reply_cut_off_by_the_worker_is_an_error_row_not_a_hang(
    tmp_path, capsys, damocles_sshd, standin
):
    """A thread location that is not UTF-8 makes the worker's handler panic: no reply."""
    scenario = tmp_path / "scenario.json"
    scenario.write_text(json.dumps({"threads": [{"location": "/mnt/\udcff"}]}))
    path = inventory(
        tmp_path / "inventory.toml",
        damocles_sshd,
        damocles_table(
            damocles_sshd, "panics", standin("--release", "v0.13.0", "--scenario", str(scenario))
        ),
        damocles_table(damocles_sshd, "fine", standin("--release", "v0.13.0")),
    )
    status, document = run_json(capsys, path, "list")
    assert status == 1
    hosts = {host["name"]: host for host in document["hosts"]}
    assert hosts["fine"]["error"] is None and hosts["fine"]["summary"]["Threads"] == 3
    assert hosts["panics"]["error"] == {
        "kind": "no-reply",
        "message": "damocles-worker closed the connection without answering WorkerList and"
        " WorkerVersion (it does so when a thread's location is not UTF-8)",
    }


def test_the_rpc_is_reached_only_through_sshd(tmp_path, capsys, damocles_sshd, standin):
    """The same stand-in, behind an sshd that forbids TCP forwarding: refused."""
    path = inventory(
        tmp_path / "inventory.toml",
        damocles_sshd,
        damocles_table(damocles_sshd, "walled", standin("--release", "v0.9.0"), sshd="notcp"),
    )
    status, document = run_json(capsys, path, "list")
    assert status == 1
    error = document["hosts"][0]["error"]
    assert error == {
        "kind": "tcp-forwarding-forbidden",
        "message": "TCP forwarding forbidden by sshd (AllowTcpForwarding)",
    }


# -- a mixed fleet ---------------------------------------------------------------------------------


def test_one_list_of_our_agents_and_damocles_workers(
    tmp_path, capsys, ssh_fleet, damocles_sshd, standin
):
    path = write_inventory(
        tmp_path / "mixed.toml",
        [
            ssh_fleet.host_table("w1"),
            damocles_table(damocles_sshd, "dam-new", standin("--release", "v0.13.0")),
            ssh_fleet.host_table("w2"),
            damocles_table(damocles_sshd, "dam-old", standin("--release", "v0.3.1")),
        ],
        **ssh_fleet.defaults(),
    )
    status, out, err = run(capsys, path, "list")
    assert status == 0, err
    headers, rows = rows_by_name(out)
    assert list(rows) == ["w1", "dam-new", "w2", "dam-old"]
    assert "Error" not in headers
    assert rows["w1"][2] == "2" and rows["w2"][2] == "2"  # our agents: two threads
    assert rows["dam-new"][2:] == ["3", "1", "1", "1", "0s"]
    assert rows["dam-old"][2:] == ["3", "1", "1", "1", "0s"]
    status, document = run_json(capsys, path, "list")
    via = {
        host["name"]: (host["backend"], host["via"], host["release_line"])
        for host in document["hosts"]
    }
    assert via == {
        "w1": ("venus", "stream", None),
        "dam-new": ("damocles", "direct-tcpip", "v0.9+"),
        "w2": ("venus", "stream", None),
        "dam-old": ("damocles", "direct-tcpip", "v0.2-v0.4"),
    }


def test_health_judges_damocles_workers_on_their_threads_without_a_heartbeat(
    tmp_path, capsys, ssh_fleet, damocles_sshd, standin
):
    closed = free_loopback_port()
    path = write_inventory(
        tmp_path / "mixed.toml",
        [
            ssh_fleet.host_table("calm"),
            damocles_table(damocles_sshd, "dam-new", standin("--release", "v0.9.0")),
            damocles_table(damocles_sshd, "dam-old", standin("--release", "v0.7.4")),
            damocles_table(damocles_sshd, "dam-down", closed),
        ],
        **ssh_fleet.defaults(),
    )
    # --expiration 1ms: only calm has a heartbeat to expire; --stuck PC1=0s:
    # dam-new's running PC1 thread is judged on its thread state's elapsed.
    argv = ["-i", str(path), "health", "--expiration", "1ms", "--stuck", "PC1=0s"]
    status = venusctl.main(argv)
    lines = capsys.readouterr().out.splitlines()
    assert status == 2
    assert lines[0].startswith(
        "VENUS CRITICAL - 1 agent not running, 1 heartbeat expired, 2 threads in error,"
    ), lines
    assert "hosts=4;;;0 threads=8;;;0 " in lines[0] and "unreachable=1;;0;0" in lines[0]
    assert lines[1].startswith("CRITICAL calm: heartbeat ")  # worst first, in inventory order
    assert lines[2] == f"CRITICAL dam-down: damocles RPC not reachable at 127.0.0.1:{closed}"
    # the same error on both damocles workers: one line (issue 10)
    assert re.fullmatch(
        r"WARNING 2 threads on 2 hosts paused on: permanent: No cached parameters found for"
        r" .* \(dam-new, dam-old; longest \d+s\)",
        lines[3],
    ), lines
    stuck = r"stage PC1 for \d+\w+ \(stuck after 0s, --stuck PC1\)"
    assert re.fullmatch(rf"WARNING dam-new #1 \S+ TicketAssigned: {stuck}", lines[4])
    # v0.7 has no elapsed time for a running thread: never judged stuck (--verbose says
    # so); then the per-host summary
    assert lines[5].split() == ["Host", "Threads", "Paused", "Errors", "Heartbeat", "Note"]
