"""Control from another terminal: `run --detach`, `status`, `logs`, `stop`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import REPO
from tests.integration.conftest import TEST_MARK, free_port, infersup, marked_processes

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

MISBEHAVE = str(REPO / "tests" / "children" / "misbehave.py")


@pytest.fixture
def marked_env() -> Iterator[dict[str, str]]:
    """An environment whose processes the test can find again; fails the test
    if any of them is still alive at the end (and kills them)."""
    mark = f"control-{time.monotonic_ns()}"
    yield {**os.environ, TEST_MARK: mark, "COLUMNS": "200", "MISBEHAVE_MAX_S": "60"}
    leftovers = marked_processes(mark)
    for proc in leftovers:
        proc.send_signal(signal.SIGKILL)
    assert not leftovers


def test_detach_then_status_logs_and_stop(tmp_path: Path, marked_env: dict[str, str]) -> None:
    profiles, port = _profile(tmp_path, "bg")
    env = marked_env
    common = ("-p", str(profiles), "--server-bin", MISBEHAVE)
    started = infersup("run", "bg", "--detach", *common, env=env)
    assert started.returncode == 0, started.stderr
    assert "runs in the background" in started.stderr
    supervisor = int(started.stderr.split("supervisor pid ")[1].split(",")[0])

    deadline = time.monotonic() + 30
    while True:
        rows = json.loads(infersup("status", "bg", "--json", env=env).stdout)
        if rows and rows[0]["state"] == "READY":
            break
        assert time.monotonic() < deadline, rows
        time.sleep(0.05)
    row = rows[0]
    assert row["supervisor_pid"] == supervisor and row["live"] is True
    assert row["url"] == f"http://127.0.0.1:{port}" and row["restarts"] == 0

    again = infersup("run", "bg", *common, env=env)  # a second run is refused
    assert again.returncode == 1 and f"pid {supervisor}" in again.stderr

    logs = infersup("logs", "bg", "-n", "2", env=env)
    assert logs.returncode == 0
    assert logs.stdout.splitlines()[-1].endswith(f"listening on http://127.0.0.1:{port}")
    assert len(logs.stdout.splitlines()) == 2

    follower = subprocess.Popen(
        [sys.executable, "-m", "infersup", "logs", "bg", "-f", "-n", "1"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert follower.stdout is not None
    assert "listening on" in follower.stdout.readline()  # it is following now
    stopped = infersup("stop", "bg", env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert not psutil.pid_exists(supervisor) or (
        psutil.Process(supervisor).status() == psutil.STATUS_ZOMBIE
    )
    out, _ = follower.communicate(timeout=20)  # -f ends when the supervisor has ended
    assert follower.returncode == 0
    assert "cleaning up before exit" in out  # the server's last words, followed live

    final = json.loads(infersup("status", "bg", "--json", env=env).stdout)[0]
    assert (final["state"], final["live"], final["stale"]) == ("STOPPED", False, False)
    table = infersup("status", env=env).stdout
    assert "bg" in table and "STOPPED" in table


def test_status_and_stop_of_a_profile_never_run(tmp_path: Path) -> None:
    env = dict(os.environ)
    status = infersup("status", "nothing", env=env)
    assert status.returncode == 1 and "'nothing' has not been run" in status.stderr
    stop = infersup("stop", "nothing", env=env)
    assert stop.returncode == 1 and "error:" in stop.stderr
    logs = infersup("logs", "nothing", env=env)
    assert logs.returncode == 1 and "no log for 'nothing'" in logs.stderr


def _profile(tmp_path: Path, name: str, extra: str = "") -> tuple[Path, int]:
    port = free_port()
    profiles = tmp_path / "profiles"
    profiles.mkdir(exist_ok=True)
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    (profiles / f"{name}.yaml").write_text(
        f"backend: llama.cpp\nmodel: {model}\nport: {port}\n{extra}"
    )
    return profiles, port


def test_detach_reports_a_start_that_fails_at_once(
    tmp_path: Path, marked_env: dict[str, str]
) -> None:
    profiles, _ = _profile(tmp_path, "dud", "supervise: {restart: never}\n")
    env = {**marked_env, "MISBEHAVE_MODE": "crash-before-ready"}
    t0 = time.monotonic()
    started = infersup("run", "dud", "-d", "-p", str(profiles), "--server-bin", MISBEHAVE, env=env)
    assert started.returncode == 1, started.stderr
    assert time.monotonic() - t0 < 20
    assert "dud did not start in the background" in started.stderr
    assert "FATAL: exit status 1" in started.stderr  # the background run's own report
    assert "runs in the background" not in started.stderr


def test_detach_of_a_running_profile_is_refused_before_spawning(
    tmp_path: Path, marked_env: dict[str, str]
) -> None:
    profiles, port = _profile(tmp_path, "twice")
    env = marked_env
    common = ("-p", str(profiles), "--server-bin", MISBEHAVE)
    first = infersup("run", "twice", "-d", *common, env=env)
    assert first.returncode == 0, first.stderr
    assert f"twice is ready at http://127.0.0.1:{port}" in first.stderr
    before = {p.pid for p in marked_processes(env[TEST_MARK])}
    second = infersup("run", "twice", "-d", *common, env=env)
    assert second.returncode == 1
    assert "already running" in second.stderr
    assert {p.pid for p in marked_processes(env[TEST_MARK])} == before  # nothing new was started
    assert infersup("stop", "twice", env=env).returncode == 0
