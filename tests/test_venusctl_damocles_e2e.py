"""venusctl against original damocles-workers, end to end, through real sshd.

The worker is tests/damocles_standin.py (the documented API, both result
shapes) bound to 127.0.0.1 and reached only through a direct-tcpip channel of
a real OpenSSH sshd: with `AllowTcpForwarding no` on that sshd the same
inventory fails, so nothing goes around SSH. Each test gets fresh stand-ins
(they keep pause state); the sshd hosts are shared by the module.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import free_loopback_port, run, run_json, write_inventory
from helpers import stop_process
from sshfleet import SshFleet

import venusctl

STANDIN = Path(__file__).with_name("damocles_standin.py")
C2_ERROR = "permanent: No cached parameters found for stacked-proof-of-replication (standin)"


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
    """start(shape) -> port of a fresh stand-in on 127.0.0.1; stopped after the test."""
    processes = []

    def start(shape: str, *options: str) -> int:
        argv = [sys.executable, str(STANDIN), "--port", "0", "--shape", shape, "--root", "/mnt"]
        process = subprocess.Popen(
            [*argv, *options],
            stdout=subprocess.PIPE,
            text=True,
        )
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


def inventory(tmp_path: Path, fleet: SshFleet, *tables: dict) -> Path:
    return write_inventory(
        tmp_path / "inventory.toml",
        list(tables),
        user=fleet.user,
        ssh_config=str(tmp_path / "no-ssh-config"),
        connect_timeout=10,
        command_timeout=20,
    )


def rows_by_name(out: str) -> tuple[list[str], dict[str, list[str]]]:
    header, *lines = out.splitlines()
    rows = {}
    for line in lines:
        cells = re.split(r"\s{2,}", line.strip())
        rows[cells[0]] = cells
    return header.split(), rows


@pytest.fixture
def both(tmp_path, damocles_sshd, standin):
    """An inventory with `now` (current shape) and `old` (2022 shape) behind sshd `dam`."""
    return inventory(
        tmp_path,
        damocles_sshd,
        damocles_table(damocles_sshd, "now", standin("current")),
        damocles_table(damocles_sshd, "old", standin("v2022")),
    )


# -- list and info -----------------------------------------------------------------------------


def test_list_reads_both_shapes_through_the_ssh_channel(both, capsys):
    status, out, err = run(capsys, both, "list", "--wide")
    assert status == 0, err
    headers, rows = rows_by_name(out)
    assert headers == venusctl.LIST_WIDE_HEADERS
    # three threads: #0 paused with its C2 error, #1 running PC1, #2 idle without a task
    # Queued (issue 10): unknown, a damocles-worker does not show its queued pauses
    assert rows["now"][2:] == ["v0.9.0-standin", "3", "1", "1", "-", "1", "0", "1", "0s"]
    # 2022: no Running/Waiting in that API, so none is counted
    assert rows["old"][2:] == ["v0.9.0-standin", "3", "1", "1", "-", "-", "-", "1", "0s"]

    status, document = run_json(capsys, both, "list")
    entry = {host["name"]: host for host in document["hosts"]}["now"]
    assert entry["backend"] == "damocles" and entry["via"] == "direct-tcpip"
    # no heartbeat on damocles: LastPing is the age of this very answer
    assert entry["last_ping"] == 0.0 and entry["expired"] is False and entry["error"] is None


def test_info_shows_both_shapes_in_the_same_columns(both, capsys):
    tables = {}
    for name in ("now", "old"):
        status, out, err = run(capsys, both, "info", name)
        assert status == 0, err
        headers, rows = rows_by_name(out)
        assert headers == venusctl.INFO_HEADERS
        tables[name] = rows
    for rows in tables.values():
        index, loc, sector, paused, elapsed, state, last_error = rows["0"]
        assert (loc, sector, paused, state, last_error) == (
            "/mnt/store1",
            "s-t01000-2",
            "true",
            "C1Done",
            C2_ERROR,
        )
        assert re.fullmatch(r"1[78]s", elapsed), elapsed
        assert rows["1"][2:6] == ["s-t01000-3", "false", "-", "TicketAssigned"]
    assert tables["now"]["2"][2:6] == ["-", "false", "-", "-"]  # no task: job_state ""
    assert tables["old"]["2"][2:6] == ["-", "false", "-", "Empty"]  # 2022 says Empty

    status, out, _ = run(capsys, both, "info", "now", "--wide")
    assert status == 0
    _, rows = rows_by_name(out)
    assert rows["1"][6:9] == ["sealer", "PC1", rows["1"][8]]
    assert re.fullmatch(r"Running\((?:\d+[hms])+\) pc1-0", rows["1"][8]), rows["1"][8]


def test_info_json_is_our_agents_worker_info_for_both_shapes(both, capsys):
    keys = {
        "index",
        "location",
        "plan",
        "job_id",
        "job_state",
        "job_stage",
        "thread_state",
        "state_elapsed",
        "last_error",
        "pause_requested",
    }
    for name, plan in (("now", "sealer"), ("old", None)):
        status, document = run_json(capsys, both, "info", name)
        assert status == 0 and document["backend"] == "damocles"
        first = document["threads"][0]
        assert set(first) == keys and first["plan"] == plan
        assert first["thread_state"]["state"] == "Paused"


# -- pause and resume ----------------------------------------------------------------------------


def info_rows(capsys, path: Path, name: str) -> dict[str, list[str]]:
    status, out, err = run(capsys, path, "info", name)
    assert status == 0, err
    return rows_by_name(out)[1]


def test_pause_reports_damocles_answers_truthfully(both, capsys):
    # a running thread: the pause is queued (damocles stops it after its stage)
    status, out, _ = run(capsys, both, "pause", "now", "1")
    assert status == 0 and out == (
        "now #1: pause queued: it stops after its running stage, which damocles redoes on resume\n"
    )
    # a second pause while the first is still queued: damocles answers false
    status, document = run_json(capsys, both, "pause", "now", "1")
    assert status == 0 and document["ok"] is True
    assert document["note"] == "pause already queued (nothing changed)"
    # an idle thread takes it at once
    status, out, _ = run(capsys, both, "pause", "now", "2")
    assert status == 0 and "paused (an idle thread" in out
    assert info_rows(capsys, both, "now")["2"][3] == "true"


def test_pause_of_a_paused_thread_sends_nothing(both, capsys):
    """damocles would queue a token that re-pauses the thread after the next resume."""
    status, out, _ = run(capsys, both, "pause", "now", "0")
    assert status == 0 and out == "now #0: already paused (nothing sent)\n"
    status, out, _ = run(capsys, both, "resume", "now", "0")
    assert status == 0 and out == "now #0: resumed\n"
    row = info_rows(capsys, both, "now")["0"]
    assert row[3] == "false" and row[6] == "-"  # resumed for good, error cleared


def test_resume_of_a_thread_that_is_not_paused_is_not_paused_exit_1(both, capsys):
    for name in ("now", "old"):
        status, out, err = run(capsys, both, "resume", name, "1")
        assert status == 1 and out == ""
        # issue 10: says exactly what a damocles-worker cannot do about a queued pause
        assert err == (
            f"{name} #1: resume refused: worker #1 is not paused; a damocles-worker can"
            " neither show nor cancel a queued pause: if one is queued, the thread stops at"
            " its next stage boundary\n"
        )
    status, document = run_json(capsys, both, "resume", "now", "1")
    assert status == 1 and document["error"]["code"] == 1001


@pytest.mark.parametrize("name", ["now", "old"])
def test_resume_state_is_checked_against_the_plan_before_sending(both, capsys, name):
    # Sent, current damocles would ignore the name and resume the thread; a name no plan has
    # is refused before any connection (issue 10), with the closest names.
    status, out, err = run(capsys, both, "resume", name, "0", "C1Dnoe")
    assert status == 2 and out == ""
    assert "argument state: unknown state 'C1Dnoe'; did you mean C1Done" in err
    # A state of another plan would abort the task on damocles.
    status, _, err = run(capsys, both, "resume", name, "0", "SnapEncoded")
    assert status == 1 and 'invalid state "SnapEncoded"' in err
    assert info_rows(capsys, both, name)["0"][3] == "true"  # still paused: nothing was sent

    # a case-only difference is normalised (the damocles-worker itself wants the exact name)
    status, out, _ = run(capsys, both, "resume", name, "0", "treedbuilt")
    assert status == 0 and out == f"{name} #0: resumed in state TreeDBuilt\n"
    row = info_rows(capsys, both, name)["0"]
    assert (row[3], row[5]) == ("false", "TreeDBuilt")


def test_a_thread_that_does_not_exist(both, capsys):
    status, _, err = run(capsys, both, "resume", "now", "9")
    assert status == 1 and err == "now #9: resume refused: worker #9 not found\n"
    status, _, err = run(capsys, both, "resume", "now", "9", "Aborted")
    assert status == 1 and err == "now #9: resume refused: worker #9 not found\n"
    status, _, err = run(capsys, both, "pause", "old", "9")
    assert status == 1 and err == "old #9: pause refused: worker #9 not found\n"


def test_a_worker_without_worker_version_is_listed_without_a_version(
    tmp_path, capsys, damocles_sshd, standin
):
    """WorkerVersion answered with -32601 (Method not found): the threads still count."""
    port = standin("v2022", "--without-version")
    path = inventory(tmp_path, damocles_sshd, damocles_table(damocles_sshd, "bare", port))
    status, out, err = run(capsys, path, "list", "--wide")
    assert status == 0, err
    assert rows_by_name(out)[1]["bare"][2:] == ["-", "3", "1", "1", "-", "-", "-", "1", "0s"]


# -- failures ------------------------------------------------------------------------------------


def test_a_closed_rpc_port_is_that_hosts_error_row(tmp_path, capsys, damocles_sshd, standin):
    closed = free_loopback_port()
    path = inventory(
        tmp_path,
        damocles_sshd,
        damocles_table(damocles_sshd, "up", standin("current")),
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


def test_the_rpc_is_reached_only_through_sshd(tmp_path, capsys, damocles_sshd, standin):
    """The same stand-in, behind an sshd that forbids TCP forwarding: refused."""
    path = inventory(
        tmp_path,
        damocles_sshd,
        damocles_table(damocles_sshd, "walled", standin("current"), sshd="notcp"),
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
            damocles_table(damocles_sshd, "dam-now", standin("current")),
            ssh_fleet.host_table("w2"),
            damocles_table(damocles_sshd, "dam-old", standin("v2022")),
        ],
        **ssh_fleet.defaults(),
    )
    status, out, err = run(capsys, path, "list")
    assert status == 0, err
    headers, rows = rows_by_name(out)
    assert list(rows) == ["w1", "dam-now", "w2", "dam-old"]
    assert "Error" not in headers
    assert rows["w1"][2] == "2" and rows["w2"][2] == "2"  # our agents: two threads
    assert rows["dam-now"][2:] == ["3", "1", "1", "1", "0s"]
    assert rows["dam-old"][2:] == ["3", "1", "1", "1", "0s"]
    status, document = run_json(capsys, path, "list")
    via = {host["name"]: (host["backend"], host["via"]) for host in document["hosts"]}
    assert via == {
        "w1": ("venus", "stream"),
        "dam-now": ("damocles", "direct-tcpip"),
        "w2": ("venus", "stream"),
        "dam-old": ("damocles", "direct-tcpip"),
    }


def test_health_judges_damocles_workers_on_their_threads_without_a_heartbeat(
    tmp_path, capsys, ssh_fleet, damocles_sshd, standin
):
    closed = free_loopback_port()
    path = write_inventory(
        tmp_path / "mixed.toml",
        [
            ssh_fleet.host_table("calm"),
            damocles_table(damocles_sshd, "dam-now", standin("current")),
            damocles_table(damocles_sshd, "dam-old", standin("v2022")),
            damocles_table(damocles_sshd, "dam-down", closed),
        ],
        **ssh_fleet.defaults(),
    )
    # --expiration 1ms: only calm has a heartbeat to expire; --stuck PC1=0s:
    # dam-now's running PC1 thread is judged on its thread state's elapsed.
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
        rf"WARNING 2 threads on 2 hosts paused on: {re.escape(C2_ERROR)}"
        r" \(dam-now, dam-old; longest \d+s\)",
        lines[3],
    ), lines
    stuck = r"stage PC1 for \d+\w+ \(stuck after 0s, --stuck PC1\)"
    assert re.fullmatch(rf"WARNING dam-now #1 \S+ TicketAssigned: {stuck}", lines[4])
    # the 2022 API has no elapsed time for a running thread: never judged stuck; then the
    # per-host summary
    assert lines[5].split() == ["Host", "Threads", "Paused", "Errors", "Heartbeat", "Note"]
