"""A small JSON-RPC client for the agent's Unix socket (stdlib only).

One ``AgentClient`` keeps one HTTP/1.1 connection open across calls. A
missing socket or a refused connection raises ``AgentNotRunning`` (the CLI's
exit 3); an error reply raises ``protocol.RpcError``.
"""

from __future__ import annotations

import http.client
import socket
from pathlib import Path
from typing import Any

from worker_agent.api import ACTOR_HEADER, RpcCode
from worker_agent.protocol import RpcError, make_request, parse_reply

__all__ = ["AgentClient", "AgentNotRunning", "AgentUnreachable"]


class AgentNotRunning(RpcError):
    """Nothing answers on the socket."""

    def __init__(self, path: Path | str, detail: str = ""):
        message = f"agent not running at {path}" + (f" ({detail})" if detail else "")
        super().__init__(RpcCode.AGENT_NOT_RUNNING, message)


class AgentUnreachable(RpcError):
    """The socket is there but talking to it failed (permission, timeout, reset)."""

    def __init__(self, path: Path | str, error: Exception):
        if isinstance(error, PermissionError):
            message = (
                f"permission denied on the agent socket {path} (this user may not use it:"
                " socket_group?)"
            )
        else:
            message = f"cannot talk to the agent at {path}: {error}"
        super().__init__(RpcCode.AGENT_UNREACHABLE, message)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class AgentClient:
    """`actor`: the name sent in every request's Venus-Actor header (the history's `by`)."""

    def __init__(self, path: Path | str, timeout: float = 10.0, actor: str | None = None):
        self.path = str(path)
        self._conn = _UnixConnection(self.path, timeout)
        self._next_id = 0
        self._headers = {"Content-Type": "application/json"}
        if actor:
            # a header value is one line of Latin-1: anything else would break the request
            self._headers[ACTOR_HEADER] = "".join(
                c if " " <= c <= "~" or "\xa0" <= c <= "\xff" else "?" for c in actor
            )

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def call(self, method: str, *params: Any) -> Any:
        """Call `method` with positional `params`; returns its result."""
        self._next_id += 1
        body = make_request(method, list(params), self._next_id)
        status, reply = self._post(body)
        if status != 200:
            raise RpcError(RpcCode.INTERNAL_ERROR, f"agent answered HTTP {status}: {reply[:200]!r}")
        return parse_reply(reply)

    def _post(self, body: bytes) -> tuple[int, bytes]:
        reused = self._conn.sock is not None
        try:
            return self._exchange(body)
        except _DROPPED as exc:
            self._conn.close()
            if not reused:
                raise AgentUnreachable(self.path, exc) from exc
        # The server had closed our idle keep-alive connection: one fresh try.
        try:
            return self._exchange(body)
        except _DROPPED as exc:
            self._conn.close()
            raise AgentUnreachable(self.path, exc) from exc

    def _exchange(self, body: bytes) -> tuple[int, bytes]:
        try:
            self._conn.request("POST", "/", body=body, headers=self._headers)
            response = self._conn.getresponse()
            return response.status, response.read()
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            self._conn.close()
            raise AgentNotRunning(self.path) from exc
        except _DROPPED:
            raise
        except (OSError, http.client.HTTPException) as exc:  # permission denied, timeout ...
            self._conn.close()
            raise AgentUnreachable(self.path, exc) from exc


_DROPPED = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)
