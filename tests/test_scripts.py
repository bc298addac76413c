"""scripts/: shellcheck judges them; venv.sh refuses sh/dash instead of guessing a folder."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
VENV_SH = ROOT / "scripts" / "venv.sh"


def test_the_scripts_pass_shellcheck():
    tool = shutil.which("shellcheck")
    # Not a skip: scripts/test.sh installs shellcheck (Debian package shellcheck).
    assert tool, "shellcheck missing (scripts/test.sh installs it)"
    scripts = [*sorted((ROOT / "scripts").glob("*.sh")), ROOT / ".ci" / "run"]
    # -x: follow `. scripts/venv.sh`, as the scripts run it.
    done = subprocess.run(
        [tool, "-x", *map(str, scripts)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("shell", ["dash", "sh"])
def test_venv_sh_refuses_to_be_sourced_by_sh_and_makes_nothing(tmp_path, shell):
    assert shutil.which(shell), f"{shell} missing"
    here = tmp_path / "here"
    here.mkdir()
    done = subprocess.run(
        [shell, "-c", f". {VENV_SH} && echo sourced"],
        cwd=here,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and "sourced" not in done.stdout, done
    assert "scripts/venv.sh: needs bash" in done.stderr
    # Without BASH_SOURCE the old script took the parent of the current folder.
    assert sorted(path.name for path in tmp_path.rglob("*")) == ["here"]


def test_venv_sh_from_bash_puts_the_venv_first_and_leaves_nothing_behind():
    done = subprocess.run(
        ["bash", "-c", f". {VENV_SH} && command -v venus-worker && declare -F && compgen -v"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == str(ROOT / ".venv" / "bin" / "venus-worker")
    assert not [line for line in lines if "venusctl" in line], lines
