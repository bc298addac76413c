"""The damocles backend without SSH: inventory, every release line's WorkerInfo, resume
states, and DamoclesAgent against the stand-in's real HTTP server on loopback.

The stand-in (tests/damocles_standin.py) runs in this process on a ManualClock,
so each pause and resume rule is met at an exact moment; the end-to-end tests
(real sshd, every line) are in test_venusctl_damocles_e2e.py.
"""

from __future__ import annotations

import contextlib
import socket
from dataclasses import replace
from pathlib import Path

import pytest
from damocles_standin import (
    FROZEN,
    LINES,
    ManualClock,
    Release,
    StandinServer,
    ThreadSpec,
    Worker,
    release_of,
    sorted_value,
)

import venusctl
from venusctl import (
    AgentRefused,
    InventoryError,
    NoReply,
    ResumeDidNotHold,
    UnsupportedReply,
    damocles_threads,
    normalize_worker_info,
)
from worker_agent.api import summarize

ERROR = "permanent: c2 failed\n\nCaused by:\n    0: No cached parameters found\n    1: \x1b[31mboom"
ONE_TAG_PER_LINE = [first for first, _ in LINES.values()]
# One tag per line, and both sides of v0.7.0 (WorkerVersion, the index gap) within v0.5.
TAGS = [*ONE_TAG_PER_LINE, "v0.7.4", "v0.13.0"]
LINE_OF = {
    "v0.1.1": "v0.1",
    "v0.2.0": "v0.2-v0.4",
    "v0.5.0": "v0.5-v0.7",
    "v0.7.4": "v0.5-v0.7",
    "v0.8.0": "v0.8",
    "v0.9.0": "v0.9+",
    "v0.13.0": "v0.9+",
}


def three_threads() -> list[ThreadSpec]:
    """Paused by a multi-line error at C1Done, running PC1, asking for work."""
    return [
        ThreadSpec("/mnt/a", "sealer", "C1Done", 2, "paused", 17, ERROR),
        ThreadSpec("/mnt/b", "sealer", "TicketAssigned", 3, "run", 100),
        ThreadSpec("/mnt/c", "sealer", None, None, "run", 0),
    ]


def listed(tag: str, threads: list[ThreadSpec], **options) -> list[dict]:
    """WorkerList's result as the stand-in of `tag` sends it (keys sorted, as serde_json)."""
    worker = Worker(release_of(tag), threads, replace(FROZEN), ManualClock(), **options)
    return sorted_value(worker.worker_list(None))


def parse(text: str) -> venusctl.Inventory:
    return venusctl.parse_inventory(text, Path("/etc/venusctl/inventory.toml"))


def inventory_error(text: str) -> str:
    with pytest.raises(InventoryError) as caught:
        parse(text)
    message = str(caught.value)
    assert "\n" not in message
    return message


# -- inventory -----------------------------------------------------------------------------------


