"""Pure parts of venusctl: inventory, targets, durations, formatting, argv building.

No sockets or processes here; everything that talks to an agent or an sshd
is in test_venusctl_e2e.py / test_venusctl_local.py.
"""

from __future__ import annotations

import gc
import io
import json
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import report

import venusctl
from venusctl import (
    AgentNotInstalled,
    AgentNotRunning,
    AgentRefused,
    CommandResult,
    HostStatus,
    InventoryError,
    UnreadableReply,
    UsageError,
)
from worker_agent import api

INVENTORY = """\
[defaults]
user = "sealer"
identity_file = "keys/fleet"
connect_timeout = 3

[[host]]
name = "gpu-01"
address = "10.0.0.1"
groups = ["gpu", "rack1"]

[[host]]
name = "gpu-02"
address = "10.0.0.2"
port = 2222
groups = ["gpu"]
command_timeout = 30

[[host]]
name = "cpu-01"
address = "10.0.0.3"
transport = "exec"
agent = "/opt/venus/bin/venus-worker"

[[host]]
name = "local"
transport = "local"
config = "mock.toml"
socket = "mock-tmp/venus-worker.sock"
"""


def parse(text: str, path: str = "/etc/venusctl/inventory.toml") -> venusctl.Inventory:
    return venusctl.parse_inventory(text, Path(path))


def inventory_error(text: str) -> str:
    with pytest.raises(InventoryError) as caught:
        parse(text)
    message = str(caught.value)
    assert "\n" not in message, "an inventory error is one line"
    return message


# -- inventory -------------------------------------------------------------------------------


def test_inventory_merges_defaults_and_host_overrides():
    inventory = parse(INVENTORY)
    gpu1, gpu2, cpu1, local = inventory.hosts
    assert inventory.names == ["gpu-01", "gpu-02", "cpu-01", "local"]
    assert (gpu1.user, gpu1.port, gpu1.connect_timeout, gpu1.command_timeout) == (
        "sealer",
        None,
        3.0,
        15.0,
    )
    assert gpu2.port == 2222 and gpu2.command_timeout == 30.0
    assert gpu1.groups == ("gpu", "rack1")
    # local paths resolve against the inventory's folder
    assert gpu1.identity_file == "/etc/venusctl/keys/fleet"
    # the systemd layout is the default on the hosts
    assert cpu1.config == "/etc/venus-worker/venus-worker.toml"
    assert cpu1.socket == "/run/venus-worker/venus-worker.sock"
    assert cpu1.agent_argv == ["/opt/venus/bin/venus-worker"]
    # unset in the inventory: ssh_config decides (StrictHostKeyChecking), as OpenSSH
    assert gpu1.transport == "auto" and gpu1.host_key_policy is None
    assert gpu1.backend == "venus"
    # a local agent's config and socket are local paths too
    assert local.socket == "/etc/venusctl/mock-tmp/venus-worker.sock"
    assert local.config == "/etc/venusctl/mock.toml"
    assert local.dest == "unix:/etc/venusctl/mock-tmp/venus-worker.sock"
    assert gpu2.dest == "10.0.0.2:2222" and gpu1.dest == "10.0.0.1:22"


