"""venusctl for the humans at the terminal (issue 19), end to end: real sshd hosts, real
agents, the console script on pipes and pseudo-terminals.

Besides the session fleet (conftest.py: w1, w2, dead, ...), this module starts two
hosts of its own on the fleet's sshd set-up:

- ux-log: an agent whose one thread runs PC1 as a real command that prints on stdout
  and stderr (an escape sequence among it) for ~2 s, then fails permanently; its
  sshd gives sessions a PATH with a stand-in `journalctl` that prints its argv;
- ux-move: a mock agent with two threads in 1 s stages, #0 failing C2 and paused at
  C1Done (the state moves act on it), #1 sealing (pause --wait waits for it).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (
    VENUSCTL_COMMAND,
    WORKER_TABLE,
    agent_host_table,
    fleet_agent,
    run,
    run_json,
    write_inventory,
)
from helpers import wait_until
from test_venusctl_safety_e2e import on_pty

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("isolated_home")]

STAGE_SCRIPT = """\
import sys, time
for step in range(8):
    print(f"pc1 step {step}", flush=True)
    time.sleep(0.25)
print("warning: cache \\x1b[2J almost full", file=sys.stderr, flush=True)
print("permanent: no ticket for this sector", file=sys.stderr)
sys.exit(1)
"""

LOG_AGENT = (
    WORKER_TABLE
    + """
[sealing]
miner = 50000
seal_interval = "100ms"

[[sealing_thread]]
location = "{dir}/store1"

[processors]
kind = "command"

[processors.command.stages]
PC1 = [{argv}]
"""
)

MOVE_AGENT = (
    WORKER_TABLE
    + """
[sealing]
miner = 60000
max_retries = 0
seal_interval = "100ms"

[[sealing_thread]]
location = "{dir}/store1"

[[sealing_thread]]
location = "{dir}/store2"

[processors]
kind = "mock"

[processors.mock]
duration = "1s"
wait_duration = "100ms"

[[processors.mock.faults]]
stage = "C2"
level = "permanent"
message = "No cached parameters (ux fleet)"
threads = [0]
"""
)

FAKE_JOURNALCTL = """\
#!/bin/sh
printf 'argv:'
for word in "$@"; do printf ' [%s]' "$word"; done
printf '\\n'
printf '2026-12-01T10:00:00+0000 w venus-worker[42]: thread #0: bad \\033]0;owned\\007 line\\n'
case " $* " in *" --follow "*) sleep 4; printf 'a line 4 s later\\n' ;; esac
"""


class Ux:
    """The module's two hosts: sshd, agent, and their [[host]] tables."""

    def __init__(self, root: Path, fleet) -> None:
        self.fleet = fleet
        fake = root / "fakebin"
        fake.mkdir(parents=True)
        (fake / "journalctl").write_text(FAKE_JOURNALCTL)
        (fake / "journalctl").chmod(0o755)
        path = f"{fake}:/usr/local/bin:/usr/bin:/bin"
        self.sshd = {
            "ux-log": fleet.ssh.add_host("ux-log", sshd_options={"SetEnv": f"PATH={path}"}),
            "ux-move": fleet.ssh.add_host("ux-move"),
            # no command sessions at all; forwarding (the agent's stream channel) still works
            "ux-nosession": fleet.ssh.add_host("ux-nosession", sshd_options={"MaxSessions": "0"}),
        }
        for sshd in self.sshd.values():
            sshd.start()
        script = root / "pc1.py"
        script.write_text(STAGE_SCRIPT)
        argv = ", ".join(json.dumps(word) for word in (sys.executable, str(script)))
        self.agents = {
            "ux-log": fleet_agent("ux-log", root / "ux-log", LOG_AGENT.replace("{argv}", argv)),
            "ux-move": fleet_agent("ux-move", root / "ux-move", MOVE_AGENT),
        }
        for agent in self.agents.values():
            agent.start()

    def table(self, name: str, **overrides) -> dict:
        return agent_host_table(name, self.sshd[name], self.agents[name], **overrides)

    def inventory(self, path: Path, *tables: dict) -> Path:
        return self.fleet.inventory(path, *tables)

    def stop(self) -> None:
        for agent in self.agents.values():
            agent.stop()
        for sshd in self.sshd.values():
            sshd.stop()


