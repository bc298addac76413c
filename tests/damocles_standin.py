"""A stand-in for the original damocles-worker's control port, release by release, for tests.

It speaks what the worker's own server speaks on the wire (jsonrpc-http-server
18 on hyper 0.14, jsonrpc-core 18, serde_json), and runs sealing threads whose
pause and resume follow the worker's rules, for each release line of
shared/reference/damocles-wire.md (§1.1-§1.5). The facts were checked against
the original sources (damocles tags v0.1.1 ... v0.13.0 with their Cargo.lock,
paritytech/jsonrpc v18.0.0, hyperium/hyper v0.14.11/.12/.24/.26, serde 1.0.126
and 1.0.160, serde_json 1.0.64 and 1.0.96); where the reference says less, or
differently, the source won and a comment says so.

Run it as a process (what the e2e tests and bench/damocles_bench.py do)::

    python tests/damocles_standin.py --port 0 --release v0.8.0 [--scenario FILE.json] [--root /mnt]

It prints ``listening on 127.0.0.1:PORT`` once ready and binds only to the
loopback address 127.0.0.1 (the worker's own default is 0.0.0.0:17890; it
answers any browser origin, so the real one belongs on loopback too). Tests
may also import it: ``Worker`` (the sealing threads, with an injectable clock)
and ``StandinServer`` (the HTTP server around it).

Release lines (``LINES``; ``--release`` takes any tag, ``release_of`` maps it)
------------------------------------------------------------------------------

v0.1 (v0.1.1-v0.1.2, 2022-04)
    Reproduced: List/Pause/Resume only (WorkerVersion, SetEnv: -32601);
    WorkerInfo ``index, last_error, location, paused, paused_elapsed,
    sector_id, state`` with ``sector_id`` as ``"m-1000-s-2"`` and
    ``paused_elapsed`` as Rust's Duration Debug text (``"17.203941s"``),
    ``state`` ``"Empty"`` without a task; only the sealer plan (snapup is
    commented out in that source); an allocation retry sleeps
    ``recover_interval`` without taking a pause token; an unknown resume state
    is -32602 ``invalid state X``; hyper 0.14.11 (``Expect`` compared
    case-sensitively, a URI over 65534 bytes is 400, not 414).
    Not here: the nanosecond jitter of a real ``Instant`` (a ManualClock
    gives round numbers).
v0.2 (v0.2.0-v0.4.2, with v0.4.0-nv15)
    ``sector_id`` is the object ``{"Miner":1000,"Number":2}``,
    ``paused_elapsed`` whole seconds; snapup; the retry wait takes the pause
    token; WorkerSetEnv/WorkerRemoveEnv from v0.4.0 (not in v0.4.0-nv15,
    which came out before v0.3.1).
v0.5 (v0.5.0-v0.7.4)
    ``plan`` added; rebuild (v0.5+), unseal (v0.7+); the Idle count
    (``request_task_max_retries``) ends an idle task; WorkerVersion from
    v0.7.0 (``v<Cargo version>-<GIT_COMMIT>``: v0.7.4 answers
    ``v0.7.3-git.fb1d960`` like v0.7.3); from v0.7.0 a duplicate
    ``location`` is skipped but keeps its config index, so List's ``index``
    has a gap while Pause/Resume take the list position.
    Not here: the hot config (``<location>/config.toml``) changing a
    thread's plan between tasks, and the ``plan`` a sector keeps meanwhile.
v0.8 (v0.8.0-v0.8.4)
    ``job_id`` ``"s-t01000-2"`` replaces ``sector_id``; ``state`` is ``""``
    between tasks (a thread asking for work shows ``"Empty"``); ``location``
    ``"-"`` for a thread without one (wdpost); the wdpost plan (its job lives
    in memory: a resume starts it at Empty); an unknown resume state is only
    logged (``unknown state: X``) and the thread resumes where it was, the
    RPC answering ``true``; the same-state error gains the ``event apply``
    context. Not here: wdpost heartbeats and its temporary-error abort.
v0.9 (v0.9.0-v0.13.0)
    ``thread_state`` ``{"state":"Idle"|"Paused"|"Running"|"Waiting",
    "elapsed", "proc"}`` and ``job_state``/``job_stage`` replace
    ``paused``/``paused_elapsed``/``state``; ``job_stage`` is never cleared
    between tasks; SyntheticPoRepNeeded. Not here: the instants inside a
    stage where a real thread shows Running with proc null or Waiting on an
    ext lock (the stand-in shows Waiting for the whole ``slot_wait``, then
    Running with its processor), and the ``auto-resume`` feature of v0.13.

On every line: HTTP/1.1 (and 1.0) on keep-alive connections with no idle
timeout, pipelining, lower-case response headers in hyper's order
(``content-type``, [``allow``, ``accept``], [``vary``,
``access-control-allow-methods``, ``access-control-allow-origin``,
``access-control-allow-headers``], [``connection``], ``content-length``,
``date``), the JSON-RPC reply plus ``"\\n"``, 415/405/OPTIONS/413/400 with
their exact bodies, CORS reflection (``cors_domains: None``), Host never
checked; JSON-RPC 2.0 as jsonrpc-core 18 parses it (untagged serde enums:
deny-unknown-fields, params omitted/null/array/object, an array of the four
fields is itself a call, batches, notifications that run nothing, empty
body for an all-notification or empty batch, reply fields ``jsonrpc, result
| error, id``); result objects with their keys sorted (serde_json is built
without ``preserve_order``, so ``to_value`` makes a BTreeMap: the
reference's "declaration order" is not what reaches the wire); the params
errors of jsonrpc-derive 18 with serde's messages; the pause and resume rules
(§1.5): a ``bounded(1)`` pause token taken only at the top of a step and in
interruptible waits, a stage paused after has its result dropped and redone,
a thread between tasks takes it when its ``seal_interval`` ends, a token
queued on a paused thread re-pauses it after the next resume (dropping that
resume's state), resume is a rendezvous that only a paused thread takes,
``SetState`` bypasses the plan's table (``Aborted`` and a foreign state
abort the task, ``Finished`` finalizes it, the current state is a critical
error that pauses it again).

Not reproduced, on any line (say so before relying on it): v0.1.0
(WebSocket); the manager side (every RPC to it is a timed step of
``step`` seconds that always succeeds; ``ReportState`` never reports an
abort; no temporary errors, no retry counter: an injected failure is final);
what a stage computes (field checks such as ``field_required!`` are not
made, so a SetState into a state whose inputs are missing does not abort);
symlinks (``location`` is canonicalized lexically); the 60 s tick of a
paused thread's wait (a resume in that instant would fail); the environment
(SetEnv/RemoveEnv are validated and remembered, the process environment is
not touched); a panicking handler is modelled only for a non-UTF-8
``location`` (the connection is closed with no reply); serde's and Rust's
float/unicode Debug text is approximated (floats in ``data`` and error
messages, non-printable characters); httparse's request-target check is
approximated (0x21-0x7E), and httparse's version differences are not
modelled; a 413 or an undrained body (a chunked one always) closes the
connection gently (hyper may reset it, or drain a small chunked body);
timing is not hyper's (no 8 listener threads, one Python thread per
connection).
"""

from __future__ import annotations

import argparse
import contextlib
import decimal
import email.utils
import json
import math
import posixpath
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

# -- release lines --------------------------------------------------------------------------------

# Line name -> (first tag, last tag): the lines of the reference's WorkerInfo table.
# The one place that names them; everything below asks a Release for a feature.
LINES = {
    "v0.1": ("v0.1.1", "v0.1.2"),
    "v0.2": ("v0.2.0", "v0.4.2"),
    "v0.5": ("v0.5.0", "v0.7.4"),
    "v0.8": ("v0.8.0", "v0.8.4"),
    "v0.9": ("v0.9.0", "v0.13.0"),
}

