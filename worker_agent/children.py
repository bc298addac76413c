"""Stage commands as child processes: they die with the daemon, their output is bounded.

- ``StageRun.start`` runs an argv without a shell in a new session (so the
  command is the leader of its own process group), stdin from /dev/null,
  stdout and stderr on pipes. On Linux the leader gets
  ``PR_SET_PDEATHSIG = SIGKILL`` before it execs: a SIGKILLed daemon takes
  its stage commands with it instead of leaving them running beside the
  rerun after the restart. (The kernel sends that signal when the *thread*
  that started the child ends; sealing threads live as long as the daemon.)
- ``StageRun.collect`` reads both pipes until the command ends: it keeps the
  last ``TAIL_BYTES`` of each (the error text and the branch event come from
  their last lines) and logs the output line by line up to ``LOG_BYTES`` per
  run, then only counts it. A stage writing hundreds of MB costs no memory.
  When the leader exits, whatever it left running in its process group is
  killed: nothing of a stage outlives it. A timeout kills the whole group.
- ``kill_leftovers`` is for the restart after a crash: processes of a stage
  started by the previous daemon (its process group, saved in the record, and
  every process carrying that run's ``VENUS_STAGE_TOKEN``) are killed before
  the stage runs again. The token tells them apart from unrelated processes
  that got the same numbers later; after a reboot (another boot id) nothing
  is left to kill.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "LOG_BYTES",
    "TAIL_BYTES",
    "TOKEN_VARIABLE",
    "LeftoversAlive",
    "StageRun",
    "boot_id",
    "find_leftovers",
    "kill_leftovers",
]

TAIL_BYTES = 64 * 1024
LOG_BYTES = 256 * 1024
LOG_LINE = 2000  # longer lines are cut in the log (the tails keep them whole)
TOKEN_VARIABLE = "VENUS_STAGE_TOKEN"
# After the leader exited, how long its pipes may stay open (a child that left the group).
PIPE_GRACE = 1.0
PR_SET_PDEATHSIG = 1

log = logging.getLogger("venus_worker.stage")


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


_PRCTL = _load_prctl()


def _die_with_parent() -> Callable[[], None]:
    """The preexec_fn: SIGKILL this child when the daemon goes, even by SIGKILL.

    It runs in the forked child before exec, so it does as little as possible:
    one prctl call through a function prepared in advance, one getppid.
    """
    parent = os.getpid()
    prctl = _PRCTL

    def preexec() -> None:
        if prctl is not None and prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            os._exit(126)
        if os.getppid() != parent:  # the daemon died before prctl took effect
            os._exit(126)

    return preexec


class _Stream:
    """One pipe's bytes: the last TAIL_BYTES kept, lines logged while the budget lasts."""

    def __init__(
        self,
        name: str,
        emit: Callable[[str, str], None],
        budget: list[int],
        sink: Callable[[str, bytes], None] | None = None,
    ):
        self.name, self._emit, self._budget = name, emit, budget
        self._sink = sink  # every chunk, as it comes (the stage log, stagelog.py)
        self.tail = bytearray()
        self._line = bytearray()
        self._cut = False  # the current line was longer than LOG_LINE: skip to its end
        self.total = 0
        self.unlogged = 0

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        if self._sink is not None:
            self._sink(self.name, chunk)
        self.tail += chunk
        if len(self.tail) > 2 * TAIL_BYTES:  # trim in batches: amortized O(1) per byte
            del self.tail[:-TAIL_BYTES]
        if self._budget[0] <= 0:
            self.unlogged += len(chunk)
            return
        self._budget[0] -= len(chunk)
        lines = chunk.split(b"\n")
        for piece in lines[:-1]:
            self._add(piece)
            self._flush()
        self._add(lines[-1])

    def _add(self, piece: bytes) -> None:
        if self._cut:
            return
        room = LOG_LINE - len(self._line)
        self._line += piece[:room]
        if len(piece) > room:
            self._flush(cut=True)

    def _flush(self, cut: bool = False) -> None:
        if self._line or cut:
            text = self._line.decode("utf-8", "replace").rstrip("\r")
            if text.strip() or cut:
                self._emit(self.name, text + (" […]" if cut else ""))
        self._line.clear()
        self._cut = cut

    def finish(self) -> None:
        if not self._cut:
            self._flush()
        self._cut = False

    def text(self) -> str:
        return bytes(self.tail[-TAIL_BYTES:]).decode("utf-8", "replace")


@dataclass(frozen=True)
class Collected:
    returncode: int
    timed_out: bool
    stdout: str  # the last TAIL_BYTES, decoded
    stderr: str
    output_bytes: int  # everything both pipes carried
    unlogged_bytes: int