def test_empty_inventory_is_valid_and_has_no_hosts():
    assert parse("").hosts == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[[host]]\nname = 'a'\naddress = \n", "inventory.toml:3: TOML error"),
        (
            "[[host]]\nname = 'a'\naddress = 'x'\n[[host]]\nname = 'a'\naddress = 'y'\n",
            "inventory.toml:5: duplicate host name 'a'",
        ),
        ("[[host]]\nname = 'a'\n", "inventory.toml:1: host[0] (a): missing 'address'"),
        ("[[host]]\naddress = 'x'\n", "inventory.toml:1: host[0]: missing 'name'"),
        (
            "[[host]]\nname = 'a'\naddress = 'x'\nport = 70000\n",
            "inventory.toml:4: port: must be an integer from 1 to 65535, got 70000",
        ),
        ("[[host]]\nname = 'a'\naddress = 'x'\nport = '22'\n", "inventory.toml:4: port:"),
        (
            "[[host]]\nname = 'a'\naddress = 'x'\n\nflavour = 'x'\n",
            "inventory.toml:5: host[0] (a): unknown key 'flavour'",
        ),
        ("[defaults]\nuser = 'a'\nprot = 22\n", "inventory.toml:3: unknown key 'defaults.prot'"),
        ("[hosts]\nname = 'a'\n", "inventory.toml:1: unknown key 'hosts'"),
        (
            "[defaults]\nhost_key_policy = 'yes'\n",
            "inventory.toml:2: host_key_policy: must be one of reject, accept-new",
        ),
        ("[defaults]\ntransport = 'telnet'\n", "transport: must be one of auto, stream"),
        ("[defaults]\nconnect_timeout = 0\n", "connect_timeout: must be a number of seconds > 0"),
        ("[defaults]\nbackend = 'lotus'\n", "backend: must be one of venus, damocles"),
        ("[[host]]\nname = 'a b'\naddress = 'x'\n", "inventory.toml:2: name: must be letters"),
        ("[[host]]\nname = 'gpu*'\naddress = 'x'\n", "name: must be letters"),
        ("[[host]]\nname = 'a'\naddress = 'x'\ngroups = 'gpu'\n", "groups: must be a list"),
        ("[[host]]\nname = 'a'\naddress = ''\n", "address: must be a non-empty string"),
        (
            "[[host]]\nname = 'a'\naddress = '-oProxyCommand=touch x'\n",
            "inventory.toml:3: address: must be a host name or an IP address",
        ),
        ("[[host]]\nname = 'a'\naddress = '10.0.0.1; reboot'\n", "address: must be a host"),
        ("[[host]]\nname = 'a'\naddress = 'x'\nagent = '\"'\n", "agent: must be a command"),
        ("host = 3\n", "hosts must be [[host]] tables"),
    ],
)
def test_bad_inventory_is_one_line_with_file_and_line_or_key(text, expected):
    message = inventory_error(text)
    assert message.startswith("/etc/venusctl/inventory.toml")
    assert expected in message


def test_unreadable_inventory_names_the_file(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(InventoryError, match=r"nope\.toml: cannot read inventory"):
        venusctl.load_inventory(missing)


def test_inventory_path_option_then_environment():
    environ = {"VENUSCTL_INVENTORY": "/srv/fleet.toml"}
    assert venusctl.inventory_path("x.toml", environ) == Path("x.toml")
    assert venusctl.inventory_path(None, environ) == Path("/srv/fleet.toml")


def test_shipped_inventory_is_valid_and_local():
    root = Path(__file__).resolve().parent.parent
    inventory = venusctl.load_inventory(root / "inventory.toml")
    assert inventory.names == ["local"]
    (local,) = inventory.hosts
    assert local.transport == "local"
    assert local.config == str(root / "worker_agent/assets/venus-worker.mock.toml")
    assert Path(local.config).is_file()


def test_shipped_inventory_examples_are_valid_when_uncommented():
    root = Path(__file__).resolve().parent.parent
    text = (root / "inventory.toml").read_text()
    # "# [[host]]" and "# key = value" lines are examples; the other comments are prose.
    uncommented = re.sub(r"(?m)^# (?=\[|[a-z_]+ = )", "", text)
    assert len(re.findall(r"(?m)^\[\[host\]\]", uncommented)) == 5
    inventory = venusctl.parse_inventory(uncommented, root / "inventory.toml")
    assert inventory.names == ["local", "gpu-01", "gpu-02", "cpu-01", "seal-01"]
    assert inventory.hosts[-1].backend == "damocles"
    assert inventory.hosts[-1].rpc_address == ("127.0.0.1", 17890)


# -- targets -----------------------------------------------------------------------------------


def test_target_by_name_address_or_address_port():
    inventory = parse(INVENTORY)
    assert venusctl.resolve_target(inventory, "gpu-02").name == "gpu-02"
    assert venusctl.resolve_target(inventory, "10.0.0.1").name == "gpu-01"
    assert venusctl.resolve_target(inventory, "10.0.0.1:22").name == "gpu-01"
    assert venusctl.resolve_target(inventory, "10.0.0.2:2222").name == "gpu-02"


def test_unknown_target_lists_known_names():
    inventory = parse(INVENTORY)
    with pytest.raises(UsageError) as caught:
        venusctl.resolve_target(inventory, "10.0.0.2:22")
    assert "unknown host '10.0.0.2:22'" in str(caught.value)
    assert "gpu-01, gpu-02, cpu-01, local" in str(caught.value)
    assert caught.value.exit_status == 2


def test_address_shared_by_two_hosts_is_ambiguous():
    text = "[[host]]\nname='a'\naddress='h'\nport=1\n[[host]]\nname='b'\naddress='h'\nport=2\n"
    inventory = parse(text)
    with pytest.raises(UsageError, match="matches several hosts"):
        venusctl.resolve_target(inventory, "h")
    assert venusctl.resolve_target(inventory, "h:2").name == "b"


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        (None, ["gpu-01", "gpu-02", "cpu-01", "local"]),
        (["gpu"], ["gpu-01", "gpu-02"]),
        (["rack1"], ["gpu-01"]),
        (["cpu-01,local"], ["cpu-01", "local"]),
        (["local", "gpu-0[2]"], ["gpu-02", "local"]),
        (["*-01"], ["gpu-01", "cpu-01"]),
        (["10.0.0.3"], ["cpu-01"]),
    ],
)
def test_limit_takes_names_groups_and_globs_in_inventory_order(limits, expected):
    hosts = venusctl.select_hosts(parse(INVENTORY), limits)
    assert [host.name for host in hosts] == expected


