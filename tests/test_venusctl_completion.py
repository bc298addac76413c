"""Shell completion and the man page (issue 19 point 3), both made from the parser.

The completion scripts are loaded by the real shells: bash and zsh interactive on a
pseudo-terminal (a TAB after `venusctl pa` and after a host's first letters), fish through
its own `complete -C`; all three syntax-checked by the shell itself. The man page is
rendered by man(1) and shipped in the wheel.
"""

from __future__ import annotations

import io
import os
import pty
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import venusctl

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

INVENTORY = """\
[[host]]
name = "gpu-01"
address = "10.0.0.1"
groups = ["gpu"]

[[host]]
name = "gpu-02"
address = "10.0.0.2"
groups = ["gpu", "rack2"]

[[host]]
name = "cpu-01"
address = "10.0.0.3"
"""


@pytest.fixture
def inventory(tmp_path) -> Path:
    path = tmp_path / "inventory.toml"
    path.write_text(INVENTORY)
    return path


def candidates(inventory: Path, line: str, shell: str = "fish") -> list[str]:
    """What `venusctl __complete` offers for `line` (the cursor at its end)."""
    out = io.StringIO()
    env = venusctl.Environment(stdout=out, environ={"VENUSCTL_INVENTORY": str(inventory)})
    words, current, _ = venusctl.split_line(line)
    assert venusctl.main(["__complete", shell, "words", "--", *words, current], env) == 0
    return out.getvalue().splitlines()


def values(inventory: Path, line: str) -> list[str]:
    return [entry.split("\t")[0] for entry in candidates(inventory, line)[1:]]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("venusctl pa", ["pause"]),
        ("venusctl j", ["journal"]),
        ("venusctl info g", ["gpu-01", "gpu-02"]),
        ("venusctl -i x.toml --fleet f info c", []),  # that fleet does not exist: nothing
        ("venusctl list -l gpu:!g", ["gpu:!gpu", "gpu:!gpu-01", "gpu:!gpu-02"]),
        ("venusctl list -l 'all,&r", ["all,&rack2"]),
        ("venusctl threads --state C1Done,PC2", ["C1Done,PC2Done"]),
        ("venusctl threads --stage PC", ["PC1", "PC2"]),
        ("venusctl threads --plan sn", ["snapup"]),
        ("venusctl resume gpu-01 0 Fin", ["Finished"]),
        ("venusctl threads --columns host,sta", ["host,stage", "host,state"]),
        ("venusctl list --sort=er", ["--sort=errors", "--sort=error"]),
        ("venusctl info gpu-01 -o ", ["table", "wide", "csv", "tsv", "json"]),
        ("venusctl --color n", ["never"]),
        ("venusctl completion ", ["bash", "zsh", "fish"]),
        ("venusctl list --no-h", ["--no-header"]),
        ("venusctl sector 1000:2 -l gpu-0", ["gpu-01", "gpu-02"]),
        ("venusctl history gpu-01 0 --limit ", []),  # a count, not a host pattern
        ("venusctl stats --st", ["--state", "--stage"]),
    ],
)
def test_candidates_come_from_the_parser_and_the_inventory(inventory, line, expected):
    assert sorted(values(inventory, line)) == sorted(expected)


def test_descriptions_and_the_file_directive(inventory):
    listed = candidates(inventory, "venusctl ")
    assert listed[0] == "-"
    assert "logs\twhat a thread's last stage runs printed (stdout and stderr)" in listed
    assert "__complete" not in "".join(listed)  # hidden
    assert candidates(inventory, "venusctl info ")[1:] == [
        "gpu-01\t10.0.0.1:22",
        "gpu-02\t10.0.0.2:22",
        "cpu-01\t10.0.0.3:22",
    ]
    assert candidates(inventory, "venusctl -i ")[0] == "files"
    assert "gpu\tgroup of 2 hosts" in candidates(inventory, "venusctl list -l g")


def test_bash_gets_only_what_follows_its_word_breaks(inventory):
    out = io.StringIO()
    env = venusctl.Environment(stdout=out, environ={"VENUSCTL_INVENTORY": str(inventory)})
    line = "venusctl list -l all:!gpu-0"
    argv = ["__complete", "bash", "line", "--breaks", " \t\n\"'><=;|&(:", "--", line]
    assert venusctl.main(argv, env) == 0
    assert out.getvalue().splitlines() == ["-", "!gpu-01", "!gpu-02"]


def test_a_bad_line_offers_nothing_and_says_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out, err = io.StringIO(), io.StringIO()
    env = venusctl.Environment(
        stdout=out, stderr=err, environ={"HOME": str(tmp_path)}, system_config=tmp_path / "etc"
    )
    assert venusctl.main(["__complete", "fish", "words", "--", "venusctl", "info", ""], env) == 0
    assert (out.getvalue(), err.getvalue()) == ("-\n", "")  # no inventory anywhere: no hosts


def test_the_scripts_parse_in_their_shells():
    for shell in ("bash", "zsh", "fish"):
        script = venusctl.COMPLETIONS[shell]
        done = subprocess.run([shell, "-n"], input=script, capture_output=True, text=True)
        assert done.returncode == 0, (shell, done.stderr)


# -- the real shells --------------------------------------------------------------------------


