"""Pure tests of the JSON-RPC layer, the store's files and the CLI's formatting."""

from __future__ import annotations

import json
import os

import pytest

from worker_agent import store as store_module
from worker_agent.cli import format_list_line, humantime, rust_debug
from worker_agent.protocol import RawJSON, RpcError, handle_body, parse_reply
from worker_agent.store import SCHEMA, StoreError, TaskStore, ThreadRecord, write_json_atomic


def boom(params):
    raise ZeroDivisionError("division by zero")


METHODS = {
    "echo": lambda params: params,
    "boom": boom,
    "raw": lambda params: RawJSON('[{"a":1},"x"]'),
}


def call(payload) -> dict | list | None:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    reply = handle_body(body, METHODS)
    return None if reply is None else json.loads(reply)


def test_result_error_and_internal_error():
    assert call({"jsonrpc": "2.0", "id": 5, "method": "echo", "params": [1]}) == {
        "jsonrpc": "2.0",
        "id": 5,
        "result": [1],
    }
    reply = call({"jsonrpc": "2.0", "id": "x", "method": "boom", "params": []})
    assert reply["id"] == "x" and reply["error"]["code"] == -32603
    assert reply["error"]["message"] == "internal error: ZeroDivisionError: division by zero"


def test_request_validation():
    assert call(b"\xff\xfe")["error"]["code"] == -32700
    assert call({"jsonrpc": "2.0", "id": {}, "method": "echo"})["error"]["code"] == -32600
    assert call({"jsonrpc": "2.0", "id": 1, "method": 7})["error"]["code"] == -32600
    assert call({"jsonrpc": "2.0", "id": 1, "method": "echo", "params": 3})["error"]["code"] == (
        -32602
    )
    assert call({"jsonrpc": "2.0", "id": 1, "method": "echo"})["result"] == []  # params optional


def test_notifications_get_no_reply_even_when_they_fail():
    assert call({"jsonrpc": "2.0", "method": "boom"}) is None
    assert call([{"jsonrpc": "2.0", "method": "echo"}]) is None
    mixed = call([{"jsonrpc": "2.0", "method": "echo"}, 5])
    assert [r["error"]["code"] for r in mixed] == [-32600]


def test_parse_reply_raises_the_error():
    with pytest.raises(RpcError) as caught:
        parse_reply(
            b'{"jsonrpc":"2.0","id":1,"error":{"code":1001,"message":"worker #0 is not paused"}}'
        )
    assert (caught.value.code, caught.value.message) == (1001, "worker #0 is not paused")
    assert parse_reply(b'{"jsonrpc":"2.0","id":1,"result":true}') is True
    with pytest.raises(RpcError):
        parse_reply(b"<html>")


def test_humantime_and_rust_debug():
    assert [humantime(s) for s in (0, 17, 822, 3600, 90061, 2 * 86400)] == [
        "0s", "17s", "13m 42s", "1h", "1day 1h 1m 1s", "2days",
    ]  # fmt: skip
    assert rust_debug('say "hi"\\\n') == '"say \\"hi\\"\\\\\\n"'


def test_list_line_formats():
    paused = {
        "index": 0, "location": "/srv/store1", "job_id": "s-t010000-2", "job_state": "C1Done",
        "thread_state": {"state": "Paused", "elapsed": 17, "proc": None},
        "last_error": "permanent: no params",
    }  # fmt: skip
    assert format_list_line(paused) == (
        '#0: "/srv/store1"; sector_id=Some(s-t010000-2), paused=true, '
        'paused_elapsed=Some(17s), state=C1Done, last_err=Some("permanent: no params")'
    )
    idle = dict(paused, index=1, job_id=None, job_state="", last_error=None,
                thread_state={"state": "Idle", "elapsed": None, "proc": None})  # fmt: skip
    assert format_list_line(idle) == (
        '#1: "/srv/store1"; sector_id=None, paused=false, paused_elapsed=None, '
        "state=Empty, last_err=None"
    )


def test_atomic_write_leaves_only_the_file(tmp_path):
    path = tmp_path / "x.json"
    write_json_atomic(path, {"a": 1})
    write_json_atomic(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2} and os.listdir(tmp_path) == ["x.json"]