# tag -> (CARGO_PKG_VERSION, hyper, serde_json), read from each tag's Cargo.toml and
# Cargo.lock. The Cargo version is what WorkerVersion says (it lags behind some tags).
TAG_FACTS = {
    "v0.1.1": ("0.1.0", "0.14.11", "1.0.64"),
    "v0.1.2": ("0.1.2", "0.14.11", "1.0.64"),
    "v0.2.0": ("0.2.0", "0.14.11", "1.0.64"),
    "v0.3.0": ("0.3.0", "0.14.11", "1.0.64"),
    "v0.3.1": ("0.3.1", "0.14.11", "1.0.64"),
    "v0.4.0-nv15": ("0.4.0-nv15", "0.14.11", "1.0.64"),
    "v0.4.0": ("0.4.0", "0.14.12", "1.0.64"),
    "v0.4.1": ("0.4.1", "0.14.12", "1.0.64"),
    "v0.4.2": ("0.4.2", "0.14.12", "1.0.64"),
    "v0.5.0": ("0.5.0", "0.14.12", "1.0.64"),
    "v0.5.1": ("0.5.1", "0.14.12", "1.0.64"),
    "v0.5.2": ("0.5.2", "0.14.12", "1.0.64"),
    "v0.5.3": ("0.5.3", "0.14.26", "1.0.96"),
    **{f"v0.6.{n}": (f"0.6.{n}", "0.14.24", "1.0.93") for n in range(7)},
    **{f"v0.7.{n}": (f"0.7.{min(n, 3)}", "0.14.26", "1.0.96") for n in range(5)},
    **{f"v0.8.{n}": (f"0.8.{n}", "0.14.26", "1.0.96") for n in range(5)},
    **{f"v0.9.{n}": (f"0.9.{n}", "0.14.26", "1.0.96") for n in range(4)},
    "v0.10.0": ("0.10.0-rc1", "0.14.26", "1.0.96"),
    "v0.10.1": ("0.10.1", "0.14.26", "1.0.96"),
    "v0.10.2": ("0.10.2", "0.14.26", "1.0.96"),
    "v0.11.0": ("0.11.0-rc1", "0.14.26", "1.0.96"),
    "v0.12.0": ("0.12.0", "0.14.26", "1.0.96"),
    "v0.12.1": ("0.12.0", "0.14.26", "1.0.96"),
    "v0.12.2": ("0.12.0", "0.14.26", "1.0.96"),
    "v0.12.3": ("0.12.0", "0.14.26", "1.0.96"),
    "v0.13.0": ("0.13.0", "0.14.26", "1.0.96"),
}
# GIT_COMMIT of a `make` build of each tag that has WorkerVersion ("git." + short hash).
TAG_COMMITS = {
    "v0.7.0": "ab88eb1", "v0.7.1": "8b794b0", "v0.7.2": "c0a8828", "v0.7.3": "fb1d960",
    "v0.7.4": "fb1d960", "v0.8.0": "d3dbb4e", "v0.8.1": "647a8e5", "v0.8.2": "33b91e6",
    "v0.8.3": "0af4ccf", "v0.8.4": "12d535a", "v0.9.0": "9f87e20", "v0.9.1": "c3dffe6",
    "v0.9.2": "f3c5400", "v0.9.3": "1c071f8", "v0.10.0": "9b51709", "v0.10.1": "12567b4",
    "v0.10.2": "88767bc", "v0.11.0": "7d06bd4", "v0.12.0": "af90771", "v0.12.1": "168b07f",
    "v0.12.2": "c9ea299", "v0.12.3": "a400898", "v0.13.0": "f3756a2",
}  # fmt: skip
TAG_ORDER = (
    "v0.1.1 v0.1.2 v0.2.0 v0.3.0 v0.4.0-nv15 v0.3.1 v0.4.0 v0.4.1 v0.4.2 v0.5.0 v0.5.1 v0.5.2 "
    "v0.5.3 v0.6.0 v0.6.1 v0.6.2 v0.6.3 v0.6.4 v0.6.5 v0.6.6 v0.7.0 v0.7.1 v0.7.2 v0.7.3 "
    "v0.7.4 v0.8.0 v0.8.1 v0.8.2 v0.8.3 v0.8.4 v0.9.0 v0.9.1 v0.9.2 v0.9.3 v0.10.0 v0.10.1 "
    "v0.10.2 v0.11.0 v0.12.0 v0.12.1 v0.12.2 v0.12.3 v0.13.0"
).split()  # release order (v0.4.0-nv15 came out before v0.3.1)


def _tag_at_least(tag: str, other: str) -> bool:
    return TAG_ORDER.index(tag) >= TAG_ORDER.index(other)


@dataclass(frozen=True)
class Release:
    """One tag of the original worker and what its control port does."""

    tag: str

    @property
    def line(self) -> str:
        for name, (first, last) in LINES.items():
            if _tag_at_least(self.tag, first) and _tag_at_least(last, self.tag):
                return name
        raise AssertionError(self.tag)

    def at_least(self, line: str) -> bool:
        return _tag_at_least(self.tag, LINES[line][0])

    @property
    def package_version(self) -> str:
        return TAG_FACTS[self.tag][0]

    @property
    def hyper(self) -> tuple[int, ...]:
        return tuple(int(part) for part in TAG_FACTS[self.tag][1].split("."))

    @property
    def new_value_debug(self) -> bool:
        """serde_json >= 1.0.84 prints `Array [..]`/`Number(1.5)` (before: `Array([..])`)."""
        return TAG_FACTS[self.tag][2] != "1.0.64"

    @property
    def env_methods(self) -> bool:  # WorkerSetEnv/WorkerRemoveEnv
        return _tag_at_least(self.tag, "v0.4.0")

    @property
    def version_method(self) -> bool:  # WorkerVersion
        return _tag_at_least(self.tag, "v0.7.0")

    @property
    def index_gap(self) -> bool:  # a skipped duplicate location keeps its config index
        return _tag_at_least(self.tag, "v0.7.0")

    @property
    def retry_wait_interruptible(self) -> bool:  # v0.1 sleeps its allocation retry
        return self.at_least("v0.2")

    @property
    def idle_count(self) -> bool:  # request_task_max_retries ends an idle task
        return self.at_least("v0.5")

    @property
    def resume_state_checked_by_rpc(self) -> bool:  # -32602 "invalid state X" up to v0.7
        return not self.at_least("v0.8")

    @property
    def states(self) -> tuple[str, ...]:
        names = list(STATES_V01)
        if self.at_least("v0.5"):
            names += ["SealedChecked", "SnapPieceAdded", "SnapTreeDBuilt", "SnapDone"]
        if _tag_at_least(self.tag, "v0.7.0"):
            names += ["Unsealed"] + ([] if self.at_least("v0.8") else ["UnsealPrepared"])
        if self.at_least("v0.9"):
            names.insert(names.index("PC2Done") + 1, "SyntheticPoRepNeeded")
        return tuple(names)

    @property
    def plans(self) -> tuple[str, ...]:
        plans = ["sealer"]
        if self.at_least("v0.2"):
            plans.append("snapup")
        if self.at_least("v0.5"):
            plans.append("rebuild")
        if _tag_at_least(self.tag, "v0.7.0"):
            plans.append("unseal")
        if self.at_least("v0.8"):
            plans.append("wdpost")
        return tuple(plans)

    def version_string(self, git_commit: str | None = None) -> str:
        commit = git_commit if git_commit is not None else "git." + TAG_COMMITS[self.tag]
        return f"v{self.package_version}-{commit}"


def release_of(tag: str) -> Release:
    """The Release of a tag such as ``v0.8.0`` (ValueError names the known tags)."""
    if tag == "v0.1.0":
        raise ValueError("v0.1.0 serves WebSocket (jsonrpc-ws-server); HTTP starts at v0.1.1")
    if tag not in TAG_FACTS:
        raise ValueError(f"unknown damocles-worker tag {tag!r}; known: {', '.join(TAG_ORDER)}")
    return Release(tag)


# -- states, plans, stages ------------------------------------------------------------------------

STATES_V01 = (
    "Empty Allocated DealsAcquired PieceAdded TreeDBuilt TicketAssigned PC1Done PC2Done "
    "PCSubmitted PCLanded Persisted PersistanceSubmitted SeedAssigned C1Done C2Done "
    "ProofSubmitted Finished Aborted SnapEncoded SnapProved"
).split()
WDPOST_STATES = ("Empty", "Allocated", "Generated", "Finished", "Aborted")

# What exec() does in each state of a plan: (kind, next state, processor); its
# job stage label (what timing.stages is keyed by) is job_stage(plan, state).
# kind: alloc (ask the manager for work), step (an RPC or bookkeeping, not
# interruptible), proc (a processor stage: Running), inproc (a stage token but no
# processor: Running with proc null, C1), poll (an interruptible wait on the chain),
# finish (Finished), abort (Aborted). A state missing from its plan's table
# aborts the task ("unexpected state X in <plan> planner").
_ = None
ENDS = {"Finished": ("finish", _, _), "Aborted": ("abort", _, _)}
PLAN_FLOWS: dict[str, dict[str, tuple]] = {
    "sealer": {
        "Empty": ("alloc", "Allocated", _),
        "Allocated": ("step", "DealsAcquired", _),
        "DealsAcquired": ("proc", "PieceAdded", "AddPieces"),
        "PieceAdded": ("proc", "TreeDBuilt", "TreeD"),
        "TreeDBuilt": ("step", "TicketAssigned", _),
        "TicketAssigned": ("proc", "PC1Done", "PC1"),
        "PC1Done": ("proc", "PC2Done", "PC2"),
        "SyntheticPoRepNeeded": ("proc", "PC2Done", "SyntheticPoRep"),
        "PC2Done": ("step", "PCSubmitted", _),
        "PCSubmitted": ("poll", "PCLanded", _),
        "PCLanded": ("proc", "Persisted", "Transfer"),
        "Persisted": ("step", "PersistanceSubmitted", _),
        "PersistanceSubmitted": ("poll", "SeedAssigned", _),
        "SeedAssigned": ("inproc", "C1Done", _),
        "C1Done": ("proc", "C2Done", "C2"),
        "C2Done": ("step", "ProofSubmitted", _),
        "ProofSubmitted": ("poll", "Finished", _),
        **ENDS,
    },
    "snapup": {
        "Empty": ("alloc", "Allocated", _),
        "Allocated": ("proc", "PieceAdded", "AddPieces"),
        "PieceAdded": ("proc", "TreeDBuilt", "TreeD"),
        "TreeDBuilt": ("proc", "SnapEncoded", "SnapEncode"),
        "SnapEncoded": ("proc", "SnapProved", "SnapProve"),
        "SnapProved": ("proc", "Persisted", "Transfer"),
        "Persisted": ("step", "Finished", _),
        **ENDS,
    },
    "rebuild": {
        "Empty": ("alloc", "Allocated", _),
        "Allocated": ("proc", "PieceAdded", "AddPieces"),
        "PieceAdded": ("proc", "TreeDBuilt", "TreeD"),
        "TreeDBuilt": ("proc", "PC1Done", "PC1"),
        "PC1Done": ("proc", "PC2Done", "PC2"),
        "SyntheticPoRepNeeded": ("proc", "PC2Done", "SyntheticPoRep"),
        "PC2Done": ("inproc", "SealedChecked", _),
        "SealedChecked": ("step", "SnapDone", _),  # not upgraded: SkipSnap
        "SnapPieceAdded": ("proc", "SnapTreeDBuilt", "TreeD"),
        "SnapTreeDBuilt": ("proc", "SnapEncoded", "SnapEncode"),
        "SnapEncoded": ("proc", "SnapDone", "SnapProve"),
        "SnapDone": ("proc", "Persisted", "Transfer"),
        "Persisted": ("step", "Finished", _),
        **ENDS,
    },
    "unseal": {
        "Empty": ("alloc", "Allocated", _),
        "Allocated": ("proc", "Unsealed", "Unseal"),
        "Unsealed": ("step", "Finished", _),
        **ENDS,
    },
    "wdpost": {  # WdPostState, not persisted
        "Empty": ("alloc", "Allocated", _),
        "Allocated": ("proc", "Generated", "WindowPoSt"),
        "Generated": ("step", "Finished", _),
        **ENDS,
    },
}
del _


