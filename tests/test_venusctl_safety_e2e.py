"""Issue 10 end to end: real agents behind real sshd, real pseudo-terminals, a real
non-root SSH user.

- worker text: an agent whose thread fails with an error holding `ESC ] 0;...BEL`,
  `ESC [2J`, newlines and a `|` (its mock fault message), read through sshd; what
  reaches a pseudo-terminal must be visible escapes, never the controls themselves;
- tables cut to the terminal's width, whole with --full or into a pipe;
- health read as Nagios reads it (tests/nagios.py);
- pause outcomes against the real daemon: a queued pause shown and taken back by
  resume (stream and exec), drain interrupted with SIGINT cancelling what it queued,
  a pause whose reply never comes;
- the exec fallback as the README's non-root `user` sees it, with both causes named.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import termios
import threading
import time
from pathlib import Path

import nagios
import pytest
from conftest import (
    VENUSCTL_COMMAND,
    WORKER_TABLE,
    fleet_agent,
    fleet_defaults,
    run,
    run_json,
    write_inventory,
)
from helpers import REPO, Agent, make_user, remove_user, stop_process, wait_until
from sshfleet import SshFleet

import venusctl

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("isolated_home")]

# What a hostile or broken worker could put in an error: retitle the terminal, clear the
# screen, start new lines (in a table, a plugin's long output, a mail), a plugin's '|'.
NASTY = "no params \x1b]0;owned\x07 then \x1b[2J cleared | piped\nsecond line\r\x9b31m"
NASTY_TOML = json.dumps(NASTY)  # a TOML basic string takes JSON's escapes

NASTY_CONFIG = (
    WORKER_TABLE
    + """

[sealing]
miner = 40000
max_retries = 0
seal_interval = "100ms"

[[sealing_thread]]
location = "{dir}/store1"

[processors]
kind = "mock"

[processors.mock]
duration = "50ms"
wait_duration = "50ms"

[[processors.mock.faults]]
stage = "PC1"
level = "permanent"
message = """
    + NASTY_TOML.replace("{", "{{").replace("}", "}}")
    + "\n"
)


@pytest.fixture(scope="module")
def nasty(ssh_fleet, tmp_path_factory):
    """An agent whose one thread pauses on the nasty error, reached through w1's sshd."""
    agent = fleet_agent("nasty", Path(tempfile.mkdtemp(prefix="vcn-", dir="/tmp")), NASTY_CONFIG)
    agent.start()
    try:
        agent.wait_for(lambda infos: infos[0]["last_error"], 15, "the nasty error")
        yield ssh_fleet.host_table(
            "w1", name="nasty", config=str(agent.config), socket=str(agent.socket)
        )
    finally:
        agent.stop()
        shutil.rmtree(agent.folder, ignore_errors=True)


def on_pty(inventory: Path, *argv: str, columns: int = 200, env: dict | None = None):
    """The console script with stdout and stderr on a real pseudo-terminal `columns` wide:
    (exit status, everything the terminal received, as bytes)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    environment = {k: v for k, v in (env or os.environ).items() if k not in ("COLUMNS", "LINES")}
    process = subprocess.Popen(
        [VENUSCTL_COMMAND, "-i", str(inventory), *argv],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        env=environment,
        close_fds=True,
    )
    os.close(slave)
    shown = b""
    try:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            shown += chunk
        status = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
        os.close(master)
    return status, shown


def assert_no_control_but_layout(shown: bytes) -> str:
    """The terminal got no ESC, BEL, CSI or other control but its line ends (and none of
    the worker's carriage returns: the pty turns each \\n into \\r\\n, nothing else).
    venusctl's own `12/30 hosts` progress on stderr (erased by `\\r ESC[K`) is taken out first."""
    text = re.sub(r"\r\d+/\d+ hosts", "", shown.decode()).replace("\r\x1b[K", "")
    # venusctl's own colours on a terminal (issue 19: bold, red, yellow, reset) go too;
    # the worker's ESC [2J, ESC ] ... BEL and C1 CSI in the nasty text are not among them
    text = re.sub(r"\x1b\[(?:0|1|31|33)m", "", text)
    assert "\x1b" not in text and "\x07" not in text and "\x9b" not in text, repr(text)
    lines = text.replace("\r\n", "\n")
    assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]", lines), repr(lines)
    return lines


