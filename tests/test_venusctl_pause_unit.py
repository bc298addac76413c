"""Issue 10 point 8 without I/O: a queued pause shown, resume taking it back, drain
cancelling what it queued when it gives up, a reply that did not come. The agents here
are stand-ins that record what they are asked; the real daemon answers the same calls
in test_venusctl_safety_e2e.py."""

from __future__ import annotations

import argparse
import io

import pytest
from helpers import worker_info

import venusctl
from venusctl import (
    Action,
    ActionOutcome,
    AgentRefused,
    HostStatus,
    ReplyTimeout,
    Selector,
)
from worker_agent import api

INVENTORY = venusctl.parse_inventory(
    """
[[host]]
name = "w1"
address = "127.0.0.1"
[[host]]
name = "dam"
address = "127.0.0.2"
backend = "damocles"
""",
    venusctl.Path("inventory.toml"),
)
W1, DAM = INVENTORY.hosts


def running(index=0, queued=False, state="Running"):
    return worker_info(
        index=index,
        job_id=f"s-t010000-{index}",
        job_state="TicketAssigned",
        job_stage="PC1",
        thread_state={"state": state, "elapsed": 180, "proc": "mock"},
        pause_requested=queued,
    )


# -- shown in info, threads, list --wide, --json ----------------------------------------------


def test_a_queued_pause_shows_in_info_threads_and_list():
    queued, plain = running(0, queued=True), running(1)
    headers, rows = venusctl.info_table([queued, plain], wide=True)
    cells = [dict(zip(headers, row, strict=True)) for row in rows]
    assert (cells[0]["Paused"], cells[0]["ThreadState"]) == (
        "queued",
        "Running(3m0s) mock, pause queued",
    )
    assert (cells[1]["Paused"], cells[1]["ThreadState"]) == ("false", "Running(3m0s) mock")
    status = HostStatus(report=None, threads=[queued, plain], via="stream")
    entry = venusctl.list_entry(W1, status, 600)
    assert entry["pause_requested"] == 1
    headers, rows = venusctl.list_table([entry], wide=True)
    assert dict(zip(headers, rows[0], strict=True))["Queued"] == "1"
    assert queued.to_json()["pause_requested"] is True  # info/threads --json: the WorkerInfo
    thread = venusctl.FleetThread(W1, queued)
    assert venusctl.describe_thread(thread.info).startswith("Running(3m0s) mock, pause queued")


def test_bulk_plans_know_a_queued_pause():
    threads = [venusctl.FleetThread(W1, running(0, queued=True))]
    (pause,) = venusctl.plan_steps("pause", threads, None)
    assert (pause.action, pause.note) == (None, "skip: pause already queued")
    (resume,) = venusctl.plan_steps("resume", threads, None)
    assert (resume.action, resume.note) == (Action("resume", 0), "cancel the queued pause")
    (moved,) = venusctl.plan_steps("resume", threads, "C1Done")
    assert (moved.action, moved.note) == (None, "skip: not paused yet (a pause is queued)")


# -- resume takes a queued pause back ----------------------------------------------------------


class RecordingAgent:
    """An RpcAgent/CliAgent stand-in: resume_paused and cancel_pause answer from a script."""

    via = "stream"

    def __init__(self, resumes, cancels):
        self.resumes, self.cancels, self.calls = list(resumes), list(cancels), []

    def resume_paused(self, index, state):
        self.calls.append(("resume", index, state))
        answer = self.resumes.pop(0)
        if isinstance(answer, Exception):
            raise answer

    def cancel_pause(self, index):
        self.calls.append(("cancel", index))
        answer = self.cancels.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    resume = venusctl.RpcAgent.resume


NOT_PAUSED = AgentRefused(api.RpcCode.NOT_PAUSED, "worker #0 is not paused")


def test_resume_of_a_thread_with_a_queued_pause_cancels_it_and_says_so():
    agent = RecordingAgent([NOT_PAUSED], [True])
    assert agent.resume(0, None) == venusctl.PAUSE_CANCELLED
    assert agent.calls == [("resume", 0, None), ("cancel", 0)]
    outcome = ActionOutcome("stream", venusctl.PAUSE_CANCELLED)
    line = venusctl.action_line(W1, Action("resume", 0), outcome)
    assert line == "w1 #0: pause request cancelled: it was still queued; the thread keeps running"


