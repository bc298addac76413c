"""venusctl end to end: real sshd hosts, real agents, real paramiko connections.

The fleet (conftest.py) is shared by the session; tests that change a host
(pause/resume on w3, a new host key on rekey) keep to their own host.
venusctl.main runs in-process (capsys); a few tests run the console script.
"""

from __future__ import annotations

import ast
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (
    AGENT_COMMAND,
    VENUSCTL_COMMAND,
    free_loopback_port,
    run,
    run_json,
    write_inventory,
)
from helpers import processes_with, voluntary_switches, wait_until
from sshfleet import SshFleet

import venusctl

DURATION = r"(\d+\.\ds|\d+s|\d+m\d+s|\d+h\d+m\d+s)"


pytestmark = [
    pytest.mark.e2e,
    # nothing of the machine's ~/.ssh, ssh-agent or $VENUSCTL_INVENTORY leaks in
    pytest.mark.usefixtures("isolated_home"),
]


def rows_by_name(out: str) -> tuple[list[str], dict[str, list[str]]]:
    header, *lines = out.splitlines()
    headers = header.split()
    rows = {}
    for line in lines:
        cells = re.split(r"\s{2,}", line.strip())
        rows[cells[0]] = cells
    return headers, rows


def hosts_by_name(document: dict) -> dict[str, dict]:
    return {entry["name"]: entry for entry in document["hosts"]}


# -- list ----------------------------------------------------------------------------------------


def test_list_shows_every_host_of_the_fleet_over_stream(tmp_path, capsys, ssh_fleet):
    path = ssh_fleet.inventory(tmp_path, *(ssh_fleet.host_table(n) for n in ("w1", "w2", "w3")))
    status, out, err = run(capsys, path, "list")
    assert status == 0, err
    headers, rows = rows_by_name(out)
    assert headers == ["Name", "Dest", "Threads", "Empty", "Paused", "Errors", "LastPing"]
    assert sorted(rows) == ["w1", "w2", "w3"]
    w1 = rows["w1"]
    sshd = ssh_fleet.hosts["w1"]
    assert w1[1] == f"{sshd.address}:{sshd.port}"
    assert w1[2] == "2"  # two sealing threads
    assert int(w1[4]) >= 1 and int(w1[5]) >= 1  # thread #0 paused with its C2 error
    assert re.fullmatch(DURATION, w1[6]), w1[6]  # fresh: no "!"


