#!/usr/bin/env python3
"""Benchmark of the worker agent: 128 busy mock threads on one daemon.

Measures, against a real daemon process on a real Unix socket:

- WorkerList latency over one keep-alive connection (p50/p99/max over N calls),
  and with a new connection per call (what the CLI does), while the threads
  are busy; and once more after all threads are paused (separates the cost of
  the busy threads from the cost of the request itself);
- the daemon's RSS (current and peak) while the threads are busy;
- the daemon's CPU while idle (all 128 threads paused), in % of one core.

Targets (issue 2): p99 <= 5 ms, RSS <= 40 MB, idle CPU <= 1 %.

With ``--metrics`` it measures the node_exporter textfile instead (issue 16):

- the cost of one textfile write with 128 busy threads, in this process on a
  real ``Daemon`` (its threads sealing): CPU of the writing thread per write
  (render alone, and render + temp file + fsync + rename), wall time, bytes;
- WorkerList latency with metrics off and on, in alternating rounds of fresh
  daemons (off, on, off, on, ...) with ``ping_interval = "1s"``, so the "on"
  daemons rewrite their textfile about once a second during the calls.

Targets: no measurable change in p99, < 5 ms CPU per write.

    python bench/agent_bench.py [--threads 128] [--calls 2000] [--idle-seconds 10]
    python bench/agent_bench.py --metrics [--threads 128] [--calls 6000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from worker_agent.client import AgentClient, AgentNotRunning  # noqa: E402

TARGETS = {"p99_ms": 5.0, "rss_mb": 40.0, "idle_cpu_percent": 1.0}
METRICS_TARGETS = {"cpu_ms_per_write": 5.0}


def write_config(
    folder: Path, threads: int, stage: str, ping: str = "30s", textfile: str | None = None
) -> Path:
    lines = [
        "[worker]",
        'name = "bench"',
        'socket = "agent.sock"',
        'state_dir = "state"',
        f'ping_interval = "{ping}"',
        *([f'metrics_textfile = "{textfile}"'] if textfile else []),
        "[sealing]",
        'seal_interval = "0s"',
        'recover_interval = "1s"',
    ]
    for index in range(threads):
        lines += ["[[sealing_thread]]", f'location = "stores/{index}"']
    lines += ["[processors.mock]", f'duration = "{stage}"', f'wait_duration = "{stage}"']
    lines += ["jitter = 0.5"]  # real stages do not all end in the same millisecond
    path = folder / "bench.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def wait_ready(sock: Path, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"daemon exited with {proc.returncode}")
        try:
            with AgentClient(sock, timeout=2) as client:
                client.call("VenusWorker.WorkerVersion")
            return
        except (AgentNotRunning, OSError):
            time.sleep(0.05)
    raise SystemExit("daemon did not come up")


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def latency_keep_alive(sock: Path, calls: int) -> list[float]:
    samples = []
    with AgentClient(sock) as client:
        for _ in range(calls):
            started = time.perf_counter()
            infos = client.call("VenusWorker.WorkerList")
            samples.append((time.perf_counter() - started) * 1000)
    assert len(infos) > 0
    return samples


def latency_new_connection(sock: Path, calls: int) -> list[float]:
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        with AgentClient(sock) as client:
            client.call("VenusWorker.WorkerList")
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def rss_mb(pid: int) -> tuple[float, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def cpu_seconds(pid: int) -> float:
    parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(parts[11]), int(parts[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def pause_all(sock: Path, threads: int) -> None:
    with AgentClient(sock) as client:
        for index in range(threads):
            client.call("VenusWorker.WorkerPause", index)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            infos = client.call("VenusWorker.WorkerList")
            if all(info["thread_state"]["state"] == "Paused" for info in infos):
                return
            time.sleep(0.2)
    raise SystemExit("threads did not all pause")


def summary(samples: list[float]) -> dict:
    return {
        "calls": len(samples),
        "p50_ms": round(statistics.median(samples), 3),
        "p99_ms": round(percentile(samples, 0.99), 3),
        "max_ms": round(max(samples), 3),
    }


def machine() -> dict:
    lscpu = shutil.which("lscpu")
    head = subprocess.run([lscpu], capture_output=True, text=True).stdout if lscpu else ""
    return {
        "nproc": os.cpu_count(),
        "lscpu": "\n".join(head.splitlines()[:10]),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def start_daemon(config: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker_agent", "daemon", "-c", str(config)],
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, VENUS_WORKER_LOG="WARNING"),
    )
    wait_ready(config.parent / "agent.sock", proc)
    return proc


def stop_daemon(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


def textfile_write_cost(threads: int, stage: str, busy_seconds: float, writes: int) -> dict:
    """CPU of one textfile write, measured on a real Daemon (threads sealing) in this process."""
    from worker_agent.config import load_config
    from worker_agent.daemon import Daemon
    from worker_agent.metrics import render

    folder = Path(tempfile.mkdtemp(prefix="va-bench-", dir="/tmp"))
    (folder / "prom").mkdir()
    sys.setswitchinterval(0.001)  # as run_daemon sets it
    daemon = Daemon(load_config(write_config(folder, threads, stage, textfile="prom/w.prom")))
    try:
        daemon.start()
        time.sleep(busy_seconds)
        metrics, textfile = daemon.metrics, folder / "prom" / "w.prom"
        render_cpu, write_cpu, wall = [], [], []
        for _ in range(writes):
            cpu = time.thread_time()
            render(metrics.snapshot(time.time(), daemon.threads))
            render_cpu.append((time.thread_time() - cpu) * 1000)
            cpu, started = time.thread_time(), time.perf_counter()
            assert metrics.write(time.time(), daemon.threads)
            write_cpu.append((time.thread_time() - cpu) * 1000)
            wall.append((time.perf_counter() - started) * 1000)
            time.sleep(0.01)  # the sealing threads run meanwhile, as between heartbeats
        size = textfile.stat().st_size
        with_task = sum(1 for thread in daemon.threads if thread.info()["job_id"])
    finally:
        daemon.stop()
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "threads": threads,
        "threads_with_a_task": with_task,
        "writes": writes,
        "bytes": size,
        "render_cpu_ms": {"median": _r(statistics.median(render_cpu)), "p99": _p99(render_cpu)},
        "write_cpu_ms": {"median": _r(statistics.median(write_cpu)), "p99": _p99(write_cpu)},
        "write_wall_ms": {"median": _r(statistics.median(wall)), "p99": _p99(wall)},
    }


def _r(value: float) -> float:
    return round(value, 3)


def _p99(samples: list[float]) -> float:
    return _r(percentile(samples, 0.99))


def worker_list_on_off(args) -> dict:
    """WorkerList latency, metrics off vs on, in alternating rounds of fresh daemons."""
    samples: dict[str, list[float]] = {"off": [], "on": []}
    rounds: list[dict] = []
    for number in range(args.rounds):
        for mode in ("off", "on"):
            folder = Path(tempfile.mkdtemp(prefix="va-bench-", dir="/tmp"))
            (folder / "prom").mkdir()
            textfile = "prom/w.prom" if mode == "on" else None
            config = write_config(folder, args.threads, args.stage, "1s", textfile)
            proc = start_daemon(config)
            try:
                time.sleep(args.busy_seconds)
                load = Path("/proc/loadavg").read_text().split()[0]
                cpu, wall = cpu_seconds(proc.pid), time.monotonic()
                calls = latency_keep_alive(folder / "agent.sock", args.calls)
                cpu = (cpu_seconds(proc.pid) - cpu) / (time.monotonic() - wall)
            finally:
                stop_daemon(proc)
                shutil.rmtree(folder, ignore_errors=True)
            samples[mode] += calls
            rounds.append({"round": number, "metrics": mode, "load": load, **summary(calls)})
            rounds[-1]["daemon_cpu_percent"] = round(cpu * 100, 1)
    pooled = {}
    for mode, calls in samples.items():
        pooled[f"metrics_{mode}"] = {**summary(calls), "p999_ms": _r(percentile(calls, 0.999))}
    return {"rounds": rounds, **pooled}


def metrics_main(args) -> int:
    result = {
        "mock_stage": args.stage,
        "textfile_write": textfile_write_cost(
            args.threads, args.stage, args.busy_seconds, args.writes
        ),
        "worker_list_keep_alive": worker_list_on_off(args),
        "machine": machine(),
    }
    cpu = result["textfile_write"]["write_cpu_ms"]["median"]
    result["targets_met"] = {"cpu_ms_per_write": cpu < METRICS_TARGETS["cpu_ms_per_write"]}
    print(json.dumps(result, indent=2))
    return 0 if all(result["targets_met"].values()) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=128)
    parser.add_argument("--calls", type=int, default=None, help="default 2000; 6000 --metrics")
    parser.add_argument("--stage", default="1s", help="mock stage duration (busy threads)")
    parser.add_argument("--busy-seconds", type=float, default=3.0, help="warm-up while busy")
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--metrics", action="store_true", help="the textfile's cost (issue 16)")
    parser.add_argument("--rounds", type=int, default=3, help="--metrics: off/on round pairs")
    parser.add_argument("--writes", type=int, default=200, help="--metrics: timed writes")
    args = parser.parse_args()
    if args.metrics:
        args.calls = args.calls or 6000
        return metrics_main(args)
    args.calls = args.calls or 2000

    folder = Path(tempfile.mkdtemp(prefix="va-bench-", dir="/tmp"))
    config = write_config(folder, args.threads, args.stage)
    sock = folder / "agent.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker_agent", "daemon", "-c", str(config)],
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, VENUS_WORKER_LOG="WARNING"),
    )
    try:
        wait_ready(sock, proc)
        time.sleep(args.busy_seconds)  # every thread is sealing by now
        with AgentClient(sock) as client:
            infos = client.call("VenusWorker.WorkerList")
        busy = sum(1 for info in infos if info["job_id"])
        busy_cpu_start, busy_wall_start = cpu_seconds(proc.pid), time.monotonic()
        keep_alive = latency_keep_alive(sock, args.calls)
        fresh = latency_new_connection(sock, max(200, args.calls // 10))
        busy_cpu = (cpu_seconds(proc.pid) - busy_cpu_start) / (time.monotonic() - busy_wall_start)
        rss_busy, rss_peak = rss_mb(proc.pid)
        pause_all(sock, args.threads)
        time.sleep(1.0)  # let the last writes settle
        paused_latency = latency_keep_alive(sock, args.calls)
        cpu_start, wall_start = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(args.idle_seconds)
        idle_cpu = (cpu_seconds(proc.pid) - cpu_start) / (time.monotonic() - wall_start)
        rss_idle, _ = rss_mb(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(folder, ignore_errors=True)

    result = {
        "threads": args.threads,
        "threads_with_a_task": busy,
        "mock_stage": args.stage,
        "worker_list_keep_alive": summary(keep_alive),
        "worker_list_new_connection": summary(fresh),
        "worker_list_keep_alive_all_paused": summary(paused_latency),
        "daemon_cpu_while_busy_and_queried_percent": round(busy_cpu * 100, 1),
        "rss_mb_busy": round(rss_busy, 1),
        "rss_mb_peak": round(rss_peak, 1),
        "rss_mb_idle": round(rss_idle, 1),
        "idle_cpu_percent": round(idle_cpu * 100, 3),
        "idle_seconds": args.idle_seconds,
        "machine": machine(),
    }
    verdict = {
        "p99_ms": result["worker_list_keep_alive"]["p99_ms"] <= TARGETS["p99_ms"],
        "rss_mb": result["rss_mb_peak"] <= TARGETS["rss_mb"],
        "idle_cpu_percent": result["idle_cpu_percent"] <= TARGETS["idle_cpu_percent"],
    }
    result["targets_met"] = verdict
    print(json.dumps(result, indent=2))
    return 0 if all(verdict.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
