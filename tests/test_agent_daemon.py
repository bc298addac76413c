"""A real daemon process on a real Unix socket: API, HTTP edge cases, CLI, lifecycle."""

from __future__ import annotations

import ctypes
import email.utils
import grp
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

import pytest
from agent_helpers import (
    SEED_MESSAGE,
    Agent,
    cli,
    cli_json,
    one_response,
    post,
    process_alive,
    raw_http,
    running_agent,
    seed_fault,
    short_tmp,
    voluntary_switches,
    wait_until,
    write_config,
)

from worker_agent import daemon as daemon_module
from worker_agent.client import AgentClient
from worker_agent.config import load_config
from worker_agent.daemon import Daemon
from worker_agent.protocol import RpcError

pytestmark = pytest.mark.e2e

# Threads 0 and 1 pause at C1Done on the seed's C2 error; thread 2 (unseal, one task
# per hour) is never paused, for the "not paused" cases.
SHARED_CONFIG = dict(
    threads=2,
    faults=seed_fault() + "threads = [0, 1]\n",
    worker='ping_interval = "200ms"\nrequest_timeout = "1s"',
)
UNSEAL_THREAD = (
    '[[sealing_thread]]\nlocation = "store2"\nplan = "unseal"\nsealing.seal_interval = "1h"\n'
)


@pytest.fixture(scope="module")
def agent():
    with short_tmp() as folder:
        config = write_config(folder, **SHARED_CONFIG)
        text = config.read_text().replace("[processors]", UNSEAL_THREAD + "[processors]")
        config.write_text(text)
        with running_agent(config) as running:
            running.wait_for(
                lambda infos: (
                    [i["job_state"] for i in infos[:2]] == ["C1Done", "C1Done"]
                    and all(i["thread_state"]["state"] == "Paused" for i in infos[:2])
                ),
                what="threads 0 and 1 paused at C1Done",
            )
            yield running


def rpc(agent: Agent, body: bytes) -> tuple[int, dict | list | None]:
    status, payload = one_response(agent.socket, post(body))
    return status, json.loads(payload) if payload else None


# ---------------------------------------------------------------- API


def test_list_shows_the_seed_lines(agent):
    status, out, _ = cli("worker", "--socket", str(agent.socket), "list")
    lines = out.splitlines()
    assert status == 0 and len(lines) == 3
    for index in (0, 1):
        assert lines[index].startswith(
            f'#{index}: "{agent.folder}/store{index}"; sector_id=Some(s-t010000-'
        )
        assert ", paused=true, paused_elapsed=Some(" in lines[index]
        assert lines[index].endswith(f', state=C1Done, last_err=Some("permanent: {SEED_MESSAGE}")')
    assert ", paused=false, paused_elapsed=None, " in lines[2] and lines[2].endswith(
        "last_err=None"
    )


def test_list_json_is_worker_info(agent):
    status, infos = cli_json("worker", "--socket", str(agent.socket), "list")
    assert status == 0
    first = infos[0]
    assert set(first) == {
        "index", "location", "plan", "job_id", "job_state", "job_stage", "thread_state",
        "state_elapsed", "last_error", "pause_requested", "auto_resumes",
    }  # fmt: skip
    assert first["auto_resumes"] == 0  # no [[sealing.auto_resume]] rule in this config
    assert (first["plan"], first["job_state"], first["job_stage"]) == ("sealer", "C1Done", "C2")
    assert first["thread_state"]["state"] == "Paused" and first["thread_state"]["proc"] is None
    assert isinstance(first["thread_state"]["elapsed"], int)
    assert first["last_error"] == f"permanent: {SEED_MESSAGE}"
    assert infos[2]["plan"] == "unseal" and infos[2]["last_error"] is None


def test_pause_is_idempotent_on_a_paused_thread(agent):
    before = agent.infos()[0]
    assert cli("worker", "--socket", str(agent.socket), "pause", "--index", "0")[:2] == (
        0,
        "#0 worker pause done=true\n",
    )
    assert cli_json("worker", "--socket", str(agent.socket), "pause", "-i", "0") == (0, True)
    after = agent.infos()[0]
    assert after["last_error"] == before["last_error"] and after["job_state"] == "C1Done"


def test_resume_of_a_thread_that_is_not_paused_is_error_1001(agent):
    status, reply = cli_json("worker", "--socket", str(agent.socket), "resume", "--index", "2")
    assert status == 1
    assert reply == {"error": {"code": 1001, "message": "worker #2 is not paused"}}