def _tasks(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


def test_a_run_ends_every_login_it_made_and_the_agents_see_their_channel_end(
    tmp_path, capsys, ssh_fleet
):
    """A run closes each SSH connection without closing its agent channel first (the
    channel ends with it, and two packets per host are saved): once the run is over no
    login of it is left on the hosts, and each agent's connection thread has ended."""
    names = ("w1", "w2")
    listeners = {name: int(ssh_fleet.hosts[name].pid_path.read_text()) for name in names}
    agents = {name: ssh_fleet.agents[name].proc.pid for name in names}
    logins = {name: processes_with("PPid", pid) for name, pid in listeners.items()}
    threads = {name: _tasks(pid) for name, pid in agents.items()}
    path = ssh_fleet.inventory(tmp_path, *names)
    status, document = run_json(capsys, path, "list")
    assert status == 0 and [entry["via"] for entry in document["hosts"]] == ["stream"] * 2
    wait_until(
        lambda: all(processes_with("PPid", listeners[name]) <= logins[name] for name in names),
        5,
        what="the run's logins ended on every host",
    )
    wait_until(
        lambda: all(_tasks(agents[name]) <= threads[name] for name in names),
        5,
        what="each agent's connection thread ended",
    )
    assert run_json(capsys, path, "list")[0] == 0  # and they answer as ever


def test_a_kept_connections_reader_sleeps_until_the_host_sends(tmp_path, ssh_fleet):
    """An established connection's paramiko reader thread waits on its socket, looking
    for work every SSH_READER_POLL (keepalives) rather than paramiko's 0.1 s: a 300-host
    run woke 3,000 times a second that way. It still reads an answer at once, and a
    closed connection's login ends."""
    (host,) = venusctl.load_inventory(ssh_fleet.inventory(tmp_path, "w1")).hosts
    listener = int(ssh_fleet.hosts["w1"].pid_path.read_text())
    logins = processes_with("PPid", listener)
    pool = venusctl.SessionPool(venusctl.SshContext())
    try:
        assert pool.status(host).threads  # connected; the agent channel is kept
        reader = pool.session(host).transport
        before = voluntary_switches(os.getpid(), reader.native_id)
        time.sleep(3)
        woken = voluntary_switches(os.getpid(), reader.native_id) - before
        assert woken <= 3, f"{woken} wakeups in 3 s of an idle connection (0.1 s polls: 30)"
        started = time.monotonic()
        assert pool.status(host).threads  # the reply wakes it
        assert time.monotonic() - started < 1.0
    finally:
        pool.close()
    wait_until(
        lambda: processes_with("PPid", listener) <= logins,
        venusctl.SSH_READER_POLL + 5,
        what="the closed connection's login ended",
    )


def test_list_json_says_how_each_host_was_reached(tmp_path, capsys, ssh_fleet):
    tables = [ssh_fleet.host_table("w1"), ssh_fleet.host_table("nostream")]
    status, document = run_json(capsys, ssh_fleet.inventory(tmp_path, *tables), "list")
    assert status == 0
    assert document["expiration"] == 600.0
    hosts = hosts_by_name(document)
    assert hosts["w1"]["via"] == "stream"
    # sshd forbids stream forwarding there: auto fell back to exec
    assert hosts["nostream"]["via"] == "exec"
    for entry in hosts.values():
        assert set(entry) == {  # the shape README.md documents
            *("name", "dest", "jump", "transport", "backend", "via", "version", "release_line"),
            "summary",
            *("pause_requested", "last_ping", "expired", "error"),  # issue 10: queued pauses
        }
        assert entry["jump"] is None  # reached directly
        assert entry["error"] is None and entry["expired"] is False
        assert entry["version"] == "0.1.0"
        assert entry["summary"]["Threads"] == 2 and entry["summary"]["Errors"] >= 1
        assert set(entry["summary"]) == set(venusctl.api.SUMMARY_KEYS)
        assert 0 <= entry["last_ping"] < 5


def test_list_wide_adds_version_running_waiting(tmp_path, capsys, ssh_fleet):
    path = ssh_fleet.inventory(tmp_path, ssh_fleet.host_table("w1"))
    status, out, _ = run(capsys, path, "list", "--wide")
    assert status == 0
    headers, rows = rows_by_name(out)
    assert headers == [
        "Name",
        "Dest",
        "Jump",
        "Version",
        "Threads",
        "Empty",
        "Paused",
        "Queued",  # issue 10: pauses waiting for a running stage
        "Running",
        "Waiting",
        "Errors",
        "LastPing",
    ]
    assert rows["w1"][2:4] == ["-", "0.1.0"]


def test_list_limit_by_group_and_glob(tmp_path, capsys, ssh_fleet):
    tables = [
        ssh_fleet.host_table("w1", groups=["gpu"]),
        ssh_fleet.host_table("w2", groups=["cpu"]),
        ssh_fleet.host_table("down"),  # would fail if it were asked
    ]
    path = ssh_fleet.inventory(tmp_path, *tables)
    status, document = run_json(capsys, path, "list", "-l", "gpu", "--limit", "w[2]")
    assert status == 0
    assert [entry["name"] for entry in document["hosts"]] == ["w1", "w2"]
    status, _, err = run(capsys, path, "list", "-l", "storage-*")
    assert status == 2
    assert "'storage-*' matches no host; known hosts: w1, w2, down; groups: cpu, gpu" in err


def test_unreachable_hosts_get_rows_with_their_reason_and_exit_1(tmp_path, capsys, ssh_fleet):
    w1 = ssh_fleet.hosts["w1"]
    tables = [
        ssh_fleet.host_table("w1"),
        ssh_fleet.host_table("down"),  # sshd not running
        ssh_fleet.host_table("w2", name="wrongport", port=free_loopback_port(w1.address)),
    ]
    status, out, _ = run(capsys, ssh_fleet.inventory(tmp_path, *tables), "list")
    assert status == 1
    headers, rows = rows_by_name(out)
    assert headers[-1] == "Error"
    assert rows["down"][2:] == ["-", "-", "-", "-", "-", "connection refused"]
    assert rows["wrongport"][-1] == "connection refused"
    assert rows["w1"][2] == "2" and len(rows["w1"]) == 7  # the good host is unaffected


def test_a_host_that_never_speaks_ssh_times_out(tmp_path, capsys, ssh_fleet):
    with socket.socket() as silent:  # the kernel accepts; nobody ever answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        tables = [
            ssh_fleet.host_table("w1"),
            {
                "name": "silent",
                "address": "127.0.0.1",
                "port": silent.getsockname()[1],
                "connect_timeout": 1,
            },
        ]
        path = ssh_fleet.inventory(tmp_path, *tables)
        started = time.monotonic()
        status, document = run_json(capsys, path, "list")
        elapsed = time.monotonic() - started
    hosts = hosts_by_name(document)
    assert status == 1
    assert hosts["silent"]["error"]["kind"] == "timeout"
    assert "timeout after 1s" in hosts["silent"]["error"]["message"]
    assert hosts["w1"]["error"] is None
    assert elapsed < 8  # one connect timeout (plus the handshake's), not the defaults' 10 s


# -- host keys and authentication --------------------------------------------------------------


def test_unknown_host_key_is_rejected(tmp_path, capsys, ssh_fleet):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    path = ssh_fleet.inventory(tmp_path, ssh_fleet.host_table("w1"), known_hosts=str(empty))
    status, document = run_json(capsys, path, "list")
    assert status == 1
    error = document["hosts"][0]["error"]
    assert error["kind"] == "unknown-host-key"
    assert error["message"].startswith("unknown host key ssh-ed25519 SHA256:")
    assert empty.read_text() == ""  # nothing recorded under the default policy


