"""The daemon's TOML configuration: parsing, defaults and validation.

Every problem is reported as one line naming the file and the key
(``ConfigError``), e.g. ``cfg.toml: sealing.recover_interval: bad duration
"3x" (expected e.g. "30s", "1m", "500ms", "1h30m")``; the CLI exits 2 on it.
Unknown keys are errors, not warnings: a typo must not silently fall back to
a default. Relative paths resolve against the config file's folder.

Layout (all keys optional except ``location``)::

    [worker]
    name = "worker-1"                  # default: host name
    socket = "/run/venus-worker/venus-worker.sock"
    socket_group = "venus"             # socket mode 0660 for that group (default 0600)
    state_dir = "/var/lib/venus-worker"
    ping_interval = "30s"
    request_timeout = "10s"            # a whole request (headers + body) within this
    idle_timeout = "10m"               # a kept-alive connection waits this long for the next
    metrics_textfile = "/var/lib/prometheus/node-exporter/venus-worker.prom"  # default: off
    strict_modes = true                # refuse folders others can write in (like sshd)
    history = true                     # each thread's history in <state_dir>/history
    history_size = "1MiB"              # a history file rotates past this (KiB, MiB, GiB)

    [sealing]                          # defaults for every thread
    miner = 10000                      # sectors are named s-t0<miner>-<number>
    max_retries = 5
    recover_interval = "60s"
    seal_interval = "30s"
    sector_numbers = "1000-1999"       # only these numbers (also { start = 1000, count = 1000 }):
                                       # give each worker of one miner its own range
    [[sealing.auto_resume]]            # resume error pauses by themselves (never a manual pause)
    match = "gpu busy|CUDA"            # regular expression, searched in last_error
    after = "10m"                      # how long the thread stays paused first (default 1m)
    max = 3                            # auto-resumes per task and rule

    [[sealing_thread]]
    location = "/srv/store1"
    plan = "sealer"                    # sealer | snapup | rebuild | unseal
    sealing.max_retries = 3            # per-thread override of any [sealing] key

    [processors]
    kind = "mock"                      # mock | command

    [processors.mock]
    duration = "100ms"                 # every compute stage
    wait_duration = "200ms"            # WaitPCLanded, WaitSeed, WaitProofLanded
    durations = { PC1 = "2s" }         # per stage label
    jitter = 0.2                       # each run lasts duration * (1 ± jitter), default 0
    [[processors.mock.faults]]
    stage = "C2"
    level = "permanent"                # temporary | permanent | abort | critical
    message = "..."
    probability = 1.0                  # chance per run of the stage
    times = 2                          # fail only the first N runs per thread (default: always)
    threads = [0, 2]                   # only these thread indexes (default: all)

    [processors.command]
    timeout = "2h"                     # default per-stage timeout (default: none)
    default = ["/usr/local/bin/seal-stage"]   # run for stages not listed below
    env = { FIL_PROOFS_USE_MULTICORE_SDR = "1" }   # added to every stage's environment
    inherit_env = ["RUST_LOG", "FIL_PROOFS_*"]     # the daemon's variables passed on
    [processors.command.stages]
    PC1 = { argv = ["/usr/local/bin/pc1"], timeout = "4h", env = { CUDA_VISIBLE_DEVICES = "0" } }
    C2 = ["/usr/local/bin/c2"]
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker_agent.api import STAGE_NAMES as STAGE_LABELS
from worker_agent.api import parse_duration  # the one grammar; a bare number is refused here
from worker_agent.states import PLANS, Level

__all__ = [
    "AutoResume",
    "CommandStage",
    "Config",
    "ConfigError",
    "Fault",
    "MockConfig",
    "SealingConfig",
    "ThreadConfig",
    "load_config",
    "parse_duration",
]

DEFAULT_SOCKET = "/run/venus-worker/venus-worker.sock"
DEFAULT_STATE_DIR = "/var/lib/venus-worker"
# sun_path is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107


class ConfigError(Exception):
    """A configuration problem; str() is the one line shown to the user."""


# ---------------------------------------------------------------- model


@dataclass(frozen=True)
class AutoResume:
    """One [[sealing.auto_resume]] rule: resume an error pause whose text matches."""

    match: str
    pattern: re.Pattern
    after: float
    max: int


@dataclass(frozen=True)
class SealingConfig:
    miner: int = 10000
    max_retries: int = 5
    recover_interval: float = 60.0
    seal_interval: float = 30.0
    auto_resume: tuple[AutoResume, ...] = ()
    sector_numbers: tuple[int, int] | None = None  # (start, end), both included


@dataclass(frozen=True)
class ThreadConfig:
    index: int
    location: Path
    plan: str
    sealing: SealingConfig


@dataclass(frozen=True)
class Fault:
    stage: str
    level: Level
    message: str
    probability: float = 1.0
    times: int | None = None
    threads: frozenset[int] | None = None


@dataclass(frozen=True)
class MockConfig:
    duration: float = 0.1
    wait_duration: float = 0.2
    durations: dict[str, float] = field(default_factory=dict)
    faults: tuple[Fault, ...] = ()
    jitter: float = 0.0


@dataclass(frozen=True)
class CommandStage:
    argv: tuple[str, ...]
    timeout: float | None = None
    env: dict[str, str] = field(default_factory=dict)  # the section's, then the stage's
    inherit_env: tuple[str, ...] = ()


@dataclass(frozen=True)
class CommandConfig:
    stages: dict[str, CommandStage] = field(default_factory=dict)
    default: CommandStage | None = None


@dataclass(frozen=True)
class Config:
    path: Path
    name: str
    socket: Path
    socket_group: str | None
    state_dir: Path
    ping_interval: float
    request_timeout: float
    threads: tuple[ThreadConfig, ...]
    processor: str
    mock: MockConfig
    command: CommandConfig
    metrics_textfile: Path | None = None  # node_exporter textfile (metrics.py); None: off
    strict_modes: bool = True
    idle_timeout: float = 600.0  # a kept-alive connection's wait for its next request
    history: bool = True  # each thread's history (history.py)
    history_size: int = 1 << 20  # bytes at which a history file rotates

    def sector_ranges(self) -> dict[int, tuple[int, int]]:
        """Each miner's configured range (the threads agree on it: load_config checks)."""
        return {
            thread.sealing.miner: thread.sealing.sector_numbers
            for thread in self.threads
            if thread.sealing.sector_numbers is not None
        }


