"""venusctl for the humans at the terminal (issue 19), the parts without a host.

1. inventories found like config files are, named fleets, `inventory` saying which;
2. Ansible's host patterns in -l (and the same hosts as Ansible's own view of
   playbooks/inventory.py);
3. completion (the candidates), the man page;
4. --sort, --columns, --no-header, -o csv|tsv, colour;
7. the words of a state move, --force, the moves of a bulk plan.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import venusctl
from venusctl import UsageError

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

INVENTORY = """\
[[host]]
name = "gpu-01"
address = "10.0.0.1"
groups = ["gpu", "rack1"]

[[host]]
name = "gpu-02"
address = "10.0.0.2"
port = 2222
groups = ["gpu", "rack2"]

[[host]]
name = "gpu-03"
address = "10.0.0.3"
groups = ["gpu", "rack2"]

[[host]]
name = "cpu-01"
address = "10.0.0.4"
groups = ["cpu", "rack1"]

[[host]]
name = "spare"
address = "10.0.0.5"
"""


def parse(text: str = INVENTORY) -> venusctl.Inventory:
    return venusctl.parse_inventory(text, Path("inv.toml"))


def write(path: Path, text: str = INVENTORY) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# -- 1. which inventory ------------------------------------------------------------------------


@pytest.fixture
def places(tmp_path, monkeypatch):
    """An empty working folder, a HOME, an XDG folder and a stand-in for /etc/venusctl."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    home = tmp_path / "home"
    system = tmp_path / "etc-venusctl"
    environ = {"HOME": str(home)}
    return work, home, system, environ


def find(environ, system, option=None, fleet=None) -> venusctl.InventorySource:
    return venusctl.find_inventory(option, fleet, environ, system)


def test_the_search_takes_the_first_file_that_exists_and_says_what_it_passed(places):
    work, home, system, environ = places
    with pytest.raises(venusctl.NoInventory) as caught:
        find(environ, system)
    message = str(caught.value)
    assert "none of ./inventory.toml, ~/.config/venusctl/inventory.toml," in message
    assert f"{system}/inventory.toml exists" in message
    assert "-i, --fleet, $VENUSCTL_INVENTORY nor $VENUSCTL_FLEET" in message
    write(system / "inventory.toml")
    source = find(environ, system)
    assert source.path == system / "inventory.toml"
    assert source.why == (
        f"found as {system}/inventory.toml; not found first: ./inventory.toml,"
        " ~/.config/venusctl/inventory.toml"
    )
    write(home / ".config" / "venusctl" / "inventory.toml")
    source = find(environ, system)
    assert source.path == home / ".config/venusctl/inventory.toml"
    assert source.rule == "~/.config/venusctl/inventory.toml"
    # $XDG_CONFIG_HOME replaces ~/.config when it is absolute (a relative one is ignored)
    xdg = work.parent / "xdg"
    write(xdg / "venusctl" / "inventory.toml")
    source = find({**environ, "XDG_CONFIG_HOME": str(xdg)}, system)
    assert (source.path, source.rule) == (
        xdg / "venusctl/inventory.toml",
        "$XDG_CONFIG_HOME/venusctl/inventory.toml",
    )
    assert find({**environ, "XDG_CONFIG_HOME": "xdg"}, system).rule.startswith("~/.config")
    write(work / "inventory.toml")
    source = find(environ, system)
    assert (source.path, source.rule, source.passed) == (
        Path("inventory.toml"),
        "./inventory.toml",
        (),
    )


def test_given_inventories_win_in_their_order(places):
    work, home, system, environ = places
    write(work / "inventory.toml")
    write(home / ".config/venusctl/prod.toml")
    write(system / "lab.toml")
    environ = {**environ, "VENUSCTL_INVENTORY": "/srv/x.toml", "VENUSCTL_FLEET": "lab"}
    assert find(environ, system, option="given.toml").path == Path("given.toml")
    assert find(environ, system, fleet="prod").path == home / ".config/venusctl/prod.toml"
    assert find(environ, system, fleet="prod").why == "given by --fleet prod"
    assert find(environ, system).path == Path("/srv/x.toml")
    del environ["VENUSCTL_INVENTORY"]
    source = find(environ, system)
    assert (source.path, source.why) == (system / "lab.toml", "given by $VENUSCTL_FLEET lab")
    with pytest.raises(UsageError, match="give -i PATH or --fleet NAME, not both"):
        find(environ, system, option="x.toml", fleet="prod")