def test_resume_with_a_bad_state_lists_the_valid_ones(agent):
    status, out, err = cli(
        "worker", "--socket", str(agent.socket), "resume", "-i", "0", "-s", "PC9"
    )
    assert status == 1 and out == ""
    assert 'invalid state "PC9" for plan sealer; valid states: Empty, Allocated,' in err
    status, reply = cli_json("worker", "--socket", str(agent.socket), "resume", "-i", "0",
                             "--state", "PC9")  # fmt: skip
    assert status == 1 and reply["error"]["code"] == -32602
    assert reply["error"]["message"].endswith("C1Done, C2Done, ProofSubmitted, Finished, Aborted")
    assert agent.infos()[0]["thread_state"]["state"] == "Paused"


def test_bad_index(agent):
    status, reply = cli_json("worker", "--socket", str(agent.socket), "pause", "--index", "9")
    assert status == 1 and reply["error"] == {"code": -32602, "message": "worker #9 not found"}


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", -32700),
        (b'{"jsonrpc":"2.0","id":1,"method":"VenusWorker.Nope","params":[]}', -32601),
        (b'{"jsonrpc":"1.0","id":1,"method":"VenusWorker.WorkerList"}', -32600),
        (b'"just a string"', -32600),
        (b"[]", -32600),
        (b'{"jsonrpc":"2.0","id":1,"method":"VenusWorker.WorkerList","params":[1]}', -32602),
        (b'{"jsonrpc":"2.0","id":1,"method":"VenusWorker.WorkerPause","params":["0"]}', -32602),
        (b'{"jsonrpc":"2.0","id":1,"method":"VenusWorker.WorkerPause","params":{"i":0}}', -32602),
        (b'{"jsonrpc":"2.0","id":1,"method":"VenusWorker.WorkerResume","params":[0,5]}', -32602),
        (b'{"jsonrpc":"2.0","id":1,"method":"VenusWorker.WorkerPause","params":[true]}', -32602),
    ],
)
def test_bad_requests_get_json_rpc_errors_and_the_daemon_keeps_serving(agent, body, code):
    status, reply = rpc(agent, body)
    assert status == 200 and reply["error"]["code"] == code and reply["jsonrpc"] == "2.0"
    assert agent.call("WorkerVersion") == "0.1.0"


def test_batch_and_notifications(agent):
    batch = [
        {"jsonrpc": "2.0", "id": "a", "method": "VenusWorker.WorkerVersion"},
        {"jsonrpc": "2.0", "method": "VenusWorker.WorkerPause", "params": [0]},
        {"jsonrpc": "2.0", "id": 7, "method": "VenusWorker.Missing", "params": []},
    ]
    status, replies = rpc(agent, json.dumps(batch).encode())
    assert status == 200
    assert [r["id"] for r in replies] == ["a", 7]
    assert replies[0]["result"] == "0.1.0" and replies[1]["error"]["code"] == -32601
    only_notifications = json.dumps(batch[1:2]).encode()
    assert rpc(agent, only_notifications) == (204, None)