def test_accept_new_records_the_key_then_it_is_known(tmp_path, capsys, ssh_fleet):
    known_hosts = tmp_path / "known_hosts"
    table = ssh_fleet.host_table("w1")
    path = ssh_fleet.inventory(
        tmp_path, table, known_hosts=str(known_hosts), host_key_policy="accept-new"
    )
    status, out, err = run(capsys, path, "list")
    assert status == 0, out + err
    assert known_hosts.read_text() == ssh_fleet.hosts["w1"].known_hosts_line() + "\n"
    # the recorded key now passes the strict default policy
    strict = ssh_fleet.inventory(tmp_path / "strict.toml", table, known_hosts=str(known_hosts))
    assert run(capsys, strict, "list")[0] == 0


def test_changed_host_key_is_rejected_even_with_accept_new(tmp_path, capsys, ssh_fleet):
    rekey = ssh_fleet.hosts["rekey"]
    old_known_hosts = tmp_path / "known_hosts"
    old_known_hosts.write_text(rekey.known_hosts_line() + "\n")
    rekey.regenerate_host_key()  # the server now offers another key
    for policy in ("reject", "accept-new"):
        path = ssh_fleet.inventory(
            tmp_path / f"{policy}.toml",
            ssh_fleet.host_table("rekey"),
            known_hosts=str(old_known_hosts),
            host_key_policy=policy,
        )
        status, out, _ = run(capsys, path, "list")
        assert status == 1
        assert "host key mismatch (possible MITM)" in rows_by_name(out)[1]["rekey"][-1]
    assert old_known_hosts.read_text() == rekey_line_before(old_known_hosts)


def test_a_known_key_of_another_type_is_a_mismatch_not_a_new_key(tmp_path, capsys, ssh_fleet):
    """known_hosts has an ECDSA key for the host, the server offers ed25519: that is a
    changed key (as OpenSSH would have it), so accept-new must not record the offered one."""
    other = tmp_path / "ecdsa"
    argv = ["ssh-keygen", "-q", "-t", "ecdsa", "-N", "", "-f", str(other)]
    subprocess.run(argv, check=True)
    w1 = ssh_fleet.hosts["w1"]
    key_type, key = Path(f"{other}.pub").read_text().split()[:2]
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[{w1.address}]:{w1.port} {key_type} {key}\n")
    before = known_hosts.read_text()
    path = ssh_fleet.inventory(
        tmp_path,
        ssh_fleet.host_table("w1"),
        known_hosts=str(known_hosts),
        host_key_policy="accept-new",
    )
    status, document = run_json(capsys, path, "list")
    assert status == 1
    error = document["hosts"][0]["error"]
    assert error["kind"] == "host-key-mismatch"
    assert error["message"].startswith(
        "host key mismatch (possible MITM): server offers ssh-ed25519"
    )
    assert "known_hosts has ecdsa-sha2-nistp256 SHA256:" in error["message"]
    assert known_hosts.read_text() == before


def test_a_corrupt_known_hosts_line_is_a_row_naming_the_file_and_line(tmp_path, capsys, ssh_fleet):
    """A line that cannot be read fails the host it speaks for, naming file:line; it may
    hold that host's key, so it is not skipped. Other hosts of the file are not its."""
    known_hosts = tmp_path / "known_hosts"
    w1, w2 = ssh_fleet.hosts["w1"], ssh_fleet.hosts["w2"]
    known_hosts.write_text(
        f"# fleet\n{w2.known_hosts_line()}\n[{w1.address}]:{w1.port} ssh-ed25519 AAAA!!!cut\n"
        f"{w1.known_hosts_line()}\n"
    )
    tables = [ssh_fleet.host_table("w1"), ssh_fleet.host_table("w2")]
    path = ssh_fleet.inventory(tmp_path, *tables, known_hosts=str(known_hosts))
    status, document = run_json(capsys, path, "list")
    assert status == 1
    hosts = hosts_by_name(document)
    assert hosts["w1"]["error"] == {
        "kind": "known-hosts",
        "message": f"cannot read known_hosts {known_hosts}:3: not a valid host key line",
    }
    assert hosts["w2"]["error"] is None


def rekey_line_before(path: Path) -> str:
    # The file was never rewritten: still exactly the one old line.
    lines = path.read_text().splitlines()
    assert len(lines) == 1
    return lines[0] + "\n"


def test_a_key_the_host_does_not_authorize_fails_authentication(tmp_path, capsys, ssh_fleet):
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    path = ssh_fleet.inventory(tmp_path, ssh_fleet.host_table("w1"), identity_file=str(stranger))
    status, document = run_json(capsys, path, "list")
    assert status == 1
    assert document["hosts"][0]["error"] == {
        "kind": "authentication-failed",
        "message": f"authentication failed as {ssh_fleet.ssh.user} (tried {stranger})",
    }