# ---------------------------------------------------------------- reading


class _Table:
    """A TOML table being consumed key by key; leftovers are unknown keys."""

    def __init__(self, file: Path, prefix: str, data: Any):
        self.file, self.prefix = file, prefix
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise self._error("", f"expected a table, got {_type_name(data)}")
        self._data = dict(data)

    def _error(self, key: str, problem: str) -> ConfigError:
        name = f"{self.prefix}.{key}" if self.prefix and key else (self.prefix or key)
        return ConfigError(f"{self.file}: {name}: {problem}")

    def error(self, key: str, problem: str) -> ConfigError:
        return self._error(key, problem)

    def names(self) -> list[str]:
        return list(self._data)

    def has(self, key: str) -> bool:
        return key in self._data

    def raw(self, key: str, default: Any = None) -> Any:
        return self._data.pop(key, default)

    def string(self, key: str, default: str | None = None) -> str | None:
        value = self.raw(key, default)
        if value is not None and not isinstance(value, str):
            raise self.error(key, f"expected a string, got {_type_name(value)}")
        return value

    def integer(self, key: str, default: int, minimum: int = 0) -> int:
        value = self.raw(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"expected an integer, got {_type_name(value)}")
        if value < minimum:
            raise self.error(key, f"must be at least {minimum}, got {value}")
        return value

    def duration(self, key: str, default: float | None) -> float | None:
        value = self.raw(key)
        if value is None:
            return default
        try:
            return parse_duration(value)
        except ValueError:
            shown = value if isinstance(value, str) else repr(value)
            raise self.error(
                key, f'bad duration "{shown}" (expected e.g. "30s", "1m", "500ms", "1h30m")'
            ) from None

    def path(self, key: str, default: str | None, base: Path) -> Path | None:
        value = self.string(key, default)
        if value is None:
            return None
        if not value:
            raise self.error(key, "must not be empty")
        return Path(os.path.normpath(base / os.path.expanduser(value)))

    def table(self, key: str) -> _Table:
        name = f"{self.prefix}.{key}" if self.prefix else key
        return _Table(self.file, name, self.raw(key))

    def finish(self) -> None:
        """Refuse whatever keys were not consumed: they are typos or unsupported."""
        if self._data:
            key = sorted(self._data)[0]
            raise self.error(key, "unknown key")


