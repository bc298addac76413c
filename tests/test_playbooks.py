"""playbooks/: the real deploy onto a loopback sshd host as a non-root SSH user, and the rest.

The deploy test runs the top README's own deploy command (without
ANSIBLE_CONFIG, so as a new user runs it) through playbooks/inventory.py (so
through ``venusctl inventory --ansible`` and a generated inventory.toml)
against one real OpenSSH sshd on 127.0.0.x. It logs in as a throw-away
non-root user with passwordless sudo (made for the module, removed after it),
so every privileged step goes through ``become``. The paths live under a
temporary prefix and service management is off (systemd is not PID 1 here);
the service user, the socket group and the memberships are real accounts of
this machine, named after this process so parallel runs never meet, and
removed at the end. Then the files on the host are checked (owners, modes,
the release folder, the unit), the agent is started the way the rendered unit
says (its User=, Group=, SupplementaryGroups=, UMask=, Environment=), and
asked for its threads through the socket group, directly and by venusctl over
SSH as the SSH user. The deployment is offline: the agent's wheel is built
from a snapshot of this checkout (pinned bytes, even while someone edits the
tree), copied, and unpacked by the host's own Python.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import promtools
import pytest
from helpers import read_toml
from sshfleet import SshFleet

from worker_agent import __version__
from worker_agent.states import PLANS, State

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
PLAYBOOKS = ROOT / "playbooks"
ROLE = PLAYBOOKS / "roles" / "venus_worker"
ROLES = [ROLE, PLAYBOOKS / "roles" / "venus_health"]
BIN = Path(sys.executable).parent
ALL_PLAYBOOKS = ["deploy-agent.yml", "drain.yml", "resume-all.yml", "health-cron.yml"]
THREADS = 2
# What a worker host has: its distribution's Python, usable by every user.
HOST_PYTHON = "/usr/bin/python3"
SECURITY_THRESHOLD = 2.5
RECAP = re.compile(
    r"^(?P<host>\S+)\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+"
    r"unreachable=(?P<unreachable>\d+)\s+failed=(?P<failed>\d+)",
    re.MULTILINE,
)
SNAPSHOT_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "__pycache__", "*.egg-info", "build", "dist", "mock-tmp", "*.sock",
    "tests", "bench", "playbooks", ".pytest_cache", ".ruff_cache",
)  # fmt: skip


def ansible_tool(name: str) -> str:
    path = BIN / name
    # Not a skip: CI installs ansible-core with the test extra, and a missing
    # tool must show up as a failure, not as silently untested playbooks.
    assert path.exists(), f"{path} missing: install the test extra (pip install -e '.[test]')"
    return str(path)


def recap(output: str) -> dict[str, dict[str, int]]:
    return {
        m["host"]: {k: int(m[k]) for k in ("ok", "changed", "unreachable", "failed")}
        for m in RECAP.finditer(output)
    }


def readme_commands(marker: str) -> list[list[str]]:
    """The top README's shell lines that contain marker (backslash continuations joined)."""
    text = (ROOT / "README.md").read_text().replace("\\\n", " ")
    return [shlex.split(line) for line in text.splitlines() if marker in line]


def unit_directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if re.match(r"^[A-Za-z]+=", line):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


def unit_environment(values: list[str]) -> dict[str, str]:
    pairs = (shlex.split(value)[0].split("=", 1) for value in values)
    return {name: value for name, value in pairs}


class Accounts:
    """The machine's accounts the module makes: the SSH user (sudo) and the agent's names."""

    def __init__(self) -> None:
        assert os.geteuid() == 0, "the deploy tests make users and sudo rules: run them as root"
        for tool in ("useradd", "userdel", "groupdel", "sudo", "runuser"):
            assert shutil.which(tool), f"{tool} missing (scripts/test.sh installs sudo)"
        suffix = f"t{os.getpid()}"
        self.ssh_user = f"vdeploy-{suffix}"
        self.service_user = f"venus-{suffix}"
        self.socket_group = f"venusctl-{suffix}"
        self.sudoers = Path("/etc/sudoers.d") / f"venusctl-test-{suffix}"

    def create_ssh_user(self) -> None:
        # "*": no password, yet not locked (sshd refuses keys of a locked account).
        argv = ["useradd", "--create-home", "--shell", "/bin/sh", "--password", "*"]
        subprocess.run([*argv, self.ssh_user], check=True, capture_output=True)
        self.sudoers.write_text(f"{self.ssh_user} ALL=(ALL) NOPASSWD: ALL\n")
        self.sudoers.chmod(0o440)

    def remove(self) -> None:
        self.sudoers.unlink(missing_ok=True)
        for user, home in ((self.ssh_user, ["--remove"]), (self.service_user, [])):
            subprocess.run(["userdel", "--force", *home, user], capture_output=True)
        for group in (self.service_user, self.socket_group, self.ssh_user):
            subprocess.run(["groupdel", group], capture_output=True)


