"""A network namespace of the test's own, and a jump host that is the only way into it.

`Namespace` is `ip netns add` with nothing but its own loopback (127.0.0.0/8, up):
an sshd listening on 127.0.0.21 in there cannot be reached from outside at all,
since outside 127.0.0.21 is this machine's own loopback. `InetdJump` is the jump
host: it accepts on a loopback address outside and hands each connection to an
`sshd -i` started inside the namespace (how Debian's ssh.socket runs sshd), so
the jump's sessions, and the TCP connections they forward, are made in there.
Loopback addresses only, inside and out; nothing is routed anywhere.

No pytest in here (benchmarks may use it). Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN).
"""

from __future__ import annotations

import atexit
import itertools
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

from sshfleet import SshHost, _environment_without_agent, _find_binary

_NAMES = itertools.count()
_live: set[str] = set()  # namespaces made and not yet deleted, for the atexit below


class NamespaceError(RuntimeError):
    """The machine could not make (or enter) a network namespace: the message says why."""


def _ip(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=30)


class Namespace:
    """`ip netns add NAME` with its loopback up; delete() removes it (idempotent)."""

    def __init__(self) -> None:
        self.name = f"vc{os.getpid()}n{next(_NAMES)}"
        made = _ip("netns", "add", self.name)
        if made.returncode != 0:
            raise NamespaceError(
                f"cannot make a network namespace (ip netns add): {made.stderr.strip()}"
            )
        _live.add(self.name)
        up = _ip("netns", "exec", self.name, "ip", "link", "set", "lo", "up")
        if up.returncode != 0:
            self.delete()
            raise NamespaceError(f"cannot bring up lo in {self.name}: {up.stderr.strip()}")

    def argv(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def can_connect(self, address: str, port: int) -> bool:
        """Whether a process inside the namespace reaches address:port."""
        probe = f"import socket; socket.create_connection(({address!r}, {port}), 2)"
        done = subprocess.run(self.argv(sys.executable, "-c", probe), capture_output=True)
        return done.returncode == 0

    def delete(self) -> None:
        _ip("netns", "delete", self.name)
        _live.discard(self.name)

    def exists(self) -> bool:
        return self.name in _ip("netns", "list").stdout.split()


class InetdJump:
    """sshd per connection inside `namespace` (`sshd -i`), accepted at sshd's address and
    port outside. `connections` counts the TCP connections made to the jump host."""

    def __init__(self, sshd: SshHost, namespace: Namespace) -> None:
        self.sshd = sshd
        self.namespace = namespace
        self.connections = 0
        self.processes: list[subprocess.Popen] = []
        self._lock = threading.Lock()
        self.listener = socket.create_server((sshd.address, sshd.port), backlog=64)
        self._thread = threading.Thread(target=self._accept, name="inetd-jump", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        argv = self.namespace.argv(
            _find_binary("sshd"),
            "-i",
            "-f",
            str(self.sshd.config_path),
            "-E",
            str(self.sshd.log_path),
        )
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return  # stopped
            with connection, self._lock:
                self.connections += 1
                self.processes.append(
                    subprocess.Popen(
                        argv,
                        stdin=connection,
                        stdout=connection,
                        stderr=subprocess.DEVNULL,
                        env=_environment_without_agent(),
                        start_new_session=True,
                    )
                )

    def log(self) -> str:
        path = Path(self.sshd.log_path)
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        self.listener.close()
        self._thread.join(5)
        with self._lock:
            processes, self.processes = self.processes, []
        for process in processes:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


@atexit.register
def _delete_leftover_namespaces() -> None:
    # A run that dies between create and teardown must not leave a namespace behind.
    for name in list(_live):
        _ip("netns", "delete", name)