def _type_name(value: Any) -> str:
    return {dict: "a table", list: "an array", bool: "a boolean", str: "a string"}.get(
        type(value), type(value).__name__
    )


def _parse_toml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc.reason}") from None
    try:
        import tomllib  # Python 3.11+: fast, and its errors carry line and column

        return tomllib.loads(text)
    except ImportError:
        pass
    except ValueError as exc:  # tomllib.TOMLDecodeError
        raise ConfigError(f"{path}: TOML syntax error: {exc}") from None
    import tomlkit  # Python 3.10
    from tomlkit.exceptions import ParseError

    try:
        return tomlkit.parse(text).unwrap()
    except ParseError as exc:
        raise ConfigError(f"{path}: TOML syntax error: {exc}") from None


def _sealing(section: _Table, base: SealingConfig) -> SealingConfig:
    config = SealingConfig(
        miner=section.integer("miner", base.miner, minimum=1),
        max_retries=section.integer("max_retries", base.max_retries),
        recover_interval=section.duration("recover_interval", base.recover_interval),
        seal_interval=section.duration("seal_interval", base.seal_interval),
        auto_resume=_auto_resume(section, base.auto_resume),
        sector_numbers=_sector_numbers(section, base.sector_numbers),
    )
    section.finish()
    return config


_RANGE_TEXT = re.compile(r"\s*([0-9]{1,18})\s*-\s*([0-9]{1,18})\s*")
_RANGE_HELP = 'expected "START-END" (e.g. "1000-1999") or { start = 1000, count = 1000 }'


def _sector_numbers(section: _Table, base: tuple[int, int] | None) -> tuple[int, int] | None:
    """`sector_numbers`: "START-END", or a table of start and count (or end)."""
    if not section.has("sector_numbers"):
        return base
    value = section.raw("sector_numbers")
    if isinstance(value, str):
        match = _RANGE_TEXT.fullmatch(value)
        if match is None:
            raise section.error("sector_numbers", f"{value!r}: {_RANGE_HELP}")
        start, end = int(match[1]), int(match[2])
    elif isinstance(value, dict):
        table = _Table(section.file, f"{section.prefix}.sector_numbers", value)
        if table.has("count") == table.has("end") or not table.has("start"):
            raise section.error(
                "sector_numbers", f"needs start and one of count, end: {_RANGE_HELP}"
            )
        start = table.integer("start", 0, minimum=1)
        if table.has("count"):
            end = start + table.integer("count", 1, minimum=1) - 1
        else:
            end = table.integer("end", start, minimum=1)
        table.finish()
    else:
        raise section.error("sector_numbers", f"{_RANGE_HELP}, got {_type_name(value)}")
    if start < 1 or end < start:
        raise section.error(
            "sector_numbers",
            f"{start}-{end}: the range must start at 1 or more and not end before it",
        )
    return start, end


def _check_ranges(root: _Table, threads: tuple[ThreadConfig, ...]) -> None:
    """One counter per miner, so one range: threads of a miner must agree on it."""
    seen: dict[int, tuple[int, ThreadConfig]] = {}
    for thread in threads:
        first = seen.setdefault(thread.sealing.miner, (thread.index, thread))
        if first[1].sealing.sector_numbers != thread.sealing.sector_numbers:
            shown = [_range_text(t.sealing.sector_numbers) for t in (first[1], thread)]
            raise root.error(
                f"sealing_thread[{thread.index}]",
                f"sealing.sector_numbers {shown[1]} differs from sealing_thread[{first[0]}]'s"
                f" {shown[0]}, but both seal for miner {thread.sealing.miner}: the threads of"
                " one miner share one sector counter, so one range",
            )


