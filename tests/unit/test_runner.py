"""run_foreground's control paths, driven with small stand-in children.

The real llama-server is exercised in tests/integration; these children
misbehave on purpose in ways the real server cannot be made to on demand
(fail while shutting down, flood a stalled terminal). Each child writes a
ready file once its signal handlers are installed; signals are sent by a
helper thread after that, never on a timer.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from infersup.compile import LaunchPlan
from infersup.supervise import runner
from infersup.supervise.runner import Interrupted, RunResult, run_foreground, wait_ready

pytestmark = pytest.mark.timeout(60)


def plan_for(tmp_path: Path, body: str, grace: float = 5.0) -> LaunchPlan:
    script = tmp_path / "server.py"
    script.write_text(
        "import os, signal, sys, time\n"
        f"READY = {str(tmp_path / 'ready')!r}\n"
        "def ready():\n"
        "    open(READY + '.tmp', 'w').close(); os.replace(READY + '.tmp', READY)\n"
        + textwrap.dedent(body)
    )
    return LaunchPlan(
        profile_id="t",
        backend="llama.cpp",
        argv=(sys.executable, str(script)),
        env={},
        host="127.0.0.1",
        port=9,  # nothing answers: readiness is not what these tests are about
        health_path="/health",
        stop_grace_s=grace,
    )


def wait_for_file(path: Path) -> None:
    deadline = time.monotonic() + 30
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.005)


def when_ready(tmp_path: Path, *signals: int, between: str | None = None) -> threading.Thread:
    """Send ``signals`` to this process once the child is ready.

    With ``between``, each next signal waits for that file: the child writes
    it when the forwarded signal reached it (two signals sent back to back
    could coalesce into one).
    """

    def send() -> None:
        wait_for_file(tmp_path / "ready")
        for i, sig in enumerate(signals):
            if i and between:
                wait_for_file(tmp_path / between)
            os.kill(os.getpid(), sig)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def run(tmp_path: Path, plan: LaunchPlan, terminal: object = None) -> tuple[RunResult, list[str]]:
    messages: list[str] = []
    result = run_foreground(
        plan,
        env=dict(os.environ),
        terminal=terminal,  # type: ignore[arg-type]
        notify=lambda level, msg: messages.append(f"{level}: {msg}"),
        state=tmp_path / "state",
    )
    return result, messages


def record(tmp_path: Path) -> dict[str, object]:
    return json.loads((tmp_path / "state" / "t.last-exit.json").read_text())  # type: ignore[no-any-return]


def test_clean_exit_is_status_0(tmp_path: Path) -> None:
    result, messages = run(tmp_path, plan_for(tmp_path, "print('bye')\n"))
    assert (result.exit_code, result.failed, result.killed) == (0, False, False)
    assert result.tail == ("bye",)
    assert "info: t: server ended with exit status 0" in messages


def test_sigint_is_forwarded_and_exit_is_130(tmp_path: Path) -> None:
    plan = plan_for(
        tmp_path,
        """
        signal.signal(signal.SIGINT, lambda *a: (print('got INT', flush=True), sys.exit(0)))
        ready()
        while True: time.sleep(1)
        """,
    )
    when_ready(tmp_path, signal.SIGINT)
    result, _ = run(tmp_path, plan)
    assert (result.exit_code, result.returncode, result.stop_signal) == (130, 0, signal.SIGINT)
    assert "got INT" in result.tail and not result.failed
    assert record(tmp_path)["stopped_by_signal"] == signal.SIGINT


def test_second_signal_kills_at_once_and_is_recorded(tmp_path: Path) -> None:
    plan = plan_for(
        tmp_path,
        """
        signal.signal(signal.SIGINT, lambda *a: open(READY + '.int', 'w').close())
        ready()
        while True: time.sleep(1)
        """,
        grace=30,
    )
    when_ready(tmp_path, signal.SIGINT, signal.SIGINT, between="ready.int")
    started = time.monotonic()
    result, _ = run(tmp_path, plan)
    assert time.monotonic() - started < 20  # not the 30 s grace
    assert (result.exit_code, result.returncode, result.killed) == (130, -signal.SIGKILL, True)
    assert record(tmp_path)["sigkill_sent"] is True


def test_server_failing_while_stopping_reports_its_own_status(tmp_path: Path) -> None:
    plan = plan_for(
        tmp_path,
        """
        def die(*a):
            print('segfault in cleanup', flush=True)
            os._exit(3)
        signal.signal(signal.SIGTERM, die)
        ready()
        while True: time.sleep(1)
        """,
    )
    when_ready(tmp_path, signal.SIGTERM)
    result, messages = run(tmp_path, plan)
    assert (result.exit_code, result.failed, result.stop_signal) == (3, True, signal.SIGTERM)
    assert "error: t: server ended while stopping with exit status 3" in messages
    assert result.tail[-1] == "segfault in cleanup"


def test_signal_before_spawn_starts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spawned: list[object] = []
    real_open_log = runner._open_log

    def open_log_then_ctrl_c(*args: object) -> object:
        os.kill(os.getpid(), signal.SIGINT)
        return real_open_log(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(runner, "_open_log", open_log_then_ctrl_c)
    monkeypatch.setattr(runner, "spawn", lambda *a: spawned.append(a))
    with pytest.raises(Interrupted) as info:
        run(tmp_path, plan_for(tmp_path, "pass\n"))
    assert info.value.exit_code == 130 and spawned == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_a_stalled_terminal_does_not_stall_the_server(tmp_path: Path) -> None:
    read_fd, write_fd = os.pipe()  # a terminal nobody reads: fills after 64 KiB
    terminal = open(write_fd, "wb", buffering=0)  # noqa: SIM115
    plan = plan_for(
        tmp_path,
        """
        block = b'y' * 1023 + b'\\n'
        for _ in range(32 * 1024):  # 32 MiB, then exit
            sys.stdout.buffer.write(block)
        sys.stdout.buffer.flush()
        """,
    )
    done = threading.Event()
    got = bytearray()

    def drain_after_run() -> None:
        done.wait(60)
        deadline = time.monotonic() + 30
        while b"not shown here" not in got[-4096:] and time.monotonic() < deadline:
            got.extend(os.read(read_fd, 1 << 20))

    reader = threading.Thread(target=drain_after_run, daemon=True)
    reader.start()
    started = time.monotonic()
    result, messages = run(tmp_path, plan, terminal)
    done.set()
    elapsed = time.monotonic() - started
    reader.join(30)
    terminal.close()
    assert result.exit_code == 0 and elapsed < 30
    log = (tmp_path / "state" / "logs" / "t.log").read_bytes()
    assert log.count(b"y" * 1023 + b"\n") == 32 * 1024  # the log has everything
    assert b"bytes of server output not shown here" in got
    assert any("too fast for the terminal" in m for m in messages)


def test_readiness_probe_ignores_proxy_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/health"
        assert wait_ready(url, lambda: True, threading.Event())
    finally:
        server.shutdown()


def test_readiness_probe_stops_when_the_server_dies() -> None:
    alive: Callable[[], bool] = lambda: False  # noqa: E731
    assert not wait_ready("http://127.0.0.1:9/health", alive, threading.Event())
