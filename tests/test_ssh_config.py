"""ssh_config and known_hosts read as OpenSSH reads them, with OpenSSH as the judge.

Each case writes a config, asks OpenSSH 9.2 what it makes of it (`ssh -G`, the
command ssh would run as ProxyCommand, `ssh -v`'s identity files, `ssh-keygen -F`
for known_hosts lookups) and compares venusctl's resolution with that, not with
expectations of our own. No connection is made (a ProxyCommand that fails at
once stands in for the network). HOME is set to the user's passwd home, which is
what OpenSSH uses for ~ (venusctl uses $HOME), so both expand ~ alike; nothing is
written there.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

import pytest

import venusctl

SSH_G_KEYS = (
    "hostname",
    "port",
    "user",
    "identityfile",
    "certificatefile",
    "identitiesonly",
    "hostkeyalias",
    "proxyjump",
    "proxycommand",
    "userknownhostsfile",
    "globalknownhostsfile",
    "stricthostkeychecking",
    "hashknownhosts",
    "connecttimeout",
    "serveraliveinterval",
    "addressfamily",
)


@pytest.fixture(autouse=True)
def passwd_home(monkeypatch):
    home = pwd.getpwuid(os.getuid()).pw_dir
    monkeypatch.setenv("HOME", home)
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return home


def ssh_g(config: Path, name: str) -> dict[str, list[str]]:
    """What OpenSSH resolves for `ssh -F config name`."""
    done = subprocess.run(
        ["ssh", "-G", "-F", str(config), name],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=20,
    )
    assert done.returncode == 0, done.stderr
    values: dict[str, list[str]] = {}
    for line in done.stdout.splitlines():
        key, _, value = line.partition(" ")
        values.setdefault(key, []).append(value)
    return {key: values[key] for key in SSH_G_KEYS if key in values}


STRICT_AS_SSH_G = {"yes": "true", "ask": "ask", "accept-new": "accept-new", "off": "false"}


def venusctl_g(config: Path, name: str) -> dict[str, list[str]]:
    """venusctl's lookup of the same name, in ssh -G's words."""
    found = venusctl.SshConfigFiles([(str(config), "given")]).lookup(name)
    values = found.values
    host = venusctl.parse_inventory(
        f'[[host]]\nname = "x"\naddress = "{name}"\nssh_config = "{config}"\n'
        'host_key_policy = "off"\n',  # ssh -G shows StrictHostKeyChecking no; resolve it
        config.parent / "inventory.toml",
    ).hosts[0]
    target = venusctl.SshContext({}).target(host)
    view = {
        "hostname": [target.hostname],
        "port": [str(target.port)],
        "user": [target.user],
        # ssh -G shows them unexpanded: so does the lookup (the target has them expanded)
        "identityfile": values.get("identityfile") or list(venusctl.DEFAULT_IDENTITY_FILES),
        "identitiesonly": [values.get("identitiesonly", "no")],
        "userknownhostsfile": [" ".join(target.user_known_hosts) or "none"],
        "globalknownhostsfile": [" ".join(target.global_known_hosts) or "none"],
        "stricthostkeychecking": [STRICT_AS_SSH_G[values.get("stricthostkeychecking", "ask")]],
        "hashknownhosts": [values.get("hashknownhosts", "no")],
        "connecttimeout": [str(int(target.connect_timeout))]
        if "connecttimeout" in values
        else ["none"],
        "serveraliveinterval": [str(int(target.server_alive_interval))],
        "addressfamily": [target.address_family],
    }
    if values.get("certificatefile"):
        view["certificatefile"] = values["certificatefile"]
    if target.host_key_alias:
        view["hostkeyalias"] = [target.host_key_alias]
    if "proxycommand" in values and values["proxycommand"].lower() != "none":
        view["proxycommand"] = [values["proxycommand"]]
    if "proxyjump" in values and values["proxyjump"].lower() != "none":
        view["proxyjump"] = [values["proxyjump"]]
    return {key: view[key] for key in SSH_G_KEYS if key in view}


CONFIGS = {
    "first value wins, patterns, negation": (
        """
        Host web? !web9
          Port 2201
          User first
        Host web*
          Port 2202
          User second
          HostName %h.internal
        Host *
          User third
          IdentityFile /keys/one
          IdentityFile /keys/two
          ConnectTimeout 1m30s
        """,
        ["web1", "web9", "webby", "db"],
    ),
    "Match host, originalhost, user, localuser, all, negated": (
        """
        Host alias1
          HostName 10.1.2.3
        Match host 10.1.2.*
          User fromhost
        Match originalhost alias1
          Port 1001
        Match user fromhost
          IdentityFile /id/user-matched
        Match localuser LOCAL_USER
          ConnectTimeout 7
        Match !host 10.1.2.3
          ServerAliveInterval 9
        Match all
          ServerAliveInterval 11
        """.replace("LOCAL_USER", pwd.getpwuid(os.getuid()).pw_name),
        ["alias1", "other"],
    ),
    "Match final: a second pass that keeps the first values": (
        """
        Host f
          HostName 10.9.9.9
        Match final host 10.9.9.9
          HostKeyAlias final-alias
          Port 2999
        Match !final
          Port 2000
        """,
        ["f", "g"],
    ),
    "ProxyJump and ProxyCommand: whichever comes first": (
        """
        Host a
          ProxyJump j1
          ProxyCommand nc %h %p
        Host b
          ProxyCommand ssh -W %h:%p bastion
          ProxyJump j2
        Host c
          ProxyJump none
          ProxyCommand nc -x proxy %h %p
        Host d
          ProxyCommand none
          ProxyJump j4
        Host e
          ProxyJump u@j1:23,ssh://v@j2:24,[::1]:25
        """,
        ["a", "b", "c", "d", "e"],
    ),
    "quoting, = syntax, several known_hosts files, comments": (
        """
        Host=q  "other name"
          User "al ice"
          IdentityFile '/x y/k'\t
          Port=2200 # a comment
          UserKnownHostsFile /k1 "/k 2" /k3
          GlobalKnownHostsFile none
          HostKeyAlias al\\ ias
          StrictHostKeyChecking accept-new
          HashKnownHosts yes
          AddressFamily inet
          CertificateFile /c/one-cert.pub
        """,
        ["q"],
    ),
    "StrictHostKeyChecking no and IgnoreUnknown": (
        """
        IgnoreUnknown UseKeychain,AddKeysToAgentX
        Host *
          UseKeychain yes
          AddKeysToAgentX yes
          StrictHostKeyChecking no
          IdentitiesOnly yes
        """,
        ["any"],
    ),
}


@pytest.mark.parametrize("case", list(CONFIGS))
def test_resolution_is_what_ssh_g_says(tmp_path, case):
    text, names = CONFIGS[case]
    config = tmp_path / "ssh_config"
    config.write_text("\n".join(line[8:] for line in text.splitlines()) + "\n")
    for name in names:
        assert venusctl_g(config, name) == ssh_g(config, name), name


def test_include_globs_nested_and_inactive_blocks_as_ssh_g(tmp_path):
    included = tmp_path / "conf.d"
    included.mkdir()
    (included / "a.conf").write_text("Port 3001\nHost other\n  User other-user\n")
    (included / "b.conf").write_text(
        "Port 3002\nUser b-user\nInclude " + str(tmp_path / "deep.conf") + "\n"
    )
    (tmp_path / "deep.conf").write_text("HostKeyAlias deep\n")
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host foo\n  Include {included}/*.conf\n  IdentityFile /after-include\n"
        f"Host bar\n  Include {included}/a.conf\nHost *\n  User star\n"
        f"Include {tmp_path}/nothing-matches-*.conf\n"
    )
    for name in ("foo", "bar", "other"):
        assert venusctl_g(config, name) == ssh_g(config, name), name


def test_include_relative_paths_are_under_home_ssh(tmp_path, monkeypatch):
    """OpenSSH takes a relative Include from ~/.ssh (its passwd home, which a test may
    not write); venusctl's ~ is $HOME, so this one is checked against the rule itself."""
    home = tmp_path / "home"
    (home / ".ssh" / "fleet.d").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    (home / ".ssh" / "fleet.d" / "w.conf").write_text("Host w\n  Port 2345\n")
    config = tmp_path / "ssh_config"
    config.write_text("Include fleet.d/*.conf\n")
    found = venusctl.SshConfigFiles([(str(config), "given")]).lookup("w")
    assert found.values["port"] == "2345"
    assert found.origins["port"] == f"{home}/.ssh/fleet.d/w.conf:2"


