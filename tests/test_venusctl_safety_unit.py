"""Issue 10, the pure parts: selectors, names, empty inventories, --json errors, escaping,
tables cut to the terminal. No connection is made here: every refusal must come before one
(the inventories point at 127.0.0.1:9, where nothing listens; a test that reached it would
see a connection-refused row, not the usage error it asserts)."""

from __future__ import annotations

import io
import json
import os

import pytest

import venusctl
from venusctl import Environment

INVENTORY = """\
[defaults]
connect_timeout = 1

[[host]]
name = "gpu-01"
address = "127.0.0.1"
port = 9
groups = ["gpu", "rack1"]

[[host]]
name = "gpu-02"
address = "127.0.0.1"
port = 9
groups = ["gpu"]

[[host]]
name = "cpu-01"
address = "127.0.0.1"
port = 9
"""


@pytest.fixture
def inventory(tmp_path):
    path = tmp_path / "inventory.toml"
    path.write_text(INVENTORY)
    return path


@pytest.fixture
def empty_inventory(tmp_path):
    path = tmp_path / "empty.toml"
    path.write_text('[defaults]\nuser = "sealer"\n')
    return path


def call(path, *argv: str, tty: bool = False, columns: int = 80) -> tuple[int, str, str]:
    """venusctl.main in its own Environment: (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    env = Environment(
        stdin=io.StringIO(),
        stdout=out,
        stderr=err,
        environ={},
        isatty=lambda stream: tty,
        terminal_size=lambda: os.terminal_size((columns, 24)),
    )
    status = venusctl.main(["-i", str(path), *argv], env)
    return status, out.getvalue(), err.getvalue()


# -- 1. nothing empty ever means "all" ----------------------------------------------------------


@pytest.mark.parametrize("value", ["", ",", " ", " , ", "gpu-01,,cpu-01", "gpu-01,"])
@pytest.mark.parametrize("command", ["list", "threads", "health", "pause", "resume", "drain"])
def test_an_empty_limit_is_a_usage_error_naming_the_option(inventory, command, value):
    status, out, err = call(
        inventory, command, "-l", value, "--yes" if command in "pause resume" else "--json"
    )
    if command == "health":
        assert status == 3 and out.startswith("{")
        assert "argument -l/--limit: empty" in json.loads(out)["error"]["message"]
    else:
        assert status == 2
        message = json.loads(out)["error"]["message"] if out else err
        assert "argument -l/--limit: empty" in message


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["threads", "--state", ""], "--state"),
        (["threads", "--state", "C1Done,"], "--state"),
        (["threads", "--stage", ""], "--stage"),
        (["threads", "--plan", " "], "--plan"),
        (["threads", "--error-match", ""], "--error-match"),
        (["threads", "--error-match", "  "], "--error-match"),
        (["resume", "-l", "*", "--paused", "--to-state", ""], "--to-state"),
        (["resume", "gpu-01", "0", ""], "state"),
        (["health", "--stuck", "=1h"], "--stuck"),
        (["health", "--prometheus", ""], "--prometheus"),
        (["list", "-i", ""], "-i/--inventory"),
    ],
)
def test_an_empty_selector_value_is_a_usage_error_naming_the_option(inventory, argv, option):
    status, out, err = call(inventory, *argv)
    text = out if argv[0] == "health" else err
    assert status == (3 if argv[0] == "health" else 2), (out, err)
    assert f"argument {option}: " in text and "empty" in text, text
    assert len(text.splitlines()) == 1


def test_an_empty_host_is_refused(inventory):
    status, _, err = call(inventory, "info", "")
    assert (
        status == 2 and err == "venusctl: empty HOST: give a host name, address or address:port\n"
    )


@pytest.mark.parametrize("command", ["pause", "resume", "drain"])
def test_actions_reach_the_whole_fleet_only_through_an_explicit_limit(inventory, command):
    for selectors in ([], ["--errors"], ["--state", "C1Done"]):
        status, out, err = call(
            inventory, command, *selectors, "--yes" if command != "drain" else "--json"
        )
        assert status == 2
        message = json.loads(out)["error"]["message"] if out else err
        assert "which hosts? give -l LIMIT (-l '*' for the whole fleet)" in message


def test_a_limit_word_that_names_nothing_lists_the_known_names_and_the_closest():
    inventory = venusctl.parse_inventory(INVENTORY, venusctl.Path("inv.toml"))
    with pytest.raises(venusctl.UnknownHost) as caught:
        venusctl.select_hosts(inventory, ["gpu-1"])
    message = str(caught.value)
    assert message.startswith("--limit 'gpu-1' matches no host (did you mean gpu-01")
    assert "known hosts: gpu-01, gpu-02, cpu-01; groups: gpu, rack1" in message
    with pytest.raises(
        venusctl.UnknownHost, match=r"'rack2' matches no host \(did you mean rack1\?\)"
    ):
        venusctl.select_hosts(inventory, ["rack2"])
    # a glob is not a typo: no guess, still the known names
    with pytest.raises(venusctl.UnknownHost, match=r"'storage-\*' matches no host; known hosts"):
        venusctl.select_hosts(inventory, ["storage-*"])
    with pytest.raises(venusctl.UnknownHost, match=r"unknown host 'cpu-1' \(did you mean cpu-01"):
        venusctl.resolve_target(inventory, "cpu-1")
    # no -l at all (None) is every host, for the commands that only read
    assert [host.name for host in venusctl.select_hosts(inventory, None)] == [
        "gpu-01",
        "gpu-02",
        "cpu-01",
    ]
    with pytest.raises(venusctl.UsageError, match="empty"):
        venusctl.select_hosts(inventory, [""])


# -- 2. typos are caught, not counted ----------------------------------------------------------


@pytest.mark.parametrize(
    ("parse", "text", "name"),
    [
        (venusctl.parse_state, "c1done", "C1Done"),
        (venusctl.parse_state, "PERSISTANCESUBMITTED", "PersistanceSubmitted"),
        (venusctl.parse_state, "generated", "Generated"),  # damocles' wdpost
        (venusctl.parse_stage, "pc1", "PC1"),
        (venusctl.parse_stage, "waitseed", "WaitSeed"),
        (venusctl.parse_stage, "generate", "Generate"),  # damocles' wdpost
        (venusctl.parse_plan_name, "Sealer", "sealer"),
        (venusctl.parse_plan_name, "WDPOST", "wdpost"),
        (venusctl.check_stuck_key, "pc1", "PC1"),
        (venusctl.check_stuck_key, "c1DONE", "C1Done"),
        (venusctl.check_stuck_key, "Default", "default"),
    ],
)
def test_a_case_only_difference_is_normalised(parse, text, name):
    assert parse(text) == name


@pytest.mark.parametrize(
    ("parse", "text", "guess", "valid"),
    [
        (venusctl.parse_state, "C1Dnoe", "did you mean C1Done", "(valid: Empty, Allocated,"),
        (venusctl.parse_state, "PC1Don", "did you mean PC1Done", "Unsealed, Generated)"),
        (venusctl.parse_stage, "PC3", "did you mean PC", "(valid: AcquireDeals,"),
        (venusctl.parse_plan_name, "seler", "did you mean sealer", "(valid: sealer, snapup,"),
        (venusctl.check_stuck_key, "WaitSed", "did you mean WaitSeed", "(valid: stages: "),
    ],
)
def test_anything_else_is_refused_with_the_closest_names_and_the_valid_list(
    parse, text, guess, valid
):
    with pytest.raises(ValueError) as caught:
        parse(text)
    message = str(caught.value)
    assert message.startswith("unknown ") and f"{text!r}; {guess}" in message
    assert valid in message


def test_every_state_stage_and_plan_of_the_agent_is_known():
    from worker_agent import api

    assert set(api.STATE_NAMES) <= set(venusctl.STATE_NAMES)
    assert set(venusctl.STAGE_NAMES) >= api.STAGE_NAMES
    assert set(api.PLAN_STATES) <= set(venusctl.PLAN_NAMES)
    assert {"Generate", "SubmitProof"} <= set(venusctl.STAGE_NAMES)  # damocles' wdpost


@pytest.mark.parametrize(
    "argv",
    [
        ["threads", "--state", "c1dnoe"],
        ["threads", "--stage", "PC9"],
        ["threads", "--plan", "sealr"],
        ["pause", "-l", "*", "--state", "C1Dne", "--yes"],
        ["resume", "-l", "*", "--paused", "--to-state", "C1Dne", "--yes"],
        ["resume", "gpu-01", "0", "C1Dne"],
        ["drain", "-l", "*", "--stage", "C3"],
    ],
)
def test_a_typo_is_refused_before_any_connection(inventory, argv):
    # `threads --state c1done` used to answer "0 threads", exit 0
    status, out, err = call(inventory, *argv)
    assert (status, out) == (2, "")
    assert "did you mean" in err and "unknown" in err and len(err.splitlines()) == 1


def test_case_only_typos_select_as_the_right_name(inventory):
    args = venusctl.build_parser().parse_args(
        ["threads", "--state", "c1done,pc1DONE", "--stage", "c2", "--plan", "SEALER"]
    )
    selector = venusctl.selector_from(args)
    assert (selector.states, selector.stage, selector.plan) == (
        ("C1Done", "PC1Done"),
        "C2",
        "sealer",
    )
    args = venusctl.build_parser().parse_args(["health", "--stuck", "pc1=14h"])
    assert args.stuck == [("PC1", 14 * 3600.0)]


# -- 3. an empty inventory ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["list"],
        ["threads"],
        ["info", "gpu-01"],
        ["pause", "gpu-01", "0"],
        ["resume", "gpu-01", "0"],
        ["pause", "-l", "*", "--yes"],
        ["drain", "gpu-01"],
        ["drain", "-l", "*"],
    ],
)
def test_an_empty_inventory_is_an_error_for_every_command_that_asks_hosts(empty_inventory, argv):
    status, out, err = call(empty_inventory, *argv)
    assert (status, out) == (2, "")
    assert err == f"venusctl: no hosts in {empty_inventory} (add [[host]] tables)\n"
    status, out, err = call(empty_inventory, *argv, "--json")
    assert (status, err) == (2, "")
    assert json.loads(out) == {
        "error": {
            "code": "no-hosts",
            "message": f"no hosts in {empty_inventory} (add [[host]] tables)",
        }
    }


def test_health_on_an_empty_inventory_is_unknown_with_that_line(empty_inventory):
    status, out, err = call(empty_inventory, "health")
    assert (status, err) == (3, "")
    assert out == f"VENUS UNKNOWN - no hosts in {empty_inventory} (add [[host]] tables)\n"


# -- 4. --json always answers JSON -------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "status", "code", "message"),
    [
        (["list", "--bogus"], 2, "usage", "unrecognized arguments: --bogus"),
        (["frobnicate"], 2, "usage", "argument COMMAND: invalid choice: 'frobnicate'"),
        (["list", "--expiration", "soon"], 2, "usage", "invalid duration 'soon'"),
        (["info", "gpu-9"], 2, "unknown-host", "unknown host 'gpu-9' (did you mean gpu-0"),
        (["list", "-l", "gpu-9"], 2, "unknown-host", "--limit 'gpu-9' matches no host"),
        (["threads", "--state", "c1dnoe"], 2, "usage", "did you mean C1Done"),
        (["pause", "gpu-01"], 2, "usage", "missing INDEX"),
        (["pause", "--yes"], 2, "usage", "which hosts?"),
    ],
)
def test_every_failure_under_json_is_one_json_document_with_the_same_exit_status(
    inventory, argv, status, code, message
):
    plain_status, plain_out, plain_err = call(inventory, *argv)
    json_status, out, err = call(inventory, *argv, "--json")
    assert json_status == plain_status == status
    assert plain_out == "" and err == ""
    document = json.loads(out)  # exactly one document: json.loads refuses trailing data
    assert set(document) == {"error"}
    assert document["error"]["code"] == code
    assert message in document["error"]["message"]
    # the message is the same one line a terminal gets
    assert plain_err == f"venusctl: {document['error']['message']}\n"


def test_json_before_the_command_and_inventory_errors_too(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[[host]]\nname = 'a'\naddress = 'h'\nport = 0\n")
    status, out, err = call(bad, "--json", "list")
    assert (status, err) == (2, "")
    assert json.loads(out) == {
        "error": {
            "code": "inventory",
            "message": f"{bad}:4: port: must be an integer from 1 to 65535, got 0",
        }
    }
    status, out, _ = call(tmp_path / "missing.toml", "list", "--json")
    assert status == 2 and json.loads(out)["error"]["code"] == "inventory"


def test_health_json_failures_are_unknown_documents(inventory, empty_inventory):
    for path, argv, message in [
        (inventory, ["health", "--stuck", "PC9=1h", "--json"], "did you mean PC"),
        (empty_inventory, ["health", "--json"], "no hosts in"),
    ]:
        status, out, err = call(path, *argv)
        assert (status, err) == (3, "")
        document = json.loads(out)
        assert document["status"] == "UNKNOWN" and document["summary"].startswith(
            "VENUS UNKNOWN - "
        )
        assert (document["findings"], document["hosts"]) == ([], [])
        assert document["error"]["code"] in ("usage", "no-hosts")
        assert message in document["error"]["message"]


def test_an_unconfirmed_bulk_action_is_one_document_with_its_plan_and_the_error(tmp_path, capsys):
    error = venusctl.NotConfirmed(
        "not confirmed: stdin is not a terminal; add --yes to act", {"plan": []}
    )
    out = io.StringIO()
    env = Environment(stdout=out, stderr=io.StringIO())
    assert venusctl._fail(["pause", "--json"], env, str(error), 2, error.code, error.document) == 2
    assert json.loads(out.getvalue()) == {
        "plan": [],
        "error": {"code": "not-confirmed", "message": str(error)},
    }


# -- 5. worker text is data, never terminal control --------------------------------------------

NASTY = "bad \x1b]0;owned\x07 \x1b[2J x\ny\tz\r\x7f\x9b1m\u202eevil"
SHOWN = "bad \\x1b]0;owned\\x07 \\x1b[2J x\\ny\\tz\\r\\x7f\\x9b1m\\u202eevil"


def test_escape_text_makes_every_control_visible_and_is_idempotent():
    assert venusctl.escape_text(NASTY) == SHOWN
    assert venusctl.escape_text(SHOWN) == SHOWN  # twice changes nothing
    every = "".join(chr(code) for code in [*range(0x20), *range(0x7F, 0xA0)])
    escaped = venusctl.escape_text(every)
    assert escaped.isprintable() and escaped.count("\\") == len(every)
    assert venusctl.escape_text("a|b", also="|") == "a\\x7cb"
    assert venusctl.escape_text("plain C1Done /srv/store1 é ✓") == "plain C1Done /srv/store1 é ✓"


def nasty_thread():
    from helpers import worker_info

    return worker_info(
        location=f"/srv/{NASTY}",
        job_id=f"s-{NASTY}",
        job_state="C1Done",
        job_stage="C2",
        thread_state={"state": "Running", "elapsed": 5, "proc": f"mock{NASTY}"},
        last_error=f"permanent: {NASTY}",
    )


def printers():
    """Every printer of worker text, given the nasty thread, as the lines it prints."""
    thread = nasty_thread()
    host = venusctl.parse_inventory(INVENTORY, venusctl.Path("i.toml")).hosts[0]
    fleet = venusctl.FleetThread(host, thread)
    status = venusctl.HostStatus(report=None, threads=[thread], via="stream")
    refusal = venusctl.AgentRefused(1001, f"worker #0 {NASTY}")
    failed = venusctl.HostError(f"SSH error: {NASTY}")
    entry = venusctl.info_entry(host, failed)
    steps = venusctl.plan_steps("pause", [fleet], None)
    report = venusctl.judge_fleet(
        {"gpu-01": status, "gpu-02": failed}, venusctl.Thresholds(stuck={"default": 0}), 0.0
    )
    return {
        "info table": venusctl.render_table(*venusctl.info_table([thread], wide=True)),
        "threads table": venusctl.render_table(*venusctl.threads_table([fleet], wide=True)),
        "plan table": venusctl.render_table(*venusctl.plan_table(steps)),
        "drain table": venusctl.render_table(
            *venusctl.drain_table([fleet], {fleet.key: thread}, {fleet.key: refusal})
        ),
        "list table": venusctl.render_table(
            *venusctl.list_table([venusctl.list_entry(host, failed, 600)], wide=True)
        ),
        "action line": venusctl.action_line(
            host, venusctl.Action("resume", 0), venusctl.ActionOutcome(error=refusal)
        ),
        "action note": venusctl.action_line(
            host, venusctl.Action("pause", 0), venusctl.ActionOutcome("x", note=NASTY)
        ),
        "failure line": venusctl.info_failure_line(entry),
        "unreachable lines": "\n".join(venusctl.unreachable_lines([entry])),
        "drain progress": venusctl.describe_thread(thread),
        "health": venusctl.health_text(report, verbose=True),
    }


@pytest.mark.parametrize("printer", list(printers()))
def test_every_printer_escapes_worker_text(printer):
    text = printers()[printer]
    assert "\x1b" not in text and "\x07" not in text and "\x9b" not in text, text
    assert "\u202e" not in text and "\t" not in text and "\r" not in text
    assert "\\x1b]0;owned\\x07" in text or "\\x1b]0;owned\\x07" in text.replace("\\x7c", "|")
    for line in text.splitlines():  # a worker's newline never starts a line of its own
        assert not line.startswith("y"), text


def test_json_keeps_the_exact_worker_text():
    document = nasty_thread().to_json()
    assert document["last_error"] == f"permanent: {NASTY}"
    assert json.loads(json.dumps(document))["location"] == f"/srv/{NASTY}"


def test_usage_messages_and_tracebacks_are_escaped_too(inventory):
    status, _, err = call(inventory, "info", "gpu\x1b[2J")
    assert status == 2 and "\x1b" not in err and "gpu\\x1b[2J" in err


# -- 6. tables fit the terminal ------------------------------------------------------------------


def long_thread(index):
    from helpers import worker_info

    return worker_info(
        index=index,
        location="/srv/" + "store" * 8,
        last_error="permanent: " + "No cached parameters found " * 8,
        thread_state={"state": "Paused", "elapsed": 5, "proc": None},
    )


def test_on_a_terminal_rows_fit_its_width_lasterr_cut_first():
    ctx = venusctl.Context(
        inventory=venusctl.parse_inventory(INVENTORY, venusctl.Path("i.toml")),
        env=Environment(
            isatty=lambda stream: True, terminal_size=lambda: os.terminal_size((120, 24))
        ),
        color="never",  # lengths counted here are the visible ones (colour: test_venusctl_ux_*)
    )
    text = ctx.table(*venusctl.info_table([long_thread(0), long_thread(1)], wide=False))
    lines = text.splitlines()
    assert all(len(line) <= 120 for line in lines), lines
    assert lines[1].endswith("\u2026") and "/srv/" + "store" * 8 in lines[1]  # Loc whole
    ctx.full = True
    assert "No cached parameters found " * 7 in ctx.table(
        *venusctl.info_table([long_thread(0)], False)
    )


def test_a_pipe_or_a_file_is_never_cut():
    ctx = venusctl.Context(
        inventory=venusctl.parse_inventory(INVENTORY, venusctl.Path("i.toml")),
        env=Environment(
            isatty=lambda stream: False, terminal_size=lambda: os.terminal_size((40, 24))
        ),
    )
    text = ctx.table(*venusctl.info_table([long_thread(0)], wide=True))
    assert "\u2026" not in text and ("No cached parameters found " * 7) in text


def test_full_on_the_command_line(inventory):
    args = venusctl.build_parser().parse_args(["info", "gpu-01", "--full"])
    assert args.full is True
    assert venusctl.build_parser().parse_args(["--full", "threads"]).full is True