def test_records_refuse_other_schemas_and_garbage(tmp_path):
    store = TaskStore(tmp_path / "loc")
    store.prepare()
    assert store.load() == ThreadRecord()
    store.path.write_text(json.dumps({"schema": SCHEMA + 1, "paused": False, "task": None}))
    with pytest.raises(StoreError, match="schema 2, this agent reads schema 1"):
        store.load()
    store.path.write_text("{torn")
    with pytest.raises(StoreError, match="not valid JSON"):
        store.load()
    (store.meta_dir / "task.json.tmp-1-2").write_text("half")
    store.prepare()
    assert not (store.meta_dir / "task.json.tmp-1-2").exists()


def test_pre_encoded_results_are_spliced_into_the_reply():
    assert call({"jsonrpc": "2.0", "id": 3, "method": "raw"}) == {
        "jsonrpc": "2.0",
        "id": 3,
        "result": [{"a": 1}, "x"],
    }
    batch = call(
        [
            {"jsonrpc": "2.0", "id": 1, "method": "raw"},
            {"jsonrpc": "2.0", "id": 2, "method": "echo"},
        ]
    )
    assert batch == [
        {"jsonrpc": "2.0", "id": 1, "result": [{"a": 1}, "x"]},
        {"jsonrpc": "2.0", "id": 2, "result": []},
    ]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"paused": "false"}, 'field paused: expected true or false, got a string ("false")'),
        ({"paused_at": "yesterday"}, "field paused_at: expected a number or null, got a string"),
        ({"pause_requested": 1}, "field pause_requested: expected true or false, got an integer"),
        ({"last_error": 7}, "field last_error: expected a string or null, got an integer (7)"),
        ({"last_numbers": {"10000": -1}}, "field last_numbers: expected an object of non-neg"),
        ({"task": {"plan": "sealer", "state": "PC9", "miner": 1, "entered_at": 1.0}},
         'field task.state: expected a state name, got a string ("PC9")'),
        ({"task": {"plan": "snapup", "state": "PC1Done", "miner": 1, "entered_at": 1.0}},
         'field task.state: expected a state of plan snapup, got a string ("PC1Done")'),
        ({"task": {"plan": "sealer", "state": "Empty", "miner": True, "entered_at": 1.0}},
         "field task.miner: expected an integer of at least 1, got a boolean (true)"),
        ({"task": {"plan": "sealer", "state": "Empty", "miner": 1}},
         "field task.entered_at: missing"),
        ({"stage_process": {"pgid": "12"}}, "field stage_process.pgid: expected an integer"),
    ],
)  # fmt: skip
def test_every_record_field_is_type_checked_and_named(tmp_path, change, problem):
    store = TaskStore(tmp_path / "loc")
    store.prepare()
    record = {"schema": SCHEMA, "paused": False, "paused_at": None, "last_error": None,
              "task": None}  # fmt: skip
    store.path.write_text(json.dumps({**record, **change}))
    with pytest.raises(StoreError) as error:
        store.load()
    assert str(error.value).startswith(f"{store.path}: {problem}")


def test_an_atomic_write_never_opens_a_file_planted_under_its_temp_name(tmp_path, monkeypatch):
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    names = iter(["aaaa", "bbbb"])
    monkeypatch.setattr(store_module.secrets, "token_hex", lambda n: next(names))
    (tmp_path / f"x.json.tmp-{os.getpid()}-aaaa").symlink_to(victim)  # guessed and planted
    write_json_atomic(tmp_path / "x.json", {"a": 1})
    assert victim.read_text() == "keep me"
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 1}


def test_json_nested_up_to_32_levels_is_read_and_deeper_is_refused():
    at_limit = "[" * 30 + '{"jsonrpc": "2.0", "id": 1, "method": "echo", "params": []}' + "]" * 30
    reply = call(at_limit.encode())  # 30 arrays, the request object, its params: 32 levels
    not_an_object = {"code": -32600, "message": "invalid request: not an object"}
    assert reply == [{"jsonrpc": "2.0", "id": None, "error": not_an_object}]
    for body in ("[" * 33 + "]" * 33, "[" * 100_000):
        reply = call(body.encode())
        assert reply["error"] == {
            "code": -32700,
            "message": "parse error: JSON nested deeper than 32 levels",
        }
