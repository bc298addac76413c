"""Pure tests of the fleet-wide thread selection, bulk plans and their lines.

WorkerInfo objects here are shaped as docs/protocol.md says; the end-to-end
tests (test_venusctl_bulk_e2e.py) check the same code against real agents.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import re
from pathlib import Path

import pytest
from helpers import report, worker_info

import venusctl
from venusctl import Action, ActionOutcome, AgentRefused, HostStatus, Selector, Step
from worker_agent import api


def info(index, job_state="PC1Done", thread_state="Running", **extra) -> api.WorkerInfo:
    return worker_info(
        **{
            "index": index,
            "location": f"/srv/store{index}",
            "job_id": f"s-t010000-{index}",
            "job_state": job_state,
            "thread_state": {"state": thread_state, "elapsed": 3, "proc": None},
            **extra,
        }
    )


INVENTORY = venusctl.parse_inventory(
    """
[defaults]
user = "ops"
[[host]]
name = "w10"
address = "127.0.0.10"
[[host]]
name = "w2"
address = "127.0.0.2"
[[host]]
name = "down"
address = "127.0.0.3"
""",
    Path("inventory.toml"),
)
W10, W2, DOWN = INVENTORY.hosts

STUCK = info(
    0, "C1Done", "Paused", last_error="permanent: No cached parameters found for stacked-po"
)
RETRYING = info(1, "PC1Done", "Waiting", last_error="temporary: disk full")
RUNNING = info(2, "TicketAssigned", "Running")
IDLE = info(3, "", "Idle", job_id=None, job_stage=None)


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        (Selector(), [0, 1, 2, 3]),
        (Selector(errors=True), [0, 1]),
        (Selector(error_match=re.compile("No cached parameters")), [0]),
        (Selector(paused=True), [0]),
        (Selector(idle=True), [3]),
        (Selector(states=("C1Done", "PC1Done")), [0, 1]),
        (Selector(states=("PC1Done",), errors=True), [1]),
        (Selector(stage="PC2", paused=True), [0]),
        (Selector(plan="snapup"), []),
        (Selector(paused=True, idle=True), []),
    ],
)
def test_selector_keeps_threads_where_every_given_criterion_holds(selector, expected):
    threads = [STUCK, RETRYING, RUNNING, IDLE]
    assert [t.index for t in threads if selector.matches(t)] == expected


def test_selector_given_only_with_a_criterion():
    assert not Selector().given
    assert Selector(idle=True).given and Selector(states=("C1Done",)).given


def test_selector_value_parsers_refuse_what_is_not_a_name():
    assert venusctl.parse_state_list("C1Done, PC1Done") == ("C1Done", "PC1Done")
    # issue 10: names are checked against the known ones, not only their spelling
    with pytest.raises(ValueError, match="unknown state 'C1Done;reboot'"):
        venusctl.parse_state_list("C1Done;reboot")
    with pytest.raises(ValueError, match="give one or more names"):
        venusctl.parse_state_list(",")
    with pytest.raises(ValueError, match="invalid regular expression '\\(unclosed'"):
        venusctl.compile_error_match("(unclosed")
    with pytest.raises(ValueError, match="unknown plan 'Sealer!'"):
        venusctl.parse_plan_name("Sealer!")
    with pytest.raises(ValueError, match="unknown stage 'PC 1'"):
        venusctl.parse_stage("PC 1")


def test_select_threads_sorts_by_host_then_index_and_lists_who_did_not_answer():
    outcomes = {
        "w10": HostStatus(report=None, threads=[RUNNING, STUCK]),
        "w2": HostStatus(report=None, threads=[IDLE]),
        "down": venusctl.ConnectionRefused("connection refused"),
    }
    threads, unreachable = venusctl.select_threads(INVENTORY.hosts, outcomes, Selector())
    # hosts in natural order (w2 before w10), then by index
    assert [thread.label for thread in threads] == ["w2 #3", "w10 #0", "w10 #2"]
    assert venusctl.count_line(threads) == "3 threads on 2 hosts"
    assert venusctl.unreachable_lines(unreachable) == [
        "unreachable (1):",
        "  down: connection refused",
    ]
    headers, rows = venusctl.threads_table(threads, wide=False)
    assert headers[:2] == ["Host", "Index"]
    assert [row[:2] for row in rows] == [["w2", "3"], ["w10", "0"], ["w10", "2"]]


def test_a_stopped_agent_is_unreachable_with_its_last_heartbeat():
    outcomes = {
        "w10": HostStatus(
            report=report(4.5), threads=None, error=venusctl.AgentNotRunning("agent not running")
        ),
        "w2": HostStatus(report=None, threads=[]),
        "down": venusctl.ConnectionRefused("connection refused"),
    }
    threads, unreachable = venusctl.select_threads(INVENTORY.hosts, outcomes, Selector())
    assert threads == [] and venusctl.count_line(threads) == "0 threads on 0 hosts"
    assert venusctl.unreachable_lines(unreachable)[1:] == [
        "  down: connection refused",
        "  w10: agent not running (last heartbeat 4.5s ago)",
    ]


def fleet(*infos, host=W2):
    return [venusctl.FleetThread(host, document) for document in infos]


def test_bulk_plans_skip_what_would_change_nothing():
    pause = venusctl.plan_steps("pause", fleet(STUCK, RETRYING, IDLE), None)
    assert [(s.action, s.note) for s in pause] == [
        (None, "skip: already paused"),
        (Action("pause", 1), "pause after the stage in flight"),
        (Action("pause", 3), "pause"),
    ]
    assert venusctl.plan_summary("pause", pause) == "plan: pause 2 threads on 1 host; 1 skipped"
    assert venusctl.plan_summary("pause", pause[:1]) == "plan: nothing to pause; 1 skipped"
    resume = venusctl.plan_steps("resume", fleet(STUCK, RUNNING), "C1Done")
    assert [(s.action, s.note) for s in resume] == [
        (Action("resume", 0, "C1Done"), "resume in C1Done"),
        (None, "skip: not paused"),
    ]


def test_resume_state_checked_against_each_threads_plan_before_sending():
    snap = dataclasses.replace(STUCK, plan="snapup", index=5)
    steps = venusctl.plan_steps("resume", fleet(STUCK, snap), "C1Done")
    problem = venusctl.invalid_resume_state(steps, "C1Done")
    assert problem.startswith(
        "state 'C1Done' is not valid for plan snapup (w2 #5); valid states: Empty,"
    )
    assert problem.endswith("(narrow the selection with --plan)")
    # the plans' states are the agent's own tables
    assert "SnapEncoded" in problem and "C1Done" not in problem.split("valid states:")[1]
    assert venusctl.invalid_resume_state(steps[:1], "C1Done") is None


def test_resume_state_of_an_unknown_plan_is_left_to_the_thread():
    odd = dataclasses.replace(STUCK, plan="window-post-v9")
    steps = venusctl.plan_steps("resume", fleet(odd), "C1Done")
    assert venusctl.invalid_resume_state(steps, "C1Done") is None
    only = venusctl.invalid_resume_state(steps, "C1Done", lambda thread: ("x", ("SnapDone",)))
    assert only.startswith("state 'C1Done' is not valid for plan x (w2 #0)")


def test_results_summary_counts_failures():
    steps = [Step(t, Action("resume", t.index), "resume") for t in fleet(STUCK, RETRYING)]
    steps.append(Step(fleet(STUCK, host=W10)[0], Action("resume", 0), "resume"))
    outcomes = [
        (steps[0], ActionOutcome("stream")),
        (steps[1], ActionOutcome(error=AgentRefused(1001, "not paused"))),
        (steps[2], ActionOutcome("exec")),
    ]
    assert venusctl.results_summary("resume", outcomes) == (
        "resumed 2 of 3 threads on 2 hosts, 1 failed"
    )
    assert venusctl.results_summary("pause", outcomes[:1]) == "paused 1 of 1 thread on 1 host"


def test_describe_thread_for_drain_progress():
    assert venusctl.describe_thread(RUNNING) == "Running(3s) at PC2 (TicketAssigned)"
    assert venusctl.describe_thread(STUCK) == "Paused(3s) (C1Done)"
    assert venusctl.describe_thread(IDLE) == "Idle(3s)"


def test_bulk_forms_are_parsed_apart_from_the_single_form():
    parser = venusctl.build_parser()
    single = parser.parse_args(["resume", "w1", "0", "C1Done"])
    assert (single.host, single.index, single.state, single.states) == ("w1", 0, "C1Done", None)
    bulk = parser.parse_args(["resume", "--state", "C1Done", "--to-state", "C2Done", "-y"])
    assert (bulk.host, bulk.states, bulk.to_state, bulk.yes) == (None, ("C1Done",), "C2Done", True)
    watch = parser.parse_args(["list", "--watch"])
    assert (watch.watch, watch.count) == (2.0, None)
    watch = parser.parse_args(["threads", "--watch", "500ms", "--count", "3"])
    assert (watch.watch, watch.count) == (0.5, 3)
    with pytest.raises(venusctl.UsageError, match="invalid count '0'"):
        parser.parse_args(["list", "--watch", "--count", "0"])
    with pytest.raises(venusctl.UsageError, match="must be more than 0"):
        parser.parse_args(["drain", "w1", "--interval", "0"])


def test_count_without_watch_is_a_usage_error(tmp_path, capsys):
    path = tmp_path / "inventory.toml"
    path.write_text('[[host]]\nname = "w1"\naddress = "127.0.0.1"\nport = 9\n')
    assert venusctl.main(["-i", str(path), "list", "--count", "2"]) == 2
    assert capsys.readouterr().err == (
        "venusctl: --count goes with --watch (e.g. --watch 2 --count 5)\n"
    )


class RefusingPool:
    """A SessionPool stand-in for Drain's logic: fixed statuses, and every pause fails."""

    def __init__(self, threads: list[api.WorkerInfo]) -> None:
        self.threads = threads

    def status(self, host) -> HostStatus:
        return HostStatus(report=None, threads=self.threads, via="stream")

    def perform_all(self, host, actions):
        # the outcome of the host's one pause
        return [ActionOutcome(error=venusctl.HostTimeout("timed out"))]

    def send_ahead(self, hosts) -> None:
        """What a status fan-out calls first: nothing is kept to send ahead on here."""

    def forget(self, host) -> None:
        """What the fan-out calls for a host past its budget: nothing is held here."""