def test_an_unknown_fleet_lists_the_known_ones_and_the_closest(places):
    _, home, system, environ = places
    write(home / ".config/venusctl/prod.toml")
    write(system / "staging.toml")
    write(system / "prod.toml")  # the user's wins; listed once
    assert venusctl.fleet_names(environ, system) == ["prod", "staging"]
    with pytest.raises(venusctl.UnknownFleet) as caught:
        find(environ, system, fleet="prd")
    assert str(caught.value) == (
        "unknown fleet 'prd' (did you mean prod?): neither ~/.config/venusctl/prd.toml nor"
        f" {system}/prd.toml exists; known fleets: prod, staging"
    )
    with pytest.raises(UsageError, match=r"\$VENUSCTL_FLEET: invalid fleet name '../x'"):
        find({**environ, "VENUSCTL_FLEET": "../x"}, system)


def test_the_inventory_command_says_which_file_it_read_and_why(places):
    work, home, system, environ = places
    write(home / ".config/venusctl/inventory.toml")
    out = io.StringIO()
    env = venusctl.Environment(
        stdout=out, stderr=io.StringIO(), environ=environ, system_config=system
    )
    assert venusctl.main(["inventory"], env) == 0
    first = out.getvalue().splitlines()[0]
    assert first == (
        f"inventory: {home}/.config/venusctl/inventory.toml (found as"
        " ~/.config/venusctl/inventory.toml; not found first: ./inventory.toml)"
    )
    out.truncate(0), out.seek(0)
    assert venusctl.main(["inventory", "--json"], env) == 0
    assert json.loads(out.getvalue())["source"] == {
        "path": f"{home}/.config/venusctl/inventory.toml",
        "rule": "~/.config/venusctl/inventory.toml",
        "passed": ["./inventory.toml"],
    }
    out.truncate(0), out.seek(0)
    write(system / "lab.toml", '[[host]]\nname = "lab-1"\naddress = "10.9.0.1"\n')
    assert venusctl.main(["--fleet", "lab", "list", "--json", "-l", "nope"], env) == 2
    assert "known hosts: lab-1" in json.loads(out.getvalue())["error"]["message"]
    out.truncate(0), out.seek(0)
    assert venusctl.main(["list", "--fleet", "nope", "--json"], env) == 2
    assert json.loads(out.getvalue())["error"]["code"] == "unknown-fleet"


# -- 2. limits as Ansible's host patterns -------------------------------------------------------


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        (["all"], "gpu-01 gpu-02 gpu-03 cpu-01 spare"),
        (["*"], "gpu-01 gpu-02 gpu-03 cpu-01 spare"),
        (["all:!gpu-01"], "gpu-02 gpu-03 cpu-01 spare"),
        (["!gpu-01"], "gpu-02 gpu-03 cpu-01 spare"),  # all but
        (["gpu:!gpu-03"], "gpu-01 gpu-02"),
        (["gpu,!gpu-03"], "gpu-01 gpu-02"),
        (["gpu:&rack2"], "gpu-02 gpu-03"),
        (["gpu:&rack2:!gpu-03"], "gpu-02"),
        (["!gpu-03:gpu:&rack2"], "gpu-02"),  # the order of the terms does not matter
        (["rack1:cpu"], "gpu-01 cpu-01"),
        (["ungrouped"], "spare"),
        (["!gpu"], "cpu-01 spare"),
        (["&rack1"], "gpu-01 cpu-01"),
        (["gpu-0*:!*-02"], "gpu-01 gpu-03"),
        (["~gpu-0[13]"], "gpu-01 gpu-03"),
        (["10.0.0.2:2222"], "gpu-02"),  # address:port stays one term
        (["cpu", "!rack1,spare"], "spare"),  # every -l's terms together
    ],
)
def test_limits_follow_ansibles_host_patterns(limits, expected):
    hosts = venusctl.select_hosts(parse(), limits)
    assert [host.name for host in hosts] == expected.split()


@pytest.mark.parametrize(
    ("limit", "error"),
    [
        ("gpu:", "empty name in the limit 'gpu:'"),
        ("all:!", "empty name in the limit 'all:!'"),
        ("!", "empty name in the limit '!'"),
        ("gpu::cpu", "empty name"),
    ],
)
def test_an_empty_term_is_refused(limit, error):
    with pytest.raises(UsageError, match=error):
        venusctl.select_hosts(parse(), [limit])


def test_a_term_that_matches_nothing_names_the_closest_even_when_excluded():
    with pytest.raises(venusctl.UnknownHost) as caught:
        venusctl.select_hosts(parse(), ["all:!gpu-4"])
    message = str(caught.value)
    assert message.startswith("--limit 'gpu-4' matches no host (did you mean gpu, gpu-01")
    assert message.endswith("groups: cpu, gpu, rack1, rack2")
    # with a comma only commas separate (Ansible's rule): the hint says how to write it
    with pytest.raises(venusctl.UnknownHost, match=r"only commas separate.*'gpu,!gpu-03'"):
        venusctl.select_hosts(parse(), ["gpu:!gpu-03,cpu"])


