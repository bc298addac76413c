"""monitoring/*.rules.yml: promtool checks them and runs their unit tests.

venus-worker.rules.yml judges the agents' own textfiles, venus-fleet.rules.yml
relays the findings of `venusctl health --prometheus`. Beside promtool's
verdicts: the worker rules' limits are venusctl health's defaults, every kind
of finding has its fleet alert, both files name their common alerts alike,
every alert has a firing and a quiet case in monitoring/tests/, and the rules
name only series that exist (the agent's, venusctl's, node_exporter's, or the
one issue 15 will add).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from agent_helpers import REPO
from promtools import promtool

import venusctl
from worker_agent.metrics import METRICS
from worker_agent.states import PLANS

RULES = REPO / "monitoring" / "venus-worker.rules.yml"
FLEET_RULES = REPO / "monitoring" / "venus-fleet.rules.yml"
TESTS = sorted((REPO / "monitoring" / "tests").glob("*.yml"))
THRESHOLD = "venus_worker:stage_stuck_threshold_seconds"
# Series the rules may use that the agent does not write today.
NODE_EXPORTER_SERIES = {"node_textfile_mtime_seconds"}
PLANNED_SERIES: set[str] = set()  # series the rules may use before the agent writes them


def rules(*paths: Path) -> list[dict]:
    """The rules of these files (default: both)."""
    documents = [yaml.safe_load(path.read_text()) for path in paths or (RULES, FLEET_RULES)]
    return [
        rule for document in documents for group in document["groups"] for rule in group["rules"]
    ]


def alerts(path: Path) -> dict[str, dict]:
    return {rule["alert"]: rule for rule in rules(path) if "alert" in rule}


@pytest.mark.e2e
@pytest.mark.parametrize("path", [RULES, FLEET_RULES], ids=lambda path: path.name)
def test_promtool_check_rules(path):
    done = promtool("check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


@pytest.mark.e2e
def test_promtool_test_rules():
    assert TESTS, "no promtool unit tests in monitoring/tests/"
    done = promtool("test", "rules", *map(str, TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("SUCCESS") == len(TESTS)


@pytest.mark.e2e
def test_promtool_test_rules_fails_when_a_limit_moves(tmp_path):
    """The unit tests can fail: PC1's limit raised from 12h to 14h breaks them."""
    changed = tmp_path / "monitoring"
    (changed / "tests").mkdir(parents=True)
    text = RULES.read_text()
    assert text.count("vector(43200)  # 12h\n        labels: {stage: PC1}") == 1
    text = text.replace("vector(43200)  # 12h\n        labels: {stage: PC1}", "vector(50400)")
    (changed / RULES.name).write_text(text)
    test = REPO / "monitoring" / "tests" / "venus-worker.rules.test.yml"
    (changed / "tests" / test.name).write_text(test.read_text())
    done = promtool("test", "rules", str(changed / "tests" / test.name))
    assert done.returncode != 0
    assert "VenusWorkerStageStuck" in done.stdout + done.stderr


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("old", "new", "alert"),
    [
        ("> 900", "> 1200", "VenusFleetHealthNotRunning"),
        ('kind="thread-stuck"', 'kind="thread-paused"', "VenusFleetStageStuck"),
        ("max without (status) (", "(", "VenusFleetThreadError"),
    ],
)
def test_promtool_test_rules_fails_when_a_fleet_rule_changes(tmp_path, old, new, alert):
    changed = tmp_path / "monitoring"
    (changed / "tests").mkdir(parents=True)
    text = FLEET_RULES.read_text()
    assert text.count(old) == 1
    (changed / FLEET_RULES.name).write_text(text.replace(old, new))
    test = REPO / "monitoring" / "tests" / "venus-fleet.rules.test.yml"
    (changed / "tests" / test.name).write_text(test.read_text())
    done = promtool("test", "rules", str(changed / "tests" / test.name))
    assert done.returncode != 0
    assert f"alertname: {alert}," in done.stdout + done.stderr


def test_stuck_limits_are_venusctl_healths_defaults():
    limits = {}
    for rule in rules(RULES):
        if rule.get("record") == THRESHOLD:
            stage = rule["labels"]["stage"]
            assert stage not in limits, f"two limits for {stage}"
            limits[stage] = float(re.fullmatch(r"vector\((\d+)\)", rule["expr"].strip())[1])
    assert limits == venusctl.STUCK_DEFAULTS