VISIBLE = r"no params \x1b]0;owned\x07 then \x1b[2J cleared | piped\nsecond line\r\x9b31m"


# -- 5. worker text reaches a terminal as visible escapes ------------------------------------


def test_a_nasty_error_reaches_a_terminal_as_visible_escapes(tmp_path, ssh_fleet, nasty):
    path = ssh_fleet.inventory(tmp_path, nasty, ssh_fleet.host_table("w2"))
    for argv in (["info", "nasty", "--full"], ["threads", "--errors", "--wide", "--full"]):
        status, shown = on_pty(path, *argv, columns=400)
        assert status == 0, shown
        lines = assert_no_control_but_layout(shown)
        (row,) = [line for line in lines.splitlines() if "owned" in line]
        assert row.endswith(VISIBLE), row  # LastErr, the last column, one line
    # health: the plugin lines and the per-host summary, the cron mail body
    status, shown = on_pty(path, "health", "-l", "nasty")
    assert status == 1
    lines = assert_no_control_but_layout(shown)
    assert VISIBLE.replace("|", r"\x7c") in lines
    # the action lines quote the agent: `resume` of the thread is accepted (and it fails
    # again at once); the refusal of a bad one is the agent's own text, escaped too
    status, shown = on_pty(path, "pause", "nasty", "7")
    assert status == 1 and b"nasty #7: pause refused: worker #7 not found" in shown
    # --json keeps the exact text
    status, document = run_json_console(path, "info", "nasty")
    assert document["threads"][0]["last_error"] == f"permanent: {NASTY}"


