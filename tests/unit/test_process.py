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
from pathlib import Path

import psutil
import pytest

from infersup.supervise.process import describe_returncode, exit_status, spawn, stop_tree
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


def test_graceful_child_exits_on_term_without_kill(tmp_path: Path) -> None:
    proc, _ = start_child(
        tmp_path,
        """
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
        ready(os.getpid())
        while True: time.sleep(1)
        """,
    )
    result = stop_tree(proc, grace_s=10)
    assert (result.returncode, result.escalated, result.swept) == (0, False, 0)


def test_term_ignored_is_killed_after_grace(tmp_path: Path) -> None:
    # llama-server with a non-streaming request in flight never exits on TERM
    proc, _ = start_child(
        tmp_path,
        """
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        ready(os.getpid())
        while True: time.sleep(1)
        """,
    )
    started = time.monotonic()
    result = stop_tree(proc, grace_s=0.5)
    assert result.escalated and result.returncode == -signal.SIGKILL
    assert 0.5 <= time.monotonic() - started < 5


def test_grandchildren_in_the_group_are_stopped(tmp_path: Path) -> None:
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
    stop_tree(proc, grace_s=5)
    assert not any(alive(pid) for pid in pids)


def test_escaped_grandchild_is_found_by_the_sweep(tmp_path: Path) -> None:
    proc, pids = start_child(
        tmp_path,
        """
        kid = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'],
                               start_new_session=True)
        ready(os.getpid(), kid.pid)
        while True: time.sleep(1)
        """,
    )
    escaped = pids[1]
    assert os.getpgid(escaped) != proc.pid
    result = stop_tree(proc, grace_s=5)
    assert result.swept == 1
    assert not alive(escaped)


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


def test_already_signalled_goes_straight_to_kill(tmp_path: Path) -> None:
    marker = tmp_path / "got-term"
    proc, _ = start_child(
        tmp_path,
        f"""
        signal.signal(signal.SIGTERM, lambda *a: open({str(marker)!r}, "w").close())
        ready(os.getpid())
        while True: time.sleep(1)
        """,
    )
    result = stop_tree(proc, grace_s=10, first_signal=None)
    assert result.escalated and result.returncode == -signal.SIGKILL
    assert not marker.exists()
