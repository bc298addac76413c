"""Session fixtures: a real fleet of loopback sshd hosts, each with its own running agent.

`ssh_fleet` starts OpenSSH sshd processes (tests/sshfleet.py: generated host
keys, one client key, a known_hosts file) and one `venus-worker daemon` per
worker host, with its own config, socket and state directory. Every worker
runs the mock processor fast: thread #0 fails C2 permanently and stays
paused at C1Done with an error (like the seed's example), thread #1 keeps
sealing, so both a paused and a running thread exist to act on.

Hosts (all in one SshFleet):

- w1, w2, w3: plain workers (w3 is the one the pause/resume tests change);
- nostream: a worker whose sshd has AllowStreamLocalForwarding no;
- dead: a worker whose agent was stopped after writing its heartbeat;
- down: an sshd that is not running;
- rekey: an sshd (no agent) whose host key the tests may change;
- calm: a worker without faults whose chain waits last an hour, so its
  threads sit healthy in WaitPCLanded (the `health` tests pause, judge as
  stuck with short thresholds, and resume them).
- b1, b2: plain workers for the bulk pause/resume tests (test_venusctl_bulk_e2e.py);
- drainme: two threads with 1 s stages and no faults, for drain to wait on;
- stuck: one thread in a 1 h stage, for drain to time out on.

`Fleet.inventory` writes an inventory file of these hosts for venusctl
(`write_inventory` one of any hosts).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import tomlkit
from helpers import Agent, wait_until
from sshfleet import SshFleet, SshHost

# No connection keeper unless a test asks for one (tests/test_venusctl_keeper_e2e.py):
# a run's keeper would outlive the test, in the user's runtime folder.
os.environ.setdefault("VENUSCTL_PERSIST", "0")
# Where a run whose Environment lacks it would start one (no XDG_RUNTIME_DIR given).
STRAY_KEEPER_FOLDERS = (
    Path(tempfile.gettempdir()) / f"venusctl-{os.getuid()}",
    Path(f"/run/user/{os.getuid()}/venusctl"),
)


SESSION_TMP = pytest.StashKey[Path]()


@pytest.fixture(scope="session", autouse=True)
def session_tmp_noted(request, tmp_path_factory):
    """Where this session's tmp_path folders are, for pytest_sessionfinish below."""
    if request.config.option.basetemp is None:  # pytest's own /tmp/pytest-of-USER/pytest-N
        request.config.stash[SESSION_TMP] = tmp_path_factory.getbasetemp()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    """A passing run leaves nothing in /tmp: its tmp_path folders go too (pytest keeps the
    last three runs'); a failing run keeps them for a look."""
    basetemp = session.config.stash.get(SESSION_TMP, None)
    if basetemp is None or exitstatus != 0:
        return
    shutil.rmtree(basetemp, ignore_errors=True)
    current = basetemp.parent / "pytest-current"
    if current.is_symlink() and not current.exists():  # it pointed at this run
        current.unlink()
    with contextlib.suppress(OSError):
        basetemp.parent.rmdir()  # only if no other run's folder is left in it


@pytest.fixture(scope="session", autouse=True)
def no_keeper_left_behind():
    """A test that built its own Environment without VENUSCTL_PERSIST=0 starts a real
    keeper, which outlives the run: stopped here, its folder removed, and the run fails."""
    before = {folder for folder in STRAY_KEEPER_FOLDERS if folder.exists()}
    yield
    left = [folder for folder in STRAY_KEEPER_FOLDERS if folder.exists() and folder not in before]
    for folder in left:
        with contextlib.suppress(OSError, ValueError):
            os.kill(int((folder / "keeper.lock").read_text().strip()), signal.SIGTERM)
        shutil.rmtree(folder, ignore_errors=True)
    assert not left, f"a test started a connection keeper in {left}: give it VENUSCTL_PERSIST=0"


BIN = Path(sys.executable).parent
AGENT_COMMAND = str(BIN / "venus-worker")
VENUSCTL_COMMAND = str(BIN / "venusctl")
AGENT_START_TIMEOUT = 15.0

# Every fleet agent: its own socket and state under its folder, a heartbeat a second.
WORKER_TABLE = """\
[worker]
name = "{name}"
socket = "{dir}/agent.sock"
state_dir = "{dir}/state"
ping_interval = "1s"
"""

