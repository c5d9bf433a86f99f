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
from infersup.errors import InfersupError
from infersup.supervise.process import (
    descendants,
    describe_returncode,
    exit_status,
    signal_group,
    spawn,
    stop_tree,
)
from infersup.supervise.relay import OutputRelay, QueuedSink, Sink

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
    stop_signal: int | None  # the signal the user stopped infersup with, if any
    killed: bool  # infersup sent SIGKILL (grace period over, or a second Ctrl-C)
    failed: bool  # the server failed, rather than stopping as asked or ending cleanly
    tail: tuple[str, ...]
    log_path: Path | None


Notify = Callable[[str, str], None]  # (level: info|ready|warning|error, message)


# The probe talks to our own server: an http_proxy in the environment must not
# route it elsewhere (urllib honours proxy variables by default).
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


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
            with _DIRECT.open(url, timeout=timeout_s) as resp:
                if resp.status == 200:
                    return True
        except (urllib.error.URLError, OSError, ValueError):
            pass
        stop.wait(interval)
        interval = min(interval * 1.5, 0.05 if time.monotonic() < fast_until else 0.5)
    return False


class Interrupted(InfersupError):
    """The user stopped infersup before the server was started."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name} before the server started")
        self.exit_code = 128 + signum


class _Stopper:
    """What the user asked for by signal, and what was done about it.

    Driven from signal handlers (which Python runs in the main thread between
    bytecodes). The first signal is forwarded to the server's group exactly
    once, also when it arrives while the server is being spawned; a second one
    SIGKILLs the group; signals after the server has ended are ignored so the
    exit record is always written.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.forced = False
        self.tree: list[psutil.Process] = []
        self.event = threading.Event()
        self._proc: subprocess.Popen[bytes] | None = None
        self.sent: int | None = None  # the signal forwarded to the server, once

    def attach(self, proc: subprocess.Popen[bytes]) -> None:
        self._proc = proc
        if self.signum is not None:
            self._forward()

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is not None:
            return  # the server has ended; nothing left to stop
        if self.signum is None:
            self.signum = signum
            self.event.set()
            self._forward()
        elif proc is not None:
            self.forced = True
            signal_group(proc.pid, signal.SIGKILL)

    def _forward(self) -> None:
        if self._proc is None or self.sent is not None or self.signum is None:
            return
        # llama-server and SGLang treat INT and TERM alike; HUP becomes TERM
        self.sent = signal.SIGINT if self.signum == signal.SIGINT else signal.SIGTERM
        self.tree.extend(descendants(self._proc.pid))
        signal_group(self._proc.pid, self.sent)


def run_foreground(
    plan: LaunchPlan,
    *,
    env: Mapping[str, str],
    terminal: BinaryIO | None,
    notify: Notify,
    state: Path,
) -> RunResult:
    stopper = _Stopper()
    # Handlers first: a Ctrl-C right after spawn must not orphan the server.
    previous = {sig: signal.signal(sig, stopper.on_signal) for sig in FORWARDED}
    try:
        return _run(plan, env, terminal, notify, state, stopper)
    finally:
        _restore(previous)


def _run(
    plan: LaunchPlan,
    env: Mapping[str, str],
    terminal: BinaryIO | None,
    notify: Notify,
    state: Path,
    stopper: _Stopper,
) -> RunResult:
    log_path, log_stream = _open_log(state, plan.profile_id, notify)
    if stopper.signum is not None:  # Ctrl-C while we were getting ready: start nothing
        if log_stream is not None:
            log_stream.close()
        raise Interrupted(stopper.signum)
    # (a signal from here on is forwarded by stopper.attach once the server exists)
    terminal_sink = None
    if terminal is not None:
        terminal_sink = QueuedSink(
            "the terminal", terminal, on_error=lambda m: notify("warning", m)
        )
    sinks: list[Sink] = [terminal_sink] if terminal_sink is not None else []
    if log_stream is not None:  # unbuffered: `tail -f` sees output at once
        sinks.append(Sink(str(log_path), log_stream))

    try:
        proc = spawn(plan.argv, env)
    except BaseException:
        if terminal_sink is not None:
            terminal_sink.close(timeout=1.0)
        if log_stream is not None:
            log_stream.close()
        raise
    stopper.attach(proc)
    notify("info", f"started {plan.profile_id} (pid {proc.pid}), waiting for {plan.health_url}")
    assert proc.stdout is not None
    relay = OutputRelay(proc.stdout.fileno(), sinks, on_warning=lambda m: notify("warning", m))
    relay.start()

    def watch_ready() -> None:
        if wait_ready(plan.health_url, lambda: proc.poll() is None, stopper.event):
            notify("ready", f"{plan.profile_id} is ready at {plan.base_url}")

    watcher = threading.Thread(target=watch_ready, name="infersup-ready", daemon=True)
    watcher.start()
    try:
        while proc.poll() is None and stopper.signum is None:
            time.sleep(0.05)
        if stopper.signum is not None:  # forwarded; give the server its grace period
            deadline = time.monotonic() + plan.stop_grace_s
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
    finally:
        stopper.event.set()
        # After a forwarded signal the grace is spent: a server still there is
        # killed now. stop_tree alone decides and reports whether KILL was sent.
        result = stop_tree(
            proc,
            grace_s=plan.stop_grace_s,
            first_signal=None if stopper.signum is not None else signal.SIGTERM,
            known=stopper.tree,
        )
        # grandchildren holding the pipe are gone now; the relay drains to EOF
        relay.join(timeout=5.0)
        watcher.join(timeout=1.0)
        if terminal_sink is not None:
            terminal_sink.close(timeout=5.0)
        proc.stdout.close()
        if log_stream is not None:
            log_stream.close()

    killed = result.escalated or stopper.forced
    if result.escalated:
        notify("warning", f"server did not stop within {plan.stop_grace_s:g}s; sent SIGKILL")
    rc = result.returncode
    tail = tuple(relay.tail.text(TAIL_ON_FAILURE))
    stopped_as_asked = stopper.signum is not None and (
        killed or rc == 0 or (stopper.sent is not None and rc == -stopper.sent)
    )
    if stopped_as_asked:
        assert stopper.signum is not None
        code = 128 + stopper.signum
        notify("info", f"stopped {plan.profile_id}: server {describe_returncode(rc)}")
    else:
        code = exit_status(rc)
        level = "info" if rc == 0 else "error"
        during = " while stopping" if stopper.signum is not None else ""
        notify(level, f"{plan.profile_id}: server ended{during} with {describe_returncode(rc)}")
    if result.swept:
        notify("warning", f"stopped {result.swept} leftover process(es) of the server's tree")
    if terminal_sink is not None and terminal_sink.dropped_total:
        where = f"only went to {log_path}" if log_path else "were dropped (no log file)"
        notify(
            "warning",
            f"{terminal_sink.dropped_total} bytes of server output were too fast for the "
            f"terminal and {where}",
        )
    failed = not stopped_as_asked and rc != 0
    outcome = RunResult(code, rc, stopper.signum, killed, failed, tail, log_path)
    _write_last_exit(state, plan, outcome, notify)
    return outcome


def _restore(previous: Mapping[signal.Signals, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def _open_log(state: Path, profile_id: str, notify: Notify) -> tuple[Path | None, BinaryIO | None]:
    path = state / "logs" / f"{profile_id}.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        stream = path.open("ab", buffering=0)
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
        "sigkill_sent": result.killed,
        "failed": result.failed,
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
