"""Watch refresh benchmark: one `list --watch` refresh of N hosts over kept SSH connections.

    .venv/bin/python bench/watch_bench.py [--sizes 1,10,30] [--runs 30]

Starts max(sizes) real OpenSSH sshd hosts on loopback, each with a live `venus-worker
daemon` (bench/fanout_bench.py's fleet: same hosts, agents, inventory), then, for every
size N (the first N hosts), times in this process, round-robin:

  refresh   what `list --watch` / `threads --watch` do per frame after the first: the
            fan-out of SessionPool.status over the kept SSH connections and kept agent
            channels (one JSON-RPC batch round trip per host). Its "cold" column is the
            first refresh, which connects (TCP, SSH handshake, auth, channel).
  frame     refresh + the table text of `list`, as a frame is drawn
  one-shot  `venusctl list` as a new process (what `watch venusctl list` would pay per
            frame: interpreter, imports, connections)

Each method gets one untimed warm-up ("cold"), then --runs timed runs; medians, 90th
percentile and max are printed. The target (issue 6): a refresh at N = 30 well under
100 ms. Everything started here is stopped on exit, Ctrl-C included; 127.0.0.x only.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from fanout_bench import (
    REPO,
    BenchError,
    Node,
    SshFleet,
    bench_environment,
    machine_description,
    measure,
    run_with_fleet,
    venusctl_inventory,
    venusctl_list,
    write,
)

sys.path.insert(0, str(REPO))

import venusctl  # noqa: E402

TARGET_SIZE = 30
TARGET_REFRESH = 0.100  # seconds, "well under"


def kept_refresh(ctx: venusctl.Context, hosts: list[venusctl.Host], pool) -> Callable[[], float]:
    def run() -> float:
        started = time.perf_counter()
        outcomes = ctx.fan_out(hosts, pool.status, progress=False)
        took = time.perf_counter() - started
        check_answers(outcomes)
        return took

    return run


def kept_frame(ctx: venusctl.Context, hosts: list[venusctl.Host], pool) -> Callable[[], float]:
    args = argparse.Namespace(expiration=600.0, wide=False)

    def run() -> float:
        started = time.perf_counter()
        text, status = venusctl.list_report(ctx, args, hosts, pool, progress=False)
        took = time.perf_counter() - started
        if status != venusctl.ExitStatus.OK or len(text.splitlines()) != len(hosts) + 1:
            raise BenchError(f"frame: status {status}, {text[:200]!r}")
        return took

    return run


def check_answers(outcomes: dict) -> None:
    for name, outcome in outcomes.items():
        ok = isinstance(outcome, venusctl.HostStatus) and outcome.threads is not None
        if not ok or outcome.via != "stream":
            raise BenchError(f"refresh: {name} answered {outcome!r:.200}")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def run_bench(options, root: Path, fleet: SshFleet, nodes: list[Node]) -> None:
    env = bench_environment()
    path = write(root / "inventory.toml", venusctl_inventory(fleet, nodes))
    inventory = venusctl.load_inventory(path)
    rows = []
    for size in options.sizes:
        hosts = list(inventory.hosts[:size])
        quiet = venusctl.Environment(stdout=io.StringIO(), stderr=io.StringIO())
        ctx = venusctl.Context(inventory=inventory, env=quiet)
        pool = venusctl.SessionPool(ctx.ssh)
        subset = write(root / f"inventory-{size}.toml", venusctl_inventory(fleet, nodes[:size]))
        try:
            samples = measure(
                {
                    "refresh": kept_refresh(ctx, hosts, pool),
                    "frame": kept_frame(ctx, hosts, pool),
                    "one-shot": venusctl_list(subset, [n.name for n in nodes[:size]], env),
                },
                options.runs,
            )
        finally:
            pool.close()
        print(f"\nN = {size}: ms (median, p90, max of {options.runs}; cold = first run)")
        for name, sample in samples.items():
            line = [sample.median, percentile(sample.runs, 0.9), max(sample.runs), sample.cold]
            print(f"  {name:<10} " + " ".join(f"{value * 1000:8.1f}" for value in line))
        rows.append((size, samples))

    print("\nmachine:\n  " + "\n  ".join(machine_description()))
    print("\n| N | refresh median | refresh p90 | refresh max | first refresh (connect) |", end="")
    print(" frame median | one-shot `venusctl list` median |")
    print("|---|---|---|---|---|---|---|")
    for size, samples in rows:
        refresh, frame, one_shot = samples["refresh"], samples["frame"], samples["one-shot"]
        cells = [
            refresh.median,
            percentile(refresh.runs, 0.9),
            max(refresh.runs),
            refresh.cold,
            frame.median,
            one_shot.median,
        ]
        print(f"| {size} | " + " | ".join(f"{value * 1000:.1f}" for value in cells) + " |")
    largest, samples = rows[-1]
    median = statistics.median(samples["refresh"].runs)
    verdict = "met" if median < TARGET_REFRESH else "MISSED"
    print(
        f"\ntarget at N = {TARGET_SIZE}: refresh well under {TARGET_REFRESH * 1000:.0f} ms;"
        f" N = {largest}: median {median * 1000:.1f} ms -> {verdict}"
    )


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,10,30", help="comma-separated fleet sizes")
    parser.add_argument("--runs", type=int, default=30, help="timed runs per method")
    options = parser.parse_args(argv)
    options.sizes = sorted({int(size) for size in options.sizes.split(",")})
    if options.runs < 1 or options.sizes[0] < 1:
        parser.error("--runs and every size must be at least 1")
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    # As for the other tools in fanout_bench: the fleet's key file alone, no ssh-agent.
    os.environ.pop("SSH_AUTH_SOCK", None)
    return run_with_fleet(options, "vwb-", run_bench)


if __name__ == "__main__":
    sys.exit(main())
