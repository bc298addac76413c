"""The connection keeper (issue 18): warm connections between runs, and never a different answer.

A fleet of its own (real sshd on 127.0.0.x at LogLevel VERBOSE, so each log
shows every login and every closed connection; real agents), and per test a
runtime folder of its own ($XDG_RUNTIME_DIR, short: the socket path must fit)
in which the first run starts a real keeper process; every test stops what it
started. venusctl.main runs in-process, or as the installed command where
imports and processes matter.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from agent_helpers import process_alive
from conftest import (
    CALM_AGENT_CONFIG,
    agent_host_table,
    fleet_agent,
    fleet_defaults,
    write_inventory,
)
from damocles_standin import FROZEN, StandinServer, ThreadSpec, Worker, release_of
from helpers import make_user, remove_user, wait_until
from sshfleet import SshFleet

import venusctl

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("isolated_home")]

HOSTS = ("k1", "k2", "krekey", "khang")


class KeeperFleet:
    """sshd hosts with agents, written into inventories; logins counted in their logs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ssh = SshFleet(root / "ssh")
        self.hosts = {name: self.ssh.add_host(name, {"LogLevel": "VERBOSE"}) for name in HOSTS}
        self.down = self.ssh.add_host("kdown")  # never started: connection refused
        self.bastion = self.ssh.add_host("kbastion", {"LogLevel": "VERBOSE"})
        for sshd in (*self.hosts.values(), self.bastion):
            sshd.start()
        self.agents = {
            name: fleet_agent(name, root / "agents" / name, CALM_AGENT_CONFIG).start()
            for name in ("k1", "k2", "krekey")
        }
        self.hang = root / "hang"  # an agent command that never answers (exec transport)
        self.hang.write_text("#!/bin/sh\nexec sleep 30\n")
        self.hang.chmod(0o755)

    def table(self, name: str, **overrides: object) -> dict[str, object]:
        sshd = self.ssh.hosts[[h.name for h in self.ssh.hosts].index(name)]
        return agent_host_table(name, sshd, self.agents.get(name), **overrides)

    def inventory(self, path: Path, *hosts: str | dict, **defaults: object) -> Path:
        tables = [self.table(host) if isinstance(host, str) else host for host in hosts]
        return write_inventory(path, tables, **fleet_defaults(self.ssh, **defaults))

    def logins(self, name: str) -> int:
        return self.log(name).count("Accepted publickey")

    def last_login_port(self, name: str) -> str:
        return re.findall(r"Accepted publickey for \S+ from \S+ port (\d+)", self.log(name))[-1]

    def closed(self, name: str, port: str) -> bool:
        """Has sshd seen the connection from `port` end (closed, or reset)?"""
        ended = rf"(Connection closed by|Read error from remote host) 127\.0\.0\.1 port {port}\b"
        return re.search(ended, self.log(name)) is not None

    def log(self, name: str) -> str:
        sshd = self.bastion if name == "kbastion" else self.hosts[name]
        return sshd.log_path.read_text(errors="replace")

    def stop(self) -> None:
        for agent in self.agents.values():
            agent.stop()
        self.ssh.stop_all()


@pytest.fixture(scope="module")
def fleet():
    root = Path(tempfile.mkdtemp(prefix="vk-", dir="/tmp"))
    keeper_fleet = KeeperFleet(root)
    try:
        yield keeper_fleet
    finally:
        keeper_fleet.stop()
        shutil.rmtree(root, ignore_errors=True)


class Keeper:
    """This test's runtime folder and the keeper in it (started by the runs themselves)."""

    def __init__(self, runtime: Path) -> None:
        self.runtime = runtime
        self.folder = runtime / "venusctl"
        self.socket = self.folder / "keeper.sock"
        self.log = self.folder / "keeper.log"

    def pid(self) -> int | None:
        try:
            text = (self.folder / "keeper.lock").read_text().strip()
        except OSError:
            return None
        if not text or not self.socket.exists():
            return None
        pid = int(text)
        return pid if process_alive(pid) else None

    def info(self) -> dict:
        status, out, err = vc(["keeper", "--json"])
        assert status == 0, err
        return json.loads(out)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        pid = self.pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGCONT)  # a test may have left it stopped
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not process_alive(pid), 15, 0.05, f"keeper {pid} to exit")


