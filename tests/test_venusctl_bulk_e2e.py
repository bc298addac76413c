"""venusctl threads, bulk pause/resume, drain and watch, end to end.

Real sshd hosts and real agents (conftest.py): b1 and b2 are the hosts the
bulk actions change, drainme and stuck the ones drain changes, down is an
sshd that is not running (the partial failure). Confirmation is answered
through a real pseudo-terminal; "not a terminal" is the console script with
stdin from /dev/null.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import test_venusctl_damocles_e2e as damocles_e2e
from conftest import VENUSCTL_COMMAND, run, run_json, write_inventory
from helpers import wait_until

import venusctl
from worker_agent.states import PLANS, State

# The damocles stand-in and its sshd hosts, as the damocles tests start them.
damocles_sshd = damocles_e2e.damocles_sshd
standin = damocles_e2e.standin
damocles_table = damocles_e2e.damocles_table

DURATION = r"(\d+\.\ds|\d+s|\d+m\d+s|\d+h\d+m\d+s)"


pytestmark = [
    pytest.mark.e2e,
    # nothing of the machine's ~/.ssh, ssh-agent or $VENUSCTL_INVENTORY leaks in
    pytest.mark.usefixtures("isolated_home"),
]


def table_rows(text: str) -> list[list[str]]:
    """The rows of a two-space separated table (header included), until a blank-free end."""
    return [re.split(r"\s{2,}", line.strip()) for line in text.splitlines()]


def threads_of(capsys, inventory: Path, host: str) -> list[dict]:
    status, document = run_json(capsys, inventory, "info", host)
    assert status == 0, document
    return document["threads"]


def console(inventory: Path, *argv: str, **options) -> subprocess.CompletedProcess:
    return subprocess.run(
        [VENUSCTL_COMMAND, "-i", str(inventory), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        **options,
    )


def under_pty(
    inventory: Path,
    argv: list[str],
    answer: str | None,
    before_answer=None,
    stdout_on_pty: bool = False,
) -> tuple[int, str, str]:
    """Run the console script with stdin and stderr on a real pty; type `answer` when asked.

    before_answer() runs once the question is on screen, before the answer.
    Returns the exit status, everything the terminal showed (stderr, the
    echo of the answer, and stdout when stdout_on_pty) and stdout otherwise
    (a pipe; the output here is small, so it is read at the end).
    """
    master, slave = os.openpty()
    process = subprocess.Popen(
        [VENUSCTL_COMMAND, "-i", str(inventory), *argv],
        stdin=slave,
        stdout=slave if stdout_on_pty else subprocess.PIPE,
        stderr=slave,
        close_fds=True,
    )
    os.close(slave)
    shown = b""
    try:
        deadline = time.monotonic() + 60
        answered = answer is None
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the child closed the terminal
                    chunk = b""
                shown += chunk
                if not answered and b"[y/N]" in shown:
                    if before_answer is not None:
                        before_answer()
                    os.write(master, answer.encode() + b"\n")
                    answered = True
                if not chunk and process.poll() is not None:
                    break
            elif process.poll() is not None:
                break
        status = process.wait(timeout=10)
        out = b"" if stdout_on_pty else process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
        if process.stdout is not None:
            process.stdout.close()
        os.close(master)
    return status, shown.decode(errors="replace"), out.decode(errors="replace")


# -- threads -------------------------------------------------------------------------------------


def test_threads_shows_matching_threads_of_every_host_and_who_did_not_answer(
    tmp_path, capsys, ssh_fleet
):
    path = ssh_fleet.inventory(tmp_path, "w2", "w1", "down", "dead")
    status, out, err = run(capsys, path, "threads", "--errors", "--error-match", "No cached")
    assert (status, err) == (1, "")  # down and dead did not answer
    lines = out.splitlines()
    assert lines[0].split() == [
        "Host",
        "Index",
        "Loc",
        "SectorID",
        "Paused",
        "PausedElapsed",
        "State",
        "LastErr",
    ]
    rows = table_rows("\n".join(lines[1:3]))
    assert [row[:2] for row in rows] == [["w1", "0"], ["w2", "0"]]  # sorted by host, not inventory
    for row in rows:
        assert row[4:7] == ["true", row[5], "C1Done"] and re.fullmatch(DURATION, row[5])
        assert row[7].startswith("permanent: No cached parameters")
    assert lines[3] == "2 threads on 2 hosts"
    assert lines[4] == "unreachable (2):"
    assert re.fullmatch(r"  dead: agent not running \(last heartbeat .* ago\)", lines[5])
    assert lines[6] == "  down: connection refused"


def test_threads_selectors_combine_and_json_carries_the_worker_info(tmp_path, capsys, ssh_fleet):
    path = ssh_fleet.inventory(tmp_path, "w1", "w2")
    status, document = run_json(capsys, path, "threads", "--state", "C1Done,PC1Done", "--paused")
    assert status == 0
    assert document["count"] == 2 and document["hosts"] == 2
    assert [(t["host"], t["index"]) for t in document["threads"]] == [("w1", 0), ("w2", 0)]
    assert document["threads"][0]["plan"] == "sealer" and document["unreachable"] == []
    # every criterion must hold: paused and idle together is nobody
    status, out, _ = run(capsys, path, "threads", "--paused", "--idle")
    assert (status, out) == (0, "0 threads on 0 hosts\n")
    status, out, _ = run(capsys, path, "threads", "--plan", "snapup")
    assert out == "0 threads on 0 hosts\n"
    status, out, _ = run(capsys, path, "threads", "-l", "w2", "--wide")
    assert out.splitlines()[0].split()[-4:] == ["Plan", "Stage", "ThreadState", "LastErr"]
    assert out.splitlines()[-1] == "2 threads on 1 host"


def test_threads_bad_selector_is_one_line_and_exit_2(tmp_path, capsys, ssh_fleet):
    path = ssh_fleet.inventory(tmp_path, "w1")
    status, out, err = run(capsys, path, "threads", "--error-match", "No (cached")
    assert (status, out) == (2, "")
    assert len(err.splitlines()) == 1 and "invalid regular expression 'No (cached'" in err
    status, out, err = run(capsys, path, "threads", "--state", "C1Done,rm -rf")
    assert (status, out) == (2, "")
    assert "unknown state 'rm -rf'" in err and len(err.splitlines()) == 1


# -- bulk pause / resume -------------------------------------------------------------------------


def test_bulk_resume_dry_run_prints_the_plan_and_sends_nothing(tmp_path, capsys, ssh_fleet):
    path = ssh_fleet.inventory(tmp_path, "b1", "b2", "down")
    argv = ["resume", "-l", "*", "--errors", "--error-match", "No cached parameters"]
    status, out, err = run(capsys, path, *argv, "--to-state", "C1Done", "--dry-run")
    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == [
        "Host",
        "Index",
        "SectorID",
        "State",
        "ThreadState",
        "LastErr",
        "Action",
    ]
    rows = table_rows("\n".join(lines[1:3]))
    assert [(row[0], row[1], row[-1]) for row in rows] == [
        ("b1", "0", "resume in C1Done"),
        ("b2", "0", "resume in C1Done"),
    ]
    assert lines[3:] == [
        "plan: resume 2 threads on 2 hosts",
        "  moves C1Done -> C1Done: 2 sectors",  # how many sectors each state move touches
        "unreachable (1):",
        "  down: connection refused",
        "dry run: nothing was sent",
    ]
    for host in ("b1", "b2"):  # still paused with the error: nothing was sent
        thread = threads_of(capsys, path, host)[0]
        assert thread["thread_state"]["state"] == "Paused" and thread["last_error"]


def test_bulk_action_without_a_terminal_prints_the_plan_and_refuses(tmp_path, ssh_fleet):
    path = ssh_fleet.inventory(tmp_path, "b1")
    done = console(path, "pause", "-l", "b1", stdin=subprocess.DEVNULL)
    assert done.returncode == 2
    assert done.stderr == "venusctl: not confirmed: stdin is not a terminal; add --yes to act\n"
    assert "plan: pause 1 thread on 1 host; 1 skipped" in done.stdout
    assert re.search(r"^b1 +0 .*skip: already paused$", done.stdout, re.M)
    # stdin on a terminal but stderr, where the question goes, in a file: no silent wait
    master, terminal = os.openpty()
    try:
        done = console(path, "pause", "-l", "b1", stdin=terminal)
    finally:
        os.close(terminal)
        os.close(master)
    assert done.returncode == 2
    assert done.stderr == "venusctl: not confirmed: stderr is not a terminal; add --yes to act\n"
    # thread #1 still seals: the refusals sent nothing
    info = json.loads(console(path, "info", "b1", "--json").stdout)
    assert info["threads"][1]["thread_state"]["state"] != "Paused"


def test_bulk_pause_and_resume_with_yes_one_host_down(tmp_path, capsys, ssh_fleet):
    path = ssh_fleet.inventory(tmp_path, "b1", "b2", "down")
    status, out, err = run(capsys, path, "pause", "-l", "b1,b2,down", "--yes")
    assert (status, err) == (1, "")  # down could not be asked: a partial failure
    assert "plan: pause 2 threads on 2 hosts; 2 skipped" in out
    assert "  down: connection refused" in out
    tail = out.splitlines()[-3:]
    # issue 10: the line says whether the thread stopped or its pause waits for its stage
    for host, line in zip(("b1", "b2"), tail, strict=False):
        assert re.fullmatch(rf"{host} #1: (paused|{re.escape(venusctl.PAUSE_QUEUED)})", line)
    assert tail[2] == "paused 2 of 2 threads on 2 hosts"
    for host in ("b1", "b2"):
        wait_until(
            lambda host=host: (
                threads_of(capsys, path, host)[1]["thread_state"]["state"] == "Paused"
            ),
            15,
            interval=0.1,
            what=f"{host} #1 paused",
        )

    # resume to a state the thread's plan does not have: refused before anything is sent
    status, out, err = run(capsys, path, "resume", "-l", "b1", "--to-state", "SnapDone", "--yes")
    assert status == 2
    assert "state 'SnapDone' is not valid for plan sealer (b1 #0); valid states: Empty," in err
    assert threads_of(capsys, path, "b1")[1]["thread_state"]["state"] == "Paused"

    status, document = run_json(capsys, path, "resume", "-l", "b1,b2", "--paused", "--yes")
    assert status == 0
    assert [(r["name"], r["index"], r["ok"]) for r in document["results"]] == [
        ("b1", 0, True),
        ("b1", 1, True),
        ("b2", 0, True),
        ("b2", 1, True),
    ]
    assert {r["via"] for r in document["results"]} == {"stream"}
    # #0 fails C2 again and pauses itself; #1 seals on
    for host in ("b1", "b2"):
        wait_until(
            lambda host=host: (
                threads_of(capsys, path, host)[0]["thread_state"]["state"] == "Paused"
            ),
            15,
            interval=0.1,
            what=f"{host} back to its error",
        )
        assert threads_of(capsys, path, host)[1]["thread_state"]["state"] != "Paused"


def test_bulk_action_refusals(tmp_path, capsys, ssh_fleet):
    path = ssh_fleet.inventory(tmp_path, "b1", "b2")
    # no -l: never the whole fleet by default, thread selectors or not (issue 10: the hosts
    # of an action are named, -l '*' for all of them)
    for selectors in ([], ["--errors"]):
        status, out, err = run(capsys, path, "pause", *selectors, "--yes")
        assert (status, out) == (2, "")
        assert "give -l LIMIT (-l '*' for the whole fleet)" in err
    # a selector that matches nothing says so
    argv = ["resume", "-l", "*", "--error-match", "no such error", "--yes"]
    status, out, err = run(capsys, path, *argv)
    assert (status, out, err) == (1, "", "venusctl: no thread matches the selection\n")
    # HOST INDEX and selectors do not mix
    status, _, err = run(capsys, path, "pause", "b1", "1", "--errors")
    assert status == 2 and "give either HOST INDEX or selectors, not both" in err


def test_nothing_selected_because_hosts_did_not_answer_says_so(tmp_path, capsys, ssh_fleet):
    path = ssh_fleet.inventory(tmp_path, "down")
    message = "no thread matches the selection (1 host did not answer)"
    status, out, err = run(capsys, path, "resume", "-l", "down", "--paused", "--yes")
    assert status == 1 and err == f"venusctl: {message}\n"
    assert out == "unreachable (1):\n  down: connection refused\n"
    # drain --json: a document for the script all the same, nothing drained
    status, out, err = run(capsys, path, "drain", "down", "--json")
    assert status == 1 and err == f"venusctl: {message}: nothing to drain\n"
    document = json.loads(out)
    assert (document["drained"], document["threads"]) == (False, [])
    assert [host["name"] for host in document["unreachable"]] == ["down"]


def test_bulk_resume_asks_on_a_terminal(tmp_path, ssh_fleet):
    path = ssh_fleet.inventory(tmp_path, "b2")
    argv = ["resume", "-l", "b2", "--errors", "--to-state", "C1Done"]
    status, shown, _ = under_pty(path, argv, "n")
    assert status == 1
    assert "resume 1 thread on 1 host? [y/N]" in shown
    assert "cancelled, nothing was sent" in shown
    status, shown, _ = under_pty(path, argv, "y")
    assert status == 0, shown


def test_a_thread_that_changed_after_the_plan_fails_alone(tmp_path, capsys, ssh_fleet):
    """Between the plan and the answer someone resumes b2 #1 by hand: only that one fails."""
    path = ssh_fleet.inventory(tmp_path, "b1", "b2")
    for host in ("b1", "b2"):
        status, _, err = run(capsys, path, "pause", host, "1")
        assert status == 0, err
        wait_until(
            lambda host=host: (
                threads_of(capsys, path, host)[1]["thread_state"]["state"] == "Paused"
            ),
            15,
            interval=0.1,
            what=f"{host} #1 paused",
        )

    def resume_b2_1_by_hand() -> None:
        assert console(path, "resume", "b2", "1").returncode == 0

    argv = ["resume", "-l", "b1,b2", "--paused"]
    status, shown, out = under_pty(path, argv, "y", before_answer=resume_b2_1_by_hand)
    assert status == 1, shown
    assert "resume 4 threads on 2 hosts? [y/N]" in shown
    assert out.splitlines()[-5:] == [
        "b1 #0: resumed",
        "b1 #1: resumed",
        "b2 #0: resumed",
        "b2 #1: resume refused: worker #1 is not paused",
        "resumed 3 of 4 threads on 2 hosts, 1 failed",
    ]


