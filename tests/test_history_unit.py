"""venusctl's pure parts of issue 15: the inventory's miner and sector_numbers, the range
overlap check, health's sector-range-low finding, the history lines (escaped), the
stats rows and their bars."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import report, worker_info

import venusctl
from worker_agent import api


def inventory(text: str) -> venusctl.Inventory:
    return venusctl.parse_inventory(text, Path("/etc/venusctl/inventory.toml"))


HOSTS = """
[defaults]
miner = 1000
[[host]]
name = "a"
address = "10.0.0.1"
sector_numbers = "1-100"
[[host]]
name = "b"
address = "10.0.0.2"
sector_numbers = {{ start = {start}, count = 100 }}
[[host]]
name = "c"
address = "10.0.0.3"
miner = 2000
"""


def test_sector_numbers_and_miner_are_read_from_the_inventory():
    hosts = {host.name: host for host in inventory(HOSTS.format(start=101)).hosts}
    assert (hosts["a"].miner, hosts["a"].sector_numbers) == (1000, (1, 100))
    assert hosts["b"].sector_numbers == (101, 200)
    assert (hosts["c"].miner, hosts["c"].sector_numbers) == (2000, None)
    assert venusctl.ansible_hostvars(hosts["b"])["venus_worker_sealing_sector_numbers"] == (
        "101-200"
    )
    assert venusctl.ansible_hostvars(hosts["c"])["venus_worker_sealing_miner"] == 2000


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('sector_numbers = "9-1"', "9-1: must start at 1 or more and not end before it"),
        ('sector_numbers = "1..9"', 'must be "START-END"'),
        ("miner = 0", "must be the miner's actor number"),
        ('miner = "t01000"', "must be the miner's actor number"),
    ],
)
def test_bad_values_name_the_file_line_and_key(line, message):
    text = f'[[host]]\nname = "a"\naddress = "10.0.0.1"\n{line}\n'
    with pytest.raises(venusctl.InventoryError, match=r"inventory.toml:4: ") as error:
        inventory(text)
    assert message in str(error.value)


def test_a_damocles_host_takes_no_sector_numbers():
    text = '[[host]]\nname = "d"\naddress = "x"\nbackend = "damocles"\nsector_numbers = "1-9"\n'
    with pytest.raises(venusctl.InventoryError, match="damocles-manager: 'sector_numbers'"):
        inventory(text)


def test_overlapping_or_missing_ranges_of_one_miner_are_named():
    assert venusctl.range_overlaps(inventory(HOSTS.format(start=101))) == []
    assert venusctl.range_overlaps(inventory(HOSTS.format(start=100))) == [
        "miner 1000: a (1-100) and b (100-199) overlap: numbers 100-100 could name two sectors"
    ]
    without = HOSTS.format(start=101).replace('sector_numbers = "1-100"\n', "")
    assert venusctl.range_overlaps(inventory(without)) == [
        "miner 1000: a and b may number the same sectors: no sector_numbers on a"
    ]


def ranged(left: int, end: int = 199) -> api.Report:
    numbers = {"miner": 1000, "start": 100, "end": end, "last": end - left, "left": left}
    return report(sector_ranges=[numbers])


@pytest.mark.parametrize(
    ("left", "severity", "said"),
    [
        (100, None, None),
        (99, venusctl.Severity.WARNING, "99 numbers left (low under 100)"),
        (0, venusctl.Severity.CRITICAL, "used up: no new task starts"),
    ],
)
def test_health_finds_a_range_running_low(left, severity, said):
    status = venusctl.HostStatus(ranged(left, end=5000), [worker_info()])
    health = venusctl.judge_host("w1", status, venusctl.Thresholds())
    found = [f for f in health.findings if f.kind == "sector-range-low"]
    if severity is None:
        assert found == []
        return
    (finding,) = found
    assert finding.severity is severity and finding.index is None
    assert finding.message == (
        f"sector range 100-5000 of miner 1000: {said}; give the worker a new [sealing]"
        " sector_numbers"
    )
    assert "sector-range-low" in venusctl.FINDING_STATUSES


def test_an_agent_before_ranges_is_not_judged_on_them():
    status = venusctl.HostStatus(report(), [worker_info()])
    health = venusctl.judge_host("w1", status, venusctl.Thresholds())
    assert [f for f in health.findings if f.kind == "sector-range-low"] == []


def test_history_lines_escape_worker_text_and_name_who_asked():
    entry = api.HistoryEntry(
        time=0.0,
        kind="resume",
        index=1,
        from_state="C1Done",
        to_state="PC1Done",
        requested="PC1Done",
        by=api.Caller(uid=1000, pid=42, actor="eve\x1b[31m@ctl"),
        note="cleared: permanent: a\nb",
    )
    line = venusctl.entry_line(entry)
    assert "\x1b" not in line and "\n" not in line
    assert line == (
        "[resume]  C1Done -> PC1Done  to PC1Done  by eve\\x1b[31m@ctl (uid 1000, pid 42)"
        "  (cleared: permanent: a\\nb)"
    )
    headers, rows = venusctl.history_table([entry])
    assert dict(zip(headers, rows[0], strict=True))["By"] == "eve\x1b[31m@ctl (uid 1000, pid 42)"
    assert "\x1b" not in venusctl.render_table(headers, rows)  # the table escapes every cell


def stats(stage: str, durations: list[float], errors: list[str] = ()) -> api.StageStats:
    return api.stage_stats(stage, durations, errors)


def test_stats_rows_merge_hosts_or_show_each_slowest_first_in_plan_order():
    fast = api.WorkerStats(0.0, None, [0], [stats("PC1", [10.0, 11.0]), stats("C2", [5.0])])
    slow = api.WorkerStats(0.0, None, [0], [stats("C2", [50.0], ["permanent: x"])])
    merged = venusctl.stats_rows([("w1", fast), ("w2", slow)], by_host=False, stage=None)
    assert [(host, row.stage, row.tasks) for host, row in merged] == [
        (None, "PC1", 2),
        (None, "C2", 2),
    ]
    assert merged[1][1].failures == 1 and merged[1][1].max == 50.0
    by_host = venusctl.stats_rows([("w1", fast), ("w2", slow)], by_host=True, stage="C2")
    assert [host for host, _ in by_host] == ["w2", "w1"]  # the slow one first


def test_a_bar_is_p50_solid_then_p90_shaded_scaled_to_the_slowest():
    row = stats("PC1", [float(n) for n in range(1, 11)])  # p50 5, p90 9
    assert venusctl.stage_bar(row, 10.0, 20, ("#", "-")) == "#" * 10 + "-" * 8
    assert venusctl.stage_bar(stats("PC1", [0.001]), 10.0, 20, ("#", "-")) == "#"  # never empty
    assert venusctl.stage_bar(stats("C2", []), 10.0, 20, ("#", "-")) == ""  # no run: no bar


def test_history_entry_count_errors_name_the_count():
    parser = venusctl.build_parser()
    assert parser.parse_args(["history", "w1", "0", "-n", "0"]).entries == 0
    assert parser.parse_args(["history", "w1", "0"]).entries == 100
    for word in ("x", "-1", "1.5"):
        with pytest.raises(venusctl.UsageError, match="invalid count") as refused:
            parser.parse_args(["history", "w1", "0", "-n", word])
        assert "thread index" not in str(refused.value)
