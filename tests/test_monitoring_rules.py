"""monitoring/venus-worker.rules.yml: promtool checks it and runs its unit tests.

Beside promtool's verdicts: the stuck limits are venusctl health's defaults,
every alert has a firing and a quiet case in monitoring/tests/, and the rules
name only series the agent exports (or node_exporter's, or the one issue 15
will add).
"""

from __future__ import annotations

import re

import yaml
from agent_helpers import REPO
from promtools import promtool

import venusctl
from worker_agent.metrics import METRICS
from worker_agent.states import PLANS

RULES = REPO / "monitoring" / "venus-worker.rules.yml"
TESTS = sorted((REPO / "monitoring" / "tests").glob("*.yml"))
THRESHOLD = "venus_worker:stage_stuck_threshold_seconds"
# Series the rules may use that the agent does not write today.
NODE_EXPORTER_SERIES = {"node_textfile_mtime_seconds"}
PLANNED_SERIES = {"venus_worker_sector_numbers_left"}  # with sector ranges (issue 15)


def rules() -> list[dict]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_promtool_check_rules():
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_promtool_test_rules():
    assert TESTS, "no promtool unit tests in monitoring/tests/"
    done = promtool("test", "rules", *map(str, TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("SUCCESS") == len(TESTS)


def test_promtool_test_rules_fails_when_a_limit_moves(tmp_path):
    """The unit tests can fail: PC1's limit raised from 12h to 14h breaks them."""
    changed = tmp_path / "monitoring"
    (changed / "tests").mkdir(parents=True)
    text = RULES.read_text()
    assert text.count("vector(43200)  # 12h\n        labels: {stage: PC1}") == 1
    text = text.replace("vector(43200)  # 12h\n        labels: {stage: PC1}", "vector(50400)")
    (changed / RULES.name).write_text(text)
    for test in TESTS:
        (changed / "tests" / test.name).write_text(test.read_text())
    done = promtool("test", "rules", *(str(changed / "tests" / t.name) for t in TESTS))
    assert done.returncode != 0
    assert "VenusWorkerStageStuck" in done.stdout + done.stderr


def test_stuck_limits_are_venusctl_healths_defaults():
    limits = {}
    for rule in rules():
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
    used = set()
    for rule in rules():
        used |= set(re.findall(r"\b(?:venus_worker[a-z_:]*|node_[a-z_]+)\b", rule["expr"]))
    assert used, "no series found in the rules"
    assert used <= known, sorted(used - known)
