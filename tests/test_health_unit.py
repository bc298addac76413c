"""`venusctl health` without I/O: judging, the plugin line, JSON, Prometheus text, settings.

The fleet, its agents and sshd are in test_health_e2e.py; here every input
is a WorkerInfo list or an exception as the fan-out would return it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

import pytest
from helpers import report, worker_info
from prometheus_client.parser import text_string_to_metric_families

import venusctl
from venusctl import (
    AgentNotRunning,
    ConnectionRefused,
    HostStatus,
    InventoryError,
    NoAnswer,
    Severity,
    Thresholds,
    judge_fleet,
)

NOW = 1764282000.25
HOUR = 3600.0


def thread(index=0, *, state="PC1Done", stage="PC2", ts="Running", elapsed=10, **extra):
    return worker_info(
        **{
            "index": index,
            "location": f"/srv/store{index}",
            "job_id": f"s-t010000-{index + 1}" if state else None,
            "job_state": state,
            "job_stage": stage,
            "thread_state": {"state": ts, "elapsed": elapsed, "proc": None},
            "state_elapsed": elapsed if state else None,
            **extra,
        }
    )


def status(*threads, age=2.5):
    return HostStatus(report=report(age), threads=list(threads), via="stream")


def judge(outcomes, **thresholds):
    return judge_fleet(outcomes, Thresholds(**thresholds), NOW)


def only(report):
    assert len(report.findings) == 1, report.findings
    return report.findings[0]


def test_a_healthy_fleet_is_ok_with_counts_and_no_findings():
    report = judge(
        {
            "w1": status(thread(0), thread(1, state="", stage=None, ts="Idle", elapsed=None)),
            "w2": status(thread(0, ts="Waiting", state="PCSubmitted", stage="WaitPCLanded")),
        }
    )
    assert report.status == Severity.OK and report.findings == []
    # issue 10: perfdata with min (and warn/crit where a count decides), a per-host summary
    assert venusctl.health_text(report).splitlines() == [
        "VENUS OK - 2 hosts, 3 threads | hosts=2;;;0 threads=3;;;0 running=1;;;0 waiting=1;;;0"
        " paused=0;;;0 errors=0;0;;0 unreachable=0;;0;0 idle=1;;;0 empty=1;;;0 silenced=0;;;0",
        "Host  Threads  Paused  Errors  Heartbeat  Note",
        "w1    2        0       0       2.5s       -",
        "w2    1        0       0       2.5s       -",
    ]


def test_unreachable_host_is_critical_and_the_others_are_still_judged():
    report = judge({"down": ConnectionRefused("connection refused"), "w1": status(thread(0))})
    finding = only(report)
    assert (finding.severity, finding.kind, finding.host) == (
        Severity.CRITICAL,
        "host-unreachable",
        "down",
    )
    assert venusctl.health_text(report).splitlines()[:2] == [
        "VENUS CRITICAL - 1 host unreachable | hosts=2;;;0 threads=1;;;0 running=1;;;0"
        " waiting=0;;;0 paused=0;;;0 errors=0;0;;0 unreachable=1;;0;0 idle=0;;;0 empty=0;;;0"
        " silenced=0;;;0",
        "CRITICAL down: unreachable: connection refused",
    ]


def test_stopped_agent_with_a_stale_heartbeat_is_critical_and_says_how_old():
    dead = HostStatus(
        report=report(900.0), threads=None, error=AgentNotRunning("agent not running")
    )
    finding = only(judge({"dead": dead}))
    assert (finding.severity, finding.kind) == (Severity.CRITICAL, "agent-not-running")
    assert finding.message == "agent not running; last heartbeat 15m0s ago (expired)"


def test_stale_heartbeat_of_an_answering_agent_is_critical():
    finding = only(judge({"w1": status(thread(0), age=601.0)}))
    assert (finding.severity, finding.kind) == (Severity.CRITICAL, "heartbeat-expired")
    assert finding.message.startswith("heartbeat 10m1s old, over the 10m0s expiration")


def test_a_host_without_any_heartbeat_report_is_judged_on_its_threads_only():
    # A damocles worker writes no report: never "stale heartbeat".
    no_report = HostStatus(report=None, threads=[thread(0)], via="stream")
    assert judge({"d1": no_report}, expiration=0.0).status == Severity.OK
    # as DamoclesAgent.status answers
    damocles = HostStatus(
        None, [thread(0)], via="direct-tcpip", worker_version="v0.9.0", heartbeat=False
    )
    report = judge({"d2": damocles}, expiration=0.0)
    assert report.status == Severity.OK and report.hosts[0].heartbeat_age is None
    # No heartbeat known: 0, which the fleet rules read as "none" (never stale).
    heartbeat = ("venus_fleet_last_heartbeat_timestamp_seconds", (("host", "d2"),))
    assert samples(venusctl.prometheus_text(report))[heartbeat] == 0


def test_error_pause_is_warning_then_critical_after_paused_crit():
    error = "permanent: No cached parameters found"
    young = thread(0, state="C1Done", stage="C2", ts="Paused", elapsed=60, last_error=error)
    old = thread(1, state="C1Done", stage="C2", ts="Paused", elapsed=7 * 3600, last_error=error)
    report = judge({"w1": status(young, old)}, paused_crit=6 * HOUR)
    assert [(f.index, f.severity, f.kind) for f in report.findings] == [
        (1, Severity.CRITICAL, "thread-error"),  # the worst first
        (0, Severity.WARNING, "thread-error"),
    ]
    assert report.status == Severity.CRITICAL
    lines = venusctl.health_text(report).splitlines()
    assert lines[0].startswith("VENUS CRITICAL - 2 threads in error | ")
    assert lines[1] == (
        f"CRITICAL w1 #1 s-t010000-2 C1Done: paused by an error for 7h0m0s: {error}"
    )
    assert lines[2] == f"WARNING w1 #0 s-t010000-1 C1Done: paused by an error for 1m0s: {error}"


@pytest.mark.parametrize(("elapsed", "expected"), [(59 * 60, []), (3600, ["thread-paused"])])
def test_pause_by_hand_is_a_warning_from_paused_warn_on(elapsed, expected):
    paused = thread(0, ts="Paused", elapsed=elapsed)
    report = judge({"w1": status(paused)}, paused_warn=HOUR)
    assert [f.kind for f in report.findings] == expected
    assert report.status == (Severity.WARNING if expected else Severity.OK)


def test_stuck_uses_the_stage_default_and_a_state_beats_its_stage():
    pc1 = thread(0, state="TicketAssigned", stage="PC1", elapsed=int(12 * HOUR))
    c2 = thread(1, state="C1Done", stage="C2", elapsed=int(3 * HOUR))
    finding = only(judge({"w1": status(pc1, c2)}))
    assert (finding.severity, finding.kind, finding.index, finding.stage) == (
        Severity.WARNING,
        "thread-stuck",
        0,
        "PC1",
    )
    assert finding.message == "stage PC1 for 12h0m0s (stuck after 12h0m0s, --stuck PC1)"
    overridden = Thresholds(
        stuck={**venusctl.STUCK_DEFAULTS, "TicketAssigned": 13 * HOUR, "C2": HOUR}
    )
    report = judge_fleet({"w1": status(pc1, c2)}, overridden, NOW)
    assert [(f.index, f.message) for f in report.findings] == [
        (1, "stage C2 for 3h0m0s (stuck after 1h0m0s, --stuck C2)")
    ]


def test_stuck_falls_back_to_default_and_to_thread_elapsed_without_state_elapsed():
    # A damocles worker has no state_elapsed; a stage nobody listed uses `default`.
    odd = thread(0, state="C1Done", stage="FutureStage", elapsed=int(7 * HOUR), state_elapsed=None)
    finding = only(judge({"d1": status(odd)}))
    assert finding.message.endswith("(stuck after 6h0m0s, --stuck default)")


def test_paused_threads_are_never_stuck_and_idle_or_empty_ones_never_judged():
    paused = thread(0, state="TicketAssigned", stage="PC1", ts="Paused", elapsed=100)
    paused = dataclasses.replace(paused, state_elapsed=int(100 * HOUR))
    empty = thread(1, state="", stage=None, ts="Idle", elapsed=None)
    assert judge({"w1": status(paused, empty)}).findings == []


def test_deadline_makes_the_run_unknown_and_names_the_late_host():
    outcomes = {"hung": NoAnswer("no answer before the deadline of 1s"), "w1": status(thread(0))}
    report = judge_fleet(outcomes, Thresholds(), NOW, deadline=1.0)
    assert report.status == Severity.UNKNOWN
    lines = venusctl.health_text(report).splitlines()
    assert lines[0].startswith(
        "VENUS UNKNOWN - deadline of 1s passed, 1 host did not answer in time | hosts=2"
    )
    assert lines[1] == "UNKNOWN hung: no answer before the deadline of 1s"


def test_critical_outranks_unknown_outranks_warning():
    internal = judge(
        {"w1": RuntimeError("boom"), "w2": status(thread(0, ts="Paused", elapsed=7200))}
    )
    assert internal.status == Severity.UNKNOWN
    assert judge({"w1": RuntimeError("boom"), "w2": ConnectionRefused("x")}).status == (
        Severity.CRITICAL
    )


def test_json_has_status_summary_findings_and_hosts():
    report = judge({"down": ConnectionRefused("connection refused"), "w1": status(thread(0))})
    document = venusctl.health_json(report)
    assert set(document) == {"status", "summary", "findings", "groups", "not_judged", "hosts"}
    assert document["status"] == "CRITICAL"
    assert document["summary"] == venusctl.health_summary(report)
    assert document["findings"][0] == {
        "severity": "CRITICAL",
        "kind": "host-unreachable",
        "host": "down",
        "message": "unreachable: connection refused",
        "index": None,
        "sector": None,
        "state": None,
        "stage": None,
        "duration": None,
        "cause": "unreachable: connection refused",
        "silenced": False,
    }
    w1 = document["hosts"][1]
    assert (w1["name"], w1["up"], w1["threads"], w1["heartbeat_age"]) == ("w1", True, 1, 2.5)
    assert w1["thread_states"] == {"Idle": 0, "Running": 1, "Waiting": 0, "Paused": 0}
    assert w1["job_states"] == {"PC1Done": 1} and "findings" not in w1


def test_ok_line_counts_in_the_singular_too():
    text = venusctl.health_text(judge({"w1": status(thread(0))}))
    assert text.startswith("VENUS OK - 1 host, 1 thread | hosts=1;;;0 threads=1;;;0 ")


def samples(text):
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_prometheus_text_parses_with_help_type_and_escaped_labels():
    tricky = 'rack"1\\new\nline'
    report = judge(
        {
            tricky: status(thread(0, state="C1Done", ts="Paused", elapsed=5, last_error="x")),
            "down": ConnectionRefused("refused"),
        }
    )
    text = venusctl.prometheus_text(report)
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert all(family.type == "gauge" and family.documentation for family in families.values())
    values = samples(text)
    assert values[("venus_fleet_host_up", (("host", tricky),))] == 1
    assert values[("venus_fleet_host_up", (("host", "down"),))] == 0
    heartbeat = values[("venus_fleet_last_heartbeat_timestamp_seconds", (("host", tricky),))]
    assert math.isclose(heartbeat, NOW - 2.5)  # a timestamp, not the age
    assert values[("venus_fleet_last_heartbeat_timestamp_seconds", (("host", "down"),))] == 0
    assert values[("venus_fleet_threads", (("host", tricky), ("state", "Paused")))] == 1
    assert values[("venus_fleet_threads", (("host", tricky), ("state", "Running")))] == 0
    assert values[("venus_fleet_threads", (("host", "down"), ("state", "Paused")))] == 0
    assert values[("venus_fleet_job_threads", (("host", tricky), ("job_state", "C1Done")))] == 1
    assert values[("venus_fleet_threads_paused", (("host", tricky),))] == 1
    assert values[("venus_fleet_threads_errors", (("host", tricky),))] == 1
    assert values[("venus_fleet_threads_errors", (("host", "down"),))] == 0

    def findings(host, kind, status):
        labels = (("host", host), ("kind", kind), ("status", status))
        return values[("venus_fleet_health_findings", labels)]

    assert findings("down", "host-unreachable", "CRITICAL") == 1
    assert findings(tricky, "thread-error", "WARNING") == 1
    assert findings(tricky, "thread-error", "CRITICAL") == 0
    assert findings(tricky, "host-unreachable", "CRITICAL") == 0
    one = [key[1] for key, value in values.items() if key[0] == "venus_fleet_health_finding"]
    assert one == [
        (("host", tricky), ("index", "0"), ("kind", "thread-error"), ("status", "WARNING")),
        (("host", "down"), ("index", ""), ("kind", "host-unreachable"), ("status", "CRITICAL")),
    ]
    assert all(
        value == 1 for key, value in values.items() if key[0] == "venus_fleet_health_finding"
    )
    status_values = {
        dict(labels)["status"]: value
        for (name, labels), value in values.items()
        if name == "venus_fleet_health_status"
    }
    assert status_values == {"OK": 0, "WARNING": 0, "CRITICAL": 1, "UNKNOWN": 0}
    assert math.isclose(values[("venus_fleet_health_last_run_timestamp_seconds", ())], NOW)


def test_write_textfile_replaces_atomically_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "venus.prom"
    target.write_text("old\n")
    venusctl.write_textfile(target, "venus_fleet_host_up 0\n")
    assert target.read_text() == "venus_fleet_host_up 0\n"
    assert oct(target.stat().st_mode & 0o777) == "0o644"  # node_exporter must read it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["venus.prom"]
    with pytest.raises(OSError):
        venusctl.write_textfile(tmp_path / "missing" / "venus.prom", "x\n")


# -- settings: [health] in the inventory, the command line, --stuck -------------------------------

HEALTH_INVENTORY = """\
[[host]]
name = "gpu-01"
address = "10.0.0.1"

