"""Processors: what actually performs a stage.

A processor gets a ``StageContext`` and returns an outcome: ``Done`` (with the
event to apply, or None for the plan's ordinary one), ``Failed`` (level and
message) or ``Interrupted`` (a wait was cut short by pause/stop; the state
does not change). Processors never touch the task record.

- ``MockProcessor`` sleeps a configured time per stage and injects configured
  faults. Chain waits (WaitSeed ...) are interrupted at once by a pause;
  compute stages only by a daemon stop (the simulated work is then redone).
- ``CommandProcessor`` runs the stage's argv without a shell, in the
  location, with a minimal environment (``stage_environment``: PATH, HOME,
  LANG, the names listed in ``inherit_env``, the configured ``env``, the
  ``VENUS_*`` variables). Exit 0 is success (a last stdout line naming an
  event of the state selects that branch, e.g. ``ReSubmitPC``); otherwise the
  last stderr line's ``temporary:`` / ``permanent:`` / ``abort:`` /
  ``critical:`` prefix gives the level (default permanent). A stage with no
  command configured succeeds at once. The command always runs to its end (or
  its timeout): killing a real sealing tool mid-stage would waste hours of
  work. Only a daemon that exits with commands still running kills them
  (``kill_running``): nobody would record their result, and the stage reruns
  after the restart. How the child is started, bounded and cleaned up is in
  children.py; the processor hands the thread the process group it started
  (``StageContext.started``) so the record can name it.
"""

from __future__ import annotations

import fnmatch
import os
import random
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from worker_agent.children import TOKEN_VARIABLE, StageRun, boot_id
from worker_agent.config import CommandConfig, CommandStage, Config, MockConfig
from worker_agent.stagelog import StageLog
from worker_agent.states import WAIT_STAGES, Event, Level, Plan, State
from worker_agent.store import StageProcess

__all__ = [
    "CommandProcessor",
    "Done",
    "Failed",
    "Interrupted",
    "MockProcessor",
    "Outcome",
    "StageContext",
    "make_processor",
]

MAX_MESSAGE = 4000


@dataclass(frozen=True)
class Done:
    event: Event | None = None


@dataclass(frozen=True)
class Failed:
    level: Level
    message: str


@dataclass(frozen=True)
class Interrupted:
    pass


Outcome = Done | Failed | Interrupted


@dataclass(frozen=True)
class StageContext:
    index: int
    location: Path
    data_dir: Path
    plan: Plan
    state: State
    stage: str
    sector_id: str | None
    miner: int
    number: int | None
    # wait(seconds) -> True if cut short by a pause or stop request
    wait: Callable[[float], bool]
    # sleep(seconds) -> True if cut short by a stop request (pauses do not cut it)
    sleep: Callable[[float], bool]
    # started(process): a command stage is about to start (pgid None), then runs (the
    # thread saves both in the record)
    started: Callable[[StageProcess], None] | None = None


class MockProcessor:
    """Simulated stages: configurable durations and injected faults."""

    name = "mock"

    def __init__(self, config: MockConfig, rng: random.Random | None = None):
        self.config = config
        self._rng = rng or random.Random()
        self._runs: dict[tuple[int, str], int] = {}
        self._lock = threading.Lock()

    def run(self, ctx: StageContext) -> Outcome:
        is_wait = ctx.stage in WAIT_STAGES
        default = self.config.wait_duration if is_wait else self.config.duration
        seconds = self.config.durations.get(ctx.stage, default)
        if self.config.jitter:
            with self._lock:  # random.Random is not meant to be shared unlocked
                seconds *= 1 + self._rng.uniform(-self.config.jitter, self.config.jitter)
        interrupted = ctx.wait(seconds) if is_wait else ctx.sleep(seconds)
        if interrupted:
            return Interrupted()
        fault = self._fault_for(ctx)
        if fault is not None:
            # the run a real stage would have left in its stage log: only the failed ones
            # (a mock fleet would otherwise write a log for every stage of every thread)
            stage_log = _stage_log(ctx, "mock", started=time.time() - seconds)
            stage_log.feed("stdout", f"mock {ctx.stage}: ran {seconds:.3g}s\n".encode())
            stage_log.feed("stderr", f"{fault.level}: {fault.message}\n".encode())
            stage_log.end(f"{fault.level}: {fault.message}", exit_status=1)
            return fault
        if not is_wait:
            # A visible trace of the "work", so tests can see abort/finish clear the data folder.
            trace = ctx.data_dir / f"{ctx.sector_id}.{ctx.stage}"
            try:
                trace.write_text(ctx.state.value + "\n")
            except OSError as exc:  # a full store: what a real stage would report
                return Failed(Level.TEMPORARY, f"cannot write {trace}: {exc.strerror or exc}")
        return Done()

    def _fault_for(self, ctx: StageContext) -> Failed | None:
        with self._lock:
            key = (ctx.index, ctx.stage)
            runs = self._runs.get(key, 0) + 1
            self._runs[key] = runs
            for fault in self.config.faults:
                if fault.stage != ctx.stage:
                    continue
                if fault.threads is not None and ctx.index not in fault.threads:
                    continue
                if fault.times is not None and runs > fault.times:
                    continue
                if fault.probability < 1 and self._rng.random() >= fault.probability:
                    continue
                return Failed(fault.level, fault.message)
        return None


_LEVEL_PREFIX = re.compile(r"^\s*(temporary|permanent|abort|critical):\s*(.*)$")