def test_damocles_host_gets_the_default_rpc_address_or_its_own():
    inventory = parse(
        "[defaults]\nbackend = 'damocles'\n"
        "[[host]]\nname = 'a'\naddress = '10.0.0.1'\n"
        "[[host]]\nname = 'b'\naddress = '10.0.0.2'\nrpc = 'localhost:1789'\n"
        "[[host]]\nname = 'c'\naddress = '10.0.0.3'\nrpc = '[::1]:17890'\n"
        "[[host]]\nname = 'd'\naddress = '10.0.0.4'\nbackend = 'venus'\n"
    )
    a, b, c, d = inventory.hosts
    assert (a.backend, a.rpc, a.rpc_address) == (
        "damocles",
        "127.0.0.1:17890",
        ("127.0.0.1", 17890),
    )
    assert b.rpc_address == ("localhost", 1789)
    assert c.rpc_address == ("::1", 17890)
    assert d.backend == "venus"
    assert a.transport == "auto" and a.dest == "10.0.0.1:22"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[[host]]\nname = 'a'\naddress = 'x'\nbackend = 'damocles'\ntransport = 'local'\n",
            "inventory.toml:5: host[0] (a): transport 'local' cannot reach a damocles backend"
            " (its RPC port is reached through the SSH connection);"
            ' use transport = "auto" or "stream"',
        ),
        (
            "[defaults]\ntransport = 'exec'\n[[host]]\nname = 'z'\naddress = 'y'\n"
            "[[host]]\nname = 'a'\naddress = 'x'\nbackend = 'damocles'\n",
            "inventory.toml:2: host[1] (a): transport 'exec' cannot reach a damocles backend"
            " (nothing of venusctl's is installed there to exec)",
        ),
        (
            "[[host]]\nname = 'a'\naddress = 'x'\nbackend = 'damocles'\nrpc = '127.0.0.1'\n",
            "inventory.toml:5: rpc: must be host:port, e.g. '127.0.0.1:17890', got '127.0.0.1'",
        ),
        (
            "[defaults]\nrpc = '127.0.0.1:0'\n",
            "inventory.toml:2: rpc: port must be from 1 to 65535, got '127.0.0.1:0'",
        ),
        ("[defaults]\nrpc = '127.0.0.1:70000'\n", "rpc: port must be from 1 to 65535"),
        ("[defaults]\nrpc = 'a b:1'\n", "rpc: must be host:port"),
        ("[defaults]\nrpc = 17890\n", "rpc: must be a non-empty string"),
        (
            "[[host]]\nname = 'a'\naddress = 'x'\nrpc = '127.0.0.1:17890'\n",
            "inventory.toml:4: host[0] (a): 'rpc' is only used with backend = \"damocles\"",
        ),
    ],
)
def test_bad_damocles_settings_are_one_line(text, expected):
    assert expected in inventory_error(text)


def test_inventory_shows_the_rpc_and_ansible_leaves_damocles_hosts_out():
    inventory = parse(
        "[[host]]\nname = 'ours'\naddress = '10.0.0.1'\n"
        "[[host]]\nname = 'orig'\naddress = '10.0.0.2'\nbackend = 'damocles'\n"
    )
    _, rows = venusctl.inventory_table(inventory)
    assert [row[3] for row in rows] == ["auto", "auto -> damocles 127.0.0.1:17890"]
    # The playbooks install and drive our agent: never on a damocles host.
    document = venusctl.ansible_inventory(inventory)
    assert document["ungrouped"] == {"hosts": ["ours"]}
    assert list(document["_meta"]["hostvars"]) == ["ours"]


# -- every release line's WorkerInfo ----------------------------------------------------------


@pytest.mark.parametrize("tag", TAGS)
def test_every_line_gives_the_same_columns(tag):
    line, threads = damocles_threads(listed(tag, three_threads()))
    assert line.name == LINE_OF[tag]
    _, rows = venusctl.info_table(threads, wide=False)
    escaped = ERROR.replace("\n", "\\n").replace("\x1b", "\\x1b")
    assert rows == [
        ["0", "/mnt/a", "s-t01000-2", "true", "17s", "C1Done", escaped],
        ["1", "/mnt/b", "s-t01000-3", "false", "-", "TicketAssigned", "-"],
        ["2", "/mnt/c", "-", "false", "-", "Empty", "-"],
    ]
    summary = summarize(threads).to_json()
    assert (summary["Threads"], summary["Empty"], summary["Paused"], summary["Errors"]) == (
        3,
        1,
        1,
        1,
    )
    # Plan from the wire from v0.5; before, inferred from the state where only one plan has it.
    assert [thread.plan for thread in threads] == (
        ["sealer", "sealer", None] if line.name == "v0.2-v0.4" else ["sealer"] * 3
    )
    if line.thread_state:
        assert threads[1].thread_state.state is venusctl.ThreadState.Running
        assert threads[1].job_stage == "PC1"
    else:  # paused or not is all these lines say: never a false Idle or Running
        assert threads[1].thread_state.state is None and threads[1].job_stage is None
        assert summary["Running"] is None and summary["Waiting"] is None


