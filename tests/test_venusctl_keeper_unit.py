"""The connection keeper's pure parts: the values on its wire, its settings, its folder.

What the keeper sends back must be, once read, what the run would have had
itself: the same classes, messages and fields (so every printer says the
same). The end-to-end tests (test_venusctl_keeper_e2e.py) run the real thing.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import re
import tempfile
import threading
import time
from pathlib import Path

import pytest
from helpers import report, worker_info

import venusctl
from venusctl import (
    Action,
    ActionOutcome,
    HostStatus,
    KeeperUnavailable,
    from_wire,
    to_wire,
)


def through_the_wire(value, tracebacks: bool = False):
    """What a value is once the keeper sent it: JSON text, read back."""
    return from_wire(json.loads(json.dumps(to_wire(value, tracebacks))))


def test_a_host_status_comes_back_whole():
    status = HostStatus(
        report=report(age=3.25),
        threads=[worker_info(), worker_info(index=1, last_error="permanent: bad\nline")],
        via="stream",
        worker_version="v0.13.0",
        heartbeat=False,
        release_line="v0.9",
    )
    back = through_the_wire(status)
    assert back == status
    assert back.threads[0].thread_state.state is venusctl.ThreadState.Running


def test_actions_and_their_outcomes_come_back_whole():
    outcomes = [
        ActionOutcome("stream", venusctl.PAUSE_QUEUED),
        ActionOutcome(error=venusctl.AgentRefused(-32001, "worker #1 is not paused")),
    ]
    back = through_the_wire(outcomes)
    assert back[0] == outcomes[0]
    assert type(back[1].error) is venusctl.AgentRefused
    assert back[1].error.as_json() == {
        "kind": "agent-refused",
        "code": -32001,
        "message": str(outcomes[1].error),
    }
    assert through_the_wire([Action("resume", 2, "C1Done")]) == [Action("resume", 2, "C1Done")]
    assert through_the_wire((1, "a", None)) == (1, "a", None)
    assert through_the_wire({"k": [1.5, True]}) == {"k": [1.5, True]}


def every_host_error() -> list[BaseException]:
    """One instance of each HostError class venusctl raises, with its own fields."""
    stream = venusctl.StreamConnectFailed("connect failed to the agent socket /run/x.sock")
    return [
        venusctl.HostError("cannot connect: no route to host", "unreachable"),
        venusctl.ConnectionRefused("connection refused"),
        venusctl.HostTimeout("timeout after 5s (connect)"),
        venusctl.ReplyTimeout("timeout after 15s (waiting for the agent)", 15.0),
        venusctl.HostKeyMismatch("host key mismatch (possible MITM): ..."),
        venusctl.UnknownHostKey("unknown host key ssh-ed25519 SHA256:x for h"),
        venusctl.AuthenticationFailed("authentication failed as sealer (tried k)"),
        venusctl.AgentNotRunning("agent not running"),
        venusctl.AgentNotInstalled("agent not installed"),
        venusctl.UnreadableReply("unreadable reply: x"),
        venusctl.UnsupportedReply("unsupported reply"),
        venusctl.NoReply("unreadable reply: the agent closed the connection"),
        venusctl.HttpRefused("the server answered HTTP 415"),
        venusctl.ResumeDidNotHold("the thread paused again at once", "paused-again"),
        venusctl.AgentRefused(-32602, "invalid state 'X' (valid: ...)"),
        venusctl.NoAnswer("no answer before the deadline of 30s"),
        venusctl.BothWaysFailed(stream, venusctl.AgentUnreachable("agent: permission denied")),
        venusctl.JumpHostError("jump host bastion: connection refused"),
        venusctl.HostKeyRevoked("host key SHA256:x is revoked"),
    ]


@pytest.mark.parametrize("error", every_host_error(), ids=lambda error: type(error).__name__)
def test_every_host_error_comes_back_as_it_was_raised(error):
    back = through_the_wire(error)
    assert type(back) is type(error)
    assert str(back) == str(error)
    assert back.kind == error.kind
    assert back.as_json() == error.as_json()
    assert vars(back) == vars(error) or isinstance(error, venusctl.BothWaysFailed)
    assert venusctl.error_text(back) == venusctl.error_text(error)
    action = Action("pause", 0)
    host = venusctl.parse_inventory('[[host]]\nname = "w1"\naddress = "a"\n', Path("i")).hosts[0]
    assert venusctl.action_error(host, action, back) == venusctl.action_error(host, action, error)
    assert venusctl.action_error_json(back) == venusctl.action_error_json(error)
    if isinstance(error, venusctl.BothWaysFailed):
        assert type(back.stream) is venusctl.StreamConnectFailed
        assert type(back.fallback) is venusctl.AgentUnreachable


def test_an_unexpected_error_keeps_its_name_and_a_traceback_when_asked():
    try:
        {}["missing"]
    except KeyError as error:
        raised = error
    back = through_the_wire(raised, tracebacks=True)
    assert venusctl.describe_unexpected(back) == venusctl.describe_unexpected(raised)
    assert venusctl.error_json(back) == venusctl.error_json(raised)
    assert "Traceback (most recent call last)" in back.remote_traceback
    assert "KeyError: 'missing'" in back.remote_traceback
    assert not hasattr(through_the_wire(raised), "remote_traceback")


def test_the_wire_carries_only_what_it_knows():
    with pytest.raises(TypeError, match="cannot carry a PosixPath"):
        to_wire(Path("/x"))
    with pytest.raises(ValueError, match="not a value the keeper carries: Path"):
        from_wire({"dc": "Path", "v": ["/x"]})
    with pytest.raises(ValueError, match="not an enum"):
        from_wire({"enum": "Path", "v": 1})


def test_any_dataclass_of_venusctl_or_api_goes_whole_with_no_line_of_its_own():
    # What a new operation's arguments and results are made of, with nothing registered:
    # a selector (its --error-match a compiled pattern), api's stage logs, one of ours.
    selector = venusctl.Selector(states=("C1Done",), error_match=re.compile("disk", re.I))
    assert through_the_wire([selector]) == [selector]
    assert through_the_wire(selector).error_match.search("DISK full")
    line = venusctl.api.StageLine(n=0, t=1.5, s="stderr", text="permanent: \x1b[31m", cut=False)
    run = venusctl.api.StageRun(
        run=3, stage="C2", state="C1Done", plan="sealer", sector_id="s-t01000-2",
        processor="c2", argv=["c2", "--x"], started=1.0, ended=None, exit_status=None,
        timed_out=False, outcome=None, dropped=0, first_line=0, lines_total=1, lines=[line],
    )  # fmt: skip
    log = venusctl.api.StageLog(index=0, location="/x", runs=[run], kept_runs=8, max_run_bytes=1)
    assert through_the_wire(log) == log
    thread = venusctl.FleetThread(inventory("").hosts[0], worker_info())
    assert through_the_wire(thread) == thread


def test_no_dataclass_name_is_both_ours_and_apis():
    """The wire names a value by its class alone: a name in both would be read as ours."""

    def names(module):
        return {
            name
            for name, value in vars(module).items()
            if venusctl._is_wire_class(value) and value.__module__ == module.__name__
        }

    assert names(venusctl) and names(venusctl.api)
    assert names(venusctl) & names(venusctl.api) == set()


def test_an_operation_is_one_decorated_function_and_a_name_can_be_given_once(monkeypatch):
    monkeypatch.setattr(venusctl, "OPERATIONS", dict(venusctl.OPERATIONS))
    asked = []

    @venusctl.host_operation("probe")
    def probe(session, host, word, count):
        asked.append((session, host.name, word, count))
        return f"{word} x{count}"

    class Pool:  # the one call a pool makes of it: run(host, work) on the host's session
        def run(self, host, work):
            return work(f"session of {host.name}")

    host = inventory("").hosts[0]
    call = venusctl.HostCall(Pool(), "probe", {"other": ("no", 0)}, same=("yes", 2))
    assert call(host) == "yes x2" and call.repeatable
    assert asked == [("session of w1", "w1", "yes", 2)]
    assert probe("s", host, "direct", 1) == "direct x1"  # the function is left as it was
    with pytest.raises(ValueError, match="operation 'probe' defined twice"):
        venusctl.host_operation("probe")(probe)
    with pytest.raises(ValueError, match="no operation 'prob' "):
        venusctl.HostCall(Pool(), "prob")
    assert not venusctl.OPERATIONS["perform"].repeatable  # actions: never sent twice
    assert not venusctl.OPERATIONS["perform_all"].repeatable
    assert venusctl.OPERATIONS["stage_log"].repeatable


def test_a_resolved_target_and_its_host_go_as_they_are_paths_made_absolute(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    host = venusctl.parse_inventory(
        '[defaults]\nssh_config = "none"\n[[host]]\nname = "w1"\naddress = "10.0.0.1"\n'
        'groups = ["gpu"]\njump = "sealer@bastion:2222"\nminer = 10000\n'
        'sector_numbers = "1000-1999"\n',
        Path("/etc/venusctl/inventory.toml"),
    ).hosts[0]
    target = venusctl.SshContext({}).target(host)
    relative = dataclasses.replace(target, identity_files=("keys/id",))
    wired = json.loads(json.dumps(venusctl._target_to_wire(relative)))
    back = venusctl._target_from_wire(wired)
    assert back == dataclasses.replace(relative, identity_files=(str(tmp_path / "keys/id"),))
    assert back.via == target.via and back.via.user == "sealer"
    fields = venusctl._host_fields(json.loads(json.dumps(venusctl._host_to_wire(host))))
    assert venusctl.Host(**fields) == host
    assert hash(venusctl.Host(**fields)) == hash(host)  # the keeper's pool keys by it


# -- settings ---------------------------------------------------------------------------------


def inventory(text: str) -> venusctl.Inventory:
    return venusctl.parse_inventory(text + '[[host]]\nname = "w1"\naddress = "a"\n', Path("i.toml"))


@pytest.mark.parametrize(
    ("defaults", "environ", "no_persist", "seconds"),
    [
        ("", {}, False, 600.0),
        ('persist = "2m"\n', {}, False, 120.0),
        ("persist = 0\n", {}, False, 0.0),
        ('persist = "0"\n', {}, False, 0.0),
        ('persist = "2m"\n', {"VENUSCTL_PERSIST": "5s"}, False, 5.0),
        ('persist = "2m"\n', {"VENUSCTL_PERSIST": "0"}, False, 0.0),
        ('persist = "2m"\n', {"VENUSCTL_PERSIST": "5s"}, True, 0.0),
    ],
)
def test_persist_comes_from_the_option_the_environment_the_inventory(
    defaults, environ, no_persist, seconds
):
    found = inventory(f"[defaults]\n{defaults}")
    assert venusctl.persist_seconds(found, environ, no_persist) == seconds


def test_bad_persist_values_are_one_clear_line():
    with pytest.raises(venusctl.InventoryError, match=r"^i.toml:2: persist: invalid duration"):
        inventory('[defaults]\npersist = "soon"\n')
    with pytest.raises(venusctl.InventoryError, match=r"i.toml:2: persist: must be a duration"):
        inventory("[defaults]\npersist = -1\n")
    with pytest.raises(venusctl.InventoryError, match=r"unknown key 'persist' \(a \[defaults\]"):
        venusctl.parse_inventory(
            '[[host]]\nname = "w1"\naddress = "a"\npersist = "1m"\n', Path("i.toml")
        )
    with pytest.raises(venusctl.UsageError, match=r"^\$VENUSCTL_PERSIST: invalid duration"):
        venusctl.persist_seconds(inventory(""), {"VENUSCTL_PERSIST": "later"}, False)


def test_which_runs_use_a_keeper():
    found = inventory("")
    env = venusctl.Environment(stderr=io.StringIO(), environ={})

    def keeper(command, **args):
        return venusctl.keeper_for(command, argparse.Namespace(**args), found, env)

    assert keeper("list", no_persist=False, watch=None).may_start
    assert keeper("health", no_persist=False).may_start is False  # cron: only a live one
    assert keeper("list", no_persist=False, watch=2.0) is None  # --watch keeps its own
    assert keeper("list", no_persist=True, watch=None) is None
    assert keeper("inventory", no_persist=False) is None
    quiet = inventory("[defaults]\npersist = 0\n")
    assert venusctl.keeper_for("list", argparse.Namespace(no_persist=False), quiet, env) is None


# -- the folder ---------------------------------------------------------------------------------


def test_the_keeper_folder_is_made_private_and_checked(tmp_path):
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    paths = venusctl.keeper_paths({"XDG_RUNTIME_DIR": str(runtime)})
    assert paths.socket == runtime / "venusctl" / "keeper.sock"
    assert oct(paths.folder.stat().st_mode & 0o777) == "0o700"
    paths.folder.chmod(0o775)
    with pytest.raises(
        KeeperUnavailable, match=r"keeper folder .* is writable by others \(mode 0o775\)"
    ):
        venusctl.keeper_paths({"XDG_RUNTIME_DIR": str(runtime)})
    runtime.chmod(0o777)
    with pytest.raises(KeeperUnavailable, match=r"XDG_RUNTIME_DIR .* is writable by others"):
        venusctl.keeper_paths({"XDG_RUNTIME_DIR": str(runtime)})


def test_a_run_that_starts_no_keeper_makes_no_folder(tmp_path):
    # health from cron, a TAB: they only look for a keeper that is there
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    paths = venusctl.keeper_paths({"XDG_RUNTIME_DIR": str(runtime)}, make=False)
    assert paths.folder == runtime / "venusctl" and not paths.folder.exists()
    client = venusctl.KeeperClient({"XDG_RUNTIME_DIR": str(runtime)}, 60.0, False, print)
    assert client.connect() is None and client.broken is None and not client.running()
    assert list(runtime.iterdir()) == []
    (runtime / "venusctl").mkdir(mode=0o755)  # one that is there is checked all the same
    (runtime / "venusctl").chmod(0o777)
    with pytest.raises(KeeperUnavailable, match="writable by others"):
        venusctl.keeper_paths({"XDG_RUNTIME_DIR": str(runtime)}, make=False)


def test_a_keeper_folder_of_another_user_is_refused(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("this test gives a folder to another user: run it as root (CI does)")
    runtime = tmp_path / "run"
    (runtime / "venusctl").mkdir(parents=True, mode=0o700)
    runtime.chmod(0o700)
    os.chown(runtime / "venusctl", 65534, 65534)
    with pytest.raises(
        KeeperUnavailable, match=r"keeper folder .* belongs to uid 65534, not to you"
    ):
        venusctl.keeper_paths({"XDG_RUNTIME_DIR": str(runtime)})


def test_without_a_runtime_folder_it_is_one_of_its_own_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.setattr(venusctl, "Path", _NoLogind)
    paths = venusctl.keeper_paths({})
    assert paths.folder == Path(tmp_path) / f"venusctl-{os.getuid()}"


class _NoLogind(type(Path())):
    """Path, where /run/user/UID does not exist (as on a machine without logind)."""

    def is_dir(self) -> bool:
        return False if str(self).startswith("/run/user/") else super().is_dir()


def test_a_socket_path_too_long_for_a_socket_is_refused(tmp_path):
    deep = tmp_path / ("d" * 100)
    deep.mkdir(mode=0o700)
    with pytest.raises(KeeperUnavailable, match="too long for a socket"):
        venusctl.keeper_paths({"XDG_RUNTIME_DIR": str(deep)})


# -- the fan-out the keeper (and every run) uses ------------------------------------------------


def test_a_worker_stuck_past_its_budget_is_replaced_and_the_queue_goes_on():
    hosts = venusctl.parse_inventory(
        "".join(f'[[host]]\nname = "h{n}"\naddress = "10.0.0.{n}"\n' for n in range(4)),
        Path("i.toml"),
    ).hosts
    release = threading.Event()

    def job(host):
        if host.name == "h0":
            release.wait(10)  # ignores every deadline
        return host.name

    started = time.monotonic()
    try:
        outcomes = venusctl.fan_out(hosts, job, 1, budget=lambda host: 0.3)
    finally:
        release.set()
    assert time.monotonic() - started < 0.3 + venusctl.LATE_GRACE + 1.0
    assert isinstance(outcomes["h0"], venusctl.ReplyTimeout)
    assert [outcomes[f"h{n}"] for n in (1, 2, 3)] == ["h1", "h2", "h3"]


def test_the_key_locator_finds_the_line_of_the_three_hundredth_host():
    text = "".join(
        f'[[host]]\nname = "h{n}"\naddress = "10.0.{n // 250}.{n % 250}"\n' for n in range(300)
    )
    bad = text + '[[host]]\nname = "h300"\naddress = "-x"\n'
    with pytest.raises(venusctl.InventoryError, match=r"^i.toml:903: address: must be"):
        venusctl.parse_inventory(bad, Path("i.toml"))
