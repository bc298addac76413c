"""`venusctl health` read as a monitoring system reads it (tests/nagios.py, from the plugin
guidelines), grouping, the per-host summary, silences, -t/--timeout and --version. No I/O:
the fleet's real output is parsed the same way in test_venusctl_safety_e2e.py."""

from __future__ import annotations

import io

import nagios
import pytest
from helpers import report, worker_info

import venusctl
from venusctl import ConnectionRefused, Environment, HostStatus, Severity, Thresholds

NOW = 1764282000.25
NASTY = "permanent: bad \x1b]0;owned\x07 \x1b[2J params | see\nline two\r\x9b1m"
ERROR = "permanent: No cached parameters found for stacked-proof-of-replication"


def paused(index, error=ERROR, elapsed=60):
    return worker_info(
        index=index,
        job_id=f"s-t010000-{index}",
        job_state="C1Done",
        job_stage="C2",
        thread_state={"state": "Paused", "elapsed": elapsed, "proc": None},
        last_error=error,
    )


def status(*threads, age=2.5):
    return HostStatus(report=report(age), threads=list(threads), via="stream")


def judge(outcomes, inventory=None, **thresholds):
    silences = inventory.silence_of if inventory is not None else None
    return venusctl.judge_fleet(outcomes, Thresholds(**thresholds), NOW, silences=silences)


FLEET = {
    "h1": status(paused(0), paused(1, elapsed=3600), paused(2, error=NASTY)),
    "h2": status(paused(0), paused(1)),
    "h3": status(paused(0, elapsed=7)),
    "down": ConnectionRefused("connection refused"),
    "gone": ConnectionRefused("connection refused"),
}


def test_the_report_is_valid_plugin_output_with_worker_text_escaped():
    text = venusctl.health_text(judge(FLEET))
    output = nagios.parse(text)  # no control character, no stray '|', perfdata by the grammar
    assert output.text == "VENUS CRITICAL - 2 hosts unreachable, 6 threads in error"
    perf = {item.label: item for item in output.perfdata}
    assert list(perf) == [
        *("hosts", "threads", "running", "waiting", "paused", "errors", "unreachable"),
        *("idle", "empty", "silenced"),
    ]
    assert (perf["hosts"].value, perf["errors"].value, perf["unreachable"].value) == (5, 6, 2)
    assert all(item.min == 0 and item.uom == "" for item in output.perfdata)
    assert (perf["errors"].warn, perf["errors"].crit) == ("0", "")  # any error: WARNING
    assert (perf["unreachable"].warn, perf["unreachable"].crit) == ("", "0")  # any: CRITICAL
    # the nasty text is there, visibly escaped, on one line, its '|' replaced
    (nasty,) = [line for line in output.long_output if "owned" in line]
    assert "\\x1b]0;owned\\x07 \\x1b[2J params \\x7c see\\nline two\\r\\x9b1m" in nasty


def test_identical_findings_are_one_line_and_verbose_lists_each_thread():
    lines = venusctl.health_text(judge(FLEET)).splitlines()
    assert lines[1] == "CRITICAL 2 hosts: unreachable: connection refused (down, gone)"
    assert lines[2] == (
        f"WARNING 5 threads on 3 hosts paused on: {ERROR} (h1, h2, h3; longest 1h0m0s)"
    )
    assert lines[3].startswith("WARNING h1 #2 s-t010000-2 C1Done: paused by an error for 1m0s")
    assert lines[4].split() == ["Host", "Threads", "Paused", "Errors", "Heartbeat", "Note"]
    assert [line.split()[0] for line in lines[5:]] == ["h1", "h2", "h3", "down", "gone"]
    assert lines[5].split() == ["h1", "3", "3", "3", "2.5s", "-"]
    assert lines[8].split()[:5] == ["down", "-", "-", "-", "-"]
    verbose = venusctl.health_text(judge(FLEET), verbose=True).splitlines()
    assert verbose[1:4] == [
        "CRITICAL 2 hosts: unreachable: connection refused (down, gone)",
        "  CRITICAL down: unreachable: connection refused",
        "  CRITICAL gone: unreachable: connection refused",
    ]
    members = [line for line in verbose if line.startswith("  WARNING ")]
    assert len(members) == 5 and members[0].startswith("  WARNING h1 #0 s-t010000-0 C1Done:")
    nagios.parse("\n".join(verbose) + "\n")


