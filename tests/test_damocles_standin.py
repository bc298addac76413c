"""The damocles stand-in checked against the reference, byte for byte, per release line.

No venusctl here: raw sockets (and, once, a raw direct-tcpip channel of a real
sshd) against tests/damocles_standin.py. Each test's docstring names the
section of shared/reference/damocles-wire.md (W = "wire") or damocles.md (D)
it checks; "source:" marks a fact read from the original source that the
reference does not state (or states differently). Time is a ManualClock the
tests step by hand, so every pause/resume rule is checked at exact moments;
two tests run the stand-in as a process on a real (fast) timer.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import paramiko
import pytest
from damocles_standin import (
    FROZEN,
    LINES,
    TAG_ORDER,
    ManualClock,
    StandinServer,
    ThreadSpec,
    Timing,
    Worker,
    default_threads,
    release_of,
)
from sshfleet import SshFleet

STANDIN = Path(__file__).with_name("damocles_standin.py")
DATE = rb"date: [A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT"
LIST = "VenusWorker.WorkerList"
PAUSE = "VenusWorker.WorkerPause"
RESUME = "VenusWorker.WorkerResume"
VERSION = "VenusWorker.WorkerVersion"
ONE_TAG_PER_LINE = [first for first, _ in LINES.values()]
INVALID = "Invalid parameters: "
UNCHANGED = "state unchanged, may enter an infinite loop"
DEEP = b"[" * 127 + b"]" * 127  # with the request object: 128 levels
DEEP_REQUEST = b'{"jsonrpc":"2.0","id":1,"method":"VenusWorker.WorkerList","params":' + DEEP + b"}"
C2_ERROR = "permanent: No cached parameters found for stacked-proof-of-replication (standin)"


# -- raw HTTP --------------------------------------------------------------------------------------


@dataclass
class Reply:
    head: bytes  # status line and headers, without the blank line
    body: bytes

    @property
    def status_line(self) -> bytes:
        return self.head.split(b"\r\n", 1)[0]

    @property
    def header_names(self) -> list[bytes]:
        return [line.split(b":", 1)[0] for line in self.head.split(b"\r\n")[1:]]

    def header(self, name: bytes) -> bytes | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b": ")
            if key == name:
                return value
        return None

    def json(self):
        assert self.body.endswith(b"\n")
        return json.loads(self.body)


class Raw:
    """One TCP connection to the stand-in; replies read by hand (Content-Length)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self, head_only: bool = False) -> Reply:
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        length = int(re.search(rb"\r\ncontent-length: (\d+)", head).group(1))
        if head_only:
            length = 0
        while len(self.buffer) < length:
            self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return Reply(head, body)

    def closed(self) -> bool:
        """True once the server has closed (EOF) with nothing more sent."""
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                return self.buffer == b""
            self.buffer += chunk

    def quiet(self, seconds: float = 0.3) -> bool:
        """Nothing arrives for `seconds` (and the connection stays open)."""
        self.sock.settimeout(seconds)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            return True
        finally:
            self.sock.settimeout(10)
        self.buffer += chunk
        return False

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed; got {self.buffer!r}")
        self.buffer += chunk

    def close(self) -> None:
        self.sock.close()


def post(body: bytes, *headers: str, version: str = "1.1", method: str = "POST") -> bytes:
    lines = [f"{method} / HTTP/{version}"]
    if not any(h.lower().startswith("host:") for h in headers):
        lines.append("Host: 127.0.0.1:17890")
    if not any(h.lower().startswith("content-type:") for h in headers):
        lines.append("Content-Type: application/json")
    lines += [*headers, f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def call_body(method: str, params=None, ident=1) -> bytes:
    request = {"jsonrpc": "2.0", "id": ident, "method": method}
    if params is not None:
        request["params"] = params
    return json.dumps(request).encode()


@dataclass
class Standin:
    worker: Worker
    server: StandinServer
    clock: ManualClock

    @property
    def port(self) -> int:
        return self.server.port

    def raw(self) -> Raw:
        return Raw(self.port)

    def send(self, body: bytes, *headers: str) -> Reply:
        connection = self.raw()
        try:
            connection.send(post(body, *headers))
            return connection.reply()
        finally:
            connection.close()

    def call(self, method: str, params=None):
        """The JSON-RPC result, or the error object."""
        reply = self.send(call_body(method, params)).json()
        return reply.get("result", reply.get("error"))

    def threads(self) -> list[dict]:
        return self.call(LIST)

    def thread(self, position: int) -> dict:
        return self.threads()[position]

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)


@pytest.fixture
def standin():
    """start(tag, threads, timing, **worker options) -> a Standin on 127.0.0.1; closed after."""
    servers = []

    def start(tag="v0.9.0", threads=None, timing=None, **options) -> Standin:
        clock = ManualClock()
        if threads is None:
            threads = default_threads("/mnt")
        worker = Worker(release_of(tag), threads, timing or replace(FROZEN), clock, **options)
        server = StandinServer(worker).start()
        servers.append(server)
        return Standin(worker, server, clock)

    yield start
    for server in servers:
        server.close()


def fast(**overrides) -> Timing:
    values = {"seal_interval": 30, "recover_interval": 60, "poll": 20, "stage": 10, "step": 0}
    values.update(overrides)
    return Timing(**values)


# -- W §1.2 HTTP behaviour -------------------------------------------------------------------------


@pytest.mark.parametrize("tag", ONE_TAG_PER_LINE)
def test_a_reply_is_lower_case_headers_in_hypers_order_and_the_body_plus_newline(standin, tag):
    """W §1.2 response: `HTTP/1.1 200 OK`, content-type, content-length, date (no server,
    never chunked), body = JSON-RPC reply + "\\n"; W §1.3: result fields jsonrpc, result, id."""
    worker = standin(tag)
    reply = worker.send(call_body(PAUSE, [1], ident=7))
    pattern = (
        rb"HTTP/1\.1 200 OK\r\ncontent-type: application/json; charset=utf-8\r\n"
        rb"content-length: 39\r\n" + DATE
    )
    assert re.fullmatch(pattern, reply.head), reply.head
    assert reply.body == b'{"jsonrpc":"2.0","result":true,"id":7}\n'


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "Application/JSON",
        "application/json; charset=utf-8",
        "application/json;charset=UTF-8",
    ],
)
def test_the_three_json_content_types_in_any_ascii_case_are_rpc(standin, content_type):
    """W §1.2 Content-Type: exactly application/json[; charset=utf-8], case-insensitive."""
    reply = standin().send(call_body(PAUSE, [1]), f"Content-Type: {content_type}")
    assert reply.status_line == b"HTTP/1.1 200 OK" and reply.json()["result"] is True


@pytest.mark.parametrize(
    "headers",
    [
        ["Content-Type: application/json-rpc"],
        ["Content-Type: text/plain"],
        ["Content-Type: application/json; charset=latin-1"],
        ["Content-Type: application/jsonx"],
    ],
)
def test_any_other_content_type_is_415_with_its_exact_body(standin, headers):
    """W §1.2: other POST -> 415 text/plain; charset=utf-8 with the documented body."""
    reply = standin().send(call_body(PAUSE, [1]), *headers)
    assert reply.status_line == b"HTTP/1.1 415 Unsupported Media Type"
    assert reply.header_names == [b"content-type", b"content-length", b"date"]
    assert reply.header(b"content-type") == b"text/plain; charset=utf-8"
    assert reply.body == (
        b"Supplied content type is not allowed. Content-Type: application/json is required\n"
    )


