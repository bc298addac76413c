#!/usr/bin/env python3
"""Control-socket starvation: slow trickling clients against a legitimate WorkerList.

Starts a real `venus-worker daemon` (4 mock threads, the default
request_timeout of 10 s), opens --clients connections that each send one
byte of a request every --every seconds (reconnecting when the daemon closes
them, as an attacker would), and meanwhile calls WorkerList on a fresh
connection every 0.5 s for --seconds seconds. Issue 12's figure: with 200
clients trickling a byte every 4 s, every WorkerList is answered within 1 s
for 60 s.

    .venv/bin/python bench/trickle_bench.py [--clients 200] [--every 4] [--seconds 60]
    .venv/bin/python bench/trickle_bench.py --repo /path/to/other/checkout   # e.g. main

Prints the latencies (median, 99th percentile, max), the calls that failed,
how often the daemon closed a trickler, and the machine.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from agent_helpers import Tricklers, worker_list_latencies, write_config  # noqa: E402
from agent_soak import machine  # noqa: E402

from worker_agent.client import AgentClient  # noqa: E402
from worker_agent.protocol import RpcError  # noqa: E402


def wait_ready(sock: Path, daemon: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            with AgentClient(sock, timeout=2) as client:
                client.call("VenusWorker.WorkerVersion")
            return
        except (OSError, RpcError):
            if time.monotonic() > deadline or daemon.poll() is not None:
                raise SystemExit(f"the daemon did not start:\n{log.read_text()}") from None
            time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--every", type=float, default=4.0, help="seconds between two bytes")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--repo", type=Path, default=REPO, help="run this checkout's agent")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="trickle-", dir="/tmp"))
    try:
        config = write_config(folder, threads=4, worker='ping_interval = "5s"')
        with open(folder / "daemon.log", "wb") as log:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "worker_agent", "daemon", "-c", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=args.repo,
            )
        try:
            sock = folder / "agent.sock"
            wait_ready(sock, daemon, folder / "daemon.log")
            with Tricklers(sock, args.clients, args.every) as attack:
                time.sleep(min(args.every, 5.0))  # every trickler connected once
                latencies = worker_list_latencies(sock, args.seconds, 0.5)
            closed = attack.reconnects
        finally:
            daemon.kill()
            daemon.wait()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    answered = sorted(x for x in latencies if x is not None)
    failed = len(latencies) - len(answered)
    print(f"machine: {machine()}")
    print(
        f"agent from {args.repo}: {args.clients} clients trickling a byte every {args.every:g} s, "
        f"WorkerList every 0.5 s for {args.seconds:g} s"
    )
    print(f"  WorkerList calls     {len(latencies)} ({failed} failed)")
    if answered:
        p99 = answered[min(len(answered) - 1, int(len(answered) * 0.99))]
        print(
            f"  latency ms           median {statistics.median(answered) * 1000:.1f}, "
            f"p99 {p99 * 1000:.1f}, max {answered[-1] * 1000:.1f}"
        )
        print(f"  within 1 s           {sum(1 for x in answered if x < 1.0)} of {len(latencies)}")
    print(f"  tricklers closed     {closed}")
    return 0 if answered and not failed and answered[-1] < 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