def test_a_limit_that_leaves_no_host_is_refused_not_empty():
    with pytest.raises(venusctl.EmptySelection, match=r"'gpu:&cpu' leaves no host"):
        venusctl.select_hosts(parse(), ["gpu:&cpu"])
    with pytest.raises(venusctl.EmptySelection):
        venusctl.select_hosts(parse(), ["!all"])


ANSIBLE_PATTERNS = [
    "all",
    "all:!gpu-01",
    "!gpu-01",
    "gpu:!gpu-03",
    "gpu,!gpu-03",
    "gpu:&rack2",
    "gpu:&rack2:!gpu-03",
    "rack1:cpu",
    "ungrouped",
    "!gpu",
    "&rack1",
    "gpu-0*:!*-02",
    "~gpu-0[13]",
]


ANSIBLE_VIEW = """\
import json, sys
from ansible.inventory.manager import InventoryManager
from ansible.parsing.dataloader import DataLoader
manager = InventoryManager(loader=DataLoader(), sources=[sys.argv[1]])
print(json.dumps({p: sorted(h.name for h in manager.get_hosts(p)) for p in sys.argv[2:]}))
"""


@pytest.mark.e2e
def test_ansible_selects_the_same_hosts_through_playbooks_inventory_py(tmp_path):
    inventory = write(tmp_path / "inventory.toml")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "XDG_"))},
        "VENUSCTL_INVENTORY": str(inventory),
        "ANSIBLE_HOME": str(tmp_path / "ah"),
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ah" / "tmp"),
        "LC_ALL": "C.UTF-8",
    }
    done = subprocess.run(
        [sys.executable, "-c", ANSIBLE_VIEW, str(ROOT / "playbooks" / "inventory.py")]
        + ANSIBLE_PATTERNS,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    ansible = json.loads(done.stdout)
    ours = {
        pattern: sorted(host.name for host in venusctl.select_hosts(parse(), [pattern]))
        for pattern in ANSIBLE_PATTERNS
    }
    assert ours == ansible
    assert ours["gpu:&rack2:!gpu-03"] == ["gpu-02"]  # not all empty or all everything


# -- 4. output for people and spreadsheets -----------------------------------------------------

NASTY = 'permanent: bad "quote", comma\nnew line\ttab \x1b[2J\\ back'


def thread(index, **values):
    from helpers import worker_info

    return worker_info(index=index, **values)


def threads():
    return [
        thread(0, job_id="s-t01000-10", job_state="C1Done", state_elapsed=30, last_error=NASTY,
               thread_state={"state": "Paused", "elapsed": 20, "proc": None}),
        thread(1, job_id="s-t01000-9", job_state="PC1Done", state_elapsed=300,
               thread_state={"state": "Running", "elapsed": 3, "proc": "mock"}),
        thread(2, job_id=None, job_state="", state_elapsed=None,
               thread_state={"state": "Idle", "elapsed": None, "proc": None}),
    ]  # fmt: skip


def view(**values) -> venusctl.TableView:
    return venusctl.TableView(**values)


def test_columns_and_sort_keys_are_checked_with_the_valid_ones():
    spec = venusctl.INFO_TABLE
    assert spec.parse_columns("Index,state,LASTERR,error") == ("Index", "State", "LastErr")
    assert spec.parse_sort("elapsed,index") == ("Elapsed", "Index")
    with pytest.raises(ValueError) as caught:
        spec.parse_columns("index,stat")
    assert str(caught.value) == (
        "unknown column 'stat' for info; did you mean state, instate or stage? (valid: index,"
        " loc, sectorid,"
        " paused, pausedelapsed, state, elapsed, plan, stage, threadstate, lasterr)"
    )
    with pytest.raises(ValueError, match="empty column name"):
        spec.parse_columns("index,")
    # on the command line: before any connection, exit 2 (the inventory's host is 10.0.0.1)
    out, err = io.StringIO(), io.StringIO()
    env = venusctl.Environment(stdout=out, stderr=err, environ={})
    assert venusctl.main(["-i", "/nonexistent.toml", "threads", "--sort", "host,elapsd"], env) == 2
    said = err.getvalue()
    assert "argument --sort: unknown sort key 'elapsd' for threads; did you mean elapsed" in said


def test_sort_keeps_the_order_of_equals_and_puts_rows_without_a_value_last():
    rows = threads()
    spec = venusctl.INFO_TABLE
    assert [t.index for t in spec.ordered(rows, ("Elapsed",), False)] == [0, 1, 2]
    assert [t.index for t in spec.ordered(rows, ("Elapsed",), True)] == [1, 0, 2]
    # natural order of sector ids: s-t01000-9 before s-t01000-10
    assert [t.index for t in spec.ordered(rows, ("SectorID",), False)] == [1, 0, 2]
    # task states in their flow order, not the alphabet's (PC1Done comes before C1Done)
    assert [t.index for t in spec.ordered(rows, ("State",), False)] == [1, 0, 2]
    # --reverse turns every key: paused first, then the highest index
    assert [t.index for t in spec.ordered(rows, ("Paused", "Index"), True)] == [0, 2, 1]
    text = venusctl.render_spec(spec, rows, view(columns=("Index", "Elapsed"), sort=("Elapsed",),
                                                 reverse=True))  # fmt: skip
    assert text.splitlines() == ["Index  Elapsed", "1      5m0s", "0      30s", "2      -"]
    assert venusctl.render_spec(spec, rows, view(columns=("Index",), header=False)) == "0\n1\n2"


def test_csv_keeps_worker_text_exact_and_the_csv_module_reads_it_back():
    import csv

    text = venusctl.render_spec(venusctl.INFO_TABLE, threads(), view(output="csv", wide=True))
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == venusctl.INFO_WIDE_HEADERS
    assert rows[1][rows[0].index("LastErr")] == NASTY  # quotes, comma, newline, ESC: exact
    last = dict(zip(rows[0], rows[3], strict=True))
    assert (last["SectorID"], last["State"], last["PausedElapsed"], last["LastErr"]) == ("",) * 4
    assert (last["Index"], last["Paused"], last["ThreadState"]) == ("2", "false", "Idle")
    assert (
        venusctl.render_spec(
            venusctl.INFO_TABLE, threads(), view(output="csv", columns=("Index",), header=False)
        )
        == "0\n1\n2\n"
    )


def test_tsv_escapes_what_would_break_its_lines():
    text = venusctl.render_spec(
        venusctl.INFO_TABLE, threads()[:1], view(output="tsv", columns=("Index", "LastErr"))
    )
    lines = text.split("\n")
    assert lines[:2] == [
        "Index\tLastErr",
        '0\tpermanent: bad "quote", comma\\nnew line\\ttab \x1b[2J\\\\ back',
    ]
    assert lines[2:] == [""]


VISIBLE = __import__("re").compile(r"\x1b\[[0-9;]*m")


def test_colour_marks_paused_and_errors_and_never_breaks_the_fit():
    rows = threads()
    plain = venusctl.render_spec(venusctl.INFO_TABLE, rows, view(wide=True), width=100)
    painted = venusctl.render_spec(
        venusctl.INFO_TABLE, rows, view(wide=True), width=100, color=True
    )
    assert painted != plain and VISIBLE.sub("", painted) == plain
    assert all(len(line) <= 100 for line in plain.splitlines())
    first = painted.splitlines()[1]
    assert "\x1b[33mtrue\x1b[0m" in first  # paused: yellow
    assert "\x1b[31mperman\u2026\x1b[0m" in first  # the error: red, cut inside the colour
    assert "\x1b[2J" not in painted.replace("\\x1b[2J", "")  # the worker's ESC never raw
    entries = [
        {"name": "w1", "dest": "d", "version": None, "release_line": None, "pause_requested": 0,
         "summary": {"Threads": 2, "Empty": 0, "Paused": 1, "Running": 1, "Waiting": 0,
                     "Errors": 1}, "last_ping": 700.0, "expired": True, "error": None},
    ]  # fmt: skip
    painted = venusctl.render_spec(venusctl.LIST_TABLE, entries, view(), color=True)
    assert "\x1b[1m11m40s!\x1b[0m" in painted  # expired LastPing: bold
    assert "\x1b[33m1\x1b[0m" in painted and "\x1b[31m1\x1b[0m" in painted


@pytest.mark.parametrize(
    ("option", "environ", "tty", "coloured"),
    [
        ("auto", {}, True, True),
        ("auto", {}, False, False),  # a pipe or a file
        ("auto", {"NO_COLOR": "1"}, True, False),
        ("auto", {"NO_COLOR": ""}, True, True),  # set but empty: not asked (no-color.org)
        ("auto", {"TERM": "dumb"}, True, False),
        ("always", {"NO_COLOR": "1"}, False, True),  # the command line beats the variable
        ("never", {}, True, False),
    ],
)
def test_colour_on_a_terminal_only_unless_forced(tmp_path, option, environ, tty, coloured):
    path = write(tmp_path / "inventory.toml")
    out = io.StringIO()
    env = venusctl.Environment(
        stdout=out, stderr=io.StringIO(), environ=environ, isatty=lambda stream: tty
    )
    # inventory --columns groups: "gpu,rack1" is no value to colour; a plan table is: use
    # the Context the command would get
    assert venusctl.main(["-i", str(path), "--color", option, "inventory"], env) == 0
    ctx = venusctl.Context(parse(), env, color=option)
    assert ctx.colour is coloured
    table = ctx.table(*venusctl.info_table(threads(), wide=False))
    assert ("\x1b[" in table) is coloured