def test_a_missing_content_type_is_415_and_runs_nothing(standin):
    """W §1.2: missing header -> 415; the pause inside is not executed."""
    worker = standin()
    connection = worker.raw()
    body = call_body(PAUSE, [1])
    connection.send(f"POST / HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    assert connection.reply().status_line == b"HTTP/1.1 415 Unsupported Media Type"
    # the body was all there, so hyper drained it: the connection stays usable
    connection.send(post(call_body(PAUSE, [1])))
    assert connection.reply().json()["result"] is True  # the first pause never ran


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "post"])
def test_other_http_methods_are_405(standin, method):
    """W §1.2: anything but POST/OPTIONS -> 405 with its body (method names are case-sensitive)."""
    connection = standin().raw()
    connection.send(f"{method} /any/path HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    reply = connection.reply()
    assert reply.status_line == b"HTTP/1.1 405 Method Not Allowed"
    assert reply.header(b"content-type") == b"text/plain; charset=utf-8"
    assert reply.body == b"Used HTTP Method is not allowed. POST or OPTIONS is required\n"
    assert connection.quiet()  # kept alive


def test_head_gets_the_405_head_without_its_body(standin):
    """source: hyper writes the body's content-length on a HEAD reply but no body."""
    connection = standin().raw()
    connection.send(b"HEAD / HTTP/1.1\r\n\r\n")
    reply = connection.reply(head_only=True)
    assert reply.status_line == b"HTTP/1.1 405 Method Not Allowed"
    assert reply.header(b"content-length") == b"61"
    assert connection.quiet()  # nothing follows the head


def test_options_is_200_empty_with_allow_and_accept(standin):
    """W §1.2: OPTIONS -> 200, empty body, `allow: OPTIONS, POST`, `accept: application/json`."""
    connection = standin().raw()
    connection.send(b"OPTIONS / HTTP/1.1\r\n\r\n")
    reply = connection.reply()
    pattern = (
        rb"HTTP/1\.1 200 OK\r\ncontent-type: application/json; charset=utf-8\r\n"
        rb"allow: OPTIONS, POST\r\naccept: application/json\r\ncontent-length: 0\r\n" + DATE
    )
    assert re.fullmatch(pattern, reply.head), reply.head
    assert reply.body == b""


def test_a_body_past_5_mib_is_413_and_exactly_5_mib_is_read(standin):
    """W §1.1/§1.2: max_request_body_size 5 MiB; > 5 MiB -> 413 with its body (no newline)."""
    worker = standin()
    request = call_body(PAUSE, [1])
    exact = request + b" " * (5 * 1024 * 1024 - len(request))
    assert worker.send(exact).json()["result"] is True
    connection = worker.raw()
    connection.send(post(exact + b" "))
    reply = connection.reply()
    assert reply.status_line == b"HTTP/1.1 413 Payload Too Large"
    assert reply.header(b"content-type") == b"text/plain; charset=utf-8"
    assert reply.body == b"request body size exceeds allowed maximum"
    assert connection.closed()


def test_invalid_utf8_is_400_naming_the_byte(standin):
    """W §1.2: invalid UTF-8 -> 400 `utf-8 encoding error at byte N in request body`."""
    reply = standin().send(b'{"a":"\xff"}')
    assert reply.status_line == b"HTTP/1.1 400 Bad Request"
    assert reply.header(b"content-type") == b"text/plain; charset=utf-8"
    assert reply.body == b"utf-8 encoding error at byte 6 in request body"


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
        b"POST / HTTP/2.0\r\n\r\n",
        b"POST /\r\n\r\n",
        b"POST / HTTP/1.1\r\nno colon here\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: ten\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
    ],
)
def test_a_bad_request_line_or_header_is_a_bare_400_then_close(standin, request_bytes):
    """W §1.2: bare `HTTP/1.1 400 Bad Request` + `content-length: 0` (source: and date),
    then the connection is closed."""
    connection = standin().raw()
    connection.send(request_bytes)
    reply = connection.reply()
    assert re.fullmatch(rb"HTTP/1\.1 400 Bad Request\r\ncontent-length: 0\r\n" + DATE, reply.head)
    assert connection.closed()


def test_too_many_headers_is_431(standin):
    """source: hyper's MAX_HEADERS is 100 (TooManyHeaders -> 431)."""
    connection = standin().raw()
    headers = "".join(f"X-{n}: {n}\r\n" for n in range(101))
    connection.send(f"POST / HTTP/1.1\r\n{headers}\r\n".encode())
    assert connection.reply().status_line == b"HTTP/1.1 431 Request Header Fields Too Large"
    assert connection.closed()


@pytest.mark.parametrize(
    ("tag", "status"), [("v0.3.1", b"400 Bad Request"), ("v0.9.0", b"414 URI Too Long")]
)
def test_a_uri_past_65534_bytes_depends_on_the_hyper_release(standin, tag, status):
    """source: hyper >= 0.14.16 answers 414 (before: the URI parse error, 400)."""
    connection = standin(tag).raw()
    connection.send(b"POST /" + b"a" * 65534 + b" HTTP/1.1\r\n\r\n")
    assert connection.reply().status_line == b"HTTP/1.1 " + status