class Terminal:
    """An interactive shell on a pseudo-terminal: type, read what it echoes."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        self.process = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
        )
        os.close(slave)
        self.seen = b""

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def wait_for(self, text: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while text.encode() not in self.seen:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{text!r} never came; the terminal showed {self.seen!r}")
            ready, _, _ = select.select([self.master], [], [], min(remaining, 0.2))
            if ready:
                try:
                    self.seen += os.read(self.master, 65536)
                except OSError:
                    break
        return self.seen.decode(errors="replace")

    def close(self) -> None:
        self.process.kill()
        self.process.wait(10)
        os.close(self.master)


def shell_env(tmp_path: Path, inventory: Path) -> dict[str, str]:
    return {
        "PATH": f"{BIN}{os.pathsep}/usr/bin{os.pathsep}/bin",
        "HOME": str(tmp_path),
        "TERM": "dumb",
        "INPUTRC": "/dev/null",
        "VENUSCTL_INVENTORY": str(inventory),
    }


@pytest.mark.e2e
def test_bash_completes_a_command_and_a_host_name(tmp_path, inventory):
    terminal = Terminal(
        ["bash", "--norc", "--noprofile", "-i"], {**shell_env(tmp_path, inventory), "PS1": "$ "}
    )
    try:
        terminal.type("source <(venusctl completion bash); echo loaded\n")
        terminal.wait_for("loaded\r\n$ ")
        terminal.type("venusctl pa\t")
        terminal.wait_for("venusctl pause ")
        terminal.type("\x15venusctl info cp\t")  # Ctrl-U: a new line
        terminal.wait_for("venusctl info cpu-01 ")
        terminal.type("\x15venusctl list -l 'gpu:!gpu-02\t")  # a quoted Ansible pattern
        terminal.wait_for("venusctl list -l 'gpu:!gpu-02' ")
        terminal.type("\x15venusctl list -l all:cpu\t")  # after bash's ':' word break
        terminal.wait_for("venusctl list -l all:cpu-01 ")
    finally:
        terminal.close()


@pytest.mark.e2e
def test_zsh_completes_a_command_and_a_host_name(tmp_path, inventory):
    terminal = Terminal(["zsh", "-f", "-i"], shell_env(tmp_path, inventory))
    try:
        terminal.type(
            "PS1='$ '; autoload -U compinit; compinit -u;"
            " source <(venusctl completion zsh); echo loaded\n"
        )
        terminal.wait_for("loaded")
        terminal.type("venusctl pa\t")
        terminal.wait_for("venusctl pause ")
        terminal.type("\x15venusctl info cp\t")
        terminal.wait_for("venusctl info cpu-01 ")
    finally:
        terminal.close()


@pytest.mark.e2e
def test_fish_completes_a_command_and_a_host_name(tmp_path, inventory):
    script = (
        "venusctl completion fish | source;"
        " complete -C 'venusctl pa'; complete -C 'venusctl info cp'"
    )
    done = subprocess.run(
        ["fish", "--no-config", "-c", script],
        env=shell_env(tmp_path, inventory),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "pause\tpause a sealing thread, or every selected one",
        "cpu-01\t10.0.0.3:22",
    ]


# -- the man page ----------------------------------------------------------------------------


def test_the_shipped_man_page_is_the_parsers():
    shipped = (ROOT / "docs" / "venusctl.1").read_text()
    assert shipped == venusctl.man_page(), (
        "docs/venusctl.1 is stale: run `python venusctl.py --help-man > docs/venusctl.1`"
    )
    out = io.StringIO()
    env = venusctl.Environment(stdout=out)
    assert venusctl.main(["--help-man"], env) == 0 and out.getvalue() == shipped


@pytest.mark.e2e
def test_man_renders_every_command(tmp_path):
    page = tmp_path / "venusctl.1"
    page.write_text(venusctl.man_page())
    done = subprocess.run(
        ["man", "-l", str(page)],
        env={**os.environ, "MANPAGER": "cat", "PAGER": "cat", "MANWIDTH": "100"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    text = done.stdout
    for heading in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "COMMANDS", "ENVIRONMENT"):
        assert f"\n{heading}\n" in text
    commands = venusctl._subcommands(venusctl.build_parser())
    for choice in commands._choices_actions:
        assert f"venusctl {choice.dest} [OPTIONS]" in text
    assert "--fleet NAME" in text and "NO_COLOR" in text and "-l LIMIT" in text
    assert "warning" not in done.stderr.lower()


def _tracked_copy(target: Path) -> Path:
    done = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True, timeout=30
    )
    for name in filter(None, done.stdout.decode().split("\0")):
        if (ROOT / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target / name)
    return target


@pytest.mark.e2e
@pytest.mark.slow
def test_the_wheel_ships_the_man_page_and_man_finds_it_once_installed(tmp_path):
    source = _tracked_copy(tmp_path / "src")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         str(source), "-w", str(tmp_path / "dist")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("venusctl-*.whl")
    # installed into an environment of its own (pip --prefix would uninstall ours)
    target = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(target)], check=True)
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(target / "bin" / "python"), "install",
         "-q", "--no-deps", str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr
    page = target / "share" / "man" / "man1" / "venusctl.1"
    assert page.read_text() == venusctl.man_page()
    # man finds it from PATH alone (man-db maps ENV/bin to ENV/share/man)
    env = {"PATH": f"{target / 'bin'}{os.pathsep}/usr/bin{os.pathsep}/bin", "HOME": str(tmp_path)}
    where = subprocess.run(["man", "-w", "venusctl"], env=env, capture_output=True, text=True)
    assert where.stdout.strip() == str(page), where.stderr