def test_each_line_is_named_by_its_shape_not_its_version():
    # v0.1 and v0.2-v0.4 differ only in the sector and pause texts: without either, both.
    idle = [ThreadSpec("/mnt/c", "sealer", None, None, "run", 0)]
    assert damocles_threads(listed("v0.1.1", idle))[0].name == "v0.1-v0.4"
    assert damocles_threads(listed("v0.3.1", idle))[0].name == "v0.1-v0.4"
    # an idle thread does not stop the others from telling
    assert damocles_threads(listed("v0.1.2", three_threads()))[0].name == "v0.1"
    assert damocles_threads([])[0] is None
    # v0.12.1-3 say they are v0.12.0, v0.10.0 says v0.10.0-rc1: the shape is what counts
    line, _ = damocles_threads(listed("v0.12.3", three_threads()))
    assert line.name == "v0.9+"


def test_v08_shows_its_job_ids_and_tells_between_tasks_from_asking_for_work():
    threads = [
        ThreadSpec("/mnt/a", "sealer", "PC1Done", 7, "paused", 5),
        ThreadSpec("/mnt/b", phase="between"),
        ThreadSpec(None, "wdpost", "Allocated", 4, "run", 1),
    ]
    _, infos = damocles_threads(listed("v0.8.0", threads, sectors=None))
    assert [info.job_id for info in infos] == [
        "s-t01000-7",
        None,
        "00000000-0000-4000-8000-000000000004",
    ]
    assert [info.job_state for info in infos] == ["PC1Done", "", "Allocated"]
    assert [info.location for info in infos] == ["/mnt/a", "/mnt/b", "-"]
    assert summarize(infos).empty == 1


def test_v09_between_tasks_has_no_stage_although_the_worker_keeps_the_last_one():
    threads = [ThreadSpec("/mnt/b", phase="between", job_stage="C2")]
    raw = listed("v0.9.0", threads)
    assert raw[0]["job_stage"] == "C2" and raw[0]["job_state"] == ""
    info = normalize_worker_info(raw[0])
    assert (info.job_state, info.job_stage, info.job_id) == ("", None, None)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("17.203941s", 17), ("59.999999999s", 59), ("203.941ms", 0), ("941µs", 0), ("12ns", 0)],
)
def test_v01_pause_durations_are_rust_duration_debug_text(text, seconds):
    info = {
        "index": 0,
        "last_error": None,
        "location": "/mnt/a",
        "paused": True,
        "paused_elapsed": text,
        "sector_id": "m-1000-s-2",
        "state": "C1Done",
    }
    assert normalize_worker_info(info).thread_state.elapsed == seconds


V02_THREAD = {
    "index": 0,
    "last_error": None,
    "location": "/mnt/a",
    "paused": False,
    "paused_elapsed": None,
    "sector_id": {"Miner": 1000, "Number": 2},
    "state": "PC1Done",
}


@pytest.mark.parametrize(
    ("reply", "says"),
    [
        ({"threads": []}, 'WorkerList answered {"threads": []}, not a list of threads'),
        ([7], "thread 7 is not an object"),
        ([{"index": 0, "location": "/x"}], "no known WorkerInfo shape (missing paused,"),
        ([{**V02_THREAD, "sector_id": "s-t01000-2"}], 'sector_id "s-t01000-2" is not a sector'),
        ([{**V02_THREAD, "sector_id": {"Miner": 1}}], "is not a sector id"),
        ([{**V02_THREAD, "paused": True, "paused_elapsed": "soon"}], '"soon" is not a duration'),
        ([{**V02_THREAD, "paused": "yes"}], 'paused "yes" is not true or false'),
        ([{**V02_THREAD, "index": "0"}], "thread #0.index: expected an integer"),
        ([V02_THREAD, {**V02_THREAD, "plan": "sealer", "index": 1}], "different shapes"),
        ([V02_THREAD, V02_THREAD], "lists an index twice: [0, 0]"),
        ([V02_THREAD, {**V02_THREAD, "index": 1, "sector_id": "m-1-s-2"}], "different shapes"),
    ],
)
def test_a_reply_venusctl_cannot_read_is_unsupported(reply, says):
    with pytest.raises(UnsupportedReply) as caught:
        damocles_threads(reply)
    message = str(caught.value)
    assert message.startswith("unsupported damocles-worker reply: ")
    assert says in message, message
    assert caught.value.kind == "unsupported-reply"