def test_limit_matching_nothing_is_a_usage_error_listing_names_and_groups():
    with pytest.raises(UsageError) as caught:
        venusctl.select_hosts(parse(INVENTORY), ["gpu,storage*"])
    assert "'storage*' matches no host" in str(caught.value)
    assert "groups: gpu, rack1" in str(caught.value)


# -- durations ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10m", 600), ("30s", 30), ("1h30m", 5400), ("1.5h", 5400), ("500ms", 0.5), ("90", 90)],
)
def test_parse_duration(text, seconds):
    assert venusctl.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "m", "10x", "10m5", "-5s", "1 h", "ten"])
def test_parse_duration_rejects_garbage(text):
    with pytest.raises(ValueError, match="invalid duration"):
        venusctl.parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (2.756922465, "2.8s"),
        (0.04, "0.0s"),
        (17, "17s"),
        (59.94, "59.9s"),
        (822, "13m42s"),
        (60, "1m0s"),
        (1212073, "336h41m13s"),
        (None, "-"),
        (-3.2, "0s"),  # clock skew: never a negative age
    ],
)
def test_format_duration(seconds, text):
    assert venusctl.format_duration(seconds) == text


# -- argv building and validation ------------------------------------------------------------


def host(**overrides) -> venusctl.Host:
    table = {"name": "h", "address": "10.0.0.9", **overrides}
    body = "\n".join(f"{key} = {json.dumps(value)}" for key, value in table.items())
    return parse("[[host]]\n" + body + "\n").hosts[0]


def test_status_pause_resume_argv():
    worker = host(agent="/opt/vw/venus-worker", config="/etc/vw.toml")
    assert venusctl.status_argv(worker) == [
        "/opt/vw/venus-worker",
        "worker",
        "-c",
        "/etc/vw.toml",
        "status",
        "--json",
    ]
    assert venusctl.pause_argv(worker, 3)[-4:] == ["pause", "--index", "3", "--json"]
    assert venusctl.resume_argv(worker, 0, None)[-4:] == ["resume", "--index", "0", "--json"]
    assert venusctl.resume_argv(worker, 1, "C1Done")[-6:] == [
        "resume",
        "--index",
        "1",
        "--state",
        "C1Done",
        "--json",
    ]


def test_inventory_values_with_shell_characters_stay_one_word_on_the_remote_shell():
    worker = host(config="/etc/venus worker/$(reboot);x.toml")
    command = shlex.join(venusctl.status_argv(worker))
    assert shlex.split(command)[3] == "/etc/venus worker/$(reboot);x.toml"