def test_http_edges(agent):
    assert raw_http(agent.socket, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 405")
    no_length = b"POST / HTTP/1.1\r\nHost: x\r\n\r\n"
    assert raw_http(agent.socket, no_length).startswith(b"HTTP/1.1 411")
    assert raw_http(agent.socket, b"\x16\x03\x01garbage\r\n\r\n").startswith(b"HTTP/1.1 400")


def test_header_lines_are_read_strictly_and_the_daemon_keeps_serving(agent):
    """The agent reads headers itself: `Name: value` in any case, the first of a repeated
    name; a line that is not a header, obsolete folding, too many or too long lines, a
    version other than HTTP/1.x: an error reply, never a guess."""
    body = b'{"jsonrpc":"2.0","id":1,"method":"VenusWorker.WorkerVersion"}'
    plain = b"POST / HTTP/1.1\r\ncontent-LENGTH:   %d  \r\nX-A: 1\r\nX-A: 2\r\n\r\n" % len(body)
    status, reply = one_response(agent.socket, plain + body)
    assert status == 200 and json.loads(reply)["result"] == "0.1.0"
    # the first Content-Length counts: the second (a smuggling attempt) is not the length
    twice = b"POST / HTTP/1.1\r\nContent-Length: %d\r\nContent-Length: 5\r\n\r\n" % len(body)
    assert one_response(agent.socket, twice + body)[0] == 200
    head = b"POST / HTTP/1.1\r\nContent-Length: %d\r\n" % len(body)
    refused = {
        b"Bad header line": [head + b"no colon here\r\n\r\n", head + b" folded: x\r\n\r\n",
                             head + b"Space : x\r\n\r\n", head + b": no name\r\n\r\n"],
        b"Too many headers": [head + b"X: y\r\n" * 101 + b"\r\n"],
        b"Line too long": [head + b"X: " + b"y" * 65536 + b"\r\n\r\n"],
        b"Bad request version": [b"POST / HTTP/1.x\r\n\r\n", b"POST / HTTP/1.\xb2\r\n\r\n"],
        b"Invalid HTTP version": [b"POST / HTTP/2.0\r\n\r\n", b"POST / HTTP/0.9\r\n\r\n"],
    }  # fmt: skip
    codes = {b"Bad header line": b"400", b"Too many headers": b"431", b"Line too long": b"431",
             b"Bad request version": b"400", b"Invalid HTTP version": b"505"}  # fmt: skip
    for message, requests in refused.items():
        for request in requests:
            answer = raw_http(agent.socket, request + body)
            expected = b"400" if request.startswith(b"POST / HTTP/0.9") else codes[message]
            assert answer.startswith(b"HTTP/1.1 " + expected), (request[:60], answer[:80])
            assert message in answer and b"Connection: close" in answer
    # HTTP/1.0 closes after its reply unless it asks for keep-alive; Expect gets its 100
    once = b"POST / HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % len(body)
    assert raw_http(agent.socket, once + body + once + body).count(b" 200 OK") == 1
    kept = once.replace(b"\r\n\r\n", b"\r\nConnection: keep-alive\r\n\r\n")
    assert raw_http(agent.socket, kept + body + once + body, timeout=2).count(b" 200 OK") == 2
    expect = head + b"Expect: 100-continue\r\n\r\n"
    assert raw_http(agent.socket, expect + body, timeout=2).startswith(b"HTTP/1.1 100 Continue")
    assert agent.call("WorkerVersion") == "0.1.0"


def test_a_replys_date_field_is_the_time_it_was_sent(agent):
    """The Date field (RFC 9110) is formatted once a second: it is still this second's,
    and the next second's reply has the next second."""
    body = b'{"jsonrpc":"2.0","id":1,"method":"VenusWorker.WorkerVersion"}'

    def date_of_a_reply() -> float:
        head = raw_http(agent.socket, post(body, "Connection: close\r\n")).split(b"\r\n\r\n")[0]
        (field,) = [line for line in head.split(b"\r\n") if line.lower().startswith(b"date:")]
        sent = email.utils.parsedate_to_datetime(field.split(b":", 1)[1].strip().decode())
        assert sent.tzinfo is not None and field.endswith(b" GMT")
        return sent.timestamp()

    for _ in range(3):
        before = math.floor(time.time())
        sent = date_of_a_reply()
        assert before <= sent <= time.time()
        time.sleep(0.6)


def test_a_body_over_1_mib_is_refused_without_being_read(agent):
    head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % ((1 << 20) + 1)
    reply = raw_http(agent.socket, head + b"[" * 4096)
    assert reply.startswith(b"HTTP/1.1 413") and b"Connection: close" in reply
    at_limit = b'{"jsonrpc":"2.0","id":1,"method":"VenusWorker.WorkerVersion"}'
    at_limit += b" " * ((1 << 20) - len(at_limit))
    status, body = rpc(agent, at_limit)
    assert status == 200 and body["result"] == "0.1.0"


def test_keep_alive_serves_many_requests_on_one_connection(agent):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(agent.socket))
        body = b'{"jsonrpc":"2.0","id":1,"method":"VenusWorker.WorkerVersion"}'
        sock.sendall(post(body) * 3)
        received = b""
        while received.count(b'"result":"0.1.0"') < 3:
            chunk = sock.recv(65536)
            assert chunk, "connection closed early"
            received += chunk
        assert received.count(b"HTTP/1.1 200") == 3


def one_reply(sock: socket.socket) -> bytes:
    """Read one whole reply off a keep-alive connection (it may come in more than one piece)."""
    received = b""
    while b"\r\n\r\n" not in received or not received.endswith(b"}"):
        chunk = sock.recv(65536)
        assert chunk, f"closed mid-reply: {received!r}"
        received += chunk
    return received


def test_a_reply_is_one_send_header_and_body(agent):
    # One send: one SSH packet through sshd's stream channel, one read for the client.
    request = post(b'{"jsonrpc":"2.0","id":1,"method":"VenusWorker.WorkerList","params":[]}')
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(agent.socket))
        for _ in range(200):
            sock.sendall(request)
            first = sock.recv(1 << 20)
            head, _, body = first.partition(b"\r\n\r\n")
            length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
            assert len(body) == length, f"the reply came in pieces: {first[:200]!r}"


