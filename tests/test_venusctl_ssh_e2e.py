"""venusctl reaches hosts the way OpenSSH does: known_hosts, certificates, ssh-agent, ssh_config.

Real sshd processes of their own (tests/sshfleet.py), host and user certificates made
by `ssh-keygen -s`, a real `ssh-agent` holding a passphrase-protected key, and OpenSSH
itself (`ssh`, `ssh-keygen -F`) as the judge of what venusctl writes. The hosts answer
through the session fleet's agent w1 (its socket is a file any sshd can reach).
Jump hosts behind a network namespace are in test_venusctl_jump_e2e.py.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import AGENT_COMMAND, fleet_defaults, run, run_json, write_inventory
from sshfleet import SshFleet

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("isolated_home")]


def keygen(path: Path, passphrase: str = "") -> Path:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-C", path.name, "-f", str(path)],
        check=True,
    )
    return path


def sign(ca: Path, public_key: Path, principals: str, host: bool, validity: str = "-5m:+1h"):
    """A certificate for `public_key` (written beside it as ...-cert.pub), as an admin makes it."""
    argv = ["ssh-keygen", "-q", "-s", str(ca), "-I", f"{public_key.stem}-id", "-n", principals]
    argv += ["-V", validity, *(["-h"] if host else []), str(public_key)]
    subprocess.run(argv, check=True, capture_output=True)
    return public_key.with_name(public_key.name.replace(".pub", "-cert.pub"))


def public_line(path: Path) -> str:
    return " ".join(Path(f"{path}.pub").read_text().split()[:2])


class Reach:
    """The module's sshd hosts, CAs and keys."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fleet = SshFleet(root / "ssh")
        self.host_ca = keygen(root / "host_ca")
        self.other_ca = keygen(root / "other_ca")
        self.user_ca = keygen(root / "user_ca")
        self.hosts = {}
        names = ("plain", "certified", "wrongname", "expired", "usercert", "bastion", "aead")
        for name in (*names, "ctronly"):
            options = {"LogLevel": "DEBUG1"} if name in ("bastion", "aead", "ctronly") else {}
            if name == "ctronly":  # an sshd whose admin allows only CTR (no GCM)
                options["Ciphers"] = "aes128-ctr,aes256-ctr"
            if name == "usercert":
                # no authorized_keys at all: only a certificate by the user CA gets in
                options |= {
                    "TrustedUserCAKeys": f"{self.user_ca}.pub",
                    "AuthorizedKeysFile": "none",
                }
            self.hosts[name] = self.fleet.add_host(name, options)
        self.hosts["v6"] = self.fleet.add_host("v6", address="::1")
        certificates = {
            "certified": (self.hosts["certified"].address, "-5m:+1h"),
            "wrongname": ("someone-else.example", "-5m:+1h"),
            "expired": (self.hosts["expired"].address, "20200101:20200102"),
        }
        for name, (principal, validity) in certificates.items():
            sshd = self.hosts[name]
            cert = sign(self.host_ca, Path(f"{sshd.host_key_path}.pub"), principal, True, validity)
            sshd.extra_options["HostCertificate"] = str(cert)
            sshd._write_config()
        for sshd in self.fleet.hosts:
            sshd.start()

    def pattern(self, name: str) -> str:
        """The known_hosts name of host `name`: [address]:port."""
        sshd = self.hosts[name]
        return f"[{sshd.address}]:{sshd.port}"


@pytest.fixture(scope="module")
def reach(tmp_path_factory):
    reach = Reach(tmp_path_factory.mktemp("reach"))
    try:
        yield reach
    finally:
        reach.fleet.stop_all()


def inventory(tmp_path, ssh_fleet, reach, *names, ssh_config="none", **defaults) -> Path:
    """An inventory of reach hosts (each answering through fleet agent w1)."""
    agent = ssh_fleet.agents["w1"]
    tables = []
    for name in names:
        sshd = reach.hosts[name]
        tables.append(
            {
                "name": name,
                "address": sshd.address,
                "port": sshd.port,
                "config": str(agent.config),
                "socket": str(agent.socket),
            }
        )
    values = fleet_defaults(reach.fleet, ssh_config=str(ssh_config), **defaults)
    return write_inventory(tmp_path / "inventory.toml", tables, **values)


