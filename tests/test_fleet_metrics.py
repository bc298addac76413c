"""The fleet textfile of `venusctl health --prometheus` (venusctl.prometheus_text).

Pure tests of the rendering, then a real `venusctl health` run against the
test fleet (conftest.py's sshd hosts with their seeded faults: w1's thread in
error, dead's stopped agent, down's stopped sshd, calm), its textfile judged
by the field's tools: promtool's lint, prometheus_client's parser, and a real
node_exporter serving it beside an agent's own textfile. GOLDEN is the
contract: a test fails when a series disappears, appears, or changes labels.
"""

from __future__ import annotations

import math
import time

import pytest
from helpers import report, worker_info
from promtools import check_metrics, node_exporter, parse, value

import venusctl
from venusctl import ConnectionRefused, HostStatus, NoAnswer, Severity, Thresholds, judge_fleet
from worker_agent.api import STATE_NAMES
from worker_agent.metrics import Snapshot, render

# Every series of the fleet textfile: name -> label names. Change it only with
# the README's Prometheus table and monitoring/venus-fleet.rules.yml.
GOLDEN = {
    "venus_fleet_health_status": {"status"},
    "venus_fleet_health_last_run_timestamp_seconds": set(),
    "venus_fleet_host_up": {"host"},
    "venus_fleet_last_heartbeat_timestamp_seconds": {"host"},
    "venus_fleet_threads": {"host", "state"},
    "venus_fleet_job_threads": {"host", "job_state"},
    "venus_fleet_threads_paused": {"host"},
    "venus_fleet_threads_errors": {"host"},
    "venus_fleet_threads_empty": {"host"},
    "venus_fleet_health_findings": {"host", "kind", "status"},
    "venus_fleet_health_finding": {"host", "index", "kind", "status"},
}
STATUSES = {"OK", "WARNING", "CRITICAL", "UNKNOWN"}
THREAD_STATES = {"Idle", "Running", "Waiting", "Paused"}
# Every (kind, status) health can find: each is on every host, 0 or more.
FINDINGS = {
    ("no-answer", "UNKNOWN"),
    ("host-unreachable", "CRITICAL"),
    ("agent-not-running", "CRITICAL"),
    ("heartbeat-expired", "CRITICAL"),
    ("internal-error", "UNKNOWN"),
    ("thread-error", "WARNING"),
    ("thread-error", "CRITICAL"),
    ("thread-stuck", "WARNING"),
    ("thread-paused", "WARNING"),
    ("sector-range-low", "WARNING"),
    ("sector-range-low", "CRITICAL"),
}
NOW = 1764282000.25


def assert_golden(samples: dict, hosts: set[str]) -> None:
    """Exactly GOLDEN's names and labels; every enumerated series there for every host."""
    names: dict[str, set[frozenset]] = {}
    for name, labels in samples:
        names.setdefault(name, set()).add(frozenset(key for key, _ in labels))
    # The one family that may be empty: a finding's series lasts as long as it holds.
    assert set(names) | {"venus_fleet_health_finding"} == set(GOLDEN)
    for name, label_sets in names.items():
        assert label_sets == {frozenset(GOLDEN[name])}, name

    def label_values(name: str, *keys: str) -> set[tuple]:
        return {tuple(dict(ls)[k] for k in keys) for n, ls in samples if n == name}

    assert label_values("venus_fleet_health_status", "status") == {(s,) for s in STATUSES}
    for name, labels in GOLDEN.items():
        if labels == {"host"}:
            assert label_values(name, "host") == {(host,) for host in hosts}, name
    assert label_values("venus_fleet_threads", "host", "state") == {
        (host, state) for host in hosts for state in THREAD_STATES
    }
    assert label_values("venus_fleet_job_threads", "host", "job_state") >= {
        (host, state) for host in hosts for state in STATE_NAMES
    }
    assert label_values("venus_fleet_health_findings", "host", "kind", "status") == {
        (host, kind, status) for host in hosts for kind, status in FINDINGS
    }
    statuses = [v for (n, _), v in samples.items() if n == "venus_fleet_health_status"]
    assert sorted(statuses) == [0, 0, 0, 1]  # one status at a time


# ---------------------------------------------------------------- pure


def thread(index=0, *, state="PC1Done", stage="PC2", ts="Running", elapsed=10, **extra):
    return worker_info(
        index=index,
        location=f"/srv/store{index}",
        job_id=f"s-t010000-{index + 1}" if state else None,
        job_state=state,
        job_stage=stage,
        thread_state={"state": ts, "elapsed": elapsed, "proc": None},
        state_elapsed=elapsed if state else None,
        **extra,
    )


def up(*threads, age=2.5):
    return HostStatus(report=report(age), threads=list(threads), via="stream")


def fleet_text(outcomes, **thresholds) -> str:
    return venusctl.prometheus_text(judge_fleet(outcomes, Thresholds(**thresholds), NOW))


