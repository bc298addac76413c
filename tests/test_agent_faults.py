"""The agent under faults (issue 12), each against a real daemon on a real socket.

Every test here reproduces a failure the agent had: a sector number handed
out twice after the counter file was lost, two daemons sealing in one store,
stage commands that outlived a SIGKILLed daemon and ran beside their rerun,
a stage's stderr held whole in memory, a change shown that the full disk
never took, files created through another user's symlink, one bad record
stopping every thread.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from agent_helpers import (
    Agent,
    cli,
    cli_json,
    process_alive,
    running_agent,
    seed_fault,
    short_tmp,
    wait_until,
    write_config,
)

from worker_agent.protocol import RpcError

pytestmark = pytest.mark.e2e  # a real daemon in every test

FAST = 'seal_interval = "10ms"\nrecover_interval = "20ms"\nmax_retries = 2'


def record_of(folder: Path, index: int) -> dict:
    return json.loads((folder / f"store{index}/meta/task.json").read_text())


def counter_file(folder: Path) -> Path:
    return folder / "state/sector-counter.json"


def refused(config: Path, env: dict | None = None) -> str:
    """Start a daemon that must refuse to start (exit 1); its log."""
    agent = Agent(config)
    agent.log = config.with_suffix(".refused.log")  # apart from a running daemon's log
    agent.log.unlink(missing_ok=True)
    agent.start(wait=False, env=env)
    try:
        assert agent.proc.wait(20) == 1, agent.log_text()
    finally:
        agent.close()
    return agent.log_text()


# ---------------------------------------------------------------- 1. sector numbers


def _one_task(folder: Path, config: Path) -> str:
    """Run the daemon for one task (the next waits an hour) and stop it; the task's sector."""
    with running_agent(config) as agent:
        wait_until(
            lambda: "finished" in agent.log_text() and record_of(folder, 0)["task"] is None,
            15,
            what="the task to finish",
        )
        assert agent.terminate() == 0
        finished = [line for line in agent.log_text().splitlines() if "finished" in line]
    (folder / "daemon.log").unlink()
    assert len(finished) == 1, finished
    return finished[0].split("task ")[1].split()[0]


def test_a_lost_or_old_counter_never_hands_a_sector_number_out_again():
    with short_tmp() as folder:
        config = write_config(folder, threads=1, sealing='seal_interval = "1h"')
        assert _one_task(folder, config) == "s-t010000-1"
        counter_file(folder).unlink()  # lost
        assert _one_task(folder, config) == "s-t010000-2"
        old = counter_file(folder).read_text()
        shutil.rmtree(folder / "state")  # the whole state folder is gone
        assert _one_task(folder, config) == "s-t010000-3"
        counter_file(folder).write_text(old)  # restored from an older backup (says 2)
        assert _one_task(folder, config) == "s-t010000-4"


def test_a_counter_no_record_can_rebuild_refuses_the_start_and_says_how_to_set_it():
    with short_tmp() as folder:
        config = write_config(folder, threads=2)
        # store1 was used by an agent that kept no witness of the counter in its records
        (folder / "store1/meta").mkdir(parents=True)
        old_record = {"schema": 1, "paused": False, "paused_at": None, "last_error": None,
                      "task": None}  # fmt: skip
        (folder / "store1/meta/task.json").write_text(json.dumps(old_record))
        log = refused(config)
        assert f"the sector counter {folder}/state/sector-counter.json is missing" in log
        assert f"{folder}/store1/meta/task.json does not say which sector numbers" in log
        assert f"venus-worker set-counter -c {config} --miner 10000 --last N" in log
        assert not counter_file(folder).exists()
        status, out, err = cli("set-counter", "-c", str(config), "--last", "41")
        assert (status, err) == (0, "")
        assert out == "sector counter of miner 10000: 41 (the next sector is s-t010000-42)\n"
        with running_agent(config) as agent:
            infos = agent.wait_for(lambda i: all(x["job_id"] for x in i), what="tasks")
            assert sorted(i["job_id"] for i in infos) == ["s-t010000-42", "s-t010000-43"]
            # while the daemon runs, the counter cannot be changed behind its back
            status, reply = cli_json("set-counter", "-c", str(config), "--last", "7")
            assert status == 1 and "stop it first" in reply["error"]["message"]
            assert "held by pid" in reply["error"]["message"]
            agent.terminate()
        status, reply = cli_json("set-counter", "-c", str(config), "--last", "7")
        assert status == 0 and reply["last"] >= 43  # never down to a number used already