def test_ssh_config_supplies_hostname_port_user_and_identity(tmp_path, capsys, ssh_fleet):
    w2 = ssh_fleet.hosts["w2"]
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text(
        f"Host worker-two\n  HostName {w2.address}\n  Port {w2.port}\n"
        f"  User {ssh_fleet.ssh.user}\n  IdentityFile {ssh_fleet.ssh.client_key}\n"
    )
    agent = ssh_fleet.agents["w2"]
    table = {
        "name": "w2",
        "address": "worker-two",
        "config": str(agent.config),
        "socket": str(agent.socket),
    }
    defaults = ssh_fleet.defaults(ssh_config=str(ssh_config))
    del defaults["user"], defaults["identity_file"]
    path = write_inventory(tmp_path / "inventory.toml", [table], **defaults)
    status, out, err = run(capsys, path, "list")
    assert status == 0, out + err
    # Dest is where it went: ssh_config's HostName and Port, not the alias with port 22
    assert rows_by_name(out)[1]["w2"][1] == f"{w2.address}:{w2.port}"


def test_ssh_agent_identity_is_used(tmp_path, capsys, ssh_fleet, monkeypatch):
    started = subprocess.run(["ssh-agent", "-s"], capture_output=True, text=True, check=True)
    variables = dict(re.findall(r"(SSH_AUTH_SOCK|SSH_AGENT_PID)=([^;]+);", started.stdout))
    try:
        env = {**os.environ, **variables}
        subprocess.run(
            ["ssh-add", "-q", str(ssh_fleet.ssh.client_key)], env=env, check=True, timeout=10
        )
        monkeypatch.setenv("SSH_AUTH_SOCK", variables["SSH_AUTH_SOCK"])
        defaults = ssh_fleet.defaults()
        del defaults["identity_file"]  # no key file anywhere: only the agent has it
        path = write_inventory(tmp_path / "inv.toml", [ssh_fleet.host_table("w1")], **defaults)
        status, out, err = run(capsys, path, "list")
        assert status == 0, out + err
    finally:
        os.kill(int(variables["SSH_AGENT_PID"]), signal.SIGTERM)


# -- agent failures -----------------------------------------------------------------------------


def test_stream_forbidden_by_sshd(tmp_path, capsys, ssh_fleet):
    tables = [
        ssh_fleet.host_table("nostream", transport="stream"),
        ssh_fleet.host_table("nostream", name="nostream-exec", transport="exec"),
    ]
    status, document = run_json(capsys, ssh_fleet.inventory(tmp_path, *tables), "list")
    hosts = hosts_by_name(document)
    assert status == 1
    # OpenSSH answers "connect failed" as for a missing socket: stream alone cannot tell,
    # so it does not say "agent not running" (issue 10)
    socket = ssh_fleet.agents["nostream"].socket
    assert hosts["nostream"]["error"] == {
        "kind": "stream-connect-failed",
        "message": f"connect failed to the agent socket {socket} (no agent listening, the SSH"
        " user may not use it, or sshd forbids stream forwarding)",
    }
    assert hosts["nostream-exec"]["error"] is None and hosts["nostream-exec"]["via"] == "exec"


def logging_agent(directory: Path) -> tuple[Path, Path]:
    """An agent command that logs the argv it got, one word a line, then runs the agent."""
    log = directory / "argv.log"
    script = directory / "logging-agent"
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" >>{log}\nexec {AGENT_COMMAND} "$@"\n')
    script.chmod(0o755)
    return script, log


def test_stream_starts_no_process_and_exec_gets_the_argv_as_built(tmp_path, capsys, ssh_fleet):
    script, log = logging_agent(tmp_path)
    # A config path a shell would split and run: it must reach the agent as one word.
    odd = tmp_path / "odd dir;touch pwned"
    odd.mkdir()
    (odd / "venus-worker.toml").symlink_to(ssh_fleet.agents["nostream"].config)
    config = str(odd / "venus-worker.toml")
    tables = [
        ssh_fleet.host_table("w1", agent=str(script)),
        ssh_fleet.host_table("nostream", agent=str(script), config=config),
    ]
    path = ssh_fleet.inventory(tmp_path, *tables)
    status, document = run_json(capsys, path, "list", "-l", "w1")
    assert (status, document["hosts"][0]["via"]) == (0, "stream")
    assert not log.exists()  # w1 answered through the socket: its agent command never ran
    status, document = run_json(capsys, path, "list", "-l", "nostream")
    assert (status, document["hosts"][0]["via"]) == (0, "exec")
    assert log.read_text().splitlines() == ["worker", "-c", config, "status", "--json"]
    log.unlink()
    status, document = run_json(capsys, path, "resume", "nostream", "9", "C1Done")
    assert status == 1 and document["error"]["message"] == "worker #9 not found"
    assert log.read_text().splitlines() == [
        *("worker", "-c", config, "resume", "--index", "9", "--state", "C1Done", "--json")
    ]