@pytest.fixture(scope="module")
def ux(ssh_fleet, tmp_path_factory):
    hosts = Ux(tmp_path_factory.mktemp("ux"), ssh_fleet)
    try:
        yield hosts
    finally:
        hosts.stop()


def console(*argv: str, env: dict | None = None, cwd: Path | None = None, stdin=None):
    return subprocess.run(
        [VENUSCTL_COMMAND, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=cwd,
        stdin=stdin if stdin is not None else subprocess.DEVNULL,
    )


def thread(agent, index: int) -> dict:
    return agent.infos()[index]


# -- 1. the inventory found like a config file, a named fleet ----------------------------------


def test_the_inventory_is_found_from_any_folder_and_a_fleet_by_its_name(
    tmp_path, ssh_fleet, isolated_home
):
    config = isolated_home / ".config" / "venusctl"
    config.mkdir(parents=True)
    ssh_fleet.inventory(config / "inventory.toml", "w1")
    write_inventory(config / "prod.toml", [ssh_fleet.host_table("w2")], **ssh_fleet.defaults())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDG_")}
    done = console("list", env=env, cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    assert [line.split()[0] for line in done.stdout.splitlines()] == ["Name", "w1"]
    done = console("--fleet", "prod", "list", env=env, cwd=elsewhere)
    assert [line.split()[0] for line in done.stdout.splitlines()] == ["Name", "w2"]
    done = console("inventory", "--fleet", "prod", env=env, cwd=elsewhere)
    assert done.stdout.splitlines()[0] == (
        f"inventory: {config / 'prod.toml'} (given by --fleet prod)"
    )
    done = console("list", env={**env, "VENUSCTL_FLEET": "prd"}, cwd=elsewhere)
    assert done.returncode == 2
    assert "unknown fleet 'prd' (did you mean prod?)" in done.stderr


# -- 2. limits that exclude --------------------------------------------------------------------


def test_a_limit_excludes_and_intersects_as_ansible_does(tmp_path, capsys, ssh_fleet):
    path = ssh_fleet.inventory(
        tmp_path,
        ssh_fleet.host_table("w1", groups=["gpu", "rack1"]),
        ssh_fleet.host_table("w2", groups=["gpu"]),
        ssh_fleet.host_table("dead", groups=["rack1"]),
    )
    for limit, expected in [
        ("all:!w2", ["w1", "dead"]),
        ("!w2", ["w1", "dead"]),
        ("gpu:!w1", ["w2"]),
        ("gpu:&rack1", ["w1"]),
    ]:
        status, document = run_json(capsys, path, "list", "-l", limit)
        assert [entry["name"] for entry in document["hosts"]] == expected, limit
    status, out, err = run(capsys, path, "pause", "-l", "!w1:!w2:!dead", "--yes")
    assert status == 2 and "leaves no host" in err and out == ""


# -- 4. sorting, columns, CSV and colour against real hosts ------------------------------------


def test_threads_as_csv_sorted_with_chosen_columns(tmp_path, ssh_fleet):
    path = ssh_fleet.inventory(tmp_path, "w1", "w2")
    done = console(
        "-i", str(path), "threads", "-o", "csv", "--columns", "host,index,state,lasterr",
        "--sort", "index,host", "--reverse",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = list(csv.reader(io.StringIO(done.stdout)))
    assert rows[0] == ["Host", "Index", "State", "LastErr"]
    assert [(row[0], row[1]) for row in rows[1:]] == [
        ("w2", "1"),
        ("w1", "1"),
        ("w2", "0"),
        ("w1", "0"),
    ]
    assert rows[3][3].startswith("permanent: No cached parameters")  # exact, unescaped
    assert done.stderr.splitlines()[0] == "4 threads on 2 hosts"  # stdout holds the data alone
    done = console("-i", str(path), "list", "-o", "tsv", "--no-header", "--columns", "name")
    assert done.stdout == "w1\nw2\n"


def test_colour_on_a_terminal_only_never_in_a_pipe_nor_with_no_color(tmp_path, ssh_fleet):
    path = ssh_fleet.inventory(tmp_path, "w1", "dead")
    status, shown = on_pty(path, "list", "--expiration", "1s")
    text = shown.decode()
    assert status == 1
    assert "\x1b[33m1\x1b[0m" in text  # Paused: yellow
    assert "\x1b[31magent not running\x1b[0m" in text  # the Error column: red
    assert re.search(r"\x1b\[1m[0-9.ms]+!\x1b\[0m", text)  # dead's expired LastPing: bold
    status, shown = on_pty(path, "list", env={**os.environ, "NO_COLOR": "1"})
    assert status == 1 and b"\x1b[" not in shown.replace(b"\r\x1b[K", b"")
    done = console("-i", str(path), "list")  # a pipe
    assert done.returncode == 1 and "\x1b" not in done.stdout
    done = console("-i", str(path), "list", "--color", "always")
    assert "\x1b[33m" in done.stdout


# -- 5. why a stage failed: logs and journal ---------------------------------------------------


def wait_paused(agent, index: int = 0, timeout: float = 30.0) -> dict:
    return wait_until(
        lambda: (info := thread(agent, index))["thread_state"]["state"] == "Paused" and info,
        timeout,
        0.1,
        f"{agent.name} #{index} paused",
    )


@pytest.mark.parametrize("transport", ["stream", "exec"])
def test_logs_show_what_a_command_stage_printed_escaped(tmp_path, capsys, ssh_fleet, ux, transport):
    wait_paused(ux.agents["ux-log"])
    path = ux.inventory(tmp_path, ux.table("ux-log", transport=transport))
    status, out, err = run(capsys, path, "logs", "ux-log", "0")
    assert status == 0, err
    lines = out.splitlines()
    assert re.match(
        r"--- ux-log #0 run \d+: stage PC1 \(TicketAssigned\) s-t050000-1, started .*,"
        r" exit 1 after \d+(\.\d)?s: permanent: no ticket for this sector$",
        lines[0],
    ), lines[0]
    texts = [line.split(" ", 2)[1:] for line in lines[1:]]
    assert texts[0] == ["stdout", "pc1 step 0"] and texts[7] == ["stdout", "pc1 step 7"]
    assert texts[8:] == [
        ["stderr", "warning: cache \\x1b[2J almost full"],  # the ESC made visible
        ["stderr", "permanent: no ticket for this sector"],
    ]
    status, document = run_json(capsys, path, "logs", "ux-log", "0", "-n", "1")
    assert status == 0 and document["host"] == "ux-log"
    (last,) = document["runs"]
    assert [line["text"] for line in last["lines"]] == ["permanent: no ticket for this sector"]
    assert last["argv"][-1].endswith("pc1.py")
    status, out, _ = run(capsys, path, "logs", "ux-log", "0", "-n", "2", "--stage", "C2")
    assert (status, out) == (0, "ux-log #0: no run of stage C2 logged (the agent keeps the"
                                " last 8 runs of each thread)\n")  # fmt: skip


def test_logs_follow_a_running_stage_until_ctrl_c(tmp_path, capsys, ux):
    agent = ux.agents["ux-log"]
    wait_paused(agent)
    path = ux.inventory(tmp_path, ux.table("ux-log"))
    status, out, err = run(capsys, path, "resume", "ux-log", "0")
    assert status == 0, err
    follow = subprocess.Popen(
        [VENUSCTL_COMMAND, "-i", str(path), "logs", "ux-log", "0", "--follow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = follow.stdout.readline()
            seen.append(line)
            if re.match(r"--- run \d+ exit 1 after", line) or (
                "exit 1 after" in line
                and seen[:-1]
                and "pc1 step 7" in "".join(seen)
                and line.startswith("--- ux-log")
            ):
                break
        follow.send_signal(signal.SIGINT)
        assert follow.wait(30) == 0
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
    text = "".join(seen)
    assert "stdout pc1 step 3" in text and "stderr permanent: no ticket" in text
    assert re.search(r"exit 1 after \d", text), text
    wait_paused(agent)


def test_journal_runs_journalctl_for_the_agents_unit_with_its_lines_escaped(tmp_path, capsys, ux):
    path = ux.inventory(tmp_path, ux.table("ux-log", unit="venus-worker@2.service"))
    status, out, err = run(capsys, path, "journal", "ux-log", "-n", "5")
    assert status == 0, err
    assert out.splitlines() == [
        "argv: [--unit] [venus-worker@2.service] [--no-pager] [--output] [short-iso] [--lines] [5]",
        "2026-12-01T10:00:00+0000 w venus-worker[42]: thread #0: bad \\x1b]0;owned\\x07 line",
    ]
    # --follow runs until journalctl ends (or Ctrl-C): past the host's connect + command
    # timeouts (3 s here), which bound every other exchange
    quick = ux.inventory(
        tmp_path / "quick.toml", ux.table("ux-log", connect_timeout=2, command_timeout=1)
    )
    status, out, err = run(capsys, quick, "journal", "ux-log", "-f")
    assert status == 0, err
    assert out.splitlines()[-1] == "a line 4 s later"
    path.write_text(path.read_text().replace('unit = "venus-worker@2.service"', 'unit = "x;y"'))
    status, out, err = run(capsys, path, "journal", "ux-log")
    assert status == 2 and "unit: must be a systemd unit name" in err


def test_a_command_channel_sshd_refuses_is_that_hosts_error_not_an_internal_one(
    tmp_path, capsys, ux
):
    sshd = ux.sshd["ux-nosession"]
    table = {**ux.table("ux-log"), "name": "nosession", "address": sshd.address}
    path = ux.inventory(tmp_path, {**table, "port": sshd.port})
    status, out, err = run(capsys, path, "journal", "nosession")
    assert status == 1 and out == ""
    assert err.startswith("venusctl: nosession: session channel refused by sshd: "), err
    assert "internal error" not in err, err
    status, out, err = run(capsys, path, "list")  # the stream channel is no session
    assert status == 0 and out.splitlines()[1].split()[:2] == [
        "nosession",
        f"{sshd.address}:{sshd.port}",
    ], err


# -- 6. ssh with only the inventory's settings -------------------------------------------------


def test_ssh_runs_a_command_with_only_the_inventorys_settings(tmp_path, capsys, ssh_fleet):
    # isolated_home: no ~/.ssh, no ssh-agent; the inventory names key, known_hosts, port, user
    path = ssh_fleet.inventory(tmp_path, "w1", "down")
    status, out, err = run(capsys, path, "ssh", "w1", "true")
    assert (status, out) == (0, ""), err
    status, out, err = run(capsys, path, "ssh", "w1", "echo", "from", "$((6 * 7))")
    assert (status, out) == (0, "from 42\n"), err  # the remote shell reads the words
    status, out, err = run(capsys, path, "ssh", "w1", "exit 3")
    assert status == 3
    status, out, err = run(capsys, path, "ssh", "down", "true")
    assert status == 255 and "Connection refused" in err
    status, out, _ = run(capsys, path, "ssh", "--print", "w1", "true")
    sshd = ssh_fleet.hosts["w1"]
    assert out.startswith(f"ssh -F none -oHostName={sshd.address} -oPort={sshd.port} ")
    assert f"-oIdentityFile={ssh_fleet.ssh.client_key}" in out
    assert out.rstrip().endswith(f"-- {sshd.address} true")


def test_ssh_goes_through_the_jump_host_with_the_jump_hosts_own_settings(
    tmp_path, capsys, ssh_fleet
):
    # the jump host's key, user and known_hosts from ssh_config (as for `ssh -J`): OpenSSH's
    # -oProxyJump with -F none would reach it with none of them
    bastion, fleet = ssh_fleet.hosts["w2"], ssh_fleet.ssh
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host bastion\n  HostName {bastion.address}\n  Port {bastion.port}\n"
        f"  User {fleet.user}\n  IdentityFile {fleet.client_key}\n"
        f"  UserKnownHostsFile {fleet.known_hosts}\n  IdentitiesOnly yes\n"
    )
    path = ssh_fleet.inventory(
        tmp_path, ssh_fleet.host_table("w1", jump="bastion"), ssh_config=str(config)
    )
    status, document = run_json(capsys, path, "list")  # venusctl's own way first
    assert status == 0 and document["hosts"][0]["jump"].endswith(f"{bastion.port}"), document
    status, out, err = run(capsys, path, "ssh", "w1", "echo", "through")
    assert (status, out) == (0, "through\n"), err
    status, out, _ = run(capsys, path, "ssh", "--print", "w1", "true")
    assert "-oProxyCommand=ssh -F none" in out and "-oProxyJump" not in out


# -- 7. safer state moves ----------------------------------------------------------------------


def test_resuming_into_finished_names_the_sector_and_needs_force(tmp_path, capsys, ux):
    agent = ux.agents["ux-move"]
    before = wait_paused(agent, 0)
    sector = before["job_id"]
    path = ux.inventory(tmp_path, ux.table("ux-move"))
    status, out, err = run(capsys, path, "resume", "ux-move", "0", "Finished")
    assert status == 2 and out == ""
    assert err == (
        f"venusctl: not done: ux-move #0: resume into Finished finalises {sector} without a"
        " proof, which cannot be undone; add --force to do it\n"
    )
    status, out, err = run(capsys, path, "resume", "ux-move", "0", "Finished", "--force")
    assert status == 2 and "not confirmed: stdin is not a terminal; add --yes" in err
    assert thread(agent, 0)["job_id"] == sector  # nothing was sent
    status, out, err = run(capsys, path, "resume", "ux-move", "0", "Finished", "--force", "--yes")
    assert (status, out) == (0, "ux-move #0: resumed in state Finished\n"), err
    wait_until(lambda: thread(agent, 0)["job_id"] != sector, 30, 0.1, "a new sector")


def test_a_bulk_move_counts_the_sectors_and_needs_force(tmp_path, capsys, ux):
    agent = ux.agents["ux-move"]
    sector = wait_paused(agent, 0)["job_id"]
    path = ux.inventory(tmp_path, ux.table("ux-move"))
    argv = ["resume", "-l", "ux-move", "--paused", "--to-state", "Aborted"]
    status, out, err = run(capsys, path, *argv, "--dry-run")
    assert status == 0, err
    assert f"resume in Aborted: drops {sector} and its data" in out
    assert "  moves C1Done -> Aborted: 1 sector, dropped with their data" in out.splitlines()
    status, out, err = run(capsys, path, *argv, "--yes")
    assert status == 2 and err == (
        "venusctl: not done: this resume drops 1 sector and their data (see the plan), which"
        " cannot be undone; add --force to do it\n"
    )
    status, document = run_json(capsys, path, *argv, "--yes")
    assert status == 2 and document["error"]["code"] == "not-forced"
    assert document["moves"] == [
        {"from": "C1Done", "to": "Aborted", "sectors": 1, "job_ids": [sector], "threads": 1,
         "effect": "dropped with their data"}
    ]  # fmt: skip
    assert thread(agent, 0)["job_id"] == sector
    status, out, err = run(capsys, path, *argv, "--yes", "--force")
    assert status == 0 and "resumed 1 of 1 thread on 1 host" in out, err
    wait_until(lambda: thread(agent, 0)["job_id"] != sector, 30, 0.1, "a new sector")


def test_pause_wait_waits_until_the_thread_is_paused_and_says_so(tmp_path, capsys, ux):
    agent = ux.agents["ux-move"]
    path = ux.inventory(tmp_path, ux.table("ux-move"))
    wait_until(lambda: thread(agent, 1)["thread_state"]["state"] == "Running", 30, 0.05, "#1")
    status, out, err = run(capsys, path, "pause", "ux-move", "1", "--wait", "30s")
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("ux-move #1: pause queued") or lines[0] == "ux-move #1: paused"
    assert re.fullmatch(r"ux-move #1: Paused after \d+(\.\d)?s \(\w+\)", lines[-1]), lines
    assert thread(agent, 1)["thread_state"]["state"] == "Paused"
    status, out, err = run(capsys, path, "resume", "ux-move", "1")
    assert status == 0, err
    # in bulk: #0 (paused by its error) is skipped, #1 is waited for
    wait_until(lambda: thread(agent, 1)["thread_state"]["state"] == "Running", 30, 0.05, "#1")
    status, document = run_json(capsys, path, "pause", "-l", "ux-move", "--yes", "--wait", "30s")
    assert status == 0, document
    waited = {entry["index"]: entry for entry in document["waited"]["threads"]}
    assert waited[1]["paused"] is True and waited[1]["after"] >= 0
    assert run(capsys, path, "resume", "ux-move", "1")[0] == 0


def test_pause_wait_gives_up_at_its_timeout_and_leaves_the_pause_queued(
    tmp_path, capsys, ssh_fleet
):
    stuck = ssh_fleet.agents["stuck"]  # one thread in a 1 h stage
    path = ssh_fleet.inventory(tmp_path, "stuck")
    status, out, err = run(capsys, path, "pause", "stuck", "0", "--wait", "1s")
    assert status == 1
    assert "pause --wait timed out after 1s: 0 paused, still running: stuck #0" in err
    assert "their pauses stay queued" in err
    assert stuck.infos()[0]["pause_requested"] is True
    status, out, err = run(capsys, path, "resume", "stuck", "0")  # takes the pause back
    assert status == 0 and "pause request cancelled" in out, err