def test_an_answered_connection_waits_idle_timeout_a_new_one_request_timeout():
    worker = 'request_timeout = "1s"\nidle_timeout = "3s"'
    version = post(b'{"jsonrpc":"2.0","id":1,"method":"VenusWorker.WorkerVersion"}')
    with (
        short_tmp() as folder,
        running_agent(write_config(folder, threads=1, worker=worker)) as agent,
        socket.socket(socket.AF_UNIX) as kept,
        socket.socket(socket.AF_UNIX) as silent,
    ):
        kept.settimeout(10)
        silent.settimeout(10)
        silent.connect(str(agent.socket))
        kept.connect(str(agent.socket))
        kept.sendall(version)
        assert b'"result":"0.1.0"' in one_reply(kept)
        started = time.monotonic()
        assert silent.recv(100) == b""  # never asked: closed at request_timeout
        assert 0.8 < time.monotonic() - started < 2.5
        time.sleep(1.0)  # the kept one now waits longer than request_timeout...
        kept.sendall(version)
        assert b'"result":"0.1.0"' in one_reply(kept)  # ...and is answered
        answered = time.monotonic()
        assert kept.recv(100) == b""  # and is closed once idle for idle_timeout
        assert 2.5 < time.monotonic() - answered < 5


def test_a_stalled_half_request_is_closed_while_others_are_served(agent):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stalled:
        stalled.connect(str(agent.socket))
        stalled.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Len")  # ...and nothing more
        started = time.monotonic()
        for _ in range(5):  # meanwhile other clients are served promptly
            t0 = time.monotonic()
            assert agent.call("WorkerVersion") == "0.1.0"
            assert time.monotonic() - t0 < 1.0
        stalled.settimeout(5)
        assert stalled.recv(100) == b""  # the server hung up (request_timeout = 1s)
        assert 0.8 < time.monotonic() - started < 4


def test_a_stalled_body_is_closed_too(agent):
    head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"
    started = time.monotonic()
    assert raw_http(agent.socket, head, timeout=5) == b""
    assert time.monotonic() - started < 4


def test_curl_works_as_a_client(agent):
    # Not skipped without curl: the README shows curl, and scripts/test.sh installs it.
    assert shutil.which("curl"), "curl is missing (scripts/test.sh installs it)"
    request = '{"jsonrpc":"2.0","id":1,"method":"VenusWorker.WorkerList","params":[]}'
    result = subprocess.run(
        ["curl", "-sS", "--unix-socket", str(agent.socket), "-d", request, "http://localhost/"],
        capture_output=True,
        timeout=20,
        check=True,
    )
    reply = json.loads(result.stdout)
    assert reply["id"] == 1 and [i["index"] for i in reply["result"]] == [0, 1, 2]


def test_socket_is_mode_0600(agent):
    mode = os.lstat(agent.socket).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _proc_net_inodes(name: str) -> set[int]:
    try:
        with open(f"/proc/net/{name}") as table:
            lines = table.read().splitlines()[1:]
    except FileNotFoundError:
        return set()
    column = 9 if name != "unix" else 6
    return {int(line.split()[column]) for line in lines if len(line.split()) > column}


def test_no_tcp_or_udp_socket_is_open(agent):
    with AgentClient(agent.socket) as client:  # hold a connection so the daemon has >1 socket
        client.call("VenusWorker.WorkerVersion")
        inodes = _socket_inodes(agent.proc.pid)
    assert inodes & _proc_net_inodes("unix"), "the inode check does not see the unix socket"
    for table in ("tcp", "tcp6", "udp", "udp6", "raw", "raw6"):
        assert not inodes & _proc_net_inodes(table), f"daemon has a {table} socket"


def test_heartbeat_report_is_rewritten_every_ping_interval(agent):
    path = agent.state_dir / "report.json"
    first = json.loads(path.read_text())
    wait_until(lambda: json.loads(path.read_text())["time"] > first["time"], 5, what="new report")
    report = json.loads(path.read_text())
    assert report["name"] == "test-worker" and report["pid"] == agent.proc.pid
    summary = report["summary"]
    assert (summary["Threads"], summary["Paused"], summary["Errors"]) == (3, 2, 2)
    assert set(summary) == {"Threads", "Empty", "Paused", "Running", "Waiting", "Errors"}
    assert report["schema"] == 1 and report["ping_interval"] == 0.2
    via_rpc = agent.call("WorkerReport")
    assert 0 <= via_rpc["age"] < 5 and via_rpc["summary"]["Threads"] == 3


def test_status_json_has_report_threads_and_no_error(agent):
    status, document = cli_json("worker", "--socket", str(agent.socket),
                                "--state-dir", str(agent.state_dir), "status")  # fmt: skip
    assert status == 0 and document["error"] is None
    assert document["report"]["summary"]["Threads"] == 3 and document["report"]["age"] >= 0
    assert len(document["threads"]) == 3


# ---------------------------------------------------------------- behaviour, own daemons