def test_a_group_names_ten_hosts_then_how_many_more():
    fleet = {f"w{n}": status(paused(0)) for n in range(12)}
    line = venusctl.health_text(judge(fleet)).splitlines()[1]
    assert line.endswith("(w0, w1, w2, w3, w4, w5, w6, w7, w8, w9 and 2 more; longest 1m0s)")


def test_json_keeps_every_finding_exact_and_the_groups():
    document = venusctl.health_json(judge(FLEET))
    errors = [f for f in document["findings"] if f["kind"] == "thread-error"]
    assert any(f["message"].endswith(NASTY) for f in errors)  # exact, unescaped
    assert document["groups"][1] == {
        "severity": "WARNING",
        "kind": "thread-error",
        "cause": f"paused on: {ERROR}",
        "silenced": False,
        "count": 5,
        "hosts": ["h1", "h2", "h3"],
    }


@pytest.mark.parametrize(
    ("label", "item"),
    [("hosts", "hosts=3;;;0"), ("a b", "'a b'=3;;;0"), ("x|y", "'x|y'=3;;;0")],
)
def test_perfdata_labels_are_quoted_where_needed(label, item):
    assert venusctl.perfdata_item(label, 3) == item
    assert nagios.parse_perfdata(item)[0].label == label


def test_a_perfdata_label_with_a_quote_or_equals_is_refused():
    for label in ("it's", "a=b"):
        with pytest.raises(ValueError):
            venusctl.perfdata_item(label, 1)


def test_the_parser_refuses_what_nagios_would_misread():
    for bad in [
        "VENUS OK - fine\n",  # no perfdata
        "VENUS OK - a | b | hosts=1\n",  # a second '|' in the status line
        "VENUS OK - a | hosts=1\nsee | this\n",  # '|' in the long output
        "VENUS OK - a | hosts=1\n\x1b[2J\n",  # a control character
        "VENUS OK - a | a b=1\n",  # an unquoted label with a space
        "VENUS OK - a | hosts=1;x\n",  # warn not a range
        "VENUS OK - a | hosts=1parsecs\n",  # not a unit
    ]:
        with pytest.raises(nagios.NotPluginOutput):
            nagios.parse(bad)
    assert nagios.parse("OK | 'a b'=1.5s;10:;@5:8;0;\n").perfdata[0].label == "a b"


# -- silences -------------------------------------------------------------------------------------


SILENCED = """\
[[host]]
name = "h1"
address = "10.0.0.1"
groups = ["rack2"]

[[host]]
name = "h2"
address = "10.0.0.2"

[[host]]
name = "h3"
address = "10.0.0.3"
groups = ["rack2"]

[[silence]]
hosts = "rack2"
until = "2026-12-24T08:00Z"
reason = "PSU swap | ticket\\u001b[2J 42"

[[silence]]
hosts = "h2"
until = 2025-01-01T00:00:00+02:00
reason = "over long ago"
"""


def parse_inventory(text):
    return venusctl.parse_inventory(text, venusctl.Path("inventory.toml"))


def test_silenced_hosts_are_reported_marked_and_do_not_raise_the_status():
    inventory = parse_inventory(SILENCED)
    (rack2, old) = inventory.silences
    assert rack2.names == ("h1", "h3") and rack2.until_text == "2026-12-24T08:00Z"
    assert old.until < NOW  # expired: h2 is judged again
    fleet = {"h1": status(paused(0)), "h2": status(), "h3": ConnectionRefused("refused")}
    result = judge(fleet, inventory)
    assert result.status == Severity.OK
    output = nagios.parse(venusctl.health_text(result))
    assert output.text == "VENUS OK - 1 host, 0 threads, 2 hosts silenced"
    perf = {item.label: item.value for item in output.perfdata}
    assert (perf["hosts"], perf["silenced"], perf["unreachable"], perf["errors"]) == (3, 2, 0, 0)
    assert output.long_output[:2] == [
        "CRITICAL [silenced] h3: unreachable: refused",
        "WARNING [silenced] h1 #0 s-t010000-0 C1Done: paused by an error for 1m0s: " + ERROR,
    ]
    notes = {line.split()[0]: line for line in output.long_output[3:]}
    assert notes["h1"].endswith(
        "silenced until 2026-12-24T08:00Z: PSU swap \\x7c ticket\\x1b[2J 42"
    )
    assert notes["h2"].endswith(" -")
    # the same fleet once the silence is over: CRITICAL
    later = venusctl.judge_fleet(
        fleet, Thresholds(), rack2.until + 1, silences=inventory.silence_of
    )
    assert later.status == Severity.CRITICAL and not any(f.silenced for f in later.findings)


