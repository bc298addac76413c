#!/usr/bin/env python3
"""Crash soak of the worker agent: hundreds of SIGKILLs while busy threads seal.

Two real daemons (mock and command processors), N busy threads each, one
SIGKILLed at a random moment per round and restarted, with random pauses and
resumes before the kills and lost sector counters; after every kill the
records on disk are checked (tests/agent_soak.py says how). Prints:
records checked, torn records, sector numbers issued and duplicated,
pauses/resumes acknowledged before a kill and lost, stage commands that
outlived their daemon, duplicate stage processes seen; and the machine.

    .venv/bin/python bench/crash_soak.py [--kills 200] [--threads 4] [--seed 1]

Exits 1 if any check failed. Not part of the test suite
(tests/test_agent_crash.py runs a short version).
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from agent_soak import machine, soak  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--threads", type=int, default=4, help="busy threads per daemon")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the soak's folder")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="soak-", dir="/tmp"))  # short: socket paths
    started = time.monotonic()
    try:
        figures = soak(root, args.kills, args.threads, random.Random(args.seed))
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    took = time.monotonic() - started
    mock_numbers = sum(1 for name, _ in figures.issued if name == "mock")
    print(f"machine: {machine()}")
    print(f"crash soak: 2 daemons x {args.threads} busy threads, seed {args.seed}, {took:.0f} s")
    rows = [
        ("SIGKILLs", f"{figures.kills} ({figures.kills_before_ready} within 0.3 s of a start)"),
        ("records checked", figures.records_checked),
        ("torn records", figures.torn),
        ("sector numbers issued", f"{len(figures.issued)} (mock {mock_numbers}, command "
                                  f"{len(figures.issued) - mock_numbers})"),
        ("sector numbers duplicated", len(figures.duplicated)),
        ("sector counters deleted (rebuilt from records)", figures.counters_deleted),
        ("pauses acknowledged before a kill / lost", f"{figures.pauses_acked} / "
                                                     f"{figures.pauses_lost}"),
        ("resumes acknowledged before a kill / lost", f"{figures.resumes_acked} / "
                                                      f"{figures.resumes_lost}"),
        ("stage commands alive 0.1 s after their daemon's kill", figures.leaders_alive_after_kill),
        ("their helpers left running (killed at restart)", figures.helpers_left_by_kills),
        ("duplicate stage processes seen", figures.duplicate_stage_runs),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    for problem in figures.problems[:20]:
        print(f"PROBLEM: {problem}")
    return 1 if figures.problems else 0


if __name__ == "__main__":
    sys.exit(main())
