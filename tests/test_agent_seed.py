"""The seed's example end to end through the real `venus-worker` command.

The embedded mock config is copied next to a private mock-tmp (so a running
demo cannot collide with the test); everything else is the shipped file.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from agent_helpers import REPO, SEED_MESSAGE, short_tmp, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ASSET = REPO / "worker_agent/assets/venus-worker.mock.toml"
LINE = re.compile(
    r'^#(?P<index>\d): "(?P<location>[^"]+)"; sector_id=Some\((?P<sector>s-t010000-\d+)\), '
    r"paused=true, paused_elapsed=Some\(\d+s\), state=C1Done, "
    r'last_err=Some\("permanent: (?P<error>.*)"\)$'
)


def venus_worker() -> list[str]:
    script = Path(sys.executable).parent / "venus-worker"
    return [str(script)] if script.exists() else [sys.executable, "-m", "worker_agent"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*venus_worker(), *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def seed_config():
    with short_tmp() as folder:
        (folder / "assets").mkdir()
        config = folder / "assets/venus-worker.mock.toml"
        text = ASSET.read_text()
        assert text.count("../../mock-tmp/") == 5  # socket, state_dir, three stores
        config.write_text(text.replace("../../mock-tmp/", f"{folder}/mock-tmp/"))
        yield folder, config


def test_three_threads_pause_at_c1done_with_the_seed_error(seed_config):
    folder, config = seed_config
    daemon = subprocess.Popen(
        [*venus_worker(), "daemon", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        started = time.monotonic()

        def three_paused():
            result = run("worker", "-c", str(config), "list")
            lines = result.stdout.splitlines()
            return lines if len(lines) == 3 and all(LINE.match(x) for x in lines) else None

        lines = wait_until(three_paused, 20, interval=0.2, what="3 threads paused at C1Done")
        assert time.monotonic() - started < 15  # "a few seconds"
        matches = [LINE.match(line) for line in lines]
        assert [m["index"] for m in matches] == ["0", "1", "2"]
        assert [m["location"] for m in matches] == [
            f"{folder}/mock-tmp/store{i}" for i in (1, 2, 3)
        ]
        assert sorted(m["sector"] for m in matches) == [f"s-t010000-{n}" for n in (1, 2, 3)]
        assert {m["error"] for m in matches} == {SEED_MESSAGE}

        # pause / resume as the seed documents them
        assert run("worker", "-c", str(config), "pause", "--index", "0").returncode == 0
        refused = run("worker", "-c", str(config), "resume", "--index", "0", "--state", "Bogus")
        assert refused.returncode == 1 and "valid states: Empty, Allocated" in refused.stderr
        resumed = run("worker", "-c", str(config), "resume", "--index", "0", "--state", "Aborted")
        assert resumed.returncode == 0 and resumed.stdout == "#0 worker resume done=true\n"

        def new_sector_paused_again():
            infos = json.loads(run("worker", "-c", str(config), "list", "--json").stdout)
            first = infos[0]
            return first if first["job_id"] == "s-t010000-4" and first["last_error"] else None

        first = wait_until(new_sector_paused_again, 20, interval=0.2, what="sector 4 at C1Done")
        assert first["job_state"] == "C1Done" and first["thread_state"]["state"] == "Paused"
        report = json.loads(run("worker", "-c", str(config), "report", "--json").stdout)
        assert report["name"] == "mock-worker" and report["summary"]["Threads"] == 3
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(20) == 0, daemon.stderr.read()
    assert not (folder / "mock-tmp/venus-worker.sock").exists()
    gone = run("worker", "-c", str(config), "list")
    assert gone.returncode == 3
    assert (
        gone.stderr == f"venus-worker: agent not running at {folder}/mock-tmp/venus-worker.sock\n"
    )


def test_python_dash_m_and_help_work():
    result = subprocess.run(
        [sys.executable, "-m", "worker_agent", "worker", "--help"],
        capture_output=True, text=True, timeout=30, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0 and "list" in result.stdout and "resume" in result.stdout
    assert "$VENUS_WORKER_CONFIG" in result.stdout and "3 agent not running" in result.stdout
    resume = subprocess.run(
        [sys.executable, "-m", "worker_agent", "worker", "resume", "--help"],
        capture_output=True, text=True, timeout=30, cwd=REPO,
    )  # fmt: skip
    help_text = " ".join(resume.stdout.split())  # argparse wraps to the terminal width
    assert "the #N of `list`" in help_text and "bypassing the transition table" in help_text
    assert "not paused is an error, code 1001" in help_text
    assert shutil.which("venus-worker") or (Path(sys.executable).parent / "venus-worker").exists()