@pytest.mark.parametrize("text", ["-1", "1.5", "0;touch x", "1 2", "$(id)", "", "0x1", "１"])
def test_parse_index_refuses_anything_but_a_whole_number(text):
    with pytest.raises(ValueError, match="invalid thread index"):
        venusctl.parse_index(text)


@pytest.mark.parametrize("text", ["C1Done;touch x", "C1 Done", "$(id)", "", "`id`", "Ab-c", "É"])
def test_parse_state_refuses_anything_but_a_known_state_name(text):
    # issue 10: a known name only (was: letters and digits), so nothing else reaches an argv
    with pytest.raises(ValueError, match="(unknown|empty) state"):
        venusctl.parse_state(text)


def test_argv_builders_refuse_unchecked_values_too():
    worker = host()
    with pytest.raises(ValueError):
        venusctl.pause_argv(worker, "0; reboot")
    with pytest.raises(ValueError):
        venusctl.pause_argv(worker, -1)
    with pytest.raises(ValueError):
        venusctl.resume_argv(worker, 0, "C1Done;reboot")


def test_parse_index_and_state_accept_good_values():
    assert venusctl.parse_index("0") == 0 and venusctl.parse_index("12") == 12
    assert venusctl.parse_state("TreeDBuilt") == "TreeDBuilt"


# -- replies of the agent CLI --------------------------------------------------------------------


def test_cli_reply_exit_127_is_agent_not_installed():
    with pytest.raises(AgentNotInstalled, match="agent not installed"):
        venusctl.parse_cli_reply(CommandResult(127, "", "bash: venus-worker: command not found"))


def test_cli_reply_exit_3_without_json_is_agent_not_running():
    with pytest.raises(AgentNotRunning):
        venusctl.parse_cli_reply(CommandResult(3, "", "agent not running at /x.sock"))


def test_cli_reply_garbage_is_unreadable():
    with pytest.raises(UnreadableReply, match="unreadable reply"):
        venusctl.parse_cli_reply(CommandResult(0, "Welcome to the jungle\n{", ""))


def test_cli_action_error_document_is_the_agents_refusal():
    worker = host()
    reply = {"error": {"code": 1001, "message": "worker #0 is not paused"}}
    agent = venusctl.CliAgent(worker, lambda argv: CommandResult(1, json.dumps(reply), ""), "x")
    with pytest.raises(AgentRefused) as caught:
        agent.resume(0, None)
    assert (caught.value.code, str(caught.value)) == (1001, "worker #0 is not paused")


def test_cli_config_error_on_the_host_is_not_an_agent_refusal():
    reply = {"error": {"code": -32098, "message": "config error: /etc/vw.toml: cannot read"}}
    agent = venusctl.CliAgent(host(), lambda argv: CommandResult(2, json.dumps(reply), ""), "x")
    with pytest.raises(venusctl.HostError) as caught:
        agent.pause(0)
    assert not isinstance(caught.value, AgentRefused)
    assert caught.value.kind == "agent-config-error"
    assert str(caught.value) == "agent: config error: /etc/vw.toml: cannot read"


def test_cli_status_while_daemon_down_keeps_the_report():
    stale = report(900.5, {"Threads": 2, "Paused": 1}).to_json()
    document = {"report": stale, "threads": None, "error": {"code": -32099, "message": "x"}}
    agent = venusctl.CliAgent(host(), lambda argv: CommandResult(3, json.dumps(document), ""), "e")
    status = agent.status()
    assert status.threads is None and status.report.to_json() == stale
    assert isinstance(status.error, AgentNotRunning)


# -- tables and JSON entries ----------------------------------------------------------------------

THREADS_JSON = [
    {
        "index": 0,
        "location": "/srv/store1",
        "plan": "sealer",
        "job_id": "s-t010000-2",
        "job_state": "C1Done",
        "job_stage": "C2",
        "thread_state": {"state": "Paused", "elapsed": 822, "proc": None},
        "state_elapsed": 900,
        "last_error": "permanent: No cached parameters found",
    },
    {
        "index": 1,
        "location": "/srv/store2",
        "plan": "snapup",
        "job_id": None,
        "job_state": "",
        "job_stage": None,
        "thread_state": {"state": "Idle", "elapsed": None, "proc": None},
        "state_elapsed": None,
        "last_error": None,
    },
    {
        "index": 2,
        "location": "/srv/store3",
        "plan": "sealer",
        "job_id": "s-t010000-5",
        "job_state": "PC1Done",
        "job_stage": "PC2",
        "thread_state": {"state": "Running", "elapsed": 63, "proc": "mock"},
        "state_elapsed": 63,
        "last_error": None,
    },
]
THREADS = [api.WorkerInfo.from_json(thread) for thread in THREADS_JSON]