def test_host_is_not_checked_and_may_be_missing(standin):
    """W §1.2 Host: not validated; no Host header is fine (DNS rebinding is possible)."""
    worker = standin()
    assert worker.send(call_body(PAUSE, [1]), "Host: evil.example").json()["result"] is True
    connection = worker.raw()
    body = call_body(PAUSE, [1])
    head = (
        f"POST / HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    connection.send(head.encode() + body)
    assert connection.reply().json()["result"] is False  # still queued from the first


def test_keep_alive_has_no_idle_timeout(standin):
    """W §1.2 keep-alive: on, no idle timeout (h1_header_read_timeout None)."""
    connection = standin().raw()
    connection.send(post(call_body(VERSION, ident=1)))
    assert connection.reply().json()["id"] == 1
    assert connection.quiet(2.5)  # idle for a while: nothing sent, not closed
    connection.send(post(call_body(VERSION, ident=2)))
    assert connection.reply().json()["id"] == 2


def test_pipelined_requests_are_answered_in_order(standin):
    """W §1.2: pipelining works."""
    connection = standin().raw()
    connection.send(b"".join(post(call_body(VERSION, ident=n)) for n in (1, 2, 3)))
    assert [connection.reply().json()["id"] for _ in range(3)] == [1, 2, 3]


def test_connection_close_is_echoed_before_content_length_then_closed(standin):
    """W §1.2: `Connection: close` (exact value) -> `connection: close` echoed, socket closed."""
    connection = standin().raw()
    connection.send(post(call_body(VERSION), "Connection: close"))
    reply = connection.reply()
    assert reply.header_names == [b"content-type", b"connection", b"content-length", b"date"]
    assert reply.header(b"connection") == b"close"
    assert connection.closed()


def test_connection_close_in_another_case_closes_without_the_header(standin):
    """W §1.2 "(exact value)"; source: hyper still closes on any case of the token."""
    connection = standin().raw()
    connection.send(post(call_body(VERSION), "Connection: Close"))
    assert connection.reply().header(b"connection") is None
    assert connection.closed()


def test_http_1_0_is_answered_as_1_0_and_closed(standin):
    """W §1.2 HTTP/1.0: `HTTP/1.0 200 OK`, closed after the reply."""
    connection = standin().raw()
    connection.send(post(call_body(VERSION), version="1.0"))
    reply = connection.reply()
    assert reply.status_line == b"HTTP/1.0 200 OK"
    assert reply.header(b"connection") is None
    assert connection.closed()


def test_http_1_0_keep_alive_adds_the_header_and_stays_open(standin):
    """W §1.2 HTTP/1.0 with `Connection: keep-alive`: `connection: keep-alive` is added."""
    connection = standin().raw()
    for ident in (1, 2):
        connection.send(
            post(call_body(VERSION, ident=ident), "Connection: keep-alive", version="1.0")
        )
        reply = connection.reply()
        assert reply.status_line == b"HTTP/1.0 200 OK" and reply.json()["id"] == ident
        names = [b"content-type", b"connection", b"content-length", b"date"]
        assert reply.header_names == names and reply.header(b"connection") == b"keep-alive"


def test_any_origin_is_reflected(standin):
    """W §1.2 CORS: cors_domains None -> the Origin reflected with vary and the methods,
    requested headers echoed (source: in this order, after content-type)."""
    reply = standin().send(
        call_body(VERSION),
        "Origin: HTTPS://Evil.Example:8443/page",
        "Access-Control-Request-Headers: content-type, x-token",
    )
    assert reply.header_names == [
        b"content-type",
        b"vary",
        b"access-control-allow-methods",
        b"access-control-allow-origin",
        b"access-control-allow-headers",
        b"content-length",
        b"date",
    ]
    assert reply.header(b"vary") == b"origin"
    assert reply.header(b"access-control-allow-methods") == b"OPTIONS, POST"
    assert reply.header(b"access-control-allow-origin") == b"https://evil.example:8443"
    assert reply.header(b"access-control-allow-headers") == b"content-type, x-token"


def test_a_preflight_gets_allow_and_cors(standin):
    """W §1.2: OPTIONS allow/accept come before the CORS headers (set_response_headers)."""
    connection = standin().raw()
    connection.send(b"OPTIONS / HTTP/1.1\r\nOrigin: null\r\n\r\n")
    reply = connection.reply()
    assert reply.header_names[:6] == [
        b"content-type",
        b"allow",
        b"accept",
        b"vary",
        b"access-control-allow-methods",
        b"access-control-allow-origin",
    ]
    assert reply.header(b"access-control-allow-origin") == b"null"


def test_the_servers_own_origin_gets_no_cors_headers(standin):
    """W §1.2 CORS: "any Origin other than the server itself"."""
    reply = standin().send(call_body(VERSION), "Origin: http://127.0.0.1:17890")
    assert reply.header(b"vary") is None and reply.header(b"access-control-allow-origin") is None


def test_a_chunked_body_is_read(standin):
    """W §1.2 body: Content-Length or chunked."""
    connection = standin().raw()
    body = call_body(PAUSE, [1])
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:5], body[5:]))
    head = (
        b"POST / HTTP/1.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    connection.send(head + chunks + b"0\r\n\r\n")
    assert connection.reply().json()["result"] is True


CHUNKED_HEAD = (
    b"POST / HTTP/1.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
)


def test_a_malformed_chunk_closes_the_connection_without_a_reply(standin):
    """source: a body decode error reaches jsonrpc as a hyper error: no reply, closed."""
    connection = standin().raw()
    connection.send(CHUNKED_HEAD + b"zz\r\n{}\r\n0\r\n\r\n")
    assert connection.closed()


def test_a_chunked_body_past_5_mib_is_413(standin):
    """W §1.2: > 5 MiB -> 413, however the body is framed (checked as chunks arrive)."""
    connection = standin().raw()
    size = 5 * 1024 * 1024 + 1
    connection.send(CHUNKED_HEAD + b"%x\r\n" % size + b" " * size + b"\r\n0\r\n\r\n")
    assert connection.reply().status_line == b"HTTP/1.1 413 Payload Too Large"


@pytest.mark.parametrize(("tag", "value", "continues"), [
    ("v0.9.0", "100-continue", True),
    ("v0.9.0", "100-Continue", True),
    ("v0.3.1", "100-continue", True),
    ("v0.3.1", "100-Continue", False),
])  # fmt: skip
def test_expect_100_continue_is_answered_by_hyper(standin, tag, value, continues):
    """W §1.2: `Expect: 100-continue` answered by hyper (source: compared case-insensitively
    from hyper 0.14.16; v0.1-v0.5.2 link 0.14.11/.12)."""
    connection = standin(tag).raw()
    body = call_body(VERSION)
    connection.send(post(body, f"Expect: {value}")[: -len(body)])
    if continues:
        assert connection.sock.recv(64) == b"HTTP/1.1 100 Continue\r\n\r\n"
    else:
        assert connection.quiet()
    connection.send(body)
    assert connection.reply().status_line == b"HTTP/1.1 200 OK"


def test_a_non_utf8_location_drops_the_connection_without_a_reply(standin):
    """W §1.3: a non-UTF-8 `location` panics in `.expect(..)`: no reply, connection dropped."""
    worker = standin(threads=[ThreadSpec("/mnt/caf\udce9"), ThreadSpec("/mnt/ok")])
    connection = worker.raw()
    connection.send(post(call_body(LIST)))
    assert connection.closed()
    assert worker.call(PAUSE, [0]) is True  # the worker itself goes on


# -- W §1.3 JSON-RPC layer -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "reply"),
    [
        (b"{", '{"jsonrpc":"2.0","error":{"code":-32700,"message":"Parse error"},"id":null}'),
        (b"", '{"jsonrpc":"2.0","error":{"code":-32700,"message":"Parse error"},"id":null}'),
        (
            b'{"jsonrpc":"2.0","id":1.5,"method":"VenusWorker.WorkerList"}',
            '{"jsonrpc":"2.0","error":{"code":-32700,"message":"Parse error"},"id":null}',
        ),
        (
            b'{"jsonrpc":"2.0","id":-1,"method":"VenusWorker.WorkerList"}',
            '{"jsonrpc":"2.0","error":{"code":-32700,"message":"Parse error"},"id":null}',
        ),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"VenusWorker.WorkerList","extra":0}',
            '{"jsonrpc":"2.0","error":{"code":-32600,"message":"Invalid request"},"id":1}',
        ),
        (
            b'{"jsonrpc":"1.0","id":"x","method":"VenusWorker.WorkerList"}',
            '{"jsonrpc":"2.0","error":{"code":-32600,"message":"Invalid request"},"id":"x"}',
        ),
        (
            b'{"jsonrpc":"2.0","id":1,"method":5}',
            '{"jsonrpc":"2.0","error":{"code":-32600,"message":"Invalid request"},"id":1}',
        ),
        (
            b'{"id":1,"method":"VenusWorker.WorkerList"}',
            '{"error":{"code":-32600,"message":"Unsupported JSON-RPC protocol version"},"id":1}',
        ),
        (
            b'{"jsonrpc":"2.0","id":null,"method":"VenusWorker.Nope"}',
            '{"jsonrpc":"2.0","error":{"code":-32601,"message":"Method not found"},"id":null}',
        ),
        (
            b'{"jsonrpc":"2.0","method":"VenusWorker.WorkerVersion","params":[],"id":18446744073709551615}',
            '{"jsonrpc":"2.0","result":"v0.9.0-git.9f87e20","id":18446744073709551615}',
        ),
    ],
)
def test_error_objects_are_exact(standin, body, reply):
    """W §1.3 errors: codes, messages, `id` kept or null, field order jsonrpc, error, id;
    no `jsonrpc` key when it was missing; id is u64, string or null."""
    assert standin().send(body).body == reply.encode() + b"\n"


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b'{"jsonrpc":"2.0","method":"VenusWorker.WorkerPause","params":[1]}',
        b'[{"jsonrpc":"2.0","method":"VenusWorker.WorkerPause","params":[1]},'
        b'{"method":"VenusWorker.WorkerPause","params":[2]}]',
    ],
)
def test_notifications_and_empty_batches_get_an_empty_200_and_run_nothing(standin, body):
    """W §1.3: `[]` or a batch of notifications -> empty body; a notification runs nothing."""
    worker = standin()
    reply = worker.send(body)
    assert reply.status_line == b"HTTP/1.1 200 OK"
    assert reply.header(b"content-length") == b"0" and reply.body == b""
    assert worker.call(PAUSE, [1]) is True  # no pause had been queued


