"""Stage logs (issue 19 point 5): each stage run's stdout and stderr tail, kept in the store,
bounded, served by VenusWorker.WorkerStageLog and `venus-worker worker logs`."""

from __future__ import annotations

import json
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from agent_helpers import cli, cli_json, running_agent, short_tmp, wait_until, write_config
from test_agent_processors import context

from worker_agent import stagelog
from worker_agent.config import CommandConfig, CommandStage, Fault, MockConfig
from worker_agent.processors import CommandProcessor, Failed, MockProcessor
from worker_agent.stagelog import StageLog, read_stage_log
from worker_agent.states import Level


def begin(location: Path, stage: str = "PC1", **values) -> StageLog:
    fields = dict(index=0, stage=stage, state="TicketAssigned", plan="sealer",
                  sector_id="s-t01000-5", processor="command", argv=["pc1", "--x"])  # fmt: skip
    fields.update(values)
    return StageLog.begin(location, **fields)


def test_a_run_keeps_its_lines_in_order_with_their_stream_and_how_it_ended(tmp_path):
    log = begin(tmp_path)
    log.feed("stdout", b"loading para")
    log.feed("stderr", b"warning: slow disk\n")
    log.feed("stdout", b"meters\r\nbad \x1b[2J \xff bytes\n")
    log.feed("stderr", b"permanent: no params")  # no newline: flushed at the end
    log.end("permanent: no params", exit_status=1)
    found = read_stage_log(tmp_path, {"lines": None})
    (run,) = found["runs"]
    assert (run["run"], run["stage"], run["state"], run["sector_id"]) == (
        1,
        "PC1",
        "TicketAssigned",
        "s-t01000-5",
    )
    assert (run["exit_status"], run["outcome"], run["argv"]) == (
        1,
        "permanent: no params",
        ["pc1", "--x"],
    )
    assert run["ended"] >= run["started"] > 0
    assert [(line["n"], line["s"], line["text"]) for line in run["lines"]] == [
        (0, "stderr", "warning: slow disk"),
        (1, "stdout", "loading parameters"),
        (2, "stdout", "bad \x1b[2J \ufffd bytes"),  # exact, but valid text
        (3, "stderr", "permanent: no params"),
    ]
    assert (run["first_line"], run["lines_total"]) == (0, 4)
    assert found["kept_runs"] == stagelog.KEEP_RUNS


def test_a_flood_keeps_the_last_part_within_the_bound(tmp_path, monkeypatch):
    monkeypatch.setattr(stagelog, "MAX_RUN_BYTES", 64 * 1024)
    log = begin(tmp_path)
    line = b"x" * 100 + b"\n"
    for number in range(5000):  # ~500 KiB printed
        log.feed("stdout", b"%05d " % number + line)
    log.feed("stderr", b"y" * (stagelog.MAX_LINE + 10) + b"\n")  # one line too long: cut
    log.end("done")
    folder = stagelog.stage_log_dir(tmp_path) / "00000001"
    on_disk = sum(path.stat().st_size for path in folder.glob("out*.jsonl"))
    assert 32 * 1024 <= on_disk <= 64 * 1024
    (run,) = read_stage_log(tmp_path, {"lines": None})["runs"]
    numbers = [entry["n"] for entry in run["lines"]]
    assert numbers == list(range(numbers[0], 5001))  # whole lines, none missing at the end
    assert run["first_line"] == numbers[0] > 0 and run["dropped"] > 0
    assert run["lines"][-2]["text"].startswith("04999 ")
    assert run["lines"][-1]["cut"] is True and len(run["lines"][-1]["text"]) == stagelog.MAX_LINE
    (last,) = read_stage_log(tmp_path, {"lines": 2})["runs"]
    assert [entry["n"] for entry in last["lines"]] == [4999, 5000]


