#!/usr/bin/env python3
"""Unpack pure-Python wheels into a release folder of the agent: standard library only.

Usage: install_wheel.py PREFIX WHEEL [WHEEL...]

deploy-agent.yml runs this on each worker host, as root, with the host's own
Python, after copying the wheels to PREFIX/dist/. No pip, no venv, no
network: a pure-Python wheel is a zip file whose contents go on sys.path as
they are (PEP 427), which is what PREFIX/bin/venus-worker puts there.

    PREFIX/lib-ID/   the wheels' contents, byte-compiled for this Python;
                     ID: a hash of the wheels' bytes and of the Python's cache tag
    PREFIX/lib       a symlink to the current release, switched atomically

A release is unpacked into PREFIX/.lib-ID.partial and renamed into place only
when complete, so a crash never leaves a half release behind the link. The
release the link pointed to before stays (an agent still running keeps its
modules until its restart); older releases, and wheels in PREFIX/dist/ that
are not named, are removed. Refused: a wheel that is not pure Python, has a
.data folder, or names a file outside its folder.

Prints one JSON object: {"changed": bool, "release": "lib-ID", "removed": [...]}.
"""

from __future__ import annotations

import compileall
import hashlib
import json
import os
import shutil
import sys
import zipfile
from pathlib import Path, PurePosixPath

LINK = "lib"
PREFIX_OF_RELEASE = "lib-"


class InstallError(Exception):
    """The wheels cannot be installed; str() says why."""


def release_id(wheels: list[Path]) -> str:
    digest = hashlib.sha256(sys.implementation.cache_tag.encode())
    for wheel in wheels:
        digest.update(wheel.name.encode() + b"\0")
        digest.update(hashlib.sha256(wheel.read_bytes()).digest())
    return digest.hexdigest()[:12]


def _check_wheel(wheel: Path, archive: zipfile.ZipFile) -> None:
    names = archive.namelist()
    for name in names:
        path = PurePosixPath(name)
        if path.is_absolute() or ".." in path.parts or "\\" in name:
            raise InstallError(f"{wheel.name}: refusing a file outside the wheel: {name!r}")
        if path.parts and path.parts[0].endswith(".data"):
            raise InstallError(f"{wheel.name}: has a .data folder ({path.parts[0]}): not supported")
    metadata = [n for n in names if PurePosixPath(n).match("*.dist-info/WHEEL")]
    if len(metadata) != 1:
        raise InstallError(f"{wheel.name}: not a wheel (no single *.dist-info/WHEEL)")
    fields = archive.read(metadata[0]).decode("utf-8", "replace").splitlines()
    if "Root-Is-Purelib: true" not in (line.strip() for line in fields):
        raise InstallError(f"{wheel.name}: not a pure-Python wheel (Root-Is-Purelib is not true)")


def _unpack(wheels: list[Path], partial: Path, final: Path) -> None:
    for wheel in wheels:  # every wheel checked before anything is written
        with zipfile.ZipFile(wheel) as archive:
            _check_wheel(wheel, archive)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(mode=0o755)
    try:
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(partial)
        for folder, dirs, files in os.walk(partial):
            for name in dirs:
                os.chmod(os.path.join(folder, name), 0o755)
            for name in files:
                os.chmod(os.path.join(folder, name), 0o644)
        # Compiled now, as root: the service user cannot write __pycache__ here. ddir:
        # tracebacks name the final folder, not the partial one.
        if not compileall.compile_dir(partial, ddir=str(final), quiet=1, workers=1):
            raise InstallError(f"byte-compiling {partial} failed")
        os.rename(partial, final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _point_link(prefix: Path, release: str) -> str | None:
    """Point PREFIX/lib at release; the release it pointed to before (None: none, or same)."""
    link = prefix / LINK
    before = None
    if link.is_symlink():
        before = os.readlink(link)
        if before == release:
            return None
    elif link.exists():
        raise InstallError(f"{link} exists and is not a symlink: move it away first")
    staged = prefix / f".{LINK}.{os.getpid()}.new"
    staged.unlink(missing_ok=True)
    os.symlink(release, staged)
    os.replace(staged, link)
    return before or ""


def _prune(prefix: Path, keep: set[str], wheels: list[Path]) -> list[str]:
    removed = []
    for entry in sorted(prefix.iterdir()):
        stale_release = entry.name.startswith(PREFIX_OF_RELEASE) and entry.name not in keep
        stale_partial = entry.name.startswith(f".{PREFIX_OF_RELEASE}")
        if (stale_release or stale_partial) and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
            removed.append(str(entry))
    named = {wheel.resolve() for wheel in wheels}
    for wheel in sorted((prefix / "dist").glob("*.whl")):
        if wheel.resolve() not in named:
            wheel.unlink()
            removed.append(str(wheel))
    return removed


def install(prefix: Path, wheels: list[Path]) -> dict:
    for wheel in wheels:
        if not wheel.is_file():
            raise InstallError(f"{wheel}: no such wheel")
    release = PREFIX_OF_RELEASE + release_id(wheels)
    final = prefix / release
    unpacked = not final.is_dir()
    if unpacked:
        _unpack(wheels, prefix / f".{release}.partial", final)
    before = _point_link(prefix, release)
    keep = {release} | ({before} if before else set())
    if before is None:  # no switch: keep the previous release found on disk, if any
        keep |= {entry.name for entry in prefix.glob(PREFIX_OF_RELEASE + "*")}
    removed = _prune(prefix, keep, wheels)
    return {"changed": before is not None or bool(removed), "release": release, "removed": removed}


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        sys.stderr.write(__doc__.split("\n\n", 2)[1] + "\n")
        return 2
    os.umask(0o022)
    try:
        result = install(Path(argv[0]), [Path(arg) for arg in argv[1:]])
    except (InstallError, OSError, zipfile.BadZipFile) as exc:
        sys.stderr.write(f"install_wheel: {exc}\n")
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
