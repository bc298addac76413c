"""StrictModes for the daemon's folders, as sshd checks a user's ~/.ssh.

The daemon runs as root (or a service user) and writes into its state
folder, its socket's folder and every store. If another user could write in
one of them — or in any folder above it — they could plant a symlink or swap
the folder itself, and make the daemon overwrite a file it should never
touch. So before using a folder the daemon checks the folder and each of its
parents up to ``/``:

- owned by root or by the daemon's own user;
- not writable by group or others, unless the sticky bit is set (``/tmp``:
  others may create entries there but cannot rename or delete ours);
- a symlink on the way is resolved, and must itself be owned by root or the
  daemon's user.

``[worker] strict_modes = false`` turns the check off (like sshd's
``StrictModes no``), for layouts such as a store on a share mapped to
another uid.
"""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

__all__ = ["InsecurePath", "check_folder"]


class InsecurePath(Exception):
    """A folder others could write in; str() names it and says what is wrong."""


def _trusted_owner(uid: int) -> bool:
    return uid in (0, os.geteuid())


def _owner_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _check_one(path: Path, what: str) -> None:
    info = os.stat(path)
    if not _trusted_owner(info.st_uid):
        raise InsecurePath(
            f"{what} {path} is owned by {_owner_name(info.st_uid)}, not by root or by the "
            f"daemon's user {_owner_name(os.geteuid())}"
        )
    writable = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if writable and stat.S_ISDIR(info.st_mode) and not info.st_mode & stat.S_ISVTX:
        who = {stat.S_IWGRP: "its group", stat.S_IWOTH: "others"}.get(writable, "group and others")
        raise InsecurePath(
            f"{what} {path} is writable by {who} (mode {stat.S_IMODE(info.st_mode):04o}): "
            f"another user could plant files there; chmod go-w {path}"
        )


def check_folder(folder: Path, what: str) -> None:
    """Raise InsecurePath unless `folder` and every folder above it are safe (see module doc).

    `what` names the folder in the message ("state_dir", "store", ...). A
    folder that does not exist yet is checked from its first existing parent.
    """
    path = Path(os.path.abspath(folder))
    # Symlinks on the way: the link itself must be ours (its owner can point it elsewhere).
    probe = Path(path.anchor)
    for part in path.parts[1:]:
        probe = probe / part
        try:
            info = os.lstat(probe)
        except FileNotFoundError:
            break
        if stat.S_ISLNK(info.st_mode) and not _trusted_owner(info.st_uid):
            raise InsecurePath(
                f"{what} {folder}: the symlink {probe} is owned by {_owner_name(info.st_uid)}"
            )
    real = Path(os.path.realpath(path))
    labels = {real: what}
    for current in (real, *real.parents):
        if not current.exists():
            continue
        _check_one(current, labels.get(current, f"{what} {folder}: its parent folder"))
