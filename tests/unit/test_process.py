"""Stopping a process tree: misbehaving children written on purpose.

Each child writes its pid(s) to a ready file once its signal handlers and
workers are in place, so the test never races the child's start-up.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from infersup.supervise.process import (
    adopted,
    become_subreaper,
    describe_returncode,
    exit_status,
    spawn,
    sweep,
)
from infersup.supervise.relay import Tail

pytestmark = pytest.mark.timeout(30)


def start_child(tmp_path: Path, body: str) -> tuple[subprocess.Popen[bytes], list[int]]:
    ready = tmp_path / "ready"
    script = tmp_path / "child.py"
    script.write_text(
        "import os, signal, subprocess, sys, time\n"
        f"READY = {str(ready)!r}\n"
        "def ready(*pids):\n"
        "    with open(READY + '.tmp', 'w') as f: f.write(' '.join(map(str, pids)))\n"
        "    os.replace(READY + '.tmp', READY)\n" + textwrap.dedent(body)
    )
    proc = spawn([sys.executable, str(script)], dict(os.environ))
    deadline = time.monotonic() + 20
    while not ready.exists():
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else b""
        assert time.monotonic() < deadline, "child never became ready"
        time.sleep(0.01)
    return proc, [int(p) for p in ready.read_text().split()]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kill_leader(proc: subprocess.Popen[bytes]) -> None:
    """The server itself dies (a crash); what it started is left over."""
    proc.kill()
    proc.wait()


@pytest.fixture
def subreaper() -> Iterator[None]:
    assert become_subreaper()
    try:
        yield
    finally:
        become_subreaper(False)


def test_grandchildren_left_in_the_group_are_swept(tmp_path: Path) -> None:
    # SGLang runs scheduler and detokenizer processes under the launcher
    proc, pids = start_child(
        tmp_path,
        """
        kids = [subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])
                for _ in range(2)]
        ready(os.getpid(), *[k.pid for k in kids])
        while True: time.sleep(1)
        """,
    )
    kill_leader(proc)
    assert all(alive(pid) for pid in pids[1:])
    sweep(proc.pid, [], grace_s=5)  # found through the group alone
    assert not any(alive(pid) for pid in pids)


def test_escaped_grandchild_is_adopted_and_swept(tmp_path: Path, subreaper: None) -> None:
    proc, pids = start_child(
        tmp_path,
        """
        kid = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'],
                               start_new_session=True, env={})  # no tree token either
        ready(os.getpid(), kid.pid)
        while True: time.sleep(1)
        """,
    )
    escaped = pids[1]
    assert os.getpgid(escaped) != proc.pid
    started = psutil.Process(proc.pid).create_time()
    kill_leader(proc)
    found = adopted("no-such-token", since=started)
    assert [p.pid for p in found] == [escaped]  # our child now, found by its start time
    assert sweep(proc.pid, found, grace_s=5) == 1
    assert not alive(escaped)


def test_a_group_of_zombies_is_not_waited_for(tmp_path: Path, subreaper: None) -> None:
    """SGLang's watchdog kills its workers, then itself: nothing is left to
    stop, and the sweep must not spend its grace period on the zombies."""
    proc, pids = start_child(
        tmp_path,
        """
        kids = [subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])
                for _ in range(2)]
        ready(os.getpid(), *[k.pid for k in kids])
        while True: time.sleep(1)
        """,
    )
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    t0 = time.monotonic()
    assert sweep(proc.pid, [], grace_s=5) == 0
    assert time.monotonic() - t0 < 1.0
    assert not any(alive(pid) for pid in pids)


def test_exit_status_and_description() -> None:
    assert exit_status(0) == 0 and exit_status(3) == 3 and exit_status(-9) == 137
    assert describe_returncode(1) == "exit status 1"
    assert describe_returncode(-9) == "killed by SIGKILL (status 137)"


def test_tail_is_bounded_and_keeps_bad_utf8() -> None:
    tail = Tail(max_lines=3)
    tail.feed(b"one\ntwo\nthr")
    tail.feed(b"ee\n\xff\xfebad\n")
    tail.feed(b"x" * (200 * 1024))  # a huge line without a newline
    lines = tail.text()
    assert lines[:2] == ["three", "\ufffd\ufffdbad"]
    assert len(lines) == 3 and len(lines[2]) <= 64 * 1024