def test_a_batch_answers_calls_in_order_and_leaves_out_notifications(standin):
    """W §1.3 batch: supported; only calls get an output."""
    body = (
        b'[{"jsonrpc":"2.0","id":"a","method":"VenusWorker.WorkerPause","params":[1]},'
        b'{"jsonrpc":"2.0","method":"VenusWorker.WorkerPause","params":[1]},'
        b'{"jsonrpc":"2.0","id":"b","method":"VenusWorker.WorkerPause","params":[1]},'
        b'{"jsonrpc":"2.0","id":"c","method":"VenusWorker.Nope"}]'
    )
    assert standin().send(body).body == (
        b'[{"jsonrpc":"2.0","result":true,"id":"a"},{"jsonrpc":"2.0","result":false,"id":"b"},'
        b'{"jsonrpc":"2.0","error":{"code":-32601,"message":"Method not found"},"id":"c"}]\n'
    )


@pytest.mark.parametrize(
    ("body", "reply"),
    [
        # a bad member makes the whole batch unparsable (untagged Request)
        (b'[{"jsonrpc":"2.0","id":1,"method":"VenusWorker.WorkerList"},1]', "parse"),
        # serde structs also read a sequence: these four fields are one call
        (b'["2.0","VenusWorker.WorkerPause",[1],7]', '{"jsonrpc":"2.0","result":true,"id":7}'),
        # ... and two or three of them a notification
        (b'["2.0","VenusWorker.WorkerPause"]', ""),
        # a duplicate member is no MethodCall, so it is Call::Invalid (id kept)
        (
            b'{"jsonrpc":"2.0","id":3,"method":"VenusWorker.WorkerList","method":"x"}',
            '{"jsonrpc":"2.0","error":{"code":-32600,"message":"Invalid request"},"id":3}',
        ),
        # NaN, lone surrogates, 128 levels: not JSON to serde_json
        (b'{"jsonrpc":"2.0","id":1,"method":"VenusWorker.WorkerList","params":[NaN]}', "parse"),
        (b'{"jsonrpc":"2.0","id":1,"method":"\\ud800"}', "parse"),
        (DEEP_REQUEST, "parse"),
    ],
)  # fmt: skip
def test_request_parsing_follows_the_untagged_serde_enums(standin, body, reply):
    """source: jsonrpc-core 18 `Request`/`Call` are untagged serde enums parsed by serde_json."""
    expected = {
        "parse": '{"jsonrpc":"2.0","error":{"code":-32700,"message":"Parse error"},"id":null}'
    }
    text = expected.get(reply, reply)
    assert standin().send(body).body == (text.encode() + b"\n" if text else b"")


def test_126_levels_of_nesting_still_parse(standin):
    """source: serde_json's recursion limit (128) counts the request's own object."""
    nested = b"[" * 126 + b"]" * 126
    body = b'{"jsonrpc":"2.0","id":1,"method":"VenusWorker.WorkerList","params":' + nested + b"}"
    error = json.loads(standin().send(body).body)["error"]
    assert error["message"] == "Invalid parameters: No parameters were expected"


@pytest.mark.parametrize(
    ("method", "params", "error"),
    [
        (LIST, [1], [f"{INVALID}No parameters were expected", "Array([Number(1)])"]),
        (LIST, {}, [f"{INVALID}No parameters were expected", "Map({})"]),
        (PAUSE, None, ["Invalid params: invalid type: null, expected a tuple of size 1."]),
        (PAUSE, {}, ["Invalid params: invalid type: map, expected a tuple of size 1."]),
        (PAUSE, [], ["Invalid params: invalid length 0, expected a tuple of size 1."]),
        (PAUSE, [0, 1], ["Invalid params: invalid length 2, expected fewer elements in array."]),
        (PAUSE, [-1], ["Invalid params: invalid value: integer `-1`, expected usize."]),
        (PAUSE, ["0"], ['Invalid params: invalid type: string "0", expected usize.']),
        (PAUSE, [1.5], ["Invalid params: invalid type: floating point `1.5`, expected usize."]),
        (PAUSE, [9], ["worker #9 not found"]),
        (RESUME, None, ["`params` should have at least 1 argument(s)"]),
        (RESUME, [], ["`params` should have at least 1 argument(s)"]),
        (RESUME, {}, ["`params` should be an array"]),
        (RESUME, [0, None, 1], [f"{INVALID}Expected from 1 to 2 parameters.", '"Got: 3"']),
        (RESUME, [0, 1], ["Invalid params: invalid type: integer `1`, expected a string."]),
        (RESUME, [9, "NoSuchState"], ["worker #9 not found"]),
    ],
)  # fmt: skip
@pytest.mark.parametrize("tag", ["v0.5.0", "v0.9.0"])
def test_params_errors_are_exact(standin, tag, method, params, error):
    """W §1.3 Params: jsonrpc-derive 18's messages and `data`; `worker #N not found` is
    checked after the params and before the state."""
    expected = {"code": -32602, "message": error[0]}
    if len(error) > 1:
        expected["data"] = error[1]
    reply = standin(tag).send(call_body(method, params)).body
    assert (
        reply
        == b'{"jsonrpc":"2.0","error":'
        + json.dumps(expected, separators=(",", ":")).encode()
        + b',"id":1}\n'
    )


@pytest.mark.parametrize("params", [None, "null", "[]"])
@pytest.mark.parametrize("method", [LIST, VERSION])
def test_no_arg_methods_take_params_absent_null_or_empty(standin, method, params):
    """W §1.3 Params: no-arg methods (List, Version): `params` absent, `null` or `[]` OK."""
    member = "" if params is None else f',"params":{params}'
    body = f'{{"jsonrpc":"2.0","id":1,"method":"{method}"{member}}}'.encode()
    assert "result" in standin().send(body).json()


@pytest.mark.parametrize(("tag", "data"), [
    ("v0.5.0", 'Array([Array([Number(1)]), Object({"a": Bool(true)}), String("x")])'),
    ("v0.9.0", 'Array([Array [Number(1)], Object {"a": Bool(true)}, String("x")])'),
])  # fmt: skip
def test_the_data_of_unexpected_params_is_rust_debug_of_that_serde_json(standin, tag, data):
    """source: `data` is `format!("{:?}", Params)`; serde_json 1.0.64 (v0.1-v0.5.2) and
    >= 1.0.84 (v0.5.3+) print nested values differently."""
    error = standin(tag).call(LIST, [[1], {"a": True}, "x"])
    assert error["data"] == data


@pytest.mark.parametrize("tag", TAG_ORDER)
def test_each_tag_registers_its_methods(standin, tag):
    """W §1.4 methods per line: SetEnv/RemoveEnv from v0.4.0 (source: not in v0.4.0-nv15),
    WorkerVersion from v0.7.0; the namespace is VenusWorker. in every version."""
    worker = standin(tag)
    release = release_of(tag)
    for name, present in (
        ("WorkerSetEnv", release.env_methods),
        ("WorkerRemoveEnv", release.env_methods),
        ("WorkerVersion", release.version_method),
    ):
        answer = worker.call(f"VenusWorker.{name}", ["A", "1"] if name == "WorkerSetEnv" else None)
        missing = answer == {"code": -32601, "message": "Method not found"}
        assert missing is not present, (tag, name, answer)
    after = TAG_ORDER.index(tag) >= TAG_ORDER.index("v0.4.0")
    assert release.env_methods is after


