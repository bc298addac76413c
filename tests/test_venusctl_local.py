"""venusctl with transport = "local": a real agent daemon on this machine, no SSH.

Also runs `python venusctl.py` from a checkout-like working directory, the
way scripts/demo.sh does, to check ./inventory.toml is the default and that
the local path never imports paramiko.
"""

from __future__ import annotations

import io
import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import AGENT_COMMAND, fleet_agent, run, wait_for_paused_thread_0, write_inventory
from helpers import Agent

import venusctl

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def local_agent(tmp_path_factory):
    agent = fleet_agent("local", tmp_path_factory.mktemp("local-agent")).start()
    wait_for_paused_thread_0(agent)
    yield agent
    agent.stop()


def local_inventory(directory: Path, agent: Agent, **overrides) -> Path:
    table = {
        "name": "local",
        "transport": "local",
        "config": str(agent.config),
        "socket": str(agent.socket),
        # this venv's CLI, whatever PATH the tests run with (it reads a stopped agent's report)
        "agent": AGENT_COMMAND,
        **overrides,
    }
    return write_inventory(directory / "inventory.toml", [table])


def test_list_and_info_through_the_local_socket(tmp_path, capsys, local_agent):
    path = local_inventory(tmp_path, local_agent)
    status, out, err = run(capsys, path, "list", "--json")
    assert status == 0, err
    (entry,) = json.loads(out)["hosts"]
    assert entry["via"] == "local" and entry["dest"] == f"unix:{local_agent.socket}"
    assert entry["summary"]["Threads"] == 2 and entry["error"] is None
    status, out, err = run(capsys, path, "info", "local")
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0].split()[0:2] == ["Index", "Loc"]
    assert re.match(rf"0\s+{local_agent.folder}/store1\s+s-t010000-\d+\s+true\s+", lines[1])


def test_pause_and_resume_through_the_local_socket(tmp_path, capsys, local_agent):
    path = local_inventory(tmp_path, local_agent)
    status, out, _ = run(capsys, path, "pause", "local", "1")
    assert status == 0
    assert re.fullmatch(rf"local #1: (paused|{re.escape(venusctl.PAUSE_QUEUED)})\n", out), out
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status, out, _ = run(capsys, path, "info", "local", "--json")
        if json.loads(out)["threads"][1]["thread_state"]["state"] == "Paused":
            break
        time.sleep(0.1)
    else:
        pytest.fail("thread #1 never paused")
    status, out, err = run(capsys, path, "resume", "local", "1", "--json")
    assert status == 0, err
    assert json.loads(out)["via"] == "local" and json.loads(out)["ok"] is True


def test_stopped_local_agent_keeps_its_last_heartbeat(tmp_path, capsys, tmp_path_factory):
    agent = fleet_agent("gone", tmp_path_factory.mktemp("gone-agent")).start()
    agent.stop()
    time.sleep(0.3)
    path = local_inventory(tmp_path, agent)
    status, out, err = run(capsys, path, "list", "--expiration", "100ms")
    assert status == 1
    header, row = out.splitlines()
    assert header.split()[-1] == "Error"
    cells = re.split(r"\s{2,}", row)
    assert cells[2] == "2"  # Threads, from the report file
    assert cells[-2].endswith("!") and cells[-1] == "agent not running"
    status, out, err = run(capsys, path, "info", "local")
    assert status == 1 and "local: agent not running (last heartbeat" in err
    status, out, err = run(capsys, path, "pause", "local", "0")
    assert status == 1 and err.startswith("local #0: pause failed: agent not running at ")


def test_local_agent_without_socket_or_cli_is_not_running(tmp_path, capsys):
    table_path = write_inventory(
        tmp_path / "inventory.toml",
        [
            {
                "name": "local",
                "transport": "local",
                "agent": str(tmp_path / "no-such-venus-worker"),
                "config": str(tmp_path / "none.toml"),
                "socket": str(tmp_path / "none.sock"),
            }
        ],
    )
    status, out, err = run(capsys, table_path, "list", "--json")
    assert status == 1
    error = json.loads(out)["hosts"][0]["error"]
    assert error == {
        "kind": "agent-not-running",
        "message": f"agent not running at {tmp_path / 'none.sock'}",
    }


def test_python_venusctl_py_reads_inventory_toml_of_the_working_directory(tmp_path, local_agent):
    local_inventory(tmp_path, local_agent)
    # -X importtime lists every module imported on stderr: the local path needs no SSH.
    done = subprocess.run(
        [sys.executable, "-X", "importtime", str(REPO / "venusctl.py"), "list"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[1].startswith("local  unix:")
    assert "| tabulate" in done.stderr  # the list of imports is really there (its table)
    assert "paramiko" not in done.stderr and "fabric" not in done.stderr
    # tabulate 0.10 imports importlib.metadata for its version: 25-45 ms a table (setup.cfg)
    assert "importlib.metadata" not in done.stderr


def test_a_thread_index_completes_from_the_host_itself(tmp_path, local_agent):
    """Issue 19 point 3: TAB after `pause HOST ` asks HOST for its threads (within 3 s) and
    offers each index with its task state; a host that does not answer offers nothing."""
    path = local_inventory(tmp_path, local_agent)

    def offered(line: str, inventory: Path = path) -> list[str]:
        out = io.StringIO()
        env = venusctl.Environment(stdout=out, environ={"VENUSCTL_INVENTORY": str(inventory)})
        words, current, _ = venusctl.split_line(line)
        assert venusctl.main(["__complete", "fish", "words", "--", *words, current], env) == 0
        return out.getvalue().splitlines()[1:]

    first = offered("venusctl pause local ")
    assert [entry.split("\t")[0] for entry in first] == ["0", "1"]
    assert first[0].startswith("0\tC1Done Paused")
    assert [entry.split("\t")[0] for entry in offered("venusctl history local 1")] == ["1"]
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never says a word
        (tmp_path / "known_hosts").write_text("")
        table = {"name": "silent", "address": "127.0.0.1", "port": silent.getsockname()[1]}
        defaults = {"ssh_config": "none", "known_hosts": str(tmp_path / "known_hosts")}
        mute = write_inventory(tmp_path / "silent.toml", [table], **defaults)
        started = time.monotonic()
        assert offered("venusctl pause silent ", mute) == []
        assert time.monotonic() - started < venusctl.COMPLETE_TIMEOUT + 1
