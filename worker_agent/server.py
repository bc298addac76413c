"""HTTP/1.1 on a Unix socket, carrying the JSON-RPC of protocol.py.

- ``POST /`` only (others: 405). ``Content-Length`` required (411 without),
  at most ``MAX_BODY`` (413, connection closed, body never read). A request
  that is not HTTP/1.x gets 400 and the connection is closed: that includes
  HTTP/0.9 and any request line without a version (``GET /``), which the
  standard library would otherwise serve; HTTP/2+ gets 505. Header lines are
  read here, not by email.parser: one that is not ``Name: value`` is 400,
  more than MAX_HEADERS or one over MAX_HEADER_LINE 431; a repeated name
  keeps its first value.
- Keep-alive: requests may follow each other on one connection. One deadline
  covers a whole request, request line, headers and body: ``request_timeout``
  (10 s by default, ``[worker] request_timeout``) from its first byte. A client
  trickling a byte now and then therefore holds a connection for one deadline,
  not for as long as it likes. A new connection must begin its first request
  within ``request_timeout`` too; after a reply, a connection may wait up to
  ``idle_timeout`` (10 min by default, ``[worker] idle_timeout``) for its next
  one: venusctl's connection keeper holds its channel that long between an
  operator's commands, and an idle connection costs a sleeping thread only
  (past MAX_CONNECTIONS, the longest waiting goes first, below).
- One thread per connection, at most ``MAX_CONNECTIONS``. When a new client
  comes while all are taken, the connection that has been waiting for (or
  reading) a request the longest is closed to admit it: idle and slow clients
  cannot lock out a legitimate one. Only if every connection is busy
  answering is the new one refused.
- A client that hangs up before its reply is one log line, not a traceback.
- Who asks: each request's handler gets an ``api.Caller`` — the peer's uid
  and pid from the kernel (``SO_PEERCRED``, read once per connection; through
  an SSH stream channel that is sshd's process of the login user's session)
  and the ``Venus-Actor`` header the client may send (its own claim, cut to
  ``MAX_ACTOR`` characters), which the history records with a pause or resume.
- The socket file is created under ``umask(0o177)`` so it is ``0600`` from the
  first instant (no chmod race); with a group it is then opened to ``0660``.
  A stale socket is unlinked only if it *is* a socket and nobody answers on
  it; any other file at that path is an error. Sockets are close-on-exec
  (Python's default). No TCP or UDP socket is ever created.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import io
import json
import logging
import os
import re
import selectors
import socket
import socketserver
import stat
import struct
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from worker_agent.api import ACTOR_HEADER, Caller

__all__ = ["ControlServer", "ServerError", "MAX_BODY", "MAX_CONNECTIONS", "IDLE_TIMEOUT"]

MAX_BODY = 1 << 20
IDLE_TIMEOUT = 10.0  # request_timeout's default
KEEP_ALIVE_TIMEOUT = 600.0  # idle_timeout's default
MAX_CONNECTIONS = 64
MAX_ACTOR = 200
MAX_HEADERS = 100  # header lines of one request (http.client's limit)
MAX_HEADER_LINE = 65536  # bytes of one of them
_HTTP_VERSION = re.compile(r"HTTP/(\d+)\.(\d+)", re.ASCII)

log = logging.getLogger("venus_worker.server")

BodyHandler = Callable[[bytes, Caller], "bytes | None"]


class ServerError(Exception):
    """The control socket cannot be set up; str() says why."""


class _Connection:
    """One client connection: its deadline, and whether it waits for (or reads) a request."""

    def __init__(self, sock: socket.socket, timeout: float, idle_timeout: float | None = None):
        self.sock, self.timeout = sock, timeout
        self.idle_timeout = timeout if idle_timeout is None else idle_timeout
        self.reading = True
        self.since = time.monotonic()
        self.deadline = self.since + timeout
        self._begun = False
        self._served = False  # a reply went out: the next request may keep it waiting longer
        self._peer: tuple[int | None, int | None] | None = None

    def peer(self) -> tuple[int | None, int | None]:
        """(uid, pid) of the process at the other end, from the kernel; Nones if unknown."""
        if self._peer is None:
            self._peer = _peer_credentials(self.sock)
        return self._peer

    def wait_for_request(self) -> None:
        """Before a request: the first within `timeout` of the connection, a later one
        within `idle_timeout` of the reply before it."""
        self.reading, self._begun = True, False
        self.since = time.monotonic()
        self.deadline = self.since + (self.idle_timeout if self._served else self.timeout)

    def got_bytes(self) -> None:
        if not self._begun:  # the request's first byte starts its one deadline
            self._begun = True
            self.deadline = time.monotonic() + self.timeout

    def answering(self) -> None:
        self.reading = False
        self._served = True

    def close(self) -> None:
        """Wake the connection's thread (its recv returns EOF) so it ends."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)


