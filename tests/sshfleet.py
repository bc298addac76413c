"""A fleet of real OpenSSH sshd processes on loopback addresses, for tests and benchmarks.

Each host is its own unprivileged-style sshd: its own 127.0.0.x address, a free port, its own
ed25519 host key, sshd_config, pid file and authorized_keys, all under the fleet's root
directory. The fleet owns one client key and a known_hosts file that always holds every
host's current key, so clients can check host keys strictly.

No pytest in here: benchmarks import it too. Keep ``root`` short (a directory under /tmp):
Unix socket paths under it must fit in 108 bytes.
"""

from __future__ import annotations

import atexit
import getpass
import ipaddress
import os
import shlex
import shutil
import socket
import subprocess
import time
import weakref
from collections.abc import Callable
from pathlib import Path

FIRST_ADDRESS = ipaddress.IPv4Address("127.0.0.11")
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
# A port picked by the kernel can be taken by someone else before sshd binds it.
BIND_ATTEMPTS = 3

BASE_OPTIONS = {
    "UsePAM": "no",
    "StrictModes": "no",
    "PasswordAuthentication": "no",
    "KbdInteractiveAuthentication": "no",
    "PubkeyAuthentication": "yes",
    # CI runs as root.
    "PermitRootLogin": "prohibit-password",
    "AllowStreamLocalForwarding": "yes",
    "AllowTcpForwarding": "yes",
    # Benchmarks open many connections at once; the default 10:30:100 drops some.
    "MaxStartups": "200",
    "MaxSessions": "50",
    "LogLevel": "ERROR",
    "Subsystem": "sftp internal-sftp",
}

_live_fleets: weakref.WeakSet[SshFleet] = weakref.WeakSet()


class SshFleetError(RuntimeError):
    """An sshd or ssh-keygen of the fleet failed; the message carries its output."""


def _find_binary(name: str) -> str:
    # sshd lives in /usr/sbin, which is not on a normal user's PATH; sshd also insists on
    # being started by absolute path (it re-executes itself).
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")
    if not found:
        raise SshFleetError(f"{name} not found (install openssh-server / openssh-client)")
    return os.path.abspath(found)


def _environment_without_agent() -> dict[str, str]:
    # An inherited ssh-agent would let keys other than the fleet's client key authenticate.
    env = dict(os.environ)
    env.pop("SSH_AUTH_SOCK", None)
    env.pop("SSH_AGENT_PID", None)
    return env


