"""Pure parts of the damocles backend: inventory, the WorkerInfo shapes, resume states.

The end-to-end tests (real sshd, the stand-in worker) are in
test_venusctl_damocles_e2e.py.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import venusctl
from venusctl import AgentRefused, InventoryError, UnreadableReply, normalize_worker_info
from worker_agent.api import summarize

C2_ERROR = "permanent: No cached parameters found for ..."

# Captured shapes, as reference §4 documents them.
CURRENT_PAUSED = {
    "location": "/mnt/nvme1/store",
    "plan": "sealer",
    "job_id": "s-t01000-12",
    "index": 0,
    "thread_state": {"state": "Paused", "elapsed": 17},
    "job_state": "C1Done",
    "job_stage": "C2",
    "last_error": C2_ERROR,
}
CURRENT_RUNNING = {
    "location": "/mnt/nvme2/store",
    "plan": "snapup",
    "job_id": "s-t01000-13",
    "index": 1,
    "thread_state": {"state": "Running", "elapsed": 100, "proc": "pc1-0"},
    "job_state": "SnapPieceAdded",
    "job_stage": "SnapEncode",
    "last_error": None,
}
CURRENT_IDLE = {
    "location": "-",
    "plan": "wdpost",
    "job_id": None,
    "index": 2,
    "thread_state": {"state": "Idle"},
    "job_state": "",
    "job_stage": None,
    "last_error": None,
}
V2022_PAUSED = {
    "location": "/mnt/nvme1/store",
    "sector_id": "s-t010000-2",
    "index": 0,
    "paused": True,
    "paused_elapsed": 17,
    "state": "C1Done",
    "last_error": C2_ERROR,
}
V2022_WORKING = {
    "location": "/mnt/nvme2/store",
    "sector_id": "s-t010000-3",
    "index": 1,
    "paused": False,
    "paused_elapsed": None,
    "state": "PC1Done",
    "last_error": None,
}


def parse(text: str) -> venusctl.Inventory:
    return venusctl.parse_inventory(text, Path("/etc/venusctl/inventory.toml"))


def inventory_error(text: str) -> str:
    with pytest.raises(InventoryError) as caught:
        parse(text)
    message = str(caught.value)
    assert "\n" not in message
    return message


# -- inventory -----------------------------------------------------------------------------------


def test_damocles_host_gets_the_default_rpc_address_or_its_own():
    inventory = parse(
        "[defaults]\nbackend = 'damocles'\n"
        "[[host]]\nname = 'a'\naddress = '10.0.0.1'\n"
        "[[host]]\nname = 'b'\naddress = '10.0.0.2'\nrpc = 'localhost:1789'\n"
        "[[host]]\nname = 'c'\naddress = '10.0.0.3'\nrpc = '[::1]:17890'\n"
        "[[host]]\nname = 'd'\naddress = '10.0.0.4'\nbackend = 'venus'\n"
    )
    a, b, c, d = inventory.hosts
    assert (a.backend, a.rpc, a.rpc_address) == (
        "damocles",
        "127.0.0.1:17890",
        ("127.0.0.1", 17890),
    )
    assert b.rpc_address == ("localhost", 1789)
    assert c.rpc_address == ("::1", 17890)
    assert d.backend == "venus"
    assert a.transport == "auto" and a.dest == "10.0.0.1:22"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[[host]]\nname = 'a'\naddress = 'x'\nbackend = 'damocles'\ntransport = 'local'\n",
            "inventory.toml:5: host[0] (a): transport 'local' cannot reach a damocles backend"
            " (its RPC port is reached through the SSH connection);"
            ' use transport = "auto" or "stream"',
        ),
        (
            "[defaults]\ntransport = 'exec'\n[[host]]\nname = 'z'\naddress = 'y'\n"
            "[[host]]\nname = 'a'\naddress = 'x'\nbackend = 'damocles'\n",
            "inventory.toml:2: host[1] (a): transport 'exec' cannot reach a damocles backend"
            " (nothing of venusctl's is installed there to exec)",
        ),
        (
            "[[host]]\nname = 'a'\naddress = 'x'\nbackend = 'damocles'\nrpc = '127.0.0.1'\n",
            "inventory.toml:5: rpc: must be host:port, e.g. '127.0.0.1:17890', got '127.0.0.1'",
        ),
        (
            "[defaults]\nrpc = '127.0.0.1:0'\n",
            "inventory.toml:2: rpc: port must be from 1 to 65535, got '127.0.0.1:0'",
        ),
        ("[defaults]\nrpc = '127.0.0.1:70000'\n", "rpc: port must be from 1 to 65535"),
        ("[defaults]\nrpc = 'a b:1'\n", "rpc: must be host:port"),
        ("[defaults]\nrpc = 17890\n", "rpc: must be a non-empty string"),
        (
            "[[host]]\nname = 'a'\naddress = 'x'\nrpc = '127.0.0.1:17890'\n",
            "inventory.toml:4: host[0] (a): 'rpc' is only used with backend = \"damocles\"",
        ),
    ],
)
def test_bad_damocles_settings_are_one_line(text, expected):
    assert expected in inventory_error(text)


def test_inventory_shows_the_rpc_and_ansible_leaves_damocles_hosts_out():
    inventory = parse(
        "[[host]]\nname = 'ours'\naddress = '10.0.0.1'\n"
        "[[host]]\nname = 'orig'\naddress = '10.0.0.2'\nbackend = 'damocles'\n"
    )
    _, rows = venusctl.inventory_table(inventory)
    assert [row[3] for row in rows] == ["auto", "auto -> damocles 127.0.0.1:17890"]
    # The playbooks install and drive our agent: never on a damocles host.
    document = venusctl.ansible_inventory(inventory)
    assert document["ungrouped"] == {"hosts": ["ours"]}
    assert list(document["_meta"]["hostvars"]) == ["ours"]


# -- the two WorkerInfo shapes -----------------------------------------------------------------


def test_current_shape_gains_only_the_keys_the_original_leaves_out():
    assert normalize_worker_info(CURRENT_PAUSED).to_json() == {
        "index": 0,
        "location": "/mnt/nvme1/store",
        "plan": "sealer",
        "job_id": "s-t01000-12",
        "job_state": "C1Done",
        "job_stage": "C2",
        "thread_state": {"state": "Paused", "elapsed": 17, "proc": None},
        "state_elapsed": None,
        "last_error": C2_ERROR,
        "pause_requested": False,
    }
    running = normalize_worker_info(CURRENT_RUNNING).to_json()
    assert running["thread_state"] == {"state": "Running", "elapsed": 100, "proc": "pc1-0"}
    idle = normalize_worker_info(CURRENT_IDLE).to_json()
    assert idle["thread_state"] == {"state": "Idle", "elapsed": None, "proc": None}
    assert (idle["job_id"], idle["job_state"], idle["location"]) == (None, "", "-")


def test_2022_shape_maps_onto_the_same_keys():
    assert normalize_worker_info(V2022_PAUSED).to_json() == {
        "index": 0,
        "location": "/mnt/nvme1/store",
        "plan": None,
        "job_id": "s-t010000-2",
        "job_state": "C1Done",
        "job_stage": None,
        "thread_state": {"state": "Paused", "elapsed": 17, "proc": None},
        "state_elapsed": None,
        "last_error": C2_ERROR,
        "pause_requested": False,
    }
    # Not paused: the 2022 API does not say running or idle.
    working = normalize_worker_info(V2022_WORKING).to_json()
    assert working["thread_state"] == {"state": None, "elapsed": None, "proc": None}
    assert working["job_id"] == "s-t010000-3" and working["job_state"] == "PC1Done"


@pytest.mark.parametrize(
    "garbage",
    [
        None,
        [],
        "thread",
        {"index": "0", "paused": True},
        {"index": True, "paused": True},
        {"index": 0},
        {"index": 0, "paused": "yes"},
        {"index": 0, "thread_state": "Paused"},
    ],
)
def test_anything_else_is_an_unreadable_reply(garbage):
    with pytest.raises(UnreadableReply, match="unreadable reply: thread"):
        normalize_worker_info(garbage)


def test_both_shapes_give_the_same_tables_and_summary():
    current = [normalize_worker_info(CURRENT_PAUSED), normalize_worker_info(CURRENT_IDLE)]
    old = [normalize_worker_info(V2022_PAUSED), normalize_worker_info(V2022_WORKING)]
    _, rows = venusctl.info_table(current, wide=True)
    assert rows[0] == [
        "0",
        "/mnt/nvme1/store",
        "s-t01000-12",
        "true",
        "17s",
        "C1Done",
        "sealer",
        "C2",
        "Paused(17s)",
        C2_ERROR,
    ]
    _, rows = venusctl.info_table(old, wide=True)
    assert rows[0][:6] == ["0", "/mnt/nvme1/store", "s-t010000-2", "true", "17s", "C1Done"]
    assert rows[1][3:9] == ["false", "-", "PC1Done", "-", "-", "-"]
    assert summarize(current).to_json() == {
        "Threads": 2,
        "Empty": 1,
        "Paused": 1,
        "Running": 0,
        "Waiting": 0,
        "Errors": 1,
    }
    # Unknown thread states: Running and Waiting are not counted as 0.
    assert summarize(old).to_json() == {
        "Threads": 2,
        "Empty": 0,
        "Paused": 1,
        "Running": None,
        "Waiting": None,
        "Errors": 1,
    }


# -- resume states -------------------------------------------------------------------------------


def test_resume_states_come_from_the_agents_plans():
    from worker_agent.states import PLANS

    thread = normalize_worker_info(CURRENT_RUNNING)
    plan, states = venusctl.resume_states(thread)
    assert plan == "snapup"
    assert states == tuple(state.value for state in PLANS["snapup"].states)
    # 2022: no plan reported; a sealer, unless the state is another plan's only
    assert venusctl.resume_states(normalize_worker_info(V2022_PAUSED))[0] == "sealer"
    snap = dict(V2022_PAUSED, state="SnapEncoded")
    assert venusctl.resume_states(normalize_worker_info(snap))[0] == "snapup"
    assert venusctl.resume_states(normalize_worker_info(CURRENT_IDLE)) == (
        "wdpost",
        ("Empty", "Allocated", "Generated", "Finished", "Aborted"),
    )


def test_check_resume_state_refuses_like_the_agent():
    thread = normalize_worker_info(CURRENT_PAUSED)
    venusctl.check_resume_state(thread, "TreeDBuilt")
    venusctl.check_resume_state(thread, "Aborted")
    with pytest.raises(AgentRefused) as caught:
        venusctl.check_resume_state(thread, "SnapEncoded")
    assert caught.value.code == -32602
    assert str(caught.value).startswith(
        'invalid state "SnapEncoded" for plan sealer; valid states: Empty, Allocated, '
    )
    with pytest.raises(AgentRefused, match="does not know the states of plan 'future'"):
        venusctl.check_resume_state(dataclasses.replace(thread, plan="future"), "Empty")
