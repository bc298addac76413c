"""Status requests sent ahead: before a status fan-out, the pool sends every host whose agent
channel it keeps its request at once (SessionPool.send_ahead), so that the round trips
overlap instead of each waiting for a fan-out thread to get to its host.

Real daemons on real Unix sockets (transport local); over real sshd, through the keeper, the
same results with and without it are test_venusctl_keeper_e2e.py's.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from agent_helpers import short_tmp
from conftest import AGENT_COMMAND, CALM_AGENT_CONFIG, fleet_agent, write_inventory
from helpers import Agent

import venusctl
from worker_agent import __version__

pytestmark = pytest.mark.e2e  # real daemons in every test

# Each agent answers a status in milliseconds: this is a hundred times that.
ANSWERED = 1.0


@pytest.fixture
def folder():
    with short_tmp() as path:
        yield path


def start_agents(folder: Path, count: int, template: str = CALM_AGENT_CONFIG) -> list[Agent]:
    return [fleet_agent(f"w{n}", folder / f"w{n}", template).start() for n in range(count)]


def local_hosts(folder: Path, agents: list[Agent]) -> list[venusctl.Host]:
    tables = [
        {
            "name": agent.name,
            "transport": "local",
            "config": str(agent.config),
            "socket": str(agent.socket),
            "agent": AGENT_COMMAND,
        }
        for agent in agents
    ]
    return list(venusctl.load_inventory(write_inventory(folder / "inv.toml", tables)).hosts)


def thread_view(status: venusctl.HostStatus) -> list[tuple]:
    return [(t.index, t.location, t.job_state, t.paused) for t in status.threads]


def settled(pool: venusctl.SessionPool, hosts: list[venusctl.Host]) -> list[list[tuple]]:
    """The hosts' thread views once they stop moving: a calm agent's first stages take
    200 ms each before its hour-long chain wait (under a full run's load, longer)."""
    views = None
    deadline = time.monotonic() + 30
    while True:
        now = [thread_view(pool.status(host)) for host in hosts]
        if now == views:
            return now
        assert time.monotonic() < deadline, f"the agents never settled: {now}"
        views = now
        time.sleep(0.5)


def test_the_replies_are_in_before_the_fan_out_asks_for_them(folder):
    agents = start_agents(folder, 3)
    hosts = local_hosts(folder, agents)
    pool = venusctl.SessionPool(venusctl.SshContext({}))
    try:
        before = settled(pool, hosts)  # and the channels are kept
        pool.send_ahead(hosts)
        time.sleep(ANSWERED)
        for agent in agents:
            agent.kill()
            agent.proc.wait(10)
        # Every agent is gone: what the pool reads now, each answered before it was asked.
        after = [thread_view(pool.status(host)) for host in hosts]
    finally:
        pool.close()
        for agent in agents:
            agent.close()
    assert after == before
    assert all(len(view) == 2 for view in after)


def test_a_reply_sent_ahead_is_never_read_as_another_calls(folder):
    (agent,) = start_agents(folder, 1)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(agent.socket))
            rpc = venusctl.JsonRpcClient(sock, 5.0)
            assert rpc.send_ahead(venusctl.RpcAgent.STATUS_CALLS)
            assert not rpc.send_ahead(venusctl.RpcAgent.STATUS_CALLS)  # one at a time
            # Another call first: the reply waiting is read past, the call gets its own.
            assert rpc.call("VenusWorker.WorkerVersion", []) == __version__
            threads, report = rpc.batch(venusctl.RpcAgent.STATUS_CALLS)
            assert [info["index"] for info in threads] == [0, 1]
            assert report["name"] == "w0"
            # A batch of other calls is no taker of it either.
            assert rpc.send_ahead(venusctl.RpcAgent.STATUS_CALLS)
            version, listed = rpc.batch(
                [("VenusWorker.WorkerVersion", []), ("VenusWorker.WorkerList", [])]
            )
            assert version == __version__ and len(listed) == 2
            assert rpc.reusable
    finally:
        agent.close()


def test_a_channel_with_an_unread_reply_is_closed_not_read_later(folder):
    (agent,) = start_agents(folder, 1)
    (host,) = local_hosts(folder, [agent])
    pool = venusctl.SessionPool(venusctl.SshContext({}))
    try:
        pool.status(host)
        pool.send_ahead(hosts := [host])  # a fan-out that ended before it asked the host
        agent.call("WorkerPause", 0)
        agent.wait_for(lambda infos: infos[0]["thread_state"]["state"] == "Paused")
        pool.send_ahead(hosts)  # the next fan-out: the reply of before must not be its answer
        status = pool.status(host)
    finally:
        pool.close()
        agent.close()
    assert status.threads[0].paused


def test_a_channel_the_agent_closed_while_idle_is_opened_again(folder):
    idle_one_second = CALM_AGENT_CONFIG.replace(
        'ping_interval = "1s"', 'ping_interval = "1s"\nidle_timeout = "1s"'
    )
    (agent,) = start_agents(folder, 1, idle_one_second)
    (host,) = local_hosts(folder, [agent])
    pool = venusctl.SessionPool(venusctl.SshContext({}))
    try:
        first = pool.status(host)
        # The agent closes a kept-alive connection that waits longer than idle_timeout.
        time.sleep(1.5)
        pool.send_ahead([host])
        again = pool.status(host)
    finally:
        pool.close()
        agent.close()
    assert [(t.index, t.location) for t in again.threads] == [
        (t.index, t.location) for t in first.threads
    ]
    assert again.report is not None and again.report.time > first.report.time
    assert "Traceback" not in agent.log_text()