def test_a_future_thread_state_is_unsupported_not_a_crash():
    raw = listed("v0.13.0", three_threads())
    raw[0]["thread_state"] = {"state": "Sleeping", "elapsed": 1}
    with pytest.raises(UnsupportedReply, match="'Sleeping' is not one of Idle, Running"):
        damocles_threads(raw)


# -- resume states, per line and plan -------------------------------------------------------------


def thread_of(tag: str, spec: ThreadSpec) -> tuple[venusctl.DamoclesLine, venusctl.WorkerInfo]:
    line, (info,) = damocles_threads(listed(tag, [spec]))
    return line, info


def test_resume_states_are_the_lines_and_the_plans():
    line, info = thread_of("v0.8.0", ThreadSpec("/mnt/a", "sealer", "PC2Done", 2, "paused", 1))
    plan, states = venusctl.resume_states(info, line)
    assert plan == "sealer" and "SyntheticPoRepNeeded" not in states  # from v0.9
    line, info = thread_of("v0.9.0", ThreadSpec("/mnt/a", "sealer", "PC2Done", 2, "paused", 1))
    assert "SyntheticPoRepNeeded" in venusctl.resume_states(info, line)[1]
    line, info = thread_of("v0.5.0", ThreadSpec("/mnt/a", "rebuild", "PC2Done", 2, "paused", 1))
    assert list(venusctl.resume_states(info, line)[1]) == (
        "Empty Allocated PieceAdded TreeDBuilt PC1Done PC2Done Persisted Finished Aborted"
        " SnapEncoded SealedChecked SnapPieceAdded SnapTreeDBuilt SnapDone"
    ).split(" ")
    line, info = thread_of("v0.8.0", ThreadSpec(None, "wdpost", "Allocated", 3, "paused", 1))
    assert venusctl.resume_states(info, line) == ("wdpost", venusctl.WDPOST_STATES)


def test_before_v05_the_plan_is_inferred_or_only_shared_states_are_taken():
    # SnapProved belongs to snapup only: a snapup thread, its SnapEncoded is valid
    line, snap = thread_of("v0.3.1", ThreadSpec("/mnt/a", "snapup", "SnapProved", 2, "paused", 1))
    assert snap.plan == "snapup"
    venusctl.check_resume_state(snap, "SnapEncoded", line)
    with pytest.raises(AgentRefused, match='invalid state "C1Done" for plan snapup on dam'):
        venusctl.check_resume_state(snap, "C1Done", line)
    # TreeDBuilt is sealer's and snapup's: only what both plans have
    line, tree = thread_of("v0.3.1", ThreadSpec("/mnt/a", "snapup", "TreeDBuilt", 2, "paused", 1))
    assert tree.plan is None
    plan, states = venusctl.resume_states(tree, line)
    assert plan == "sealer or snapup (not reported by the worker)"
    assert states == (
        "Empty",
        "Allocated",
        "PieceAdded",
        "TreeDBuilt",
        "Persisted",
        "Finished",
        "Aborted",
    )
    # v0.1 has the sealer plan only
    line, old = thread_of("v0.1.1", ThreadSpec("/mnt/a", "sealer", "TreeDBuilt", 2, "paused", 1))
    assert old.plan == "sealer" and venusctl.resume_states(old, line)[0] == "sealer"


def test_a_plan_the_line_does_not_have_is_refused():
    line, info = thread_of("v0.5.0", ThreadSpec("/mnt/a", "sealer", "C1Done", 2, "paused", 1))
    future = replace(info, plan="niporep")
    with pytest.raises(AgentRefused, match="v0.5-v0.7 does not know the states of plan 'niporep'"):
        venusctl.check_resume_state(future, "Empty", line)
    # without a line (a bulk plan's first check): our agent's plans
    with pytest.raises(AgentRefused, match="venusctl does not know the states of plan"):
        venusctl.check_resume_state(future, "Empty")


# -- DamoclesAgent against the stand-in's HTTP server (loopback TCP, no SSH) ----------------------


