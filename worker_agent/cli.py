"""venus-worker: run the sealing daemon, or manage a running one.

    venus-worker daemon -c CONFIG
    venus-worker worker [-c CONFIG | --socket PATH] list   [--json]
    venus-worker worker [-c CONFIG | --socket PATH] pause  --index N [--json]
    venus-worker worker [-c CONFIG | --socket PATH] resume --index N [--state S] [--json]
    venus-worker worker [-c CONFIG | --socket PATH] cancel-pause --index N [--json]
    venus-worker worker [-c CONFIG | --state-dir DIR] report [--json]
    venus-worker worker [-c CONFIG] status [--json]
    venus-worker worker [-c CONFIG | --state-dir DIR] history --index N [--limit K] [--json]
    venus-worker worker [-c CONFIG | --state-dir DIR] sector SECTOR_ID [--json]
    venus-worker worker [-c CONFIG | --state-dir DIR] stats [--since 7d] [--index N] [--json]
    venus-worker worker [-c CONFIG | --socket PATH] logs --index N [--stage S] [-n LINES]
                 [--runs K | --all] [--json]
    venus-worker set-counter -c CONFIG [--miner M] --last N [--json]

pause and resume record who asked in the thread's history: the caller's uid
and pid, and --actor NAME (default $VENUS_WORKER_ACTOR). history, sector and
stats ask the daemon, and read its files when it is not running.

The config may also come from $VENUS_WORKER_CONFIG. With --json, stdout is
exactly one JSON document (docs/protocol.md).

Exit codes: 0 done; 1 the agent refused (RPC error); 2 usage or
configuration error; 3 agent not running (no socket, or connection refused).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from worker_agent import __version__
from worker_agent.api import (
    SUMMARY_KEYS,
    Method,
    RpcCode,
    ThreadState,
    parse_duration,
    parse_sector_id,
)
from worker_agent.api import AgentExit as ExitStatus
from worker_agent.client import AgentClient, AgentNotRunning
from worker_agent.config import ConfigError, load_config
from worker_agent.protocol import RpcError

__all__ = ["ExitStatus", "format_list_line", "humantime", "main"]


# ---------------------------------------------------------------- formatting


def humantime(seconds: int) -> str:
    """Rust humantime's style: 17s, 13m 42s, 1h 2m, 2days 3h."""
    if seconds <= 0:
        return "0s"
    parts = []
    days, rest = divmod(int(seconds), 86400)
    if days:
        parts.append(f"{days}day" + ("s" if days > 1 else ""))
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count}{unit}")
    return " ".join(parts)