def errors(document) -> dict:
    return {entry["name"]: entry["error"] for entry in document["hosts"]}


# -- host certificates (@cert-authority) ---------------------------------------------------------


def test_a_host_certificate_signed_by_a_known_ca_is_accepted(tmp_path, capsys, ssh_fleet, reach):
    known = tmp_path / "known_hosts"
    # no plain key of the host anywhere: only the CA vouches for it
    known.write_text(f"@cert-authority {reach.pattern('certified')} {public_line(reach.host_ca)}\n")
    path = inventory(tmp_path, ssh_fleet, reach, "certified", known_hosts=str(known))
    status, document = run_json(capsys, path, "list")
    assert status == 0, document
    assert document["hosts"][0]["via"] == "stream"


def test_a_host_certificate_is_checked_name_validity_and_ca(tmp_path, capsys, ssh_fleet, reach):
    known = tmp_path / "known_hosts"
    ca_line = public_line(reach.host_ca)
    known.write_text(
        f"@cert-authority {reach.pattern('wrongname')},{reach.pattern('expired')} {ca_line}\n"
        # the certified host's cert is by host_ca, but this file trusts only other_ca for it
        f"@cert-authority {reach.pattern('certified')} {public_line(reach.other_ca)}\n"
    )
    path = inventory(
        tmp_path, ssh_fleet, reach, "wrongname", "expired", "certified", known_hosts=str(known)
    )
    status, document = run_json(capsys, path, "list")
    assert status == 1
    rows = errors(document)
    wrong = reach.hosts["wrongname"].address
    assert rows["wrongname"] == {
        "kind": "host-certificate",
        "message": f"host certificate 'ssh_host_ed25519_key-id' refused: it is for"
        f" someone-else.example, not {wrong} (CA at {known}:1)",
    }
    assert rows["expired"]["kind"] == "host-certificate"
    assert "it expired at 2020-01-02" in rows["expired"]["message"]
    # signed by a CA this file does not trust for it: its plain key is unknown, and why
    assert rows["certified"]["kind"] == "unknown-host-key"
    assert "no matching @cert-authority line" in rows["certified"]["message"]


# -- the cipher -------------------------------------------------------------------------------


def kex_ciphers(sshd) -> list[str]:
    """The ciphers sshd's own log says each connection agreed on (LogLevel DEBUG1)."""
    text = sshd.log_path.read_text(errors="replace")
    return re.findall(r"kex: client->server cipher: (\S+)", text)


def test_aes_gcm_is_agreed_and_an_sshd_without_it_still_answers(tmp_path, capsys, ssh_fleet, reach):
    """AES-GCM first (an AEAD cipher costs a warm fan-out less CPU per packet); where the
    server's Ciphers leave it out, paramiko's CTR with HMAC, and the host answers the same."""
    path = inventory(tmp_path, ssh_fleet, reach, "aead", "ctronly")
    status, document = run_json(capsys, path, "list")
    assert status == 0, document
    assert [entry["via"] for entry in document["hosts"]] == ["stream", "stream"]
    assert kex_ciphers(reach.hosts["aead"])[-1] == "aes256-gcm@openssh.com"
    assert kex_ciphers(reach.hosts["ctronly"])[-1] == "aes128-ctr"


# -- @revoked, global and several user files, patterns, hashes -----------------------------------


def test_a_revoked_key_is_refused_naming_the_line(tmp_path, capsys, ssh_fleet, reach):
    plain = reach.hosts["plain"]
    known = tmp_path / "known_hosts"
    known.write_text(
        f"{plain.known_hosts_line()}\n"
        "# revoked after the breach\n"
        f"@revoked * {plain.host_public_key}\n"
        f"@revoked * {public_line(reach.host_ca)}\n"
        f"@cert-authority * {public_line(reach.host_ca)}\n"
    )
    path = inventory(tmp_path, ssh_fleet, reach, "plain", "certified", known_hosts=str(known))
    status, document = run_json(capsys, path, "list")
    assert status == 1
    rows = errors(document)
    assert rows["plain"]["kind"] == "host-key-revoked"
    assert rows["plain"]["message"].endswith(f"is revoked (@revoked at {known}:3)")
    # a certificate whose CA is revoked is refused too, even with that CA trusted
    assert rows["certified"]["message"].endswith(f"is revoked (@revoked at {known}:4)")


