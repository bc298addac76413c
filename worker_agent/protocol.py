"""JSON-RPC 2.0 as the worker agent speaks it. This docstring is the spec.

Transport (see server.py): HTTP/1.1 ``POST /`` on a Unix socket, body = one
JSON-RPC request or a batch, ``Content-Length`` required, at most 1 MiB,
nested at most ``MAX_DEPTH`` levels deep.

Requests::

    {"jsonrpc": "2.0", "id": 1, "method": "VenusWorker.WorkerList", "params": []}

- ``params`` is positional (an array); it may be omitted when empty.
- ``id`` is a string, a number or null; a request without ``id`` is a
  notification: it runs, but gets no reply.
- A batch is a non-empty array of requests; the reply is the array of the
  replies, in request order, without the notifications' (nothing at all if
  every request was a notification).

Replies::

    {"jsonrpc": "2.0", "id": 1, "result": ...}
    {"jsonrpc": "2.0", "id": 1, "error": {"code": -32602, "message": "worker #9 not found"}}

Error codes (``api.RpcCode``, the one table both sides use):

======  ==============================================================
-32700  parse error: the body is not JSON, or nested deeper than MAX_DEPTH (id null)
-32600  invalid request: not a JSON-RPC 2.0 request object, empty batch
-32601  method not found
-32602  invalid params: wrong count or type, ``worker #N not found``,
        ``invalid state "X" for plan P; valid states: ...``
-32603  internal error: the handler failed; the daemon keeps running
  1001  ``worker #N is not paused`` (resume of a running thread)
  1002  change not saved: the thread's record could not be written (or its
        store cannot be used); nothing changed
-32099  (client side only) agent not running at SOCKET
======  ==============================================================

Methods (``VenusWorker.`` namespace, as damocles-worker):

- ``WorkerList []`` -> list of WorkerInfo, by index
- ``WorkerPause [index]`` -> true (also when already paused)
- ``WorkerResume [index, state or null]`` -> true
- ``WorkerReport []`` -> the last heartbeat report plus ``age`` (seconds)
- ``WorkerVersion []`` -> version string

This module is pure: bytes in, bytes out; handlers are plain callables
``handler(params: list) -> result`` that raise ``RpcError`` to refuse.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from worker_agent.api import RpcCode

__all__ = [
    "RawJSON",
    "RpcError",
    "handle_body",
    "make_request",
    "parse_reply",
]

Handler = Callable[[list], Any]

# JSON-RPC requests are flat; deeper bodies are refused before anything reads them.
MAX_DEPTH = 32

log = logging.getLogger("venus_worker.protocol")


class RawJSON(str):
    """A handler result that is already JSON text; it is spliced into the reply as is.

    For hot paths only (WorkerList): it lets a handler reuse cached encodings.
    """


class RpcError(Exception):
    """An error reply: raised by handlers, and by clients on receiving one."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def to_json(self) -> dict:
        return {"code": int(self.code), "message": self.message}


def _error_reply(request_id: Any, error: RpcError) -> dict:
    return {"jsonrpc": "2.0", "id": request_id, "error": error.to_json()}


def _valid_id(value: Any) -> bool:
    return (
        value is None
        or isinstance(value, str)
        or (isinstance(value, (int, float)) and not isinstance(value, bool))
    )


