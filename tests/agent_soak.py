"""The crash soak of the worker agent (bench/crash_soak.py; a short run in test_agent_crash.py).

Two real daemons run side by side, each with its own config, state folder
and stores: one with the mock processor (fast stages, injected temporary,
abort and permanent faults), one with the command processor (every stage a
real command that may fail, and that starts a helper child holding a lock
on its store: a copy of the stage running twice at once records a
duplicate). Round after round, one of them is SIGKILLed at a random moment
(sometimes within 0.3 s of its start), pause and resume requests are sent at
random before the kill, now and then its sector counter file is deleted, and
then it is started again. After every kill the records are read straight
from disk and checked (``Figures.problems`` lists what failed):

- torn records: a record that does not parse;
- sector numbers: no number is given to two tasks (the daemons' "new task"
  log lines, all runs); every number seen in a record belongs to one thread
  and one task only, and a number whose task ended never comes back; for the
  command daemon, every number a stage ran with belongs to one thread. The
  mock daemon idles 300 ms between tasks, so a deleted counter often has no
  task record holding the last number;
- pauses and resumes acknowledged (the RPC answered true) before the kill and
  lost: a pause not on disk (neither paused nor pause requested), a resume
  undone (paused without an error);
- stage processes: no stage command alive after its daemon was killed
  (PR_SET_PDEATHSIG), and no stage run while a copy of it from before the
  kill still ran (the lock its helper holds).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import platform
import random
import re
import signal
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent_helpers import Agent

from worker_agent.protocol import RpcError
from worker_agent.store import StoreError, TaskStore, ThreadRecord

MOCK_FAULTS = """
[[processors.mock.faults]]
stage = "PC2"
level = "temporary"
message = "gpu busy"
probability = 0.3
[[processors.mock.faults]]
stage = "C1"
level = "abort"
message = "ticket expired"
probability = 0.15
[[processors.mock.faults]]
stage = "WaitSeed"
level = "permanent"
message = "seed never came"
probability = 0.05
[[processors.mock.faults]]
stage = "SnapProve"
level = "permanent"
message = "bad proof"
probability = 0.1
"""

# Every stage of the command daemon. It takes its store's lock (held by its
# helper too), logs the sector it runs for, works 20-80 ms, and sometimes fails.
STAGE = """
import fcntl, os, random, subprocess, sys, time
soak = sys.argv[1]
lock = os.open("stage.lock", os.O_RDWR | os.O_CREAT, 0o600)
try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    with open(os.path.join(soak, "duplicates"), "a") as out:
        out.write(f"{os.environ['VENUS_THREAD_INDEX']} {os.environ['VENUS_SECTOR_ID']} "
                  f"{os.environ['VENUS_STAGE']}\\n")
helper = os.path.join(os.path.dirname(os.path.abspath(__file__)), "helper.py")
subprocess.Popen([sys.executable, helper], pass_fds=(lock,))
with open(os.path.join(soak, "stages.log"), "a") as out:
    out.write(f"{os.environ['VENUS_THREAD_INDEX']} {os.environ['VENUS_SECTOR_NUMBER']}\\n")
time.sleep(random.uniform(0.02, 0.08))
roll = random.random()
if roll < 0.05:
    sys.exit("temporary: flaky tool")
if roll < 0.07:
    sys.exit("permanent: bad input")
