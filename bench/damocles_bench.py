"""The damocles backend's round trips: one SSH connection, requests through direct-tcpip.

    .venv/bin/python bench/damocles_bench.py [--runs 200]

Starts one real OpenSSH sshd on loopback (tests/sshfleet.py) and the test
stand-in (tests/damocles_standin.py, current shape) on 127.0.0.1, connects
once with venusctl's own SSH code, then times, in-process, medians of:

  channel open        a direct-tcpip channel to the stand-in, nothing sent
  1 request/channel   open a channel, WorkerList, close (what a fresh call costs)
  keep-alive request  WorkerList on an open channel (what venusctl's second call costs)
  batch, kept channel  one HTTP request carrying [List, Version], on the open channel
  batch, fresh channel the same on a new channel
  status              DamoclesAgent.status as venusctl runs it: List and Version,
                      one channel each

and the whole `python venusctl.py list` (one damocles host) as a subprocess.
The stand-in is Python (one thread per connection, each reply written in one
send with TCP_NODELAY, as hyper does), so absolute times include its cost;
the differences between rows are what venusctl's choices change.
"""

from __future__ import annotations

import argparse
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
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="vcdb-", dir="/tmp"))
    fleet = SshFleet(root / "ssh")
    sshd = fleet.add_host("dam")
    standin = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "damocles_standin.py"), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        sshd.start()
        port = int(standin.stdout.readline().rsplit(":", 1)[1])
        inventory = root / "inventory.toml"
        inventory.write_text(
            f'[defaults]\nuser = "{fleet.user}"\nidentity_file = "{fleet.client_key}"\n'
            f'known_hosts = "{fleet.known_hosts}"\nssh_config = "{root}/none"\n'
            f'[[host]]\nname = "dam"\naddress = "{sshd.address}"\nport = {sshd.port}\n'
            f'backend = "damocles"\nrpc = "127.0.0.1:{port}"\n'
        )
        host = venusctl.load_inventory(inventory).hosts[0]
        session = venusctl.connect_ssh(host, venusctl.SshContext())
        results = measure(session, args.runs)
        session.close()
        results["venusctl list (process)"] = median_ms(
            max(5, args.runs // 20),
            lambda: subprocess.run(
                [sys.executable, str(REPO / "venusctl.py"), "-i", str(inventory), "list"],
                check=True,
                capture_output=True,
            ),
        )
    finally:
        standin.terminate()
        standin.wait()
        fleet.stop_all()
    for name, value in results.items():
        print(f"{name:26} {value:8.2f} ms")
    return 0


def measure(session: venusctl.SshSession, runs: int) -> dict[str, float]:
    def channel_only() -> None:
        session.open_damocles().rpc.close()

    def one_per_channel() -> None:
        agent = session.open_damocles()
        agent.rpc.call(LIST, [])
        agent.rpc.close()

    def fresh_batch() -> None:
        agent = session.open_damocles()
        agent.rpc.batch([(LIST, []), (VERSION, [])])
        agent.rpc.close()

    def status() -> None:
        agent = session.open_damocles()
        agent.status()
        agent.rpc.close()

    kept = session.open_damocles()
    results = {
        "channel open": median_ms(runs, channel_only),
        "1 request/channel": median_ms(runs, one_per_channel),
        "keep-alive request": median_ms(runs, lambda: kept.rpc.call(LIST, [])),
        "batch, fresh channel": median_ms(runs, fresh_batch),
        "batch, kept channel": median_ms(runs, lambda: kept.rpc.batch([(LIST, []), (VERSION, [])])),
        "status (List+Version)": median_ms(runs, status),
    }
    kept.rpc.close()
    return results


if __name__ == "__main__":
    sys.exit(main())