# -- drain ---------------------------------------------------------------------------------------


def drain_while_running(capsys, path: Path, attempts: int = 5) -> tuple[int, dict, str]:
    """drain drainme --json at a moment one of its threads is in a stage.

    Its stages last 1 s with short waits between, so that is nearly always
    so; when the snapshot caught both threads between stages, resume and try
    again rather than assert nothing.
    """
    for _ in range(attempts):
        wait_until(
            lambda: any(
                t["thread_state"]["state"] == "Running" for t in threads_of(capsys, path, "drainme")
            ),
            15,
            interval=0.1,
            what="a thread of drainme running",
        )
        argv = ["drain", "drainme", "--interval", "200ms", "--timeout", "30s", "--json"]
        status, out, err = run(capsys, path, *argv)
        document = json.loads(out)
        if any(t["before"]["thread_state"] == "Running" for t in document["threads"]):
            return status, document, err
        run(capsys, path, "resume", "-l", "drainme", "--paused", "--yes")
    raise AssertionError("drainme never had a thread in a stage when drained")


def test_drain_pauses_at_stage_boundaries_and_waits(tmp_path, capsys, ssh_fleet):
    path = ssh_fleet.inventory(tmp_path, "drainme")
    status, document, err = drain_while_running(capsys, path)
    assert status == 0, err
    assert document["drained"] is True and document["unreachable"] == []
    assert err.startswith("drain: pausing 2 threads on 1 host at their next stage boundary")
    sealer = PLANS["sealer"]
    for thread in document["threads"]:
        before, after = thread["before"], thread["after"]
        assert after["thread_state"] == "Paused" and thread["running"] is False
        if before["job_state"] and after["job_state"]:  # "": between two tasks
            # no stage lost: the task state only moves forward...
            assert State(after["job_state"]) in sealer.reachable_from(State(before["job_state"]))
        if before["thread_state"] == "Running":
            # ...and the stage that was in flight finished and was kept
            assert after["job_state"] != before["job_state"], thread
    # drained for real: the agent agrees, a moment later too
    time.sleep(0.5)
    assert {t["thread_state"]["state"] for t in threads_of(capsys, path, "drainme")} == {"Paused"}