def test_tokens_expand_as_openssh_runs_them(tmp_path):
    """The ProxyCommand OpenSSH runs and the one venusctl runs record the same argv;
    the identity files are the ones `ssh -v` says it tries."""
    record = tmp_path / "record"
    script = tmp_path / "proxy.sh"
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{record}"\nexit 1\n')
    script.chmod(0o755)
    config = tmp_path / "ssh_config"
    config.write_text(
        "Host foo\n  User alice\n  Port 2222\n  HostName real-%h.example\n"
        "  IdentityFile ~/id_%h_%r_%u_%p_%n_%%_%C_%d_%L_%l_%i_%k\n"
        f"  ProxyCommand {script} %h %p %r %n %% 100%%\n"
    )
    done = subprocess.run(
        ["ssh", "-v", "-F", str(config), "-o", "BatchMode=yes", "foo", "true"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=20,
    )
    openssh_argv = record.read_text().splitlines()
    record.unlink()
    tried = [
        line.split()[3]
        for line in done.stderr.splitlines()
        if line.startswith("debug1: identity file")
    ]
    identity = [path for path in tried if not path.endswith("-cert")]  # its -cert.pub look-ups
    host = venusctl.parse_inventory(
        f'[[host]]\nname = "x"\naddress = "foo"\nssh_config = "{config}"\n', tmp_path / "i.toml"
    ).hosts[0]
    target = venusctl.SshContext({}).target(host)
    assert list(target.identity_files) == identity
    sock = venusctl.ProxyCommandSocket.start(target.proxy_command, os.environ)
    assert sock.failure() is not None  # it exited 1 once it had written its argv
    sock.close()
    assert (
        record.read_text().splitlines()
        == openssh_argv
        == [
            "real-foo.example",
            "2222",
            "alice",
            "foo",
            "%",
            "100%",
        ]
    )


def test_match_exec_is_refused_never_run_and_skipped_as_openssh_skips_it(tmp_path):
    ran = tmp_path / "ran"
    config = tmp_path / "ssh_config"
    config.write_text(
        f'Match host nomatch exec "touch {ran}"\n  Port 1\n'
        f'Match host yes-* exec "touch {ran}"\n  Port 2\n'
    )
    # OpenSSH does not run it once an earlier criterion failed: neither does venusctl
    assert venusctl_g(config, "no") == ssh_g(config, "no")
    files = venusctl.SshConfigFiles([(str(config), "given")])
    with pytest.raises(venusctl.SshConfigError) as refused:
        files.lookup("yes-1")
    assert str(refused.value) == (
        f"{config}:3: Match exec is not supported: venusctl never runs commands from"
        " ssh_config to decide where to connect"
    )
    assert not ran.exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Host *\n  Bogus yes\n", "{config}:2: unknown ssh_config directive 'bogus'"),
        ("Host *\n  Port 99999\n", "{config}:2: bad port '99999'"),
        ("Host *\n  User\n", "{config}:2: no argument after keyword 'User'"),
        ('Host *\n  User "unbalanced\n', "{config}:2: invalid quotes"),
        ("Match canonical\n  Port 2\n", "{config}:1: Match canonical is not supported by venusctl"),
    ],
)
def test_what_openssh_refuses_is_refused_with_file_and_line(tmp_path, text, message):
    config = tmp_path / "ssh_config"
    config.write_text(text)
    openssh = subprocess.run(
        ["ssh", "-G", "-F", str(config), "h"], capture_output=True, stdin=subprocess.DEVNULL
    )
    if "canonical" not in text:
        assert openssh.returncode != 0  # OpenSSH refuses the same file
    with pytest.raises(venusctl.SshConfigError) as refused:
        venusctl.SshConfigFiles([(str(config), "given")]).lookup("h")
    assert str(refused.value).startswith(message.format(config=config))


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("CheckHostIP yes", "checkhostip yes"),
        ("CanonicalizeHostname yes", "canonicalizehostname yes"),
        ("KexAlgorithms curve25519-sha256", "kexalgorithms curve25519-sha256"),
        ("BindAddress 127.0.0.9", "bindaddress 127.0.0.9"),
    ],
)
def test_a_directive_venusctl_cannot_honour_is_that_hosts_error(tmp_path, line, why):
    config = tmp_path / "ssh_config"
    config.write_text(f"Host refused\n  {line}\nHost *\n  CheckHostIP no\n")
    text = (
        f'[[host]]\nname = "a"\naddress = "refused"\nssh_config = "{config}"\n'
        f'[[host]]\nname = "b"\naddress = "fine"\nssh_config = "{config}"\n'
    )
    refused, fine = venusctl.parse_inventory(text, tmp_path / "i.toml").hosts
    context = venusctl.SshContext({})
    with pytest.raises(venusctl.SshConfigError) as error:
        context.target(refused)
    assert str(error.value) == (
        f"{config}:2: {why} is not supported by venusctl (it changes where or with which"
        " trust OpenSSH connects)"
    )
    assert context.target(fine).hostname == "fine"