@pytest.mark.parametrize(("tag", "version"), [
    ("v0.7.0", "v0.7.0-git.ab88eb1"),
    ("v0.7.4", "v0.7.3-git.fb1d960"),  # Cargo.toml still says 0.7.3
    ("v0.9.0", "v0.9.0-git.9f87e20"),
    ("v0.10.0", "v0.10.0-rc1-git.9b51709"),
    ("v0.12.3", "v0.12.0-git.a400898"),
    ("v0.13.0", "v0.13.0-git.f3756a2"),
])  # fmt: skip
def test_worker_version_is_the_cargo_version_and_git_commit(standin, tag, version):
    """W §1.3 Results: `v<CARGO_PKG_VERSION>-<GIT_COMMIT>`, e.g. v0.9.0-git.9f87e20
    (source: the Cargo version lags behind some tags)."""
    assert standin(tag).call(VERSION) == version


def test_set_env_and_remove_env_answer_null_or_invalid_params(standin):
    """W §1.3: SetEnv/RemoveEnv -> null; source: a bad name is invalid params."""
    worker = standin("v0.8.0")
    assert worker.call("VenusWorker.WorkerSetEnv", ["RUST_LOG", "debug"]) is None
    assert worker.call("VenusWorker.WorkerRemoveEnv", ["RUST_LOG"]) is None
    assert worker.call("VenusWorker.WorkerSetEnv", ["A=B", "1"]) == {
        "code": -32602,
        "message": "invalid environment variable name or value",
    }
    assert worker.call("VenusWorker.WorkerRemoveEnv", [""])["message"] == (
        "invalid environment variable name"
    )
    assert worker.call("VenusWorker.WorkerSetEnv", ["A"])["message"] == (
        "Invalid params: invalid length 1, expected a tuple of size 2."
    )


# -- W §1.4 WorkerInfo per release line ------------------------------------------------------------


def three_threads() -> list[ThreadSpec]:
    return [
        ThreadSpec("/mnt/store1/", "sealer", "C1Done", 2, "paused", 17.203941, C2_ERROR),
        ThreadSpec("/mnt//store2", "sealer", "TicketAssigned", 3, "run", 100),
        ThreadSpec("/mnt/store3", "sealer", None, None, "between", 5),
    ]


WORKER_INFO = {
    "v0.1.1": [
        '{"index":0,"last_error":"@ERROR@","location":"/mnt/store1","paused":true,'
        '"paused_elapsed":"17.203941s","sector_id":"m-1000-s-2","state":"C1Done"}',
        '{"index":1,"last_error":null,"location":"/mnt/store2","paused":false,'
        '"paused_elapsed":null,"sector_id":"m-1000-s-3","state":"TicketAssigned"}',
        '{"index":2,"last_error":null,"location":"/mnt/store3","paused":false,'
        '"paused_elapsed":null,"sector_id":null,"state":"Empty"}',
    ],
    "v0.2.0": [
        '{"index":0,"last_error":"@ERROR@","location":"/mnt/store1","paused":true,'
        '"paused_elapsed":17,"sector_id":{"Miner":1000,"Number":2},"state":"C1Done"}',
        '{"index":1,"last_error":null,"location":"/mnt/store2","paused":false,'
        '"paused_elapsed":null,"sector_id":{"Miner":1000,"Number":3},"state":"TicketAssigned"}',
        '{"index":2,"last_error":null,"location":"/mnt/store3","paused":false,'
        '"paused_elapsed":null,"sector_id":null,"state":"Empty"}',
    ],
    "v0.5.0": [
        '{"index":0,"last_error":"@ERROR@","location":"/mnt/store1","paused":true,"paused_elapsed":17,'
        '"plan":"sealer","sector_id":{"Miner":1000,"Number":2},"state":"C1Done"}',
        '{"index":1,"last_error":null,"location":"/mnt/store2","paused":false,"paused_elapsed":null,'
        '"plan":"sealer","sector_id":{"Miner":1000,"Number":3},"state":"TicketAssigned"}',
        '{"index":2,"last_error":null,"location":"/mnt/store3","paused":false,"paused_elapsed":null,'
        '"plan":"sealer","sector_id":null,"state":"Empty"}',
    ],
    "v0.8.0": [
        '{"index":0,"job_id":"s-t01000-2","last_error":"@ERROR@","location":"/mnt/store1","paused":true,'
        '"paused_elapsed":17,"plan":"sealer","state":"C1Done"}',
        '{"index":1,"job_id":"s-t01000-3","last_error":null,"location":"/mnt/store2","paused":false,'
        '"paused_elapsed":null,"plan":"sealer","state":"TicketAssigned"}',
        '{"index":2,"job_id":null,"last_error":null,"location":"/mnt/store3","paused":false,'
        '"paused_elapsed":null,"plan":"sealer","state":""}',
    ],
    "v0.9.0": [
        '{"index":0,"job_id":"s-t01000-2","job_stage":"C2","job_state":"C1Done","last_error":"@ERROR@",'
        '"location":"/mnt/store1","plan":"sealer","thread_state":{"elapsed":17,"state":"Paused"}}',
        '{"index":1,"job_id":"s-t01000-3","job_stage":"PC1","job_state":"TicketAssigned",'
        '"last_error":null,"location":"/mnt/store2","plan":"sealer",'
        '"thread_state":{"elapsed":100,"proc":"builtin PC1","state":"Running"}}',
        '{"index":2,"job_id":null,"job_stage":null,"job_state":"","last_error":null,'
        '"location":"/mnt/store3","plan":"sealer","thread_state":{"state":"Idle"}}',
    ],
}


@pytest.mark.parametrize("tag", list(WORKER_INFO))
def test_worker_info_of_each_release_line_is_exact(standin, tag):
    """W §1.4 WorkerInfo per line: sector_id "m-1000-s-2" (v0.1) / {"Miner","Number"}
    (v0.2-v0.7) / job_id "s-t01000-2" (v0.8+); paused_elapsed a Duration Debug string on
    v0.1, whole seconds after; plan from v0.5; state "Empty" (<= v0.7) or "" (v0.8) when
    idle; thread_state/job_state/job_stage from v0.9; Option fields always present as null;
    location canonical (D §6). source: keys sorted (serde_json without preserve_order)."""
    worker = standin(tag, three_threads(), fast(stage=1000))
    reply = worker.send(call_body(LIST)).body
    infos = ",".join(WORKER_INFO[tag]).replace('"@ERROR@"', json.dumps(C2_ERROR))
    expected = '{"jsonrpc":"2.0","result":[' + infos + '],"id":1}\n'
    assert reply.decode() == expected


def test_thread_state_forms_of_v0_9(standin):
    """W §1.4 thread_state: Idle, Paused{elapsed}, Running{elapsed, proc} with proc
    "builtin X", "ext(pid: N)" or null (C1), Waiting{elapsed} while waiting for a slot."""
    threads = [
        ThreadSpec("/a", state="SeedAssigned", sector=5),  # C1: a stage token, no processor
        ThreadSpec("/b", state="PC1Done", sector=6, ext_pid=4242),
        ThreadSpec("/c", state="C1Done", sector=7),
    ]
    worker = standin("v0.9.0", threads, fast(slot_wait=3))
    states = [t["thread_state"] for t in worker.threads()]
    assert states == [
        {"elapsed": 0, "proc": None, "state": "Running"},
        {"elapsed": 0, "state": "Waiting"},
        {"elapsed": 0, "state": "Waiting"},
    ]
    worker.advance(5)
    states = [t["thread_state"] for t in worker.threads()]
    assert states[1:] == [
        {"elapsed": 2, "proc": "ext(pid: 4242)", "state": "Running"},
        {"elapsed": 2, "proc": "builtin C2", "state": "Running"},
    ]


