"""Helpers for the worker_agent tests: configs, raw HTTP, a fake clock, slow clients.

Agent (a real daemon process), wait_until and voluntary_switches live in helpers.py,
shared with the venusctl tests; they are imported here so the agent tests keep importing
them from this module.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

from helpers import REPO, Agent, voluntary_switches, wait_until  # noqa: F401 - re-exported

from worker_agent.cli import main as cli_main
from worker_agent.client import AgentClient
from worker_agent.protocol import RpcError

SEED_MESSAGE = (
    "No cached parameters found for stacked-proof-of-replication-merkletree-poseidon_hasher-"
    "8-0-0-sha256_hasher-032d3138d22506ec0082ed72b2dcba18df18477904e35bafee82b3793b06832f "
    "[failure finding /var/tmp/filecoin-proof-parameters/v28-stacked-proof-of-replication-"
    "merkletree-poseidon_hasher-8-0-0-sha256_hasher-"
    "032d3138d22506ec0082ed72b2dcba18df18477904e35bafee82b3793b06832f.params]"
)


@contextlib.contextmanager
def short_tmp():
    """A temp folder with a short path: Unix socket paths are limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="va-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def process_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as gone: it was killed, awaiting its reaper)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def write_config(
    folder: Path,
    threads: int = 2,
    *,
    sealing: str = 'seal_interval = "10ms"\nrecover_interval = "20ms"\nmax_retries = 2',
    mock: str = 'duration = "10ms"\nwait_duration = "10ms"',
    faults: str = "",
    extra_thread: str = "",
    processors: str = "",
    worker: str = 'ping_interval = "200ms"',
    name: str = "agent.toml",
) -> Path:
    """Write a config whose socket, state and stores all live in `folder`."""
    lines = [
        "[worker]",
        'name = "test-worker"',
        'socket = "agent.sock"',
        'state_dir = "state"',
        worker,
        "[sealing]",
        "miner = 10000",
        sealing,
    ]
    for index in range(threads):
        lines += ["[[sealing_thread]]", f'location = "store{index}"', extra_thread]
    if processors:
        lines.append(processors)
    else:
        lines += ["[processors]", 'kind = "mock"', "[processors.mock]", mock, faults]
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    return path


def seed_fault(stage: str = "C2", level: str = "permanent", message: str = SEED_MESSAGE) -> str:
    return (
        f'[[processors.mock.faults]]\nstage = "{stage}"\nlevel = "{level}"\nmessage = "{message}"\n'
    )


@contextlib.contextmanager
def running_agent(config: Path):
    agent = Agent(config).start()
    try:
        yield agent
    finally:
        agent.close()


def cli(*args: str) -> tuple[int, str, str]:
    """Run venus-worker's main() in-process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    status = cli_main(list(args), stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


def cli_json(*args: str):
    status, out, _ = cli(*args, "--json")
    return status, json.loads(out)


def raw_http(path: Path, data: bytes, timeout: float = 5.0, shut_write: bool = False) -> bytes:
    """Send raw bytes on the socket and read until the server closes or the timeout."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(data)
        if shut_write:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        return b"".join(chunks)


def one_response(path: Path, data: bytes, timeout: float = 5.0) -> tuple[int, bytes]:
    """Send one request and read exactly one response (status, body), keep-alive or not."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(data)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed before the headers: {received!r}"
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])
        }
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = sock.recv(65536)
            assert chunk, "connection closed mid-body"
            body += chunk
        return int(lines[0].split()[1]), body


def post(body: bytes, extra_headers: str = "") -> bytes:
    head = (
        f"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra_headers}\r\n"
    )
    return head.encode() + body


class FakeClock:
    """Time that only moves when the thread under test waits."""

    def __init__(self):
        self.wall = 1_800_000_000.0
        self.mono = 100.0
        self.waits: list[float | None] = []
        self.on_wait = None  # called once when a wait starts: "something happens meanwhile"

    def now(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds

    def wait(self, cond, predicate, timeout):
        if self.on_wait is not None:
            hook, self.on_wait = self.on_wait, None
            hook()
        if predicate():
            return True
        self.waits.append(timeout)
        if timeout is None:
            raise AssertionError("the thread would block forever")
        self.advance(timeout)
        return predicate()


class Tricklers:
    """`count` connections each sending one byte of a request every `every` seconds.

    A connection the server closes is opened again at its next turn, as an
    attacker would. Turns are spread evenly over `every`.
    """

    REQUEST = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"[" * 100000

    def __init__(self, path: Path, count: int, every: float):
        self.path, self.count, self.every = path, count, every
        self.reconnects = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Tricklers:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _connect(self) -> socket.socket | None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(str(self.path))
        except OSError:
            sock.close()
            return None
        return sock

    def _run(self) -> None:
        socks: list[socket.socket | None] = [None] * self.count
        sent = [0] * self.count
        start = time.monotonic()
        turn = 0
        try:
            while not self._stop.is_set():
                index = turn % self.count
                due = start + turn * self.every / self.count
                if self._stop.wait(max(0.0, due - time.monotonic())):
                    break
                turn += 1
                sock = socks[index]
                try:
                    if sock is None:
                        raise ConnectionError("not connected")
                    sock.send(self.REQUEST[sent[index] : sent[index] + 1])
                    sent[index] += 1
                except OSError:
                    if sock is not None:
                        sock.close()
                        self.reconnects += 1
                    socks[index], sent[index] = self._connect(), 0
        finally:
            for sock in socks:
                if sock is not None:
                    sock.close()


def worker_list_latencies(path: Path, seconds: float, every: float) -> list[float | None]:
    """WorkerList on a new connection every `every` s for `seconds` s.

    Each call's latency in seconds, or None for a call that failed (refused,
    dropped, or no answer within 5 s).
    """
    latencies: list[float | None] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.monotonic()
        try:
            with AgentClient(path, timeout=5) as client:
                client.call("VenusWorker.WorkerList")
            latencies.append(time.monotonic() - started)
        except (OSError, RpcError):
            latencies.append(None)
        time.sleep(every)
    return latencies