def test_only_the_last_runs_are_kept_and_a_query_picks_stage_runs_and_lines(tmp_path):
    for number in range(stagelog.KEEP_RUNS + 3):
        log = begin(tmp_path, stage="PC1" if number % 2 else "PC2")
        for line in range(5):
            log.feed("stdout", f"run {number + 1} line {line}\n".encode())
        log.end("done")
    runs = sorted(path.name for path in stagelog.stage_log_dir(tmp_path).iterdir())
    assert runs == [f"{n:08d}" for n in range(4, 12)]  # the last KEEP_RUNS
    newest = read_stage_log(tmp_path)["runs"]
    assert [run["run"] for run in newest] == [11]
    assert [run["run"] for run in read_stage_log(tmp_path, {"stage": "PC1"})["runs"]] == [10]
    every = read_stage_log(tmp_path, {"runs": None, "stage": "PC1", "lines": 1})["runs"]
    assert [(run["run"], [line["text"] for line in run["lines"]]) for run in every] == [
        (4, ["run 4 line 4"]),
        (6, ["run 6 line 4"]),
        (8, ["run 8 line 4"]),
        (10, ["run 10 line 4"]),
    ]
    # a follower's cursor: what came after line 2 of run 10, and the runs after it
    after = read_stage_log(tmp_path, {"after": {"run": 10, "line": 2}, "lines": None})["runs"]
    assert [(run["run"], [line["n"] for line in run["lines"]]) for run in after] == [
        (10, [3, 4]),
        (11, [0, 1, 2, 3, 4]),
    ]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ([], "query must be an object"),
        ({"lines": -1}, "lines must be 0 or more"),
        ({"runs": 0}, "runs must be 1 or more"),
        ({"runs": True}, "runs must be an integer or null"),
        ({"stage": 3}, "stage must be a string or null"),
        ({"after": {"run": 1}}, "after must be"),
        ({"tail": 3}, "unknown query key 'tail'"),
    ],
)
def test_a_bad_query_is_refused_naming_the_key(tmp_path, query, message):
    with pytest.raises(stagelog.QueryError, match=message):
        read_stage_log(tmp_path, query)


def test_a_store_that_cannot_be_written_runs_the_stage_without_a_log(tmp_path, caplog):
    (tmp_path / "meta").write_text("not a folder")
    log = begin(tmp_path)
    log.feed("stdout", b"still runs\n")
    log.end("done")
    assert "runs without a stage log" in caplog.text
    assert read_stage_log(tmp_path / "elsewhere")["runs"] == []