class Site:
    """One sshd host, its inventory.toml, and the deployment's variables and paths."""

    def __init__(self, root: Path, accounts: Accounts) -> None:
        self.root = root
        self.accounts = accounts
        # The SSH user and the service user walk the paths below it.
        root.chmod(0o755)
        self.fleet = SshFleet(root / "fleet")
        self.host = self.fleet.add_host("w1")
        self.host.start()
        self.source = root / "src"
        shutil.copytree(ROOT, self.source, ignore=SNAPSHOT_IGNORE)
        self.prefix = root / "t"
        self.opt = self.prefix / "opt"
        self.config = self.prefix / "etc" / "venus-worker.toml"
        self.socket = self.prefix / "run" / "venus-worker.sock"
        self.state_dir = self.prefix / "state"
        self.unit_dir = self.prefix / "systemd"
        self.unit = self.unit_dir / "venus-worker.service"
        self.link = self.prefix / "bin" / "venus-worker"
        self.launcher = self.opt / "bin" / "venus-worker"
        self.stores = [self.prefix / "stores" / f"s{i}" for i in range(THREADS)]
        # node_exporter's textfile folder as Debian's package ships it: root's, 0755.
        self.textfile_dir = self.prefix / "node-exporter"
        self.textfile_dir.mkdir(parents=True)
        self.textfile_dir.chmod(0o755)
        self.prefix.chmod(0o755)
        self.wheels = root / "wheels"
        self.tmp = root / "tmp"
        self.tmp.mkdir()
        self.inventory = self._write_inventory("inventory.toml", {})
        # The same host with venusctl's exec transport: it reads the heartbeat file.
        self.exec_inventory = self._write_inventory("exec.toml", {"transport": "exec"})
        self.vars = root / "vars.json"
        self.vars.write_text(
            json.dumps(
                {
                    "ansible_python_interpreter": HOST_PYTHON,
                    "venus_worker_python": HOST_PYTHON,
                    "venus_worker_source": str(self.source),
                    "venus_worker_build_dir": str(self.wheels),
                    "venus_worker_prefix": str(self.opt),
                    "venus_worker_state_dir": str(self.state_dir),
                    "venus_worker_link": str(self.link),
                    "venus_worker_systemd_unit_dir": str(self.unit_dir),
                    "venus_worker_manage_service": False,
                    "venus_worker_service_user": accounts.service_user,
                    "venus_worker_socket_group": accounts.socket_group,
                    "venus_worker_proof_parameter_cache": str(self.prefix / "params"),
                    "venus_worker_proof_parent_cache": str(self.prefix / "parents"),
                    "venus_worker_threads": [
                        {"location": str(store), "plan": "sealer"} for store in self.stores
                    ],
                    # Slow enough stages that a drain catches threads mid-sector.
                    "venus_worker_processors": {
                        "kind": "mock",
                        "mock": {"duration": "2s", "wait_duration": "2s"},
                    },
                    # A thread between sectors waits this long before its next one.
                    "venus_worker_sealing_seal_interval": "1s",
                    "venus_worker_drain_poll": 1,
                    "venus_worker_metrics": True,
                    "venus_worker_metrics_textfile_dir": str(self.textfile_dir),
                }
            )
        )
        self.env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("ANSIBLE_", "SSH_AUTH_SOCK", "SSH_AGENT_PID", "XDG_"))
        }
        self.env.update(
            PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            ANSIBLE_CONFIG=str(PLAYBOOKS / "ansible.cfg"),
            ANSIBLE_HOME=str(root / "ah"),
            ANSIBLE_LOCAL_TEMP=str(root / "ah" / "local"),
            # Ours, so that teardown can end the ControlPersist masters (not ~/.ansible/cp).
            ANSIBLE_SSH_CONTROL_PATH_DIR=str(root / "ah" / "cp"),
            ANSIBLE_NOCOLOR="1",
            ANSIBLE_FORCE_COLOR="0",
            # Ansible refuses to start unless the locale's encoding is UTF-8.
            LC_ALL="C.UTF-8",
            VENUSCTL_INVENTORY=str(self.inventory),
            PYTHONDONTWRITEBYTECODE="1",
            # Whatever a run would leave in the temporary folder shows up here.
            TMPDIR=str(self.tmp),
        )
        self.agent: subprocess.Popen | None = None

    def _write_inventory(self, name: str, extra: dict[str, str]) -> Path:
        path = self.root / name
        lines = [
            "[defaults]",
            f'user = "{self.accounts.ssh_user}"',
            f'identity_file = "{self.fleet.client_key}"',
            f'known_hosts = "{self.fleet.known_hosts}"',
            # Nothing from this machine's ~/.ssh/config: ssh -F /dev/null.
            'ssh_config = "/dev/null"',
            f'agent = "{self.link}"',
            f'config = "{self.config}"',
            f'socket = "{self.socket}"',
            *(f'{key} = "{value}"' for key, value in extra.items()),
            "",
            "[[host]]",
            'name = "w1"',
            f'address = "{self.host.address}"',
            f"port = {self.host.port}",
            'groups = ["gpu"]',
        ]
        path.write_text("\n".join(lines) + "\n")
        return path

    def run_playbook(self, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
        left = sorted(path.name for path in self.tmp.iterdir())
        assert not left, f"the run left {left} in its temporary folder"
        return done

    def playbook(self, name: str, *extra: str) -> subprocess.CompletedProcess:
        argv = [ansible_tool("ansible-playbook"), "-i", str(PLAYBOOKS / "inventory.py")]
        argv += ["-e", f"@{self.vars}", *extra, str(PLAYBOOKS / name)]
        return self.run_playbook(argv, self.env)

    def close_ssh_masters(self) -> None:
        for control in (self.root / "ah" / "cp").glob("*"):
            subprocess.run(
                ["ssh", "-o", f"ControlPath={control}", "-O", "exit", "w1"],
                capture_output=True,
                timeout=10,
            )

    def worker(self, *argv: str, user: str | None = None) -> subprocess.CompletedProcess:
        command = [str(self.launcher), "worker", "-c", str(self.config), *argv]
        if user is not None:
            command = ["runuser", "-u", user, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=30)

    def threads(self) -> list[dict]:
        done = self.worker("list", "--json")
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(done.stdout)

    def venusctl(self, *argv: str, inventory: Path | None = None) -> subprocess.CompletedProcess:
        env = dict(self.env, VENUSCTL_INVENTORY=str(inventory or self.inventory))
        return subprocess.run(
            [sys.executable, str(ROOT / "venusctl.py"), *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def start_agent(self) -> None:
        """Start the deployed agent as the rendered unit says (systemd is not PID 1 here)."""
        unit = unit_directives(self.unit.read_text())
        log = open(self.root / "agent.log", "ab")  # noqa: SIM115 - closed with the process
        self.agent = subprocess.Popen(
            shlex.split(unit["ExecStart"][0]),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            user=unit["User"][0],
            group=unit["Group"][0],
            extra_groups=unit["SupplementaryGroups"][0].split(),
            umask=int(unit["UMask"][0], 8),
            env={"PATH": "/usr/bin:/bin", **unit_environment(unit["Environment"])},
            cwd="/",
        )
        log.close()
        deadline = time.monotonic() + 30
        while self.worker("list", "--json").returncode != 0:
            assert self.agent.poll() is None, (self.root / "agent.log").read_text()
            assert time.monotonic() < deadline, "agent socket never answered"
            time.sleep(0.2)

    def stop_agent(self) -> None:
        # KillMode=mixed: SIGTERM to the agent alone.
        if self.agent is None:
            return
        self.agent.send_signal(signal.SIGTERM)
        try:
            self.agent.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.agent.kill()
            self.agent.wait()
        self.agent = None


def ran_ok(done: subprocess.CompletedProcess, host: str = "w1") -> dict[str, int]:
    counts = recap(done.stdout).get(host)
    assert done.returncode == 0 and counts, done.stdout[-6000:] + done.stderr[-3000:]
    assert counts["failed"] == 0 and counts["unreachable"] == 0, done.stdout[-6000:]
    return counts


@pytest.fixture(scope="module")
def site():
    accounts = Accounts()
    # Short root: the agent's socket path must fit in 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="pb-", dir="/tmp"))
    made = None
    try:
        accounts.create_ssh_user()
        made = Site(root, accounts)
        yield made
    finally:
        if made is not None:
            made.stop_agent()
            made.close_ssh_masters()
            made.fleet.stop_all()
        accounts.remove()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def deployed(site):
    """The top README's deploy command, as a new user runs it, then the agent started."""
    (command,) = readme_commands("playbooks/deploy-agent.yml -l")
    assert command[0] == "ansible-playbook"
    # No ANSIBLE_CONFIG: the command must work from the checkout without it.
    env = {key: value for key, value in site.env.items() if key != "ANSIBLE_CONFIG"}
    done = site.run_playbook([ansible_tool(command[0]), *command[1:], "-e", f"@{site.vars}"], env)
    counts = ran_ok(done)
    # Ansible's SSH master for w1, still up (ControlPersist): the play went through sshd.
    masters = [str(path) for path in (site.root / "ah" / "cp").glob("*")]
    site.start_agent()
    return counts, done.stdout, masters


def test_every_playbook_passes_syntax_check(tmp_path):
    argv = [ansible_tool("ansible-playbook"), "--syntax-check", "-i", "localhost,"]
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=str(PLAYBOOKS / "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_HOME=str(tmp_path),
        LC_ALL="C.UTF-8",
    )
    done = subprocess.run(
        argv + [str(PLAYBOOKS / name) for name in ALL_PLAYBOOKS],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ALL_PLAYBOOKS:
        assert f"playbook: {PLAYBOOKS / name}" in done.stdout


def test_ansible_lint_passes_at_the_production_profile(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "XDG_"))}
    # Its caches go to tmp_path, not to ~/.cache or the checkout.
    env.update(ANSIBLE_HOME=str(tmp_path / "ah"), XDG_CACHE_HOME=str(tmp_path / "cache"))
    env.update(NO_COLOR="1", LC_ALL="C.UTF-8", PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    done = subprocess.run(
        # playbooks/.ansible-lint sets the production profile and offline mode.
        [ansible_tool("ansible-lint"), "--nocolor"],
        cwd=PLAYBOOKS,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Profile 'production' was required, and it passed" in output, output


def test_inventory_script_gives_ansible_the_venusctl_hosts(site):
    listed = subprocess.run(
        [ansible_tool("ansible-inventory"), "-i", str(PLAYBOOKS / "inventory.py"), "--list"],
        env=site.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    inventory = json.loads(listed.stdout)
    assert inventory["gpu"]["hosts"] == ["w1"]
    hostvars = inventory["_meta"]["hostvars"]["w1"]
    assert hostvars["ansible_host"] == site.host.address
    assert hostvars["ansible_port"] == site.host.port
    assert hostvars["ansible_user"] == site.accounts.ssh_user
    assert hostvars["ansible_ssh_private_key_file"] == str(site.fleet.client_key)
    assert hostvars["venus_worker_config"] == str(site.config)
    assert hostvars["venus_worker_socket"] == str(site.socket)
    assert hostvars["venus_worker_bin"] == str(site.link)
    # what the inventory sets; StrictHostKeyChecking is ssh_config's, for ssh as for venusctl
    assert hostvars["ansible_ssh_common_args"] == (
        f"-F /dev/null -o UserKnownHostsFile={site.fleet.known_hosts}"
    )

    def script(*argv: str) -> dict:
        done = subprocess.run(
            [sys.executable, str(PLAYBOOKS / "inventory.py"), *argv],
            env=site.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    listed = script("--list")
    assert script("--host", "w1") == listed["_meta"]["hostvars"]["w1"]
    assert script("--host", "nosuchhost") == {}


def test_inventory_script_reports_a_bad_inventory(tmp_path):
    broken = tmp_path / "inventory.toml"
    broken.write_text('[[host]]\nname = "w1"\n')
    done = subprocess.run(
        [sys.executable, str(PLAYBOOKS / "inventory.py"), "--list"],
        env=dict(os.environ, VENUSCTL_INVENTORY=str(broken)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and done.stdout == ""
    assert "venusctl inventory --ansible failed" in done.stderr
    assert "missing 'address'" in done.stderr


def test_check_mode_of_a_first_deployment_stops_at_the_accounts_and_changes_nothing(site):
    fresh = site.root / "fresh"
    overrides = {
        # Accounts and paths that no other test makes: a first deployment, whatever ran.
        "venus_worker_service_user": f"{site.accounts.service_user}x",
        "venus_worker_socket_group": f"{site.accounts.socket_group}x",
        "venus_worker_prefix": str(fresh / "opt"),
        "venus_worker_state_dir": str(fresh / "state"),
        "venus_worker_link": "",
    }
    done = site.playbook("deploy-agent.yml", "--check", "-e", json.dumps(overrides))
    ran_ok(done)
    assert "a dry run (--check) cannot show more before a real run has" in done.stdout
    assert not fresh.exists()
    for name in (overrides["venus_worker_service_user"], overrides["venus_worker_socket_group"]):
        with pytest.raises(KeyError):
            grp.getgrnam(name)


HANDLER_RAN = "RUNNING HANDLER [venus_worker : Restart venus-worker]"


def _owner(path: Path) -> tuple[str, str, int]:
    info = path.lstat()
    return (
        pwd.getpwuid(info.st_uid).pw_name,
        grp.getgrgid(info.st_gid).gr_name,
        stat.S_IMODE(info.st_mode),
    )


def test_deploy_goes_through_sudo_and_lays_out_the_host(site, deployed):
    counts, output, masters = deployed
    accounts = site.accounts
    assert counts["changed"] > 0
    # What changed notified the restart handler (skipped here: no systemd).
    assert HANDLER_RAN in output
    # Over SSH to the loopback sshd, as the SSH user, not a local connection.
    assert masters, "no SSH control master: the play did not go through ssh"
    checked = subprocess.run(
        ["ssh", "-o", f"ControlPath={masters[0]}", "-O", "check", "w1"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert checked.returncode == 0, checked.stderr
    assert accounts.ssh_user != "root"
    root, service, sockets = "root", accounts.service_user, accounts.socket_group
    # become: the non-root SSH user made root's files.
    assert _owner(site.launcher) == (root, root, 0o755)
    assert _owner(site.opt / "dist") == (root, root, 0o755)
    assert _owner(site.config) == (root, sockets, 0o640)
    assert _owner(site.unit) == (root, root, 0o644)
    # The state folder is the socket group's to read, its files too (setgid).
    assert _owner(site.state_dir) == (service, sockets, 0o2750)
    assert all(_owner(store) == (service, service, 0o750) for store in site.stores)
    assert _owner(site.socket.parent) == (service, service, 0o711)
    assert _owner(site.prefix / "parents") == (service, service, 0o755)
    assert not (site.prefix / "params").exists()
    # The service user: a system account without a login shell, home in its state.
    entry = pwd.getpwnam(service)
    assert entry.pw_uid < 1000 and entry.pw_shell == "/usr/sbin/nologin"
    assert entry.pw_dir == str(site.state_dir)
    # Who may steer the agent: the socket group, with the SSH user and the agent in it.
    assert set(grp.getgrnam(sockets).gr_mem) == {accounts.ssh_user, service}
    config = site.config.read_text()
    assert f'socket = "{site.socket}"' in config and f'socket_group = "{sockets}"' in config
    assert config.count("[[sealing_thread]]") == THREADS
    assert site.link.resolve() == site.launcher.resolve()
    assert not (site.opt / "venv").exists()


def test_the_agent_is_its_wheel_on_the_hosts_own_python_and_nothing_else(site, deployed):
    (wheel,) = sorted((site.opt / "dist").iterdir())
    assert wheel.name == f"venus_worker-{__version__}-py3-none-any.whl"
    # The wheel copied is the one built on the control host, byte for byte.
    assert wheel.read_bytes() == (site.wheels / wheel.name).read_bytes()
    lib = site.opt / "lib"
    release = lib.resolve()
    assert lib.is_symlink() and release.parent == site.opt and release.name.startswith("lib-")
    assert sorted(path.name for path in release.iterdir()) == [
        f"venus_worker-{__version__}.dist-info",
        "worker_agent",
    ]
    assert _owner(release) == ("root", "root", 0o755)
    assert _owner(release / "worker_agent" / "cli.py") == ("root", "root", 0o644)
    # Byte-compiled at install: the service user cannot write __pycache__ there.
    assert list((release / "worker_agent" / "__pycache__").glob("cli.*.pyc"))
    launcher = site.launcher.read_text()
    assert launcher.startswith(f"#!{HOST_PYTHON} -IS\n"), launcher
    # What the launcher's interpreter sees: its release and the standard library.
    # Without -S the same Python would also see the host's site-packages.
    probe = (
        "import sys, importlib.metadata as m; sys.path.insert(0, sys.argv[1]);"
        "print(sorted(d.metadata['Name'] for d in m.distributions()))"
    )
    seen = subprocess.run(
        [HOST_PYTHON, "-I", "-S", "-c", probe, str(lib)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert seen.returncode == 0 and seen.stdout.strip() == "['venus-worker']", seen
    version = subprocess.run([str(site.link), "--version"], capture_output=True, text=True)
    assert version.stdout.strip() == f"venus-worker {__version__}", version


def test_the_agent_runs_as_the_service_user_and_the_socket_group_steers_it(site, deployed):
    accounts = site.accounts
    status = dict(
        line.split(":", 1)
        for line in Path(f"/proc/{site.agent.pid}/status").read_text().splitlines()
    )
    service = pwd.getpwnam(accounts.service_user)
    sockets = grp.getgrnam(accounts.socket_group)
    assert status["Uid"].split()[:2] == [str(service.pw_uid)] * 2
    assert str(sockets.gr_gid) in status["Groups"].split()
    assert _owner(site.socket) == (accounts.service_user, accounts.socket_group, 0o660)
    # The SSH user opens the socket through its group, with the agent's own CLI...
    listed = site.worker("list", "--json", user=accounts.ssh_user)
    assert listed.returncode == 0, listed.stderr
    assert [t["location"] for t in json.loads(listed.stdout)] == [str(s) for s in site.stores]
    # ... and through sshd's streamlocal channel, which opens it as the SSH user.
    done = site.venusctl("--json", "list")
    assert done.returncode == 0, done.stdout + done.stderr
    (entry,) = json.loads(done.stdout)["hosts"]
    assert entry["name"] == "w1" and entry["error"] is None, entry
    assert entry["via"] == "stream" and entry["summary"]["Threads"] == THREADS, entry
    # The top README's venusctl line answers the same way.
    (command,) = readme_commands("venusctl list -l gpu")
    assert site.venusctl("--json", *command[1:]).returncode == 0


def test_the_agent_writes_its_metrics_in_node_exporters_folder(site, deployed):
    service = site.accounts.service_user
    # The service group may add files; the sticky bit keeps the others' files theirs.
    assert _owner(site.textfile_dir) == ("root", service, 0o1775)
    textfile = site.textfile_dir / "venus-worker.prom"
    config = read_toml(site.config.read_text())
    assert config["worker"]["metrics_textfile"] == str(textfile)
    writable = unit_directives(site.unit.read_text())["ReadWritePaths"][0].split()
    assert str(site.textfile_dir) in writable
    # The agent, started as the unit says, wrote it: node_exporter (another user) reads it.
    deadline = time.monotonic() + 30
    while not textfile.exists():
        assert time.monotonic() < deadline, sorted(p.name for p in site.textfile_dir.iterdir())
        time.sleep(0.2)
    assert _owner(textfile) == (service, service, 0o644)
    text = textfile.read_text()
    assert promtools.check_metrics(text) == ""
    _, samples = promtools.parse(text)
    threads = [v for (name, _), v in samples.items() if name == "venus_worker_threads"]
    assert sum(threads) == THREADS
    info = [dict(labels) for name, labels in samples if name == "venus_worker_info"]
    assert [entry["textfile"] for entry in info] == [str(textfile)]
    # Another collector's file there (root's, as apt's and smartmon's are) is not the agent's.
    other = site.textfile_dir / "apt.prom"
    other.write_text("apt_upgrades_pending 0\n")
    try:
        removed = subprocess.run(
            ["runuser", "-u", service, "--", "rm", "-f", str(other)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert removed.returncode != 0 and other.exists(), removed
    finally:
        other.unlink(missing_ok=True)


def test_second_deploy_changes_nothing(site, deployed):
    done = site.playbook("deploy-agent.yml")
    assert ran_ok(done)["changed"] == 0
    assert HANDLER_RAN not in done.stdout


def test_check_mode_on_a_deployed_host_reports_nothing_to_do(site, deployed):
    done = site.playbook("deploy-agent.yml", "--check", "--diff")
    assert ran_ok(done)["changed"] == 0


def test_deploy_refuses_a_config_the_agent_would_refuse(site, deployed):
    before = site.config.read_bytes()
    typo = {"venus_worker_threads": [{"location": str(site.stores[0]), "plan": "sealr"}]}
    done = site.playbook("deploy-agent.yml", "-e", json.dumps(typo))
    assert done.returncode != 0 and recap(done.stdout)["w1"]["failed"] == 1, done.stdout
    # The agent's own loader said why, and the running agent's config was not replaced.
    assert re.search(r'sealing_thread\[0\]\.plan: unknown plan \\?"sealr', done.stdout)
    assert site.config.read_bytes() == before
    # The wheel stays in its build folder, alone: nothing temporary was made for it.
    assert [path.name for path in site.wheels.iterdir()] == [
        f"venus_worker-{__version__}-py3-none-any.whl"
    ]


def test_deploy_refuses_a_host_without_threads_before_touching_it(site, deployed):
    done = site.playbook("deploy-agent.yml", "-e", '{"venus_worker_threads": []}')
    assert done.returncode != 0 and recap(done.stdout)["w1"]["failed"] == 1, done.stdout
    assert "venus_worker_threads needs at least one {location, plan} entry" in done.stdout
    assert "host_vars/w1.yml" in done.stdout


def _position(thread: dict) -> tuple[str | None, State | None]:
    return thread["job_id"], State(thread["job_state"]) if thread["job_state"] else None


def test_drain_pauses_every_thread_and_loses_no_stage(site, deployed):
    deadline = time.monotonic() + 30
    while not all(t["thread_state"]["state"] in ("Running", "Waiting") for t in site.threads()):
        assert time.monotonic() < deadline, site.threads()
        time.sleep(0.2)
    before = site.threads()

    drained = site.playbook("drain.yml")
    assert ran_ok(drained)["changed"] == 1
    after = site.threads()
    assert [t["thread_state"]["state"] for t in after] == ["Paused"] * THREADS
    for old, new in zip(before, after, strict=True):
        (old_job, old_state), (new_job, new_state) = _position(old), _position(new)
        plan = PLANS[old["plan"]]
        if old_job is None:
            continue  # between two sectors: nothing in flight to lose
        if new_job == old_job:
            # Only forward along the plan: the stage in flight was kept, never redone.
            assert new_state in plan.reachable_from(old_state), (old, new)
        else:
            # The sector finished during the drain; a later one was allocated.
            assert State.Finished in plan.reachable_from(old_state), (old, new)
            assert new_job is None or int(new_job.rsplit("-", 1)[1]) > int(
                old_job.rsplit("-", 1)[1]
            )
        assert new["last_error"] is None

    # Maintenance: the agent stops and starts again; every thread is where it paused.
    site.stop_agent()
    # Meanwhile the SSH user reads the last heartbeat (the socket group's, by the
    # setgid state folder and UMask=0027): venusctl's exec transport shows it.
    down = site.venusctl("--json", "list", inventory=site.exec_inventory)
    (entry,) = json.loads(down.stdout)["hosts"]
    assert entry["error"]["message"] == "agent not running", entry
    assert entry["via"] == "exec" and entry["summary"]["Paused"] == THREADS, entry
    site.start_agent()
    restarted = site.threads()
    assert [_position(t) for t in restarted] == [_position(t) for t in after]
    assert [t["thread_state"]["state"] for t in restarted] == ["Paused"] * THREADS

    again = site.playbook("drain.yml")
    assert ran_ok(again)["changed"] == 0


def test_resume_all_resumes_every_paused_thread(site, deployed):
    for index in range(THREADS):
        assert site.worker("pause", "--index", str(index), "--json").returncode == 0
    deadline = time.monotonic() + 30
    while any(t["thread_state"]["state"] != "Paused" for t in site.threads()):
        assert time.monotonic() < deadline, site.threads()
        time.sleep(0.2)

    resumed = site.playbook("resume-all.yml")
    assert ran_ok(resumed)["changed"] == 1
    assert "#0 " in resumed.stdout and "#1 " in resumed.stdout
    deadline = time.monotonic() + 30
    while any(t["thread_state"]["state"] == "Paused" for t in site.threads()):
        assert time.monotonic() < deadline, site.threads()
        time.sleep(0.2)
    assert ran_ok(site.playbook("resume-all.yml"))["changed"] == 0


# --- the unit: systemd's own tools judge it ------------------------------------


def _systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    # Not a skip: scripts/test.sh installs systemd where systemd-analyze is missing.
    assert tool, "systemd-analyze missing (Debian package systemd; scripts/test.sh installs it)"
    return tool


def verify_unit(path: Path) -> None:
    done = subprocess.run(
        [_systemd_analyze(), "verify", "--man=no", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # verify exits 0 on a mistyped key or a bad value and only prints a warning.
    complaints = [line for line in (done.stdout + done.stderr).splitlines() if path.name in line]
    assert done.returncode == 0 and not complaints, done.stdout + done.stderr


def security_exposure(path: Path) -> tuple[float, str]:
    done = subprocess.run(
        [_systemd_analyze(), "security", "--offline=true", "--no-pager", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, SYSTEMD_COLORS="0"),
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert found, done.stdout + done.stderr
    return float(found[1]), done.stdout


def test_deployed_unit_is_valid_and_scores_as_hardened(site, deployed):
    verify_unit(site.unit)
    exposure, report = security_exposure(site.unit)
    assert exposure <= SECURITY_THRESHOLD, report
    unit = unit_directives(site.unit.read_text())
    assert unit["ExecStart"] == [f"{site.launcher} daemon -c {site.config}"]
    assert unit["Type"] == ["notify"] and unit["KillMode"] == ["mixed"]
    assert unit["User"] == [site.accounts.service_user]
    assert unit["SupplementaryGroups"] == [site.accounts.socket_group]
    writable = unit["ReadWritePaths"][0].split()
    assert str(site.state_dir) in writable and all(str(s) in writable for s in site.stores)
    # The socket is outside /run here, so its folder is writable and no RuntimeDirectory.
    assert str(site.socket.parent) in writable and "RuntimeDirectory" not in unit
    env = unit_environment(unit["Environment"])
    assert env["FIL_PROOFS_PARAMETER_CACHE"] == str(site.prefix / "params")
    assert env["FIL_PROOFS_PARENT_CACHE"] == str(site.prefix / "parents")
    assert f"-{site.prefix / 'parents'}" in writable


def render_template(site, tmp_path: Path, template: str, overrides: dict) -> Path:
    """One of the role's templates with the role's defaults and `overrides`, as on a real host."""
    rendered = tmp_path / template.removesuffix(".j2")
    variables = tmp_path / f"{rendered.name}.vars.json"
    base = {
        # ExecStart must exist for systemd-analyze verify: the deployed launcher.
        "venus_worker_prefix": str(site.opt),
        "venus_worker_threads": [{"location": "/srv/store1"}, {"location": "/srv/store2"}],
    }
    variables.write_text(json.dumps({**base, **overrides}))
    argv = [ansible_tool("ansible"), "localhost", "-c", "local", "-m", "ansible.builtin.template"]
    argv += ["-a", f"src={ROLE / 'templates' / template} dest={rendered}"]
    for source in (ROLE / "defaults" / "main.yml", ROLE / "vars" / "main.yml", variables):
        argv += ["-e", f"@{source}"]
    argv += ["-e", f"ansible_python_interpreter={os.path.realpath(sys.executable)}"]
    # The role's toml_value filter (the config), found as the play finds it.
    env = dict(site.env, ANSIBLE_FILTER_PLUGINS=str(ROLE / "filter_plugins"))
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return rendered


def render_unit(site, tmp_path: Path, overrides: dict) -> tuple[Path, dict[str, list[str]]]:
    unit = render_template(site, tmp_path, "venus-worker.service.j2", overrides)
    verify_unit(unit)
    return unit, unit_directives(unit.read_text())


def render_config(site, tmp_path: Path, overrides: dict):
    """The rendered config, read by the agent's own loader."""
    from worker_agent.config import load_config

    return load_config(render_template(site, tmp_path, "venus-worker.toml.j2", overrides))


def test_production_unit_with_the_defaults_scores_as_hardened(site, deployed, tmp_path):
    """The defaults on a real host: socket under /run, user venus, proof caches in /var/tmp."""
    unit, directives = render_unit(site, tmp_path, {})
    exposure, report = security_exposure(unit)
    assert exposure <= SECURITY_THRESHOLD, report
    assert directives["User"] == ["venus"] and directives["Group"] == ["venus"]
    assert directives["SupplementaryGroups"] == ["venusctl"]
    assert directives["RuntimeDirectory"] == ["venus-worker"]
    assert directives["RuntimeDirectoryMode"] == ["0711"]
    assert directives["ReadWritePaths"][0].split() == [
        *("/var/lib/venus-worker", "/srv/store1", "/srv/store2", "/tmp", "/var/tmp"),
        "-/var/tmp/filecoin-parents",
    ]
    # The standard proof caches stay visible to the stage commands.
    assert directives["PrivateTmp"] == ["no"]
    assert unit_environment(directives["Environment"]) == {
        "FIL_PROOFS_PARAMETER_CACHE": "/var/tmp/filecoin-proof-parameters",
        "FIL_PROOFS_PARENT_CACHE": "/var/tmp/filecoin-parents",
    }
    # The agent needs no network and no device.
    assert directives["RestrictAddressFamilies"] == ["AF_UNIX"]
    assert directives["PrivateNetwork"] == ["yes"] and directives["IPAddressDeny"] == ["any"]
    assert directives["PrivateDevices"] == ["yes"] and "DeviceAllow" not in directives
    assert directives["CapabilityBoundingSet"] == [""]
    assert directives["SystemCallFilter"] == ["@system-service"]
    assert directives["ProtectSystem"] == ["strict"] and directives["UMask"] == ["0027"]


def test_production_unit_with_metrics_writes_where_debians_node_exporter_reads(
    site, deployed, tmp_path
):
    import yaml

    default = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    folder = default["venus_worker_metrics_textfile_dir"]
    # The folder Debian's prometheus-node-exporter reads when nobody says otherwise.
    shown = subprocess.run(
        [promtools.tool(*promtools.NODE_EXPORTER_NAMES), "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    found = re.search(r'--collector\.textfile\.directory="([^"]*)"', shown.stdout + shown.stderr)
    assert found and found[1] == folder, shown.stdout + shown.stderr
    unit, directives = render_unit(site, tmp_path, {"venus_worker_metrics": True})
    exposure, report = security_exposure(unit)
    assert exposure <= SECURITY_THRESHOLD, report
    assert directives["ReadWritePaths"][0].split() == [
        *("/var/lib/venus-worker", "/srv/store1", "/srv/store2", "/tmp", "/var/tmp", folder),
        "-/var/tmp/filecoin-parents",
    ]
    config = render_config(site, tmp_path, {"venus_worker_metrics": True})
    assert config.metrics_textfile == Path(folder) / "venus-worker.prom"
    assert render_config(site, tmp_path, {}).metrics_textfile is None  # off by default


def test_command_stages_inherit_what_the_unit_sets_for_them(site, deployed, tmp_path):
    """Stages start with a minimal environment (issue 12): the rendered config names the
    unit's Environment= variables in inherit_env, so PC1 still finds the proof caches."""
    processors = {
        "kind": "command",
        "command": {"default": ["/usr/local/bin/seal-stage"], "inherit_env": ["RUST_LOG"]},
    }
    overrides = {
        "venus_worker_processors": processors,
        "venus_worker_service_environment": {"BELLMAN_CUSTOM_GPU": "GeForce RTX 3090:10496"},
    }
    config = render_config(site, tmp_path, overrides)
    assert config.command.default.inherit_env == (
        "RUST_LOG",
        "FIL_PROOFS_PARAMETER_CACHE",
        "FIL_PROOFS_PARENT_CACHE",
        "BELLMAN_CUSTOM_GPU",
    )
    unit = unit_environment(render_unit(site, tmp_path, overrides)[1]["Environment"])
    assert set(config.command.default.inherit_env) - {"RUST_LOG"} == set(unit)
    # The mock processor has no environment to pass on, and gets no command table.
    assert render_config(site, tmp_path, {}).command.default is None


def test_gpu_unit_allows_the_listed_devices_and_the_network(site, deployed, tmp_path):
    unit, directives = render_unit(
        site,
        tmp_path,
        {
            "venus_worker_service_device_allow": ["char-nvidia-frontend rw", "char-nvidia-uvm rw"],
            "venus_worker_service_address_families": ["AF_UNIX", "AF_INET", "AF_INET6"],
            "venus_worker_service_environment": {"FIL_PROOFS_USE_GPU_COLUMN_BUILDER": "1"},
        },
    )
    assert directives["PrivateDevices"] == ["no"] and directives["DevicePolicy"] == ["closed"]
    assert directives["DeviceAllow"] == ["char-nvidia-frontend rw", "char-nvidia-uvm rw"]
    # CUDA maps writable executable memory.
    assert directives["MemoryDenyWriteExecute"] == ["no"]
    assert directives["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert "PrivateNetwork" not in directives and "IPAddressDeny" not in directives
    assert "network-online.target" in directives["After"]
    assert unit_environment(directives["Environment"])["FIL_PROOFS_USE_GPU_COLUMN_BUILDER"] == "1"
    exposure, report = security_exposure(unit)
    assert exposure <= 3.0, report  # measured 1.9: the price of GPUs and the network


def test_health_cron_installs_a_flocked_job_that_runs(site, deployed, tmp_path):
    cron_file = tmp_path / "venusctl-health"
    # the lock's folder exists, open to all: the playbook makes it the cron user's alone
    lock_dir = tmp_path / "lock"
    lock_dir.mkdir()
    lock_dir.chmod(0o777)
    # ansible.builtin.cron insists on finding a crontab binary even when it only
    # writes cron_file (it never runs it then): a stand-in that fails if called.
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "crontab").write_text("#!/bin/sh\necho 'crontab must not run' >&2\nexit 1\n")
    (stub / "crontab").chmod(0o755)
    env = dict(site.env, PATH=f"{stub}{os.pathsep}{site.env['PATH']}")
    prom = tmp_path / "venus.prom"
    extra = [
        "-e",
        json.dumps(
            {
                "venus_health_cron_file": str(cron_file),
                "venus_health_cron_user": "root",
                "venus_health_mailto": "ops@example.com",
                "venus_health_prometheus_file": str(prom),
                "venus_health_lock_dir": str(lock_dir),
                "ansible_python_interpreter": os.path.realpath(sys.executable),
            }
        ),
    ]
    argv = [ansible_tool("ansible-playbook"), "-i", "localhost,", *extra]
    argv.append(str(PLAYBOOKS / "health-cron.yml"))

    def run() -> dict[str, int]:
        return ran_ok(site.run_playbook(argv, env), "localhost")

    assert run()["changed"] == 4
    # only the cron user can write where the lock is: nobody else can hold it (issue 10)
    info = lock_dir.stat()
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0o700)
    lines = cron_file.read_text().splitlines()
    # cron strips the quotes ansible.builtin.cron puts around environment values.
    assert 'MAILTO="ops@example.com"' in lines
    assert f'VENUSCTL_INVENTORY="{site.inventory}"' in lines
    (job,) = [line for line in lines if "health" in line and not line.startswith("#")]
    fields = shlex.split(job)
    assert fields[:6] == ["*/5", "*", "*", "*", "*", "root"]
    assert fields[6:9] == ["flock", "--nonblock", str(lock_dir / "health.lock")]
    python, venusctl, *args = fields[9:]
    # The Python that runs Ansible here: it has venusctl's dependencies.
    assert os.access(python, os.X_OK) and Path(python).name.startswith("python")
    assert venusctl == str(ROOT / "venusctl.py")
    assert args == ["health", "--quiet", "--prometheus", str(prom)]
    assert run()["changed"] == 0

    # The job itself, as cron runs it: /bin/sh, a bare environment plus the
    # crontab's lines, against the deployed agent over SSH. OK: no output, exit 0.
    cron_env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/"), "SHELL": "/bin/sh"}
    cron_env["VENUSCTL_INVENTORY"] = str(site.inventory)
    done = subprocess.run(
        ["/bin/sh", "-c", shlex.join(fields[6:])],
        env=cron_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout == "", done.stdout + done.stderr
    assert 'venus_fleet_host_up{host="w1"} 1' in prom.read_text().splitlines()


# --- pure parts: the roles' style, the variables' documentation ---------------


def _tasks(tasks: list[dict] | None):
    """Every task, also those inside block/rescue/always."""
    for task in tasks or []:
        nested = [task.get(key) for key in ("block", "rescue", "always") if key in task]
        yield from (inner for part in nested for inner in _tasks(part))
        if not nested:
            yield task


def _task_files() -> list[tuple[str, str, list[dict]]]:
    """(file, section, tasks) of every playbook's plays and every role's task and handler files."""
    import yaml

    found = []
    for name in ALL_PLAYBOOKS:
        for play in yaml.safe_load((PLAYBOOKS / name).read_text()):
            for section in ("tasks", "handlers"):
                found.append((name, section, play.get(section) or []))
    for role in ROLES:
        for section in ("tasks", "handlers"):
            for path in sorted((role / section).glob("*.yml")):
                found.append(
                    (str(path.relative_to(PLAYBOOKS)), section, yaml.safe_load(path.read_text()))
                )
    return found


# Task keywords (Ansible's "Playbook Keywords") the playbooks use; any other key is the module.
TASK_KEYWORDS = {
    "name", "when", "register", "changed_when", "failed_when", "loop", "loop_control",
    "notify", "until", "retries", "delay", "run_once", "delegate_to", "check_mode",
    "vars", "become", "become_user", "tags", "ignore_errors", "no_log", "environment",
}  # fmt: skip


def test_roles_use_fqcn_changed_when_and_handlers_for_restarts():
    files = _task_files()
    assert {name for name, _, _ in files} >= {"roles/venus_worker/tasks/main.yml"}
    for name, section, tasks in files:
        for task in _tasks(tasks):
            where = f"{name}: {task.get('name')!r}"
            modules = set(task) - TASK_KEYWORDS
            assert len(modules) == 1, f"{where}: not one module: {sorted(modules)}"
            (module,) = modules
            assert module.startswith("ansible.builtin."), f"{where}: {module} not FQCN"
            if module in (
                "ansible.builtin.command",
                "ansible.builtin.shell",
                "ansible.builtin.script",
            ):
                assert "changed_when" in task, f"{where}: no changed_when"
            if module == "ansible.builtin.tempfile":
                pytest.fail(f"{where}: a temporary folder leaks when a later step fails")
            args = task[module] if isinstance(task[module], dict) else {}
            if args.get("state") in ("restarted", "reloaded"):
                assert section == "handlers", f"{where}: restarts only in a handler"


def test_readme_documents_every_variable():
    import yaml

    readme = (PLAYBOOKS / "README.md").read_text()
    defaults: set[str] = set()
    for role in ROLES:
        defaults |= set(yaml.safe_load((role / "defaults" / "main.yml").read_text()))
    undocumented = sorted(name for name in defaults if f"`{name}`" not in readme)
    assert not undocumented, undocumented
    # And every venus_* variable a playbook or a role reads is a default, a derived
    # role variable or a registered result (the inventory sets some defaults too).
    used = set()
    for path in [*PLAYBOOKS.glob("*.yml"), *PLAYBOOKS.glob("roles/*/*/*")]:
        if path.suffix in (".yml", ".j2"):
            used |= set(re.findall(r"\bvenus_[a-z_]*[a-z]\b", path.read_text()))
    derived: set[str] = set()
    for role in ROLES:
        if (role / "vars" / "main.yml").is_file():
            derived |= set(yaml.safe_load((role / "vars" / "main.yml").read_text()))
    registered = {
        task["register"]
        for _, _, tasks in _task_files()
        for task in _tasks(tasks)
        if "register" in task
    }
    role_names = {role.name for role in ROLES}
    assert used - defaults - derived - registered - role_names == set()


# --- pure parts: the inventory conversion and the TOML filter -----------------


def _ansible_inventory(text: str, tmp_path: Path) -> dict:
    import venusctl

    return venusctl.ansible_inventory(venusctl.parse_inventory(text, tmp_path / "inventory.toml"))


def test_ansible_inventory_groups_and_hostvars(tmp_path):
    document = _ansible_inventory(
        """
        [defaults]
        user = "sealer"
        identity_file = "keys/id_ed25519"
        known_hosts = "/etc/venus/known_hosts"
        host_key_policy = "accept-new"
        connect_timeout = 2.5

        [[host]]
        name = "gpu-01"
        address = "10.0.0.11"
        groups = ["gpu", "rack1"]

        [[host]]
        name = "cpu-01"
        address = "cpu-01.example.net"
        port = 2222
        user = "venus"
        ssh_config = "/etc/venus/ssh_config"
        agent = "/opt/venus/bin/venus-worker"
        config = "/etc/venus/worker.toml"
        socket = "/run/venus/worker.sock"

        [[host]]
        name = "local"
        transport = "local"
        config = "mock.toml"
        socket = "mock.sock"

        [[host]]
        name = "old-01"
        address = "10.0.0.99"
        backend = "damocles"
        groups = ["gpu"]
        """,
        tmp_path,
    )
    assert {k: v for k, v in document.items() if k != "_meta"} == {
        "gpu": {"hosts": ["gpu-01"]},
        "rack1": {"hosts": ["gpu-01"]},
        "ungrouped": {"hosts": ["cpu-01", "local"]},
    }
    hostvars = document["_meta"]["hostvars"]
    # An original damocles-worker runs nothing the playbooks deploy or drive.
    assert "old-01" not in hostvars
    assert hostvars["gpu-01"] == {
        "ansible_host": "10.0.0.11",
        "ansible_user": "sealer",
        "ansible_ssh_private_key_file": str(tmp_path / "keys" / "id_ed25519"),
        "ansible_ssh_common_args": (
            "-o UserKnownHostsFile=/etc/venus/known_hosts -o StrictHostKeyChecking=accept-new"
        ),
        "ansible_ssh_timeout": 3,
        "venus_worker_config": "/etc/venus-worker/venus-worker.toml",
        "venus_worker_socket": "/run/venus-worker/venus-worker.sock",
    }
    cpu = hostvars["cpu-01"]
    assert cpu["ansible_port"] == 2222 and cpu["ansible_user"] == "venus"
    assert cpu["ansible_ssh_common_args"].startswith("-F /etc/venus/ssh_config -o ")
    assert cpu["venus_worker_bin"] == "/opt/venus/bin/venus-worker"
    assert cpu["venus_worker_config"] == "/etc/venus/worker.toml"
    assert cpu["venus_worker_socket"] == "/run/venus/worker.sock"
    assert hostvars["local"] == {
        "ansible_connection": "local",
        "ansible_python_interpreter": "{{ ansible_playbook_python }}",
        "venus_worker_config": str(tmp_path / "mock.toml"),
        "venus_worker_socket": str(tmp_path / "mock.sock"),
    }


def _toml_filters():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "venus_toml", ROLE / "filter_plugins" / "venus_toml.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_toml_filters_write_what_the_agent_reads(tmp_path):
    from worker_agent.config import load_config

    toml = _toml_filters()
    processors = {
        "kind": "mock",
        "mock": {
            "duration": "1s",
            "durations": {"PC1": "2s"},
            "faults": [
                {"stage": "C2", "level": "permanent", "message": 'No "cached"\nparams\\'},
                {"stage": "PC2", "level": "temporary", "times": 2, "threads": [0]},
            ],
        },
        "command": {"default": ["/bin/seal", "a b"], "stages": {"C2": {"argv": ["/bin/c2"]}}},
        "unset": None,
    }
    text = (
        "[worker]\n"
        f"socket = {toml.toml_value(str(tmp_path / 'w.sock'))}\n"
        f"state_dir = {toml.toml_value(str(tmp_path))}\n"
        "[[sealing_thread]]\n"
        f"location = {toml.toml_value(str(tmp_path / 's0'))}\n"
        f"sealing = {toml.toml_value({'max_retries': 3})}\n\n"
        + toml.toml_tables({k: v for k, v in processors.items() if k != "unset"}, "processors")
    )
    parsed = read_toml(text)
    assert parsed["processors"] == {k: v for k, v in processors.items() if k != "unset"}
    assert toml.toml_tables(processors, "processors") == toml.toml_tables(
        {k: v for k, v in processors.items() if k != "unset"}, "processors"
    )
    path = tmp_path / "venus-worker.toml"
    path.write_text(text)
    config = load_config(path)
    assert config.threads[0].sealing.max_retries == 3
    assert config.mock.faults[0].message == 'No "cached"\nparams\\'
    assert toml.toml_value(True) == "true" and toml.toml_value(1.5) == "1.5"
    with pytest.raises(ValueError):
        toml.toml_value(float("nan"))


def test_health_cron_default_lock_is_in_a_folder_only_the_cron_user_writes():
    """issue 10: never /tmp or /run/lock (anyone could hold the lock and skip every run).
    The role's defaults, rendered as Ansible renders them (Jinja2, its expanduser)."""
    import jinja2
    import yaml

    defaults = yaml.safe_load((PLAYBOOKS / "roles/venus_health/defaults/main.yml").read_text())
    environment = jinja2.Environment()
    environment.filters["expanduser"] = os.path.expanduser

    def rendered(key: str, **values: str) -> str:
        text = environment.from_string(defaults[key]).render(**values)
        return text.strip()

    for cron_user, folder in [
        ("sealer", "/var/lib/venusctl-health"),
        ("", os.path.expanduser("~/.local/state/venusctl")),
    ]:
        lock_dir = rendered("venus_health_lock_dir", venus_health_cron_user=cron_user)
        assert lock_dir == folder
        assert (
            rendered("venus_health_lock", venus_health_lock_dir=lock_dir) == f"{folder}/health.lock"
        )
        assert not lock_dir.startswith(("/tmp", "/var/tmp", "/run/lock", "/dev/shm"))
    tasks = (PLAYBOOKS / "roles/venus_health/tasks/main.yml").read_text()
    assert "venus_health_lock | dirname == venus_health_lock_dir" in tasks  # no lock elsewhere
    assert re.search(
        r"path: \"\{\{ venus_health_lock_dir \}\}\"\n.*\n.*owner: .*\n\s+mode: \"0700\"", tasks
    )


SECTOR_RANGE_INVENTORY = """
[defaults]
miner = 1000

[[host]]
name = "w1"
address = "10.0.0.11"
sector_numbers = "1-99999"

[[host]]
name = "w2"
address = "10.0.0.12"
sector_numbers = { start = 100000, count = 100000 }

[[host]]
name = "other"
address = "10.0.0.13"
miner = 2000
"""


def test_each_host_of_a_miner_gets_its_own_sector_range_from_the_inventory(tmp_path):
    """issue 15: inventory.toml's miner and sector_numbers reach each host's rendered
    [sealing] (through the dynamic inventory's hostvars and the role's template, rendered
    by Ansible itself); the agent's loader reads disjoint ranges back."""
    from worker_agent.config import load_config

    hostvars = _ansible_inventory(SECTOR_RANGE_INVENTORY, tmp_path)["_meta"]["hostvars"]
    assert hostvars["w2"]["venus_worker_sealing_sector_numbers"] == "100000-199999"
    assert "venus_worker_sealing_sector_numbers" not in hostvars["other"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(
        ANSIBLE_HOME=str(tmp_path / "ah"),
        ANSIBLE_LOCAL_TEMP=str(tmp_path / "ah" / "tmp"),
        ANSIBLE_FILTER_PLUGINS=str(ROLE / "filter_plugins"),
    )
    ranges = {}
    for name in ("w1", "w2", "other"):
        variables = tmp_path / f"{name}.json"
        threads = [{"location": f"/srv/{name}/store1"}]
        variables.write_text(json.dumps({**hostvars[name], "venus_worker_threads": threads}))
        rendered = tmp_path / f"{name}.toml"
        argv = [
            ansible_tool("ansible"),
            "localhost",
            "-c",
            "local",
            "-m",
            "ansible.builtin.template",
        ]
        argv += ["-a", f"src={ROLE / 'templates' / 'venus-worker.toml.j2'} dest={rendered}"]
        for source in (ROLE / "defaults" / "main.yml", ROLE / "vars" / "main.yml", variables):
            argv += ["-e", f"@{source}"]
        argv += ["-e", f"ansible_python_interpreter={os.path.realpath(sys.executable)}"]
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        ranges[name] = load_config(rendered).sector_ranges()
    assert ranges == {"w1": {1000: (1, 99999)}, "w2": {1000: (100000, 199999)}, "other": {}}