def test_a_silenced_host_that_does_not_answer_by_the_deadline_is_not_unknown():
    inventory = parse_inventory(SILENCED)
    outcomes = {"h1": venusctl.NoAnswer("no answer before the deadline of 1s"), "h2": status()}
    result = venusctl.judge_fleet(
        outcomes, Thresholds(), NOW, deadline=1.0, silences=inventory.silence_of
    )
    assert result.status == Severity.OK and result.deadline is None
    document = venusctl.health_json(result)
    assert document["hosts"][0]["silenced"] == {
        "until": "2026-12-24T08:00Z",
        "reason": "PSU swap | ticket\x1b[2J 42",
    }
    assert document["findings"][0]["silenced"] is True


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ('hosts = "h9"\nuntil = "2026-12-24T08:00Z"\nreason = "x"', "'h9' matches no host"),
        ('hosts = ""\nuntil = "2026-12-24T08:00Z"\nreason = "x"', "hosts: must be a non-empty"),
        ('hosts = "h1"\nuntil = "2026-12-24T08:00"\nreason = "x"', "has no offset"),
        ('hosts = "h1"\nuntil = 2026-12-24T08:00:00\nreason = "x"', "has no offset"),
        ('hosts = "h1"\nuntil = "tomorrow"\nreason = "x"', "not a date and time"),
        ('hosts = "h1"\nuntil = "2026-12-24T08:00Z"', "missing 'reason'"),
        ('hosts = "h1"\nuntil = "2026-12-24T08:00Z"\nreason = " "', "reason: must be a non-empty"),
        ('hosts = "h1"\nuntil = "2026-12-24T08:00Z"\nreason = "x"\nby = "me"', "unknown key 'by'"),
    ],
)
def test_a_bad_silence_is_one_inventory_error_naming_the_line(table, problem):
    text = '[[host]]\nname = "h1"\naddress = "a"\n\n[[silence]]\n' + table + "\n"
    with pytest.raises(venusctl.InventoryError) as caught:
        parse_inventory(text)
    assert str(caught.value).startswith("inventory.toml:") and problem in str(caught.value)
    assert "silence[0]" in str(caught.value)


# -- -t/--timeout, --version ---------------------------------------------------------------------


def test_timeout_is_the_conventional_alias_of_deadline():
    parser = venusctl.build_parser()
    for option in ("-t", "--timeout", "--deadline"):
        assert parser.parse_args(["health", option, "45"]).deadline == 45.0
    assert parser.parse_args(["health", "-t", "1m"]).deadline == 60.0


@pytest.mark.parametrize("argv", [["--version"], ["health", "--version"], ["health", "-V"]])
def test_version(argv):
    out = io.StringIO()
    assert venusctl.main(argv, Environment(stdout=out, stderr=io.StringIO())) == 0
    assert out.getvalue() == f"venusctl {venusctl.__version__}\n"


def test_every_line_stays_one_line_whatever_the_worker_sends():
    weird = "".join(chr(code) for code in range(0x00, 0xA0)) + "\u2028\u2029\u202e"
    fleet = {"h1": status(paused(0, error=weird)), "h2": ConnectionRefused(weird)}
    text = venusctl.health_text(judge(fleet))
    output = nagios.parse(text)
    assert len(output.long_output) == 2 + 3  # two findings, the hosts' header and rows
    for line in text.splitlines():
        assert not any(char in line for char in "\u2028\u2029\u202e")
