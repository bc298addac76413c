"""The daemon: sealing threads + control server + heartbeat reporter.

Start order matters: the state folder is locked (one daemon per state_dir),
every record is loaded (a bad one stops the start with its file named), the
sector counter is raised above every number found in the records, the
socket is bound, the first heartbeat is written (counting the loaded records),
and only then do the threads start. Stop (SIGTERM/SIGINT): stop accepting, let every thread reach
a boundary (its state is already saved), write a last heartbeat, remove the
socket. Signal handlers only set an event; the main thread does the work.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from worker_agent import __version__
from worker_agent.api import WorkerInfo, summarize
from worker_agent.config import Config
from worker_agent.metrics import MetricsError, WorkerMetrics
from worker_agent.processors import make_processor
from worker_agent.protocol import handle_body
from worker_agent.server import ControlServer
from worker_agent.service import WorkerService
from worker_agent.store import SCHEMA, SectorCounter, TaskStore, write_json_atomic
from worker_agent.thread import SealingThread

__all__ = ["Daemon", "DaemonError", "run_daemon"]

REPORT_NAME = "report.json"
LOCK_NAME = "daemon.lock"
STOP_TIMEOUT = 30.0
# How often the reporter looks for changed counts between two regular heartbeats.
CHANGE_CHECK = 1.0
# The counts whose change rewrites the report early (Running/Waiting flicker on busy threads).
STICKY_COUNTS = ("Threads", "Empty", "Paused", "Errors")

log = logging.getLogger("venus_worker.daemon")


class DaemonError(Exception):
    """The daemon cannot start; str() says why."""


class Daemon:
    def __init__(self, config: Config):
        self.config = config
        self.threads: list[SealingThread] = []
        self.server: ControlServer | None = None
        self.processor = None
        # The node_exporter textfile, when metrics_textfile is set (metrics.py).
        self.metrics = WorkerMetrics(config) if config.metrics_textfile else None
        self._report: dict | None = None
        self._lock_fd: int | None = None
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    # ------------------------------------------------------------ start

    def start(self) -> None:
        config = self.config
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self._lock_state_dir()
        counter = SectorCounter(config.state_dir)
        counter.load()
        processor = self.processor = make_processor(config)
        if self.metrics is not None:
            try:
                self.metrics.open()
            except MetricsError as exc:
                raise DaemonError(str(exc)) from None
        for thread_config in config.threads:
            store = TaskStore(thread_config.location)
            store.prepare()
            thread = SealingThread(thread_config, store, counter, processor, observer=self.metrics)
            task = thread.record.task
            if task is not None and task.number is not None:
                # Guards against a lost or restored-from-backup counter file.
                counter.ensure_above(task.miner, task.number)
            self.threads.append(thread)
        service = WorkerService(self.threads, lambda: self._report)
        self.server = ControlServer(
            config.socket,
            lambda body: handle_body(body, service.methods),
            config.socket_group,
            config.request_timeout,
        )
        self.write_report()
        for thread in self.threads:
            worker = threading.Thread(
                target=thread.run, name=f"sealing-{thread.index}", daemon=True
            )
            worker.start()
            self._workers.append(worker)
        reporter = threading.Thread(target=self._report_loop, name="reporter", daemon=True)
        reporter.start()
        self._workers.append(reporter)
        self.server.start()
        log.info(
            "venus-worker %s: %d sealing threads, control socket %s",
            __version__,
            len(self.threads),
            config.socket,
        )

    def _lock_state_dir(self) -> None:
        path = self.config.state_dir / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DaemonError(
                f"another daemon is using state_dir {self.config.state_dir}"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    # ------------------------------------------------------------ heartbeat

    def build_report(self) -> dict:
        return {
            "schema": SCHEMA,
            "name": self.config.name,
            "version": __version__,
            "pid": os.getpid(),
            "time": round(time.time(), 3),
            "socket": str(self.config.socket),
            "ping_interval": self.config.ping_interval,
            "summary": _summary(self.threads),
        }

    def write_report(self) -> None:
        report = self.build_report()
        write_json_atomic(self.config.state_dir / REPORT_NAME, report)
        self._report = report
        if self.metrics is not None:
            self.metrics.write(report["time"], self.threads)  # logs its own failure

    def _report_loop(self) -> None:
        """Rewrite the report every ping_interval, and sooner when a count that matters moved.

        Without the early rewrite, `worker report` (and a fleet tool reading the file
        while the daemon is down) would show a fresh start's threads as Empty, or miss a
        thread that paused on an error, for up to a whole ping_interval.
        """
        interval = self.config.ping_interval
        tick = min(interval, CHANGE_CHECK)
        last_write = time.monotonic()  # not the wall clock: a clock step must not stop it
        while not self._stop.wait(tick):
            due = time.monotonic() - last_write >= interval - tick / 2
            if not due:
                counts = _summary(self.threads)
                due = _sticky(counts) != _sticky((self._report or {}).get("summary", {}))
            if not due:
                continue
            last_write = time.monotonic()
            try:
                self.write_report()
            except OSError as exc:  # keep trying: a full disk may recover
                log.error("cannot write heartbeat report: %s", exc)

    # ------------------------------------------------------------ stop

    def stop(self) -> None:
        self._stop.set()
        if self.server is not None:
            self.server.stop()
        for thread in self.threads:
            thread.request_stop()
        deadline = time.monotonic() + STOP_TIMEOUT
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
            if worker.is_alive():
                log.warning("%s still busy at shutdown (a stage is running)", worker.name)
        kill_running = getattr(self.processor, "kill_running", None)
        if kill_running is not None and (killed := kill_running()):
            log.warning("killed %d stage command(s) still running; they rerun at restart", killed)
        with contextlib.suppress(OSError):
            self.write_report()
        if self.metrics is not None:
            self.metrics.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _summary(threads: list[SealingThread]) -> dict:
    """The heartbeat counts by the one rule (api.summarize) over what WorkerList shows."""
    return summarize(WorkerInfo.from_json(thread.info()) for thread in threads).to_json()


def _sticky(summary: dict) -> tuple:
    return tuple(summary.get(key) for key in STICKY_COUNTS)


def _setup_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("VENUS_WORKER_LOG", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def run_daemon(config: Config) -> int:
    """Run in the foreground until SIGTERM or SIGINT; returns the exit status."""
    _setup_logging()
    # The main thread sleeps in a read on a pipe that the C-level signal handler
    # writes to (set_wakeup_fd), whichever thread the kernel delivers the signal
    # to. The Python handler itself does nothing: it must take no lock, since it
    # runs on the main thread, which may hold that lock (Event.set() from a
    # handler that interrupted Event.wait() can deadlock).
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)

    def on_signal(signum, frame) -> None:
        """The byte in the wake-up pipe is the message; nothing else to do."""

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # WorkerList must not wait behind busy threads for the default 5 ms GIL slice.
    sys.setswitchinterval(0.001)
    daemon = Daemon(config)
    try:
        daemon.start()
    except BaseException:
        daemon.stop()
        raise
    os.read(wake_read, 1)  # until SIGTERM or SIGINT
    log.info("stopping: letting every thread reach a stage boundary")
    daemon.stop()
    log.info("stopped")
    return 0


def report_path(state_dir: Path) -> Path:
    return state_dir / REPORT_NAME
