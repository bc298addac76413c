"""Packaging: two distributions from one tree, the agent's wheel, install_wheel.py, the sdist.

The control host's `pip install .` (this venv: `pip install -e '.[test]'`) is
the distribution venusctl, with both commands and the fleet tool's
dependencies. The worker's is venus-worker, built by
packaging/build_agent_wheel.py: the agent alone, no requirement on Python
3.11+. playbooks/roles/venus_worker/files/install_wheel.py unpacks it on a
worker with the standard library; here it runs on tmp_path folders, as the
playbook runs it on a host.
"""

from __future__ import annotations

import email.parser
import importlib.metadata
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from worker_agent import __version__

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
BUILD = ROOT / "packaging" / "build_agent_wheel.py"
INSTALL = ROOT / "playbooks" / "roles" / "venus_worker" / "files" / "install_wheel.py"
DIST_INFO = f"venus_worker-{__version__}.dist-info"


def build_agent_wheel(out_dir: Path) -> Path:
    done = subprocess.run(
        [sys.executable, str(BUILD), str(out_dir)], capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return Path(json.loads(done.stdout)["wheel"])


@pytest.fixture(scope="module")
def agent_wheel(tmp_path_factory) -> Path:
    return build_agent_wheel(tmp_path_factory.mktemp("agent-wheel"))


def _metadata(archive: zipfile.ZipFile, name: str) -> email.message.Message:
    return email.parser.Parser().parsestr(archive.read(f"{DIST_INFO}/{name}").decode())


def test_the_agent_wheel_holds_the_agent_alone(agent_wheel):
    assert agent_wheel.name == f"venus_worker-{__version__}-py3-none-any.whl"
    with zipfile.ZipFile(agent_wheel) as archive:
        names = set(archive.namelist())
        assert {name.split("/", 1)[0] for name in names} == {"worker_agent", DIST_INFO}
        package = ROOT / "worker_agent"
        modules = {f"worker_agent/{p.relative_to(package)}" for p in package.rglob("*.py")}
        assert modules <= names and "worker_agent/assets/venus-worker.mock.toml" in names
        assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]
        metadata = _metadata(archive, "METADATA")
        assert (metadata["Name"], metadata["Version"]) == ("venus-worker", __version__)
        # Nothing for a worker to fetch on Python 3.11+: no paramiko, no fabric.
        assert metadata.get_all("Requires-Dist") == ['tomlkit>=0.12; python_version < "3.11"']
        wheel = _metadata(archive, "WHEEL")
        assert (wheel["Root-Is-Purelib"], wheel["Tag"]) == ("true", "py3-none-any")
        entry_points = archive.read(f"{DIST_INFO}/entry_points.txt").decode()
        assert "venus-worker = worker_agent.cli:main" in entry_points.splitlines()
        assert "venusctl" not in entry_points
        assert archive.read(f"{DIST_INFO}/LICENSE") == (ROOT / "LICENSE").read_bytes()


def test_the_agent_wheel_is_reproducible_and_replaced_only_when_it_changes(agent_wheel, tmp_path):
    again = build_agent_wheel(tmp_path)
    assert again.read_bytes() == agent_wheel.read_bytes()
    before = again.stat().st_mtime_ns
    assert build_agent_wheel(tmp_path) == again and again.stat().st_mtime_ns == before
    # The folder holds the wheel and nothing else: no partial file, no build folder.
    assert [path.name for path in tmp_path.iterdir()] == [again.name]


def test_the_control_host_install_gives_both_commands_with_one_version():
    for command in ("venusctl", "venus-worker"):
        done = subprocess.run(
            [str(BIN / command), "--version"], capture_output=True, text=True, timeout=30
        )
        assert (done.returncode, done.stdout) == (0, f"{command} {__version__}\n"), done
    metadata = importlib.metadata.metadata("venusctl")
    assert metadata["Version"] == __version__
    requires = {
        re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0].lower()
        for line in metadata.get_all("Requires-Dist")
        if "extra ==" not in line
    }
    assert {"paramiko", "tabulate", "tomlkit"} <= requires
    assert "fabric" not in requires  # nothing imports it (issue 13)
    scripts = {
        entry.name
        for entry in importlib.metadata.distribution("venusctl").entry_points
        if entry.group == "console_scripts"
    }
    assert scripts == {"venusctl", "venus-worker"}


# --- install_wheel.py: the worker's side, standard library only ----------------