def classify_failure(returncode: int, stderr: str, stage: str) -> Failed:
    """Level and message of a failed command from its exit status and last stderr line."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    last = lines[-1].strip() if lines else ""
    match = _LEVEL_PREFIX.match(last)
    if match:
        return Failed(Level(match.group(1)), match.group(2)[:MAX_MESSAGE])
    if returncode < 0:
        status = f"killed by signal {-returncode}"
    else:
        status = f"exited with status {returncode}"
    message = f"stage {stage}: command {status}" + (f": {last}" if last else "")
    return Failed(Level.PERMANENT, message[:MAX_MESSAGE])


DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BASE_VARIABLES = ("HOME", "LANG")


def stage_environment(
    ctx: StageContext,
    command: CommandStage,
    token: str,
    parent: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """A stage's whole environment: nothing of the daemon's leaks in unless listed.

    PATH (the daemon's, or a standard one), HOME and LANG if the daemon has
    them, the daemon's variables matching an ``inherit_env`` name or glob, the
    configured ``env``, then the ``VENUS_*`` variables (the config cannot
    override those). ``VENUS_STAGE_TOKEN`` marks this run's processes.
    """
    parent = os.environ if parent is None else parent
    env = {"PATH": parent.get("PATH", DEFAULT_PATH)}
    env.update((name, parent[name]) for name in BASE_VARIABLES if name in parent)
    for pattern in command.inherit_env:
        env.update((k, v) for k, v in parent.items() if fnmatch.fnmatchcase(k, pattern))
    env.update(command.env)
    env.update(
        VENUS_SECTOR_ID=ctx.sector_id or "",
        VENUS_SECTOR_NUMBER="" if ctx.number is None else str(ctx.number),
        VENUS_MINER=str(ctx.miner),
        VENUS_STATE=ctx.state.value,
        VENUS_STAGE=ctx.stage,
        VENUS_LOCATION=str(ctx.location),
        VENUS_DATA_DIR=str(ctx.data_dir),
        VENUS_PLAN=ctx.plan.name,
        VENUS_THREAD_INDEX=str(ctx.index),
    )
    env[TOKEN_VARIABLE] = token
    return env


class CommandProcessor:
    """Each stage runs a configured argv (no shell)."""

    name = "command"

    def __init__(self, config: CommandConfig):
        self.config = config
        self._running: set[StageRun] = set()
        self._running_lock = threading.Lock()
        self._killed_at_exit = False

    def command_for(self, stage: str) -> CommandStage | None:
        return self.config.stages.get(stage, self.config.default)

    def run(self, ctx: StageContext) -> Outcome:
        command = self.command_for(ctx.stage)
        if command is None:
            return Done()
        token = secrets.token_hex(16)
        label = f"thread #{ctx.index} {ctx.stage}"
        if ctx.started is not None:  # before the command exists: nothing of it goes unrecorded
            ctx.started(StageProcess(None, token, boot_id(), ctx.stage))
        stage_log = _stage_log(ctx, self.name, command.argv)
        try:
            run = StageRun.start(
                command.argv, ctx.location, stage_environment(ctx, command, token), label
            )
        except OSError as exc:
            failed = Failed(
                Level.PERMANENT, f"stage {ctx.stage}: cannot run {command.argv[0]}: {exc}"
            )
            stage_log.end(f"{failed.level}: {failed.message}")
            return failed
        with self._running_lock:
            self._running.add(run)
        try:
            if ctx.started is not None:
                ctx.started(StageProcess(run.pid, token, boot_id(), ctx.stage))
            result = run.collect(command.timeout, on_output=stage_log.feed)
        finally:
            with self._running_lock:
                self._running.discard(run)
        outcome = self._outcome(ctx, command, result)
        stage_log.end(_outcome_text(outcome), result.returncode, result.timed_out)
        return outcome

    def _outcome(self, ctx: StageContext, command: CommandStage, result) -> Outcome:
        if self._killed_at_exit:
            return Interrupted()  # not the command's failure: the state must not change
        if result.timed_out:
            return Failed(
                Level.PERMANENT,
                f"stage {ctx.stage}: command timed out after {command.timeout:g}s and was killed",
            )
        if result.returncode != 0:
            return classify_failure(result.returncode, result.stderr, ctx.stage)
        return Done(_event_from_stdout(result.stdout, ctx))

    def kill_running(self) -> int:
        """Kill every command still running (the daemon is exiting without them); how many.

        Their stages rerun after the restart. Left alive, a command would run on with
        nobody to record its result, next to the rerun of the same stage.
        """
        with self._running_lock:
            self._killed_at_exit = True
            running = list(self._running)
        for run in running:
            run.kill()
        return len(running)


def _stage_log(
    ctx: StageContext, processor: str, argv=None, started: float | None = None
) -> StageLog:
    """This run's stage log in the thread's store (stagelog.py); never fails the stage."""
    return StageLog.begin(
        ctx.location,
        index=ctx.index,
        stage=ctx.stage,
        state=ctx.state.value,
        plan=ctx.plan.name,
        sector_id=ctx.sector_id,
        processor=processor,
        argv=argv,
        now=time.time if started is None else lambda: started,
    )


def _outcome_text(outcome: Outcome) -> str:
    """How a run ended, for its stage log: done, interrupted, or the level and message."""
    if isinstance(outcome, Failed):
        return f"{outcome.level}: {outcome.message}"
    if isinstance(outcome, Interrupted):
        return "interrupted: the daemon stopped (the stage runs again)"
    return "done" + (f" ({outcome.event.value})" if outcome.event else "")


def _event_from_stdout(stdout: str, ctx: StageContext) -> Event | None:
    """A branch event named on the last stdout line, if it is one this state allows."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    if not lines:
        return None
    allowed = {event.value: event for event, _ in ctx.plan.table.get(ctx.state, ())}
    return allowed.get(lines[-1])


def make_processor(config: Config) -> MockProcessor | CommandProcessor:
    if config.processor == "command":
        return CommandProcessor(config.command)
    return MockProcessor(config.mock)
