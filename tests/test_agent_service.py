"""The agent as a service and a server under abuse (issue 12), against a real daemon.

Control socket starvation by slow clients, protocol edges, journald
priorities, sd_notify readiness, SIGHUP, a second SIGTERM, the stage
environment, and the auto-resume policy. Each test reproduces what the
agent did wrong before.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from agent_helpers import (
    Agent,
    Tricklers,
    one_response,
    post,
    process_alive,
    running_agent,
    short_tmp,
    wait_until,
    worker_list_latencies,
    write_config,
)

from worker_agent.client import AgentClient

pytestmark = pytest.mark.e2e  # a real daemon in every test

# ---------------------------------------------------------------- 4. starvation


def test_slow_trickling_clients_never_lock_out_a_worker_list():
    # The figure is 200 clients, a byte every 4 s, 10 s deadline, for 60 s
    # (bench/trickle_bench.py); this is the same attack scaled to 8 s.
    with short_tmp() as folder:
        config = write_config(folder, threads=1, worker='request_timeout = "2s"')
        with running_agent(config) as agent, Tricklers(agent.socket, 150, every=0.5) as attack:
            time.sleep(1.5)  # every trickler connected
            latencies = worker_list_latencies(agent.socket, seconds=8, every=0.2)
            assert attack.reconnects > 150, "the server never closed a trickling client"
        assert len(latencies) >= 20
        assert None not in latencies, f"{latencies.count(None)} WorkerList calls failed"
        assert max(latencies) < 1.0, f"slowest WorkerList {max(latencies):.2f}s"
        assert statistics.median(latencies) < 0.2


def test_a_request_trickled_within_each_read_timeout_still_meets_its_one_deadline():
    with short_tmp() as folder:
        config = write_config(folder, threads=1, worker='request_timeout = "1s"')
        with running_agent(config) as agent, socket.socket(socket.AF_UNIX) as slow:
            slow.connect(str(agent.socket))
            started = time.monotonic()
            closed = None
            for byte in post(b'{"jsonrpc":"2.0","id":1,"method":"VenusWorker.WorkerList"}'):
                try:
                    slow.send(bytes([byte]))
                except OSError:
                    closed = time.monotonic() - started
                    break
                time.sleep(0.3)  # each read alone is well within the 1 s timeout
            assert closed is not None and closed < 3, "a trickled request was served"


# ---------------------------------------------------------------- 8. protocol edges


def test_http_0_9_and_request_lines_without_a_version_are_refused():
    with short_tmp() as folder, running_agent(write_config(folder, threads=1)) as agent:
        for line in (b"GET /", b"POST /", b"POST", b"GET / HTTP/1.1 extra"):
            status, _ = one_response(agent.socket, line + b"\r\n\r\n")
            assert status == 400, line
        status, body = one_response(agent.socket, b"POST / HTTP/2.0\r\nContent-Length: 0\r\n\r\n")
        assert status == 505


def test_json_nested_past_the_limit_gets_an_error_reply_and_the_connection_lives():
    deep_garbage = b"[" * 200_000  # the decoder's own recursion ends well before this
    deep_valid = b"[" * 40 + b"]" * 40
    flat = b'{"jsonrpc":"2.0","id":9,"method":"VenusWorker.WorkerVersion","params":[]}'
    with short_tmp() as folder, running_agent(write_config(folder, threads=1)) as agent:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(agent.socket))
            reader = sock.makefile("rb")
            for body in (deep_garbage, deep_valid, flat):
                sock.sendall(post(body))
                status = reader.readline()
                assert status.startswith(b"HTTP/1.1 200"), f"connection dropped: {status!r}"
                headers = {}
                while (line := reader.readline()) not in (b"\r\n", b""):
                    key, _, value = line.decode().partition(":")
                    headers[key.lower()] = value.strip()
                reply = json.loads(reader.read(int(headers["content-length"])))
                if body is flat:
                    assert reply["result"] == "0.1.0"
                else:
                    assert reply["error"] == {
                        "code": -32700,
                        "message": "parse error: JSON nested deeper than 32 levels",
                    }
        assert "Traceback" not in agent.log_text()


def test_a_client_that_hangs_up_is_one_log_line_not_a_traceback():
    request = post(b'{"jsonrpc":"2.0","id":1,"method":"VenusWorker.WorkerList","params":[]}')
    with short_tmp() as folder:
        config = write_config(folder, threads=8)  # a reply large enough to be written late
        with running_agent(config) as agent:
            for _ in range(30):
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.connect(str(agent.socket))
                    sock.sendall(request)
                # closed at once: the reply meets a closed socket
            time.sleep(1.0)
            assert agent.call("WorkerVersion") == "0.1.0"
            log = agent.log_text()
        assert "Traceback" not in log
        server_lines = [line for line in log.splitlines() if "venus_worker.server" in line]
        assert 1 <= len(server_lines) <= 30
        assert all("control client went away before its reply (" in line
                   for line in server_lines), server_lines  # fmt: skip


# ---------------------------------------------------------------- 9. service behaviour


PERMANENT_AND_TEMPORARY = """
[[processors.mock.faults]]
stage = "PC2"
level = "temporary"
message = "gpu busy"
times = 1
[[processors.mock.faults]]
stage = "C2"
level = "permanent"
message = "no proof parameters"
"""


def test_log_lines_carry_syslog_priorities_when_stderr_is_the_journal():
    with short_tmp() as folder:
        config = write_config(folder, threads=1, faults=PERMANENT_AND_TEMPORARY)
        agent = Agent(config)
        agent.log.touch()
        info = agent.log.stat()
        agent.start(env={"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"})
        try:
            agent.wait_for(lambda i: i[0]["thread_state"]["state"] == "Paused", 15, "paused")
            agent.terminate()
        finally:
            agent.close()
        lines = agent.log_text().splitlines()
        assert lines and all(re.match(r"<[2-7]>venus_worker\.", line) for line in lines), lines
        text = "\n".join(lines)
        assert "<6>venus_worker.daemon: venus-worker 0.1.0: 1 sealing threads" in text
        assert "<4>venus_worker.thread: thread #0: temporary: gpu busy (retry 1/2)" in text
        assert "<3>venus_worker.thread: thread #0: paused: permanent: no proof parameters" in text
        # journald stamps each entry itself: no second timestamp in the message
        assert not re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", text)
        # a JOURNAL_STREAM that is not our stderr (inherited, stderr redirected) is ignored
        agent.log.unlink()
        agent.start(env={"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino + 1}"})
        agent.terminate()
        first = agent.log_text().splitlines()[0]
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ INFO venus_worker\.daemon: ", first)


def _notify_socket(folder: Path, abstract: bool) -> tuple[socket.socket, str]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"venus-test-{os.getpid()}-{secrets.token_hex(4)}"
        sock.bind("\0" + name)
        address = "@" + name
    else:
        address = str(folder / "notify.sock")
        sock.bind(address)
    sock.settimeout(20)
    return sock, address


def test_ready_is_sent_to_notify_socket_once_the_control_socket_answers():
    for abstract in (False, True):
        with short_tmp() as folder:
            config = write_config(folder, threads=2)
            listener, address = _notify_socket(folder, abstract)
            with listener:
                agent = Agent(config).start(wait=False, env={"NOTIFY_SOCKET": address})
                try:
                    message = listener.recv(4096).decode()
                    with AgentClient(agent.socket, timeout=2) as client:  # at once: no retry
                        assert client.call("VenusWorker.WorkerVersion") == "0.1.0"
                    assert message.splitlines()[0] == "READY=1", message
                    assert f"STATUS=2 sealing threads, control socket {agent.socket}" in message
                    agent.proc.send_signal(signal.SIGTERM)
                    assert listener.recv(4096) == b"STOPPING=1"
                    assert agent.proc.wait(15) == 0
                finally:
                    agent.close()


def test_sighup_never_stops_the_daemon_and_says_what_it_did():
    with short_tmp() as folder:
        config = write_config(folder, threads=1)
        with running_agent(config) as agent:
            agent.proc.send_signal(signal.SIGHUP)
            wait_until(lambda: "SIGHUP" in agent.log_text(), 5, what="the SIGHUP log line")
            assert f"SIGHUP: {config} is unchanged; nothing to do" in agent.log_text()
            config.write_text(config.read_text().replace('"200ms"', '"300ms"'))
            agent.proc.send_signal(signal.SIGHUP)
            wait_until(lambda: "does not reload" in agent.log_text(), 5, what="the change noticed")
            changed = f"SIGHUP: {config} changed; a running daemon does not reload it: restart"
            assert changed + " the service to apply it" in agent.log_text()
            config.write_text(config.read_text() + "[broken\n")
            agent.proc.send_signal(signal.SIGHUP)
            wait_until(lambda: "has an error" in agent.log_text(), 5, what="the error noticed")
            assert agent.proc.poll() is None and agent.call("WorkerVersion") == "0.1.0"
            assert agent.terminate() == 0


def test_a_second_sigterm_stops_at_once_and_kills_the_stages():
    with short_tmp() as folder:
        script = folder / "pc1.py"
        script.write_text("import os, time\nopen('pc1.pid', 'w').write(str(os.getpid()))\n"
                          "time.sleep(120)\n")  # fmt: skip
        processors = (
            f'[processors]\nkind = "command"\n[processors.command.stages]\n'
            f'PC1 = ["{sys.executable}", "{script}"]\n'
        )
        config = write_config(folder, threads=1, processors=processors)
        agent = Agent(config).start()
        try:
            pid_file = folder / "store0/pc1.pid"
            wait_until(pid_file.exists, 15, what="PC1 running")
            pid = int(pid_file.read_text())
            agent.proc.send_signal(signal.SIGTERM)
            time.sleep(1.5)
            assert agent.proc.poll() is None  # waiting (up to 30 s) for the running stage
            started = time.monotonic()
            agent.proc.send_signal(signal.SIGTERM)
            assert agent.proc.wait(5) == 0
            assert time.monotonic() - started < 3
            wait_until(lambda: not process_alive(pid), 5, what=f"PC1 {pid} killed")
            assert "second stop signal: stopping now" in agent.log_text()
            record = json.loads((folder / "store0/meta/task.json").read_text())
            assert (record["paused"], record["last_error"]) == (False, None)
            assert record["task"]["state"] == "TicketAssigned"  # PC1 reruns after the restart
        finally:
            agent.close()
            with contextlib.suppress(ProcessLookupError, ValueError, FileNotFoundError):
                os.kill(int((folder / "store0/pc1.pid").read_text()), signal.SIGKILL)


def test_stages_get_a_minimal_environment_plus_what_the_config_names():
    dump = "import json, os\njson.dump(dict(os.environ), open('env.json', 'w'))\n"
    with short_tmp() as folder:
        (folder / "pc1.py").write_text(dump)
        processors = textwrap.dedent(
            f"""
            [processors]
            kind = "command"
            [processors.command]
            env = {{ EXTRA = "yes", RUST_LOG = "info" }}
            inherit_env = ["RUST_LOG", "FIL_PROOFS_*"]
            [processors.command.stages]
            PC1 = {{ argv = ["{sys.executable}", "{folder}/pc1.py"], env = {{ CUDA_VISIBLE_DEVICES = "0" }} }}
            """  # noqa: E501
        )
        config = write_config(folder, threads=1, processors=processors)
        env = {
            "SECRET_TOKEN": "hunter2",
            "RUST_LOG": "debug",
            "FIL_PROOFS_MAXIMIZE_CACHING": "1",
            "LANG": "C.UTF-8",
            "HOME": "/root",
            "PATH": "/usr/bin:/bin",
            "NOTIFY_SOCKET": None,
        }
        agent = Agent(config).start(env=env)
        try:
            wait_until((folder / "store0/env.json").exists, 15, what="PC1 to run")
        finally:
            agent.close()
        seen = json.loads((folder / "store0/env.json").read_text())
        venus = {k for k in seen if k.startswith("VENUS_")}
        assert len(venus) == 10 and "VENUS_STAGE_TOKEN" in venus
        assert {k: v for k, v in seen.items() if k not in venus} == {
            "PATH": "/usr/bin:/bin",
            "HOME": "/root",
            "LANG": "C.UTF-8",
            "RUST_LOG": "info",  # inherited, then the configured env wins
            "FIL_PROOFS_MAXIMIZE_CACHING": "1",
            "EXTRA": "yes",
            "CUDA_VISIBLE_DEVICES": "0",
        }


# ---------------------------------------------------------------- 10. auto-resume


def _auto_resume_config(folder: Path, fault: str, rule: str, threads: int = 1) -> Path:
    config = write_config(folder, threads=threads, faults=fault)
    text = config.read_text().replace("[[sealing_thread]]", rule + "[[sealing_thread]]", 1)
    config.write_text(text)
    return config


GPU_BUSY_TWICE = """
[[processors.mock.faults]]
stage = "C2"
level = "permanent"
message = "gpu busy"
times = 2
"""


def test_an_error_pause_matching_a_rule_resumes_by_itself_up_to_max_per_task():
    rule = '[[sealing.auto_resume]]\nmatch = "gpu (busy|lost)"\nafter = "300ms"\nmax = 1\n'
    with short_tmp() as folder:
        config = _auto_resume_config(folder, GPU_BUSY_TWICE, rule)
        with running_agent(config) as agent:
            wait_until(lambda: "auto-resumed" in agent.log_text(), 15, what="an auto-resume")
            infos = agent.wait_for(
                lambda i: i[0]["thread_state"]["state"] == "Paused" and i[0]["auto_resumes"] == 1,
                10,
                "paused again after the auto-resume",
            )
            sector = infos[0]["job_id"]
            assert infos[0]["last_error"] == "permanent: gpu busy"
            time.sleep(1.0)  # max = 1: no second auto-resume for this task
            info = agent.infos()[0]
            assert info["thread_state"]["state"] == "Paused" and info["auto_resumes"] == 1
            log = agent.log_text()
            assert log.count("auto-resumed") == 1
            assert f"auto-resumed {sector} (rule 'gpu (busy|lost)', 1 of 1 for this task)" in log
            assert "used 1 times on" in log
            assert agent.call("WorkerResume", 0, None) is True  # the operator's turn
            info = agent.wait_for(lambda i: i[0]["job_id"] != sector, 15, "the next task")[0]
            assert info["auto_resumes"] == 0  # counted per task


def test_an_operators_pause_is_never_auto_resumed():
    rule = '[[sealing.auto_resume]]\nmatch = "."\nafter = "500ms"\nmax = 5\n'
    gpu_busy = (
        '[[processors.mock.faults]]\nstage = "PC1"\nlevel = "permanent"\n'
        'message = "gpu busy"\nthreads = [1]\n'
    )
    with short_tmp() as folder:
        config = _auto_resume_config(folder, gpu_busy, rule, threads=2)
        text = config.read_text().replace('wait_duration = "10ms"', 'wait_duration = "1h"')
        config.write_text(text)
        with running_agent(config) as agent:
            # thread 0 waits an hour in WaitPCLanded: the operator pauses it
            agent.wait_for(lambda i: i[0]["job_stage"] == "WaitPCLanded", 15, "thread 0 waiting")
            assert agent.call("WorkerPause", 0) is True
            # thread 1 pauses on a matching error: the operator pauses it too, which keeps it
            agent.wait_for(lambda i: i[1]["last_error"] == "permanent: gpu busy", 15, "1 paused")
            assert agent.call("WorkerPause", 1) is True
            time.sleep(1.5)
            infos = agent.infos()
            for info in infos:
                assert info["thread_state"]["state"] == "Paused" and info["auto_resumes"] == 0
            record = json.loads((folder / "store1/meta/task.json").read_text())
            assert record["auto_resume_at"] is None
            assert "auto-resumed" not in agent.log_text()


def test_a_pending_auto_resume_survives_a_kill():
    rule = '[[sealing.auto_resume]]\nmatch = "gpu busy"\nafter = "3s"\nmax = 2\n'
    with short_tmp() as folder:
        config = _auto_resume_config(folder, GPU_BUSY_TWICE, rule)
        agent = Agent(config).start()
        try:
            agent.wait_for(lambda i: i[0]["thread_state"]["state"] == "Paused", 15, "paused")
            record = json.loads((folder / "store0/meta/task.json").read_text())
            assert record["auto_resume_at"] > record["paused_at"]
            agent.kill()
            agent.start()
            wait_until(lambda: "auto-resumed" in agent.log_text(), 10, what="the auto-resume")
            agent.wait_for(lambda i: i[0]["auto_resumes"] >= 1, 10, "counted")
        finally:
            agent.close()


def test_auto_resume_rules_are_checked_like_the_rest_of_the_config():
    with short_tmp() as folder:
        for rule, problem in (
            ('match = "("\nmax = 1', "sealing.auto_resume[0].match: bad regular expression"),
            ('match = "x"', "sealing.auto_resume[0].max: missing"),
            ('match = "x"\nmax = 0', "sealing.auto_resume[0].max: must be at least 1"),
            ('match = "x"\nmax = 1\nafter = "5"', "sealing.auto_resume[0].after: bad duration"),
            ('match = "x"\nmax = 1\nevery = "5s"', "sealing.auto_resume[0].every: unknown key"),
        ):
            config = _auto_resume_config(folder, "", f"[[sealing.auto_resume]]\n{rule}\n")
            done = subprocess.run(
                [sys.executable, "-m", "worker_agent", "daemon", "-c", str(config)],
                capture_output=True,
                text=True,
                timeout=20,
            )
            assert done.returncode == 2 and problem in done.stderr, done.stderr