def rust_debug(text: str) -> str:
    """A string quoted the way Rust's {:?} prints it (the original list shows last_err so)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    escaped = escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{escaped}"'


def _option(value: Any) -> str:
    return "None" if value is None else f"Some({value})"


def format_list_line(info: dict) -> str:
    """One thread in the seed's format (venus-worker 0.2's `worker list`)."""
    thread_state = info["thread_state"]
    paused = thread_state["state"] == ThreadState.Paused
    elapsed = thread_state.get("elapsed")
    paused_elapsed = humantime(elapsed) if paused and elapsed is not None else None
    last_error = info.get("last_error")
    return (
        f"#{info['index']}: {rust_debug(info['location'])}; "
        f"sector_id={_option(info['job_id'])}, "
        f"paused={'true' if paused else 'false'}, "
        f"paused_elapsed={_option(paused_elapsed)}, "
        f"state={info['job_state'] or 'Empty'}, "
        f"last_err={_option(rust_debug(last_error) if last_error is not None else None)}"
    )


def format_report(report: dict) -> str:
    counts = report["summary"]
    summary = " ".join(f"{key}={counts[key]}" for key in SUMMARY_KEYS if key in counts)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(report["time"]))
    return (
        f"name: {report['name']}  version: {report['version']}  pid: {report['pid']}\n"
        f"last ping: {stamp} (age {report['age']:.1f}s, every {report['ping_interval']:g}s)\n"
        f"summary: {summary}"
    )


# ---------------------------------------------------------------- commands


class Output:
    """Where results go: text lines, or exactly one JSON document."""

    def __init__(self, as_json: bool, stdout: TextIO, stderr: TextIO):
        self.as_json, self.stdout, self.stderr = as_json, stdout, stderr

    def result(self, value: Any, text: str) -> None:
        if self.as_json:
            json.dump(value, self.stdout)
            self.stdout.write("\n")
        elif text:
            print(text, file=self.stdout)

    def error(self, code: int, message: str) -> None:
        if self.as_json:
            json.dump({"error": {"code": int(code), "message": message}}, self.stdout)
            self.stdout.write("\n")
        else:
            print(f"venus-worker: {message}", file=self.stderr)


def _config_path(args) -> str | None:
    return args.config or os.environ.get("VENUS_WORKER_CONFIG")


def _socket_path(args) -> Path:
    if args.socket:
        return Path(args.socket)
    path = _config_path(args)
    if not path:
        raise ConfigError("no agent given: use -c CONFIG or --socket PATH")
    return load_config(path).socket


def _state_dir(args) -> Path:
    if args.state_dir:
        return Path(args.state_dir)
    path = _config_path(args)
    if not path:
        raise ConfigError("no agent given: use -c CONFIG or --state-dir DIR")
    return load_config(path).state_dir


class ReportError(Exception):
    """report.json exists but is not a heartbeat report; str() names the file."""


def read_report(state_dir: Path) -> dict | None:
    """The heartbeat report with its age on this host's clock; None if never written."""
    from worker_agent.daemon import report_path  # the file name lives with its writer

    path = report_path(state_dir)
    try:
        report = json.loads(path.read_text())
        report["age"] = round(time.time() - float(report["time"]), 3)
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, KeyError) as exc:  # the daemon writes it atomically: not ours
        raise ReportError(f"{path}: not a heartbeat report ({type(exc).__name__}: {exc})") from None
    return report


def cmd_list(args, out: Output) -> int:
    with AgentClient(_socket_path(args)) as client:
        infos = client.call(Method.LIST.value)
    out.result(infos, "\n".join(format_list_line(info) for info in infos))
    return ExitStatus.OK


def _actor(args) -> str | None:
    return getattr(args, "actor", None) or os.environ.get("VENUS_WORKER_ACTOR") or None


def cmd_pause(args, out: Output) -> int:
    with AgentClient(_socket_path(args), actor=_actor(args)) as client:
        done = client.call(Method.PAUSE.value, args.index)
    out.result(done, f"#{args.index} worker pause done={str(done).lower()}")
    return ExitStatus.OK


def cmd_resume(args, out: Output) -> int:
    with AgentClient(_socket_path(args), actor=_actor(args)) as client:
        done = client.call(Method.RESUME.value, args.index, args.state)
    out.result(done, f"#{args.index} worker resume done={str(done).lower()}")
    return ExitStatus.OK


def cmd_cancel_pause(args, out: Output) -> int:
    with AgentClient(_socket_path(args), actor=_actor(args)) as client:
        cancelled = client.call(Method.CANCEL_PAUSE.value, args.index)
    text = "queued pause cancelled" if cancelled else "no pause queued (nothing changed)"
    out.result(cancelled, f"#{args.index} {text}")
    return ExitStatus.OK


def stage_log_query(args) -> dict:
    """The WorkerStageLog query of `worker logs`' options (stagelog.check_query checks it)."""
    after = None
    if args.after:
        run, _, line = args.after.partition(":")
        if not (run.isdigit() and line.lstrip("-").isdigit()):
            raise ConfigError(f"--after {args.after!r}: expected RUN:LINE, e.g. 12:40")
        after = {"run": int(run), "line": int(line)}
    return {
        "stage": args.stage,
        "runs": None if args.all else args.runs,
        "lines": None if args.lines == "all" else int(args.lines),
        "after": after,
    }


_UNSEEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def format_stage_log(document: dict) -> str:
    """`worker logs` as text: a line per run, then its lines (controls shown as \\xNN)."""
    lines = []
    for run in document["runs"]:
        ended = "running" if run["ended"] is None else run["outcome"]
        lines.append(
            f"--- #{document['index']} run {run['run']}: stage {run['stage']} "
            f"({run['state']}) {run['sector_id'] or '-'}: {ended}"
        )
        if run["first_line"] and run["lines"] and run["lines"][0]["n"] == run["first_line"]:
            lines.append(f"[{run['first_line']} earlier lines not kept]")
        for line in run["lines"]:
            text = _UNSEEN.sub(lambda m: f"\\x{ord(m.group()):02x}", line["text"])
            lines.append(f"{line['s']}: {text}")
    return "\n".join(lines) or f"#{document['index']}: no stage run logged yet"


def cmd_logs(args, out: Output) -> int:
    query = stage_log_query(args)
    try:
        with AgentClient(_socket_path(args)) as client:
            document = client.call(Method.STAGE_LOG.value, args.index, query)
    except AgentNotRunning:
        document = _stage_log_from_store(args, query)  # the files are there all the same
    out.result(document, format_stage_log(document))
    return ExitStatus.OK


def _stage_log_from_store(args, query: dict) -> dict:
    """The daemon is down: read the stage logs from the thread's store, as it would."""
    from worker_agent.stagelog import QueryError, read_stage_log

    path = _config_path(args)
    if not path:
        raise AgentNotRunning(args.socket or "?", "(give -c CONFIG to read the logs without it)")
    threads = load_config(path).threads
    if not 0 <= args.index < len(threads):
        raise RpcError(RpcCode.INVALID_PARAMS, f"worker #{args.index} not found")
    location = threads[args.index].location
    try:
        found = read_stage_log(location, query)
    except QueryError as exc:
        raise ConfigError(str(exc)) from None
    return {"index": args.index, "location": str(location), **found}


def cmd_report(args, out: Output) -> int:
    state_dir = _state_dir(args)
    report = read_report(state_dir)
    if report is None:
        message = f"no heartbeat report in {state_dir} (has the agent ever run?)"
        out.error(RpcCode.AGENT_NOT_RUNNING, message)
        return ExitStatus.NOT_RUNNING
    out.result(report, format_report(report))
    return ExitStatus.OK


def cmd_status(args, out: Output) -> int:
    state_dir = _state_dir(args)
    try:
        report = read_report(state_dir)
    except ReportError as exc:  # the live thread list is still worth showing
        print(f"venus-worker: {exc}", file=out.stderr)
        report = None
    except OSError as exc:  # e.g. a state folder this user may not read
        print(f"venus-worker: cannot read the heartbeat in {state_dir}: {exc}", file=out.stderr)
        report = None
    threads, error, status = None, None, ExitStatus.OK
    try:
        with AgentClient(_socket_path(args)) as client:
            threads = client.call(Method.LIST.value)
    except AgentNotRunning as exc:
        error, status = exc, ExitStatus.NOT_RUNNING
    except RpcError as exc:
        error, status = exc, ExitStatus.REFUSED
    document = {
        "report": report,
        "threads": threads,
        "error": error.to_json() if error else None,
    }
    lines = [format_report(report) if report else "no heartbeat report yet"]
    lines += [format_list_line(info) for info in threads or []]
    if error:
        lines.append(f"error: {error.message}")
    out.result(document, "\n".join(lines))
    return status


# ---------------------------------------------------------------- history


def _clock_text(seconds: float) -> str:
    return (
        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))
        + f".{int(seconds * 1000) % 1000:03d}"
    )


def seconds_text(seconds: float | None) -> str:
    """1.25s under a minute, humantime's 13m 42s above."""
    if seconds is None:
        return "-"
    return f"{seconds:.3g}s" if seconds < 60 else humantime(int(round(seconds)))


def format_caller(by: dict | None) -> str:
    if not by:
        return ""
    ids = ", ".join(f"{key} {by[key]}" for key in ("uid", "pid") if by.get(key) is not None)
    actor = by.get("actor")
    return f"by {actor} ({ids})" if actor else f"by {ids}"