AGENT_CONFIG = (
    WORKER_TABLE
    + """

[sealing]
miner = 10000
max_retries = 1
recover_interval = "100ms"
seal_interval = "200ms"

[[sealing_thread]]
location = "{dir}/store1"

[[sealing_thread]]
location = "{dir}/store2"

[processors]
kind = "mock"

[processors.mock]
duration = "200ms"
wait_duration = "200ms"

[[processors.mock.faults]]
stage = "C2"
level = "permanent"
message = "No cached parameters found for stacked-proof-of-replication (test fleet)"
threads = [0]
"""
)

# No faults; every stage is quick except the chain waits, which last an hour
# (a pause cuts a wait short at once, so its threads can be paused at will).
CALM_AGENT_CONFIG = AGENT_CONFIG.split("[[processors.mock.faults]]")[0].replace(
    'wait_duration = "200ms"', 'wait_duration = "1h"'
)


# Slow stages that always succeed: drain has something Running to wait for.
DRAIN_AGENT_CONFIG = (
    WORKER_TABLE
    + """

[sealing]
miner = 20000
seal_interval = "50ms"

[[sealing_thread]]
location = "{dir}/store1"

[[sealing_thread]]
location = "{dir}/store2"

[processors]
kind = "mock"

[processors.mock]
duration = "1s"
wait_duration = "100ms"
"""
)

# One stage that outlasts any test: drain times out on it (a stop cuts it short).
STUCK_AGENT_CONFIG = (
    WORKER_TABLE
    + """

[sealing]
miner = 30000

[[sealing_thread]]
location = "{dir}/store1"

[processors]
kind = "mock"

[processors.mock]
duration = "1h"
"""
)


def fleet_agent(name: str, directory: Path, template: str = AGENT_CONFIG) -> Agent:
    """An Agent (not started) in `directory`, its config written from `template`."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "venus-worker.toml"
    config.write_text(template.format(name=name, dir=directory))
    return Agent(config, name)


def wait_for_paused_thread_0(agent: Agent) -> None:
    """Thread #0 of a fleet agent fails C2 and pauses at C1Done within about a second."""

    def paused_at_c1done() -> bool:
        first = agent.infos()[0]
        return first["thread_state"]["state"] == "Paused" and first["job_state"] == "C1Done"

    wait_until(paused_at_c1done, AGENT_START_TIMEOUT, 0.1, f"{agent.name}: #0 paused at C1Done")


def agent_host_table(
    name: str, sshd: SshHost, agent: Agent | None, /, **overrides: object
) -> dict[str, object]:
    """The [[host]] table `name` for sshd host `sshd`, with `agent`'s config and socket when
    there is one, then `overrides`."""
    table: dict[str, object] = {"name": name, "address": sshd.address, "port": sshd.port}
    if agent is not None:
        table.update(config=str(agent.config), socket=str(agent.socket))
    table.update(overrides)
    return table


@dataclass
class Fleet:
    """The running test fleet and how to write inventories for it."""

    root: Path
    ssh: SshFleet
    hosts: dict[str, SshHost]
    agents: dict[str, Agent] = field(default_factory=dict)
    scripts: dict[str, Path] = field(default_factory=dict)

    def host_table(self, sshd_name: str, /, **overrides: object) -> dict[str, object]:
        """The [[host]] table for sshd `sshd_name` (with its agent's config and socket)."""
        return agent_host_table(
            sshd_name, self.hosts[sshd_name], self.agents.get(sshd_name), **overrides
        )

    def inventory(
        self, path: Path, *hosts: str | dict, health: dict | None = None, **defaults: object
    ) -> Path:
        """Write an inventory for venusctl and return its path (a folder gets inventory.toml).

        Each host is an sshd name (its host_table) or a [[host]] table; [defaults] are
        the fleet's, then `defaults`; `health` is an optional [health] table.
        """
        if path.suffix != ".toml":
            path = path / "inventory.toml"
        tables = [self.host_table(host) if isinstance(host, str) else host for host in hosts]
        write_inventory(path, tables, **self.defaults(**defaults))
        if health:
            lines = [f"{key} = {json.dumps(value)}" for key, value in health.items()]
            path.write_text(path.read_text() + "\n[health]\n" + "\n".join(lines) + "\n")
        return path

    def defaults(self, **overrides: object) -> dict[str, object]:
        return fleet_defaults(self.ssh, **overrides)


