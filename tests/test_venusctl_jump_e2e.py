"""Targets reachable only through a jump host: ProxyJump, chains, ProxyCommand, failures.

The targets' sshd run inside a network namespace made for this module
(tests/netns.py): 127.0.0.21-23 in there, port 22, nothing outside can reach
them. The jump host accepts on 127.0.0.x outside and runs each connection's
`sshd -i` inside, so whatever reaches a target went through it; its log
(LogLevel DEBUG1) shows every connection it accepted and every channel it
forwarded. A second jump host, inside, makes a 2-hop chain. The targets answer
through the session fleet's agents (their sockets are files, visible inside).
A machine that cannot make a namespace fails these tests with the reason.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from conftest import fleet_defaults, run, run_json, write_inventory
from netns import InetdJump, Namespace, NamespaceError
from sshfleet import SshFleet

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("isolated_home")]

TARGETS = {"t1": "127.0.0.21", "t2": "127.0.0.22", "t3": "127.0.0.23"}
HOP2 = "127.0.0.31"


class Behind:
    """The namespace, its targets, the jump host into it and a second hop inside."""

    def __init__(self, root, namespace: Namespace) -> None:
        self.root = root
        self.namespace = namespace
        self.fleet = SshFleet(root / "ssh")
        self.targets = {
            name: self.fleet.add_host(name, address=address, netns=namespace.name, port=22)
            for name, address in TARGETS.items()
        }
        self.hop2 = self.fleet.add_host(
            "hop2", {"LogLevel": "DEBUG1"}, address=HOP2, netns=namespace.name, port=22
        )
        self.bastion = self.fleet.add_host("bastion", {"LogLevel": "DEBUG1"})
        for sshd in (*self.targets.values(), self.hop2):
            sshd.start()
        self.jump = InetdJump(self.bastion, namespace)

    def ssh_config(self, path, extra: str = "") -> str:
        """How to reach the jump hosts (their own keys, users, known_hosts), then `extra`."""
        fleet = self.fleet
        common = (
            f"  User {fleet.user}\n  IdentityFile {fleet.client_key}\n"
            f"  UserKnownHostsFile {fleet.known_hosts}\n  IdentitiesOnly yes\n"
        )
        path.write_text(
            f"Host bastion\n  HostName {self.bastion.address}\n  Port {self.bastion.port}\n"
            + common
            + f"Host hop2\n  HostName {HOP2}\n"
            + common
            + extra
        )
        return str(path)

    def stop(self) -> None:
        self.jump.stop()
        self.fleet.stop_all()


@pytest.fixture(scope="module")
def behind(tmp_path_factory):
    try:
        namespace = Namespace()
    except NamespaceError as error:
        pytest.fail(f"{error} (these tests need a network namespace; run as root)")
    behind = None
    try:
        behind = Behind(tmp_path_factory.mktemp("behind"), namespace)
        yield behind
    finally:
        if behind is not None:
            behind.stop()
        namespace.delete()
        assert not namespace.exists()


def inventory(tmp_path, ssh_fleet, behind, ssh_config, names=tuple(TARGETS), **defaults):
    tables = []
    for position, name in enumerate(names):
        agent = ssh_fleet.agents[("w1", "w2", "w3")[position % 3]]
        tables.append(
            {
                "name": name,
                "address": behind.targets[name].address,
                "config": str(agent.config),
                "socket": str(agent.socket),
            }
        )
    values = fleet_defaults(behind.fleet, ssh_config=ssh_config, **defaults)
    return write_inventory(tmp_path / "inventory.toml", tables, **values)


def count(log: str, what: str) -> int:
    return log.count(what)


def test_the_targets_are_reachable_only_through_the_jump_host(behind):
    for address in TARGETS.values():
        with pytest.raises(ConnectionRefusedError):  # this machine's own 127.0.0.21:22
            socket.create_connection((address, 22), timeout=2).close()
        assert behind.namespace.can_connect(address, 22)


def test_targets_behind_a_jump_host_share_one_connection_to_it(tmp_path, capsys, ssh_fleet, behind):
    before_log, before = behind.jump.log(), behind.jump.connections
    config = behind.ssh_config(tmp_path / "ssh_config")
    path = inventory(tmp_path, ssh_fleet, behind, config, jump="bastion")
    status, document = run_json(capsys, path, "list")
    assert status == 0, document
    bastion = behind.bastion
    for entry in document["hosts"]:
        assert entry["error"] is None and entry["via"] == "stream"
        assert entry["jump"] == f"{behind.fleet.user}@{bastion.address}:{bastion.port}"
        assert entry["dest"] == f"{behind.targets[entry['name']].address}:22"
    # one TCP connection, one login at the jump host, one forwarded channel per target
    assert behind.jump.connections == before + 1
    log = behind.jump.log()[len(before_log) :]
    assert count(log, "Accepted publickey") == 1
    for address in TARGETS.values():
        assert count(log, f"target {address} port 22") == 1
    status, out, _ = run(capsys, path, "list", "--wide")
    assert status == 0
    assert f"{behind.fleet.user}@{bastion.address}:{bastion.port}" in out.splitlines()[1]


def test_a_failing_jump_host_is_one_clear_cause_on_every_row(tmp_path, capsys, ssh_fleet, behind):
    config = behind.ssh_config(tmp_path / "ssh_config")
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind((behind.bastion.address, 0))
        closed = probe.getsockname()[1]
    text = Path(config).read_text().replace(f"Port {behind.bastion.port}", f"Port {closed}", 1)
    (tmp_path / "refused").write_text(text)
    path = inventory(tmp_path, ssh_fleet, behind, str(tmp_path / "refused"), jump="bastion")
    status, document = run_json(capsys, path, "list")
    assert status == 1
    expected = {
        "kind": "jump-host",
        "message": f"jump host bastion ({behind.bastion.address}:{closed}): connection refused",
    }
    assert [entry["error"] for entry in document["hosts"]] == [expected] * len(TARGETS)
    # a jump host whose key is unknown is refused like any host, once for every row
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    (tmp_path / "unknown").write_text(
        text.replace(f"Port {closed}", f"Port {behind.bastion.port}").replace(
            str(behind.fleet.known_hosts), str(empty)
        )
    )
    before = behind.jump.connections
    path = inventory(tmp_path, ssh_fleet, behind, str(tmp_path / "unknown"), jump="bastion")
    status, document = run_json(capsys, path, "list")
    assert status == 1
    messages = {entry["error"]["message"] for entry in document["hosts"]}
    assert len(messages) == 1
    assert messages.pop().startswith(
        f"jump host bastion ({behind.bastion.address}:{behind.bastion.port}): unknown host key"
    )
    assert behind.jump.connections == before + 1  # tried once for all of them


def test_a_target_down_behind_the_jump_host_is_its_own_row(tmp_path, capsys, ssh_fleet, behind):
    config = behind.ssh_config(tmp_path / "ssh_config")
    tables_path = inventory(tmp_path, ssh_fleet, behind, config, jump="bastion")
    text = tables_path.read_text().replace('address = "127.0.0.23"', 'address = "127.0.0.29"')
    tables_path.write_text(text)
    status, document = run_json(capsys, tables_path, "list")
    assert status == 1
    rows = {entry["name"]: entry["error"] for entry in document["hosts"]}
    assert rows["t1"] is None and rows["t2"] is None
    assert rows["t3"]["kind"] == "unreachable"
    assert rows["t3"]["message"].startswith(
        f"jump host bastion ({behind.bastion.address}:{behind.bastion.port}) cannot reach"
        " 127.0.0.29:22"
    )


def test_a_two_hop_chain_from_ssh_config(tmp_path, capsys, ssh_fleet, behind):
    before_jump, before_hop2 = behind.jump.log(), behind.hop2.log_path.read_text()
    config = behind.ssh_config(
        tmp_path / "ssh_config", "Host 127.0.0.2?\n  ProxyJump bastion,hop2\n"
    )
    path = inventory(tmp_path, ssh_fleet, behind, config)
    status, document = run_json(capsys, path, "list")
    assert status == 0, document
    assert {entry["jump"] for entry in document["hosts"]} == {
        f"{behind.fleet.user}@{behind.bastion.address}:{behind.bastion.port},"
        f"{behind.fleet.user}@{HOP2}:22"
    }
    jump_log = behind.jump.log()[len(before_jump) :]
    hop2_log = behind.hop2.log_path.read_text()[len(before_hop2) :]
    # the first hop carried one channel, to the second; the second one per target
    assert count(jump_log, "server_request_direct_tcpip") == 1
    assert count(jump_log, f"target {HOP2} port 22") == 1
    assert count(hop2_log, "Accepted publickey") == 1
    for address in TARGETS.values():
        assert count(hop2_log, f"target {address} port 22") == 1


def test_proxy_command_through_the_jump_host(tmp_path, capsys, ssh_fleet, behind):
    before = behind.jump.log()
    config_path = tmp_path / "ssh_config"
    behind.ssh_config(config_path)
    proxy = (
        f"Host 127.0.0.2?\n  ProxyCommand ssh -F {config_path} -o BatchMode=yes -W %h:%p bastion\n"
    )
    config_path.write_text(config_path.read_text() + proxy)
    path = inventory(tmp_path, ssh_fleet, behind, str(config_path), names=("t1",))
    status, document = run_json(capsys, path, "list")
    assert status == 0, document
    log = behind.jump.log()[len(before) :]
    assert count(log, "target 127.0.0.21 port 22") == 1