def test_a_thread_waiting_for_a_slot_does_not_take_the_pause(standin):
    """W §1.5: not taken while `Waiting` for a slot; the stage then runs and the pause
    lands at its end."""
    worker = standin("v0.9.0", [pc1()], fast(slot_wait=5, stages={"PC1": 10}))
    assert worker.call(PAUSE, [0]) is True
    assert worker.thread(0)["thread_state"] == {"elapsed": 0, "state": "Waiting"}
    worker.advance(14.9)
    assert worker.thread(0)["thread_state"]["state"] == "Running"
    worker.advance(0.2)
    assert worker.thread(0)["thread_state"] == {"elapsed": 0, "state": "Paused"}


@pytest.mark.parametrize(("seconds", "text"), [
    (17.203941, "17.203941s"),
    (60, "60s"),
    (0.2039, "203.9ms"),
    (0.000941, "941µs"),
])  # fmt: skip
def test_v0_1_paused_elapsed_is_rust_duration_debug(standin, seconds, text):
    """W §1.4 v0.1.1-v0.1.2: `paused_elapsed: "17.203941s"` (Rust `Duration` Debug)."""
    spec = pc1(phase="paused", since=seconds)
    assert standin("v0.1.1", [spec], fast()).thread(0)["paused_elapsed"] == text


def test_job_stage_is_never_cleared_between_tasks(standin):
    """W §1.4: `job_stage` is not cleared between tasks: an idle thread shows job_state ""
    with a stale stage."""
    worker = standin("v0.9.0", [ThreadSpec("/a", state="Aborted", sector=9)], fast())
    thread = worker.thread(0)
    assert (thread["job_id"], thread["job_state"], thread["job_stage"]) == (None, "", "-")
    spec = ThreadSpec("/b", state="C1Done", sector=4, phase="paused")
    worker = standin("v0.9.0", [spec], fast())
    assert worker.call(RESUME, [0, "SnapEncoded"]) is True  # a foreign state: aborted at once
    thread = worker.thread(0)
    assert (thread["job_id"], thread["job_state"], thread["job_stage"]) == (None, "", "SnapProve")


def test_a_wdpost_thread_has_no_location(standin):
    """W §1.4 v0.8: location "-" without one; D §1.5: wdpost stages Generate, SubmitProof."""
    spec = ThreadSpec(None, "wdpost", "Allocated", 1)
    worker = standin("v0.9.0", [spec], fast(), wdpost_jobs=None)
    thread = worker.thread(0)
    assert (thread["location"], thread["plan"], thread["job_stage"]) == ("-", "wdpost", "Generate")
    assert thread["job_id"] == "00000000-0000-4000-8000-000000000001"
    assert thread["thread_state"]["proc"] == "builtin WindowPoSt"


@pytest.mark.parametrize("tag", ONE_TAG_PER_LINE)
def test_unknown_plans_and_states_of_a_release_are_refused_at_start(tag):
    """D §1 / W §1.4 state names and plans per line (the stand-in refuses a config that
    release could not have)."""
    release = release_of(tag)
    assert ("wdpost" in release.plans) is release.at_least("v0.8")
    assert ("snapup" in release.plans) is release.at_least("v0.2")
    assert ("SyntheticPoRepNeeded" in release.states) is release.at_least("v0.9")
    expected_count = {"v0.1": 20, "v0.2": 20, "v0.5": 24, "v0.8": 25, "v0.9": 26}[release.line]
    assert len(release.states) == expected_count
    with pytest.raises(ValueError):
        Worker(release, [ThreadSpec("/a", "niporep")], fast(), ManualClock())


# -- W §1.5 pause and resume -----------------------------------------------------------------------


def pc1(**overrides) -> ThreadSpec:
    values = {"location": "/a", "state": "TicketAssigned", "sector": 3}
    values.update(overrides)
    return ThreadSpec(**values)


@pytest.mark.parametrize("phase", ["run", "paused"])
def test_the_pause_token_is_bounded_one_whatever_the_thread_does(standin, phase):
    """W §1.5: a non-blocking send into bounded(1): true if queued, false only if one is
    already queued."""
    worker = standin("v0.9.0", [pc1(phase=phase)], fast())
    assert worker.call(PAUSE, [0]) is True
    assert worker.call(PAUSE, [0]) is False


@pytest.mark.parametrize("tag", ONE_TAG_PER_LINE)
def test_a_running_stage_is_paused_at_its_end_and_redone_on_resume(standin, tag):
    """W §1.5 / D §3: the token is not taken during a processor stage; the stage paused
    after has its result dropped (state unchanged) and reruns on resume."""
    worker = standin(tag, [pc1()], fast(stages={"PC1": 10}))
    assert worker.call(PAUSE, [0]) is True
    worker.advance(9.9)
    assert not _paused(worker.thread(0))
    worker.advance(0.2)
    thread = worker.thread(0)
    assert _paused(thread) and _state(thread) == "TicketAssigned"  # PC1's result dropped
    assert worker.call(RESUME, [0]) is True
    worker.advance(9.9)
    assert _state(worker.thread(0)) == "TicketAssigned"  # PC1 again, from the start
    worker.advance(0.2)
    assert _state(worker.thread(0)) == "PC1Done"


def test_a_thread_between_tasks_takes_the_pause_when_its_seal_interval_ends(standin):
    """W §1.5: not taken during the between-task seal_interval sleep; it stops the next
    task before allocation (job_state "" and no job)."""
    spec = ThreadSpec("/a", phase="between", since=5, job_stage="-")
    worker = standin("v0.9.0", [spec], fast(seal_interval=30), sectors=None)
    assert worker.call(PAUSE, [0]) is True
    worker.advance(24.9)
    assert worker.thread(0)["thread_state"] == {"state": "Idle"}
    worker.advance(0.2)
    thread = worker.thread(0)
    assert thread["thread_state"] == {"elapsed": 0, "state": "Paused"}
    assert (thread["job_id"], thread["job_state"]) == (None, "")


@pytest.mark.parametrize(
    ("tag", "at_once"), [("v0.1.1", False), ("v0.2.0", True), ("v0.9.0", True)]
)
def test_a_thread_waiting_for_work_takes_the_pause_at_once_from_v0_2(standin, tag, at_once):
    """W §1.5: taken in interruptible waits (Idle/Retry); source: v0.1 sleeps its retry."""
    spec = ThreadSpec("/a", state="Empty", since=10)
    worker = standin(tag, [spec], fast(recover_interval=60))
    assert worker.call(PAUSE, [0]) is True
    assert _paused(worker.thread(0)) is at_once
    worker.advance(50.1)  # the retry sleep ends, the next step takes it
    assert _paused(worker.thread(0))


def test_a_chain_poll_takes_the_pause_at_once(standin):
    """D §3: wait_or_interrupted() in chain polling; the state stays for the next resume."""
    worker = standin("v0.8.0", [pc1(state="PCSubmitted")], fast())
    assert worker.call(PAUSE, [0]) is True
    thread = worker.thread(0)
    assert thread["paused"] is True and thread["state"] == "PCSubmitted"


def test_resume_is_a_rendezvous_only_a_paused_thread_takes(standin):
    """W §1.5: `true` only if the thread is blocked waiting for resume; on receipt the
    thread is Idle (then runs) and last_error is cleared."""
    worker = standin(
        "v0.9.0", [pc1(), pc1(location="/b", phase="paused", last_error=C2_ERROR)], fast()
    )
    assert worker.call(RESUME, [0]) is False
    assert worker.call(RESUME, [1]) is True
    thread = worker.thread(1)
    assert thread["last_error"] is None
    assert thread["thread_state"]["state"] == "Running"
    assert worker.call(RESUME, [1]) is False