def _generate_key(path: Path, comment: str) -> None:
    for stale in (path, path.with_name(path.name + ".pub")):
        stale.unlink(missing_ok=True)
    argv = [_find_binary("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", comment]
    done = subprocess.run(argv + ["-f", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SshFleetError(f"ssh-keygen failed for {path}: {done.stderr.strip()}")


def _public_key_text(private_key: Path) -> str:
    """The "ssh-ed25519 AAAA..." part of the .pub file, without its comment."""
    fields = private_key.with_name(private_key.name + ".pub").read_text().split()
    return f"{fields[0]} {fields[1]}"


def _free_port(address: str) -> int:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((address, 0))
        return probe.getsockname()[1]


def _accepts_connections(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=0.5):
            return True
    except OSError:
        return False


def _ensure_privsep_dir() -> None:
    # sshd refuses to start without its privilege separation directory. Only root can make
    # it; an unprivileged sshd does not need it.
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)


class SshHost:
    """One sshd. Created by SshFleet.add_host; not started until start()."""

    def __init__(
        self,
        name: str,
        address: str,
        directory: Path,
        client_public_key: str,
        sshd_options: dict[str, str] | None,
        on_key_change: Callable[[], None],
        netns: str | None = None,
        port: int | None = None,
    ) -> None:
        self.name = name
        self.address = address
        # A network namespace to run in (tests/netns.py): reachable only from inside it.
        self.netns = netns
        self.dir = directory
        self.host_key_path = directory / "ssh_host_ed25519_key"
        self.config_path = directory / "sshd_config"
        self.authorized_keys_path = directory / "authorized_keys"
        self.log_path = directory / "sshd.log"
        self.pid_path = directory / "sshd.pid"
        self.extra_options = dict(sshd_options or {})
        self._on_key_change = on_key_change
        self._process: subprocess.Popen | None = None
        self.dir.mkdir(parents=True, exist_ok=True)
        self.authorized_keys_path.write_text(client_public_key + "\n")
        _generate_key(self.host_key_path, f"sshfleet-{name}")
        self.host_public_key = _public_key_text(self.host_key_path)
        self.port = port or _free_port(address)
        self._write_config()

    def __repr__(self) -> str:
        return f"SshHost({self.name!r}, {self.address}:{self.port}, alive={self.alive})"

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def known_hosts_line(self) -> str:
        # OpenSSH looks up port 22 by the bare name, any other port as [host]:port
        name = self.address if self.port == 22 else f"[{self.address}]:{self.port}"
        return f"{name} {self.host_public_key}"

    def start(self) -> None:
        if self.alive:
            return
        _ensure_privsep_dir()
        for attempt in range(1, BIND_ATTEMPTS + 1):
            try:
                self._spawn_and_wait()
                return
            except SshFleetError as error:
                if attempt == BIND_ATTEMPTS or "Address already in use" not in str(error):
                    raise
                self.port = _free_port(self.address)
                self._write_config()
                self._on_key_change()

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def regenerate_host_key(self) -> None:
        """Give the host a new key (a "changed host key"); fleet.known_hosts follows it."""
        _generate_key(self.host_key_path, f"sshfleet-{self.name}")
        self.host_public_key = _public_key_text(self.host_key_path)
        self._on_key_change()
        self.restart()

    def _write_config(self) -> None:
        listen = f"[{self.address}]" if ":" in self.address else self.address
        options = {
            "ListenAddress": f"{listen}:{self.port}",
            "HostKey": str(self.host_key_path),
            "PidFile": str(self.pid_path),
            "AuthorizedKeysFile": str(self.authorized_keys_path),
            **BASE_OPTIONS,
            **self.extra_options,
        }
        lines = [f"{key} {value}" for key, value in options.items()]
        self.config_path.write_text("\n".join(lines) + "\n")

    def _spawn_and_wait(self) -> None:
        argv = [_find_binary("sshd"), "-D", "-e", "-f", str(self.config_path)]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_environment_without_agent(),
                # Own process group: a Ctrl-C in the terminal goes to the harness, which then
                # stops sshd in order, instead of killing sshd under a running test.
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._process = None
                raise SshFleetError(f"sshd {self.name} exited at start: {self._log_text()}")
            if self._listening():
                return
            time.sleep(0.02)
        self.stop()
        raise SshFleetError(
            f"sshd {self.name} not accepting on {self.address}:{self.port} "
            f"after {START_TIMEOUT:.0f}s: {self._log_text()}"
        )

    def _listening(self) -> bool:
        if self.netns:  # not reachable from out here: sshd says so in its log (LogLevel INFO+)
            return "Server listening on" in self._log_text()
        return _accepts_connections(self.address, self.port)

    def _log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace").strip() or "(no output)"
        except OSError:
            return "(no log)"


class SshFleet:
    """The hosts, the client key and the known_hosts file of one test session."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.user = getpass.getuser()
        self.client_key = self.root / "client_ed25519"
        self.known_hosts = self.root / "known_hosts"
        self.hosts: list[SshHost] = []
        _generate_key(self.client_key, "sshfleet-client")
        self.client_public_key = _public_key_text(self.client_key)
        self.write_known_hosts(self.known_hosts)
        _live_fleets.add(self)

    def __enter__(self) -> SshFleet:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_all()

    def add_host(
        self,
        name: str,
        sshd_options: dict[str, str] | None = None,
        address: str | None = None,
        netns: str | None = None,
        port: int | None = None,
    ) -> SshHost:
        """A new sshd (not started) on the next 127.0.0.x, or on `address` (e.g. "::1");
        in network namespace `netns` if given (then logging at INFO, its readiness sign)."""
        if netns:
            sshd_options = {"LogLevel": "INFO", **(sshd_options or {})}
        if any(host.name == name for host in self.hosts):
            raise ValueError(f"host {name!r} already in the fleet")
        address = address or str(FIRST_ADDRESS + len(self.hosts))
        host = SshHost(
            name,
            address,
            self.root / name,
            self.client_public_key,
            sshd_options,
            on_key_change=self._rewrite_known_hosts,
            netns=netns,
            port=port,
        )
        self.hosts.append(host)
        self._rewrite_known_hosts()
        return host

    def write_known_hosts(self, path: Path, hosts: list[SshHost] | None = None) -> None:
        chosen = self.hosts if hosts is None else hosts
        Path(path).write_text("".join(host.known_hosts_line() + "\n" for host in chosen))

    def ssh_argv(self, host: SshHost, *remote_argv: str) -> list[str]:
        argv = [
            _find_binary("ssh"),
            "-F",
            "/dev/null",
            "-i",
            str(self.client_key),
            "-p",
            str(host.port),
            "-o",
            "BatchMode=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "IdentitiesOnly=yes",
            f"{self.user}@{host.address}",
        ]
        if remote_argv:
            argv.append(shlex.join(remote_argv))
        return argv

    def stop_all(self) -> None:
        for host in self.hosts:
            host.stop()

    def _rewrite_known_hosts(self) -> None:
        self.write_known_hosts(self.known_hosts)


@atexit.register
def _stop_leftover_fleets() -> None:
    # A harness that forgets stop_all (or dies on an exception) must not leave sshd behind.
    for fleet in list(_live_fleets):
        fleet.stop_all()