def test_info_table_has_the_seeds_columns():
    headers, rows = venusctl.info_table(THREADS, wide=False)
    assert headers == ["Index", "Loc", "SectorID", "Paused", "PausedElapsed", "State", "LastErr"]
    assert rows[0] == [
        "0",
        "/srv/store1",
        "s-t010000-2",
        "true",
        "13m42s",
        "C1Done",
        "permanent: No cached parameters found",
    ]
    assert rows[1] == ["1", "/srv/store2", "-", "false", "-", "-", "-"]


def test_info_wide_adds_plan_stage_and_thread_state():
    headers, rows = venusctl.info_table(THREADS, wide=True)
    assert headers[-4:] == ["Plan", "Stage", "ThreadState", "LastErr"]
    assert rows[0][-4:-1] == ["sealer", "C2", "Paused(13m42s)"]
    assert rows[1][-4:-1] == ["snapup", "-", "Idle"]
    assert rows[2][-4:-1] == ["sealer", "PC2", "Running(1m3s) mock"]


def test_list_entry_counts_live_threads_and_flags_expired_pings():
    worker = host()
    entry = venusctl.list_entry(worker, HostStatus(report(700.0), THREADS, via="stream"), 600)
    assert entry["summary"] == {
        "Threads": 3,
        "Empty": 1,
        "Paused": 1,
        "Running": 1,
        "Waiting": 0,
        "Errors": 1,
    }
    assert entry["expired"] is True and entry["last_ping"] == 700.0 and entry["error"] is None
    headers, rows = venusctl.list_table([entry], wide=False)
    assert headers == ["Name", "Dest", "Threads", "Empty", "Paused", "Errors", "LastPing"]
    assert rows == [["h", "10.0.0.9:22", "3", "1", "1", "1", "11m40s!"]]


def test_list_row_of_a_dead_agent_uses_the_stale_report():
    stale = report(5.25, dict.fromkeys(api.SUMMARY_KEYS, 2))
    status = HostStatus(stale, None, AgentNotRunning("agent not running"), via="exec")
    entry = venusctl.list_entry(host(), status, 600)
    assert entry["error"] == {"kind": "agent-not-running", "message": "agent not running"}
    headers, rows = venusctl.list_table([entry], wide=True)
    assert headers[-1] == "Error"
    # Jump "-": reached directly; issue 10: Queued is unknown without the live thread list
    row = ["-", "0.1.0", "2", "2", "2", "-", "2", "2", "2", "5.2s", "agent not running"]
    assert rows[0][2:] == row


def test_list_row_of_an_unreachable_host_has_only_its_reason():
    entry = venusctl.list_entry(host(), venusctl.ConnectionRefused("connection refused"), 600)
    headers, rows = venusctl.list_table([entry], wide=False)
    assert rows == [["h", "10.0.0.9:22", "-", "-", "-", "-", "-", "connection refused"]]
    assert entry["error"]["kind"] == "connection-refused"


def test_render_table_is_left_aligned_two_spaces_apart():
    text = venusctl.render_table(["Name", "Threads"], [["local", "3"], ["a-much-longer", "12"]])
    assert text.splitlines() == [
        "Name           Threads",
        "local          3",
        "a-much-longer  12",
    ]


def test_fan_out_keeps_every_hosts_result_or_exception():
    hosts = parse(INVENTORY).hosts

    def job(worker):
        if worker.name == "cpu-01":
            raise venusctl.HostTimeout("timeout after 5s (connect)")
        return worker.name.upper()

    results = venusctl.fan_out(hosts, job, forks=2)
    assert list(results) == ["gpu-01", "gpu-02", "cpu-01", "local"]
    assert results["gpu-01"] == "GPU-01"
    assert isinstance(results["cpu-01"], venusctl.HostTimeout)