def test_every_stage_of_every_plan_has_a_limit_of_its_own():
    stages = {plan.stage(state) for plan in PLANS.values() for state in plan.states} - {"-"}
    limits = {r["labels"]["stage"] for r in rules() if r.get("record") == THRESHOLD}
    assert stages <= limits, sorted(stages - limits)


def test_every_alert_has_a_firing_and_a_quiet_case():
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    firing, quiet = set(), set()
    for test in TESTS:
        for group in yaml.safe_load(test.read_text())["tests"]:
            for case in group.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert firing == alerts and quiet == alerts


def test_every_alert_has_a_severity_and_a_summary():
    for rule in rules():
        if "alert" in rule:
            assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_the_rules_name_only_series_that_exist():
    known = {name.removesuffix("_total") for name in METRICS} | {
        f"{name}_{suffix}"
        for name, (kind, _, _) in METRICS.items()
        if kind == "histogram"
        for suffix in ("bucket", "sum", "count")
    }
    known |= set(METRICS) | NODE_EXPORTER_SERIES | PLANNED_SERIES | {THRESHOLD}
    known |= set(venusctl.FLEET_METRICS)
    used = set()
    for rule in rules():
        found = re.findall(r"\b(?:venus_(?:worker|fleet)[a-z_:]*|node_[a-z_]+)\b", rule["expr"])
        used |= set(found)
    assert {name for name in used if name.startswith("venus_fleet")}, "no fleet series found"
    assert used <= known, sorted(used - known)


def _threshold(expr: str, comparison: str) -> float:
    (found,) = re.findall(rf"{re.escape(comparison)} (\d+)\b", expr)
    return float(found)


def test_the_worker_rules_limits_are_venusctl_healths_defaults():
    worker = alerts(RULES)
    defaults = venusctl.HEALTH_DEFAULTS
    expr = worker["VenusWorkerHeartbeatStale"]["expr"]
    assert _threshold(expr, ">") == defaults["expiration"]
    assert _threshold(worker["VenusWorkerThreadPaused"]["expr"], ">=") == defaults["paused_warn"]
    expr = worker["VenusWorkerThreadErrorUnattended"]["expr"]
    assert _threshold(expr, ">=") == defaults["paused_crit"]


def test_every_kind_of_finding_has_its_fleet_alert():
    """The fleet rules relay health's verdicts: each kind of finding pages as one alert."""
    relayed = {}
    for name, rule in alerts(FLEET_RULES).items():
        for kinds in re.findall(r'venus_fleet_health_finding\{kind=~?"([^"]+)"', rule["expr"]):
            for kind in kinds.split("|"):
                relayed.setdefault(kind, set()).add(name)
    assert set(relayed) == set(venusctl.FINDING_STATUSES), relayed
    # and the fleet rules hold no limit of their own but the age of the last run
    numbers = {
        name: re.findall(r"(?<![\w\[])\d+(?![\w\]])", rule["expr"])
        for name, rule in alerts(FLEET_RULES).items()
    }
    assert {name: found for name, found in numbers.items() if found != ["1"]} == {
        "VenusFleetHealthNotRunning": ["900"],
        "VenusFleetMetricsAbsent": [],
    }


# What both paths page for, under one name: VenusWorker<X> and VenusFleet<X>.
COMMON_ALERTS = {
    "HeartbeatStale",
    "MetricsAbsent",
    "ThreadPaused",
    "ThreadError",
    "ThreadErrorUnattended",
    "StageStuck",
    "SectorNumbersLow",
}


def test_both_rule_files_name_their_common_alerts_alike():
    worker = {name.removeprefix("VenusWorker") for name in alerts(RULES)}
    fleet = {name.removeprefix("VenusFleet") for name in alerts(FLEET_RULES)}
    assert worker & fleet == COMMON_ALERTS
    worker_rules, fleet_rules = alerts(RULES), alerts(FLEET_RULES)
    for name in COMMON_ALERTS:
        severity = worker_rules[f"VenusWorker{name}"]["labels"]["severity"]
        assert fleet_rules[f"VenusFleet{name}"]["labels"]["severity"] == severity, name