def job_stage(plan: str, state: str) -> str:
    """`State::stage(plan)` of v0.9+ (common/sector.rs) and `WdPostState::stage`."""
    if plan == "wdpost":
        return {"Allocated": "Generate", "Generated": "SubmitProof"}.get(state, "-")
    by_plan = {
        ("Allocated", "snapup"): "AddPieces",
        ("Allocated", "rebuild"): "AddPieces",
        ("Allocated", "unseal"): "Unseal",
        ("TreeDBuilt", "rebuild"): "PC1",
        ("TreeDBuilt", "snapup"): "SnapEncode",
        ("PC2Done", "rebuild"): "C1",
        ("Persisted", "snapup"): "SubmitSnapupProof",
        ("SealedChecked", "rebuild"): "PrepareForSnapup",
    }
    if (state, plan) in by_plan:
        return by_plan[state, plan]
    return {
        "Allocated": "AcquireDeals",
        "DealsAcquired": "AddPieces",
        "PieceAdded": "TreeD",
        "TreeDBuilt": "AssignTicket",
        "TicketAssigned": "PC1",
        "PC1Done": "PC2",
        "SyntheticPoRepNeeded": "SyntheticPoRep",
        "PC2Done": "SubmitPreCommit",
        "PCSubmitted": "WaitPCLanded",
        "PCLanded": "PersistFiles",
        "SnapProved": "PersistFiles",
        "Persisted": "SubmitPersisted",
        "PersistanceSubmitted": "WaitSeed",
        "SeedAssigned": "C1",
        "C1Done": "C2",
        "C2Done": "SubmitProof",
        "ProofSubmitted": "WaitProofLanded",
        "SnapEncoded": "SnapProve",
        "SnapPieceAdded": "TreeD",
        "SnapTreeDBuilt": "SnapEncode",
        "SnapDone": "PersistFiles",
        "Unsealed": "UploadPiece",
    }.get(state, "-")


# -- Rust and serde text --------------------------------------------------------------------------


