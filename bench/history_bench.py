"""History benchmark (issue 15 point 8): `venusctl sector` and `stats` against `list`.

    .venv/bin/python bench/history_bench.py fleet [--hosts 30] [--tasks 1000] [--runs 5]
    .venv/bin/python bench/history_bench.py agent [--threads 128] [--calls 6000] [--rounds 3]

fleet: starts --hosts real OpenSSH sshd hosts on loopback (tests/sshfleet.py),
each with a live `venus-worker daemon` (2 mock threads in hour-long stages, so
the agents sit quiet) whose state folder already holds --tasks tasks of
history (written by worker_agent/history.py's own line encoder: 16 state
changes per sealer task, a retry in every tenth, over the last 30 days), then
times in the same run, round-robin, one untimed warm-up then --runs timed runs
of each, the whole command's wall time:

  list     `python venusctl.py -i INV list`
  sector   `python venusctl.py -i INV sector ID` (ID held by the middle host's history)
  stats    `python venusctl.py -i INV stats --since 7d`

each checked first with --json (every host answered through the stream
channel; the sector found on exactly its host; stats counted every host).
Goals: sector <= 1.5 x list, stats <= 2 x list.

agent: WorkerList latency while histories grow, in alternating rounds of fresh
daemons with `[worker] history = false` and with the history on (each thread
starting with 200 tasks of history, 128 busy threads with 1 s stages writing
a line at every state change): p50/p99/p99.9 over --calls keep-alive calls per
round, pooled per mode, and the daemon's RSS. Goal: p99 not worse than
BENCHMARKS.md's worker agent figure, and no worse than the history-off rounds.

Everything started here is stopped on exit; only 127.0.0.x addresses are used.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(BENCH))

import agent_bench  # noqa: E402
import fanout_bench  # noqa: E402
from fanout_bench import (  # noqa: E402
    PYTHON,
    VENUSCTL,
    Node,
    bench_environment,
    mock_agent_config,
    spawn_agent,
    stop_agents,
    wait_for_agent,
)
from sshfleet import SshFleet  # noqa: E402

from worker_agent.api import HistoryEntry  # noqa: E402
from worker_agent.history import FOLDER_NAME, entry_line, history_key  # noqa: E402
from worker_agent.states import PLANS, State  # noqa: E402

THREADS = 2
GOALS = {"sector_vs_list": 1.5, "stats_vs_list": 2.0}


# --------------------------------------------------------------------------- histories


def task_lines(index: int, miner: int, number: int, start: float, rng: random.Random) -> list:
    """The history of one finished sealer task: 16 state lines, a retry in every tenth."""
    plan = PLANS["sealer"]
    sector, now, lines = f"s-t0{miner}-{number}", start, []
    state = State.Empty
    while state is not State.Finished:
        to = plan.next_state(state, plan.happy_event(state))
        stage = plan.stage(state)
        run = rng.uniform(10, 50) if stage in ("PC1", "PC2", "C2") else rng.uniform(1, 5)
        if stage == "C2" and number % 10 == 0:
            now += run
            lines.append(
                HistoryEntry(
                    now,
                    "retry",
                    index,
                    sector,
                    "sealer",
                    state.value,
                    state.value,
                    stage,
                    round(run, 3),
                    round(run, 3),
                    "temporary",
                    "gpu busy",
                    retry=1,
                    note="retry 1 of 5",
                )  # fmt: skip
            )
        now += run
        fields = {"stage": stage, "duration": round(run, 3), "in_state": round(run, 3)}
        if stage == "-":
            fields = {"note": "new task"}
        lines.append(
            HistoryEntry(
                now, "state", index, sector, "sealer", state.value, to.value, outcome="ok", **fields
            )  # fmt: skip
        )
        state = to
    return lines


def grow_history(state_dir: Path, index: int, location: Path, tasks: list[int], miner: int) -> int:
    """Write a thread's history file as the agent would have: the header, then the tasks'
    lines, spread over the last 30 days. The bytes written."""
    folder = state_dir / FOLDER_NAME
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(miner * 1000 + index)
    first = time.time() - 30 * 86400
    step = 30 * 86400 / max(1, len(tasks))
    header = {"history": 1, "location": str(location), "index": index}
    chunks = [json.dumps(header, separators=(",", ":")).encode() + b"\n"]
    for position, number in enumerate(tasks):
        for entry in task_lines(index, miner, number, first + position * step, rng):
            chunks.append(entry_line(entry))
    data = b"".join(chunks)
    (folder / f"{history_key(location)}.jsonl").write_bytes(data)
    return len(data)


def config_text(node: Node, miner: int) -> str:
    return mock_agent_config(node, miner, THREADS, worker='history_size = "16MiB"\n')


def start_fleet(fleet: SshFleet, count: int, tasks: int) -> tuple[list[Node], int]:
    nodes, written = [], 0
    for number in range(count):
        nodes.append(Node(fleet.add_host(f"w{number + 1:02d}")))
    for node in nodes:
        node.host.start()
    for offset, node in enumerate(nodes):
        miner = 20000 + offset
        node.agent_dir.mkdir(parents=True, exist_ok=True)
        node.config.write_text(config_text(node, miner))
        per_thread = tasks // THREADS
        for index in range(THREADS):
            numbers = list(range(100 + index * per_thread, 100 + (index + 1) * per_thread))
            location = node.agent_dir / f"store{index}"
            written += grow_history(node.state_dir, index, location, numbers, miner)
        spawn_agent(node)
    for node in nodes:
        wait_for_agent(node)
    return nodes, written


def venusctl(inventory: Path, *argv: str) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    done = subprocess.run(
        [str(PYTHON), str(VENUSCTL), "-i", str(inventory), *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env=bench_environment(),  # each run connects itself, and starts no keeper
    )
    return time.perf_counter() - started, done


def check(inventory: Path, hosts: int, sector: str, holder: str) -> None:
    """Every method answers right before it is timed."""
    _, done = venusctl(inventory, "list", "--json")
    listed = json.loads(done.stdout)["hosts"]
    assert done.returncode == 0 and all(h["via"] == "stream" for h in listed), done.stdout[-500:]
    _, done = venusctl(inventory, "sector", sector, "--json")
    found = json.loads(done.stdout)
    assert done.returncode == 0 and [h["name"] for h in found["hosts"]] == [holder], found
    assert len(found["hosts"][0]["entries"]) >= 16
    _, done = venusctl(inventory, "stats", "--since", "7d", "--json")
    stats = json.loads(done.stdout)
    assert done.returncode == 0 and len(stats["hosts"]) == hosts, done.stdout[-500:]
    assert sum(row["tasks"] for row in stats["stages"] if row["stage"] == "PC1") > 0


def fleet_main(args) -> int:
    root = Path(tempfile.mkdtemp(prefix="vhb-", dir="/tmp"))
    fleet = SshFleet(root / "ssh")
    nodes: list[Node] = []
    try:
        started = time.perf_counter()
        nodes, written = start_fleet(fleet, args.hosts, args.tasks)
        ready = time.perf_counter() - started
        inventory = root / "inventory.toml"
        inventory.write_text(fanout_bench.venusctl_inventory(fleet, nodes))
        holder = nodes[len(nodes) // 2]
        number = 100 + args.tasks // 2 + 7  # thread #1's, mid-history
        sector = f"s-t0{20000 + len(nodes) // 2}-{number}"
        check(inventory, len(nodes), sector, holder.name)
        methods = {
            "list": ("list",),
            "sector": ("sector", sector),
            "stats": ("stats", "--since", "7d"),
        }
        times: dict[str, list[float]] = {name: [] for name in methods}
        for argv in methods.values():  # warm-up (page cache, .pyc)
            venusctl(inventory, *argv)
        for _ in range(args.runs):
            for name, argv in methods.items():
                seconds, done = venusctl(inventory, *argv)
                assert done.returncode == 0, done.stderr
                times[name].append(seconds)
        medians = {name: statistics.median(values) * 1000 for name, values in times.items()}
        result = {
            "hosts": len(nodes),
            "tasks_per_host": args.tasks,
            "history_bytes_per_host": written // len(nodes),
            "fleet_start_s": round(ready, 1),
            "median_ms": {name: round(value, 1) for name, value in medians.items()},
            "runs_ms": {
                name: [round(v * 1000, 1) for v in values] for name, values in times.items()
            },
            "sector_vs_list": round(medians["sector"] / medians["list"], 2),
            "stats_vs_list": round(medians["stats"] / medians["list"], 2),
            "machine": agent_bench.machine(),
        }
        result["goals_met"] = {name: result[name] <= goal for name, goal in GOALS.items()}
        print(json.dumps(result, indent=2))
        return 0 if all(result["goals_met"].values()) else 1
    finally:
        stop_agents(nodes)
        fleet.stop_all()
        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- the agent


def agent_round(args, history: bool) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="vhb-agent-", dir="/tmp"))
    try:
        config = agent_bench.write_config(folder, args.threads, args.stage, "30s")
        text = config.read_text()
        text = text.replace("[sealing]", ("" if history else "history = false\n") + "[sealing]")
        config.write_text(text)
        if history:
            for index in range(args.threads):
                location = folder / "stores" / str(index)
                numbers = list(range(1_000_000 + index * 1000, 1_000_000 + index * 1000 + 200))
                grow_history(folder / "state", index, location, numbers, 10000)
        started = time.perf_counter()
        proc = agent_bench.start_daemon(config)
        start_s = round(time.perf_counter() - started, 2)  # the histories are read before it
        try:
            time.sleep(args.busy_seconds)
            load = Path("/proc/loadavg").read_text().split()[0]
            calls = agent_bench.latency_keep_alive(folder / "agent.sock", args.calls)
            rss, peak = agent_bench.rss_mb(proc.pid)
            lines = sum(
                path.read_bytes().count(b"\n") for path in (folder / "state").rglob("*.jsonl")
            )
        finally:
            agent_bench.stop_daemon(proc)
        return {"history": history, "load": load, "calls": calls, "rss_mb": rss,
                "rss_peak_mb": peak, "history_lines": lines, "start_s": start_s}  # fmt: skip
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def agent_main(args) -> int:
    rounds, pooled = [], {False: [], True: []}
    for _ in range(args.rounds):
        for history in (False, True):
            done = agent_round(args, history)
            pooled[history] += done.pop("calls")
            rounds.append(done)
    result = {"threads": args.threads, "mock_stage": args.stage, "rounds": rounds}
    for history, calls in pooled.items():
        result["history_on" if history else "history_off"] = {
            **agent_bench.summary(calls),
            "p999_ms": round(agent_bench.percentile(calls, 0.999), 2),
        }
    result["machine"] = agent_bench.machine()
    print(json.dumps(result, indent=2))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    fleet = modes.add_parser("fleet", help="sector and stats against list over N hosts")
    fleet.add_argument("--hosts", type=int, default=30)
    fleet.add_argument("--tasks", type=int, default=1000, help="tasks of history per host")
    fleet.add_argument("--runs", type=int, default=5)
    agent = modes.add_parser("agent", help="WorkerList p99, history off and on")
    agent.add_argument("--threads", type=int, default=128)
    agent.add_argument("--calls", type=int, default=6000)
    agent.add_argument("--stage", default="1s")
    agent.add_argument("--busy-seconds", type=float, default=3.0)
    agent.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    return fleet_main(args) if args.mode == "fleet" else agent_main(args)


if __name__ == "__main__":
    sys.exit(main())