"""
HELPER = "import time\ntime.sleep(5)\n"


@dataclass
class Figures:
    kills: int = 0
    kills_before_ready: int = 0
    records_checked: int = 0
    torn: int = 0
    issued: set = field(default_factory=set)  # (daemon, sector number) given to a task
    duplicated: list = field(default_factory=list)
    counters_deleted: int = 0
    pauses_acked: int = 0
    pauses_lost: int = 0
    resumes_acked: int = 0
    resumes_lost: int = 0
    leaders_alive_after_kill: int = 0
    helpers_left_by_kills: int = 0
    duplicate_stage_runs: int = 0
    problems: list = field(default_factory=list)


class Worker(Agent):
    """One daemon under test and what the soak knows about its sectors."""

    def __init__(
        self, root: Path, name: str, threads: int, processors: str, seal_interval: str = "0s"
    ):
        (root / name).mkdir()
        super().__init__(root / name / "agent.toml")
        self.name, self.dir, self.threads = name, root / name, threads
        stores = "".join(
            f'[[sealing_thread]]\nlocation = "store{i}"\nplan = "{plan}"\n'
            for i, plan in zip(
                range(threads), itertools.cycle(["sealer", "snapup", "rebuild"]), strict=False
            )
        )
        self.config.write_text(
            f'[worker]\nname = "{name}"\nsocket = "agent.sock"\nstate_dir = "state"\n'
            'ping_interval = "1s"\n'
            f'[sealing]\nminer = 10000\nseal_interval = "{seal_interval}"\n'
            'recover_interval = "5ms"\n'
            f"max_retries = 2\n{stores}{processors}"
        )
        self.fresh = False  # started without waiting for its socket: the next kill is early
        self.owner: dict[int, int] = {}  # sector number -> thread
        self.retired: set[int] = set()
        self.previous = [ThreadRecord() for _ in range(threads)]
        self.acks: dict[int, str] = {}  # thread -> last acknowledged "pause" / "resume"
        self.paused_rounds = [0] * threads

    def records(self, figures: Figures) -> list[ThreadRecord]:
        found = []
        for index in range(self.threads):
            store = TaskStore(self.dir / f"store{index}")
            figures.records_checked += 1
            try:
                found.append(store.load())
            except StoreError as exc:
                figures.torn += 1
                figures.problems.append(f"{self.name}: torn record: {exc}")
                found.append(self.previous[index])
        return found


def act_before_kill(worker: Worker, rng: random.Random, figures: Figures) -> None:
    """Random pauses and resumes; only acknowledged ones (true) are remembered."""
    infos = worker.call("WorkerList")
    for info in infos:
        index = info["index"]
        paused = info["thread_state"]["state"] == "Paused"
        worker.paused_rounds[index] = worker.paused_rounds[index] + 1 if paused else 0
        if paused and worker.paused_rounds[index] >= 2:  # keep the threads busy
            if worker.call("WorkerResume", index, None) is True:
                worker.acks[index] = "resume"
                figures.resumes_acked += 1
        elif not paused and rng.random() < 0.15 and worker.call("WorkerPause", index) is True:
            worker.acks[index] = "pause"
            figures.pauses_acked += 1


def check_after_kill(worker: Worker, figures: Figures) -> None:
    current = worker.records(figures)
    for index, (old, new) in enumerate(zip(worker.previous, current, strict=True)):
        ack = worker.acks.pop(index, None)
        if ack == "pause" and not (new.paused or new.pause_requested):
            figures.pauses_lost += 1
            figures.problems.append(f"{worker.name} #{index}: acknowledged pause lost")
        if ack == "resume" and new.paused and new.last_error is None and not new.pause_requested:
            figures.resumes_lost += 1
            figures.problems.append(f"{worker.name} #{index}: acknowledged resume undone")
        if old.task and (new.task is None or new.task.number != old.task.number):
            worker.retired.add(old.task.number)
        if new.task is None or new.task.number is None:
            continue
        number = new.task.number
        if number in worker.retired:
            figures.duplicated.append((worker.name, number))
            figures.problems.append(f"{worker.name}: sector {number} came back on #{index}")
        elif worker.owner.setdefault(number, index) != index:
            figures.duplicated.append((worker.name, number))
            figures.problems.append(f"{worker.name}: sector {number} on two threads")
    worker.previous = current


NEW_TASK = re.compile(r"thread #(\d+): new task s-t0\d+-(\d+) ")


def check_new_tasks(worker: Worker, figures: Figures) -> None:
    """Every number the daemon's log shows given to a new task: none given twice."""
    seen: dict[int, int] = {}
    for match in NEW_TASK.finditer(worker.log_text()):
        thread, number = int(match[1]), int(match[2])
        if number in seen:
            figures.duplicated.append((worker.name, number))
            figures.problems.append(
                f"{worker.name}: sector {number} given to a task twice (#{seen[number]}, #{thread})"
            )
        seen[number] = thread
        figures.issued.add((worker.name, number))