def test_the_rendering_is_clean_for_promtool_and_holds_the_golden_series():
    text = fleet_text(
        {
            "w1": up(thread(0, state="C1Done", ts="Paused", last_error="permanent: x")),
            "w2": up(thread(0), thread(1, state="", stage=None, ts="Idle", elapsed=None)),
            "down": ConnectionRefused("connection refused"),
        }
    )
    assert check_metrics(text) == ""
    types, samples = parse(text)
    assert set(types.values()) == {"gauge"}
    assert_golden(samples, {"w1", "w2", "down"})


@pytest.mark.parametrize("expected", list(Severity))
def test_the_status_is_a_label_with_every_status_present(expected):
    outcomes = {
        Severity.OK: {"w1": up(thread(0))},
        Severity.WARNING: {"w1": up(thread(0, ts="Paused", last_error="permanent: x"))},
        Severity.CRITICAL: {"down": ConnectionRefused("refused")},
        Severity.UNKNOWN: {"slow": NoAnswer("no answer before the deadline of 1m0s")},
    }[expected]
    deadline = 60.0 if expected is Severity.UNKNOWN else None
    report_ = judge_fleet(outcomes, Thresholds(), NOW, deadline)
    assert report_.status is expected
    _, samples = parse(venusctl.prometheus_text(report_))
    assert {
        dict(labels)["status"]: v
        for (name, labels), v in samples.items()
        if name == "venus_fleet_health_status"
    } == {status.name: int(status is expected) for status in Severity}


def test_a_host_that_did_not_answer_has_every_series_of_one_that_did_with_zeros():
    _, samples = parse(
        fleet_text({"w1": up(thread(0)), "down": ConnectionRefused("connection refused")})
    )

    def series(host: str) -> dict:
        return {
            (name, labels - {("host", host)}): v
            for (name, labels), v in samples.items()
            if ("host", host) in labels and name != "venus_fleet_health_finding"
        }

    answered, silent = series("w1"), series("down")
    assert set(answered) == set(silent)
    findings = {key for key in silent if key[0] == "venus_fleet_health_findings"}
    assert all(v == 0 for key, v in silent.items() if key not in findings)
    unreachable = frozenset({("kind", "host-unreachable"), ("status", "CRITICAL")})
    unreachable = ("venus_fleet_health_findings", unreachable)
    assert silent[unreachable] == 1 and sum(silent[key] for key in findings) == 1


def test_the_heartbeat_is_a_timestamp_on_the_control_hosts_clock():
    no_report = HostStatus(report=None, threads=[thread(0)], via="stream")
    _, samples = parse(fleet_text({"w1": up(thread(0), age=90.5), "d1": no_report}))
    heartbeat = value(samples, "venus_fleet_last_heartbeat_timestamp_seconds", host="w1")
    assert math.isclose(heartbeat, NOW - 90.5)  # time() - x at the run: the age health judged
    assert value(samples, "venus_fleet_last_heartbeat_timestamp_seconds", host="d1") == 0
    assert value(samples, "venus_fleet_health_last_run_timestamp_seconds") == NOW


def test_job_threads_count_every_thread_once_empty_ones_as_empty():
    threads = [
        thread(0, state="C1Done"),
        thread(1, state="C1Done"),
        thread(2, state="PCSubmitted", stage="WaitPCLanded"),
        thread(3, state="", stage=None, ts="Idle", elapsed=None),
    ]
    _, samples = parse(fleet_text({"w1": up(*threads)}))
    counts = {
        dict(labels)["job_state"]: v
        for (name, labels), v in samples.items()
        if name == "venus_fleet_job_threads"
    }
    assert {state: n for state, n in counts.items() if n} == {
        "C1Done": 2,
        "PCSubmitted": 1,
        "Empty": 1,
    }
    assert set(counts) == set(STATE_NAMES)
    assert value(samples, "venus_fleet_threads_empty", host="w1") == 1


def test_every_finding_is_one_series_with_its_status_and_counted_by_kind():
    error = thread(0, state="C1Done", ts="Paused", elapsed=7 * 3600, last_error="permanent: x")
    paused = thread(1, ts="Paused", elapsed=2 * 3600)
    stuck = thread(2, state="PCSubmitted", stage="WaitPCLanded", ts="Waiting", elapsed=7 * 3600)
    _, samples = parse(fleet_text({"w1": up(error, paused, stuck)}))
    one = {
        tuple(sorted(dict(labels).items()))
        for (name, labels), v in samples.items()
        if name == "venus_fleet_health_finding" and v == 1
    }
    assert one == {
        (("host", "w1"), ("index", "0"), ("kind", "thread-error"), ("status", "CRITICAL")),
        (("host", "w1"), ("index", "1"), ("kind", "thread-paused"), ("status", "WARNING")),
        (("host", "w1"), ("index", "2"), ("kind", "thread-stuck"), ("status", "WARNING")),
    }
    counted = {
        (dict(labels)["kind"], dict(labels)["status"]): v
        for (name, labels), v in samples.items()
        if name == "venus_fleet_health_findings" and v
    }
    assert counted == {
        ("thread-error", "CRITICAL"): 1,
        ("thread-paused", "WARNING"): 1,
        ("thread-stuck", "WARNING"): 1,
    }