# ---------------------------------------------------------------- 2. one daemon per store


def test_a_second_daemon_on_the_same_store_is_refused():
    with short_tmp() as folder:
        config = write_config(folder, threads=2)
        other = write_config(folder, threads=0, name="other.toml")
        other.write_text(
            other.read_text()
            .replace('"agent.sock"', '"other.sock"')
            .replace('state_dir = "state"', 'state_dir = "other-state"')
            .replace("[processors]", '[[sealing_thread]]\nlocation = "store1"\n[processors]')
        )
        with running_agent(config) as agent:
            log = refused(other)
            assert (
                f"store {folder}/store1 is used by another daemon "
                f"({folder}/store1/meta/daemon.lock is held by pid {agent.proc.pid})"
            ) in log
            assert not (folder / "other.sock").exists()
            assert agent.call("WorkerVersion") == "0.1.0"
            agent.terminate()
        second = Agent(other)
        second.socket = folder / "other.sock"
        try:  # the store is free once the first daemon stopped
            assert second.start().infos()[0]["location"] == str(folder / "store1")
        finally:
            second.close()


# ---------------------------------------------------------------- 3. stage processes


# A PC1 that takes a lock on its store (a second copy running at once records a
# duplicate), starts a helper that keeps the lock (as a wrapper's children would),
# and then works for a minute.
PC1_WITH_HELPER = """
import fcntl, os, subprocess, sys, time
lock = os.open("pc1.lock", os.O_RDWR | os.O_CREAT, 0o600)
try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    with open(os.path.join(sys.argv[1], "duplicates"), "a") as out:
        out.write(os.environ["VENUS_SECTOR_ID"] + "\\n")
helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], pass_fds=(lock,))
with open("pids", "a") as out:
    out.write(f"{os.getpid()} {helper.pid}\\n")
time.sleep(60)
"""


def _command_config(folder: Path, threads: int, stages: dict[str, str], **kwargs) -> Path:
    lines = ['[processors]\nkind = "command"\n[processors.command.stages]']
    for stage, body in stages.items():
        script = folder / f"{stage.lower()}.py"
        script.write_text(textwrap.dedent(body))
        lines.append(f'{stage} = ["{sys.executable}", "{script}", "{folder}"]')
    return write_config(folder, threads=threads, processors="\n".join(lines) + "\n", **kwargs)


def _pids(folder: Path, index: int) -> list[tuple[int, int]]:
    path = folder / f"store{index}/pids"
    if not path.exists():
        return []
    return [tuple(map(int, line.split())) for line in path.read_text().splitlines() if line]


def test_a_killed_daemon_leaves_no_stage_running_beside_its_rerun():
    with short_tmp() as folder:
        config = _command_config(folder, 3, {"PC1": PC1_WITH_HELPER})
        agent = Agent(config).start()
        try:
            wait_until(lambda: all(_pids(folder, i) for i in range(3)), 20, what="3 PC1 runs")
            first = [_pids(folder, i)[0] for i in range(3)]
            agent.kill()
            # PR_SET_PDEATHSIG: every PC1 died with the daemon ...
            for leader, _ in first:
                wait_until(lambda pid=leader: not process_alive(pid), 5, what=f"PC1 {leader}")
            # ... but not the helpers they started (their own children, still holding the lock)
            assert all(process_alive(helper) for _, helper in first)
            for index in range(3):  # the record names each stage's process group
                saved = record_of(folder, index)["stage_process"]
                assert saved["pgid"] == first[index][0] and saved["stage"] == "PC1"
            agent.start()
            # the restart kills what is left of each stage before PC1 runs again
            wait_until(lambda: all(len(_pids(folder, i)) == 2 for i in range(3)), 20,
                       what="3 PC1 reruns")  # fmt: skip
            for _, helper in first:
                assert not process_alive(helper), f"helper {helper} outlived the restart"
            assert not (folder / "duplicates").exists(), (folder / "duplicates").read_text()
            log = agent.log_text()
            assert log.count("left running by the previous daemon (process group") == 3
        finally:
            agent.close()
            for pid in {p for i in range(3) for pair in _pids(folder, i) for p in pair}:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


