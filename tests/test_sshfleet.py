"""The sshd test fleet itself, checked with real clients: OpenSSH's ssh and paramiko."""

import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paramiko
import pytest

# pytest's default import mode already puts tests/ on sys.path; this keeps the file working
# under --import-mode=importlib too.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import stop_process  # noqa: E402
from sshfleet import SshFleet, SshFleetError  # noqa: E402

pytestmark = pytest.mark.e2e

SSH_TIMEOUT = 20


@pytest.fixture(scope="module")
def fleet():
    # Under /tmp, not pytest's deeper tmp_path: Unix socket paths must stay under 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="sshfleet-", dir="/tmp"))
    with SshFleet(root) as fleet:
        for name in ("alpha", "beta"):
            fleet.add_host(name).start()
        fleet.add_host("nofwd", {"AllowStreamLocalForwarding": "no"}).start()
        yield fleet
    shutil.rmtree(root, ignore_errors=True)


def host_named(fleet, name):
    return next(host for host in fleet.hosts if host.name == name)


def run_ssh(argv, stdin_text=None):
    return subprocess.run(
        argv, input=stdin_text, capture_output=True, text=True, timeout=SSH_TIMEOUT
    )


def with_known_hosts(argv, known_hosts):
    return [
        f"UserKnownHostsFile={known_hosts}" if arg.startswith("UserKnownHostsFile=") else arg
        for arg in argv
    ]


@contextlib.contextmanager
def forwarded_unix_socket(fleet, host, remote_path, local_path):
    """Run ``ssh -N -L local:remote``: each connection to local_path makes ssh open a
    direct-streamlocal@openssh.com channel to remote_path. (OpenSSH 9.2's ``-W`` takes no
    socket path.) Yields the ssh process; its stderr is readable after the block."""
    argv = fleet.ssh_argv(host)
    forward = ["-N", "-o", "ExitOnForwardFailure=yes", "-L", f"{local_path}:{remote_path}"]
    process = subprocess.Popen(
        argv[:-1] + forward + argv[-1:], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + SSH_TIMEOUT
        while not Path(local_path).exists():
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "ssh -L did not create its socket"
            time.sleep(0.02)
        yield process
    finally:
        stop_process(process)


def exchange_line(socket_path, line):
    """Send `line` to `socket_path` and read the reply. ssh -L binds its socket before it
    listens on it: a connect refused in between is tried again (nothing was forwarded)."""
    deadline = time.monotonic() + SSH_TIMEOUT
    while True:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.settimeout(SSH_TIMEOUT)
        try:
            client.connect(str(socket_path))
            break
        except ConnectionRefusedError:
            client.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    with client:
        client.sendall(line)
        return client.makefile("rb").read()


def serve_one_uppercase_reply(socket_path):
    """Listen on a Unix socket; answer one line with it upper-cased, in a thread."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(socket_path))
    server.listen(1)
    server.settimeout(SSH_TIMEOUT)

    def answer():
        with server, server.accept()[0] as connection:
            line = connection.makefile("rb").readline()
            connection.sendall(line.upper())

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    return thread


def test_openssh_client_runs_a_command_on_two_hosts(fleet):
    for name in ("alpha", "beta"):
        done = run_ssh(fleet.ssh_argv(host_named(fleet, name), "echo", "hi"))
        assert (done.returncode, done.stdout) == (0, "hi\n"), done.stderr


def test_hosts_have_distinct_addresses_and_known_hosts_lists_them_all(fleet):
    addresses = [host.address for host in fleet.hosts]
    assert addresses[:3] == ["127.0.0.11", "127.0.0.12", "127.0.0.13"]
    lines = fleet.known_hosts.read_text().splitlines()
    assert all(host.known_hosts_line() in lines for host in fleet.hosts)
    assert host_named(fleet, "alpha").known_hosts_line().startswith("[127.0.0.11]:")


def test_paramiko_authenticates_with_the_client_key_and_strict_host_keys(fleet):
    host = host_named(fleet, "beta")
    client = paramiko.SSHClient()
    client.load_host_keys(str(fleet.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(
            host.address,
            port=host.port,
            username=fleet.user,
            key_filename=str(fleet.client_key),
            allow_agent=False,
            look_for_keys=False,
            timeout=SSH_TIMEOUT,
        )
        _, stdout, _ = client.exec_command("echo paramiko")
        assert stdout.read() == b"paramiko\n"
    finally:
        client.close()


def test_paramiko_rejects_a_host_missing_from_known_hosts(fleet, tmp_path):
    alpha, beta = host_named(fleet, "alpha"), host_named(fleet, "beta")
    partial = tmp_path / "known_hosts"
    fleet.write_known_hosts(partial, [alpha])
    client = paramiko.SSHClient()
    client.load_host_keys(str(partial))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        client.connect(
            beta.address,
            port=beta.port,
            username=fleet.user,
            key_filename=str(fleet.client_key),
            allow_agent=False,
            look_for_keys=False,
            timeout=SSH_TIMEOUT,
        )
    client.close()


def test_regenerated_host_key_is_rejected_by_openssh(fleet, tmp_path):
    host = fleet.add_host("rekeyed")
    host.start()
    stale_known_hosts = tmp_path / "known_hosts"
    shutil.copy(fleet.known_hosts, stale_known_hosts)
    old_key = host.host_public_key

    host.regenerate_host_key()

    assert host.alive and host.host_public_key != old_key
    stale = run_ssh(with_known_hosts(fleet.ssh_argv(host, "true"), stale_known_hosts))
    assert stale.returncode == 255
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in stale.stderr
    # The fleet's own known_hosts follows the new key.
    assert run_ssh(fleet.ssh_argv(host, "true")).returncode == 0


def test_stream_forwarding_reaches_a_unix_socket(fleet):
    remote, local = fleet.root / "echo.sock", fleet.root / "fwd-alpha.sock"
    server = serve_one_uppercase_reply(remote)
    with forwarded_unix_socket(fleet, host_named(fleet, "alpha"), remote, local):
        assert exchange_line(local, b"ping\n") == b"PING\n"
    server.join(timeout=SSH_TIMEOUT)
    assert not server.is_alive()


def test_stream_forwarding_refused_where_sshd_forbids_it(fleet):
    remote, local = fleet.root / "refused.sock", fleet.root / "fwd-nofwd.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(remote))
    server.listen(1)
    with server, forwarded_unix_socket(fleet, host_named(fleet, "nofwd"), remote, local) as ssh:
        try:
            reply = exchange_line(local, b"x\n")
        except ConnectionResetError:
            reply = b""
        assert reply == b""
        server.setblocking(False)
        with pytest.raises(BlockingIOError):
            server.accept()  # sshd never connected to the socket
    # OpenSSH 9.2's sshd answers a refused stream channel with "connect failed", the same
    # code as a missing socket; the listening socket that saw no connection tells them apart.
    assert b"open failed" in ssh.stderr.read()


def test_stop_is_idempotent_and_restart_serves_again(fleet):
    host = fleet.add_host("restarted")
    host.start()
    host.stop()
    host.stop()
    assert not host.alive
    assert run_ssh(fleet.ssh_argv(host, "true")).returncode == 255
    host.restart()
    assert host.alive
    assert run_ssh(fleet.ssh_argv(host, "true")).returncode == 0
    host.stop()


def test_a_host_that_cannot_start_reports_sshd_output(fleet):
    host = fleet.add_host("broken", {"NoSuchOption": "yes"})
    with pytest.raises(SshFleetError, match="NoSuchOption"):
        host.start()
    assert not host.alive