def format_entry(entry: dict) -> str:
    """One history line: time, thread, kind, states, stage and run time, outcome, who, note."""
    before, after = entry.get("from"), entry.get("to")
    states = f"{before} -> {after}" if before and after and before != after else (after or "-")
    parts = [_clock_text(entry["time"]), f"#{entry['index']}", entry["kind"], states]
    if entry.get("stage"):
        parts.append(f"{entry['stage']} {seconds_text(entry.get('duration'))}")
    outcome = entry.get("outcome")
    if outcome:
        parts.append(outcome if outcome == "ok" else f"{outcome}: {entry.get('error') or ''}")
    if entry.get("requested"):
        parts.append(f"to {entry['requested']}")
    if entry.get("by"):
        parts.append(format_caller(entry["by"]))
    if entry.get("note"):
        parts.append(entry["note"])
    return "  ".join(parts)


def _offline_folder(args):
    """The state folder's history, read from the files (the daemon is not running)."""
    from worker_agent.history import HistoryFolder

    path = _config_path(args)
    config = load_config(path) if path and not args.state_dir else None
    state_dir = Path(args.state_dir) if args.state_dir else config and config.state_dir
    if state_dir is None:
        raise ConfigError("no state folder given: use -c CONFIG or --state-dir DIR")
    folder = HistoryFolder(state_dir)
    if not folder.path.is_dir():
        raise HistoryMissing(f"no history in {state_dir} (history off, or never run?)")
    threads = [(t.index, t.location) for t in config.threads] if config else folder.discover()
    folder.load_logs(threads)
    return folder


class HistoryMissing(Exception):
    """No history folder to read; str() says where it was looked for."""


def _ask_or_read(args, method: str, params: list, offline):
    """The daemon's answer to `method`; from the files (`offline(folder)`) when it is down.

    Returns (result, read_from_files).
    """
    try:
        path = _socket_path(args)
    except ConfigError:
        if not args.state_dir:
            raise
        return offline(_offline_folder(args)), True
    try:
        with AgentClient(path) as client:
            return client.call(method, *params), False
    except AgentNotRunning:
        if not (args.state_dir or _config_path(args)):
            raise
        return offline(_offline_folder(args)), True


def _offline_note(out: Output, offline: bool) -> None:
    if offline and not out.as_json:
        print("(daemon not running: read from its history files)", file=out.stderr)


def cmd_history(args, out: Output) -> int:
    if args.limit is not None and args.limit < 0:
        raise ConfigError("--limit must be 0 (all) or more")
    limit = args.limit or None

    def offline(folder) -> dict:
        from worker_agent.history import HistoryUnavailable

        try:
            return folder.thread_history(args.index, limit)
        except HistoryUnavailable as exc:
            raise HistoryMissing(str(exc)) from None

    history, read = _ask_or_read(args, Method.HISTORY.value, [args.index, limit], offline)
    _offline_note(out, read)
    shown = len(history["entries"])
    lines = [f"#{history['index']} {history['location']}: {shown} of {history['kept']} entries"]
    lines += [format_entry(entry) for entry in history["entries"]]
    out.result(history, "\n".join(lines))
    return ExitStatus.OK


def cmd_sector(args, out: Output) -> int:
    try:
        sector = parse_sector_id(args.sector)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None

    def offline(folder) -> dict:
        return {"sector": sector, "threads": None, "entries": folder.sector_entries(sector)}

    found, read = _ask_or_read(args, Method.SECTOR.value, [sector], offline)
    _offline_note(out, read)
    lines = [f"sector {found['sector']}"]
    if found["threads"] is None:
        lines.append("now: unknown (the daemon is not running)")
    for info in found["threads"] or []:
        lines.append("now: " + format_list_line(info))
    if not found["threads"] and not found["entries"]:
        lines.append(
            "not on this worker, now or in its history"
            if found["threads"] == []
            else "not on this worker in its history"
        )
    lines += [format_entry(entry) for entry in found["entries"]]
    out.result(found, "\n".join(lines))
    held = found["threads"] or found["entries"]
    return ExitStatus.OK if held else ExitStatus.REFUSED


def cmd_stats(args, out: Output) -> int:
    window = None
    if args.since is not None:
        try:
            window = parse_duration(args.since, bare_seconds=True)
        except ValueError as exc:
            raise ConfigError(f"--since: {exc}") from None
    indexes = args.index or None
    params = [window, indexes, args.plan]

    def offline(folder) -> dict:
        return folder.stats(time.time(), window, indexes, args.plan).to_json()

    stats, read = _ask_or_read(args, Method.STATS.value, params, offline)
    _offline_note(out, read)
    out.result(stats, format_stats(stats))
    return ExitStatus.OK