def install(prefix: Path, *wheels: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-I", str(INSTALL), str(prefix), *map(str, wheels)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def installed(prefix: Path, *wheels: Path) -> dict:
    done = install(prefix, *wheels)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def make_wheel(path: Path, files: dict[str, str], purelib: str = "true") -> Path:
    """A small wheel written by hand: `files`, plus its dist-info."""
    dist_info = "_".join(path.name.split("-")[:2]) + ".dist-info"
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
        archive.writestr(f"{dist_info}/METADATA", "Metadata-Version: 2.1\nName: x\nVersion: 1\n")
        archive.writestr(
            f"{dist_info}/WHEEL",
            f"Wheel-Version: 1.0\nRoot-Is-Purelib: {purelib}\nTag: py3-none-any\n",
        )
    return path


def _prefix(tmp_path: Path) -> Path:
    prefix = tmp_path / "opt"
    (prefix / "dist").mkdir(parents=True)
    return prefix


def test_install_wheel_unpacks_a_compiled_release_the_agent_runs_from(agent_wheel, tmp_path):
    prefix = _prefix(tmp_path)
    wheel = Path(shutil.copy(agent_wheel, prefix / "dist"))
    first = installed(prefix, wheel)
    lib = prefix / "lib"
    assert first["changed"] and os.readlink(lib) == first["release"]
    release = lib.resolve()
    assert sorted(path.name for path in release.iterdir()) == [DIST_INFO, "worker_agent"]
    cli = release / "worker_agent" / "cli.py"
    assert stat.S_IMODE(cli.stat().st_mode) == 0o644
    assert stat.S_IMODE(release.stat().st_mode) == 0o755
    assert list((release / "worker_agent" / "__pycache__").glob("cli.*.pyc"))
    # As the launcher runs it: isolated, without site-packages, the release first.
    run = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import worker_agent.cli as cli; print(cli.__file__); sys.exit(cli.main(['--version']))"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", run, str(lib)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        str(lib / "worker_agent" / "cli.py"),
        f"venus-worker {__version__}",
    ]
    again = installed(prefix, wheel)
    assert again == {"changed": False, "release": first["release"], "removed": []}


def test_install_wheel_switches_releases_keeping_the_previous_one(tmp_path):
    prefix = _prefix(tmp_path)

    def wheel(version: str) -> Path:
        name = f"venus_worker-{version}-py3-none-any.whl"
        return make_wheel(
            prefix / "dist" / name, {"worker_agent/__init__.py": f"V = {version!r}\n"}
        )

    one = installed(prefix, wheel("1"))
    two = installed(prefix, wheel("2"))
    assert two["changed"] and two["release"] != one["release"]
    assert os.readlink(prefix / "lib") == two["release"]
    # The previous release stays for an agent still running on it; the old wheel goes.
    assert (prefix / one["release"]).is_dir()
    assert [path.name for path in (prefix / "dist").iterdir()] == [
        "venus_worker-2-py3-none-any.whl"
    ]
    three = installed(prefix, wheel("3"))
    assert not (prefix / one["release"]).exists() and (prefix / two["release"]).is_dir()
    assert str(prefix / one["release"]) in three["removed"]
    assert (prefix / "lib" / "worker_agent" / "__init__.py").read_text() == "V = '3'\n"


@pytest.mark.parametrize(
    ("files", "purelib", "message"),
    [
        ({"worker_agent/__init__.py": ""}, "false", "not a pure-Python wheel"),
        ({"x-1.data/scripts/run": ""}, "true", "has a .data folder"),
        ({"../evil.py": ""}, "true", "refusing a file outside the wheel"),
        ({"/etc/evil.py": ""}, "true", "refusing a file outside the wheel"),
    ],
)
def test_install_wheel_refuses_what_it_cannot_install_plainly(tmp_path, files, purelib, message):
    prefix = _prefix(tmp_path)
    bad = make_wheel(prefix / "dist" / "x-1-py3-none-any.whl", files, purelib)
    done = install(prefix, bad)
    assert done.returncode == 1 and message in done.stderr, done.stderr
    # Nothing switched, nothing half-made left behind.
    assert sorted(path.name for path in prefix.iterdir()) == ["dist"]
    assert not (tmp_path / "evil.py").exists()


def test_install_wheel_names_a_missing_wheel(tmp_path):
    done = install(_prefix(tmp_path), tmp_path / "nope.whl")
    assert done.returncode == 1 and "nope.whl: no such wheel" in done.stderr


# --- the sdist: the whole project, so its tests run from it -------------------


def _tracked_files() -> list[str]:
    git = shutil.which("git")
    assert git and (ROOT / ".git").exists(), "the sdist test compares with git ls-files"
    done = subprocess.run(
        [git, "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True, timeout=30
    )
    return [name for name in done.stdout.decode().split("\0") if name and (ROOT / name).is_file()]


@pytest.mark.slow
def test_the_sdist_holds_every_tracked_file_and_its_tests_run(tmp_path):
    tracked = _tracked_files()
    source = tmp_path / "src"
    for name in tracked:  # a clean copy: the build writes egg-info next to setup.cfg
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    hook = (
        "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", hook, str(tmp_path / "dist")],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    sdist = tmp_path / "dist" / done.stdout.strip().splitlines()[-1]
    top = f"venusctl-{__version__}"
    with tarfile.open(sdist) as archive:
        members = {m.name.removeprefix(f"{top}/") for m in archive.getmembers() if m.isfile()}
        archive.extractall(tmp_path / "unpacked", filter="data")
    missing = sorted(set(tracked) - members - {".gitignore"})
    assert not missing, missing
    assert {
        "LICENSE",
        "tests/conftest.py",
        "tests/sshfleet.py",
        "tests/agent_helpers.py",
    } <= members
    # Its tests run from it (conftest.py imports the helpers), on its own worker_agent.
    unpacked = tmp_path / "unpacked" / top
    env = dict(os.environ, PYTHONPATH=str(unpacked), PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_agent_states.py",
        ],
        cwd=unpacked,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and " passed" in done.stdout, done.stdout + done.stderr
    where = subprocess.run(
        [sys.executable, "-c", "import worker_agent; print(worker_agent.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert where.stdout.startswith(str(unpacked)), where