def test_every_kind_of_finding_has_its_zeros():
    # A kind health learns to find is counted with 0 too, once it is listed here.
    assert set(venusctl.FINDING_STATUSES) == set(venusctl._FINDING_PHRASES)
    listed = {(k, s.name) for k, statuses in venusctl.FINDING_STATUSES.items() for s in statuses}
    assert listed == FINDINGS


# ---------------------------------------------------------------- a real run


FAULTY = ("w1", "dead", "down", "calm")


@pytest.fixture
def fleet_textfile(tmp_path, ssh_fleet, capsys):
    """`venusctl health --prometheus` over the faulty fleet: (textfile, status, run started)."""
    inventory = ssh_fleet.inventory(tmp_path, *(ssh_fleet.host_table(name) for name in FAULTY))
    textfile = tmp_path / "textfile" / "venus-fleet.prom"
    textfile.parent.mkdir()
    started = time.time()
    status = venusctl.main(["-i", str(inventory), "health", "--prometheus", str(textfile)])
    capsys.readouterr()
    return textfile, status, started


@pytest.mark.e2e
@pytest.mark.usefixtures("isolated_home")
def test_a_real_health_run_writes_what_promtool_accepts_with_the_golden_series(fleet_textfile):
    textfile, status, started = fleet_textfile
    assert status == Severity.CRITICAL
    text = textfile.read_text()
    assert check_metrics(text) == ""
    types, samples = parse(text)
    assert types == dict.fromkeys(GOLDEN, "gauge")
    assert_golden(samples, set(FAULTY))
    assert value(samples, "venus_fleet_health_status", status="CRITICAL") == 1
    assert started <= value(samples, "venus_fleet_health_last_run_timestamp_seconds") <= time.time()
    assert [value(samples, "venus_fleet_host_up", host=h) for h in FAULTY] == [1, 0, 0, 1]
    assert value(samples, "venus_fleet_threads_errors", host="w1") == 1
    assert value(samples, "venus_fleet_health_finding", host="w1", kind="thread-error") == 1
    down = {"host": "down", "kind": "host-unreachable", "status": "CRITICAL"}
    assert value(samples, "venus_fleet_health_findings", **down) == 1


@pytest.mark.e2e
@pytest.mark.usefixtures("isolated_home")
def test_node_exporter_serves_the_fleet_textfile_beside_an_agents(fleet_textfile, tmp_path):
    """Both textfiles in one folder, every sample of each served as written.

    node_exporter (1.5) drops the samples of a name another file gave another
    HELP (and logs "has help ... but should have ..."): distinct prefixes,
    venus_fleet_ and venus_worker_, keep a control host that is also a worker whole.
    """
    textfile, _, _ = fleet_textfile
    agent = Snapshot("w1", "venus-worker.prom", time.time(), 30.0, ("sealer",), threads=[])
    worker_file = textfile.parent / "venus-worker.prom"
    worker_file.write_text(render(agent))
    with node_exporter(textfile.parent, tmp_path / "node_exporter.log") as scrape:
        _, served = parse(scrape())
    assert value(served, "node_textfile_scrape_error") == 0
    for path, prefix in ((textfile, "venus_fleet_"), (worker_file, "venus_worker_")):
        _, written = parse(path.read_text())
        assert {k: v for k, v in served.items() if k[0].startswith(prefix)} == written, prefix
    assert "has help" not in (tmp_path / "node_exporter.log").read_text()


@pytest.mark.parametrize("where", ["option", "inventory"])
def test_a_textfile_node_exporter_would_not_read_is_refused_before_any_host(
    tmp_path, capsys, where
):
    health_table = '\n[health]\nprometheus = "venus.txt"\n' if where == "inventory" else ""
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(
        '[[host]]\nname = "local"\ntransport = "local"\n'
        f'config = "{tmp_path / "none.toml"}"\nsocket = "{tmp_path / "none.sock"}"\n' + health_table
    )
    argv = ["-i", str(inventory), "health"]
    argv += ["--prometheus", str(tmp_path / "venus.txt")] if where == "option" else []
    assert venusctl.main(argv) == Severity.UNKNOWN
    out = capsys.readouterr().out
    assert out == (
        f"VENUS UNKNOWN - prometheus file {tmp_path / 'venus.txt'}: must be named *.prom"
        " (node_exporter's textfile collector reads only those)\n"
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["inventory.toml"]