def test_drain_on_a_terminal_prints_each_change(tmp_path, capsys, ssh_fleet):
    path = ssh_fleet.inventory(tmp_path, "drainme")
    # An earlier drain test may have left drainme drained; alone, nothing is paused (exit 1).
    status, _, err = run(capsys, path, "resume", "-l", "drainme", "--paused", "--yes")
    assert status == 0 or err == "venusctl: no thread matches the selection\n", err
    wait_until(
        lambda: any(
            t["thread_state"]["state"] == "Running" for t in threads_of(capsys, path, "drainme")
        ),
        15,
        interval=0.1,
        what="a thread of drainme running again",
    )
    status, shown, _ = under_pty(path, ["drain", "drainme", "--interval", "200ms"], answer=None)
    assert status == 0, shown
    changes = re.findall(r"^drainme #\d: (\S+).* -> (Paused\S*) ", shown, re.M)
    assert changes and all(new.startswith("Paused") for _, new in changes), shown
    assert any(old.startswith("Running") for old, _ in changes), shown


def test_drain_times_out_naming_the_threads_still_running(tmp_path, capsys, ssh_fleet):
    path = ssh_fleet.inventory(tmp_path, "stuck", "down")
    status, out, err = run(
        capsys, path, "drain", "-l", "stuck,down", "--timeout", "1s", "--interval", "200ms"
    )
    assert status == 1
    assert re.search(
        r"^venusctl: drain timed out after 1s; still running: stuck #0"
        r" \(Running\((?:\d+[hms])+\) mock, pause queued at \w+ \(\w+\)\)$",
        err,
        re.M,
    ), err
    # issue 10: the pause it queued is taken back: the thread keeps running, nothing queued
    assert err.endswith("venusctl: stuck #0: queued pause cancelled (the thread keeps running)\n")
    (thread,) = threads_of(capsys, path, "stuck")
    assert thread["pause_requested"] is False and thread["thread_state"]["state"] == "Running"
    rows = table_rows(out)
    assert rows[0] == ["Host", "Index", "SectorID", "Before", "After", "ThreadState"]
    assert rows[1][:2] == ["stuck", "0"] and rows[1][5].startswith("Running(")
    assert "  down: connection refused" in out


