"""Fleet fan-out benchmark: `venusctl list` against the other ways to ask N hosts.

    .venv/bin/python bench/fanout_bench.py [--sizes 1,10,30] [--runs 5]

Starts max(sizes) real OpenSSH sshd hosts on loopback (tests/sshfleet.py), each with a live
`venus-worker daemon` (own config, socket, state dir, a few mock threads), then, for every
size N (the first N hosts), times in the same run, round-robin:

  venusctl   `python venusctl.py -i INV list`, whole-command wall time
  (a) ssh    OpenSSH's client in parallel, `xargs -P N`, running
             `venus-worker worker -c CFG report --json` on every host
  (b) ansible `ansible all -m command -a '... report --json' --forks N` (ansible's defaults,
             so ssh ControlPersist is on: timed runs reuse the warm-up run's connections)
  (c) floor  paramiko connect + authenticate to every host in parallel threads, nothing run,
             timed in-process (TCP_NODELAY set), plus `python -c "import paramiko"` wall time
             (invoke kept out, as venusctl does) measured separately; "(c) total" = both, the
             least any Python+paramiko tool pays

and `venusctl list` against one agent over the local transport (no SSH). Each method gets one
untimed warm-up run ("cold" column), then --runs timed runs; the table shows medians. ansible
comes with the `test` extra (playbook tests); when .venv lacks it, the bench pip-installs it.

    .venv/bin/python bench/fanout_bench.py --jump [--sizes 30] [--runs 5]

is the jump-host case instead (issue 13 item 7): the same N hosts behind one more sshd, the
bastion, every connection through it, timed in the same run, round-robin:

  venusctl   `venusctl list` with `jump = "bastion"`: one bastion connection, N channels
  (j) ssh -J OpenSSH in parallel, `xargs -P N ssh -J bastion ... report --json` (each target's
             ssh runs its own `ssh -W` to the bastion: N bastion connections)
  (j) true   the same with `true` as the remote command: OpenSSH's connections alone

    .venv/bin/python bench/fanout_bench.py --keeper [--sizes 30,100,300] [--runs 5]

is the warm-connection case (issue 18 item 6): the same fleet, and in the same run, round-robin,
each method with one untimed warm-up first:

  cold       `venusctl --no-persist -i INV list`: connects to every host itself
  first      `venusctl -i INV list` with no keeper running: starts one, which connects
  warm       `venusctl -i INV list` with the keeper alive (its warm-up started it)
  idle       the same, 15 s (untimed) after the run before it: past the agents'
             request_timeout (10 s), after which they closed a kept connection until
             [worker] idle_timeout (10 min by default) came; an operator's next command
  (m) mux    OpenSSH in parallel through warm ControlMasters (ControlMaster=auto,
             ControlPersist, warmed by the untimed run), `... report --json` on every host
  (m) true   the same running `true`: the multiplexed sessions alone
  (c) floor  as above: paramiko connect + auth to every host, plus `import paramiko`

At the largest size, 10 more warm runs then show where a warm run's CPU went: venusctl's
own, the keeper's, the fleet's sshd processes and agents (which on a real fleet run on
other machines, here on the same cores), and the cores' busy and idle time in all.

venusctl is the installed `venusctl` command here (as an operator runs it: its module
byte-compiled), with a runtime folder of the bench's own for the keeper.

Every sshd of the fleet gives its logins a HOME of the bench's own with the stock ~/.bashrc
(plain_login_options): a command run through ssh, ansible or venusctl's exec fallback pays
the shell a worker's service user has, not this machine's root ~/.bashrc (pyenv init, about
90 ms a session), which no stream channel pays.

Everything started here (sshd, agents, ansible's and the bench's ssh control masters, the
keeper) is stopped on exit, Ctrl-C included. Only 127.0.0.x addresses are used.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from agent_bench import cpu_seconds  # noqa: E402
from sshfleet import SshFleet, SshHost  # noqa: E402

VENV_BIN = REPO / ".venv" / "bin"
PYTHON = VENV_BIN / "python"
AGENT = VENV_BIN / "venus-worker"
ANSIBLE = VENV_BIN / "ansible"
VENUSCTL = REPO / "venusctl.py"
VENUSCTL_COMMAND = VENV_BIN / "venusctl"
AGENT_START_TIMEOUT = 30.0
COMMAND_TIMEOUT = 300.0
AGENT_THREADS = 3
TARGET_SIZE = 30
# The floor's import: paramiko without invoke, which paramiko.config imports only for
# `Match exec` and which venusctl keeps out too (venusctl.import_paramiko).
IMPORT_PARAMIKO = "python -c 'import paramiko' (no invoke)"
IMPORT_PARAMIKO_CODE = "import sys; sys.modules['invoke'] = None; import paramiko"
TARGET_VS_JUMP = 0.5  # issue 13 item 7: venusctl <= 0.5 x (j) ssh -J, at N = 30
# Targets of issue 3 item 7, at N = 30.
TARGET_VS_OPENSSH = 0.7  # venusctl <= 0.7 x (a)
TARGET_ANSIBLE_FACTOR = 10.0  # (b) >= 10 x venusctl
TARGET_VS_FLOOR = 1.5  # venusctl <= 1.5 x (c) total
# Targets of issue 18 item 6, at N = 300.
TARGET_WARM_SECONDS = 0.3  # warm list <= 0.3 s
TARGET_WARM_VS_MUX = 0.5  # warm list <= 0.5 x (m) OpenSSH with warm ControlMasters
TARGET_COLD_VS_FLOOR = 1.1  # cold list <= 1.1 x (c) total
KEEPER_SIZE = 300
IDLE_GAP = 15.0  # the "idle" method's untimed pause before its run


class BenchError(RuntimeError):
    """A method failed or gave a wrong answer: its timings would mean nothing."""


# --------------------------------------------------------------------------- the fleet


@dataclass
class Node:
    """One sshd host with its venus-worker agent."""

    host: SshHost
    process: subprocess.Popen | None = None

    @property
    def name(self) -> str:
        return self.host.name

    @property
    def agent_dir(self) -> Path:
        return self.host.dir / "agent"

    @property
    def config(self) -> Path:
        return self.agent_dir / "venus-worker.toml"

    @property
    def socket(self) -> Path:
        return self.agent_dir / "agent.sock"

    @property
    def state_dir(self) -> Path:
        return self.agent_dir / "state"

    @property
    def log(self) -> Path:
        return self.agent_dir / "daemon.log"


def mock_agent_config(
    node: Node, miner: int, threads: int, worker: str = "", mock: str = ""
) -> str:
    """A mock agent's config for `node`: `threads` sealing threads in hour-long stages,
    `worker` and `mock` lines added to those tables (the benches' one template)."""
    sealing = "".join(
        f'[[sealing_thread]]\nlocation = "{node.agent_dir / f"store{index}"}"\n\n'
        for index in range(threads)
    )
    return f"""[worker]
name = "{node.name}"
socket = "{node.socket}"
state_dir = "{node.state_dir}"
ping_interval = "30s"
{worker}
[sealing]
miner = {miner}

{sealing}[processors]
kind = "mock"

[processors.mock]
duration = "1h"
wait_duration = "1h"
{mock}"""


def agent_config_text(node: Node, miner: int) -> str:
    # Long mock stages: threads sit Running instead of cycling, so 30 agents do not load the
    # 2 shared cores during the timings. The first stage is quick and the last thread fails
    # it for good (paused, with an error), so the list has something in every column.
    mock = f"""durations = {{ AcquireDeals = "10ms" }}

[[processors.mock.faults]]
stage = "AcquireDeals"
level = "permanent"
message = "bench: injected fault"
threads = [{AGENT_THREADS - 1}]
"""
    return mock_agent_config(node, miner, AGENT_THREADS, mock=mock)


def start_agents(nodes: list[Node]) -> None:
    """Start every agent, then wait for all of them (their start-ups overlap)."""
    for miner, node in enumerate(nodes, start=10000):
        node.agent_dir.mkdir(parents=True, exist_ok=True)
        node.config.write_text(agent_config_text(node, miner))
        spawn_agent(node)
    for node in nodes:
        wait_for_agent(node)


def spawn_agent(node: Node) -> None:
    """Start the node's agent on its config, not waiting for it (wait_for_agent)."""
    with open(node.log, "wb") as log:
        node.process = subprocess.Popen(
            [str(AGENT), "daemon", "-c", str(node.config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Own session: Ctrl-C reaches only the bench, which then stops agents in order.
            start_new_session=True,
        )


def wait_for_agent(node: Node) -> None:
    deadline = time.monotonic() + AGENT_START_TIMEOUT
    while not (node.socket.exists() and (node.state_dir / "report.json").exists()):
        if node.process.poll() is not None:
            raise BenchError(f"agent {node.name} exited: {node.log.read_text().strip()}")
        if time.monotonic() > deadline:
            raise BenchError(f"agent {node.name} not ready after {AGENT_START_TIMEOUT:.0f}s")
        time.sleep(0.05)


def stop_agents(nodes: list[Node]) -> None:
    running = [node.process for node in nodes if node.process and node.process.poll() is None]
    for process in running:
        process.terminate()
    for process in running:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --------------------------------------------------------------------------- inventories


def toml_string(value: object) -> str:
    # A TOML basic string; the paths here have no quotes, backslashes or control characters.
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def venusctl_inventory(fleet: SshFleet, nodes: list[Node]) -> str:
    lines = [
        "[defaults]",
        f"user = {toml_string(fleet.user)}",
        f"identity_file = {toml_string(fleet.client_key)}",
        f"known_hosts = {toml_string(fleet.known_hosts)}",
        # Keep the machine's ~/.ssh/config out of the measurement.
        'ssh_config = "/dev/null"',
        f"agent = {toml_string(AGENT)}",
        "",
    ]
    for node in nodes:
        lines += [
            "[[host]]",
            f"name = {toml_string(node.name)}",
            f"address = {toml_string(node.host.address)}",
            f"port = {node.host.port}",
            f"config = {toml_string(node.config)}",
            f"socket = {toml_string(node.socket)}",
            "",
        ]
    return "\n".join(lines)


def jump_ssh_config(fleet: SshFleet, bastion: SshHost) -> str:
    """How both venusctl and OpenSSH reach the bastion (and nothing of ~/.ssh/config)."""
    return (
        f"Host bastion\n  HostName {bastion.address}\n  Port {bastion.port}\n"
        f"  User {fleet.user}\n  IdentityFile {fleet.client_key}\n  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {fleet.known_hosts}\n  StrictHostKeyChecking yes\n"
        "  BatchMode yes\n  IdentityAgent none\n"
    )


def jump_inventory(fleet: SshFleet, nodes: list[Node], ssh_config: Path) -> str:
    text = venusctl_inventory(fleet, nodes)
    every_host_behind = f'ssh_config = {toml_string(ssh_config)}\njump = "bastion"'
    return text.replace('ssh_config = "/dev/null"', every_host_behind, 1)


def openssh_jump_lines(
    fleet: SshFleet, nodes: list[Node], ssh_config: Path, command: list[str] | None
) -> str:
    """`ssh -F CONFIG -J bastion ... user@host COMMAND` per host, as xargs reads them."""
    lines = []
    for node in nodes:
        remote = command or [str(AGENT), "worker", "-c", str(node.config), "report", "--json"]
        argv = fleet.ssh_argv(node.host, *remote)[1:]
        argv[argv.index("/dev/null")] = str(ssh_config)  # -F: the bastion's definition
        lines.append(shlex.join(["-J", "bastion", *argv]))
    return "\n".join(lines) + "\n"


def local_inventory(node: Node) -> str:
    return "\n".join(
        [
            "[[host]]",
            'name = "local"',
            'transport = "local"',
            f"agent = {toml_string(AGENT)}",
            f"config = {toml_string(node.config)}",
            f"socket = {toml_string(node.socket)}",
            "",
        ]
    )


def ansible_inventory(fleet: SshFleet, nodes: list[Node]) -> str:
    ssh_args = (
        f"-F /dev/null -o UserKnownHostsFile={fleet.known_hosts} "
        "-o StrictHostKeyChecking=yes -o IdentitiesOnly=yes"
    )
    lines = ["[fleet]"]
    lines += [
        f"{node.name} ansible_host={node.host.address} ansible_port={node.host.port} "
        f"agent_config={node.config}"
        for node in nodes
    ]
    lines += [
        "",
        "[fleet:vars]",
        f"ansible_user={fleet.user}",
        f"ansible_ssh_private_key_file={fleet.client_key}",
        f"ansible_ssh_common_args='{ssh_args}'",
        "",
    ]
    return "\n".join(lines)


def ansible_cfg(root: Path) -> str:
    # Its own config file so no ansible.cfg of the working directory or of ~ applies;
    # everything ansible writes stays under root. ssh_connection keeps ansible's defaults.
    return f"""[defaults]
host_key_checking = True
interpreter_python = /usr/bin/python3
local_tmp = {root}/ansible/local
remote_tmp = {root}/ansible/remote

[ssh_connection]
control_path_dir = {root}/ansible/cp
"""


def openssh_lines(fleet: SshFleet, nodes: list[Node]) -> str:
    """One line per host: ssh's arguments after argv[0], quoted the way xargs reads them."""
    lines = []
    for node in nodes:
        argv = fleet.ssh_argv(
            node.host, str(AGENT), "worker", "-c", str(node.config), "report", "--json"
        )
        lines.append(shlex.join(argv[1:]))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the methods


def bench_environment() -> dict[str, str]:
    # No ssh-agent for anyone: every tool authenticates with the fleet's key file alone.
    env = dict(os.environ)
    env.pop("SSH_AUTH_SOCK", None)
    env.pop("SSH_AGENT_PID", None)
    # An operator's shell does not set this; with it, every run recompiles the project's
    # modules instead of using cached bytecode.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    # Every run connects itself (the cold case; keeper_environment turns the keeper on),
    # and no connection keeper outlives the bench.
    env["VENUSCTL_PERSIST"] = "0"
    return env


def timed_run(argv: list[str], env: dict[str, str], stdin_path: Path | None = None):
    """Run argv, return (seconds, completed process)."""
    stdin = open(stdin_path, "rb") if stdin_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        start = time.perf_counter()
        done = subprocess.run(
            argv, stdin=stdin, capture_output=True, text=True, env=env, timeout=COMMAND_TIMEOUT
        )
        elapsed = time.perf_counter() - start
    finally:
        if stdin_path:
            stdin.close()
    return elapsed, done


def require(done: subprocess.CompletedProcess, ok: bool, what: str) -> None:
    if done.returncode != 0 or not ok:
        raise BenchError(
            f"{what}: exit {done.returncode}\n--- rows unlike the header\n{odd_rows(done.stdout)}"
            f"\n--- stdout (its end)\n{done.stdout[-2000:]}\n--- stderr\n{done.stderr[-2000:]}"
        )


def odd_rows(table: str) -> str:
    """The rows of a table with another number of words than its header (an error row,
    say), wherever they are: the end of stdout alone hid the one that failed a run."""
    header, *rows = table.splitlines() or [""]
    width = len(header.split())
    return "\n".join([row for row in rows if len(row.split()) != width][:20])


def venusctl_list(inventory: Path, names: list[str], env: dict[str, str]) -> Callable[[], float]:
    argv = [str(PYTHON), str(VENUSCTL), "-i", str(inventory), "list"]

    def run() -> float:
        elapsed, done = timed_run(argv, env)
        rows = {line.split()[0] for line in done.stdout.splitlines() if line.strip()}
        require(done, set(names) <= rows, "venusctl list")
        return elapsed

    return run


def check_venusctl_uses_stream(inventory: Path, env: dict[str, str]) -> None:
    """Before timing: every host answers, through the stream channel (not the exec fallback,
    which would measure something else)."""
    argv = [str(PYTHON), str(VENUSCTL), "-i", str(inventory), "--json", "list"]
    _, done = timed_run(argv, env)
    require(done, True, "venusctl --json list")
    hosts = json.loads(done.stdout)["hosts"]
    not_stream = [h["name"] for h in hosts if h.get("via") != "stream" or h.get("error")]
    if not_stream:
        raise BenchError(f"venusctl did not use the stream transport for {not_stream}")


def openssh_xargs(
    lines_file: Path, count: int, env: dict[str, str], answers: str | None = '"summary"'
) -> Callable[[], float]:
    argv = ["xargs", "-P", str(count), "-L", "1", shutil.which("ssh") or "/usr/bin/ssh"]

    def run() -> float:
        elapsed, done = timed_run(argv, env, stdin_path=lines_file)
        ok = answers is None or done.stdout.count(answers) == count
        require(done, ok, "ssh via xargs")
        return elapsed

    return run


def check_venusctl_uses_the_jump(inventory: Path, env: dict[str, str], bastion: SshHost) -> None:
    """Before timing: every host answers through the stream channel, through the bastion."""
    argv = [str(PYTHON), str(VENUSCTL), "-i", str(inventory), "--json", "list"]
    _, done = timed_run(argv, env)
    require(done, True, "venusctl --json list (jump)")
    route = f"@{bastion.address}:{bastion.port}"
    wrong = [
        h["name"]
        for h in json.loads(done.stdout)["hosts"]
        if h.get("via") != "stream" or h.get("error") or not (h.get("jump") or "").endswith(route)
    ]
    if wrong:
        raise BenchError(f"venusctl did not reach {wrong} through the bastion's stream channels")


def ansible_command(inventory: Path, count: int, env: dict[str, str]) -> Callable[[], float]:
    command = f"{AGENT} worker -c {{{{ agent_config }}}} report --json"
    argv = [str(ANSIBLE), "all", "-i", str(inventory), "-m", "command", "-a", command]
    argv += ["--forks", str(count), "--one-line"]

    def run() -> float:
        elapsed, done = timed_run(argv, env)
        require(done, done.stdout.count("| CHANGED |") == count, "ansible")
        return elapsed

    return run


def paramiko_floor(fleet: SshFleet, nodes: list[Node]) -> Callable[[], float]:
    import paramiko

    def handshake(host: SshHost, key, known) -> None:
        sock = socket.create_connection((host.address, host.port), timeout=10)
        # As DESIGN.md's field notes: without these paramiko stalls on Nagle / delayed ACK.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        transport = paramiko.Transport(sock)
        try:
            transport.start_client(timeout=10)
            offered = transport.get_remote_server_key()
            expected = (known.lookup(f"[{host.address}]:{host.port}") or {}).get(offered.get_name())
            if expected != offered:
                raise BenchError(f"{host.name}: host key not in known_hosts")
            transport.auth_publickey(fleet.user, key)
            if not transport.is_authenticated():
                raise BenchError(f"{host.name}: not authenticated")
        finally:
            transport.close()

    def run() -> float:
        start = time.perf_counter()
        # Reading the key and known_hosts is part of what any tool pays per run.
        key = paramiko.Ed25519Key.from_private_key_file(str(fleet.client_key))
        known = paramiko.HostKeys(str(fleet.known_hosts))
        with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
            for future in [pool.submit(handshake, node.host, key, known) for node in nodes]:
                future.result()
        return time.perf_counter() - start

    return run


def python_command(code: str, env: dict[str, str]) -> Callable[[], float]:
    argv = [str(PYTHON), "-c", code]

    def run() -> float:
        elapsed, done = timed_run(argv, env)
        require(done, True, f"python -c {code!r}")
        return elapsed

    return run


# --------------------------------------------------------------------------- measuring


@dataclass
class Samples:
    cold: float | None = None
    runs: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.runs)


def measure(methods: dict[str, Callable[[], float]], runs: int) -> dict[str, Samples]:
    """One warm-up each, then `runs` rounds taking every method in turn, so that load from
    the other users of this machine spreads over all methods rather than hitting one."""
    samples = {name: Samples() for name in methods}
    for name, run in methods.items():
        samples[name].cold = run()
    for _ in range(runs):
        for name, run in methods.items():
            samples[name].runs.append(run())
    return samples


# --------------------------------------------------------------------------- reporting


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


def print_size_table(title: str, samples: dict[str, Samples]) -> None:
    print(f"\n{title}: wall time in ms (median of {len(next(iter(samples.values())).runs)})")
    print(f"  {'method':<32} {'median':>8} {'min':>8} {'max':>8} {'cold':>8}")
    for name, sample in samples.items():
        print(
            f"  {name:<32} {ms(sample.median):>8} {ms(min(sample.runs)):>8} "
            f"{ms(max(sample.runs)):>8} {ms(sample.cold):>8}"
        )


def summary_rows(results: dict[int, dict[str, float]]) -> list[list[str]]:
    rows = []
    for size, medians in results.items():
        venusctl = medians.get("venusctl list")
        floor = medians["(c) paramiko connect+auth"] + medians[IMPORT_PARAMIKO]
        row = [str(size)]
        row.append(ms(venusctl))
        row += [ms(medians["(a) ssh, xargs -P N"]), ms(medians.get("(b) ansible -m command"))]
        row += [ms(medians["(c) paramiko connect+auth"]), ms(floor)]
        if venusctl:
            row.append(f"{venusctl / medians['(a) ssh, xargs -P N']:.2f}")
            ansible = medians.get("(b) ansible -m command")
            row.append(f"{ansible / venusctl:.1f}" if ansible else "-")
            row.append(f"{venusctl / floor:.2f}")
        else:
            row += ["-", "-", "-"]
        rows.append(row)
    return rows


SUMMARY_HEADERS = [
    "N",
    "venusctl",
    "(a) ssh",
    "(b) ansible",
    "(c) connect",
    "(c) total",
    "venusctl/(a)",
    "(b)/venusctl",
    "venusctl/(c)",
]


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def target_verdicts(medians: dict[str, float]) -> list[str]:
    venusctl = medians.get("venusctl list")
    if venusctl is None:
        return ["venusctl not measured"]
    openssh = medians["(a) ssh, xargs -P N"]
    ansible = medians.get("(b) ansible -m command")
    floor = medians["(c) paramiko connect+auth"] + medians[IMPORT_PARAMIKO]
    verdicts = [
        verdict("venusctl <= 0.7 x (a)", venusctl / openssh, TARGET_VS_OPENSSH, "x (a)"),
        verdict("venusctl <= 1.5 x (c) total", venusctl / floor, TARGET_VS_FLOOR, "x (c)"),
    ]
    if ansible:
        ratio = ansible / venusctl
        ok = ratio >= TARGET_ANSIBLE_FACTOR
        verdicts.append(
            f"(b) >= 10 x venusctl: {ratio:.1f}x -> {'met' if ok else 'MISSED'}"
            + ("" if ok else f" (venusctl would need {ms(ansible / 10)} ms)")
        )
    return verdicts


def verdict(label: str, ratio: float, limit: float, unit: str) -> str:
    if ratio <= limit:
        return f"{label}: {ratio:.2f} {unit} -> met"
    return f"{label}: {ratio:.2f} {unit} -> MISSED by {(ratio / limit - 1) * 100:.0f}%"


def command_output(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return (done.stdout or done.stderr).strip()


def machine_description() -> list[str]:
    model = re.search(r"Model name:\s*(.+)", command_output(["lscpu"]))
    memory = re.search(r"MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text())
    paramiko_version = command_output(
        [str(PYTHON), "-c", "import paramiko; print(paramiko.__version__)"]
    )
    ansible_version = command_output([str(ANSIBLE), "--version"]).splitlines()[:1]
    return [
        f"CPU: nproc {command_output(['nproc'])}, {model.group(1) if model else '?'}",
        f"memory: {int(memory.group(1)) / 1024 / 1024:.1f} GiB" if memory else "memory: ?",
        f"kernel: {platform.release()}",
        f"Python: {command_output([str(PYTHON), '-VV'])}",
        f"OpenSSH: {command_output(['ssh', '-V'])}",
        f"paramiko: {paramiko_version}",
        f"ansible: {ansible_version[0] if ansible_version else 'not installed'}",
    ]


# --------------------------------------------------------------------------- main


def ensure_ansible() -> bool:
    if ANSIBLE.exists():
        return True
    # A venv made before ansible-core joined the test extra lacks it: install it on demand.
    # On Python 3.11 pip picks 2.19.x (2.20+ needs 3.12).
    print("installing ansible-core into .venv (bench only) ...", flush=True)
    done = subprocess.run([str(PYTHON), "-m", "pip", "install", "-q", "ansible-core"])
    return done.returncode == 0 and ANSIBLE.exists()


def stop_control_masters(root: Path) -> None:
    """ansible (and the --keeper bench) leave ssh ControlPersist masters behind; ask each to
    exit."""
    controls = [
        control
        for folder in (root / "ansible" / "cp", root / "cm")
        if folder.is_dir()
        for control in folder.iterdir()
    ]
    for control in controls:
        subprocess.run(
            ["ssh", "-F", "/dev/null", "-O", "exit", "-o", f"ControlPath={control}", "bench"],
            capture_output=True,
            timeout=10,
        )


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def methods_for_size(
    size: int, fleet: SshFleet, nodes: list[Node], root: Path, options, env: dict[str, str]
) -> dict[str, Callable[[], float]]:
    chosen = nodes[:size]
    directory = root / f"n{size}"
    directory.mkdir()
    methods = {}
    if options.venusctl:
        inventory = write(directory / "inventory.toml", venusctl_inventory(fleet, chosen))
        check_venusctl_uses_stream(inventory, env)
        methods["venusctl list"] = venusctl_list(inventory, [n.name for n in chosen], env)
    lines = write(directory / "ssh-lines", openssh_lines(fleet, chosen))
    methods["(a) ssh, xargs -P N"] = openssh_xargs(lines, size, env)
    if options.ansible:
        inventory = write(directory / "ansible.ini", ansible_inventory(fleet, chosen))
        methods["(b) ansible -m command"] = ansible_command(inventory, size, env)
    methods["(c) paramiko connect+auth"] = paramiko_floor(fleet, chosen)
    methods[IMPORT_PARAMIKO] = python_command(IMPORT_PARAMIKO_CODE, env)
    return methods


def run_bench(options, root: Path, fleet: SshFleet, nodes: list[Node]) -> None:
    env = bench_environment()
    env["ANSIBLE_CONFIG"] = str(write(root / "ansible.cfg", ansible_cfg(root)))
    results: dict[int, dict[str, float]] = {}
    for size in options.sizes:
        samples = measure(methods_for_size(size, fleet, nodes, root, options, env), options.runs)
        print_size_table(f"N = {size}", samples)
        results[size] = {name: sample.median for name, sample in samples.items()}
    local = {"python -c pass": python_command("pass", env)}
    if options.venusctl:
        inventory = write(root / "local.toml", local_inventory(nodes[0]))
        local["venusctl list (local transport)"] = venusctl_list(inventory, ["local"], env)
    local_samples = measure(local, options.runs)
    print_size_table("one agent, no SSH", local_samples)

    print("\nmachine:\n  " + "\n  ".join(machine_description()))
    print("\nmedians, ms:\n")
    print(markdown_table(SUMMARY_HEADERS, summary_rows(results)))
    for name, sample in local_samples.items():
        print(f"\n{name}: {ms(sample.median)} ms", end="")
    print()
    largest = max(results)
    print(
        f"\ntargets at N = {largest}"
        + ("" if largest == TARGET_SIZE else " (targets are for N = 30)")
    )
    for line in target_verdicts(results[largest]):
        print("  " + line)


JUMP_METHODS = ("venusctl list (jump)", "(j) ssh -J, xargs -P N", "(j) ssh -J, xargs -P N, true")


def run_jump_bench(options, root: Path, fleet: SshFleet, nodes: list[Node]) -> None:
    """The jump-host case: every size's hosts behind one bastion, venusctl against ssh -J."""
    env = bench_environment()
    bastion = fleet.add_host("bastion", {"LogLevel": "VERBOSE", **plain_login_options(root)})
    bastion.start()
    ssh_config = write(root / "ssh_config", jump_ssh_config(fleet, bastion))
    rows = []
    for size in options.sizes:
        chosen = nodes[:size]
        directory = root / f"jump{size}"
        directory.mkdir()
        inventory = write(directory / "inventory.toml", jump_inventory(fleet, chosen, ssh_config))
        check_venusctl_uses_the_jump(inventory, env, bastion)
        logins = bastion.log_path.read_text().count("Accepted publickey")
        venusctl_list(inventory, [n.name for n in chosen], env)()
        shared = bastion.log_path.read_text().count("Accepted publickey") - logins
        if shared != 1:
            raise BenchError(f"venusctl logged in to the bastion {shared} times for {size} hosts")
        report = write(directory / "ssh-J", openssh_jump_lines(fleet, chosen, ssh_config, None))
        bare = write(
            directory / "ssh-J-true", openssh_jump_lines(fleet, chosen, ssh_config, ["true"])
        )
        methods = {
            JUMP_METHODS[0]: venusctl_list(inventory, [n.name for n in chosen], env),
            JUMP_METHODS[1]: openssh_xargs(report, size, env),
            JUMP_METHODS[2]: openssh_xargs(bare, size, env, answers=None),
        }
        samples = measure(methods, options.runs)
        print_size_table(f"N = {size} behind one bastion", samples)
        medians = {name: sample.median for name, sample in samples.items()}
        venusctl, openssh, bare_ssh = (medians[name] for name in JUMP_METHODS)
        rows.append(
            [str(size), ms(venusctl), ms(openssh), ms(bare_ssh)]
            + [f"{venusctl / openssh:.2f}", f"{venusctl / bare_ssh:.2f}"]
        )
    print("\nmachine:\n  " + "\n  ".join(machine_description()))
    print("\nmedians, ms (one bastion connection for venusctl, checked in the bastion's log):\n")
    headers = [
        "N",
        "venusctl",
        "(j) ssh -J",
        "(j) ssh -J true",
        "venusctl/(j)",
        "venusctl/(j) true",
    ]
    print(markdown_table(headers, rows))
    largest = rows[-1]
    ratio = float(largest[4])
    print(
        f"\ntarget at N = {largest[0]}: venusctl <= {TARGET_VS_JUMP} x (j) ssh -J:"
        f" {ratio:.2f} -> {'met' if ratio <= TARGET_VS_JUMP else 'MISSED'}"
    )


KEEPER_METHODS = {
    "cold": "venusctl list, cold (--no-persist)",
    "first": "venusctl list, first (starts the keeper)",
    "warm": "venusctl list, warm (keeper alive)",
    "idle": f"venusctl list, warm, {IDLE_GAP:g} s after",
    "mux": "(m) ssh ControlMaster, xargs -P N",
    "mux_true": "(m) ssh ControlMaster, true",
    "floor": "(c) paramiko connect+auth",
    "import": IMPORT_PARAMIKO,
}


def keeper_environment(root: Path) -> dict[str, str]:
    """The bench's environment, with a runtime folder of its own for the keeper."""
    env = bench_environment()
    runtime = root / "run"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env["XDG_RUNTIME_DIR"] = str(runtime)
    env.pop("VENUSCTL_PERSIST", None)  # the default: 10m, stopped by the bench at its end
    return env


def venusctl_command(
    inventory: Path, names: list[str], env: dict[str, str], *options: str
) -> Callable[[], float]:
    argv = [str(VENUSCTL_COMMAND), *options, "-i", str(inventory), "list"]

    def run() -> float:
        elapsed, done = timed_run(argv, env)
        rows = {line.split()[0] for line in done.stdout.splitlines() if line.strip()}
        require(done, set(names) <= rows and not done.stderr, f"venusctl {' '.join(options)} list")
        return elapsed

    return run


def stop_keeper(env: dict[str, str]) -> None:
    subprocess.run(
        [str(VENUSCTL_COMMAND), "keeper", "stop"], env=env, capture_output=True, timeout=60
    )


def keeper_info(env: dict[str, str]) -> dict:
    done = subprocess.run(
        [str(VENUSCTL_COMMAND), "--json", "keeper"], env=env, capture_output=True, text=True
    )
    require(done, True, "venusctl keeper")
    return json.loads(done.stdout)


def first_run(inventory: Path, names: list[str], env: dict[str, str]) -> Callable[[], float]:
    """A run with no keeper alive (the one before it is stopped, untimed)."""
    run = venusctl_command(inventory, names, env)

    def first() -> float:
        stop_keeper(env)
        return run()

    return first


def after_idle(run: Callable[[], float], seconds: float) -> Callable[[], float]:
    """`run`, after an untimed pause of `seconds`: the operator reading the last answer."""

    def idle_then_run() -> float:
        time.sleep(seconds)
        return run()

    return idle_then_run


def mux_lines(fleet: SshFleet, nodes: list[Node], root: Path, command: list[str] | None) -> str:
    """ssh's arguments per host through a ControlMaster each (made by the first run)."""
    lines = []
    for node in nodes:
        remote = command or [str(AGENT), "worker", "-c", str(node.config), "report", "--json"]
        argv = fleet.ssh_argv(node.host, *remote)[1:]
        mux = ["-o", "ControlMaster=auto", "-o", f"ControlPath={root}/cm/%C"]
        lines.append(shlex.join([*mux, "-o", "ControlPersist=10m", *argv]))
    return "\n".join(lines) + "\n"


def keeper_methods(
    size: int, fleet: SshFleet, nodes: list[Node], root: Path, env: dict[str, str]
) -> dict[str, Callable[[], float]]:
    chosen = nodes[:size]
    names = [node.name for node in chosen]
    directory = root / f"k{size}"
    directory.mkdir()
    (root / "cm").mkdir(mode=0o700, exist_ok=True)
    inventory = write(directory / "inventory.toml", venusctl_inventory(fleet, chosen))
    check_venusctl_uses_stream(inventory, env)
    stop_keeper(env)
    report = write(directory / "mux", mux_lines(fleet, chosen, root, None))
    bare = write(directory / "mux-true", mux_lines(fleet, chosen, root, ["true"]))
    return {
        KEEPER_METHODS["cold"]: venusctl_command(inventory, names, env, "--no-persist"),
        KEEPER_METHODS["first"]: first_run(inventory, names, env),
        # after "first": its warm-up finds the keeper the first method left
        KEEPER_METHODS["warm"]: venusctl_command(inventory, names, env),
        KEEPER_METHODS["idle"]: after_idle(venusctl_command(inventory, names, env), IDLE_GAP),
        KEEPER_METHODS["mux"]: openssh_xargs(report, size, env),
        KEEPER_METHODS["mux_true"]: openssh_xargs(bare, size, env, answers=None),
        KEEPER_METHODS["floor"]: paramiko_floor(fleet, chosen),
        KEEPER_METHODS["import"]: python_command(IMPORT_PARAMIKO_CODE, env),
    }


CPU_SPLIT_RUNS = 10  # extra warm runs at the largest size, each with its CPU accounted


def processes_cpu(pids: set[int]) -> dict[int, float]:
    """CPU seconds (user + system, ended threads included) of each of these processes
    that is still there."""
    used = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            used[pid] = cpu_seconds(pid)
    return used


def cpu_since(before: dict[int, float]) -> float:
    """The CPU seconds the processes of `before` used since, counting those still there."""
    after = processes_cpu(set(before))
    return sum(seconds - before[pid] for pid, seconds in after.items())


def machine_ticks() -> tuple[int, int]:
    """(busy, idle) clock ticks of all cores so far, from /proc/stat."""
    with open("/proc/stat") as stat:
        user, nice, system, idle, iowait, irq, softirq = map(int, stat.readline().split()[1:8])
    return user + nice + system + irq + softirq, idle + iowait


def descendants(roots: set[int]) -> set[int]:
    """`roots` and every process below them (sshd's per-connection processes)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/stat") as stat:
                parents[int(entry)] = int(stat.read().rsplit(")", 1)[1].split()[1])
    found, grew = set(roots), True
    while grew:
        below = {pid for pid, parent in parents.items() if parent in found} - found
        found |= below
        grew = bool(below)
    return found


def cpu_split(run: Callable[[], float], env: dict[str, str], nodes: list[Node]) -> dict:
    """Where the CPU of a warm run goes on this machine, median ms over CPU_SPLIT_RUNS runs:
    the run itself, the keeper, the fleet's sshd processes and agents (on a real fleet
    those are other machines' CPU), and the cores' busy and idle time in all."""
    groups = {
        "keeper": {int(keeper_info(env)["pid"])},
        "sshd": descendants({int(node.host.pid_path.read_text()) for node in nodes}),
        "agents": {node.process.pid for node in nodes if node.process is not None},
    }
    tick = 1000 / os.sysconf("SC_CLK_TCK")
    runs: dict[str, list[float]] = {name: [] for name in ["wall", "run", *groups, "busy", "idle"]}
    for _ in range(CPU_SPLIT_RUNS):
        before = {name: processes_cpu(pids) for name, pids in groups.items()}
        busy, idle = machine_ticks()
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        runs["wall"].append(run() * 1000)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        busy_after, idle_after = machine_ticks()
        runs["busy"].append((busy_after - busy) * tick)
        runs["idle"].append((idle_after - idle) * tick)
        used = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
        runs["run"].append(used * 1000)
        for name in groups:
            runs[name].append(cpu_since(before[name]) * 1000)
    return {name: statistics.median(values) for name, values in runs.items()}


def print_cpu_split(size: int, split: dict) -> None:
    print(
        f"\nN = {size}, where a warm run's CPU went (median ms of {CPU_SPLIT_RUNS} more warm"
        f" runs; {os.cpu_count()} cores):\n  wall {split['wall']:.0f}; venusctl {split['run']:.0f},"
        f" keeper {split['keeper']:.0f}, fleet: sshd {split['sshd']:.0f} and agents"
        f" {split['agents']:.0f}; all cores busy {split['busy']:.0f}, idle {split['idle']:.0f}"
    )


def run_keeper_bench(options, root: Path, fleet: SshFleet, nodes: list[Node]) -> None:
    """The warm-connection case: cold, first and warm venusctl against warm ControlMasters."""
    env = keeper_environment(root)
    rows, verdicts = [], []
    try:
        for size in options.sizes:
            # Rounds go in the methods' order: "warm" always right after "first" left a keeper.
            methods = keeper_methods(size, fleet, nodes, root, env)
            samples = measure(methods, options.runs)
            print_size_table(f"N = {size}, connections kept between runs", samples)
            if size == max(options.sizes):
                split = cpu_split(methods[KEEPER_METHODS["warm"]], env, nodes[:size])
                print_cpu_split(size, split)
            held = len(keeper_info(env).get("connections", []))
            if held != size:
                raise BenchError(f"the keeper holds {held} connections for {size} hosts")
            medians = {name: sample.median for name, sample in samples.items()}
            floor = medians[KEEPER_METHODS["floor"]] + medians[KEEPER_METHODS["import"]]
            cold, warm = medians[KEEPER_METHODS["cold"]], medians[KEEPER_METHODS["warm"]]
            mux, first = medians[KEEPER_METHODS["mux"]], medians[KEEPER_METHODS["first"]]
            idle = medians[KEEPER_METHODS["idle"]]
            rows.append(
                [str(size), ms(cold), ms(first), ms(warm), ms(idle), ms(mux)]
                + [ms(medians[KEEPER_METHODS["mux_true"]]), ms(floor)]
                + [f"{warm / mux:.3f}", f"{cold / floor:.2f}"]
            )
            if size == KEEPER_SIZE or size == max(options.sizes):
                verdicts = [
                    verdict("warm <= 0.3 s", warm / TARGET_WARM_SECONDS, 1.0, "x 0.3 s"),
                    verdict("warm <= 0.5 x (m)", warm / mux, TARGET_WARM_VS_MUX, "x (m)"),
                    verdict("cold <= 1.1 x (c) total", cold / floor, TARGET_COLD_VS_FLOOR, "x (c)"),
                ]
                verdicts = [f"N = {size}: {line}" for line in verdicts]
    finally:
        stop_keeper(env)
    print("\nmachine:\n  " + "\n  ".join(machine_description()))
    print("\nmedians, ms:\n")
    headers = ["N", "cold", "first", "warm", "idle", "(m) mux", "(m) true", "(c) total"]
    print(markdown_table([*headers, "warm/(m)", "cold/(c)"], rows))
    print("\ntargets" + ("" if max(options.sizes) == KEEPER_SIZE else " (they are for N = 300)"))
    for line in verdicts:
        print("  " + line)


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,10,30", help="comma-separated fleet sizes")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per method (median)")
    parser.add_argument("--no-ansible", dest="ansible", action="store_false")
    parser.add_argument("--no-venusctl", dest="venusctl", action="store_false")
    parser.add_argument(
        "--jump", action="store_true", help="the jump-host case: venusctl against ssh -J"
    )
    parser.add_argument(
        "--keeper",
        action="store_true",
        help="warm connections between runs: venusctl cold, first and warm against ssh"
        " ControlMasters",
    )
    options = parser.parse_args(argv)
    options.sizes = sorted({int(size) for size in options.sizes.split(",")})
    if options.runs < 1 or options.sizes[0] < 1:
        parser.error("--runs and every size must be at least 1")
    return options


def plain_login_options(root: Path) -> dict[str, str]:
    """sshd options that give the fleet's logins a HOME of their own, holding only the stock
    ~/.bashrc (Debian's /etc/skel one, which returns at once when not interactive).

    Why: sshd runs every remote command through the login's shell, `bash -c COMMAND`, and
    bash reads ~/.bashrc when sshd starts it, interactive or not (stdin is a socket, and
    SSH_CLIENT is set). This machine's root ~/.bashrc runs `pyenv init` and `pyenv
    virtualenv-init`: about 90 ms a session, a cost of the bench machine, not of OpenSSH,
    that a worker's service user does not have. It would count against every method that
    runs a command (ssh, ssh through a ControlMaster, ansible, venusctl's exec fallback)
    and never against venusctl's stream channel, which starts no shell. sshd_config's
    SetEnv sets HOME after sshd's own (sshd_config(5)), for every session of the fleet.
    """
    home = root / "home"
    home.mkdir(mode=0o700, exist_ok=True)
    skel = Path("/etc/skel/.bashrc")
    (home / ".bashrc").write_text(skel.read_text() if skel.is_file() else "")
    return {"SetEnv": f"HOME={home}"}


def check_plain_logins(fleet: SshFleet, node: Node, root: Path) -> None:
    """Before timing: a command run through ssh gets the bench's HOME, and no rc put pyenv
    on its PATH."""
    probe = 'echo "$HOME"; command -v pyenv || echo no-pyenv'
    done = subprocess.run(
        fleet.ssh_argv(node.host, "sh", "-c", probe), capture_output=True, text=True, timeout=60
    )
    require(done, done.stdout.split() == [str(root / "home"), "no-pyenv"], "a plain login")


def run_with_fleet(options: argparse.Namespace, prefix: str, bench: Callable) -> int:
    """Start max(sizes) loopback sshd hosts with live agents, run `bench` on them,
    and clean everything up on any exit (Ctrl-C, SIGTERM, a failed start).

    Shared with watch_bench.py. Returns the process exit status.
    """
    # SIGTERM unwinds like Ctrl-C, through the finally below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    fleet = SshFleet(root)
    nodes: list[Node] = []
    try:
        for index in range(max(options.sizes)):
            nodes.append(Node(fleet.add_host(f"h{index + 1:02d}", plain_login_options(root))))
            nodes[-1].host.start()
        start_agents(nodes)
        check_plain_logins(fleet, nodes[0], root)
        bench(options, root, fleet, nodes)
    except BenchError as error:
        print(f"bench failed: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        # A second Ctrl-C must not abandon the clean-up half way.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stop_control_masters(root)
        stop_agents(nodes)
        fleet.stop_all()
        shutil.rmtree(root, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    if options.jump:
        return run_with_fleet(options, "vfj-", run_jump_bench)
    if options.keeper:
        return run_with_fleet(options, "vfk-", run_keeper_bench)
    if options.ansible and not ensure_ansible():
        print("ansible-core could not be installed; running without (b)", file=sys.stderr)
        options.ansible = False
    return run_with_fleet(options, "vfb-", run_bench)


if __name__ == "__main__":
    sys.exit(main())