def test_pause_mid_stage_keeps_the_stages_result_and_resume_continues():
    with short_tmp() as folder:
        config = write_config(
            folder, threads=1, mock='duration = "10ms"\ndurations = { PC1 = "1500ms" }'
        )
        with running_agent(config) as agent:
            running = agent.wait_for(
                lambda i: i[0]["job_stage"] == "PC1" and i[0]["thread_state"]["state"] == "Running",
                what="PC1 running",
            )[0]
            assert running["thread_state"]["proc"] == "mock"
            assert agent.call("WorkerPause", 0) is True
            agent.wait_for(lambda i: i[0]["thread_state"]["state"] == "Paused", what="paused")
            paused = agent.infos()[0]
            assert paused["job_state"] == "PC1Done" and paused["last_error"] is None
            record = json.loads((folder / "store0/meta/task.json").read_text())
            assert record["paused"] is True and record["task"]["state"] == "PC1Done"
            assert (folder / f"store0/data/{paused['job_id']}.PC1").exists()
            assert cli("worker", "-c", str(config), "resume", "-i", "0")[0] == 0
            agent.wait_for(lambda i: i[0]["job_state"] not in ("PC1Done",), what="moved on")


def test_pause_interrupts_a_chain_wait_at_once():
    with short_tmp() as folder:
        config = write_config(folder, threads=1, mock='duration = "10ms"\nwait_duration = "1h"')
        with running_agent(config) as agent:
            waiting = agent.wait_for(
                lambda i: (
                    i[0]["job_stage"] == "WaitPCLanded" and i[0]["thread_state"]["state"] != "Idle"
                ),
                what="waiting",
            )[0]
            assert waiting["thread_state"]["state"] == "Waiting"
            assert (
                waiting["thread_state"]["proc"] is None and waiting["thread_state"]["elapsed"] < 5
            )
            started = time.monotonic()
            agent.call("WorkerPause", 0)
            agent.wait_for(lambda i: i[0]["thread_state"]["state"] == "Paused", 10, "paused")
            assert time.monotonic() - started < 3  # the wait was one hour
            assert agent.infos()[0]["job_state"] == "PCSubmitted"


def test_resume_to_aborted_drops_the_task_and_its_data():
    with short_tmp() as folder:
        config = write_config(folder, threads=1, faults=seed_fault())
        with running_agent(config) as agent:
            agent.wait_for(lambda i: i[0]["last_error"] is not None, what="C2 failure")
            assert agent.infos()[0]["job_id"] == "s-t010000-1"
            assert any((folder / "store0/data").iterdir())
            status, out, _ = cli(
                "worker", "-c", str(config), "resume", "-i", "0", "--state", "Aborted"
            )
            assert (status, out) == (0, "#0 worker resume done=true\n")
            agent.wait_for(lambda i: i[0]["job_id"] == "s-t010000-2", what="next sector")
            leftovers = [p.name for p in (folder / "store0/data").iterdir()]
            assert not [name for name in leftovers if name.startswith("s-t010000-1.")]


def test_paused_threads_stay_paused_across_a_kill_and_restart():
    with short_tmp() as folder:
        config = write_config(folder, threads=2, faults=seed_fault() + "threads = [0]\n")
        agent = Agent(config).start()
        try:
            agent.wait_for(lambda i: i[0]["last_error"] is not None, what="thread 0 paused")
            agent.call("WorkerPause", 1)
            agent.wait_for(lambda i: i[1]["thread_state"]["state"] == "Paused", what="1 paused")
            before = agent.infos()
            agent.kill()
            assert agent.socket.exists()  # SIGKILL leaves the socket file: nobody answers on it
            status, out, err = cli("worker", "-c", str(config), "list")
            assert (status, out) == (3, "") and "agent not running at" in err
            agent.start()
            after = agent.infos()
            for old, new in zip(before, after, strict=True):
                assert new["thread_state"]["state"] == "Paused"
                for key in ("job_id", "job_state", "last_error"):
                    assert new[key] == old[key]
                assert new["thread_state"]["elapsed"] >= old["thread_state"]["elapsed"]
        finally:
            agent.close()


def test_a_pause_of_a_running_stage_survives_a_kill_before_the_boundary():
    with short_tmp() as folder:
        config = write_config(folder, threads=1, mock='duration = "30s"')
        agent = Agent(config).start()
        try:
            running = agent.wait_for(
                lambda i: i[0]["thread_state"]["state"] == "Running", what="a stage running"
            )
            assert agent.call("WorkerPause", 0) is True
            assert agent.infos()[0]["thread_state"]["state"] == "Running"  # the stage goes on
            agent.kill()
            agent.start()
            after = agent.wait_for(
                lambda i: i[0]["thread_state"]["state"] == "Paused", what="paused after restart"
            )
            assert after[0]["job_state"] == running[0]["job_state"]
            assert after[0]["last_error"] is None
        finally:
            agent.close()