def fake_time_context():
    """A Context on StringIO streams whose sleep only moves its clock: (ctx, out, err, now)."""
    out, err, now = io.StringIO(), io.StringIO(), [0.0]
    env = venusctl.Environment(
        stdout=out,
        stderr=err,
        clock=lambda: now[0],
        sleep=lambda seconds: now.__setitem__(0, now[0] + seconds),
    )
    ctx = venusctl.Context(inventory=INVENTORY, env=env)
    return ctx, out, err, now


def test_drain_stops_waiting_for_a_thread_whose_pause_failed_and_says_it_runs():
    ctx, out, err, now = fake_time_context()
    args = argparse.Namespace(timeout=7200.0, interval=2.0, keep_queued=False)
    drain = venusctl.Drain(ctx, RefusingPool([RUNNING]), [W2], Selector(), args)
    assert drain.run() == venusctl.ExitStatus.FAILED
    assert now[0] < 10  # not the 2 h timeout: nothing would stop it
    assert err.getvalue().splitlines()[-1] == (
        "venusctl: drain incomplete; still running: w2 #2"
        " (pause failed: timed out; Running(3s) at PC2 (TicketAssigned))"
    )
    assert "none is running" not in out.getvalue()


class ScriptedPool:
    """A SessionPool stand-in for Drain's logic: each poll answers the next thread list."""

    def __init__(self, *polls: list[api.WorkerInfo]) -> None:
        self.polls = list(polls)

    def status(self, host) -> HostStatus:
        threads = self.polls.pop(0) if len(self.polls) > 1 else self.polls[0]
        return HostStatus(report=None, threads=threads, via="stream")

    def perform_all(self, host, actions):
        return [ActionOutcome("stream")]  # the host's one pause, accepted

    def send_ahead(self, hosts) -> None:
        """What a status fan-out calls first: nothing is kept to send ahead on here."""

    def forget(self, host) -> None:
        """What the fan-out calls for a host past its budget: nothing is held here."""


def test_drain_waits_until_paused_not_just_until_nothing_runs():
    # Between the end of its stage and its pause a thread shows Idle for a
    # moment: drain must not call that drained (a service stop would follow).
    ctx, out, err, now = fake_time_context()
    between = info(2, "PC1Done", "Idle")
    paused = info(2, "PC1Done", "Paused")
    pool = ScriptedPool([RUNNING], [between], [between], [paused])
    args = argparse.Namespace(timeout=60, interval=2, keep_queued=False)
    drain = venusctl.Drain(ctx, pool, [W2], Selector(), args)
    assert drain.run() == venusctl.ExitStatus.OK, err.getvalue()
    assert now[0] == 4  # two polls saw Idle and kept waiting
    assert pool.polls == [[paused]]
