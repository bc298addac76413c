"""The damocles backend's round trips: one SSH connection, requests through direct-tcpip.

    .venv/bin/python bench/damocles_bench.py [--runs 200] [--release v0.13.0]

Starts one real OpenSSH sshd on loopback (tests/sshfleet.py) and the test
stand-in (tests/damocles_standin.py --release TAG: the worker's HTTP server as
hyper 0.14 speaks it, keep-alive without an idle timeout, each reply written
in one send with TCP_NODELAY) on 127.0.0.1, connects once with venusctl's own
SSH code, then times, in-process, medians of:

  channel open             a direct-tcpip channel to the stand-in, nothing sent
  request, fresh channel   open a channel, WorkerList, close (venusctl before
                           issue 14: a channel per request)
  request, kept channel    WorkerList on a channel kept open (venusctl now)
  batch, kept channel      one HTTP request carrying [List, Version]
  status, channel each     List and Version, a fresh channel each (before)
  status, kept channel     DamoclesAgent.status as venusctl runs it now: one
                           batch on the kept channel
  pause, kept channel      DamoclesAgent.pause of a running thread (its
                           WorkerList, then WorkerPause: two round trips)

then, as whole processes (fewer runs): `venusctl list` of the one host, and
what an operator would run instead, `ssh HOST curl ... WorkerList` with
OpenSSH (a new connection each time, curl on the worker host).
The stand-in is Python, so absolute times include its cost; the differences
between rows are what venusctl's choices change.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from sshfleet import SshFleet  # noqa: E402

import venusctl  # noqa: E402
from worker_agent import api  # noqa: E402

LIST = api.Method.LIST.value
VERSION = api.Method.VERSION.value


def median_ms(runs: int, work: Callable[[], object]) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--release", default="v0.13.0", help="the stand-in's damocles tag")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="vcdb-", dir="/tmp"))
    fleet = SshFleet(root / "ssh")
    sshd = fleet.add_host("dam")
    standin = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "tests" / "damocles_standin.py"),
            "--port",
            "0",
            "--release",
            args.release,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        sshd.start()
        port = int(standin.stdout.readline().rsplit(":", 1)[1])
        inventory = root / "inventory.toml"
        inventory.write_text(
            f'[defaults]\nuser = "{fleet.user}"\nidentity_file = "{fleet.client_key}"\n'
            f'known_hosts = "{fleet.known_hosts}"\nssh_config = "none"\n'
            f'[[host]]\nname = "dam"\naddress = "{sshd.address}"\nport = {sshd.port}\n'
            f'backend = "damocles"\nrpc = "127.0.0.1:{port}"\n'
        )
        host = venusctl.load_inventory(inventory).hosts[0]
        session = venusctl.connect_ssh(host, venusctl.SshContext())
        results = measure(session, args.runs)
        session.close()
        processes = max(5, args.runs // 20)
        results["venusctl list (process)"] = median_ms(
            processes,
            lambda: subprocess.run(
                [sys.executable, str(REPO / "venusctl.py"), "-i", str(inventory), "list"],
                check=True,
                capture_output=True,
                env=dict(os.environ, VENUSCTL_PERSIST="0"),  # a cold run; no keeper left behind
            ),
        )
        results["ssh HOST curl (process)"] = median_ms(
            processes, lambda: ssh_curl(fleet, sshd, port)
        )
    finally:
        standin.terminate()
        standin.wait()
        fleet.stop_all()
        shutil.rmtree(root, ignore_errors=True)
    print(
        f"# {platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} CPUs,"
        f" load {os.getloadavg()[0]:.2f}; stand-in --release {args.release};"
        f" medians of {args.runs} ({max(5, args.runs // 20)} for processes)"
    )
    for name, value in results.items():
        print(f"{name:26} {value:8.2f} ms")
    return 0


def ssh_curl(fleet: SshFleet, sshd, port: int) -> None:
    """An operator's one-liner: OpenSSH to the host, curl to the worker's loopback port."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": LIST, "params": []})
    remote = shlex.join(
        [
            "curl",
            "-s",
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
            f"http://127.0.0.1:{port}/",
        ]
    )
    subprocess.run(
        [
            "ssh",
            "-F",
            "none",
            "-i",
            str(fleet.client_key),
            "-o",
            f"UserKnownHostsFile={fleet.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-p",
            str(sshd.port),
            f"{fleet.user}@{sshd.address}",
            remote,
        ],
        check=True,
        capture_output=True,
    )


def measure(session: venusctl.SshSession, runs: int) -> dict[str, float]:
    def channel_only() -> None:
        session.open_damocles().close()

    def fresh_request() -> None:
        agent = session.open_damocles()
        agent.rpc.call(LIST, [])
        agent.close()

    def status_channel_each() -> None:
        for method in (LIST, VERSION):
            agent = session.open_damocles()
            agent.rpc.call(method, [])
            agent.close()

    kept = session.open_damocles()
    kept.status()  # the channel has carried a request: it is kept
    results = {
        "channel open": median_ms(runs, channel_only),
        "request, fresh channel": median_ms(runs, fresh_request),
        "request, kept channel": median_ms(runs, lambda: kept.rpc.call(LIST, [])),
        "batch, kept channel": median_ms(runs, lambda: kept.rpc.batch([(LIST, []), (VERSION, [])])),
        "status, channel each": median_ms(runs, status_channel_each),
        "status, kept channel": median_ms(runs, kept.status),
        "pause, kept channel": median_ms(runs, lambda: kept.pause(1)),
    }
    kept.close()
    return results


if __name__ == "__main__":
    sys.exit(main())