def test_resume_of_a_paused_thread_sends_one_request():
    agent = RecordingAgent([None], [])
    assert agent.resume(0, None) is None and agent.calls == [("resume", 0, None)]


def test_nothing_queued_means_resume_again_once_then_the_refusal_stands():
    # cancel False: nothing queued, or the thread took its pause just now: resume is due
    agent = RecordingAgent([NOT_PAUSED, None], [False])
    assert agent.resume(0, None) is None
    assert agent.calls == [("resume", 0, None), ("cancel", 0), ("resume", 0, None)]
    agent = RecordingAgent([NOT_PAUSED, NOT_PAUSED], [False])
    with pytest.raises(AgentRefused, match="^worker #0 is not paused$"):
        agent.resume(0, None)


def test_resume_into_a_state_never_cancels():
    agent = RecordingAgent([NOT_PAUSED], [])
    with pytest.raises(AgentRefused, match="not paused"):
        agent.resume(0, "C1Done")
    assert agent.calls == [("resume", 0, "C1Done")]


@pytest.mark.parametrize(
    "old",
    [
        AgentRefused(api.RpcCode.METHOD_NOT_FOUND, "method not found"),
        venusctl.UnreadableReply("unreadable reply (exit 2): invalid choice: 'cancel-pause'"),
    ],
)
def test_an_agent_that_cannot_cancel_says_so(old):
    agent = RecordingAgent([NOT_PAUSED], [old])
    with pytest.raises(AgentRefused) as caught:
        agent.resume(0, None)
    assert caught.value.code == api.RpcCode.NOT_PAUSED
    assert "this agent cannot cancel a queued pause (upgrade it)" in str(caught.value)


# -- a reply that did not come ------------------------------------------------------------------


def test_no_reply_is_reported_as_may_still_take_effect_not_failed():
    error = ReplyTimeout("timeout after 15s waiting for the agent", 15.0)
    for kind in ("pause", "resume"):
        outcome = ActionOutcome(error=error)
        line = venusctl.action_line(W1, Action(kind, 3), outcome)
        assert line == (
            f"w1 #3: {kind}: no reply in 15s \u2014 it may still take effect;"
            " check with `venusctl info w1`"
        )
        entry = venusctl.action_entry(W1, Action(kind, 3), outcome)
        assert entry["ok"] is False
        assert entry["error"] == {
            "kind": "no-reply",
            "message": "timeout after 15s waiting for the agent",
            "seconds": 15.0,
        }
    # a timeout before anything was sent stays a failure
    line = venusctl.action_line(
        W1,
        Action("pause", 3),
        ActionOutcome(error=venusctl.HostTimeout("timeout after 5s (connect)")),
    )
    assert line == "w1 #3: pause failed: timeout after 5s (connect)"


def test_the_json_rpc_client_tells_a_reply_that_did_not_come_from_one_never_sent():
    class Silent:
        """A stream that takes the request and never answers."""

        def __init__(self):
            self.sent = b""

        def settimeout(self, seconds):
            pass

        def sendall(self, data):
            self.sent += data

        def recv(self, size):
            raise TimeoutError

        def close(self):
            pass

    stream = Silent()
    client = venusctl.JsonRpcClient(stream, 2.5)
    with pytest.raises(ReplyTimeout) as caught:
        client.call(api.Method.PAUSE.value, [0])
    assert caught.value.seconds == 2.5 and b"WorkerPause" in stream.sent

    class Blocked(Silent):
        def sendall(self, data):
            raise TimeoutError

    with pytest.raises(venusctl.HostTimeout) as caught:
        venusctl.JsonRpcClient(Blocked(), 2.5).call(api.Method.PAUSE.value, [0])
    assert not isinstance(caught.value, ReplyTimeout)


# -- drain gives up: the pauses it queued are taken back -----------------------------------------


class FakeAgent:
    via = "stream"

    def __init__(self, log, cancels):
        self.log, self.cancels = log, cancels

    def pause(self, index):
        self.log.append(("pause", index))
        return venusctl.PAUSE_QUEUED

    def cancel_pause(self, index):
        self.log.append(("cancel", index))
        answer = self.cancels.get(index, True)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def close(self):
        pass


class FakeSession:
    def __init__(self, agent):
        self.agent = agent

    def open_control(self):
        return self.agent

    def open_damocles(self):
        return self.agent