def test_global_known_hosts_file_from_ssh_config(tmp_path, capsys, ssh_fleet, reach):
    """/etc/ssh/ssh_known_hosts-style: a system file nobody's known_hosts repeats."""
    global_file = tmp_path / "ssh_known_hosts"
    global_file.write_text(reach.hosts["plain"].known_hosts_line() + "\n")
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host *\n  UserKnownHostsFile {tmp_path}/nothing-here\n"
        f"  GlobalKnownHostsFile {global_file}\n"
    )
    path = inventory(tmp_path, ssh_fleet, reach, "plain", ssh_config=config, known_hosts=None)
    assert run(capsys, path, "list")[0] == 0
    global_file.write_text("")
    assert run_json(capsys, path, "list")[1]["hosts"][0]["error"]["kind"] == "unknown-host-key"


def test_several_user_files_hashed_wildcard_and_negated_lines(tmp_path, capsys, ssh_fleet, reach):
    plain, v6 = reach.hosts["plain"], reach.hosts["v6"]
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_text(f"{v6.known_hosts_line()}\n")
    # a hashed line, as `ssh-keygen -H` writes it
    second.write_text(f"{plain.known_hosts_line()}\n")
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(second)], check=True, capture_output=True)
    assert second.read_text().startswith("|1|")
    config = tmp_path / "ssh_config"
    config.write_text(f"Host *\n  UserKnownHostsFile {first} {second}\n")
    path = inventory(tmp_path, ssh_fleet, reach, "plain", ssh_config=config, known_hosts=None)
    assert run(capsys, path, "list")[0] == 0
    # a wildcard line for the whole loopback range, with this host negated out
    first.write_text(f"[127.0.0.*]:*,!{reach.pattern('plain')} {plain.host_public_key}\n")
    second.write_text("")
    status, document = run_json(capsys, path, "list")
    assert document["hosts"][0]["error"]["kind"] == "unknown-host-key"
    first.write_text(f"[127.0.0.*]:* {plain.host_public_key}\n")
    assert run(capsys, path, "list")[0] == 0


def test_accept_new_with_hash_known_hosts_writes_a_line_openssh_reads(
    tmp_path, capsys, ssh_fleet, reach
):
    plain = reach.hosts["plain"]
    known = tmp_path / "known_hosts"
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host *\n  StrictHostKeyChecking accept-new\n  HashKnownHosts yes\n"
        f"  UserKnownHostsFile {known}\n"
    )
    path = inventory(tmp_path, ssh_fleet, reach, "plain", ssh_config=config, known_hosts=None)
    status, out, err = run(capsys, path, "list")
    assert status == 0, out + err
    line = known.read_text()
    assert re.fullmatch(
        r"\|1\|[A-Za-z0-9+/=]+\|[A-Za-z0-9+/=]+ " + re.escape(plain.host_public_key) + "\n", line
    )
    # OpenSSH finds the host in it, and connects with it as its only known_hosts
    found = subprocess.run(
        ["ssh-keygen", "-F", reach.pattern("plain"), "-f", str(known)],
        capture_output=True,
        text=True,
    )
    assert found.returncode == 0 and plain.host_public_key in found.stdout
    argv = reach.fleet.ssh_argv(plain, "true")
    argv = [
        f"UserKnownHostsFile={known}" if a.startswith("UserKnownHostsFile=") else a for a in argv
    ]
    assert subprocess.run(argv, capture_output=True, timeout=30).returncode == 0