[health]
expiration = "5m"
paused_warn = "30m"
deadline = "20s"
prometheus = "metrics/venus.prom"
stuck = {PC1 = "14h", WaitSeed = "2h"}
"""


def test_health_table_is_read_with_paths_relative_to_the_inventory(tmp_path):
    inventory = venusctl.parse_inventory(HEALTH_INVENTORY, tmp_path / "inventory.toml")
    health = inventory.health
    assert (health.expiration, health.paused_warn, health.paused_crit, health.deadline) == (
        300.0,
        1800.0,
        None,
        20.0,
    )
    assert health.stuck == {"PC1": 14 * HOUR, "WaitSeed": 2 * HOUR}
    assert health.prometheus == str(tmp_path / "metrics/venus.prom")


def test_command_line_wins_over_the_health_table_which_wins_over_defaults(tmp_path):
    inventory = venusctl.parse_inventory(HEALTH_INVENTORY, tmp_path / "inventory.toml")
    args = argparse.Namespace(
        expiration=None, paused_warn=60.0, paused_crit=None, stuck=[("PC1", 3600.0)]
    )
    thresholds = venusctl.health_thresholds(inventory.health, args)
    assert thresholds.expiration == 300.0  # [health]
    assert thresholds.paused_warn == 60.0  # command line
    assert thresholds.paused_crit == 6 * HOUR  # built-in
    assert thresholds.stuck["PC1"] == HOUR and thresholds.stuck["WaitSeed"] == 2 * HOUR
    assert thresholds.stuck["C2"] == venusctl.STUCK_DEFAULTS["C2"]


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ('[health]\nexpirtion = "5m"\n', r"inventory\.toml:2: unknown key 'health\.expirtion'"),
        ('[health]\nexpiration = "5 min"\n', r":2: health\.expiration: invalid duration '5 min'"),
        (
            "[health]\nexpiration = 300\n",
            r':2: health\.expiration: must be a duration such as "10m"',
        ),
        ('[health]\nstuck = {PC3 = "1h"}\n', r":2: health\.stuck: unknown stage or state 'PC3'"),
        (
            '[health.stuck]\nPC1 = "1h"\nC3 = "1h"\n',
            r":3: health\.stuck: unknown stage or state 'C3'",
        ),
        ('[health]\nstuck = "1h"\n', r":2: health\.stuck: must be a table"),
        ("[health]\nprometheus = 1\n", r":2: health\.prometheus: must be a file path"),
        ('[health]\ndeadline = "0s"\n', r":2: health\.deadline: must be more than 0"),
    ],
)
def test_bad_health_table_is_one_line_with_file_line_and_key(tmp_path, table, expected):
    with pytest.raises(InventoryError, match=expected):
        venusctl.parse_inventory(table, tmp_path / "inventory.toml")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("PC1=14h", ("PC1", 14 * HOUR)),
        ("C1Done=30m", ("C1Done", 1800.0)),
        ("default=8h", ("default", 8 * HOUR)),
    ],
)
def test_stuck_option_takes_stage_state_or_default(text, expected):
    assert venusctl.parse_stuck_option(text) == expected


@pytest.mark.parametrize("text", ["PC1", "PC3=1h", "PC1=soon", "=1h"])
def test_bad_stuck_option_is_refused(text):
    with pytest.raises(ValueError):
        venusctl.parse_stuck_option(text)


def test_requested_command_skips_options_and_their_values():
    assert venusctl.requested_command(["-i", "health", "--forks", "3", "list"]) == "list"
    assert venusctl.requested_command(["--json", "health", "--stuck", "PC3=1h"]) == "health"
    assert venusctl.requested_command(["--json"]) is None
    # every option that takes a value, from the parser: --color's was once read as the command
    assert venusctl.requested_command(["--color", "never", "health"]) == "health"
    assert venusctl.requested_command(["--fleet=prod", "--deadline", "5s", "health"]) == "health"


def test_usage_errors_of_health_exit_3_with_a_plugin_line(tmp_path, capsys):
    path = tmp_path / "inventory.toml"
    path.write_text(HEALTH_INVENTORY)
    assert venusctl.main(["-i", str(path), "health", "--stuck", "PC3=1h"]) == 3
    out = capsys.readouterr().out
    assert out.startswith("VENUS UNKNOWN - argument --stuck: unknown stage or state 'PC3'")
    assert len(out.splitlines()) == 1
    path.write_text(HEALTH_INVENTORY + 'bogus = "x"\n')
    assert venusctl.main(["-i", str(path), "health"]) == 3
    assert "unknown key 'health.bogus'" in capsys.readouterr().out
    assert venusctl.main(["-i", str(path), "list"]) == 2  # the other commands keep their 2
    assert venusctl.main(["--forks", "0", "-i", str(Path("nowhere.toml")), "health"]) == 3
    capsys.readouterr()
    path.write_text(HEALTH_INVENTORY)
    assert venusctl.main(["-i", str(path), "health", "--deadline", "0s"]) == 3
    assert capsys.readouterr().out.startswith(
        "VENUS UNKNOWN - argument --deadline/-t/--timeout: invalid duration '0s': must be more"
    )


def test_stuck_thresholds_cover_every_stage_label_of_the_agents_plans():
    # The labels are the agent's (api.STAGE_NAMES); a stage added there needs its threshold.
    assert set(venusctl.STUCK_DEFAULTS) == {*venusctl.api.STAGE_NAMES, "default"}
    assert venusctl.check_stuck_key("SeedAssigned") == "SeedAssigned"  # a state name
    assert venusctl.check_stuck_key("Generated") == "Generated"  # damocles' wdpost