def test_stopped_agent_shows_its_stale_heartbeat_with_a_bang(tmp_path, capsys, ssh_fleet):
    report = json.loads(ssh_fleet.agents["dead"].report.read_text())
    # The stopped agent's last beat well past the expiration; a live one beats every second,
    # so 3 s leaves it room for a beat late under load (1 s did not, once in a full run).
    while time.time() - report["time"] < 3.2:
        time.sleep(0.1)
    tables = [
        ssh_fleet.host_table("dead"),
        ssh_fleet.host_table("dead", name="dead-stream", transport="stream"),
        ssh_fleet.host_table("w1"),
    ]
    path = ssh_fleet.inventory(tmp_path, *tables)
    status, out, _ = run(capsys, path, "list", "--expiration", "3s")
    assert status == 1
    _, rows = rows_by_name(out)
    dead = rows["dead"]
    summary = report["summary"]  # the counts come from the last heartbeat
    assert dead[2:6] == [str(summary[key]) for key in ("Threads", "Empty", "Paused", "Errors")]
    assert re.fullmatch(DURATION + "!", dead[6]), dead[6]
    assert dead[7] == "agent not running"
    # stream only: no exec, so no report to read, and no way to tell a dead agent from a
    # closed door: the row says what sshd said (issue 10)
    assert rows["dead-stream"][2:7] == ["-", "-", "-", "-", "-"]
    assert rows["dead-stream"][7].startswith("connect failed to the agent socket")
    assert not rows["w1"][6].endswith("!")
    # the same host within a generous expiration has no "!"
    status, document = run_json(capsys, path, "list", "-l", "dead")
    assert document["hosts"][0]["expired"] is False and document["hosts"][0]["last_ping"] > 1


def test_info_of_a_stopped_agent_says_so_with_the_heartbeat_age(tmp_path, capsys, ssh_fleet):
    path = ssh_fleet.inventory(tmp_path, ssh_fleet.host_table("dead"))
    status, out, err = run(capsys, path, "info", "dead")
    assert status == 1 and out == ""
    assert re.fullmatch(
        rf"venusctl: dead: agent not running \(last heartbeat {DURATION} ago\)\n", err
    )


def test_garbage_on_stdout_is_an_unreadable_reply(tmp_path, capsys, ssh_fleet):
    table = ssh_fleet.host_table("w1", transport="exec", agent=str(ssh_fleet.scripts["garbage"]))
    status, out, _ = run(capsys, ssh_fleet.inventory(tmp_path, table), "list")
    assert status == 1
    assert rows_by_name(out)[1]["w1"][-1].startswith("unreadable reply")


def test_missing_agent_command_is_agent_not_installed(tmp_path, capsys, ssh_fleet):
    table = ssh_fleet.host_table("w1", transport="exec", agent="/opt/nowhere/venus-worker")
    status, document = run_json(capsys, ssh_fleet.inventory(tmp_path, table), "list")
    assert status == 1
    assert document["hosts"][0]["error"]["kind"] == "agent-not-installed"
    assert document["hosts"][0]["error"]["message"].startswith("agent not installed")


def test_agent_config_missing_on_the_host_is_reported_as_such(tmp_path, capsys, ssh_fleet):
    table = ssh_fleet.host_table("w1", transport="exec", config="/etc/nowhere/venus-worker.toml")
    status, document = run_json(capsys, ssh_fleet.inventory(tmp_path, table), "list")
    assert status == 1
    error = document["hosts"][0]["error"]
    assert error["kind"] == "agent-config-error"
    assert error["message"].startswith("agent: config error: /etc/nowhere/venus-worker.toml")


def test_a_hanging_host_times_out_without_holding_up_the_others(tmp_path, capsys, ssh_fleet):
    hang = str(ssh_fleet.scripts["hang"])
    tables = [
        ssh_fleet.host_table("w2", name="hung", transport="exec", agent=hang, command_timeout=1),
        ssh_fleet.host_table("w1"),
        ssh_fleet.host_table("w3"),
    ]
    started = time.monotonic()
    status, document = run_json(capsys, ssh_fleet.inventory(tmp_path, *tables), "list")
    elapsed = time.monotonic() - started
    hosts = hosts_by_name(document)
    assert status == 1
    assert hosts["hung"]["error"] == {"kind": "timeout", "message": "timeout after 1s (command)"}
    assert hosts["w1"]["error"] is None and hosts["w3"]["error"] is None
    # bounded by the one timeout (the command would sleep 30 s), hosts asked in parallel
    assert 1 <= elapsed < 8


def test_ctrl_c_stops_cleanly_with_130(tmp_path, ssh_fleet):
    table = ssh_fleet.host_table(
        "w2", name="hung", transport="exec", agent=str(ssh_fleet.scripts["hang"])
    )
    path = ssh_fleet.inventory(tmp_path, table, command_timeout=30)
    process = subprocess.Popen(
        [VENUSCTL_COMMAND, "-i", str(path), "list"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)  # connected and waiting on the hung command
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=10)
    assert process.returncode == 130
    assert err == "venusctl: interrupted\n"
    assert out == ""


# -- info, pause, resume --------------------------------------------------------------------------