def test_drain_needs_a_target(tmp_path, capsys, ssh_fleet):
    path = ssh_fleet.inventory(tmp_path, "stuck")
    status, _, err = run(capsys, path, "drain")
    assert status == 2 and "drain: which hosts? give -l LIMIT" in err
    status, _, err = run(capsys, path, "drain", "nosuchhost")
    assert status == 2 and "unknown host 'nosuchhost'" in err


# -- watch ---------------------------------------------------------------------------------------


def test_list_watch_prints_successive_frames(tmp_path, capsys, ssh_fleet):
    path = ssh_fleet.inventory(tmp_path, "w1", "w2", "down")
    status, out, err = run(capsys, path, "list", "--watch", "300ms", "--count", "3")
    assert (status, err) == (1, "")  # down is a row in every frame
    frames = out.split("\f\n")
    assert len(frames) == 3
    for frame in frames:
        header, blank, *table = frame.splitlines()
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d  every 0.3s  refresh \d+ ms", header)
        assert blank == ""
        assert table[0].split()[0] == "Name"
        assert [row.split()[0] for row in table[1:]] == ["w1", "w2", "down"]
        assert table[-1].endswith("connection refused")


def test_watch_does_not_wait_again_for_a_host_that_timed_out(tmp_path, capsys, ssh_fleet):
    with socket.socket() as silent:  # the kernel accepts; nobody ever answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        tables = [
            ssh_fleet.host_table("w1"),
            {"name": "silent", "address": "127.0.0.1", "port": silent.getsockname()[1]},
        ]
        path = write_inventory(
            tmp_path / "inventory.toml", tables, **ssh_fleet.defaults(connect_timeout=1)
        )
        status, out, _ = run(capsys, path, "list", "--watch", "200ms", "--count", "4")
    assert status == 1
    frames = out.split("\f\n")
    refresh_ms = [int(re.search(r"refresh (\d+) ms", frame).group(1)) for frame in frames]
    assert refresh_ms[0] >= 1000  # the first frame waits for its connect timeout...
    assert max(refresh_ms[1:]) < 700, refresh_ms  # ...later ones show that error meanwhile
    for frame in frames:
        assert re.search(r"^silent .*timeout after 1s", frame, re.M), frame
        assert re.search(r"^w1 +127\.0\.0\.\d+:\d+ +2 ", frame, re.M), frame


