#!/usr/bin/env python3
"""Build the project's wheel from a checkout, reproducibly: same sources, same bytes.

Usage: build_wheel.py SOURCE_DIR OUT_DIR

deploy-agent.yml runs this on the control host and copies the wheel to every
worker. Because the bytes only change when the sources do, the copy reports
"changed" (and pip runs, and the agent restarts) only when there is something
new to install: that is what makes a second deploy a no-op.

How: the checkout is copied to a temporary folder without caches, virtual
environments, build leftovers and sockets (so a stale ``build/`` can never
leak old modules into the wheel, and the checkout is not written to), then
built with SOURCE_DATE_EPOCH fixed, which the wheel builder uses for every
zip entry's timestamp. When setuptools>=61 and wheel are importable here,
setuptools' PEP 517 hook builds it directly (fast, no network); otherwise
``pip wheel`` does, fetching the build backend from its index.

Prints one JSON object: {"wheel": "/abs/path/to/venusctl-X-py3-none-any.whl"}.
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

# 1980-01-01: the earliest timestamp a zip entry can hold.
SOURCE_DATE_EPOCH = "315532800"
SKIP_NAMES = {
    ".git",
    ".venv",
    "venv",
    "__pycache__",
    "build",
    "dist",
    "mock-tmp",
    ".pytest_cache",
    ".ruff_cache",
    ".mypy_cache",
    "node_modules",
}
SKIP_SUFFIXES = (".pyc", ".pyo", ".egg-info", ".sock", ".whl")


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


def build(source: Path, out_dir: Path) -> Path:
    if not (source / "setup.cfg").is_file() and not (source / "pyproject.toml").is_file():
        raise SystemExit(f"build_wheel: {source} is not a Python project checkout")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="venus-wheel-") as scratch:
        tree = Path(scratch) / "src"
        shutil.copytree(source, tree, ignore=_ignore, symlinks=False)
        wheels = Path(scratch) / "wheels"
        env = dict(os.environ, SOURCE_DATE_EPOCH=SOURCE_DATE_EPOCH, PYTHONDONTWRITEBYTECODE="1")
        if _can_build_offline():
            # The PEP 517 hook straight from setuptools: no pip start-up, no network.
            hook = (
                "import sys; from setuptools import build_meta; build_meta.build_wheel(sys.argv[1])"
            )
            argv = [sys.executable, "-c", hook, str(wheels)]
        else:
            argv = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps"]
            argv += ["--disable-pip-version-check", "--wheel-dir", str(wheels), str(tree)]
        done = subprocess.run(
            argv, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        if done.returncode != 0:
            sys.stderr.write(done.stdout.decode(errors="replace"))
            raise SystemExit(f"build_wheel: the build failed with exit code {done.returncode}")
        built = sorted(wheels.glob("*.whl"))
        if len(built) != 1:
            raise SystemExit(f"build_wheel: expected one wheel, pip made {len(built)}")
        target = out_dir / built[0].name
        shutil.move(str(built[0]), target)
    return target.resolve()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write(__doc__.split("\n\n", 2)[1] + "\n")
        return 2
    wheel = build(Path(argv[0]).resolve(), Path(argv[1]))
    print(json.dumps({"wheel": str(wheel)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