class StageRun:
    """One running stage command; ``kill()`` is safe from any thread."""

    def __init__(self, proc: subprocess.Popen, label: str):
        self.proc = proc
        self.pid = proc.pid  # also its process group id (a new session)
        self.label = label
        self._lock = threading.Lock()
        self._reaped = False

    @classmethod
    def start(cls, argv: tuple[str, ...], cwd: Path, env: dict[str, str], label: str) -> StageRun:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=env,
            start_new_session=True,  # its own process group: killed as a whole
            preexec_fn=_die_with_parent(),
        )
        return cls(proc, label)

    def kill(self) -> None:
        """SIGKILL the whole process group, unless the leader has been reaped already.

        While the leader is not reaped (a zombie at worst) its pid, which names
        the group, cannot be reused: the signal never reaches anybody else.
        """
        with self._lock:
            if not self._reaped:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.pid, signal.SIGKILL)

    def _leader_exited(self) -> bool:
        """Has the leader exited? Without reaping it (WNOWAIT): its pid stays ours."""
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None

    def collect(
        self, timeout: float | None, on_output: Callable[[str, bytes], None] | None = None
    ) -> Collected:
        """Read both pipes until the command ends (or its timeout); reap it.

        `on_output(stream, chunk)` gets every chunk as it is read (the stage log).
        """
        budget = [LOG_BYTES]
        streams = {
            self.proc.stdout.fileno(): _Stream("stdout", self._log_line, budget, on_output),
            self.proc.stderr.fileno(): _Stream("stderr", self._log_line, budget, on_output),
        }
        selector = selectors.DefaultSelector()
        for fd in streams:
            os.set_blocking(fd, False)
            selector.register(fd, selectors.EVENT_READ)
        deadline = None if timeout is None else time.monotonic() + timeout
        timed_out, exited_at = False, None
        try:
            while selector.get_map():
                now = time.monotonic()
                if deadline is not None and now >= deadline and not timed_out:
                    timed_out = True
                    self.kill()
                    exited_at = now + 4.0  # give the killed group's pipes 5 s to close
                if exited_at is None and self._leader_exited():
                    self.kill()  # what the leader left behind in its group
                    exited_at = now
                if exited_at is not None and now - exited_at > PIPE_GRACE:
                    break  # a process that left the group holds the pipes open
                wait = 0.2 if deadline is None or timed_out else min(0.2, deadline - now)
                for key, _ in selector.select(max(0.0, wait)):
                    self._read(key.fd, streams[key.fd], selector)
        finally:
            selector.close()
            self.proc.stdout.close()
            self.proc.stderr.close()
            returncode = self._reap()
        for stream in streams.values():
            stream.finish()
        out, err = streams.values()
        unlogged = out.unlogged + err.unlogged
        if unlogged:
            log.info(
                "%s: %d more bytes of output not logged (%d logged per run at most)",
                self.label, unlogged, LOG_BYTES,
            )  # fmt: skip
        return Collected(
            returncode, timed_out, out.text(), err.text(), out.total + err.total, unlogged
        )

    def _read(self, fd: int, stream: _Stream, selector: selectors.BaseSelector) -> None:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            chunk = b""
        if chunk:
            stream.feed(chunk)
        else:
            selector.unregister(fd)

    def _reap(self) -> int:
        with self._lock:
            self._reaped = True  # from here on kill() leaves the pid alone
        return self.proc.wait()

    def _log_line(self, stream: str, text: str) -> None:
        log.info("%s %s: %s", self.label, stream, text)


# ---------------------------------------------------------------- leftovers of a crash


class LeftoversAlive(Exception):
    """Processes of a previous run's stage survived SIGKILL; str() lists them."""


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _group_and_state(pid: int) -> tuple[int, str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the command name may hold spaces and ")"
    return int(fields[2]), fields[0]


def _carries(pid: int, marker: bytes) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return marker in environ.split(b"\0")


def find_leftovers(pgid: int | None, token: str) -> list[int]:
    """Live processes of the stage run `token` (its group `pgid` counts only if one carries it)."""
    marker = f"{TOKEN_VARIABLE}={token}".encode()
    group, tagged = set(), set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        found = _group_and_state(pid)
        if found is None or found[1] == "Z":
            continue
        if found[0] == pgid:
            group.add(pid)
        if _carries(pid, marker):
            tagged.add(pid)
    if group & tagged:
        return sorted(group | tagged)
    return sorted(tagged)


def kill_leftovers(pgid: int | None, token: str, saved_boot_id: str, timeout: float = 5.0) -> int:
    """Kill what is left of a previous daemon's stage run; how many processes it was.

    Raises LeftoversAlive if some are still there after `timeout` (stuck in
    the kernel, e.g. on a dead disk): the stage must not run beside them.
    """
    if saved_boot_id and saved_boot_id != boot_id():
        return 0  # the machine rebooted since: nothing of that run exists
    found = find_leftovers(pgid, token)
    if not found:
        return 0
    deadline = time.monotonic() + timeout
    left = found
    while left:
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise LeftoversAlive(
                f"processes {', '.join(map(str, left))} of the previous run survive SIGKILL"
            )
        time.sleep(0.02)
        left = find_leftovers(pgid, token)
    return len(found)
