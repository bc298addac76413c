"""A stand-in for the original damocles-worker's management RPC, for tests.

Written from the documented API (shared/reference/damocles.md §3-§4), not
from its code: JSON-RPC 2.0 over HTTP on a TCP port, positional params,
namespace ``VenusWorker``. It serves either result shape:

- ``current`` (damocles v0.9+): ``location, plan, job_id, index,
  thread_state {state, elapsed, proc}, job_state, job_stage, last_error``;
- ``v2022`` (venus-cluster v0.3): ``location, sector_id, index, paused,
  paused_elapsed, state, last_error``.

Behaviours kept on purpose because a client must cope with them (§3):
``WorkerPause`` queues a pause token and answers ``false`` when one is
already queued; the token is consumed at once by an idle thread, only after
the running stage by a running one (here: never, PC1 runs "for hours"), and
by a paused thread right after its next resume, which re-pauses it (stale
token); ``WorkerResume`` answers ``false`` (no error) when the thread is not
paused;
an unknown resume state is silently ignored by ``current`` and rejected with
invalid params by ``v2022``; a bad index is invalid params
``worker #N not found``.

Run as a process: ``python damocles_standin.py --port P [--shape S]
[--without-version]``; it
prints ``listening on 127.0.0.1:P`` once ready and binds only to loopback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = "v0.9.0-standin"
STATES = (
    "Empty Allocated DealsAcquired PieceAdded TreeDBuilt TicketAssigned PC1Done PC2Done "
    "SyntheticPoRepNeeded PCSubmitted PCLanded Persisted PersistanceSubmitted SeedAssigned "
    "C1Done C2Done ProofSubmitted Finished Aborted SnapEncoded SnapProved SealedChecked "
    "SnapPieceAdded SnapTreeDBuilt SnapDone Unsealed"
).split()
C2_ERROR = "permanent: No cached parameters found for stacked-proof-of-replication (standin)"


class Thread:
    """One sealing thread as the original worker's controller sees it."""

    def __init__(self, index, location, job_id, job_state, paused, last_error, proc=None):
        self.index = index
        self.location = location
        self.job_id = job_id
        self.job_state = job_state
        self.paused_at = time.time() - 17 if paused else None
        self.since = time.time() - 100
        self.last_error = last_error
        self.proc = proc
        self.pause_queued = False

    def as_current(self):
        if self.paused_at is not None:
            thread_state = {"state": "Paused", "elapsed": int(time.time() - self.paused_at)}
        elif self.proc:
            thread_state = {"state": "Running", "elapsed": int(time.time() - self.since)}
            thread_state["proc"] = self.proc
        else:
            thread_state = {"state": "Idle"}
        return {
            "location": self.location,
            "plan": "sealer",
            "job_id": self.job_id,
            "index": self.index,
            "thread_state": thread_state,
            "job_state": self.job_state,
            "job_stage": {"C1Done": "C2", "TicketAssigned": "PC1"}.get(self.job_state),
            "last_error": self.last_error,
        }

    def as_v2022(self):
        paused = self.paused_at is not None
        return {
            "location": self.location,
            "sector_id": self.job_id,
            "index": self.index,
            "paused": paused,
            "paused_elapsed": int(time.time() - self.paused_at) if paused else None,
            "state": self.job_state or "Empty",
            "last_error": self.last_error,
        }


class Worker:
    def __init__(self, shape: str, root: str, version: bool = True):
        self.shape = shape
        self.version = version
        self.lock = threading.Lock()
        self.threads = [
            Thread(0, f"{root}/store1", "s-t01000-2", "C1Done", True, C2_ERROR),
            Thread(1, f"{root}/store2", "s-t01000-3", "TicketAssigned", False, None, "pc1-0"),
            Thread(2, f"{root}/store3", None, "", False, None),
        ]

    def thread(self, params):
        index = params[0] if params else None
        if not isinstance(index, int) or not 0 <= index < len(self.threads):
            raise RpcError(-32602, f"worker #{index} not found")
        return self.threads[index]

    def call(self, method, params):
        with self.lock:
            if method == "VenusWorker.WorkerList":
                render = Thread.as_current if self.shape == "current" else Thread.as_v2022
                return [render(t) for t in self.threads]
            if method == "VenusWorker.WorkerVersion" and self.version:
                return VERSION
            if method == "VenusWorker.WorkerPause":
                return self.pause(self.thread(params))
            if method == "VenusWorker.WorkerResume":
                state = params[1] if len(params) > 1 else None
                return self.resume(self.thread(params), state)
            raise RpcError(-32601, "Method not found")

    @staticmethod
    def pause(thread):
        # The original queues a token whatever the thread does (bounded(1)).
        if thread.pause_queued:
            return False
        if thread.paused_at is None and not thread.proc:
            thread.paused_at = time.time()  # an idle wait takes the token at once
            return True
        thread.pause_queued = True  # taken after the stage, or after the next resume
        return True

    def resume(self, thread, state):
        if thread.paused_at is None:
            return False
        if state is not None and state not in STATES:
            if self.shape == "v2022":
                raise RpcError(-32602, f"invalid state {state}")
            state = None  # current damocles only logs "unknown state" and goes on
        thread.paused_at = None
        thread.last_error = None
        if state == "Aborted":
            thread.job_id, thread.job_state = None, ""
        elif state is not None:
            thread.job_state = state
        if thread.pause_queued:
            # a stale token: the resumed thread takes it and pauses again
            thread.pause_queued = False
            thread.paused_at = time.time()
        return True


class RpcError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


def reply_for(worker, request):
    if not isinstance(request, dict) or request.get("jsonrpc") != "2.0" or "method" not in request:
        return {
            "jsonrpc": "2.0",
            "id": None,
            "error": {"code": -32600, "message": "Invalid request"},
        }
    try:
        result = worker.call(request["method"], request.get("params") or [])
    except RpcError as exc:
        return {
            "jsonrpc": "2.0",
            "id": request.get("id"),
            "error": {"code": exc.code, "message": exc.message},
        }
    return {"jsonrpc": "2.0", "id": request.get("id"), "result": result}


def make_handler(worker):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                request = json.loads(body)
            except ValueError:
                reply = {
                    "jsonrpc": "2.0",
                    "id": None,
                    "error": {"code": -32700, "message": "Parse error"},
                }
            else:
                if isinstance(request, list):
                    reply = [reply_for(worker, r) for r in request]
                else:
                    reply = reply_for(worker, request)
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):  # keep test output quiet
            pass

    return Handler


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--shape", choices=("current", "v2022"), default="current")
    parser.add_argument("--root", default="/mnt/damocles")
    parser.add_argument(
        "--without-version",
        action="store_true",
        help="answer WorkerVersion with -32601 Method not found, as a worker without it would",
    )
    args = parser.parse_args(argv)
    server = ThreadingHTTPServer(
        ("127.0.0.1", args.port),
        make_handler(Worker(args.shape, args.root, version=not args.without_version)),
    )
    print(f"listening on 127.0.0.1:{server.server_address[1]}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is the normal way to stop it
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