class Standin:
    """A stand-in worker of one release in this process, and DamoclesAgents to it."""

    def __init__(self, tag: str, threads: list[ThreadSpec], timing=FROZEN, **options) -> None:
        self.clock = ManualClock()
        self.worker = Worker(release_of(tag), threads, replace(timing), self.clock, **options)
        self.server = StandinServer(self.worker).start()
        self.accepted_before = 0  # connections to the servers before a restart

    def channel(self) -> venusctl.JsonRpcClient:
        sock = socket.create_connection(("127.0.0.1", self.server.port), timeout=5)
        return venusctl.JsonRpcClient(sock, timeout=5)

    def agent(self) -> venusctl.DamoclesAgent:
        return venusctl.DamoclesAgent(self.channel(), "tcp", self.channel)

    def restart(self) -> None:
        """The worker process restarts on the same port (every connection to it is closed)."""
        port = self.server.port
        self.accepted_before += self.server.accepted
        self.server.close()
        self.server = StandinServer(self.worker, port).start()

    def paused(self) -> list[int]:
        """The listed indexes of the paused threads, as the worker itself has them."""
        return [t.index for t in self.worker.threads if t.act.kind == "resume"]


@pytest.fixture
def standin(monkeypatch):
    """standin(tag, threads, **options) -> a started Standin, closed after the test."""
    monkeypatch.setattr(venusctl.DamoclesAgent, "SETTLE", 0.2)
    started: list[Standin] = []

    def start(tag: str, threads: list[ThreadSpec], **options) -> Standin:
        started.append(Standin(tag, threads, **options))
        return started[-1]

    yield start
    for one in started:
        one.server.close()


@pytest.mark.parametrize("tag", TAGS)
def test_status_is_one_batch_on_one_channel_kept_for_the_whole_run(standin, tag):
    worker = standin(tag, three_threads())
    agent = worker.agent()
    with contextlib.closing(agent):
        first = agent.status()
        agent.status()
        agent.pause(1)
        assert worker.server.accepted == 1
    assert first.release_line == LINE_OF[tag] and first.heartbeat is False
    release = release_of(tag)
    # WorkerVersion from v0.7.0 only: before, an error inside the batch, not a failure
    expected = release.version_string() if release.version_method else None
    assert first.worker_version == expected
    assert len(first.threads) == 3 and first.via == "tcp"


def test_a_restarted_worker_is_asked_again_on_a_fresh_channel(standin):
    worker = standin("v0.13.0", three_threads())
    agent = worker.agent()
    with contextlib.closing(agent):
        agent.status()
        worker.restart()
        assert len(agent.status().threads) == 3  # the read went once more, fresh
        worker.restart()
        assert agent.pause(2) == "paused"  # its WorkerList was the read sent again
    assert worker.accepted_before + worker.server.accepted == 3  # 1, then 1 per restart
    assert worker.paused() == [0, 2]


def test_a_location_that_is_not_utf8_is_an_error_not_a_hang(standin):
    worker = standin("v0.9.0", [ThreadSpec("/mnt/\udcff", "sealer", None, None, "run", 0)])
    with contextlib.closing(worker.agent()) as agent, pytest.raises(NoReply) as caught:
        agent.status()
    assert str(caught.value) == (
        "damocles-worker closed the connection without answering WorkerList and"
        " WorkerVersion (it does so when a thread's location is not UTF-8)"
    )


class BadClient(venusctl.JsonRpcClient):
    """venusctl's client with one thing changed, to meet the server's HTTP refusals."""

    body: bytes | None = None

    def _post(self, payload):
        return self._exchange(self.body if self.body is not None else b"[]")


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (
            {"CONTENT_TYPE": "application/json-rpc"},
            "HTTP 415, content type not allowed (Content-Type: application/json required):"
            ' "Supplied content type is not allowed. Content-Type: application/json is required"',
        ),
        (
            {"METHOD": "PUT"},
            "HTTP 405, method not allowed (POST required): "
            '"Used HTTP Method is not allowed. POST or OPTIONS is required"',
        ),
        (
            {"body": b"[" + b" " * (5 * 1024 * 1024) + b"]"},
            'HTTP 413, request body too large: "request body size exceeds allowed maximum"',
        ),
        (
            {"body": b'["\xff"]'},
            'HTTP 400, bad request: "utf-8 encoding error at byte 2 in request body"',
        ),
    ],
)
def test_http_refusals_are_reported_with_their_meaning(standin, change, says):
    worker = standin("v0.9.0", three_threads())
    client_class = type("Client", (BadClient,), change)

    def channel():
        sock = socket.create_connection(("127.0.0.1", worker.server.port), timeout=5)
        return client_class(sock, timeout=5)

    agent = venusctl.DamoclesAgent(channel(), "tcp", channel)
    with contextlib.closing(agent), pytest.raises(venusctl.HttpRefused) as caught:
        agent.status()
    assert str(caught.value) == f"the server answered {says}"
    assert caught.value.kind == "http-refused"