@pytest.mark.parametrize("tag", ["v0.5.0", "v0.9.0"])
def test_a_stale_token_repauses_after_the_next_resume_and_drops_its_state(standin, tag):
    """W §1.5: a token queued on an already-paused thread re-pauses it right after the next
    resume and drops that resume's state."""
    worker = standin(tag, [pc1(state="C1Done", phase="paused", since=40)], fast(step=5))
    assert worker.call(PAUSE, [0]) is True  # queued on a paused thread
    assert worker.call(RESUME, [0, "TreeDBuilt"]) is True
    thread = worker.thread(0)
    assert _paused(thread) and _state(thread) == "C1Done"  # paused again, state dropped
    assert _elapsed(thread) == 0
    assert worker.call(RESUME, [0, "TreeDBuilt"]) is True
    assert not _paused(worker.thread(0)) and _state(worker.thread(0)) == "TreeDBuilt"


def test_a_token_on_a_stage_that_then_fails_repauses_after_the_resume(standin):
    """W §1.5: a token queued on a running stage that then fails re-pauses the thread
    right after the next resume."""
    spec = pc1(state="C1Done", fail={"C2": C2_ERROR})
    worker = standin("v0.9.0", [spec], fast(stages={"C2": 10}))
    assert worker.call(PAUSE, [0]) is True
    worker.advance(10.1)
    thread = worker.thread(0)
    assert _paused(thread) and thread["last_error"] == C2_ERROR  # the failure paused it
    assert worker.call(RESUME, [0]) is True
    thread = worker.thread(0)
    assert _paused(thread) and thread["last_error"] is None  # the stale token


def test_set_state_bypasses_the_plans_table(standin):
    """W §1.5: a known state bypasses the transition table (Event::SetState); D §3:
    TreeDBuilt redoes PC1 with a fresh ticket."""
    spec = pc1(state="C1Done", phase="paused")
    worker = standin("v0.9.0", [spec], fast(step=5, stages={"PC1": 100}))
    assert worker.call(RESUME, [0, "TreeDBuilt"]) is True
    assert worker.thread(0)["job_state"] == "TreeDBuilt"
    worker.advance(5)
    thread = worker.thread(0)
    assert (thread["job_state"], thread["job_stage"]) == ("TicketAssigned", "PC1")
    assert thread["job_id"] == "s-t01000-3"  # the same sector


@pytest.mark.parametrize("tag", ["v0.1.1", "v0.2.0", "v0.7.4"])
def test_an_unknown_state_is_invalid_params_up_to_v0_7(standin, tag):
    """W §1.5 v<=0.7: `set_to.parse::<State>()` in the RPC -> -32602 "invalid state X",
    even when the thread is not paused."""
    worker = standin(tag, [pc1(), pc1(location="/b", phase="paused")], fast())
    for index in (0, 1):
        error = worker.call(RESUME, [index, "C1done"])
        assert error == {"code": -32602, "message": "invalid state C1done"}
    assert worker.thread(1)["paused"] is True


@pytest.mark.parametrize("tag", ["v0.8.0", "v0.9.0", "v0.13.0"])
def test_an_unknown_state_is_logged_and_ignored_from_v0_8(standin, tag):
    """W §1.5 v0.8+: the name goes to the planner; unknown = logged, resumed from the
    persisted state, the RPC said true."""
    worker = standin(tag, [pc1(state="C1Done", phase="paused")], fast())
    assert worker.call(RESUME, [0, "C1done"]) is True
    thread = worker.thread(0)
    assert not _paused(thread) and _state(thread) == "C1Done"
    assert "#0: unknown state: C1done" in worker.worker.lines


def test_a_state_of_another_plan_aborts_the_task(standin):
    """W §1.5: a state foreign to the plan -> exec aborts "unexpected state"; D §2: abort
    is not a pause: the task is dropped and the thread moves on."""
    worker = standin("v0.8.0", [pc1(state="C1Done", phase="paused", last_error=C2_ERROR)], fast())
    assert worker.call(RESUME, [0, "SnapEncoded"]) is True
    thread = worker.thread(0)
    assert thread["paused"] is False and thread["last_error"] is None
    assert (thread["job_id"], thread["state"]) == (None, "")
    assert "#0: abort: unexpected state SnapEncoded in sealer planner" in worker.worker.lines


@pytest.mark.parametrize("target", ["Aborted", "Finished"])
def test_aborted_drops_and_finished_finalizes_the_task(standin, target):
    """W §1.5: `Aborted` drops the task; `Finished` finalizes it."""
    worker = standin("v0.9.0", [pc1(state="C1Done", phase="paused")], fast())
    assert worker.call(RESUME, [0, target]) is True
    thread = worker.thread(0)
    assert (thread["job_id"], thread["job_state"], thread["thread_state"]) == (
        None,
        "",
        {"state": "Idle"},
    )


@pytest.mark.parametrize(("tag", "error"), [
    ("v0.7.4", "critical: " + UNCHANGED),
    ("v0.8.0", "critical: event apply\n\nCaused by:\n    " + UNCHANGED),
])  # fmt: skip
def test_resuming_into_the_same_state_is_critical_and_pauses_again(standin, tag, error):
    """W §1.5: the current state -> `critical: event apply … state unchanged, may enter an
    infinite loop` -> paused again (source: no `event apply` context up to v0.7)."""
    worker = standin(tag, [pc1(state="C1Done", phase="paused")], fast())
    assert worker.call(RESUME, [0, "C1Done"]) is True
    thread = worker.thread(0)
    assert thread["paused"] is True and thread["last_error"] == error


def test_a_wdpost_resume_starts_its_job_again(standin):
    """D §1.5: the wdpost job is in memory, not persisted: a resume starts at Empty."""
    spec = ThreadSpec(None, "wdpost", "Allocated", 1, phase="paused")
    worker = standin("v0.9.0", [spec], fast(), wdpost_jobs=0)
    assert worker.call(RESUME, [0]) is True
    thread = worker.thread(0)
    assert (thread["job_state"], thread["job_id"], thread["thread_state"]) == (
        "Empty",
        None,
        {"state": "Idle"},
    )


def duplicated() -> list[ThreadSpec]:
    return [
        ThreadSpec("/mnt/a", state="C1Done", sector=1),
        ThreadSpec("/mnt/b", state="C1Done", sector=2),
        ThreadSpec("/mnt/a/", state="C1Done", sector=3),  # the same store again
        ThreadSpec("/mnt/c", state="C1Done", sector=4),
    ]


@pytest.mark.parametrize("tag", ["v0.7.0", "v0.8.0", "v0.9.0"])
def test_a_duplicate_location_leaves_an_index_gap_and_pause_takes_the_position(standin, tag):
    """W §1.5 Index ≠ position (v0.7.0+): the duplicate is skipped, WorkerList's index skips
    a number, WorkerPause/WorkerResume take the array position."""
    worker = standin(tag, duplicated(), fast())
    threads = worker.threads()
    assert [(t["index"], t["location"]) for t in threads] == [
        (0, "/mnt/a"),
        (1, "/mnt/b"),
        (3, "/mnt/c"),
    ]
    assert worker.call(PAUSE, [2]) is True  # position 2: the thread listed as #3
    assert worker.call(PAUSE, [3]) == {"code": -32602, "message": "worker #3 not found"}
    assert "worker: store already loaded: /mnt/a (config entry 2)" in worker.worker.lines
    worker.advance(10.1)  # C2 ends, the pause is taken
    assert [_paused(t) for t in worker.threads()] == [False, False, True]


@pytest.mark.parametrize("tag", ["v0.1.1", "v0.6.6"])
def test_before_v0_7_index_and_position_agree(standin, tag):
    """W §1.5: before v0.7 the index was assigned after de-duplication."""
    worker = standin(tag, duplicated(), fast())
    assert [t["index"] for t in worker.threads()] == [0, 1, 2]