def test_inventory_values_win_over_ssh_config(tmp_path):
    config = tmp_path / "ssh_config"
    config.write_text(
        "Host w\n  HostName 10.0.0.5\n  User cfg\n  Port 2200\n  IdentityFile /cfg/key\n"
        "  UserKnownHostsFile /cfg/kh\n  StrictHostKeyChecking accept-new\n  ConnectTimeout 30\n"
        "  ProxyJump cfg-bastion\n"
    )
    text = (
        f'[defaults]\nssh_config = "{config}"\n'
        '[[host]]\nname = "inv"\naddress = "w"\nuser = "inv"\nport = 22\n'
        'identity_file = "/inv/key"\nknown_hosts = "/inv/kh"\nhost_key_policy = "reject"\n'
        'connect_timeout = 3\njump = "none"\n'
        '[[host]]\nname = "cfg"\naddress = "w"\n'
    )
    inv, cfg = venusctl.parse_inventory(text, tmp_path / "i.toml").hosts
    context = venusctl.SshContext({})
    mine, theirs = context.target(inv), context.target(cfg)
    assert (mine.hostname, mine.port, mine.user) == ("10.0.0.5", 22, "inv")
    assert mine.identity_files == ("/inv/key",) and mine.user_known_hosts == ("/inv/kh",)
    assert mine.strict_host_key_checking == "yes" and mine.connect_timeout == 3
    assert mine.via is None
    assert (theirs.port, theirs.user, theirs.identity_files) == (2200, "cfg", ("/cfg/key",))
    assert theirs.strict_host_key_checking == "accept-new" and theirs.connect_timeout == 30
    assert theirs.via.name == "cfg-bastion" and theirs.route == f"{theirs.via.user}@cfg-bastion:22"
    # one value, comparable and hashable: the key a connection keeper needs
    assert context.target(cfg) == venusctl.SshContext({}).target(cfg)
    assert hash(theirs) == hash(venusctl.SshContext({}).target(cfg)) and mine != theirs