# -- pause: what damocles-worker does with it, said as it is -------------------------------------


def test_pause_notes_say_when_each_thread_takes_it(standin):
    worker = standin(
        "v0.9.0",
        [
            ThreadSpec("/mnt/run", "sealer", "TicketAssigned", 3, "run", 100),
            ThreadSpec("/mnt/ask", "sealer", None, None, "run", 0),  # in its interruptible wait
            ThreadSpec("/mnt/between", phase="between", job_stage="C2"),
            ThreadSpec("/mnt/poll", "sealer", "PCSubmitted", 4, "run", 10),
            ThreadSpec("/mnt/paused", "sealer", "C1Done", 2, "paused", 17, ERROR),
        ],
    )
    with contextlib.closing(worker.agent()) as agent:
        assert agent.pause(0) == (
            "pause queued: it stops after its running stage PC1; damocles-worker drops that"
            " stage's result and runs it again on resume"
        )
        assert agent.pause(0).startswith("pause already queued (damocles-worker answered false")
        assert agent.pause(1) == "paused"
        assert agent.pause(2) == (
            "pause queued: it has no task; it takes the pause when its seal_interval sleep"
            " ends (30s by default), before asking for one"
        )
        assert agent.pause(3) == "paused"
        assert agent.pause(4) == "already paused (nothing sent)"
    assert worker.paused() == [1, 3, 4]
    assert worker.worker.threads[0].token and worker.worker.threads[2].token


def test_pause_notes_before_v09_say_what_the_worker_does_not_tell(standin):
    threads = [
        ThreadSpec("/mnt/run", "sealer", "TicketAssigned", 3, "run", 100),
        ThreadSpec("/mnt/ask", "sealer", None, None, "run", 0),
    ]
    v08 = standin("v0.8.0", threads)
    with contextlib.closing(v08.agent()) as agent:
        assert agent.pause(0) == (
            "pause queued: it stops at its next stage boundary (this release does not say"
            " whether a stage runs; if one does, damocles-worker drops that stage's result and"
            " runs it again on resume)"
        )
        assert agent.pause(1) == "paused"
    # v0.1 sleeps its allocation retry: a thread asking for work takes the pause later
    v01 = standin("v0.1.1", threads)
    with contextlib.closing(v01.agent()) as agent:
        assert agent.pause(1) == (
            "pause queued: it has no task; it takes the pause when its recover_interval or"
            " seal_interval sleep ends (60s, 30s by default), before asking for one"
        )
    assert v01.paused() == []
    v01.clock.advance(FROZEN.recover_interval + FROZEN.step)  # the sleep, then its next ask
    v01.worker.advance()
    assert v01.paused() == [1]


# -- resume: read back, and said as it is --------------------------------------------------------


def resume_threads() -> list[ThreadSpec]:
    return [
        ThreadSpec("/mnt/hand", "sealer", "PC1Done", 5, "paused", 30),
        ThreadSpec("/mnt/err", "sealer", "C1Done", 2, "paused", 17, ERROR),
        ThreadSpec("/mnt/stale", "sealer", "PC1Done", 6, "paused", 40, pause_queued=True),
        ThreadSpec("/mnt/run", "sealer", "TicketAssigned", 3, "run", 100),
        ThreadSpec("/mnt/drop", "sealer", "C2Done", 7, "paused", 3),
    ]


