"""No run can hang: one deadline per host for its whole exchange, --deadline for the run.

Real processes that never finish their part: an agent socket that sends its HTTP
header then one byte every 2 s, an ssh-agent that never answers (SIGSTOPped), an
sshd that never speaks (SIGSTOPped), an agent command that sleeps. Each ends as
one error row within its deadline while the other hosts answer.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from agent_helpers import short_tmp
from conftest import run, run_json, write_inventory
from sshfleet import SshFleet

import venusctl

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("isolated_home")]

SLACK = 2.5  # start-up, imports and the good hosts' own work on a loaded 2-core machine


def rows(document) -> dict:
    return {entry["name"]: entry["error"] for entry in document["hosts"]}


@pytest.fixture
def short_dir():
    """A folder with a short path: a Unix socket path must fit in 108 bytes."""
    with short_tmp() as folder:
        yield folder


class TricklingAgent:
    """An agent socket that answers every request with an HTTP header promising 1000
    bytes, then sends one byte every 2 s: a fresh timeout per read would never end."""

    def __init__(self, path: Path) -> None:
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(8)
        self.stopped = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._trickle, args=(connection,), daemon=True).start()

    def _trickle(self, connection: socket.socket) -> None:
        with connection:
            try:
                connection.recv(65536)
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
                while not self.stopped.wait(2.0):
                    connection.sendall(b" ")
            except OSError:
                return

    def stop(self) -> None:
        self.stopped.set()
        self.server.close()


def test_an_agent_that_trickles_its_reply_ends_at_the_command_deadline(
    tmp_path, capsys, ssh_fleet, short_dir
):
    trickle = TricklingAgent(short_dir / "trickle.sock")
    try:
        tables = [
            ssh_fleet.host_table(
                "w1",
                name="trickle",
                socket=str(short_dir / "trickle.sock"),
                transport="stream",
                command_timeout=3,
            ),
            ssh_fleet.host_table("w2"),
        ]
        started = time.monotonic()
        status, document = run_json(capsys, ssh_fleet.inventory(tmp_path, *tables), "list")
        elapsed = time.monotonic() - started
    finally:
        trickle.stop()
    assert status == 1
    assert rows(document) == {
        "trickle": {"kind": "timeout", "message": "timeout after 3s (waiting for the agent)"},
        "w2": None,
    }
    assert 3 <= elapsed < 3 + SLACK


def _accepts(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
        return True


@pytest.fixture
def stopped_ssh_agent(short_dir, ssh_fleet):
    """A real ssh-agent holding the fleet's key, then SIGSTOPped: it accepts, never answers."""
    sock = short_dir / "agent.sock"
    process = subprocess.Popen(
        ["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        # The socket file appears at bind(), before listen(): wait until it accepts.
        deadline = time.monotonic() + 10
        while not _accepts(sock) and time.monotonic() < deadline:
            time.sleep(0.02)
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        subprocess.run(["ssh-add", "-q", str(ssh_fleet.ssh.client_key)], env=env, check=True)
        os.kill(process.pid, signal.SIGSTOP)
        yield sock
    finally:
        os.kill(process.pid, signal.SIGCONT)
        process.terminate()
        process.wait(10)


def test_an_ssh_agent_that_never_answers_ends_at_the_connect_deadline(
    tmp_path, capsys, ssh_fleet, stopped_ssh_agent
):
    w1 = ssh_fleet.hosts["w1"]
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host {w1.address}\n  IdentityAgent {stopped_ssh_agent}\nHost *\n  IdentityAgent none\n"
    )
    tables = [
        ssh_fleet.host_table("w1", connect_timeout=2),
        ssh_fleet.host_table("w2"),
    ]
    path = ssh_fleet.inventory(tmp_path, *tables, ssh_config=str(config))
    started = time.monotonic()
    status, document = run_json(capsys, path, "list")
    elapsed = time.monotonic() - started
    assert status == 1
    assert rows(document) == {
        "w1": {
            "kind": "timeout",
            "message": f"timeout after 2s (connect: ssh-agent {stopped_ssh_agent} did not answer)",
        },
        "w2": None,
    }
    assert 2 <= elapsed < 2 + SLACK


def test_an_sshd_that_never_speaks_ends_at_the_connect_deadline(tmp_path, capsys, ssh_fleet):
    fleet = SshFleet(tmp_path / "ssh")
    frozen = fleet.add_host("frozen")
    frozen.start()
    os.kill(frozen._process.pid, signal.SIGSTOP)  # the kernel still accepts its connections
    try:
        agent = ssh_fleet.agents["w1"]
        tables = [
            {
                "name": "frozen",
                "address": frozen.address,
                "port": frozen.port,
                "connect_timeout": 2,
                "config": str(agent.config),
                "socket": str(agent.socket),
            },
            ssh_fleet.host_table("w2"),
        ]
        path = ssh_fleet.inventory(tmp_path, *tables)
        started = time.monotonic()
        status, document = run_json(capsys, path, "list")
        elapsed = time.monotonic() - started
        # ssh_config's ConnectTimeout, where the inventory sets none
        del tables[0]["connect_timeout"]
        config = tmp_path / "ssh_config"
        config.write_text(f"Host {frozen.address}\n  ConnectTimeout 1\n")
        defaults = ssh_fleet.defaults(ssh_config=str(config))
        del defaults["connect_timeout"]
        by_config = write_inventory(tmp_path / "by-config.toml", tables, **defaults)
        started = time.monotonic()
        _, configured = run_json(capsys, by_config, "list")
        configured_elapsed = time.monotonic() - started
    finally:
        os.kill(frozen._process.pid, signal.SIGCONT)
        fleet.stop_all()
    assert status == 1
    assert rows(document) == {
        "frozen": {"kind": "timeout", "message": "timeout after 2s (connect: SSH handshake)"},
        "w2": None,
    }
    assert 2 <= elapsed < 2 + SLACK
    assert rows(configured)["frozen"]["message"] == "timeout after 1s (connect: SSH handshake)"
    assert rows(configured)["w2"] is None and configured_elapsed < 1 + SLACK


COMMANDS = {
    "list": ["list"],
    "threads": ["threads"],
    "info": ["info", "hung"],
    "pause": ["pause", "hung", "0"],
    "resume": ["resume", "hung", "0"],
    "bulk pause": ["pause", "-l", "hung", "--yes"],
    "drain": ["drain", "hung"],
    "health": ["health"],
    "sector": ["sector", "1000:2"],
    "history": ["history", "hung", "0"],
    "stats": ["stats"],
    "logs": ["logs", "hung", "0"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_deadline_ends_every_command_in_time(tmp_path, capsys, ssh_fleet, command):
    """A host whose agent command sleeps 30 s, inside its own 35 s budget: --deadline 2s
    ends the run at 2 s all the same, that host's row saying so."""
    hang = str(ssh_fleet.scripts["hang"])
    tables = [
        ssh_fleet.host_table("w2", name="hung", transport="exec", agent=hang, command_timeout=30),
        ssh_fleet.host_table("w1"),
    ]
    path = ssh_fleet.inventory(tmp_path, *tables)
    started = time.monotonic()
    status, out, err = run(capsys, path, "--deadline", "2s", *COMMANDS[command])
    elapsed = time.monotonic() - started
    assert elapsed < 2 + SLACK, (out, err)
    if command == "health":  # the monitoring plugin's UNKNOWN, with its own wording
        assert status == 3 and out.startswith("VENUS UNKNOWN"), out
    else:
        assert status == 1, out + err
        assert "no answer before the deadline of 2s" in out + err
    if command in ("list", "threads"):
        assert "w1" in out  # the good host answered


def test_a_job_that_outlives_its_budget_is_given_up_on_and_the_others_answer():
    """The fan-out's own bound: whatever a job waits on, its row is back at its budget."""
    hosts = venusctl.parse_inventory(
        '[[host]]\nname = "slow"\naddress = "10.0.0.1"\n[[host]]\nname = "quick"\n'
        'address = "10.0.0.2"\n',
        Path("inventory.toml"),
    ).hosts
    late = []

    def job(host):
        if host.name == "slow":
            time.sleep(5)  # ignores every deadline
        return host.name

    started = time.monotonic()
    outcomes = venusctl.fan_out(hosts, job, 10, budget=lambda host: 0.5, on_late=late.append)
    elapsed = time.monotonic() - started
    assert outcomes["quick"] == "quick"
    assert isinstance(outcomes["slow"], venusctl.HostTimeout)
    assert str(outcomes["slow"]) == (
        "timeout after 0.5s (connect_timeout + command_timeout: no answer)"
    )
    assert [host.name for host in late] == ["slow"]
    assert elapsed < 0.5 + venusctl.LATE_GRACE + 0.5