def fleet_defaults(ssh: SshFleet, **overrides: object) -> dict[str, object]:
    """The [defaults] of an inventory reaching `ssh`'s hosts: its user, key and known_hosts,
    this venv's agent CLI; an override of None leaves that key out."""
    values: dict[str, object] = {
        "user": ssh.user,
        "identity_file": str(ssh.client_key),
        "known_hosts": str(ssh.known_hosts),
        # no ~/.ssh/config of whoever runs the tests
        "ssh_config": "none",
        "agent": AGENT_COMMAND,
        # generous: a loaded CI machine must not turn into a timeout row
        "connect_timeout": 10,
        "command_timeout": 20,
    }
    values.update(overrides)
    return {key: value for key, value in values.items() if value is not None}


def write_inventory(path: Path, hosts: list[dict], **defaults: object) -> Path:
    document = tomlkit.document()
    document["defaults"] = defaults
    tables = tomlkit.aot()
    for table in hosts:
        tables.append(table)
    document["host"] = tables
    path.write_text(tomlkit.dumps(document))
    return path


@pytest.fixture(scope="session")
def ssh_fleet():
    if not (shutil.which("sshd") or Path("/usr/sbin/sshd").exists()):
        pytest.fail("sshd is missing: install openssh-server (scripts/test.sh does)")
    # Short root: Unix socket paths must fit in 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="vc-", dir="/tmp"))
    ssh = SshFleet(root / "ssh")
    fleet = Fleet(root=root, ssh=ssh, hosts={})
    try:
        plain = ("w1", "w2", "w3", "nostream", "dead", "b1", "b2")
        special = {
            "calm": CALM_AGENT_CONFIG,
            "drainme": DRAIN_AGENT_CONFIG,
            "stuck": STUCK_AGENT_CONFIG,
        }
        for name in (*plain, "down", "rekey", *special):
            options = {"AllowStreamLocalForwarding": "no"} if name == "nostream" else None
            fleet.hosts[name] = ssh.add_host(name, sshd_options=options)
        for name, sshd in fleet.hosts.items():
            if name != "down":
                sshd.start()
        for name in plain:
            fleet.agents[name] = fleet_agent(name, root / "agents" / name).start()
        for name, config in special.items():
            fleet.agents[name] = fleet_agent(name, root / "agents" / name, config).start()
        for name in plain:
            wait_for_paused_thread_0(fleet.agents[name])
        fleet.agents["dead"].stop()
        fleet.scripts = _write_fake_agents(root / "fake-agents")
        yield fleet
    finally:
        for agent in fleet.agents.values():
            agent.stop()
        ssh.stop_all()
        shutil.rmtree(root, ignore_errors=True)


def _write_fake_agents(directory: Path) -> dict[str, Path]:
    """Stand-ins for a broken agent command on a host: garbage output, a hang."""
    directory.mkdir(parents=True)
    scripts = {
        "garbage": "#!/bin/sh\necho 'Welcome to worker-7!'\necho '{\"report\": '\n",
        # exec: the hang must end with the SSH channel, not keep sshd's session
        "hang": "#!/bin/sh\nexec sleep 30\n",
    }
    paths = {}
    for name, body in scripts.items():
        path = directory / name
        path.write_text(textwrap.dedent(body))
        path.chmod(0o755)
        paths[name] = path
    return paths


@pytest.fixture
def isolated_home(tmp_path, monkeypatch):
    """A HOME of its own: no ~/.ssh of the machine, no ssh-agent of the user."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.delenv("VENUSCTL_INVENTORY", raising=False)
    return home


def free_loopback_port(address: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((address, 0))
        return probe.getsockname()[1]


def run(capsys, inventory: Path, *argv: str) -> tuple[int, str, str]:
    """venusctl.main in-process against `inventory`: (exit status, stdout, stderr)."""
    import venusctl

    status = venusctl.main(["-i", str(inventory), *argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def run_json(capsys, inventory: Path, *argv: str) -> tuple[int, Any]:
    """The same with --json: (exit status, the decoded document)."""
    status, out, _ = run(capsys, inventory, *argv, "--json")
    return status, json.loads(out)