def test_a_command_stage_logs_what_it_printed_while_it_runs(tmp_path):
    script = tmp_path / "stage.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys, time
            print("loading parameters", flush=True)
            print("checking cache", file=sys.stderr, flush=True)
            time.sleep(0.5)
            print("permanent: No cached parameters found", file=sys.stderr)
            sys.exit(1)
            """
        )
    )
    stage = CommandStage((sys.executable, str(script)), None)
    processor = CommandProcessor(CommandConfig(stages={"PC1": stage}))
    outcomes = []
    runner = threading.Thread(target=lambda: outcomes.append(processor.run(context(tmp_path))))
    runner.start()
    # while it runs (it sleeps 0.5 s before its last line), its first lines are there
    wait_until(lambda: len(_lines(tmp_path)) >= 2, 5, 0.02, "lines while it runs")
    seen_during = [_lines(tmp_path), runner.is_alive()]
    runner.join(10)
    assert outcomes == [Failed(Level.PERMANENT, "No cached parameters found")]
    (run,) = read_stage_log(tmp_path)["runs"]
    assert [(line["s"], line["text"]) for line in run["lines"]] == [
        ("stdout", "loading parameters"),
        ("stderr", "checking cache"),
        ("stderr", "permanent: No cached parameters found"),
    ]
    assert (run["exit_status"], run["outcome"], run["processor"]) == (
        1,
        "permanent: No cached parameters found",
        "command",
    )
    assert run["argv"] == [sys.executable, str(script)]
    assert seen_during == [["loading parameters", "checking cache"], True]


def _lines(location: Path) -> list[str]:
    runs = read_stage_log(location)["runs"]
    return [line["text"] for line in runs[-1]["lines"]] if runs else []


def test_the_mock_logs_the_runs_it_fails_only(tmp_path):
    fault = Fault(stage="PC1", level=Level.PERMANENT, message="disk gone", threads=None)
    processor = MockProcessor(MockConfig(duration=0, faults=(fault,)))
    processor.run(context(tmp_path))
    (run,) = read_stage_log(tmp_path)["runs"]
    assert (run["processor"], run["outcome"]) == ("mock", "permanent: disk gone")
    assert [line["text"] for line in run["lines"]] == ["mock PC1: ran 0s", "permanent: disk gone"]
    processor = MockProcessor(MockConfig(duration=0))
    processor.run(context(tmp_path))
    assert len(read_stage_log(tmp_path, {"runs": None})["runs"]) == 1


@pytest.mark.e2e
def test_the_daemon_serves_the_logs_and_the_cli_reads_them_even_when_it_is_down():
    with short_tmp() as folder:
        script = folder / "pc1.py"
        script.write_text(
            "import sys\nprint('pc1 out', flush=True)\n"
            "print('permanent: bad \\x1b[2J ticket', file=sys.stderr)\nsys.exit(1)\n"
        )
        processors = (
            '[processors]\nkind = "command"\n[processors.command.stages]\n'
            f"PC1 = {json.dumps([sys.executable, str(script)])}\n"
        )
        config = write_config(folder, threads=1, processors=processors)
        with running_agent(config) as agent:
            wait_until(
                lambda: agent.infos()[0]["thread_state"]["state"] == "Paused", 15, 0.05, "paused"
            )
            status, document = cli_json("worker", "-c", str(config), "logs", "--index", "0")
            assert status == 0
            (run,) = document["runs"]
            assert (document["index"], run["stage"], run["state"]) == (0, "PC1", "TicketAssigned")
            assert [line["text"] for line in run["lines"]] == [
                "pc1 out",
                "permanent: bad \x1b[2J ticket",
            ]
            status, text, _ = cli("worker", "-c", str(config), "logs", "--index", "0")
            assert status == 0 and text.splitlines()[1:] == [
                "stdout: pc1 out",
                "stderr: permanent: bad \\x1b[2J ticket",  # a terminal never gets the ESC
            ]
            assert text.startswith("--- #0 run 1: stage PC1 (TicketAssigned) s-t010000-1:")
            status, refused = cli_json(
                "worker", "-c", str(config), "logs", "--index", "0", "--lines", "-3"
            )
            assert status == 1 and "lines must be 0 or more" in refused["error"]["message"]
            status, refused = cli_json("worker", "-c", str(config), "logs", "--index", "5")
            assert status == 1 and refused["error"]["message"] == "worker #5 not found"
        status, document = cli_json("worker", "-c", str(config), "logs", "--index", "0")
        assert status == 0 and document["runs"][0]["lines"][0]["text"] == "pc1 out"


def test_what_the_service_answers_is_the_typed_contract(tmp_path):
    from worker_agent import api

    log = begin(tmp_path)
    log.feed("stderr", b"permanent: x\n")
    document = {"index": 0, "location": str(tmp_path), **read_stage_log(tmp_path)}
    running = api.StageLog.from_json(document)  # while it runs: ended, outcome null
    assert running.runs[0].ended is None and running.runs[0].lines[0].text == "permanent: x"
    log.end("permanent: x", 1)
    document = {"index": 0, "location": str(tmp_path), **read_stage_log(tmp_path)}
    typed = api.StageLog.from_json(document)
    assert typed.to_json() == document  # every key known, nothing dropped
    assert typed.runs[0].exit_status == 1