def format_stats(stats: dict) -> str:
    rows = [("Stage", "Tasks", "p50", "p90", "Max", "Failures", "MostCommonError")]
    for stage in stats["stages"]:
        errors = stage["errors"]
        common = f"{errors[0]['error']} (x{errors[0]['count']})" if errors else "-"
        rows.append(
            (
                stage["stage"],
                str(stage["tasks"]),
                *(seconds_text(stage[key]) for key in ("p50", "p90", "max")),
                str(stage["failures"]),
                common,
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    window = (
        "all the history kept"
        if stats["window"] is None
        else f"the last {seconds_text(stats['window'])}"
    )
    lines = [f"threads {', '.join(f'#{i}' for i in stats['threads']) or '(none)'}; {window}"]
    for row in rows:
        lines.append(
            "  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True))
            + "  "
            + row[-1]
        )
    return "\n".join(lines)


def cmd_daemon(args, out: Output) -> int:
    from worker_agent.daemon import DaemonError, run_daemon  # not needed by client commands
    from worker_agent.server import ServerError
    from worker_agent.store import StoreError

    config = load_config(args.config)
    try:
        return run_daemon(config)
    except (DaemonError, ServerError, StoreError) as exc:
        print(f"venus-worker: cannot start: {exc}", file=out.stderr)
        return ExitStatus.REFUSED
    except OSError as exc:  # e.g. a state_dir or location that cannot be created
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"venus-worker: cannot start: {where}{exc.strerror or exc}", file=out.stderr)
        return ExitStatus.REFUSED


def cmd_set_counter(args, out: Output) -> int:
    from worker_agent.daemon import DaemonError, set_counter  # the daemon's files and locks

    config = load_config(args.config)
    miner = args.miner
    if miner is None:
        miners = sorted({thread.sealing.miner for thread in config.threads})
        if len(miners) > 1:
            raise ConfigError(f"the threads seal for several miners ({miners}): give --miner")
        miner = miners[0]
    if args.last < 0:
        raise ConfigError("--last must be 0 or more")
    try:
        value, witnessed = set_counter(config, miner, args.last)
    except DaemonError as exc:
        out.error(RpcCode.INTERNAL_ERROR, f"cannot set the counter: {exc}")
        return ExitStatus.REFUSED
    text = f"sector counter of miner {miner}: {value} (the next sector is s-t0{miner}-{value + 1})"
    if value > args.last:
        text += (
            f"; not {args.last}: the counter never goes below a number already handed out "
            f"(the stores' records show numbers up to {witnessed})"
        )
    out.result({"miner": miner, "last": value}, text)
    return ExitStatus.OK


# ---------------------------------------------------------------- parser


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON document")


EXIT_CODES = "exit codes: 0 done, 1 agent refused, 2 usage/config error, 3 agent not running"

TOP_HELP = """\
Sealing worker agent: runs sealing threads and answers a JSON-RPC control
API on a Unix socket (no network port).

examples:
  venus-worker daemon -c worker_agent/assets/venus-worker.mock.toml
  venus-worker worker -c CONFIG list
  venus-worker worker -c CONFIG resume --index 0 --state PC1Done
"""

DAEMON_HELP = """\
Run the sealing daemon in the foreground (log lines on stderr). SIGTERM or
SIGINT stops it cleanly: every thread stops at a stage boundary with its state
saved, then the socket is removed. A restart continues every thread where it
was; paused threads stay paused. A config problem is one line naming the file
and the key, exit 2."""

WORKER_HELP = """\
Talk to a running daemon. Give the daemon's config (-c, or $VENUS_WORKER_CONFIG)
to find its socket and state folder, or name them directly with --socket /
--state-dir. With --json, stdout is exactly one JSON document, also for errors
({"error": {"code": ..., "message": ...}})."""

SET_COUNTER_HELP = """\
Set the sector counter (<state_dir>/sector-counter.json) of a stopped
daemon: the last sector number handed out, so the next sector is N+1. The
daemon refuses to start when the counter file is lost and the stores'
records cannot say which numbers were used; this is how to tell it. The
counter never goes down: a number the records show as used wins over N."""

RESUME_HELP = """\
Resume a paused thread (a thread that is not paused is an error, code 1001).
With --state, the task moves to that state first, bypassing the transition
table; the state must belong to the thread's plan (the error lists the valid
ones). --state Aborted drops the task and clears its data."""


def _add_index(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-i", "--index", type=int, required=True, help="the thread's index, the #N of `list`"
    )


def build_parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="venus-worker", description=TOP_HELP, epilog=EXIT_CODES, formatter_class=raw
    )
    parser.add_argument("--version", action="version", version=f"venus-worker {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    daemon = commands.add_parser(
        "daemon",
        help="run the sealing daemon in the foreground",
        description=DAEMON_HELP,
        epilog="exit codes: 0 stopped by a signal, 1 cannot start, 2 config error",
        formatter_class=raw,
    )
    daemon.add_argument("-c", "--config", required=True, help="TOML config file")
    daemon.set_defaults(func=cmd_daemon, json=False)

    set_counter = commands.add_parser(
        "set-counter",
        help="set the sector counter of a stopped daemon",
        description=SET_COUNTER_HELP,
        epilog="exit codes: 0 set, 1 a daemon is running, 2 usage or config error",
        formatter_class=raw,
    )
    set_counter.add_argument("-c", "--config", required=True, help="the daemon's config file")
    set_counter.add_argument("--miner", type=int, help="the miner (default: the threads' one)")
    set_counter.add_argument(
        "--last", type=int, required=True, help="the last sector number already used"
    )
    _add_json(set_counter)
    set_counter.set_defaults(func=cmd_set_counter)

    worker = commands.add_parser(
        "worker",
        help="manage a running daemon (list, pause, resume, report, status)",
        description=WORKER_HELP,
        epilog=EXIT_CODES,
        formatter_class=raw,
    )
    worker.add_argument("-c", "--config", help="the daemon's config file (finds its socket)")
    worker.add_argument("--socket", help="the daemon's control socket")
    worker.add_argument("--state-dir", help="the daemon's state folder (report.json, history/)")
    worker.add_argument(
        "--actor",
        help="who you are, recorded with a pause or resume in the thread's history"
        " (default $VENUS_WORKER_ACTOR; your uid and pid are recorded anyway)",
    )
    _add_json(worker)
    actions = worker.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, summary: str, description: str | None = None):
        return actions.add_parser(
            name, help=summary, description=description or summary, epilog=EXIT_CODES
        )

    listing = action(
        "list",
        "one line per sealing thread",
        "One line per sealing thread: sector, paused and for how long, state, last error.",
    )
    listing.set_defaults(func=cmd_list)
    pause = action(
        "pause",
        "pause a thread at its next stage boundary",
        "Pause a thread at its next stage boundary: the running stage finishes and its "
        "result is kept; a wait is cut short at once. Pausing a paused thread changes nothing.",
    )
    _add_index(pause)
    pause.set_defaults(func=cmd_pause)
    resume = actions.add_parser(
        "resume",
        help="resume a paused thread",
        description=RESUME_HELP,
        epilog=EXIT_CODES,
        formatter_class=raw,
    )
    _add_index(resume)
    resume.add_argument("-s", "--state", help="move the task to this state first")
    resume.set_defaults(func=cmd_resume)
    cancel = action(
        "cancel-pause",
        "cancel a pause still queued behind a running stage",
        "Cancel a pause asked for while a stage runs, before the thread takes it: the "
        "thread keeps running. Never resumes a paused thread. --json: true if a queued "
        "pause was cancelled, false if none was queued (or the thread already paused).",
    )
    _add_index(cancel)
    cancel.set_defaults(func=cmd_cancel_pause)
    report = action(
        "report",
        "the last heartbeat (works without the daemon)",
        "The last heartbeat the daemon wrote (report.json in its state folder), with its "
        "age in seconds on this host's clock. Works while the daemon is down.",
    )
    report.set_defaults(func=cmd_report)
    status = action(
        "status",
        "heartbeat and thread list in one call",
        "The heartbeat report and the thread list in one call (the fleet tool's host row).",
    )
    status.set_defaults(func=cmd_status)
    history = action(
        "history",
        "one thread's history (works without the daemon)",
        "One thread's history, oldest first: every state change with its stage, run time and"
        " outcome, every retry, abort, pause, resume and auto-resume, with who asked. Asks"
        " the daemon; reads its files (<state_dir>/history) while it is down.",
    )
    _add_index(history)
    history.add_argument(
        "-n", "--limit", type=int, default=100, help="the last K entries (default 100; 0: all)"
    )
    history.set_defaults(func=cmd_history)
    sector = action(
        "sector",
        "where a sector is and what happened to it (works without the daemon)",
        "The thread working on SECTOR_ID now, and every history entry of it, oldest first."
        " SECTOR_ID: s-t01000-2, t01000-2 or 1000:2. Exit 1 when this worker never had it.",
    )
    sector.add_argument("sector", metavar="SECTOR_ID")
    sector.set_defaults(func=cmd_sector)
    stats = action(
        "stats",
        "per stage: tasks, p50, p90, max, failures (works without the daemon)",
        "Per stage, over the threads' histories: successful runs (tasks), their p50, p90 and"
        " longest run time, failed runs and the most common error.",
    )
    stats.add_argument(
        "--since", metavar="DURATION", help="only runs in the last DURATION (7d, 12h)"
    )
    stats.add_argument(
        "-i", "--index", type=int, action="append", help="only this thread (repeatable)"
    )
    stats.add_argument("--plan", help="only tasks of this plan (sealer, snapup, ...)")
    stats.set_defaults(func=cmd_stats)
    logs = action(
        "logs",
        "what a thread's last stage runs printed",
        "The stdout and stderr a thread's last stage runs printed, kept in its store (the"
        " last 8 runs, up to 1 MiB each): the newest run, or the newest of --stage, with its"
        " last LINES lines. Read from the store itself while the daemon is down (-c CONFIG).",
    )
    _add_index(logs)
    logs.add_argument("--stage", help="only runs of this stage (PC1, C2, ...)")
    logs.add_argument("-n", "--lines", default="100", help="lines per run (default 100), or all")
    choice = logs.add_mutually_exclusive_group()
    choice.add_argument("--runs", type=int, default=1, help="the newest RUNS runs (default 1)")
    choice.add_argument("--all", action="store_true", help="every kept run")
    logs.add_argument("--after", metavar="RUN:LINE", help="only what came after this line")
    logs.set_defaults(func=cmd_logs)
    for sub in (listing, pause, resume, cancel, report, status, history, sector, stats, logs):
        sub.add_argument(
            "--json", action="store_true", default=argparse.SUPPRESS, help="print one JSON document"
        )
    return parser


def main(
    argv: list[str] | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """Entry point; returns the exit status (only the __main__ guard exits)."""
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage or --help
        return int(exc.code or 0)
    out = Output(bool(getattr(args, "json", False)), stdout, stderr)
    try:
        return int(args.func(args, out))
    except ConfigError as exc:
        out.error(RpcCode.CONFIG_ERROR, f"config error: {exc}")
        return ExitStatus.USAGE
    except AgentNotRunning as exc:
        out.error(exc.code, exc.message)
        return ExitStatus.NOT_RUNNING
    except RpcError as exc:
        out.error(exc.code, exc.message)
        return ExitStatus.REFUSED
    except ReportError as exc:
        out.error(RpcCode.INTERNAL_ERROR, str(exc))
        return ExitStatus.REFUSED
    except HistoryMissing as exc:
        out.error(RpcCode.NO_HISTORY, str(exc))
        return ExitStatus.REFUSED
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away: stop quietly, as other CLI tools do.
        if stdout is sys.stdout:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitStatus.REFUSED
    except OSError as exc:
        out.error(RpcCode.INTERNAL_ERROR, f"error: {exc}")
        return ExitStatus.REFUSED
    except KeyboardInterrupt:
        return 130
