"""playbooks/: syntax, and real runs against a real loopback sshd host.

The deploy test runs deploy-agent.yml through playbooks/inventory.py (so
through ``venusctl inventory --ansible`` and a generated inventory.toml)
against one real OpenSSH sshd on 127.0.0.x, into a temporary prefix, with
service management off (no systemd runs here). Then the agent is started from
what was deployed (the deployed venv's venus-worker and the rendered config)
and asked for its threads, directly and through venusctl over SSH. The
deployment is offline: the wheel is built from a snapshot of this checkout
(pinned bytes, even while someone edits the tree) and pip installs it with
--no-deps --no-index (the agent needs only the standard library).
"""

from __future__ import annotations

import json
import os
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

import pytest
from sshfleet import SshFleet

from worker_agent.states import PLANS, State

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
PLAYBOOKS = ROOT / "playbooks"
BIN = Path(sys.executable).parent
ALL_PLAYBOOKS = ["deploy-agent.yml", "drain.yml", "resume-all.yml", "health-cron.yml"]
THREADS = 2
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


class Site:
    """One sshd host, its inventory.toml, and the deployment's variables and paths."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fleet = SshFleet(root / "fleet")
        self.host = self.fleet.add_host("w1")
        self.host.start()
        self.source = root / "src"
        shutil.copytree(ROOT, self.source, ignore=SNAPSHOT_IGNORE)
        self.prefix = root / "t"
        self.config = self.prefix / "etc" / "venus-worker.toml"
        self.socket = self.prefix / "run" / "venus-worker.sock"
        self.state_dir = self.prefix / "state"
        self.unit_dir = self.prefix / "systemd"
        self.link = self.prefix / "bin" / "venus-worker"
        self.venus_worker = self.prefix / "opt" / "venv" / "bin" / "venus-worker"
        self.inventory = root / "inventory.toml"
        self.inventory.write_text(
            "[defaults]\n"
            f'user = "{self.fleet.user}"\n'
            f'identity_file = "{self.fleet.client_key}"\n'
            f'known_hosts = "{self.fleet.known_hosts}"\n'
            # Nothing from this machine's ~/.ssh/config: ssh -F /dev/null.
            'ssh_config = "/dev/null"\n'
            f'agent = "{self.link}"\n'
            f'config = "{self.config}"\n'
            f'socket = "{self.socket}"\n'
            "\n[[host]]\n"
            'name = "w1"\n'
            f'address = "{self.host.address}"\n'
            f"port = {self.host.port}\n"
            'groups = ["workers"]\n'
        )
        # A real interpreter, not a pyenv shim or this venv: what a host has.
        python = os.path.realpath(sys.executable)
        self.vars = root / "vars.json"
        self.vars.write_text(
            json.dumps(
                {
                    "ansible_python_interpreter": python,
                    "venus_python": python,
                    "venus_source": str(self.source),
                    "venus_prefix": str(self.prefix / "opt"),
                    "venus_worker_state_dir": str(self.state_dir),
                    "venus_worker_link": str(self.link),
                    "venus_systemd_unit_dir": str(self.unit_dir),
                    "venus_manage_service": False,
                    "venus_pip_install_deps": False,
                    "venus_pip_extra_args": ["--no-index"],
                    "venus_threads": [
                        {"location": str(self.prefix / "stores" / f"s{i}"), "plan": "sealer"}
                        for i in range(THREADS)
                    ],
                    # Slow enough stages that a drain catches threads mid-sector.
                    "venus_processors": {
                        "kind": "mock",
                        "mock": {"duration": "2s", "wait_duration": "2s"},
                    },
                    # A thread between sectors waits this long before its next one.
                    "venus_sealing_seal_interval": "1s",
                    "venus_drain_poll": 1,
                }
            )
        )
        self.env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("ANSIBLE_", "SSH_AUTH_SOCK", "SSH_AGENT_PID"))
        }
        self.env.update(
            PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            ANSIBLE_CONFIG=str(PLAYBOOKS / "ansible.cfg"),
            ANSIBLE_HOME=str(root / "ah"),
            ANSIBLE_REMOTE_TMP=str(root / "ah" / "remote"),
            ANSIBLE_LOCAL_TEMP=str(root / "ah" / "local"),
            # Ours, so that teardown can end the ControlPersist masters (not ~/.ansible/cp).
            ANSIBLE_SSH_CONTROL_PATH_DIR=str(root / "ah" / "cp"),
            ANSIBLE_NOCOLOR="1",
            ANSIBLE_FORCE_COLOR="0",
            # Ansible refuses to start unless the locale's encoding is UTF-8.
            LC_ALL="C.UTF-8",
            VENUSCTL_INVENTORY=str(self.inventory),
            PYTHONDONTWRITEBYTECODE="1",
        )
        self.agent: subprocess.Popen | None = None

    def playbook(self, name: str, *extra: str) -> subprocess.CompletedProcess:
        argv = [ansible_tool("ansible-playbook"), "-i", str(PLAYBOOKS / "inventory.py")]
        argv += ["-e", f"@{self.vars}", *extra, str(PLAYBOOKS / name)]
        return subprocess.run(
            argv, env=self.env, capture_output=True, text=True, timeout=300, cwd=self.root
        )

    def close_ssh_masters(self) -> None:
        for control in (self.root / "ah" / "cp").glob("*"):
            subprocess.run(
                ["ssh", "-o", f"ControlPath={control}", "-O", "exit", "w1"],
                capture_output=True,
                timeout=10,
            )

    def worker(self, *argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(self.venus_worker), "worker", "-c", str(self.config), *argv],
            capture_output=True,
            text=True,
            timeout=30,
        )

    def threads(self) -> list[dict]:
        done = self.worker("list", "--json")
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(done.stdout)

    def start_agent(self) -> None:
        log = open(self.root / "agent.log", "ab")  # noqa: SIM115 - closed with the process
        self.agent = subprocess.Popen(
            [str(self.venus_worker), "daemon", "-c", str(self.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 30
        while self.worker("list", "--json").returncode != 0:
            assert self.agent.poll() is None, (self.root / "agent.log").read_text()
            assert time.monotonic() < deadline, "agent socket never answered"
            time.sleep(0.2)

    def stop_agent(self) -> None:
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
    # Short root: the agent's socket path must fit in 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="pb-", dir="/tmp"))
    made = Site(root)
    try:
        yield made
    finally:
        made.stop_agent()
        made.close_ssh_masters()
        made.fleet.stop_all()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def deployed(site):
    """The first run of deploy-agent.yml, then the agent started from what it installed."""
    done = site.playbook("deploy-agent.yml")
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
    assert inventory["workers"]["hosts"] == ["w1"]
    hostvars = inventory["_meta"]["hostvars"]["w1"]
    assert hostvars["ansible_host"] == site.host.address
    assert hostvars["ansible_port"] == site.host.port
    assert hostvars["ansible_user"] == site.fleet.user
    assert hostvars["ansible_ssh_private_key_file"] == str(site.fleet.client_key)
    assert hostvars["venus_worker_config"] == str(site.config)
    assert hostvars["venus_worker_socket"] == str(site.socket)
    assert hostvars["venus_worker_bin"] == str(site.link)
    assert hostvars["ansible_ssh_common_args"] == (
        f"-F /dev/null -o UserKnownHostsFile={site.fleet.known_hosts} -o StrictHostKeyChecking=yes"
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


HANDLER_RAN = "RUNNING HANDLER [Restart venus-worker]"


def test_deploy_installs_an_agent_that_runs_and_venusctl_sees(site, deployed):
    counts, output, masters = deployed
    assert counts["changed"] > 0
    # What changed notified the restart handler (skipped here: no systemd).
    assert HANDLER_RAN in output
    # Over SSH to the loopback sshd, not a local connection.
    assert masters, "no SSH control master: the play did not go through ssh"
    checked = subprocess.run(
        ["ssh", "-o", f"ControlPath={masters[0]}", "-O", "check", "w1"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert checked.returncode == 0, checked.stderr
    config = site.config.read_text()
    assert f'socket = "{site.socket}"' in config
    assert config.count("[[sealing_thread]]") == THREADS
    assert site.link.resolve() == site.venus_worker.resolve()
    threads = site.threads()
    assert [t["location"] for t in threads] == [
        str(site.prefix / "stores" / f"s{i}") for i in range(THREADS)
    ]
    # venusctl, over SSH to the sshd host, through the same inventory.toml.
    listed = subprocess.run(
        [sys.executable, str(ROOT / "venusctl.py"), "--json", "list"],
        env=site.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stdout + listed.stderr
    (entry,) = json.loads(listed.stdout)["hosts"]
    assert entry["name"] == "w1" and entry["error"] is None, entry
    assert entry["summary"]["Threads"] == THREADS and entry["via"], entry


def test_second_deploy_changes_nothing(site, deployed):
    done = site.playbook("deploy-agent.yml")
    assert ran_ok(done)["changed"] == 0
    assert HANDLER_RAN not in done.stdout


def test_deploy_refuses_a_config_the_agent_would_refuse(site, deployed):
    before = site.config.read_bytes()
    typo = {"venus_threads": [{"location": str(site.prefix / "stores" / "s0"), "plan": "sealr"}]}
    done = site.playbook("deploy-agent.yml", "-e", json.dumps(typo))
    assert done.returncode != 0 and recap(done.stdout)["w1"]["failed"] == 1, done.stdout
    # The agent's own loader said why, and the running agent's config was not replaced.
    assert re.search(r'sealing_thread\[0\]\.plan: unknown plan \\?"sealr', done.stdout)
    assert site.config.read_bytes() == before


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


REQUIRED_UNIT_LINES = [
    "Restart=on-failure",
    "NoNewPrivileges=yes",
    "ProtectSystem=strict",
    "PrivateTmp=yes",
    "WantedBy=multi-user.target",
]


def _unit_directives(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if re.match(r"^[A-Za-z]+=", line))
    return {key: value for key, value in pairs}


def _verify_unit(path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    text = path.read_text()
    for line in REQUIRED_UNIT_LINES:
        assert line in text.splitlines(), f"{line} missing from {path}:\n{text}"
    if tool is None:
        # No systemd tools here: the directives above are all that can be checked.
        return
    done = subprocess.run(
        [tool, "verify", "--man=no", str(path)], capture_output=True, text=True, timeout=60
    )
    # verify exits 0 on a mistyped key or a bad value and only prints a warning.
    complaints = [line for line in (done.stdout + done.stderr).splitlines() if path.name in line]
    assert done.returncode == 0 and not complaints, done.stdout + done.stderr


def test_deployed_unit_is_valid_for_systemd(site, deployed):
    unit = site.unit_dir / "venus-worker.service"
    _verify_unit(unit)
    directives = _unit_directives(unit.read_text())
    assert directives["ExecStart"] == f"{site.venus_worker} daemon -c {site.config}"
    writable = directives["ReadWritePaths"].split()
    assert str(site.state_dir) in writable
    assert all(str(site.prefix / "stores" / f"s{i}") in writable for i in range(THREADS))
    # The socket is outside /run here, so its folder is writable and no RuntimeDirectory.
    assert str(site.socket.parent) in writable and "RuntimeDirectory" not in directives
    assert "User" not in directives
    assert directives["PrivateDevices"] == "yes"


def test_production_unit_with_a_dedicated_user_is_valid(site, deployed, tmp_path):
    """The unit as on a real host: socket under /run (RuntimeDirectory), its own user."""
    unit = tmp_path / "venus-worker.service"
    overrides = tmp_path / "overrides.json"
    overrides.write_text(
        json.dumps(
            {
                "venus_prefix": str(site.prefix / "opt"),
                "venus_worker_config": "/etc/venus-worker/venus-worker.toml",
                "venus_worker_socket": "/run/venus-worker/venus-worker.sock",
                "venus_worker_socket_group": "sealers",
                "venus_service_user": "venus",
                "venus_threads": [{"location": "/srv/store1"}, {"location": "/srv/store2"}],
                "venus_processors": {"kind": "command", "command": {"default": ["/bin/true"]}},
                "venus_service_environment": {
                    "FIL_PROOFS_PARAMETER_CACHE": "/var/lib/filecoin-proof-parameters"
                },
                "venus_service_read_write_paths": ["/var/lib/filecoin-proof-parameters"],
            }
        )
    )
    done = subprocess.run(
        [
            ansible_tool("ansible"),
            "localhost",
            "-c",
            "local",
            "-m",
            "ansible.builtin.template",
            "-a",
            f"src={PLAYBOOKS / 'templates' / 'venus-worker.service.j2'} dest={unit}",
            "-e",
            f"@{PLAYBOOKS / 'group_vars' / 'all.yml'}",
            "-e",
            f"@{overrides}",
            "-e",
            f"ansible_python_interpreter={os.path.realpath(sys.executable)}",
        ],
        env=site.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    _verify_unit(unit)
    directives = _unit_directives(unit.read_text())
    assert directives["User"] == "venus" and directives["Group"] == "venus"
    assert directives["SupplementaryGroups"] == "sealers"
    assert directives["RuntimeDirectory"] == "venus-worker"
    assert directives["RuntimeDirectoryMode"] == "0750"
    assert directives["ReadWritePaths"].split() == [
        "/var/lib/venus-worker",
        "/srv/store1",
        "/srv/store2",
        "/var/lib/filecoin-proof-parameters",
    ]
    unit_lines = unit.read_text().splitlines()
    assert 'Environment="FIL_PROOFS_PARAMETER_CACHE=/var/lib/filecoin-proof-parameters"' in (
        unit_lines
    )
    # GPU stages need /dev/nvidia*: only the mock processor gets PrivateDevices.
    assert directives["PrivateDevices"] == "no"


def test_health_cron_installs_a_flocked_job_that_runs(site, deployed, tmp_path):
    cron_file = tmp_path / "venusctl-health"
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
                "ansible_python_interpreter": os.path.realpath(sys.executable),
            }
        ),
    ]
    argv = [ansible_tool("ansible-playbook"), "-i", "localhost,", *extra]
    argv.append(str(PLAYBOOKS / "health-cron.yml"))

    def run() -> dict[str, int]:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
        return ran_ok(done, "localhost")

    lock_dir = Path("/var/lib/venusctl-health")  # the default for a cron user (issue 10)
    made_lock_dir = not lock_dir.exists()
    try:
        changes = run()["changed"]
        assert changes == (4 if made_lock_dir else 3)
        # only the cron user can write where the lock is: nobody else can hold it
        info = lock_dir.stat()
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0o700)
        check_health_cron_job(run, cron_file, site, prom, env)
    finally:
        if made_lock_dir:
            shutil.rmtree(lock_dir, ignore_errors=True)


def check_health_cron_job(run, cron_file, site, prom, env) -> None:
    lines = cron_file.read_text().splitlines()
    # cron strips the quotes ansible.builtin.cron puts around environment values.
    assert 'MAILTO="ops@example.com"' in lines
    assert f'VENUSCTL_INVENTORY="{site.inventory}"' in lines
    (job,) = [line for line in lines if "health" in line and not line.startswith("#")]
    fields = shlex.split(job)
    assert fields[:6] == ["*/5", "*", "*", "*", "*", "root"]
    assert fields[6:9] == ["flock", "--nonblock", "/var/lib/venusctl-health/health.lock"]
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
    assert 'venus_host_up{host="w1"} 1' in prom.read_text().splitlines()


# --- pure parts: the playbooks' style, the inventory conversion, the TOML filter


def _tasks(tasks: list[dict] | None):
    """Every task, also those inside block/rescue/always."""
    for task in tasks or []:
        nested = [task.get(key) for key in ("block", "rescue", "always") if key in task]
        yield from (inner for part in nested for inner in _tasks(part))
        if not nested:
            yield task


# Task keywords (Ansible's "Playbook Keywords") the playbooks use; any other key is the module.
TASK_KEYWORDS = {
    "name", "when", "register", "changed_when", "failed_when", "loop", "loop_control",
    "notify", "until", "retries", "delay", "run_once", "delegate_to", "check_mode",
    "vars", "become", "become_user", "tags", "ignore_errors", "no_log", "environment",
}  # fmt: skip


def test_playbooks_use_fqcn_changed_when_and_handlers_for_restarts():
    import yaml

    for name in ALL_PLAYBOOKS:
        for play in yaml.safe_load((PLAYBOOKS / name).read_text()):
            for section in ("tasks", "handlers"):
                for task in _tasks(play.get(section)):
                    where = f"{name}: {task.get('name')!r}"
                    modules = set(task) - TASK_KEYWORDS
                    assert len(modules) == 1, f"{where}: not one module: {sorted(modules)}"
                    (module,) = modules
                    assert module.startswith("ansible.builtin."), f"{where}: {module} not FQCN"
                    if module in ("ansible.builtin.command", "ansible.builtin.shell"):
                        assert "changed_when" in task, f"{where}: no changed_when"
                    args = task[module] if isinstance(task[module], dict) else {}
                    if args.get("state") in ("restarted", "reloaded"):
                        assert section == "handlers", f"{where}: restarts only in a handler"


def test_readme_documents_every_variable():
    import yaml

    defaults = yaml.safe_load((PLAYBOOKS / "group_vars" / "all.yml").read_text())
    readme = (PLAYBOOKS / "README.md").read_text()
    undocumented = [name for name in defaults if f"`{name}`" not in readme]
    assert not undocumented, undocumented
    # And every venus_* variable a playbook or template reads has a default.
    used = set()
    for path in [*PLAYBOOKS.glob("*.yml"), *(PLAYBOOKS / "templates").glob("*.j2")]:
        used |= set(re.findall(r"\bvenus_[a-z_]*[a-z]\b", path.read_text()))
    registered = {
        task["register"]
        for name in ALL_PLAYBOOKS
        for play in yaml.safe_load((PLAYBOOKS / name).read_text())
        for section in ("tasks", "handlers")
        for task in _tasks(play.get(section))
        if "register" in task
    }
    play_vars = {"venus_cli", "venus_pip", "venus_health_argv", "venus_wheel_local",
                 "venus_wheel_remote"}  # fmt: skip
    assert used - set(defaults) - registered - play_vars == set()


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
        "venus_toml", PLAYBOOKS / "filter_plugins" / "venus_toml.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_toml_filters_write_what_the_agent_reads(tmp_path):
    import tomllib

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
    parsed = tomllib.loads(text)
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