def test_strict_host_key_checking_no_needs_the_inventorys_opt_in(
    tmp_path, capsys, ssh_fleet, reach
):
    plain = reach.hosts["plain"]
    known = tmp_path / "known_hosts"
    known.write_text(f"{reach.pattern('plain')} {reach.hosts['v6'].host_public_key}\n")  # wrong key
    config = tmp_path / "ssh_config"
    config.write_text(f"Host *\n  StrictHostKeyChecking no\n  UserKnownHostsFile {known}\n")
    path = inventory(tmp_path, ssh_fleet, reach, "plain", ssh_config=config, known_hosts=None)
    status, document = run_json(capsys, path, "list")
    assert status == 1
    error = document["hosts"][0]["error"]
    assert error["kind"] == "ssh-config"
    assert error["message"] == (
        f"{config}:2: StrictHostKeyChecking no turns host key checking off; venusctl does"
        ' that only where the inventory says host_key_policy = "off"'
    )
    opted_in = inventory(
        tmp_path,
        ssh_fleet,
        reach,
        "plain",
        ssh_config=config,
        known_hosts=None,
        host_key_policy="off",
    )
    assert run(capsys, opted_in, "list")[0] == 0  # the changed key is let through
    assert known.read_text().count("\n") == 1  # and not recorded
    assert plain.alive


# -- authentication: ssh-agent with a passphrase key, user certificates ---------------------------