def test_report_follows_a_pause_at_once_and_a_restart_reports_the_loaded_records():
    with short_tmp() as folder:
        config = write_config(
            folder,
            threads=2,
            faults=seed_fault() + "threads = [0]\n",
            worker='ping_interval = "1h"',
        )
        path = folder / "state/report.json"
        agent = Agent(config).start()
        try:
            # Far sooner than the hour-long ping_interval: a paused thread is news.
            wait_until(
                lambda: json.loads(path.read_text())["summary"]["Paused"] == 1, 5, what="report"
            )
            assert json.loads(path.read_text())["summary"]["Errors"] == 1
            agent.kill()
            agent.start()
            report = json.loads(path.read_text())
            assert report["pid"] == agent.proc.pid
            assert (report["summary"]["Paused"], report["summary"]["Errors"]) == (1, 1)
            assert report["summary"]["Empty"] <= 1  # thread 0 keeps its sector
        finally:
            agent.close()


def test_an_agent_at_rest_sleeps_until_asked():
    """No wakeups while nothing happens, with a kept connection open: the control
    server does not poll (socketserver's loop wakes twice a second) and the reporter
    waits for a change instead of looking every second. A control host running a few
    hundred of them, or a worker at rest, pays nothing for an idle agent."""
    with short_tmp() as folder:
        config = write_config(
            folder, threads=2, mock='duration = "1h"\nwait_duration = "1h"', worker=""
        )
        agent = Agent(config).start()
        try:
            agent.wait_for(
                lambda i: all(x["thread_state"]["state"] == "Running" for x in i),
                what="both threads in an hour-long stage",
            )
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as kept:
                kept.settimeout(5)
                kept.connect(str(agent.socket))
                request = post(json.dumps(
                    {"jsonrpc": "2.0", "id": 1, "method": "VenusWorker.WorkerList", "params": []}
                ).encode())  # fmt: skip
                kept.sendall(request)
                assert b'"result"' in kept.recv(65536)
                report = folder / "state/report.json"
                wait_until(
                    lambda: json.loads(report.read_text())["summary"]["Empty"] == 0,
                    5,
                    what="the report of both tasks",
                )
                time.sleep(1.5)  # past the reporter's CHANGE_CHECK after that rewrite
                before = voluntary_switches(agent.proc.pid)
                time.sleep(3)
                woken = voluntary_switches(agent.proc.pid) - before
                # Before: 6 polls of the server loop and 3 looks of the reporter.
                assert woken <= 2, f"{woken} wakeups in 3 s at rest"
                kept.sendall(request)  # and it still answers at once on the kept one
                assert b'"result"' in kept.recv(65536)
        finally:
            agent.close()


def test_sigterm_stops_cleanly_and_removes_the_socket():
    with short_tmp() as folder:
        config = write_config(folder, threads=2, mock='duration = "300ms"')
        agent = Agent(config).start()
        try:
            agent.wait_for(lambda i: all(x["job_id"] for x in i), what="tasks started")
            started = time.monotonic()
            assert agent.terminate() == 0
            assert time.monotonic() - started < 5
            assert not agent.socket.exists()
            assert "stopped" in agent.log_text()
            for index in (0, 1):
                record = json.loads((folder / f"store{index}/meta/task.json").read_text())
                assert record["schema"] == 1 and record["task"]["sector_id"]
            status, out, err = cli("worker", "-c", str(config), "list")
            assert status == 3 and err == f"venus-worker: agent not running at {agent.socket}\n"
            status, reply = cli_json("worker", "-c", str(config), "list")
            assert status == 3 and reply["error"]["code"] == -32099
            status, report = cli_json("worker", "-c", str(config), "report")
            assert status == 0 and report["summary"]["Threads"] == 2 and report["age"] >= 0
            status, document = cli_json("worker", "-c", str(config), "status")
            assert status == 3 and document["threads"] is None
            assert document["report"]["name"] == "test-worker"
            assert document["error"]["message"].startswith("agent not running at")
        finally:
            agent.close()


def test_report_before_any_daemon_ran_says_so():
    with short_tmp() as folder:
        config = write_config(folder)
        status, reply = cli_json("worker", "-c", str(config), "report")
        assert status == 3 and "no heartbeat report" in reply["error"]["message"]
        status, document = cli_json("worker", "-c", str(config), "status")
        assert status == 3 and document["report"] is None and document["threads"] is None


def test_an_unreadable_report_is_one_line_exit_1(tmp_path):
    for text in ('{"x"', "{}", "[]"):
        (tmp_path / "report.json").write_text(text)
        status, out, err = cli("worker", "--state-dir", str(tmp_path), "report")
        assert (status, out) == (1, "") and err.count("\n") == 1
        assert err.startswith(f"venus-worker: {tmp_path}/report.json: not a heartbeat report (")
        status, reply = cli_json("worker", "--state-dir", str(tmp_path), "report")
        assert status == 1 and reply["error"]["code"] == -32603