def check_stage_log(worker: Worker, figures: Figures) -> None:
    """Every sector a command stage ran for belongs to one thread."""
    path = worker.dir / "stages.log"
    owner: dict[int, int] = {}
    for line in path.read_text().splitlines() if path.exists() else ():
        thread, number = line.split()
        if number and owner.setdefault(int(number), int(thread)) != int(thread):
            figures.duplicated.append((worker.name, int(number)))
            figures.problems.append(f"{worker.name}: stages ran sector {number} on two threads")


def processes_running(script: Path) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(script).encode() in cmdline and state != "Z":
            found.append(int(entry))
    return found


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = ""
    with contextlib.suppress(OSError):
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kib / 1024 / 1024:.1f} GiB RAM"
    load = ", load {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
    return (
        f"{os.cpu_count()} CPUs ({model}){memory}, Linux {platform.release()}, "
        f"Python {platform.python_version()}{load}"
    )


def soak(root: Path, kills: int, threads: int, rng: random.Random) -> Figures:
    (root / "stage.py").write_text(textwrap.dedent(STAGE))
    (root / "helper.py").write_text(HELPER)
    mock = Worker(
        root,
        "mock",
        threads,
        '[processors]\nkind = "mock"\n[processors.mock]\nduration = "4ms"\n'
        f'wait_duration = "4ms"\n{MOCK_FAULTS}',
        # idle between tasks most of the time: a lost counter then has no task
        # record holding the last number, the case the records' witness is for
        seal_interval="300ms",
    )
    command = Worker(
        root,
        "command",
        threads,
        '[processors]\nkind = "command"\n[processors.command]\n'
        f'default = ["{sys.executable}", "{root}/stage.py", "{root}/command"]\n',
    )
    figures = Figures()
    workers = [mock, command]
    for worker in workers:
        worker.start()
    try:
        while figures.kills < kills:
            worker = rng.choice(workers)
            if worker.fresh:  # a kill while the daemon starts, maybe before its socket answers
                time.sleep(rng.uniform(0.0, 0.3))
                figures.kills_before_ready += 1
            else:
                with contextlib.suppress(OSError, RpcError):
                    act_before_kill(worker, rng, figures)
                time.sleep(rng.uniform(0.02, 0.4))
            worker.kill()
            figures.kills += 1
            if worker is command:
                time.sleep(0.1)  # PR_SET_PDEATHSIG acts at once; a stage lasts 20-80 ms
                leaders = processes_running(root / "stage.py")
                figures.leaders_alive_after_kill += len(leaders)
                if leaders:
                    figures.problems.append(f"stage commands {leaders} outlived their daemon")
                figures.helpers_left_by_kills += len(processes_running(root / "helper.py"))
            check_after_kill(worker, figures)
            if rng.random() < 0.08:
                (worker.dir / "state/sector-counter.json").unlink(missing_ok=True)
                figures.counters_deleted += 1
            worker.fresh = rng.random() < 0.15
            worker.start(wait=not worker.fresh)
    finally:
        for worker in workers:
            worker.close()
        time.sleep(0.5)
        for pid in processes_running(root / "helper.py"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    check_stage_log(command, figures)
    for worker in workers:
        check_new_tasks(worker, figures)
    duplicates = root / "command/duplicates"
    if duplicates.exists():
        runs = duplicates.read_text().splitlines()
        figures.duplicate_stage_runs = len(runs)
        figures.problems += [f"stage ran twice at once: {line}" for line in runs[:10]]
    return figures