def test_jump_chains_groups_and_loops(tmp_path):
    config = tmp_path / "ssh_config"
    config.write_text(
        "Host hop2\n  HostName 10.0.0.2\n  User h2\nHost hop1\n  HostName 192.0.2.1\n"
        "  Port 2222\nHost looped\n  ProxyJump looped2\nHost looped2\n  ProxyJump looped\n"
    )
    text = (
        f'[defaults]\nssh_config = "{config}"\n'
        '[group.behind]\njump = "ops@hop1,hop2"\n'
        '[[host]]\nname = "t"\naddress = "10.0.1.1"\ngroups = ["behind"]\n'
        '[[host]]\nname = "l"\naddress = "looped"\n'
    )
    chained, looped = venusctl.parse_inventory(text, tmp_path / "i.toml").hosts
    context = venusctl.SshContext({})
    target = context.target(chained)
    assert [(hop.user, hop.hostname, hop.port) for hop in target.jump_hops] == [
        ("ops", "192.0.2.1", 2222),
        ("h2", "10.0.0.2", 22),
    ]
    assert target.route == "ops@192.0.2.1:2222,h2@10.0.0.2:22"
    assert "-oProxyJump=ops@192.0.2.1:2222,h2@10.0.0.2:22" in target.ssh_options()
    with pytest.raises(
        venusctl.SshConfigError, match="ProxyJump loop: looped -> looped2 -> looped"
    ):
        context.target(looped)


def test_group_tables_conflicting_is_an_inventory_error(tmp_path):
    text = (
        '[group.a]\njump = "b1"\n[group.b]\njump = "b2"\n'
        '[[host]]\nname = "t"\naddress = "10.0.1.1"\ngroups = ["a", "b"]\n'
    )
    with pytest.raises(venusctl.InventoryError, match="its groups set jump two ways"):
        venusctl.parse_inventory(text, tmp_path / "i.toml")