def test_stale_socket_is_replaced_but_other_files_are_not():
    with short_tmp() as folder:
        config = write_config(folder, threads=1)
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(str(folder / "agent.sock"))
        stale.close()  # a socket file nobody listens on, as after a crash
        with running_agent(config) as agent:
            assert agent.call("WorkerVersion") == "0.1.0"
            second = Agent(config).start(wait=False)
            assert second.proc.wait(20) == 1
            assert "another daemon is using state_dir" in second.log_text()
            assert agent.call("WorkerVersion") == "0.1.0"  # the first one is untouched
        (folder / "agent.sock").unlink(missing_ok=True)
        (folder / "agent.sock").write_text("not a socket")
        refused = Agent(config).start(wait=False)
        assert refused.proc.wait(20) == 1
        assert "exists and is not a socket" in refused.log_text()
        assert (folder / "agent.sock").read_text() == "not a socket"


def test_another_agent_on_the_same_socket_is_refused():
    with short_tmp() as folder:
        config = write_config(folder, threads=1)
        other = write_config(folder, threads=1, name="other.toml")
        other.write_text(other.read_text().replace('state_dir = "state"', 'state_dir = "state2"')
                         .replace('"store0"', '"store9"'))  # fmt: skip
        with running_agent(config) as agent:
            second = Agent(other).start(wait=False)
            assert second.proc.wait(20) == 1
            assert "another agent is already listening on" in second.log_text()
            assert agent.socket.exists() and agent.call("WorkerVersion") == "0.1.0"


def test_concurrent_clients_are_all_served(agent):
    errors = []

    def hammer():
        try:
            with AgentClient(agent.socket) as client:
                for _ in range(30):
                    client.call("VenusWorker.WorkerList")
        except (RpcError, OSError) as exc:
            errors.append(exc)

    workers = [threading.Thread(target=hammer) for _ in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    assert errors == []
    assert agent.proc.poll() is None


def test_a_burst_of_connections_is_queued_not_refused(agent):
    # A fleet tool or overlapping cron checks connect many clients at once; with
    # socketserver's default backlog of 5 the sixth failed at once (EAGAIN).
    body = b'{"jsonrpc":"2.0","id":1,"method":"VenusWorker.WorkerVersion","params":[]}'
    request = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    clients = []
    try:
        for _ in range(60):
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.settimeout(5)
            client.connect(str(agent.socket))
            clients.append(client)
        for client in clients:
            client.sendall(request)
        for client in clients:
            assert client.recv(65536).startswith(b"HTTP/1.1 200")
    finally:
        for client in clients:
            client.close()


def test_a_command_still_running_at_exit_is_killed_and_its_stage_reruns(monkeypatch):
    # In-process, to shorten the 30 s a stopping daemon grants running stages.
    monkeypatch.setattr(daemon_module, "STOP_TIMEOUT", 0.5)
    with short_tmp() as folder:
        (folder / "pc1.py").write_text(
            "import os, time\nopen('pc1.pid', 'w').write(str(os.getpid()))\ntime.sleep(60)\n"
        )
        processors = (
            '[processors]\nkind = "command"\n[processors.command.stages]\n'
            f'PC1 = ["{sys.executable}", "{folder}/pc1.py"]\n'
        )
        daemon = Daemon(load_config(write_config(folder, threads=1, processors=processors)))
        daemon.start()
        pid_file = folder / "store0/pc1.pid"
        try:
            wait_until(pid_file.exists, 10, what="PC1 command started")
        finally:
            daemon.stop()
        pid = int(pid_file.read_text())
        wait_until(lambda: not process_alive(pid), 5, what=f"PC1 command {pid} killed")
        daemon.threads[0].request_stop()
        for worker in daemon._workers:
            worker.join(5)
        record = json.loads((folder / "store0/meta/task.json").read_text())
        # Killed by the exit, not failed: no pause, no error, PC1 runs again after a restart.
        assert (record["paused"], record["last_error"]) == (False, None)
        assert record["task"]["state"] == "TicketAssigned"


def test_command_processor_end_to_end():
    with short_tmp() as folder:
        (folder / "pc1.py").write_text(
            "import os, pathlib\n"
            "pathlib.Path(os.environ['VENUS_DATA_DIR'], 'pc1.out').write_text(\n"
            "    os.environ['VENUS_SECTOR_ID'] + ' ' + os.environ['VENUS_STAGE'])\n"
        )
        (folder / "c2.py").write_text(
            "import sys\nsys.stderr.write('loading params\\npermanent: out of GPU memory\\n')\n"
            "sys.exit(1)\n"
        )
        processors = (
            '[processors]\nkind = "command"\n[processors.command.stages]\n'
            f'PC1 = ["{sys.executable}", "{folder}/pc1.py"]\n'
            f'C2 = {{ argv = ["{sys.executable}", "{folder}/c2.py"], timeout = "30s" }}\n'
        )
        config = write_config(folder, threads=1, processors=processors)
        with running_agent(config) as agent:
            info = agent.wait_for(lambda i: i[0]["last_error"], 20, "C2 failure")[0]
            assert info["job_state"] == "C1Done" and info["thread_state"]["state"] == "Paused"
            assert info["last_error"] == "permanent: out of GPU memory"
            assert (folder / "store0/data/pc1.out").read_text() == "s-t010000-1 PC1"


def _tgkill(pid: int, tid: int, signum: int) -> None:
    """Send a signal to one thread of another process (what the kernel may pick)."""
    libc = ctypes.CDLL(None, use_errno=True)
    sys_tgkill = 234 if platform.machine() == "x86_64" else 131  # aarch64: 131
    if libc.syscall(sys_tgkill, pid, tid, signum) != 0:
        raise OSError(ctypes.get_errno(), "tgkill failed")


def test_sigterm_delivered_to_any_thread_stops_the_daemon():
    # Regression: the main thread slept in Event.wait(); a process signal the
    # kernel delivered to a sealing or server thread never woke it, and the
    # daemon ignored SIGTERM. Deliver it to a non-main thread on purpose.
    with short_tmp() as folder:
        config = write_config(folder, threads=2, mock='duration = "50ms"')
        agent = Agent(config).start()
        try:
            pid = agent.proc.pid
            others = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid)
            assert others, "the daemon runs sealing threads"
            # The oldest threads are the long-lived sealing threads, not a
            # short-lived connection handler that might be gone already.
            _tgkill(pid, others[0], signal.SIGTERM)
            assert agent.proc.wait(timeout=10) == 0, agent.log_text()
            assert not agent.socket.exists()
        finally:
            agent.close()