def test_info_by_name_and_by_address_port(tmp_path, capsys, ssh_fleet):
    path = ssh_fleet.inventory(tmp_path, ssh_fleet.host_table("w1"), ssh_fleet.host_table("w2"))
    status, out, err = run(capsys, path, "info", "w1")
    assert status == 0, err
    header, first, second = out.splitlines()
    assert header.split() == [
        "Index",
        "Loc",
        "SectorID",
        "Paused",
        "PausedElapsed",
        "State",
        "LastErr",
    ]
    cells = re.split(r"\s{2,}", first)
    agent_dir = ssh_fleet.agents["w1"].folder
    assert cells[:2] == ["0", f"{agent_dir}/store1"]
    assert re.fullmatch(r"s-t010000-\d+", cells[2])
    assert cells[3:4] == ["true"] and re.fullmatch(DURATION, cells[4])
    assert cells[5] == "C1Done"
    assert cells[6].startswith("permanent: No cached parameters found")
    assert second.startswith("1 ")
    w2 = ssh_fleet.hosts["w2"]
    status, out, _ = run(capsys, path, "info", f"{w2.address}:{w2.port}")
    assert status == 0 and str(ssh_fleet.agents["w2"].folder / "store1") in out


def test_info_wide_and_json(tmp_path, capsys, ssh_fleet):
    path = ssh_fleet.inventory(tmp_path, ssh_fleet.host_table("w1"))
    status, out, _ = run(capsys, path, "info", "w1", "--wide")
    assert status == 0
    header, first, _ = out.splitlines()
    assert header.split()[-4:] == ["Plan", "Stage", "ThreadState", "LastErr"]
    assert re.search(r"\ssealer\s+C2\s+Paused\(" + DURATION + r"\)\s+permanent: ", first)
    status, document = run_json(capsys, path, "info", "w1")
    assert status == 0 and document["error"] is None and document["via"] == "stream"
    assert [thread["index"] for thread in document["threads"]] == [0, 1]
    assert document["threads"][0]["job_state"] == "C1Done"


def test_info_of_an_unknown_host_is_a_usage_error(tmp_path, capsys, ssh_fleet):
    path = ssh_fleet.inventory(tmp_path, ssh_fleet.host_table("w1"), ssh_fleet.host_table("w2"))
    status, out, err = run(capsys, path, "info", "w9")
    assert status == 2 and out == ""
    # issue 10: with the closest names
    assert err == "venusctl: unknown host 'w9' (did you mean w1 or w2?); known hosts: w1, w2\n"


def wait_for_thread_state(path: Path, capsys, host: str, index: int, state: str) -> dict:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status, document = run_json(capsys, path, "info", host)
        thread = document["threads"][index]
        if thread["thread_state"]["state"] == state:
            return thread
        time.sleep(0.1)
    raise AssertionError(f"{host} #{index} never reached {state}: {thread}")


def test_pause_then_resume_a_running_thread(tmp_path, capsys, ssh_fleet):
    path = ssh_fleet.inventory(tmp_path, ssh_fleet.host_table("w3"))
    status, out, err = run(capsys, path, "pause", "w3", "1")
    assert (status, err) == (0, "")
    # issue 10: stopped, or its pause queued behind the running stage: the line says which
    assert re.fullmatch(rf"w3 #1: (paused|{re.escape(venusctl.PAUSE_QUEUED)})\n", out), out
    thread = wait_for_thread_state(path, capsys, "w3", 1, "Paused")
    assert thread["last_error"] is None  # paused by hand, not by an error
    status, out, _ = run(capsys, path, "resume", "w3", "1")
    assert (status, out) == (0, "w3 #1: resumed\n")
    # a thread that is not paused: the agent's refusal, shown as it is
    status, out, err = run(capsys, path, "resume", "w3", "1")
    assert (status, out) == (1, "")
    assert err == "w3 #1: resume refused: worker #1 is not paused\n"
    status, document = run_json(capsys, path, "resume", "w3", "1")
    assert status == 1
    assert document["error"] == {
        "kind": "agent-refused",
        "code": 1001,
        "message": "worker #1 is not paused",
    }


def test_resume_into_a_state_and_refusals(tmp_path, capsys, ssh_fleet):
    path = ssh_fleet.inventory(tmp_path, ssh_fleet.host_table("w3"))
    wait_for_thread_state(path, capsys, "w3", 0, "Paused")
    # a state of no plan is refused before any connection (issue 10); one of another plan
    # by the agent, for this thread's plan
    status, out, err = run(capsys, path, "resume", "w3", "0", "Bogus")
    assert status == 2 and "argument state: unknown state 'Bogus'" in err
    status, out, err = run(capsys, path, "resume", "w3", "0", "SnapEncoded")
    assert status == 1
    assert err.startswith(
        'w3 #0: resume refused: invalid state "SnapEncoded" for plan sealer; valid'
    )
    assert "C1Done" in err
    status, document = run_json(capsys, path, "resume", "w3", "0", "C1Done")
    assert status == 0
    assert document == {
        "name": "w3",
        "dest": ssh_fleet.host_table("w3")["address"] + f":{ssh_fleet.hosts['w3'].port}",
        "action": "resume",
        "index": 0,
        "state": "C1Done",
        "via": "stream",
        "ok": True,
        "note": None,
        "error": None,
    }
    status, out, err = run(capsys, path, "pause", "w3", "9")
    assert status == 1 and err == "w3 #9: pause refused: worker #9 not found\n"


