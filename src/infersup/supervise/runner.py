"""Run one server in the foreground until it exits or the user stops it.

``infersup run`` for the foundation: spawn (process.py), relay output
(relay.py), tell the user when ``/health`` first answers 200, forward
SIGINT/SIGTERM/SIGHUP to the whole group, SIGKILL after the grace period (or
on a second Ctrl-C), and leave the exit status and the last output lines in
the state dir when the server fails. Restart and hang detection build on this
in the supervisor.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, BinaryIO

import psutil

from infersup.compile import LaunchPlan
from infersup.supervise.process import (
    descendants,
    describe_returncode,
    exit_status,
    signal_group,
    spawn,
    stop_tree,
)
from infersup.supervise.relay import OutputRelay, Sink

ENV_STATE_DIR = "INFERSUP_STATE_DIR"
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
TAIL_ON_FAILURE = 20


def state_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get(ENV_STATE_DIR):
        return Path(env[ENV_STATE_DIR])
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "infersup"


@dataclass(frozen=True)
class RunResult:
    exit_code: int
    returncode: int
    stop_signal: int | None
    escalated: bool
    tail: tuple[str, ...]
    log_path: Path | None


Notify = Callable[[str, str], None]  # (level: info|ready|warning|error, message)


def wait_ready(
    url: str,
    alive: Callable[[], bool],
    stop: threading.Event,
    *,
    timeout_s: float = 2.0,
) -> bool:
    """Poll ``url`` until it answers 200; False if the server exits or we stop first.

    Polls every 20-50 ms for the first 30 s (a tiny model is ready in tens of
    milliseconds; loopback requests are cheap), then backs off to 500 ms for
    loads that take minutes.
    """
    interval = 0.02
    fast_until = time.monotonic() + 30.0
    while alive() and not stop.is_set():
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as resp:
                if resp.status == 200:
                    return True
        except (urllib.error.URLError, OSError, ValueError):
            pass
        stop.wait(interval)
        interval = min(interval * 1.5, 0.05 if time.monotonic() < fast_until else 0.5)
    return False


def run_foreground(
    plan: LaunchPlan,
    *,
    env: Mapping[str, str],
    terminal: BinaryIO | None,
    notify: Notify,
    state: Path,
) -> RunResult:
    log_path, log_stream = _open_log(state, plan.profile_id, notify)
    sinks = []
    if terminal is not None:
        sinks.append(Sink("the terminal", terminal))
    if log_stream is not None:
        sinks.append(Sink(str(log_path), log_stream))

    stop = threading.Event()
    requested: list[int] = []
    known_tree: list[psutil.Process] = []
    children: list[subprocess.Popen[bytes]] = []  # set once spawned

    def forward(signum: int) -> None:
        pid = children[0].pid
        known_tree.extend(descendants(pid))
        signal_group(pid, signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if requested:  # second signal: no more patience
            if children:
                signal_group(children[0].pid, signal.SIGKILL)
            return
        requested.append(signum)
        stop.set()
        if children:
            forward(signum)

    # Handlers first: a Ctrl-C right after spawn must not orphan the server.
    previous = {sig: signal.signal(sig, on_signal) for sig in FORWARDED}
    try:
        proc = spawn(plan.argv, env)
    except BaseException:
        _restore(previous)
        raise
    children.append(proc)
    if requested:  # the signal came while spawning
        forward(requested[0])
    notify("info", f"started {plan.profile_id} (pid {proc.pid}), waiting for {plan.health_url}")
    assert proc.stdout is not None
    relay = OutputRelay(proc.stdout.fileno(), sinks, on_warning=lambda m: notify("warning", m))
    relay.start()

    def watch_ready() -> None:
        if wait_ready(plan.health_url, lambda: proc.poll() is None, stop):
            notify("ready", f"{plan.profile_id} is ready at {plan.base_url}")

    watcher = threading.Thread(target=watch_ready, name="infersup-ready", daemon=True)
    watcher.start()
    try:
        while proc.poll() is None and not requested:
            time.sleep(0.05)
        if requested:  # the signal is forwarded; give the server its grace period
            deadline = time.monotonic() + plan.stop_grace_s
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
    finally:
        stop.set()
        # After a forwarded signal the grace is spent: a server still there is
        # killed now. stop_tree alone decides and reports whether KILL was sent.
        result = stop_tree(
            proc,
            grace_s=plan.stop_grace_s,
            first_signal=None if requested else signal.SIGTERM,
            known=known_tree,
        )
        _restore(previous)
        # grandchildren holding the pipe are gone now; the relay drains to EOF
        relay.join(timeout=5.0)
        watcher.join(timeout=1.0)
        if proc.stdout is not None:
            proc.stdout.close()
        if log_stream is not None:
            log_stream.close()

    if result.escalated:
        notify("warning", f"server did not stop within {plan.stop_grace_s:g}s; sent SIGKILL")
    rc = result.returncode
    stop_signal = requested[0] if requested else None
    tail = tuple(relay.tail.text(TAIL_ON_FAILURE))
    if stop_signal is not None:
        code = 128 + stop_signal
        notify("info", f"stopped {plan.profile_id}: server {describe_returncode(rc)}")
    else:
        code = exit_status(rc)
        level = "info" if rc == 0 else "error"
        notify(level, f"{plan.profile_id}: server ended with {describe_returncode(rc)}")
    if result.swept:
        notify("warning", f"stopped {result.swept} leftover process(es) of the server's tree")
    outcome = RunResult(code, rc, stop_signal, result.escalated, tail, log_path)
    _write_last_exit(state, plan, outcome, notify)
    return outcome


def _restore(previous: Mapping[signal.Signals, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def _open_log(state: Path, profile_id: str, notify: Notify) -> tuple[Path | None, BinaryIO | None]:
    path = state / "logs" / f"{profile_id}.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        stream = path.open("ab")
    except OSError as exc:
        notify("warning", f"cannot write the server log to {path}: {exc.strerror or exc}")
        return None, None
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    stream.write(f"\n===== infersup: {profile_id} starting at {stamp} =====\n".encode())
    return path, stream


def _write_last_exit(state: Path, plan: LaunchPlan, result: RunResult, notify: Notify) -> None:
    record = {
        "profile": plan.profile_id,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "returncode": result.returncode,
        "status": describe_returncode(result.returncode),
        "stopped_by_signal": result.stop_signal,
        "killed_after_grace": result.escalated,
        "log": str(result.log_path) if result.log_path else None,
        "last_lines": list(result.tail),
        "argv": list(plan.argv),
    }
    path = state / f"{plan.profile_id}.last-exit.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2) + "\n", "utf-8")
    except OSError as exc:
        notify("warning", f"cannot record the exit in {path}: {exc.strerror or exc}")
