"""Config parsing: defaults, relative paths, and one clear line for every mistake."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from agent_helpers import REPO, SEED_MESSAGE, cli

from worker_agent.config import load_config, parse_duration
from worker_agent.states import Level

MINIMAL = '[[sealing_thread]]\nlocation = "store1"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "worker.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30), ("1m", 60), ("2min", 120), ("1h30m", 5400), ("1h 30m", 5400),
     ("1d", 86400), ("0s", 0), ("1.5s", 1.5)],
)  # fmt: skip
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["30", "", "3x", "s", "1m x", "-1s", "1 hour"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_defaults_and_relative_paths(tmp_path):
    config = load_config(write(tmp_path, MINIMAL))
    thread = config.threads[0]
    assert thread.location == tmp_path / "store1" and thread.plan == "sealer"
    assert (thread.sealing.max_retries, thread.sealing.recover_interval) == (5, 60.0)
    assert (thread.sealing.seal_interval, thread.sealing.miner) == (30.0, 10000)
    assert config.ping_interval == 30.0 and config.processor == "mock"
    assert (config.request_timeout, config.idle_timeout) == (10.0, 600.0)
    assert config.socket == Path("/run/venus-worker/venus-worker.sock")
    assert config.name  # the host name


def test_per_thread_overrides_and_processors(tmp_path):
    config = load_config(
        write(
            tmp_path,
            '[worker]\nname = "w1"\nsocket = "run/a.sock"\nstate_dir = "st"\nping_interval = "5s"\n'
            '[sealing]\nmax_retries = 3\nseal_interval = "1m"\n'
            '[[sealing_thread]]\nlocation = "/srv/a"\nplan = "snapup"\n'
            "sealing.max_retries = 9\n"
            '[[sealing_thread]]\nlocation = "b"\n'
            '[processors]\nkind = "command"\n[processors.command]\ntimeout = "1h"\n'
            'default = ["/bin/true"]\n'
            '[processors.command.stages]\nPC1 = { argv = ["/bin/pc1", "-x"], timeout = "4h" }\n'
            'C2 = ["/bin/c2"]\n[processors.mock]\ndurations = { PC1 = "2s" }\n'
            '[[processors.mock.faults]]\nstage = "C2"\nlevel = "abort"\nthreads = [1]\n',
        )
    )
    first, second = config.threads
    assert (first.plan, first.sealing.max_retries, first.sealing.seal_interval) == ("snapup", 9, 60)
    assert second.sealing.max_retries == 3 and second.location == tmp_path / "b"
    assert config.socket == tmp_path / "run/a.sock" and config.state_dir == tmp_path / "st"
    assert config.command.stages["PC1"].argv == ("/bin/pc1", "-x")
    assert config.command.stages["PC1"].timeout == 4 * 3600
    assert config.command.stages["C2"].timeout == 3600
    assert config.command.default.argv == ("/bin/true",)
    assert config.mock.durations == {"PC1": 2.0}
    assert config.mock.faults[0].level is Level.ABORT
    assert config.mock.faults[0].threads == frozenset({1})


def test_the_embedded_mock_config_is_the_seed_example():
    path = REPO / "worker_agent/assets/venus-worker.mock.toml"
    config = load_config(path)
    assert [t.location for t in config.threads] == [REPO / f"mock-tmp/store{i}" for i in (1, 2, 3)]
    assert config.socket.parent == REPO / "mock-tmp"
    assert config.threads[0].sealing.miner == 10000
    (fault,) = config.mock.faults
    assert (fault.stage, fault.level, fault.message) == ("C2", Level.PERMANENT, SEED_MESSAGE)


BAD_CONFIGS = [
    ("[worker]\nname = 'x'\nsokcet = 'a.sock'\n" + MINIMAL, "worker.sokcet: unknown key"),
    (
        "[sealing]\nrecover_interval = '30'\n" + MINIMAL,
        'sealing.recover_interval: bad duration "30"',
    ),
    ("[worker]\nping_interval = '1 minute'\n" + MINIMAL, "worker.ping_interval: bad duration"),
    ("[worker]\nidle_timeout = '0s'\n" + MINIMAL, "worker.idle_timeout: must be greater than zero"),
    ("[sealing]\nseal_interval = 30\n" + MINIMAL, 'sealing.seal_interval: bad duration "30"'),
    (MINIMAL + "plan = 'niporep'\n", 'sealing_thread[0].plan: unknown plan "niporep"'),
    (MINIMAL + MINIMAL, "sealing_thread[1].location: "),
    (MINIMAL + "[[sealing_thread]]\nplan = 'sealer'\n", "sealing_thread[1].location: missing"),
    (
        MINIMAL + "sealing.max_retries = 'five'\n",
        "sealing_thread[0].sealing.max_retries: expected an integer",
    ),
    (
        MINIMAL + "sealing.max_retry_times = 3\n",
        "sealing_thread[0].sealing.max_retry_times: unknown key",
    ),
    ("[sealing]\nmax_retries = -1\n" + MINIMAL, "sealing.max_retries: must be at least 0"),
    (MINIMAL + "[processors]\nkind = 'gpu'\n", 'processors.kind: unknown processor "gpu"'),
    (
        MINIMAL + "[[processors.mock.faults]]\nstage = 'PC9'\n",
        'processors.mock.faults[0].stage: unknown stage "PC9"',
    ),
    (
        MINIMAL + "[[processors.mock.faults]]\nstage = 'C2'\nlevel = 'fatal'\n",
        'processors.mock.faults[0].level: unknown level "fatal"',
    ),
    (
        MINIMAL + "[processors.command.stages]\nPC1 = 'pc1 --x'\n",
        "processors.command.stages.PC1: expected a non-empty array",
    ),
    ("", "sealing_thread: at least one [[sealing_thread]] is required"),
    ("[worker\nname = 1\n", "TOML syntax error"),
    (
        "[worker]\nsocket = '" + "x" * 120 + ".sock'\n" + MINIMAL,
        "worker.socket: path longer than 107 bytes",
    ),
]


@pytest.mark.parametrize(("text", "expected"), BAD_CONFIGS)
def test_bad_config_is_one_line_naming_file_and_key_exit_2(tmp_path, text, expected):
    path = write(tmp_path, text)
    status, out, err = cli("daemon", "-c", str(path))
    assert status == 2 and out == ""
    assert err.count("\n") == 1, err
    assert err.startswith(f"venus-worker: config error: {path}: ")
    assert expected in err


def test_duplicate_location_names_the_first_user(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    path = write(
        tmp_path, '[[sealing_thread]]\nlocation = "real"\n[[sealing_thread]]\nlocation = "alias"\n'
    )
    status, _, err = cli("daemon", "-c", str(path))
    assert status == 2 and "already used by sealing_thread[0]" in err


def test_toml_error_carries_the_line_number(tmp_path):
    path = write(tmp_path, MINIMAL + "plan = \n")
    status, _, err = cli("worker", "-c", str(path), "list")
    assert status == 2 and "line 3" in err


def test_client_commands_report_config_errors_as_json_too(tmp_path):
    path = write(tmp_path, "[worker]\nbogus = 1\n" + MINIMAL)
    status, out, _ = cli("worker", "-c", str(path), "list", "--json")
    assert status == 2 and '"code": -32098' in out and "worker.bogus: unknown key" in out


def test_missing_config_file_and_missing_agent_address(tmp_path):
    status, _, err = cli("daemon", "-c", str(tmp_path / "nope.toml"))
    assert status == 2 and "nope.toml: cannot read" in err
    status, _, err = cli("worker", "list")
    assert status == 2 and "use -c CONFIG or --socket PATH" in err


def test_the_console_script_exits_2_on_a_bad_config(tmp_path):
    path = write(tmp_path, "[sealing]\nseal_interval = '3x'\n" + MINIMAL)
    result = subprocess.run(
        [sys.executable, "-m", "worker_agent", "daemon", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    expected = (
        'sealing.seal_interval: bad duration "3x" (expected e.g. "30s", "1m", "500ms", "1h30m")'
    )
    assert result.stderr.strip().endswith(expected)