def test_info_pause_resume_fall_back_to_exec_where_stream_is_forbidden(tmp_path, capsys, ssh_fleet):
    path = ssh_fleet.inventory(tmp_path, ssh_fleet.host_table("nostream"))
    status, document = run_json(capsys, path, "info", "nostream")
    assert (status, document["via"], len(document["threads"])) == (0, "exec", 2)
    status, document = run_json(capsys, path, "pause", "nostream", "1")
    assert (status, document["via"], document["ok"]) == (0, "exec", True)
    wait_for_thread_state(path, capsys, "nostream", 1, "Paused")
    status, out, _ = run(capsys, path, "resume", "nostream", "1")
    assert (status, out) == (0, "nostream #1: resumed\n")
    status, out, err = run(capsys, path, "resume", "nostream", "1")
    assert status == 1 and err == "nostream #1: resume refused: worker #1 is not paused\n"


def test_pause_on_a_stopped_agent_fails(tmp_path, capsys, ssh_fleet):
    path = ssh_fleet.inventory(tmp_path, ssh_fleet.host_table("dead"))
    status, out, err = run(capsys, path, "pause", "dead", "0")
    assert status == 1 and err == "dead #0: pause failed: agent not running\n"


# -- injection and validation before any connection ------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "refusal"),
    [
        (["resume", "trap", "0", "C1Done;touch {marker}"], "argument state: unknown state"),
        (["resume", "trap", "0", "$(touch {marker})"], "argument state: unknown state"),
        (["pause", "trap", "0;touch {marker}"], "argument index: invalid thread index"),
        (["pause", "trap", "1;id"], "argument index: invalid thread index"),
        (["resume", "trap", "-1"], "argument index: invalid thread index"),
        (["pause", "trap", "1 2"], "argument index: invalid thread index"),
        (["info", "trap;touch {marker}"], "unknown host 'trap;touch"),
        (["pause", "$(touch {marker})", "0"], "unknown host '$(touch"),
        (["resume", "trap ", "0"], "unknown host 'trap '"),
        (["list", "-l", "trap;touch {marker}"], "--limit 'trap;touch"),
    ],
)
def test_injection_attempts_are_refused_before_any_connection(
    tmp_path, capsys, ssh_fleet, argv, refusal
):
    marker = tmp_path / "x"
    with socket.socket() as trap:  # any connection attempt would be queued here
        trap.bind(("127.0.0.1", 0))
        trap.listen(8)
        table = {"name": "trap", "address": "127.0.0.1", "port": trap.getsockname()[1]}
        path = ssh_fleet.inventory(tmp_path, table, transport="exec")
        args = [arg.format(marker=marker) for arg in argv]
        status, out, err = run(capsys, path, *args)
        readable, _, _ = select.select([trap], [], [], 0.2)
    assert status == 2 and out == ""
    assert err.startswith(f"venusctl: {refusal}") and err.count("\n") == 1
    assert readable == [], "venusctl connected although the arguments were invalid"
    assert not marker.exists()


# -- the console script ---------------------------------------------------------------------------


def test_console_script_list_with_inventory_from_the_environment(tmp_path, ssh_fleet):
    path = ssh_fleet.inventory(tmp_path, ssh_fleet.host_table("w1"))
    env = {**os.environ, "VENUSCTL_INVENTORY": str(path)}
    done = subprocess.run(
        [VENUSCTL_COMMAND, "list"], capture_output=True, text=True, env=env, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1].startswith("w1  ")


