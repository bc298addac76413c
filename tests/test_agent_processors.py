"""Processors: the command runner (argv, env, exit status, stderr prefix, timeout), the mock."""

from __future__ import annotations

import json
import sys
import textwrap
import time
from pathlib import Path

import pytest
from agent_helpers import process_alive, wait_until

from worker_agent.config import CommandConfig, CommandStage, Fault, MockConfig
from worker_agent.processors import (
    CommandProcessor,
    Done,
    Failed,
    Interrupted,
    MockProcessor,
    StageContext,
    classify_failure,
)
from worker_agent.states import Event, Level, State, plan_named


def context(tmp_path: Path, state=State.TicketAssigned, plan="sealer", waited=None) -> StageContext:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)

    def wait(seconds):
        if waited is not None:
            waited.append(seconds)
        return False

    return StageContext(
        index=3,
        location=tmp_path,
        data_dir=data,
        plan=plan_named(plan),
        state=state,
        stage=plan_named(plan).stage(state),
        sector_id="s-t010000-7",
        miner=10000,
        number=7,
        wait=wait,
        sleep=wait,
    )


def python_stage(tmp_path: Path, body: str, timeout: float | None = None) -> CommandProcessor:
    script = tmp_path / "stage.py"
    script.write_text(textwrap.dedent(body))
    stage = CommandStage((sys.executable, str(script), "arg; rm -rf /"), timeout)
    return CommandProcessor(CommandConfig(stages={"PC1": stage, "PC2": stage}))


def test_command_gets_argv_without_shell_and_the_venus_environment(tmp_path):
    processor = python_stage(
        tmp_path,
        """
        import json, os, sys
        env = {k: v for k, v in os.environ.items() if k.startswith("VENUS_")}
        json.dump({"argv": sys.argv[1:], "env": env, "cwd": os.getcwd()}, open("seen.json", "w"))
        """,
    )
    assert processor.run(context(tmp_path)) == Done(None)
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert seen["argv"] == ["arg; rm -rf /"]  # one argument, never interpreted by a shell
    assert seen["cwd"] == str(tmp_path)
    token = seen["env"].pop("VENUS_STAGE_TOKEN")  # marks this run's processes (issue 12)
    assert len(token) == 32 and int(token, 16) >= 0
    assert seen["env"] == {
        "VENUS_SECTOR_ID": "s-t010000-7",
        "VENUS_SECTOR_NUMBER": "7",
        "VENUS_MINER": "10000",
        "VENUS_STATE": "TicketAssigned",
        "VENUS_STAGE": "PC1",
        "VENUS_LOCATION": str(tmp_path),
        "VENUS_DATA_DIR": str(tmp_path / "data"),
        "VENUS_PLAN": "sealer",
        "VENUS_THREAD_INDEX": "3",
    }


@pytest.mark.parametrize(
    ("stderr", "status", "expected"),
    [
        ("temporary: gpu busy", 1, Failed(Level.TEMPORARY, "gpu busy")),
        ("noise\nabort: ticket expired\n\n", 3, Failed(Level.ABORT, "ticket expired")),
        ("critical: disk gone", 1, Failed(Level.CRITICAL, "disk gone")),
        ("permanent: bad sector", 2, Failed(Level.PERMANENT, "bad sector")),
        ("oops", 139, Failed(Level.PERMANENT, "stage PC1: command exited with status 139: oops")),
        ("", 1, Failed(Level.PERMANENT, "stage PC1: command exited with status 1")),
    ],
)  # fmt: skip
def test_failures_are_classified_by_the_last_stderr_line(tmp_path, stderr, status, expected):
    processor = python_stage(
        tmp_path,
        f"""
        import sys
        sys.stderr.write({stderr!r})
        sys.exit({status})
        """,
    )
    assert processor.run(context(tmp_path)) == expected


def test_a_prefix_only_counts_on_the_last_line():
    assert classify_failure(1, "temporary: retry me\nthen it broke", "C2").level is Level.PERMANENT
    assert classify_failure(-9, "", "C2").message == "stage C2: command killed by signal 9"


def test_stdout_can_pick_a_branch_of_the_table(tmp_path):
    processor = python_stage(tmp_path, 'print("working..."); print("PC2NeedSyntheticProof")')
    outcome = processor.run(context(tmp_path, state=State.PC1Done))
    assert outcome == Done(Event.PC2NeedSyntheticProof)
    processor = python_stage(tmp_path, 'print("Finish")')  # not an event of PC1Done
    assert processor.run(context(tmp_path, state=State.PC1Done)) == Done(None)


def test_a_stage_past_its_timeout_is_killed(tmp_path):
    processor = python_stage(tmp_path, "import time; time.sleep(30)", timeout=0.3)
    outcome = processor.run(context(tmp_path))
    assert outcome == Failed(
        Level.PERMANENT, "stage PC1: command timed out after 0.3s and was killed"
    )


def test_a_timeout_kills_the_whole_process_group(tmp_path):
    # The stage starts a grandchild (as a wrapper script would) that keeps the pipes open.
    processor = python_stage(
        tmp_path,
        """
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open("grandchild.pid", "w").write(str(child.pid))
        time.sleep(60)
        """,
        timeout=1.0,
    )
    started = time.monotonic()
    outcome = processor.run(context(tmp_path))
    assert time.monotonic() - started < 10  # not stuck on the grandchild's open pipes
    assert outcome.level is Level.PERMANENT and "timed out after 1s" in outcome.message
    grandchild = int((tmp_path / "grandchild.pid").read_text())
    wait_until(lambda: not process_alive(grandchild), 5, what=f"grandchild {grandchild} gone")


def test_missing_binary_and_unconfigured_stage(tmp_path):
    processor = CommandProcessor(
        CommandConfig(stages={"PC1": CommandStage((str(tmp_path / "nope"),))})
    )
    outcome = processor.run(context(tmp_path))
    assert outcome.level is Level.PERMANENT and "cannot run" in outcome.message
    assert processor.run(context(tmp_path, state=State.C1Done)) == Done(None)  # no C2 command


def test_mock_durations_faults_and_interruption(tmp_path):
    waited = []
    fault = Fault("PC1", Level.TEMPORARY, "flaky", times=2, threads=frozenset({3}))
    mock = MockProcessor(MockConfig(duration=0.5, durations={"PC1": 2.0}, faults=(fault,)))
    ctx = context(tmp_path, waited=waited)
    assert [mock.run(ctx) for _ in range(3)] == [
        Failed(Level.TEMPORARY, "flaky"),
        Failed(Level.TEMPORARY, "flaky"),
        Done(),
    ]
    assert waited == [2.0, 2.0, 2.0]
    assert (tmp_path / "data/s-t010000-7.PC1").exists()
    other = context(tmp_path, state=State.PC1Done, waited=waited)
    assert mock.run(other) == Done() and waited[-1] == 0.5
    interrupted = StageContext(**{**ctx.__dict__, "sleep": lambda s: True})
    assert mock.run(interrupted) == Interrupted()


def test_mock_jitter_stays_within_its_bounds(tmp_path):
    waited = []
    mock = MockProcessor(MockConfig(duration=1.0, jitter=0.5))
    ctx = context(tmp_path, waited=waited)
    for _ in range(200):
        mock.run(ctx)
    assert 0.5 <= min(waited) < 0.7 and 1.3 < max(waited) <= 1.5
