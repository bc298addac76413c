"""venusctl: see and steer the sealing threads of every worker host, over SSH.

usage: venusctl [-i INVENTORY | --fleet NAME] [--json] [--full] [--color WHEN] [--debug]
                [--forks N] [--deadline DURATION] [--no-persist] COMMAND ...

commands:
  list [-l LIMIT] [--expiration 10m] [--wide]
                            one row per host: Name Dest Threads Empty Paused Errors LastPing
                            (LastPing gets a "!" when older than --expiration; --wide adds
                            Version, Queued: pauses waiting for a running stage, ...)
  list ... --watch [SECONDS] [--count N]
                            refresh every SECONDS (default 2) over kept connections
  threads [SELECTORS] [--wide] [--watch [SECONDS]]
                            every matching thread of the fleet, one table (Host +
                            the info columns), a count line, unreachable hosts after
  info HOST [--wide]        one row per sealing thread of HOST
  pause HOST INDEX          pause thread INDEX; it stops at its next stage boundary
                            (says "paused" or "pause queued" behind a running stage)
  resume HOST INDEX [STATE] resume a paused thread, optionally moved to STATE; on a
                            thread whose pause is still queued, cancel that pause
  pause -l LIMIT [SELECTORS] [--yes | --dry-run]
  resume -l LIMIT [SELECTORS] [--to-state STATE] [--yes | --dry-run]
                            the same for every selected thread: prints the plan
                            (with the sectors each state move touches), acts with
                            --yes or after y/N on a terminal
  pause ... --wait [TIMEOUT]
                            then wait until each thread shows Paused (default 2h)
  resume ... Finished|Aborted --force
                            ends the sector's task for good (finalised without a proof,
                            or dropped with its data): --force besides --yes or the y/N
  drain HOST|-l LIMIT [SELECTORS] [--timeout 2h] [--interval 2s] [--keep-queued]
                            pause every selected thread at its next stage boundary
                            and wait until every one is Paused; on timeout or Ctrl-C
                            the pauses still queued are cancelled (unless --keep-queued)
  health [-l LIMIT] [--expiration 10m] [--paused-warn 1h] [--paused-crit 6h]
         [--stuck KEY=DURATION ...] [-t 60s] [--prometheus FILE] [--quiet]
         [--verbose]
                            judge the fleet for cron and monitoring: a plugin line,
                            the findings (identical ones grouped), a per-host
                            summary; exit 0 OK 1 WARNING 2 CRITICAL 3 UNKNOWN;
                            [[silence]] tables mute hosts until a time
                            (see venusctl health --help)
  inventory [--ansible | --check]
                            the hosts as read from the inventory (no connection);
                            --ansible: Ansible's JSON inventory (playbooks/inventory.py);
                            --check: no two hosts of one miner share sector numbers
  sector SECTOR_ID [-l LIMIT]
                            where a sector is and what happened to it (its event log)
  history HOST INDEX [--limit K]
                            one thread's history: state changes, pauses, who asked
  stats [SELECTORS] [--since 7d] [--by-host]
                            per stage: tasks, p50, p90, max, failures, common error
  logs HOST INDEX [--stage S] [-n LINES|all] [--runs N | --all] [-f]
                            what the thread's last stage runs printed (stdout, stderr)
  journal HOST [-n LINES|all] [-f]
                            the agent's own log: journalctl -u UNIT on the host
  ssh HOST [COMMAND ...]    OpenSSH to HOST with the inventory's user, port, key,
                            known_hosts and jump hosts: a session, or COMMAND
  completion bash|zsh|fish  the shell completion script (also --help-man: the man page)
  keeper [status|stop]      this user's connection keeper: what it holds, or end it

HOST is a host's name, its address, or address:port ([::1]:22) in the inventory. LIMIT
is an Ansible host pattern: host names, group names, `all`, `ungrouped`, shell globs
and ~REGEX, separated by commas (or by colons when there is none); a term may start
with `!` (all but it: -l 'all:!gpu-03', or -l '!gpu-03' alone) or `&` (and also in
it: -l 'gpu:&rack1'). Quote a `!` from the shell.
SELECTORS: --state S[,S...], --stage X, --plan P, --paused, --errors,
--error-match REGEX, --idle; a thread is selected when every one given
holds. Names are checked before any connection: a case-only difference is
normalised (c1done is C1Done), a typo refused with the closest names.
Nothing empty ever means "all": an empty -l or selector value is refused;
pause, resume and drain need -l, and reach the whole fleet only with -l all
(or -l '*'); a limit that leaves no host is refused too.

Output: worker text (errors, paths, names) is printed with its control
characters escaped (ESC as \\x1b, a newline as \\n); --json keeps it exact. On
a terminal, long table cells are cut with ... to fit (LastErr first; --full:
never). Under --json every failure is one document too:
{"error": {"code": ..., "message": ...}}, with the same exit status. list, info,
threads and inventory take --sort KEY[,KEY] [--reverse], --columns LIST,
--no-header and -o table|wide|csv|tsv|json (CSV: values exact, quoted by the
csv rules; TSV: tab, newline and backslash escaped). On a terminal, tables are
coloured (paused yellow, errors red, an expired LastPing bold): never in a pipe,
nor with $NO_COLOR set; --color always|never|auto.

The inventory is the first of: -i PATH, --fleet NAME (~/.config/venusctl/NAME.toml,
else /etc/venusctl/NAME.toml), $VENUSCTL_INVENTORY, $VENUSCTL_FLEET, ./inventory.toml,
~/.config/venusctl/inventory.toml ($XDG_CONFIG_HOME), /etc/venusctl/inventory.toml;
`venusctl inventory` says which file it read, and why.
Each host is reached over SSH as OpenSSH would reach it: ~/.ssh/config and
/etc/ssh/ssh_config (Include, Host, Match, ProxyJump, ProxyCommand, ...; the
inventory's values win), known_hosts (hashed, patterns, @cert-authority,
@revoked, global files), ssh-agent; targets behind one jump host share one
connection to it. A directive venusctl cannot honour is an error on its
host's row. The agent is asked through a direct-streamlocal channel to its
Unix socket, or by running `venus-worker worker -c CONFIG ... --json` on the
host when sshd refuses that channel (transport = "auto"; the CLI also reads
the last heartbeat of a stopped daemon); transport = "local" talks to an
agent on this machine without SSH. A host with backend = "damocles" is an
original damocles-worker (any release, v0.1.1 to v0.13): its JSON-RPC port
(rpc = "127.0.0.1:17890") is reached through one direct-tcpip channel of the
SSH connection, nothing installed on it. All hosts are asked in parallel,
each within connect_timeout + command_timeout for its whole exchange, the
run within --deadline if given.

Connections are kept between runs by this user's connection keeper, started
by the first run that reaches a host over SSH and ending after [defaults]
persist (10m) without a request: the next commands answer without a new
login, saying exactly what they would have said. Its socket is 0600 in
$XDG_RUNTIME_DIR/venusctl (else /run/user/UID/venusctl, else
$TMPDIR/venusctl-UID) and serves its user only. persist = 0,
$VENUSCTL_PERSIST=0 or --no-persist: every run connects itself. health (and a
TAB's thread indexes) use a keeper only when one is alive; journal, ssh and
--watch connect themselves.

exit status: 0 all done, 1 some host or operation failed, 2 usage or
configuration error (also an inventory without hosts), 130 interrupted;
health: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
"""


# Layout: one file, read top to bottom; each section uses only those above it.
#
#   Exit codes, Errors     ExitStatus, Severity; VenusctlError ends the run, HostError is a row
#   Values                 durations, thread indexes, state and stage names, --stuck keys
#   Inventory              which file (find_inventory: -i, --fleet, ... /etc/venusctl),
#                          inventory.toml -> Host, Inventory; HOST targets, --limit patterns
#   Host answers           HostStatus (typed at the edge), damocles' WorkerInfo shapes, Action
#   Tables and JSON        what list, info, pause/resume and inventory print; TableSpec:
#                          columns, --sort, -o csv|tsv, colour (add_table_options)
#   Health engine          thresholds, findings, the plugin line, JSON, Prometheus text
#   Fleet threads, Drain   selectors and bulk plans; drain's view of a thread
#   Deadlines              Deadline: one bound per exchange; the host job's, per thread
#   JSON-RPC and agents    RpcAgent, CliAgent, DamoclesAgent: each wire answer -> api types
#   ssh_config             SshConfigFiles: OpenSSH's reading (Include, Host, Match, tokens)
#   Reaching a host        SshTarget (frozen): inventory over ssh_config, jump hops
#   known_hosts            KnownHosts, HostCertificate, check_host_key (OpenSSH's rules)
#   Sessions               sockets (TCP, ProxyCommand, jump channels), ssh-agent and keys,
#                          SshContext (shared jump connections), LocalSession, SshSession
#   Transport policy       open_agent (stream, exec, local, damocles; the fallback), actions,
#                          fan_out -> GroupResult (per-host budget, --deadline), SessionPool
#   Keeper                 connections kept between runs: a per-user process on a 0600
#                          socket (the wire, typed values, OPERATIONS, HostCall), its client
#   Commands               Context; list/threads/watch/info/inventory, pause/resume (--wait,
#                          --force), drain, logs/journal, ssh, health; sector/history/stats
#                          (the agents' histories)
#   Argument parser        build_parser
#   Completion, man page   `venusctl __complete` and the shells' scripts, venusctl(1): both
#                          read from the parser
#   main                   main(argv, env) -> int, the only exit
#
# The contract with the agent (WorkerInfo, the report, codes, states, durations) is
# worker_agent/api.py, which both programs import.

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import enum
import fnmatch
import functools
import gc
import getpass
import glob
import importlib
import json
import math
import os
import re
import shlex
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from worker_agent import __version__, api
from worker_agent.api import ThreadActivity, ThreadState, WorkerInfo

# paramiko, tomlkit and tabulate are imported inside the functions that need
# them: a `local` run never pays for paramiko (~0.13-0.2 s of imports, see
# DESIGN.md field notes), a --json run never pays for tabulate (~5 ms). So are
# subprocess, shutil, tempfile, difflib, traceback, base64, hmac and hashlib
# (~12 ms of imports together), which a warm run through the keeper does not use.

__all__ = [
    "ExitStatus",
    "Severity",
    "VenusctlError",
    "UsageError",
    "InventoryError",
    "HostError",
    "ConnectionRefused",
    "HostTimeout",
    "AgentNotRunning",
    "AgentNotInstalled",
    "UnreadableReply",
    "UnsupportedReply",
    "NoReply",
    "ReplyTimeout",
    "HttpRefused",
    "ResumeDidNotHold",
    "AgentRefused",
    "NoAnswer",
    "parse_duration",
    "format_duration",
    "parse_index",
    "parse_state",
    "parse_state_list",
    "parse_stage",
    "parse_plan_name",
    "compile_error_match",
    "STUCK_DEFAULTS",
    "check_stuck_key",
    "parse_stuck_option",
    "Host",
    "HealthSettings",
    "Inventory",
    "inventory_path",
    "InventorySource",
    "find_inventory",
    "fleet_names",
    "NoInventory",
    "UnknownFleet",
    "EmptySelection",
    "split_limit",
    "load_inventory",
    "parse_inventory",
    "parse_rpc_address",
    "resolve_target",
    "select_hosts",
    "HostStatus",
    "DamoclesLine",
    "DAMOCLES_LINES",
    "damocles_threads",
    "damocles_worker_info",
    "normalize_worker_info",
    "plan_states",
    "resume_states",
    "check_resume_state",
    "Action",
    "ActionOutcome",
    "LIST_WIDE_HEADERS",
    "INFO_HEADERS",
    "list_entry",
    "list_table",
    "info_table",
    "inventory_table",
    "ansible_inventory",
    "render_table",
    "Thresholds",
    "Finding",
    "HealthReport",
    "judge_fleet",
    "health_summary",
    "health_text",
    "health_json",
    "prometheus_text",
    "Selector",
    "FleetThread",
    "select_threads",
    "count_line",
    "threads_table",
    "unreachable_lines",
    "Step",
    "plan_steps",
    "invalid_resume_state",
    "plan_summary",
    "plan_moves",
    "move_effect",
    "Move",
    "FINAL_STATES",
    "results_summary",
    "describe_thread",
    "JsonRpcClient",
    "RpcAgent",
    "DamoclesAgent",
    "CommandResult",
    "CliAgent",
    "checked_threads",
    "parse_cli_reply",
    "status_argv",
    "pause_argv",
    "resume_argv",
    "SshContext",
    "SSH_READER_POLL",
    "GC_YOUNG_THRESHOLD",
    "SshSession",
    "connect_tcp",
    "connect_ssh",
    "open_agent",
    "query_status",
    "perform",
    "perform_all",
    "act_all",
    "GroupResult",
    "fan_out",
    "SessionPool",
    "HostCall",
    "OPERATIONS",
    "host_operation",
    "KeeperClient",
    "keeper_main",
    # the keeper's tests reach these too (what comes back through its wire, its settings)
    "KEEPER_HELLO_TIMEOUT",
    "keeper_code",
    "keeper_for",
    "keeper_paths",
    "persist_seconds",
    "action_error",
    "action_error_json",
    "describe_unexpected",
    "error_json",
    "error_text",
    "AgentUnreachable",
    "AuthenticationFailed",
    "BothWaysFailed",
    "HostKeyMismatch",
    "HostKeyRevoked",
    "JumpHostError",
    "StreamConnectFailed",
    "UnknownHostKey",
    "Context",
    "list_report",
    "Drain",
    "health_thresholds",
    "write_textfile",
    "build_parser",
    "Environment",
    "main",
    "requested_command",
    # added by the issues after 11 (the tests' names for them; test_api checks the list)
    "COMPLETIONS",
    "COMPLETE_TIMEOUT",
    "DAMOCLES_QUEUED",
    "DEFAULT_IDENTITY_FILES",
    "FINDING_STATUSES",
    "FLEET_METRICS",
    "HEALTH_DEFAULTS",
    "INFO_TABLE",
    "INFO_WIDE_HEADERS",
    "KnownHostsFile",
    "LATE_GRACE",
    "LIST_TABLE",
    "NotConfirmed",
    "PAUSE_CANCELLED",
    "PAUSE_QUEUED",
    "PAUSE_SENT",
    "PLAN_NAMES",
    "ProxyCommandSocket",
    "STAGE_NAMES",
    "STATE_NAMES",
    "STATS_BAR_MAX",
    "SshConfigError",
    "SshConfigFiles",
    "TableView",
    "ThreadState",
    "UnknownHost",
    "WDPOST_STATES",
    "WorkerInfo",
    "action_entry",
    "action_line",
    "ansible_hostvars",
    "control_actor",
    "drain_table",
    "entry_line",
    "escape_text",
    "finding_line",
    "fit_cells",
    "history_table",
    "info_entry",
    "info_failure_line",
    "judge_host",
    "man_page",
    "perfdata_item",
    "plan_table",
    "range_overlaps",
    "render_spec",
    "selector_from",
    "split_line",
    "stage_bar",
    "stats_rows",
]


# =============================================================================
# Exit codes
# =============================================================================


class ExitStatus(enum.IntEnum):
    """What `main` returns, except for `health` (see Severity)."""

    OK = 0
    FAILED = 1  # some host or operation failed; the others were still done
    USAGE = 2  # bad command line or inventory; nothing was contacted
    INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT


class Severity(enum.IntEnum):
    """`health`'s findings and exit status: the monitoring-plugin convention.

    Nagios, Icinga, Sensu and friends read the exit status as the state, so
    UNKNOWN (the check itself could not run: bad inventory or arguments, the
    deadline passed) is 3, never venusctl's usual 2.
    """

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3


# =============================================================================
# Errors
# =============================================================================


class VenusctlError(Exception):
    """An error that ends the whole run with `exit_status` and a one-line message.

    `code` is the stable word scripts read in the `--json` error document
    (`{"error": {"code": ..., "message": ...}}`, README "--json").
    """

    exit_status = ExitStatus.FAILED
    code = "failed"

    def __init__(self, message: str, document: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        # What a --json run had to say besides the error (e.g. the plan that was not
        # confirmed): one document carries both.
        self.document = document


class UsageError(VenusctlError):
    """Bad command line, unknown target, or bad inventory: exit 2 before any connection."""

    exit_status = ExitStatus.USAGE
    code = "usage"


class UnknownHost(UsageError):
    """A HOST or a -l word that names no host (or group) of the inventory."""

    code = "unknown-host"


class NotConfirmed(UsageError):
    """A bulk action neither confirmed with --yes nor on a terminal."""

    code = "not-confirmed"


class NotForced(UsageError):
    """A resume into Finished or Aborted without --force: it ends the sector's task for good."""

    code = "not-forced"


class InventoryError(UsageError):
    """The inventory file is unreadable or invalid; the message names file and line or key."""

    code = "inventory"


class EmptySelection(UsageError):
    """A -l whose terms each match hosts but together leave none (`gpu:&cpu`)."""

    code = "empty-selection"


class NoHosts(InventoryError):
    """The inventory has no [[host]]: a command that asks hosts has none to ask."""

    code = "no-hosts"


class HostError(Exception):
    """One host could not be asked; becomes that host's row, never the end of the run.

    `kind` is stable for scripts (`--json`); the message is the reason an
    operator reads in the table.
    """

    kind = "error"

    def __init__(self, message: str, kind: str | None = None) -> None:
        super().__init__(message)
        if kind is not None:
            self.kind = kind

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": str(self)}


class ConnectionRefused(HostError):
    kind = "connection-refused"


class HostTimeout(HostError):
    kind = "timeout"


class ReplyTimeout(HostTimeout):
    """The request was sent (or the command started) but no reply came in time.

    For a status it is a timeout row like any other; for a pause or a resume it
    means the action may still take effect, and it is reported so (action_error).
    """

    def __init__(self, message: str, seconds: float) -> None:
        super().__init__(message)
        self.seconds = seconds


class HostKeyMismatch(HostError):
    kind = "host-key-mismatch"


class UnknownHostKey(HostError):
    kind = "unknown-host-key"


class AuthenticationFailed(HostError):
    kind = "authentication-failed"


class AgentNotRunning(HostError):
    kind = "agent-not-running"


class AgentNotInstalled(HostError):
    kind = "agent-not-installed"


class UnreadableReply(HostError):
    kind = "unreadable-reply"


class UnsupportedReply(UnreadableReply):
    """A damocles-worker answered in a shape venusctl cannot read (a release it does not know)."""

    kind = "unsupported-reply"


class NoReply(UnreadableReply):
    """The connection was closed before the whole reply came (EOF where a reply was due)."""

    kind = "no-reply"


class HttpRefused(UnreadableReply):
    """The RPC server answered with an HTTP error (415, 405, 413, 400 ...), not JSON-RPC."""

    kind = "http-refused"


class ResumeDidNotHold(HostError):
    """A damocles-worker took a resume, but the thread read back says it did not do what was
    asked (`kind` paused-again or state-ignored)."""


class StreamForbidden(HostError):
    """sshd refused the direct-streamlocal channel (AllowStreamLocalForwarding no)."""

    kind = "stream-forbidden"


class StreamConnectFailed(HostError):
    """sshd could not connect the stream channel to the agent's socket.

    OpenSSH says only "connect failed", whether no agent listens there, the
    SSH user may not use the socket, or AllowStreamLocalForwarding is off: so
    it never says "agent not running"; the exec fallback (the CLI on the
    host) can tell which.
    """

    kind = "stream-connect-failed"


class AgentUnreachable(HostError):
    """The agent's CLI on the host found the socket but could not talk to it (api code
    AGENT_UNREACHABLE: permission denied, a timeout): the agent may well be running."""

    kind = "agent-unreachable"


class BothWaysFailed(HostError):
    """auto: the stream channel failed, and so did the exec fallback; the row names both.

    `kind` is the exec failure's (the more precise one: not installed, config
    unreadable, permission denied on the socket).
    """

    def __init__(self, stream: HostError, fallback: HostError) -> None:
        super().__init__(
            f"stream: {error_text(stream)}; exec fallback: {error_text(fallback)}", fallback.kind
        )
        self.stream, self.fallback = stream, fallback


class TcpForwardingForbidden(HostError):
    """sshd refused the direct-tcpip channel to a damocles host's RPC (AllowTcpForwarding no)."""

    kind = "tcp-forwarding-forbidden"


class DamoclesNotReachable(HostError):
    """Nothing accepts connections at the damocles host's `rpc` address (worker down)."""

    kind = "damocles-not-reachable"


class AgentRefused(HostError):
    """The agent answered with a JSON-RPC error (api.RpcCode): shown to the operator as it is."""

    kind = "agent-refused"

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "code": int(self.code), "message": str(self)}


class NoAnswer(HostError):
    """The host was still being asked when --deadline (any command's) passed."""

    kind = "no-answer"


# =============================================================================
# Values: durations, indexes, names and thresholds
# =============================================================================


def parse_duration(text: str) -> float:
    """The one duration grammar (api.parse_duration: '10m', '1h 30m', '5min', '500ms'),
    where a plain number is seconds ('600'), as venusctl's options and inventory always took."""
    return api.parse_duration(text, bare_seconds=True)


def format_duration(seconds: float | None) -> str:
    """2.7s, 17s, 13m42s, 336h41m13s (Go style, without days); '-' for None.

    Floats under a minute keep one decimal (a heartbeat age); whole seconds
    (thread elapsed times) print without one.
    """
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s" if float(seconds).is_integer() else f"{seconds:.1f}s"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes}m{secs}s" if hours else f"{minutes}m{secs}s"


def parse_index(text: str) -> int:
    """A thread index from the command line: a whole number >= 0, nothing else."""
    if not re.fullmatch(r"[0-9]{1,9}", text):
        raise ValueError(f"invalid thread index {text!r}: must be a whole number >= 0")
    return int(text)


# difflib's similarity from which a known name is offered as "did you mean": low enough
# for two-letter stage labels (C3 -> C1, C2), high enough to offer nothing for nonsense.
CLOSE_ENOUGH = 0.5


def known_name(
    kind: str, text: str, known: Sequence[str], example: str = "", valid: str | None = None
) -> str:
    """A name from the command line, checked against the names venusctl knows.

    The exact name, or the one it differs from only in case (`c1done` ->
    `C1Done`); anything else is a ValueError with the closest names ("did you
    mean C1Done?") and the valid list (`valid`, else every known name), so a
    typo is refused before any connection instead of matching nothing. Empty
    is refused too: nothing empty ever means "all".
    """
    if not text.strip():
        hint = f", e.g. {example}" if example else ""
        raise ValueError(f"empty {kind}: give a {kind} name{hint}")
    if text in known:
        return text
    by_fold = {name.casefold(): name for name in known}
    if text.casefold() in by_fold:
        return by_fold[text.casefold()]
    close = close_names(text.casefold(), list(by_fold))
    guess = f"; did you mean {_either([by_fold[name] for name in close])}?" if close else ""
    raise ValueError(f"unknown {kind} {text!r}{guess} (valid: {valid or ', '.join(known)})")


def close_names(word: str, names: Sequence[str], count: int = 3) -> list[str]:
    """The names most like `word` (difflib's ratio, at least CLOSE_ENOUGH), best first;
    equally close ones in their given order, so a message is the same on every run."""
    import difflib

    scores = []
    for position, name in enumerate(names):
        matcher = difflib.SequenceMatcher(None, word, name)
        if matcher.real_quick_ratio() >= CLOSE_ENOUGH and matcher.ratio() >= CLOSE_ENOUGH:
            scores.append((-matcher.ratio(), position, name))
    return [name for _, _, name in sorted(scores)[:count]]


def _either(names: Sequence[str]) -> str:
    """'A', 'A or B', 'A, B or C'."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def parse_state(text: str) -> str:
    """A task state name from the command line (e.g. C1Done): a known state, case normalised."""
    return known_name("state", text, STATE_NAMES, "C1Done")


def parse_state_list(text: str) -> tuple[str, ...]:
    """--state C1Done,PC1Done: comma-separated state names, each one known; none empty."""
    names = tuple(name.strip() for name in text.split(","))
    if not any(names):
        raise ValueError(f"empty state list {text!r}: give one or more names, e.g. C1Done")
    if not all(names):
        raise ValueError(f"empty name in the state list {text!r}")
    return tuple(parse_state(name) for name in names)


def parse_stage(text: str) -> str:
    """A stage label as WorkerInfo's job_stage shows it (PC1, C2, WaitSeed): a known one."""
    return known_name("stage", text, STAGE_NAMES, "PC1")


def parse_plan_name(text: str) -> str:
    """A plan name (sealer, snapup, rebuild, unseal, wdpost), case normalised."""
    return known_name("plan", text, PLAN_NAMES, "sealer")


def compile_error_match(text: str) -> re.Pattern[str]:
    """--error-match REGEX, searched in last_error; a bad regex is one usage line.

    An empty or blank one is refused: it would match every thread in error.
    """
    if not text.strip():
        raise ValueError("empty regular expression: it would match every error (--errors does)")
    try:
        return re.compile(text)
    except re.error as error:
        raise ValueError(f"invalid regular expression {text!r}: {error}") from error


def check_not_empty(what: str, example: str) -> Callable[[str], str]:
    """An option value that must not be empty or blank (a path, a host name)."""

    def check(text: str) -> str:
        if not text.strip():
            raise ValueError(f"empty {what}: nothing empty ever means a default (e.g. {example})")
        return text

    return check


def parse_limit(text: str) -> str:
    """One -l/--limit value, an Ansible host pattern: names, groups, globs, none empty.

    Terms are separated by commas, or by colons when there is no comma
    (split_limit); a term may start with `!` (exclude) or `&` (intersect).
    `-l ""`, `-l " "`, `-l ","`, `-l 'w1,,w2'`, `-l 'gpu:'` or a lone `!`
    is refused: an empty variable expanded into a limit must never select
    the whole fleet (`-l all` or `-l '*'` does that, explicitly). Returned
    unchanged; select_hosts reads it against the inventory.
    """
    words = [word.strip() for word in split_limit(text)]
    if not any(words):
        raise ValueError(
            f"empty limit {text!r}: give host names, groups or globs"
            " (nothing empty ever means every host; -l all does)"
        )
    if not all(word.lstrip("!&").strip() for word in words):
        raise ValueError(f"empty name in the limit {text!r} (a variable that expanded to nothing?)")
    return text


# One term that holds colons without separating anything: an address with its port
# (10.0.0.1:22, [fd00::1]:22) or an IPv6 address, as Ansible's parse_address reads them.
_ADDRESS_TERM = re.compile(r"[A-Za-z0-9_.%-]+:[0-9]{1,5}|\[[0-9A-Fa-f:.%]+\](:[0-9]{1,5})?")


def split_limit(text: str) -> list[str]:
    """A limit's terms as Ansible's split_host_pattern makes them (kept empty for checks).

    With a comma, the commas alone separate (`gpu,!h3`; then `10.0.0.1:22` stays one
    term); without, the colons do (`all:!h1`, `gpu:&rack1`), except inside `[...]`
    and in an address with its port or an IPv6 address.
    """
    if "," in text:
        return text.split(",")
    if _ADDRESS_TERM.fullmatch(text.strip()) or _is_ipv6(text.strip()):
        return [text]
    words, current, depth = [], "", 0
    for char in text:
        depth += (char == "[") - (char == "]" and depth > 0)
        if char == ":" and depth == 0:
            words.append(current)
            current = ""
        else:
            current += char
    return [*words, current]


def _is_ipv6(text: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(text.split("%", 1)[0]).version == 6
    except ValueError:
        return False


# damocles' wdpost plan has its own states (reference §3); worker_agent has no such plan.
WDPOST_STATES = ("Empty", "Allocated", "Generated", "Finished", "Aborted")
# ... and the stage labels of its job_stage (Allocated: Generate, Generated: SubmitProof).
WDPOST_STAGE_NAMES = frozenset({"Generate", "SubmitProof"})


# Task states of every plan (damocles' names): `--stuck` also takes these,
# and a state beats its stage label (e.g. SeedAssigned=30m vs C1=1h).
STATE_NAMES = (
    *api.STATE_NAMES,
    *(name for name in WDPOST_STATES if name not in api.STATE_NAMES),
)


# damocles' wdpost stage labels (reference §1.5): Allocated="Generate", Generated="SubmitProof".
WDPOST_STAGES = ("Generate", "SubmitProof")


# The stage labels WorkerInfo's job_stage shows (`--stage`): the agent's plans and wdpost's.
STAGE_NAMES = tuple(sorted({*api.STAGE_NAMES, *WDPOST_STAGES}))


# The plans a thread may run (`--plan`): the agent's, and damocles' wdpost.
PLAN_NAMES = (*api.PLAN_STATES, "wdpost")


# How long a job may stay in one state before `health` calls it stuck, by the
# stage label of the work done from that state (WorkerInfo `job_stage`, the
# damocles labels: each of api.STAGE_NAMES, tests/test_health_unit.py checks).
# Compute stages get what a healthy 32 GiB sector needs plus a margin; submits
# are a message to the chain and should take minutes; chain waits are bounded
# by the chain (WaitSeed: 150 epochs = 75 min).
STUCK_DEFAULTS: dict[str, float] = {
    "AcquireDeals": 1 * 3600,
    "AddPieces": 2 * 3600,
    "TreeD": 2 * 3600,
    "AssignTicket": 1 * 3600,
    "PC1": 12 * 3600,
    "PC2": 4 * 3600,
    "SyntheticPoRep": 4 * 3600,
    "SubmitPreCommit": 1 * 3600,
    "WaitPCLanded": 6 * 3600,
    "PersistFiles": 2 * 3600,
    "SubmitPersisted": 1 * 3600,
    "WaitSeed": 3 * 3600,
    "C1": 1 * 3600,
    "C2": 4 * 3600,
    "SubmitProof": 1 * 3600,
    "WaitProofLanded": 6 * 3600,
    "SnapEncode": 4 * 3600,
    "SnapProve": 4 * 3600,
    "SubmitSnapupProof": 1 * 3600,
    "PrepareForSnapup": 2 * 3600,
    "Unseal": 12 * 3600,
    "UploadPiece": 2 * 3600,
    # any stage not listed (a newer worker's): `--stuck default=...`
    "default": 6 * 3600,
}


# damocles' wdpost stage (no plan of our agent's, so not in monitoring/'s table):
# a WindowPoSt proof must be on chain within its 30-minute window.
WDPOST_STUCK_DEFAULTS: dict[str, float] = {"Generate": 30 * 60}


HEALTH_DEFAULTS = {
    "expiration": 600.0,
    "paused_warn": 3600.0,
    "paused_crit": 6 * 3600.0,
    "deadline": 60.0,
}


def check_stuck_key(key: str) -> str:
    """A `--stuck` key: a stage label, a state name or `default` (case normalised)."""
    known = list(dict.fromkeys([*STUCK_DEFAULTS, *STAGE_NAMES, *STATE_NAMES]))
    valid = f"stages: {', '.join(STUCK_DEFAULTS)}; or a state name such as C1Done"
    return known_name("stage or state", key, known, "PC1", valid)


def parse_stuck_option(text: str) -> tuple[str, float]:
    """`--stuck PC1=14h` -> ('PC1', 50400.0)."""
    key, sep, duration = text.partition("=")
    if not sep:
        raise ValueError(f"invalid --stuck {text!r}: expected KEY=DURATION, e.g. PC1=14h")
    return check_stuck_key(key.strip()), parse_duration(duration)


# =============================================================================
# Inventory
# =============================================================================


DEFAULT_INVENTORY = "inventory.toml"


INVENTORY_ENV = "VENUSCTL_INVENTORY"


# The systemd layout the deployment playbook installs on every worker host.
# None: the value ssh_config gives, as OpenSSH reads it, else OpenSSH's default.
BUILTIN_DEFAULTS: dict[str, Any] = {
    "user": None,  # ssh_config's User, else the local user name
    "port": None,  # ssh_config's Port, else 22
    "identity_file": None,  # ssh_config's IdentityFile (+ ssh-agent), else ~/.ssh/id_*
    "known_hosts": None,  # ssh_config's UserKnownHostsFile, else ~/.ssh/known_hosts
    "ssh_config": None,  # ~/.ssh/config then /etc/ssh/ssh_config; a file: only it (ssh -F)
    "jump": None,  # ssh_config's ProxyJump/ProxyCommand; "none": straight to the host
    "agent": "venus-worker",
    "config": "/etc/venus-worker/venus-worker.toml",
    "socket": "/run/venus-worker/venus-worker.sock",
    "connect_timeout": None,  # ssh_config's ConnectTimeout, else 5 s
    "command_timeout": 15.0,
    "host_key_policy": None,  # ssh_config's StrictHostKeyChecking (yes, accept-new)
    "transport": "auto",
    "backend": "venus",
    # backend "damocles": the worker's RPC address as seen from the worker
    # host itself, reached through a direct-tcpip channel of the SSH connection.
    "rpc": "127.0.0.1:17890",
    # The miner the host's agent seals for, and its own sector numbers ("1000-1999"):
    # the deploy role writes them into the agent's [sealing]; `inventory --check` makes
    # sure no two hosts of one miner share a number. None: the agent config's own.
    "miner": None,
    "sector_numbers": None,
    # the agent's systemd unit, for `venusctl journal` (None: venus-worker.service, or
    # damocles-worker.service for backend "damocles")
    "unit": None,
}


DEFAULT_UNITS = {"venus": "venus-worker.service", "damocles": "damocles-worker.service"}


# A systemd unit name (systemd.unit(5)): no leading '-', nothing a shell would read.
UNIT_PATTERN = re.compile(r"^[A-Za-z0-9:_.@\\][A-Za-z0-9:_.@\\-]{0,255}$")


HOST_ONLY_KEYS = ("name", "address", "groups")


TRANSPORTS = ("auto", "stream", "exec", "local")


# reject: unknown keys refused (StrictHostKeyChecking yes); accept-new: recorded;
# off: any key, even a changed one (StrictHostKeyChecking no) - only when asked here.
HOST_KEY_POLICIES = ("reject", "accept-new", "off")


# venus: our agent (worker_agent), on its Unix socket or through its CLI.
# damocles: the original Rust damocles-worker (formerly venus-worker),
# nothing of ours installed: its JSON-RPC port, through the SSH connection.
BACKENDS = ("venus", "damocles")


# A damocles host is only reachable over SSH, and there is no CLI of ours to exec.
DAMOCLES_TRANSPORTS = ("auto", "stream")


NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


# A host name, an IPv4 or IPv6 address (with a %zone): never a leading '-', which
# ssh (the playbooks' connection) would read as an option.
ADDRESS_PATTERN = re.compile(r"^[A-Za-z0-9_.:%][A-Za-z0-9_.:%-]*$")


# Local paths in the inventory are relative to the inventory's directory.
LOCAL_PATH_KEYS = ("identity_file", "known_hosts", "ssh_config")


def format_dest(address: str, port: int) -> str:
    """address:port as an operator types it: [::1]:22 for an IPv6 address."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


@dataclass(frozen=True)
class Host:
    """One worker host, with every setting resolved from [defaults], its groups' tables
    and its own table (None: the inventory leaves it to ssh_config)."""

    name: str
    address: str | None
    port: int | None
    user: str | None
    groups: tuple[str, ...]
    identity_file: str | None
    known_hosts: str | None
    ssh_config: str | None
    agent: str
    config: str
    socket: str
    connect_timeout: float | None
    command_timeout: float
    host_key_policy: str | None
    transport: str
    backend: str
    rpc: str = BUILTIN_DEFAULTS["rpc"]
    jump: str | None = None
    miner: int | None = None
    sector_numbers: tuple[int, int] | None = None  # (start, end), both included
    unit: str | None = None

    @property
    def service_unit(self) -> str:
        """The agent's systemd unit (`venusctl journal`): the inventory's, else the backend's."""
        return self.unit or DEFAULT_UNITS[self.backend]

    @property
    def dest(self) -> str:
        """Where the inventory says the host is: address:port, or the local socket
        (SshContext.target says where ssh_config then sends the connection)."""
        if self.transport == "local":
            return f"unix:{self.socket}"
        return format_dest(self.address or "", self.port or 22)

    @property
    def agent_argv(self) -> list[str]:
        return shlex.split(self.agent)

    @property
    def rpc_address(self) -> tuple[str, int]:
        """backend damocles: (host, port) of the worker's RPC, as the worker host sees it."""
        return parse_rpc_address(self.rpc)


@dataclass(frozen=True)
class HealthSettings:
    """The optional [health] table: the fleet's own defaults for `venusctl health`.

    None (or an empty `stuck`) means "not set here"; the command line wins
    over these, and these over the built-in defaults (HEALTH_DEFAULTS).
    """

    expiration: float | None = None
    paused_warn: float | None = None
    paused_crit: float | None = None
    stuck: dict[str, float] = field(default_factory=dict)
    deadline: float | None = None
    prometheus: str | None = None


@dataclass(frozen=True)
class Silence:
    """A `[[silence]]` table: maintenance. `health` still reports the hosts it names,
    marked, but their findings do not raise its status until `until` (Unix seconds)."""

    hosts: str  # names, groups and globs, as -l takes them
    until: float
    reason: str
    names: tuple[str, ...] = ()  # the hosts it names, resolved when the inventory is read

    @property
    def until_text(self) -> str:
        return time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(self.until))


@dataclass(frozen=True)
class Inventory:
    path: Path
    hosts: tuple[Host, ...]
    health: HealthSettings = field(default_factory=HealthSettings)
    silences: tuple[Silence, ...] = ()
    persist: float | None = None  # [defaults] persist: the keeper's idle time (0: off)

    def silence_of(self, name: str, now: float) -> Silence | None:
        """The silence in force for host `name` at `now` (the one lasting longest), or None."""
        active = [s for s in self.silences if name in s.names and s.until > now]
        return max(active, key=lambda silence: silence.until, default=None)

    @property
    def names(self) -> list[str]:
        return [host.name for host in self.hosts]

    @property
    def groups(self) -> list[str]:
        return sorted({group for host in self.hosts for group in host.groups})


# -- which inventory: found as config files are (kubectl's kubeconfig, git's config)


FLEET_ENV = "VENUSCTL_FLEET"


# The machine-wide folder (/etc/venusctl/inventory.toml, /etc/venusctl/NAME.toml).
SYSTEM_CONFIG_DIR = Path("/etc/venusctl")


class NoInventory(UsageError):
    """No inventory given and none found where venusctl looks; the message lists where."""

    code = "no-inventory"


class UnknownFleet(UsageError):
    """--fleet NAME (or $VENUSCTL_FLEET) names no fleet file; the message lists the known."""

    code = "unknown-fleet"


@dataclass(frozen=True)
class InventorySource:
    """Which inventory file a run reads, and the rule that chose it (`venusctl inventory`).

    `passed` lists the places looked at first that held no file (the search
    rules only; -i and the variables are taken as given).
    """

    path: Path
    rule: str  # "-i", "--fleet prod", "$VENUSCTL_INVENTORY", "./inventory.toml", ...
    passed: tuple[str, ...] = ()

    @property
    def why(self) -> str:
        """'found as ./inventory.toml' or 'given by -i', with what was looked at first."""
        chosen = self.rule in ("-i", f"${INVENTORY_ENV}") or self.rule.startswith(
            ("--fleet", f"${FLEET_ENV}")
        )
        text = f"{'given by' if chosen else 'found as'} {self.rule}"
        return text + (f"; not found first: {', '.join(self.passed)}" if self.passed else "")

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "rule": self.rule, "passed": list(self.passed)}


def user_config_dir(environ: Mapping[str, str]) -> tuple[Path, str]:
    """venusctl's folder in the user's config (XDG Base Directory) and how to name it.

    $XDG_CONFIG_HOME/venusctl when that is an absolute path (the spec ignores a
    relative one), else ~/.config/venusctl ($HOME's).
    """
    xdg = environ.get("XDG_CONFIG_HOME", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "venusctl", "$XDG_CONFIG_HOME/venusctl"
    home = environ.get("HOME") or os.path.expanduser("~")
    return Path(home) / ".config" / "venusctl", "~/.config/venusctl"


def fleet_names(environ: Mapping[str, str], system_dir: Path = SYSTEM_CONFIG_DIR) -> list[str]:
    """The named fleets: NAME.toml in the user's venusctl folder, then the system's."""
    names: dict[str, None] = {}
    for folder in (user_config_dir(environ)[0], system_dir):
        with contextlib.suppress(OSError):
            names.update(
                (path.stem, None)
                for path in sorted(folder.glob("*.toml"))
                if NAME_PATTERN.match(path.stem) and path.is_file()
            )
    return list(names)


def parse_fleet_name(text: str) -> str:
    """--fleet NAME: a file name in the config folders, so no path, no glob, nothing empty."""
    if not text.strip():
        raise ValueError("empty fleet name: give a name, e.g. --fleet prod")
    if not NAME_PATTERN.match(text):
        raise ValueError(
            f"invalid fleet name {text!r}: letters, digits, '.', '_' or '-'"
            " (a path goes with -i PATH)"
        )
    return text


def find_inventory(
    option: str | None,
    fleet: str | None,
    environ: Mapping[str, str],
    system_dir: Path = SYSTEM_CONFIG_DIR,
) -> InventorySource:
    """The inventory to read, by the first rule that gives or finds one:

    1. `-i PATH`;                      2. `--fleet NAME` (below);
    3. `$VENUSCTL_INVENTORY` (a path); 4. `$VENUSCTL_FLEET` (a name);
    5. `./inventory.toml`;             6. `$XDG_CONFIG_HOME/venusctl/inventory.toml`
                                          (`~/.config/venusctl/inventory.toml`);
    7. `/etc/venusctl/inventory.toml`.

    A fleet NAME is the file NAME.toml in the user's venusctl folder, else in
    /etc/venusctl. What -i and the variables give is taken as given (a missing
    file is then the error "cannot read"); the search rules 5-7 take the first
    file that exists, and none is NoInventory naming every place looked at.
    """
    if option is not None and fleet is not None:
        raise UsageError("give -i PATH or --fleet NAME, not both")
    if option is not None:
        return InventorySource(Path(option), "-i")
    if fleet is not None:
        return _fleet_source(fleet, "--fleet", environ, system_dir)
    if environ.get(INVENTORY_ENV):
        return InventorySource(Path(environ[INVENTORY_ENV]), f"${INVENTORY_ENV}")
    if environ.get(FLEET_ENV):
        try:
            name = parse_fleet_name(environ[FLEET_ENV])
        except ValueError as error:
            raise UsageError(f"${FLEET_ENV}: {error}") from None
        return _fleet_source(name, f"${FLEET_ENV}", environ, system_dir)
    user_dir, user_label = user_config_dir(environ)
    candidates = (
        (Path(DEFAULT_INVENTORY), f"./{DEFAULT_INVENTORY}"),
        (user_dir / DEFAULT_INVENTORY, f"{user_label}/{DEFAULT_INVENTORY}"),
        (system_dir / DEFAULT_INVENTORY, str(system_dir / DEFAULT_INVENTORY)),
    )
    passed: list[str] = []
    for path, label in candidates:
        if path.is_file():
            return InventorySource(path, label, tuple(passed))
        passed.append(label)
    raise NoInventory(
        f"no inventory: none of {', '.join(passed)} exists, and neither -i, --fleet,"
        f" ${INVENTORY_ENV} nor ${FLEET_ENV} was given"
    )


def _fleet_source(
    name: str, rule: str, environ: Mapping[str, str], system_dir: Path
) -> InventorySource:
    user_dir, user_label = user_config_dir(environ)
    places = ((user_dir, user_label), (system_dir, str(system_dir)))
    for folder, _ in places:
        path = folder / f"{name}.toml"
        if path.is_file():
            return InventorySource(path, f"{rule} {name}")
    known = fleet_names(environ, system_dir)
    looked = " nor ".join(f"{label}/{name}.toml" for _, label in places)
    listing = f"known fleets: {', '.join(known)}" if known else "no fleet files there yet"
    raise UnknownFleet(
        f"unknown fleet {name!r}{_closest(name, known)}: neither {looked} exists; {listing}"
    )


def inventory_path(option: str | None, environ: Mapping[str, str]) -> Path:
    """The inventory's path by find_inventory's rules (-i, then $VENUSCTL_INVENTORY, ...)."""
    return find_inventory(option, None, environ).path


def load_inventory(path: Path) -> Inventory:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise InventoryError(f"{path}: cannot read inventory: {error.strerror}") from error
    except UnicodeDecodeError as error:
        raise InventoryError(f"{path}: inventory is not UTF-8 text") from error
    return parse_inventory(text, path)


def parse_inventory(text: str, path: Path) -> Inventory:
    """Parse and validate inventory text; every problem is one InventoryError line."""
    document = _toml_document(text, path)
    locator = _KeyLocator(text, path)
    known_tables = {"defaults", "group", "host", "health", "silence"}
    unknown_tables = sorted(set(document) - known_tables)
    if unknown_tables:
        raise InventoryError(
            f"{locator.where(unknown_tables[0])}: unknown key {unknown_tables[0]!r} "
            "(expected [defaults], [group.NAME], [[host]], [health] and [[silence]] tables)"
        )
    defaults = document.get("defaults", {})
    if not isinstance(defaults, dict):
        raise InventoryError(f"{locator.where('defaults')}: 'defaults' must be a table")
    merged_defaults = dict(BUILTIN_DEFAULTS)
    persist = None
    for key, value in defaults.items():
        if key == "persist":
            persist = _persist_value(value, locator.where(key, "defaults"))
            continue
        if key not in BUILTIN_DEFAULTS:
            raise InventoryError(
                f"{locator.where(key, 'defaults')}: unknown key 'defaults.{key}'"
                f" (known: {', '.join(BUILTIN_DEFAULTS)}, persist)"
            )
        where = functools.partial(locator.where, key, "defaults")
        merged_defaults[key] = _check_value(key, value, where)
    groups = _parse_groups(document.get("group", {}), locator)
    tables = document.get("host", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise InventoryError(f"{locator.where('host')}: hosts must be [[host]] tables")
    hosts: list[Host] = []
    names: set[str] = set()  # not a scan of `hosts`: that was quadratic in the fleet's size
    # Most hosts share their key, known_hosts and ssh_config files: each path is made
    # absolute once (pathlib, 900 times for 300 hosts, was ~3 ms of every run).
    local_path = functools.cache(functools.partial(_local_path, base=path.parent))
    for position, table in enumerate(tables):
        host = _parse_host(table, position, merged_defaults, groups, locator, local_path)
        if host.name in names:
            where = locator.where("name", "host", position)
            raise InventoryError(f"{where}: duplicate host name {host.name!r}")
        names.add(host.name)
        hosts.append(host)
    health = _parse_health(document.get("health", {}), locator, path.parent)
    inventory = Inventory(path=path, hosts=tuple(hosts), health=health)
    silences = _parse_silences(document.get("silence", []), inventory, locator)
    return dataclasses.replace(inventory, silences=silences, persist=persist)


def _persist_value(value: Any, where: str) -> float:
    """[defaults] persist: how long the keeper holds connections after its last use;
    a duration ("10m"), or 0 for no keeper."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    if isinstance(value, str):
        return _inventory_duration("persist", value, where)
    raise InventoryError(f'{where}: persist: must be a duration such as "10m", or 0 for none')


def _toml_document(text: str, path: Path) -> dict[str, Any]:
    """The TOML text as plain values: tomllib where there is one (Python 3.11+; 9 ms for
    300 hosts against tomlkit's 110 ms), tomlkit for a document it refuses (its message
    names the line) and on Python 3.10."""
    try:
        import tomllib
    except ImportError:
        tomllib = None
    if tomllib is not None:
        with contextlib.suppress(tomllib.TOMLDecodeError):
            return tomllib.loads(text)
    import tomlkit
    from tomlkit.exceptions import ParseError

    try:
        return tomlkit.parse(text).unwrap()
    except ParseError as error:
        raise InventoryError(f"{path}:{error.line}: TOML error: {error}") from error


SILENCE_KEYS = ("hosts", "until", "reason")


def _parse_silences(tables: Any, inventory: Inventory, locator: _KeyLocator) -> tuple:
    """[[silence]] tables: hosts (as -l: names, groups, globs), until (a time with its
    offset), reason. Each is checked like the rest: one line naming the file and the key."""
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise InventoryError(f"{locator.where('silence')}: silences must be [[silence]] tables")
    silences = []
    for position, table in enumerate(tables):
        header = locator.where(None, "silence", position)
        label = f"silence[{position}]"
        for key in table:
            if key not in SILENCE_KEYS:
                where = locator.where(key, "silence", position)
                raise InventoryError(
                    f"{where}: {label}: unknown key {key!r} (known: {', '.join(SILENCE_KEYS)})"
                )
        missing = [key for key in SILENCE_KEYS if key not in table]
        if missing:
            raise InventoryError(f"{header}: {label}: missing {missing[0]!r}")
        values = {}
        for key in SILENCE_KEYS:
            where = locator.where(key, "silence", position)
            try:
                values[key] = _silence_value(key, table[key], inventory)
            except (ValueError, UsageError) as error:
                raise InventoryError(f"{where}: {label}: {key}: {error}") from None
        hosts, names = values["hosts"]
        silences.append(Silence(hosts, values["until"], values["reason"], names))
    return tuple(silences)


def _silence_value(key: str, value: Any, inventory: Inventory) -> Any:
    if key == "until":
        return _silence_until(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be a non-empty string, got {value!r}")
    if key == "reason":
        return value.strip()
    names = tuple(host.name for host in select_hosts(inventory, [parse_limit(value)]))
    return value, names


def _silence_until(value: Any) -> float:
    """A TOML offset date-time or an ISO 8601 string with its offset ("2026-12-24T08:00Z").

    A time without an offset is refused: cron, the operator and the inventory's
    reviewer may each read it in another zone.
    """
    import datetime

    moment = value
    if isinstance(value, str):
        try:
            moment = datetime.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(
                f'not a date and time, e.g. "2026-12-24T08:00Z"; got {value!r}'
            ) from None
    if not isinstance(moment, datetime.datetime):
        raise ValueError(f'must be a date and time, e.g. "2026-12-24T08:00Z"; got {value!r}')
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(
            f"{value!s} has no offset: write it with Z or +HH:MM (e.g. 2026-12-24T08:00Z)"
        )
    return moment.timestamp()


def _parse_groups(tables: Any, locator: _KeyLocator) -> dict[str, dict[str, tuple[Any, str]]]:
    """[group.NAME] tables: settings for every host in group NAME, as in [defaults].

    Each value keeps where it was written, for the error when two groups of a
    host set one key two ways.
    """
    if not isinstance(tables, dict):
        raise InventoryError(f"{locator.where('group')}: 'group' must be [group.NAME] tables")
    groups: dict[str, dict[str, tuple[Any, str]]] = {}
    for name, table in tables.items():
        header = locator.where(None, f"group.{name}")
        if not NAME_PATTERN.match(name) or not isinstance(table, dict):
            raise InventoryError(f"{header}: [group.{name}] must be a table named like a group")
        values = {}
        for key, value in table.items():
            where = locator.where(key, f"group.{name}")
            if key not in BUILTIN_DEFAULTS:
                known = ", ".join(BUILTIN_DEFAULTS)
                raise InventoryError(f"{where}: unknown key 'group.{name}.{key}' (known: {known})")
            values[key] = (_check_value(key, value, where), where)
        groups[name] = values
    return groups


def _group_values(
    names: Sequence[str], groups: dict[str, dict[str, tuple[Any, str]]], label: str
) -> dict[str, Any]:
    """The settings a host's groups give it; two groups giving one key two values is an error."""
    chosen: dict[str, tuple[Any, str]] = {}
    for name in names:
        for key, (value, where) in groups.get(name, {}).items():
            if key in chosen and chosen[key][0] != value:
                raise InventoryError(
                    f"{where}: {label}: its groups set {key} two ways ({chosen[key][1]} and here);"
                    " set it in the host's own table"
                )
            chosen[key] = (value, where)
    return {key: value for key, (value, _) in chosen.items()}


HEALTH_KEYS = ("expiration", "paused_warn", "paused_crit", "stuck", "deadline", "prometheus")


def _parse_health(table: Any, locator: _KeyLocator, base: Path) -> HealthSettings:
    """The [health] table, checked like the rest: one line naming the file and the key."""
    if not isinstance(table, dict):
        raise InventoryError(f"{locator.where('health')}: 'health' must be a table")
    values: dict[str, Any] = {}
    for key, value in table.items():
        where = locator.where(key, "health")
        if key not in HEALTH_KEYS:
            raise InventoryError(
                f"{where}: unknown key 'health.{key}' (known: {', '.join(HEALTH_KEYS)})"
            )
        if key == "prometheus":
            if not isinstance(value, str) or not value.strip():
                raise InventoryError(f"{where}: health.prometheus: must be a file path")
            values[key] = _local_path(value, base)
        elif key == "stuck":
            values[key] = _parse_stuck_table(value, locator)
        else:
            values[key] = _inventory_duration(f"health.{key}", value, where)
    if values.get("deadline") == 0:
        raise InventoryError(
            f"{locator.where('deadline', 'health')}: health.deadline: must be more than 0"
        )
    return HealthSettings(**values)


def _parse_stuck_table(table: Any, locator: _KeyLocator) -> dict[str, float]:
    if not isinstance(table, dict):
        where = locator.where("stuck", "health")
        raise InventoryError(f'{where}: health.stuck: must be a table, e.g. {{PC1 = "14h"}}')
    stuck = {}
    for key, value in table.items():
        # `[health.stuck]` puts each key on its own line; an inline table does not.
        own_line = locator._find(key, "health.stuck", 0)
        where = locator.where(key, "health.stuck") if own_line else locator.where("stuck", "health")
        try:
            stuck[check_stuck_key(key)] = _inventory_duration(f"health.stuck.{key}", value, where)
        except ValueError as error:
            raise InventoryError(f"{where}: health.stuck: {error}") from error
    return stuck


def _inventory_duration(name: str, value: Any, where: str) -> float:
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except ValueError as error:
            raise InventoryError(f"{where}: {name}: {error}") from error
    raise InventoryError(f'{where}: {name}: must be a duration such as "10m", got {value!r}')


def _parse_host(
    table: dict[str, Any],
    position: int,
    defaults: dict[str, Any],
    groups: dict[str, dict[str, tuple[Any, str]]],
    locator: _KeyLocator,
    local_path: Callable[[str | None], str | None],
) -> Host:
    """One [[host]] table; `local_path` makes a path on this machine absolute (from the
    inventory's folder)."""
    label = f"host[{position}]" + (
        f" ({table['name']})" if isinstance(table.get("name"), str) else ""
    )
    own = {}
    for key, value in table.items():
        if key not in BUILTIN_DEFAULTS and key not in HOST_ONLY_KEYS:
            only = " (a [defaults] setting: the keeper's idle time)" if key == "persist" else ""
            where = locator.where(key, "host", position)
            raise InventoryError(f"{where}: {label}: unknown key {key!r}{only}")
        where = functools.partial(locator.where, key, "host", position)
        own[key] = _check_value(key, value, where)
    # [defaults], then the host's [group.NAME] tables, then its own table
    values = {**defaults, **_group_values(own.get("groups", ()), groups, label), **own}
    if "name" not in table:
        raise InventoryError(f"{locator.where(None, 'host', position)}: {label}: missing 'name'")
    if "address" not in table and values["transport"] != "local":
        header = locator.where(None, "host", position)
        raise InventoryError(f"{header}: {label}: missing 'address'")
    for key in LOCAL_PATH_KEYS:
        values[key] = local_path(values[key])
    _check_backend(table, values, label, locator, position)
    if values["transport"] == "local":
        # For a local agent, config and socket are paths on this machine too.
        values["config"] = local_path(values["config"])
        values["socket"] = local_path(values["socket"])
    return Host(
        name=values["name"],
        address=values.get("address"),
        port=values["port"],
        user=values["user"],
        groups=tuple(values.get("groups", ())),
        identity_file=values["identity_file"],
        known_hosts=values["known_hosts"],
        ssh_config=values["ssh_config"],
        agent=values["agent"],
        config=values["config"],
        socket=values["socket"],
        connect_timeout=_seconds_or_none(values["connect_timeout"]),
        command_timeout=float(values["command_timeout"]),
        host_key_policy=values["host_key_policy"],
        transport=values["transport"],
        backend=values["backend"],
        rpc=values["rpc"],
        jump=values["jump"],
        miner=values["miner"],
        sector_numbers=parse_sector_numbers(values["sector_numbers"]),
        unit=values["unit"],
    )


def _seconds_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def _check_backend(
    table: dict[str, Any],
    values: dict[str, Any],
    label: str,
    locator: _KeyLocator,
    position: int,
) -> None:
    """A damocles host is reached over SSH only; `rpc` means nothing to our agent."""
    if values["backend"] == "damocles" and values["transport"] not in DAMOCLES_TRANSPORTS:
        if "transport" in table:
            where = locator.where("transport", "host", position)
        else:
            where = locator.where("transport", "defaults")
        why = (
            "its RPC port is reached through the SSH connection"
            if values["transport"] == "local"
            else "nothing of venusctl's is installed there to exec"
        )
        raise InventoryError(
            f"{where}: {label}: transport {values['transport']!r} cannot reach a damocles"
            f' backend ({why}); use transport = "auto" or "stream"'
        )
    if values["backend"] == "damocles" and values["sector_numbers"] is not None:
        key = "sector_numbers"
        where = (
            locator.where(key, "host", position) if key in table else locator.where(key, "defaults")
        )
        raise InventoryError(
            f"{where}: {label}: a damocles-worker's sector numbers come from its"
            " damocles-manager: 'sector_numbers' is for our agent only"
        )
    if values["backend"] != "damocles" and "rpc" in table:
        raise InventoryError(
            f"{locator.where('rpc', 'host', position)}: {label}: 'rpc' is only used with"
            ' backend = "damocles"'
        )


def _local_path(value: str | None, base: Path) -> str | None:
    if value is None or value.lower() == "none":
        return value  # ssh_config = "none": no file at all, as `ssh -F none`
    expanded = Path(os.path.expanduser(value))
    return str(expanded if expanded.is_absolute() else base / expanded)


def _check_value(key: str, value: Any, where: str | Callable[[], str]) -> Any:
    """Validate one inventory value; returns it (unchanged) or raises InventoryError.
    `where` may be a function: the line is then looked up for the message only, so a valid
    inventory is never indexed line by line (~1 ms at 300 hosts)."""
    problem = _value_problem(key, value)
    if problem:
        place = where() if callable(where) else where
        raise InventoryError(f"{place}: {key}: {problem}, got {value!r}")
    return value


def _value_problem(key: str, value: Any) -> str | None:
    if key == "miner":
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
        return None if ok else "must be the miner's actor number, e.g. 1000 for t01000"
    if key == "sector_numbers":
        try:
            parse_sector_numbers(value)
        except ValueError as error:
            return str(error)
        return None
    if key == "port":
        ok = isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535
        return None if ok else "must be an integer from 1 to 65535"
    if key in ("connect_timeout", "command_timeout"):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
        return None if ok else "must be a number of seconds > 0"
    if key == "groups":
        ok = isinstance(value, list) and all(
            isinstance(g, str) and NAME_PATTERN.match(g) for g in value
        )
        return None if ok else "must be a list of names (letters, digits, . _ -)"
    if not isinstance(value, str) or not value.strip():
        return "must be a non-empty string"
    if key == "address" and not ADDRESS_PATTERN.match(value):
        return "must be a host name or an IP address"
    if key == "name" and not NAME_PATTERN.match(value):
        return "must be letters, digits, '.', '_' or '-' (no spaces or glob characters)"
    if key == "transport" and value not in TRANSPORTS:
        return f"must be one of {', '.join(TRANSPORTS)}"
    if key == "host_key_policy" and value not in HOST_KEY_POLICIES:
        return f"must be one of {', '.join(HOST_KEY_POLICIES)}"
    if key == "backend" and value not in BACKENDS:
        return f"must be one of {', '.join(BACKENDS)}"
    if key == "agent" and not _splits(value):
        return "must be a command, e.g. 'venus-worker' or '/opt/venus/bin/venus-worker'"
    if key == "unit" and not UNIT_PATTERN.match(value):
        return "must be a systemd unit name, e.g. 'venus-worker.service'"
    if key == "rpc":
        try:
            parse_rpc_address(value)
        except ValueError as error:
            return str(error)
    if key == "jump" and value.lower() != "none":
        try:
            parse_jump_spec(value)
        except ValueError as error:
            return str(error)
    return None


def parse_sector_numbers(value: Any) -> tuple[int, int] | None:
    """An inventory's `sector_numbers`: "START-END" or {start = S, count = N} (or end = E),
    as the agent's [sealing] sector_numbers; None stays None."""
    if value is None:
        return None
    example = 'must be "START-END" (e.g. "1000-1999") or {start = 1000, count = 1000}'
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]{1,18})\s*-\s*([0-9]{1,18})\s*", value)
        if match is None:
            raise ValueError(example)
        start, end = int(match[1]), int(match[2])
    elif isinstance(value, dict) and set(value) in ({"start", "count"}, {"start", "end"}):
        numbers = list(value.values())
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in numbers):
            raise ValueError(example)
        start = value["start"]
        end = value["end"] if "end" in value else start + value["count"] - 1
    else:
        raise ValueError(example)
    if start < 1 or end < start:
        raise ValueError(f"{start}-{end}: must start at 1 or more and not end before it")
    return start, end


def parse_rpc_address(text: str) -> tuple[str, int]:
    """'127.0.0.1:17890', 'localhost:17890' or '[::1]:17890' to (host, port)."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:([0-9]{1,5})|([A-Za-z0-9.-]+):([0-9]{1,5})", text)
    if not match:
        raise ValueError("must be host:port, e.g. '127.0.0.1:17890'")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 1 <= port <= 65535:
        raise ValueError("port must be from 1 to 65535")
    return host, port


_JUMP_HOP = re.compile(
    r"^(?:ssh://)?(?:(?P<user>[^@/\s]+)@)?"
    r"(?:\[(?P<v6>[0-9A-Fa-f:.%]+)\]|(?P<host>[A-Za-z0-9_.%-]+|[0-9A-Fa-f:]*:[0-9A-Fa-f:.%]*))"
    r"(?::(?P<port>[0-9]{1,5}))?/?$"
)


def parse_jump_spec(text: str) -> list[tuple[str | None, str, int | None]]:
    """ProxyJump's `[user@]host[:port]` (or ssh:// URI), comma-separated, first hop first."""
    hops = []
    for part in text.split(","):
        match = _JUMP_HOP.match(part.strip())
        port = int(match.group("port")) if match and match.group("port") else None
        if not match or (port is not None and not 1 <= port <= 65535):
            raise SshConfigError(
                f"ProxyJump: bad jump host {part.strip()!r} (want [user@]host[:port])"
            )
        host = match.group("v6") or match.group("host")
        if ":" in host and match.group("v6") is None and match.group("port"):
            raise ValueError(f"write an IPv6 jump host as [{host}]:port")
        hops.append((match.group("user"), host, port))
    return hops


def _splits(command: str) -> bool:
    try:
        return bool(shlex.split(command))
    except ValueError:
        return False


class _KeyLocator:
    """Finds the line of a key in the inventory text, for error messages.

    tomlkit keeps no line numbers after parsing, and the inventory is small
    and flat, so table headers and `key =` lines are enough. They are indexed
    in one pass (every value's place is asked for: scanning the text per key
    took 0.6 s for 300 hosts).
    """

    _HEADER = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.-]+)\s*\]\]?")
    _KEY = re.compile(r"""^\s*(?:"([^"]*)"|'([^']*)'|([^\s="']+))\s*=""")

    def __init__(self, text: str, path: Path) -> None:
        self.lines = text.splitlines()
        self.path = path
        self._index: tuple[dict, dict, dict] | None = None

    def where(self, key: str | None, table: str | None = None, position: int = 0) -> str:
        line = self._find(key, table, position)
        return f"{self.path}:{line}" if line else str(self.path)

    def _find(self, key: str | None, table: str | None, position: int) -> int | None:
        """The first line of `key` in the position-th [table] (None: before any header;
        without a key, that header's line; with no table, also a header named key)."""
        first_header, headers, keys = self._indexed()
        if table is None:
            return (keys.get((None, 0, key)) or first_header.get(key)) if key else None
        if key is None:
            return headers.get((table, position))
        return keys.get((table, position, key))

    def _indexed(self) -> tuple[dict, dict, dict]:
        if self._index is None:
            first_header: dict[str, int] = {}
            headers: dict[tuple[str, int], int] = {}
            keys: dict[tuple[str | None, int, str], int] = {}
            seen: dict[str, int] = {}
            current, occurrence = None, 0
            for number, line in enumerate(self.lines, start=1):
                header = self._HEADER.match(line)
                if header:
                    current = header.group(1)
                    occurrence = seen[current] = seen.get(current, -1) + 1
                    first_header.setdefault(current, number)
                    headers.setdefault((current, occurrence), number)
                    continue
                found = self._KEY.match(line)
                if found:
                    name = next(group for group in found.groups() if group is not None)
                    keys.setdefault((current, occurrence if current else 0, name), number)
            self._index = first_header, headers, keys
        return self._index


def check_has_hosts(inventory: Inventory) -> None:
    """Every command that asks hosts refuses an inventory without any (exit 2)."""
    if not inventory.hosts:
        raise NoHosts(f"no hosts in {inventory.path} (add [[host]] tables)")


def resolve_target(inventory: Inventory, target: str) -> Host:
    """A host named by its name, its address, or address:port; else UsageError (exit 2)."""
    check_has_hosts(inventory)
    if not target.strip():
        raise UsageError("empty HOST: give a host name, address or address:port")
    for host in inventory.hosts:
        if host.name == target:
            return host
    matches = [host for host in inventory.hosts if _address_matches(host, target)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        names = ", ".join(host.name for host in matches)
        raise UsageError(f"{target!r} matches several hosts ({names}): use a name or address:port")
    raise UnknownHost(
        f"unknown host {target!r}{_closest(target, inventory.names)};"
        f" known hosts: {_known_names(inventory)}"
    )


def _closest(word: str, names: Sequence[str]) -> str:
    """' (did you mean gpu-01?)' for a typo'd host or group, else ''."""
    close = close_names(word, names)
    return f" (did you mean {_either(close)}?)" if close else ""


def _address_forms(host: Host) -> list[str]:
    """How an operator may name a host by its address: 10.0.0.5, 10.0.0.5:22, ::1, [::1]:22."""
    if host.address is None:
        return []
    return [host.address, format_dest(host.address, host.port or 22)]


def _address_matches(host: Host, target: str) -> bool:
    return target in _address_forms(host)


def select_hosts(inventory: Inventory, limits: Sequence[str] | None) -> list[Host]:
    """The hosts an -l/--limit selects, as Ansible's host patterns do; every host if no
    -l was given at all (None). In inventory order.

    Each -l is split into terms (split_limit), and the terms of every -l are
    applied as Ansible applies them: first the plain ones (union), then the
    `&` ones (intersection), then the `!` ones (exclusion); with no plain term
    (`-l '!h1'`) the start is every host. A term is a host name, a group,
    `all` (every host), `ungrouped` (hosts without groups), a shell glob over
    names, groups and addresses (`gpu-*`, `*`), an address or address:port, or
    `~REGEX` (matched at the start of those). Refused, before any connection:
    an empty term, a term that matches no host (with the closest names), and
    a limit that leaves no host.
    """
    check_has_hosts(inventory)
    if limits is None:
        return list(inventory.hosts)
    try:
        terms = [t.strip() for limit in limits for t in split_limit(parse_limit(limit))]
    except ValueError as error:
        raise UsageError(f"-l/--limit: {error}") from None
    plain = [term for term in terms if term[0] not in "!&"]
    intersect = [term[1:].strip() for term in terms if term[0] == "&"]
    exclude = [term[1:].strip() for term in terms if term[0] == "!"]
    chosen: set[str] = set() if plain else set(inventory.names)
    for term in plain:
        chosen |= _term_hosts(inventory, term, limits)
    for term in intersect:
        chosen &= _term_hosts(inventory, term, limits)
    for term in exclude:
        chosen -= _term_hosts(inventory, term, limits)
    if not chosen:
        shown = ", ".join(repr(limit) for limit in limits)
        raise EmptySelection(
            f"--limit {shown} leaves no host (each term matches some, together none);"
            f" known hosts: {_known_names(inventory)}{_groups_note(inventory)}"
        )
    return [host for host in inventory.hosts if host.name in chosen]


def _term_hosts(inventory: Inventory, term: str, limits: Sequence[str]) -> set[str]:
    """The names of the hosts one limit term (without its ! or &) matches; none is an error."""
    if term == "all":
        return set(inventory.names)
    if term == "ungrouped":
        return {host.name for host in inventory.hosts if not host.groups}
    if term.startswith("~"):
        try:
            pattern = re.compile(term[1:])
        except re.error as error:
            message = f"-l/--limit: invalid regular expression {term[1:]!r}: {error}"
            raise UsageError(message) from None
        matched = {h.name for h in inventory.hosts if any(map(pattern.match, _host_labels(h)))}
    else:
        matched = {host.name for host in inventory.hosts if _limit_matches(host, term)}
    if not matched:
        glob = _is_glob(term) or term.startswith("~")
        guess = "" if glob else _closest(term, _labels(inventory))
        commas = any("," in limit for limit in limits) and ":" in term
        note = (
            " (with a comma in the limit, only commas separate, as in Ansible: write"
            f" {term.replace(':', ',')!r})"
            if commas
            else ""
        )
        raise UnknownHost(
            f"--limit {term!r} matches no host{guess}{note};"
            f" known hosts: {_known_names(inventory)}{_groups_note(inventory)}"
        )
    return matched


def _groups_note(inventory: Inventory) -> str:
    return f"; groups: {', '.join(inventory.groups)}" if inventory.groups else ""


def _is_glob(pattern: str) -> bool:
    return any(char in pattern for char in "*?[")


def _labels(inventory: Inventory) -> list[str]:
    return [*inventory.names, *inventory.groups]


def _host_labels(host: Host) -> list[str]:
    return [host.name, *host.groups, *_address_forms(host)]


def _limit_matches(host: Host, pattern: str) -> bool:
    return any(fnmatch.fnmatchcase(label, pattern) for label in _host_labels(host))


def _known_names(inventory: Inventory) -> str:
    return ", ".join(inventory.names) or "(none: the inventory has no [[host]])"


# =============================================================================
# Host answers, typed at the edge: status, damocles shapes, resume states, actions
# =============================================================================


@dataclass
class HostStatus:
    """What one host said about itself: the heartbeat report and the live thread list.

    Typed at the edge: each backend turns its wire answer into these values
    once. `threads` is None when the daemon could not be asked (then `error`
    says why, and `report` may still hold the last heartbeat written to
    disk). A worker that writes no heartbeat (damocles) has `heartbeat`
    False, its own `worker_version` and `release_line`: the DamoclesLine its
    WorkerInfo shape names (the shape decides, not the version string).
    """

    report: api.Report | None
    threads: list[WorkerInfo] | None
    error: BaseException | None = None
    via: str = ""
    worker_version: str | None = None
    heartbeat: bool = True
    release_line: str | None = None

    @classmethod
    def of(cls, outcome: HostStatus | BaseException) -> HostStatus:
        """A fan-out outcome as a status: a host that raised has no answer, the error says why."""
        return outcome if isinstance(outcome, HostStatus) else cls(None, None, error=outcome)

    @property
    def version(self) -> str | None:
        return self.report.version if self.report is not None else self.worker_version

    @property
    def last_ping(self) -> float | None:
        """The heartbeat's age; for a worker without one, the age of this very answer (0)."""
        if not self.heartbeat:
            return 0.0
        return self.report.age if self.report is not None else None

    @property
    def heartbeat_age(self) -> float | None:
        """The heartbeat's age; None for a worker that writes no heartbeat (never stale)."""
        return self.last_ping if self.heartbeat else None

    @property
    def summary(self) -> api.Summary | None:
        """Live counts when the daemon answered, else the last heartbeat's counts."""
        if self.threads is not None:
            return api.summarize(self.threads)
        return self.report.summary if self.report is not None else None


# -- the original damocles-worker, release line by release line (reference damocles-wire §1.4)
#
# Each line's WorkerInfo becomes api.WorkerInfo here, once; the wire shape names
# the line (the version string lags behind its tags and is missing before v0.7).


@dataclass(frozen=True)
class DamoclesLine:
    """One release line of damocles-worker: what its WorkerInfo and RPC can and cannot say."""

    name: str  # as venusctl shows it: list --wide, --json's release_line
    tags: str  # the releases of the line
    plans: tuple[str, ...]  # the plans its threads can run
    states: frozenset[str]  # the task states it knows (def_state!)
    reports_plan: bool  # v0.5+ sends `plan`; before, venusctl infers it from the state
    thread_state: bool  # v0.9+: Idle/Running/Waiting/Paused, before only paused or not
    idle_pause_waits: bool  # v0.1: a thread asking for work sleeps without taking a pause
    ignores_unknown_state: bool  # v0.8+: an unknown resume state is logged, the RPC says true


# The task states of the 2022 enum, then what each line added (reference §1.4).
_STATES_V01 = frozenset(api.STATE_NAMES) - {
    "SyntheticPoRepNeeded",
    "SealedChecked",
    "SnapPieceAdded",
    "SnapTreeDBuilt",
    "SnapDone",
    "Unsealed",
}
_STATES_V05 = frozenset(api.STATE_NAMES) - {"SyntheticPoRepNeeded"}
_PLANS_V02 = ("sealer", "snapup")
_PLANS_V05 = ("sealer", "snapup", "rebuild", "unseal")  # unseal from v0.7.0
_PLANS_V08 = (*_PLANS_V05, "wdpost")
_ALL_STATES = frozenset(api.STATE_NAMES)
_L = DamoclesLine

# v0.1 and v0.2-v0.4 differ only in the text of a sector and of a pause's duration:
# a worker with neither (no task, none paused) is "v0.1-v0.4", one of the two.
DAMOCLES_LINES = {
    line.name: line
    for line in (
        # name, tags, plans, states, then: reports_plan, thread_state, idle_pause_waits,
        # ignores_unknown_state
        _L("v0.1", "v0.1.1-v0.1.2", ("sealer",), _STATES_V01, False, False, True, False),
        _L("v0.2-v0.4", "v0.2.0-v0.4.2", _PLANS_V02, _STATES_V01, False, False, False, False),
        _L("v0.1-v0.4", "v0.1.1-v0.4.2", _PLANS_V02, _STATES_V01, False, False, True, False),
        _L("v0.5-v0.7", "v0.5.0-v0.7.4", _PLANS_V05, _STATES_V05, True, False, False, False),
        _L("v0.8", "v0.8.0-v0.8.4", _PLANS_V08, _STATES_V05, True, False, False, True),
        _L("v0.9+", "v0.9.0-v0.13.x", _PLANS_V08, _ALL_STATES, True, True, False, True),
    )
}  # fmt: skip

_SHAPE_KEYS = {  # the keys each shape must have (a newer release may add others)
    "v0.1-v0.4": {"index", "location", "sector_id", "paused", "paused_elapsed", "state"},
    "v0.5-v0.7": {"index", "location", "plan", "sector_id", "paused", "paused_elapsed", "state"},
    "v0.8": {"index", "location", "plan", "job_id", "paused", "paused_elapsed", "state"},
    "v0.9+": {"index", "location", "plan", "job_id", "thread_state", "job_state", "job_stage"},
}
_OLD_SECTOR_ID = re.compile(r"m-([0-9]+)-s-([0-9]+)")  # v0.1: "m-1000-s-2"
# Rust's Debug of a Duration (v0.1's paused_elapsed): "17.203941s", "203.9ms", "941µs", "12ns".
_RUST_DURATION = re.compile(r"([0-9]+)(?:\.([0-9]+))?(s|ms|\u00b5s|\u03bcs|ns)")
_RUST_DURATION_UNITS = {"s": 1, "ms": 1e-3, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ns": 1e-9}


def _unsupported(detail: str) -> UnsupportedReply:
    return UnsupportedReply(f"unsupported damocles-worker reply: {detail}")


def _excerpt(value: Any) -> str:
    """A piece of a reply for an error message: JSON, ASCII (escaped), cut short."""
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def damocles_threads(result: Any) -> tuple[DamoclesLine | None, list[WorkerInfo]]:
    """WorkerList's result of any damocles-worker release: its line and the threads as ours.

    The line comes from the shape of the WorkerInfo (every thread must have
    the same one); None for a worker without threads. Anything venusctl
    cannot read raises UnsupportedReply, the host's error row.
    """
    if not isinstance(result, list):
        raise _unsupported(f"WorkerList answered {_excerpt(result)}, not a list of threads")
    line = _line_of(result)
    threads = [damocles_worker_info(info, line) for info in result]
    indexes = [thread.index for thread in threads]
    if len(set(indexes)) != len(indexes):
        raise _unsupported(f"WorkerList lists an index twice: {indexes}")
    return line, threads


def normalize_worker_info(info: Any) -> WorkerInfo:
    """One damocles-worker WorkerInfo, of any release line, as our agent's (its line from it)."""
    return damocles_threads([info])[1][0]


def _line_of(infos: list[Any]) -> DamoclesLine | None:
    names = {_shape_of(info) for info in infos}
    if "v0.1-v0.4" in names and names & {"v0.1", "v0.2-v0.4"}:
        # some threads tell v0.1 from v0.2-v0.4; the others (no sector, not paused) agree
        names.discard("v0.1-v0.4")
    if len(names) > 1:
        raise _unsupported(f"its threads come in different shapes ({', '.join(sorted(names))})")
    return DAMOCLES_LINES[names.pop()] if names else None


def _shape_of(info: Any) -> str:
    """The line whose WorkerInfo this is ("v0.1-v0.4" when it does not tell v0.1 from v0.2)."""
    if not isinstance(info, dict):
        raise _unsupported(f"thread {_excerpt(info)} is not an object")
    if "thread_state" in info:
        name = "v0.9+"
    elif "job_id" in info:
        name = "v0.8"
    elif "plan" in info:
        name = "v0.5-v0.7"
    else:
        name = "v0.1-v0.4"
    missing = sorted(_SHAPE_KEYS[name] - set(info))
    if missing:
        raise _unsupported(
            f"thread {_excerpt(info)}: no known WorkerInfo shape (missing {', '.join(missing)})"
        )
    if name != "v0.1-v0.4":
        return name
    sector, elapsed = info["sector_id"], info["paused_elapsed"]
    if isinstance(sector, str) or isinstance(elapsed, str):
        return "v0.1"
    if isinstance(sector, dict) or _is_int(elapsed):
        return "v0.2-v0.4"
    return name


def damocles_worker_info(info: dict[str, Any], line: DamoclesLine) -> WorkerInfo:
    """The WorkerInfo constructor at the edge: one thread of `line`'s shape as api.WorkerInfo.

    Every line gives the same columns: the sector as `s-t01000-2`, the plan
    (inferred from the state before v0.5, None when the state does not
    tell), Paused and its elapsed whole seconds, the state. Before v0.9 a
    thread that is not paused has no thread state (None: running or idle is
    not said); job_stage is None then, and also for a v0.9+ thread between
    tasks (whose job_stage is the last task's, never cleared).
    """
    where = f"thread #{info.get('index')}"
    try:
        if line.thread_state:
            ours = _from_damocles_v09(info)
        else:
            ours = _from_damocles_paused_shape(info, line)
        return WorkerInfo.from_json(ours, where)
    except api.WireError as error:
        raise _unsupported(str(error)) from None
    except ValueError as error:
        raise _unsupported(f"{where}: {error}") from None


def _from_damocles_v09(info: dict[str, Any]) -> dict[str, Any]:
    thread_state = info["thread_state"]
    if not isinstance(thread_state, dict):
        raise ValueError(f"thread_state {_excerpt(thread_state)} is not an object")
    job_state = info["job_state"]
    stage = info["job_stage"]
    return {
        "index": info["index"],
        "location": info["location"],
        "plan": info["plan"],
        "job_id": info["job_id"],
        "job_state": job_state,
        # "-": no work from this state; between tasks the stage is the last task's
        "job_stage": None if stage == "-" or job_state == "" else stage,
        "thread_state": {
            "state": thread_state.get("state"),
            "elapsed": thread_state.get("elapsed"),
            "proc": thread_state.get("proc"),
        },
        "state_elapsed": None,
        "last_error": info.get("last_error"),
    }


def _from_damocles_paused_shape(info: dict[str, Any], line: DamoclesLine) -> dict[str, Any]:
    """v0.1 to v0.8: `paused`, `paused_elapsed` and `state` instead of a thread state."""
    paused = info["paused"]
    if not isinstance(paused, bool):
        raise ValueError(f"paused {_excerpt(paused)} is not true or false")
    state = info["state"]
    job_id = info["job_id"] if "job_id" in info else _sector_text(info["sector_id"])
    plan = info["plan"] if line.reports_plan else _inferred_plan(state, line)
    elapsed = _paused_seconds(info["paused_elapsed"]) if paused else None
    return {
        "index": info["index"],
        "location": info["location"],
        "plan": plan,
        "job_id": job_id,
        "job_state": state,
        "job_stage": None,
        "thread_state": {
            "state": ThreadState.Paused.value if paused else None,
            "elapsed": elapsed,
            "proc": None,
        },
        "state_elapsed": None,
        "last_error": info.get("last_error"),
    }


def _sector_text(sector: Any) -> str | None:
    """v0.1's "m-1000-s-2" and v0.2-v0.7's {"Miner": 1000, "Number": 2} as s-t01000-2."""
    if sector is None:
        return None
    if isinstance(sector, str) and (match := _OLD_SECTOR_ID.fullmatch(sector)):
        return f"s-t0{match.group(1)}-{match.group(2)}"
    if isinstance(sector, dict) and set(sector) >= {"Miner", "Number"}:
        miner, number = sector["Miner"], sector["Number"]
        if _is_int(miner) and _is_int(number) and miner >= 0 and number >= 0:
            return f"s-t0{miner}-{number}"
    raise ValueError(f"sector_id {_excerpt(sector)} is not a sector id")


def _paused_seconds(elapsed: Any) -> int | None:
    """paused_elapsed as whole seconds: an integer (v0.2+) or v0.1's Duration text."""
    if elapsed is None or (_is_int(elapsed) and elapsed >= 0):
        return elapsed
    if isinstance(elapsed, str) and (match := _RUST_DURATION.fullmatch(elapsed)):
        whole, fraction, unit = match.groups()
        seconds = (int(whole) + float(f"0.{fraction or 0}")) * _RUST_DURATION_UNITS[unit]
        return math.floor(seconds)
    raise ValueError(f"paused_elapsed {_excerpt(elapsed)} is not a duration")


def _inferred_plan(state: Any, line: DamoclesLine) -> str | None:
    """Before v0.5 the plan is not sent: the one plan whose states hold `state`, else None."""
    if len(line.plans) == 1:
        return line.plans[0]
    owners = [plan for plan in line.plans if state in plan_states(plan, line)]
    return owners[0] if len(owners) == 1 else None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def plan_states(plan: str, line: DamoclesLine | None = None) -> tuple[str, ...]:
    """The states of `plan` a resume may move a task to: our agent's plans (api.PLAN_STATES,
    damocles' names), as far as `line` knows them. ValueError for a plan unknown there."""
    names = WDPOST_STATES if plan == "wdpost" else api.PLAN_STATES.get(plan)
    if names is None or (line is not None and plan not in line.plans):
        where = f"damocles-worker {line.name}" if line is not None else "venusctl"
        raise ValueError(f"{where} does not know the states of plan {plan!r}")
    if line is None or plan == "wdpost":
        return names
    return tuple(name for name in names if name in line.states)


def resume_states(
    thread: WorkerInfo, line: DamoclesLine | None = None
) -> tuple[str, tuple[str, ...]]:
    """(plan, its valid resume states) for a thread, on damocles-worker `line` if given.

    A thread without a plan (damocles before v0.5, in a state several plans
    share) gets only the states of every plan it may run: a state foreign to
    its plan would abort its task. Raises ValueError for an unknown plan.
    """
    if thread.plan is not None:
        return thread.plan, plan_states(thread.plan, line)
    plans = line.plans if line is not None else tuple(api.PLAN_STATES)
    owners = [plan for plan in plans if thread.job_state in plan_states(plan, line)] or list(plans)
    if len(owners) == 1:
        return owners[0], plan_states(owners[0], line)
    shared = [set(plan_states(plan, line)) for plan in owners]
    common = tuple(name for name in plan_states(owners[0], line) if all(name in s for s in shared))
    return f"{' or '.join(owners)} (not reported by the worker)", common


def check_resume_state(thread: WorkerInfo, state: str, line: DamoclesLine | None = None) -> None:
    """Refuse a resume state outside the thread's plan, as our agent does (INVALID_PARAMS).

    The original damocles-worker ignores an unknown name and resumes anyway
    (v0.8+), and a known state of another plan aborts the task ("unexpected state").
    """
    try:
        plan, valid = resume_states(thread, line)
    except ValueError as error:
        raise AgentRefused(api.RpcCode.INVALID_PARAMS, f"{error}: resume without a state") from None
    if state not in valid:
        on = f" on damocles-worker {line.name}" if line is not None else ""
        raise AgentRefused(
            api.RpcCode.INVALID_PARAMS,
            f'invalid state "{state}" for plan {plan}{on}; valid states: {", ".join(valid)}',
        )


@dataclass(frozen=True)
class Action:
    """pause, resume or cancel-pause of one thread, validated before any connection."""

    kind: str  # "pause" | "resume" | "cancel-pause" (drain's: a queued pause taken back)
    index: int
    state: str | None = None

    def via(self, agent: Agent) -> str | None:
        """Do it; returns a note when the answer was more than "done"."""
        if self.kind == "pause":
            return agent.pause(self.index)
        if self.kind == "cancel-pause":
            return PAUSE_CANCELLED if agent.cancel_pause(self.index) else NOTHING_QUEUED
        return agent.resume(self.index, self.state)


PAUSE_CANCELLED = "pause request cancelled: it was still queued; the thread keeps running"
PAUSE_QUEUED = "pause queued: it stops when its running stage ends (result kept; resume cancels)"
PAUSE_SENT = "pause sent: it stops at its next stage boundary (a running stage finishes first)"
NOTHING_QUEUED = "no pause queued any more (the thread took it, or none was asked for)"


# The damocles-worker queues a pause token that no API shows or takes back (reference §3).
DAMOCLES_QUEUED = (
    "a damocles-worker can neither show nor cancel a queued pause: if one is queued,"
    " the thread stops at its next stage boundary"
)


def resume_cancelling_queued(
    agent: RpcAgent | CliAgent, index: int, state: str | None
) -> str | None:
    """Our agent's resume, which also takes back a pause still queued (WorkerCancelPause).

    A thread that is not paused may be running with a pause queued behind its
    stage: resume cancels that request and says so. The cancel never resumes;
    if it finds nothing queued (the thread took the pause just now), the resume
    is sent once more. With a STATE nothing is cancelled: a running task cannot
    be moved, the refusal stands.
    """
    try:
        agent.resume_paused(index, state)
        return None
    except AgentRefused as refused:
        if refused.code != api.RpcCode.NOT_PAUSED or state is not None:
            raise
        not_paused = refused
    try:
        cancelled = agent.cancel_pause(index)
    except AgentRefused as refused:
        if refused.code != api.RpcCode.METHOD_NOT_FOUND:
            raise not_paused from None
        cancelled = None  # an agent from before WorkerCancelPause
    except UnreadableReply:  # its CLI from before `cancel-pause`
        cancelled = None
    if cancelled is None:
        raise AgentRefused(
            api.RpcCode.NOT_PAUSED,
            f"{not_paused}; this agent cannot cancel a queued pause (upgrade it): if one"
            " is queued, the thread stops at its next stage boundary",
        )
    if cancelled:
        return PAUSE_CANCELLED
    agent.resume_paused(index, state)
    return None


@dataclass(frozen=True)
class ActionOutcome:
    """How an action was done: the path used (stream, exec, ...) and the agent's note,
    or why it was not (`error`; then `via` is None)."""

    via: str | None = None
    note: str | None = None
    error: BaseException | None = None

    @classmethod
    def of(cls, outcome: ActionOutcome | BaseException) -> ActionOutcome:
        """A fan-out outcome as an ActionOutcome: a host that raised failed with that error."""
        return outcome if isinstance(outcome, ActionOutcome) else cls(error=outcome)


# =============================================================================
# Tables and JSON entries
# =============================================================================


# Worker text is data. What a worker sends (errors, paths, names, versions) must
# not move the cursor, retitle the terminal, clear the screen, start a new line
# in a plugin's output or a mail, or flip the text's direction.
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_UNSAFE = "\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_UNSAFE_PATTERNS: dict[str, re.Pattern[str]] = {}


def escape_text(text: str, also: str = "") -> str:
    """`text` with every control character shown as a visible escape: the one escape
    function of every printer (tables, lines, prompts, progress, health, the cron mail).

    C0 controls, DEL and C1 controls (ESC and CSI too) become `\\n`, `\\r`,
    `\\t` or `\\xNN`, as the original worker's CLI shows its errors on one line;
    Unicode line/paragraph separators and bidirectional controls become
    `\\uNNNN`. `also` names more characters to escape (health: `|`, the
    plugin's perfdata separator). Backslashes are left as they are, so escaping
    twice changes nothing. `--json` never goes through it: JSON keeps the exact text.
    """
    pattern = _UNSAFE_PATTERNS.get(also)
    if pattern is None:
        pattern = re.compile(f"[{_UNSAFE}{re.escape(also)}]")
        _UNSAFE_PATTERNS[also] = pattern
    return pattern.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_lines(text: str) -> str:
    """Multi-line text of ours (a traceback) with each line escaped; its own newlines kept."""
    return "".join(escape_text(line) + "\n" for line in text.splitlines())


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _cell(value: Any) -> str:
    return "-" if value is None or value == "" else escape_text(str(value))


def _state_value(state: ThreadState | None) -> str | None:
    return None if state is None else state.value


# -- table specs: the columns of a table, for --columns, --sort, -o csv|tsv and colour
#
# A table is a TableSpec: its Columns in the order they show, each with its header
# (also its --columns and --sort name, any case), how its cell is made from one row
# (None: no value, "-" in a table, empty in CSV), its sort key and its colour.
# Adding --sort, --columns, --no-header, -o csv|tsv and colour to a command's table is
# one spec and add_table_options(parser, SPEC).

# The colours of a terminal (SGR): what a cell's style names.
STYLES = {"paused": "33", "error": "31", "expired": "1"}  # yellow, red, bold


@dataclass(frozen=True)
class Column:
    header: str
    cell: Callable[[Any], str | None]  # the cell's text, worker text unescaped
    sort: Callable[[Any], Any] | None = None  # sort key (None: no value, sorted last)
    style: Callable[[Any], str | None] | None = None  # a key of STYLES, or None
    wide: bool = False  # shown with --wide
    extra: bool = False  # shown only when --columns names it
    aliases: tuple[str, ...] = ()  # more names for --columns and --sort
    when: Callable[[Sequence[Any]], bool] | None = None  # shown by default only if true

    @property
    def names(self) -> tuple[str, ...]:
        return (self.header.lower(), *self.aliases)

    def key(self, row: Any) -> Any:
        return self.sort(row) if self.sort is not None else self.cell(row)


@dataclass(frozen=True)
class TableSpec:
    """The columns of one command's table (see above); pure, so tested without a host."""

    name: str  # the command, for messages
    columns: tuple[Column, ...]

    def column(self, name: str, option: str) -> Column:
        """The column `name` (header or alias, any case); ValueError with the valid ones."""
        wanted = name.strip().lower()
        for column in self.columns:
            if wanted in column.names:
                return column
        names = [column.header.lower() for column in self.columns]
        aliases = [alias for column in self.columns for alias in column.aliases]
        close = close_names(wanted, [*names, *aliases]) if wanted else []
        guess = f"; did you mean {_either(close)}?" if close else ""
        what = f"empty {option} name" if not wanted else f"unknown {option} {name.strip()!r}"
        raise ValueError(f"{what} for {self.name}{guess} (valid: {', '.join(names)})")

    def parse_columns(self, text: str) -> tuple[str, ...]:
        """--columns host,index,state: headers, each known, in the order given."""
        headers = tuple(self.column(word, "column").header for word in text.split(","))
        return tuple(dict.fromkeys(headers))

    def parse_sort(self, text: str) -> tuple[str, ...]:
        """--sort state,elapsed: headers of the sort keys, the first the most significant."""
        return tuple(self.column(word, "sort key").header for word in text.split(","))

    def chosen(
        self, rows: Sequence[Any], wide: bool, headers: Sequence[str] | None = None
    ) -> list[Column]:
        """The columns shown: those named by --columns, else the default (or --wide) set."""
        if headers:
            by_header = {column.header: column for column in self.columns}
            return [by_header[header] for header in headers]
        return [
            column
            for column in self.columns
            if not column.extra
            and (wide or not column.wide)
            and (column.when is None or column.when(rows))
        ]

    def ordered(self, rows: Sequence[Any], keys: Sequence[str], reverse: bool) -> list[Any]:
        """`rows` sorted by the columns `keys` (stable; rows without a value always last)."""
        by_header = {column.header: column for column in self.columns}
        ordered = list(rows)
        for header in reversed(keys):
            column = by_header[header]
            keyed = [(column.key(row), row) for row in ordered]
            present = [pair for pair in keyed if pair[0] is not None]
            present.sort(key=lambda pair: pair[0], reverse=reverse)
            ordered = [row for _, row in present] + [row for key, row in keyed if key is None]
        return ordered

    def cells(self, rows: Sequence[Any], columns: Sequence[Column]) -> list[list[str]]:
        """The table's cells: "-" for no value, every cell escaped (worker text is data)."""
        return [[_table_cell(column.cell(row)) for column in columns] for row in rows]

    def data(self, rows: Sequence[Any], columns: Sequence[Column]) -> list[list[str]]:
        """The cells for CSV and TSV: exact (unescaped), "" for no value."""
        return [[column.cell(row) or "" for column in columns] for row in rows]

    def styles(self, rows: Sequence[Any], columns: Sequence[Column]) -> list[list[str | None]]:
        return [
            [column.style(row) if column.style is not None else None for column in columns]
            for row in rows
        ]


def _table_cell(value: str | None) -> str:
    return "-" if value is None else escape_text(value)


def _text(value: Any) -> str | None:
    """A cell from a worker's value: None and "" are no value."""
    return None if value is None or value == "" else str(value)


def _number(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True)
class TableView:
    """How a command prints its table: from --columns, --sort, --reverse, --no-header, -o."""

    columns: tuple[str, ...] = ()
    sort: tuple[str, ...] = ()
    reverse: bool = False
    header: bool = True
    output: str = "table"  # table | csv | tsv (json is the command's own document)
    wide: bool = False

    @classmethod
    def of(cls, args: argparse.Namespace) -> TableView:
        return cls(
            columns=getattr(args, "columns", None) or (),
            sort=getattr(args, "sort", None) or (),
            reverse=getattr(args, "reverse", False),
            header=not getattr(args, "no_header", False),
            output=getattr(args, "output", None) or "table",
            wide=getattr(args, "wide", False),
        )


def render_spec(
    spec: TableSpec,
    rows: Sequence[Any],
    view: TableView,
    width: int | None = None,
    color: bool = False,
) -> str:
    """One command's table as --columns, --sort, --no-header and -o want it.

    `table`: the seed's layout (render_table), cut to `width` when given,
    coloured when `color`; `csv`: RFC 4180 by Python's csv module, every
    value exact (worker text is data there, quoted where needed); `tsv`: one
    line per row, tab-separated, with tab, newline, carriage return and
    backslash written as \\t, \\n, \\r and \\\\ (so a value never
    breaks the line).
    """
    columns = spec.chosen(rows, view.wide, view.columns)
    rows = spec.ordered(rows, view.sort, view.reverse) if view.sort else list(rows)
    headers = [column.header for column in columns]
    if view.output in ("csv", "tsv"):
        data = spec.data(rows, columns)
        lines = [headers, *data] if view.header else data
        return delimited(lines, view.output)
    styles = spec.styles(rows, columns) if color else None
    return render_table(headers, spec.cells(rows, columns), width, styles, view.header)


_TSV_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def delimited(lines: Sequence[Sequence[str]], output: str) -> str:
    """Rows as CSV (the csv module's quoting, '\\n' line ends) or as TSV (escaped)."""
    if output == "tsv":
        return "".join("\t".join(v.translate(_TSV_ESCAPES) for v in line) + "\n" for line in lines)
    import csv
    import io

    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(lines)
    return buffer.getvalue()


def error_json(error: BaseException | None) -> dict[str, Any] | None:
    if error is None:
        return None
    if isinstance(error, HostError):
        return error.as_json()
    return {"kind": "internal-error", "message": describe_unexpected(error)}


def describe_unexpected(error: BaseException) -> str:
    return f"internal error: {type(error).__name__}: {error} (run with --debug)"


def error_text(error: BaseException) -> str:
    return str(error) if isinstance(error, HostError) else describe_unexpected(error)


def list_entry(
    host: Host,
    outcome: HostStatus | BaseException,
    expiration: float,
    route: tuple[str, str | None] | None = None,
) -> dict:
    """One host's `list --json` object (also what the table is made from).

    `route` is (Dest, Jump) as the connection went (host_route): ssh_config's
    HostName and Port, the jump hosts; without it the inventory's address.
    """
    status = HostStatus.of(outcome)
    age = status.last_ping
    summary = status.summary
    dest, jump = route or (host.dest, None)
    return {
        "name": host.name,
        "dest": dest,
        "jump": jump,
        "transport": host.transport,
        "backend": host.backend,
        "via": status.via or None,
        "version": status.version,
        "release_line": status.release_line,
        "summary": summary.to_json() if summary is not None else None,
        # threads whose pause waits for their stage's end; None: no live thread list, or a
        # damocles-worker (which shows no queued pause)
        "pause_requested": (
            None
            if status.threads is None or host.backend == "damocles"
            else sum(thread.pause_requested for thread in status.threads)
        ),
        "last_ping": age,
        "expired": age is not None and age > expiration,
        "error": error_json(status.error),
    }


def _last_ping_cell(entry: dict) -> str | None:
    if entry["last_ping"] is None:
        return None
    return format_duration(entry["last_ping"]) + ("!" if entry["expired"] else "")


def _jump_cell(route: str | None) -> str | None:
    """The jump hosts as user@host:port,...; a ProxyCommand by its program (JSON has it all)."""
    if route is None:
        return None
    if route.startswith("ProxyCommand "):
        words = route.split()
        return f"ProxyCommand {os.path.basename(words[1])}" if len(words) > 1 else route
    return route


def _version_cell(entry: dict) -> str | None:
    """The version; for a damocles-worker also the release line its WorkerInfo shape names."""
    version = entry["version"]
    line = entry.get("release_line")
    return f"{version or '-'} ({line} API)" if line else _text(version)


def _count(key: str) -> Callable[[dict], int | None]:
    return lambda entry: (entry["summary"] or {}).get(key)


def _count_column(key: str, wide: bool = False, style: str | None = None) -> Column:
    def styled(entry: dict) -> str | None:
        return style if (_count(key)(entry) or 0) > 0 else None

    return Column(
        key,
        lambda entry: _number(_count(key)(entry)),
        sort=_count(key),
        style=styled if style else None,
        wide=wide,
    )


def _queued(entry: dict) -> int | None:
    return entry["pause_requested"]


LIST_TABLE = TableSpec(
    "list",
    (
        Column(
            "Name", lambda e: e["name"], sort=lambda e: natural_key(e["name"]), aliases=("host",)
        ),
        Column("Dest", lambda e: e["dest"]),
        Column("Jump", lambda e: _jump_cell(e["jump"]), wide=True),
        Column("Version", _version_cell, wide=True),
        _count_column("Threads"),
        _count_column("Empty"),
        _count_column("Paused", style="paused"),
        Column(  # threads with a pause queued behind their running stage
            "Queued",
            lambda e: _number(_queued(e)),
            sort=_queued,
            style=lambda e: "paused" if _queued(e) else None,
            wide=True,
        ),
        _count_column("Running", wide=True),
        _count_column("Waiting", wide=True),
        _count_column("Errors", style="error"),
        Column(
            "LastPing",
            _last_ping_cell,
            sort=lambda e: e["last_ping"],
            style=lambda e: "expired" if e["expired"] else None,
            aliases=("elapsed", "ping"),
        ),
        Column(
            "Error",
            lambda e: e["error"]["message"] if e["error"] else "",
            sort=lambda e: e["error"]["message"] if e["error"] else None,
            style=lambda e: "error" if e["error"] else None,
            when=lambda entries: any(entry["error"] for entry in entries),
        ),
    ),
)


LIST_HEADERS = [column.header for column in LIST_TABLE.chosen([], wide=False)]


LIST_WIDE_HEADERS = [column.header for column in LIST_TABLE.chosen([], wide=True)]


def list_table(entries: list[dict], wide: bool) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of `venusctl list`; an Error column only when a host failed."""
    columns = LIST_TABLE.chosen(entries, wide)
    return [column.header for column in columns], LIST_TABLE.cells(entries, columns)


def format_thread_state(activity: ThreadActivity, pause_queued: bool = False) -> str:
    """Idle, Paused(17s), Running(1m3s) mock, Waiting(5s): as damocles-worker shows it;
    `Running(3m) mock, pause queued` while a pause waits for the stage to end."""
    state = activity.state.value if activity.state is not None else "-"
    elapsed = activity.elapsed
    text = state if elapsed is None else f"{state}({format_duration(elapsed)})"
    text = f"{text} {activity.proc}" if activity.proc else text
    return f"{text}, pause queued" if pause_queued else text


def thread_state_text(thread: WorkerInfo) -> str:
    return format_thread_state(thread.thread_state, thread.pause_requested)


def _paused_cell(thread: WorkerInfo) -> str:
    """info's Paused column: true, false, or queued (asked for, the running stage first)."""
    if thread.paused:
        return "true"
    return "queued" if thread.pause_requested else "false"


def _state_order(thread: WorkerInfo) -> int | None:
    """A task state's place in the flow (Empty first, Finished last), for --sort state."""
    if not thread.job_state:
        return None
    return STATE_NAMES.index(thread.job_state) if thread.job_state in STATE_NAMES else 999


def _paused_style(thread: WorkerInfo) -> str | None:
    return "paused" if thread.paused or thread.pause_requested else None


INFO_COLUMNS = (
    Column("Index", lambda t: str(t.index), sort=lambda t: t.index),
    Column("Loc", lambda t: _text(t.location), aliases=("location",)),
    Column(
        "SectorID",
        lambda t: _text(t.job_id),
        sort=lambda t: natural_key(t.job_id) if t.job_id else None,
        aliases=("sector",),
    ),
    Column(
        "Paused",
        _paused_cell,
        sort=lambda t: (t.paused, t.pause_requested),
        style=_paused_style,
    ),
    Column(
        "PausedElapsed",
        lambda t: format_duration(t.thread_state.elapsed) if t.paused else None,
        sort=lambda t: t.thread_state.elapsed if t.paused else None,
        style=_paused_style,
    ),
    Column("State", lambda t: _text(t.job_state), sort=_state_order),
    Column(  # seconds in the current task state (WorkerInfo state_elapsed)
        "Elapsed",
        lambda t: None if t.state_elapsed is None else format_duration(t.state_elapsed),
        sort=lambda t: t.state_elapsed,
        extra=True,
        aliases=("instate",),
    ),
    Column("Plan", lambda t: _text(t.plan), wide=True),
    Column("Stage", lambda t: _text(t.job_stage), wide=True),
    Column(
        "ThreadState",
        thread_state_text,
        sort=lambda t: _state_value(t.thread_state.state),
        style=lambda t: "paused" if t.paused else None,
        wide=True,
    ),
    Column(
        "LastErr",
        lambda t: _text(t.last_error),
        style=lambda t: "error" if t.last_error else None,
        aliases=("error",),
    ),
)


INFO_TABLE = TableSpec("info", INFO_COLUMNS)


INFO_HEADERS = [column.header for column in INFO_TABLE.chosen([], wide=False)]


INFO_WIDE_HEADERS = [column.header for column in INFO_TABLE.chosen([], wide=True)]


def info_table(threads: Sequence[WorkerInfo], wide: bool) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of `venusctl info`: one row per sealing thread."""
    columns = INFO_TABLE.chosen(threads, wide)
    return [column.header for column in columns], INFO_TABLE.cells(threads, columns)


def info_entry(host: Host, outcome: HostStatus | BaseException) -> dict:
    """`info --json`: the host's WorkerInfo list, or why there is none."""
    status = HostStatus.of(outcome)
    threads = status.threads
    return {
        "name": host.name,
        "dest": host.dest,
        "backend": host.backend,
        "via": status.via or None,
        "release_line": status.release_line,
        "threads": [thread.to_json() for thread in threads] if threads is not None else None,
        "last_ping": status.last_ping,
        "error": error_json(status.error),
    }


def info_failure_line(entry: dict) -> str:
    """Why `info` has no table, with the stale heartbeat's age when there is one."""
    age = entry["last_ping"]
    stale = f" (last heartbeat {format_duration(age)} ago)" if age is not None else ""
    return escape_text(f"{entry['name']}: {entry['error']['message']}{stale}")


def action_entry(host: Host, action: Action, outcome: ActionOutcome) -> dict:
    """`pause`/`resume --json`: how it was done (path, note), or the error."""
    return {
        "name": host.name,
        "dest": host.dest,
        "action": action.kind,
        "index": action.index,
        "state": action.state,
        "via": outcome.via,
        "ok": outcome.error is None,
        "note": outcome.note,
        "error": action_error_json(outcome.error),
    }


def action_line(host: Host, action: Action, outcome: ActionOutcome) -> str:
    """The one line `pause`/`resume` print about the outcome (escaped: it quotes the agent)."""
    return escape_text(_action_text(host, action, outcome))


def action_error(host: Host, action: Action, error: BaseException) -> str:
    """Why an action was not done, as `pause`/`resume` and drain say it. A reply that did
    not come is not a failure: the agent may have acted (ReplyTimeout, NoReply)."""
    check = f"it may still take effect; check with `venusctl info {host.name}`"
    if isinstance(error, ReplyTimeout):
        return f"{action.kind}: no reply in {error.seconds:g}s \u2014 {check}"
    if isinstance(error, NoReply):  # the connection closed where the reply was due
        return f"{action.kind}: no reply ({error}) \u2014 {check}"
    if isinstance(error, NoAnswer):  # --deadline came first: the request may be out
        return f"{action.kind}: {error} \u2014 {check}"
    verb = "refused" if isinstance(error, AgentRefused) else "failed"
    return f"{action.kind} {verb}: {error_text(error)}"


def action_error_json(error: BaseException | None) -> dict[str, Any] | None:
    if isinstance(error, ReplyTimeout):
        return {"kind": "no-reply", "message": str(error), "seconds": error.seconds}
    return error_json(error)  # NoReply's kind is no-reply already


def _action_text(host: Host, action: Action, outcome: ActionOutcome) -> str:
    subject = f"{host.name} #{action.index}"
    error = outcome.error
    if error is not None:
        return f"{subject}: {action_error(host, action, error)}"
    if outcome.note:
        return f"{subject}: {outcome.note}"
    if action.kind == "pause":
        return f"{subject}: paused"
    if action.state:
        return f"{subject}: resumed in state {action.state}"
    return f"{subject}: resumed"


def _transport_cell(host: Host) -> str:
    return (
        f"{host.transport} -> damocles {host.rpc}" if host.backend == "damocles" else host.transport
    )


INVENTORY_TABLE = TableSpec(
    "inventory",
    (
        Column("Name", lambda h: h.name, sort=lambda h: natural_key(h.name), aliases=("host",)),
        Column("Dest", lambda h: h.dest),
        Column("User", lambda h: h.user),
        Column("Transport", _transport_cell),
        Column("Groups", lambda h: ",".join(h.groups) or None),
        Column("Backend", lambda h: h.backend, extra=True),
        Column("Config", lambda h: h.config, extra=True),
        Column("Socket", lambda h: h.socket, extra=True),
    ),
)


INVENTORY_HEADERS = [column.header for column in INVENTORY_TABLE.chosen([], wide=False)]


def inventory_table(inventory: Inventory) -> tuple[list[str], list[list[str]]]:
    """`venusctl inventory`: the hosts as venusctl resolved them (no connection)."""
    columns = INVENTORY_TABLE.chosen(inventory.hosts, wide=False)
    return INVENTORY_HEADERS, INVENTORY_TABLE.cells(inventory.hosts, columns)


def inventory_json(inventory: Inventory) -> list[dict[str, Any]]:
    """Every host with every setting resolved (`venusctl inventory --json`)."""
    return [{**asdict(host), "dest": host.dest} for host in inventory.hosts]


PLAYBOOK_PYTHON = "{{ ansible_playbook_python }}"


def ansible_hostvars(host: Host) -> dict[str, Any]:
    agent = {"venus_worker_config": host.config, "venus_worker_socket": host.socket}
    if host.miner is not None:
        agent["venus_worker_sealing_miner"] = host.miner
    if host.sector_numbers is not None:
        agent["venus_worker_sealing_sector_numbers"] = "{}-{}".format(*host.sector_numbers)
    if host.agent != BUILTIN_DEFAULTS["agent"]:
        # Only a command the inventory names; else the playbooks' own install path.
        agent["venus_worker_bin"] = host.agent
    if host.transport == "local":
        # As Ansible's implicit localhost: the Python running Ansible, no discovery.
        local = {"ansible_connection": "local", "ansible_python_interpreter": PLAYBOOK_PYTHON}
        return {**local, **agent}
    # What the inventory sets; the rest Ansible's ssh reads from ssh_config, as venusctl does.
    ssh_args = [] if host.ssh_config is None else ["-F", host.ssh_config]
    if host.known_hosts is not None:
        ssh_args += ["-o", f"UserKnownHostsFile={host.known_hosts}"]
    if host.host_key_policy is not None:
        strict = {"reject": "yes", "off": "no"}.get(host.host_key_policy, host.host_key_policy)
        ssh_args += ["-o", f"StrictHostKeyChecking={strict}"]
    if host.jump is not None:
        ssh_args += ["-o", f"ProxyJump={host.jump}"]
    hostvars: dict[str, Any] = {"ansible_host": host.address}
    if host.port is not None:
        hostvars["ansible_port"] = host.port
    if host.user is not None:
        hostvars["ansible_user"] = host.user
    if host.identity_file is not None:
        hostvars["ansible_ssh_private_key_file"] = host.identity_file
    hostvars["ansible_ssh_common_args"] = shlex.join(ssh_args)
    if host.connect_timeout is not None:
        hostvars["ansible_ssh_timeout"] = math.ceil(host.connect_timeout)  # whole seconds
    return {**hostvars, **agent}


def ansible_inventory(inventory: Inventory) -> dict[str, Any]:
    """Ansible's dynamic-inventory JSON for the same hosts (`venusctl inventory --ansible`).

    Groups come from the hosts' `groups`; `_meta.hostvars` carries how to
    reach each host and where its agent's command, config and socket are,
    so playbooks and venusctl never disagree about the fleet. damocles hosts
    are left out: the playbooks deploy and drive our agent, which they do not run.
    """
    groups: dict[str, list[str]] = {}
    hosts = [host for host in inventory.hosts if host.backend != "damocles"]
    for host in hosts:
        for group in host.groups or ("ungrouped",):
            groups.setdefault(group, []).append(host.name)
    document: dict[str, Any] = {group: {"hosts": names} for group, names in sorted(groups.items())}
    document["_meta"] = {"hostvars": {host.name: ansible_hostvars(host) for host in hosts}}
    return document


# Columns cut first when a table is wider than the terminal: worker text that
# can run to hundreds of characters. Then the widest of the others, in turn.
CUT_FIRST = ("LastErr", "Error", "MostCommonError", "Outcome", "Note")
CUT_MARK = "\u2026"  # …
CUT_FLOOR = 6  # a cut column keeps at least this many characters (or its header's)


def fit_cells(headers: Sequence[str], rows: Sequence[Sequence[str]], width: int) -> list[list[str]]:
    """Rows whose cells are cut with `…` so that each line fits in `width` columns.

    LastErr (or list's Error) gives way first, down to a floor; then the
    widest remaining column, one character at a time, so long cells shrink
    evenly. Headers are never cut; a table that cannot fit even so is left as
    wide as its floors.
    """
    widths = [
        max([len(header), *(len(row[n]) for row in rows)]) for n, header in enumerate(headers)
    ]
    floors = [max(len(header), CUT_FLOOR) for header in headers]
    excess = sum(widths) + 2 * (len(headers) - 1) - width
    for name in CUT_FIRST:
        if name in headers and excess > 0:
            column = headers.index(name)
            cut = min(excess, max(0, widths[column] - floors[column]))
            widths[column] -= cut
            excess -= cut
    while excess > 0:
        column = max(range(len(headers)), key=lambda n: widths[n] - floors[n])
        if widths[column] <= floors[column]:
            break
        widths[column] -= 1
        excess -= 1
    return [
        [
            cell if len(cell) <= widths[n] else cell[: widths[n] - 1] + CUT_MARK
            for n, cell in enumerate(row)
        ]
        for row in rows
    ]


def render_table(
    headers: list[str],
    rows: list[list[str]],
    width: int | None = None,
    styles: Sequence[Sequence[str | None]] | None = None,
    header: bool = True,
) -> str:
    """The seed's table; every cell escaped (worker text is data), then cut to `width`
    columns when one is given (a terminal; None: a pipe or file, or --full: never cut).

    `styles` (a STYLES key or None per cell) colours cells for a terminal: the
    colour goes around a cell already escaped and cut, and tabulate measures
    the visible width only, so colour never moves a column or breaks the fit.
    """
    from tabulate import simple_separated_format, tabulate  # often imported already: prefetch

    cells = [[escape_text(str(cell)) for cell in row] for row in rows]
    if width is not None:
        cells = fit_cells(headers, cells, width)
    if styles is not None:
        cells = [
            [_painted(cell, style) for cell, style in zip(row, row_styles, strict=True)]
            for row, row_styles in zip(cells, styles, strict=True)
        ]
    # The seed's layout: left-aligned columns two spaces apart, no rules. The
    # header goes in as the first row because tabulate pads real headers by
    # two more spaces; numparse off so an index or a count is never reformatted.
    table = tabulate(
        [headers, *cells] if header else cells or [[""]],
        tablefmt=simple_separated_format("  "),
        disable_numparse=True,
    )
    return "\n".join(line.rstrip() for line in table.splitlines())


_PREFETCHED: set[str] = set()


def prefetch(module: str) -> None:
    """Import `module` in a thread of its own, once, while this one waits on hosts: the
    table module after a fan-out (tabulate 0.9's import is ~5 ms; setup.cfg keeps it below
    0.10, whose import of importlib.metadata costs 25-45 ms) is then there when the answers
    are. A module that fails to import here fails again, with its message, where it is
    imported for use."""
    if module in _PREFETCHED or module in sys.modules:
        return
    _PREFETCHED.add(module)

    def load() -> None:
        with contextlib.suppress(Exception):
            importlib.import_module(module)

    threading.Thread(target=load, name=f"venusctl-import-{module}", daemon=True).start()


def _painted(cell: str, style: str | None) -> str:
    if style is None or cell in ("", "-"):
        return cell
    return f"\x1b[{STYLES[style]}m{cell}\x1b[0m"


def header_styles(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[list[str | None]]:
    """Colour for a table without a spec (bulk plans, drain): errors red, paused yellow."""

    def style(header: str, cell: str) -> str | None:
        if header in ("LastErr", "Error"):
            return "error"
        if header == "ThreadState" and cell.startswith("Paused"):
            return "paused"
        return None

    return [[style(h, cell) for h, cell in zip(headers, row, strict=False)] for row in rows]


# =============================================================================
# Health engine: judging a fleet, and the report's three forms
# =============================================================================


@dataclass(frozen=True)
class Thresholds:
    """What `health` judges against, all in seconds (see HEALTH_DEFAULTS, STUCK_DEFAULTS)."""

    expiration: float = HEALTH_DEFAULTS["expiration"]
    paused_warn: float = HEALTH_DEFAULTS["paused_warn"]
    paused_crit: float = HEALTH_DEFAULTS["paused_crit"]
    stuck: dict[str, float] = field(
        default_factory=lambda: {**STUCK_DEFAULTS, **WDPOST_STUCK_DEFAULTS}
    )

    def stuck_after(self, state: str | None, stage: str | None) -> tuple[str, float]:
        """The threshold for a job in `state` (stage label `stage`), and the key it came from."""
        for key in (state, stage, "default"):
            if key and key in self.stuck:
                return key, self.stuck[key]
        return "default", STUCK_DEFAULTS["default"]


@dataclass(frozen=True)
class Finding:
    """One thing wrong, on a host or on one of its threads (index None: the host)."""

    severity: Severity
    kind: str  # host-unreachable agent-not-running heartbeat-expired no-answer
    #            internal-error thread-error thread-paused thread-stuck sector-range-low
    host: str
    message: str
    index: int | None = None
    sector: str | None = None
    state: str | None = None
    stage: str | None = None
    duration: float | None = None
    # What identical findings share (the error text, the stuck stage and threshold): the
    # report shows them as one line. Empty: the message itself.
    cause: str = ""
    silenced: bool = False  # on a host under a [[silence]]: reported, never raises the status

    @property
    def shared(self) -> str:
        return self.cause or self.message

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "severity": self.severity.name, "cause": self.shared}


@dataclass
class HostHealth:
    """One host's counts and findings; `up` means its live thread list was read."""

    name: str
    up: bool
    heartbeat_age: float | None = None
    thread_states: dict[str, int] = field(default_factory=dict)  # Idle Running Waiting Paused
    job_states: dict[str, int] = field(default_factory=dict)  # C1Done: 2, ...
    threads: int = 0
    empty: int = 0
    errors: int = 0
    findings: list[Finding] = field(default_factory=list)
    # Threads a --stuck threshold could not be applied to (no time in state reported).
    not_judged: list[Finding] = field(default_factory=list)
    silence: Silence | None = None

    def as_json(self) -> dict[str, Any]:
        # The findings are listed once, at the top of the report, with their host.
        document = {key: getattr(self, key) for key in ("name", "up", "heartbeat_age")}
        for key in ("thread_states", "job_states", "threads", "empty", "errors"):
            document[key] = getattr(self, key)
        silence = self.silence
        document["silenced"] = (
            None if silence is None else {"until": silence.until_text, "reason": silence.reason}
        )
        return document


THREAD_STATES = tuple(state.value for state in ThreadState)


@dataclass
class HealthReport:
    status: Severity
    hosts: list[HostHealth]
    findings: list[Finding]
    time: float
    deadline: float | None = None  # set when the deadline passed before every host answered
    problem: str | None = None  # the run's own failure (the textfile), said first; UNKNOWN
    not_judged: list[Finding] = field(default_factory=list)  # health --verbose lists them


# Worst first: CRITICAL before UNKNOWN (a host we know is down matters more
# than one we could not judge), UNKNOWN before WARNING.
_SEVERITY_RANK = {
    Severity.OK: 0,
    Severity.WARNING: 1,
    Severity.UNKNOWN: 2,
    Severity.CRITICAL: 3,
}


def _host_failure(name: str, error: BaseException) -> Finding:
    if isinstance(error, NoAnswer):
        return Finding(Severity.UNKNOWN, "no-answer", name, str(error))
    if isinstance(error, (AgentNotRunning, DamoclesNotReachable)):
        return Finding(Severity.CRITICAL, "agent-not-running", name, str(error))
    if isinstance(error, HostError):
        # The host answered over SSH but its agent could not be asked: say that, not
        # "unreachable" (the kind stays host-unreachable: any SSH or transport failure).
        agent_side = isinstance(error, (BothWaysFailed, StreamConnectFailed, AgentUnreachable))
        why = "cannot ask the agent" if agent_side else "unreachable"
        return Finding(Severity.CRITICAL, "host-unreachable", name, f"{why}: {error}")
    # A bug of ours, not a fact about the host: we cannot judge it.
    return Finding(Severity.UNKNOWN, "internal-error", name, describe_unexpected(error))


def _agent_down(name: str, status: HostStatus, age: float | None, expiration: float) -> Finding:
    """The host answered over SSH, but not its daemon (the CLI may have read its heartbeat)."""
    error = status.error or AgentNotRunning("agent not running")
    kind = "agent-not-running" if isinstance(error, AgentNotRunning) else "host-unreachable"
    cause = error_text(error)
    message = cause
    if age is not None:
        expired = " (expired)" if age > expiration else ""
        message += f"; last heartbeat {format_duration(age)} ago{expired}"
    return Finding(Severity.CRITICAL, kind, name, message, duration=age, cause=cause)


def _count_threads(health: HostHealth, threads: list[WorkerInfo]) -> None:
    health.threads = len(threads)
    health.thread_states = dict.fromkeys(THREAD_STATES, 0)
    for thread in threads:
        state = thread.thread_state.state
        if state is not None:
            health.thread_states[state.value] += 1
        if thread.job_state:
            health.job_states[thread.job_state] = health.job_states.get(thread.job_state, 0) + 1
        health.empty += not thread.job_id
        health.errors += bool(thread.last_error)


def _seconds(value: int | None) -> float | None:
    return None if value is None else float(value)


def _stuck(thread: WorkerInfo, where: dict[str, Any], thresholds: Thresholds) -> Finding | None:
    if not where["state"]:
        return None  # no task: idle and empty threads are counted, not judged
    # state_elapsed is ours; a damocles worker only has the thread state's
    # elapsed, which is the time in the current stage while it runs.
    in_state = _seconds(thread.state_elapsed)
    if in_state is None:
        in_state = _seconds(thread.thread_state.elapsed)
    key, limit = thresholds.stuck_after(where["state"], where["stage"])
    if in_state is None or in_state < limit:
        return None
    doing = f"stage {where['stage']}" if where["stage"] else f"state {where['state']}"
    after = f"stuck after {format_duration(limit)}, --stuck {key}"
    message = f"{doing} for {format_duration(in_state)} ({after})"
    return Finding(
        Severity.WARNING,
        "thread-stuck",
        message=message,
        duration=in_state,
        cause=f"stuck in {doing} (over {format_duration(limit)}, --stuck {key})",
        **where,
    )


def _not_judged(
    thread: WorkerInfo, where: dict[str, Any], thresholds: Thresholds, who: str
) -> Finding | None:
    """A thread with a task whose time in state is not reported: its --stuck limit, unjudged.

    A damocles-worker reports an elapsed time only for Running, Waiting and
    Paused threads (v0.9+), and before v0.9 only for paused ones: a thread
    polling the chain (Idle) or, before v0.9, any thread not paused cannot be
    judged stuck. health --verbose says so instead of skipping it silently.
    """
    if not (where["state"] and thread.job_id) or thread.paused or thread.last_error:
        return None
    if thread.state_elapsed is not None or thread.thread_state.elapsed is not None:
        return None
    key, limit = thresholds.stuck_after(where["state"], where["stage"])
    doing = f"stage {where['stage']}" if where["stage"] else f"state {where['state']}"
    message = (
        f"{doing}: --stuck {key}={format_duration(limit)} not judged"
        f" ({who} does not report time in state)"
    )
    return Finding(Severity.OK, "not-judged", message=message, **where)


def _thread_where(host: str, thread: WorkerInfo) -> dict[str, Any]:
    stage = thread.job_stage
    return {
        "host": host,
        "index": thread.index,
        "sector": thread.job_id,
        "state": thread.job_state or None,
        "stage": stage if stage not in (None, "-") else None,
    }


def judge_thread(host: str, thread: WorkerInfo, thresholds: Thresholds) -> Finding | None:
    """At most one finding per thread: in error, paused by hand, or stuck."""
    where = _thread_where(host, thread)
    paused_for = _seconds(thread.thread_state.elapsed)
    error = thread.last_error
    if error:
        # The agent pauses a thread on a permanent or critical error and
        # keeps last_error until resume: an operator has to look.
        critical = paused_for is not None and paused_for >= thresholds.paused_crit
        severity = Severity.CRITICAL if critical else Severity.WARNING
        message = f"paused by an error for {format_duration(paused_for)}: {error}"
        return Finding(
            severity,
            "thread-error",
            message=message,
            duration=paused_for,
            cause=f"paused on: {error}",
            **where,
        )
    if thread.paused:
        if paused_for is None or paused_for < thresholds.paused_warn:
            return None
        warning = f"warning after {format_duration(thresholds.paused_warn)}"
        message = f"paused by hand for {format_duration(paused_for)} ({warning})"
        return Finding(
            Severity.WARNING,
            "thread-paused",
            message=message,
            duration=paused_for,
            cause=f"paused by hand ({warning})",
            **where,
        )
    return _stuck(thread, where, thresholds)


def _sector_range_findings(name: str, report: api.Report | None) -> list[Finding]:
    """A configured sector range that runs low (WARNING) or is used up (CRITICAL: the
    worker starts no new task), from the agent's report (issue 15)."""
    findings = []
    for numbers in (report.sector_ranges or []) if report is not None else []:
        if not numbers.low:
            continue
        span = f"sector range {numbers.start}-{numbers.end} of miner {numbers.miner}"
        if numbers.left == 0:
            severity, said = Severity.CRITICAL, "used up: no new task starts"
        else:
            severity = Severity.WARNING
            said = f"{numbers.left} numbers left (low under {api.SECTOR_NUMBERS_LOW})"
        findings.append(
            Finding(
                severity,
                "sector-range-low",
                name,
                f"{span}: {said}; give the worker a new [sealing] sector_numbers",
                cause=f"sector range {said}",
            )
        )
    return findings


def judge_host(
    name: str, outcome: HostStatus | BaseException, thresholds: Thresholds
) -> HostHealth:
    if isinstance(outcome, BaseException):
        return HostHealth(name, up=False, findings=[_host_failure(name, outcome)])
    age = outcome.heartbeat_age
    health = HostHealth(name, up=outcome.threads is not None, heartbeat_age=age)
    if outcome.threads is None:
        health.findings.append(_agent_down(name, outcome, age, thresholds.expiration))
        return health
    if age is not None and age > thresholds.expiration:
        # The daemon answers but has not written its heartbeat: its reporter
        # (or the disk under its state folder) is stuck. A host without any
        # report (a damocles worker writes none) is never judged on this.
        limit = format_duration(thresholds.expiration)
        stuck = f"over the {limit} expiration (the agent answers but its reporter is stuck)"
        message = f"heartbeat {format_duration(age)} old, {stuck}"
        health.findings.append(
            Finding(
                Severity.CRITICAL,
                "heartbeat-expired",
                name,
                message,
                duration=age,
                cause=f"heartbeat {stuck}",
            )
        )
    health.findings += _sector_range_findings(name, outcome.report)
    _count_threads(health, outcome.threads)
    who = "damocles-worker" if outcome.release_line else "the agent"
    for thread in outcome.threads:
        finding = judge_thread(name, thread, thresholds)
        if finding is not None:
            health.findings.append(finding)
            continue
        unjudged = _not_judged(thread, _thread_where(name, thread), thresholds, who)
        if unjudged is not None:
            health.not_judged.append(unjudged)
    return health


def judge_fleet(
    outcomes: dict[str, HostStatus | BaseException],
    thresholds: Thresholds,
    now: float,
    deadline: float | None = None,
    silences: Callable[[str, float], Silence | None] | None = None,
) -> HealthReport:
    """Hosts' outcomes (in inventory order) -> findings and the overall status. No I/O.

    `deadline` is given when the run stopped waiting: the hosts whose outcome
    is a NoAnswer were still being asked, and the whole report is UNKNOWN.
    `silences(host, now)` gives the host's [[silence]] in force (Inventory.silence_of):
    its findings are kept, marked silenced, and leave the status as it is.
    """
    hosts = [judge_host(name, outcome, thresholds) for name, outcome in outcomes.items()]
    for host in hosts:
        host.silence = silences(host.name, now) if silences is not None else None
        if host.silence is not None:
            host.findings = [dataclasses.replace(f, silenced=True) for f in host.findings]
    findings = [finding for host in hosts for finding in host.findings]
    # stable: host order; the silenced ones after the others
    findings.sort(key=lambda finding: (finding.silenced, -_SEVERITY_RANK[finding.severity]))
    judged = [finding for finding in findings if not finding.silenced]
    status = max((f.severity for f in judged), key=_SEVERITY_RANK.get, default=Severity.OK)
    missed = deadline is not None and any(f.kind == "no-answer" for f in judged)
    return HealthReport(
        status=Severity.UNKNOWN if missed else status,
        hosts=hosts,
        findings=findings,
        time=now,
        deadline=deadline if missed else None,
        not_judged=[finding for host in hosts for finding in host.not_judged],
    )


def fleet_counts(report: HealthReport) -> dict[str, int]:
    """The plugin line's performance data: the fleet as judged, in numbers.

    `hosts` counts every host asked and `silenced` those under a [[silence]];
    the others count the hosts judged (not silenced), so that `errors` and
    `unreachable` agree with the thresholds they carry (PERFDATA_THRESHOLDS).
    """
    judged = [host for host in report.hosts if host.silence is None]
    up = [host for host in judged if host.up]
    return {
        "hosts": len(report.hosts),
        "threads": sum(host.threads for host in up),
        "running": sum(host.thread_states.get(ThreadState.Running.value, 0) for host in up),
        "waiting": sum(host.thread_states.get(ThreadState.Waiting.value, 0) for host in up),
        "paused": sum(host.thread_states.get(ThreadState.Paused.value, 0) for host in up),
        "errors": sum(host.errors for host in up),
        "unreachable": len(judged) - len(up),
        "idle": sum(host.thread_states.get(ThreadState.Idle.value, 0) for host in up),
        "empty": sum(host.empty for host in up),
        "silenced": len(report.hosts) - len(judged),
    }


# warn and crit of a count whose value alone decides a state, in the plugin guidelines'
# range syntax ("0": alert above 0): a thread in error is at least a WARNING, a host that
# cannot be asked is CRITICAL. Every count has min 0.
PERFDATA_THRESHOLDS = {"errors": ("0", ""), "unreachable": ("", "0")}


# A perfdata label the guidelines allow bare: no space, quote, '=' or '|'.
_BARE_LABEL = re.compile(r"[^\s'=|]+")


def perfdata_item(label: str, value: int, warn: str = "", crit: str = "", low: str = "0") -> str:
    """`'label'=value[UOM];[warn];[crit];[min];[max]` (Nagios plugin guidelines); the label
    quoted only when it must be, trailing empty fields left out."""
    if "'" in label or "=" in label:
        raise ValueError(f"perfdata label {label!r}: no quote or '=' allowed")
    shown = label if _BARE_LABEL.fullmatch(label) else f"'{label}'"
    return f"{shown}={value};{warn};{crit};{low}".rstrip(";")


def perfdata(report: HealthReport) -> str:
    return " ".join(
        perfdata_item(label, value, *PERFDATA_THRESHOLDS.get(label, ("", "")))
        for label, value in fleet_counts(report).items()
    )


# What the first line says about each kind of finding (one, several).
_FINDING_PHRASES = {
    "no-answer": ("host did not answer in time", "hosts did not answer in time"),
    "host-unreachable": ("host unreachable", "hosts unreachable"),
    "agent-not-running": ("agent not running", "agents not running"),
    "heartbeat-expired": ("heartbeat expired", "heartbeats expired"),
    "internal-error": ("host not judged (internal error)", "hosts not judged (internal error)"),
    "thread-error": ("thread in error", "threads in error"),
    "thread-stuck": ("thread stuck", "threads stuck"),
    "thread-paused": ("thread paused by hand too long", "threads paused by hand too long"),
    "sector-range-low": ("sector range low", "sector ranges low"),
}


def plugin_text(text: str) -> str:
    """Text for the plugin's output: escaped (worker text is data) and without `|`, which
    would start the performance data (status line) or more of it (long output)."""
    return escape_text(text, also="|")


def health_summary(report: HealthReport) -> str:
    """The first line, e.g. `VENUS CRITICAL - 1 host unreachable, 2 threads in error | hosts=..`.

    Its text holds counts and venusctl's own words, never worker text; the
    findings of silenced hosts are not counted in it, the silenced hosts are.
    """
    counts = fleet_counts(report)
    by_kind: dict[str, int] = {}
    for finding in report.findings:
        if not finding.silenced:
            by_kind[finding.kind] = by_kind.get(finding.kind, 0) + 1
    phrases = [
        f"{by_kind[kind]} {one if by_kind[kind] == 1 else several}"
        for kind, (one, several) in _FINDING_PHRASES.items()
        if kind in by_kind
    ]
    phrases += [  # kinds added later (their own count, their kind as the phrase)
        f"{count} {kind}" for kind, count in by_kind.items() if kind not in _FINDING_PHRASES
    ]
    if report.deadline is not None:
        phrases.insert(0, f"deadline of {format_duration(report.deadline)} passed")
    if report.problem is not None:
        phrases.insert(0, report.problem)
    if not phrases:
        judged = counts["hosts"] - counts["silenced"]
        phrases = [_plural(judged, "host") + ", " + _plural(counts["threads"], "thread")]
    if counts["silenced"]:
        phrases.append(f"{_plural(counts['silenced'], 'host')} silenced")
    return f"VENUS {report.status.name} - {plugin_text(', '.join(phrases))} | {perfdata(report)}"


def finding_line(finding: Finding) -> str:
    """`CRITICAL w1 #0 s-t010000-1 C1Done: paused by an error for 6h0m3s: permanent: ...`.

    One line whatever the worker sent (a multi-line last_error is escaped);
    a not-judged thread's line starts with INFO (health --verbose).
    """
    subject = finding.host
    if finding.index is not None:
        subject += f" #{finding.index} {finding.sector or '-'} {finding.state or '-'}"
    label = "INFO" if finding.kind == "not-judged" else finding.severity.name
    silenced = " [silenced]" if finding.silenced else ""
    return plugin_text(f"{label}{silenced} {subject}: {finding.message}")


@dataclass(frozen=True)
class FindingGroup:
    """Identical findings (same severity, kind and cause; silenced or not): one line."""

    findings: tuple[Finding, ...]

    @property
    def first(self) -> Finding:
        return self.findings[0]

    @property
    def hosts(self) -> list[str]:
        return list(dict.fromkeys(finding.host for finding in self.findings))

    @property
    def of_threads(self) -> bool:
        return self.first.index is not None

    def as_json(self) -> dict[str, Any]:
        first = self.first
        return {
            "severity": first.severity.name,
            "kind": first.kind,
            "cause": first.shared,
            "silenced": first.silenced,
            "count": len(self.findings),
            "hosts": self.hosts,
        }


GROUP_HOSTS_SHOWN = 10  # a group line names this many hosts, then "and N more"


def group_findings(findings: Sequence[Finding]) -> list[FindingGroup]:
    """Findings grouped when identical, in the order of their first member (worst first)."""
    groups: dict[tuple, list[Finding]] = {}
    for finding in findings:
        key = (finding.severity, finding.kind, finding.shared, finding.silenced)
        groups.setdefault(key, []).append(finding)
    return [FindingGroup(tuple(members)) for members in groups.values()]


def group_line(group: FindingGroup) -> str:
    """One finding's own line; several as one: `WARNING 12 threads on 3 hosts paused on:
    permanent: No cached parameters... (h1, h2, h3; longest 6h0m3s)`."""
    if len(group.findings) == 1:
        return finding_line(group.first)
    first, hosts = group.first, group.hosts
    names = ", ".join(hosts[:GROUP_HOSTS_SHOWN])
    if len(hosts) > GROUP_HOSTS_SHOWN:
        names += f" and {len(hosts) - GROUP_HOSTS_SHOWN} more"
    durations = [f.duration for f in group.findings if f.duration is not None]
    if durations:
        names += f"; longest {format_duration(max(durations))}"
    if group.of_threads:
        subject = f"{_plural(len(group.findings), 'thread')} on {_plural(len(hosts), 'host')}"
    else:
        subject = f"{_plural(len(hosts), 'host')}:"
    silenced = " [silenced]" if first.silenced else ""
    return plugin_text(f"{first.severity.name}{silenced} {subject} {first.shared} ({names})")


HOSTS_HEADERS = ["Host", "Threads", "Paused", "Errors", "Heartbeat", "Note"]


def _host_note(host: HostHealth) -> str:
    notes = [] if host.up else ["no thread list (see above)"]
    if host.silence is not None:
        notes.append(f"silenced until {host.silence.until_text}: {host.silence.reason}")
    return "; ".join(notes) or "-"


def hosts_summary(report: HealthReport) -> list[str]:
    """After the findings: one row per host (its threads, paused, errors, heartbeat age)."""
    rows = []
    for host in report.hosts:
        paused = host.thread_states.get(ThreadState.Paused.value, 0)
        counts = [str(host.threads), str(paused), str(host.errors)] if host.up else ["-"] * 3
        age = format_duration(host.heartbeat_age) if host.heartbeat_age is not None else "-"
        rows.append([host.name, *counts, age, plugin_text(_host_note(host))])
    return render_table(HOSTS_HEADERS, rows).splitlines()


def health_text(report: HealthReport, verbose: bool = False) -> str:
    """The plugin's output: the status line, then the long output (Nagios plugin
    guidelines): the findings, identical ones grouped (with --verbose each thread of a
    group below it), then the per-host summary. No `|` and no worker newline in any of it."""
    lines = [health_summary(report)]
    for group in group_findings(report.findings):
        lines.append(group_line(group))
        if verbose and len(group.findings) > 1:
            lines += [f"  {finding_line(finding)}" for finding in group.findings]
    if verbose:  # what could not be judged (INFO), before the summary
        lines += [finding_line(finding) for finding in report.not_judged]
    lines += hosts_summary(report)
    return "\n".join(lines) + "\n"


def health_json(report: HealthReport) -> dict[str, Any]:
    return {
        "status": report.status.name,
        "summary": health_summary(report),
        "findings": [finding.as_json() for finding in report.findings],
        "groups": [group.as_json() for group in group_findings(report.findings)],
        "not_judged": [finding.as_json() for finding in report.not_judged],
        "hosts": [host.as_json() for host in report.hosts],
    }


# The fleet textfile of `health --prometheus`, for node_exporter's textfile collector
# on the control host. Its names are venus_fleet_*, never the agents' venus_worker_*
# (worker_agent/metrics.py): node_exporter drops the samples of a name that two
# textfiles give two HELP texts, and a control host may run an agent too. The same
# conventions as the agent's: statuses are label values (every one present, 1 for
# the current one), times are Unix timestamps, every series the run implies is
# there with 0 rather than missing. name -> (help, label names); all gauges, in
# the order written.
FLEET_METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "venus_fleet_health_status": (
        "1 for the overall status of the last venusctl health run, 0 for the three others.",
        ("status",),
    ),
    "venus_fleet_health_last_run_timestamp_seconds": (
        "When venusctl health last judged the fleet, Unix time.",
        (),
    ),
    "venus_fleet_host_up": (
        "1 if the host's agent answered with its threads, else 0.",
        ("host",),
    ),
    "venus_fleet_last_heartbeat_timestamp_seconds": (
        "When the host's agent last wrote its heartbeat, Unix time on this host's clock"
        " (the run's time minus the age read on the worker); 0 when none is known"
        " (a damocles worker writes none; an unreachable host's cannot be read).",
        ("host",),
    ),
    "venus_fleet_threads": (
        "Sealing threads by thread state (Idle, Running, Waiting, Paused);"
        " 0 on a host whose threads were not read.",
        ("host", "state"),
    ),
    "venus_fleet_job_threads": (
        'Sealing threads by the state of their task (job_state "Empty": no task);'
        " 0 on a host whose threads were not read.",
        ("host", "job_state"),
    ),
    "venus_fleet_threads_paused": (
        "Paused sealing threads (by hand or by an error).",
        ("host",),
    ),
    "venus_fleet_threads_errors": ("Sealing threads paused by an error.", ("host",)),
    "venus_fleet_threads_empty": ("Sealing threads without a task (sector).", ("host",)),
    "venus_fleet_health_findings": (
        "Findings of the last run by kind and status (WARNING, CRITICAL, UNKNOWN);"
        " every pair health can find is there on every host, with 0.",
        ("host", "kind", "status"),
    ),
    "venus_fleet_health_finding": (
        "Always 1: one series per finding of the last run, while it holds"
        ' (index "": the host itself).',
        ("host", "index", "kind", "status"),
    ),
}

# Every kind of finding with the statuses it can have: the zeros of
# venus_fleet_health_findings. A pair not listed here is still counted.
FINDING_STATUSES: dict[str, tuple[Severity, ...]] = {
    "no-answer": (Severity.UNKNOWN,),
    "host-unreachable": (Severity.CRITICAL,),
    "agent-not-running": (Severity.CRITICAL,),
    "heartbeat-expired": (Severity.CRITICAL,),
    "internal-error": (Severity.UNKNOWN,),
    "thread-error": (Severity.WARNING, Severity.CRITICAL),
    "thread-stuck": (Severity.WARNING,),
    "thread-paused": (Severity.WARNING,),
    "sector-range-low": (Severity.WARNING, Severity.CRITICAL),
}


def _escape_label(value: str) -> str:
    """A label value as the text exposition format wants it between double quotes."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class _Exposition:
    """Text exposition format 0.0.4: one family at a time, HELP and TYPE first."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str) -> None:
        help_text = FLEET_METRICS[name][0].replace("\\", "\\\\").replace("\n", "\\n")
        self.lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]

    def sample(self, name: str, labels: dict[str, str], value: float) -> None:
        assert tuple(labels) == FLEET_METRICS[name][1], (name, labels)
        pairs = ",".join(f'{key}="{_escape_label(val)}"' for key, val in labels.items())
        number = str(value) if isinstance(value, int) else repr(float(value))
        self.lines.append(f"{name}{{{pairs}}} {number}" if pairs else f"{name} {number}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _heartbeat_timestamp(report: HealthReport, host: HostHealth) -> float:
    # The age was read on the worker's own clock; the run's time is ours: `time() - x`
    # at the run is the very age health judged, whatever the worker's clock says.
    return 0 if host.heartbeat_age is None else round(report.time - host.heartbeat_age, 3)


def _job_threads(host: HostHealth) -> dict[str, int]:
    """Every job state, 0 included; "Empty" counts the threads without a task too."""
    counts = dict.fromkeys(api.STATE_NAMES, 0)
    for state, count in sorted(host.job_states.items()):
        counts[state] = counts.get(state, 0) + count
    if host.up:
        counts["Empty"] = counts.get("Empty", 0) + host.threads - sum(host.job_states.values())
    return counts


def _finding_counts(host: HostHealth) -> dict[tuple[str, str], int]:
    counts = {
        (kind, status.name): 0 for kind, statuses in FINDING_STATUSES.items() for status in statuses
    }
    for finding in host.findings:
        key = (finding.kind, finding.severity.name)
        counts[key] = counts.get(key, 0) + 1
    return counts


Rows = list[tuple[dict[str, str], float]]  # one family's samples: (labels, value)


def _host_rows(report: HealthReport, host: HostHealth) -> dict[str, Rows]:
    own = {"host": host.name}
    states = host.thread_states
    findings = _finding_counts(host).items()
    return {
        "venus_fleet_host_up": [(own, int(host.up))],
        "venus_fleet_last_heartbeat_timestamp_seconds": [(own, _heartbeat_timestamp(report, host))],
        "venus_fleet_threads": [({**own, "state": s}, states.get(s, 0)) for s in THREAD_STATES],
        "venus_fleet_job_threads": [
            ({**own, "job_state": state}, count) for state, count in _job_threads(host).items()
        ],
        "venus_fleet_threads_paused": [(own, states.get(ThreadState.Paused.value, 0))],
        "venus_fleet_threads_errors": [(own, host.errors)],
        "venus_fleet_threads_empty": [(own, host.empty)],
        "venus_fleet_health_findings": [
            ({**own, "kind": kind, "status": status}, count) for (kind, status), count in findings
        ],
        "venus_fleet_health_finding": [(labels, 1) for labels in _finding_labels(host)],
    }


def _finding_labels(host: HostHealth) -> list[dict[str, str]]:
    """One label set per finding, each once: a series twice would void the whole file."""
    unique = {
        (
            "" if finding.index is None else str(finding.index),
            finding.kind,
            finding.severity.name,
        ): None
        for finding in host.findings
    }
    return [
        {"host": host.name, "index": index, "kind": kind, "status": status}
        for index, kind, status in unique
    ]


def prometheus_text(report: HealthReport) -> str:
    """The report as node_exporter's textfile: the families of FLEET_METRICS, in order."""
    fleet: dict[str, Rows] = {
        "venus_fleet_health_status": [
            ({"status": status.name}, int(status == report.status)) for status in Severity
        ],
        "venus_fleet_health_last_run_timestamp_seconds": [({}, round(report.time, 3))],
    }
    hosts = [_host_rows(report, host) for host in report.hosts]
    out = _Exposition()
    for name in FLEET_METRICS:
        out.family(name)
        for labels, value in fleet.get(name) or [row for rows in hosts for row in rows[name]]:
            out.sample(name, labels, value)
    return out.text()


# =============================================================================
# Fleet threads: selectors, bulk plans
# =============================================================================


@dataclass(frozen=True)
class Selector:
    """Which sealing threads a fleet-wide command is about: every given criterion holds.

    A pure predicate over WorkerInfo values (docs/protocol.md), so what
    `threads` shows is exactly what `pause`/`resume`/`drain` act on.
    """

    states: tuple[str, ...] = ()
    stage: str | None = None
    plan: str | None = None
    paused: bool = False
    errors: bool = False
    error_match: re.Pattern[str] | None = None
    idle: bool = False

    @property
    def given(self) -> bool:
        """True when at least one criterion narrows the selection."""
        return bool(
            self.states
            or self.stage
            or self.plan
            or self.paused
            or self.errors
            or self.error_match
            or self.idle
        )

    def matches(self, thread: WorkerInfo) -> bool:
        thread_state = thread.thread_state.state
        error = thread.last_error or ""
        return all(
            (
                not self.states or thread.job_state in self.states,
                self.stage is None or thread.job_stage == self.stage,
                self.plan is None or thread.plan == self.plan,
                not self.paused or thread_state is ThreadState.Paused,
                not self.idle or thread_state is ThreadState.Idle,
                not self.errors or bool(error),
                self.error_match is None or bool(error and self.error_match.search(error)),
            )
        )


@dataclass(frozen=True)
class FleetThread:
    """One sealing thread of one host, as WorkerList reported it."""

    host: Host
    info: WorkerInfo

    @property
    def index(self) -> int:
        return self.info.index

    @property
    def key(self) -> tuple[str, int]:
        return (self.host.name, self.index)

    @property
    def label(self) -> str:
        return f"{self.host.name} #{self.index}"


def natural_key(name: str) -> list[str | int]:
    """Sort key that puts worker-2 before worker-10 (digit runs compare as numbers)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def select_threads(
    hosts: Sequence[Host], outcomes: dict[str, Any], selector: Selector
) -> tuple[list[FleetThread], list[dict[str, Any]]]:
    """The matching threads by host (natural order) and index, and who did not answer.

    A host whose daemon could not be asked (an exception, or a HostStatus
    without threads) is unreachable: its threads are unknown, never "none".
    """
    matched: list[FleetThread] = []
    unreachable: list[dict[str, Any]] = []
    for host in hosts:
        status = HostStatus.of(outcomes[host.name])
        if status.threads is None:
            unreachable.append(info_entry(host, status))
            continue
        matched += [FleetThread(host, info) for info in status.threads if selector.matches(info)]
    matched.sort(key=lambda thread: (natural_key(thread.host.name), thread.index))
    unreachable.sort(key=lambda entry: natural_key(entry["name"]))
    return matched, unreachable


def count_line(threads: Sequence[FleetThread]) -> str:
    """'5 threads on 3 hosts'."""
    hosts = len({thread.host.name for thread in threads})
    return f"{_plural(len(threads), 'thread')} on {_plural(hosts, 'host')}"


def _on_info(column: Column) -> Column:
    """An info column read from a FleetThread's WorkerInfo."""

    def of(function: Callable[[WorkerInfo], Any] | None) -> Callable[[FleetThread], Any] | None:
        return None if function is None else lambda thread: function(thread.info)

    return dataclasses.replace(
        column, cell=of(column.cell), sort=of(column.sort), style=of(column.style)
    )


THREADS_TABLE = TableSpec(
    "threads",
    (
        Column(
            "Host",
            lambda t: t.host.name,
            sort=lambda t: natural_key(t.host.name),
            aliases=("name",),
        ),
        *(_on_info(column) for column in INFO_COLUMNS),
    ),
)


def threads_table(threads: Sequence[FleetThread], wide: bool) -> tuple[list[str], list[list[str]]]:
    """`venusctl threads`: a Host column, then the `info` columns."""
    columns = THREADS_TABLE.chosen(threads, wide)
    return [column.header for column in columns], THREADS_TABLE.cells(threads, columns)


def fleet_thread_json(thread: FleetThread) -> dict[str, Any]:
    return {"host": thread.host.name, **thread.info.to_json()}


def unreachable_lines(unreachable: Sequence[dict[str, Any]]) -> list[str]:
    """After a fleet-wide table: one line per host that did not answer, with why."""
    if not unreachable:
        return []
    return [f"unreachable ({len(unreachable)}):"] + [
        f"  {info_failure_line(entry)}" for entry in unreachable
    ]


def no_match_text(unreachable: Sequence[dict[str, Any]]) -> str:
    """Says when the hosts that could not be asked may hold the threads meant."""
    unasked = f" ({_plural(len(unreachable), 'host')} did not answer)" if unreachable else ""
    return f"no thread matches the selection{unasked}"


@dataclass(frozen=True)
class Step:
    """One line of a bulk plan: a thread and what will be done to it (None: skipped)."""

    thread: FleetThread
    action: Action | None
    note: str


def plan_steps(kind: str, threads: Sequence[FleetThread], to_state: str | None) -> list[Step]:
    """What a bulk pause or resume does to each selected thread.

    Pause skips threads already paused or with a pause queued (pausing them
    changes nothing); resume skips threads that are not paused (the agent would
    refuse), but cancels a pause still queued (not with --to-state: a running
    task cannot be moved).
    """
    steps = []
    for thread in threads:
        paused, queued = thread.info.paused, thread.info.pause_requested
        if kind == "pause" and paused:
            steps.append(Step(thread, None, "skip: already paused"))
        elif kind == "pause" and queued:
            steps.append(Step(thread, None, "skip: pause already queued"))
        elif kind == "pause":
            note = "pause after the stage in flight" if thread.info.busy else "pause"
            steps.append(Step(thread, Action("pause", thread.index), note))
        elif queued and not to_state:
            # our agent's resume takes a queued pause back (WorkerCancelPause)
            steps.append(Step(thread, Action("resume", thread.index), "cancel the queued pause"))
        elif queued:
            steps.append(Step(thread, None, "skip: not paused yet (a pause is queued)"))
        elif not paused:
            steps.append(Step(thread, None, "skip: not paused"))
        else:
            note = f"resume in {to_state}" if to_state else "resume"
            effect = to_state and move_effect(thread.info, to_state)
            note = f"{note}: {effect}" if effect else note
            steps.append(Step(thread, Action("resume", thread.index, to_state), note))
    return steps


# The resume states that end a sector's task for good: `--force` besides `--yes`.
FINAL_STATES = ("Finished", "Aborted")


def move_effect(thread: WorkerInfo, state: str) -> str | None:
    """What resuming `thread` into `state` does to its sector, when it ends the task:
    'finalises s-t01000-12 without a proof', 'drops s-t01000-12 and its data'; else None.

    Finished runs the end of a sector (the worker reports it finalised and
    clears the location's data) whatever was done before; Aborted drops it
    (reference: damocles.md, "resume --state"). Neither can be undone.
    """
    sector = thread.job_id or "its task (no sector yet)"
    if state == "Finished":
        return f"finalises {sector} without a proof"
    if state == "Aborted":
        return f"drops {sector} and its data"
    return None


@dataclass(frozen=True)
class Move:
    """The threads of a bulk resume that go from one task state to another."""

    before: str  # job_state now ("" without a task)
    after: str
    sectors: tuple[str, ...]  # their sector ids (threads without one are not counted)
    threads: int

    @property
    def effect(self) -> str | None:
        if self.after == "Finished":
            return "finalised without a proof"
        if self.after == "Aborted":
            return "dropped with their data"
        return None

    def line(self) -> str:
        """'C1Done -> Finished: 3 sectors (finalised without a proof)'."""
        count = _plural(len(self.sectors), "sector")
        threads = "" if self.threads == len(self.sectors) else f" ({self.threads} threads)"
        effect = f", {self.effect}" if self.effect else ""
        return f"{self.before or 'no task'} -> {self.after}: {count}{threads}{effect}"

    def to_json(self) -> dict[str, Any]:
        return {
            "from": self.before,
            "to": self.after,
            "sectors": len(self.sectors),
            "job_ids": list(self.sectors),
            "threads": self.threads,
            "effect": self.effect,
        }


def plan_moves(steps: Sequence[Step]) -> list[Move]:
    """How many sectors each state move of a bulk resume touches, by (from, to) state."""
    groups: dict[tuple[str, str], list[WorkerInfo]] = {}
    for step in steps:
        action = step.action
        if action is None or action.state is None:
            continue
        groups.setdefault((step.thread.info.job_state, action.state), []).append(step.thread.info)
    return [
        Move(before, after, tuple(t.job_id for t in infos if t.job_id), len(infos))
        for (before, after), infos in groups.items()
    ]


def final_moves_text(steps: Sequence[Step]) -> str | None:
    """'finalises 3 sectors without a proof' for the steps that end a task, else None."""
    final = [s for s in steps if s.action is not None and s.action.state in FINAL_STATES]
    if not final:
        return None
    finishing = [s for s in final if s.action.state == "Finished"]
    dropping = [s for s in final if s.action.state == "Aborted"]
    parts = []
    if finishing:
        parts.append(f"finalises {_plural(len(finishing), 'sector')} without a proof")
    if dropping:
        parts.append(f"drops {_plural(len(dropping), 'sector')} and their data")
    return " and ".join(parts)


def invalid_resume_state(
    steps: Sequence[Step],
    state: str,
    states_of: Callable[[WorkerInfo], tuple[str, Sequence[str]]] = resume_states,
) -> str | None:
    """Why `resume --to-state STATE` cannot go to some selected thread, or None.

    states_of(thread) gives (plan, its valid states) as `resume_states`
    does, or raises ValueError for a plan venusctl does not know (then the
    thread's own resume refuses it). Checked before anything is sent.
    """
    for step in steps:
        if step.action is None:
            continue
        try:
            plan, valid = states_of(step.thread.info)
        except ValueError:
            continue
        if state not in valid:
            return (
                f"state {state!r} is not valid for plan {plan} ({step.thread.label}); "
                f"valid states: {', '.join(valid)} (narrow the selection with --plan)"
            )
    return None


PLAN_HEADERS = ["Host", "Index", "SectorID", "State", "ThreadState", "LastErr", "Action"]


def plan_table(steps: Sequence[Step]) -> tuple[list[str], list[list[str]]]:
    rows = []
    for step in steps:
        info = step.thread.info
        rows.append(
            [
                step.thread.host.name,
                str(info.index),
                _cell(info.job_id),
                _cell(info.job_state),
                thread_state_text(info),
                _cell(info.last_error),
                step.note,
            ]
        )
    return PLAN_HEADERS, rows


def plan_summary(kind: str, steps: Sequence[Step]) -> str:
    """'plan: pause 4 threads on 2 hosts; 1 skipped', or 'plan: nothing to pause; 2 skipped';
    then, for a resume into another state, one line per state move with its sector count."""
    acting = [step.thread for step in steps if step.action]
    skipped = len(steps) - len(acting)
    what = f"{kind} {count_line(acting)}" if acting else f"nothing to {kind}"
    lines = [f"plan: {what}" + (f"; {skipped} skipped" if skipped else "")]
    lines += [f"  moves {move.line()}" for move in plan_moves(steps)]
    return "\n".join(lines)


def step_json(step: Step) -> dict[str, Any]:
    info = step.thread.info
    return {
        "host": step.thread.host.name,
        "index": step.thread.index,
        "job_id": info.job_id,
        "job_state": info.job_state,
        "thread_state": _state_value(info.thread_state.state),
        "last_error": info.last_error,
        "action": step.action.kind if step.action else None,
        "state": step.action.state if step.action else None,
        "note": step.note,
    }


def results_summary(kind: str, outcomes: Sequence[tuple[Step, ActionOutcome]]) -> str:
    """'resumed 3 of 4 threads on 2 hosts, 1 failed'."""
    done = [step.thread for step, outcome in outcomes if outcome.error is None]
    failed = len(outcomes) - len(done)
    verb = "paused" if kind == "pause" else "resumed"
    hosts = len({step.thread.host.name for step, _ in outcomes})
    text = f"{verb} {len(done)} of {_plural(len(outcomes), 'thread')} on {_plural(hosts, 'host')}"
    return text + (f", {failed} failed" if failed else "")


# =============================================================================
# Drain's view of a thread
# =============================================================================


def thread_progress(thread: WorkerInfo) -> tuple[ThreadState | None, str]:
    """What drain compares between polls: the thread state and the task state."""
    return thread.thread_state.state, thread.job_state


def describe_thread(thread: WorkerInfo) -> str:
    """'Running(3s) mock at PC1 (TicketAssigned)' for drain's progress lines."""
    text = thread_state_text(thread)
    if thread.job_stage and thread.busy:
        text += f" at {thread.job_stage}"
    return escape_text(text + (f" ({thread.job_state})" if thread.job_state else ""))


def _state_json(info: WorkerInfo) -> dict[str, Any]:
    return {
        "job_state": info.job_state,
        "job_stage": info.job_stage,
        "thread_state": _state_value(info.thread_state.state),
    }


DRAIN_HEADERS = ["Host", "Index", "SectorID", "Before", "After", "ThreadState"]


def drain_table(
    targets: Sequence[FleetThread],
    latest: dict[tuple[str, int], WorkerInfo],
    failed: dict[tuple[str, int], BaseException],
) -> tuple[list[str], list[list[str]]]:
    """drain's last word: each thread's task state before and now, and its thread state."""
    headers = DRAIN_HEADERS + (["Error"] if failed else [])
    rows = []
    for thread in targets:
        now = latest[thread.key]
        row = [
            thread.host.name,
            str(thread.index),
            _cell(now.job_id),
            _cell(thread.info.job_state),
            _cell(now.job_state),
            thread_state_text(now),
        ]
        if failed:
            error = failed.get(thread.key)
            row.append(
                action_error(thread.host, Action("pause", thread.index), error) if error else ""
            )
        rows.append(row)
    return headers, rows


# =============================================================================
# Deadlines: one bound for a whole exchange, never a fresh timeout per read
# =============================================================================


# The deadline of the host job running in this thread (fan_out sets it): every
# wait below it (connect, host key, ssh-agent, channel, request, reply) gets
# what is left of it, whatever its own limit.
_JOB = threading.local()


@dataclass(frozen=True)
class Deadline:
    """A point in time (time.monotonic) by which something must be done.

    `left()` is what every wait gets: the seconds remaining, or HostTimeout
    once none are. Made with `after`, a deadline is never later than the
    deadline of the host job it runs in.
    """

    end: float
    seconds: float  # the budget it was made with, for the message
    what: str  # what had that budget: "connect", "command", ...

    @classmethod
    def after(cls, seconds: float, what: str) -> Deadline:
        own = cls(time.monotonic() + seconds, seconds, what)
        job = getattr(_JOB, "deadline", None)
        return job if job is not None and job.end < own.end else own

    def sooner(self, seconds: float, what: str) -> Deadline:
        """This deadline, or Deadline.after(seconds, what) if that one ends first."""
        other = Deadline.after(seconds, what)
        return other if other.end < self.end else self

    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def left(self, step: str | None = None) -> float:
        remaining = self.end - time.monotonic()
        if remaining <= 0:
            raise self.timeout(step)
        return remaining

    def timeout(self, step: str | None = None) -> HostTimeout:
        what = self.what if step is None or step == self.what else f"{self.what}: {step}"
        return HostTimeout(f"timeout after {self.seconds:g}s ({what})")

    def reply_timeout(self, step: str | None = None) -> ReplyTimeout:
        """The timeout once the request is out: the agent may still act on it."""
        return ReplyTimeout(str(self.timeout(step)), self.seconds)


@contextlib.contextmanager
def job_deadline(deadline: Deadline | None) -> Any:
    """Run the block (one host's job) under `deadline`, in this thread."""
    previous = getattr(_JOB, "deadline", None)
    _JOB.deadline = deadline
    try:
        yield deadline
    finally:
        _JOB.deadline = previous


# =============================================================================
# JSON-RPC and the agents: our agent's socket and CLI, a damocles-worker's port
# =============================================================================


MAX_REPLY_BYTES = 16 * 1024 * 1024


# What a server's HTTP refusal means (jsonrpc-http-server 18 and our agent's server
# send these; venusctl's own requests never should: a proxy or another server may).
HTTP_REFUSALS = {
    400: "bad request",
    405: "method not allowed (POST required)",
    411: "Content-Length required",
    413: "request body too large",
    415: "content type not allowed (Content-Type: application/json required)",
}


# The actor of the request a keeper's job thread works for (set per job from the run's
# request): the keeper's own environment is that of whichever run started it.
_REQUEST_ACTOR = threading.local()


def control_actor() -> str:
    """Who runs venusctl, as the agent's history records it: user@control-host (the sudo
    user's name under sudo); in a keeper, the one the run that asked sent. Sent with every
    request (the Venus-Actor header, or the CLI's VENUS_WORKER_ACTOR); printable ASCII
    only, so it is one header line."""
    asked = getattr(_REQUEST_ACTOR, "name", None)
    return clean_actor(asked) if asked else _this_runs_actor()


@functools.cache
def _this_runs_actor() -> str:
    user = os.environ.get("SUDO_USER") or getpass.getuser()
    return clean_actor(f"{user}@{socket.gethostname()}")


def clean_actor(text: str) -> str:
    return re.sub(r"[^\x21-\x7e]", "?", text)[:100]


@dataclass(frozen=True)
class _Ahead:
    """A batch sent ahead of its read (JsonRpcClient.send_ahead)."""

    calls: list[tuple[str, list[Any]]]
    requests: list[dict[str, Any]]
    deadline: Deadline  # of the exchange, from when it was sent


class JsonRpcClient:
    """JSON-RPC 2.0 over HTTP/1.1 on one connected byte stream, kept alive.

    The stream is anything with sendall/recv/settimeout/close: a Unix socket
    (transport local) or a paramiko channel (stream, direct-tcpip). One
    `batch` is one HTTP request: one round trip. `reusable` turns False once
    the server said it closes the connection (`connection: close`).
    """

    METHOD = "POST"
    CONTENT_TYPE = "application/json"

    def __init__(self, stream: Any, timeout: float) -> None:
        self.stream = stream
        self.timeout = timeout
        self.reusable = True
        self._buffer = b""
        self._next_id = 0
        self._ahead: _Ahead | None = None  # a batch sent by send_ahead, its reply unread
        stream.settimeout(timeout)

    def close(self) -> None:
        self.stream.close()

    def call(self, method: str, params: list[Any]) -> Any:
        """One request, one reply; a JSON-RPC error is raised as AgentRefused."""
        request = self._request(method, params)
        reply = self._post(request)
        if not isinstance(reply, dict) or reply.get("id") != request["id"]:
            raise UnreadableReply(f"unreadable reply: {reply!r:.80}")
        result = self._result(reply)
        if isinstance(result, AgentRefused):
            raise result
        return result

    def batch(self, calls: Sequence[tuple[str, list[Any]]]) -> list[Any]:
        """Results in call order; a JSON-RPC error comes back as an AgentRefused value.
        The same calls sent ahead (send_ahead) are not sent again: their reply is read."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead.calls == list(calls):
            requests = ahead.requests
            replies = self._receive(ahead.deadline.sooner(self.timeout, "waiting for the agent"))
        else:
            self._ahead = ahead
            requests = [self._request(method, params) for method, params in calls]
            replies = self._post(requests)
        if not isinstance(replies, list):
            raise UnreadableReply(f"unreadable reply: expected a batch reply, got {replies!r:.80}")
        by_id = {reply.get("id"): reply for reply in replies if isinstance(reply, dict)}
        return [self._result(by_id.get(request["id"])) for request in requests]

    def _request(self, method: str, params: list[Any]) -> dict[str, Any]:
        self._next_id += 1
        return {"jsonrpc": "2.0", "id": self._next_id, "method": method, "params": params}

    @staticmethod
    def _result(reply: dict[str, Any] | None) -> Any:
        if reply is None:
            raise UnreadableReply("unreadable reply: a reply is missing from the batch")
        error = reply.get("error")
        if isinstance(error, dict):
            return AgentRefused(error.get("code", 0), str(error.get("message", error)))
        if "result" not in reply:
            raise UnreadableReply(f"unreadable reply: {reply!r:.80}")
        return reply["result"]

    def send_ahead(self, calls: Sequence[tuple[str, list[Any]]]) -> bool:
        """Send the batch `calls` now without waiting for its reply: the next `batch` of the
        same calls reads it. A pool sends every kept host's status this way before its
        fan-out, so that the round trips overlap instead of each waiting for a fan-out
        thread to get to its host. True when it went out whole at once; False when it
        could not go at once (nothing sent), or the stream is lost (reusable False)."""
        if self._ahead is not None or self._buffer or not self.reusable:
            return False
        requests = [self._request(method, params) for method, params in calls]
        data = self._http_request(json.dumps(requests).encode())
        try:
            self.stream.settimeout(0.0)  # never wait here: a full window is a normal call later
            sent = self.stream.send(data)
        except (BlockingIOError, TimeoutError):
            return False
        except OSError:
            self.reusable = False
            return False
        if sent < len(data):
            self.reusable = False  # half a request is out: this stream can carry no other
            return False
        deadline = Deadline.after(self.timeout, "waiting for the agent")
        self._ahead = _Ahead(list(calls), requests, deadline)
        return True

    def _post(self, payload: Any) -> Any:
        return self._exchange(json.dumps(payload).encode())

    def _http_request(self, body: bytes) -> bytes:
        """The POST of `body`: the header and the body in one piece, sent at once."""
        head = (
            f"{self.METHOD} / HTTP/1.1\r\nHost: localhost\r\nContent-Type: {self.CONTENT_TYPE}\r\n"
            f"{api.ACTOR_HEADER}: {control_actor()}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        return head + body

    def _exchange(self, body: bytes) -> Any:
        """POST `body`; the reply's JSON. One header write and the body: one send."""
        self._skip_ahead()
        # One deadline for the request and its whole reply: an agent sending a
        # byte every second never gets a fresh timeout per read.
        deadline = Deadline.after(self.timeout, "waiting for the agent")
        try:
            self.stream.settimeout(deadline.left())
            self.stream.sendall(self._http_request(body))
        except TimeoutError as error:
            raise deadline.timeout("sending to the agent") from error
        except OSError as error:
            raise HostError(f"connection to the agent lost: {error}", "connection-lost") from error
        return self._receive(deadline)

    def _skip_ahead(self) -> None:
        """Read (and drop) the reply of a batch sent ahead that another call came before:
        replies come in request order on one connection."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            self._read_reply(ahead.deadline.sooner(self.timeout, "waiting for the agent"))

    def _receive(self, deadline: Deadline) -> Any:
        """The reply to the request last sent, read within `deadline`: its JSON."""
        status, reply = self._read_reply(deadline)
        if status != 200:
            raise self._refusal(status, reply)
        try:
            return json.loads(reply)
        except ValueError as error:
            raise UnreadableReply(f"unreadable reply: {reply[:80]!r}") from error

    def _read_reply(self, deadline: Deadline) -> tuple[int, bytes]:
        """(HTTP status, body) of the next reply on the stream, read within `deadline`."""
        try:
            status, headers = self._read_head(deadline)
            reply = self._read_exactly(self._content_length(headers), deadline)
        except TimeoutError as error:
            # Sent: the agent may act on it although its reply never came.
            raise deadline.reply_timeout() from error
        except OSError as error:
            raise HostError(f"connection to the agent lost: {error}", "connection-lost") from error
        if headers.get("connection", "").lower() == "close":
            self.reusable = False
        return status, reply

    @staticmethod
    def _refusal(status: int, body: bytes) -> HttpRefused:
        """An HTTP error answer, with what it means and the first line of its text."""
        meaning = HTTP_REFUSALS.get(status, "not a JSON-RPC reply")
        first = body.decode("utf-8", "replace").strip().split("\n", 1)[0][:120]
        said = f': "{escape_text(first)}"' if first else " (no text)"
        return HttpRefused(f"the server answered HTTP {status}, {meaning}{said}")

    def _read_head(self, deadline: Deadline) -> tuple[int, dict[str, str]]:
        while b"\r\n\r\n" not in self._buffer:
            if len(self._buffer) > 65536:
                raise UnreadableReply("unreadable reply: HTTP header too long")
            self._fill(deadline)
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        match = re.match(r"HTTP/1\.[01] (\d{3})", status_line)
        if not match:
            raise UnreadableReply(f"unreadable reply: {status_line[:80]!r}")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(match.group(1)), headers

    @staticmethod
    def _content_length(headers: dict[str, str]) -> int:
        length = headers.get("content-length", "")
        if not length.isdigit() or int(length) > MAX_REPLY_BYTES:
            raise UnreadableReply(f"unreadable reply: bad Content-Length {length!r}")
        return int(length)

    def _read_exactly(self, count: int, deadline: Deadline) -> bytes:
        while len(self._buffer) < count:
            self._fill(deadline)
        data, self._buffer = self._buffer[:count], self._buffer[count:]
        return data

    def _fill(self, deadline: Deadline) -> None:
        self.stream.settimeout(deadline.left())
        chunk = self.stream.recv(65536)
        if not chunk:
            self.reusable = False
            raise NoReply("unreadable reply: the agent closed the connection")
        self._buffer += chunk


def parsed(kind: type, document: Any) -> Any:
    """`document` read as `kind` (an api type) at the edge; a broken contract is unreadable."""
    try:
        return kind.from_json(document)
    except api.WireError as error:
        raise UnreadableReply(f"unreadable reply: {error}") from None


def checked_threads(threads: Any) -> list[WorkerInfo]:
    """Our agent's WorkerList result, typed (api.WorkerInfo); anything else is unreadable."""
    if not isinstance(threads, list):
        raise UnreadableReply(f"unreadable reply: thread list {json.dumps(threads)[:80]}")
    return [parsed(WorkerInfo, thread) for thread in threads]


class RpcAgent:
    """The agent asked through its control API (socket, stream channel)."""

    def __init__(self, rpc: JsonRpcClient, via: str) -> None:
        self.rpc = rpc
        self.via = via

    def close(self) -> None:
        self.rpc.close()

    # One round trip: the live thread list and the heartbeat in one batch.
    STATUS_CALLS = ((api.Method.LIST.value, []), (api.Method.REPORT.value, []))

    def send_status_ahead(self) -> bool:
        return self.rpc.send_ahead(self.STATUS_CALLS)

    def status(self) -> HostStatus:
        threads, report = self.rpc.batch(self.STATUS_CALLS)
        if isinstance(threads, HostError):
            raise threads
        return HostStatus(
            # An error instead of the report: none written yet.
            report=None if isinstance(report, HostError) else parsed(api.Report, report),
            threads=checked_threads(threads),
            via=self.via,
        )

    def pause(self, index: int) -> str | None:
        """Pause, and say whether the thread stopped or its pause waits for its stage.

        The thread list comes in the same batch, answered after the pause (one round
        trip): None when the thread is Paused, else the queued-pause note.
        """
        done, threads = self.rpc.batch(
            [(api.Method.PAUSE.value, [index]), (api.Method.LIST.value, [])]
        )
        if isinstance(done, HostError):
            raise done
        if not isinstance(threads, HostError):
            for thread in checked_threads(threads):
                if thread.index == index and thread.paused:
                    return None
        return PAUSE_QUEUED

    def resume(self, index: int, state: str | None) -> str | None:
        return resume_cancelling_queued(self, index, state)

    def resume_paused(self, index: int, state: str | None) -> None:
        self.rpc.call(api.Method.RESUME.value, [index, state])

    def cancel_pause(self, index: int) -> bool:
        return checked_bool(self.rpc.call(api.Method.CANCEL_PAUSE.value, [index]))

    def stage_log(self, index: int, query: dict[str, Any]) -> api.StageLog:
        """What the thread's last stage runs printed (WorkerStageLog, docs/protocol.md)."""
        try:
            result = self.rpc.call(api.Method.STAGE_LOG.value, [index, query])
        except AgentRefused as refused:
            if refused.code == api.RpcCode.METHOD_NOT_FOUND:
                raise NoStageLogs() from None
            raise
        return parsed(api.StageLog, result)


class NoStageLogs(HostError):
    """An agent from before stage logs (no WorkerStageLog, no `worker logs`)."""

    kind = "no-stage-logs"

    def __init__(self) -> None:
        super().__init__("this agent keeps no stage logs (it is older than them: upgrade it)")


def checked_bool(answer: Any) -> bool:
    if not isinstance(answer, bool):
        raise UnreadableReply(f"unreadable reply: {json.dumps(answer)[:80]}")
    return answer


class DamoclesAgent:
    """The original damocles-worker, asked on its own JSON-RPC port, on any release line.

    It has no heartbeat report: `status` is the live WorkerList (each line's
    shape made ours by damocles_threads) and its version, asked together in
    one JSON-RPC batch (every release takes batches; WorkerVersion, missing
    before v0.7, is then only an error in the batch), with LastPing the age of
    this very answer (0). Its pause and resume answer `true`/`false` instead
    of errors; this class turns them into what our agent would have said, and
    reads the thread back to tell what really happened.

    One channel for the whole run: `rpc` is opened first (so an unreachable
    port shows at once) and kept; the worker's server keeps connections alive
    with no idle timeout, so each later request is one round trip on it
    (bench/damocles_bench.py, loopback: a host row 0.28-0.36 ms against
    0.97-1.60 ms with a channel per request; the ~44 ms "delayed ACK" once
    quoted here came from an old test stand-in writing headers and body in
    two sends). A read that finds the kept channel closed (the worker
    restarted) is sent once more on a fresh one from `reopen`; a pause or a
    resume is never sent twice.

    Threads are addressed as WorkerPause/WorkerResume address them, by their
    position in WorkerList: from v0.7.0 a duplicate location is skipped but
    keeps its number, so WorkerList's `index` has a gap and the thread listed
    as #N is not the Nth (reference §1.5).
    """

    # A resume is taken by the thread after the RPC answered: how long its read-back
    # waits for the thread to show it (polling every SETTLE_STEP seconds).
    SETTLE = 1.0
    SETTLE_STEP = 0.05

    def __init__(self, rpc: JsonRpcClient, via: str, reopen: Callable[[], JsonRpcClient]) -> None:
        self.rpc = rpc
        self.via = via
        self._reopen = reopen
        self._used = False
        self.line: DamoclesLine | None = None

    def close(self) -> None:
        self.rpc.close()

    # -- the wire ------------------------------------------------------------------------------

    def _send(self, calls: Sequence[tuple[api.Method, list[Any]]], *, read: bool) -> list[Any]:
        """One HTTP request on the kept channel: the results, errors as AgentRefused values."""
        if not self.rpc.reusable:
            self._fresh_channel()
        kept = self._used  # it carried a request before: the worker may have closed it since
        try:
            return self._exchange(calls)
        except HostError as error:
            lost = isinstance(error, NoReply) or error.kind == "connection-lost"
            if not (read and lost and kept):
                raise self._explained(error, calls) from None
        self._fresh_channel()  # the kept channel was closed under us: once more, fresh
        try:
            return self._exchange(calls)
        except HostError as error:
            raise self._explained(error, calls) from None

    def _exchange(self, calls: Sequence[tuple[api.Method, list[Any]]]) -> list[Any]:
        pairs = [(method.value, params) for method, params in calls]
        try:
            if len(pairs) == 1:
                try:
                    return [self.rpc.call(*pairs[0])]
                except AgentRefused as refused:
                    return [refused]
            return self.rpc.batch(pairs)
        finally:
            self._used = True

    def _fresh_channel(self) -> None:
        self.rpc.close()
        self.rpc = self._reopen()
        self._used = False

    @staticmethod
    def _explained(error: HostError, calls: Sequence[tuple[api.Method, list[Any]]]) -> HostError:
        names = " and ".join(method.value.rsplit(".", 1)[1] for method, _ in calls)
        if isinstance(error, NoReply):
            why = (
                " (it does so when a thread's location is not UTF-8)"
                if calls[0][0] is api.Method.LIST
                else ""
            )
            return NoReply(f"damocles-worker closed the connection without answering {names}{why}")
        if type(error) is UnreadableReply:  # not JSON-RPC as venusctl reads it
            detail = str(error).removeprefix("unreadable reply: ")
            return _unsupported(f"{detail} (to {names})")
        return error

    def _call(self, method: api.Method, params: list[Any], *, read: bool) -> Any:
        (result,) = self._send([(method, params)], read=read)
        if isinstance(result, AgentRefused):
            raise result
        return result

    def _listed(self, result: Any) -> list[WorkerInfo]:
        if isinstance(result, AgentRefused):
            raise result
        self.line, threads = damocles_threads(result)
        return threads

    # -- the agent's interface ------------------------------------------------------------------

    def threads(self) -> list[WorkerInfo]:
        return self._listed(self._call(api.Method.LIST, [], read=True))

    STATUS_CALLS = ((api.Method.LIST, []), (api.Method.VERSION, []))

    def send_status_ahead(self) -> bool:
        return self.rpc.send_ahead([(method.value, params) for method, params in self.STATUS_CALLS])

    def status(self) -> HostStatus:
        listed, version = self._send(self.STATUS_CALLS, read=True)
        threads = self._listed(listed)
        return HostStatus(
            report=None,
            threads=threads,
            via=self.via,
            # An error instead (-32601 before v0.7): the thread list matters, the version
            # is a bonus.
            worker_version=version if isinstance(version, str) else None,
            heartbeat=False,
            release_line=self.line.name if self.line is not None else None,
        )

    def pause(self, index: int) -> str:
        """Pause, without stacking a second pause on a paused thread.

        damocles queues a pause token even for a paused thread, and that stale
        token re-pauses it right after the next resume (reference §3): a
        paused thread is left alone. The note says when the pause is taken.
        """
        position, before = self._locate(index)
        if before.paused:
            return "already paused (nothing sent)"
        answer = self._act(api.Method.PAUSE, [position])
        if not answer:
            return (
                "pause already queued (damocles-worker answered false: a pause sent earlier"
                " is still to be taken; nothing changed)"
            )
        if before.busy:
            return damocles_pause_note(before, None, self.line)
        return damocles_pause_note(before, self._thread_now(index), self.line)

    def resume(self, index: int, state: str | None) -> str:
        """Resume, then read the thread back: what it does now, or why the resume did not hold."""
        position, before = self._locate(index)
        if state is not None:
            # damocles ignores a name it does not know (v0.8+), aborts the task on a
            # state of another plan: check it here first.
            check_resume_state(before, state, self.line)
            if before.paused and state == before.job_state:
                raise AgentRefused(
                    api.RpcCode.INVALID_PARAMS,
                    f"worker #{index} is already in {state}: damocles-worker would pause it"
                    " again at once (critical: state unchanged); resume without a state to"
                    f" run {state}'s stage again",
                )
        answer = self._act(api.Method.RESUME, [position, state])
        if answer is False:
            # Our agent's code for the same case, so scripts see one answer.
            raise AgentRefused(
                api.RpcCode.NOT_PAUSED, f"worker #{index} is not paused; {DAMOCLES_QUEUED}"
            )
        return damocles_resume_note(before, self._read_back(index, before, state), state)

    def cancel_pause(self, index: int) -> bool:
        raise AgentRefused(api.RpcCode.METHOD_NOT_FOUND, DAMOCLES_QUEUED)

    # -- helpers --------------------------------------------------------------------------------

    def _act(self, method: api.Method, params: list[Any]) -> bool:
        answer = self._call(method, params, read=False)
        if not isinstance(answer, bool):
            raise _unsupported(f"{method.value} answered {_excerpt(answer)}, not true or false")
        return answer

    def _locate(self, index: int) -> tuple[int, WorkerInfo]:
        """(the thread's position in WorkerList, the thread) of the thread listed as #index."""
        threads = self.threads()
        for position, thread in enumerate(threads):
            if thread.index == index:
                return position, thread
        listed = ", ".join(f"#{thread.index}" for thread in threads) or "none"
        if threads and index < max(thread.index for thread in threads):
            raise AgentRefused(
                api.RpcCode.INVALID_PARAMS,
                f"worker #{index} not found: this damocles-worker skipped #{index} of its"
                f" config (a duplicate location); its threads are {listed}",
            )
        raise AgentRefused(api.RpcCode.INVALID_PARAMS, f"worker #{index} not found")

    def _thread_now(self, index: int) -> WorkerInfo:
        for thread in self.threads():
            if thread.index == index:
                return thread
        raise _unsupported(f"thread #{index} is gone from WorkerList")

    def _read_back(self, index: int, before: WorkerInfo, state: str | None) -> WorkerInfo:
        """The thread once it shows the resume was taken, or as it is after SETTLE seconds."""
        deadline = time.monotonic() + self.SETTLE
        while True:
            after = self._thread_now(index)
            if resume_settled(before, after, state) or time.monotonic() >= deadline:
                return after
            time.sleep(self.SETTLE_STEP)


def resume_settled(before: WorkerInfo, after: WorkerInfo, state: str | None) -> bool:
    """Does `after` show that the thread took the resume (or was paused again since)?"""
    if not after.paused:
        moved = after.job_state != before.job_state or after.job_id != before.job_id
        return state is None or moved
    if after.last_error != before.last_error:
        return True  # the resume cleared the old error, or a new one paused it
    old, new = before.thread_state.elapsed, after.thread_state.elapsed
    return old is not None and new is not None and new < old  # paused anew since


def _now_doing(thread: WorkerInfo) -> str:
    """'in PC1Done, Running(0s) builtin PC2', 'without a task, Idle'."""
    where = f"in {thread.job_state}" if thread.job_id else "without a task"
    if thread.thread_state.state is not None:
        where += f", {format_thread_state(thread.thread_state)}"
    return where


def damocles_pause_note(
    before: WorkerInfo, after: WorkerInfo | None, line: DamoclesLine | None
) -> str:
    """What a pause damocles-worker queued (answered true) will do, as it is (reference §3).

    `after` is the thread read back at once (None for a thread known to run a
    stage: it cannot have taken the pause yet).
    """
    redo = "damocles-worker drops that stage's result and runs it again on resume"
    state = before.thread_state.state
    stage = f" {before.job_stage}" if before.job_stage else ""
    if state is ThreadState.Running:
        return f"pause queued: it stops after its running stage{stage}; {redo}"
    if state is ThreadState.Waiting:
        return f"pause queued: it waits for a slot, runs the stage{stage}, then stops; {redo}"
    if after is not None and after.paused:
        return "paused"
    if after is not None and not after.job_id:
        if line is not None and line.idle_pause_waits:
            sleep = "its recover_interval or seal_interval sleep ends (60s, 30s by default)"
        else:
            sleep = "its seal_interval sleep ends (30s by default)"
        return (
            f"pause queued: it has no task; it takes the pause when {sleep}, before asking for one"
        )
    if state is None:
        return (
            "pause queued: it stops at its next stage boundary (this release does not say"
            f" whether a stage runs; if one does, {redo})"
        )
    return "pause queued: it stops at its next stage boundary"


def damocles_resume_note(before: WorkerInfo, after: WorkerInfo, state: str | None) -> str:
    """The outcome of a resume damocles-worker took, from the thread read back after it.

    Raises ResumeDidNotHold when the thread paused again at once (a stale
    pause token, or an error) or kept its state although another was asked
    for (v0.8+ ignores a name it does not know).
    """
    if after.paused:
        if after.last_error:
            message = (
                f"the worker took it, but an error paused the thread again: {after.last_error}"
            )
        else:
            dropped = f" and dropped the requested state {state}" if state else ""
            message = (
                "the worker took it, but the thread paused again at once: a pause queued"
                f" earlier (a stale pause token) was taken{dropped}; still in"
                f" {after.job_state or 'no state'}: resume it again"
            )
        raise ResumeDidNotHold(message, "paused-again")
    if state is None:
        return f"resumed (now {_now_doing(after)})"
    if after.job_state == state:
        return f"resumed in state {state} (now {_now_doing(after)})"
    if after.job_id == before.job_id and after.job_state == before.job_state:
        raise ResumeDidNotHold(
            f"the worker took it, but ignored the requested state {state}: the thread goes on"
            f" in {before.job_state}",
            "state-ignored",
        )
    return f"resumed in state {state} (now {_now_doing(after)})"


@dataclass
class CommandResult:
    exit_status: int
    stdout: str
    stderr: str


COMMAND_NOT_FOUND = 127  # the shell's exit status for a command it cannot find
COMMAND_NOT_RUNNABLE = 126  # ... and for one it found but may not run


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def parse_cli_reply(result: CommandResult) -> Any:
    """The one JSON document the agent CLI prints, or the HostError its exit status means."""
    if result.exit_status == COMMAND_NOT_FOUND:
        shell_says = _last_line(result.stderr)
        raise AgentNotInstalled(
            "agent not installed, or not on the PATH sshd gives the SSH user"
            + (f" ({shell_says})" if shell_says else "")
        )
    if result.exit_status == COMMAND_NOT_RUNNABLE:
        shell_says = _last_line(result.stderr)
        raise HostError(
            "agent command not runnable by the SSH user"
            + (f" ({shell_says})" if shell_says else ""),
            "agent-not-runnable",
        )
    try:
        return json.loads(result.stdout)
    except ValueError:
        pass
    if result.exit_status == api.AgentExit.NOT_RUNNING:
        raise AgentNotRunning("agent not running")
    detail = _last_line(result.stderr) or repr(result.stdout[:80])
    raise UnreadableReply(f"unreadable reply (exit {result.exit_status}): {detail}")


def cli_error(error: Any) -> HostError:
    if not isinstance(error, dict):
        return UnreadableReply(f"unreadable reply: error {error!r:.80}")
    code, message = error.get("code"), str(error.get("message", ""))
    if code == api.RpcCode.AGENT_NOT_RUNNING:
        return AgentNotRunning("agent not running")
    if code == api.RpcCode.AGENT_UNREACHABLE:
        return AgentUnreachable(f"agent: {message}")
    if code == api.RpcCode.CONFIG_ERROR:
        return HostError(f"agent: {message}", "agent-config-error")
    return AgentRefused(code if isinstance(code, int) else 0, message)


def _agent_command(host: Host, *command: str) -> list[str]:
    return [*host.agent_argv, "worker", "-c", host.config, *command]


def _checked_index(index: int) -> int:
    # Second line of defence: the parser already validated it, but an argv
    # for a remote shell is only ever built from checked values.
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise ValueError(f"invalid thread index {index!r}")
    return index


def status_argv(host: Host) -> list[str]:
    return _agent_command(host, "status", "--json")


def _acting_command(host: Host, *command: str) -> list[str]:
    """A change's command, naming who asks for the agent's history (issue 15) through the
    environment: an agent that predates it ignores the variable (an option would fail)."""
    return ["env", f"VENUS_WORKER_ACTOR={control_actor()}", *_agent_command(host, *command)]


def pause_argv(host: Host, index: int) -> list[str]:
    return _acting_command(host, "pause", "--index", str(_checked_index(index)), "--json")


def cancel_pause_argv(host: Host, index: int) -> list[str]:
    return _acting_command(host, "cancel-pause", "--index", str(_checked_index(index)), "--json")


def stage_log_argv(host: Host, index: int, query: dict[str, Any]) -> list[str]:
    """`worker logs` for the exec transport, from validated values only."""
    argv = _agent_command(host, "logs", "--index", str(_checked_index(index)))
    if query.get("stage") is not None:
        argv += ["--stage", parse_stage(query["stage"])]
    lines = query.get("lines")
    argv += ["--lines", "all" if lines is None else str(_checked_index(lines))]
    runs = query.get("runs", 1)
    argv += ["--all"] if runs is None else ["--runs", str(_checked_index(runs))]
    after = query.get("after")
    if after is not None:
        argv += ["--after", f"{_checked_index(after['run'])}:{int(after['line'])}"]
    return [*argv, "--json"]


def resume_argv(host: Host, index: int, state: str | None) -> list[str]:
    argv = _acting_command(host, "resume", "--index", str(_checked_index(index)))
    if state is not None:
        argv += ["--state", parse_state(state)]
    return [*argv, "--json"]


class CliAgent:
    """The agent asked through its CLI, `<agent> worker -c CONFIG <cmd> --json`.

    `run` executes an argv (remotely over SSH, or locally) and returns a
    CommandResult. The CLI reads the heartbeat file itself, so `status`
    still has a report when the daemon is down.
    """

    def __init__(self, host: Host, run: Callable[[list[str]], CommandResult], via: str) -> None:
        self.host = host
        self.run = run
        self.via = via

    def close(self) -> None:
        """Nothing stays open: each call is its own command."""

    def status(self) -> HostStatus:
        result = self.run(status_argv(self.host))
        document = parse_cli_reply(result)
        if isinstance(document, dict) and "report" not in document and document.get("error"):
            raise cli_error(document["error"])
        if not isinstance(document, dict) or "report" not in document:
            raise UnreadableReply(f"unreadable reply: {result.stdout[:80]!r}")
        status = parsed(api.AgentStatus, document)
        return HostStatus(
            report=status.report,
            threads=status.threads,
            error=cli_error(document["error"]) if status.error else None,
            via=self.via,
        )

    def pause(self, index: int) -> str | None:
        self._act(pause_argv(self.host, index))
        return PAUSE_SENT  # the CLI does not say which: one more command to ask is not worth it

    def resume(self, index: int, state: str | None) -> str | None:
        return resume_cancelling_queued(self, index, state)

    def resume_paused(self, index: int, state: str | None) -> None:
        self._act(resume_argv(self.host, index, state))

    def cancel_pause(self, index: int) -> bool:
        return self._act(cancel_pause_argv(self.host, index), answers=(True, False))

    def stage_log(self, index: int, query: dict[str, Any]) -> api.StageLog:
        result = self.run(stage_log_argv(self.host, index, query))
        if result.exit_status == api.AgentExit.USAGE and "invalid choice: 'logs'" in result.stderr:
            raise NoStageLogs()  # its CLI has no `logs` yet
        document = parse_cli_reply(result)
        if isinstance(document, dict) and document.get("error"):
            raise cli_error(document["error"])
        return parsed(api.StageLog, document)

    def _act(self, argv: list[str], answers: tuple[bool, ...] = (True,)) -> bool:
        document = parse_cli_reply(self.run(argv))
        if isinstance(document, dict) and document.get("error"):
            raise cli_error(document["error"])
        if not isinstance(document, bool) or document not in answers:
            raise UnreadableReply(f"unreadable reply: {json.dumps(document)[:80]}")
        return document


# =============================================================================
# ssh_config, read as OpenSSH reads it (no paramiko)
# =============================================================================
#
# paramiko.SSHConfig is not used: it has no Include, it RUNS `Match exec`
# commands (through invoke), expands tokens by plain string replacement (so
# `%%h` becomes `%<host>` and a `~` anywhere in a value becomes the home
# directory), and knows no first-ProxyCommand-or-ProxyJump rule. This reader
# follows OpenSSH 9.2's readconf.c instead, and the tests compare it with
# `ssh -G` on the same files.


SSH_USER_CONFIG = "~/.ssh/config"
SSH_SYSTEM_CONFIG = "/etc/ssh/ssh_config"
SSH_INCLUDE_DEPTH = 16  # as OpenSSH's READCONF_MAX_DEPTH
# What OpenSSH tries when no IdentityFile is given (missing ones are skipped).
DEFAULT_IDENTITY_FILES = (
    "~/.ssh/id_rsa",
    "~/.ssh/id_ecdsa",
    "~/.ssh/id_ecdsa_sk",
    "~/.ssh/id_ed25519",
    "~/.ssh/id_ed25519_sk",
    "~/.ssh/id_xmss",
    "~/.ssh/id_dsa",
)
DEFAULT_USER_KNOWN_HOSTS = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")
DEFAULT_GLOBAL_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")

# Directives venusctl acts on. Everything that decides where, as whom or with
# which trust a connection is made is either here or in SSH_REFUSED.
SSH_HONOURED = {
    "hostname",
    "user",
    "port",
    "identityfile",
    "certificatefile",
    "identitiesonly",
    "identityagent",
    "connecttimeout",
    "serveraliveinterval",
    "hostkeyalias",
    "proxyjump",
    "proxycommand",
    "userknownhostsfile",
    "globalknownhostsfile",
    "stricthostkeychecking",
    "hashknownhosts",
    "addressfamily",
    "ignoreunknown",
}

# Directives that change where, as whom or with which trust OpenSSH would
# connect, which venusctl does not implement: each is an error on the row of
# a host it applies to, unless it has the value that changes nothing (given
# here; None: any value is refused).
SSH_REFUSED: dict[str, tuple[str, ...] | None] = {
    "canonicalizehostname": ("no",),
    "checkhostip": ("no",),
    "verifyhostkeydns": ("no",),
    "proxyusefdpass": ("no",),
    "pubkeyauthentication": ("yes", "unbound", "host-bound"),
    "knownhostscommand": ("none",),
    "revokedhostkeys": ("none",),
    "bindaddress": None,
    "bindinterface": None,
    "pkcs11provider": ("none",),
    "securitykeyprovider": ("internal",),
    "kexalgorithms": None,
    "ciphers": None,
    "macs": None,
    "hostkeyalgorithms": None,
    "pubkeyacceptedalgorithms": None,
    "pubkeyacceptedkeytypes": None,
    "casignaturealgorithms": None,
    "requiredrsasize": None,
    "tunnel": ("no",),
}

# Directives OpenSSH 9.2 knows that change nothing about where, as whom or
# with which trust venusctl connects (forwardings it never opens, terminal
# and logging settings, authentication methods other than public keys it
# never tries, connection sharing it does its own way): accepted, no effect.
SSH_WITHOUT_EFFECT = {
    "addkeystoagent",
    "batchmode",
    "canonicaldomains",
    "canonicalizefallbacklocal",
    "canonicalizemaxdots",
    "canonicalizepermittedcnames",
    "challengeresponseauthentication",
    "clearallforwardings",
    "compression",
    "connectionattempts",
    "controlmaster",
    "controlpath",
    "controlpersist",
    "dynamicforward",
    "enableescapecommandline",
    "enablesshkeysign",
    "escapechar",
    "exitonforwardfailure",
    "fingerprinthash",
    "forkafterauthentication",
    "forwardagent",
    "forwardx11",
    "forwardx11timeout",
    "forwardx11trusted",
    "gatewayports",
    "gssapiauthentication",
    "gssapiclientidentity",
    "gssapidelegatecredentials",
    "gssapikeyexchange",
    "gssapikexalgorithms",
    "gssapirenewalforcesrekey",
    "gssapiserveridentity",
    "gssapitrustdns",
    "hostbasedacceptedalgorithms",
    "hostbasedauthentication",
    "hostbasedkeytypes",
    "ipqos",
    "kbdinteractiveauthentication",
    "kbdinteractivedevices",
    "localcommand",
    "localforward",
    "loglevel",
    "logverbose",
    "nohostauthenticationforlocalhost",
    "numberofpasswordprompts",
    "passwordauthentication",
    "permitlocalcommand",
    "permitremoteopen",
    "preferredauthentications",
    "rekeylimit",
    "remotecommand",
    "remoteforward",
    "requesttty",
    "sendenv",
    "serveralivecountmax",
    "sessiontype",
    "setenv",
    "stdinnull",
    "streamlocalbindmask",
    "streamlocalbindunlink",
    "syslogfacility",
    "tcpkeepalive",
    "tunneldevice",
    "updatehostkeys",
    "visualhostkey",
    "xauthlocation",
    # deprecated or removed: OpenSSH itself only warns about these
    "protocol",
    "cipher",
    "useprivilegedport",
    "rhostsrsaauthentication",
    "rsaauthentication",
    "compressionlevel",
    "useroaming",
    "fallbacktorsh",
    "usersh",
    "dsaauthentication",
    "skeyauthentication",
    "tisauthentication",
    "kerberosauthentication",
    "kerberostgtpassing",
    "afstokenpassing",
    "usekeychain",
}

# Tokens each directive takes (ssh_config(5) TOKENS, OpenSSH 9.2).
_PATH_TOKENS = "%CdhikLlnpru"
SSH_TOKENS = {
    "hostname": "%h",
    "proxycommand": "%hnpr",
    "proxyjump": "%hnpr",
    "identityfile": _PATH_TOKENS,
    "certificatefile": _PATH_TOKENS,
    "identityagent": _PATH_TOKENS,
    "userknownhostsfile": _PATH_TOKENS,
}
# Directives whose values take ${VAR} and a leading ~ (paths).
SSH_PATH_DIRECTIVES = ("identityfile", "certificatefile", "identityagent", "userknownhostsfile")

SSH_MULTI_VALUE = ("identityfile", "certificatefile")  # every line adds one, in order
SSH_LIST_VALUE = ("userknownhostsfile", "globalknownhostsfile")  # one line, several values

_YES_NO = {"yes": "yes", "true": "yes", "no": "no", "false": "no"}
_STRICT = {
    "yes": "yes",
    "true": "yes",
    "ask": "ask",
    "accept-new": "accept-new",
    "no": "off",
    "false": "off",
    "off": "off",
}
_CHOICES: dict[str, dict[str, str]] = {
    "identitiesonly": _YES_NO,
    "hashknownhosts": _YES_NO,
    "checkhostip": _YES_NO,
    "proxyusefdpass": _YES_NO,
    "stricthostkeychecking": _STRICT,
    "addressfamily": {"any": "any", "inet": "inet", "inet6": "inet6"},
    "canonicalizehostname": {
        "no": "no",
        "yes": "yes",
        "always": "always",
        "false": "no",
        "true": "yes",
    },
    "verifyhostkeydns": {"no": "no", "yes": "yes", "ask": "ask", "false": "no", "true": "yes"},
}


class SshConfigError(HostError):
    """ssh_config says something venusctl cannot do, or cannot be read: that host's row."""

    kind = "ssh-config"


@dataclass(frozen=True)
class ConfigLine:
    """One directive of an ssh_config file, split as OpenSSH splits it."""

    path: str
    number: int
    keyword: str  # lowercase
    args: tuple[str, ...]
    rest: str  # the raw text after the keyword (ProxyCommand keeps it as written)

    @property
    def where(self) -> str:
        return f"{self.path}:{self.number}"


def split_config_words(text: str) -> list[str]:
    """OpenSSH's argv_split: words, quotes ' and " and \\-escapes; '#' starts a comment
    where a word would start. Unbalanced quotes raise ValueError."""
    words: list[str] = []
    position, length = 0, len(text)
    while position < length:
        if text[position] in " \t":
            position += 1
            continue
        if text[position] == "#":
            break
        word, quote = [], ""
        while position < length:
            char = text[position]
            following = text[position + 1] if position + 1 < length else ""
            if char == "\\" and (
                following in "'\"\\" and following or (not quote and following == " ")
            ):
                word.append(following)
                position += 2
                continue
            if not quote and char in " \t":
                break
            if not quote and char in "'\"":
                quote = char
            elif quote and char == quote:
                quote = ""
            else:
                word.append(char)
            position += 1
        if quote:
            raise ValueError("invalid quotes")
        words.append("".join(word))
    return words


def _config_keyword(line: str) -> tuple[str, str]:
    """(keyword, rest): the keyword ends at whitespace or one '=' (OpenSSH's strdelim)."""
    match = re.match(r"\s*([^\s=]+)\s*(?:=\s*)?", line)
    if not match:
        return "", ""
    return match.group(1), line[match.end() :]


def parse_ssh_config(text: str, path: str) -> list[ConfigLine]:
    """The directives of one file, in order; syntax errors raise SshConfigError(path:line)."""
    lines = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip(" \t\f\r\n")
        keyword, rest = _config_keyword(line)
        if not keyword or keyword.startswith("#"):
            continue
        where = f"{path}:{number}"
        if not rest:
            raise SshConfigError(f"{where}: no argument after keyword {keyword!r}")
        try:
            args = tuple(split_config_words(rest))
        except ValueError:
            raise SshConfigError(f"{where}: invalid quotes") from None
        lines.append(ConfigLine(path, number, keyword.lower(), args, rest))
    return lines


def ssh_pattern_matches(name: str, pattern: str) -> bool:
    """OpenSSH's match_pattern: '*' and '?' only ([ is a plain character)."""
    return _pattern_regex(pattern).fullmatch(name) is not None


@functools.lru_cache(maxsize=4096)
def _pattern_regex(pattern: str) -> re.Pattern[str]:
    # Cached: a fan-out matches every host against every known_hosts line.
    parts = (".*" if char == "*" else "." if char == "?" else re.escape(char) for char in pattern)
    return re.compile("".join(parts), re.DOTALL)


def ssh_pattern_list_matches(name: str, patterns: str, lower: bool) -> bool:
    """OpenSSH's match_pattern_list: comma-separated, a matching '!pattern' vetoes."""
    matched = False
    for pattern in patterns.split(","):
        negated = pattern.startswith("!")
        pattern = pattern[1:] if negated else pattern
        if ssh_pattern_matches(name, pattern.lower() if lower else pattern):
            if negated:
                return False
            matched = True
    return matched


@dataclass
class _Lookup:
    """The state of one ssh_config lookup: the values found so far (first one wins)."""

    original: str  # the name as given (%n, Host patterns)
    local_user: str
    values: dict[str, Any] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)  # keyword -> file:line
    final: bool = False  # the second pass `Match final` asks for
    wants_final: bool = False
    ignore_unknown: str = ""

    def hostname(self) -> str:
        """What `Match host` compares: HostName so far (%h expanded), else the name."""
        configured = self.values.get("hostname")
        if configured is None:
            return self.original
        if self.final:
            return configured
        return expand_tokens(configured, {"h": self.original.lower()}, "%h", "HostName")


class SshConfigFiles:
    """The ssh_config files of one run: each parsed once, looked up once per name.

    `sources` are read in order, each (path, kind): "user" (~/.ssh/config:
    may be missing, must not be writable by others, as OpenSSH checks it),
    "system" (/etc/ssh/ssh_config: may be missing) or "given" (the
    inventory's one file, as `ssh -F FILE`: must exist). Include paths are
    relative to ~/.ssh in a user or given file and /etc/ssh in the system one,
    globs sorted, included files checked like ~/.ssh/config, 16 deep at most.
    """

    def __init__(self, sources: Sequence[tuple[str, str]]) -> None:
        self.sources = list(sources)
        self._parsed: dict[str, list[ConfigLine] | SshConfigError] = {}
        self._lock = threading.Lock()

    def _file(self, path: str, kind: str) -> list[ConfigLine]:
        with self._lock:
            cached = self._parsed.get(path)
            if cached is None:
                cached = self._parsed[path] = self._read(path, kind)
        if isinstance(cached, SshConfigError):
            raise cached
        return cached

    @staticmethod
    def _read(path: str, kind: str) -> list[ConfigLine] | SshConfigError:
        try:
            with open(path, "rb") as handle:
                status = os.fstat(handle.fileno())
                data = handle.read()
        except FileNotFoundError:
            if kind in ("user", "system"):
                return []
            return SshConfigError(f"cannot read ssh_config {path}: no such file")
        except OSError as error:
            return SshConfigError(f"cannot read ssh_config {path}: {error.strerror}")
        if kind in ("user", "included") and (
            status.st_uid not in (0, os.getuid()) or status.st_mode & 0o022
        ):
            # OpenSSH refuses these too: anyone who can write it decides where ssh goes.
            return SshConfigError(f"bad owner or permissions on {path} (others can write it)")
        try:
            return parse_ssh_config(data.decode("utf-8"), path)
        except UnicodeDecodeError:
            return SshConfigError(f"cannot read ssh_config {path}: not UTF-8 text")
        except SshConfigError as error:
            return error

    def lookup(self, name: str) -> _Lookup:
        """Every directive that applies to `name`, first value winning, with its file:line."""
        found = _Lookup(original=name, local_user=local_user())
        for final in (False, True):
            found.final = final
            for path, kind in self.sources:
                lines = self._file(os.path.expanduser(path), kind)
                self._apply(lines, found, kind != "system", active=True, never=False, depth=0)
            if not found.wants_final:
                break
            if "hostname" in found.values:  # as ssh.c does before its final pass
                found.values["hostname"] = found.hostname()
        return found

    def _apply(
        self,
        lines: list[ConfigLine],
        found: _Lookup,
        user_file: bool,
        active: bool,
        never: bool,
        depth: int,
    ) -> None:
        for line in lines:
            if line.keyword == "host":
                active = not never and _host_line_matches(line, found.original)
            elif line.keyword == "match":
                active = _match_line(line, found, skip=never) and not never
            elif line.keyword == "include":
                self._include(line, found, user_file, active, never, depth)
            else:
                _check_directive(line, found)
                if active:
                    _assign(line, found)

    def _include(
        self,
        line: ConfigLine,
        found: _Lookup,
        user_file: bool,
        active: bool,
        never: bool,
        depth: int,
    ) -> None:
        if depth >= SSH_INCLUDE_DEPTH:
            raise SshConfigError(f"{line.where}: Include nested more than {SSH_INCLUDE_DEPTH} deep")
        base = os.path.expanduser("~/.ssh") if user_file else "/etc/ssh"
        for pattern in line.args:
            if pattern.startswith("~"):
                if not user_file:
                    raise SshConfigError(f"{line.where}: Include {pattern}: ~ in a system file")
                pattern = os.path.expanduser(pattern)
            elif not pattern.startswith("/"):
                pattern = os.path.join(base, pattern)
            for path in sorted(glob.glob(pattern)):
                included = self._file(path, "included")
                # each included file starts in the including block's state
                self._apply(included, found, user_file, active, never or not active, depth + 1)


def _host_line_matches(line: ConfigLine, name: str) -> bool:
    """`Host p1 p2 !p3`: some pattern matches the name as given, no negated one does."""
    matched = False
    for pattern in line.args:
        if not pattern:
            raise SshConfigError(f"{line.where}: Host: empty pattern")
        if pattern.startswith("!"):
            if ssh_pattern_matches(name, pattern[1:]):
                return False
        elif ssh_pattern_matches(name, pattern):
            matched = True
    return matched


def _match_line(line: ConfigLine, found: _Lookup, skip: bool) -> bool:
    """A `Match` line, criteria evaluated left to right as OpenSSH's match_cfg_line."""
    words = list(line.args)
    result, attributes = True, 0
    while words:
        word = words.pop(0)
        if word.startswith("#"):
            break
        negate = word.startswith("!")
        criterion = (word[1:] if negate else word).lower()
        if criterion == "all":
            if attributes or (words and not words[0].startswith("#")):
                raise SshConfigError(
                    f"{line.where}: Match: 'all' cannot be combined with other criteria"
                )
            return result and not negate
        attributes += 1
        if criterion == "final":
            found.wants_final = True
            if found.final == negate:
                result = False
            continue
        if criterion == "canonical":
            if not skip and result:
                raise SshConfigError(
                    f"{line.where}: Match canonical is not supported by venusctl"
                    " (it does not canonicalize host names)"
                )
            result = False
            continue
        if not words or words[0].startswith("#"):
            raise SshConfigError(f"{line.where}: Match: missing argument for {criterion!r}")
        argument = words.pop(0)
        if criterion == "host":
            matched = ssh_pattern_list_matches(found.hostname().lower(), argument, lower=True)
        elif criterion == "originalhost":
            matched = ssh_pattern_list_matches(found.original.lower(), argument, lower=True)
        elif criterion == "user":
            user = found.values.get("user") or found.local_user
            matched = ssh_pattern_list_matches(user, argument, lower=False)
        elif criterion == "localuser":
            matched = ssh_pattern_list_matches(found.local_user, argument, lower=False)
        elif criterion == "exec":
            if skip or not result:
                continue  # OpenSSH skips the command once an earlier criterion failed
            raise SshConfigError(
                f"{line.where}: Match exec is not supported: venusctl never runs commands"
                " from ssh_config to decide where to connect"
            )
        else:
            raise SshConfigError(f"{line.where}: Match: unsupported criterion {criterion!r}")
        if matched == negate:
            result = False
    if not attributes:
        raise SshConfigError(f"{line.where}: Match needs at least one criterion")
    return result


def _check_directive(line: ConfigLine, found: _Lookup) -> None:
    """Known directive with a valid value, wherever it is (OpenSSH checks inactive ones too)."""
    keyword = line.keyword
    if keyword == "ignoreunknown":
        return
    known = keyword in SSH_HONOURED or keyword in SSH_REFUSED or keyword in SSH_WITHOUT_EFFECT
    if not known:
        if found.ignore_unknown and ssh_pattern_list_matches(keyword, found.ignore_unknown, True):
            return
        raise SshConfigError(f"{line.where}: unknown ssh_config directive {line.keyword!r}")
    value = line.args[0] if line.args else ""
    if keyword == "port" and _config_port(value) is None:
        raise SshConfigError(f"{line.where}: bad port {value!r}")
    if keyword in ("connecttimeout", "serveraliveinterval") and _config_seconds(value) is None:
        raise SshConfigError(f"{line.where}: {keyword}: bad time value {value!r}")
    choices = _CHOICES.get(keyword)
    if choices is not None and value.lower() not in choices:
        raise SshConfigError(
            f"{line.where}: {keyword}: {value!r} is not one of {', '.join(dict.fromkeys(choices))}"
        )
    if keyword in SSH_LIST_VALUE and "none" in (arg.lower() for arg in line.args[1:]):
        raise SshConfigError(f"{line.where}: {keyword}: 'none' must appear alone")


def _assign(line: ConfigLine, found: _Lookup) -> None:
    keyword, values = line.keyword, found.values
    if keyword == "ignoreunknown":
        found.ignore_unknown = found.ignore_unknown or line.args[0]
        return
    if keyword in SSH_MULTI_VALUE:
        listed = values.setdefault(keyword, [])
        if line.args[0] not in listed:
            listed.append(line.args[0])
            found.origins.setdefault(keyword, line.where)
        return
    if keyword == "proxycommand" and values.get("proxyjump", "none").lower() != "none":
        return  # an earlier ProxyJump wins (a ProxyJump none does not block ProxyCommand)
    if keyword == "proxyjump" and "proxycommand" in values:
        return  # an earlier ProxyCommand (even `none`) wins
    if keyword in values:
        return
    if keyword == "proxycommand":
        value: Any = line.rest.lstrip(" \t=")
    elif keyword in SSH_LIST_VALUE:
        value = list(line.args)
    elif keyword in _CHOICES:
        value = _CHOICES[keyword][line.args[0].lower()]
    else:
        value = line.args[0]
    values[keyword] = value
    found.origins[keyword] = line.where


def _config_port(text: str) -> int | None:
    if re.fullmatch(r"[0-9]{1,5}", text):
        return int(text) if 1 <= int(text) <= 65535 else None
    try:
        return socket.getservbyname(text, "tcp")
    except OSError:
        return None


_TIME_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _config_seconds(text: str) -> float | None:
    """OpenSSH's convtime ("30", "1m30s"), or "none" (0: not set)."""
    if text.lower() == "none":
        return 0.0
    parts = re.findall(r"([0-9]+)([smhdwSMHDW]?)", text)
    if not parts or "".join(a + b for a, b in parts) != text:
        return None
    return float(sum(int(number) * _TIME_UNITS[unit.lower()] for number, unit in parts))


def expand_tokens(text: str, values: Mapping[str, str], allowed: str, directive: str) -> str:
    """OpenSSH's percent_expand: %X from `values` if X is in `allowed`, %% is %."""
    out, position = [], 0
    while True:
        found = text.find("%", position)
        if found < 0:
            out.append(text[position:])
            return "".join(out)
        out.append(text[position:found])
        token = text[found + 1 : found + 2]
        if token == "%":
            out.append("%")
        elif token and token in allowed and token in values:
            out.append(values[token])
        else:
            raise SshConfigError(f"{directive}: unknown token %{token} in {text!r}")
        position = found + 2


def expand_environment(text: str, directive: str) -> str:
    """${VAR} from the environment; an unset one is an error (as OpenSSH's dollar_expand)."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise SshConfigError(f"{directive}: environment variable ${{{name}}} is not set")
        return os.environ[name]

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", value, text)


# =============================================================================
# Reaching a host: the inventory over ssh_config, resolved once (SshTarget)
# =============================================================================


DEFAULT_CONNECT_TIMEOUT = 5.0
MAX_JUMP_HOPS = 8  # a longer chain is taken for a loop (Host * ProxyJump bastion, say)

# What may be put in a ProxyCommand through a token: a shell must read it as
# one plain word (OpenSSH 9.6 added the same rule for %h and %r).
_SAFE_TOKEN_VALUE = re.compile(r"^[A-Za-z0-9_.:%@+\[\]-]+$")


class JumpHostError(HostError):
    """The jump host (or ProxyCommand) a target is reached through failed: the target's row."""

    kind = "jump-host"


@dataclass(frozen=True)
class SshTarget:
    """Where, as whom and with which trust one SSH connection is made.

    The inventory's values over ssh_config's over OpenSSH's defaults, every
    token and path expanded, resolved once per run with no connection made.
    Frozen and hashable: two targets are equal exactly when one connection
    would do for both (the key of the shared jump connections here, and of a
    connection keeper). `via` is the jump host this one is reached through
    (itself a target, with its own `via` for a chain); `ssh_options` gives
    the same settings to OpenSSH.
    """

    name: str  # as given: the inventory's address, or a jump host's name (%n)
    hostname: str  # where the connection goes (HostName)
    port: int
    user: str
    identity_files: tuple[str, ...]
    identities_given: bool  # False: OpenSSH's default ~/.ssh/id_* list
    certificate_files: tuple[str, ...]
    identities_only: bool
    identity_agent: str | None  # the ssh-agent socket, None for no agent
    user_known_hosts: tuple[str, ...]
    global_known_hosts: tuple[str, ...]
    host_key_alias: str | None
    strict_host_key_checking: str  # "yes", "accept-new" or "off"
    hash_known_hosts: bool
    connect_timeout: float
    server_alive_interval: float
    address_family: str  # "any", "inet", "inet6"
    proxy_command: str | None = None  # tokens expanded
    via: SshTarget | None = None

    @property
    def dest(self) -> str:
        return format_dest(self.hostname, self.port)

    @property
    def label(self) -> str:
        """How a row names a jump host: its name, and where that went when it differs."""
        return self.name if self.name == self.dest else f"{self.name} ({self.dest})"

    @property
    def known_hosts_name(self) -> str:
        """The name known_hosts is searched for: HostKeyAlias, else host or [host]:port."""
        if self.host_key_alias:
            return self.host_key_alias
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"

    @property
    def jump_hops(self) -> tuple[SshTarget, ...]:
        """The jump hosts, first to last."""
        hops: list[SshTarget] = []
        hop = self.via
        while hop is not None:
            hops.insert(0, hop)
            hop = hop.via
        return tuple(hops)

    @property
    def route(self) -> str | None:
        """How the connection is carried, as `list --wide` shows it; None when direct."""
        if self.proxy_command is not None:
            return f"ProxyCommand {self.proxy_command}"
        if self.via is None:
            return None
        return ",".join(f"{hop.user}@{hop.dest}" for hop in self.jump_hops)

    def ssh_options(self) -> list[str]:
        """The same settings as OpenSSH `-o` options (with `-F none`, nothing else read)."""
        options = {
            "HostName": self.hostname,
            "Port": str(self.port),
            "User": self.user,
            "IdentitiesOnly": "yes" if self.identities_only else "no",
            "IdentityAgent": self.identity_agent or "none",
            "UserKnownHostsFile": " ".join(self.user_known_hosts) or "none",
            "GlobalKnownHostsFile": " ".join(self.global_known_hosts) or "none",
            "StrictHostKeyChecking": {"off": "no"}.get(
                self.strict_host_key_checking, self.strict_host_key_checking
            ),
            "HashKnownHosts": "yes" if self.hash_known_hosts else "no",
            "ConnectTimeout": str(math.ceil(self.connect_timeout)),
            "ServerAliveInterval": str(int(self.server_alive_interval)),
            "AddressFamily": self.address_family,
        }
        if self.host_key_alias:
            options["HostKeyAlias"] = self.host_key_alias
        if self.proxy_command is not None:
            options["ProxyCommand"] = self.proxy_command
        elif self.via is not None:
            options["ProxyJump"] = ",".join(
                f"{hop.user}@{format_dest(hop.hostname, hop.port)}" for hop in self.jump_hops
            )
        argv = [f"-o{key}={value}" for key, value in options.items()]
        argv += [f"-oIdentityFile={path}" for path in self.identity_files]
        argv += [f"-oCertificateFile={path}" for path in self.certificate_files]
        return argv


@functools.cache
def local_user() -> str:
    """This process's user name, as ssh's %u and its default User (once: it is asked for
    every host)."""
    return getpass.getuser()


class _Tokens(dict):
    """A host's %-tokens. %C, a SHA-1 over four of them, is worked out only when a path
    uses it: with keeper_code's hash, it made every run, a warm one too, import hashlib."""

    def __init__(self, values: dict[str, str], control: str) -> None:
        super().__init__(values)
        self._control = control

    def __contains__(self, key: object) -> bool:
        return key == "C" or super().__contains__(key)

    def __missing__(self, key: str) -> str:
        if key != "C":
            raise KeyError(key)
        import hashlib

        value = self["C"] = hashlib.sha1(self._control.encode()).hexdigest()
        return value


def _token_values(name: str, hostname: str, port: int, user: str, alias: str | None) -> dict:
    local = socket.gethostname()
    values = {
        "h": hostname,
        "n": name,
        "p": str(port),
        "r": user,
        "u": local_user(),
        "d": os.path.expanduser("~"),
        "i": str(os.getuid()),
        "k": alias or name,
        "L": local.split(".")[0],
        "l": local,
    }
    return _Tokens(values, f"{local}{hostname}{port}{user}")


def _expand_path(text: str, tokens: Mapping[str, str], directive: str) -> str:
    """${VAR}, then %-tokens, then a leading ~: OpenSSH's order for a path."""
    expanded = expand_tokens(
        expand_environment(text, directive), tokens, SSH_TOKENS[directive], directive
    )
    return os.path.expanduser(expanded)


def _identity_agent(
    value: str | None, tokens: Mapping[str, str], environ: Mapping[str, str]
) -> str | None:
    if value is None or value == "SSH_AUTH_SOCK":
        return environ.get("SSH_AUTH_SOCK") or None
    if value.lower() == "none":
        return None
    if value.startswith("$") and not value.startswith("${"):
        return environ.get(value[1:]) or None
    return _expand_path(value, tokens, "identityagent")


def _strict_policy(policy: str | None, found: _Lookup, allow_off: bool) -> str:
    """The inventory's host_key_policy, else ssh_config's StrictHostKeyChecking."""
    if policy is not None:
        return {"reject": "yes", "accept-new": "accept-new", "off": "off"}[policy]
    strict = found.values.get("stricthostkeychecking", "ask")
    if strict == "off" and not allow_off:
        raise SshConfigError(
            f"{found.origins['stricthostkeychecking']}: StrictHostKeyChecking no turns host key"
            " checking off; venusctl does that only where the inventory says"
            ' host_key_policy = "off"'
        )
    return "yes" if strict == "ask" else strict


def _check_refused(found: _Lookup) -> None:
    for keyword, neutral in SSH_REFUSED.items():
        value = found.values.get(keyword)
        if value is None or (neutral is not None and str(value).lower() in neutral):
            continue
        raise SshConfigError(
            f"{found.origins[keyword]}: {keyword} {value} is not supported by venusctl"
            " (it changes where or with which trust OpenSSH connects)"
        )


@dataclass(frozen=True)
class _Given:
    """What the inventory says about a host; None: let ssh_config (then OpenSSH) say it."""

    port: int | None = None
    user: str | None = None
    identity_file: str | None = None
    known_hosts: str | None = None
    host_key_policy: str | None = None
    connect_timeout: float | None = None
    jump: str | None = None


_UNSET: Any = object()


def resolve_ssh_target(host: Host, files: SshConfigFiles, environ: Mapping[str, str]) -> SshTarget:
    """The host's SshTarget: inventory values win, ssh_config fills the rest."""
    given = _Given(
        port=host.port,
        user=host.user,
        identity_file=host.identity_file,
        known_hosts=host.known_hosts,
        host_key_policy=host.host_key_policy,
        connect_timeout=host.connect_timeout,
        jump=host.jump,
    )
    name = host.address or "localhost"
    return _resolve(name, given, files, environ, host.host_key_policy == "off", seen=(name,))


def _resolve(
    name: str,
    given: _Given,
    files: SshConfigFiles,
    environ: Mapping[str, str],
    allow_off: bool,
    *,
    via: Any = _UNSET,
    seen: tuple[str, ...] = (),
    default_timeout: float = DEFAULT_CONNECT_TIMEOUT,
) -> SshTarget:
    found = files.lookup(name)
    _check_refused(found)
    values = found.values
    hostname = name
    if "hostname" in values:
        hostname = expand_tokens(values["hostname"], {"h": name.lower()}, "%h", "HostName")
    port = given.port or _config_port(values.get("port", "22")) or 22
    user = given.user or values.get("user") or local_user()
    alias = values.get("hostkeyalias")
    tokens = _token_values(name, hostname, port, user, alias)
    if given.identity_file is not None:
        identities, given_identities = (given.identity_file,), True
    elif values.get("identityfile"):
        identities = tuple(_expand_path(p, tokens, "identityfile") for p in values["identityfile"])
        given_identities = True
    else:
        identities = tuple(os.path.expanduser(path) for path in DEFAULT_IDENTITY_FILES)
        given_identities = False
    if given.known_hosts is not None:
        user_known: tuple[str, ...] = (given.known_hosts,)
    else:
        configured = values.get("userknownhostsfile", list(DEFAULT_USER_KNOWN_HOSTS))
        user_known = _known_hosts_paths(configured, tokens)
    global_known = values.get("globalknownhostsfile", list(DEFAULT_GLOBAL_KNOWN_HOSTS))
    configured_timeout = _config_seconds(values.get("connecttimeout", "none")) or None
    target = SshTarget(
        name=name,
        hostname=hostname,
        port=port,
        user=user,
        identity_files=identities,
        identities_given=given_identities,
        certificate_files=tuple(
            _expand_path(path, tokens, "certificatefile")
            for path in values.get("certificatefile", [])
        ),
        identities_only=values.get("identitiesonly") == "yes",
        identity_agent=_identity_agent(values.get("identityagent"), tokens, environ),
        user_known_hosts=user_known,
        global_known_hosts=tuple(p for p in global_known if p.lower() != "none"),
        host_key_alias=alias,
        strict_host_key_checking=_strict_policy(given.host_key_policy, found, allow_off),
        hash_known_hosts=values.get("hashknownhosts") == "yes",
        connect_timeout=given.connect_timeout or configured_timeout or default_timeout,
        server_alive_interval=_config_seconds(values.get("serveraliveinterval", "0")) or 0.0,
        address_family=values.get("addressfamily", "any"),
    )
    if via is not _UNSET:
        return dataclasses.replace(target, via=via)  # a later hop of a chain
    jump = given.jump if given.jump is not None else values.get("proxyjump")
    command = None if given.jump is not None else values.get("proxycommand")
    route_tokens = {"h": hostname, "n": name, "p": str(port), "r": user}
    if jump is not None and jump.lower() != "none":
        spec = expand_tokens(jump, route_tokens, SSH_TOKENS["proxyjump"], "ProxyJump")
        hop = _jump_chain(spec, files, environ, allow_off, seen, target.connect_timeout)
        return dataclasses.replace(target, via=hop)
    if command is not None and command.lower() != "none":
        for token in ("h", "n", "r"):
            if f"%{token}" in command and not _SAFE_TOKEN_VALUE.match(route_tokens[token]):
                raise SshConfigError(
                    f"{found.origins['proxycommand']}: ProxyCommand: %{token} would be"
                    f" {route_tokens[token]!r}, which a shell would not read as one plain word"
                )
        expanded = expand_tokens(command, route_tokens, SSH_TOKENS["proxycommand"], "ProxyCommand")
        return dataclasses.replace(target, proxy_command=expanded)
    return target


def _known_hosts_paths(paths: Sequence[str], tokens: Mapping[str, str]) -> tuple[str, ...]:
    if [p.lower() for p in paths] == ["none"]:
        return ()
    return tuple(_expand_path(path, tokens, "userknownhostsfile") for path in paths)


def _jump_chain(
    spec: str,
    files: SshConfigFiles,
    environ: Mapping[str, str],
    allow_off: bool,
    seen: tuple[str, ...],
    timeout: float,
) -> SshTarget:
    """The last hop of a ProxyJump chain. The first hop is reached its own way (its
    own ssh_config ProxyJump or ProxyCommand, as `ssh -J` does); each later hop
    through the one before it. `seen`: the names on the way here, to find loops."""
    try:
        hops = parse_jump_spec(spec)
    except ValueError as error:
        raise SshConfigError(f"ProxyJump: {error}") from None
    if len(seen) + len(hops) > MAX_JUMP_HOPS + 1:
        raise SshConfigError(f"ProxyJump: more than {MAX_JUMP_HOPS} jump hosts ({spec})")
    previous: Any = _UNSET
    chain = seen
    for user, host, port in hops:
        if host in chain:
            loop = " -> ".join((*chain, host))
            raise SshConfigError(f"ProxyJump loop: {loop} (add ProxyJump none for {host})")
        chain = (*chain, host)
        given = _Given(port=port, user=user)
        previous = _resolve(
            host,
            given,
            files,
            environ,
            allow_off,
            via=previous,
            seen=chain,
            default_timeout=timeout,
        )
    return previous


# =============================================================================
# known_hosts and host certificates, checked as OpenSSH checks them
# =============================================================================
#
# paramiko.HostKeys is not used: it stops at the first line it cannot read
# (one @cert-authority or @revoked line fails every host), matches neither
# wildcards nor negations, and knows no markers. paramiko does negotiate and
# parse `*-cert-v01@openssh.com` host keys, but checks nothing in the
# certificate: the CA signature, type, principals and validity are checked here.


class HostKeyRevoked(HostError):
    kind = "host-key-revoked"


class HostCertificateRejected(HostError):
    kind = "host-certificate"


class KnownHostsError(HostError):
    kind = "known-hosts"


KNOWN_HOSTS_MARKERS = ("cert-authority", "revoked")

# The host key algorithms paramiko offers (Transport._preferred_keys), plain then certs.
PLAIN_HOST_KEY_ALGORITHMS = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "rsa-sha2-512",
    "rsa-sha2-256",
)
CERT_HOST_KEY_ALGORITHMS = tuple(
    f"{name}-cert-v01@openssh.com" for name in PLAIN_HOST_KEY_ALGORITHMS
)

# A certificate's key type -> (its plain key type, how many key fields follow the nonce)
CERT_KEY_TYPES = {
    "ssh-ed25519-cert-v01@openssh.com": ("ssh-ed25519", 1),
    "ecdsa-sha2-nistp256-cert-v01@openssh.com": ("ecdsa-sha2-nistp256", 2),
    "ecdsa-sha2-nistp384-cert-v01@openssh.com": ("ecdsa-sha2-nistp384", 2),
    "ecdsa-sha2-nistp521-cert-v01@openssh.com": ("ecdsa-sha2-nistp521", 2),
    "ssh-rsa-cert-v01@openssh.com": ("ssh-rsa", 2),
}

CERT_TYPE_HOST = 2
CERT_FOREVER = 0xFFFFFFFFFFFFFFFF


class _WireReader:
    """The SSH wire encoding (RFC 4251): uint32, uint64, length-prefixed strings."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.position = 0

    def take(self, count: int) -> bytes:
        if self.position + count > len(self.data):
            raise ValueError("truncated")
        chunk = self.data[self.position : self.position + count]
        self.position += count
        return chunk

    def uint32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def uint64(self) -> int:
        return int.from_bytes(self.take(8), "big")

    def string(self) -> bytes:
        return self.take(self.uint32())

    def text(self) -> str:
        return self.string().decode("utf-8")

    def done(self) -> bool:
        return self.position == len(self.data)


def _wire_string(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def key_blob_type(blob: bytes) -> str | None:
    try:
        return _WireReader(blob).text()
    except (ValueError, UnicodeDecodeError):
        return None


@dataclass(frozen=True)
class HostCertificate:
    """An OpenSSH certificate (PROTOCOL.certkeys), as much as a host key check needs."""

    key_type: str  # e.g. ssh-ed25519-cert-v01@openssh.com
    plain_blob: bytes  # the certified key, as a plain public key blob
    serial: int
    cert_type: int
    key_id: str
    principals: tuple[str, ...]
    valid_after: int
    valid_before: int
    critical_options: bytes
    signature_key: bytes  # the CA's public key blob
    signature: bytes
    signed: bytes  # everything the CA signed

    @classmethod
    def parse(cls, blob: bytes) -> HostCertificate:
        reader = _WireReader(blob)
        key_type = reader.text()
        if key_type not in CERT_KEY_TYPES:
            raise ValueError(f"unsupported certificate type {key_type}")
        plain_type, fields = CERT_KEY_TYPES[key_type]
        reader.string()  # nonce
        start = reader.position
        for _ in range(fields):
            reader.string()
        plain_blob = _wire_string(plain_type.encode()) + blob[start : reader.position]
        serial, cert_type = reader.uint64(), reader.uint32()
        key_id = reader.text()
        names = _WireReader(reader.string())
        principals = []
        while not names.done():
            principals.append(names.text())
        valid_after, valid_before = reader.uint64(), reader.uint64()
        critical = reader.string()
        reader.string()  # extensions
        reader.string()  # reserved
        signature_key = reader.string()
        signed = blob[: reader.position]
        signature = reader.string()
        if not reader.done():
            raise ValueError("trailing data")
        return cls(
            key_type,
            plain_blob,
            serial,
            cert_type,
            key_id,
            tuple(principals),
            valid_after,
            valid_before,
            critical,
            signature_key,
            signature,
            signed,
        )

    def problem(self, name: str, now: float) -> str | None:
        """Why this certificate does not vouch for host `name` now (None: it does).

        The CA signature is checked by `signed_by`; this is the rest of what
        OpenSSH's sshkey_cert_check_host checks.
        """
        if self.cert_type != CERT_TYPE_HOST:
            return "it is a user certificate, not a host certificate"
        if not self.principals:
            return "it names no host (no principals)"
        if name not in self.principals:
            return f"it is for {', '.join(self.principals)}, not {name}"
        if now < self.valid_after:
            return f"it is not valid before {_utc(self.valid_after)}"
        if self.valid_before != CERT_FOREVER and now >= self.valid_before:
            return f"it expired at {_utc(self.valid_before)}"
        if self.critical_options:
            return "it carries critical options (none are defined for host certificates)"
        return None

    def signed_by(self, ca_blob: bytes) -> bool:
        """True when the CA key `ca_blob` made this certificate's signature."""
        import paramiko
        from paramiko.message import Message

        if self.signature_key != ca_blob:
            return False
        ca_type = key_blob_type(ca_blob) or ""
        signature_algorithm = key_blob_type(self.signature)
        # OpenSSH's CASignatureAlgorithms refuses SHA-1 RSA signatures by default.
        if ca_type.endswith("-cert-v01@openssh.com") or signature_algorithm == "ssh-rsa":
            return False
        try:
            ca_key = paramiko.PKey.from_type_string(ca_type, ca_blob)
            return bool(ca_key.verify_ssh_sig(self.signed, Message(self.signature)))
        except Exception:  # noqa: BLE001 - any key or signature paramiko cannot use does not vouch
            return False


def _utc(seconds: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(min(seconds, 253402300799)))


@dataclass(frozen=True)
class KnownHostsLine:
    """One line of a known_hosts file (sshd(8) SSH_KNOWN_HOSTS FILE FORMAT)."""

    path: str
    number: int
    marker: str | None  # "cert-authority", "revoked" or None
    patterns: str | None  # None: the line could not even be split into fields
    key_type: str
    key_blob: bytes | None  # None: the key does not decode

    @property
    def where(self) -> str:
        return f"{self.path}:{self.number}"

    def matches(self, name: str) -> bool:
        """Does this line speak for `name` (host, [host]:port, or a HostKeyAlias)?"""
        if self.patterns is None:
            return True  # unreadable: it may be this very host's line
        name = name.lower()
        if self.patterns.startswith("|1|"):
            return _hashed_name_matches(self.patterns, name)
        return ssh_pattern_list_matches(name, self.patterns, lower=True)


def _hashed_name_matches(field: str, name: str) -> bool:
    import base64
    import hashlib
    import hmac

    parts = field.split("|")
    if len(parts) != 4:
        return False
    try:
        salt, digest = base64.b64decode(parts[2]), base64.b64decode(parts[3])
    except ValueError:
        return False
    return hmac.compare_digest(hmac.new(salt, name.encode(), hashlib.sha1).digest(), digest)


def hashed_name(name: str) -> str:
    """`|1|salt|hash` as `ssh-keygen -H` and HashKnownHosts write it."""
    import base64
    import hashlib
    import hmac

    salt = os.urandom(20)
    digest = hmac.new(salt, name.lower().encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


def parse_known_hosts_line(text: str, path: str, number: int) -> KnownHostsLine | None:
    import base64

    fields = text.split()
    if not fields or fields[0].startswith("#"):
        return None
    marker = None
    if fields[0].startswith("@"):
        marker = fields[0][1:]
        fields = fields[1:]
    if len(fields) < 3 or (marker is not None and marker not in KNOWN_HOSTS_MARKERS):
        return KnownHostsLine(path, number, marker, None, "", None)
    patterns, key_type, encoded = fields[:3]
    try:
        blob = base64.b64decode(encoded, validate=True)
    except ValueError:
        blob = None
    if blob is not None and key_blob_type(blob) != key_type:
        blob = None
    return KnownHostsLine(path, number, marker, patterns, key_type, blob)


_WILD_PATTERN = re.compile(r"[*?!]")


class KnownHostsFile:
    """One known_hosts file, read once per run; appends are serialised by its lock.

    Lines that name their hosts literally are indexed by name, so a fleet's 300 lookups
    in a file of 300 lines are not 90,000 pattern matches (~0.2 s of one core): only
    the hashed, wildcard and negated lines are matched one by one, in file order."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.lines: list[KnownHostsLine] = []
        self._found: dict[str, list[KnownHostsLine]] = {}
        self._named: dict[str, list[int]] = {}  # a literal name -> its lines' positions
        self._matched: list[int] = []  # the positions of the lines matched one by one
        self.problem: str | None = None
        try:
            with open(path, "rb") as known:
                content = known.read()
        except FileNotFoundError:
            return
        except OSError as error:
            self.problem = f"cannot read known_hosts {path}: {error.strerror}"
            return
        for number, raw in enumerate(content.splitlines(), start=1):
            line = parse_known_hosts_line(raw.decode("utf-8", "replace").strip(), path, number)
            if line is not None:
                self._add(line)

    def _add(self, line: KnownHostsLine) -> None:
        position = len(self.lines)
        self.lines.append(line)
        patterns = line.patterns
        if patterns is None or patterns.startswith("|") or _WILD_PATTERN.search(patterns):
            self._matched.append(position)
            return
        for name in dict.fromkeys(patterns.lower().split(",")):
            self._named.setdefault(name, []).append(position)

    def matching(self, name: str) -> list[KnownHostsLine]:
        if self.problem:
            raise KnownHostsError(self.problem)
        with self.lock:
            found = self._found.get(name)
            if found is None:  # asked twice per connection: the key order, then the check
                named = self._named.get(name.lower(), [])
                matched = [i for i in self._matched if self.lines[i].matches(name)]
                found = [self.lines[i] for i in sorted([*named, *matched])]
                self._found[name] = found
        for line in found:
            if line.patterns is None or line.key_blob is None:
                raise KnownHostsError(
                    f"cannot read known_hosts {line.where}: not a valid host key line"
                )
        return found

    def append(self, name: str, key_type: str, blob: bytes, hashed: bool) -> None:
        import base64

        field = hashed_name(name) if hashed else name
        text = f"{field} {key_type} {base64.b64encode(blob).decode()}\n"
        with self.lock:
            directory = os.path.dirname(self.path)
            if directory:
                os.makedirs(directory, mode=0o700, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as known:
                known.write(text)
            number = (self.lines[-1].number + 1) if self.lines else 1
            self._add(KnownHostsLine(self.path, number, None, field, key_type, blob))
            self._found.clear()


def fingerprint(key: Any) -> str:
    import base64
    import hashlib

    blob = key if isinstance(key, bytes) else key.asbytes()
    digest = hashlib.sha256(blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _plain_type_algorithms(key_type: str) -> tuple[str, ...]:
    return ("rsa-sha2-512", "rsa-sha2-256") if key_type == "ssh-rsa" else (key_type,)


@dataclass
class KnownHosts:
    """The user files then the global files that speak for one target (OpenSSH's order)."""

    user_files: list[KnownHostsFile]
    global_files: list[KnownHostsFile]

    def matching(self, name: str) -> list[KnownHostsLine]:
        return [
            line for known in self.user_files + self.global_files for line in known.matching(name)
        ]

    def algorithm_order(self, name: str) -> list[str]:
        """Host key algorithms to offer, those known_hosts can vouch for first (OpenSSH's
        order_hostkeyalgs): certificates when a CA is known for the name, then the key
        types it has keys of, then the rest."""
        lines = self.matching(name)
        known = [
            algorithm
            for line in lines
            if line.marker is None
            for algorithm in _plain_type_algorithms(line.key_type)
        ]
        plain = [*dict.fromkeys(a for a in known if a in PLAIN_HOST_KEY_ALGORITHMS)]
        plain += [a for a in PLAIN_HOST_KEY_ALGORITHMS if a not in plain]
        if any(line.marker == "cert-authority" for line in lines):
            return [*CERT_HOST_KEY_ALGORITHMS, *plain]
        return [*plain, *CERT_HOST_KEY_ALGORITHMS]


def check_host_key(target: SshTarget, key: Any, known: KnownHosts) -> None:
    """Accept the server's key or raise why not, as OpenSSH's check_host_key decides:

    - a key (or a certificate's CA) in a matching @revoked line is refused;
    - a certificate signed by a matching @cert-authority must be a valid host
      certificate for the name; without such a CA its plain key is checked;
    - a plain key is accepted when a matching line has it; a matching line
      with another key (of any type) is a mismatch; no matching line is an
      unknown key: refused, or recorded under accept-new (and off).
    """
    name = target.known_hosts_name
    lines = known.matching(name)
    plain_blob = key.asbytes()
    certificate = None
    if key.public_blob is not None:
        try:
            certificate = HostCertificate.parse(key.public_blob.key_blob)
        except (ValueError, UnicodeDecodeError) as error:
            raise HostCertificateRejected(f"unreadable host certificate: {error}") from None
    revoked = {line.key_blob: line for line in lines if line.marker == "revoked"}
    for blob in (plain_blob, certificate.signature_key if certificate else None):
        if blob in revoked:
            raise HostKeyRevoked(
                f"host key {fingerprint(blob)} is revoked (@revoked at {revoked[blob].where})"
            )
    if certificate is not None:
        authorities = [line for line in lines if line.marker == "cert-authority"]
        trusted = [line for line in authorities if certificate.signed_by(line.key_blob)]
        if trusted:
            principal = target.host_key_alias or target.hostname
            problem = certificate.problem(principal, time.time())
            if problem:
                raise HostCertificateRejected(
                    f"host certificate {certificate.key_id!r} refused: {problem}"
                    f" (CA at {trusted[0].where})"
                )
            return
        # No CA known for it: the certificate's plain key is checked instead (OpenSSH:
        # "No matching CA found. Retry with plain key").
    _check_plain_key(target, key, plain_blob, lines, known, certificate)


def _check_plain_key(
    target: SshTarget,
    key: Any,
    blob: bytes,
    lines: list[KnownHostsLine],
    known: KnownHosts,
    certificate: HostCertificate | None,
) -> None:
    plain = [line for line in lines if line.marker is None]
    if any(line.key_blob == blob for line in plain):
        return
    if plain and target.strict_host_key_checking == "off":
        return  # the inventory's explicit opt-in: a changed key is let through, not recorded
    if plain:
        # Another key for the same name, of this type or another: a changed host key.
        other = next((line for line in plain if line.key_type == key.get_name()), plain[0])
        raise HostKeyMismatch(
            "host key mismatch (possible MITM): server offers "
            f"{key.get_name()} {fingerprint(blob)}, known_hosts has "
            f"{other.key_type} {fingerprint(other.key_blob)} ({other.where})"
        )
    if target.strict_host_key_checking == "yes":
        where = known.user_files[0].path if known.user_files else "known_hosts"
        by_ca = (
            f"; its certificate's CA {fingerprint(certificate.signature_key)} is in no"
            " matching @cert-authority line"
            if certificate is not None
            else ""
        )
        raise UnknownHostKey(
            f"unknown host key {key.get_name()} {fingerprint(blob)} for {target.known_hosts_name}"
            f' (not in {where}{by_ca}; host_key_policy = "accept-new" records it)'
        )
    if not known.user_files:
        # OpenSSH warns and goes on; going on would accept any key on every run.
        raise UnknownHostKey(
            f"unknown host key {key.get_name()} {fingerprint(blob)} for {target.known_hosts_name}"
            " (UserKnownHostsFile none: nowhere to record it)"
        )
    known.user_files[0].append(
        target.known_hosts_name, key.get_name(), blob, target.hash_known_hosts
    )


# =============================================================================
# Sessions: how a host is reached (local, or SSH with paramiko)
# =============================================================================
#
# paramiko does the SSH protocol (Transport, channels, key classes, AgentSSH's
# wire format). venusctl does the rest as OpenSSH does, because paramiko's
# SSHClient and fabric's Connection do not: one deadline from TCP connect to
# the last ssh-agent signature (paramiko reads the agent socket with no
# timeout at all), OpenSSH's identity order (agent keys matching IdentityFile,
# IdentitiesOnly, CertificateFile), ProxyCommand on a socketpair (paramiko's
# ProxyCommand never drains the command's stderr, busy-loops at EOF and runs
# no shell), and jump hosts whose one connection carries every target behind
# them (fabric opens one gateway connection per target, checks host keys with
# AutoAddPolicy, and expands ProxyCommand's %p as 22 whatever the Port).


_PARAMIKO_IMPORT = threading.Lock()


def import_paramiko() -> Any:
    """`import paramiko`, without the import of invoke it makes for `Match exec` alone.

    paramiko.config imports invoke (~65 ms here, a third of paramiko's import)
    only to run `Match exec` commands for paramiko.SSHConfig, which venusctl
    does not use (it refuses Match exec). invoke is blocked for this one
    import only: a later `import invoke` works as ever.
    """
    with _PARAMIKO_IMPORT:
        blocked = "invoke" not in sys.modules
        if blocked:
            sys.modules["invoke"] = None  # type: ignore[assignment]
        try:
            import paramiko
        finally:
            if blocked and "invoke" in sys.modules and sys.modules["invoke"] is None:
                del sys.modules["invoke"]
        return paramiko


def open_exec_channel(transport: Any, deadline: Deadline) -> Any:
    """A session channel for a command, within `deadline`; sshd's refusal (MaxSessions,
    say) or a lost connection is that host's HostError, as for the other channels."""
    import paramiko

    try:
        return transport.open_session(timeout=deadline.left())
    except paramiko.ChannelException as error:
        raise HostError(
            f"session channel refused by sshd: {error.text} (its MaxSessions may be 0)"
        ) from error
    except paramiko.SSHException as error:
        if "Timeout" in str(error):  # paramiko's only signal that it did not open in time
            raise deadline.timeout() from error
        raise HostError(f"SSH error: {error}", "ssh-error") from error
    except (EOFError, OSError) as error:
        raise HostError(f"connection lost: {error}", "connection-lost") from error


def run_remote(transport: Any, command: str, host: Host) -> CommandResult:
    """Run one command over an exec channel; channel, command and output within one deadline."""
    deadline = Deadline.after(host.command_timeout, "command")
    channel = open_exec_channel(transport, deadline)
    try:
        channel.exec_command(command)
        # From here the command runs: a timeout is a reply that did not come (ReplyTimeout).
        stdout = _read_until_eof(channel, channel.recv, deadline)
        stderr = _read_until_eof(channel, channel.recv_stderr, deadline)
        if not channel.status_event.wait(deadline.remaining()):
            raise deadline.reply_timeout()
        return CommandResult(
            channel.recv_exit_status(),
            stdout.decode("utf-8", "replace"),
            stderr.decode("utf-8", "replace"),
        )
    finally:
        channel.close()


def _read_until_eof(channel: Any, receive: Callable, deadline: Deadline) -> bytes:
    chunks, received = [], 0
    while True:
        if deadline.remaining() <= 0:
            raise deadline.reply_timeout()
        channel.settimeout(deadline.remaining())
        try:
            chunk = receive(65536)
        except TimeoutError as error:
            raise deadline.reply_timeout() from error
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        received += len(chunk)
        if received > MAX_REPLY_BYTES:
            # The CLI prints a few kB; a flood is not a reply worth keeping in memory.
            raise UnreadableReply(f"unreadable reply: more than {MAX_REPLY_BYTES} bytes")


# -- sockets: TCP, ProxyCommand, a channel through a jump host -----------------------------


def connect_tcp(hostname: str, port: int, timeout: float, family: str = "any") -> socket.socket:
    """A TCP connection with TCP_NODELAY, so paramiko does not stall on Nagle."""
    families = {"any": socket.AF_UNSPEC, "inet": socket.AF_INET, "inet6": socket.AF_INET6}
    try:
        addresses = socket.getaddrinfo(hostname, port, families[family], socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise HostError(f"cannot resolve {hostname}: {error.strerror}", "unreachable") from error
    deadline = time.monotonic() + timeout
    failure: BaseException | None = None
    for address_family, kind, proto, _, address in addresses:
        sock = socket.socket(address_family, kind, proto)
        try:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            sock.connect(address)
            break
        except OSError as error:
            sock.close()
            failure = error
    else:
        if isinstance(failure, ConnectionRefusedError):
            raise ConnectionRefused("connection refused") from failure
        if isinstance(failure, TimeoutError):
            raise HostTimeout(f"timeout after {timeout:g}s (connect)") from failure
        reason = getattr(failure, "strerror", None) or failure
        raise HostError(f"cannot connect: {reason}", "unreachable") from failure
    # Measured on loopback: 116 ms -> 31 ms per host. sshd holds a packet
    # after auth until it is ACKed, and Nagle holds ours behind it.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if not hasattr(socket, "TCP_QUICKACK"):
        return sock
    quick = QuickAckSocket(fileno=sock.detach())
    # A socket made from a descriptor starts without a timeout (and the descriptor
    # is still non-blocking): give it back the one it had.
    quick.settimeout(timeout)
    return quick


class QuickAckSocket(socket.socket):
    """A TCP socket that ACKs at once after every read (Linux TCP_QUICKACK).

    sshd does not set TCP_NODELAY on a session without a tty, so its small
    replies (channel confirmation, RPC reply) wait for our ACK of the
    previous one; Linux delays that ACK up to 40 ms. The kernel clears
    QUICKACK on its own, so it is re-armed after each recv.
    """

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = super().recv(bufsize, flags)
        self.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        return data


# Outside single quotes a shell reads these; outside any quotes these too.
_SHELL_IN_DOUBLE_QUOTES = set("$`\\")
_SHELL_UNQUOTED = set("|&;<>()*?[]{}~#=\n") | _SHELL_IN_DOUBLE_QUOTES


def _needs_shell(command: str) -> bool:
    """Does `command` use shell syntax (pipes, redirections, $VAR, globs, ...)?"""
    quote = ""
    for char in command:
        if quote == "'":
            quote = "" if char == "'" else quote
        elif quote == '"':
            if char == '"':
                quote = ""
            elif char in _SHELL_IN_DOUBLE_QUOTES:
                return True
        elif char in "'\"":
            quote = char
        elif char in _SHELL_UNQUOTED:
            return True
    return False


def proxy_command_argv(command: str, environ: Mapping[str, str]) -> list[str]:
    """How a ProxyCommand runs: as argv (shlex, no shell) when it is plain words;
    when it uses shell syntax, with the user's shell as OpenSSH runs every one
    (`$SHELL -c "exec COMMAND"`). Tokens were checked to be plain words first,
    so no host or user name can inject shell syntax either way."""
    if _needs_shell(command):
        return [environ.get("SHELL") or "/bin/sh", "-c", f"exec {command}"]
    try:
        words = shlex.split(command)
    except ValueError as error:
        raise SshConfigError(f"ProxyCommand {command!r}: {error}") from error
    if not words:
        raise SshConfigError("ProxyCommand is empty")
    return words


PROXY_STDERR_BYTES = 16384


class ProxyCommandSocket(socket.socket):
    """Our end of a socketpair whose other end is a ProxyCommand's stdin and stdout.

    A real socket, so paramiko reads it with timeouts and select like TCP;
    the command's stderr is drained (a chatty `ssh -v` never blocks) and its
    last line is the reason a failure shows. Closing it stops the command.
    """

    process: Any  # its subprocess.Popen
    command: str
    _stderr: bytes

    @classmethod
    def start(cls, command: str, environ: Mapping[str, str]) -> ProxyCommandSocket:
        import subprocess

        argv = proxy_command_argv(command, environ)
        ours, theirs = socket.socketpair()
        try:
            process = subprocess.Popen(
                argv,
                stdin=theirs,
                stdout=theirs,
                stderr=subprocess.PIPE,
                env=dict(environ),
                start_new_session=True,  # a Ctrl-C reaches venusctl, which stops it in order
            )
        except OSError as error:
            ours.close()
            raise JumpHostError(f"ProxyCommand {argv[0]}: {error.strerror}") from error
        finally:
            theirs.close()
        sock = cls(fileno=ours.detach())
        sock.process, sock.command, sock._stderr = process, command, b""
        threading.Thread(target=sock._drain, name="proxycommand-stderr", daemon=True).start()
        return sock

    def _drain(self) -> None:
        for chunk in iter(lambda: self.process.stderr.read1(4096), b""):
            self._stderr = (self._stderr + chunk)[-PROXY_STDERR_BYTES:]

    def failure(self) -> JumpHostError | None:
        """Why the command ended (its exit status and last stderr line), if it did."""
        import subprocess

        try:
            status = self.process.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            return None
        time.sleep(0.05)  # the last stderr line may still be in the pipe
        lines = self._stderr.decode("utf-8", "replace").strip().splitlines()
        said = f": {lines[-1]}" if lines else ""
        return JumpHostError(f"ProxyCommand exited with status {status}{said}")

    def close(self) -> None:
        import subprocess

        super().close()
        process = getattr(self, "process", None)
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def open_jump_channel(jump: Any, hop: SshTarget, target: SshTarget, deadline: Deadline) -> Any:
    """A direct-tcpip channel through the jump host's connection to the target's port."""
    import paramiko

    try:
        return jump.open_channel(
            "direct-tcpip",
            (target.hostname, target.port),
            ("127.0.0.1", 0),
            timeout=deadline.left("channel through the jump host"),
        )
    except paramiko.ChannelException as error:
        if error.code == 1:
            raise JumpHostError(
                f"jump host {hop.label} refuses to forward to {target.dest} (AllowTcpForwarding)"
            ) from error
        raise HostError(
            f"jump host {hop.label} cannot reach {target.dest}: {error.text.lower()}", "unreachable"
        ) from error
    except paramiko.SSHException as error:
        if "Timeout" in str(error):
            raise deadline.timeout("channel through the jump host") from error
        raise JumpHostError(f"jump host {hop.label}: {error}") from error
    except (EOFError, OSError) as error:
        raise JumpHostError(f"jump host {hop.label}: connection lost") from error


# -- ssh-agent and identities ----------------------------------------------------------------


class _AgentSocket:
    """The ssh-agent's Unix socket, every read within the connect deadline.

    paramiko's AgentSSH reads the agent with no timeout: an agent that never
    answers (stopped, or hung on a confirmation prompt) would hold the
    connection, and the SSH transport thread signing with it, forever.
    """

    def __init__(self, sock: socket.socket, path: str, deadline: Deadline) -> None:
        self.sock, self.path, self.deadline = sock, path, deadline

    def _arm(self) -> None:
        self.sock.settimeout(self.deadline.left(f"ssh-agent {self.path} did not answer"))

    def send(self, data: bytes) -> int:
        self._arm()
        try:
            self.sock.sendall(data)
        except TimeoutError:
            raise self.deadline.timeout(f"ssh-agent {self.path} did not answer") from None
        return len(data)

    def recv(self, count: int) -> bytes:
        self._arm()
        try:
            return self.sock.recv(count)
        except TimeoutError:
            raise self.deadline.timeout(f"ssh-agent {self.path} did not answer") from None

    def close(self) -> None:
        self.sock.close()


def open_ssh_agent(path: str, deadline: Deadline) -> tuple[Any | None, str | None]:
    """(the agent with its keys, None), or (None, why it could not be asked)."""
    from paramiko.agent import AgentSSH

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(deadline.left(f"ssh-agent {path}"))
        sock.connect(path)
    except TimeoutError:
        sock.close()
        raise deadline.timeout(f"ssh-agent {path} did not answer") from None
    except OSError as error:
        sock.close()
        return None, f"ssh-agent {path}: {error.strerror}"
    agent = AgentSSH()
    try:
        agent._connect(_AgentSocket(sock, path, deadline))
    except HostTimeout:
        sock.close()
        raise
    except Exception as error:  # noqa: BLE001 - paramiko's SSHException, or a dead agent
        sock.close()
        return None, f"ssh-agent {path}: {error}"
    return agent, None


@dataclass
class Identity:
    """One key to offer: a file's, or the agent's (which signs for it)."""

    label: str
    blob: bytes | None  # the public key blob, when it is known without a passphrase
    load: Callable[[], Any]  # -> a paramiko PKey (AgentKey, or the file's key)


def public_blob_of(path: str) -> bytes | None:
    """A key file's public key blob, without its passphrase: `path.pub`, or the public
    part an OpenSSH-format private key keeps in the clear."""
    import base64

    try:
        fields = Path(f"{path}.pub").read_text(encoding="utf-8").split()
        return base64.b64decode(fields[1])
    except (OSError, IndexError, ValueError, UnicodeDecodeError):
        pass
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    match = re.search(
        r"-----BEGIN OPENSSH PRIVATE KEY-----(.*?)-----END OPENSSH PRIVATE KEY-----", text, re.S
    )
    if not match:
        return None
    try:
        data = base64.b64decode("".join(match.group(1).split()))
        if not data.startswith(b"openssh-key-v1\0"):
            return None
        reader = _WireReader(data[len(b"openssh-key-v1\0") :])
        for _ in range(3):
            reader.string()  # cipher, kdf, kdf options
        return reader.string() if reader.uint32() >= 1 else None
    except ValueError:
        return None


def _certificate_blobs(target: SshTarget, identity_file: str) -> list[tuple[str, bytes]]:
    """(path, certificate blob) of the CertificateFiles and `identity-cert.pub`."""
    import base64

    found = []
    for path in (*target.certificate_files, f"{identity_file}-cert.pub"):
        try:
            fields = Path(path).read_text(encoding="utf-8").split()
            found.append((path, base64.b64decode(fields[1])))
        except (OSError, IndexError, ValueError, UnicodeDecodeError):
            continue
    return found


def _with_certificates(
    target: SshTarget, identity_file: str, blob: bytes | None, load: Callable[[], Any]
) -> list[Identity]:
    """The identity's certificates first (each must certify this very key), then the key."""
    identities = []
    for path, certificate in _certificate_blobs(target, identity_file):
        try:
            certified = HostCertificate.parse(certificate).plain_blob
        except (ValueError, UnicodeDecodeError):
            continue
        if blob is not None and certified == blob:

            def with_certificate(path: str = path) -> Any:
                key = copy.copy(load())  # the loaded key may be the run's shared one
                key.load_certificate(path)
                return key

            identities.append(Identity(f"{identity_file} with {path}", blob, with_certificate))
    identities.append(Identity(identity_file, blob, load))
    return identities


def load_private_key(path: str) -> Any:
    """The private key in `path` (paramiko's), or _NeedsPassphrase."""
    import paramiko

    try:
        return paramiko.PKey.from_path(path)
    except paramiko.PasswordRequiredException:
        raise _NeedsPassphrase(path) from None
    except TypeError as error:  # cryptography's word for an OpenSSH-format one
        if "password" in str(error).lower():
            raise _NeedsPassphrase(path) from None
        raise ValueError(str(error)) from None


def identities_to_offer(
    target: SshTarget, agent: Any | None, load_key: Callable[[str], Any] = load_private_key
) -> tuple[list[Identity], list[str]]:
    """The keys in OpenSSH's order (pubkey_prepare), and notes on keys left out.

    Agent keys come first, in the agent's order: one matching an IdentityFile
    signs for it (no passphrase needed), the others only without
    IdentitiesOnly. The files the agent does not hold follow; a file whose
    key needs a passphrase is left out with a note (nothing can ask for it).
    """
    from paramiko.agent import AgentKey

    files: list[tuple[str, bytes | None]] = []
    notes = []
    for path in target.identity_files:
        if os.path.exists(path):
            files.append((path, public_blob_of(path)))
        elif target.identities_given:
            notes.append(f"{path}: no such file")
    preferred: list[Identity] = []
    for agent_key in agent.get_keys() if agent is not None else ():
        blob = agent_key.asbytes()

        def from_agent(key: Any = agent_key) -> Any:
            return AgentKey(key.agent, key.blob, key.comment)

        matching = [path for path, file_blob in files if file_blob == blob]
        if matching:
            files = [(path, file_blob) for path, file_blob in files if path != matching[0]]
            preferred += _with_certificates(target, matching[0], blob, from_agent)
        elif not target.identities_only:
            label = f"ssh-agent key {agent_key.comment or fingerprint(blob)}"
            preferred.append(Identity(label, blob, from_agent))

    for path, blob in files:
        preferred += _with_certificates(target, path, blob, functools.partial(load_key, path))
    return preferred, notes


class _NeedsPassphrase(Exception):
    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


def authenticate(
    transport: Any,
    target: SshTarget,
    deadline: Deadline,
    load_key: Callable[[str], Any] = load_private_key,
) -> None:
    """Public-key authentication as OpenSSH does it, every attempt within `deadline`;
    `load_key` reads an IdentityFile."""
    import paramiko

    agent, agent_problem = (None, None)
    if target.identity_agent:
        agent, agent_problem = open_ssh_agent(target.identity_agent, deadline)
    try:
        identities, notes = identities_to_offer(target, agent, load_key)
        if agent_problem:
            notes.append(agent_problem)
        tried = []
        for identity in identities:
            try:
                key = identity.load()
            except _NeedsPassphrase as needs:
                notes.append(f"{needs.path} needs its passphrase (add it to ssh-agent)")
                continue
            except (OSError, ValueError, paramiko.SSHException) as error:
                notes.append(f"{identity.label}: {error}")
                continue
            transport.auth_timeout = deadline.left("authentication")
            try:
                further = transport.auth_publickey(target.user, key)
            except paramiko.BadAuthenticationType as error:
                allowed = ", ".join(error.allowed_types) or "none"
                raise AuthenticationFailed(
                    f"authentication failed: the server takes no public keys (it allows: {allowed})"
                ) from error
            except paramiko.AuthenticationException:
                tried.append(identity.label)
                deadline.left("authentication")
                continue
            if further:
                raise AuthenticationFailed(
                    "authentication failed: the server wants more than a public key"
                    f" ({', '.join(further)})"
                )
            return
        raise AuthenticationFailed(_auth_failure(target, tried, notes))
    finally:
        if agent is not None:
            agent._close()


def _auth_failure(target: SshTarget, tried: list[str], notes: list[str]) -> str:
    if tried:
        text = f"authentication failed as {target.user} (tried {', '.join(tried)})"
    else:
        text = f"authentication failed as {target.user}: no key to offer"
    return text + "".join(f"; {note}" for note in notes)


# -- the SSH transport ------------------------------------------------------------------------


_TRANSPORT_CLASS: list[type] = []


# AES-GCM before paramiko's own first choice, aes128-ctr with HMAC-SHA2 (the order of
# Mozilla's OpenSSH guidelines after chacha20-poly1305, which paramiko lacks): an AEAD
# cipher checks a packet in the one call that decrypts it, where CTR pays a Python HMAC
# and a byte-by-byte compare per packet, 5-10 % of a warm 300-host fan-out's CPU here.
# A server without GCM (OpenSSH before 6.2, or its Ciphers) gets paramiko's order.
AEAD_CIPHERS = ("aes256-gcm@openssh.com", "aes128-gcm@openssh.com")


def ssh_transport_class() -> type:
    """paramiko.Transport plus `open_streamlocal` and a per-connection host key order,
    built on first use (lazy import).

    paramiko has no API for `direct-streamlocal@openssh.com` (OpenSSH's
    forwarding to a Unix socket, PROTOCOL 2.4): `open_channel` builds the
    channel-open message inline. This mirrors its body with the streamlocal
    payload — socket path, reserved string, reserved uint32 — so it touches
    paramiko internals; setup.cfg pins paramiko for that reason and the
    tests open the channel through a real sshd.
    """
    if _TRANSPORT_CLASS:
        return _TRANSPORT_CLASS[0]
    import paramiko
    from paramiko.channel import Channel
    from paramiko.common import cMSG_CHANNEL_OPEN
    from paramiko.message import Message

    class VenusTransport(paramiko.Transport):
        # Set before start_client: the host key algorithms known_hosts can vouch for
        # first, as OpenSSH orders them (paramiko offers certificates last).
        host_key_order: tuple[str, ...] | None = None

        @property
        def preferred_keys(self) -> tuple[str, ...]:
            return self.host_key_order or super().preferred_keys

        @functools.cached_property  # asked 4 times a connection; fixed once it is made
        def preferred_ciphers(self) -> tuple[str, ...]:
            offered = super().preferred_ciphers
            first = tuple(name for name in AEAD_CIPHERS if name in offered)
            return first + tuple(name for name in offered if name not in first)

        def open_streamlocal(self, socket_path: str, timeout: float) -> Any:
            if not self.active:
                raise paramiko.SSHException("SSH session not active")
            with self.lock:
                window_size = self._sanitize_window_size(None)
                max_packet_size = self._sanitize_packet_size(None)
                chanid = self._next_channel()
                message = Message()
                message.add_byte(cMSG_CHANNEL_OPEN)
                message.add_string("direct-streamlocal@openssh.com")
                message.add_int(chanid)
                message.add_int(window_size)
                message.add_int(max_packet_size)
                message.add_string(socket_path)
                message.add_string("")  # reserved
                message.add_int(0)  # reserved
                channel = Channel(chanid)
                self._channels.put(chanid, channel)
                self.channel_events[chanid] = event = threading.Event()
                self.channels_seen[chanid] = True
                channel._set_transport(self)
                channel._set_window(window_size, max_packet_size)
            self._send_user_message(message)
            return self._wait_for_channel(chanid, event, timeout)

        def _wait_for_channel(self, chanid: int, event: threading.Event, timeout: float) -> Any:
            deadline = time.monotonic() + timeout
            while not event.wait(0.1):
                if not self.active:
                    raise self.get_exception() or paramiko.SSHException("SSH session closed")
                if time.monotonic() > deadline:
                    raise HostTimeout(f"timeout after {timeout:g}s opening the agent channel")
            channel = self._channels.get(chanid)
            if channel is None:
                raise self.get_exception() or paramiko.SSHException("channel open failed")
            return channel

    _TRANSPORT_CLASS.append(VenusTransport)
    return VenusTransport


# The name the earlier code (and its tests) use for the same class.
streamlocal_transport_class = ssh_transport_class


def ssh_failure(error: BaseException, deadline: Deadline, step: str) -> BaseException:
    """paramiko's exceptions as the reasons an operator reads in a host row."""
    import paramiko

    if isinstance(error, HostError):
        return error
    if deadline.remaining() <= 0:
        return deadline.timeout(step)
    if isinstance(error, paramiko.AuthenticationException):
        return AuthenticationFailed(f"authentication failed: {error}")
    if isinstance(error, paramiko.SSHException):
        text = str(error)
        if "banner" in text or "timeout" in text.lower():
            return HostError("connection closed by the server during SSH handshake", "ssh-error")
        return HostError(f"SSH error: {text}", "ssh-error")
    if isinstance(error, (TimeoutError, socket.timeout)):
        return deadline.timeout(step)
    if isinstance(error, (EOFError, ConnectionError)):
        return HostError("connection closed by the server during SSH handshake", "ssh-error")
    return error


# Seconds between two looks of an established connection's idle reader thread: the
# granularity of its keepalives (ServerAliveInterval, the keeper's); nothing else waits
# on it. A closed connection's thread ends at its next look.
SSH_READER_POLL = 2.0


def start_ssh(
    sock: Any,
    target: SshTarget,
    known: KnownHosts,
    deadline: Deadline,
    load_key: Callable[[str], Any] = load_private_key,
) -> Any:
    """An SSH session on `sock`: key exchange, host key checked, authenticated."""
    import logging

    # paramiko logs a failed connection from its own thread; without a
    # handler Python prints that to stderr, next to the host row that
    # already says what went wrong.
    paramiko_log = logging.getLogger("paramiko")
    if not paramiko_log.handlers:
        paramiko_log.addHandler(logging.NullHandler())

    transport = ssh_transport_class()(sock)
    step = "SSH handshake"
    try:
        transport.host_key_order = tuple(known.algorithm_order(target.known_hosts_name))
        transport.banner_timeout = deadline.left(step)
        transport.start_client(timeout=deadline.left(step))
        if not transport.completion_event.is_set():
            raise deadline.timeout(step)  # start_client returns quietly when its time is up
        step = "host key"
        check_host_key(target, transport.get_remote_server_key(), known)
        step = "authentication"
        authenticate(transport, target, deadline, load_key)
        if target.server_alive_interval:
            transport.set_keepalive(int(target.server_alive_interval))
        # paramiko's reader thread wakes every 0.1 s to look for work, though every packet
        # and EOF wakes it at once. 300 connections woke 3,000 times a second, each waking
        # thread taking its turn on the GIL while the others shook hands: a cold 300-host
        # list used 15 % more CPU, and the keeper's idle connections 5 % of a core.
        transport.sock.settimeout(SSH_READER_POLL)
    except BaseException as error:
        transport.close()
        failure = getattr(sock, "failure", None)
        ended = failure() if failure is not None and not isinstance(error, HostError) else None
        raise (ended or ssh_failure(error, deadline, step)) from error
    return transport


class _Shared:
    """One jump host connection being made, or made, for every target behind it."""

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.transport: Any = None
        self.error: HostError | None = None
        self.failed_at = 0.0


# A failed jump host is the cause on every row behind it for this long (one
# attempt for a whole fan-out), then tried again (a watch goes on for hours).
JUMP_RETRY_AFTER = 5.0


class SshContext:
    """Per-run SSH state shared by all hosts: ssh_config files, resolved targets,
    known_hosts files, and the one connection to each jump host."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ = os.environ if environ is None else environ
        self._lock = threading.Lock()
        self._configs: dict[str | None, SshConfigFiles] = {}
        self._targets: dict[Host, SshTarget | HostError] = {}
        self._known: dict[str, KnownHostsFile] = {}
        self._jumps: dict[SshTarget, _Shared] = {}
        self._keys: dict[str, Any] = {}
        self._key_lock = threading.Lock()

    def config_files(self, host: Host) -> SshConfigFiles:
        """`ssh_config = FILE` is `ssh -F FILE` (only that file; "none": none); unset, the
        files ssh reads: ~/.ssh/config (checked as OpenSSH does), /etc/ssh/ssh_config."""
        key = host.ssh_config
        with self._lock:
            if key not in self._configs:
                if key is None:
                    sources = [(SSH_USER_CONFIG, "user"), (SSH_SYSTEM_CONFIG, "system")]
                elif key.lower() == "none":
                    sources = []
                else:
                    sources = [(key, "given")]
                self._configs[key] = SshConfigFiles(sources)
            return self._configs[key]

    def target(self, host: Host) -> SshTarget:
        """The host's SshTarget (inventory over ssh_config), resolved once per run."""
        with self._lock:
            cached = self._targets.get(host)
        if cached is None:
            try:
                cached = resolve_ssh_target(host, self.config_files(host), self.environ)
            except HostError as error:
                cached = error
            with self._lock:
                self._targets[host] = cached
        if isinstance(cached, HostError):
            raise cached
        return cached

    def private_key(self, path: str) -> Any:
        """The key in IdentityFile `path`, read once per run: each host's authentication
        parsed it again before, 40 ms of CPU in a 300-host run. The first thread to
        need it reads it; the others wait for that rather than read it too."""
        with self._key_lock:
            if path not in self._keys:
                self._keys[path] = load_private_key(path)
            return self._keys[path]

    def known_hosts(self, target: SshTarget) -> KnownHosts:
        def files(paths: Sequence[str]) -> list[KnownHostsFile]:
            with self._lock:
                for path in paths:
                    if path not in self._known:
                        self._known[path] = KnownHostsFile(path)
                return [self._known[path] for path in paths]

        return KnownHosts(files(target.user_known_hosts), files(target.global_known_hosts))

    def open_transport(self, target: SshTarget, deadline: Deadline) -> Any:
        """An authenticated SSH transport to `target`, by its route."""
        known = self.known_hosts(target)  # a bad line fails before any connection
        if target.proxy_command is not None:
            sock = ProxyCommandSocket.start(target.proxy_command, self.environ)
        elif target.via is not None:
            jump = self.jump_transport(target.via, deadline)
            sock = open_jump_channel(jump, target.via, target, deadline)
        else:
            sock = connect_tcp(
                target.hostname,
                target.port,
                deadline.left("connect"),
                target.address_family,
            )
        try:
            # After the connect: sshd's start of the session (fork, re-exec, host keys) goes
            # on while the first connection of the run imports paramiko (~60 ms).
            import_paramiko()
            return start_ssh(sock, target, known, deadline, self.private_key)
        except BaseException:
            sock.close()
            raise

    def jump_transport(self, hop: SshTarget, deadline: Deadline) -> Any:
        """The one connection to jump host `hop`, made by the first target that needs it;
        the others wait for it (each within its own deadline) and share it."""
        with self._lock:
            shared = self._jumps.get(hop)
            stale = (
                shared is not None
                and shared.ready.is_set()
                and (
                    (
                        shared.error is not None
                        and time.monotonic() - shared.failed_at > JUMP_RETRY_AFTER
                    )
                    or (shared.transport is not None and not shared.transport.is_active())
                )
            )
            opener = shared is None or stale
            if opener:
                shared = self._jumps[hop] = _Shared()
        if opener:
            own = Deadline.after(hop.connect_timeout, "connect")
            bound = own if own.end < deadline.end else deadline
            try:
                shared.transport = self.open_transport(hop, bound)
            except HostError as error:
                shared.error = (
                    error
                    if isinstance(error, JumpHostError)
                    else JumpHostError(f"jump host {hop.label}: {error}")
                )
                shared.failed_at = time.monotonic()
            finally:
                shared.ready.set()
        elif not shared.ready.wait(deadline.left(f"jump host {hop.label}")):
            raise deadline.timeout(f"jump host {hop.label}")
        if shared.error is not None:
            raise shared.error
        return shared.transport

    def close(self) -> None:
        """Close the jump host connections (the targets' sessions are closed first)."""
        with self._lock:
            shared, self._jumps = list(self._jumps.values()), {}
        for entry in shared:
            if entry.transport is not None:
                entry.transport.close()


class LocalSession:
    """An agent on this machine: its Unix socket, and its CLI as a subprocess."""

    def __init__(self, host: Host) -> None:
        self.host = host

    def open_control(self) -> RpcAgent:
        """The agent's control socket itself."""
        deadline = Deadline.after(self.host.connect_timeout or DEFAULT_CONNECT_TIMEOUT, "connect")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(deadline.left())
            sock.connect(self.host.socket)
        except (FileNotFoundError, ConnectionRefusedError) as error:
            sock.close()
            raise AgentNotRunning(f"agent not running at {self.host.socket}") from error
        except TimeoutError as error:
            sock.close()
            raise deadline.timeout() from error
        except OSError as error:
            sock.close()
            raise HostError(f"cannot connect to {self.host.socket}: {error.strerror}") from error
        return RpcAgent(JsonRpcClient(sock, self.host.command_timeout), via="local")

    def cli(self) -> CliAgent:
        return CliAgent(self.host, self._run, via="local-exec")

    def _run(self, argv: list[str]) -> CommandResult:
        import subprocess

        deadline = Deadline.after(self.host.command_timeout, "command")
        try:
            done = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=deadline.left(),
                stdin=subprocess.DEVNULL,
            )
        except FileNotFoundError as error:
            return CommandResult(127, "", f"{argv[0]}: {error.strerror}")
        except OSError as error:
            raise HostError(
                f"cannot run {argv[0]}: {error.strerror}", "agent-not-runnable"
            ) from error
        except subprocess.TimeoutExpired as error:
            raise deadline.reply_timeout() from error
        return CommandResult(done.returncode, done.stdout, done.stderr)

    def alive(self) -> bool:
        return True

    def close(self) -> None:
        """Nothing stays open between calls."""


class SshSession:
    """One authenticated SSH connection to a host (a paramiko transport), for stream or exec."""

    def __init__(self, host: Host, transport: Any, target: SshTarget | None = None) -> None:
        self.host = host
        self.transport = transport
        self.target = target

    def open_control(self) -> RpcAgent:
        """A direct-streamlocal channel to the agent's control socket on the host."""
        from paramiko.ssh_exception import ChannelException

        deadline = Deadline.after(self.host.command_timeout, "opening the agent channel")
        try:
            channel = self.transport.open_streamlocal(self.host.socket, timeout=deadline.left())
        except ChannelException as error:
            # RFC 4254 reason codes: 1 administratively prohibited (sshd has
            # AllowStreamLocalForwarding no), 2 connect failed (no socket or
            # nobody listening on it).
            if error.code == 1:
                raise StreamForbidden("stream forwarding forbidden by sshd") from error
            if error.code == 2:
                # OpenSSH also says "connect failed" when AllowStreamLocalForwarding
                # is off or the SSH user may not use the socket; auto then asks the
                # CLI, which can tell these apart from an agent that is not running.
                raise StreamConnectFailed(
                    f"connect failed to the agent socket {self.host.socket} (no agent"
                    " listening, the SSH user may not use it, or sshd forbids stream"
                    " forwarding)"
                ) from error
            raise HostError(f"channel refused: {error.text}") from error
        except HostTimeout:
            raise deadline.timeout() from None
        except (EOFError, OSError) as error:
            raise HostError(f"connection lost: {error}", "connection-lost") from error
        return RpcAgent(JsonRpcClient(channel, self.host.command_timeout), via="stream")

    def open_damocles(self) -> DamoclesAgent:
        """A damocles-worker's JSON-RPC port, through direct-tcpip channels."""
        return DamoclesAgent(self._damocles_channel(), "direct-tcpip", self._damocles_channel)

    def _damocles_channel(self) -> JsonRpcClient:
        """A direct-tcpip channel to the worker's RPC port, as the worker host sees it.

        The port can stay bound to the host's loopback: sshd makes the TCP
        connection on the host, so nothing but SSH is open to the network.
        """
        import paramiko

        deadline = Deadline.after(self.host.command_timeout, "opening the RPC channel")
        try:
            channel = self.transport.open_channel(
                "direct-tcpip", self.host.rpc_address, ("127.0.0.1", 0), timeout=deadline.left()
            )
        except paramiko.ChannelException as error:
            # RFC 4254 reason codes, as for the stream channel above.
            if error.code == 1:
                raise TcpForwardingForbidden(
                    "TCP forwarding forbidden by sshd (AllowTcpForwarding)"
                ) from error
            if error.code == 2:
                raise DamoclesNotReachable(
                    f"damocles RPC not reachable at {self.host.rpc}"
                ) from error
            raise HostError(f"channel refused: {error.text}") from error
        except paramiko.SSHException as error:
            # paramiko's only signal that the channel did not open in time
            if "Timeout" in str(error):
                raise deadline.timeout() from error
            raise HostError(f"SSH error: {error}", "ssh-error") from error
        except (EOFError, OSError) as error:
            raise HostError(f"connection lost: {error}", "connection-lost") from error
        return JsonRpcClient(channel, self.host.command_timeout)

    def cli(self) -> CliAgent:
        return CliAgent(self.host, self._run, via="exec")

    def _run(self, argv: list[str]) -> CommandResult:
        import paramiko

        try:
            return run_remote(self.transport, shlex.join(argv), self.host)
        except paramiko.SSHException as error:
            # e.g. sshd refused the session channel (MaxSessions) or dropped the connection
            raise HostError(f"SSH error: {error}", "ssh-error") from error
        except (EOFError, OSError) as error:
            raise HostError(f"connection lost: {error}", "connection-lost") from error

    def alive(self) -> bool:
        return self.transport.is_active()

    def close(self) -> None:
        self.transport.close()


def connect_ssh(host: Host, context: SshContext) -> SshSession:
    """The host's SSH session: resolved (SshTarget), reached by its route, host key
    checked, authenticated, all within the connect deadline."""
    target = context.target(host)
    deadline = Deadline.after(target.connect_timeout, "connect")
    return SshSession(host, context.open_transport(target, deadline), target)


def open_session(host: Host, context: SshContext) -> LocalSession | SshSession:
    if host.transport == "local":
        return LocalSession(host)
    return connect_ssh(host, context)


def host_route(context: SshContext, host: Host) -> tuple[str, str | None]:
    """(Dest, Jump) as a row shows them: where ssh_config sends the connection, through
    which jump hosts; the inventory's address when ssh_config cannot be read (the row
    says why)."""
    if host.transport == "local":
        return host.dest, None
    try:
        target = context.target(host)
    except HostError:
        return host.dest, None
    return target.dest, target.route


# =============================================================================
# Transport policy, actions and the parallel fan-out
# =============================================================================


Agent = RpcAgent | DamoclesAgent | CliAgent


def open_agent(
    session: LocalSession | SshSession, host: Host, *, for_status: bool
) -> tuple[Agent, HostError | None]:
    """The one transport policy: how status, actions and the watch pool reach an agent.

    Returns the agent to ask and, when it is the fallback, why the first way
    was refused. Each opens only what it needs: one channel, then the CLI
    only after a refusal.

    - backend damocles: its RPC port through direct-tcpip (transport auto or
      stream); no CLI of ours is there to fall back to.
    - exec: the CLI over an exec channel.
    - stream: the stream channel to the agent's socket, no fallback.
    - auto: the stream channel, else the CLI over exec. sshd answers
      "connect failed" both when the socket is missing and when it forbids
      stream forwarding, so only the CLI can tell a dead agent from a closed
      door; its `status` reads the heartbeat file, so a dead agent's row
      keeps its (stale) LastPing.
    - local: the Unix socket; for status the CLI when the socket is dead (it
      reads the heartbeat file too), for actions not: it would only find the
      same dead socket.
    """
    if host.backend == "damocles":
        return session.open_damocles(), None
    if host.transport == "exec":
        return session.cli(), None
    try:
        return session.open_control(), None
    except (StreamForbidden, StreamConnectFailed, AgentNotRunning) as refused:
        if host.transport == "auto" or (host.transport == "local" and for_status):
            return session.cli(), refused
        raise


def agent_status(agent: Agent, refused: HostError | None) -> HostStatus:
    """agent.status(), where `refused` is why open_agent fell back to this agent (the CLI).

    When the CLI cannot ask the daemon either, the row names both causes, the
    CLI's own words included (not on sshd's PATH, its config unreadable,
    permission denied on the socket); "agent not running" only when the CLI,
    on the host, found nothing listening.
    """
    if refused is None:
        return agent.status()
    try:
        status = agent.status()
    except HostError as error:
        raise both_ways(refused, error) from None
    if status.threads is None:
        status.error = both_ways(refused, status.error) if status.error else refused
    return status


def both_ways(refused: HostError, fallback: BaseException) -> BaseException:
    """The error of a host that the fallback could not reach either."""
    if isinstance(fallback, AgentNotRunning) or not isinstance(fallback, HostError):
        return fallback  # the CLI saw it on the host: the whole truth
    if isinstance(refused, AgentNotRunning):
        return refused  # a local socket checked here: nothing listens, that is the truth
    return BothWaysFailed(refused, fallback)


def query_status(session: LocalSession | SshSession, host: Host) -> HostStatus:
    """The host's report and threads, by the transport policy (open_agent)."""
    agent, refused = open_agent(session, host, for_status=True)
    try:
        return agent_status(agent, refused)
    finally:
        agent.close()


def perform_all(
    session: LocalSession | SshSession, host: Host, actions: Sequence[Action]
) -> list[ActionOutcome]:
    """Do the actions in order over one agent connection; each gets its outcome or its error.

    A refusal of one thread (not paused, bad state) does not stop the next;
    a host that cannot be reached at all raises, as for one action.
    """
    agent, refused = open_agent(session, host, for_status=False)
    try:
        return act_all(agent, actions, refused)
    finally:
        agent.close()


def act_all(
    agent: Agent, actions: Sequence[Action], refused: HostError | None = None
) -> list[ActionOutcome]:
    """Each action through `agent`, in order: its outcome, or the error it met.

    `refused`: why open_agent fell back to this agent; a failure then names both ways.
    """
    outcomes: list[ActionOutcome] = []
    for action in actions:
        try:
            note = action.via(agent)
        except HostError as error:
            # a refusal is the agent's answer, a missing reply may still take effect
            if refused is not None and not isinstance(error, (AgentRefused, ReplyTimeout)):
                error = both_ways(refused, error)
            outcomes.append(ActionOutcome(error=error))
        else:
            outcomes.append(ActionOutcome(agent.via, note))
    return outcomes


def perform(session: LocalSession | SshSession, host: Host, action: Action) -> ActionOutcome:
    """Do the action by the transport policy (open_agent); returns the path used and any note."""
    outcome = perform_all(session, host, [action])[0]
    if outcome.error is not None:
        raise outcome.error
    return outcome


class GroupResult(dict):
    """Host name -> its job's result, or the exception it raised, in inventory order.

    Fabric's GroupResult: one bad host never stops the others, and
    `succeeded` / `failed` split the two kinds without each caller sorting
    them by isinstance again.
    """

    @property
    def succeeded(self) -> dict[str, Any]:
        return {name: value for name, value in self.items() if not _is_error(value)}

    @property
    def failed(self) -> dict[str, BaseException]:
        return {name: value for name, value in self.items() if _is_error(value)}


def _is_error(value: Any) -> bool:
    return isinstance(value, BaseException)


# A job past its deadline is given up on this much later, so that the job's
# own timeout, which names the step it was on, is what its row says.
LATE_GRACE = 0.5


class _Running:
    """A host job under way in a fan-out: by when it must end, and whether it was given up."""

    def __init__(self, host: Host, seconds: float | None, until: Deadline | None) -> None:
        self.host = host
        self.deadline = (
            Deadline(time.monotonic() + seconds, seconds, "connect_timeout + command_timeout")
            if seconds is not None
            else None
        )
        self.until = until
        ends = [
            end
            for end in (self.deadline and self.deadline.end + LATE_GRACE, until and until.end)
            if end
        ]
        self.end = min(ends) if ends else math.inf
        self.given_up = False

    def late(self, no_answer: BaseException | None) -> BaseException:
        """Its row once given up: NoAnswer when --deadline came first, else its timeout."""
        deadline, until = self.deadline, self.until
        if deadline is None or (until is not None and until.end < deadline.end + LATE_GRACE):
            return no_answer or NoAnswer("no answer")
        return deadline.reply_timeout("no answer")  # an action may still be under way


def fan_out(
    hosts: Sequence[Host],
    job: Callable[[Host], Any],
    forks: int,
    progress: Callable[[int, int], None] | None = None,
    *,
    budget: Callable[[Host], float] | None = None,
    until: Deadline | None = None,
    on_late: Callable[[Host], None] | None = None,
) -> GroupResult:
    """Run job(host) for every host, at most `forks` at a time.

    Returns a GroupResult: one bad host never stops the others. With a
    `budget`, each job runs under a Deadline of budget(host) seconds (every
    wait in the sessions gets what is left of it); a job still running
    LATE_GRACE past it becomes a HostTimeout row, on_late(host) is called
    (to close what it holds) and the fan-out goes on: the calling thread
    watches the deadlines, and a worker given up on is replaced by a fresh
    one (no thread per job: 300 of them cost ~45 ms). `until` ends the whole
    fan-out: a host not done by then is a NoAnswer. Threads are daemon
    threads, so a Ctrl-C in the main thread ends the run at once.
    progress(done, total) is called after each host, one call at a time,
    never after the return.
    """
    lock = threading.Condition()
    results: dict[str, Any | BaseException] = {}
    queue = list(reversed(hosts))
    running: list[_Running] = []
    state = {"stopped": False, "in_flight": 0}  # in_flight: popped, not yet answered
    watched = budget is not None or until is not None
    late = (
        NoAnswer(f"no answer before the deadline of {format_duration(until.seconds)}")
        if until is not None
        else None
    )

    def record(host: Host, outcome: Any) -> None:  # under the lock
        results[host.name] = outcome
        state["in_flight"] -= 1
        if progress is not None and not state["stopped"]:
            progress(len(results), len(hosts))
        lock.notify_all()

    def worker() -> None:
        while True:
            with lock:
                if state["stopped"] or not queue or (until is not None and until.remaining() <= 0):
                    return
                host = queue.pop()
                state["in_flight"] += 1
            entry = _Running(host, budget(host) if budget else None, until) if watched else None
            if entry is not None:
                with lock:
                    running.append(entry)
                    lock.notify_all()
            try:
                outcome = _call(job, host, entry.deadline if entry else None)
            except BaseException as error:  # noqa: BLE001 - SystemExit in a job: its row
                outcome = error
            with lock:
                if entry is not None:
                    if entry.given_up:
                        return  # its row is its timeout; a fresh worker took its place
                    running.remove(entry)
                record(host, outcome)

    def start_workers(count: int) -> None:
        for number in range(count):
            threading.Thread(target=worker, name=f"venusctl-{number}", daemon=True).start()

    start_workers(max(1, min(forks, len(hosts))))
    try:
        while True:
            with lock:
                while True:
                    ended = until is not None and until.remaining() <= 0
                    if len(results) >= len(hosts) or (ended and state["in_flight"] <= 0):
                        return _group_result(hosts, results, late, progress, lock, state)
                    now = time.monotonic()
                    overdue = [entry for entry in running if entry.end <= now]
                    if overdue:
                        break
                    wake = min((entry.end for entry in running), default=math.inf)
                    if until is not None:
                        wake = min(wake, until.end)
                    lock.wait(max(0.001, min(1.0, wake - now)))  # 1 s at most: Ctrl-C
                for entry in overdue:
                    running.remove(entry)
                    entry.given_up = True
            for entry in overdue:
                if on_late is not None:
                    on_late(entry.host)
            with lock:
                for entry in overdue:
                    record(entry.host, entry.late(late))
                fresh = 0 if until is not None and until.remaining() <= 0 else len(overdue)
            start_workers(min(fresh, len(queue)))
    finally:
        with lock:
            state["stopped"] = True


def _group_result(
    hosts: Sequence[Host],
    results: dict[str, Any],
    late: BaseException | None,
    progress: Callable[[int, int], None] | None,
    lock: threading.Condition,
    state: dict[str, Any],
) -> GroupResult:
    """The fan-out's outcomes in host order (called under its lock); a host never asked
    before --deadline is its NoAnswer."""
    state["stopped"] = True
    if progress is not None and len(results) < len(hosts):
        progress(len(hosts), len(hosts))  # erases the line, even when hosts are late
    return GroupResult((host.name, results.get(host.name, late)) for host in hosts)


def _call(job: Callable[[Host], Any], host: Host, deadline: Deadline | None) -> Any:
    """job(host) under `deadline`; an exception is the host's result."""
    with job_deadline(deadline):
        try:
            return job(host)
        except Exception as error:  # noqa: BLE001 - kept as that host's result
            return error


def with_session(host: Host, context: SshContext, work: Callable[[Any], Any]) -> Any:
    session = open_session(host, context)
    try:
        return work(session)
    finally:
        session.close()


class SessionPool:
    """Sessions kept open across refreshes (watch, drain, a bulk plan then its actions).

    One session per host, and for status its agent channel too, so a
    refresh over a kept stream connection is one round trip. A session
    whose SSH connection dropped is opened again on next use; a channel the
    agent closed (idle timeout) is reopened once. Fan-out threads each ask
    a different host, the lock only guards the dictionaries (and two
    threads asking one host share one connection: the keeper's clients).

    background_reconnect (watch): once a host failed to connect, later
    refreshes do not wait for it. Its last error is its row while a
    connection is tried again in a thread of its own, so one host timing
    out does not slow every frame by its connect_timeout.

    Entries are keyed by `key(host)`: the host's name here; the keeper's
    pool keys them by everything a connection depends on.
    """

    def __init__(self, context: SshContext, background_reconnect: bool = False) -> None:
        self.context = context
        self.background_reconnect = background_reconnect
        self._lock = threading.Lock()
        self._sessions: dict[Any, LocalSession | SshSession] = {}
        self._agents: dict[Any, RpcAgent | DamoclesAgent] = {}  # kept channels
        self._failures: dict[Any, BaseException] = {}
        self._connecting: dict[Any, threading.Thread] = {}
        self._closed = False

    def key(self, host: Host) -> Any:
        return host.name

    def usable(self, session: LocalSession | SshSession) -> bool:
        """May this kept session be used again? (Alive; the keeper checks more.)"""
        return session.alive()

    def session(self, host: Host) -> LocalSession | SshSession:
        key = self.key(host)
        with self._lock:
            session = self._sessions.get(key)
            failure = self._failures.get(key)
        if session is not None and self.usable(session):
            return session
        self._drop(key, session)
        if failure is not None:
            self._reconnect_in_background(host)
            raise failure
        return self._connect(host)

    def _connect(self, host: Host) -> LocalSession | SshSession:
        key = self.key(host)
        try:
            session = open_session(host, self.context)
        except Exception as error:
            if self.background_reconnect:
                with self._lock:
                    self._failures[key] = error
            raise
        with self._lock:
            self._failures.pop(key, None)
            kept = self._sessions.get(key)
            if not self._closed and (kept is None or not kept.alive()):
                self._sessions[key] = session
                return session
        session.close()  # the pool was closed meanwhile, or another thread connected first
        if kept is not None and not self._closed:
            return kept
        raise HostError("connection closed: venusctl is stopping", "closed")

    def _reconnect_in_background(self, host: Host) -> None:
        key = self.key(host)
        with self._lock:
            running = self._connecting.get(key)
            if self._closed or (running is not None and running.is_alive()):
                return
            thread = threading.Thread(
                target=self._connect_quietly, args=(host,), name=f"reconnect-{host.name}"
            )
            thread.daemon = True
            self._connecting[key] = thread
        thread.start()

    def _connect_quietly(self, host: Host) -> None:
        try:
            self._connect(host)
        except Exception:  # noqa: BLE001 - _connect kept it in _failures: the next row shows it
            return

    def run(self, host: Host, work: Callable[[Any], Any]) -> Any:
        """work(session) on the host's kept session; a dead connection is not kept."""
        session = self.session(host)
        try:
            return work(session)
        finally:
            if not session.alive():
                self._drop(self.key(host), session)

    def status(self, host: Host) -> HostStatus:
        """The host's status, through its kept agent channel when there is one."""
        with self._lock:
            agent = self._agents.pop(self.key(host), None)
        if agent is not None:
            try:
                status = agent.status()
            except HostError:
                agent.close()  # closed by the agent or the network: one fresh try below
            else:
                self._keep(host, agent)
                return status
        return self.run(host, lambda session: self._fresh_status(session, host))

    def send_ahead(self, hosts: Sequence[Host]) -> None:
        """Send the status request of every host whose agent channel is kept, now, before
        the fan-out asks them: their round trips overlap instead of each waiting for a
        fan-out thread to get to its host (the keeper's answer for 300 kept hosts: ~0.18 s
        against ~0.27 s, and 30 % less of its CPU; BENCHMARKS.md). Each fan-out of status
        sends them first, so a reply left unread (a host the fan-out never got to) is never
        taken for a later one's: its channel is closed here, as is one that cannot take the
        request at once, and a kept session no longer usable; the host's status then
        connects afresh."""
        for host in hosts:
            key = self.key(host)
            with self._lock:
                agent = self._agents.pop(key, None)
                session = self._sessions.get(key)
            if agent is None:
                continue
            if session is None or not self.usable(session):
                agent.close()
                self._drop(key, session)
            elif agent.send_status_ahead():
                self._keep(host, agent)
            else:
                agent.close()

    def _fresh_status(self, session: LocalSession | SshSession, host: Host) -> HostStatus:
        """By the transport policy, as a one-shot run; a channel is kept for the next refresh."""
        agent, refused = open_agent(session, host, for_status=True)
        try:
            status = agent_status(agent, refused)
        except BaseException:
            agent.close()
            raise
        if isinstance(agent, CliAgent):
            agent.close()  # each refresh asks again: the stream may open by then
        else:
            self._keep(host, agent)
        return status

    def perform_all(self, host: Host, actions: Sequence[Action]) -> list[ActionOutcome]:
        """perform_all on the host's kept session; a damocles-worker's kept channel is used
        again (one channel for the whole run: its server never closes an idle one)."""
        key = self.key(host)
        with self._lock:
            agent = self._agents.get(key)
            if isinstance(agent, DamoclesAgent):
                del self._agents[key]
        if not isinstance(agent, DamoclesAgent):
            return self.run(host, lambda session: perform_all(session, host, actions))
        outcomes = act_all(agent, actions)
        self._keep(host, agent)
        return outcomes

    def _keep(self, host: Host, agent: RpcAgent | DamoclesAgent) -> None:
        with self._lock:
            replaced = self._agents.get(self.key(host))
            self._agents[self.key(host)] = agent
        if replaced is not None and replaced is not agent:
            replaced.close()  # another thread kept one for this host meanwhile

    def forget(self, host: Host) -> None:
        self._forget_key(self.key(host))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            keys = list(self._sessions) + list(self._agents)
        for key in dict.fromkeys(keys):
            self._forget_key(key)

    def _drop(self, key: Any, session: LocalSession | SshSession | None) -> None:
        """Forget `session` (and its kept channel) if it is still the one kept for `key`:
        another thread may have put a fresh one there since."""
        if session is None:
            return
        with self._lock:
            if self._sessions.get(key) is not session:
                return
            del self._sessions[key]
            agent = self._agents.pop(key, None)
        _close_host(agent, session)

    def _forget_key(self, key: Any) -> None:
        with self._lock:
            agent = self._agents.pop(key, None)
            session = self._sessions.pop(key, None)
        _close_host(agent, session)


def _close_host(agent: Any, session: LocalSession | SshSession | None) -> None:
    """Close a host's kept agent channel and its session. Over SSH the channel ends with
    its connection: closed first, it would send two packets (EOF and CLOSE) for nothing;
    that was 90 of the 130-170 ms a cold 300-host run spent closing before it exited."""
    if agent is not None and not isinstance(session, SshSession):
        agent.close()
    if session is not None:
        session.close()


# =============================================================================
# The keeper: connections kept between runs (OpenSSH's ControlPersist, for a fleet)
# =============================================================================
#
# A per-user background process, started by the first run that needs it and ending
# after `persist` without a request, holds the SSH connections (and the agents'
# stream channels) of the hosts it served. A later run of the same user sends it,
# for each fan-out, the hosts it already resolved (Host, SshTarget, its budget, the
# operation's arguments); the keeper runs the same fan_out over the same SessionPool
# and open_agent code and streams back the typed results, which the run renders as
# if it had asked the hosts itself. So a warm run connects nothing, imports no
# paramiko, and says exactly what a cold one would.
#
# Where: $XDG_RUNTIME_DIR/venusctl/keeper.sock (else /run/user/UID/venusctl when
# logind made it, else $TMPDIR/venusctl-UID), in a folder of the user's own that no
# one else may write (refused otherwise), the socket 0600 (made under umask 0177);
# each side checks the other's uid with SO_PEERCRED and refuses any other user.
#
# Safe by construction: a connection is kept under everything it depends on (Host
# and SshTarget: address, port, user, keys, known_hosts files, jump chain, options),
# so any change of those in the inventory or ssh_config makes another connection
# (and the old one of that inventory's host is dropped at once); known_hosts files,
# key and certificate files are looked at (inode, size, mtime) on each request and a
# connection checked against an older version of them is dropped, so every new
# connection runs the full host key check. A host key is checked when a connection
# is made, never remembered. The keeper holds no key: it reads key files and asks
# ssh-agent only while it authenticates, as a run does, and forwards nothing.
#
# The wire (PROTOCOL below), one JSON object a line, one request per connection:
#
#   client -> keeper  {"keeper": 1, "version": V, "code": C}          hello
#   keeper -> client  {"keeper": 1, "version": V, "code": C, "pid": P}
#   client -> keeper  {"op": "run", "operation": "status", "hosts": [[HOST, TARGET,
#                      BUDGET, PARAMS], ...], "forks": 50, "until": [LEFT, SECONDS] or
#                      null, "persist": 600.0, "inventory": PATH, "debug": false,
#                      "actor": "alice@ctl"}
#                   | {"op": "info"} | {"op": "stop", "reason": TEXT}
#   keeper -> client  {"tick": N} every KEEPER_TICK while it works; {"start": I} before
#                      host I's operation begins (operations that act); {"done": I,
#                      "result": VALUE} as each host ends; {"end": true} last;
#                   | {"info": {...}} | {"stopping": true} | {"error": TEXT}
#
# VALUE is to_wire()'s typed JSON (HostStatus, ActionOutcome, api values, HostError
# with its class, kind and fields). A keeper of another protocol, version or code
# (a hash of this file and worker_agent/api.py) is asked to stop and replaced.
#
# Never in the way: the client gives a keeper KEEPER_HELLO_TIMEOUT to answer and
# KEEPER_SILENCE between two lines; a keeper that is absent (health never starts
# one), wedged or gone mid-run is left, and the hosts it did not answer are asked
# by the run itself, within their own deadlines. An operation that acts is never
# sent twice: a host whose action had started in a lost keeper is "no reply, may
# still take effect", as a lost SSH connection would be.


KEEPER_PROTOCOL = 1
PERSIST_ENV = "VENUSCTL_PERSIST"  # a duration, or 0: overrides [defaults] persist (cron, tests)
DEFAULT_PERSIST = 600.0  # [defaults] persist = "10m"
KEEPER_HELLO_TIMEOUT = 0.5  # connect + hello: a keeper slower than this is wedged for this run
KEEPER_START_WAIT = 3.0  # a keeper just started gets this long to listen, else the run goes on
KEEPER_SILENCE = 2.0  # no line for this long during a request: the keeper is wedged
KEEPER_TICK = 0.25
KEEPER_REQUEST_TIMEOUT = 10.0  # the keeper waits this long for a client's request line
KEEPER_KEEPALIVE = 15  # seconds: SSH keepalives on kept connections (unless ServerAliveInterval)
KEEPER_TCP_USER_TIMEOUT_MS = 20000  # a kept connection whose data goes unacknowledged dies
KEEPER_LOG_BYTES = 1 << 20  # keeper.log is rotated (to keeper.log.1) past this size
MAX_KEEPER_LINE = 64 << 20


class KeeperUnavailable(Exception):
    """Why this run cannot use a keeper (a folder or socket it must not trust): it says so
    on stderr and connects itself."""


def persist_seconds(inventory: Inventory, environ: Mapping[str, str], no_persist: bool) -> float:
    """--no-persist, else $VENUSCTL_PERSIST, else [defaults] persist, else 10m; 0: no keeper."""
    if no_persist:
        return 0.0
    text = environ.get(PERSIST_ENV, "").strip()
    if text:
        try:
            return parse_duration(text)
        except ValueError as error:
            raise UsageError(f"${PERSIST_ENV}: {error}") from None
    return DEFAULT_PERSIST if inventory.persist is None else inventory.persist


@dataclass(frozen=True)
class KeeperPaths:
    folder: Path

    @property
    def socket(self) -> Path:
        return self.folder / "keeper.sock"

    @property
    def lock(self) -> Path:
        return self.folder / "keeper.lock"  # held by the keeper; its pid inside

    @property
    def log(self) -> Path:
        return self.folder / "keeper.log"


def _private_folder(path: Path, what: str) -> None:
    """Refuse a folder that is not ours, or that another user can write (who could put
    another socket there), as OpenSSH's StrictModes refuses such a ~/.ssh."""
    try:
        found = os.lstat(path)
    except OSError as error:
        raise KeeperUnavailable(f"{what} {path}: {error.strerror}") from None
    if not stat.S_ISDIR(found.st_mode):
        raise KeeperUnavailable(f"{what} {path} is not a folder")
    if found.st_uid != os.getuid():
        raise KeeperUnavailable(f"{what} {path} belongs to uid {found.st_uid}, not to you")
    if found.st_mode & 0o022:
        mode = oct(found.st_mode & 0o777)
        raise KeeperUnavailable(f"{what} {path} is writable by others (mode {mode})")


def keeper_paths(environ: Mapping[str, str], make: bool = True) -> KeeperPaths:
    """This user's keeper folder, made 0700 if missing (unless not `make`: a run that will
    start no keeper leaves nothing behind), checked when it is there."""
    uid = os.getuid()
    runtime = environ.get("XDG_RUNTIME_DIR", "")
    logind = Path(f"/run/user/{uid}")
    if runtime and os.path.isabs(runtime):
        _private_folder(Path(runtime), "XDG_RUNTIME_DIR")
        folder = Path(runtime) / "venusctl"
    elif logind.is_dir() and os.stat(logind).st_uid == uid:
        _private_folder(logind, "runtime folder")
        folder = logind / "venusctl"
    else:
        import tempfile

        folder = Path(tempfile.gettempdir()) / f"venusctl-{uid}"
    if make:
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder, 0o700)
    if make or os.path.lexists(folder):
        _private_folder(folder, "keeper folder")
    paths = KeeperPaths(folder)
    if len(os.fsencode(paths.socket)) > 107:
        raise KeeperUnavailable(f"keeper socket path {paths.socket} is too long for a socket")
    return paths


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket (Linux SO_PEERCRED)."""
    import struct

    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", data)


@functools.lru_cache(maxsize=1)
def keeper_code() -> str:
    """What a keeper must run to serve this run: a checksum of this file and the api
    module. Only the same user can start a keeper, so it tells versions apart and needs
    no cryptographic hash: CRC-32 (zlib comes with argparse) where SHA-256 cost each warm
    run hashlib's import and ~1 ms over 600 KB."""
    import zlib

    checksum = 0
    for path in (__file__, api.__file__):
        with open(path, "rb") as source:
            text = source.read()
        checksum = zlib.crc32(len(text).to_bytes(8, "big") + text, checksum)
    return f"crc32-{checksum:08x}"


def keeper_hello() -> dict[str, Any]:
    return {"keeper": KEEPER_PROTOCOL, "version": __version__, "code": keeper_code()}


class _Lines:
    """JSON lines on a connected Unix socket, one object a line each way; sends are
    serialised (the keeper's job threads, its ticker)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = b""
        self._send_lock = threading.Lock()

    def send(self, document: Any) -> None:
        data = json.dumps(document, separators=(",", ":")).encode() + b"\n"
        with self._send_lock:
            self.sock.sendall(data)

    def receive(self, timeout: float) -> Any:
        """The next object; None at end of stream; TimeoutError when none came in time."""
        end = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            if len(self._buffer) > MAX_KEEPER_LINE:
                raise ValueError("line too long")
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError("no line in time")
            self.sock.settimeout(left)
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def close(self) -> None:
        self.sock.close()


# -- values on the keeper's wire: typed JSON both ways ------------------------------------------


# The dataclasses a value may hold: any of this file's or of worker_agent.api's, so an
# operation with a new one needs nothing here. Each goes as its class name and its fields
# in order: the keeper made it with this very code (its hello says so), and no name is a
# dataclass of both modules (a test checks), so the name says which.
def _is_wire_class(kind: Any) -> bool:
    return (
        isinstance(kind, type)
        and dataclasses.is_dataclass(kind)
        and kind.__module__ in (__name__, api.__name__)
    )


@functools.cache
def _wire_fields(kind: type) -> tuple[str, ...] | None:
    if not _is_wire_class(kind):
        return None
    return tuple(spec.name for spec in dataclasses.fields(kind))


@functools.cache  # a name that is not a wire class raises, and is not kept
def _wire_class(name: str) -> type:
    cls = globals().get(name)
    if not _is_wire_class(cls):
        cls = getattr(api, name, None)
    if not _is_wire_class(cls):
        raise ValueError(f"not a value the keeper carries: {name}")
    return cls


_PLAIN = frozenset((type(None), bool, int, float, str))


def to_wire(value: Any, tracebacks: bool = False) -> Any:
    """`value` (an operation's argument or result) as JSON that from_wire makes it again."""
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind is list:
        return [to_wire(item, tracebacks) for item in value]
    names = _wire_fields(kind)
    if names is not None:
        # Most fields are plain: taken as they are here, not through a call each.
        fields = [getattr(value, name) for name in names]
        return {
            "dc": kind.__name__,
            "v": [v if type(v) in _PLAIN else to_wire(v, tracebacks) for v in fields],
        }
    if isinstance(value, enum.Enum):
        return {"enum": kind.__name__, "v": value.value}
    if isinstance(value, BaseException):
        return {"!": _error_to_wire(value, tracebacks)}
    if kind is tuple:
        return {"()": [to_wire(item, tracebacks) for item in value]}
    if kind is dict and all(type(key) is str for key in value):
        return {"{}": {key: to_wire(item, tracebacks) for key, item in value.items()}}
    if kind is re.Pattern:  # a selector's --error-match
        return {"re": [value.pattern, value.flags]}
    raise TypeError(f"the keeper cannot carry a {kind.__name__}")


def from_wire(value: Any) -> Any:
    kind = type(value)
    if kind is list:
        return [from_wire(item) for item in value]
    if kind is not dict:
        return value
    if "dc" in value:
        cls = _wire_class(value["dc"])
        items = value["v"]
        return cls(*[v if type(v) in _PLAIN else from_wire(v) for v in items])
    if "enum" in value:
        cls = getattr(api, value["enum"], None) or globals().get(value["enum"])
        if not (isinstance(cls, type) and issubclass(cls, enum.Enum)):
            raise ValueError(f"not an enum: {value['enum']}")
        return cls(value["v"])
    if "!" in value:
        return _error_from_wire(value["!"])
    if "()" in value:
        return tuple(from_wire(item) for item in value["()"])
    if "{}" in value:
        return {key: from_wire(item) for key, item in value["{}"].items()}
    if "re" in value:
        pattern, flags = value["re"]
        return re.compile(str(pattern), int(flags))
    raise ValueError(f"unreadable keeper value: {str(value)[:80]}")


def _error_to_wire(error: BaseException, tracebacks: bool) -> dict[str, Any]:
    import traceback

    document: dict[str, Any] = {"type": type(error).__name__, "message": str(error)}
    if isinstance(error, HostError):
        # Its fields (kind, code, seconds, stream and fallback ...) make it whole again.
        document["fields"] = {
            name: to_wire(item) for name, item in vars(error).items() if name != "remote_traceback"
        }
    else:
        document["unexpected"] = True
    if tracebacks:
        document["traceback"] = getattr(error, "remote_traceback", None) or "".join(
            traceback.format_exception(error)
        )
    return document


def _host_error_classes() -> dict[str, type]:
    found: dict[str, type] = {}
    pending = [HostError]
    while pending:
        cls = pending.pop()
        found.setdefault(cls.__name__, cls)
        pending.extend(cls.__subclasses__())
    return found


_UNEXPECTED: dict[str, type] = {}


def _error_from_wire(document: dict[str, Any]) -> BaseException:
    """The exception as it was raised in the keeper: its class, message and fields; an
    unexpected one (a bug) keeps its type's name, as `internal error: ...` shows it."""
    name, message = str(document["type"]), str(document["message"])
    if document.get("unexpected"):
        cls = _UNEXPECTED.setdefault(name, type(name, (Exception,), {}))
        error: BaseException = cls(message)
    else:
        cls = _host_error_classes().get(name, HostError)
        error = cls.__new__(cls)
        Exception.__init__(error, message)
        for field_name, item in document.get("fields", {}).items():
            setattr(error, field_name, from_wire(item))
    if "traceback" in document:
        error.remote_traceback = str(document["traceback"])  # type: ignore[attr-defined]
    return error


_HOST_FIELDS = tuple(spec.name for spec in dataclasses.fields(Host))
_TARGET_FIELDS = tuple(spec.name for spec in dataclasses.fields(SshTarget))
_TARGET_PATHS = ("identity_files", "certificate_files", "user_known_hosts", "global_known_hosts")


def _host_to_wire(host: Host) -> list[Any]:
    # typed like any value (groups and sector_numbers are tuples: a Host must stay hashable)
    return [to_wire(getattr(host, name)) for name in _HOST_FIELDS]


def _host_fields(values: Sequence[Any]) -> dict[str, Any]:
    return {name: from_wire(value) for name, value in zip(_HOST_FIELDS, values, strict=True)}


def _absolute(path: str | None) -> str | None:
    return path if path is None or os.path.isabs(path) else os.path.abspath(path)


def _target_to_wire(target: SshTarget) -> list[Any]:
    """The target as the keeper must see it: paths made absolute (the keeper runs in /)."""
    values = {name: getattr(target, name) for name in _TARGET_FIELDS}
    for name in _TARGET_PATHS:
        values[name] = [_absolute(path) for path in values[name]]
    values["identity_agent"] = _absolute(target.identity_agent)
    values["via"] = _target_to_wire(target.via) if target.via is not None else None
    return [values[name] for name in _TARGET_FIELDS]


def _target_from_wire(values: Sequence[Any]) -> SshTarget:
    fields = dict(zip(_TARGET_FIELDS, values, strict=True))
    for name in _TARGET_PATHS:
        fields[name] = tuple(fields[name])
    fields["via"] = _target_from_wire(fields["via"]) if fields["via"] is not None else None
    return SshTarget(**fields)


# -- operations: what a fan-out asks of each host, here or in the keeper ----------------------


@dataclass(frozen=True)
class Operation:
    """A host job as plain data: run(pool, host, *params) on any SessionPool (the run's, or
    the keeper's). `repeatable`: a read, asked again when a keeper is lost mid-run; an
    operation that acts is never sent twice."""

    run: Callable[..., Any]
    repeatable: bool
    # What the pool does for all the hosts at once before the fan-out runs `run` on each.
    ahead: Callable[[Any, Sequence[Host]], None] | None = None


# What a run may ask of a host through the keeper, by name. The pool's own jobs are here;
# every other one is a work(session, host, *params) function made an operation where it is
# defined, by @host_operation (the commands' sections below).
OPERATIONS: dict[str, Operation] = {
    # through the host's kept agent channel, when there is one
    "status": Operation(
        lambda pool, host: pool.status(host),
        repeatable=True,
        ahead=lambda pool, hosts: pool.send_ahead(hosts),
    ),
    "perform_all": Operation(lambda pool, host, actions: pool.perform_all(host, actions), False),
}


def host_operation(
    name: str, repeatable: bool = True
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Make work(session, host, *params) the operation `name` (a decorator; the function is
    left as it is): run on the host's kept session of the pool that asks, this run's or the
    keeper's. A command asks it with ctx.ask(hosts, name, *params), which goes through the
    keeper when the run has one, as list does.

    The params and the result must be what to_wire carries (plain values, lists, tuples,
    str-keyed dicts, enums, compiled patterns, dataclasses of this file or of api, a
    HostError); `repeatable`: a read, which the run asks again itself when a keeper is
    lost mid-run; False for one that acts (never sent twice)."""

    def register(work: Callable[..., Any]) -> Callable[..., Any]:
        if name in OPERATIONS:
            raise ValueError(f"operation {name!r} defined twice")

        def run(pool: SessionPool, host: Host, *params: Any) -> Any:
            return pool.run(host, lambda session: work(session, host, *params))

        OPERATIONS[name] = Operation(run, repeatable)
        return work

    return register


host_operation("perform", repeatable=False)(perform)


class HostCall:
    """One operation for each host of a fan-out: OPERATIONS[operation] on `pool`, with
    params[host name] as a host's arguments, else `same`. Called with a host it runs here;
    Context.fan_out sends it to the keeper when there is one."""

    def __init__(
        self,
        pool: Any,
        operation: str,
        params: Mapping[str, Sequence[Any]] | None = None,
        same: Sequence[Any] = (),
    ) -> None:
        if operation not in OPERATIONS:
            raise ValueError(f"no operation {operation!r} (see host_operation)")
        self.pool = pool
        self.operation = operation
        self.params = params or {}
        self.same = tuple(same)

    @property
    def repeatable(self) -> bool:
        return OPERATIONS[self.operation].repeatable

    def args(self, host: Host) -> tuple[Any, ...]:
        given = self.params.get(host.name)
        return self.same if given is None else tuple(given)

    def __call__(self, host: Host) -> Any:
        return OPERATIONS[self.operation].run(self.pool, host, *self.args(host))

    def send_ahead(self, hosts: Sequence[Host]) -> None:
        """The operation's `ahead` for these hosts, before they are asked one by one."""
        ahead = OPERATIONS[self.operation].ahead
        if ahead is not None:
            ahead(self.pool, hosts)


# -- the keeper's side ---------------------------------------------------------------------


@dataclass(frozen=True)
class KeptHost(Host):
    """A host as the keeper holds it: with the SshTarget its client resolved. Equal only
    to the same host reached the same way: the key of its kept connection."""

    ssh_target: SshTarget | None = None


def file_identity(path: str) -> tuple[int, ...] | None:
    """(device, inode, size, mtime) of a file; None when it cannot be looked at."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return (found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns)


class _KeptKnownHostsFile(KnownHostsFile):
    """A known_hosts file as the keeper read it: with the identity it had then. The
    keeper's own accept-new append keeps it (nothing else changed in the file)."""

    def __init__(self, path: str, generation: int) -> None:
        self.identity = file_identity(path)
        self.generation = generation
        super().__init__(path)

    def append(self, name: str, key_type: str, blob: bytes, hashed: bool) -> None:
        before = file_identity(self.path)
        super().append(name, key_type, blob, hashed)
        if before == self.identity:
            self.identity = file_identity(self.path)


def _key_files(target: SshTarget) -> list[str]:
    files = [*target.certificate_files]
    for path in target.identity_files:
        files += [path, f"{path}.pub", f"{path}-cert.pub"]
    return files


class KeeperSsh(SshContext):
    """The keeper's SSH state: targets as its clients resolved them, known_hosts files
    read again once they change, and each connection with the verdict inputs it was
    made with (known_hosts readings, key file identities), for `trusted`."""

    def __init__(self, environ: Mapping[str, str], log: Callable[[str], None]) -> None:
        super().__init__(environ)
        self.log = log
        self._readings: dict[str, _KeptKnownHostsFile] = {}
        self._files: dict[str, tuple[int, ...] | None] = {}
        self._jump_used: dict[SshTarget, float] = {}

    def private_key(self, path: str) -> Any:
        """Read for each connection: the keeper holds no key beyond its live transports."""
        return load_private_key(path)

    def target(self, host: Host) -> SshTarget:
        if isinstance(host, KeptHost) and host.ssh_target is not None:
            return host.ssh_target
        return super().target(host)

    @staticmethod
    def _chain(target: SshTarget) -> list[SshTarget]:
        return [*target.jump_hops, target]

    def refresh(self, targets: Sequence[SshTarget]) -> None:
        """Look at every known_hosts, key and certificate file of these targets once: a
        changed known_hosts file is read again (a new generation)."""
        known: set[str] = set()
        files: set[str] = set()
        for target in targets:
            for hop in self._chain(target):
                known.update(hop.user_known_hosts, hop.global_known_hosts)
                files.update(_key_files(hop))
        identities = {path: file_identity(path) for path in files}
        with self._lock:
            self._files.update(identities)
        for path in known:
            self._reading(path, fresh=True)

    def _reading(self, path: str, fresh: bool = False) -> _KeptKnownHostsFile:
        with self._lock:
            reading = self._readings.get(path)
        if reading is not None and (not fresh or file_identity(path) == reading.identity):
            return reading
        generation = reading.generation + 1 if reading is not None else 1
        new = _KeptKnownHostsFile(path, generation)
        with self._lock:
            current = self._readings.get(path)
            if current is reading:
                self._readings[path] = current = new
        if reading is not None and current is new:
            self.log(f"{path} changed: connections checked against it are dropped")
        return current

    def known_hosts(self, target: SshTarget) -> KnownHosts:
        return KnownHosts(
            [self._reading(path) for path in target.user_known_hosts],
            [self._reading(path) for path in target.global_known_hosts],
        )

    def verdict(self, target: SshTarget) -> tuple[Any, ...]:
        """What a host key check and the authentication of `target` (and its jump hosts)
        read: the generation of each known_hosts file, the identity of each key file."""
        inputs: list[Any] = []
        for hop in self._chain(target):
            for path in (*hop.user_known_hosts, *hop.global_known_hosts):
                inputs.append((path, self._reading(path).generation))
            with self._lock:
                missing = [path for path in _key_files(hop) if path not in self._files]
            for path in missing:
                identity = file_identity(path)
                with self._lock:
                    self._files.setdefault(path, identity)
            with self._lock:
                inputs += [(path, self._files[path]) for path in _key_files(hop)]
        return tuple(inputs)

    def trusted(self, transport: Any) -> bool:
        """Was this connection made against the known_hosts and key files as they are now?"""
        made = getattr(transport, "venusctl_verdict", None)
        return made is None or made[1] == self.verdict(made[0])

    def open_transport(self, target: SshTarget, deadline: Deadline) -> Any:
        verdict = self.verdict(target)  # before the check reads the files
        transport = super().open_transport(target, deadline)
        transport.venusctl_verdict = (target, verdict)
        if not target.server_alive_interval:
            # Keepalives keep a NAT's state and find a host that went away without a word.
            transport.set_keepalive(KEEPER_KEEPALIVE)
        sock = transport.sock
        if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(
                    socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, KEEPER_TCP_USER_TIMEOUT_MS
                )
        route = f" via {target.route}" if target.route else ""
        self.log(f"connected {target.user}@{target.dest}{route}")
        return transport

    def jump_transport(self, hop: SshTarget, deadline: Deadline) -> Any:
        with self._lock:
            shared = self._jumps.get(hop)
            self._jump_used[hop] = time.monotonic()
        stale = (
            shared is not None
            and shared.ready.is_set()
            and shared.transport is not None
            and not self.trusted(shared.transport)
        )
        if stale:
            with self._lock:
                if self._jumps.get(hop) is shared:
                    del self._jumps[hop]
            self.log(f"jump host {hop.label}: its known_hosts or keys changed: connection dropped")
            shared.transport.close()
        return super().jump_transport(hop, deadline)

    def jumps(self) -> list[tuple[SshTarget, Any]]:
        with self._lock:
            return [
                (hop, shared.transport)
                for hop, shared in self._jumps.items()
                if shared.transport is not None
            ]

    def reap_jumps(self, idle: float, in_use: set[SshTarget]) -> None:
        """Close the jump host connections no kept connection rides on, unused for `idle`."""
        now = time.monotonic()
        with self._lock:
            idle_hops = [
                hop
                for hop in self._jumps
                if hop not in in_use and now - self._jump_used.get(hop, now) >= idle
            ]
            dropped = [self._jumps.pop(hop) for hop in idle_hops]
        for hop, shared in zip(idle_hops, dropped, strict=True):
            if shared.transport is not None:
                self.log(f"jump host {hop.label}: unused for {format_duration(idle)}: closed")
                shared.transport.close()


class KeeperPool(SessionPool):
    """The keeper's sessions, kept under the KeptHost (Host and SshTarget) they were made
    for; a session is used again only while alive and `trusted` (same known_hosts and key
    files), and closed after `persist` unused."""

    context: KeeperSsh

    def __init__(self, context: KeeperSsh) -> None:
        super().__init__(context)
        self._since: dict[KeptHost, float] = {}
        self._used: dict[KeptHost, float] = {}

    def key(self, host: Host) -> Any:
        return host

    def usable(self, session: LocalSession | SshSession) -> bool:
        if not session.alive():
            return False
        if isinstance(session, SshSession) and not self.context.trusted(session.transport):
            self.context.log(
                f"{session.host.name}: its known_hosts or key files changed: connection dropped"
            )
            return False
        return True

    def _touch(self, host: Host) -> None:
        now = time.time()
        with self._lock:
            self._used[host] = time.monotonic()
            self._since.setdefault(host, now)
        with self._lock:
            session = self._sessions.get(host)
        if session is not None and not self.usable(session):
            self._drop(host, session)

    def status(self, host: Host) -> HostStatus:
        self._touch(host)
        return super().status(host)

    def perform_all(self, host: Host, actions: Sequence[Action]) -> list[ActionOutcome]:
        self._touch(host)
        return super().perform_all(host, actions)

    def run(self, host: Host, work: Callable[[Any], Any]) -> Any:
        self._touch(host)
        return super().run(host, work)

    def _forget_key(self, key: Any) -> None:
        with self._lock:
            self._since.pop(key, None)
            self._used.pop(key, None)
        super()._forget_key(key)

    def reap(self, idle: float) -> int:
        """Close the sessions unused for `idle` seconds; how many."""
        now = time.monotonic()
        with self._lock:
            old = [key for key, used in self._used.items() if now - used >= idle]
        for key in old:
            self._forget_key(key)
        return len(old)

    def entries(self) -> list[dict[str, Any]]:
        """The kept connections, for `venusctl keeper`."""
        now, clock = time.time(), time.monotonic()
        with self._lock:
            sessions = dict(self._sessions)
            agents = set(self._agents)
            since, used = dict(self._since), dict(self._used)
        rows = []
        for key, session in sessions.items():
            target = key.ssh_target
            rows.append(
                {
                    "host": key.name,
                    "user": target.user if target else None,
                    "dest": target.dest if target else key.dest,
                    "jump": target.route if target else None,
                    "alive": session.alive(),
                    "channel": key in agents,
                    "connected": round(since.get(key, now), 3),
                    "idle": round(clock - used.get(key, clock), 3),
                }
            )
        return sorted(rows, key=lambda row: (row["host"], row["dest"]))

    def in_use_hops(self) -> set[SshTarget]:
        with self._lock:
            keys = list(self._sessions)
        return {hop for key in keys if key.ssh_target for hop in key.ssh_target.jump_hops}


class Keeper:
    """The keeper process: its socket, its pool, its clients (one thread each), its reaper."""

    def __init__(self, paths: KeeperPaths, environ: Mapping[str, str]) -> None:
        self.paths = paths
        self.ssh = KeeperSsh(environ, self.log)
        self.pool = KeeperPool(self.ssh)
        self.persist = DEFAULT_PERSIST
        self.started = time.time()
        self.last_request = time.monotonic()
        self.busy = 0
        self.requests = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.stop_reason = ""
        self.origins: dict[tuple[str, str], KeptHost] = {}

    @staticmethod
    def log(message: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        sys.stderr.write(f"{stamp} venusctl keeper[{os.getpid()}]: {escape_text(message)}\n")
        sys.stderr.flush()

    def stop(self, reason: str) -> None:
        if not self.stopping.is_set():
            self.stop_reason = reason
            self.stopping.set()

    def serve(self, listener: socket.socket) -> None:
        threading.Thread(target=self._reaper, name="keeper-reaper", daemon=True).start()
        listener.settimeout(0.5)
        while not self.stopping.is_set():
            try:
                conn, _ = listener.accept()
            except (TimeoutError, InterruptedError):
                continue
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    def _reaper(self) -> None:
        while not self.stopping.wait(1.0):
            closed = self.pool.reap(self.persist)
            if closed:
                unused = format_duration(self.persist)
                self.log(f"closed {_plural(closed, 'connection')} unused for {unused}")
            self.ssh.reap_jumps(self.persist, self.pool.in_use_hops())
            with self.lock:
                idle = self.busy == 0 and time.monotonic() - self.last_request >= self.persist
            if idle:
                self.stop(f"no request for {format_duration(self.persist)}")

    def _client(self, conn: socket.socket) -> None:
        lines = _Lines(conn)
        try:
            pid, uid, _ = peer_credentials(conn)
            if uid != os.getuid():
                self.log(f"refused a connection from uid {uid} (pid {pid}): not this keeper's user")
                lines.send({"error": f"refused: this keeper serves uid {os.getuid()} only"})
                return
            hello = lines.receive(KEEPER_REQUEST_TIMEOUT)
            lines.send({**keeper_hello(), "pid": os.getpid()})
            request = lines.receive(KEEPER_REQUEST_TIMEOUT) if hello is not None else None
            if isinstance(request, dict):
                self._answer(lines, request)
        except (OSError, ValueError, TimeoutError) as error:
            self.log(f"client: {error}")
        finally:
            conn.close()

    def _answer(self, lines: _Lines, request: dict[str, Any]) -> None:
        op = request.get("op")
        if op == "stop":
            lines.send({"stopping": True})
            self.stop(str(request.get("reason") or "asked to stop"))
        elif op == "info":
            lines.send({"info": self.info()})
        elif op == "run":
            with self.lock:
                self.busy += 1
                self.requests += 1
            try:
                self._run(lines, request)
            except (KeyError, TypeError, ValueError) as error:
                lines.send({"error": f"bad request: {type(error).__name__}: {error}"})
            finally:
                with self.lock:
                    self.busy -= 1
                    self.last_request = time.monotonic()
        else:
            lines.send({"error": f"unknown op {op!r}"})

    def info(self) -> dict[str, Any]:
        with self.lock:
            idle = 0.0 if self.busy else time.monotonic() - self.last_request
        return {
            **keeper_hello(),
            "pid": os.getpid(),
            "socket": str(self.paths.socket),
            "started": round(self.started, 3),
            "idle": round(idle, 3),
            "persist": self.persist,
            "requests": self.requests,
            "connections": self.pool.entries(),
            "jumps": [
                {"host": hop.label, "user": hop.user, "alive": transport.is_active()}
                for hop, transport in self.ssh.jumps()
            ],
        }

    def _adopt(self, origin: str, hosts: Sequence[KeptHost]) -> None:
        """An inventory's host now reached another way (its entry or ssh_config changed):
        its old connection is dropped, unless another inventory still uses it."""
        for host in hosts:
            with self.lock:
                old = self.origins.get((origin, host.name))
                self.origins[(origin, host.name)] = host
                changed = old is not None and old != host
                shared = changed and old in self.origins.values()
            if changed and not shared:
                self.log(f"{host.name} ({origin}): reached another way now: old connection dropped")
                self.pool.forget(old)

    def _run(self, lines: _Lines, request: dict[str, Any]) -> None:
        operation = OPERATIONS[request["operation"]]
        self.persist = float(request["persist"])
        entries = request["hosts"]
        hosts = [
            KeptHost(**_host_fields(entry[0]), ssh_target=_target_from_wire(entry[1]))
            for entry in entries
        ]
        position = {host.name: index for index, host in enumerate(hosts)}
        budgets = {host.name: float(entry[2]) for host, entry in zip(hosts, entries, strict=True)}
        params = {
            host.name: from_wire(entry[3]) for host, entry in zip(hosts, entries, strict=True)
        }
        until = None
        if request.get("until") is not None:
            left, seconds = request["until"]
            until = Deadline(time.monotonic() + float(left), float(seconds), "deadline")
        tracebacks = bool(request.get("debug"))
        actor = str(request.get("actor") or "") or None  # the run's, not the keeper's own
        self.ssh.refresh([host.ssh_target for host in hosts])
        self._adopt(str(request.get("inventory", "")), hosts)
        answered: set[int] = set()  # hosts whose job sent its result line
        given_up: set[int] = set()  # hosts fan_out gave up on: its timeout is their result
        state = {"gone": False}
        lock = threading.Lock()

        def send(document: Any) -> bool:
            if state["gone"]:
                return False
            try:
                lines.send(document)
                return True
            except OSError:
                state["gone"] = True  # the client left (Ctrl-C): the jobs under way finish
                return False

        def answer(index: int, value: Any) -> None:
            with lock:
                if index in given_up:
                    return
                answered.add(index)
            send({"done": index, "result": to_wire(value, tracebacks)})

        def job(host: KeptHost) -> Any:
            index = position[host.name]
            if not operation.repeatable and not send({"start": index}):
                raise HostError("not sent: venusctl stopped waiting", "closed")
            try:
                _REQUEST_ACTOR.name = actor
                value = operation.run(self.pool, host, *params[host.name])
            except Exception as error:  # noqa: BLE001 - the host's result, as in fan_out
                value = error
            finally:
                _REQUEST_ACTOR.name = None
            answer(index, value)
            return value

        def late(host: Host) -> None:
            with lock:
                given_up.add(position[host.name])
            self.pool.forget(host)

        finished = threading.Event()

        def ticker() -> None:
            count = 0
            while not finished.wait(KEEPER_TICK):
                count += 1
                if not send({"tick": count}):
                    return

        threading.Thread(target=ticker, name="keeper-ticker", daemon=True).start()
        if operation.ahead is not None:
            _REQUEST_ACTOR.name = actor
            try:
                operation.ahead(self.pool, hosts)
            finally:
                _REQUEST_ACTOR.name = None
        try:
            outcomes = fan_out(
                hosts,
                job,
                int(request.get("forks", 50)),
                budget=lambda host: budgets[host.name],
                until=until,
                on_late=late,
            )
        finally:
            finished.set()
        for host in hosts:
            with lock:
                unanswered = position[host.name] not in answered
            if unanswered:
                result = to_wire(outcomes[host.name], tracebacks)
                send({"done": position[host.name], "result": result})
        send({"end": True})


def keeper_main(folder: str, detach: bool = False) -> int:
    """The keeper process (started by KeeperClient through KEEPER_BOOT): one per user and
    folder (a lock), listening until stopped or idle for `persist`. `detach`: fork first,
    so the keeper (out of the run's session since Popen's setsid) is no child of the run
    and can never get a terminal: the run reaps the parent, init the keeper."""
    import fcntl
    import signal

    if detach and os.fork():
        os._exit(0)
    collect_less_often()
    paths = KeeperPaths(Path(folder))
    log = Keeper.log
    lock = os.open(paths.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + 5.0  # a keeper being replaced is still closing its sockets
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                log("another keeper holds the lock: exiting")
                return 0
            time.sleep(0.05)
    try:
        _private_folder(paths.folder, "keeper folder")
    except KeeperUnavailable as problem:
        log(f"not starting: {problem}")
        return 1
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(paths.socket).st_mode):
            os.unlink(paths.socket)  # a keeper that died left it
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        listener.bind(str(paths.socket))
    finally:
        os.umask(old_umask)
    listener.listen(64)
    bound = os.stat(paths.socket).st_ino
    os.ftruncate(lock, 0)
    os.write(lock, f"{os.getpid()}\n".encode())
    keeper = Keeper(paths, os.environ)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, _: keeper.stop(signal.Signals(number).name))
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    log(f"listening on {paths.socket} (venusctl {__version__}, code {keeper_code()})")
    # paramiko's import (~0.1 s) while the first client says hello
    threading.Thread(target=import_paramiko, name="keeper-import", daemon=True).start()
    try:
        keeper.serve(listener)
    finally:
        listener.close()
        with contextlib.suppress(OSError):
            if os.stat(paths.socket).st_ino == bound:
                os.unlink(paths.socket)
        keeper.pool.close()
        keeper.ssh.close()
        log(f"exiting: {keeper.stop_reason or 'stopped'}")
        os.close(lock)
    return 0


# How the client starts a keeper: this very file (argv[2] is its folder), detached.
KEEPER_BOOT = (
    "import sys; sys.path.insert(0, sys.argv[2]); import venusctl;"
    " sys.exit(venusctl.keeper_main(sys.argv[1], detach=True))"
)


# -- the client's side -----------------------------------------------------------------------


class KeeperClient:
    """A run's way to its user's keeper: one connection per fan-out, a short timeout on
    each, and the hosts asked by the run itself as soon as anything is off.

    `may_start`: start a keeper when none answers (health from cron: False, it only uses
    one that is alive). `note` says, once a run, why a keeper was left.
    """

    def __init__(
        self,
        environ: Mapping[str, str],
        persist: float,
        may_start: bool,
        note: Callable[[str], None],
        inventory: Path | None = None,
    ) -> None:
        self.environ = environ
        self.persist = persist
        self.may_start = may_start
        self.note = note
        self.inventory = str(inventory.resolve()) if inventory is not None else ""
        self.broken: str | None = None  # why this run stopped using the keeper
        self._paths: KeeperPaths | None = None

    def _give_up(self, why: str, say: bool = True) -> None:
        if self.broken is None and say:
            self.note(f"connection keeper not used: {why}; connecting directly")
        self.broken = self.broken or why

    # -- reaching it

    def paths(self) -> KeeperPaths:
        if self._paths is None:
            self._paths = keeper_paths(self.environ, make=self.may_start)
        return self._paths

    def connect(self) -> _Lines | None:
        """A connection to a keeper of this very code, hello done; None (and `broken`
        says why, if it matters) when there is none to use."""
        if self.broken is not None:
            return None
        try:
            paths = self.paths()
            lines = self._hello(paths)
            if lines is None and self.may_start:
                lines = self._start(paths)
        except KeeperUnavailable as problem:
            self._give_up(str(problem))
            return None
        return lines

    def _dial(self, paths: KeeperPaths) -> tuple[_Lines, dict[str, Any]] | None:
        """(the connection, the keeper's hello), or None when nothing listens."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(KEEPER_HELLO_TIMEOUT)
            sock.connect(str(paths.socket))
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            return None
        except OSError as error:
            sock.close()
            raise KeeperUnavailable(f"{paths.socket}: {error.strerror or error}") from None
        _, uid, _ = peer_credentials(sock)
        lines = _Lines(sock)
        if uid != os.getuid():
            lines.close()
            raise KeeperUnavailable(f"{paths.socket} is served by uid {uid}, not by you")
        try:
            lines.send(keeper_hello())
            hello = lines.receive(KEEPER_HELLO_TIMEOUT)
        except TimeoutError:
            lines.close()
            raise KeeperUnavailable(
                f"the keeper did not answer in {KEEPER_HELLO_TIMEOUT:g}s"
            ) from None
        except (OSError, ValueError):
            lines.close()
            return None  # it was ending (idle) as we came: as if none were there
        if not isinstance(hello, dict) or "error" in hello or hello.get("keeper") is None:
            lines.close()
            raise KeeperUnavailable(f"the keeper refused: {str(hello)[:120]}")
        return lines, hello

    def _hello(self, paths: KeeperPaths) -> _Lines | None:
        dialed = self._dial(paths)
        if dialed is None:
            return None
        lines, hello = dialed
        if {key: hello.get(key) for key in keeper_hello()} == keeper_hello():
            return lines
        # Another venusctl's keeper (an older one, before an upgrade): replace it.
        with contextlib.suppress(OSError, ValueError, TimeoutError):
            lines.send({"op": "stop", "reason": f"replaced by venusctl {__version__}"})
            lines.receive(KEEPER_HELLO_TIMEOUT)
        lines.close()
        if not self.may_start:
            self._give_up("the keeper running is another venusctl's", say=False)
            return None
        end = time.monotonic() + KEEPER_START_WAIT
        while time.monotonic() < end and self._dial_quietly(paths):
            time.sleep(0.02)  # until the old one has closed its socket
        return None

    def _dial_quietly(self, paths: KeeperPaths) -> bool:
        """Does a keeper still answer? (Closing what answered.)"""
        with contextlib.suppress(KeeperUnavailable):
            dialed = self._dial(paths)
            if dialed is not None:
                dialed[0].close()
                return True
        return False

    def _start(self, paths: KeeperPaths) -> _Lines | None:
        """Start a keeper (first use) and wait for it to listen, KEEPER_START_WAIT at most."""
        import subprocess

        with contextlib.suppress(OSError):
            if os.stat(paths.log).st_size > KEEPER_LOG_BYTES:
                os.replace(paths.log, f"{paths.log}.1")
        log = os.open(paths.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        here = os.path.dirname(os.path.abspath(__file__))
        try:
            process = subprocess.Popen(
                [sys.executable, "-c", KEEPER_BOOT, str(paths.folder), here],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd="/",
                env=dict(self.environ),
                start_new_session=True,
            )
        except OSError as error:
            self._give_up(f"cannot start it: {error.strerror}")
            return None
        finally:
            os.close(log)
        end = time.monotonic() + KEEPER_START_WAIT
        try:
            while time.monotonic() < end:
                dialed = self._dial(paths)
                if dialed is not None:
                    lines, hello = dialed
                    if {key: hello.get(key) for key in keeper_hello()} == keeper_hello():
                        return lines
                    lines.close()
                time.sleep(0.01)
        finally:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=1.0)  # the first fork's parent, gone by now
        # Slow to start (a loaded machine): this run connects itself, the next finds it.
        self._give_up(f"it did not listen within {KEEPER_START_WAIT:g}s", say=False)
        return None

    def request(self, document: dict[str, Any]) -> Any:
        """One info or stop request to whatever keeper runs (of any version): its answer,
        or None when none is running. Raises KeeperUnavailable."""
        dialed = self._dial(self.paths())
        if dialed is None:
            return None
        lines = dialed[0]
        try:
            lines.send(document)
            return lines.receive(KEEPER_SILENCE)
        except (OSError, ValueError, TimeoutError) as error:
            raise KeeperUnavailable(f"the keeper did not answer: {error}") from None
        finally:
            lines.close()

    def running(self) -> bool:
        return self._dial_quietly(self.paths())

    # -- asking hosts through it

    def fan_out(
        self,
        ctx: Any,
        hosts: Sequence[Host],
        call: HostCall,
        progress: Callable[[int, int], None] | None,
        until: Deadline | None,
        on_late: Callable[[Host], None] | None,
    ) -> GroupResult:
        """Context.fan_out's outcomes, the SSH hosts' from the keeper and the others' (local
        ones, a target that cannot be resolved) asked here at the same time."""
        kept: list[tuple[Host, SshTarget]] = []
        own: list[Host] = []
        for host in hosts:
            target = None
            if host.transport != "local":
                with contextlib.suppress(HostError):
                    target = ctx.ssh.target(host)
            if target is None:
                own.append(host)
            else:
                kept.append((host, target))
        lines = self.connect() if kept else None
        if lines is None:
            return self._here(ctx, hosts, call, progress, until, on_late)
        counted = [0]
        count_lock = threading.Lock()

        def count(_: int = 0, __: int = 0) -> None:
            # Each fan-out of the run counts its own; the line is erased once, at the end.
            if progress is not None:
                with count_lock:
                    counted[0] += 1
                    progress(min(counted[0], len(hosts) - 1), len(hosts))

        outcomes: dict[str, Any] = {}
        side = None
        if own:
            side = threading.Thread(
                target=lambda: outcomes.update(
                    self._here(ctx, own, call, count if progress else None, until, on_late)
                ),
                name="venusctl-own-hosts",
                daemon=True,
            )
            side.start()
        answered, redo = self._ask(ctx, lines, kept, call, count if progress else None, until)
        outcomes.update(answered)
        if redo:
            outcomes.update(
                self._here(ctx, redo, call, count if progress else None, until, on_late)
            )
        if side is not None:
            side.join()
        if progress is not None:
            progress(len(hosts), len(hosts))
        return GroupResult((host.name, outcomes[host.name]) for host in hosts)

    @staticmethod
    def _here(ctx, hosts, call, progress, until, on_late) -> GroupResult:
        call.send_ahead(hosts)
        return fan_out(
            hosts, call, ctx.forks, progress, budget=ctx.host_budget, until=until, on_late=on_late
        )

    def _ask(
        self,
        ctx: Any,
        lines: _Lines,
        kept: list[tuple[Host, SshTarget]],
        call: HostCall,
        count: Callable[[], None] | None,
        until: Deadline | None,
    ) -> tuple[dict[str, Any], list[Host]]:
        """The keeper's answers by host name, and the hosts this run must ask itself."""
        request = {
            "op": "run",
            "operation": call.operation,
            "hosts": [
                [
                    _host_to_wire(host),
                    _target_to_wire(target),
                    ctx.host_budget(host),
                    to_wire(list(call.args(host))),
                ]
                for host, target in kept
            ],
            "forks": ctx.forks,
            "until": None if until is None else [until.remaining(), until.seconds],
            "persist": self.persist,
            "inventory": self.inventory,
            "debug": ctx.debug,
            "actor": control_actor(),
        }
        answers: dict[int, Any] = {}
        started: set[int] = set()
        trouble = None
        try:
            lines.send(request)
            ctx.prefetch_table()
            while len(answers) < len(kept):
                message = lines.receive(KEEPER_SILENCE)
                if message is None:
                    trouble = "the keeper ended before it answered every host"
                    break
                if "done" in message:
                    answers[int(message["done"])] = from_wire(message["result"])
                    if count is not None:
                        count()
                elif "start" in message:
                    started.add(int(message["start"]))
                elif "error" in message:
                    trouble = f"the keeper said: {message['error']}"
                    break
                elif "end" in message:
                    trouble = "the keeper ended its answer early"
                    break
        except TimeoutError:
            trouble = f"the keeper did not answer for {KEEPER_SILENCE:g}s"
        except (OSError, ValueError, KeyError, TypeError) as error:
            trouble = f"the keeper's answer broke off ({type(error).__name__}: {error})"
        finally:
            lines.close()
        if trouble is not None:
            self._give_up(trouble)
        outcomes: dict[str, Any] = {}
        redo: list[Host] = []
        for index, (host, _) in enumerate(kept):
            if index in answers:
                outcomes[host.name] = answers[index]
            elif call.repeatable or index not in started:
                redo.append(host)
            else:
                outcomes[host.name] = NoReply(
                    "no reply: the connection keeper ended while it was under way"
                )
        return outcomes, redo


def keeper_for(
    command: str, args: argparse.Namespace, inventory: Inventory, env: Any
) -> KeeperClient | None:
    """The keeper a run uses: none for commands that ask no host, --watch (which keeps its
    own connections), or persist 0; health only uses one that is alive."""
    if command in ("inventory", "keeper") or getattr(args, "watch", None) is not None:
        return None
    persist = persist_seconds(inventory, env.environ, getattr(args, "no_persist", False))
    if persist <= 0 or not hasattr(socket, "SO_PEERCRED"):
        return None

    def note(text: str) -> None:
        env.stderr.write(f"venusctl: {escape_text(text)}\n")

    return KeeperClient(env.environ, persist, command != "health", note, inventory.path)


# =============================================================================
# Commands: list, threads, watch, info, inventory
# =============================================================================


def _show_traceback(ctx: Context, host: Host, outcome: Any) -> None:
    error = outcome.error if isinstance(outcome, (HostStatus, ActionOutcome)) else outcome
    if isinstance(error, BaseException):
        ctx.report_traceback(host, error)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _terminal_size() -> os.terminal_size:
    import shutil

    return shutil.get_terminal_size()


@dataclass
class Environment:
    """All venusctl takes from outside its arguments, so a test (or a program embedding it)
    gives its own: HTTPie's Environment, as the agent CLI's main(argv, stdout, stderr).

    The defaults are this process's own, read when an Environment is made.
    """

    stdin: Any = field(default_factory=lambda: sys.stdin)
    stdout: Any = field(default_factory=lambda: sys.stdout)
    stderr: Any = field(default_factory=lambda: sys.stderr)
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    isatty: Callable[[Any], bool] = _isatty  # is this stream a terminal?
    # The terminal's size, for tables cut to fit (honours $COLUMNS).
    terminal_size: Callable[[], os.terminal_size] = _terminal_size
    clock: Callable[[], float] = time.monotonic  # deadlines and intervals
    now: Callable[[], float] = time.time  # timestamps: watch frames, health's report
    sleep: Callable[[float], None] = time.sleep
    # where the machine-wide inventories are (/etc/venusctl): find_inventory's last rule
    system_config: Path = SYSTEM_CONFIG_DIR


@dataclass
class Context:
    """What a command needs: the inventory, the environment (streams, clocks) and the flags."""

    inventory: Inventory
    env: Environment = field(default_factory=Environment)
    as_json: bool = False
    debug: bool = False
    forks: int = 50
    ssh: SshContext = field(default_factory=SshContext)
    full: bool = False  # --full: never cut a table cell
    deadline: Deadline | None = None  # --deadline: the whole run ends by then
    source: InventorySource | None = None  # which inventory file, by which rule
    color: str = "auto"  # --color: auto, always, never
    keeper: KeeperClient | None = None  # the connection keeper HostCall fan-outs go through

    @property
    def out(self) -> Any:
        return self.env.stdout

    @property
    def err(self) -> Any:
        return self.env.stderr

    @property
    def stdin(self) -> Any:
        return self.env.stdin

    def clock(self) -> float:
        return self.env.clock()

    def sleep(self, seconds: float) -> None:
        self.env.sleep(seconds)

    def is_terminal(self, stream: Any) -> bool:
        return self.env.isatty(stream)

    @property
    def width(self) -> int | None:
        """The width tables are cut to: the terminal's, None for a pipe or file or --full."""
        cut = not self.full and self.is_terminal(self.out)
        return self.env.terminal_size().columns if cut else None

    @property
    def colour(self) -> bool:
        """Colour stdout? --color always/never; auto (default): a terminal, without
        $NO_COLOR (no-color.org: set and not empty) and not TERM=dumb."""
        if self.color != "auto":
            return self.color == "always"
        environ = self.env.environ
        if environ.get("NO_COLOR") or environ.get("TERM") == "dumb":
            return False
        return self.is_terminal(self.out)

    def table(self, headers: list[str], rows: list[list[str]]) -> str:
        """A table for stdout: cut to the terminal's width on a terminal, unless --full;
        errors red and paused threads yellow when colour is on."""
        styles = header_styles(headers, rows) if self.colour else None
        return render_table(headers, rows, self.width, styles)

    def render(self, spec: TableSpec, rows: Sequence[Any], args: argparse.Namespace) -> str:
        """A command's table as its --columns, --sort, --no-header and -o ask (render_spec)."""
        view = TableView.of(args)
        table = view.output == "table"
        return render_spec(spec, rows, view, self.width if table else None, table and self.colour)

    def delimited(self, args: argparse.Namespace) -> bool:
        """-o csv or -o tsv: stdout holds the data alone; notes go to stderr."""
        return getattr(args, "output", None) in ("csv", "tsv")

    def emit_json(self, document: Any) -> None:
        self.out.write(json.dumps(document, indent=2) + "\n")

    def report_traceback(self, host: Host, error: BaseException) -> None:
        import traceback

        if self.debug:
            # An error that came from the keeper carries the keeper's traceback.
            text = getattr(error, "remote_traceback", None)
            self.err.write(f"--- {host.name}: traceback\n")
            self.err.write(escape_lines(text or "".join(traceback.format_exception(error))))

    def fan_out(
        self,
        hosts: Sequence[Host],
        job: Callable[[Host], Any],
        progress: bool = True,
        on_late: Callable[[Host], None] | None = None,
        until: Deadline | None = None,
        budgeted: bool = True,
    ) -> GroupResult:
        """fan_out with this run's forks, each host within its budget (unless not
        `budgeted`: a job that runs until Ctrl-C) and the run within --deadline (or
        `until`), tracebacks under --debug, and `12/30 hosts` on stderr while it runs when
        stderr is a terminal (nothing extra otherwise). A HostCall goes through the
        connection keeper when the run has one."""
        show = (
            self._show_progress
            if progress and len(hosts) > 1 and self.is_terminal(self.err)
            else None
        )
        until = until if until is not None else self.deadline
        if isinstance(job, HostCall) and self.keeper is not None:
            outcomes = self.keeper.fan_out(self, hosts, job, show, until, on_late)
        else:
            if isinstance(job, HostCall):
                job.send_ahead(hosts)
            self.prefetch_table()
            outcomes = fan_out(
                hosts,
                job,
                self.forks,
                show,
                budget=self.host_budget if budgeted else None,
                until=until,
                on_late=on_late,
            )
        for host in hosts:
            _show_traceback(self, host, outcomes[host.name])
        return outcomes

    def ask(
        self,
        hosts: Sequence[Host],
        operation: str,
        *params: Any,
        pool: SessionPool | None = None,
        progress: bool = True,
        until: Deadline | None = None,
    ) -> GroupResult:
        """OPERATIONS[operation](*params) of every host, as fan_out: through the keeper when
        the run has one, else (and for what the keeper cannot answer) on `pool`, whose
        sessions a command keeps across its steps; without one, on a pool of its own."""
        own = pool is None
        pool = SessionPool(self.ssh) if pool is None else pool
        try:
            call = HostCall(pool, operation, same=params)
            return self.fan_out(hosts, call, progress, on_late=pool.forget, until=until)
        finally:
            if own:
                pool.close()

    def prefetch_table(self) -> None:
        """The table module, imported while the hosts answer (not before: it would take
        turns on the GIL with the run's own work before the requests go out)."""
        if not self.as_json:
            prefetch("tabulate")

    def host_budget(self, host: Host) -> float:
        """One host's whole exchange: connect_timeout (the inventory's, else
        ssh_config's ConnectTimeout, else 5 s) + command_timeout."""
        connect = host.connect_timeout
        if connect is None and host.transport != "local":
            with contextlib.suppress(HostError):  # the job itself reports a bad ssh_config
                connect = self.ssh.target(host).connect_timeout
        return (connect or DEFAULT_CONNECT_TIMEOUT) + host.command_timeout

    def _show_progress(self, done: int, total: int) -> None:
        # \r rewrites the line; the last call erases it, so the table starts clean.
        self.err.write(f"\r{done}/{total} hosts" if done < total else "\r\x1b[K")
        self.err.flush()


def _one_host(ctx: Context, host: Host, work: Callable[[Any], Any], budgeted: bool = True) -> Any:
    """Run work for one host like the fan-out does: an error becomes the result."""

    def job(each: Host) -> Any:
        return with_session(each, ctx.ssh, work)

    return ctx.fan_out([host], job, budgeted=budgeted)[host.name]


def _ask_one(ctx: Context, host: Host, operation: str, *params: Any) -> Any:
    """OPERATIONS[operation] for one host like the fan-out asks many (an error becomes the
    result), through the keeper when the run has one."""
    return ctx.ask([host], operation, *params)[host.name]


def show_report(ctx: Context, report: Any, status: ExitStatus) -> ExitStatus:
    if ctx.as_json:
        ctx.emit_json(report)
    else:
        ctx.out.write(report + "\n")
    return status


def _check_count(args: argparse.Namespace) -> None:
    if args.count is not None and args.watch is None:
        raise UsageError("--count goes with --watch (e.g. --watch 2 --count 5)")


WATCH_CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear screen


FRAME_SEPARATOR = "\f\n"


def write_frame(
    ctx: Context, report: Any, interval: float, took: float, first: bool, terminal: bool
) -> None:
    if ctx.as_json:
        now = ctx.env.now()
        document = {"time": round(now, 3), "refresh_ms": round(took * 1000, 1), **report}
        ctx.out.write(json.dumps(document) + "\n")
    else:
        header = (
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(ctx.env.now()))}"
            f"  every {format_duration(interval)}"
            f"  refresh {took * 1000:.0f} ms" + ("  (Ctrl-C to stop)" if terminal else "")
        )
        start = WATCH_CLEAR if terminal else ("" if first else FRAME_SEPARATOR)
        ctx.out.write(f"{start}{header}\n\n{report}\n")
    ctx.out.flush()


def watch(
    ctx: Context, args: argparse.Namespace, refresh: Callable[[], tuple[Any, ExitStatus]]
) -> ExitStatus:
    """Refresh every args.watch seconds over kept connections until Ctrl-C or --count frames.

    On a terminal each frame redraws the screen; otherwise frames follow
    each other separated by a form feed line (JSON: one line per frame), so
    a script or a test can read them. Returns the last frame's status with
    --count, 0 on Ctrl-C.
    """
    terminal = ctx.is_terminal(ctx.out)
    frames = 0
    try:
        while True:
            started = ctx.clock()
            report, status = refresh()
            took = ctx.clock() - started
            write_frame(ctx, report, args.watch, took, first=frames == 0, terminal=terminal)
            frames += 1
            if args.count is not None and frames >= args.count:
                return status
            pause = max(0.0, args.watch - (ctx.clock() - started))
            if ctx.deadline is not None and ctx.deadline.remaining() <= pause:
                return status  # --deadline ends the watch too
            ctx.sleep(pause)
    except KeyboardInterrupt:
        if terminal:
            ctx.out.write("\n")
        return ExitStatus.OK


def list_report(
    ctx: Context, args: argparse.Namespace, hosts: list[Host], pool: SessionPool, progress: bool
) -> tuple[Any, ExitStatus]:
    """One `list` answer: the JSON document or the table text, and the exit status."""
    outcomes = ctx.ask(hosts, "status", pool=pool, progress=progress)
    entries = [
        list_entry(host, outcomes[host.name], args.expiration, host_route(ctx.ssh, host))
        for host in hosts
    ]
    failed = any(entry["error"] for entry in entries)
    status = ExitStatus.FAILED if failed else ExitStatus.OK
    if ctx.as_json:
        return {"expiration": args.expiration, "hosts": entries}, status
    return ctx.render(LIST_TABLE, entries, args).rstrip("\n"), status


def command_list(ctx: Context, args: argparse.Namespace) -> ExitStatus:
    _check_count(args)
    hosts = select_hosts(ctx.inventory, args.limit)
    pool = SessionPool(ctx.ssh, background_reconnect=args.watch is not None)
    try:
        if args.watch is not None:
            return watch(ctx, args, lambda: list_report(ctx, args, hosts, pool, progress=False))
        return show_report(ctx, *list_report(ctx, args, hosts, pool, progress=True))
    finally:
        pool.close()


def selector_from(args: argparse.Namespace) -> Selector:
    return Selector(
        states=args.states or (),
        stage=args.stage,
        plan=args.plan,
        paused=args.paused,
        errors=args.errors,
        error_match=args.error_match,
        idle=args.idle,
    )


def threads_report(
    ctx: Context,
    args: argparse.Namespace,
    hosts: list[Host],
    selector: Selector,
    pool: SessionPool,
    progress: bool,
) -> tuple[Any, ExitStatus]:
    """The matching threads of every host: a table, a count line, then who did not answer."""
    outcomes = ctx.ask(hosts, "status", pool=pool, progress=progress)
    threads, unreachable = select_threads(hosts, outcomes, selector)
    status = ExitStatus.FAILED if unreachable else ExitStatus.OK
    if ctx.as_json:
        document = {
            "count": len(threads),
            "hosts": len({thread.host.name for thread in threads}),
            "threads": [fleet_thread_json(thread) for thread in threads],
            "unreachable": unreachable,
        }
        return document, status
    table = ctx.render(THREADS_TABLE, threads, args).rstrip("\n")
    notes = [count_line(threads), *unreachable_lines(unreachable)]
    if ctx.delimited(args):  # the data alone on stdout; the count and who failed on stderr
        ctx.err.write("".join(escape_text(line) + "\n" for line in notes))
        return table, status
    return "\n".join(([table] if threads else []) + notes), status


def command_threads(ctx: Context, args: argparse.Namespace) -> ExitStatus:
    _check_count(args)
    hosts = select_hosts(ctx.inventory, args.limit)
    selector = selector_from(args)
    pool = SessionPool(ctx.ssh, background_reconnect=args.watch is not None)
    try:
        if args.watch is not None:
            return watch(ctx, args, lambda: threads_report(ctx, args, hosts, selector, pool, False))
        return show_report(ctx, *threads_report(ctx, args, hosts, selector, pool, True))
    finally:
        pool.close()


def command_info(ctx: Context, args: argparse.Namespace) -> ExitStatus:
    host = resolve_target(ctx.inventory, args.host)
    outcome = _ask_one(ctx, host, "status")
    entry = info_entry(host, outcome)
    if ctx.as_json:
        ctx.emit_json(entry)
    elif entry["threads"] is not None:
        ctx.out.write(ctx.render(INFO_TABLE, outcome.threads, args).rstrip("\n") + "\n")
    else:
        ctx.err.write(f"venusctl: {info_failure_line(entry)}\n")
    return ExitStatus.FAILED if entry["error"] else ExitStatus.OK


def command_inventory(ctx: Context, args: argparse.Namespace) -> ExitStatus:
    if args.check:
        return command_inventory_check(ctx)
    if args.ansible:
        ctx.emit_json(ansible_inventory(ctx.inventory))
    elif ctx.as_json:
        source = ctx.source.to_json() if ctx.source else None
        ctx.emit_json(
            {
                "path": str(ctx.inventory.path),
                "source": source,
                "hosts": inventory_json(ctx.inventory),
            }
        )
    else:
        if ctx.source is not None:
            where = os.path.abspath(ctx.source.path)
            line = escape_text(f"inventory: {where} ({ctx.source.why})") + "\n"
            # with -o csv|tsv the data alone on stdout; --no-header: the table alone
            if ctx.delimited(args):
                ctx.err.write(line)
            elif not args.no_header:
                ctx.out.write(line)
        ctx.out.write(ctx.render(INVENTORY_TABLE, ctx.inventory.hosts, args).rstrip("\n") + "\n")
    return ExitStatus.OK


def range_overlaps(inventory: Inventory) -> list[str]:
    """Pairs of hosts of one miner whose sector numbers may collide: their ranges overlap,
    or one of them has no range at all (it numbers from 1, unbounded). No connection."""
    problems = []
    by_miner: dict[int, list[Host]] = {}
    for host in inventory.hosts:
        if host.backend != "damocles" and host.miner is not None:
            by_miner.setdefault(host.miner, []).append(host)
    for miner, hosts in sorted(by_miner.items()):
        for position, first in enumerate(hosts):
            for second in hosts[position + 1 :]:
                a, b = first.sector_numbers, second.sector_numbers
                if a is None or b is None:
                    lacking = ", ".join(h.name for h in (first, second) if h.sector_numbers is None)
                    problems.append(
                        f"miner {miner}: {first.name} and {second.name} may number the same"
                        f" sectors: no sector_numbers on {lacking}"
                    )
                elif a[0] <= b[1] and b[0] <= a[1]:
                    both = f"{max(a[0], b[0])}-{min(a[1], b[1])}"
                    problems.append(
                        f"miner {miner}: {first.name} ({a[0]}-{a[1]}) and {second.name}"
                        f" ({b[0]}-{b[1]}) overlap: numbers {both} could name two sectors"
                    )
    return problems


def command_inventory_check(ctx: Context) -> ExitStatus:
    """`inventory --check`: the inventory read and validated, and the sector ranges of every
    miner disjoint; exit 1 naming each pair of hosts that is not."""
    problems = range_overlaps(ctx.inventory)
    miners = sorted({host.miner for host in ctx.inventory.hosts if host.miner is not None})
    if ctx.as_json:
        ctx.emit_json(
            {
                "path": str(ctx.inventory.path),
                "ok": not problems,
                "miners": miners,
                "problems": problems,
            }
        )
    else:
        checked = _plural(len(ctx.inventory.hosts), "host")
        if not miners:
            lines = [
                f"{ctx.inventory.path}: {checked}; no host names its miner:"
                " no sector ranges to check"
            ]
        else:
            lines = [f"{ctx.inventory.path}: {checked}, miners {', '.join(map(str, miners))}"]
        lines += [f"OVERLAP {problem}" for problem in problems]
        if miners and not problems:
            lines.append("sector ranges: disjoint for every miner")
        ctx.out.write("\n".join(lines) + "\n")
    return ExitStatus.FAILED if problems else ExitStatus.OK


# =============================================================================
# Commands: pause and resume, one thread or by selectors
# =============================================================================


def _act(ctx: Context, target: str, action: Action) -> ExitStatus:
    host = resolve_target(ctx.inventory, target)
    outcome = ActionOutcome.of(_ask_one(ctx, host, "perform", action))
    return _show_action(ctx, host, action, outcome)


def _selected_hosts(ctx: Context, args: argparse.Namespace, command: str) -> list[Host]:
    """The hosts of a bulk action: only those -l names; the whole fleet only by -l '*'."""
    if not args.limit:
        raise UsageError(
            f"{command}: which hosts? give -l LIMIT (-l '*' for the whole fleet):"
            " an action never covers every host by default"
        )
    return select_hosts(ctx.inventory, args.limit)


def show_plan(
    ctx: Context, kind: str, steps: Sequence[Step], unreachable: Sequence[dict[str, Any]]
) -> None:
    if steps:
        ctx.out.write(ctx.table(*plan_table(steps)) + "\n")
        ctx.out.write(plan_summary(kind, steps) + "\n")
    for line in unreachable_lines(unreachable):
        ctx.out.write(line + "\n")
    ctx.out.flush()


def _without_action(
    ctx: Context,
    document: dict[str, Any],
    steps: Sequence[Step],
    unreachable: Sequence[dict[str, Any]],
    dry_run: bool,
) -> ExitStatus:
    """Nothing matched, nothing to do (the plan said so), or --dry-run: act on nothing."""
    if ctx.as_json:
        ctx.emit_json(document)
    if not steps:
        ctx.err.write(f"venusctl: {no_match_text(unreachable)}\n")
        return ExitStatus.FAILED
    if dry_run:
        if not ctx.as_json:
            ctx.out.write("dry run: nothing was sent\n")
        return ExitStatus.OK
    return ExitStatus.FAILED if unreachable else ExitStatus.OK


def _not_a_terminal(ctx: Context) -> str | None:
    """Which of stdin (the answer) and stderr (the question) is not a terminal, if any.

    Both must be, or the operator would face a silent wait for an answer.
    """
    if not ctx.is_terminal(ctx.stdin):
        return "stdin"
    return None if ctx.is_terminal(ctx.err) else "stderr"


def confirm(ctx: Context, question: str) -> bool:
    """A y/N answer on the terminal (stdin); anything but y or yes is no."""
    ctx.err.write(f"{escape_text(question)} [y/N] ")
    ctx.err.flush()
    if ctx.stdin.readline().strip().lower() in ("y", "yes"):
        return True
    ctx.err.write("venusctl: cancelled, nothing was sent\n")
    return False


def act_on_steps(
    ctx: Context, pool: SessionPool, steps: Sequence[Step]
) -> list[tuple[Step, ActionOutcome]]:
    """Each host's actions in order over its one kept session; all hosts in parallel."""
    by_host: dict[str, list[Step]] = {}
    for step in steps:
        by_host.setdefault(step.thread.host.name, []).append(step)
    hosts = [host_steps[0].thread.host for host_steps in by_host.values()]

    actions = {name: ([step.action for step in steps],) for name, steps in by_host.items()}
    outcomes = ctx.fan_out(hosts, HostCall(pool, "perform_all", actions), on_late=pool.forget)
    failed = outcomes.failed  # a host that could not be reached at all: each of its steps
    results: list[tuple[Step, ActionOutcome]] = []
    for host in hosts:
        host_steps = by_host[host.name]
        if host.name in failed:
            per_step = [ActionOutcome(error=failed[host.name])] * len(host_steps)
        else:
            per_step = outcomes[host.name]
        results += zip(host_steps, per_step, strict=True)
    return results


def show_results(
    ctx: Context,
    kind: str,
    document: dict[str, Any],
    results: Sequence[tuple[Step, ActionOutcome]],
    unreachable: Sequence[dict[str, Any]],
    waited: PauseWait | None = None,
) -> ExitStatus:
    failed = any(outcome.error for _, outcome in results) or (waited and waited.busy)
    if ctx.as_json:
        document["results"] = [
            action_entry(step.thread.host, step.action, outcome) for step, outcome in results
        ]
        if waited is not None:
            document["waited"] = waited.as_json()
        ctx.emit_json(document)
    else:
        if waited is None:  # with --wait, each line was said as it came
            for step, outcome in results:
                ctx.out.write(action_line(step.thread.host, step.action, outcome) + "\n")
        ctx.out.write(results_summary(kind, results) + "\n")
        if waited is not None:
            ctx.out.write(escape_text(waited.summary()) + "\n")
    return ExitStatus.FAILED if failed or unreachable else ExitStatus.OK


# -- pause --wait: until each thread shows Paused


WAIT_POLL = 1.0  # seconds between two looks at the threads a pause --wait waits for


@dataclass
class PauseWait:
    """What pause --wait saw: each thread's last WorkerInfo, when it paused, who did not."""

    timeout: float
    started: float
    latest: dict[tuple[str, int], WorkerInfo] = field(default_factory=dict)
    paused_after: dict[tuple[str, int], float] = field(default_factory=dict)
    busy: list[FleetThread] = field(default_factory=list)
    interrupted: bool = False

    def summary(self) -> str:
        done = len(self.paused_after)
        if not self.busy:
            return f"waited {format_duration(round(self.elapsed, 1))}: {done} paused"
        still = "; ".join(
            f"{thread.label} ({describe_thread(self.latest[thread.key])})"
            if thread.key in self.latest
            else f"{thread.label} (not answering)"
            for thread in self.busy
        )
        why = (
            "interrupted"
            if self.interrupted
            else f"timed out after {format_duration(self.timeout)}"
        )
        return (
            f"pause --wait {why}: {done} paused, still running: {still}; their pauses stay"
            " queued (resume HOST INDEX cancels one)"
        )

    @property
    def elapsed(self) -> float:
        return max(self.paused_after.values(), default=0.0)

    def as_json(self) -> dict[str, Any]:
        busy = {thread.key for thread in self.busy}
        return {
            "timeout": self.timeout,
            "interrupted": self.interrupted,
            "threads": [
                {
                    "host": key[0],
                    "index": key[1],
                    "paused": key not in busy,
                    "after": self.paused_after.get(key),
                    "thread_state": _state_value(info.thread_state.state),
                    "job_state": info.job_state,
                }
                for key, info in self.latest.items()
            ],
        }


def wait_for_pauses(
    ctx: Context,
    pool: SessionPool,
    args: argparse.Namespace,
    results: Sequence[tuple[Step, ActionOutcome]],
) -> PauseWait | None:
    """pause --wait: poll the threads whose pause was sent until each shows Paused, saying
    each one as it happens (a refused pause is not waited for); None without --wait.

    On timeout or Ctrl-C the pauses stay queued: the operator asked for them
    (drain is the command that takes them back when it gives up).
    """
    if getattr(args, "wait", None) is None:
        return None
    wait = PauseWait(args.wait, ctx.clock())
    targets = []
    for step, outcome in results:
        if not ctx.as_json:
            ctx.out.write(action_line(step.thread.host, step.action, outcome) + "\n")
            ctx.out.flush()
        if outcome.error is None:
            targets.append(step.thread)
    wait.busy = list(targets)
    try:
        while wait.busy:
            _look_at_pauses(ctx, pool, wait)
            now = ctx.clock()
            if not wait.busy or now - wait.started >= wait.timeout:
                break
            ctx.sleep(min(WAIT_POLL, wait.started + wait.timeout - now))
    except KeyboardInterrupt:
        wait.interrupted = True
    return wait


def _look_at_pauses(ctx: Context, pool: SessionPool, wait: PauseWait) -> None:
    hosts = list({thread.host.name: thread.host for thread in wait.busy}.values())
    outcomes = ctx.ask(hosts, "status", pool=pool, progress=False)
    still = []
    for thread in wait.busy:
        status = HostStatus.of(outcomes[thread.host.name])
        info = next((t for t in status.threads or () if t.index == thread.index), None)
        if info is not None:
            wait.latest[thread.key] = info
        if info is None or not info.paused:
            still.append(thread)
            continue
        after = ctx.clock() - wait.started
        wait.paused_after[thread.key] = round(after, 3)
        if not ctx.as_json:
            ctx.out.write(
                escape_text(
                    f"{thread.label}: Paused after {format_duration(round(after, 1))}"
                    f" ({info.job_state or 'no task'})"
                )
                + "\n"
            )
            ctx.out.flush()
    wait.busy = still


def bulk_action(
    ctx: Context, args: argparse.Namespace, kind: str, to_state: str | None
) -> ExitStatus:
    """pause/resume by selectors: the plan first, then the actions if confirmed."""
    hosts = _selected_hosts(ctx, args, kind)
    pool = SessionPool(ctx.ssh)
    try:
        outcomes = ctx.ask(hosts, "status", pool=pool)
        threads, unreachable = select_threads(hosts, outcomes, selector_from(args))
        steps = plan_steps(kind, threads, to_state)
        problem = to_state and invalid_resume_state(steps, to_state)
        if problem:
            raise UsageError(problem)
        document = {
            "action": kind,
            "state": to_state,
            "plan": [step_json(step) for step in steps],
            "moves": [move.to_json() for move in plan_moves(steps)],
            "unreachable": unreachable,
            "results": None,
        }
        if not ctx.as_json:
            show_plan(ctx, kind, steps, unreachable)
        acting = [step for step in steps if step.action]
        if not acting or args.dry_run:
            return _without_action(ctx, document, steps, unreachable, args.dry_run)
        final = final_moves_text(acting)
        if final and not args.force:
            raise NotForced(
                f"not done: this resume {final} (see the plan), which cannot be undone;"
                " add --force to do it",
                document if ctx.as_json else None,
            )
        not_terminal = _not_a_terminal(ctx)
        if not args.yes and not_terminal:
            raise NotConfirmed(
                f"not confirmed: {not_terminal} is not a terminal; add --yes to act",
                document if ctx.as_json else None,
            )
        question = f"{kind} {count_line([s.thread for s in acting])}" + (
            f": {final}" if final else ""
        )
        if not args.yes and not confirm(ctx, f"{question}?"):
            if ctx.as_json:
                ctx.emit_json(document)
            return ExitStatus.FAILED
        results = act_on_steps(ctx, pool, acting)
        waited = wait_for_pauses(ctx, pool, args, results) if kind == "pause" else None
    finally:
        pool.close()
    return show_results(ctx, kind, document, results, unreachable, waited)


def _check_single_form(args: argparse.Namespace, kind: str) -> None:
    if args.index is None:
        raise UsageError(f"{kind} HOST INDEX: missing INDEX (or select threads, see --help)")
    if selector_from(args).given or args.limit or args.dry_run:
        raise UsageError(f"{kind}: give either HOST INDEX or selectors, not both")


def command_pause(ctx: Context, args: argparse.Namespace) -> ExitStatus:
    if args.host is None:
        return bulk_action(ctx, args, "pause", None)
    _check_single_form(args, "pause")
    if args.wait is None:
        return _act(ctx, args.host, Action("pause", args.index))
    return _one_thread(ctx, args, Action("pause", args.index))


def command_resume(ctx: Context, args: argparse.Namespace) -> ExitStatus:
    if args.host is None:
        return bulk_action(ctx, args, "resume", args.to_state)
    _check_single_form(args, "resume")
    if args.to_state:
        raise UsageError("--to-state is for selectors; after HOST INDEX give the STATE itself")
    action = Action("resume", args.index, args.state)
    if args.state not in FINAL_STATES:
        return _act(ctx, args.host, action)
    return _one_thread(ctx, args, action)


def _one_thread(ctx: Context, args: argparse.Namespace, action: Action) -> ExitStatus:
    """HOST INDEX, when the thread must be seen first (a resume that ends its sector: the
    effect named, --force and --yes or a y/N) or after (pause --wait), on one session."""
    host = resolve_target(ctx.inventory, args.host)
    pool = SessionPool(ctx.ssh)
    try:
        status = HostStatus.of(ctx.ask([host], "status", pool=pool)[host.name])
        if status.threads is None:
            return _show_action(ctx, host, action, ActionOutcome(error=status.error))
        info = next((t for t in status.threads if t.index == action.index), None)
        if info is not None and action.kind == "resume":
            _confirm_final(ctx, args, FleetThread(host, info), action)
        done = ctx.ask([host], "perform_all", [action], pool=pool)[host.name]
        outcome = done[0] if isinstance(done, list) else ActionOutcome(error=done)
        # no such thread (the agent said so), a refusal, or a resume: its line is all
        if info is None or outcome.error is not None or action.kind == "resume":
            return _show_action(ctx, host, action, outcome)
        step = Step(FleetThread(host, info), action, "")
        waited = wait_for_pauses(ctx, pool, args, [(step, outcome)])
    finally:
        pool.close()
    if ctx.as_json:
        ctx.emit_json({**action_entry(host, action, outcome), "waited": waited.as_json()})
    elif waited.busy or waited.interrupted:
        ctx.err.write(f"venusctl: {escape_text(waited.summary())}\n")
    if waited.interrupted:
        return ExitStatus.INTERRUPTED
    return ExitStatus.FAILED if waited.busy else ExitStatus.OK


def _confirm_final(
    ctx: Context, args: argparse.Namespace, thread: FleetThread, action: Action
) -> None:
    """A resume into Finished or Aborted: refused without --force, then --yes or a y/N."""
    effect = move_effect(thread.info, action.state)
    what = f"{thread.label}: resume into {action.state} {effect}"
    if not args.force:
        raise NotForced(f"not done: {what}, which cannot be undone; add --force to do it")
    if args.yes:
        return
    not_terminal = _not_a_terminal(ctx)
    if not_terminal:
        raise NotConfirmed(f"not confirmed: {not_terminal} is not a terminal; add --yes to act")
    if not confirm(ctx, f"{what}?"):
        raise NotConfirmed("not confirmed: nothing was sent")


def _show_action(ctx: Context, host: Host, action: Action, outcome: ActionOutcome) -> ExitStatus:
    if ctx.as_json:
        ctx.emit_json(action_entry(host, action, outcome))
    else:
        stream = ctx.err if outcome.error else ctx.out
        stream.write(action_line(host, action, outcome) + "\n")
    return ExitStatus.FAILED if outcome.error else ExitStatus.OK


# =============================================================================
# Commands: drain
# =============================================================================


DRAIN_QUIET_PROGRESS_EVERY = 5.0  # seconds between progress lines when stderr is not a terminal


class Drain:
    """Pause every selected thread at its next stage boundary, then wait until all are Paused.

    The agent keeps the result of the stage in flight (docs/protocol.md), so
    a drained thread is Paused one stage further, never a stage back. When it
    gives up (timeout, Ctrl-C) the pauses it asked for and that are still
    queued are taken back (WorkerCancelPause), unless --keep-queued: no thread
    stops hours later because of a drain that was given up.
    """

    def __init__(
        self,
        ctx: Context,
        pool: SessionPool,
        hosts: list[Host],
        selector: Selector,
        args: argparse.Namespace,
    ) -> None:
        self.ctx, self.pool, self.hosts, self.selector = ctx, pool, hosts, selector
        self.timeout: float = args.timeout
        self.interval: float = args.interval
        self.keep_queued: bool = args.keep_queued
        self.asked: set[tuple[str, int]] = set()  # threads drain itself sent a pause
        # what became of each still-running thread's queued pause when drain gave up:
        # cancelled, kept, taken (nothing queued any more), cannot-cancel (damocles),
        # cancel-failed (then self.cancel_errors says why)
        self.queued: dict[tuple[str, int], str] = {}
        self.cancel_errors: dict[tuple[str, int], BaseException] = {}
        self.interrupted = False
        self.terminal = ctx.is_terminal(ctx.err)
        self.targets: list[FleetThread] = []
        self.latest: dict[tuple[str, int], WorkerInfo] = {}
        self.failed: dict[tuple[str, int], BaseException] = {}
        self.host_errors: dict[str, BaseException] = {}
        self.unreachable: list[dict[str, Any]] = []
        self.last_line = -math.inf

    def run(self) -> ExitStatus:
        started = self.ctx.clock()
        outcomes = self.ctx.ask(self.hosts, "status", pool=self.pool)
        self.targets, self.unreachable = select_threads(self.hosts, outcomes, self.selector)
        if not self.targets:
            if self.ctx.as_json:  # a script still gets its document: nothing was drained
                self.ctx.emit_json(
                    {**self.as_json([], self.ctx.clock() - started), "drained": False}
                )
            else:
                for line in unreachable_lines(self.unreachable):
                    self.ctx.err.write(line + "\n")
            self.ctx.err.write(f"venusctl: {no_match_text(self.unreachable)}: nothing to drain\n")
            return ExitStatus.FAILED
        self.latest = {thread.key: thread.info for thread in self.targets}
        acting = [step for step in plan_steps("pause", self.targets, None) if step.action]
        try:
            for step, outcome in act_on_steps(self.ctx, self.pool, acting):
                if outcome.error is not None:
                    self.failed[step.thread.key] = outcome.error
                else:
                    self.asked.add(step.thread.key)
            self._progress(
                f"drain: pausing {count_line(self.targets)} at their next stage boundary"
                f" (timeout {format_duration(self.timeout)})"
            )
            deadline = started + self.timeout
            if self.ctx.deadline is not None:  # --deadline bounds the whole run
                deadline = min(deadline, started + self.ctx.deadline.remaining())
            self.wait(deadline, started)
        except KeyboardInterrupt:
            # Ctrl-C: the pauses already sent must not stay queued behind the operator's back.
            self.interrupted = True
            self.asked |= {step.thread.key for step in acting if step.thread.key not in self.failed}
            self._progress("drain: interrupted")
        busy = self.busy()
        self.settle_queued(busy)
        status = self.report(busy, self.ctx.clock() - started)
        return ExitStatus.INTERRUPTED if self.interrupted else status

    def wait(self, deadline: float, started: float) -> None:
        while True:
            self.poll()
            busy = self.busy()
            now = self.ctx.clock()
            # A thread whose pause failed is not waited for: nothing will stop it.
            if now >= deadline or all(thread.key in self.failed for thread in busy):
                return
            self._quiet_progress(busy, now - started)
            self.ctx.sleep(min(self.interval, deadline - now))

    def settle_queued(self, busy: list[FleetThread]) -> None:
        """Drain gave up on `busy`: take back the pauses it queued, or keep them if asked."""
        mine = [thread for thread in busy if thread.key in self.asked]
        cancel = []
        for thread in mine:
            if thread.host.backend == "damocles":
                self.queued[thread.key] = "cannot-cancel"
            elif self.keep_queued:
                self.queued[thread.key] = "kept"
            else:
                cancel.append(Step(thread, Action("cancel-pause", thread.index), "cancel"))
        if not cancel:
            return
        for step, outcome in act_on_steps(self.ctx, self.pool, cancel):
            key = step.thread.key
            if outcome.error is not None:
                self.queued[key], self.cancel_errors[key] = "cancel-failed", outcome.error
            else:
                self.queued[key] = "cancelled" if outcome.note == PAUSE_CANCELLED else "taken"

    def poll(self) -> None:
        hosts = list({thread.host.name: thread.host for thread in self.targets}.values())
        outcomes = self.ctx.ask(hosts, "status", pool=self.pool, progress=False)
        for host in hosts:
            status = HostStatus.of(outcomes[host.name])
            if status.threads is not None:
                self.host_errors.pop(host.name, None)
                self._update(host, status.threads)
            else:
                self.host_errors[host.name] = status.error

    def _update(self, host: Host, threads: list[WorkerInfo]) -> None:
        for info in threads:
            key = (host.name, info.index)
            old = self.latest.get(key)
            if old is None:
                continue
            if thread_progress(old) != thread_progress(info) and self.terminal:
                self._progress(
                    f"{host.name} #{key[1]}: {describe_thread(old)} -> {describe_thread(info)}"
                )
            self.latest[key] = info

    def busy(self) -> list[FleetThread]:
        """Threads not yet Paused, or on a host not answering now.

        Not merely "not Running": between the end of its stage and its pause a
        thread shows Idle for a moment, and an original damocles-worker only
        takes a queued pause when its between-task sleep ends.
        """
        return [
            thread
            for thread in self.targets
            if thread.host.name in self.host_errors or not self.latest[thread.key].paused
        ]

    def _progress(self, line: str) -> None:
        self.ctx.err.write(escape_text(line) + "\n")
        self.ctx.err.flush()

    def _quiet_progress(self, busy: list[FleetThread], elapsed: float) -> None:
        # On a terminal every change has its line already; a log gets a line
        # per poll at most every few seconds, not one per interval.
        if self.terminal or self.ctx.clock() - self.last_line < DRAIN_QUIET_PROGRESS_EVERY:
            return
        self.last_line = self.ctx.clock()
        names = ", ".join(thread.label for thread in busy[:5]) + (", ..." if len(busy) > 5 else "")
        self._progress(
            f"drain: {len(busy)} of {_plural(len(self.targets), 'thread')} still running"
            f" after {format_duration(round(elapsed))}: {names}"
        )

    def report(self, busy: list[FleetThread], elapsed: float) -> ExitStatus:
        drained = not busy
        if self.ctx.as_json:
            self.ctx.emit_json(self.as_json(busy, elapsed))
        else:
            self._write_report(busy, elapsed)
        ok = drained and not self.failed and not self.unreachable
        return ExitStatus.OK if ok else ExitStatus.FAILED

    def _write_report(self, busy: list[FleetThread], elapsed: float) -> None:
        out = self.ctx.out
        out.write(self.ctx.table(*drain_table(self.targets, self.latest, self.failed)) + "\n")
        for line in unreachable_lines(self.unreachable):
            out.write(line + "\n")
        if busy:
            still = "; ".join(f"{thread.label} {self._why_busy(thread)}" for thread in busy)
            waited = any(thread.key not in self.failed for thread in busy)
            why = f"timed out after {format_duration(self.timeout)}" if waited else "incomplete"
            why = "interrupted" if self.interrupted else why
            self.ctx.err.write(escape_text(f"venusctl: drain {why}; still running: {still}") + "\n")
            for line in self.queued_lines():
                self.ctx.err.write(escape_text(f"venusctl: {line}") + "\n")
            return
        failed = f", {len(self.failed)} could not be paused" if self.failed else ""
        out.write(
            f"drained {count_line(self.targets)} in {format_duration(round(elapsed, 1))}:"
            f" none is running{failed}\n"
        )

    def queued_lines(self) -> list[str]:
        """What became of the pauses still queued when drain gave up, one line per outcome."""
        by_outcome: dict[str, list[str]] = {}
        for key, outcome in self.queued.items():
            by_outcome.setdefault(outcome, []).append(f"{key[0]} #{key[1]}")
        lines = []
        said = {
            "cancelled": "queued pause cancelled (the thread keeps running)",
            "kept": "pause still queued (--keep-queued): it stops at its next stage boundary",
            "taken": "no pause queued any more: it took its pause (or lost the request) meanwhile",
            "cannot-cancel": DAMOCLES_QUEUED,
        }
        for outcome, text in said.items():
            if outcome in by_outcome:
                lines.append(f"{', '.join(by_outcome[outcome])}: {text}")
        for key, error in self.cancel_errors.items():
            lines.append(
                f"{key[0]} #{key[1]}: cancel of the queued pause failed: {error_text(error)};"
                " it may still stop at its next stage boundary"
            )
        return lines

    def _why_busy(self, thread: FleetThread) -> str:
        error = self.host_errors.get(thread.host.name)
        if error is not None:
            return f"(host not answering: {error_text(error)})"
        state = describe_thread(self.latest[thread.key])
        failed = self.failed.get(thread.key)
        if failed is None:
            return f"({state})"
        return f"({action_error(thread.host, Action('pause', thread.index), failed)}; {state})"

    def as_json(self, busy: list[FleetThread], elapsed: float) -> dict[str, Any]:
        busy_keys = {thread.key for thread in busy}
        return {
            "drained": not busy,
            "interrupted": self.interrupted,
            "elapsed": round(elapsed, 3),
            "timeout": self.timeout,
            "threads": [
                {
                    "host": thread.host.name,
                    "index": thread.index,
                    "job_id": self.latest[thread.key].job_id,
                    "before": _state_json(thread.info),
                    "after": _state_json(self.latest[thread.key]),
                    "running": thread.key in busy_keys,
                    "error": action_error_json(self.failed.get(thread.key)),
                    # when drain gave up: cancelled, kept, taken, cannot-cancel,
                    # cancel-failed (cancel_error), or null (nothing queued by drain)
                    "queued": self.queued.get(thread.key),
                    "cancel_error": error_json(self.cancel_errors.get(thread.key)),
                }
                for thread in self.targets
            ],
            "unreachable": self.unreachable,
        }


def command_drain(ctx: Context, args: argparse.Namespace) -> ExitStatus:
    if args.target is not None:
        if args.limit:
            raise UsageError("drain: give a HOST or -l LIMIT, not both")
        hosts = [resolve_target(ctx.inventory, args.target)]
    else:
        hosts = _selected_hosts(ctx, args, "drain")
    pool = SessionPool(ctx.ssh)
    try:
        return Drain(ctx, pool, hosts, selector_from(args), args).run()
    finally:
        pool.close()


# =============================================================================
# Commands: logs (a thread's stage output) and journal (the agent's own log)
# =============================================================================


FOLLOW_POLL = 1.0  # seconds between two looks for new lines (logs --follow)


def _clock_text(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(seconds))


def stage_run_header(host: Host, index: int, run: api.StageRun) -> str:
    """'--- gpu-01 #0 run 12: stage C2 (C1Done) s-t010000-3, started 2025-06-01 12:00:01,
    exit 1 after 4.4s: permanent: ...' (worker text escaped)."""
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.started))
    text = (
        f"--- {host.name} #{index} run {run.run}: stage {run.stage} ({run.state})"
        f" {run.sector_id or '-'}, started {started}, {stage_run_end(run)}"
    )
    return escape_text(text)


def stage_run_end(run: api.StageRun) -> str:
    if run.ended is None:
        return "still running"
    took = format_duration(round(max(0.0, run.ended - run.started), 1))
    how = "timed out" if run.timed_out else f"exit {run.exit_status}"
    if run.exit_status is None and not run.timed_out:
        how = "ended"
    return f"{how} after {took}: {run.outcome}"


def stage_line_text(line: api.StageLine) -> str:
    """'12:00:01 stderr permanent: ...': the worker's text escaped (ESC as \\x1b)."""
    cut = " [cut]" if line.cut else ""
    return f"{_clock_text(line.t)} {line.s} {escape_text(line.text)}{cut}"


def stage_log_lines(
    host: Host, index: int, log: api.StageLog, lines: int | None, stage: str | None = None
) -> list[str]:
    """The text of `venusctl logs`: each run's header, what it left out, its lines."""
    if not log.runs:
        what = f"run of stage {stage}" if stage else "stage run"
        kept = f"the agent keeps the last {log.kept_runs} runs of each thread"
        return [f"{host.name} #{index}: no {what} logged ({kept})"]
    text = []
    for run in log.runs:
        text.append(stage_run_header(host, index, run))
        shown_from = run.lines[0].n if run.lines else run.lines_total
        if run.first_line:
            text.append(
                f"    ({run.first_line} lines dropped: a run keeps its last"
                f" {log.max_run_bytes // 1024} KiB at most)"
            )
        if shown_from > run.first_line:
            more = "; -n all shows them" if lines is not None else ""
            text.append(f"    ({shown_from - run.first_line} earlier lines{more})")
        text += [stage_line_text(line) for line in run.lines]
    return text


@host_operation("stage_log")
def stage_log(
    session: LocalSession | SshSession, host: Host, index: int, query: dict[str, Any]
) -> api.StageLog:
    """One WorkerStageLog by the transport policy (the CLI reads the store when the daemon
    is down)."""
    agent, refused = open_agent(session, host, for_status=True)
    try:
        return agent.stage_log(index, query)
    except HostError as error:
        if refused is not None and not isinstance(error, (AgentRefused, NoStageLogs)):
            raise both_ways(refused, error) from None
        raise
    finally:
        agent.close()


def command_logs(ctx: Context, args: argparse.Namespace) -> ExitStatus:
    host = resolve_target(ctx.inventory, args.host)
    if host.backend == "damocles":
        raise UsageError(
            f"{host.name} is a damocles-worker, which keeps no stage logs: its own log is"
            f" `venusctl journal {host.name}`"
        )
    query = {
        "stage": args.stage,
        "runs": None if args.all else args.runs,
        "lines": args.lines,
        "after": None,
    }
    pool = SessionPool(ctx.ssh)
    try:
        log = ctx.ask([host], "stage_log", args.index, query, pool=pool)[host.name]
        if isinstance(log, BaseException):
            return _logs_failed(ctx, host, log)
        if ctx.as_json:
            document = {"host": host.name, **log.to_json()}
            ctx.out.write(json.dumps(document, indent=None if args.follow else 2) + "\n")
        else:
            ctx.out.write(
                "".join(
                    line + "\n"
                    for line in stage_log_lines(host, args.index, log, args.lines, args.stage)
                )
            )
        ctx.out.flush()
        if not args.follow:
            return ExitStatus.OK
        return follow_stage_log(ctx, pool, host, args, log)
    finally:
        pool.close()


def _logs_failed(ctx: Context, host: Host, error: BaseException) -> ExitStatus:
    if ctx.as_json:
        ctx.emit_json({"host": host.name, "runs": None, "error": error_json(error)})
    else:
        ctx.err.write(f"venusctl: {escape_text(f'{host.name}: {error_text(error)}')}\n")
    return ExitStatus.FAILED


def follow_stage_log(
    ctx: Context, pool: SessionPool, host: Host, args: argparse.Namespace, log: api.StageLog
) -> ExitStatus:
    """logs --follow: every FOLLOW_POLL, what came after the last line shown (a new run
    gets its header; a run that ends, its end line), until Ctrl-C (exit 0)."""
    last = log.runs[-1] if log.runs else None
    cursor = {"run": last.run, "line": last.lines[-1].n if last and last.lines else -1}
    if last is not None and not last.lines:
        cursor["line"] = last.lines_total - 1
    running = {run.run for run in log.runs if run.ended is None}
    if last is None:
        cursor = {"run": 0, "line": -1}
    query = {"stage": args.stage, "runs": None, "lines": None, "after": cursor}
    try:
        while True:
            ctx.sleep(FOLLOW_POLL)
            after = {**query, "after": cursor}
            news = ctx.ask([host], "stage_log", args.index, after, pool=pool)[host.name]
            if isinstance(news, BaseException):
                return _logs_failed(ctx, host, news)
            for run in news.runs:
                known = run.run == cursor["run"]
                if ctx.as_json:
                    if run.lines or not known or (run.run in running and run.ended):
                        ctx.out.write(json.dumps({"host": host.name, **run.to_json()}) + "\n")
                else:
                    if not known:
                        ctx.out.write(stage_run_header(host, args.index, run) + "\n")
                    ctx.out.write("".join(stage_line_text(line) + "\n" for line in run.lines))
                    if known and run.run in running and run.ended is not None:
                        ctx.out.write(escape_text(f"--- run {run.run} {stage_run_end(run)}") + "\n")
                if run.ended is None:
                    running.add(run.run)
                else:
                    running.discard(run.run)
                cursor = {"run": run.run, "line": run.lines[-1].n if run.lines else (
                    cursor["line"] if known else -1)}  # fmt: skip
            ctx.out.flush()
    except KeyboardInterrupt:
        return ExitStatus.OK


def journal_argv(host: Host, lines: int | None, follow: bool) -> list[str]:
    """journalctl for the agent's unit, from validated values only (argv, quoted once)."""
    unit = host.service_unit
    if not UNIT_PATTERN.match(unit):  # the inventory checked it: a second line of defence
        raise ValueError(f"invalid unit name {unit!r}")
    argv = ["journalctl", "--unit", unit, "--no-pager", "--output", "short-iso"]
    argv += ["--lines", "all" if lines is None else str(_checked_index(lines))]
    return [*argv, "--follow"] if follow else argv


class LineWriter:
    """Bytes from a command, written line by line with worker text escaped."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.buffer = b""

    def feed(self, chunk: bytes) -> None:
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            self._write(line)
        if lines:
            self.stream.flush()

    def close(self) -> None:
        if self.buffer:
            self._write(self.buffer)
            self.buffer = b""
        self.stream.flush()

    def _write(self, line: bytes) -> None:
        self.stream.write(escape_text(line.decode("utf-8", "replace").rstrip("\r")) + "\n")


def stream_command(
    session: LocalSession | SshSession,
    argv: list[str],
    out: LineWriter,
    err: LineWriter,
    timeout: float | None,
) -> int:
    """Run argv on the host (exec channel, or locally), its output to `out` and `err` as it
    comes; its exit status. `timeout` bounds the whole run (None: until it ends or Ctrl-C)."""
    if isinstance(session, LocalSession):
        return _stream_local(argv, out, err, timeout)
    import select

    host = session.host
    deadline = None if timeout is None else time.monotonic() + timeout
    channel = open_exec_channel(
        session.transport, Deadline.after(host.command_timeout, "opening the command channel")
    )
    try:
        channel.exec_command(shlex.join(argv))
        while True:
            if channel.recv_ready():
                out.feed(channel.recv(65536))
            elif channel.recv_stderr_ready():
                err.feed(channel.recv_stderr(65536))
            elif channel.exit_status_ready():
                break
            else:
                if deadline is not None and time.monotonic() > deadline:
                    raise ReplyTimeout(f"timeout after {timeout:g}s (command)", timeout)
                select.select([channel], [], [], 0.2)
        return channel.recv_exit_status()
    finally:
        channel.close()
        out.close()
        err.close()


def _stream_local(argv: list[str], out: LineWriter, err: LineWriter, timeout: float | None) -> int:
    import selectors
    import subprocess

    try:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    except FileNotFoundError:
        err.feed(f"{argv[0]}: not found\n".encode())
        err.close()
        return COMMAND_NOT_FOUND
    deadline = None if timeout is None else time.monotonic() + timeout
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ, out)
    selector.register(process.stderr, selectors.EVENT_READ, err)
    try:
        while selector.get_map():
            if deadline is not None and time.monotonic() > deadline:
                raise ReplyTimeout(f"timeout after {timeout:g}s (command)", timeout)
            for key, _ in selector.select(0.2):
                chunk = os.read(key.fileobj.fileno(), 65536)
                if chunk:
                    key.data.feed(chunk)
                else:
                    selector.unregister(key.fileobj)
        return process.wait()
    finally:
        selector.close()
        if process.poll() is None:
            process.kill()
            process.wait()
        out.close()
        err.close()


def command_journal(ctx: Context, args: argparse.Namespace) -> ExitStatus:
    """journalctl -u UNIT on the host, through SSH (or here for a local host)."""
    host = resolve_target(ctx.inventory, args.host)
    argv = journal_argv(host, args.lines, args.follow)
    out, err = LineWriter(ctx.out), LineWriter(ctx.err)
    timeout = None if args.follow else host.command_timeout

    def run(session: LocalSession | SshSession) -> int:
        return stream_command(session, argv, out, err, timeout)

    try:
        # --follow runs until Ctrl-C (or --deadline): the host's budget would end it
        outcome = _one_host(ctx, host, run, budgeted=not args.follow)
    except KeyboardInterrupt:
        return ExitStatus.OK if args.follow else ExitStatus.INTERRUPTED
    if isinstance(outcome, BaseException):
        ctx.err.write(f"venusctl: {escape_text(f'{host.name}: {error_text(outcome)}')}\n")
        return ExitStatus.FAILED
    if outcome == COMMAND_NOT_FOUND:
        ctx.err.write(f"venusctl: {host.name}: journalctl not found (is it a systemd host?)\n")
    elif outcome != 0:
        ctx.err.write(
            f"venusctl: {host.name}: journalctl exited {outcome} (the SSH user may need the"
            " systemd-journal or adm group to read a system unit's journal)\n"
        )
    return ExitStatus.OK if outcome == 0 else ExitStatus.FAILED


# =============================================================================
# Commands: ssh (OpenSSH itself, with the inventory's settings)
# =============================================================================


def openssh_options(target: SshTarget) -> list[str]:
    """OpenSSH `-o` options for `target` as venusctl resolved it (SshTarget.ssh_options), with
    each jump host reached by an `ssh -W` of its own options: ProxyJump on the command
    line would carry neither a hop's key nor its known_hosts (ssh(1): command-line options
    apply to the destination only)."""
    options = target.ssh_options()
    if target.via is None or target.proxy_command is not None:
        return options
    hop = ["ssh", "-F", "none", *openssh_options(target.via), "-W", "[%h]:%p", "--"]
    # a literal % of a path or a name must not be read as a token by the outer ssh
    hop = [word if word == "[%h]:%p" else word.replace("%", "%%") for word in hop]
    hop.append(target.via.name.replace("%", "%%"))
    kept = [option for option in options if not option.startswith("-oProxyJump=")]
    return [*kept, f"-oProxyCommand={shlex.join(hop)}"]


def ssh_argv(target: SshTarget, command: Sequence[str]) -> list[str]:
    """`ssh -F none <the target's options> -- NAME [COMMAND...]`: no ssh_config read again
    (venusctl applied it already, the inventory's values over it), COMMAND as ssh passes
    its words: joined by spaces for the remote shell."""
    return ["ssh", "-F", "none", *openssh_options(target), "--", target.name, *command]


def command_ssh(ctx: Context, args: argparse.Namespace) -> ExitStatus | int:
    """OpenSSH to HOST with the inventory's user, port, key, known_hosts, jump hosts and
    options: an interactive session, or COMMAND; ssh's own exit status (255: ssh failed)."""
    import shutil

    host = resolve_target(ctx.inventory, args.host)
    if host.transport == "local":
        raise UsageError(f"{host.name} is this machine (transport local): no SSH to it")
    try:
        target = ctx.ssh.target(host)
    except HostError as error:
        ctx.err.write(f"venusctl: {escape_text(f'{host.name}: {error}')}\n")
        return ExitStatus.FAILED
    argv = ssh_argv(target, args.command)
    if args.print:
        ctx.out.write(shlex.join(argv) + "\n")
        return ExitStatus.OK
    ssh = shutil.which("ssh", path=ctx.env.environ.get("PATH"))
    if ssh is None:
        raise UsageError("ssh not found on the PATH: install OpenSSH's client (openssh-client)")
    # ssh runs a ProxyCommand through $SHELL: the hops above are quoted for sh
    environ = {**ctx.env.environ, "SHELL": "/bin/sh"}
    return run_attached(ctx, [ssh, *argv[1:]], environ)


def run_attached(ctx: Context, argv: list[str], environ: Mapping[str, str]) -> int:
    """Run argv on this run's terminal (its stdin, stdout, stderr), or through pipes when
    the streams are not files (a test's, an embedding program's); its exit status."""
    import subprocess

    def fd(stream: Any) -> Any:
        try:
            stream.fileno()
            return stream
        except (AttributeError, OSError, ValueError):
            return subprocess.PIPE

    streams = [fd(ctx.stdin), fd(ctx.out), fd(ctx.err)]
    if streams[0] is subprocess.PIPE:
        streams[0] = subprocess.DEVNULL
    ctx.out.flush()
    done = subprocess.run(argv, stdin=streams[0], stdout=streams[1], stderr=streams[2],
                          env=dict(environ))  # fmt: skip
    if done.stdout:
        ctx.out.write(done.stdout.decode("utf-8", "replace"))
    if done.stderr:
        ctx.err.write(done.stderr.decode("utf-8", "replace"))
    return done.returncode


# =============================================================================
# Commands: health
# =============================================================================


def _first_set(*values: float | None) -> float:
    return next(value for value in values if value is not None)


def health_thresholds(settings: HealthSettings, args: argparse.Namespace) -> Thresholds:
    """Command line, then the inventory's [health], then the built-in defaults."""
    stuck = {**STUCK_DEFAULTS, **WDPOST_STUCK_DEFAULTS, **settings.stuck, **dict(args.stuck or ())}
    return Thresholds(
        expiration=_first_set(args.expiration, settings.expiration, HEALTH_DEFAULTS["expiration"]),
        paused_warn=_first_set(
            args.paused_warn, settings.paused_warn, HEALTH_DEFAULTS["paused_warn"]
        ),
        paused_crit=_first_set(
            args.paused_crit, settings.paused_crit, HEALTH_DEFAULTS["paused_crit"]
        ),
        stuck=stuck,
    )


def _fsync_folder(folder: Path) -> None:
    # The rename is durable only once the folder is; a folder that cannot be
    # opened for it (some network file systems) still has the complete file.
    with contextlib.suppress(OSError):
        handle = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)


def write_textfile(path: Path, text: str) -> None:
    """Replace `path` atomically: a unique temp file beside it, fsync, rename, fsync the folder.

    node_exporter (and two overlapping cron runs) only ever see the old file
    or the new one, complete. Raises OSError when it cannot.
    """
    import tempfile

    folder = path.parent if str(path.parent) else Path(".")
    # A dot name: node_exporter reads only *.prom, never a half-written temp file.
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fchmod(handle.fileno(), 0o644)  # mkstemp's 0600 would hide it from node_exporter
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _fsync_folder(folder)


def command_health(ctx: Context, args: argparse.Namespace) -> Severity:
    """Judge the fleet; print only on trouble with --quiet; write the textfile if asked."""
    settings = ctx.inventory.health
    thresholds = health_thresholds(settings, args)
    deadline = _first_set(args.deadline, settings.deadline, HEALTH_DEFAULTS["deadline"])
    textfile = args.prometheus or settings.prometheus
    if textfile and Path(textfile).suffix != ".prom":
        # node_exporter's textfile collector would skip it without a word.
        raise UsageError(
            f"prometheus file {textfile}: must be named *.prom"
            " (node_exporter's textfile collector reads only those)"
        )
    hosts = select_hosts(ctx.inventory, args.limit)
    pool = SessionPool(ctx.ssh)
    try:
        until = Deadline(time.monotonic() + deadline, deadline, "deadline")
        outcomes = ctx.ask(hosts, "status", pool=pool, until=until)
    finally:
        pool.close()
    missed = any(isinstance(error, NoAnswer) for error in outcomes.failed.values())
    report = judge_fleet(
        outcomes,
        thresholds,
        ctx.env.now(),
        deadline if missed else None,
        silences=ctx.inventory.silence_of,
    )
    if textfile:
        try:
            write_textfile(Path(textfile), prometheus_text(report))
        except OSError as error:
            # The fleet was still judged: print that, and let the first line
            # say the metrics are missing (never hide a CRITICAL behind it).
            report.problem = f"cannot write {textfile}: {error.strerror or error}"
            report.status = max(report.status, Severity.UNKNOWN, key=_SEVERITY_RANK.get)
    if args.quiet and report.status == Severity.OK:
        return report.status  # --json too: cron mails whatever is printed
    if ctx.as_json:
        ctx.emit_json(health_json(report))
    else:
        # One write: two overlapping runs sharing a log or a mail never interleave lines.
        ctx.out.write(health_text(report, verbose=args.verbose))
        ctx.out.flush()
    return report.status


# =============================================================================
# Commands: keeper
# =============================================================================


def keeper_text(info: dict[str, Any], now: float) -> str:
    """`venusctl keeper`: the keeper's line, then one row per kept connection."""
    up = format_duration(round(now - info["started"]))
    lines = [
        f"keeper pid {info['pid']}, venusctl {info['version']}, up {up},"
        f" idle {format_duration(round(info['idle']))}"
        f" (ends after {format_duration(info['persist'])} without a request)",
        f"socket {info['socket']}",
    ]
    rows = [
        [
            row["host"],
            row["dest"],
            row["user"] or "-",
            row["jump"] or "-",
            "yes" if row["channel"] else "no",
            format_duration(round(now - row["connected"])),
            format_duration(round(row["idle"])),
        ]
        for row in info["connections"]
    ]
    if rows:
        headers = ["Host", "Dest", "User", "Jump", "Channel", "Connected", "Idle"]
        lines.append(render_table(headers, rows))
    else:
        lines.append("no connections kept")
    lines += [f"jump host {hop['host']} as {hop['user']}" for hop in info["jumps"]]
    return escape_lines("\n".join(lines) + "\n")


def command_keeper(ctx: Context, args: argparse.Namespace) -> ExitStatus:
    """status: what this user's keeper holds; stop: end it now (its connections close)."""
    client = KeeperClient(ctx.env.environ, 0.0, False, lambda text: None)
    try:
        if args.action == "stop":
            answer = client.request({"op": "stop", "reason": "venusctl keeper stop"})
            end = time.monotonic() + KEEPER_START_WAIT
            while answer is not None and client.running() and time.monotonic() < end:
                time.sleep(0.02)
        else:
            answer = client.request({"op": "info"})
    except KeeperUnavailable as problem:
        raise VenusctlError(f"keeper: {problem}") from None
    socket_path = str(client.paths().socket)
    if args.action == "stop":
        if ctx.as_json:
            ctx.emit_json({"stopped": answer is not None, "socket": socket_path})
        else:
            ctx.out.write("keeper stopped\n" if answer else f"no keeper running ({socket_path})\n")
        return ExitStatus.OK
    if answer is None or "info" not in answer:
        if ctx.as_json:
            ctx.emit_json({"running": False, "socket": socket_path})
        else:
            ctx.err.write(f"venusctl: no keeper running ({socket_path})\n")
        return ExitStatus.FAILED
    if ctx.as_json:
        ctx.emit_json({"running": True, **answer["info"]})
    else:
        ctx.out.write(keeper_text(answer["info"], ctx.env.now()))
    return ExitStatus.OK


# Commands: sector, history, stats (the agents' histories)
# =============================================================================
#
# Each host answers from its agent's history files (worker_agent/history.py): the
# figures of `stats` are computed there, so a big fleet ships per-stage counts and
# buckets, never its logs. A damocles-worker keeps no history: `sector` looks at its
# live thread list only, `stats` and `history` name it as having none.

NO_DAMOCLES_HISTORY = "no history from damocles-worker"


class NoHistory(HostError):
    """The host keeps no history to ask (a damocles-worker, an agent before it, or off)."""

    kind = "no-history"


def _history_agent(session: LocalSession | SshSession, host: Host) -> Agent:
    """The agent to ask, by the transport policy: a dead daemon's CLI reads its files."""
    agent, _ = open_agent(session, host, for_status=True)
    return agent


def ask_history(agent: Agent, method: api.Method, params: list[Any], argv: list[str]) -> Any:
    """One history question: the control API's `method`, or the CLI's `argv` (which reads
    the files of a stopped daemon). NoHistory where there is none to ask."""
    if isinstance(agent, DamoclesAgent):
        raise NoHistory(NO_DAMOCLES_HISTORY)
    if isinstance(agent, CliAgent):
        result = agent.run(_agent_command(agent.host, *argv, "--json"))
        if result.exit_status == api.AgentExit.USAGE and "invalid choice" in result.stderr:
            raise NoHistory("this agent keeps no history (a version before it: upgrade it)")
        document = parse_cli_reply(result)
        if isinstance(document, dict) and set(document) == {"error"}:
            error = cli_error(document["error"])
            if isinstance(error, AgentRefused) and error.code == api.RpcCode.NO_HISTORY:
                raise NoHistory(str(error))
            raise error
        return document
    try:
        return agent.rpc.call(method.value, params)
    except AgentRefused as refused:
        if refused.code == api.RpcCode.METHOD_NOT_FOUND:
            raise NoHistory(
                "this agent keeps no history (a version before it: upgrade it)"
            ) from None
        if refused.code == api.RpcCode.NO_HISTORY:
            raise NoHistory(str(refused)) from None
        raise


def _same_sector(job_id: str | None, sector: str) -> bool:
    if not job_id:
        return False
    try:
        return api.parse_sector_id(job_id) == sector
    except ValueError:
        return False


@dataclass
class SectorFind:
    """One host's answer about a sector: the threads on it now, and its history there."""

    threads: list[WorkerInfo]
    entries: list[api.HistoryEntry]
    note: str | None = None  # why there is no history, or why "now" is unknown
    via: str = ""

    @property
    def found(self) -> bool:
        return bool(self.threads or self.entries)


@host_operation("find_sector")
def find_sector(session: LocalSession | SshSession, host: Host, sector: str) -> SectorFind:
    """Where `sector` is on this host: the live thread list first, then the history."""
    agent = _history_agent(session, host)
    try:
        if isinstance(agent, DamoclesAgent):
            live = [t for t in agent.threads() if _same_sector(t.job_id, sector)]
            return SectorFind(live, [], NO_DAMOCLES_HISTORY, agent.via)
        try:
            document = ask_history(agent, api.Method.SECTOR, [sector], ["sector", sector])
        except NoHistory as missing:
            threads = agent.status().threads or []
            live = [t for t in threads if _same_sector(t.job_id, sector)]
            return SectorFind(live, [], str(missing), agent.via)
        log = parsed(api.SectorLog, document)
        note = None
        if log.threads is None:
            note = "the agent is not running: its history read from the files; where it"
            note += " is now is unknown"
        return SectorFind(log.threads or [], log.entries, note, agent.via)
    finally:
        agent.close()


def _entry_clock(seconds: float) -> str:
    """As lotus-miner prints its sector log: local time with the zone's offset."""
    return time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(seconds))


def _run_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.2f}s"
    return format_duration(round(seconds)) if seconds >= 60 else f"{seconds:.1f}s"


def caller_text(by: api.Caller | None) -> str:
    """alice@ctl (uid 1000, pid 4242); the actor is the client's claim, the ids the kernel's."""
    if by is None:
        return ""
    ids = ", ".join(
        f"{key} {value}" for key, value in (("uid", by.uid), ("pid", by.pid)) if value is not None
    )
    if by.actor:
        return f"{by.actor} ({ids})" if ids else by.actor
    return ids


def _states_text(entry: api.HistoryEntry) -> str:
    before, after = entry.from_state, entry.to_state
    if before and after and before != after:
        return f"{before} -> {after}"
    return after or before or "-"


def _outcome_text(entry: api.HistoryEntry) -> str:
    if not entry.outcome:
        return ""
    return "ok" if entry.outcome == "ok" else f"{entry.outcome}: {entry.error or ''}".rstrip()


def entry_line(entry: api.HistoryEntry) -> str:
    """What happened, on one line: `[state] PC1Done -> PC2Done  PC2 12m3s  ok`. Escaped."""
    parts = [f"[{entry.kind}]", _states_text(entry)]
    if entry.stage:
        parts.append(f"{entry.stage} {_run_text(entry.duration)}")
    for text in (_outcome_text(entry), f"to {entry.requested}" if entry.requested else ""):
        if text:
            parts.append(text)
    if entry.by is not None:
        parts.append(f"by {caller_text(entry.by)}")
    if entry.note:
        parts.append(f"({entry.note})")
    return escape_text("  ".join(parts))


def _find_json(host: Host, find: SectorFind) -> dict[str, Any]:
    return {
        "name": host.name,
        "dest": host.dest,
        "backend": host.backend,
        "via": find.via or None,
        "threads": [thread.to_json() for thread in find.threads],
        "entries": [entry.to_json() for entry in find.entries],
        "note": find.note,
    }


def sector_block(sector: str, host: Host, find: SectorFind) -> list[str]:
    """One host's part of `venusctl sector`: where, state, stage, time in state, last error,
    then the event log, oldest first (as `lotus-miner sectors status --log`)."""
    lines = [f"Sector:     {sector}", f"Host:       {host.name} ({host.dest})"]
    for thread in find.threads:
        stage = f" (stage {thread.job_stage})" if thread.job_stage else ""
        lines += [
            f"Thread:     #{thread.index} {_cell(thread.location)}",
            f"State:      {_cell(thread.job_state)}{stage}",
            f"InState:    {format_duration(thread.state_elapsed)}",
            f"Thread now: {format_thread_state(thread.thread_state)}",
            f"LastErr:    {_cell(thread.last_error)}",
        ]
    if not find.threads and find.entries:
        last = find.entries[-1]
        now = "" if find.note else "; no thread holds it now"
        lines += [
            f"Thread:     #{last.index} (the last to hold it, by the history{now})",
            f"State:      {_cell(last.to_state)} (last entry, {_entry_clock(last.time)})",
        ]
    if find.note:
        lines.append(f"Note:       {escape_text(find.note)}")
    if find.entries:
        lines += ["", "Event Log:"]
        width = len(str(len(find.entries) - 1))
        lines += [
            f"{number:>{width}}.  {_entry_clock(entry.time)}  #{entry.index}  {entry_line(entry)}"
            for number, entry in enumerate(find.entries)
        ]
    return lines


def command_sector(ctx: Context, args: argparse.Namespace) -> ExitStatus:
    try:
        sector = api.parse_sector_id(args.sector)
    except ValueError as error:
        raise UsageError(str(error)) from None
    hosts = select_hosts(ctx.inventory, args.limit)
    outcomes = ctx.ask(hosts, "find_sector", sector)
    holders = [(host, outcomes[host.name]) for host in hosts if not _is_error(outcomes[host.name])]
    holders = [(host, find) for host, find in holders if find.found]
    unreachable = [
        info_entry(host, outcomes[host.name]) for host in hosts if _is_error(outcomes[host.name])
    ]
    status = ExitStatus.OK if holders and not unreachable else ExitStatus.FAILED
    if ctx.as_json:
        ctx.emit_json(
            {
                "sector": sector,
                "hosts": [_find_json(host, find) for host, find in holders],
                "searched": len(hosts) - len(unreachable),
                "unreachable": unreachable,
            }
        )
        return status
    lines: list[str] = []
    for host, find in holders:
        lines += [*(["", "-" * 8] if lines else []), *sector_block(sector, host, find)]
    if not holders:
        asked = len(hosts) - len(unreachable)
        lines.append(
            f"{sector}: on none of the {_plural(asked, 'host')} that answered,"
            " now or in their history"
        )
    if len(holders) > 1:
        names = ", ".join(host.name for host, _ in holders)
        lines += [
            "",
            f"WARNING: {sector} is on {len(holders)} hosts ({names}): workers of one miner"
            " numbered the same sector. Give each its own [sealing] sector_numbers"
            " (venusctl inventory --check).",
        ]
    lines += unreachable_lines(unreachable)
    ctx.out.write("\n".join(lines) + "\n")
    return status


HISTORY_HEADERS = ["Time", "Kind", "Sector", "State", "Stage", "Run", "Outcome", "By", "Note"]


def history_table(entries: Sequence[api.HistoryEntry]) -> tuple[list[str], list[list[str]]]:
    rows = [
        [
            _entry_clock(entry.time),
            entry.kind,
            _cell(entry.sector),
            _states_text(entry) + (f" (to {entry.requested})" if entry.requested else ""),
            _cell(entry.stage),
            _run_text(entry.duration) if entry.stage else "-",
            _outcome_text(entry) or "-",
            caller_text(entry.by) or "-",
            _cell(entry.note),
        ]
        for entry in entries
    ]
    return HISTORY_HEADERS, rows


@host_operation("history")
def thread_history(
    session: LocalSession | SshSession, host: Host, index: int, limit: int | None
) -> api.ThreadHistory:
    agent = _history_agent(session, host)
    try:
        argv = ["history", "--index", str(_checked_index(index)), "--limit", str(limit or 0)]
        return parsed(
            api.ThreadHistory, ask_history(agent, api.Method.HISTORY, [index, limit], argv)
        )
    finally:
        agent.close()


def command_history(ctx: Context, args: argparse.Namespace) -> ExitStatus:
    host = resolve_target(ctx.inventory, args.host)
    limit = args.entries or None
    outcome = _ask_one(ctx, host, "history", args.index, limit)
    if _is_error(outcome):
        if ctx.as_json:
            ctx.emit_json(
                {
                    "name": host.name,
                    "dest": host.dest,
                    "index": args.index,
                    "error": error_json(outcome),
                }
            )
        else:
            ctx.err.write(f"venusctl: {host.name} #{args.index}: {error_text(outcome)}\n")
        return ExitStatus.FAILED
    if ctx.as_json:
        ctx.emit_json({"name": host.name, "dest": host.dest, **outcome.to_json()})
        return ExitStatus.OK
    shown = len(outcome.entries)
    where = f"{host.name} #{outcome.index} {escape_text(outcome.location)}"
    head = f"{where}: {shown} of {outcome.kept} entries"
    body = [ctx.table(*history_table(outcome.entries))] if outcome.entries else []
    ctx.out.write("\n".join([head, *body]) + "\n")
    return ExitStatus.OK


@host_operation("stats")
def host_stats(
    session: LocalSession | SshSession,
    host: Host,
    window: float | None,
    plan: str | None,
    threads: Selector,
) -> api.WorkerStats:
    """The host's per-stage figures, computed on the host; with thread selectors, of the
    threads matching them now (one more round trip for the thread list)."""
    agent = _history_agent(session, host)
    try:
        if isinstance(agent, DamoclesAgent):
            raise NoHistory(NO_DAMOCLES_HISTORY)
        indexes = None
        if threads.given:
            status = agent.status()
            if status.threads is None:
                raise status.error or AgentNotRunning("agent not running")
            indexes = [thread.index for thread in status.threads if threads.matches(thread)]
            if not indexes:
                return api.WorkerStats(time=0.0, window=window, threads=[], stages=[])
        argv = ["stats", *(["--since", f"{window:g}s"] if window else [])]
        argv += [f"--index={index}" for index in indexes or ()]
        argv += ["--plan", plan] if plan else []
        return parsed(
            api.WorkerStats, ask_history(agent, api.Method.STATS, [window, indexes, plan], argv)
        )
    finally:
        agent.close()


def _stage_rank(stage: str) -> int:
    return api.STAGE_ORDER.index(stage) if stage in api.STAGE_ORDER else len(api.STAGE_ORDER)


def stats_rows(
    answers: Sequence[tuple[str, api.WorkerStats]], by_host: bool, stage: str | None
) -> list[tuple[str | None, api.StageStats]]:
    """(host or None, figures) per stage in the order a task meets them: the hosts' figures
    merged (api.merge_stage_stats), or with `by_host` each host's own, slowest p50 first."""
    parts: dict[str, list[tuple[str, api.StageStats]]] = {}
    for name, stats in answers:
        for figures in stats.stages:
            if stage is None or figures.stage == stage:
                parts.setdefault(figures.stage, []).append((name, figures))
    rows: list[tuple[str | None, api.StageStats]] = []
    for label in sorted(parts, key=lambda s: (_stage_rank(s), s)):
        if by_host:
            own = sorted(parts[label], key=lambda part: (-(part[1].p50 or 0), natural_key(part[0])))
            rows += own
        else:
            rows.append((None, api.merge_stage_stats([figures for _, figures in parts[label]])))
    return rows


def _row_json(host: str | None, figures: api.StageStats) -> dict[str, Any]:
    document = {key: value for key, value in figures.to_json().items() if key != "buckets"}
    return {"host": host, **document} if host is not None else document


def _common_error(figures: api.StageStats) -> str:
    if not figures.errors:
        return "-"
    top = figures.errors[0]
    return f"{top.error} (x{top.count})"


STATS_BAR_MAX = 40
STATS_ERROR_SHARE = 24  # columns the MostCommonError column keeps beside a bar


def stage_bar(figures: api.StageStats, slowest: float, width: int, blocks: tuple[str, str]) -> str:
    """p50 solid, on to p90 shaded, scaled so the slowest p90 of the table fills `width`."""
    if not slowest or figures.p50 is None:
        return ""
    solid = round(figures.p50 / slowest * width)
    shaded = max(0, round((figures.p90 or figures.p50) / slowest * width) - solid)
    return blocks[0] * max(solid, 1) + blocks[1] * shaded


def stats_table(
    ctx: Context, rows: Sequence[tuple[str | None, api.StageStats]], by_host: bool
) -> str:
    headers = ["Stage", *(["Host"] if by_host else []), "Tasks", "p50", "p90", "Max", "Failures"]
    headers.append("MostCommonError")
    cells = [
        [
            figures.stage,
            *([host or "-"] if by_host else []),
            str(figures.tasks),
            *(_run_text(value) for value in (figures.p50, figures.p90, figures.max)),
            str(figures.failures),
            _common_error(figures),
        ]
        for host, figures in rows
    ]
    if not ctx.is_terminal(ctx.out) or not rows:
        return ctx.table(headers, cells)
    # A bar per row, scaled to the slowest: the picture before the figures' column of errors.
    columns = ctx.env.terminal_size().columns
    used = len(render_table(headers[:-1], [row[:-1] for row in cells]).splitlines()[0]) + 2
    # what is left after the figures, less a share for the error text (cut first)
    width = min(STATS_BAR_MAX, columns - used - 2 - STATS_ERROR_SHARE)
    if width < 8:
        return ctx.table(headers, cells)
    encoding = (getattr(ctx.out, "encoding", None) or "").lower().replace("-", "")
    blocks = ("█", "░") if encoding.startswith("utf") else ("#", "-")
    slowest = max((figures.p90 or figures.p50 or 0) for _, figures in rows)
    headers.insert(-1, "p50 / p90".ljust(width))
    for row, (_, figures) in zip(cells, rows, strict=True):
        row.insert(-1, stage_bar(figures, slowest, width, blocks))
    return ctx.table(headers, cells)


def command_stats(ctx: Context, args: argparse.Namespace) -> ExitStatus:
    hosts = select_hosts(ctx.inventory, args.limit)
    threads = dataclasses.replace(selector_from(args), stage=None, plan=None)
    outcomes = ctx.ask(hosts, "stats", args.since, args.plan, threads)
    answers = [
        (host.name, outcomes[host.name]) for host in hosts if not _is_error(outcomes[host.name])
    ]
    without = [
        (host, outcomes[host.name]) for host in hosts if isinstance(outcomes[host.name], NoHistory)
    ]
    unreachable = [
        info_entry(host, outcome)
        for host in hosts
        if _is_error(outcome := outcomes[host.name]) and not isinstance(outcome, NoHistory)
    ]
    rows = stats_rows(answers, args.by_host, args.stage)
    status = ExitStatus.FAILED if unreachable else ExitStatus.OK
    if ctx.as_json:
        ctx.emit_json(
            {
                "window": args.since,
                "by_host": args.by_host,
                "hosts": [name for name, _ in answers],
                "stages": [_row_json(host, figures) for host, figures in rows],
                "no_history": [
                    {"name": host.name, "message": str(error)} for host, error in without
                ],
                "unreachable": unreachable,
            }
        )
        return status
    span = (
        "all the history kept" if args.since is None else f"the last {format_duration(args.since)}"
    )
    counted = sum(len(stats.threads) for _, stats in answers)
    lines = [f"{_plural(counted, 'thread')} on {_plural(len(answers), 'host')}, {span}"]
    if rows:
        lines.append(stats_table(ctx, rows, args.by_host))
    else:
        lines.append("no stage ran in that time")
    lines += [f"no history: {host.name} ({escape_text(str(error))})" for host, error in without]
    lines += unreachable_lines(unreachable)
    ctx.out.write("\n".join(lines) + "\n")
    return status


# =============================================================================
# Argument parser
# =============================================================================


class _ParserExit(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of calling sys.exit, so main() returns the code."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see: {self.prog} --help)")

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        if message:
            sys.stderr.write(message)
        raise _ParserExit(status)


def _argument_type(parse: Callable[[str], Any], name: str) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from error

    convert.__name__ = name
    return convert


def _positive_duration(text: str) -> float:
    seconds = parse_duration(text)
    if seconds <= 0:
        raise ValueError(f"invalid duration {text!r}: must be more than 0")
    return seconds


def _parse_count(text: str, least: int = 1, note: str = "") -> int:
    if not re.fullmatch(r"[0-9]{1,9}", text) or int(text) < least:
        raise ValueError(f"invalid count {text!r}: must be a whole number >= {least}{note}")
    return int(text)


def _parse_entry_count(text: str) -> int:
    """history -n K: a whole number >= 0 (0: every entry)."""
    return _parse_count(text, 0, " (0: all)")


def _parse_lines(text: str) -> int | None:
    """-n LINES: a whole number >= 0, or `all` (None: no limit)."""
    if text == "all":
        return None
    if not re.fullmatch(r"[0-9]{1,9}", text):
        raise ValueError(f"invalid line count {text!r}: a whole number >= 0, or all")
    return int(text)


def _parse_forks(text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,6}", text) or int(text) < 1:
        raise ValueError(f"invalid --forks {text!r}: must be a whole number >= 1")
    return int(text)


VERSION_TEXT = f"venusctl {__version__}"


_STUCK_HELP = "\n".join(
    [f"  {key:<18}{value / 3600:g}h" for key, value in STUCK_DEFAULTS.items()]
    + [f"  {key:<18}{value / 3600:g}h (wdpost)" for key, value in WDPOST_STUCK_DEFAULTS.items()]
)


HEALTH_HELP = f"""\
Judge every host (or those of --limit) in one pass, for cron and monitoring.

findings:
  CRITICAL  host unreachable (any SSH or transport error)
  CRITICAL  agent not running (its last heartbeat, if any, is shown)
  CRITICAL  heartbeat older than --expiration while the agent answers
  WARNING   thread paused by an error; CRITICAL once paused --paused-crit
  WARNING   thread paused by hand for --paused-warn or longer
  WARNING   job in the same state for its --stuck threshold or longer
  WARNING   a sector range ([sealing] sector_numbers) with fewer than 100 numbers
            left; CRITICAL once used up (the worker starts no new task)
  UNKNOWN   host still not answered when --deadline passed (the whole run is UNKNOWN)
  INFO      (--verbose) a stuck threshold that cannot be judged: a damocles-worker
            reports no time in state for that thread (not a finding)
Idle and empty threads are counted, not judged.

Output as the monitoring-plugin guidelines want it: the status line
(`VENUS CRITICAL - 1 host unreachable, ... | hosts=6;;;0 ... errors=3;0;;0
unreachable=1;;0;0 ...`), then the findings, identical ones on one line
("WARNING 12 threads on 3 hosts paused on: permanent: ... (h1, h2, h3)";
--verbose adds each thread below it), then a summary per host (threads,
paused, errors, heartbeat age). Worker text is escaped; no `|` or newline
from a worker ever reaches the output. Exit 0 OK, 1 WARNING, 2 CRITICAL,
3 UNKNOWN (also for a bad inventory or bad arguments).

Defaults can be set in the inventory's [health] table (expiration,
paused_warn, paused_crit, stuck, deadline, prometheus); the command line wins.
Maintenance: a [[silence]] table (hosts = "gpu-01,rack2", until =
"2026-12-24T08:00Z", reason = "...") keeps its hosts in the report, marked
[silenced], without their findings raising the status until then.

stuck thresholds by stage (--stuck KEY=DURATION; KEY may also be a state name):
{_STUCK_HELP}
"""


LIMIT_TYPE = _argument_type(parse_limit, "limit")


def add_selectors(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("thread selectors (every one given must hold)")
    group.add_argument(
        "-l",
        "--limit",
        action="append",
        type=LIMIT_TYPE,
        help="hosts: names, groups or globs (comma-separated); -l '*' is every host",
    )
    group.add_argument(
        "--state",
        dest="states",  # not "state": resume HOST INDEX [STATE] has that one
        type=_argument_type(parse_state_list, "states"),
        help="task state, or several comma-separated (e.g. C1Done,PC1Done)",
    )
    group.add_argument(
        "--stage", type=_argument_type(parse_stage, "stage"), help="stage label (e.g. PC1, C2)"
    )
    group.add_argument(
        "--plan", type=_argument_type(parse_plan_name, "plan"), help="sealer, snapup, ..."
    )
    group.add_argument("--paused", action="store_true", help="paused threads")
    group.add_argument("--errors", action="store_true", help="threads with a last error")
    group.add_argument(
        "--error-match",
        metavar="REGEX",
        type=_argument_type(compile_error_match, "regex"),
        help="last error matching REGEX (Python re, searched anywhere in the text)",
    )
    group.add_argument("--idle", action="store_true", help="idle threads (no stage to run)")


def add_confirmation(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-y", "--yes", action="store_true", help="act without asking (needed without a terminal)"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the plan, send nothing, exit 0"
    )


def add_watch(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--watch",
        nargs="?",
        const=2.0,
        metavar="SECONDS",
        type=_argument_type(_positive_duration, "duration"),
        help="refresh every SECONDS (default 2) over kept connections, until Ctrl-C",
    )
    parser.add_argument(
        "--count",
        metavar="N",
        type=_argument_type(_parse_count, "count"),
        help="with --watch: stop after N frames (exit status of the last one)",
    )


def add_table_options(parser: argparse.ArgumentParser, spec: TableSpec, wide: bool = True) -> None:
    """--columns, --sort, --reverse, --no-header and -o for a command that prints `spec`."""
    group = parser.add_argument_group("table output")
    names = ", ".join(column.header.lower() for column in spec.columns)
    columns = group.add_argument(
        "--columns",
        metavar="LIST",
        type=_argument_type(spec.parse_columns, "columns"),
        help=f"the columns to show, in this order (comma-separated, any case): {names}",
    )
    sort = group.add_argument(
        "--sort",
        metavar="KEY",
        type=_argument_type(spec.parse_sort, "sort key"),
        help="sort the rows by these columns (comma-separated, first the most significant;"
        " a column without a value sorts last)",
    )
    columns.spec = sort.spec = spec  # what `venusctl __complete` offers for them
    group.add_argument("--reverse", action="store_true", help="with --sort: largest first")
    group.add_argument("--no-header", action="store_true", help="no header line (row)")
    group.add_argument(
        "-o",
        "--output",
        choices=("table", *(("wide",) if wide else ()), "csv", "tsv", "json"),
        help="table (default)"
        + (", wide (as --wide)" if wide else "")
        + ", csv (RFC 4180: values exact, quoted where needed), tsv (tab, newline and"
        " backslash escaped as \\t \\n \\\\), json (as --json)",
    )


def build_parser() -> argparse.ArgumentParser:
    # The common options are accepted before or after the command name; in
    # the subcommands they default to SUPPRESS so they never undo the top level.
    def common(parser: argparse.ArgumentParser, top: bool, deadline: bool = True) -> None:
        default = (lambda value: value) if top else (lambda value: argparse.SUPPRESS)
        parser.add_argument(
            "-i",
            "--inventory",
            default=default(None),
            type=_argument_type(check_not_empty("inventory path", "-i inventory.toml"), "path"),
            help="inventory file (TOML); default: see --fleet",
        )
        parser.add_argument(
            "--fleet",
            metavar="NAME",
            default=default(None),
            type=_argument_type(parse_fleet_name, "fleet"),
            help="the named fleet NAME: ~/.config/venusctl/NAME.toml, else"
            " /etc/venusctl/NAME.toml (default: $VENUSCTL_INVENTORY, $VENUSCTL_FLEET,"
            " ./inventory.toml, ~/.config/venusctl/inventory.toml,"
            " /etc/venusctl/inventory.toml: the first given or found)",
        )
        parser.add_argument(
            "--json", action="store_true", default=default(False), help="print JSON"
        )
        parser.add_argument(
            "--debug",
            action="store_true",
            default=default(False),
            help="show tracebacks of failures",
        )
        parser.add_argument(
            "--full",
            action="store_true",
            default=default(False),
            help="never cut a table cell (on a terminal, long cells are cut with … to fit)",
        )
        parser.add_argument(
            "--color",
            "--colour",
            dest="color",
            choices=("auto", "always", "never"),
            default=default("auto"),
            help="colour tables (paused yellow, errors red, an expired LastPing bold): auto"
            " (default) on a terminal unless $NO_COLOR is set, always, never",
        )
        parser.add_argument(
            "--forks",
            type=_argument_type(_parse_forks, "forks"),
            default=default(50),
            help="hosts asked at the same time (default 50)",
        )
        parser.add_argument(
            "--no-persist",
            action="store_true",
            default=default(False),
            help="this run neither uses nor starts the connection keeper (see `keeper`)",
        )
        if deadline:
            parser.add_argument(
                "--deadline",
                type=_argument_type(_positive_duration, "duration"),
                default=default(None),
                metavar="DURATION",
                help="the whole run ends by then; a host not done is a row saying so"
                " (each host also ends within its connect_timeout + command_timeout)",
            )

    parser = _Parser(
        prog="venusctl",
        description=__doc__.split("\n\n", 1)[1],
        usage=argparse.SUPPRESS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common(parser, top=True)
    parser.add_argument("--version", action="version", version=VERSION_TEXT)
    parser.add_argument(
        "--help-man", action=_ManAction, help="print the manual page, venusctl(1), in roff"
    )
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, prog="venusctl"
    )

    listing = commands.add_parser(
        "list",
        help="one row per host",
        description="One row per host of the inventory (or of --limit): Name, Dest, Threads,"
        " Empty, Paused, Errors, LastPing. LastPing is the age of the host's last heartbeat"
        " (of this answer for a damocles worker), with '!' once older than --expiration."
        " A host that cannot be asked keeps its row, its reason in an Error column, and"
        " the run exits 1.",
    )
    common(listing, top=False)
    listing.add_argument(
        "-l",
        "--limit",
        action="append",
        type=LIMIT_TYPE,
        help="names, groups or globs (comma-separated); default: every host",
    )
    listing.add_argument(
        "--expiration",
        type=_argument_type(parse_duration, "duration"),
        default=600.0,
        metavar="DURATION",
        help="LastPing older than this gets a '!' (default 10m; 30s, 1h30m, ...)",
    )
    listing.add_argument("--wide", action="store_true", help="add Version, Running, Waiting")
    add_table_options(listing, LIST_TABLE)
    add_watch(listing)
    listing.set_defaults(handler=command_list)

    threads = commands.add_parser(
        "threads", help="every matching sealing thread of the fleet, one table"
    )
    common(threads, top=False)
    add_selectors(threads)
    threads.add_argument("--wide", action="store_true", help="add Plan, Stage, ThreadState")
    add_table_options(threads, THREADS_TABLE)
    add_watch(threads)
    threads.set_defaults(handler=command_threads)

    info = commands.add_parser(
        "info",
        help="one row per sealing thread of a host",
        description="One row per sealing thread of HOST: Index, Loc, SectorID, Paused,"
        " PausedElapsed, State, LastErr. Exit 1, with the reason on stderr, when HOST"
        " cannot be asked.",
    )
    common(info, top=False)
    info.add_argument("host", help="name, address or address:port")
    info.add_argument("--wide", action="store_true", help="add Plan, Stage, ThreadState")
    add_table_options(info, INFO_TABLE)
    info.set_defaults(handler=command_info)

    pause = commands.add_parser(
        "pause",
        help="pause a sealing thread, or every selected one",
        description="Pause HOST's thread INDEX, or every thread the selectors match: the"
        " plan is printed first, then acted on with --yes or a y/N answer on a terminal.",
    )
    common(pause, top=False)
    pause.add_argument("host", nargs="?", help="name, address or address:port")
    pause.add_argument(
        "index",
        nargs="?",
        type=_argument_type(parse_index, "index"),
        help="thread index, as `info` shows",
    )
    add_selectors(pause)
    add_confirmation(pause)
    pause.add_argument(
        "--wait",
        nargs="?",
        const=7200.0,
        metavar="TIMEOUT",
        type=_argument_type(_positive_duration, "duration"),
        help="then wait until each thread shows Paused, saying so (default TIMEOUT 2h);"
        " exit 1 if one is still running then (its pause stays queued)",
    )
    pause.set_defaults(handler=command_pause)

    resume = commands.add_parser(
        "resume",
        help="resume a paused sealing thread, or every selected one",
        description="Resume HOST's thread INDEX, or every paused thread the selectors match"
        " (--to-state S moves each to S first): the plan is printed first, then acted on"
        " with --yes or a y/N answer on a terminal.",
    )
    common(resume, top=False)
    resume.add_argument("host", nargs="?", help="name, address or address:port")
    resume.add_argument(
        "index",
        nargs="?",
        type=_argument_type(parse_index, "index"),
        help="thread index, as `info` shows",
    )
    resume.add_argument(
        "state",
        nargs="?",
        type=_argument_type(parse_state, "state"),
        help="move the task to this state first (e.g. C1Done, TreeDBuilt, Aborted)",
    )
    add_selectors(resume)
    resume.add_argument(
        "--to-state",
        metavar="STATE",
        type=_argument_type(parse_state, "state"),
        help="with selectors: move each task to STATE first (checked against its plan)",
    )
    add_confirmation(resume)
    resume.add_argument(
        "--force",
        action="store_true",
        help="needed besides --yes (or the y/N) to resume into Finished (finalises the"
        " sector without a proof) or Aborted (drops the sector and its data)",
    )
    resume.set_defaults(handler=command_resume)

    health = commands.add_parser(
        "health",
        help="judge the fleet for cron and monitoring (exit 0 OK 1 WARNING 2 CRITICAL 3 UNKNOWN)",
        description=HEALTH_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common(health, top=False, deadline=False)  # its own --deadline, with UNKNOWN
    duration = _argument_type(parse_duration, "duration")
    health.add_argument(
        "-l",
        "--limit",
        action="append",
        type=LIMIT_TYPE,
        help="names, groups or globs (comma-separated); default: every host",
    )
    health.add_argument(
        "--expiration",
        type=duration,
        metavar="DURATION",
        help="heartbeat older than this is CRITICAL (default 10m)",
    )
    health.add_argument(
        "--paused-warn",
        type=duration,
        metavar="DURATION",
        help="a thread paused by hand this long is a WARNING (default 1h)",
    )
    health.add_argument(
        "--paused-crit",
        type=duration,
        metavar="DURATION",
        help="a thread paused by an error this long is CRITICAL, before that WARNING (default 6h)",
    )
    health.add_argument(
        "--stuck",
        action="append",
        metavar="KEY=DURATION",
        type=_argument_type(parse_stuck_option, "KEY=DURATION"),
        help="a job this long in a stage (PC1, C2, WaitSeed, ...) or state (C1Done, ...)"
        " is stuck: a WARNING; repeatable; a state beats its stage; 'default' for the rest",
    )
    health.add_argument(
        "--deadline",
        "-t",
        "--timeout",  # the monitoring-plugin guidelines' name for it
        dest="deadline",
        type=_argument_type(_positive_duration, "duration"),  # 0s: UNKNOWN every time
        default=argparse.SUPPRESS,  # `venusctl --deadline 30s health` keeps the 30s
        metavar="DURATION",
        help="the whole run ends by then, else UNKNOWN (default 60s; -t 45 is 45 seconds)",
    )
    health.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="below each line of identical findings, one line per thread or host; and what"
        " could not be judged (e.g. a damocles-worker thread whose time in state is not"
        " reported: INFO lines)",
    )
    health.add_argument("-V", "--version", action="version", version=VERSION_TEXT)
    health.add_argument(
        "--prometheus",
        metavar="FILE",
        type=_argument_type(check_not_empty("textfile path", "--prometheus venus.prom"), "path"),
        help="also write the venus_fleet_* series to FILE, a node_exporter textfile (*.prom)",
    )
    health.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="print nothing when the status is OK (--json too)",
    )
    health.set_defaults(handler=command_health)
    drain = commands.add_parser(
        "drain",
        help="pause every selected thread at its next stage boundary and wait",
        description="Pause every thread of HOST (or every thread the selectors match) at"
        " its next stage boundary, keeping the finished stage's result, then wait until"
        " none is Running or Waiting. Exit 0 when drained, 1 on timeout (naming the"
        " threads still running), 130 on Ctrl-C. When it gives up, the pauses it queued"
        " and that the threads have not taken yet are cancelled (--keep-queued keeps"
        " them); a damocles-worker cannot cancel one, so its threads still pause at their"
        " next boundary, and the result says so for each.",
    )
    common(drain, top=False)
    drain.add_argument("target", nargs="?", metavar="HOST", help="name, address or address:port")
    add_selectors(drain)
    drain.add_argument(
        "--timeout",
        type=_argument_type(parse_duration, "duration"),
        default=7200.0,
        help="give up after this long (default 2h)",
    )
    drain.add_argument(
        "--interval",
        type=_argument_type(_positive_duration, "duration"),
        default=2.0,
        help="time between polls (default 2s)",
    )
    drain.add_argument(
        "--keep-queued",
        action="store_true",
        help="on timeout or Ctrl-C, leave the pauses still queued (by default they are"
        " cancelled: the threads keep running)",
    )
    drain.set_defaults(handler=command_drain)

    logs = commands.add_parser(
        "logs",
        help="what a thread's last stage runs printed (stdout and stderr)",
        description="What thread INDEX of HOST printed on stdout and stderr in its last stage"
        " runs: the agent keeps the last 8 runs of each thread, up to 1 MiB each, in its store"
        " (docs/protocol.md, WorkerStageLog). By default the newest run (the one that failed,"
        " or the one running) with its last 50 lines; each line with its time and stream,"
        " worker text escaped. Through the stream channel, or the agent's CLI over exec,"
        " which reads the store itself while the daemon is down.",
    )
    common(logs, top=False)
    logs.add_argument("host", help="name, address or address:port")
    logs.add_argument(
        "index", type=_argument_type(parse_index, "index"), help="thread index, as `info` shows"
    )
    logs.add_argument(
        "--stage",
        type=_argument_type(parse_stage, "stage"),
        help="the newest runs of this stage (PC1, C2, ...) instead",
    )
    logs.add_argument(
        "-n",
        "--lines",
        type=_argument_type(_parse_lines, "lines"),
        default=50,
        metavar="LINES",
        help="the last LINES lines of each run (default 50), or all",
    )
    runs = logs.add_mutually_exclusive_group()
    runs.add_argument(
        "--runs",
        type=_argument_type(_parse_count, "count"),
        default=1,
        metavar="N",
        help="the newest N runs (default 1), oldest first",
    )
    runs.add_argument("--all", action="store_true", help="every run the agent kept")
    logs.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="then print new lines and new runs as they come, until Ctrl-C (--json: one"
        " line per run with its new lines)",
    )
    logs.set_defaults(handler=command_logs)

    journal = commands.add_parser(
        "journal",
        help="the agent's own log: journalctl -u UNIT on the host",
        description="Run `journalctl --unit UNIT --lines LINES --no-pager --output"
        " short-iso` on HOST through SSH (here for a local host), UNIT from the inventory's"
        " `unit` (default venus-worker.service, damocles-worker.service for a damocles"
        " host). The command is an argv of checked values, quoted once; every line is"
        " printed with its control characters escaped. The SSH user needs to be allowed to"
        " read that journal (group systemd-journal or adm).",
    )
    common(journal, top=False)
    journal.add_argument("host", help="name, address or address:port")
    journal.add_argument(
        "-n",
        "--lines",
        type=_argument_type(_parse_lines, "lines"),
        default=50,
        metavar="LINES",
        help="the last LINES lines (default 50), or all",
    )
    journal.add_argument(
        "-f", "--follow", action="store_true", help="then new lines as they come, until Ctrl-C"
    )
    journal.set_defaults(handler=command_journal)

    ssh = commands.add_parser(
        "ssh",
        help="OpenSSH to a host with the inventory's settings (a session, or COMMAND)",
        description="Run OpenSSH's ssh to HOST as venusctl reaches it: the inventory's user,"
        " port, identity file, known_hosts and host-key policy over ~/.ssh/config's (or the"
        " inventory's ssh_config), jump hosts and ProxyCommand included, so an operator"
        " never retypes them. Without COMMAND an interactive session; with it, COMMAND run"
        " there, its words joined by spaces for the remote shell as ssh does (quote what"
        " the remote shell must not expand). ssh is run with `-F none` and every setting as"
        " -o options (--print shows them). Exit status: the remote command's, or 255 when"
        " ssh itself failed.",
    )
    common(ssh, top=False)
    ssh.add_argument("host", help="name, address or address:port")
    ssh.add_argument(
        "command", nargs=argparse.REMAINDER, metavar="COMMAND", help="what to run there"
    )
    ssh.add_argument(
        "--print", action="store_true", help="print the ssh command line instead of running it"
    )
    ssh.set_defaults(handler=command_ssh)

    completion = commands.add_parser(
        "completion",
        help="print the shell completion script for bash, zsh or fish",
        description="Print a completion script: commands, options, host names and groups"
        " of the inventory, thread indexes (asked of the host), state, stage, plan and"
        " column names. bash: `source <(venusctl completion bash)`, or save it as"
        " ~/.local/share/bash-completion/completions/venusctl; zsh: `source <(venusctl"
        " completion zsh)` after compinit, or save it as _venusctl in your $fpath; fish:"
        " `venusctl completion fish | source`, or save it as"
        " ~/.config/fish/completions/venusctl.fish.",
    )
    completion.add_argument("shell", choices=tuple(COMPLETIONS), help="bash, zsh or fish")
    completion.set_defaults(handler=command_completion, inventory_free=True)

    listing = commands.add_parser("inventory", help="the hosts as venusctl reads them")
    common(listing, top=False)
    listing.add_argument(
        "--ansible", action="store_true", help="Ansible's dynamic-inventory JSON (playbooks/)"
    )
    listing.add_argument(
        "--check",
        action="store_true",
        help="check the inventory: no two hosts of one miner with overlapping sector_numbers"
        " (exit 1 naming each pair)",
    )
    add_table_options(listing, INVENTORY_TABLE, wide=False)
    listing.set_defaults(handler=command_inventory)

    keeper = commands.add_parser(
        "keeper",
        help="the connection keeper: what it holds, or stop it",
        description="The connection keeper holds this user's SSH connections between runs"
        " (started by the first command that reaches a host over SSH; it ends after the"
        " inventory's [defaults] persist, 10m by default, without a request; persist = 0,"
        " $VENUSCTL_PERSIST=0 or --no-persist: none). `status` (the default) shows it and"
        " its connections, exit 1 when none runs; `stop` ends it now.",
    )
    common(keeper, top=False, deadline=False)
    keeper.add_argument("action", nargs="?", choices=("status", "stop"), default="status")
    keeper.set_defaults(handler=command_keeper, inventory_free=True)
    add_history_commands(commands, common)
    return parser


def add_history_commands(commands: Any, common: Callable[..., None]) -> None:
    """The parser blocks of sector, history and stats (issue 15)."""
    sector = commands.add_parser(
        "sector",
        help="where a sector is and what happened to it, across the fleet",
        description="Find SECTOR_ID (s-t01000-2, t01000-2 or 1000:2) across the fleet (or"
        " --limit): the hosts and threads working on it now (their live thread list), then"
        " every agent's history. Prints where it is, its state, stage, time in state and last"
        " error, and its event log oldest first, as `lotus-miner sectors status --log`. A"
        " damocles-worker is searched through its live list only (it keeps no history)."
        " Exit 1 when no host has it, or some host could not be asked.",
    )
    common(sector, top=False)
    sector.add_argument("sector", metavar="SECTOR_ID", help="s-t01000-2, t01000-2 or 1000:2")
    sector.add_argument(
        "-l", "--limit", action="append", type=LIMIT_TYPE, help="names, groups or globs"
    )
    sector.set_defaults(handler=command_sector)

    history = commands.add_parser(
        "history",
        help="one sealing thread's history",
        description="The history of HOST's thread INDEX, oldest first: every state change"
        " (stage, run time, outcome), retry, abort, pause, resume and auto-resume, with who"
        " asked. Read from the daemon, or from its files while it is down (exec transport).",
    )
    common(history, top=False)
    history.add_argument("host", help="name, address or address:port")
    history.add_argument("index", type=_argument_type(parse_index, "index"), help="thread index")
    history.add_argument(
        "-n",
        "--limit",
        dest="entries",  # not "limit": that is the host pattern everywhere else (completion)
        type=_argument_type(_parse_entry_count, "count"),
        default=100,
        metavar="K",
        help="the last K entries (default 100; 0: all)",
    )
    history.set_defaults(handler=command_history)

    stats = commands.add_parser(
        "stats",
        help="per stage: tasks, p50, p90, max, failures, across the selected threads",
        description="For each stage, over the histories of the selected threads: tasks (runs"
        " that succeeded), p50, p90 and max run time, failed runs and the most common error."
        " Computed on each host (only the figures travel); the fleet's p50/p90 are merged from"
        " the hosts' buckets (within 2.2 %%). --by-host shows every host's own figures, the"
        " slowest first: which host is slow at which stage. On a terminal a bar per row shows"
        " p50 (solid) and p90 (shaded), scaled to the slowest.",
    )
    common(stats, top=False)
    add_selectors(stats)
    stats.add_argument(
        "--since",
        type=_argument_type(_positive_duration, "duration"),
        metavar="DURATION",
        help="only runs in the last DURATION (7d, 12h, 30m)",
    )
    stats.add_argument(
        "--by-host", action="store_true", help="a row per stage and host, slowest first"
    )
    stats.set_defaults(handler=command_stats)


# =============================================================================
# Completion and the man page, both read from the parser
# =============================================================================

# What the value of an argument is, by its dest, for `venusctl __complete`; choices
# (--color, -o, the shells) come from the parser itself, --columns and --sort from their
# table's spec.
VALUE_KINDS = {
    "inventory": "files",
    "fleet": "fleets",
    "limit": "limit",
    "host": "hosts",
    "target": "hosts",
    "index": "index",
    "states": "state-list",
    "state": "states",
    "to_state": "states",
    "stage": "stages",
    "plan": "plans",
}


# Thread indexes are asked of the host itself: never longer than this for a TAB.
COMPLETE_TIMEOUT = 3.0


@dataclass
class Walk:
    """Where the words before the cursor left the parser: the (sub)parser, the option
    whose value comes next (if any), the positionals filled and the values seen."""

    parser: argparse.ArgumentParser
    command: str | None = None
    expecting: argparse.Action | None = None
    positionals: int = 0
    values: dict[str, str] = field(default_factory=dict)


def walk_words(parser: argparse.ArgumentParser, words: Sequence[str]) -> Walk:
    walk = Walk(parser)
    rest_positional = False
    for word in words:
        if walk.expecting is not None:
            walk.values[walk.expecting.dest] = word
            walk.expecting = None
        elif word == "--":
            rest_positional = True
        elif word.startswith("-") and len(word) > 1 and not rest_positional:
            _walk_option(walk, word)
        elif walk.command is None and _subcommands(walk.parser):
            choices = _subcommands(walk.parser).choices
            if word in choices:
                walk.command, walk.parser = word, choices[word]
        else:
            positionals = _positionals(walk.parser)
            if walk.positionals < len(positionals):
                walk.values.setdefault(positionals[walk.positionals].dest, word)
                if positionals[walk.positionals].nargs not in ("*", argparse.REMAINDER):
                    walk.positionals += 1
    return walk


def _walk_option(walk: Walk, word: str) -> None:
    options = walk.parser._option_string_actions
    name, equals, value = word.partition("=")
    action = options.get(name)
    if action is None and not word.startswith("--") and word[:2] in options:
        name, value, equals = word[:2], word[2:], "x" if word[2:] else ""
        action = options[name]
    if isinstance(action, argparse._StoreTrueAction):
        walk.values[action.dest] = ""  # a flag that matters to what is offered: --no-persist
    if action is None or not _takes_value(action):
        return
    if equals:
        walk.values[action.dest] = value
    elif action.nargs is None:
        walk.expecting = action


def _takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0 and not isinstance(
        action, (argparse._StoreConstAction, argparse._HelpAction, argparse._VersionAction)
    )


def _subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def _positionals(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        action
        for action in parser._get_positional_actions()
        if not isinstance(action, argparse._SubParsersAction)
    ]


def _short(text: str | None) -> str:
    """A help text's first sentence, short enough for a completion menu."""
    first = (text or "").split("; ")[0].split(". ")[0].replace("\n", " ")
    return first if len(first) <= 70 else first[:69] + CUT_MARK


def complete(
    words: Sequence[str], current: str, env: Environment
) -> tuple[str, list[tuple[str, str]]]:
    """The candidates for `current` after `words` (the command line before it, without
    the program's name): (directive, [(value, description)]). The directive is "files"
    when the shell should complete a file name, else "-". Never raises for a bad line:
    a TAB offers what it can."""
    walk = walk_words(build_parser(), words)
    action = walk.expecting
    prefix = ""
    if action is None and current.startswith("-") and "=" in current:
        name, _, current = current.partition("=")
        found = walk.parser._option_string_actions.get(name)
        if found is not None and _takes_value(found):
            action, prefix = found, f"{name}="
    if action is not None:
        directive, found = _action_values(action, current, walk, env)
        return directive, [(prefix + value, text) for value, text in found]
    if current.startswith("-"):
        return "-", _options(walk.parser, current)
    if walk.command is None:
        subcommands = _subcommands(walk.parser)
        helps = {choice.dest: choice.help for choice in subcommands._choices_actions}
        return "-", [
            (name, _short(helps.get(name)))
            for name in subcommands.choices
            if name.startswith(current) and name in helps
        ]
    positionals = _positionals(walk.parser)
    if walk.positionals < len(positionals):
        return _action_values(positionals[walk.positionals], current, walk, env)
    return "-", _options(walk.parser, current) if not current else []


def _options(parser: argparse.ArgumentParser, current: str) -> list[tuple[str, str]]:
    found = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS:
            continue
        for option in action.option_strings:
            if option.startswith(current) and (option.startswith("--") or len(current) < 3):
                found.append((option, _short(action.help)))
    return found


def _action_values(
    action: argparse.Action, current: str, walk: Walk, env: Environment
) -> tuple[str, list[tuple[str, str]]]:
    spec = getattr(action, "spec", None)
    if spec is not None:
        names = [(column.header.lower(), column.header) for column in spec.columns]
        return "-", _listed(current, names, ",")
    if action.choices and not isinstance(action, argparse._SubParsersAction):
        return "-", [(str(c), "") for c in action.choices if str(c).startswith(current)]
    kind = VALUE_KINDS.get(action.dest)
    if kind == "files":
        return "files", []
    try:
        return "-", _kind_values(kind, current, walk, env)
    except (VenusctlError, HostError, OSError, ValueError):
        return "-", []  # no inventory, a host that does not answer: nothing to offer


def _listed(current: str, names: Sequence[tuple[str, str]], separators: str) -> list:
    """Candidates for the last item of a list being typed (`index,sta` -> `index,state`)."""
    cut = max(current.rfind(separator) for separator in separators) + 1
    head, tail = current[:cut], current[cut:]
    for mark in "!&":  # a limit term: exclude or intersect
        if separators != "," and tail.startswith(mark):
            head, tail = head + mark, tail[1:]
    return [(head + name, text) for name, text in names if name.startswith(tail)]


def _kind_values(kind: str | None, current: str, walk: Walk, env: Environment) -> list:
    if kind == "states":
        return [(name, "") for name in STATE_NAMES if name.startswith(current)]
    if kind == "state-list":
        return _listed(current, [(name, "") for name in STATE_NAMES], ",")
    if kind == "stages":
        return [(name, "") for name in STAGE_NAMES if name.startswith(current)]
    if kind == "plans":
        return [(name, "") for name in PLAN_NAMES if name.startswith(current)]
    if kind == "fleets":
        return [(name, "fleet") for name in fleet_names(env.environ, env.system_config)]
    if kind not in ("hosts", "limit", "index"):
        return []
    inventory = _line_inventory(walk, env)
    if kind == "hosts":
        return [(h.name, h.dest) for h in inventory.hosts if h.name.startswith(current)]
    if kind == "limit":
        names = [("all", "every host")] + [(host.name, host.dest) for host in inventory.hosts]
        names += [
            (group, f"group of {_plural(sum(group in h.groups for h in inventory.hosts), 'host')}")
            for group in inventory.groups
        ]
        return _listed(current, names, ",:")
    return _thread_indexes(inventory, walk, current, env)


def _line_inventory(walk: Walk, env: Environment) -> Inventory:
    """The inventory the command being typed would read (its -i or --fleet, else the rules)."""
    source = find_inventory(
        walk.values.get("inventory"), walk.values.get("fleet"), env.environ, env.system_config
    )
    return load_inventory(source.path)


def _alive_keeper(inventory: Inventory, env: Environment, no_persist: bool) -> KeeperClient | None:
    """This user's keeper if one is alive and may be used (it is never started here)."""
    persist = persist_seconds(inventory, env.environ, no_persist)
    if persist <= 0 or not hasattr(socket, "SO_PEERCRED"):
        return None
    keeper = KeeperClient(env.environ, persist, False, lambda text: None, inventory.path)
    try:
        return keeper if keeper.running() else None
    except KeeperUnavailable:
        return None


def _thread_indexes(inventory: Inventory, walk: Walk, current: str, env: Environment) -> list:
    """The host's thread indexes, asked of it (within COMPLETE_TIMEOUT), with their state:
    through this user's keeper when one is alive (a TAB never starts one)."""
    host = resolve_target(inventory, walk.values.get("host", ""))
    keeper = _alive_keeper(inventory, env, no_persist="no_persist" in walk.values)
    if keeper is None:  # connecting ourselves: no step may take longer than the TAB's wait
        host = dataclasses.replace(
            host,
            connect_timeout=min(host.connect_timeout or COMPLETE_TIMEOUT, COMPLETE_TIMEOUT),
            command_timeout=min(host.command_timeout, COMPLETE_TIMEOUT),
        )
    ctx = Context(inventory, env, forks=1, ssh=SshContext(env.environ), keeper=keeper)
    until = Deadline(time.monotonic() + COMPLETE_TIMEOUT, COMPLETE_TIMEOUT, "completion")
    try:
        outcome = ctx.ask([host], "status", progress=False, until=until)[host.name]
    finally:
        ctx.ssh.close()
    if not isinstance(outcome, HostStatus) or outcome.threads is None:
        return []
    return [
        (str(t.index), escape_text(f"{t.job_state or 'no task'} {thread_state_text(t)}"))
        for t in outcome.threads
        if str(t.index).startswith(current)
    ]


def split_line(line: str) -> tuple[list[str], str, bool]:
    """A shell line up to the cursor as (words, the word being typed, is it in quotes),
    with quotes and backslashes read as a POSIX shell reads them (an open quote kept open)."""
    words: list[str] = []
    word, started, quote = "", False, ""
    escaped = False
    for char in line:
        if escaped:
            word, escaped = word + char, False
        elif quote:
            if char == quote:
                quote = ""
            elif char == "\\" and quote == '"':
                escaped = True
            else:
                word += char
        elif char in "'\"":
            quote, started = char, True
        elif char == "\\":
            escaped, started = True, True
        elif char.isspace():
            if started or word:
                words.append(word)
            word, started = "", False
        else:
            word, started = word + char, True
    return words, word, bool(quote)


def complete_main(argv: Sequence[str], env: Environment) -> int:
    """`venusctl __complete SHELL line LINE` (bash: the line up to the cursor, and
    --breaks its COMP_WORDBREAKS) or `__complete SHELL words WORD... CURRENT` (zsh, fish:
    the words, unquoted): the directive on the first line, then one candidate a line
    (fish and zsh: value TAB description)."""
    args = list(argv)
    shell = args.pop(0) if args else "bash"
    mode = args.pop(0) if args else "line"
    breaks = ""
    if args[:1] == ["--breaks"]:
        breaks, args = (args[1] if len(args) > 1 else ""), args[2:]
    if args[:1] == ["--"]:
        args = args[1:]
    quoted = False
    if mode == "line":
        words, current, quoted = split_line(args[0] if args else "")
    else:
        words, current = args[:-1], (args[-1] if args else "")
    directive, found = complete(words[1:], current, env)
    cut = 0
    if shell == "bash" and not quoted:
        # bash replaces only what follows the last of its COMP_WORDBREAKS (':', '=')
        cut = max((current.rfind(char) + 1 for char in breaks if char not in "'\"@$><;|&("),
                  default=0)  # fmt: skip
    lines = [directive]
    for value, text in found:
        value = value[cut:] if value.startswith(current[:cut]) else value
        lines.append(f"{value}\t{text}" if shell in ("zsh", "fish") and text else value)
    env.stdout.write("\n".join(lines) + "\n")
    return 0


BASH_COMPLETION = """\
# bash completion for venusctl (from `venusctl completion bash`). Load it in this shell
# with:  source <(venusctl completion bash)
# or for good:  venusctl completion bash > ~/.local/share/bash-completion/completions/venusctl
_venusctl_complete() {
    local IFS=$'\\n' reply
    reply=($("${COMP_WORDS[0]}" __complete bash line --breaks "$COMP_WORDBREAKS" -- \\
        "${COMP_LINE:0:COMP_POINT}" 2>/dev/null)) || return 0
    if [[ ${reply[0]} == files ]]; then
        compopt -o filenames 2>/dev/null
        COMPREPLY=($(compgen -f -- "${COMP_WORDS[COMP_CWORD]}"))
    else
        COMPREPLY=("${reply[@]:1}")
    fi
}
complete -F _venusctl_complete venusctl
"""


ZSH_COMPLETION = """\
#compdef venusctl
# zsh completion for venusctl (from `venusctl completion zsh`). Load it with:
#   source <(venusctl completion zsh)      (after compinit)
# or for good: venusctl completion zsh > "${fpath[1]}/_venusctl"
_venusctl() {
    local -a reply values shown
    local line
    reply=("${(@f)$("${words[1]}" __complete zsh words -- "${(@Q)words[1,CURRENT-1]}" \\
        "${(Q)PREFIX}" 2>/dev/null)}")
    if [[ ${reply[1]} == files ]]; then
        _files
        return
    fi
    for line in "${(@)reply[2,-1]}"; do
        [[ -n $line ]] || continue
        values+=("${line%%$'\\t'*}")
        if [[ $line == *$'\\t'* ]]; then
            shown+=("${line%%$'\\t'*}  -- ${line#*$'\\t'}")
        else
            shown+=("$line")
        fi
    done
    (( ${#values} )) && compadd -l -d shown -a values
}
if [[ ${funcstack[1]} == _venusctl ]]; then
    _venusctl "$@"
else
    compdef _venusctl venusctl
fi
"""


FISH_COMPLETION = """\
# fish completion for venusctl (from `venusctl completion fish`). Load it with:
#   venusctl completion fish | source
# or for good: venusctl completion fish > ~/.config/fish/completions/venusctl.fish
function __venusctl_complete
    set -l tokens (commandline -opc)
    set -l current (commandline -ct)
    set -l reply ($tokens[1] __complete fish words -- $tokens $current 2>/dev/null)
    test (count $reply) -gt 0; or return
    if test "$reply[1]" = files
        __fish_complete_path $current
    else if test (count $reply) -gt 1
        printf '%s\\n' $reply[2..-1]
    end
end
complete -c venusctl -f -a '(__venusctl_complete)'
"""


COMPLETIONS = {"bash": BASH_COMPLETION, "zsh": ZSH_COMPLETION, "fish": FISH_COMPLETION}


def command_completion(ctx: Context, args: argparse.Namespace) -> ExitStatus:
    ctx.out.write(COMPLETIONS[args.shell])
    return ExitStatus.OK


# -- the man page: venusctl(1), from the parser's own texts


def _roff(text: str) -> str:
    """Text for roff: backslashes and a line's leading dot or quote made harmless."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(
        "\\&" + line if line.startswith((".", "'")) else line for line in text.split("\n")
    )


def _man_option(action: argparse.Action) -> list[str]:
    names = ", ".join(f"\\fB{_roff(option)}\\fR" for option in action.option_strings)
    if not action.option_strings:
        names = f"\\fI{_roff(action.metavar or action.dest)}\\fR"
    elif _takes_value(action) and not action.choices:
        names += f" \\fI{_roff(str(action.metavar or action.dest.upper()))}\\fR"
    elif action.choices and _takes_value(action):
        names += f" \\fI{_roff('|'.join(map(str, action.choices)))}\\fR"
    return [".TP", names, _roff(action.help or "")]


def _man_description(parser: argparse.ArgumentParser) -> list[str]:
    text = (parser.description or "").strip()
    if not text:
        return []
    if parser.formatter_class is argparse.RawDescriptionHelpFormatter:
        return [".nf", _roff(text), ".fi"]
    return [_roff(text)]


MAN_SECTIONS = {
    "ENVIRONMENT": [
        ("VENUSCTL_INVENTORY", "the inventory file, when neither -i nor --fleet is given"),
        ("VENUSCTL_FLEET", "the named fleet, after $VENUSCTL_INVENTORY"),
        ("XDG_CONFIG_HOME", "the user's config folder (default ~/.config): venusctl/ in it"),
        ("NO_COLOR", "set and not empty: no colour, unless --color always"),
        ("COLUMNS", "the width tables are cut to on a terminal"),
    ],
    "FILES": [
        ("./inventory.toml", "the inventory, when none is given"),
        ("~/.config/venusctl/inventory.toml", "next, the user's"),
        ("~/.config/venusctl/NAME.toml", "the fleet NAME (--fleet NAME)"),
        ("/etc/venusctl/inventory.toml", "last, the machine's (and /etc/venusctl/NAME.toml)"),
    ],
}


def man_page(parser: argparse.ArgumentParser | None = None) -> str:
    """venusctl(1) in roff, from the parser: every command, option and help text."""
    parser = parser or build_parser()
    summary = __doc__.split("\n", 1)[0].split(": ", 1)[1]
    lines = [
        f'.TH VENUSCTL 1 "" "venusctl {__version__}" "User Commands"',
        ".SH NAME",
        f"venusctl \\- {_roff(summary)}",
        ".SH SYNOPSIS",
        ".B venusctl",
        "[\\fIOPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGUMENTS\\fR]",
        ".SH DESCRIPTION",
        ".nf",
        _roff(__doc__.split("\n\n", 1)[1].strip()),
        ".fi",
        ".SH OPTIONS",
        "These go before or after the command.",
    ]
    for action in parser._actions:
        if action.option_strings and action.help != argparse.SUPPRESS:
            lines += _man_option(action)
    lines.append(".SH COMMANDS")
    subcommands = _subcommands(parser)
    helps = {choice.dest: choice.help for choice in subcommands._choices_actions}
    common = {option for a in parser._actions for option in a.option_strings}
    for name, sub in subcommands.choices.items():
        if name not in helps:
            continue
        positionals = " ".join(f"\\fI{_roff(a.metavar or a.dest)}\\fR" for a in _positionals(sub))
        lines += [f".SS {name}", f"\\fBvenusctl {name}\\fR [\\fIOPTIONS\\fR] {positionals}",
                  ".PP", _roff(helps[name] or "") + ".", ".PP"]  # fmt: skip
        lines += _man_description(sub)
        for action in sub._actions:
            own = [option for option in action.option_strings if option not in common]
            shown = action.help != argparse.SUPPRESS and not isinstance(
                action, argparse._HelpAction
            )
            if shown and (own or not action.option_strings):
                lines += _man_option(action)
    for title, entries in MAN_SECTIONS.items():
        lines.append(f".SH {title}")
        for term, text in entries:
            lines += [".TP", f"\\fB{_roff(term)}\\fR", _roff(text)]
    lines += [
        ".SH EXIT STATUS",
        "0 all done, 1 some host or operation failed, 2 usage or configuration error,"
        " 130 interrupted; \\fBhealth\\fR: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.",
        ".SH SEE ALSO",
        "\\fBvenus\\-worker\\fR(1), \\fBssh\\fR(1), \\fBssh_config\\fR(5),"
        " \\fBjournalctl\\fR(1), \\fBansible\\fR(1)",
    ]
    return "\n".join(lines) + "\n"


class _ManAction(argparse.Action):
    """--help-man: print venusctl(1) and exit, as --help does."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        sys.stdout.write(man_page(parser))
        parser.exit()


# =============================================================================
# main
# =============================================================================


def requested_command(argv: Sequence[str]) -> str | None:
    """The command word of argv, even when argv does not parse: read as completion reads a
    line, with the parser's own options (their values are never taken for the command)."""
    return walk_words(build_parser(), argv).command


def json_requested(argv: Sequence[str]) -> bool:
    """--json or -o json anywhere in argv (even when argv does not parse)."""
    words = list(argv)
    for position, word in enumerate(words):
        if word in ("--json", "-ojson", "--output=json"):
            return True
        if word in ("-o", "--output") and words[position + 1 : position + 2] == ["json"]:
            return True
    return False


def _fail(
    argv: Sequence[str],
    env: Environment,
    message: str,
    status: int,
    code: str,
    document: dict[str, Any] | None = None,
) -> int:
    """How a failed run ends: one line on stderr, or under --json one document on stdout,
    `{"error": {"code": ..., "message": ...}}` (with `document`'s keys when there is one),
    the exit status the same either way. `health` answers as a monitoring plugin:
    `VENUS UNKNOWN - <message>`, exit 3 (its --json document: status UNKNOWN and the error).
    """
    as_json = json_requested(argv)
    error = {"error": {"code": code, "message": message}}
    if requested_command(argv) == "health":
        line = f"VENUS UNKNOWN - {escape_text(message, also='|')}"
        if as_json:
            health = {"status": "UNKNOWN", "summary": line, "findings": [], "hosts": []}
            env.stdout.write(json.dumps({**health, **error}, indent=2) + "\n")
        else:
            env.stdout.write(line + "\n")
        return int(Severity.UNKNOWN)
    if as_json:
        env.stdout.write(json.dumps({**(document or {}), **error}, indent=2) + "\n")
    else:
        env.stderr.write(f"venusctl: {escape_text(message)}\n")
    return int(status)


def _run(argv: list[str], env: Environment) -> int:
    # argparse writes --help and usage to sys.stdout/sys.stderr: those of `env` here.
    with contextlib.redirect_stdout(env.stdout), contextlib.redirect_stderr(env.stderr):
        args = build_parser().parse_args(argv)
    output = getattr(args, "output", None)
    if output == "wide":
        args.wide, args.output = True, "table"
    if getattr(args, "inventory_free", False):  # completion, keeper: per user, not per inventory
        source, inventory = None, Inventory(Path(DEFAULT_INVENTORY), ())
    else:
        source = find_inventory(args.inventory, args.fleet, env.environ, env.system_config)
        inventory = load_inventory(source.path)
    run_deadline = None
    if args.deadline is not None and args.command != "health":  # health: its UNKNOWN rule
        run_deadline = Deadline(time.monotonic() + args.deadline, args.deadline, "--deadline")
    ctx = Context(
        inventory,
        env,
        as_json=args.json or output == "json",
        debug=args.debug,
        forks=args.forks,
        full=args.full,
        ssh=SshContext(env.environ),
        deadline=run_deadline,
        source=source,
        color=args.color,
        keeper=keeper_for(args.command, args, inventory, env),
    )
    try:
        return int(args.handler(ctx, args))
    finally:
        ctx.ssh.close()  # the jump host connections, after every session is closed


def main(argv: Sequence[str] | None = None, env: Environment | None = None) -> int:
    """Run venusctl on `argv` (sys.argv[1:]) in `env` (this process's); returns the exit
    status. Only the __main__ guard exits."""
    if argv is None:
        collect_less_often()
    status = _main(sys.argv[1:] if argv is None else list(argv), env or Environment())
    if argv is None:
        # The process ends next (the console script): the collections of its exit would
        # only look through objects the exit frees anyway (~12 ms at 300 hosts).
        gc.freeze()
    return status


# Python collects its young objects every 700 allocations. Nearly everything a run or a
# keeper allocates lives on (the module, the inventory, the hosts, their connections and
# answers), so each collection looks at the same objects again for nothing: a warm
# 300-host list made 29 collections after its import (~6 ms), its keeper ~5 ms a run.
# Every 10,000, the cycles a long run makes (--watch, drain, the keeper) are still freed.
GC_YOUNG_THRESHOLD = 10_000


def collect_less_often() -> None:
    """For a process of venusctl's own (the console script, the keeper), never for a
    program that calls main(): its collector's settings are its own."""
    gc.freeze()  # what the imports made: never garbage, never looked at again
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def _main(argv: list[str], env: Environment) -> int:
    if argv[:1] == ["__complete"]:  # a shell's TAB: hidden, never an error on the screen
        try:
            return complete_main(argv[1:], env)
        except Exception:  # noqa: BLE001 - a TAB that cannot be completed offers nothing
            return 0
    try:
        return _run(argv, env)
    except _ParserExit as done:
        return done.status
    except VenusctlError as error:
        return _fail(argv, env, str(error), error.exit_status, error.code, error.document)
    except KeyboardInterrupt:
        return _fail(argv, env, "interrupted", ExitStatus.INTERRUPTED, "interrupted")
    except BrokenPipeError:
        # `venusctl list | head`: the reader left; nothing more to say.
        return int(ExitStatus.FAILED)
    except Exception as error:
        if "--debug" in argv:
            import traceback

            env.stderr.write(escape_lines(traceback.format_exc()))
        return _fail(argv, env, describe_unexpected(error), ExitStatus.FAILED, "internal-error")


if __name__ == "__main__":
    sys.exit(main())