def handle_request(request: Any, methods: Mapping[str, Handler]) -> dict | None:
    """The reply to one decoded request, or None for a notification."""
    if not isinstance(request, dict):
        return _error_reply(
            None, RpcError(RpcCode.INVALID_REQUEST, "invalid request: not an object")
        )
    request_id = request.get("id")
    if not _valid_id(request_id):
        return _error_reply(None, RpcError(RpcCode.INVALID_REQUEST, "invalid request: bad id"))
    method = request.get("method")
    if request.get("jsonrpc") != "2.0" or not isinstance(method, str):
        problem = 'invalid request: needs "jsonrpc": "2.0" and a string "method"'
        return _error_reply(request_id, RpcError(RpcCode.INVALID_REQUEST, problem))
    is_notification = "id" not in request
    params = request.get("params", [])
    try:
        if not isinstance(params, list):
            raise RpcError(RpcCode.INVALID_PARAMS, "invalid params: params must be an array")
        handler = methods.get(method)
        if handler is None:
            raise RpcError(RpcCode.METHOD_NOT_FOUND, f"method not found: {method}")
        result = handler(params)
    except RpcError as error:
        return None if is_notification else _error_reply(request_id, error)
    except Exception as exc:  # a handler bug becomes an error reply, never a dead daemon
        log.exception("handler for %s failed", method)
        error = RpcError(RpcCode.INTERNAL_ERROR, f"internal error: {type(exc).__name__}: {exc}")
        return None if is_notification else _error_reply(request_id, error)
    return None if is_notification else {"jsonrpc": "2.0", "id": request_id, "result": result}


def _too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """True if `value` nests arrays/objects more than `limit` levels (iterative: no recursion)."""
    level = [value]
    for _ in range(limit):  # after n rounds: the values inside n containers
        level = [
            child
            for item in level
            if isinstance(item, (list, dict))
            for child in (item.values() if isinstance(item, dict) else item)
        ]
        if not level:
            return False
    return any(isinstance(item, (list, dict)) for item in level)


def handle_body(body: bytes, methods: Mapping[str, Handler]) -> bytes | None:
    """The reply body for a request body, or None when nothing is to be sent back."""
    too_deep = f"parse error: JSON nested deeper than {MAX_DEPTH} levels"
    try:
        payload = json.loads(body)
    except RecursionError:  # the decoder recurses per level: thousands of "[" end here
        return _encode(_error_reply(None, RpcError(RpcCode.PARSE_ERROR, too_deep)))
    except (ValueError, UnicodeDecodeError) as exc:
        reply: Any = _error_reply(None, RpcError(RpcCode.PARSE_ERROR, f"parse error: {exc}"))
        return _encode(reply)
    # A value nests no deeper than the body has '[' and '{' (a status request has 5):
    # only a body with more is walked.
    if body.count(b"[") + body.count(b"{") > MAX_DEPTH and _too_deep(payload):
        return _encode(_error_reply(None, RpcError(RpcCode.PARSE_ERROR, too_deep)))
    if isinstance(payload, list):
        if not payload:
            reply = _error_reply(
                None, RpcError(RpcCode.INVALID_REQUEST, "invalid request: empty batch")
            )
            return _encode(reply)
        replies = [r for r in (handle_request(item, methods) for item in payload) if r is not None]
        return _encode(replies) if replies else None
    reply = handle_request(payload, methods)
    return None if reply is None else _encode(reply)


def _encode(reply: Any) -> bytes:
    if isinstance(reply, list):
        return b"[" + b",".join(_encode(item) for item in reply) + b"]"
    result = reply.get("result") if isinstance(reply, dict) else None
    if isinstance(result, RawJSON):
        envelope = json.dumps(
            {k: v for k, v in reply.items() if k != "result"}, separators=(",", ":")
        )
        return (envelope[:-1] + ',"result":' + result + "}").encode()
    return json.dumps(reply, separators=(",", ":")).encode()


# ---------------------------------------------------------------- client side


def make_request(method: str, params: list, request_id: int = 1) -> bytes:
    return _encode({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})


def parse_reply(body: bytes) -> Any:
    """The result of a single reply; raises RpcError for an error reply or garbage."""
    try:
        reply = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RpcError(RpcCode.PARSE_ERROR, f"agent sent a reply that is not JSON: {exc}") from None
    if not isinstance(reply, dict) or ("result" not in reply and "error" not in reply):
        raise RpcError(RpcCode.INVALID_REQUEST, "agent sent a reply that is not a JSON-RPC reply")
    error = reply.get("error")
    if error is not None:
        if not isinstance(error, dict):
            raise RpcError(RpcCode.INTERNAL_ERROR, f"malformed error reply: {error!r}")
        raise RpcError(
            int(error.get("code", RpcCode.INTERNAL_ERROR)), str(error.get("message", ""))
        )
    return reply["result"]
