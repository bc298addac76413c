"""`venusctl health` end to end: real sshd hosts, real agents, seeded faults.

The fleet is conftest.py's: w1 has thread #0 paused by a permanent C2 error,
dead's agent is stopped (its heartbeat file remains), down's sshd is not
running, calm has no faults and its threads wait an hour in WaitPCLanded.
Short thresholds (`--paused-warn 0s`, `--stuck WaitPCLanded=1s`) make the
findings appear without sleeping for hours.
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import VENUSCTL_COMMAND
from prometheus_client.parser import text_string_to_metric_families

import venusctl

DURATION = r"(\d+\.\ds|\d+s|\d+m\d+s|\d+h\d+m\d+s)"
PERFDATA = (
    r"hosts=\d+;;;0 threads=\d+;;;0 running=\d+;;;0 waiting=\d+;;;0 paused=\d+;;;0"
    r" errors=\d+;0;;0 unreachable=\d+;;0;0 idle=\d+;;;0 empty=\d+;;;0 silenced=\d+;;;0"
)
HOSTS_HEADER = "Host  Threads  Paused  Errors  Heartbeat  Note"


pytestmark = [
    pytest.mark.e2e,
    # nothing of the machine's ~/.ssh, ssh-agent or $VENUSCTL_INVENTORY leaks in
    pytest.mark.usefixtures("isolated_home"),
]


def health(capsys, path: Path, *argv: str) -> tuple[int, list[str], str]:
    """(status, the status line and the findings' lines, stderr); the per-host summary that
    ends the output is checked (one row per host) and left out."""
    status = venusctl.main(["-i", str(path), "health", *argv])
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    headers = [n for n, line in enumerate(lines) if line.split() == HOSTS_HEADER.split()]
    if headers:
        (end,) = headers
        hosts = {line.split()[0] for line in lines[end + 1 :]}
        assert len(hosts) == len(lines) - end - 1, lines
        lines = lines[:end]
    return status, lines, captured.err


def health_json(capsys, path: Path, *argv: str) -> tuple[int, dict]:
    status = venusctl.main(["-i", str(path), "health", "--json", *argv])
    return status, json.loads(capsys.readouterr().out)


def calm_threads(capsys, path: Path) -> list[dict]:
    assert venusctl.main(["-i", str(path), "info", "calm", "--json"]) == 0
    return json.loads(capsys.readouterr().out)["threads"]


def wait_until_calm(capsys, path: Path, index: int, stage: str, seconds: int) -> dict:
    """Until calm's thread `index` has been `seconds` or more in `stage`."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        thread = calm_threads(capsys, path)[index]
        if thread["job_stage"] == stage and (thread["state_elapsed"] or 0) >= seconds:
            return thread
        time.sleep(0.2)
    raise AssertionError(f"calm #{index} never spent {seconds}s in {stage}: {thread}")


def test_healthy_fleet_with_quiet_prints_nothing_and_exits_0(tmp_path, capsys, ssh_fleet):
    tables = [
        ssh_fleet.host_table("calm"),
        ssh_fleet.host_table("calm", name="calm-exec", transport="exec"),
    ]
    path = ssh_fleet.inventory(tmp_path, *tables)
    status, lines, err = health(capsys, path, "--quiet")
    assert (status, lines, err) == (0, [], "")
    assert health(capsys, path, "--quiet", "--json") == (0, [], "")
    status, lines, _ = health(capsys, path)
    assert status == 0
    assert re.fullmatch(rf"VENUS OK - 2 hosts, 4 threads \| {PERFDATA}", lines[0]), lines
    assert "unreachable=0" in lines[0] and len(lines) == 1


def test_thread_in_error_is_warning_then_critical_after_paused_crit(tmp_path, capsys, ssh_fleet):
    path = ssh_fleet.inventory(tmp_path, ssh_fleet.host_table("w1"))
    status, lines, _ = health(capsys, path, "--quiet")
    assert status == 1
    assert re.fullmatch(rf"VENUS WARNING - 1 thread in error \| {PERFDATA}", lines[0]), lines
    assert "errors=1;0;;0" in lines[0] and "unreachable=0;;0;0" in lines[0]
    error = "permanent: No cached parameters found for stacked-proof-of-replication (test fleet)"
    pattern = rf"WARNING w1 #0 s-t010000-\d+ C1Done: paused by an error for {DURATION}: "
    assert re.fullmatch(pattern + re.escape(error), lines[1]), lines
    assert len(lines) == 2
    status, lines, _ = health(capsys, path, "--paused-crit", "0s")
    assert status == 2
    assert lines[0].startswith("VENUS CRITICAL - 1 thread in error | ")
    assert lines[1].startswith("CRITICAL w1 #0 ")


def test_stopped_agent_and_stopped_sshd_are_critical(tmp_path, capsys, ssh_fleet):
    tables = [
        ssh_fleet.host_table("dead"),  # agent stopped; its heartbeat read over exec
        ssh_fleet.host_table("dead", name="dead-stream", transport="stream"),
        ssh_fleet.host_table("down"),  # sshd stopped
        ssh_fleet.host_table("calm"),
    ]
    path = ssh_fleet.inventory(tmp_path, *tables)
    status, lines, _ = health(capsys, path, "--quiet")
    assert status == 2
    # dead-stream: stream alone cannot tell a dead agent from a closed door (issue 10)
    assert lines[0].startswith("VENUS CRITICAL - 2 hosts unreachable, 1 agent not running | ")
    assert "hosts=4;;;0 threads=2;;;0 " in lines[0] and "unreachable=3;;0;0" in lines[0]
    assert re.fullmatch(
        rf"CRITICAL dead: agent not running; last heartbeat {DURATION} ago", lines[1]
    )
    socket = ssh_fleet.agents["dead"].socket
    assert lines[2] == (
        f"CRITICAL dead-stream: cannot ask the agent: connect failed to the agent socket {socket}"
        " (no agent listening, the SSH user may not use it, or sshd forbids stream forwarding)"
    )
    assert lines[3] == "CRITICAL down: unreachable: connection refused"
    assert len(lines) == 4  # calm is fine
    _, document = health_json(capsys, path, "--expiration", "1ms")
    dead = document["findings"][0]
    assert (dead["host"], dead["severity"], dead["kind"]) == (
        "dead",
        "CRITICAL",
        "agent-not-running",
    )
    assert dead["message"].endswith(" ago (expired)") and dead["duration"] > 0


def test_heartbeat_older_than_expiration_is_critical_while_the_agent_answers(
    tmp_path, capsys, ssh_fleet
):
    path = ssh_fleet.inventory(tmp_path, ssh_fleet.host_table("calm"))
    # Beats come every second: any age is over a millisecond.
    status, lines, _ = health(capsys, path, "--expiration", "1ms")
    assert status == 2
    assert lines[0].startswith("VENUS CRITICAL - 1 heartbeat expired | ")
    assert re.fullmatch(
        rf"CRITICAL calm: heartbeat {DURATION} old, over the 0\.0s expiration"
        r" \(the agent answers but its reporter is stuck\)",
        lines[1],
    ), lines


def test_stuck_job_is_a_warning_and_a_state_threshold_beats_its_stage(tmp_path, capsys, ssh_fleet):
    path = ssh_fleet.inventory(tmp_path, ssh_fleet.host_table("calm"))
    wait_until_calm(capsys, path, 0, "WaitPCLanded", 1)
    wait_until_calm(capsys, path, 1, "WaitPCLanded", 1)
    status, lines, _ = health(capsys, path, "--stuck", "WaitPCLanded=1s")
    assert status == 1
    assert lines[0].startswith("VENUS WARNING - 2 threads stuck | ")
    # identical findings are one line (issue 10); --verbose lists each thread below it
    assert re.fullmatch(
        r"WARNING 2 threads on 1 host stuck in stage WaitPCLanded \(over 1s, --stuck"
        rf" WaitPCLanded\) \(calm; longest {DURATION}\)",
        lines[1],
    ), lines
    assert len(lines) == 2
    status, lines, _ = health(capsys, path, "--stuck", "WaitPCLanded=1s", "--verbose")
    assert status == 1 and lines[1].startswith("WARNING 2 threads on 1 host stuck in stage")
    for index, line in enumerate(lines[2:]):
        assert re.fullmatch(
            rf"  WARNING calm #{index} s-t010000-\d+ PCSubmitted: stage WaitPCLanded for"
            rf" {DURATION} \(stuck after 1s, --stuck WaitPCLanded\)",
            line,
        ), line
    # the state's own threshold wins over its stage's
    argv = ("--stuck", "WaitPCLanded=1s", "--stuck", "PCSubmitted=1h", "--quiet")
    assert health(capsys, path, *argv) == (0, [], "")
    # and the defaults (6h for WaitPCLanded) see nothing wrong
    assert health(capsys, path, "--quiet") == (0, [], "")


def test_thread_paused_by_hand_is_a_warning_after_paused_warn_and_never_stuck(
    tmp_path, capsys, ssh_fleet
):
    path = ssh_fleet.inventory(tmp_path, ssh_fleet.host_table("calm"))
    assert venusctl.main(["-i", str(path), "pause", "calm", "1"]) == 0
    capsys.readouterr()
    try:
        deadline = time.monotonic() + 10  # a chain wait is cut short at once
        while calm_threads(capsys, path)[1]["thread_state"]["state"] != "Paused":
            assert time.monotonic() < deadline, "calm #1 never paused"
            time.sleep(0.1)
        assert health(capsys, path, "--quiet") == (0, [], "")  # under an hour: fine
        status, lines, _ = health(capsys, path, "--paused-warn", "0s")
        assert status == 1
        assert lines[0].startswith("VENUS WARNING - 1 thread paused by hand too long | ")
        assert "paused=1;;;0" in lines[0]
        assert re.fullmatch(
            rf"WARNING calm #1 s-t010000-\d+ \w+: paused by hand for {DURATION}"
            r" \(warning after 0s\)",
            lines[1],
        ), lines
        # a paused thread is judged as paused, not as stuck in its stage
        _, document = health_json(
            capsys, path, "--stuck", "default=0s", "--stuck", "WaitPCLanded=0s"
        )
        kinds = {(f["index"], f["kind"]) for f in document["findings"]}
        assert (1, "thread-stuck") not in kinds and (0, "thread-stuck") in kinds
    finally:
        assert venusctl.main(["-i", str(path), "resume", "calm", "1"]) == 0
        capsys.readouterr()


def test_deadline_passed_is_unknown_3_and_the_process_does_not_wait(tmp_path, ssh_fleet):
    hang = str(ssh_fleet.scripts["hang"])
    tables = [
        ssh_fleet.host_table("w2", name="hung", transport="exec", agent=hang, command_timeout=25),
        ssh_fleet.host_table("calm"),
    ]
    path = ssh_fleet.inventory(tmp_path, *tables)
    started = time.monotonic()
    done = subprocess.run(
        [VENUSCTL_COMMAND, "-i", str(path), "health", "--deadline", "2s"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 3, done
    lines = done.stdout.splitlines()
    assert lines[0].startswith(
        "VENUS UNKNOWN - deadline of 2s passed, 1 host did not answer in time | hosts=2;;;0 "
    ), lines
    assert lines[1] == "UNKNOWN hung: no answer before the deadline of 2s"
    # calm answered in time and is fine: then only the per-host summary
    assert lines[2].split() == HOSTS_HEADER.split() and len(lines) == 5
    assert lines[3].split()[:5] == ["hung", "-", "-", "-", "-"]
    assert lines[4].split()[:4] == ["calm", "2", "0", "0"]
    assert done.stderr == ""  # the abandoned SSH work says nothing at exit
    assert elapsed < 15, elapsed  # not the hung command's 25 s


def test_progress_on_stderr_when_it_is_a_terminal_and_erased_before_the_report(tmp_path, ssh_fleet):
    tables = [ssh_fleet.host_table(name) for name in ("w1", "w2", "calm")]
    path = ssh_fleet.inventory(tmp_path, *tables)
    master, terminal = os.openpty()
    try:
        run = subprocess.run(
            [VENUSCTL_COMMAND, "-i", str(path), "health"],
            stdout=subprocess.PIPE,
            stderr=terminal,
            text=True,
            timeout=60,
        )
        shown = b""
        while select.select([master], [], [], 0)[0]:
            shown += os.read(master, 4096)  # a few bytes: the pty buffer never filled
    finally:
        os.close(terminal)
        os.close(master)
    assert run.returncode == 1 and run.stdout.startswith("VENUS WARNING - 2 threads in error | ")
    assert re.search(rb"\r[12]/3 hosts", shown), shown
    assert shown.endswith(b"\r\x1b[K"), shown  # erased: nothing is left on the terminal


def test_prometheus_textfile_parses_and_says_what_the_first_line_says(tmp_path, capsys, ssh_fleet):
    tables = [ssh_fleet.host_table(name) for name in ("w1", "dead", "down", "calm")]
    path = ssh_fleet.inventory(tmp_path, *tables)
    textfile = tmp_path / "textfile" / "venus.prom"
    textfile.parent.mkdir()
    before = time.time()
    status, lines, _ = health(capsys, path, "--prometheus", str(textfile))
    assert status == 2
    values = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(textfile.read_text())
        for sample in family.samples
    }
    up = {
        labels[0][1]: value
        for (name, labels), value in values.items()
        if name == "venus_fleet_host_up"
    }
    assert up == {"w1": 1, "dead": 0, "down": 0, "calm": 1}
    heartbeat = {
        labels[0][1]: value
        for (name, labels), value in values.items()
        if name == "venus_fleet_last_heartbeat_timestamp_seconds"
    }
    # dead's, read by the CLI over exec, is older than the others; down's is unknown.
    assert before - 3600 < heartbeat["dead"] < min(heartbeat["w1"], heartbeat["calm"])
    assert max(heartbeat.values()) <= time.time() and heartbeat["down"] == 0
    assert values[("venus_fleet_threads", (("host", "w1"), ("state", "Paused")))] >= 1
    assert values[("venus_fleet_threads_errors", (("host", "w1"),))] == 1
    assert values[("venus_fleet_job_threads", (("host", "w1"), ("job_state", "C1Done")))] >= 1
    critical = {}
    for (name, labels), value in values.items():
        if name == "venus_fleet_health_findings" and ("status", "CRITICAL") in labels:
            host = dict(labels)["host"]
            critical[host] = critical.get(host, 0) + value
    assert critical == {"w1": 0, "dead": 1, "down": 1, "calm": 0}
    per_finding = {
        labels: value
        for (name, labels), value in values.items()
        if name == "venus_fleet_health_finding"
    }
    assert per_finding == {
        (("host", "w1"), ("index", "0"), ("kind", "thread-error"), ("status", "WARNING")): 1,
        (("host", "dead"), ("index", ""), ("kind", "agent-not-running"), ("status", "CRITICAL")): 1,
        (("host", "down"), ("index", ""), ("kind", "host-unreachable"), ("status", "CRITICAL")): 1,
    }
    assert values[("venus_fleet_health_status", (("status", "CRITICAL"),))] == 1
    assert values[("venus_fleet_health_status", (("status", "OK"),))] == 0
    run_at = values[("venus_fleet_health_last_run_timestamp_seconds", ())]
    assert before <= run_at <= time.time()
    assert sorted(p.name for p in textfile.parent.iterdir()) == ["venus.prom"]


def test_a_textfile_that_cannot_be_written_is_unknown_on_the_first_line(
    tmp_path, capsys, ssh_fleet
):
    path = ssh_fleet.inventory(tmp_path, ssh_fleet.host_table("calm"), ssh_fleet.host_table("w1"))
    textfile = tmp_path / "no-such-folder" / "venus.prom"
    # A healthy fleet: --quiet still speaks up, since the metrics are missing.
    status, lines, err = health(
        capsys, path, "-l", "calm", "--quiet", "--prometheus", str(textfile)
    )
    assert (status, err) == (3, "")
    assert re.fullmatch(
        rf"VENUS UNKNOWN - cannot write {re.escape(str(textfile))}: No such file or directory"
        rf" \| {PERFDATA}",
        lines[0],
    ), lines
    assert len(lines) == 1
    _, document = health_json(capsys, path, "-l", "calm", "--prometheus", str(textfile))
    assert document["status"] == "UNKNOWN" and "cannot write" in document["summary"]
    # A CRITICAL is never hidden behind it.
    argv = ("--paused-crit", "0s", "--prometheus", str(textfile))
    status, lines, _ = health(capsys, path, *argv)
    assert status == 2
    assert lines[0].startswith(f"VENUS CRITICAL - cannot write {textfile}: ")
    assert lines[1].startswith("CRITICAL w1 #0 ")


def test_health_table_in_the_inventory_and_the_command_line_wins(tmp_path, capsys, ssh_fleet):
    health_table = {"paused_crit": "0s", "prometheus": "venus.prom", "deadline": "30s"}
    path = ssh_fleet.inventory(tmp_path, ssh_fleet.host_table("w1"), health=health_table)
    status, lines, _ = health(capsys, path)
    assert status == 2 and lines[1].startswith("CRITICAL w1 #0 ")
    assert (
        '\nvenus_fleet_health_status{status="CRITICAL"} 1\n'
        in (tmp_path / "venus.prom").read_text()
    )
    status, lines, _ = health(capsys, path, "--paused-crit", "1h")
    assert status == 1 and lines[1].startswith("WARNING w1 #0 ")


def test_overlapping_runs_never_leave_a_half_written_textfile(tmp_path, ssh_fleet):
    # Two cron runs at once, four times each, through the local transport
    # (no SSH: more runs per second, more chances to collide); a reader
    # polls the file the whole time, as node_exporter would. Two hosts per
    # run keep the agent's connections within its listen backlog (128 now;
    # a connect to a full Unix-socket backlog fails at once with EAGAIN).
    table = ssh_fleet.host_table("calm", transport="local")
    path = ssh_fleet.inventory(tmp_path, *(dict(table, name=f"calm{n}") for n in range(2)))
    textfile = tmp_path / "venus.prom"
    reads, problems = [], []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                text = textfile.read_text()
            except FileNotFoundError:
                continue
            families = {f.name for f in text_string_to_metric_families(text)}
            if not text.endswith("\n") or "venus_fleet_health_finding" not in families:
                problems.append(text)
            reads.append(len(text))

    polling = threading.Thread(target=reader, daemon=True)
    polling.start()
    argv = [VENUSCTL_COMMAND, "-i", str(path), "health", "--quiet", "--prometheus", str(textfile)]
    loop = f"for n in 1 2 3 4; do {' '.join(argv)} || exit 9; done"
    runs = [subprocess.Popen(["sh", "-c", loop]) for _ in range(2)]
    try:
        assert [run.wait(timeout=60) for run in runs] == [0, 0]
    finally:
        stop.set()
        polling.join(timeout=10)
    assert problems == [] and len(reads) > 10
    assert sorted(os.listdir(tmp_path)) == ["home", "inventory.toml", "venus.prom"]


def test_the_readme_cron_command_mails_nothing_when_ok_and_skips_while_locked(tmp_path, ssh_fleet):
    path = ssh_fleet.inventory(tmp_path, ssh_fleet.host_table("calm"))
    lock, textfile = tmp_path / "venus-health.lock", tmp_path / "venus.prom"
    command = [
        *("flock", "-n", str(lock), VENUSCTL_COMMAND, "-i", str(path), "health", "--quiet"),
        *("--deadline", "30s", "--prometheus", str(textfile)),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")  # cron mails nothing
    assert '\nvenus_fleet_health_status{status="OK"} 1\n' in textfile.read_text()
    # A run still holding the lock: the next one skips at once, silently.
    with open(lock, "w") as held:
        subprocess.run(["flock", "-n", str(held.fileno())], pass_fds=[held.fileno()], check=True)
        skipped = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert (skipped.returncode, skipped.stdout, skipped.stderr) == (1, "", "")