def run_json_console(path: Path, *argv: str):
    done = subprocess.run(
        [VENUSCTL_COMMAND, "-i", str(path), *argv, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, json.loads(done.stdout)


def test_health_of_the_real_fleet_is_valid_plugin_output(tmp_path, capsys, ssh_fleet, nasty):
    tables = [nasty, ssh_fleet.host_table("w1"), ssh_fleet.host_table("w2"), "down"]
    path = ssh_fleet.inventory(tmp_path, *tables)
    status = venusctl.main(["-i", str(path), "health"])
    out = capsys.readouterr().out
    assert status == 2
    output = nagios.parse(out)
    assert output.text == "VENUS CRITICAL - 1 host unreachable, 3 threads in error"
    perf = {item.label: item for item in output.perfdata}
    assert (perf["hosts"].value, perf["errors"].value, perf["unreachable"].crit) == (4, 3, "0")
    # w1 and w2 fail on the same error: one line; the nasty one on its own, escaped
    assert any(
        re.match(r"WARNING 2 threads on 2 hosts paused on: permanent: No cached", line)
        for line in output.long_output
    )
    assert any(line.endswith(VISIBLE.replace("|", r"\x7c")) for line in output.long_output)


# -- 6. tables fit the terminal ------------------------------------------------------------------


def test_tables_are_cut_to_the_terminal_never_in_a_pipe(tmp_path, capsys, ssh_fleet, nasty):
    path = ssh_fleet.inventory(tmp_path, nasty, ssh_fleet.host_table("w1"))
    status, shown = on_pty(path, "threads", "--wide", columns=120)
    assert status == 0
    lines = assert_no_control_but_layout(shown).splitlines()
    table = [line for line in lines if line.startswith(("Host", "nasty", "w1"))]
    assert len(table) == 4 and all(len(line) <= 120 for line in table), table
    assert any(line.endswith("\u2026") for line in table)  # LastErr cut first
    assert table[0].split() == ["Host", *venusctl.INFO_WIDE_HEADERS]
    # --full on the terminal, or a pipe: whole
    status, shown = on_pty(path, "threads", "--wide", "--full", columns=120)
    assert VISIBLE.encode() in shown and "\u2026".encode() not in shown
    status, out, _ = run(capsys, path, "threads", "--wide")
    assert VISIBLE in out and "\u2026" not in out


def test_the_cut_gives_way_in_lasterr_first_then_the_widest():
    headers = ["Host", "Loc", "LastErr"]
    rows = [["h1", "/srv/" + "x" * 40, "permanent: " + "e" * 80]]
    cut = venusctl.fit_cells(headers, rows, 60)
    assert cut[0][1] == rows[0][1]  # Loc whole: LastErr gave way alone
    assert cut[0][2].endswith("\u2026") and len("  ".join(cut[0])) <= 60
    cut = venusctl.fit_cells(headers, rows, 30)  # LastErr at its floor, then Loc
    assert cut[0][2] == "perman\u2026" and cut[0][1].endswith("\u2026")  # its header's width
    assert len("  ".join(cut[0])) <= 30
    assert venusctl.fit_cells(headers, rows, 500) == rows


# -- 1/2. typos caught: `threads --state c1done` is C1Done -------------------------------------


def test_a_case_only_typo_finds_the_threads_it_meant(tmp_path, capsys, ssh_fleet):
    path = ssh_fleet.inventory(tmp_path, "w1")
    status, document = run_json(capsys, path, "threads", "--state", "c1done")
    assert status == 0 and document["count"] >= 1  # used to be "0 threads", exit 0
    assert {thread["job_state"] for thread in document["threads"]} == {"C1Done"}
    status, out, err = run(capsys, path, "threads", "--state", "C1Dnoe")
    assert (status, out) == (2, "") and "did you mean C1Done" in err


# -- 8. pause outcomes against the real daemon --------------------------------------------------


def stuck_thread(capsys, path: Path, host: str = "stuck") -> dict:
    status, document = run_json(capsys, path, "info", host)
    assert status == 0, document
    return document["threads"][0]


@pytest.mark.parametrize("transport", ["stream", "exec"])
def test_resume_takes_back_a_queued_pause(tmp_path, capsys, ssh_fleet, transport):
    path = ssh_fleet.inventory(tmp_path, ssh_fleet.host_table("stuck", transport=transport))
    status, out, err = run(capsys, path, "pause", "stuck", "0")
    assert status == 0, err
    expected = venusctl.PAUSE_QUEUED if transport == "stream" else venusctl.PAUSE_SENT
    assert out == f"stuck #0: {expected}\n"
    thread = stuck_thread(capsys, path)  # a one-hour stage: the pause waits behind it
    assert thread["pause_requested"] is True and thread["thread_state"]["state"] == "Running"
    status, out, _ = run(capsys, path, "info", "stuck", "--wide")
    row = out.splitlines()[1]
    assert re.search(r"\squeued\s.*Running\(\S+\) mock, pause queued", row), row
    status, out, _ = run(capsys, path, "list", "--wide")
    assert out.splitlines()[1].split()[7] == "1"  # Queued (after Dest and Jump)
    status, out, err = run(capsys, path, "resume", "stuck", "0")
    assert (status, out) == (0, f"stuck #0: {venusctl.PAUSE_CANCELLED}\n"), err
    thread = stuck_thread(capsys, path)
    assert thread["pause_requested"] is False and thread["thread_state"]["state"] == "Running"
    # nothing queued now: the agent's refusal, as before
    status, out, err = run(capsys, path, "resume", "stuck", "0")
    assert status == 1 and err == "stuck #0: resume refused: worker #0 is not paused\n"


def test_an_interrupted_drain_cancels_the_pauses_it_queued(tmp_path, capsys, ssh_fleet):
    path = ssh_fleet.inventory(tmp_path, "stuck")
    process = subprocess.Popen(
        [VENUSCTL_COMMAND, "-i", str(path), "drain", "stuck", "--interval", "200ms"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stderr.readline()
        assert line.startswith("drain: pausing 1 thread on 1 host"), line
        wait_until(lambda: stuck_thread(capsys, path)["pause_requested"], 10, 0.1, "queued")
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        stop_process(process)
    assert process.returncode == 130, err
    assert "venusctl: drain interrupted; still running: stuck #0" in err
    assert "venusctl: stuck #0: queued pause cancelled (the thread keeps running)" in err
    thread = stuck_thread(capsys, path)
    assert thread["pause_requested"] is False and thread["thread_state"]["state"] == "Running"


class SilentAgent:
    """A Unix socket that takes requests and never answers: a hung agent."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(8)
        self.received = b""
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            self.connections.append(connection)
            threading.Thread(target=self._read, args=(connection,), daemon=True).start()

    def _read(self, connection: socket.socket) -> None:
        while True:
            try:
                data = connection.recv(65536)
            except OSError:
                return
            if not data:
                return
            self.received += data

    def close(self) -> None:
        self.server.close()
        for connection in self.connections:
            connection.close()
        self.path.unlink(missing_ok=True)


def test_a_pause_whose_reply_never_comes_may_still_take_effect(tmp_path, capsys, ssh_fleet):
    silent = SilentAgent(Path(tempfile.mkdtemp(prefix="vcs-", dir="/tmp")) / "s.sock")
    try:
        tables = [
            ssh_fleet.host_table("w1", name="hung", socket=str(silent.path), transport="stream"),
            ssh_fleet.host_table(
                "w1",
                name="hung-exec",
                transport="exec",
                agent=str(ssh_fleet.scripts["hang"]),
            ),
        ]
        path = ssh_fleet.inventory(tmp_path, *tables, command_timeout=1)
        for host in ("hung", "hung-exec"):
            for kind in ("pause", "resume"):
                status, out, err = run(capsys, path, kind, host, "0")
                assert (status, out) == (1, "")
                assert err == (
                    f"{host} #0: {kind}: no reply in 1s \u2014 it may still take effect;"
                    f" check with `venusctl info {host}`\n"
                )
        assert b"VenusWorker.WorkerPause" in silent.received  # it was sent
        status, document = run_json(capsys, path, "pause", "hung", "0")
        assert status == 1 and document["error"]["kind"] == "no-reply"
    finally:
        silent.close()
        shutil.rmtree(silent.path.parent, ignore_errors=True)


# -- 9. the exec fallback tells the truth, for the README's non-root user ----------------------


@pytest.fixture(scope="module")
def sealer():
    """A non-root user as the README's `user = "sealer"`, made for these tests, removed after;
    a world-readable folder it can use, with an sshd whose authorized_keys it may read
    (sshd reads them as the user) and the agent's command runnable by it."""
    name = make_user("sealer")
    root = Path(tempfile.mkdtemp(prefix="vcu-", dir="/tmp"))
    root.chmod(0o755)
    fleet = SshFleet(root / "ssh")
    try:
        (root / "ssh").chmod(0o755)
        host = fleet.add_host("usr")
        host.dir.chmod(0o755)
        host.authorized_keys_path.chmod(0o644)
        host.start()
        # the agent's command, runnable by any user: the system Python on this checkout
        command = root / "venus-worker"
        command.write_text(
            f"#!/bin/sh\nPYTHONPATH={REPO} PYTHONDONTWRITEBYTECODE=1"
            f' exec /usr/bin/python3 -m worker_agent "$@"\n'
        )
        command.chmod(0o755)
        yield name, root, fleet, host, command
    finally:
        fleet.stop_all()
        remove_user(name)
        shutil.rmtree(root, ignore_errors=True)


def user_agent(root: Path, name: str, config_mode: int = 0o644) -> Agent:
    """A root agent in a folder the user can read: its socket is 0600, root's."""
    folder = root / name
    folder.mkdir()
    folder.chmod(0o755)
    agent = fleet_agent(name, folder)
    agent.config.chmod(config_mode)
    return agent


def user_rows(capsys, sealer, tables: list[dict]) -> dict[str, dict]:
    name, root, fleet, host, _ = sealer
    inventory = write_inventory(
        root / f"inventory-{len(tables)}-{time.monotonic_ns()}.toml",
        [{"address": host.address, "port": host.port, **table} for table in tables],
        **fleet_defaults(fleet, user=name, agent=None),
    )
    status, document = run_json(capsys, inventory, "list")
    rows = {entry["name"]: entry for entry in document["hosts"]}
    rows["_inventory"] = inventory
    return rows


def test_the_exec_fallback_names_both_causes_with_the_clis_own_words(capsys, sealer):
    name, root, fleet, host, command = sealer
    running = user_agent(root, "running").start()  # socket 0600 root: the user may not use it
    hidden = user_agent(root, "hidden", config_mode=0o600)  # a config the user cannot read
    gone = user_agent(root, "gone").start()
    gone.wait_for(lambda infos: True)
    gone.stop()  # stopped, its heartbeat stays readable
    try:
        rows = user_rows(
            capsys,
            sealer,
            [
                {
                    "name": "no-path",
                    "agent": "venus-worker-i10-nowhere",
                    "config": str(running.config),
                    "socket": str(running.socket),
                },
                {
                    "name": "no-config",
                    "agent": str(command),
                    "config": str(hidden.config),
                    "socket": str(running.socket),
                },
                {
                    "name": "no-socket",
                    "agent": str(command),
                    "config": str(running.config),
                    "socket": str(running.socket),
                },
                {
                    "name": "not-running",
                    "agent": str(command),
                    "config": str(gone.config),
                    "socket": str(gone.socket),
                },
            ],
        )
        # an action names both too, while the agent runs
        status, out, action_err = run(capsys, rows["_inventory"], "pause", "no-socket", "0")
    finally:
        running.stop()
    # ... and once it stopped, the CLI on the host says so: only now "agent not running"
    _, _, stopped_err = run(capsys, rows["_inventory"], "pause", "no-socket", "0")
    assert stopped_err == "no-socket #0: pause failed: agent not running\n"
    stream = (
        f"stream: connect failed to the agent socket {running.socket} (no agent listening,"
        " the SSH user may not use it, or sshd forbids stream forwarding); exec fallback: "
    )
    assert rows["no-path"]["error"]["kind"] == "agent-not-installed"
    assert rows["no-path"]["error"]["message"].startswith(
        stream + "agent not installed, or not on the PATH sshd gives the SSH user ("
    )
    assert "venus-worker-i10-nowhere" in rows["no-path"]["error"]["message"]
    assert rows["no-config"]["error"]["kind"] == "agent-config-error"
    message = rows["no-config"]["error"]["message"]
    assert message.startswith(stream + "agent: config error: ") and "Permission denied" in message
    assert rows["no-socket"]["error"] == {
        "kind": "agent-unreachable",
        "message": stream
        + f"agent: permission denied on the agent socket {running.socket} (this user may not"
        " use it: socket_group?)",
    }
    # "agent not running" only when it is not: the CLI found nothing listening there
    assert rows["not-running"]["error"] == {
        "kind": "agent-not-running",
        "message": "agent not running",
    }
    assert rows["not-running"]["summary"]["Threads"] == 2  # its last heartbeat, read by the CLI
    assert status == 1
    assert action_err == (
        f"no-socket #0: pause failed: {stream}agent: permission denied on the agent socket"
        f" {running.socket} (this user may not use it: socket_group?)\n"
    )