def _range_text(numbers: tuple[int, int] | None) -> str:
    return "(none)" if numbers is None else f'"{numbers[0]}-{numbers[1]}"'


_SIZE = re.compile(r"\s*([0-9]+)\s*(B|KiB|MiB|GiB)?\s*")
_SIZE_UNITS = {None: 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


def _size(table: _Table, key: str, default: int, minimum: int) -> int:
    """A size: a number of bytes, or a string with a unit (B, KiB, MiB, GiB)."""
    value = table.raw(key, default)
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (match := _SIZE.fullmatch(value)):
        size = int(match[1]) * _SIZE_UNITS[match[2]]
    else:
        raise table.error(
            key, f'expected a size such as "1MiB", "512KiB" or 1048576, got {value!r}'
        )
    if size < minimum:
        raise table.error(key, f"must be at least {minimum} bytes, got {size}")
    return size


def _auto_resume(section: _Table, base: tuple[AutoResume, ...]) -> tuple[AutoResume, ...]:
    """[[sealing.auto_resume]] (a thread's own list replaces the [sealing] one)."""
    if not section.has("auto_resume"):
        return base
    entries = section.raw("auto_resume")
    if not isinstance(entries, list):
        raise section.error("auto_resume", "expected an array of tables ([[sealing.auto_resume]])")
    rules = []
    for index, entry in enumerate(entries):
        rule = _Table(section.file, f"{section.prefix}.auto_resume[{index}]", entry)
        match = rule.string("match")
        if not match:
            raise rule.error("match", "missing (a regular expression searched in last_error)")
        try:
            pattern = re.compile(match)
        except re.error as exc:
            raise rule.error("match", f"bad regular expression: {exc}") from None
        after = rule.duration("after", 60.0)
        if not rule.has("max"):
            raise rule.error("max", "missing (how many auto-resumes per task)")
        limit = rule.integer("max", 0, minimum=1)
        rule.finish()
        rules.append(AutoResume(match, pattern, after, limit))
    return tuple(rules)


def _threads(root: _Table, folder: Path, sealing: SealingConfig) -> tuple[ThreadConfig, ...]:
    entries = root.raw("sealing_thread", [])
    if not isinstance(entries, list) or not entries:
        raise root.error("sealing_thread", "at least one [[sealing_thread]] is required")
    threads, seen = [], {}
    for index, entry in enumerate(entries):
        section = _Table(root.file, f"sealing_thread[{index}]", entry)
        location = section.path("location", None, folder)
        if location is None:
            raise section.error("location", "missing (every sealing thread needs a store folder)")
        canonical = os.path.realpath(location)
        if canonical in seen:
            # damocles skips the duplicate and shifts every later index: refuse instead.
            raise section.error(
                "location", f"{location} is already used by sealing_thread[{seen[canonical]}]"
            )
        seen[canonical] = index
        plan = section.string("plan", "sealer")
        if plan not in PLANS:
            raise section.error("plan", f'unknown plan "{plan}" (valid: {", ".join(PLANS)})')
        own = _sealing(section.table("sealing"), sealing)
        section.finish()
        threads.append(ThreadConfig(index, location, plan, own))
    return tuple(threads)


def _stage_key(section: _Table, key: str) -> str:
    if key not in STAGE_LABELS:
        raise section.error(key, f"unknown stage (valid: {', '.join(sorted(STAGE_LABELS))})")
    return key


def _mock(section: _Table, thread_count: int) -> MockConfig:
    duration = section.duration("duration", MockConfig.duration)
    wait_duration = section.duration("wait_duration", MockConfig.wait_duration)
    jitter = section.raw("jitter", 0.0)
    if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or not 0 <= jitter < 1:
        raise section.error("jitter", "expected a number from 0 up to (not including) 1")
    per_stage = section.table("durations")
    durations = {}
    for key in per_stage.names():
        durations[_stage_key(per_stage, key)] = per_stage.duration(key, None)
    faults_raw = section.raw("faults", [])
    if not isinstance(faults_raw, list):
        raise section.error("faults", "expected an array of tables ([[processors.mock.faults]])")
    faults = tuple(
        _fault(_Table(section.file, f"{section.prefix}.faults[{i}]", raw), thread_count)
        for i, raw in enumerate(faults_raw)
    )
    section.finish()
    return MockConfig(duration, wait_duration, durations, faults, float(jitter))


def _fault(section: _Table, thread_count: int) -> Fault:
    stage = section.string("stage")
    if stage is None:
        raise section.error("stage", "missing")
    if stage not in STAGE_LABELS:
        valid = ", ".join(sorted(STAGE_LABELS))
        raise section.error("stage", f'unknown stage "{stage}" (valid: {valid})')
    level_name = section.string("level", "permanent")
    try:
        level = Level(level_name)
    except ValueError:
        valid = ", ".join(level.value for level in Level)
        raise section.error("level", f'unknown level "{level_name}" (valid: {valid})') from None
    message = section.string("message", f"injected {level_name} fault in {stage}")
    probability = section.raw("probability", 1.0)
    if isinstance(probability, bool) or not isinstance(probability, (int, float)):
        raise section.error("probability", "expected a number between 0 and 1")
    if not 0 <= probability <= 1:
        raise section.error("probability", f"must be between 0 and 1, got {probability}")
    times = section.raw("times")
    if times is not None and (isinstance(times, bool) or not isinstance(times, int) or times < 1):
        raise section.error("times", "expected a positive integer")
    threads = section.raw("threads")
    if threads is not None:
        if not isinstance(threads, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) and 0 <= t < thread_count
            for t in threads
        ):
            raise section.error("threads", f"expected thread indexes 0..{thread_count - 1}")
        threads = frozenset(threads)
    section.finish()
    return Fault(stage, level, message, float(probability), times, threads)


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ENV_PATTERN = re.compile(r"^[A-Za-z0-9_*?\[\]!]+$")