def test_a_users_ssh_config_others_can_write_is_refused(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    user_config = home / ".ssh" / "config"
    user_config.write_text("Host *\n  Port 2222\n")
    user_config.chmod(0o664)
    files = venusctl.SshConfigFiles([("~/.ssh/config", "user")])
    with pytest.raises(venusctl.SshConfigError, match="bad owner or permissions"):
        files.lookup("h")
    user_config.chmod(0o600)
    assert venusctl.SshConfigFiles([("~/.ssh/config", "user")]).lookup("h").values["port"] == "2222"


# -- known_hosts lookups, with ssh-keygen -F as the judge ----------------------------------------


KEYS = {}


def a_key(tmp_path: Path, name: str) -> str:
    if name not in KEYS:
        path = tmp_path / name
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
        KEYS[name] = " ".join(Path(f"{path}.pub").read_text().split()[:2])
    return KEYS[name]


def test_known_hosts_lines_match_the_names_ssh_keygen_finds(tmp_path):
    key = a_key(tmp_path, "k")
    lines = [
        f"10.0.0.5 {key}",
        f"web*.example,!web9.example {key}",
        f"[10.0.0.*]:2222 {key}",
        f"[10.0.0.7]:22 {key}",  # never matches: port 22 is looked up as the bare name
        f"db?,Cache.Example {key}",
        f"@cert-authority *.ca.example {key}",
        # literal names (looked up by name) after and among the matched ones, in file order
        f"DB1,10.0.0.5 {key}",
        f"10.0.0.5,10.0.0.5 {key}",
    ]
    plain = tmp_path / "known_hosts"
    plain.write_text("\n".join(lines) + "\n")
    hashed = tmp_path / "hashed"
    hashed.write_text(f"10.0.0.5 {key}\nsome.host {key}\n")
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(hashed)], check=True, capture_output=True)
    names = [
        "10.0.0.5",
        "web1.example",
        "web9.example",
        "[10.0.0.3]:2222",
        "10.0.0.3",
        "10.0.0.7",
        "db1",
        "cache.example",
        "x.ca.example",
        "some.host",
    ]
    for path in (plain, hashed):
        known = venusctl.KnownHostsFile(str(path))
        for name in names:
            found = subprocess.run(
                ["ssh-keygen", "-F", name, "-f", str(path)], capture_output=True, text=True
            )
            openssh = [  # "# Host NAME found: line N", " CA" after it for @cert-authority
                int(line.split(" found: line ")[1].split()[0])
                for line in found.stdout.splitlines()
                if line.startswith("# Host") and " found: line " in line
            ]
            ours = [line.number for line in known.matching(name)]
            assert ours == openssh, (path.name, name)


def test_ssh_options_give_openssh_the_same_target(tmp_path):
    """What issue 19's `venusctl ssh` will hand OpenSSH: `ssh -F none -o...` resolves to
    the target venusctl resolved."""
    config = tmp_path / "ssh_config"
    config.write_text(
        "Host w\n  HostName 10.0.0.5\n  Port 2200\n  User cfg\n  IdentityFile /cfg/key\n"
        "  HostKeyAlias w.fleet\n  StrictHostKeyChecking accept-new\n  ProxyJump ops@jump:2222\n"
        "  UserKnownHostsFile /a/kh /b/kh\n  ConnectTimeout 7\n"
    )
    host = venusctl.parse_inventory(
        f'[[host]]\nname = "x"\naddress = "w"\nssh_config = "{config}"\n', tmp_path / "i.toml"
    ).hosts[0]
    target = venusctl.SshContext({}).target(host)
    done = subprocess.run(
        ["ssh", "-G", "-F", "none", *target.ssh_options(), target.name],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=20,
    )
    assert done.returncode == 0, done.stderr
    openssh = {}
    for line in done.stdout.splitlines():
        key, _, value = line.partition(" ")
        openssh.setdefault(key, []).append(value)
    assert openssh["hostname"] == ["10.0.0.5"] and openssh["port"] == ["2200"]
    assert openssh["user"] == ["cfg"] and openssh["identityfile"] == ["/cfg/key"]
    assert openssh["hostkeyalias"] == ["w.fleet"]
    assert openssh["stricthostkeychecking"] == ["accept-new"]
    assert openssh["userknownhostsfile"] == ["/a/kh /b/kh"]
    assert openssh["connecttimeout"] == ["7"]
    assert openssh["proxyjump"] == [f"ops@{target.via.hostname}:2222"]


def test_ansible_reaches_the_hosts_through_the_same_jump_hosts(tmp_path):
    """The playbooks' OpenSSH gets what the inventory sets (ssh_config does the rest)."""
    inventory = venusctl.parse_inventory(
        '[group.rack7]\njump = "ops@bastion-7:2222"\nhost_key_policy = "off"\n'
        '[[host]]\nname = "a"\naddress = "10.7.0.1"\ngroups = ["rack7"]\n'
        '[[host]]\nname = "b"\naddress = "10.0.0.2"\n',
        tmp_path / "inventory.toml",
    )
    hostvars = venusctl.ansible_inventory(inventory)["_meta"]["hostvars"]
    assert hostvars["a"]["ansible_ssh_common_args"] == (
        "-o StrictHostKeyChecking=no -o ProxyJump=ops@bastion-7:2222"
    )
    assert hostvars["b"]["ansible_ssh_common_args"] == ""
    assert "ansible_ssh_timeout" not in hostvars["b"]  # ConnectTimeout is ssh_config's