def test_300_mb_of_stage_stderr_cost_no_memory_and_keep_the_last_line():
    chatty = """
    import sys
    chunk = ("x" * 1023 + "\\n").encode()
    for _ in range(300 * 1024):
        sys.stderr.buffer.write(chunk)
    sys.stderr.write("permanent: the disk said no\\n")
    sys.exit(1)
    """
    with short_tmp() as folder:
        config = _command_config(folder, 1, {"PC1": chatty})
        with running_agent(config) as agent:
            info = agent.wait_for(lambda i: i[0]["last_error"], 60, "PC1 to fail")[0]
            assert info["last_error"] == "permanent: the disk said no"
            assert info["job_state"] == "TicketAssigned"
            peak = _peak_rss_mib(agent.proc.pid)
            assert peak < 100, f"the daemon peaked at {peak:.0f} MiB"
            log = agent.log_text()
            assert len(log) < 2 << 20, f"{len(log)} bytes of log"
            assert "thread #0 PC1 stderr: xxxx" in log
            assert "more bytes of output not logged" in log


# ---------------------------------------------------------------- 5. memory and disk


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "1m"):
    """A tiny tmpfs of our own at `path` (we are root): a disk to fill up."""
    path.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs at {path} (this test needs root): {done.stderr}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=True)