def test_sigint_stops_cleanly_too():
    with short_tmp() as folder:
        config = write_config(folder, threads=1)
        agent = Agent(config).start()
        try:
            agent.proc.send_signal(signal.SIGINT)
            assert agent.proc.wait(15) == 0
            assert not agent.socket.exists()
        finally:
            agent.close()


def test_socket_group_opens_the_socket_to_that_group_only():
    group = grp.getgrgid(os.getgid()).gr_name
    with short_tmp() as folder:
        worker = f'ping_interval = "1s"\nsocket_group = "{group}"'
        config = write_config(folder, threads=1, worker=worker)
        with running_agent(config) as agent:
            info = os.lstat(agent.socket)
            assert stat.S_IMODE(info.st_mode) == 0o660 and info.st_gid == os.getgid()
        missing = write_config(folder, threads=1, worker='socket_group = "no-such-group-x"')
        refused = Agent(missing).start(wait=False)
        assert refused.proc.wait(20) == 1
        assert "socket_group 'no-such-group-x' does not exist" in refused.log_text()
        assert not (folder / "agent.sock").exists()


def test_an_unreadable_record_pauses_its_thread_naming_the_file():
    # Issue 12: a bad record is its own thread's problem (it stopped the whole start before).
    with short_tmp() as folder:
        config = write_config(folder, threads=2)
        (folder / "state").mkdir()
        (folder / "state/sector-counter.json").write_text('{"schema": 1, "last": {"10000": 5}}')
        (folder / "store1/meta").mkdir(parents=True)
        (folder / "store1/meta/task.json").write_text('{"schema": 1, "paused": tru')
        with running_agent(config) as agent:
            infos = agent.wait_for(lambda i: i[0]["job_id"] is not None, what="thread 0 runs")
            assert infos[1]["thread_state"]["state"] == "Paused"
            assert infos[1]["last_error"].startswith(
                f"critical: {folder}/store1/meta/task.json: not valid JSON"
            )


def test_a_location_that_cannot_be_created_pauses_its_thread_with_one_line():
    # Issue 12: the other threads run (this stopped the start with exit 1 before).
    with short_tmp() as folder:
        (folder / "file").write_text("not a folder")
        config = write_config(folder, threads=2)
        config.write_text(config.read_text().replace('"store0"', f'"{folder}/file/store0"'))
        with running_agent(config) as agent:
            infos = agent.wait_for(lambda i: i[1]["job_id"] is not None, what="thread 1 runs")
            assert infos[0]["last_error"] == (
                f"critical: cannot create store {folder}/file/store0: "
                f"{folder}/file/store0/meta: Not a directory"
            )
            assert infos[0]["thread_state"]["state"] == "Paused"