def rust_debug_str(text: str) -> str:
    """`format!("{:?}", s)` of a Rust &str (non-printable characters approximated)."""
    escapes = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\0": "\\0"}
    out = []
    for char in text:
        if char in escapes:
            out.append(escapes[char])
        elif char != " " and not char.isprintable():
            out.append(f"\\u{{{ord(char):x}}}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def rust_display_f64(value: float) -> str:
    """`format!("{}", f)`: positional, shortest round-trip digits, no ".0"."""
    if value == 0:
        return "-0" if math.copysign(1, value) < 0 else "0"
    text = format(decimal.Decimal(repr(value)), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def rust_debug_f64(value: float) -> str:
    """`{:?}` of an f64: like Python's repr (the same switch to an exponent below 1e-4
    and from 1e16), written "1e16"/"1.5e-5" (serde_json's ryu differs only at edges)."""
    text = repr(value)
    mantissa, e, exponent = text.partition("e")
    return f"{mantissa}e{int(exponent)}" if e else text


def duration_debug(nanoseconds: int) -> str:
    """`format!("{:?}", Duration)`: "17.203941s", "203.941ms", "941µs", "12ns"."""
    seconds, nanos = divmod(nanoseconds, 1_000_000_000)
    if seconds:
        return _decimal(seconds, nanos, 100_000_000) + "s"
    if nanos >= 1_000_000:
        return _decimal(nanos // 1_000_000, nanos % 1_000_000, 100_000) + "ms"
    if nanos >= 1_000:
        return _decimal(nanos // 1_000, nanos % 1_000, 100) + "µs"
    return f"{nanos}ns"


def _decimal(integer: int, fraction: int, divisor: int) -> str:
    digits = ""
    while fraction and divisor:
        digits += str(fraction // divisor)
        fraction %= divisor
        divisor //= 10
    return f"{integer}.{digits}" if digits else str(integer)


def value_debug(value: Any, new_style: bool) -> str:
    """`format!("{:?}", serde_json::Value)` (1.0.64 style, or >= 1.0.84 with new_style)."""
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return f"Bool({str(value).lower()})"
    if isinstance(value, int):
        return f"Number({value})"
    if isinstance(value, float):
        return f"Number({rust_debug_f64(value)})"
    if isinstance(value, str):
        return f"String({rust_debug_str(value)})"
    if isinstance(value, list):
        inner = _seq_debug(value, new_style)
        return f"Array {inner}" if new_style else f"Array({inner})"
    inner = _map_debug(value, new_style)
    return f"Object {inner}" if new_style else f"Object({inner})"


def _seq_debug(items: list, new_style: bool) -> str:
    return "[" + ", ".join(value_debug(item, new_style) for item in items) + "]"


def _map_debug(mapping: dict, new_style: bool) -> str:
    pairs = (f"{rust_debug_str(k)}: {value_debug(mapping[k], new_style)}" for k in sorted(mapping))
    return "{" + ", ".join(pairs) + "}"


def params_debug(params: list | dict, new_style: bool) -> str:
    """`format!("{:?}", jsonrpc_core::Params)` of an Array or Map."""
    if isinstance(params, list):
        return f"Array({_seq_debug(params, new_style)})"
    return f"Map({_map_debug(params, new_style)})"


def sorted_value(value: Any) -> Any:
    """A result as `serde_json::to_value` leaves it: every object's keys sorted (BTreeMap)."""
    if isinstance(value, dict):
        return {key: sorted_value(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [sorted_value(item) for item in value]
    return value


def dumps(value: Any) -> str:
    """serde_json::to_string: compact, UTF-8, the same escapes as serde_json."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# -- JSON as serde_json reads it ------------------------------------------------------------------

U64_MAX = 2**64 - 1
I64_MIN = -(2**63)
SERDE_DEPTH = 128  # serde_json's recursion limit: 127 nested arrays/objects parse


class JsonError(ValueError):
    """The text is not JSON as serde_json::from_str takes it."""


class JsonObject:
    """An object with its members as sent (order and duplicates kept)."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        self.pairs = pairs

    def as_map(self) -> dict[str, Any]:
        """serde_json::Map: the last of duplicate keys wins."""
        return {key: to_plain(value) for key, value in self.pairs}


def to_plain(value: Any) -> Any:
    if isinstance(value, JsonObject):
        return value.as_map()
    if isinstance(value, list):
        return [to_plain(item) for item in value]
    return value


def _parse_int(text: str) -> int | float:
    if text == "-0":
        return -0.0  # serde_json reads "-0" as the float -0.0
    number = int(text)
    if number > U64_MAX or number < I64_MIN:
        return float(text)  # outside u64/i64 serde_json falls back to f64
    return number


def _parse_float(text: str) -> float:
    number = float(text)
    if math.isinf(number):
        raise JsonError("number out of range")
    return number


def _no_constant(name: str) -> Any:
    raise JsonError(f"{name} is not JSON")


def parse_json(text: str) -> Any:
    """Parse like serde_json: no NaN/Infinity, no lone surrogates, at most 127 levels."""
    try:
        value = json.loads(
            text,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_no_constant,
            object_pairs_hook=JsonObject,
        )
    except (ValueError, RecursionError) as error:
        raise JsonError(str(error)) from None
    _check_serde_limits(value)
    return value


def _check_serde_limits(value: Any) -> None:
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if any("\ud800" <= char <= "\udfff" for char in item):
                raise JsonError("lone surrogate")
            continue
        if isinstance(item, JsonObject):
            children = [v for pair in item.pairs for v in pair]
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth + 1 >= SERDE_DEPTH:
            raise JsonError("recursion limit exceeded")
        stack.extend((child, depth + 1) for child in children)


# -- JSON-RPC as jsonrpc-core 18 answers it -------------------------------------------------------


class RpcFailure(Exception):
    """A JSON-RPC error object: code, message and, when set, data (a string here)."""

    def __init__(self, code: int, message: str, data: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def as_json(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


class Panic(Exception):
    """A handler panicked (tokio drops the connection: no reply at all)."""


PARSE_ERROR = {"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": None}
MISSING = object()


class _NoMatch(Exception):
    """This JSON is not that serde variant."""


@dataclass
class Call:
    kind: str  # "method" | "notification" | "invalid"
    method: str = ""
    params: Any = None  # None (absent or null), a list, or a dict
    id: Any = None
    versioned: bool = True  # jsonrpc "2.0" present


def _version(value: Any) -> bool:
    """Option<Version>: missing or null is None, "2.0" is V2, anything else no match."""
    if value is MISSING or value is None:
        return False
    if isinstance(value, str) and value == "2.0":
        return True
    raise _NoMatch


def _params(value: Any) -> Any:
    if value is MISSING or value is None:
        return None
    if isinstance(value, list):
        return to_plain(value)
    if isinstance(value, JsonObject):
        return value.as_map()
    raise _NoMatch


def _id(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= U64_MAX:
        return value
    raise _NoMatch


def _struct_fields(value: JsonObject, names: tuple[str, ...]) -> dict[str, Any]:
    """A deny_unknown_fields struct's members (no match on an unknown or repeated one)."""
    fields: dict[str, Any] = {}
    for key, member in value.pairs:
        if key not in names or key in fields:
            raise _NoMatch
        fields[key] = member
    return fields


def _method_call(value: Any) -> Call:
    if isinstance(value, JsonObject):
        fields = _struct_fields(value, ("jsonrpc", "method", "params", "id"))
        if "id" not in fields:
            raise _NoMatch
        parts = [fields.get(k, MISSING) for k in ("jsonrpc", "method", "params", "id")]
    elif isinstance(value, list) and len(value) == 4:  # serde structs also read a sequence
        parts = list(value)
    else:
        raise _NoMatch
    versioned, method, params, ident = parts
    if parts[0] is MISSING and not isinstance(value, JsonObject):
        raise _NoMatch
    if not isinstance(method, str):
        raise _NoMatch
    return Call("method", method, _params(params), _id(ident), _version(versioned))


def _notification(value: Any) -> Call:
    if isinstance(value, JsonObject):
        fields = _struct_fields(value, ("jsonrpc", "method", "params"))
        versioned, method, params = (
            fields.get(k, MISSING) for k in ("jsonrpc", "method", "params")
        )
    elif isinstance(value, list) and len(value) in (2, 3):
        versioned, method, params = (*value, MISSING) if len(value) == 2 else value
    else:
        raise _NoMatch
    if not isinstance(method, str):
        raise _NoMatch
    return Call("notification", method, _params(params), None, _version(versioned))


def _invalid(value: Any) -> Call:
    """Call::Invalid { id }: any object whose `id` (if any) is an Id; not a sequence."""
    if not isinstance(value, JsonObject):
        raise _NoMatch
    ids = [member for key, member in value.pairs if key == "id"]
    if len(ids) > 1:
        raise _NoMatch  # duplicate field `id`
    return Call("invalid", id=_id(ids[0]) if ids else None)


def parse_call(value: Any) -> Call:
    """`Call` is `#[serde(untagged)]`: MethodCall, then Notification, then Invalid."""
    for variant in (_method_call, _notification, _invalid):
        try:
            return variant(value)
        except _NoMatch:
            continue
    raise _NoMatch


def parse_request(value: Any) -> Call | list[Call]:
    """`Request` is untagged too: a single Call first, then a batch (a list of Calls)."""
    try:
        return parse_call(value)
    except _NoMatch:
        pass
    if isinstance(value, list):
        return [parse_call(item) for item in value]
    raise _NoMatch


Method = Callable[[Any], Any]


def handle_request(text: str, methods: dict[str, Method]) -> str | None:
    """`MetaIoHandler::handle_request`: the reply text, or None (nothing to say)."""
    try:
        request = parse_request(parse_json(text))
    except (JsonError, _NoMatch):
        return dumps(PARSE_ERROR)
    if isinstance(request, Call):
        output = _run_call(request, methods)
        return None if output is None else dumps(output)
    outputs = [output for output in (_run_call(call, methods) for call in request) if output]
    return dumps(outputs) if outputs else None


def _run_call(call: Call, methods: dict[str, Method]) -> dict | None:
    if call.kind == "notification":
        return None  # these methods are registered as methods: a notification runs nothing
    if call.kind == "invalid":
        return _failure(True, RpcFailure(-32600, "Invalid request"), call.id)
    if not call.versioned:
        failure = RpcFailure(-32600, "Unsupported JSON-RPC protocol version")
        return _failure(False, failure, call.id)
    method = methods.get(call.method)
    if method is None:
        return _failure(True, RpcFailure(-32601, "Method not found"), call.id)
    try:
        result = method(call.params)
    except RpcFailure as failure:
        return _failure(True, failure, call.id)
    return {"jsonrpc": "2.0", "result": sorted_value(result), "id": call.id}


def _failure(versioned: bool, failure: RpcFailure, ident: Any) -> dict:
    output: dict[str, Any] = {"jsonrpc": "2.0"} if versioned else {}
    output["error"] = failure.as_json()
    output["id"] = ident
    return output


# jsonrpc-derive 18 parses positional params with serde; these are its messages.


def _unexpected(value: Any) -> str:
    if isinstance(value, bool):
        return f"boolean `{str(value).lower()}`"
    if isinstance(value, int):
        return f"integer `{value}`"
    if isinstance(value, float):
        return f"floating point `{rust_display_f64(value)}`"
    if isinstance(value, str):
        return f"string {rust_debug_str(value)}"
    if isinstance(value, list):
        return "sequence"
    return "map"


def _invalid_type(value: Any, expected: str) -> str:
    if value is None:  # serde_json says null where serde says "unit value"
        return f"invalid type: null, expected {expected}"
    return f"invalid type: {_unexpected(value)}, expected {expected}"


def _deserialize(value: Any, kind: str) -> Any:
    if kind == "option<string>":
        return None if value is None else _deserialize(value, "string")
    if kind == "string":
        if isinstance(value, str):
            return value
        raise ValueError(_invalid_type(value, "a string"))
    if isinstance(value, int) and not isinstance(value, bool):  # usize
        if value < 0:
            raise ValueError(f"invalid value: integer `{value}`, expected usize")
        return value
    raise ValueError(_invalid_type(value, "usize"))


def parse_positional(params: Any, kinds: tuple[str, ...]) -> list[Any]:
    """`params.parse::<(T1, ..)>()`: "Invalid params: <serde error>."."""
    expected = f"a tuple of size {len(kinds)}"
    try:
        if not isinstance(params, list):
            raise ValueError(_invalid_type(params, expected))
        values = []
        for position, kind in enumerate(kinds):
            if position >= len(params):
                raise ValueError(f"invalid length {position}, expected {expected}")
            values.append(_deserialize(params[position], kind))
        if len(params) > len(kinds):
            raise ValueError(f"invalid length {len(params)}, expected fewer elements in array")
    except ValueError as error:
        raise RpcFailure(-32602, f"Invalid params: {error}.") from None
    return values


def expect_no_params(params: Any, new_style: bool) -> None:
    if params is None or params == []:
        return
    detail = params_debug(params, new_style)
    raise RpcFailure(-32602, "Invalid parameters: No parameters were expected", detail)


def parse_trailing(params: Any, kinds: tuple[str, ...], required: int) -> list[Any]:
    """Positional params whose trailing `Option`s may be left out (WorkerResume)."""
    if isinstance(params, dict):
        raise RpcFailure(-32602, "`params` should be an array")
    count = 0 if params is None else len(params)
    if count < required:
        raise RpcFailure(-32602, f"`params` should have at least {required} argument(s)")
    if count > len(kinds):
        message = f"Invalid parameters: Expected from {required} to {len(kinds)} parameters."
        raise RpcFailure(-32602, message, rust_debug_str(f"Got: {count}"))
    values = parse_positional(params, kinds[:count])
    return values + [None] * (len(kinds) - count)


# -- the worker: its sealing threads --------------------------------------------------------------


class Clock:
    """Seconds, monotonic. Tests pass a ManualClock to step time by hand."""

    def now(self) -> float:
        return time.monotonic()


class ManualClock(Clock):
    def __init__(self, start: float = 1000.0) -> None:
        self.current = start

    def now(self) -> float:
        return self.current

    def advance(self, seconds: float) -> None:
        self.current += seconds


@dataclass
class Timing:
    """How long things take. Defaults are the worker's own (config.rs) where it has one."""

    seal_interval: float = 30.0  # between tasks, not interruptible
    recover_interval: float = 60.0  # after an Idle/Retry event (no work allocated)
    poll: float = 180.0  # a chain poll (rpc_polling_interval); interruptible
    stage: float = 60.0  # a processor stage (proc, inproc)
    step: float = 0.0  # a call to the manager or local bookkeeping
    slot_wait: float = 0.0  # Waiting for a concurrency slot before a processor stage
    stages: dict[str, float] = field(default_factory=dict)  # per job stage label: "PC1": 5
    request_task_max_retries: int = 3

    def of(self, kind: str, label: str) -> float:
        if label in self.stages:
            return self.stages[label]
        return {"proc": self.stage, "inproc": self.stage, "poll": self.poll}.get(kind, self.step)

    def check(self) -> None:
        for name in ("seal_interval", "recover_interval", "poll", "stage"):
            if getattr(self, name) <= 0:
                raise ValueError(f"timing {name} must be > 0 (a zero-time loop never ends)")
        if self.step < 0 or self.slot_wait < 0 or any(v <= 0 for v in self.stages.values()):
            raise ValueError("timing: step and slot_wait >= 0, stages > 0")


@dataclass
class ThreadSpec:
    """One `[[sealing_thread]]` of the worker's config and where that thread is now.

    phase: "run" (executing `state`, for `since` seconds; state None or Empty:
    asking for work), "paused" (waiting for resume at `state`, `since` seconds),
    "between" (in its seal_interval sleep between tasks; `job_stage` is the
    stale stage v0.9+ still shows).
    """

    location: str | None = None
    plan: str = "sealer"
    state: str | None = None
    sector: int | None = None  # the task's sector number (or wdpost job)
    phase: str = "run"
    since: float = 0.0
    last_error: str | None = None
    pause_queued: bool = False
    proc: str | None = None  # the processor name of the stage it is in now
    job_stage: str | None = None
    ext_pid: int | None = None  # processors are ext(pid: N) instead of builtin
    fail: dict[str, str] = field(default_factory=dict)  # job stage -> last_error text

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ThreadSpec:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown thread key(s): {', '.join(sorted(unknown))}")
        return cls(**data)


@dataclass
class Task:
    state: str
    sector: int | None = None  # sector number; for wdpost the job number


@dataclass
class Act:
    """What a thread is doing: kind, since, until (None: waits for someone), then."""

    kind: str  # resume | interval | exec | slot | wait | sleep
    since: float
    until: float | None = None
    then: tuple = ()
    proc: str | None = None
    running: bool = False  # thread_state Running while in it


class SealingThread:
    """One sealing thread: the loop of sealing_thread/mod.rs and planner/common.rs."""

    def __init__(self, worker: Worker, index: int, location: str | None, spec: ThreadSpec):
        self.worker = worker
        self.index = index  # what WorkerList says; Pause/Resume use the list position
        self.location = location
        self.plan = spec.plan
        self.spec = spec
        self.task: Task | None = None
        self.job_id: int | None = None  # shown: the sector (or wdpost job) number
        self.job_state: str | None = None
        self.job_stage: str | None = spec.job_stage
        self.plan_shown = spec.plan
        self.last_error = spec.last_error
        self.token = spec.pause_queued  # the bounded(1) pause channel
        self.failures = dict(spec.fail)
        self.idle_count = 0
        self.act = Act("interval", 0.0)

    # -- what the RPC sees ---------------------------------------------------------------------

    @property
    def release(self) -> Release:
        return self.worker.release

    def paused_at(self) -> float | None:
        return self.act.since if self.act.kind == "resume" else None

    def info(self, now: float) -> dict[str, Any]:
        line = self.release.line
        paused_at = self.paused_at()
        if self.location is not None and any("\ud800" <= c <= "\udfff" for c in self.location):
            raise Panic("location is not UTF-8")  # serde fails inside .expect(): a panic
        info: dict[str, Any] = {
            "location": self.location if self.location is not None else "-",
            "index": self.index,
            "last_error": self.last_error,
        }
        if self.release.at_least("v0.5"):
            info["plan"] = self.plan_shown
        if line == "v0.9":
            info["job_id"] = self._job_id_text()
            info["thread_state"] = self._thread_state(now)
            info["job_state"] = self.job_state or ""
            info["job_stage"] = self.job_stage
            return info
        info["paused"] = paused_at is not None
        elapsed = None if paused_at is None else now - paused_at
        if line == "v0.1":
            info["paused_elapsed"] = None if elapsed is None else duration_debug(_ns(elapsed))
        else:
            info["paused_elapsed"] = None if elapsed is None else int(elapsed)
        if line == "v0.8":
            info["job_id"] = self._job_id_text()
            info["state"] = self.job_state or ""
        else:
            info["sector_id"] = self._sector_id()
            info["state"] = self.job_state or "Empty"
        return info

    def _sector_id(self) -> Any:
        if self.job_id is None:
            return None
        miner = self.worker.miner
        if self.release.line == "v0.1":
            return f"m-{miner}-s-{self.job_id}"
        return {"Miner": miner, "Number": self.job_id}

    def _job_id_text(self) -> str | None:
        if self.job_id is None:
            return None
        if self.plan == "wdpost":
            return f"00000000-0000-4000-8000-{self.job_id:012d}"
        return f"s-t0{self.worker.miner}-{self.job_id}"

    def _thread_state(self, now: float) -> dict[str, Any]:
        act = self.act
        elapsed = int(now - act.since)
        if act.kind == "resume":
            return {"state": "Paused", "elapsed": elapsed}
        if act.kind == "slot":
            return {"state": "Waiting", "elapsed": elapsed}
        if act.kind == "exec" and act.running:
            return {"state": "Running", "elapsed": elapsed, "proc": act.proc}
        return {"state": "Idle"}

    # -- control -------------------------------------------------------------------------------

    def pause(self, now: float) -> bool:
        """`WorkerPause`: a non-blocking send on bounded(1), whatever the thread does."""
        if self.token:
            return False
        self.token = True
        if self.act.kind == "wait":  # wait_or_interrupted() takes it at once
            self.token = False
            self._pause(now)
        return True

    def resume(self, now: float, state: str | None) -> bool:
        """`WorkerResume`: a send on a rendezvous channel, taken only while paused."""
        if self.act.kind != "resume":
            return False
        self.last_error = None
        self.worker.log(self, f"resume (state {state!r})")
        self._seal_one(now, state)
        return True

    # -- the loop ------------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Put the thread where its spec says it is, `since` seconds ago."""
        spec = self.spec
        since = now - spec.since
        if spec.phase == "paused":
            if spec.state is not None:
                self._load(Task(spec.state, spec.sector))
            self.act = Act("resume", since)
        elif spec.phase == "between":
            if spec.state is not None:
                raise ValueError("a thread between tasks has no task: leave `state` out")
            self._start("interval", since, self.worker.timing.seal_interval, ("seal",))
        elif spec.phase == "run":
            self._load(Task(spec.state or "Empty", spec.sector))
            flow = PLAN_FLOWS[self.plan].get(self.task.state, ("abort",))
            if flow[0] == "alloc" and self.worker.supply_left(self.plan) == 0:
                # Nothing to allocate: it is in the Idle wait after its first ask.
                self.idle_count = 1
                self._wait_idle(since)
            else:
                self._exec(since, proc=spec.proc)
        else:
            raise ValueError(f"unknown phase {spec.phase!r}: run, paused or between")

    def _load(self, task: Task) -> None:
        if task.sector is None and task.state not in ("Empty", "Finished", "Aborted"):
            task.sector = self.worker.next_number()
        self.task = task
        self.job_id = task.sector
        self.job_state = task.state
        if self.release.at_least("v0.9"):
            self.job_stage = job_stage(self.plan, task.state)

    def advance(self, now: float) -> None:
        """Run everything that was due up to `now`, each at the moment it was due."""
        for _ in range(100_000):
            act = self.act
            if act.until is None or act.until > now:
                return
            self._done(act)
        raise RuntimeError("thread loop did not settle (zero-length cycle?)")

    def _start(self, kind: str, since: float, seconds: float | None, then: tuple, **kw) -> None:
        self.act = Act(kind, since, None if seconds is None else since + seconds, then, **kw)
        if kind == "wait" and self.token:  # wait_or_interrupted() on a queued token
            self.token = False
            self._pause(since)

    def _done(self, act: Act) -> None:
        at, then = act.until, act.then
        if then[0] == "seal":
            self._seal_one(at, None)
        elif then[0] == "exec":
            self._exec_done(at, then[1])
        elif then[0] == "run":  # the slot is free: the processor starts
            self._start("exec", at, then[2], ("exec", then[1]), proc=then[3], running=True)
        elif then[0] == "after-idle":
            self._after_apply(at)
        elif then[0] == "event":
            self._iterate(at, then[1])
        else:
            raise AssertionError(then)

    def _seal_one(self, at: float, resume_state: str | None) -> None:
        """seal_one(): load the task (persisted; wdpost's lives in memory), then loop."""
        if self.task is None or self.plan == "wdpost":
            self.task = Task("Empty")
        self.plan_shown = self.plan
        self.idle_count = 0
        event = None
        if resume_state is not None:
            names = WDPOST_STATES if self.plan == "wdpost" else self.release.states
            if resume_state in names:
                event = ("set", resume_state)
            else:
                self.worker.log(self, f"unknown state: {resume_state}")  # common.rs:47
        self._iterate(at, event)

    def _iterate(self, at: float, event: tuple | None) -> None:
        """One turn of the seal loop: job id, interrupted(), handle(event)."""
        if self.task.sector is not None and self.plan != "wdpost":
            self.job_id = self.task.sector
        if self.token:  # interrupted(): the event (a finished stage's result) is dropped
            self.token = False
            self._pause(at)
            return
        if event is not None and event[0] == "idle":
            self._wait_idle(at)
            return
        if event is not None:
            target = event[1]
            if target == self.task.state:
                self._fail(at, self._same_state_error())
                return
            if event[0] == "alloc":
                self.task.sector = self.job_id = event[2]
            self.task.state = target
        self._after_apply(at)

    def _wait_idle(self, at: float) -> None:
        """handle(Event::Idle/Retry): sleep recover_interval (v0.2+: interruptibly)."""
        kind = "wait" if self.release.retry_wait_interruptible else "sleep"
        self._start(kind, at, self.worker.timing.recover_interval, ("after-idle",))

    def _same_state_error(self) -> str:
        message = "state unchanged, may enter an infinite loop"
        if self.release.at_least("v0.8"):
            return f"critical: event apply\n\nCaused by:\n    {message}"
        return f"critical: {message}"

    def _after_apply(self, at: float) -> None:
        self.job_state = self.task.state
        if self.release.at_least("v0.9"):
            self.job_stage = job_stage(self.plan, self.task.state)
        if self.plan == "wdpost":
            self.job_id = self.task.sector
        self._exec(at)

    def _exec(self, at: float, proc: str | None = None) -> None:
        """The planner's exec() for the task's state."""
        flow = PLAN_FLOWS[self.plan]
        state = self.task.state
        if state not in flow:
            self.worker.log(self, f"abort: unexpected state {state} in {self.plan} planner")
            self._abort(at)
            return
        kind, target, processor = flow[state]
        label = job_stage(self.plan, state)
        timing = self.worker.timing
        seconds = timing.of(kind, label)
        if kind == "finish":
            self.worker.log(self, "finalized")
            self._abort(at)
        elif kind == "abort":
            self.worker.log(self, "abort: task aborted")
            self._abort(at)
        elif kind == "poll":
            self._start("wait", at, seconds, ("event", ("next", target)))
        elif kind == "proc":
            name = proc or self._processor(processor)
            if timing.slot_wait and not proc:
                self._start("slot", at, timing.slot_wait, ("run", label, seconds, name))
            else:
                self._start("exec", at, seconds, ("exec", label), proc=name, running=True)
        elif kind == "inproc":
            self._start("exec", at, seconds, ("exec", label), proc=None, running=True)
        else:  # alloc, step
            self._start("exec", at, seconds, ("exec", label))

    def _processor(self, name: str) -> str:
        if self.spec.ext_pid is not None:
            return f"ext(pid: {self.spec.ext_pid})"
        return f"builtin {name}"

    def _exec_done(self, at: float, label: str) -> None:
        failure = self.failures.pop(label, None)
        if failure is not None:
            self._fail(at, failure)
            return
        kind, target = PLAN_FLOWS[self.plan][self.task.state][:2]
        if kind != "alloc":
            self._iterate(at, ("next", target))
            return
        number = self.worker.allocate(self.plan)
        if number is not None:
            self._iterate(at, ("alloc", target, number))
            return
        self.idle_count += 1
        limit = self.worker.timing.request_task_max_retries
        if self.release.idle_count and self.plan != "wdpost" and self.idle_count > limit:
            self._between(at)  # "break the task" (R::Done); its Empty record stays
            return
        self._iterate(at, ("idle",))

    def _fail(self, at: float, text: str) -> None:
        """A stage failed: abort-level drops the task, anything else pauses with the text."""
        if text.startswith("abort: "):
            self.worker.log(self, text)
            self._abort(at)
        else:
            self._pause(at, text)

    def _pause(self, at: float, error: str | None = None) -> None:
        self.worker.log(self, f"paused ({error or 'sealing interrupted'})")
        if error is not None:
            self.last_error = error
        self.act = Act("resume", at)

    def _abort(self, at: float) -> None:
        """finalize(): the task's data and record are removed; the thread moves on."""
        self.task = None
        self._between(at)

    def _between(self, at: float) -> None:
        self.job_id = None
        self.job_state = None  # job_stage stays: v0.9+ never clears it
        self._start("interval", at, self.worker.timing.seal_interval, ("seal",))


def _ns(seconds: float) -> int:
    return max(0, round(seconds * 1e9))


def canonical_location(path: str) -> str:
    """Path::canonicalize, lexically (the stand-in has no such directories)."""
    normal = posixpath.normpath(posixpath.join("/", path))
    return "/" + normal.lstrip("/")


class Worker:
    """The worker process: its threads (from the config) and its RPC methods.

    Every call runs the threads up to now first (each transition at the time it
    was due), so what an answer shows is what the worker would show then.
    """

    def __init__(
        self,
        release: Release,
        threads: list[ThreadSpec],
        timing: Timing | None = None,
        clock: Clock | None = None,
        *,
        miner: int = 1000,
        sectors: int | None = 0,
        wdpost_jobs: int | None = 0,
        first_number: int | None = None,
        git_commit: str | None = None,
        version_method: bool | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.release = release
        self.timing = timing or Timing()
        self.timing.check()
        self.clock = clock or Clock()
        self.miner = miner
        self.supply = {"work": sectors, "wdpost": wdpost_jobs}
        used = [spec.sector for spec in threads if spec.sector is not None]
        self._next = first_number if first_number is not None else max(used, default=0) + 1
        self.git_commit = git_commit
        self.has_version = release.version_method if version_method is None else version_method
        self.env: dict[str, str] = {}
        self.lines: list[str] = []
        self._print = log
        self.lock = threading.RLock()
        self.threads = self._build(threads)
        now = self.clock.now()
        for thread in self.threads:
            thread.start(now)
        self.advance()

    def _build(self, specs: list[ThreadSpec]) -> list[SealingThread]:
        """build_sealing_threads(): a duplicate location is skipped ("store already loaded")."""
        threads: list[SealingThread] = []
        seen: set[str] = set()
        for position, spec in enumerate(specs):
            self._check_spec(spec)
            location = None if spec.location is None else canonical_location(spec.location)
            if location is not None:
                if location in seen:
                    self.log(None, f"store already loaded: {location} (config entry {position})")
                    continue
                seen.add(location)
            index = position if self.release.index_gap else len(threads)
            threads.append(SealingThread(self, index, location, spec))
        return threads

    def _check_spec(self, spec: ThreadSpec) -> None:
        release = self.release
        if spec.plan not in release.plans:
            raise ValueError(
                f"plan {spec.plan!r} not in {release.tag} ({', '.join(release.plans)})"
            )
        if spec.location is None and not release.at_least("v0.8"):
            raise ValueError(f"{release.tag}: every sealing_thread needs a location")
        names = WDPOST_STATES if spec.plan == "wdpost" else release.states
        if spec.state is not None and spec.state not in names:
            raise ValueError(f"state {spec.state!r} unknown to {release.tag} ({spec.plan})")

    def log(self, thread: SealingThread | None, message: str) -> None:
        where = "worker" if thread is None else f"#{thread.index}"
        line = f"{where}: {message}"
        self.lines.append(line)
        if self._print:
            self._print(line)

    def next_number(self) -> int:
        number = self._next
        self._next += 1
        return number

    def supply_left(self, plan: str) -> int | None:
        return self.supply["wdpost" if plan == "wdpost" else "work"]

    def allocate(self, plan: str) -> int | None:
        """The manager's AllocateSector / WdPoStAllocateJobs: a number, or none left."""
        pool = "wdpost" if plan == "wdpost" else "work"
        left = self.supply[pool]
        if left is not None:
            if left <= 0:
                return None
            self.supply[pool] = left - 1
        return self.next_number()

    def advance(self) -> float:
        now = self.clock.now()
        for thread in self.threads:
            thread.advance(now)
        return now

    # -- the RPC methods (W rpc/worker/mod.rs, sealing/service.rs) -----------------------------

    def methods(self) -> dict[str, Method]:
        names = {
            "WorkerList": self.worker_list,
            "WorkerPause": self.worker_pause,
            "WorkerResume": self.worker_resume,
        }
        if self.release.env_methods:
            names["WorkerSetEnv"] = self.worker_set_env
            names["WorkerRemoveEnv"] = self.worker_remove_env
        if self.has_version:
            names["WorkerVersion"] = self.worker_version
        return {f"VenusWorker.{name}": self._locked(method) for name, method in names.items()}

    def _locked(self, method: Method) -> Method:
        def call(params: Any) -> Any:
            with self.lock:
                return method(params)

        return call

    def _thread_at(self, index: int) -> SealingThread:
        """`ctrls.get(index)`: the list position, not the `index` WorkerList shows."""
        if index >= len(self.threads):
            raise RpcFailure(-32602, f"worker #{index} not found")
        return self.threads[index]

    def worker_list(self, params: Any) -> list[dict]:
        expect_no_params(params, self.release.new_value_debug)
        now = self.advance()
        return [thread.info(now) for thread in self.threads]

    def worker_pause(self, params: Any) -> bool:
        (index,) = parse_positional(params, ("usize",))
        thread = self._thread_at(index)
        now = self.advance()
        return thread.pause(now)

    def worker_resume(self, params: Any) -> bool:
        index, state = parse_trailing(params, ("usize", "option<string>"), required=1)
        thread = self._thread_at(index)
        checked = self.release.resume_state_checked_by_rpc
        if checked and state is not None and state not in self.release.states:
            raise RpcFailure(-32602, f"invalid state {state}")  # Debug of anyhow!(..)
        now = self.advance()
        return thread.resume(now, state)

    def worker_set_env(self, params: Any) -> None:
        name, value = parse_positional(params, ("string", "string"))
        if not name or "=" in name or "\0" in name or "\0" in value:
            raise RpcFailure(-32602, "invalid environment variable name or value")
        self.env[name] = value

    def worker_remove_env(self, params: Any) -> None:
        (name,) = parse_positional(params, ("string",))
        if not name or "=" in name or "\0" in name:
            raise RpcFailure(-32602, "invalid environment variable name")
        self.env.pop(name, None)

    def worker_version(self, params: Any) -> str:
        expect_no_params(params, self.release.new_value_debug)
        return self.release.version_string(self.git_commit)


# -- HTTP as hyper 0.14 and jsonrpc-http-server 18 speak it ---------------------------------------

MAX_BODY = 5 * 1024 * 1024  # max_request_body_size
MAX_HEAD = 8192 + 4096 * 100  # hyper's DEFAULT_MAX_BUFFER_SIZE
MAX_HEADERS = 100
MAX_URI = 65534
REASONS = {
    100: "Continue",
    200: "OK",
    400: "Bad Request",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    414: "URI Too Long",
    415: "Unsupported Media Type",
    431: "Request Header Fields Too Large",
}
TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
JSON_TYPES = (
    "application/json",
    "application/json; charset=utf-8",
    "application/json;charset=utf-8",
)
TEXT = "text/plain; charset=utf-8"
UNSUPPORTED_TYPE = (
    "Supplied content type is not allowed. Content-Type: application/json is required\n"
)
NOT_ALLOWED = "Used HTTP Method is not allowed. POST or OPTIONS is required\n"
TOO_LARGE = "request body size exceeds allowed maximum"


class HttpError(Exception):
    """hyper answers the parse error itself (on_error) and closes; status None: just close."""

    def __init__(self, status: int | None) -> None:
        super().__init__(status)
        self.status = status


class Closed(Exception):
    """The peer closed, or the body ended early / was malformed: close, nothing sent."""


@dataclass
class HttpRequest:
    method: bytes
    target: bytes
    version: str  # "1.0" | "1.1"
    headers: list[tuple[str, bytes]]
    framing: tuple  # ("zero",) | ("length", n) | ("chunked",)
    keep_alive: bool  # hyper's view of the connection
    expect_continue: bool

    def header(self, name: str) -> str | None:
        """`headers().get(name).to_str().ok()`: the first value, if visible ASCII."""
        for key, value in self.headers:
            if key == name:
                return _header_str(value)
        return None

    def header_values(self, name: str) -> list[str]:
        values = (_header_str(value) for key, value in self.headers if key == name)
        return [value for value in values if value is not None]


def _header_str(value: bytes) -> str | None:
    if all(32 <= byte < 127 or byte == 9 for byte in value):
        return value.decode("ascii")
    return None


def _connection_has(value: bytes, token: str) -> bool:
    text = _header_str(value)
    return text is not None and any(part.strip().lower() == token for part in text.split(","))


def _lines(buffer: bytes | bytearray, start: int):
    """(line, end offset) for each complete line from `start` (CRLF or bare LF)."""
    position = start
    while True:
        newline = buffer.find(b"\n", position)
        if newline < 0:
            return
        line = bytes(buffer[position:newline])
        if line.endswith(b"\r"):
            line = line[:-1]
        if b"\r" in line:
            raise HttpError(400)  # httparse NewLine
        yield line, newline + 1
        position = newline + 1


def parse_head(buffer: bytearray, release: Release) -> tuple[HttpRequest, int] | None:
    """httparse + hyper's Server::parse: (request, head length) or None (need more)."""
    start = 0
    while buffer.startswith(b"\r\n", start) or buffer.startswith(b"\n", start):
        start += 2 if buffer.startswith(b"\r\n", start) else 1
    lines = _lines(buffer, start)
    first = next(lines, None)
    if first is None:
        _check_partial_request_line(bytes(buffer[start:]), release)
        return None
    method, target, version = _request_line(first[0], release)
    headers = []
    for line, end in lines:
        if not line:
            return _hyper_request(method, target, version, headers, release), end
        if len(headers) == MAX_HEADERS:
            raise HttpError(431)  # TooManyHeaders -> Parse::TooLarge
        headers.append(_header_line(line))
    if len(buffer) > MAX_HEAD:
        raise HttpError(431)
    return None


def _check_partial_request_line(data: bytes, release: Release) -> None:
    if len(data) > MAX_HEAD:
        raise HttpError(431)
    method = data.split(b" ", 1)[0]
    if any(byte not in TCHAR for byte in method):
        raise HttpError(400)


def _request_line(line: bytes, release: Release) -> tuple[bytes, bytes, str]:
    method, space, rest = line.partition(b" ")
    if not method or not space or any(byte not in TCHAR for byte in method):
        raise HttpError(400)  # Parse::Method
    target, space, version = rest.partition(b" ")
    if not target or not space or any(not 0x21 <= byte <= 0x7E for byte in target):
        raise HttpError(400)  # Parse::Uri
    if version not in (b"HTTP/1.0", b"HTTP/1.1"):
        raise HttpError(400)  # Parse::Version
    if len(target) > MAX_URI:
        raise HttpError(414 if release.hyper >= (0, 14, 16) else 400)
    return method, target, version[5:].decode()


def _header_line(line: bytes) -> tuple[str, bytes]:
    name, colon, value = line.partition(b":")
    if not colon or not name or any(byte not in TCHAR for byte in name):
        raise HttpError(400)  # HeaderName
    value = value.strip(b" \t")
    if any(byte < 0x20 and byte != 9 or byte == 0x7F for byte in value):
        raise HttpError(400)  # HeaderValue
    return name.decode("ascii").lower(), value


def _hyper_request(method, target, version, headers, release) -> HttpRequest:
    """Server::parse's header walk: framing, keep-alive, Expect (role.rs)."""
    keep_alive = version == "1.1"
    framing: tuple = ("zero",)
    content_length = None
    is_te = te_chunked = False
    expect = False
    for name, value in headers:
        if name == "transfer-encoding":
            if version == "1.0":
                raise HttpError(400)  # HTTP/1.0 cannot have Transfer-Encoding
            is_te = True
            text = _header_str(value)
            te_chunked = text is not None and text.rsplit(",", 1)[-1].strip().lower() == "chunked"
            if te_chunked:
                framing = ("chunked",)
        elif name == "content-length":
            if is_te:
                continue
            if not value or not value.isdigit() or int(value) > 2**64 - 3:
                raise HttpError(400)
            length = int(value)
            if content_length is not None and content_length != length:
                raise HttpError(400)
            if content_length is None:
                content_length = length
                framing = ("length", length) if length else ("zero",)
        elif name == "connection":
            if keep_alive:
                keep_alive = not _connection_has(value, "close")
            else:
                keep_alive = _connection_has(value, "keep-alive")
        elif name == "expect":
            if release.hyper >= (0, 14, 16):
                expect = value.lower() == b"100-continue"
            else:
                expect = value == b"100-continue"
    if is_te and not te_chunked:
        raise HttpError(400)
    return HttpRequest(method, target, version, headers, framing, keep_alive, expect)


def origin_reflected(origin: str) -> str:
    """`Origin::parse(origin)` as jsonrpc's cors.rs writes it back."""
    pieces = origin.split("://")
    protocol, rest = ("http", pieces[0]) if len(pieces) == 1 else (pieces[0].lower(), pieces[1])
    return f"{protocol}://{_host_string(rest)}"


def _host_string(text: str) -> str:
    """Host::parse: drop a scheme and a path, lower-case, keep `:port`."""
    pieces = text.split("://")
    host = (pieces[1] if len(pieces) > 1 else pieces[0]).split("/")[0].lower()
    name, *ports = host.split(":")
    if not ports:
        return name
    port = ports[0]
    digits = port[1:] if port.startswith("+") else port
    if digits.isdigit() and digits.isascii() and int(digits) <= 65535:
        port = str(int(digits))
    return f"{name}:{port}"


def cors_headers(request: HttpRequest) -> list[tuple[str, str]]:
    """cors_domains None: any Origin but the server's own is reflected (server-utils cors.rs)."""
    origin = request.header("origin")
    if origin is None:
        return []
    host = request.header("host")
    if host is not None and origin.endswith(host):
        parsed = origin.split("://")
        rest = parsed[1] if len(parsed) > 1 else parsed[0]
        if _host_string(rest) == host:
            return []
    allowed = "null" if origin == "null" else origin_reflected(origin)
    headers = [
        ("vary", "origin"),
        ("access-control-allow-methods", "OPTIONS, POST"),
        ("access-control-allow-origin", allowed),
    ]
    requested = [
        name
        for value in request.header_values("access-control-request-headers")
        for part in value.split(", ")
        for name in part.split(",")
    ]
    if requested:
        headers.append(("access-control-allow-headers", ", ".join(requested)))
    return headers


def http_date() -> str:
    return email.utils.formatdate(usegmt=True)


def response_bytes(
    version: str,
    status: int,
    headers: list[tuple[str, str]],
    body: bytes,
    head_only: bool = False,
) -> bytes:
    """hyper's encode: status line, the map's headers in order, content-length, date."""
    if version == "1.1" and status == 200:
        lines = ["HTTP/1.1 200 OK"]
    else:
        lines = [f"HTTP/{version} {status} {REASONS[status]}"]
    lines += [f"{name}: {value}" for name, value in headers]
    lines += [f"content-length: {len(body)}", f"date: {http_date()}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else body)


class HttpConnection:
    """One accepted connection, served until either side closes it (no idle timeout)."""

    def __init__(self, sock: socket.socket, server: StandinServer) -> None:
        self.sock = sock
        self.server = server
        self.buffer = bytearray()
        self.methods = server.worker.methods()

    def serve(self) -> None:
        try:
            while self._serve_one():
                pass
            self._close_gently()
        except (Closed, OSError):
            pass
        finally:
            self.server.forget(self)
            with contextlib.suppress(OSError):
                self.sock.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    # -- reading -------------------------------------------------------------------------------

    def _recv(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise Closed
        self.buffer += chunk

    def _read_head(self) -> HttpRequest | None:
        release = self.server.worker.release
        while True:
            parsed = parse_head(self.buffer, release) if self.buffer.strip(b"\r\n") else None
            if parsed is not None:
                request, length = parsed
                del self.buffer[:length]
                return request
            try:
                self._recv()
            except Closed:
                if self.buffer.strip(b"\r\n"):
                    raise HttpError(None) from None  # EOF mid-head: closed without a reply
                return None  # a clean close between requests

    def _body_chunks(self, request: HttpRequest):
        """The body as hyper hands it to jsonrpc: chunks as they arrive."""
        kind = request.framing[0]
        if kind == "length":
            left = request.framing[1]
            while left:
                if not self.buffer:
                    self._recv()
                piece = bytes(self.buffer[:left])
                del self.buffer[: len(piece)]
                left -= len(piece)
                yield piece
        elif kind == "chunked":
            yield from self._chunked()

    def _chunked(self):
        while True:
            size_text = self._line().split(b";", 1)[0].rstrip(b" \t")
            hex_digits = b"0123456789abcdefABCDEF"
            if not 0 < len(size_text) <= 16 or any(b not in hex_digits for b in size_text):
                raise Closed  # "Invalid chunk size line": the body errors, no reply
            left = int(size_text, 16)
            if left == 0:
                while self._line():  # trailers, then the empty line
                    pass
                return
            while left:  # hand on what has arrived, as hyper does
                if not self.buffer:
                    self._recv()
                piece = bytes(self.buffer[:left])
                del self.buffer[: len(piece)]
                left -= len(piece)
                yield piece
            if self._line():
                raise Closed  # the chunk's data is not followed by CRLF

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            if len(self.buffer) > 65536:
                raise Closed
            self._recv()
        line, _, rest = bytes(self.buffer).partition(b"\r\n")
        self.buffer[:] = rest
        return line

    def _drained(self, request: HttpRequest) -> bool:
        """poll_drain_or_close_read: a body no one read is skipped only if it is all here."""
        kind = request.framing[0]
        if kind == "zero":
            return True
        if kind == "chunked":
            return False  # (hyper may drain a small chunked body; the stand-in closes)
        self.sock.setblocking(False)
        try:
            with contextlib.suppress(BlockingIOError, InterruptedError):
                self.buffer += self.sock.recv(65536)
        finally:
            self.sock.setblocking(True)
        if len(self.buffer) < request.framing[1]:
            return False
        del self.buffer[: request.framing[1]]
        return True

    # -- answering -----------------------------------------------------------------------------

    def _serve_one(self) -> bool:
        """Read one request and answer it; False when the connection is to be closed."""
        try:
            request = self._read_head()
        except HttpError as error:
            if error.status is not None:  # hyper's own answer to a parse error (on_error)
                self.sock.sendall(response_bytes("1.1", error.status, [], b""))
            return False
        if request is None:
            return False
        answer = self._answer(request)
        if answer is None:  # a broken body or a panicking handler: no reply
            return False
        status, content_type, body, body_read = answer
        headers = [("content-type", content_type)]
        if request.method == b"OPTIONS":
            headers += [("allow", "OPTIONS, POST"), ("accept", "application/json")]
        headers += cors_headers(request)
        keep_alive = request.keep_alive
        if request.header("connection") == "close":  # jsonrpc's utils::keep_alive
            headers.append(("connection", "close"))
            keep_alive = False
        if request.version == "1.0" and keep_alive:
            headers.append(("connection", "keep-alive"))  # hyper's fix_keep_alive
        if body_read is None or (body_read is False and not self._drained(request)):
            keep_alive = False  # None: read in part (413)
        head_only = request.method == b"HEAD"
        self.sock.sendall(response_bytes(request.version, status, headers, body, head_only))
        return keep_alive

    def _answer(self, request: HttpRequest) -> tuple[int, str, bytes, bool | None] | None:
        """jsonrpc-http-server's handler: (status, content type, body, body read?)."""
        content_type = request.header("content-type")
        if request.method == b"POST" and content_type and content_type.lower() in JSON_TYPES:
            return self._rpc(request)
        if request.method == b"POST":
            return 415, TEXT, UNSUPPORTED_TYPE.encode(), False
        if request.method == b"OPTIONS":
            return 200, "application/json; charset=utf-8", b"", False
        return 405, TEXT, NOT_ALLOWED.encode(), False

    def _rpc(self, request: HttpRequest) -> tuple[int, str, bytes, bool | None] | None:
        if request.expect_continue and request.framing[0] != "zero":
            self.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = bytearray()
        try:
            for chunk in self._body_chunks(request):
                if len(body) + len(chunk) > MAX_BODY:
                    return 413, TEXT, TOO_LARGE.encode(), None
                body += chunk
        except Closed:
            return None
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as error:
            message = f"utf-8 encoding error at byte {error.start} in request body"
            return 400, TEXT, message.encode(), True
        try:
            reply = handle_request(text, self.methods)
        except Panic:
            return None
        content = b"" if reply is None else (reply + "\n").encode()
        return 200, "application/json; charset=utf-8", content, True

    def _close_gently(self) -> None:
        """FIN first, then read what the peer still sends for a moment, so it gets the reply."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
            self.sock.settimeout(0.5)
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline and self.sock.recv(65536):
                pass


class StandinServer:
    """The worker's control port: 127.0.0.1 only, one thread per connection."""

    def __init__(self, worker: Worker, port: int = 0, host: str = "127.0.0.1") -> None:
        if not host.startswith("127."):
            raise ValueError("the stand-in listens on loopback only")
        self.worker = worker
        self.listener = socket.create_server((host, port), backlog=1024)
        self.address = self.listener.getsockname()
        self.port = self.address[1]
        self._connections: set[HttpConnection] = set()
        self.accepted = 0  # connections accepted so far (tests count venusctl's channels)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closing = False

    def serve_forever(self) -> None:
        while not self._closing:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                if self._closing:
                    return
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection = HttpConnection(sock, self)
            with self._lock:
                self._connections.add(connection)
                self.accepted += 1
            threading.Thread(target=connection.serve, daemon=True).start()

    def start(self) -> StandinServer:
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()
        return self

    def forget(self, connection: HttpConnection) -> None:
        with self._lock:
            self._connections.discard(connection)

    def close(self) -> None:
        self._closing = True
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            connection.close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> StandinServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# -- scenarios and the command line ---------------------------------------------------------------

C2_ERROR = "permanent: No cached parameters found for stacked-proof-of-replication (standin)"
# "Frozen" timing: nothing moves during a test (PC1 runs for hours).
FROZEN = Timing(seal_interval=3600, recover_interval=3600, poll=3600, stage=14400, step=3600)


def default_threads(root: str) -> list[ThreadSpec]:
    """The threads of a run without a scenario: paused with a C2 error, PC1, asking for work."""
    return [
        ThreadSpec(f"{root}/store1", "sealer", "C1Done", 2, "paused", 17, C2_ERROR),
        ThreadSpec(f"{root}/store2", "sealer", "TicketAssigned", 3, "run", 100),
        ThreadSpec(f"{root}/store3", "sealer", None, None, "run", 0),
    ]


def load_scenario(path: str) -> dict[str, Any]:
    """A --scenario file: the worker's threads (ThreadSpec fields), timing (Timing
    fields) and what the manager hands out (null: without end). For example::

        {"release": "v0.8.0", "sectors": 2, "wdpost_jobs": null,
         "timing": {"stage": 0.2, "seal_interval": 1, "stages": {"PC1": 2}},
         "threads": [{"location": "/mnt/a", "state": "C1Done", "sector": 7,
                      "phase": "paused", "since": 17, "last_error": "permanent: ..."},
                     {"location": "/mnt/a/"},
                     {"plan": "wdpost"}]}
    """
    with open(path, encoding="utf-8") as file:
        data = json.load(file)
    unknown = set(data) - {"release", "threads", "timing", "miner", "sectors", "wdpost_jobs"}
    if unknown:
        raise ValueError(f"{path}: unknown key(s): {', '.join(sorted(unknown))}")
    return data


def timing_from_json(data: dict[str, Any]) -> Timing:
    unknown = set(data) - set(Timing.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown timing key(s): {', '.join(sorted(unknown))}")
    return Timing(**data)


def worker_from_args(args: argparse.Namespace, log: Callable[[str], None] | None) -> Worker:
    options: dict[str, Any] = {"git_commit": args.git_commit, "log": log}
    if args.without_version:
        options["version_method"] = False
    scenario = load_scenario(args.scenario) if args.scenario else {}
    release = release_of(args.release or scenario.get("release", "v0.9.0"))
    if "threads" in scenario:
        threads = [ThreadSpec.from_json(item) for item in scenario["threads"]]
    else:
        threads = default_threads(args.root)
    timing = timing_from_json(scenario["timing"]) if "timing" in scenario else replace(FROZEN)
    for key in ("miner", "sectors", "wdpost_jobs"):
        if key in scenario:
            options[key] = scenario[key]
    return Worker(release, threads, timing, **options)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Release lines: "
        + "; ".join(f"{name} = {first}..{last}" for name, (first, last) in LINES.items()),
    )
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--release", help="a damocles-worker tag, e.g. v0.8.0 (default v0.9.0)")
    parser.add_argument("--scenario", help="a JSON file: release, threads, timing, sectors ...")
    parser.add_argument("--root", default="/mnt/damocles", help="locations of the default threads")
    parser.add_argument(
        "--without-version",
        action="store_true",
        help="answer WorkerVersion with -32601 Method not found, as a worker without it would",
    )
    parser.add_argument("--git-commit", help="GIT_COMMIT of the build (WorkerVersion's tail)")
    parser.add_argument("--log", action="store_true", help="print thread events to stderr")
    args = parser.parse_args(argv)
    log = (lambda line: print(line, file=sys.stderr, flush=True)) if args.log else None
    try:
        worker = worker_from_args(args, log)
    except (ValueError, TypeError, OSError) as error:
        parser.error(str(error))
    server = StandinServer(worker, args.port)
    print(f"listening on 127.0.0.1:{server.port}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is the normal way to stop it
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