def fill(folder: Path) -> Path:
    """Write into `folder` until the file system is full; the filler file."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    with pytest.raises(OSError) as full:
        (folder / "probe").write_bytes(b"x" * 4096)
    assert full.value.errno == errno.ENOSPC
    (folder / "probe").unlink(missing_ok=True)
    return filler


def rpc_error(agent: Agent, method: str, *params) -> RpcError:
    with pytest.raises(RpcError) as error:
        agent.call(method, *params)
    return error.value


def test_a_change_the_full_disk_refused_did_not_happen_in_memory_either():
    with short_tmp() as folder, tmpfs(folder / "disk") as disk:
        # thread 0 pauses on the seed's C2 error; thread 1 spends 2 s in every PC1
        config = write_config(
            folder,
            threads=0,
            sealing=FAST,
            mock='duration = "10ms"\nwait_duration = "10ms"\ndurations = { PC1 = "2s" }',
            faults=seed_fault() + "threads = [0]\n",
        )
        stores = "".join(f'[[sealing_thread]]\nlocation = "disk/store{i}"\n' for i in (0, 1))
        config.write_text(config.read_text().replace("[processors]", stores + "[processors]"))
        agent = Agent(config).start()
        try:
            agent.wait_for(
                lambda i: (
                    i[0]["thread_state"]["state"] == "Paused"
                    and i[1]["job_stage"] == "PC1"
                    and i[1]["thread_state"]["state"] == "Running"
                ),
                20,
                "thread 0 paused, thread 1 in PC1",
            )
            filler = fill(disk)
            error = rpc_error(agent, "WorkerResume", 0, None)
            assert (
                error.code == 1002 and "change not saved: worker #0 is unchanged" in error.message
            )
            assert "No space left on device" in error.message
            error = rpc_error(agent, "WorkerPause", 1)
            assert error.code == 1002 and "worker #1 is unchanged" in error.message
            time.sleep(0.5)
            before = agent.infos()
            assert before[0]["thread_state"]["state"] == "Paused"  # the failed resume ran nothing
            assert before[0]["job_state"] == "C1Done" and before[0]["last_error"]
            assert before[1]["thread_state"]["state"] != "Paused"  # nor did the failed pause
            # Thread 1's PC1 ends, but its result cannot be saved: it waits for the disk.
            blocked = agent.wait_for(lambda i: i[1]["thread_state"]["state"] == "Waiting", 10,
                                     "thread 1 waiting for the disk")[1]  # fmt: skip
            assert blocked["last_error"].startswith(f"critical: cannot save {disk}/store1/meta/")
            assert "No space left on device (retrying every 5s)" in blocked["last_error"]
            before = agent.infos()
            for index, shown in enumerate(before):  # what WorkerList shows is what is on disk
                record = json.loads((disk / f"store{index}/meta/task.json").read_text())
                assert record["paused"] == (shown["thread_state"]["state"] == "Paused")
                assert record["pause_requested"] is False
                assert record["task"]["state"] == shown["job_state"]
            agent.kill()
            agent.start()  # still full: what the restarted daemon shows is what was shown
            after = agent.infos()
            assert after[0]["thread_state"]["state"] == "Paused"
            assert after[0]["last_error"] == before[0]["last_error"]
            assert after[1]["thread_state"]["state"] != "Paused"
            assert [i["job_state"] for i in after] == [i["job_state"] for i in before]
            filler.unlink()  # space again: the blocked write goes through within 5 s
            agent.wait_for(lambda i: i[1]["job_state"] not in ("TicketAssigned",), 20,
                           "thread 1 to move on")  # fmt: skip
            assert agent.call("WorkerResume", 0, None) is True
            assert agent.call("WorkerPause", 1) is True
        finally:
            agent.close()


@contextlib.contextmanager
def read_only(folder: Path):
    """`folder` read-only from now on: a read-only bind mount over it (EROFS for writers)."""
    for command in (["mount", "--bind", str(folder), str(folder)],
                    ["mount", "-o", "remount,bind,ro", str(folder)]):  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            pytest.fail(f"cannot make {folder} read-only (this test needs root): {done.stderr}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_read_only_store_refuses_changes_with_the_reason():
    with short_tmp() as folder:
        config = write_config(folder, threads=1, faults=seed_fault())
        with running_agent(config) as agent:
            agent.wait_for(lambda i: i[0]["thread_state"]["state"] == "Paused", 15, "paused")
            with read_only(folder / "store0/meta"):
                error = rpc_error(agent, "WorkerResume", 0, "Aborted")
                assert error.code == 1002 and "Read-only file system" in error.message
                info = agent.infos()[0]
                assert info["thread_state"]["state"] == "Paused" and info["job_state"] == "C1Done"
            assert agent.call("WorkerResume", 0, "Aborted") is True
            agent.terminate()


# ---------------------------------------------------------------- 6. symlinks and modes


def test_a_store_made_usable_by_hand_is_checked_as_at_start_before_a_resume_uses_it():
    with short_tmp() as folder:
        config = write_config(folder, threads=1)
        (folder / "place").write_text("a file where the store's folder should be")
        config.write_text(config.read_text().replace('"store0"', '"place/store0"'))
        with running_agent(config) as agent:
            agent.wait_for(lambda i: i[0]["thread_state"]["state"] == "Paused", 15, "paused")
            # The operator makes the folder, but others may write in it: refused, as at start.
            (folder / "place").unlink()
            (folder / "place").mkdir()
            (folder / "place").chmod(0o777)
            error = rpc_error(agent, "WorkerResume", 0, None)
            parent = f"store {folder}/place/store0: its parent folder {folder}/place is writable"
            assert error.code == 1002 and parent in error.message
            assert "strict_modes = false" in error.message
            assert not (folder / "place/store0/meta/task.json").exists()
            (folder / "place").chmod(0o755)
            assert agent.call("WorkerResume", 0, None) is True
            agent.wait_for(lambda i: i[0]["job_id"] is not None, 15, "sealing in the store")


def test_folders_another_user_could_write_in_are_refused():
    with short_tmp() as folder:
        config = write_config(folder, threads=1)
        (folder / "state").mkdir()
        (folder / "state").chmod(0o777)
        log = refused(config)
        assert (
            f"state_dir {folder}/state is writable by group and others (mode 0777): another "
            f"user could plant files there; chmod go-w {folder}/state"
        ) in log
        (folder / "state").chmod(0o755)
        (folder / "store0").mkdir()
        os.chown(folder / "store0", 65534, 65534)
        assert f"store {folder}/store0 is owned by nobody, not by root" in refused(config)
        os.chown(folder / "store0", 0, 0)
        (folder / "store0").chmod(0o775)
        assert f"store {folder}/store0 is writable by its group (mode 0775)" in refused(config)
        (folder / "store0").chmod(0o755)
        sockets = folder / "run"
        sockets.mkdir(mode=0o777)
        sockets.chmod(0o777)  # past the umask
        usual = config.read_text()
        config.write_text(usual.replace('socket = "agent.sock"', 'socket = "run/agent.sock"'))
        assert f"the socket's folder {sockets} is writable by group and others" in refused(config)
        assert not (sockets / "agent.sock").exists()
        config.write_text(usual)
        folder.chmod(0o777)  # the folder above them all
        try:
            log = refused(config)
            assert f"state_dir {folder}/state: its parent folder {folder} is writable" in log
            config.write_text(
                config.read_text().replace("[worker]", "[worker]\nstrict_modes = false")
            )
            with running_agent(config) as agent:  # the operator's explicit choice
                assert agent.call("WorkerVersion") == "0.1.0"
        finally:
            folder.chmod(0o700)


def test_a_symlink_planted_in_a_shared_state_folder_is_never_followed():
    with short_tmp() as folder:
        victim = folder / "victim"
        victim.write_text("root's secret\n")
        victim.chmod(0o600)
        state = folder / "state"
        state.mkdir()
        state.chmod(0o1777)  # like /tmp: anyone may create entries, nobody may rename ours
        config = write_config(folder, threads=1)
        (state / "daemon.lock").symlink_to(victim)
        log = refused(config)
        assert f"{state}/daemon.lock is a symlink: refusing to follow it" in log
        assert (
            victim.read_text() == "root's secret\n" and stat.S_IMODE(victim.stat().st_mode) == 0o600
        )
        (state / "daemon.lock").unlink()
        (state / "report.json").symlink_to(victim)
        with running_agent(config) as agent:
            agent.terminate()
        assert victim.read_text() == "root's secret\n"
        assert not (state / "report.json").is_symlink()  # replaced by the daemon's own file
        assert json.loads((state / "report.json").read_text())["name"] == "test-worker"


# ---------------------------------------------------------------- 7. bad records


def test_a_bad_record_or_store_pauses_only_its_own_thread():
    with short_tmp() as folder:
        config = write_config(folder, threads=4)
        (folder / "state").mkdir()
        counter_file(folder).write_text('{"schema": 1, "last": {"10000": 20}}')
        good = {"schema": 1, "paused": False, "paused_at": None, "last_error": None,
                "task": None, "last_numbers": {"10000": 20}}  # fmt: skip
        for index, change in ((1, {"paused_at": "yesterday"}), (2, {"pause_requested": "false"})):
            (folder / f"store{index}/meta").mkdir(parents=True)
            (folder / f"store{index}/meta/task.json").write_text(json.dumps({**good, **change}))
        (folder / "file").write_text("not a folder")
        config.write_text(config.read_text().replace('"store3"', '"file/store3"'))
        with running_agent(config) as agent:
            infos = agent.wait_for(lambda i: i[0]["job_id"] is not None, what="thread 0 sealing")
            record1, record2 = (folder / f"store{i}/meta/task.json" for i in (1, 2))
            expected = {
                1: f'critical: {record1}: field paused_at: expected a number or null, got a '
                   'string ("yesterday")',
                2: f'critical: {record2}: field pause_requested: expected true or false, got a '
                   'string ("false")',
                3: f"critical: cannot create store {folder}/file/store3: "
                   f"{folder}/file/store3/meta: Not a directory",
            }  # fmt: skip
            for index, error in expected.items():
                assert infos[index]["thread_state"]["state"] == "Paused", infos[index]
                assert infos[index]["last_error"] == error
                assert infos[index]["job_id"] is None
            assert agent.call("WorkerReport")["summary"]["Errors"] == 3
            # resume tries again: still bad, so it says how to get out
            error = rpc_error(agent, "WorkerResume", 1, None)
            assert error.code == 1002 and "field paused_at" in error.message
            assert "resume with state Aborted to set the record aside" in error.message
            # Aborted sets the bad record aside and starts afresh
            assert agent.call("WorkerResume", 1, "Aborted") is True
            aside = list((folder / "store1/meta").glob("task.json.unusable-*"))
            assert len(aside) == 1 and "yesterday" in aside[0].read_text()
            # the operator fixes thread 2's record by hand: resume reads it again
            record2.write_text(json.dumps(good))
            assert agent.call("WorkerResume", 2, None) is True
            infos = agent.wait_for(lambda i: i[1]["job_id"] and i[2]["job_id"], what="1, 2 on")
            numbers = [int(i["job_id"].rsplit("-", 1)[1]) for i in infos[:3]]
            assert len(set(numbers)) == 3 and min(numbers) > 20
            assert agent.infos()[3]["thread_state"]["state"] == "Paused"
