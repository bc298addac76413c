"""Helpers shared by the test modules (fixtures live in conftest.py).

- `worker_info`, `report`: typed values (worker_agent/api.py) for the pure
  tests, from the wire JSON a real agent sends;
- `wait_until`: poll a condition within one deadline;
- `stop_process`: SIGTERM, then SIGKILL if it is ignored;
- `processes_with`, `voluntary_switches`: what /proc says of processes and threads;
- `Agent`: a real `venus-worker daemon` process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from worker_agent import api
from worker_agent.client import AgentClient
from worker_agent.protocol import RpcError

REPO = Path(__file__).resolve().parent.parent
# A stop lets every thread reach a stage boundary (the daemon's own limit is 30 s; the
# test configs' stages take well under a second).
AGENT_STOP_GRACE = 15.0


def worker_info(**fields: Any) -> api.WorkerInfo:
    """A WorkerInfo as an agent sends it: a thread running PC2; `fields` override keys."""
    document: dict[str, Any] = {
        "index": 0,
        "location": "/srv/store0",
        "plan": "sealer",
        "job_id": "s-t010000-1",
        "job_state": "PC1Done",
        "job_stage": "PC2",
        "thread_state": {"state": "Running", "elapsed": 3, "proc": None},
        "state_elapsed": 5,
        "last_error": None,
    }
    document.update(fields)
    return api.WorkerInfo.from_json(document)


def report(age: float | None = 2.5, summary: dict | None = None, **fields: Any) -> api.Report:
    """A heartbeat report as an agent answers it, `age` seconds old."""
    counts = dict.fromkeys(api.SUMMARY_KEYS, 0)
    counts.update(summary or {})
    document: dict[str, Any] = {
        "schema": 1,
        "name": "worker",
        "version": "0.1.0",
        "pid": 4242,
        "time": 1764282000.25,
        "socket": "/run/venus-worker/venus-worker.sock",
        "ping_interval": 30.0,
        "summary": counts,
        "age": age,
    }
    document.update(fields)
    return api.Report.from_json(document)


def read_toml(text: str) -> dict[str, Any]:
    """TOML text as plain values, read by tomllib (Python 3.11+), else by tomlkit: Python
    3.10, which setup.cfg supports, has no tomllib (venusctl reads with tomlkit there too)."""
    try:
        import tomllib
    except ModuleNotFoundError:
        import tomlkit

        return tomlkit.parse(text).unwrap()
    return tomllib.loads(text)


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    """predicate()'s first true value within one deadline, else AssertionError naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


STOP_GRACE = 5.0  # seconds a process gets to exit on SIGTERM before SIGKILL


def stop_process(process: subprocess.Popen, grace: float = STOP_GRACE) -> None:
    """Stop a process we started: SIGTERM, and SIGKILL when it is still there after `grace`.

    ssh with a forwarding in flight can sit on SIGTERM; a teardown must not hang on it.
    """
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Agent:
    """A real `venus-worker daemon` process on a real socket.

    Its config's folder holds its socket (agent.sock), its state (state/,
    the heartbeat state/report.json) and its log (daemon.log), as the test
    configs (agent_helpers.write_config, conftest's fleet) lay them out.
    """

    def __init__(self, config: Path, name: str | None = None):
        self.config = config
        self.name = name or config.parent.name
        self.folder = config.parent
        self.socket = self.folder / "agent.sock"
        self.state_dir = self.folder / "state"
        self.report = self.state_dir / "report.json"
        self.proc: subprocess.Popen | None = None
        self.log = self.folder / "daemon.log"

    def start(self, wait: bool = True, env: dict[str, str | None] | None = None) -> Agent:
        """Start the daemon; `env` adds to (or, with None values, removes from) its environment."""
        extra = env or {}
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.update({k: v for k, v in extra.items() if v is not None})
        for name in [k for k, v in extra.items() if v is None]:
            env.pop(name, None)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "worker_agent", "daemon", "-c", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=env,
                # Its own process group: a Ctrl-C in the terminal reaches pytest, which then
                # stops the daemon in order, instead of killing it under a running test.
                start_new_session=True,
            )
        if wait:
            try:
                self.wait_ready()
            except BaseException:
                self.close()  # a daemon that never answered is not left running
                raise
        return self

    def wait_ready(self, timeout: float = 15.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}: {self.log_text()}")
            try:
                with AgentClient(self.socket, timeout=2) as client:
                    client.call(api.Method.VERSION.value)
                return True
            except (OSError, RpcError):  # not listening yet, or mid-start
                return False

        wait_until(ready, timeout, what="daemon socket")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def call(self, method: str, *params):
        with AgentClient(self.socket, timeout=10) as client:
            return client.call(f"VenusWorker.{method}", *params)

    def infos(self) -> list[dict]:
        return self.call("WorkerList")

    def wait_for(self, predicate, timeout: float = 10.0, what: str = "thread state"):
        def check():
            infos = self.infos()
            return infos if predicate(infos) else None

        return wait_until(check, timeout, what=what)

    def terminate(self, timeout: float = 15.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        """Stop it as systemd would (SIGTERM: a last heartbeat, the socket removed)."""
        if self.proc is not None:
            stop_process(self.proc, grace=AGENT_STOP_GRACE)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def make_user(prefix: str) -> str:
    """A system user made for a test (no home, no password, /bin/sh); remove_user after."""
    if os.geteuid() != 0:
        raise AssertionError("this test makes a user: run it as root (CI does)")
    name = f"{prefix}{os.getpid()}"
    done = subprocess.run(
        ["useradd", "-M", "-d", "/", "-s", "/bin/sh", "-p", "*", name],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return name


def processes_with(field: str, value: int) -> set[int]:
    """The processes whose /proc status line `field` (Uid, PPid ...) has `value` first."""
    found = set()
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            lines = [line for line in status.read_text().splitlines() if line.startswith(field)]
        except OSError:  # the process ended meanwhile
            continue
        if lines and lines[0].split()[:2] == [f"{field}:", str(value)]:
            found.add(int(status.parent.name))
    return found


def voluntary_switches(pid: int, tid: int | None = None) -> int:
    """How many times process `pid`'s threads (or only its thread `tid`) went to sleep and
    were woken: Linux's voluntary_ctxt_switches in /proc."""
    tasks = Path(f"/proc/{pid}/task")
    if tid is not None:  # that thread must be there: no silent 0 for one that ended
        return _switches((tasks / str(tid) / "status").read_text())
    total = 0
    for task in tasks.iterdir():
        try:
            total += _switches((task / "status").read_text())
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
    return total


def _switches(status: str) -> int:
    for line in status.splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches line in /proc status")


def remove_user(name: str) -> None:
    """userdel, once the user's last processes (sshd's sessions, ending) are gone."""
    import pwd

    uid = pwd.getpwnam(name).pw_uid
    wait_until(lambda: not processes_with("Uid", uid), 15, 0.1, f"{name}'s processes to end")
    done = subprocess.run(["userdel", name], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