def _env(section: _Table, base: dict[str, str]) -> dict[str, str]:
    """An `env` table of variable names to strings, over `base`; VENUS_* are the agent's."""
    table = section.table("env")
    env = dict(base)
    for name in table.names():
        if not _ENV_NAME.match(name):
            raise table.error(name, "not an environment variable name")
        if name.startswith("VENUS_"):
            raise table.error(name, "VENUS_* variables are set by the agent")
        env[name] = table.string(name)
    return env


def _inherit_env(section: _Table, base: tuple[str, ...]) -> tuple[str, ...]:
    names = section.raw("inherit_env", [])
    if not isinstance(names, list) or not all(
        isinstance(n, str) and _ENV_PATTERN.match(n) for n in names
    ):
        raise section.error(
            "inherit_env", 'expected an array of variable names or globs (e.g. "FIL_PROOFS_*")'
        )
    return base + tuple(n for n in names if n not in base)


def _command_stage(section: _Table, key: str, defaults: CommandStage) -> CommandStage:
    value = section.raw(key)
    env, inherit = defaults.env, defaults.inherit_env
    if isinstance(value, dict):
        entry = _Table(section.file, f"{section.prefix}.{key}", value)
        argv = entry.raw("argv")
        timeout = entry.duration("timeout", defaults.timeout)
        env, inherit = _env(entry, env), _inherit_env(entry, inherit)
        entry.finish()
        where, name = entry, "argv"
    else:
        argv, timeout, where, name = value, defaults.timeout, section, key
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) and a for a in argv):
        raise where.error(name, "expected a non-empty array of strings (argv, no shell)")
    return CommandStage(tuple(argv), timeout, env, inherit)


