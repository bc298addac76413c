#!/usr/bin/env python3
"""Build the worker's wheel (distribution venus-worker: worker_agent alone), reproducibly.

Usage: build_agent_wheel.py OUT_DIR

The wheel holds the agent and nothing else: worker_agent/ (with its assets),
its dist-info and the venus-worker command; its only requirement is tomlkit on
Python 3.10 (3.11+ parse TOML with the standard library). It is what
deploy-agent.yml copies to every worker host, so workers need no package
index and no pip: the fleet tool and its dependencies (paramiko, fabric, ...)
stay on the control host, where `pip install .` installs the other
distribution, venusctl, with both commands.

How: packaging/agent/pyproject.toml, LICENSE and worker_agent/ of the checkout
this script belongs to are copied to a temporary folder (no caches, no
sockets), which is built with SOURCE_DATE_EPOCH fixed, the timestamp the wheel
builder gives every zip entry: the same sources give the same bytes, so
Ansible's copy to a host reports a change (and the agent restarts) only when
the sources changed. The wheel lands in OUT_DIR under a temporary name and is
renamed into place (left alone when the bytes are the same), so two deploys
at once never copy half a wheel; the temporary folder is removed whatever
happens. When setuptools>=61 and wheel are importable here, setuptools' PEP
517 hook builds it directly (fast, no network); otherwise ``pip wheel`` does,
fetching the build backend from its index.

Prints one JSON object: {"wheel": "/abs/OUT_DIR/venus_worker-X-py3-none-any.whl"}.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
PROJECT = CHECKOUT / "packaging" / "agent" / "pyproject.toml"
PACKAGE = "worker_agent"
# 1980-01-01: the earliest timestamp a zip entry can hold.
SOURCE_DATE_EPOCH = "315532800"
SKIP_NAMES = {"__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache"}
SKIP_SUFFIXES = (".pyc", ".pyo", ".sock")


def _ignore(folder: str, names: list[str]) -> set[str]:
    skipped = set()
    for name in names:
        if name in SKIP_NAMES or name.endswith(SKIP_SUFFIXES):
            skipped.add(name)
            continue
        mode = os.lstat(os.path.join(folder, name)).st_mode
        if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
            skipped.add(name)  # sockets, fifos, symlinks: not part of a package
    return skipped


def _can_build_offline() -> bool:
    try:
        setuptools = importlib.metadata.version("setuptools")
        importlib.metadata.version("wheel")
    except importlib.metadata.PackageNotFoundError:
        return False
    major = setuptools.split(".", 1)[0]
    return major.isdigit() and int(major) >= 61


def _stage(tree: Path) -> None:
    """The agent's project as setuptools sees it: its pyproject, LICENSE, the package."""
    tree.mkdir()
    shutil.copy2(PROJECT, tree / "pyproject.toml")
    shutil.copy2(CHECKOUT / "LICENSE", tree / "LICENSE")
    shutil.copytree(CHECKOUT / PACKAGE, tree / PACKAGE, ignore=_ignore, symlinks=False)


def _build_argv(tree: Path, wheels: Path) -> list[str]:
    if _can_build_offline():
        # The PEP 517 hook straight from setuptools: no pip start-up, no network.
        hook = "import sys; from setuptools import build_meta; build_meta.build_wheel(sys.argv[1])"
        return [sys.executable, "-c", hook, str(wheels)]
    argv = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps"]
    return argv + ["--disable-pip-version-check", "--wheel-dir", str(wheels), str(tree)]


def _place(built: Path, out_dir: Path) -> Path:
    """Move the wheel into out_dir atomically; keep the old file when its bytes are the same."""
    target = out_dir / built.name
    if target.is_file() and target.read_bytes() == built.read_bytes():
        return target.resolve()
    partial = out_dir / f".{built.name}.{os.getpid()}.partial"
    try:
        shutil.copyfile(built, partial)
        os.chmod(partial, 0o644)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target.resolve()


def build(out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="venus-agent-wheel-") as scratch:
        tree = Path(scratch) / "src"
        _stage(tree)
        wheels = Path(scratch) / "wheels"
        env = dict(os.environ, SOURCE_DATE_EPOCH=SOURCE_DATE_EPOCH, PYTHONDONTWRITEBYTECODE="1")
        done = subprocess.run(
            _build_argv(tree, wheels),
            cwd=tree,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        if done.returncode != 0:
            sys.stderr.write(done.stdout.decode(errors="replace"))
            raise SystemExit(
                f"build_agent_wheel: the build failed with exit code {done.returncode}"
            )
        built = sorted(wheels.glob("*.whl"))
        if len(built) != 1:
            raise SystemExit(f"build_agent_wheel: expected one wheel, the build made {len(built)}")
        return _place(built[0], out_dir)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write(__doc__.split("\n\n", 2)[1] + "\n")
        return 2
    wheel = build(Path(argv[0]).expanduser().resolve())
    print(json.dumps({"wheel": str(wheel)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