class _DeadlineReader(io.RawIOBase):
    """The socket as a raw stream whose reads all end at the connection's deadline."""

    def __init__(self, connection: _Connection):
        self._connection = connection

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        connection = self._connection
        remaining = connection.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("request deadline passed")
        connection.sock.settimeout(remaining)
        count = connection.sock.recv_into(buffer)
        if count:
            connection.got_bytes()
        return count


class _Fields:
    """A request's header fields, as the handler reads them: `get(name)` in any case."""

    def __init__(self, fields: dict[str, str]) -> None:
        self._fields = fields

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._fields.get(name.lower(), default)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    server_version = "venus-worker"
    # A reply's header and body are written at once (handle_one_request flushes): one
    # send, so one SSH packet through sshd's stream channel and one read for the client.
    wbufsize = 1 << 16
    sys_version = ""
    # Answer garbage with a proper status line (the base class would answer it as HTTP/0.9).
    default_request_version = "HTTP/1.1"
    error_message_format = '{"error": "%(code)d %(message)s"}'
    error_content_type = "application/json"
    _date: tuple[int, str] = (-1, "")  # (second, its Date field): date_time_string

    def setup(self) -> None:
        self.timeout = self.server.request_timeout
        super().setup()
        self.rfile.close()  # replaced: reads must honour the connection's deadline
        self.conn = self.server.connection_of(self.request)
        self.rfile = io.BufferedReader(_DeadlineReader(self.conn), 65536)

    def handle_one_request(self) -> None:
        self.conn.wait_for_request()
        super().handle_one_request()

    def parse_request(self) -> bool:
        """The request line and the header fields, read here rather than by the base
        class: it parses headers with email.parser, a fifth of the CPU a WorkerList costs,
        and takes what HTTP does not (a line without a colon silently ends the headers;
        a request line without a version is served as HTTP/0.9)."""
        self.command, self.request_version = None, self.default_request_version
        self.close_connection = True
        self.requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        words = self.requestline.split()
        if len(words) != 3 or not words[2].startswith("HTTP/"):
            self.send_error(400, "Bad request line: expected METHOD PATH HTTP/1.1")
            return False
        command, path, version = words
        number = _HTTP_VERSION.fullmatch(version)
        if number is None:
            self.send_error(400, f"Bad request version ({version!r})")
            return False
        major, minor = int(number[1]), int(number[2])
        if major != 1:
            self.send_error(505 if major > 1 else 400, f"Invalid HTTP version ({version})")
            return False
        self.command, self.path, self.request_version = command, path, version
        self.close_connection = minor < 1  # HTTP/1.0: one request unless keep-alive
        fields = self._read_fields()
        if fields is None:
            return False
        self.headers = _Fields(fields)
        connection = fields.get("connection", "").lower()
        if connection == "close":
            self.close_connection = True
        elif connection == "keep-alive":
            self.close_connection = False
        if fields.get("expect", "").lower() == "100-continue" and minor >= 1:
            return self.handle_expect_100()
        return True

    def _read_fields(self) -> dict[str, str] | None:
        """name (lowercase) -> value of each header line; a repeated name keeps its first
        value. None after an error reply: a line too long, too many, or not `name: value`
        (obsolete line folding included)."""
        fields: dict[str, str] = {}
        for _ in range(MAX_HEADERS + 1):
            line = self.rfile.readline(MAX_HEADER_LINE + 1)
            if len(line) > MAX_HEADER_LINE:
                self.send_error(431, "Line too long")
                return None
            if line in (b"\r\n", b"\n", b""):
                return fields
            name, colon, value = str(line, "iso-8859-1").partition(":")
            if not colon or not name or name != name.strip():
                self.send_error(400, "Bad header line: expected Name: value")
                return None
            fields.setdefault(name.lower(), value.strip())
        self.send_error(431, "Too many headers")
        return None

    def date_time_string(self, timestamp: float | None = None) -> str:
        """The Date field of a reply, formatted once a second: email.utils formatting it
        for each reply was ~6 % of the CPU a status request ([WorkerList, WorkerReport])
        costs the agent."""
        if timestamp is not None:
            return super().date_time_string(timestamp)
        second = int(time.time())
        cached = _Handler._date
        if cached[0] != second:
            cached = _Handler._date = (second, super().date_time_string(second))
        return cached[1]

    def address_string(self) -> str:
        return "unix"  # Unix peers have no address; the base class would index into ""

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - base class signature
        if log.isEnabledFor(logging.DEBUG):  # each reply logs one: not formatted for nothing
            log.debug("%s", format % args)

    def _reply(self, status: int, body: bytes = b"", close: bool = False) -> None:
        self.connection.settimeout(self.server.request_timeout)  # a client that never reads
        self.send_response(status)
        if body:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _refuse(self, status: int, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        self._reply(status, body, close=True)

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        if self.headers.get("Transfer-Encoding"):
            self._refuse(411, "chunked bodies are not supported; send Content-Length")
            return
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            self._refuse(411, "Content-Length required")
            return
        try:
            length = int(length_text)
            if length < 0:
                raise ValueError(length_text)
        except ValueError:
            self._refuse(400, "bad Content-Length")
            return
        if length > MAX_BODY:
            self._refuse(413, f"body larger than {MAX_BODY} bytes")
            return
        body = self.rfile.read(length)
        if len(body) < length:
            self.close_connection = True  # the client went away mid-body
            return
        self.conn.answering()
        reply = self.server.handle_body(body, self._caller())
        if reply is None:
            self._reply(204)
        else:
            self._reply(200, reply)

    def _caller(self) -> Caller:
        uid, pid = self.conn.peer()
        actor = self.headers.get(ACTOR_HEADER)
        actor = actor.strip()[:MAX_ACTOR] if actor else None
        return Caller(uid=uid, pid=pid, actor=actor or None)

    def _not_allowed(self) -> None:
        self.send_response(405)
        self.send_header("Allow", "POST")
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.close_connection = True
        self.end_headers()

    do_GET = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _not_allowed  # noqa: N815


class _ThreadingUnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    block_on_close = False
    # socketserver's default backlog of 5 makes a burst of clients (a fleet
    # tool, health checks from cron) fail at once with EAGAIN on a Unix socket.
    request_queue_size = 128
    # handle_request() never waits: ControlServer._serve calls it once the socket is ready.
    timeout = 0

    def __init__(
        self,
        path: str,
        handle_body: BodyHandler,
        group: str | None,
        request_timeout: float,
        idle_timeout: float,
    ):
        self.handle_body = handle_body
        self.request_timeout = request_timeout
        self.idle_timeout = idle_timeout
        self._group = group
        self._connections: dict[socket.socket, _Connection] = {}
        self._connections_lock = threading.Lock()
        self._closed_since_note = 0
        self._last_note = float("-inf")
        super().__init__(path, _Handler, bind_and_activate=True)

    def server_bind(self) -> None:
        path = self.server_address
        _remove_stale_socket(path)
        old = os.umask(0o177)  # the socket is born 0600: never briefly world-connectable
        try:
            self.socket.bind(path)
        finally:
            os.umask(old)
        if self._group is not None:
            try:
                _open_to_group(path, self._group)
            except BaseException:
                os.unlink(path)  # never leave a socket file behind that nobody serves
                raise
        self.server_address = self.socket.getsockname()

    def process_request(self, request, client_address) -> None:
        """Admit a new connection, closing the longest-waiting idle or slow one if full."""
        with self._connections_lock:
            if len(self._connections) >= MAX_CONNECTIONS:
                waiting = [c for c in self._connections.values() if c.reading]
                if not waiting:
                    log.warning("%d control connections all busy; refusing a new one",
                                MAX_CONNECTIONS)  # fmt: skip
                    self.shutdown_request(request)
                    return
                oldest = min(waiting, key=lambda c: c.since)
                del self._connections[oldest.sock]
                oldest.close()
                self._note_closed()
            self._connections[request] = _Connection(
                request, self.request_timeout, self.idle_timeout
            )
        super().process_request(request, client_address)

    def _note_closed(self) -> None:
        """Log evictions, at most one line per 10 s (an attack must not flood the log)."""
        self._closed_since_note += 1
        now = time.monotonic()
        if now - self._last_note >= 10.0:
            log.warning(
                "control socket at its limit of %d connections: closed %d idle or slow "
                "connection(s) to admit new ones",
                MAX_CONNECTIONS, self._closed_since_note,
            )  # fmt: skip
            self._closed_since_note, self._last_note = 0, now

    def connection_of(self, request: socket.socket) -> _Connection:
        with self._connections_lock:
            found = self._connections.get(request)
        # Evicted before its thread started: serve it a connection that is already shut.
        return found or _Connection(request, self.request_timeout)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._connections_lock:
                self._connections.pop(request, None)

    def handle_error(self, request, client_address) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            log.info("control client went away before its reply (%s)", type(error).__name__)
            return
        log.exception("control connection failed")


def _peer_credentials(sock: socket.socket) -> tuple[int | None, int | None]:
    """The peer's (uid, pid) by SO_PEERCRED (Linux); (None, None) where there is none."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None, None
    try:
        pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, option, 12))
    except OSError:
        return None, None
    return uid, (pid or None)


def _remove_stale_socket(path: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ServerError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise ServerError(f"cannot check existing socket {path}: {exc}") from None
    else:
        raise ServerError(f"another agent is already listening on {path}")
    finally:
        probe.close()
    os.unlink(path)


def _open_to_group(path: str, group: str) -> None:
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        raise ServerError(f"socket_group {group!r} does not exist") from None
    os.chown(path, -1, gid)
    os.chmod(path, 0o660)


class ControlServer:
    """The control socket, served from a background thread."""

    def __init__(
        self,
        path: Path,
        handle_body: BodyHandler,
        group: str | None = None,
        request_timeout: float = IDLE_TIMEOUT,
        idle_timeout: float = KEEP_ALIVE_TIMEOUT,
    ):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._server = _ThreadingUnixServer(
                str(path), handle_body, group, request_timeout, idle_timeout
            )
        except OSError as exc:
            raise ServerError(f"cannot listen on {path}: {exc.strerror or exc}") from None
        self._wake_read, self._wake_write = os.pipe()  # close-on-exec, as every fd here
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name="control-server", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _serve(self) -> None:
        """Accept connections until stop() writes to the wake pipe.

        Not socketserver's serve_forever: that one wakes every poll_interval (0.5 s) to
        look for a shutdown request, so an idle agent would never sleep; on a control host
        holding a few hundred kept connections, or a worker at rest, the wakeups add up.
        """
        with selectors.DefaultSelector() as selector:
            selector.register(self._server.socket, selectors.EVENT_READ)
            selector.register(self._wake_read, selectors.EVENT_READ)
            while not self._stopping:
                ready = selector.select()
                if self._stopping:
                    break
                if any(key.fileobj is self._server.socket for key, _ in ready):
                    self._server.handle_request()  # ready: accepts without waiting

    def stop(self) -> None:
        """Stop accepting, close the socket and remove its file."""
        if not self._stopping:
            self._stopping = True
            os.write(self._wake_write, b"x")  # a pipe's first byte never blocks
            if self._thread.is_alive():
                self._thread.join()
            os.close(self._wake_read)
            os.close(self._wake_write)
        self._server.server_close()
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)