def test_fan_out_is_a_group_result_split_in_inventory_order():
    hosts = parse(INVENTORY).hosts

    def job(worker):
        if worker.name in ("gpu-02", "local"):
            raise venusctl.ConnectionRefused("connection refused")
        return worker.name

    results = venusctl.fan_out(hosts, job, forks=4)
    assert isinstance(results, venusctl.GroupResult)
    assert results.succeeded == {"gpu-01": "gpu-01", "cpu-01": "cpu-01"}
    assert list(results.failed) == ["gpu-02", "local"]
    assert all(isinstance(e, venusctl.ConnectionRefused) for e in results.failed.values())


def test_fan_out_runs_at_most_forks_hosts_at_once():
    hosts = parse("".join(f"[[host]]\nname = 'h{n}'\naddress = 'x{n}'\n" for n in range(8))).hosts
    lock = threading.Lock()
    running, peak = 0, 0

    def job(worker):
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        return worker.name

    results = venusctl.fan_out(hosts, job, forks=3)
    assert list(results.values()) == [f"h{n}" for n in range(8)]
    assert peak == 3


# -- JSON-RPC over a byte stream (a real socket pair; the far end is scripted) -------------------


def scripted_peer(replies: list[bytes]):
    """A socket pair whose far end answers each request with the next canned bytes."""
    near, far = socket.socketpair()
    requests: list[bytes] = []

    def serve():
        with far:
            for reply in replies:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += far.recv(65536)
                head, body = data.split(b"\r\n\r\n", 1)
                length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
                while len(body) < length:
                    body += far.recv(65536)
                requests.append(body)
                for piece in (reply[:7], reply[7:30], reply[30:]):  # split reads on purpose
                    try:
                        far.sendall(piece)
                    except (BrokenPipeError, ConnectionResetError):
                        return  # the client gave up on a bad reply before its end: fine
                    time.sleep(0.01)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return near, requests


def http_reply(document: object, status: str = "200 OK") -> bytes:
    body = json.dumps(document).encode()
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
    return head.encode() + b"\r\n\r\n" + body


def test_json_rpc_batch_and_keep_alive_over_one_connection():
    batch = [
        {"jsonrpc": "2.0", "id": 2, "result": {"age": 1.5}},
        {"jsonrpc": "2.0", "id": 1, "result": [{"index": 0}]},
    ]
    refusal = {"jsonrpc": "2.0", "id": 3, "error": {"code": 1001, "message": "not paused"}}
    near, requests = scripted_peer([http_reply(batch), http_reply(refusal)])
    client = venusctl.JsonRpcClient(near, timeout=5)
    # replies are matched by id, whatever their order in the batch
    assert client.batch([("VenusWorker.WorkerList", []), ("VenusWorker.WorkerReport", [])]) == [
        [{"index": 0}],
        {"age": 1.5},
    ]
    with pytest.raises(AgentRefused) as caught:
        client.call("VenusWorker.WorkerResume", [0, None])
    assert (caught.value.code, str(caught.value)) == (1001, "not paused")
    sent = [json.loads(body) for body in requests]
    assert [request["method"] for request in sent[0]] == [
        "VenusWorker.WorkerList",
        "VenusWorker.WorkerReport",
    ]
    # a single call is a plain request object, as curl would send it
    assert sent[1] == {
        "jsonrpc": "2.0",
        "id": 3,
        "method": "VenusWorker.WorkerResume",
        "params": [0, None],
    }
    client.close()


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (
            http_reply({"x": 1}, status="405 Method Not Allowed"),
            "answered HTTP 405, method not allowed (POST required)",
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", "unreadable reply: b'hello'"),
        (b"HTTP/1.1 200 OK\r\n\r\n[]", "bad Content-Length ''"),
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "unreadable reply: 'SSH-2.0-OpenSSH_9.2'"),
        (http_reply({"jsonrpc": "2.0", "id": 1, "result": True}), "expected a batch reply"),
    ],
)
def test_json_rpc_replies_that_break_the_contract_are_unreadable(reply, message):
    near, _ = scripted_peer([reply])
    client = venusctl.JsonRpcClient(near, timeout=5)
    with pytest.raises(UnreadableReply) as caught:
        client.batch([("VenusWorker.WorkerList", [])])
    assert message in str(caught.value)
    client.close()