class DrainPool:
    """A SessionPool stand-in: the threads run forever, the actions go through perform_all."""

    def __init__(self, threads, cancels=None):
        self.threads, self.log, self.cancels = threads, [], cancels or {}

    def status(self, host):
        queued = any(entry == ("pause", t.index) for entry in self.log for t in self.threads)
        threads = [
            worker_info(**{**t.to_json(), "pause_requested": queued and host.backend == "venus"})
            for t in self.threads
        ]
        return HostStatus(report=None, threads=threads, via="stream")

    def perform_all(self, host, actions):
        session = FakeSession(FakeAgent(self.log, self.cancels))
        return venusctl.perform_all(session, host, actions)

    def send_ahead(self, hosts):
        """What a status fan-out calls first: nothing is kept to send ahead on here."""

    def forget(self, host):
        """What the fan-out calls for a host past its budget: nothing is held here."""


def drain(hosts, pool, keep_queued=False, ctrl_c_after=None):
    """Drain with a clock that only its sleep moves; Ctrl-C during the sleep number
    `ctrl_c_after` + 1 (the main thread's wait, where a real Ctrl-C lands)."""
    out, err, now, sleeps = io.StringIO(), io.StringIO(), [0.0], []

    def sleep(seconds):
        sleeps.append(seconds)
        if ctrl_c_after is not None and len(sleeps) > ctrl_c_after:
            raise KeyboardInterrupt
        now[0] += seconds

    env = venusctl.Environment(stdout=out, stderr=err, clock=lambda: now[0], sleep=sleep)
    ctx = venusctl.Context(inventory=INVENTORY, env=env)
    args = argparse.Namespace(timeout=10.0, interval=2.0, keep_queued=keep_queued)
    job = venusctl.Drain(ctx, pool, hosts, Selector(), args)
    return job.run(), job, out.getvalue(), err.getvalue()


def test_a_drain_that_times_out_cancels_the_pauses_it_queued():
    pool = DrainPool([running(0), running(1)], cancels={1: False})
    status, job, out, err = drain([W1], pool)
    assert status == venusctl.ExitStatus.FAILED
    assert pool.log == [("pause", 0), ("pause", 1), ("cancel", 0), ("cancel", 1)]
    lines = err.splitlines()
    assert lines[-3].startswith("venusctl: drain timed out after 10s; still running: w1 #0")
    assert lines[-2] == "venusctl: w1 #0: queued pause cancelled (the thread keeps running)"
    assert lines[-1].startswith("venusctl: w1 #1: no pause queued any more: it took its pause")
    assert job.queued == {("w1", 0): "cancelled", ("w1", 1): "taken"}


def test_keep_queued_leaves_them():
    pool = DrainPool([running(0)])
    status, job, _, err = drain([W1], pool, keep_queued=True)
    assert status == venusctl.ExitStatus.FAILED and ("cancel", 0) not in pool.log
    assert err.splitlines()[-1] == (
        "venusctl: w1 #0: pause still queued (--keep-queued): it stops at its next stage boundary"
    )


def test_an_interrupted_drain_cancels_too_and_exits_130():
    pool = DrainPool([running(0)])
    status, job, out, err = drain([W1], pool, ctrl_c_after=1)
    assert status == venusctl.ExitStatus.INTERRUPTED
    assert pool.log == [("pause", 0), ("cancel", 0)]
    assert "venusctl: drain interrupted; still running: w1 #0" in err
    assert "w1 #0: queued pause cancelled" in err


def test_a_failed_cancel_says_the_thread_may_still_stop_and_json_has_each_outcome(capsys):
    pool = DrainPool([running(0)], cancels={0: venusctl.ConnectionRefused("connection refused")})
    status, job, _, err = drain([W1], pool)
    assert err.splitlines()[-1] == (
        "venusctl: w1 #0: cancel of the queued pause failed: connection refused;"
        " it may still stop at its next stage boundary"
    )
    thread = job.as_json(job.busy(), 10.0)["threads"][0]
    assert thread["queued"] == "cancel-failed"
    assert thread["cancel_error"] == {"kind": "connection-refused", "message": "connection refused"}


def test_a_damocles_thread_is_never_sent_a_cancel_and_the_line_says_why():
    pool = DrainPool([running(0)])
    status, job, _, err = drain([DAM], pool)
    assert pool.log == [("pause", 0)]
    assert err.splitlines()[-1] == (
        "venusctl: dam #0: a damocles-worker can neither show nor cancel a queued pause:"
        " if one is queued, the thread stops at its next stage boundary"
    )