def test_watch_redraws_in_place_on_a_terminal(tmp_path, ssh_fleet):
    path = ssh_fleet.inventory(tmp_path, "w1")
    argv = ["threads", "--watch", "200ms", "--count", "2"]
    status, shown, _ = under_pty(path, argv, answer=None, stdout_on_pty=True)
    assert status == 0
    screens = shown.split("\x1b[H\x1b[2J")  # cursor home, clear screen: one per frame
    assert screens[0] == "" and len(screens) == 3, repr(shown)
    for screen in screens[1:]:
        assert "(Ctrl-C to stop)" in screen and "2 threads on 1 host" in screen
    assert "\f" not in shown  # no frame separators on a terminal


def test_threads_watch_json_is_one_document_per_frame(tmp_path, capsys, ssh_fleet):
    path = ssh_fleet.inventory(tmp_path, "w1", "w2")
    status, out, _ = run(
        capsys, path, "threads", "--errors", "--watch", "0.2", "--count", "2", "--json"
    )
    assert status == 0
    documents = [json.loads(line) for line in out.splitlines()]
    assert len(documents) == 2
    assert documents[1]["time"] > documents[0]["time"]
    for document in documents:
        assert document["count"] == 2 and document["refresh_ms"] >= 0


def test_watch_ends_cleanly_on_ctrl_c(tmp_path, ssh_fleet):
    path = ssh_fleet.inventory(tmp_path, "w1")
    process = subprocess.Popen(
        [VENUSCTL_COMMAND, "-i", str(path), "list", "--watch", "200ms"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = process.stdout.readline()
        assert "every 0.2s" in first
        time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        status = process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    assert status == 0
    assert process.stderr.read() == ""


def test_session_pool_keeps_connections_and_reconnects_a_dropped_one(tmp_path, ssh_fleet):
    path = ssh_fleet.inventory(tmp_path, "w1")
    host = venusctl.load_inventory(path).hosts[0]
    pool = venusctl.SessionPool(venusctl.SshContext())
    try:
        first = pool.status(host)
        session = pool.session(host)
        second = pool.status(host)
        assert pool.session(host) is session  # one SSH connection for both refreshes
        assert first.via == second.via == "stream" and len(second.threads) == 2
        session.transport.close()  # the connection drops
        third = pool.status(host)
        assert pool.session(host) is not session and third.threads is not None
    finally:
        pool.close()


def test_fan_out_progress_on_a_terminal_only(tmp_path, capsys, ssh_fleet):
    path = ssh_fleet.inventory(tmp_path, "w1", "w2", "w3")
    status, shown, _ = under_pty(path, ["list"], answer=None)
    assert status == 0
    assert re.search(r"\r[12]/3 hosts", shown), repr(shown)
    status, out, err = run(capsys, path, "list")
    assert (status, err) == (0, "")


# -- with damocles workers (backend = "damocles") ------------------------------------------------


def test_fleet_commands_cover_damocles_workers_too(
    tmp_path, capsys, ssh_fleet, damocles_sshd, standin
):
    path = write_inventory(
        tmp_path / "mixed.toml",
        [
            ssh_fleet.host_table("w1"),
            damocles_table(damocles_sshd, "dam-now", standin("--release", "v0.13.0")),
            damocles_table(damocles_sshd, "dam-old", standin("--release", "v0.3.1")),
        ],
        **ssh_fleet.defaults(),
    )
    status, out, err = run(capsys, path, "threads", "--errors", "--error-match", "No cached")
    assert (status, err) == (0, "")
    assert [row[:2] for row in table_rows(out)[1:-1]] == [
        ["dam-now", "0"],
        ["dam-old", "0"],
        ["w1", "0"],
    ]
    assert out.endswith("3 threads on 3 hosts\n")

    # a state of another plan is refused for the damocles threads before anything is sent
    argv = ["resume", "-l", "dam-*", "--errors", "--to-state", "SnapEncoded", "--yes"]
    status, _, err = run(capsys, path, *argv)
    assert status == 2 and "state 'SnapEncoded' is not valid for plan sealer (dam-now #0)" in err

    # bulk pause: damocles' own answers, per thread
    status, out, err = run(capsys, path, "pause", "-l", "dam-now", "--yes")
    assert (status, err) == (0, "")
    assert out.splitlines()[-3:] == [
        "dam-now #1: pause queued: it stops after its running stage PC1; damocles-worker"
        " drops that stage's result and runs it again on resume",
        "dam-now #2: paused",
        "paused 2 of 2 threads on 1 host",
    ]

    # drain: the stand-in's PC1 runs for hours, so the queued pause never lands
    argv = ["drain", "dam-now", "--timeout", "500ms", "--interval", "100ms"]
    status, out, err = run(capsys, path, *argv)
    assert status == 1
    assert re.search(r"still running: dam-now #1 \(Running\(\d+m?\d*s\) .*at PC1", err), err

    status, out, _ = run(capsys, path, "list", "--watch", "200ms", "--count", "2")
    frames = out.split("\f\n")
    assert status == 0 and len(frames) == 2
    for frame in frames:
        assert [line.split()[0] for line in frame.splitlines()[3:]] == ["w1", "dam-now", "dam-old"]