@pytest.mark.parametrize("tag", ["v0.1.1", "v0.5.0", "v0.8.0", "v0.13.0"])
def test_resume_reads_the_thread_back(standin, tag):
    worker = standin(tag, resume_threads())
    running = ", Running(0s) builtin PC2" if tag == "v0.13.0" else ""
    idle = ", Idle" if tag == "v0.13.0" else ""
    with contextlib.closing(worker.agent()) as agent:
        assert agent.resume(0, None) == f"resumed (now in PC1Done{running})"
        assert (
            agent.resume(1, "TreeDBuilt")
            == f"resumed in state TreeDBuilt (now in TreeDBuilt{idle})"
        )
        with pytest.raises(ResumeDidNotHold) as caught:
            agent.resume(2, "TreeDBuilt")
        assert caught.value.kind == "paused-again"
        assert str(caught.value) == (
            "the worker took it, but the thread paused again at once: a pause queued earlier"
            " (a stale pause token) was taken and dropped the requested state TreeDBuilt;"
            " still in PC1Done: resume it again"
        )
        assert agent.resume(2, None) == f"resumed (now in PC1Done{running})"  # for good now
        with pytest.raises(AgentRefused) as refused:
            agent.resume(3, None)
        # issue 10: and that a queued pause there can be neither seen nor cancelled
        assert (refused.value.code, str(refused.value)) == (
            1001,
            f"worker #3 is not paused; {venusctl.DAMOCLES_QUEUED}",
        )
        assert agent.resume(4, "Aborted") == f"resumed in state Aborted (now without a task{idle})"
    assert worker.paused() == []


def test_resume_to_the_state_it_is_in_is_refused_before_sending(standin):
    worker = standin("v0.9.0", resume_threads())
    with contextlib.closing(worker.agent()) as agent, pytest.raises(AgentRefused) as caught:
        agent.resume(1, "C1Done")
    assert str(caught.value) == (
        "worker #1 is already in C1Done: damocles-worker would pause it again at once"
        " (critical: state unchanged); resume without a state to run C1Done's stage again"
    )
    assert 1 in worker.paused()


def test_resume_states_are_checked_for_the_line_before_sending(standin):
    worker = standin("v0.8.0", resume_threads())
    with contextlib.closing(worker.agent()) as agent:
        with pytest.raises(AgentRefused, match='"SyntheticPoRepNeeded" for plan sealer on dam'):
            agent.resume(0, "SyntheticPoRepNeeded")  # v0.9+ only: v0.8 would ignore it
        with pytest.raises(AgentRefused, match='invalid state "C1done" for plan sealer'):
            agent.resume(0, "C1done")
    assert worker.paused() == [0, 1, 2, 4]


def test_a_resume_state_the_worker_ignores_is_said(standin, monkeypatch):
    """v0.8+ logs an unknown name and resumes in the old state, answering true; venusctl
    checks names first, so this is what a name of a release it does not know would do."""
    known = Release.states.fget
    monkeypatch.setattr(
        Release, "states", property(lambda self: tuple(s for s in known(self) if s != "PC2Done"))
    )
    worker = standin("v0.9.0", resume_threads())
    with contextlib.closing(worker.agent()) as agent, pytest.raises(ResumeDidNotHold) as caught:
        agent.resume(1, "PC2Done")
    assert caught.value.kind == "state-ignored"
    assert str(caught.value) == (
        "the worker took it, but ignored the requested state PC2Done: the thread goes on in C1Done"
    )
    assert "#1: unknown state: PC2Done" in worker.worker.lines


def test_a_resume_that_an_error_pauses_again_says_the_error(standin):
    spec = ThreadSpec("/mnt/a", "sealer", "C1Done", 5, "paused", 30, fail={"SubmitProof": ERROR})
    worker = standin("v0.9.0", [spec], timing=replace(FROZEN, step=0))
    with contextlib.closing(worker.agent()) as agent, pytest.raises(ResumeDidNotHold) as caught:
        agent.resume(0, "C2Done")  # its SubmitProof step fails at once
    assert (caught.value.kind, str(caught.value)) == (
        "paused-again",
        f"the worker took it, but an error paused the thread again: {ERROR}",
    )


# -- index gaps: the thread listed as #N is the one acted on --------------------------------------


def gap_threads() -> list[ThreadSpec]:
    """Config entries 0-4, entry 2 a duplicate of entry 1 (skipped), every thread polling."""
    locations = ["/mnt/g0", "/mnt/g1", "/mnt/g1/", "/mnt/g3", "/mnt/g4"]
    return [
        ThreadSpec(loc, "sealer", "PCSubmitted", n + 10, "run", 1)
        for n, loc in enumerate(locations)
    ]