@pytest.fixture
def ssh_agent(tmp_path):
    """A real ssh-agent on a socket of its own (stopped at the end)."""
    sock = tmp_path / "agent.sock"
    process = subprocess.Popen(
        ["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        for _ in range(200):
            if sock.exists():
                break
            subprocess.run(["sleep", "0.02"])
        yield sock, process
    finally:
        os.kill(process.pid, signal.SIGCONT)
        process.terminate()
        process.wait(10)


def ssh_add(agent_socket: Path, key: Path, passphrase: str, tmp_path: Path) -> None:
    """`ssh-add KEY`, its passphrase given the way a desktop gives it (SSH_ASKPASS)."""
    askpass = tmp_path / "askpass"
    askpass.write_text(f"#!/bin/sh\necho '{passphrase}'\n")
    askpass.chmod(0o700)
    env = {
        **os.environ,
        "SSH_AUTH_SOCK": str(agent_socket),
        "SSH_ASKPASS": str(askpass),
        "SSH_ASKPASS_REQUIRE": "force",
        "DISPLAY": ":0",
    }
    done = subprocess.run(
        ["ssh-add", str(key)], env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=20
    )
    assert done.returncode == 0, done.stderr


def test_an_ssh_agent_holding_a_passphrase_key(tmp_path, capsys, ssh_fleet, reach, ssh_agent):
    agent_socket, _ = ssh_agent
    key = keygen(tmp_path / "locked", passphrase="correct horse")
    reach.hosts["plain"].authorized_keys_path.write_text(
        f"{reach.fleet.client_public_key}\n{public_line(key)}\n"
    )
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host *\n  IdentityFile {key}\n  IdentitiesOnly yes\n  IdentityAgent {agent_socket}\n"
    )
    path = inventory(tmp_path, ssh_fleet, reach, "plain", ssh_config=config, identity_file=None)
    status, document = run_json(capsys, path, "list")
    assert status == 1  # the agent does not have it yet; nothing can ask for the passphrase
    assert document["hosts"][0]["error"]["message"] == (
        f"authentication failed as {reach.fleet.user}: no key to offer;"
        f" {key} needs its passphrase (add it to ssh-agent)"
    )
    ssh_add(agent_socket, key, "correct horse", tmp_path)
    status, document = run_json(capsys, path, "list")
    assert status == 0, document  # the agent signs for the IdentityFile it holds
    # IdentitiesOnly: an agent key that is no IdentityFile is not offered
    other = keygen(tmp_path / "other")
    ssh_add(agent_socket, other, "", tmp_path)
    key.with_name("locked.pub").rename(tmp_path / "moved.pub")
    key.rename(tmp_path / "moved")
    status, document = run_json(capsys, path, "list")
    assert status == 1
    assert f"{key}: no such file" in document["hosts"][0]["error"]["message"]


def test_a_user_certificate_from_certificate_file(tmp_path, capsys, ssh_fleet, reach):
    key = keygen(tmp_path / "id_user")
    certificate = sign(reach.user_ca, Path(f"{key}.pub"), reach.fleet.user, host=False)
    kept = tmp_path / "elsewhere-cert.pub"
    certificate.rename(kept)  # not beside the key: only CertificateFile finds it
    config = tmp_path / "ssh_config"
    config.write_text(f"Host *\n  IdentityFile {key}\n  IdentityAgent none\n")
    path = inventory(tmp_path, ssh_fleet, reach, "usercert", ssh_config=config, identity_file=None)
    status, document = run_json(capsys, path, "list")
    assert document["hosts"][0]["error"]["kind"] == "authentication-failed"
    config.write_text(config.read_text() + f"  CertificateFile {kept}\n")
    status, document = run_json(capsys, path, "list")
    assert status == 0, document


def test_a_certificate_for_one_host_is_not_offered_to_the_next(tmp_path, capsys, ssh_fleet, reach):
    """A run parses its key file once and shares the key: the certificate one host's
    CertificateFile adds goes on a copy. Host plain knows the key itself and no CA; had
    the certificate stuck to the shared key, plain would be offered it and refuse."""
    certificate = sign(
        reach.user_ca, Path(f"{reach.fleet.client_key}.pub"), reach.fleet.user, False
    )
    kept = tmp_path / "usercert-cert.pub"
    certificate.rename(kept)  # not beside the key: only usercert's CertificateFile names it
    config = tmp_path / "ssh_config"
    usercert = reach.hosts["usercert"]
    config.write_text(f"Host {usercert.address}\n  CertificateFile {kept}\n")
    for order in (("usercert", "plain"), ("plain", "usercert")):  # the shared key used after
        path = inventory(tmp_path, ssh_fleet, reach, *order, ssh_config=config)
        status, document = run_json(capsys, path, "--forks", "1", "list")
        assert status == 0 and errors(document) == {"usercert": None, "plain": None}, order


# -- ssh_config: Include, Match, the default files; IPv6 ------------------------------------------


def test_include_and_match_in_the_users_ssh_config(
    tmp_path, capsys, ssh_fleet, reach, isolated_home
):
    """No ssh_config in the inventory: ~/.ssh/config, as `ssh` reads it (then /etc/ssh's)."""
    plain = reach.hosts["plain"]
    (isolated_home / ".ssh" / "fleet.d").mkdir()
    (isolated_home / ".ssh" / "config").write_text("Include fleet.d/*.conf\n")
    (isolated_home / ".ssh" / "fleet.d" / "10-workers.conf").write_text(
        f"Host worker-*\n  User {reach.fleet.user}\n  IdentityFile {reach.fleet.client_key}\n"
        f"  UserKnownHostsFile {reach.fleet.known_hosts}\n"
        f"Match originalhost worker-one\n  HostName {plain.address}\n  Port {plain.port}\n"
    )
    agent = ssh_fleet.agents["w1"]
    table = {
        "name": "one",
        "address": "worker-one",
        "config": str(agent.config),
        "socket": str(agent.socket),
    }
    path = write_inventory(tmp_path / "inventory.toml", [table], agent=AGENT_COMMAND)
    status, out, err = run(capsys, path, "list")
    assert status == 0, out + err
    assert out.splitlines()[1].split()[1] == f"{plain.address}:{plain.port}"


def test_an_ipv6_host_is_shown_and_named_as_bracket_address_port(
    tmp_path, capsys, ssh_fleet, reach
):
    v6 = reach.hosts["v6"]
    path = inventory(tmp_path, ssh_fleet, reach, "v6")
    status, out, err = run(capsys, path, "list")
    assert status == 0, out + err
    assert out.splitlines()[1].split()[1] == f"[::1]:{v6.port}"
    status, out, err = run(capsys, path, "info", f"[::1]:{v6.port}")
    assert status == 0, err


# -- ProxyCommand ---------------------------------------------------------------------------------


def proxy_through_bastion(reach: Reach, tail: str = "") -> str:
    """OpenSSH's own `ssh -W` through the bastion, as operators write ProxyCommand."""
    bastion = reach.hosts["bastion"]
    return (
        f"ssh -F none -i {reach.fleet.client_key} -o BatchMode=yes -o IdentitiesOnly=yes"
        f" -o UserKnownHostsFile={reach.fleet.known_hosts} -p {bastion.port}"
        f" -W %h:%p %r@{bastion.address}{tail}"
    )


def test_proxy_command_with_ssh_w_goes_through_the_bastion(tmp_path, capsys, ssh_fleet, reach):
    bastion = reach.hosts["bastion"]
    plain = reach.hosts["plain"]
    before = bastion.log_path.read_text(errors="replace").count("server_request_direct_tcpip")
    config = tmp_path / "ssh_config"
    config.write_text(f"Host *\n  ProxyCommand {proxy_through_bastion(reach)}\n")
    path = inventory(tmp_path, ssh_fleet, reach, "plain", ssh_config=config)
    status, document = run_json(capsys, path, "list")
    assert status == 0, document
    assert document["hosts"][0]["jump"].startswith("ProxyCommand ssh -F none")
    log = bastion.log_path.read_text(errors="replace")
    assert log.count("server_request_direct_tcpip") == before + 1
    assert f"target {plain.address} port {plain.port}" in log
    wide = run(capsys, path, "list", "--wide")[1].splitlines()
    assert wide[1].split()[2:4] == ["ProxyCommand", "ssh"]  # the table names its program


def test_a_proxy_command_with_shell_syntax_runs_in_the_shell_and_a_failing_one_says_why(
    tmp_path, capsys, ssh_fleet, reach
):
    config = tmp_path / "ssh_config"
    # a redirection: only a shell can do it, as OpenSSH runs every ProxyCommand
    command = proxy_through_bastion(reach, f" 2>>{tmp_path / 'px.log'}")
    config.write_text(f"Host *\n  ProxyCommand {command}\n")
    path = inventory(tmp_path, ssh_fleet, reach, "plain", ssh_config=config)
    assert run(capsys, path, "list")[0] == 0
    assert (tmp_path / "px.log").exists()
    config.write_text(
        "Host *\n  ProxyCommand ssh -F none -o BatchMode=yes -p 1 -W %h:%p 127.0.0.1\n"
    )
    status, document = run_json(capsys, path, "list")
    assert status == 1
    error = document["hosts"][0]["error"]
    assert error["kind"] == "jump-host"
    assert error["message"] == (
        "ProxyCommand exited with status 255: ssh: connect to host 127.0.0.1 port 1:"
        " Connection refused"
    )


def test_host_key_alias_is_the_name_known_hosts_is_searched_for(tmp_path, capsys, ssh_fleet, reach):
    plain = reach.hosts["plain"]
    known = tmp_path / "known_hosts"
    known.write_text(f"plain.fleet.example {plain.host_public_key}\n")
    config = tmp_path / "ssh_config"
    config.write_text(f"Host {plain.address}\n  HostKeyAlias plain.fleet.example\n")
    path = inventory(tmp_path, ssh_fleet, reach, "plain", ssh_config=config, known_hosts=str(known))
    assert run(capsys, path, "list")[0] == 0
    config.write_text("")  # now it is looked up as [address]:port, which the file lacks
    status, document = run_json(capsys, path, "list")
    assert document["hosts"][0]["error"]["kind"] == "unknown-host-key"


def test_accept_new_with_nowhere_to_record_is_refused(tmp_path, capsys, ssh_fleet, reach):
    config = tmp_path / "ssh_config"
    config.write_text("Host *\n  UserKnownHostsFile none\n  GlobalKnownHostsFile none\n")
    path = inventory(
        tmp_path,
        ssh_fleet,
        reach,
        "plain",
        ssh_config=config,
        known_hosts=None,
        host_key_policy="accept-new",
    )
    status, document = run_json(capsys, path, "list")
    assert status == 1
    assert document["hosts"][0]["error"]["message"].endswith(
        "(UserKnownHostsFile none: nowhere to record it)"
    )