def test_json_rpc_peer_that_never_answers_is_a_timeout():
    near, far = socket.socketpair()
    client = venusctl.JsonRpcClient(near, timeout=0.2)
    with pytest.raises(venusctl.HostTimeout, match=r"timeout after 0.2s \(waiting for the agent\)"):
        client.call("VenusWorker.WorkerList", [])
    client.close()
    far.close()


def test_the_ssh_socket_has_tcp_nodelay():
    """paramiko never sets it; without it each round trip stalls ~40 ms on loopback."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        sock = venusctl.connect_tcp("127.0.0.1", listener.getsockname()[1], timeout=2)
        with sock:
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            assert sock.gettimeout() == 2


@pytest.mark.parametrize(
    "threads",
    [{"index": 0}, [1, 2], [{"index": 0, "thread_state": "Paused"}], "[]"],
)
def test_thread_lists_of_the_wrong_shape_are_unreadable(threads):
    with pytest.raises(UnreadableReply):
        venusctl.checked_threads(threads)


@pytest.mark.parametrize(
    ("command", "explains"),
    [("list", "LastPing is the age of the host's last heartbeat"), ("info", "Index, Loc")],
)
def test_command_help_says_what_the_rows_are(capsys, command, explains):
    assert venusctl.main([command, "--help"]) == 0
    assert explains in " ".join(capsys.readouterr().out.split())


# -- venusctl inventory (no connection) ------------------------------------------------------------


def test_ansible_inventory_has_groups_and_how_to_reach_each_host():
    text = INVENTORY.replace("[defaults]\n", '[defaults]\nknown_hosts = "/etc/venusctl/kh"\n')
    text += '\n[[host]]\nname = "tofu"\naddress = "10.0.0.7"\nhost_key_policy = "accept-new"\n'
    text += 'ssh_config = "/dev/null"\n'
    document = venusctl.ansible_inventory(parse(text))
    assert sorted(document) == ["_meta", "gpu", "rack1", "ungrouped"]
    assert document["gpu"] == {"hosts": ["gpu-01", "gpu-02"]}
    assert document["ungrouped"] == {"hosts": ["cpu-01", "local", "tofu"]}
    hostvars = document["_meta"]["hostvars"]
    assert hostvars["gpu-02"] == {
        "ansible_host": "10.0.0.2",
        "ansible_port": 2222,
        "ansible_user": "sealer",
        "ansible_ssh_private_key_file": "/etc/venusctl/keys/fleet",
        "ansible_ssh_common_args": hostvars["gpu-02"]["ansible_ssh_common_args"],
        "ansible_ssh_timeout": 3,  # connect_timeout, whole seconds
        "venus_worker_config": "/etc/venus-worker/venus-worker.toml",
        "venus_worker_socket": "/run/venus-worker/venus-worker.sock",
    }
    assert "ansible_port" not in hostvars["gpu-01"]  # left to ~/.ssh/config, like venusctl
    # only what the inventory sets: StrictHostKeyChecking is left to ssh_config, like venusctl
    assert hostvars["gpu-01"]["ansible_ssh_common_args"] == "-o UserKnownHostsFile=/etc/venusctl/kh"
    assert hostvars["tofu"]["ansible_ssh_common_args"] == (
        "-F /dev/null -o UserKnownHostsFile=/etc/venusctl/kh -o StrictHostKeyChecking=accept-new"
    )
    assert hostvars["local"]["ansible_connection"] == "local"
    assert hostvars["cpu-01"]["venus_worker_bin"] == "/opt/venus/bin/venus-worker"


def test_inventory_command_lists_hosts_without_connecting(tmp_path, capsys):
    path = tmp_path / "inventory.toml"
    path.write_text(INVENTORY)
    assert venusctl.main(["-i", str(path), "inventory"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # first which file was read, and by which rule
    assert lines[0] == f"inventory: {path} (given by -i)"
    assert lines[1].split() == ["Name", "Dest", "User", "Transport", "Groups"]
    assert lines[2].split() == ["gpu-01", "10.0.0.1:22", "sealer", "auto", "gpu,rack1"]
    # common options go before or after the command name
    assert venusctl.main(["--json", "-i", str(path), "inventory"]) == 0
    hosts = json.loads(capsys.readouterr().out)["hosts"]
    assert hosts[1]["port"] == 2222 and hosts[1]["dest"] == "10.0.0.2:2222"
    assert hosts[3]["socket"] == str(tmp_path / "mock-tmp/venus-worker.sock")


def test_main_runs_in_the_environment_it_is_given(tmp_path, capsys):
    """Streams, $VENUSCTL_INVENTORY, the clocks and sleep come from `env`, not the process."""
    path = tmp_path / "inventory.toml"
    port = free_port()  # nothing listens there: the host's row is "connection refused"
    path.write_text(f'[[host]]\nname = "w1"\naddress = "127.0.0.1"\nport = {port}\n')
    out, err, slept = io.StringIO(), io.StringIO(), []
    env = venusctl.Environment(
        stdout=out,
        stderr=err,
        environ={"VENUSCTL_INVENTORY": str(path)},
        now=lambda: 1764282000.25,
        sleep=slept.append,
    )
    assert venusctl.main(["inventory"], env) == 0
    assert out.getvalue().splitlines()[0] == f"inventory: {path} (given by $VENUSCTL_INVENTORY)"
    assert out.getvalue().splitlines()[2].split()[:2] == ["w1", f"127.0.0.1:{port}"]
    out.truncate(0), out.seek(0)
    assert venusctl.main(["list", "--watch", "5", "--count", "2", "--json"], env) == 1
    frames = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [frame["time"] for frame in frames] == [1764282000.25, 1764282000.25]
    assert frames[0]["hosts"][0]["error"]["kind"] == "connection-refused"
    assert len(slept) == 1 and 4 < slept[0] <= 5  # between the two frames, none after
    assert venusctl.main(["list", "--bogus"], env) == 2
    assert err.getvalue().startswith("venusctl: unrecognized arguments: --bogus")
    out.truncate(0), out.seek(0)
    assert venusctl.main(["health", "--deadline", "0s"], env) == 3
    assert out.getvalue().startswith("VENUS UNKNOWN - argument --deadline")
    assert venusctl.main(["--help"], env) == 0
    assert "commands:" in out.getvalue()
    assert capsys.readouterr() == ("", "")  # nothing reached the process's own streams


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_all_names_every_public_name_the_tests_use():
    """venusctl.__all__ is the public surface the tests use (issue 11 point 5): a name a
    test reaches as venusctl.NAME is listed, and every listed name exists."""
    tests = Path(__file__).parent
    used = set()
    for path in tests.glob("*.py"):
        used |= set(re.findall(r"\bvenusctl\.([A-Za-z]\w*)\b(?!\.py)", path.read_text()))
    modules = {"api", "Path"}  # imported modules and types, not venusctl's own
    public = {name for name in used if hasattr(venusctl, name)} - modules
    assert sorted(public - set(venusctl.__all__)) == []
    assert [name for name in venusctl.__all__ if not hasattr(venusctl, name)] == []
    assert len(venusctl.__all__) == len(set(venusctl.__all__))


def test_only_a_process_of_venusctls_own_collects_less_often(capsys):
    """main() called by another program leaves that program's collector as it was; run as
    the console script (main() on sys.argv), venusctl collects its young objects every
    GC_YOUNG_THRESHOLD allocations, after freezing what its imports made."""
    threshold, frozen = gc.get_threshold(), gc.get_freeze_count()
    assert venusctl.main(["--version"]) == 0
    assert (gc.get_threshold(), gc.get_freeze_count()) == (threshold, frozen)
    capsys.readouterr()
    script = (
        "import gc, sys, venusctl; sys.argv[1:] = ['--version']; status = venusctl.main();"
        " print(status, gc.get_threshold()[0], gc.get_freeze_count() > 0)"
    )
    root = Path(venusctl.__file__).parent
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=60
    )
    assert done.stdout.splitlines()[-1] == f"0 {venusctl.GC_YOUNG_THRESHOLD} True", done.stderr