def paused_at(worker: Standin) -> list[str]:
    return [t.location for t in worker.worker.threads if t.act.kind == "resume"]


@pytest.mark.parametrize("tag", ["v0.6.6", "v0.7.0", "v0.13.0"])
def test_the_thread_listed_as_n_is_the_one_paused_and_resumed(standin, tag):
    worker = standin(tag, gap_threads())
    gap = release_of(tag).index_gap  # from v0.7.0 the skipped entry keeps its number
    with contextlib.closing(worker.agent()) as agent:
        listed_as = [thread.index for thread in agent.threads()]
        assert listed_as == ([0, 1, 3, 4] if gap else [0, 1, 2, 3])
        assert agent.pause(3) == "paused"
        # the thread listed as #3: config entry 3 where the skipped entry keeps its number,
        # else entry 4 (listed after de-duplication)
        assert paused_at(worker) == (["/mnt/g3"] if gap else ["/mnt/g4"])
        assert agent.pause(listed_as[-1]) in ("paused", "already paused (nothing sent)")
        assert paused_at(worker) == (["/mnt/g3", "/mnt/g4"] if gap else ["/mnt/g4"])
        assert agent.resume(3, None).startswith("resumed")
        assert paused_at(worker) == (["/mnt/g4"] if gap else [])
        if gap:
            with pytest.raises(AgentRefused) as caught:
                agent.pause(2)
            assert str(caught.value) == (
                "worker #2 not found: this damocles-worker skipped #2 of its config (a duplicate"
                " location); its threads are #0, #1, #3, #4"
            )
        with pytest.raises(AgentRefused, match=r"^worker #9 not found$"):
            agent.resume(9, None)


# -- one line per row and finding; what health can and cannot judge -------------------------------


def test_worker_text_is_escaped_onto_one_line():
    assert venusctl.escape_text(ERROR) == (
        "permanent: c2 failed\\n\\nCaused by:\\n    0: No cached parameters found\\n"
        "    1: \\x1b[31mboom"
    )
    assert venusctl.escape_text("a\\b\tc\r\x7f\x85é") == "a\\b\\tc\\r\\x7f\\x85é"


def test_health_lists_what_a_damocles_worker_gives_no_time_to_judge():
    _, threads = damocles_threads(
        listed(
            "v0.9.0",
            [
                ThreadSpec("/mnt/a", "sealer", "PCSubmitted", 2, "run", 500),  # polls: Idle
                ThreadSpec(None, "wdpost", "Allocated", 3, "run", 40 * 60),  # Generate, Running
                ThreadSpec("/mnt/c", "sealer", None, None, "run", 0),  # no task: not judged
            ],
            wdpost_jobs=None,
        )
    )
    status = venusctl.HostStatus(None, threads, heartbeat=False, release_line="v0.9+")
    report = venusctl.judge_fleet({"d": status}, venusctl.Thresholds(), now=0.0)
    # the wdpost stage has its own default (30 minutes): 40 minutes is stuck
    assert [finding.kind for finding in report.findings] == ["thread-stuck"]
    assert report.findings[0].message == (
        "stage Generate for 40m0s (stuck after 30m0s, --stuck Generate)"
    )
    assert [venusctl.finding_line(f) for f in report.not_judged] == [
        "INFO d #0 s-t01000-2 PCSubmitted: stage WaitPCLanded: --stuck WaitPCLanded=6h0m0s"
        " not judged (damocles-worker does not report time in state)"
    ]
    assert report.status is venusctl.Severity.WARNING  # not judged is no finding
    # the status line, the finding, then (issue 10) the per-host summary: a header, a row
    assert venusctl.health_text(report).count("\n") == 2 + 2
    assert venusctl.health_text(report, verbose=True).count("\n") == 3 + 2
    document = venusctl.health_json(report)
    assert [item["index"] for item in document["not_judged"]] == [0]
    assert venusctl.parse_stuck_option("Generate=20m") == ("Generate", 1200.0)
    assert venusctl.parse_stuck_option("SubmitProof=5m") == ("SubmitProof", 300.0)
