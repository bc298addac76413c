"""What a systemd service needs from the daemon: journal priorities and sd_notify.

Both with the standard library only, following sd-daemon(3) and sd_notify(3):

- ``stderr_is_journal()``: systemd sets ``JOURNAL_STREAM=<dev>:<inode>`` for a
  service whose stderr is connected to the journal; it is only believed if
  stderr still is that stream (not when a child of the service redirected it).
  Then log lines carry a ``<N>`` syslog priority prefix and no timestamp (the
  journal adds its own), so ``journalctl -p warning`` shows warnings and errors.
- ``notify(state)``: one datagram to ``$NOTIFY_SOCKET`` (a path, or an
  abstract socket when it starts with ``@``), e.g. ``READY=1`` once the control
  socket listens, for a unit with ``Type=notify``. Without the variable it does
  nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import sys

__all__ = ["JournalFormatter", "notify", "stderr_is_journal"]

# syslog priorities (sd-daemon.h SD_ERR ...) of the logging levels
PRIORITIES = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}

log = logging.getLogger("venus_worker.systemd")


def stderr_is_journal(environ=os.environ, stream=None) -> bool:
    value = environ.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        info = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (info.st_dev, info.st_ino) == (int(device), int(inode))


def _priority(levelno: int) -> int:
    for level in sorted(PRIORITIES, reverse=True):
        if levelno >= level:
            return PRIORITIES[level]
    return PRIORITIES[logging.DEBUG]


class JournalFormatter(logging.Formatter):
    """``<N>logger: message``; every line of a multi-line message (a traceback) prefixed.

    journald reads each line as its own entry: unprefixed continuation lines
    would be shown at the default priority 6.
    """

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


def notify(state: str, environ=os.environ) -> bool:
    """Send `state` to the service manager; True if there was one to send it to."""
    address = environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # the abstract namespace
    elif not address.startswith("/"):
        log.warning("NOTIFY_SOCKET=%r is not a Unix socket path; not notifying", address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("cannot notify the service manager at %s: %s", environ["NOTIFY_SOCKET"], exc)
        return False
    return True