# -- plans on the timer ----------------------------------------------------------------------------


SEALER_STATES = [
    "Empty",
    "Allocated",
    "DealsAcquired",
    "PieceAdded",
    "TreeDBuilt",
    "TicketAssigned",
    "PC1Done",
    "PC2Done",
    "PCSubmitted",
    "PCLanded",
    "Persisted",
    "PersistanceSubmitted",
    "SeedAssigned",
    "C1Done",
    "C2Done",
    "ProofSubmitted",
]


SNAPUP_STATES = [
    "Empty",
    "Allocated",
    "PieceAdded",
    "TreeDBuilt",
    "SnapEncoded",
    "SnapProved",
    "Persisted",
]


@pytest.mark.parametrize(("plan", "states"), [
    ("sealer", SEALER_STATES),
    ("snapup", SNAPUP_STATES),
    ("wdpost", ["Empty", "Allocated", "Generated"]),
])  # fmt: skip
def test_each_plan_runs_its_flow_on_the_timer(standin, plan, states):
    """D §1.1/§1.2/§1.5: the state flow of the plan, then the next task after seal_interval."""
    supply = {"sectors": 1} if plan != "wdpost" else {"wdpost_jobs": 1}
    spec = ThreadSpec(None if plan == "wdpost" else "/a", plan, "Empty", phase="run")
    worker = standin("v0.9.0", [spec], fast(step=1, stage=1, poll=1, seal_interval=5), **supply)
    seen = []
    for _ in range(60):
        thread = worker.thread(0)
        if not seen or seen[-1] != thread["job_state"]:
            seen.append(thread["job_state"])
        if thread["job_state"] == "" and len(seen) > 1:
            break
        worker.advance(0.5)
    assert seen == [*states, ""]  # Finished is finalized at once: no job, job_state ""
    worker.advance(5)
    assert worker.thread(0)["job_state"] == "Empty"  # asking for work again
    assert worker.thread(0)["job_id"] is None


def test_an_idle_task_ends_after_request_task_max_retries(standin):
    """D §1.8: after more than request_task_max_retries Idle events the task returns Done
    (v0.5+): the thread sleeps its seal_interval (job_state "")."""
    spec = ThreadSpec("/a", state="Empty")
    worker = standin("v0.9.0", [spec], fast(recover_interval=10, seal_interval=30))
    worker.advance(3 * 10 + 0.1)
    assert worker.thread(0)["job_state"] == "" and worker.call(PAUSE, [0]) is True
    assert not _paused(worker.thread(0))  # between tasks: not taken yet


def test_draining_pauses_every_thread_eventually(standin):
    """D §3 / D §7 #301: pausing every thread drains a worker: idle ones at once, running
    ones after their stage, ones between tasks when the interval ends."""
    threads = [pc1(), ThreadSpec("/b", state="Empty"), ThreadSpec("/c", phase="between")]
    worker = standin("v0.8.0", threads, fast(stages={"PC1": 40}, seal_interval=30))
    assert [worker.call(PAUSE, [n]) for n in range(3)] == [True, True, True]
    assert [t["paused"] for t in worker.threads()] == [False, True, False]
    worker.advance(30.1)
    assert [t["paused"] for t in worker.threads()] == [False, True, True]
    worker.advance(10)
    assert [t["paused"] for t in worker.threads()] == [True, True, True]


# -- the process, on a real timer, and through a real sshd -----------------------------------------


def start_process(*argv: str) -> tuple[subprocess.Popen, int]:
    process = subprocess.Popen(
        [sys.executable, str(STANDIN), "--port", "0", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = process.stdout.readline()
    match = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)\n", line)
    if not match:
        process.kill()
        raise AssertionError(f"no listening line: {line!r} {process.stderr.read()!r}")
    return process, int(match.group(1))


def stop_process(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(timeout=10)
    process.stdout.close()
    process.stderr.close()


@pytest.mark.e2e
def test_the_process_runs_a_scenario_on_a_real_timer(tmp_path):
    """The CLI: --release and --scenario; threads advance on the clock (stage 0.3 s)."""
    scenario = {
        "threads": [{"location": "/a", "state": "TicketAssigned", "sector": 8}],
        "timing": {"stage": 0.3, "poll": 30, "seal_interval": 30, "recover_interval": 30},
    }
    path = tmp_path / "scenario.json"
    path.write_text(json.dumps(scenario))
    process, port = start_process("--release", "v0.8.0", "--scenario", str(path), "--log")
    try:
        connection = Raw(port)
        connection.send(post(call_body(PAUSE, [0])))
        assert connection.reply().json()["result"] is True
        deadline = time.monotonic() + 10
        while True:
            connection.send(post(call_body(LIST)))
            thread = connection.reply().json()["result"][0]
            if thread["paused"] or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert (thread["paused"], thread["state"]) == (True, "TicketAssigned")
        connection.close()
    finally:
        stop_process(process)


def test_it_listens_on_loopback_only(standin):
    """W §1.1/§1.2: the worker's port answers any origin, so the stand-in binds 127.0.0.1."""
    assert standin().server.address[0] == "127.0.0.1"
    with pytest.raises(ValueError, match="loopback"):
        StandinServer(standin().worker, host="0.0.0.0")


@pytest.mark.e2e
def test_the_process_refuses_what_it_cannot_be():
    """v0.1.0 spoke WebSocket; an unknown tag names the known ones."""
    for tag, message in (("v0.1.0", "WebSocket"), ("v9.9.9", "known: v0.1.1")):
        done = subprocess.run(
            [sys.executable, str(STANDIN), "--release", tag],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 2 and message in done.stderr


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    fleet = SshFleet(tmp_path_factory.mktemp("sshd"))
    host = fleet.add_host("dam")
    host.start()
    yield fleet, host
    fleet.stop_all()


@pytest.mark.e2e
@pytest.mark.parametrize("tag", ONE_TAG_PER_LINE)
def test_it_is_reached_through_a_real_sshd_direct_tcpip_channel(standin, sshd, tag):
    """W §1.1: the port listens on loopback; here it is reached as venusctl reaches a
    worker, through sshd's direct-tcpip, and keeps the channel alive for a second request."""
    fleet, host = sshd
    worker = standin(tag)
    client = paramiko.SSHClient()
    client.load_host_keys(str(fleet.known_hosts))
    client.connect(
        host.address,
        host.port,
        username=fleet.user,
        key_filename=str(fleet.client_key),
        look_for_keys=False,
        allow_agent=False,
        timeout=10,
    )
    try:
        channel = client.get_transport().open_channel(
            "direct-tcpip", ("127.0.0.1", worker.port), ("127.0.0.1", 0), timeout=10
        )
        channel.settimeout(10)
        received = b""
        for ident in (1, 2):
            channel.sendall(post(call_body(PAUSE, [1], ident=ident)))
            while received.count(b"}\n") < ident:
                received += channel.recv(65536)
        assert received.count(b"HTTP/1.1 200 OK\r\n") == 2
        assert b'"result":true,"id":1}\n' in received and b'"result":false,"id":2}\n' in received
        channel.close()
    finally:
        client.close()


# -- helpers over the line differences -------------------------------------------------------------


def _paused(thread: dict) -> bool:
    if "thread_state" in thread:
        return thread["thread_state"]["state"] == "Paused"
    return thread["paused"]


def _state(thread: dict) -> str:
    return thread.get("job_state", thread.get("state"))


def _elapsed(thread: dict):
    if "thread_state" in thread:
        return thread["thread_state"].get("elapsed")
    return thread["paused_elapsed"]
