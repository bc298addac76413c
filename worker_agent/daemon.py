"""The daemon: sealing threads + control server + heartbeat reporter.

Start order matters: the state folder is checked (no folder another user
can write in, like sshd's StrictModes) and locked (one daemon per
state_dir); every store is checked, created and locked (one daemon per
store: a second daemon with another state_dir is refused, naming the store
and the pid holding it); every record is loaded (a bad one pauses only its
thread, naming the file and field); the sector counter is raised above every
number the records witnessed, or rebuilt from them when the counter file is
lost (the start is refused when no record can say which numbers were used);
a configured sector range (``[sealing] sector_numbers``) must hold the
counter (a fresh worker starts at its first number; a counter below or past
it refuses the start: ``set-counter`` moves it); every thread's history is
opened (history.py; the stage-duration histogram of the metrics is replayed
from it); the socket is bound, the first heartbeat is written (counting the
loaded records), the threads start, and the service manager is told ``READY=1``.

Signals arrive on a pipe (``signal.set_wakeup_fd``) that the main thread
reads; the handlers themselves do nothing. SIGTERM/SIGINT stop: stop
accepting, let every thread reach a boundary (its state is already saved)
for up to STOP_TIMEOUT seconds, kill the stage commands still running, write
a last heartbeat, remove the socket. A second SIGTERM/SIGINT during that wait
stops at once. SIGHUP never stops the daemon: it re-reads the config and
logs whether it changed — nothing is reloaded in a running daemon (threads,
stores and socket are bound at start); a restart applies a new config.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import signal
import sys
import threading
import time
from pathlib import Path

from worker_agent import __version__
from worker_agent.api import SectorRange, WorkerInfo, summarize
from worker_agent.config import Config, ConfigError, load_config
from worker_agent.guard import InsecurePath, check_folder
from worker_agent.history import HistoryFolder
from worker_agent.metrics import MetricsError, WorkerMetrics
from worker_agent.processors import make_processor
from worker_agent.protocol import handle_body
from worker_agent.server import ControlServer
from worker_agent.service import WorkerService
from worker_agent.store import (
    SCHEMA,
    LockHeld,
    SectorCounter,
    StoreError,
    TaskStore,
    hold_lock,
    merge_numbers,
    witnessed_numbers,
    write_json_atomic,
)
from worker_agent.systemd import JournalFormatter, notify, stderr_is_journal
from worker_agent.thread import RecordNotSaved, SealingThread

__all__ = ["Daemon", "DaemonError", "run_daemon"]

REPORT_NAME = "report.json"
LOCK_NAME = "daemon.lock"
STOP_TIMEOUT = 30.0
# How often the reporter looks for changed counts between two regular heartbeats.
CHANGE_CHECK = 1.0
# The counts whose change rewrites the report early (Running/Waiting flicker on busy threads).
STICKY_COUNTS = ("Threads", "Empty", "Paused", "Errors")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

log = logging.getLogger("venus_worker.daemon")


class DaemonError(Exception):
    """The daemon cannot start; str() says why."""


class Signals:
    """Signals as numbers read from a pipe the C-level handler writes to (set_wakeup_fd).

    Whichever thread the kernel delivers a signal to, the byte lands in the
    pipe. The Python handler itself does nothing: it must take no lock, since
    it runs on the main thread, which may hold that lock.
    """

    def __init__(self, signums=(*STOP_SIGNALS, signal.SIGHUP)):
        self._read, write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(write, False)
        signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        for signum in signums:
            signal.signal(signum, _ignore_in_python)

    def wait(self, timeout: float | None = None) -> list[int]:
        """The signals received, waiting up to `timeout` for one (None: forever)."""
        ready, _, _ = select.select([self._read], [], [], timeout)
        if not ready:
            return []
        try:
            return list(os.read(self._read, 64))
        except BlockingIOError:
            return []


def _ignore_in_python(signum, frame) -> None:
    """The byte in the wake-up pipe is the message; nothing else to do."""


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
        self._stores: list[TaskStore] = []
        self._stop = threading.Event()
        self._moved = threading.Event()  # a sealing thread changed: see _report_loop
        self._workers: list[threading.Thread] = []
        self.counter: SectorCounter | None = None
        self.history: HistoryFolder | None = None
        self._low_ranges: set[int] = set()  # miners whose range was logged as low

    # ------------------------------------------------------------ start

    def start(self) -> None:
        config = self.config
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self._check_folder(config.state_dir, "state_dir")
        self._lock_state_dir()
        counter = self.counter = SectorCounter(config.state_dir)
        counter_found = counter.load()
        processor = self.processor = make_processor(config)
        if self.metrics is not None:
            try:
                self.metrics.open()
            except MetricsError as exc:
                raise DaemonError(str(exc)) from None
        self._open_history()
        for thread_config in config.threads:
            store = TaskStore(thread_config.location)
            problem = self._open_store(store)
            history = None
            if self.history is not None:
                # the metrics' stage-duration histogram, replayed: it survives restarts
                observe = self.metrics.durations.observe if self.metrics is not None else None
                history = self.history.open_log(
                    thread_config.index, thread_config.location, observe
                )
            thread = SealingThread(
                thread_config,
                store,
                counter,
                processor,
                observer=self.metrics,
                problem=problem,
                history=history,
                strict_modes=self.config.strict_modes,
                on_change=self._moved.set,
            )
            self.threads.append(thread)
        self._establish_counter(counter, counter_found)
        self._check_ranges(counter)
        service = WorkerService(self.threads, lambda: self._report, history=self.history)
        config.socket.parent.mkdir(parents=True, exist_ok=True)
        self._check_folder(config.socket.parent, "the socket's folder")
        self.server = ControlServer(
            config.socket,
            lambda body, caller: handle_body(body, service.methods_for(caller)),
            config.socket_group,
            config.request_timeout,
            config.idle_timeout,
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
        status = f"{len(self.threads)} sealing threads, control socket {config.socket}"
        log.info("venus-worker %s: %s", __version__, status)
        notify(f"READY=1\nSTATUS={status}")

    def _open_history(self) -> None:
        """``<state_dir>/history`` (history.py), unless [worker] history = false."""
        if not self.config.history:
            return
        folder = HistoryFolder(self.config.state_dir, self.config.history_size)
        try:
            folder.prepare()
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            raise DaemonError(
                f"cannot use the history folder: {where}{exc.strerror or exc}"
            ) from None
        self._check_folder(folder.path, "the history folder")
        self.history = folder

    def _check_ranges(self, counter: SectorCounter) -> None:
        """Each configured sector range must hold its miner's counter (see the module doc).

        A fresh worker (nothing handed out for that miner) starts at the range's
        first number. A counter below the range means this worker once numbered
        sectors outside it, and one past its end that it numbered beyond it: both
        are refused rather than guessed, since a worker of one miner numbering
        in another's range is how one id comes to name two sectors.
        """
        for miner, (start, end) in self.config.sector_ranges().items():
            last = counter.last(miner)
            shown = f"{start}-{end}"
            fix = f"venus-worker set-counter -c {self.config.path} --miner {miner} --last"
            if last == 0:
                counter.ensure_above(miner, start - 1)
                log.info("miner %d: sector numbers %s, starting at %d", miner, shown, start)
            elif last < start - 1:
                raise DaemonError(
                    f"the sector counter of miner {miner} is at {last}, below its range"
                    f" {shown} ([sealing] sector_numbers): this worker numbered sectors outside"
                    f" the range before. If the range is new for it, start it at the range:"
                    f" {fix} {start - 1}"
                )
            elif last > end:
                raise DaemonError(
                    f"the sector counter of miner {miner} is at {last}, past the end of its"
                    f" range {shown} ([sealing] sector_numbers): numbers above {end} may be"
                    " another worker's. Give this worker a range above"
                    f" {last} (or check which numbers it really used)"
                )

    def sector_ranges(self) -> list[SectorRange]:
        """Each configured range with the counter's position in it (the report's)."""
        if self.counter is None:
            return []
        ranges = []
        for miner, (start, end) in sorted(self.config.sector_ranges().items()):
            last = max(self.counter.last(miner), start - 1)
            ranges.append(SectorRange(miner, start, end, last, max(0, end - last)))
        return ranges

    def _warn_low(self, ranges: list[SectorRange]) -> None:
        for numbers in ranges:
            if numbers.low and numbers.miner not in self._low_ranges:
                self._low_ranges.add(numbers.miner)
                log.warning(
                    "miner %d: only %d sector numbers left in the range %d-%d: give this"
                    " worker a new range ([sealing] sector_numbers) before it runs out",
                    numbers.miner, numbers.left, numbers.start, numbers.end,
                )  # fmt: skip

    def _check_folder(self, folder: Path, what: str) -> None:
        if not self.config.strict_modes:
            return
        try:
            check_folder(folder, what)
        except InsecurePath as exc:
            raise DaemonError(f"{exc} (or set [worker] strict_modes = false)") from None

    def _lock_state_dir(self) -> None:
        path = self.config.state_dir / LOCK_NAME
        try:
            self._lock_fd = hold_lock(path)
        except LockHeld as exc:
            raise DaemonError(
                f"another daemon is using state_dir {self.config.state_dir} ({exc})"
            ) from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise DaemonError(f"{path} is a symlink: refusing to follow it") from None
            raise

    def _open_store(self, store: TaskStore) -> str | None:
        """Create, check and lock a store; why it cannot be used (its thread pauses), or None."""
        try:
            store.prepare()
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            return f"cannot create store {store.location}: {where}{exc.strerror or exc}"
        self._check_folder(store.location, "store")
        try:
            store.lock()
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return f"{store.lock_path} is a symlink: refusing to follow it"
            return f"cannot lock store {store.location}: {exc.strerror or exc}"
        except LockHeld as exc:
            raise DaemonError(
                f"store {store.location} is used by another daemon ({exc}); "
                "a store belongs to one daemon"
            ) from None
        self._stores.append(store)
        return None

    def _establish_counter(self, counter: SectorCounter, found: bool) -> None:
        """Raise the counter above every number a record witnessed; rebuild it if it was lost.

        Every record carries the counter's numbers as they were when it was
        written (``last_numbers``), and the number of its task. Without the
        counter file, the highest of those is where numbering continues —
        unless some store's record cannot tell (unreadable, or written by an
        agent before this witness existed): then starting anywhere could hand
        a number out twice, and the start is refused.
        """
        marks: dict[str, int] = {}
        blind = []
        for thread in self.threads:
            unknown = not thread.usable or thread.record.last_numbers is None
            if unknown and thread.store.has_record():
                blind.append(thread.store.path)
            if thread.usable:
                marks = merge_numbers(marks, witnessed_numbers(thread.record))
        if not found and blind:
            miner = self.config.threads[0].sealing.miner
            raise DaemonError(
                f"the sector counter {counter.path} is missing, and {blind[0]} does not say "
                "which sector numbers this worker used, so numbering could restart at a "
                "number already used. Set the counter to the last number used (from the "
                "sector manager or the chain): venus-worker set-counter "
                f"-c {self.config.path} --miner {miner} --last N"
            )
        for miner, number in marks.items():
            counter.ensure_above(miner, number)
        if not found:
            if marks:
                log.warning(
                    "sector counter %s was missing: rebuilt from the stores' records (last "
                    "numbers %s)",
                    counter.path, ", ".join(f"miner {m}: {n}" for m, n in sorted(marks.items())),
                )  # fmt: skip
            else:
                counter.save_now()
                start = "in its sector range" if self.config.sector_ranges() else "at 1"
                log.info(
                    "a new worker (no sector counter, no store records): numbering starts %s", start
                )
        for thread in self.threads:  # records of an older agent learn the counter's numbers
            if thread.usable and thread.record.last_numbers is None and thread.store.has_record():
                try:
                    thread.save_witness()
                except RecordNotSaved as exc:
                    log.warning("thread #%d: %s", thread.index, exc)

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
            "sector_ranges": [numbers.to_json() for numbers in self.sector_ranges()],
        }

    def write_report(self) -> None:
        report = self.build_report()
        write_json_atomic(self.config.state_dir / REPORT_NAME, report)
        self._report = report
        ranges = [SectorRange.from_json(numbers) for numbers in report["sector_ranges"]]
        self._warn_low(ranges)
        if self.metrics is not None:
            left = {str(numbers.miner): numbers.left for numbers in ranges}
            self.metrics.write(report["time"], self.threads, left)  # logs its own failure

    def _report_loop(self) -> None:
        """Rewrite the report every ping_interval, and sooner when a count that matters moved.

        Without the early rewrite, `worker report` (and a fleet tool reading the file
        while the daemon is down) would show a fresh start's threads as Empty, or miss a
        thread that paused on an error, for up to a whole ping_interval. The loop sleeps
        until a thread changes (on_change) or the heartbeat is due, so an agent at rest
        does not wake; while threads keep changing it looks at most once a CHANGE_CHECK.
        """
        interval = self.config.ping_interval
        tick = min(interval, CHANGE_CHECK)
        last_write = time.monotonic()  # not the wall clock: a clock step must not stop it
        while True:
            moved = self._moved.wait(max(0.0, interval - (time.monotonic() - last_write)))
            if self._stop.is_set():
                return
            self._moved.clear()  # before the counts: a change from now on wakes it again
            due = time.monotonic() - last_write >= interval - tick / 2
            if not due:
                counts = _summary(self.threads)
                due = _sticky(counts) != _sticky((self._report or {}).get("summary", {}))
            if due:
                last_write = time.monotonic()
                try:
                    self.write_report()
                except OSError as exc:  # keep trying: a full disk may recover
                    log.error("cannot write heartbeat report: %s", exc)
            if moved and self._stop.wait(tick):
                return

    # ------------------------------------------------------------ stop

    def stop(self, signals: Signals | None = None) -> None:
        """Stop everything; with `signals`, a second SIGTERM/SIGINT cuts the wait short."""
        notify("STOPPING=1")
        self._stop.set()
        self._moved.set()  # the reporter's wait
        if self.server is not None:
            self.server.stop()
        for thread in self.threads:
            thread.request_stop()
        hurried = self._join_workers(signals)
        kill_running = getattr(self.processor, "kill_running", None)
        if kill_running is not None and (killed := kill_running()):
            log.warning("killed %d stage command(s) still running; they rerun at restart", killed)
        if hurried:
            for worker in self._workers:  # their commands are dead: they return at once
                worker.join(1.0)
        if self._report is not None:  # not for a start refused early: the folder may be another's
            with contextlib.suppress(OSError):
                self.write_report()
        for store in self._stores:
            store.unlock()
        if self.metrics is not None:
            self.metrics.close()
        if self.history is not None:
            self.history.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _join_workers(self, signals: Signals | None) -> bool:
        """Wait up to STOP_TIMEOUT for every thread; True if a second signal said stop now."""
        deadline = time.monotonic() + STOP_TIMEOUT
        for worker in self._workers:
            while worker.is_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning("%s still busy at shutdown (a stage is running)", worker.name)
                    break
                if signals is not None and any(s in STOP_SIGNALS for s in signals.wait(0)):
                    log.warning("second stop signal: stopping now, killing running stages")
                    return True
                worker.join(min(0.1, left))
        return False


def _summary(threads: list[SealingThread]) -> dict:
    """The heartbeat counts by the one rule (api.summarize) over what WorkerList shows."""
    return summarize(WorkerInfo.from_json(thread.info()) for thread in threads).to_json()


def _sticky(summary: dict) -> tuple:
    return tuple(summary.get(key) for key in STICKY_COUNTS)


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    if stderr_is_journal():  # journald adds the time; the prefix carries the priority
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(
        level=os.environ.get("VENUS_WORKER_LOG", "INFO").upper(), handlers=[handler], force=True
    )


def _config_changed(config: Config) -> None:
    """SIGHUP: say whether the config file differs from the running one (nothing reloads)."""
    try:
        on_disk = load_config(config.path)
    except ConfigError as exc:
        log.error("SIGHUP: the config file has an error (still running the old one): %s", exc)
        return
    if on_disk == config:
        log.info("SIGHUP: %s is unchanged; nothing to do", config.path)
    else:
        log.warning(
            "SIGHUP: %s changed; a running daemon does not reload it: restart the service "
            "to apply it",
            config.path,
        )


def run_daemon(config: Config) -> int:
    """Run in the foreground until SIGTERM or SIGINT; returns the exit status."""
    _setup_logging()
    signals = Signals()
    # WorkerList must not wait behind busy threads for the default 5 ms GIL slice.
    sys.setswitchinterval(0.001)
    daemon = Daemon(config)
    try:
        daemon.start()
    except BaseException:
        daemon.stop()
        raise
    while True:
        received = signals.wait()
        if any(signum in STOP_SIGNALS for signum in received):
            break
        if signal.SIGHUP in received:
            _config_changed(config)
    log.info("stopping: letting every thread reach a stage boundary")
    daemon.stop(signals)
    log.info("stopped")
    return 0


def set_counter(config: Config, miner: int, last: int) -> tuple[int, int]:
    """Set a stopped worker's counter to `last` or what the records witnessed, the higher.

    Returns (the counter's value now, the highest number the records witnessed).
    DaemonError while a daemon holds the state folder.
    """
    config.state_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = hold_lock(config.state_dir / LOCK_NAME)
    except LockHeld as exc:
        raise DaemonError(
            f"a daemon is running on {config.state_dir} ({exc}); stop it first"
        ) from None
    try:
        counter = SectorCounter(config.state_dir)
        with contextlib.suppress(StoreError):  # an unusable counter is what this replaces
            counter.load()
        witnessed = 0
        for thread in config.threads:
            try:
                record = TaskStore(thread.location).load()
            except (StoreError, OSError):
                continue
            witnessed = max(witnessed, witnessed_numbers(record).get(str(miner), 0))
        counter.ensure_above(miner, max(last, witnessed))
        counter.save_now()
        return counter.last(miner), witnessed
    finally:
        os.close(fd)


def report_path(state_dir: Path) -> Path:
    return state_dir / REPORT_NAME
