"""The producers' real JSON against the golden shapes (tests/wire.py) and api.py.

One real daemon on a real socket, the real CLI: WorkerList, WorkerReport,
report.json, `worker status --json` (daemon up and down), and the error
documents. A field added, dropped or renamed by accident on either side
fails here; api.from_json must read every one of them back unchanged.
"""

from __future__ import annotations

import json

import pytest
import wire
from agent_helpers import cli_json, one_response, post, running_agent, seed_fault, write_config

from worker_agent import api

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wire")
    config = write_config(folder, faults=seed_fault() + "threads = [0]\n")
    with running_agent(config) as running:
        running.wait_for(lambda infos: infos[0]["thread_state"]["state"] == "Paused")
        yield running


def test_worker_list_is_worker_info(agent):
    infos = agent.infos()
    assert {info["thread_state"]["state"] for info in infos} >= {"Paused"}
    for info in infos:
        wire.assert_shape(info, wire.WORKER_INFO)
        assert api.WorkerInfo.from_json(info).to_json() == info


def test_the_heartbeat_file_and_worker_report_are_the_report(agent):
    on_disk = json.loads((agent.state_dir / "report.json").read_text())
    wire.assert_shape(on_disk, wire.REPORT_FILE)
    assert api.Report.from_json(on_disk).to_json() == on_disk
    answered = agent.call("WorkerReport")
    wire.assert_shape(answered, wire.REPORT)
    status, reported = cli_json("worker", "--state-dir", str(agent.state_dir), "report")
    assert status == api.AgentExit.OK
    wire.assert_shape(reported, wire.REPORT)


def test_status_json_is_the_agent_status(agent):
    status, document = cli_json("worker", "-c", str(agent.config), "status")
    assert status == api.AgentExit.OK and document["error"] is None
    wire.assert_shape(document, wire.STATUS)
    assert api.AgentStatus.from_json(document).to_json() == document


def test_errors_are_code_and_message(agent):
    status, document = cli_json("worker", "--socket", str(agent.socket), "pause", "--index", "9")
    assert status == api.AgentExit.REFUSED
    wire.assert_shape(document, wire.CLI_ERROR)
    assert document["error"]["code"] == api.RpcCode.INVALID_PARAMS
    request = {"jsonrpc": "2.0", "id": 7, "method": api.Method.RESUME.value, "params": [1]}
    _, body = one_response(agent.socket, post(json.dumps(request).encode()))
    reply = json.loads(body)
    wire.assert_shape(reply, wire.RPC_ERROR_REPLY)
    assert reply["error"]["code"] == api.RpcCode.NOT_PAUSED


def test_status_json_of_a_stopped_daemon(tmp_path):
    config = write_config(tmp_path, threads=1)
    with running_agent(config) as running:
        running.terminate()
    status, document = cli_json("worker", "-c", str(config), "status")
    assert status == api.AgentExit.NOT_RUNNING
    wire.assert_shape(document, wire.STATUS)
    parsed = api.AgentStatus.from_json(document)
    assert parsed.threads is None and parsed.report is not None
    assert parsed.error.code == api.RpcCode.AGENT_NOT_RUNNING