def audited_run(look: str, *argv: str) -> tuple[int, list, list[str], str]:
    """`venusctl ARGV` in a process of its own, with `look(event, args)` (source code) as an
    audit hook that fills the list `seen`: Python's audit events see every open and connect
    of the run. (exit status, seen, the lines it printed, its stderr)."""
    code = "\n".join(
        ("import sys", "seen = []", look, "sys.addaudithook(look)", "import venusctl")
        + ("status = venusctl.main(sys.argv[1:])", "print(status, repr(seen))")
    )
    argv = [sys.executable, "-c", code, *argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.stdout, done.stderr
    *printed, last = done.stdout.splitlines()
    status, seen = last.split(" ", 1)
    return int(status), ast.literal_eval(seen), printed, done.stderr


def test_a_run_parses_its_key_file_once_for_all_hosts(tmp_path, ssh_fleet):
    """The IdentityFile is read once per run, as the floor reads it once: each host's
    authentication parsed it again before, 40 ms of CPU in a 300-host run. Three hosts
    open it as often as one does."""
    key = str(ssh_fleet.ssh.client_key)
    look = f"def look(event, args):\n    if event == 'open' and str(args[0]) == {key!r}:\n"
    look += "        seen.append(1)"

    def opens_of_the_key(*names: str) -> int:
        path = ssh_fleet.inventory(tmp_path / f"{len(names)}.toml", *names)
        argv = ("--no-persist", "-i", str(path), "--json", "list")
        status, opens, printed, err = audited_run(look, *argv)
        assert status == 0, err
        document = json.loads("\n".join(printed))
        assert [entry["via"] for entry in document["hosts"]] == ["stream"] * len(names)
        return len(opens)

    once = opens_of_the_key("w1")
    assert once > 0
    assert opens_of_the_key("w1", "w2", "w3") == once


def test_a_run_connects_before_it_imports_paramiko(tmp_path, ssh_fleet):
    """The hosts' sshd start their sessions (fork, re-exec, host keys) on the other core
    while the run imports paramiko, instead of after it."""
    look = "def look(event, args):\n    if event == 'socket.connect' and isinstance(args[1], tuple)"
    look += " and not seen:\n        seen.append('paramiko' in sys.modules)"
    path = ssh_fleet.inventory(tmp_path, "w1", "w2")
    status, imported, printed, err = audited_run(look, "--no-persist", "-i", str(path), "list")
    assert (status, imported) == (0, [False]), err
    assert [line.split()[0] for line in printed[1:]] == ["w1", "w2"]


def test_console_script_bad_inventory_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "inventory.toml"
    bad.write_text('[[host]]\nname = "a"\naddress = "10.0.0.1"\nport = 0\n')
    done = subprocess.run(
        [VENUSCTL_COMMAND, "-i", str(bad), "list"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (f"venusctl: {bad}:4: port: must be an integer from 1 to 65535, got 0\n")


def test_console_script_help_is_the_docstring(tmp_path):
    done = subprocess.run([VENUSCTL_COMMAND, "--help"], capture_output=True, text=True)
    assert done.returncode == 0
    assert "resume HOST INDEX [STATE]" in done.stdout
    assert "exit status: 0 all done, 1 some host or operation failed" in done.stdout


def test_debug_shows_the_traceback_of_a_failing_host(tmp_path, capsys, ssh_fleet):
    path = ssh_fleet.inventory(tmp_path, ssh_fleet.host_table("down"))
    status, out, err = run(capsys, path, "list", "--debug")
    assert status == 1
    assert "--- down: traceback" in err and "ConnectionRefusedError" in err
    status, out, err = run(capsys, path, "list")
    assert "Traceback" not in err


def test_agent_cli_is_where_the_tests_expect_it():
    # The fleet runs the venv's agent by absolute path: sshd sessions have no venv PATH.
    assert os.access(AGENT_COMMAND, os.X_OK)


def test_a_broken_ssh_config_is_that_hosts_row_not_a_crash(tmp_path, capsys, ssh_fleet):
    broken = tmp_path / "ssh_config"
    broken.write_text("Host *\n  ThisLineHasNoValue\n")
    tables = [ssh_fleet.host_table("w1", ssh_config=str(broken)), ssh_fleet.host_table("w2")]
    status, document = run_json(capsys, ssh_fleet.inventory(tmp_path, *tables), "list")
    hosts = hosts_by_name(document)
    assert status == 1
    assert hosts["w1"]["error"]["kind"] == "ssh-config"
    assert hosts["w1"]["error"]["message"] == (
        f"{broken}:2: no argument after keyword 'ThisLineHasNoValue'"
    )
    assert hosts["w2"]["error"] is None


def test_a_stream_forbidden_host_opens_the_channel_once_per_refresh(tmp_path, capsys, ssh_fleet):
    """The transport policy asks for the stream channel once, then falls back to exec.

    sshd itself counts: at LogLevel DEBUG1 it logs every channel a client asks
    for. `list --watch` refreshes through the pool (SessionPool), `list` and
    `pause` through the one-shot paths: each asks for the channel once.
    """
    sshd_fleet = SshFleet(tmp_path / "ssh")
    try:
        forbidding = sshd_fleet.add_host(
            "counted", {"AllowStreamLocalForwarding": "no", "LogLevel": "DEBUG1"}
        )
        forbidding.start()
        agent = ssh_fleet.agents["nostream"]
        table = {
            "name": "counted",
            "address": forbidding.address,
            "port": forbidding.port,
            "config": str(agent.config),
            "socket": str(agent.socket),
        }
        path = write_inventory(
            tmp_path / "inventory.toml",
            [table],
            **ssh_fleet.defaults(
                identity_file=str(sshd_fleet.client_key),
                known_hosts=str(sshd_fleet.known_hosts),
            ),
        )

        def channels_asked() -> int:
            log = forbidding.log_path.read_text(errors="replace")
            return log.count("ctype direct-streamlocal@openssh.com")

        status, out, err = run(capsys, path, "list", "--watch", "100ms", "--count", "3")
        assert status == 0, err
        assert out.count("counted") == 3  # three frames, each with the host's row
        assert channels_asked() == 3
        status, document = run_json(capsys, path, "list")
        assert status == 0 and document["hosts"][0]["via"] == "exec"
        assert channels_asked() == 4
        status, document = run_json(capsys, path, "pause", "counted", "0")
        assert status == 0 and document["via"] == "exec"
        assert channels_asked() == 5
    finally:
        sshd_fleet.stop_all()