@pytest.fixture
def keeper(monkeypatch):
    runtime = Path(tempfile.mkdtemp(prefix="vkr-", dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("VENUSCTL_PERSIST", "5m")
    handle = Keeper(runtime)
    try:
        yield handle
    finally:
        handle.stop()
        shutil.rmtree(runtime, ignore_errors=True)


def vc(argv: list[str], inventory: Path | None = None, env: dict | None = None):
    """venusctl.main in-process, on streams of its own: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    environment = venusctl.Environment(
        stdout=out, stderr=err, environ=dict(os.environ, **(env or {}))
    )
    prefix = ["-i", str(inventory)] if inventory is not None else []
    status = venusctl.main([*prefix, *argv], environment)
    return status, out.getvalue(), err.getvalue()


# -- 1. one login for consecutive runs -------------------------------------------------------


def test_consecutive_runs_reuse_one_connection_per_host(tmp_path, fleet, keeper):
    path = fleet.inventory(tmp_path / "inventory.toml", "k1", "k2")
    before = {name: fleet.logins(name) for name in ("k1", "k2")}
    outputs = []
    for _ in range(3):
        status, out, err = vc(["list"], path)
        assert status == 0, err
        outputs.append(out)
    assert {name: fleet.logins(name) - before[name] for name in before} == {"k1": 1, "k2": 1}
    assert [line.split()[0] for line in outputs[-1].splitlines()] == ["Name", "k1", "k2"]
    info = keeper.info()
    assert info["running"] and info["pid"] == keeper.pid()
    kept = {row["host"]: row for row in info["connections"]}
    assert set(kept) == {"k1", "k2"} and all(row["alive"] for row in kept.values())
    assert all(row["channel"] for row in kept.values())  # the agents' stream channels too
    # --no-persist: this run connects itself (a login), and leaves the keeper alone
    status, _, err = vc(["--no-persist", "list"], path)
    assert status == 0, err
    assert fleet.logins("k1") - before["k1"] == 2
    assert {row["host"] for row in keeper.info()["connections"]} == {"k1", "k2"}


def test_a_warm_run_imports_no_paramiko_and_the_keeper_is_a_detached_process(
    tmp_path, fleet, keeper
):
    path = fleet.inventory(tmp_path / "inventory.toml", "k1")
    assert vc(["list"], path)[0] == 0  # starts the keeper
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "venusctl", "-i", str(path), "list"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[1].startswith("k1 ")
    assert "| json" in done.stderr  # the import list is there
    assert "paramiko" not in done.stderr
    # nor what only a cold run, an error or another command uses (imported where used)
    imported = {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if "|" in line}
    late = {"subprocess", "difflib", "traceback", "hmac", "hashlib"}
    if sys.version_info >= (3, 11):
        late.add("tomlkit")  # Python 3.10 has no tomllib: tomlkit reads the inventory there
    assert not late & imported, sorted(late & imported)
    pid = keeper.pid()
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    parent, session, tty = int(stat[1]), int(stat[3]), int(stat[4])
    assert parent != os.getpid() and session != os.getsid(0) and tty == 0
    assert session != pid  # forked after setsid: it can never get a terminal
    assert oct(keeper.socket.stat().st_mode & 0o777) == "0o600"
    assert oct(keeper.folder.stat().st_mode & 0o777) == "0o700"


# -- 2. the same results, the same exit codes ----------------------------------------------------


VOLATILE = re.compile(r"\d+(?:\.\d+)?(?:ms|h|m|s)(?:\d+(?:\.\d+)?(?:m|s))*|\d+\.\d+")


def normalized(text: str) -> str:
    """Output with durations and ages (which move between two runs) made one word."""
    if text.lstrip().startswith("{"):
        return json.dumps(_without_times(json.loads(text)), sort_keys=True)
    return re.sub(r" +", " ", VOLATILE.sub("T", text))


def _without_times(value):
    volatile = {"last_ping", "age", "elapsed", "state_elapsed", "time", "heartbeat_age"}
    volatile |= {"after"}  # pause --wait: when it was seen paused
    if isinstance(value, dict):
        return {k: ("T" if k in volatile else _without_times(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_times(item) for item in value]
    if isinstance(value, str):
        return VOLATILE.sub("T", value)
    return value


COMMANDS = [
    ["list"],
    ["--json", "list"],
    ["list", "--wide"],
    ["threads"],
    ["--json", "threads", "--paused"],
    ["info", "k1"],
    ["--json", "info", "k1"],
    ["info", "kdown"],
    ["--json", "info", "kdown"],
    ["pause", "k1", "0"],  # paused already (the calm agent's #0 is paused below)
    ["--json", "pause", "kdown", "0"],
    ["resume", "k1", "9"],  # no such thread: the agent's refusal
    ["--json", "resume", "k1", "1"],  # not paused: refused (nothing queued)
    ["pause", "-l", "k1", "--paused", "--dry-run"],
    ["--json", "resume", "-l", "k*", "--state", "Empty", "--yes"],  # matches nothing
    ["drain", "k1", "--paused", "--timeout", "5s"],
    ["--json", "drain", "-l", "k1,kdown", "--paused", "--timeout", "5s"],
    ["health", "-l", "k1"],
    ["--json", "health"],
    # issue 19's: stage logs, pause --wait, a resume that ends a sector refused without --force
    ["logs", "k1", "1"],
    ["--json", "logs", "k2", "0", "--all"],
    ["logs", "kdown", "0"],
    ["pause", "k1", "0", "--wait", "2s"],
    ["--json", "pause", "k1", "0", "--wait", "2s"],
    ["resume", "k1", "0", "Aborted"],
    # issue 15's: a sector nobody has, a thread's history, the stage statistics
    ["sector", "10000:999"],
    ["--json", "sector", "s-t010000-999"],
    ["history", "k1", "1"],
    ["--json", "history", "k2", "0", "--limit", "3"],
    ["history", "kdown", "0"],
    ["stats", "--by-host"],
    ["--json", "stats", "-l", "k1,kdown"],
]


@pytest.mark.slow
def test_every_command_says_the_same_with_and_without_the_keeper(tmp_path, fleet, keeper):
    # Nothing moves while they are compared: k1 #0 paused, the other threads in their hour-long
    # chain waits.
    fleet.agents["k1"].call("WorkerPause", 0)
    for name, still in (("k1", {0: "Paused", 1: "Waiting"}), ("k2", {0: "Waiting", 1: "Waiting"})):
        fleet.agents[name].wait_for(
            lambda infos, still=still: all(
                infos[index]["thread_state"]["state"] == state for index, state in still.items()
            ),
            timeout=30,
            what=f"{name} settled",
        )
    path = fleet.inventory(tmp_path / "inventory.toml", "k1", "k2", fleet.table("kdown"))
    assert vc(["list"], path)[0] == 1  # warm: kdown is down
    for argv in COMMANDS:
        cold = vc(["--no-persist", *argv], path)
        logins = fleet.logins("k1"), fleet.logins("k2")
        warm = vc(argv, path)
        assert (fleet.logins("k1"), fleet.logins("k2")) == logins, argv  # no login: kept
        assert warm[0] == cold[0], (argv, cold, warm)
        assert normalized(warm[1]) == normalized(cold[1]), (argv, cold[1], warm[1])
        assert normalized(warm[2]) == normalized(cold[2]), (argv, cold[2], warm[2])
    assert {row["host"] for row in keeper.info()["connections"]} == {"k1", "k2"}


def test_a_damocles_workers_kept_channel_carries_every_warm_status(tmp_path, fleet, keeper):
    threads = [
        ThreadSpec("/mnt/err", "sealer", "C1Done", 2, "paused", 17, "permanent: no params"),
        ThreadSpec("/mnt/pc1", "sealer", "TicketAssigned", 3, "run", 100),
    ]
    server = StandinServer(Worker(release_of("v0.13.0"), threads, replace(FROZEN))).start()
    try:
        sshd = fleet.table("k1")
        table = {"name": "kdam", "address": sshd["address"], "port": sshd["port"]}
        table.update(backend="damocles", rpc=f"127.0.0.1:{server.port}")
        path = fleet.inventory(tmp_path / "inventory.toml", table)
        cold = vc(["--no-persist", "list"], path)
        assert vc(["list"], path)[0] == 0  # starts the keeper, which opens the channel
        channels, logins = server.accepted, fleet.logins("k1")
        warm = [vc(argv, path) for argv in (["list"], ["threads", "-l", "kdam"], ["list"])]
    finally:
        server.close()
    # Each warm status was sent ahead on the one channel the keeper kept: no new channel,
    # no new login, and the answers of a cold run.
    assert (server.accepted, fleet.logins("k1")) == (channels, logins)
    assert warm[0][0] == cold[0] == 0 and normalized(warm[0][1]) == normalized(cold[1])
    assert normalized(warm[2][1]) == normalized(cold[1])
    assert "/mnt/err" in warm[1][1] and "C1Done" in warm[1][1], warm[1]


def test_debug_shows_the_keepers_traceback_of_a_failed_host(tmp_path, fleet, keeper):
    path = fleet.inventory(tmp_path / "inventory.toml", "k1", fleet.table("kdown"))
    assert vc(["list"], path)[0] == 1  # warm
    status, _, err = vc(["--debug", "list"], path)
    assert status == 1
    trace = err.split("--- kdown: traceback\n", 1)[1]
    assert trace.startswith("Traceback (most recent call last):")
    assert "in keeper" not in trace and "in job" in trace  # raised in the keeper's job
    assert trace.rstrip().endswith("venusctl.ConnectionRefused: connection refused")


def test_health_uses_a_live_keeper_and_never_starts_one(tmp_path, fleet, keeper):
    path = fleet.inventory(tmp_path / "inventory.toml", "k1")
    logins = fleet.logins("k1")
    status, out, _ = vc(["health"], path)
    assert out.startswith("VENUS ") and status in (0, 1)
    assert keeper.pid() is None  # cron's health never starts a keeper
    assert fleet.logins("k1") == logins + 1
    assert vc(["list"], path)[0] == 0  # now one is alive
    assert vc(["health"], path)[0] == status
    assert fleet.logins("k1") == logins + 2  # the list's; health used its connection


def tab(path: Path, line: str) -> list[str]:
    """The thread indexes a TAB at the end of `line` offers (fish's form: value TAB text)."""
    out = io.StringIO()
    env = venusctl.Environment(stdout=out, environ=dict(os.environ, VENUSCTL_INVENTORY=str(path)))
    words, current, _ = venusctl.split_line(line)
    assert venusctl.main(["__complete", "fish", "words", "--", *words, current], env) == 0
    offered = [candidate.split("\t")[0] for candidate in out.getvalue().splitlines()[1:]]
    return [value for value in offered if not value.startswith("-")]  # options come too


def test_a_tab_asks_thread_indexes_through_a_live_keeper_and_never_starts_one(
    tmp_path, fleet, keeper
):
    path = fleet.inventory(tmp_path / "inventory.toml", "k1")
    logins = fleet.logins("k1")
    assert tab(path, "venusctl pause k1 ") == ["0", "1"]  # asked of k1 itself
    assert fleet.logins("k1") == logins + 1
    assert keeper.pid() is None and not keeper.folder.exists()  # nothing left behind
    assert vc(["list"], path)[0] == 0  # now one is alive
    assert tab(path, "venusctl pause k1 ") == ["0", "1"]
    assert fleet.logins("k1") == logins + 2  # the list's; the TAB used its connection
    assert tab(path, "venusctl --no-persist resume k1 ") == ["0", "1"]
    assert fleet.logins("k1") == logins + 3


# -- 3. safe by construction -----------------------------------------------------------------


def test_a_changed_inventory_entry_drops_its_connection(tmp_path, fleet, keeper):
    path = tmp_path / "inventory.toml"
    fleet.inventory(path, "k1")
    assert vc(["list"], path)[0] == 0
    logins = fleet.logins("k1")
    port = fleet.last_login_port("k1")
    first = keeper.info()["connections"]
    # another host added: k1 is reached as before, its connection stays
    fleet.inventory(path, "k1", "k2")
    assert vc(["list"], path)[0] == 0
    assert fleet.logins("k1") == logins
    # k1's own entry changed (a longer command timeout): a new connection, the old one closed
    fleet.inventory(path, fleet.table("k1", command_timeout=21), "k2")
    assert vc(["list"], path)[0] == 0
    assert fleet.logins("k1") == logins + 1
    rows = [row for row in keeper.info()["connections"] if row["host"] == "k1"]
    assert len(rows) == 1 and rows[0]["connected"] > first[0]["connected"]
    wait_until(lambda: fleet.closed("k1", port), 10, 0.05, "the old connection to close")
    assert "reached another way now: old connection dropped" in keeper.log_text()


def test_a_changed_known_hosts_file_drops_the_connections_checked_against_it(
    tmp_path, fleet, keeper
):
    known = tmp_path / "known_hosts"
    shutil.copy(fleet.ssh.known_hosts, known)
    path = fleet.inventory(tmp_path / "inventory.toml", "k1", known_hosts=str(known))
    assert vc(["list"], path)[0] == 0
    logins = fleet.logins("k1")
    assert vc(["list"], path)[0] == 0
    assert fleet.logins("k1") == logins
    with open(known, "a") as text:
        text.write("# a line added: the file is not what the kept connection was checked against\n")
    assert vc(["list"], path)[0] == 0
    assert fleet.logins("k1") == logins + 1
    assert f"{known} changed" in keeper.log_text()


def test_a_host_key_changed_between_runs_is_refused_as_without_the_keeper(tmp_path, fleet, keeper):
    sshd = fleet.hosts["krekey"]
    known = tmp_path / "known_hosts"
    known.write_text(sshd.known_hosts_line() + "\n")  # the key it has now, and no other
    path = fleet.inventory(tmp_path / "inventory.toml", "krekey", known_hosts=str(known))
    assert vc(["list"], path)[0] == 0
    assert vc(["list"], path)[0] == 0  # warm
    # The host is reinstalled: a new key, and its sessions (the kept one too) are gone.
    sessions = _children(sshd._process.pid)
    assert sessions  # the kept connection
    sshd.regenerate_host_key()
    for pid in sessions:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)

    def gone() -> bool:
        return not any(process_alive(pid) for pid in sessions)

    wait_until(gone, 10, 0.05, "old sessions gone")
    warm = vc(["--json", "list"], path)
    cold = vc(["--no-persist", "--json", "list"], path)
    assert warm[0] == cold[0] == 1
    row = json.loads(warm[1])["hosts"][0]
    assert row["error"]["kind"] == "host-key-mismatch", row
    assert normalized(warm[1]) == normalized(cold[1])
    # and once known_hosts holds the new key, the next run connects (the file changed)
    known.write_text(sshd.known_hosts_line() + "\n")
    assert vc(["list"], path)[0] == 0


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (an sshd's connections)."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            lines = status.read_text().splitlines()
        except OSError:
            continue
        parent = [line.split()[1] for line in lines if line.startswith("PPid:")]
        if parent and int(parent[0]) == pid:
            found.append(int(status.parent.name))
    return found


def test_a_host_that_went_down_between_runs_is_an_error_row_at_once(tmp_path, fleet, keeper):
    path = fleet.inventory(tmp_path / "inventory.toml", "k2")
    assert vc(["list"], path)[0] == 0
    fleet.agents["k2"].stop()
    try:
        started = time.monotonic()
        warm = vc(["--json", "list"], path)
        assert time.monotonic() - started < 5
        cold = vc(["--no-persist", "--json", "list"], path)
        assert warm[0] == cold[0] == 1
        assert normalized(warm[1]) == normalized(cold[1])
        assert json.loads(warm[1])["hosts"][0]["error"]["kind"] == "agent-not-running"
    finally:
        fleet.agents["k2"].start()


def test_a_keeper_of_another_venusctl_is_replaced(tmp_path, fleet, keeper):
    """An old keeper (here a stand-in speaking the protocol, as one from before an upgrade)
    is asked to stop, and a keeper of this venusctl answers the same run."""
    keeper.folder.mkdir(mode=0o700)
    stand_in = OldKeeper(keeper.folder)
    path = fleet.inventory(tmp_path / "inventory.toml", "k1")
    status, out, err = vc(["list"], path)
    assert status == 0, err
    assert err == ""
    assert stand_in.stopped.wait(5)
    assert stand_in.asked == {
        "op": "stop",
        "reason": f"replaced by venusctl {venusctl.__version__}",
    }
    assert keeper.info()["code"] == venusctl.keeper_code()


class OldKeeper:
    """A keeper of another version on the socket: it says hello, and stops when asked."""

    def __init__(self, folder: Path) -> None:
        import fcntl

        self.lock = os.open(folder / "keeper.lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.lock, fcntl.LOCK_EX)
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.path = folder / "keeper.sock"
        self.server.bind(str(self.path))
        self.server.listen(4)
        self.asked = None
        self.stopped = threading.Event()
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            conn, _ = self.server.accept()
            with conn, conn.makefile("rwb") as stream:
                stream.readline()
                stream.write(b'{"keeper": 1, "version": "0.0.9", "code": "0ld", "pid": 1}\n')
                stream.flush()
                request = stream.readline()
                if request:
                    self.asked = json.loads(request)
                    stream.write(b'{"stopping": true}\n')
                    stream.flush()
                    break
        self.server.close()
        self.path.unlink()
        os.close(self.lock)
        self.stopped.set()


# -- 4. idle exit, and a keeper that fails never holds a run up ---------------------------------


def test_the_keeper_ends_after_persist_without_a_request(tmp_path, fleet, keeper, monkeypatch):
    monkeypatch.setenv("VENUSCTL_PERSIST", "2s")
    path = fleet.inventory(tmp_path / "inventory.toml", "k1")
    assert vc(["list"], path)[0] == 0
    pid = keeper.pid()
    assert pid is not None
    port = fleet.last_login_port("k1")
    wait_until(lambda: not process_alive(pid), 10, 0.1, "the idle keeper to exit")
    assert not keeper.socket.exists()
    assert "exiting: no request for 2s" in keeper.log_text()
    assert fleet.closed("k1", port)  # its connection closed first
    # persist 0 in the inventory: no keeper at all
    monkeypatch.delenv("VENUSCTL_PERSIST")
    quiet = tmp_path / "quiet.toml"
    quiet.write_text(path.read_text().replace("[defaults]", '[defaults]\npersist = "0"'))
    assert vc(["list"], quiet)[0] == 0
    assert keeper.pid() is None


def test_a_keeper_killed_mid_run_leaves_the_run_to_finish_itself(tmp_path, fleet, keeper):
    hang = fleet.table("khang", transport="exec", agent=str(fleet.hang), command_timeout=3)
    path = fleet.inventory(tmp_path / "inventory.toml", "k1", hang)
    assert vc(["list"], path)[0] == 1  # warm (khang times out)
    result = {}
    run = threading.Thread(target=lambda: result.update(run=vc(["--json", "list"], path)))
    started = time.monotonic()
    run.start()
    wait_until(lambda: "khang" in json.dumps(keeper.info()["connections"]), 5)
    time.sleep(0.5)  # k1 has answered; khang's exec sleeps in the keeper
    os.kill(keeper.pid(), signal.SIGKILL)
    run.join(30)
    took = time.monotonic() - started
    status, out, err = result["run"]
    assert status == 1
    hosts = {entry["name"]: entry for entry in json.loads(out)["hosts"]}
    assert hosts["k1"]["error"] is None and hosts["k1"]["summary"]["Threads"] == 2
    assert hosts["khang"]["error"]["kind"] == "timeout"  # asked again by the run itself
    assert "the keeper ended before it answered every host; connecting directly" in err
    assert took < 3 + 13 + 5  # its own budget after the keeper's, never stuck


def test_a_wedged_keeper_is_passed_by_within_a_second(tmp_path, fleet, keeper):
    path = fleet.inventory(tmp_path / "inventory.toml", "k1")
    assert vc(["list"], path)[0] == 0
    pid = keeper.pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        logins = fleet.logins("k1")
        started = time.monotonic()
        status, out, err = vc(["list"], path)
        assert status == 0 and out.splitlines()[1].startswith("k1 ")
        assert time.monotonic() - started < venusctl.KEEPER_HELLO_TIMEOUT + 10
        assert "connection keeper not used: the keeper did not answer in 0.5s" in err
        assert fleet.logins("k1") == logins + 1  # connected itself
    finally:
        os.kill(pid, signal.SIGCONT)


def test_an_action_under_way_in_a_lost_keeper_is_never_sent_again(tmp_path, fleet, keeper):
    hang = fleet.table("khang", transport="exec", agent=str(fleet.hang), command_timeout=5)
    path = fleet.inventory(tmp_path / "inventory.toml", hang)
    vc(["list"], path)  # warm
    result = {}
    logins = fleet.logins("khang")
    run = threading.Thread(target=lambda: result.update(run=vc(["pause", "khang", "0"], path)))
    run.start()
    time.sleep(1.5)  # the keeper runs the CLI's pause (which sleeps)
    os.kill(keeper.pid(), signal.SIGKILL)
    run.join(30)
    status, out, err = result["run"]
    assert status == 1 and out == ""
    assert err.splitlines() == [
        "venusctl: connection keeper not used: the keeper ended before it answered every"
        " host; connecting directly",
        "khang #0: pause: no reply (no reply: the connection keeper ended while it was under"
        " way) \u2014 it may still take effect; check with `venusctl info khang`",
    ]
    assert fleet.logins("khang") == logins  # never sent again by the run itself


# -- 5. another user ----------------------------------------------------------------------------


@pytest.fixture
def other_user():
    name = make_user("vk")
    try:
        yield name
    finally:
        remove_user(name)


PEER = """
import json, socket, sys
sock = socket.socket(socket.AF_UNIX)
try:
    sock.connect(sys.argv[1])
except OSError as error:
    print(json.dumps({"connect": error.strerror}))
    sys.exit(0)
sock.sendall(b'{"keeper": 1, "version": "0.1.0", "code": "x"}\\n{"op": "info"}\\n')
print(json.dumps({"answer": sock.makefile().readline().strip()}))
"""


def test_another_user_cannot_use_the_keeper(tmp_path, fleet, keeper, other_user):
    path = fleet.inventory(tmp_path / "inventory.toml", "k1")
    assert vc(["list"], path)[0] == 0

    def as_other_user() -> dict:
        done = subprocess.run(
            ["runuser", "-u", other_user, "--", "/usr/bin/python3", "-c", PEER, str(keeper.socket)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    # the folder (0700) and the socket (0600) keep the user out
    assert as_other_user() == {"connect": "Permission denied"}
    # opened up by mistake: the keeper itself refuses the peer's uid (SO_PEERCRED)
    keeper.runtime.chmod(0o755)
    keeper.folder.chmod(0o755)
    keeper.socket.chmod(0o666)
    answer = as_other_user()["answer"]
    assert json.loads(answer) == {"error": f"refused: this keeper serves uid {os.getuid()} only"}
    uid = int(subprocess.run(["id", "-u", other_user], capture_output=True, text=True).stdout)
    assert f"refused a connection from uid {uid}" in keeper.log_text()
    assert vc(["list"], path)[0] == 0  # the keeper goes on serving its user


def test_a_keeper_folder_others_can_write_is_refused(tmp_path, fleet, keeper):
    keeper.folder.mkdir(mode=0o700)
    keeper.folder.chmod(0o777)
    path = fleet.inventory(tmp_path / "inventory.toml", "k1")
    status, out, err = vc(["list"], path)
    assert status == 0 and out.splitlines()[1].startswith("k1 ")
    assert err == (
        f"venusctl: connection keeper not used: keeper folder {keeper.folder} is writable by"
        " others (mode 0o777); connecting directly\n"
    )
    assert not keeper.socket.exists()


# -- 6. jump hosts ------------------------------------------------------------------------------


def test_the_bastion_connection_is_kept_too(tmp_path, fleet, keeper):
    bastion = fleet.bastion
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host kbastion\n  HostName {bastion.address}\n  Port {bastion.port}\n"
        f"  User {fleet.ssh.user}\n  IdentityFile {fleet.ssh.client_key}\n"
        f"  UserKnownHostsFile {fleet.ssh.known_hosts}\n  IdentitiesOnly yes\n"
    )
    path = fleet.inventory(
        tmp_path / "inventory.toml", "k1", "k2", ssh_config=str(config), jump="kbastion"
    )
    logins = fleet.logins("kbastion")
    for _ in range(2):
        status, out, err = vc(["--json", "list"], path)
        assert status == 0, err
        assert all(entry["jump"] for entry in json.loads(out)["hosts"])
    assert fleet.logins("kbastion") == logins + 1
    info = keeper.info()
    assert [hop["host"] for hop in info["jumps"]] == [
        f"kbastion ({bastion.address}:{bastion.port})"
    ]


def test_the_agents_record_the_actor_of_the_run_that_asked_not_of_the_keepers_starter(
    tmp_path, fleet, keeper
):
    """The keeper's environment is that of the run that started it (here a sudo of
    'starter'); a later run's pause and resume are recorded with that run's own actor."""
    path = fleet.inventory(tmp_path / "inventory.toml", "k2")
    assert vc(["list"], path, env={"SUDO_USER": "starter"})[0] == 0  # starts the keeper
    assert keeper.pid() is not None
    for argv in (["pause", "k2", "1"], ["resume", "k2", "1"]):
        status, _, err = vc(argv, path)
        assert status == 0, err
    status, out, err = vc(["--json", "history", "k2", "1", "--limit", "0"], path)
    assert status == 0, err
    asked = [e for e in json.loads(out)["entries"] if e["kind"] in ("pause_request", "resume")]
    actors = {entry["by"]["actor"] for entry in asked[-2:]}
    assert actors == {venusctl.control_actor()}
    assert not venusctl.control_actor().startswith("starter@")