def _command(section: _Table) -> CommandConfig:
    # What every stage gets unless it says otherwise (argv is a placeholder here).
    defaults = CommandStage(
        argv=("-",),
        timeout=section.duration("timeout", None),
        env=_env(section, {}),
        inherit_env=_inherit_env(section, ()),
    )
    default = _command_stage(section, "default", defaults) if section.has("default") else None
    stages_table = section.table("stages")
    stages = {}
    for key in stages_table.names():
        stages[_stage_key(stages_table, key)] = _command_stage(stages_table, key, defaults)
    section.finish()
    return CommandConfig(stages, default)


def _processors(root: _Table, thread_count: int) -> tuple[str, MockConfig, CommandConfig]:
    section = root.table("processors")
    kind = section.string("kind", "mock")
    if kind not in ("mock", "command"):
        raise section.error("kind", f'unknown processor "{kind}" (valid: mock, command)')
    mock = _mock(section.table("mock"), thread_count)
    command = _command(section.table("command"))
    section.finish()
    return kind, mock, command


def _metrics_textfile(worker: _Table, folder: Path) -> Path | None:
    """`metrics_textfile`: a `*.prom` file path (node_exporter's textfile collector reads
    nothing else, so any other name would be exported to nobody, silently)."""
    path = worker.path("metrics_textfile", None, folder)
    if path is None:
        return None
    if path.suffix != ".prom":
        raise worker.error(
            "metrics_textfile",
            f"{path}: must be a file named *.prom (node_exporter's textfile collector"
            " reads only those), e.g. /var/lib/prometheus/node-exporter/venus-worker.prom",
        )
    if path.is_dir():
        raise worker.error("metrics_textfile", f"{path} is a folder; name the file in it")
    return path


def load_config(path: str | os.PathLike) -> Config:
    """Read and validate the config file at `path`; raises ConfigError."""
    file = Path(path).absolute()
    folder = file.parent
    root = _Table(file, "", _parse_toml(file))
    worker = root.table("worker")
    name = worker.string("name") or socket.gethostname()
    state_dir = worker.path("state_dir", DEFAULT_STATE_DIR, folder)
    sock = worker.path("socket", DEFAULT_SOCKET, folder)
    if len(os.fsencode(sock)) > MAX_SOCKET_PATH:
        raise worker.error("socket", f"path longer than {MAX_SOCKET_PATH} bytes: {sock}")
    group = worker.string("socket_group")
    ping_interval = worker.duration("ping_interval", 30.0)
    if ping_interval <= 0:
        raise worker.error("ping_interval", "must be greater than zero")
    request_timeout = worker.duration("request_timeout", 10.0)
    if request_timeout <= 0:
        raise worker.error("request_timeout", "must be greater than zero")
    idle_timeout = worker.duration("idle_timeout", 600.0)
    if idle_timeout <= 0:
        raise worker.error("idle_timeout", "must be greater than zero")
    metrics_textfile = _metrics_textfile(worker, folder)
    strict_modes = worker.raw("strict_modes", True)
    if not isinstance(strict_modes, bool):
        raise worker.error(
            "strict_modes", f"expected true or false, got {_type_name(strict_modes)}"
        )
    history = worker.raw("history", True)
    if not isinstance(history, bool):
        raise worker.error("history", f"expected true or false, got {_type_name(history)}")
    history_size = _size(worker, "history_size", 1 << 20, minimum=4096)
    worker.finish()
    sealing = _sealing(root.table("sealing"), SealingConfig())
    threads = _threads(root, folder, sealing)
    _check_ranges(root, threads)
    kind, mock, command = _processors(root, len(threads))
    root.finish()
    return Config(
        path=file,
        name=name,
        socket=sock,
        socket_group=group,
        state_dir=state_dir,
        ping_interval=ping_interval,
        request_timeout=request_timeout,
        idle_timeout=idle_timeout,
        threads=threads,
        processor=kind,
        mock=mock,
        command=command,
        metrics_textfile=metrics_textfile,
        strict_modes=strict_modes,
        history=history,
        history_size=history_size,
    )
