"""`infersup run` against the real llama-server, as a user runs it."""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.ggufgen import write_tiny_llama
from tests.integration.conftest import (
    Run,
    free_port,
    group_gone,
    http,
    processes_using,
)

pytestmark = pytest.mark.integration

Start = Callable[[str, str, int], Run]


def stop_with_sigint(run: Run) -> int:
    run.proc.send_signal(signal.SIGINT)
    return run.proc.wait(timeout=30)


@pytest.mark.timeout(120)
def test_tiny_generated_model_serves_a_completion_and_stops_cleanly(
    start_run: Start, tiny_model: Path
) -> None:
    port = free_port()
    run = start_run(
        f"backend: llama.cpp\nmodel: {tiny_model}\nport: {port}\n"
        "server: {ctx_size: 512, threads: 1, parallel: 1}\n",
        "tiny",
        port,
    )
    run.wait_ready()
    assert http("GET", run.url("/health")) == (200, {"status": "ok"})
    status, body = http("POST", run.url("/completion"), {"prompt": "Hello world", "n_predict": 8})
    assert status == 200
    assert body["tokens_predicted"] == 8 and isinstance(body["content"], str)

    assert stop_with_sigint(run) == 128 + signal.SIGINT
    assert run.server_pid is not None and group_gone(run.server_pid)
    assert processes_using(tiny_model, run.started) == []
    # the server's own output went to the terminal (our stdout) and the log
    assert b"srv  " in run.stdout.read_bytes() or b"main:" in run.stdout.read_bytes()
    log = (run.state / "logs" / "tiny.log").read_bytes()
    assert str(tiny_model).encode() in log
    record = json.loads((run.state / "tiny.last-exit.json").read_text())
    assert (record["returncode"], record["sigkill_sent"], record["failed"]) == (0, False, False)
    assert record["cause"] is None  # stopped as asked: nothing to diagnose


@pytest.mark.timeout(180)
def test_smollm2_answers_a_chat_request(start_run: Start, smollm2: Path) -> None:
    port = free_port()
    shipped = (REPO / "profiles" / "smollm2-135m.yaml").read_text()
    assert "port: 8080" in shipped
    run = start_run(shipped.replace("port: 8080", f"port: {port}"), "smollm2-135m", port)
    run.wait_ready()
    status, body = http(
        "POST",
        run.url("/v1/chat/completions"),
        {"messages": [{"role": "user", "content": "What is 2+2?"}], "max_tokens": 16},
        timeout=120,
    )
    assert status == 200
    choice = body["choices"][0]  # type: ignore[index]
    assert choice["message"]["content"].strip() != ""
    assert choice["finish_reason"] in ("stop", "length")
    # metrics: true in the shipped profile (without it /metrics answers 501)
    assert http_status(run.url("/metrics")) == 200
    assert stop_with_sigint(run) == 128 + signal.SIGINT
    assert run.server_pid is not None and group_gone(run.server_pid)
    assert processes_using(smollm2, run.started) == []


def http_status(url: str) -> int:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as resp:
        return int(resp.status)


@pytest.mark.timeout(60)
def test_server_error_exit_is_reported_with_its_last_lines(
    start_run: Start, tiny_model: Path
) -> None:
    port = free_port()
    run = start_run(
        f"backend: llama.cpp\nmodel: {tiny_model}\nport: {port}\nextra_args: [--no-such-flag]\n",
        "broken",
        port,
    )
    assert run.proc.wait(timeout=30) == 1  # llama-server's own status
    err = run.err_text()
    assert "FATAL: llama-server does not know a command-line flag (exit status 1)" in err
    assert "server said: error: invalid argument: --no-such-flag" in err
    assert "last server output:" in err
    record = json.loads((run.state / "broken.last-exit.json").read_text())
    assert record["returncode"] == 1 and record["failed"] is True
    assert record["cause"]["kind"] == "bad-flag" and record["cause"]["permanent"] is True
    assert any("--no-such-flag" in line for line in record["last_lines"])


@pytest.mark.timeout(60)
def test_port_in_use_is_refused_before_spawning(start_run: Start, tiny_model: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = start_run(f"backend: llama.cpp\nmodel: {tiny_model}\nport: {port}\n", "clash", port)
        assert run.proc.wait(timeout=30) == 1
    err = run.err_text()
    assert f"port {port} on 127.0.0.1 is already in use" in err
    assert "started" not in err


@pytest.mark.timeout(90)
def test_sigterm_escalates_to_sigkill_when_the_server_hangs_in_cleanup(
    start_run: Start, tmp_path: Path
) -> None:
    # Field notes B: with a non-streaming request in flight, b11434 logs
    # "cleaning up before exit..." on SIGTERM and does not exit. A 32K
    # training context keeps the request generating (~20 s) well past the grace.
    model = write_tiny_llama(tmp_path / "long.gguf", n_ctx_train=32768)
    port = free_port()
    run = start_run(
        f"backend: llama.cpp\nmodel: {model}\nport: {port}\n"
        "server: {ctx_size: 32768, threads: 1, parallel: 1}\n"
        "supervise: {stop_grace_s: 1}\n",
        "stuck",
        port,
    )
    run.wait_ready()
    with ThreadPoolExecutor(1) as pool:
        request = pool.submit(
            http, "POST", run.url("/completion"), {"prompt": "Hello", "n_predict": 100000}, 60
        )
        deadline = time.monotonic() + 30
        while not any(slot.get("is_processing") for slot in slots(run)):
            assert time.monotonic() < deadline, "the request never started"
            time.sleep(0.01)
        run.proc.send_signal(signal.SIGTERM)
        assert run.proc.wait(timeout=30) == 128 + signal.SIGTERM
        with pytest.raises((ConnectionError, OSError)):
            request.result(timeout=30)  # the client sees the connection drop, not a hang
    err = run.err_text()
    assert "server did not stop within 1s; sent SIGKILL" in err
    # (Not asserted: the server's "cleaning up before exit..." line. llama.cpp
    # logs from a worker thread, so a SIGKILL can land before it is written.)
    assert run.server_pid is not None and group_gone(run.server_pid)
    record = json.loads((run.state / "stuck.last-exit.json").read_text())
    assert record["sigkill_sent"] is True and record["failed"] is False
    assert record["returncode"] == -signal.SIGKILL


def slots(run: Run) -> list[dict[str, object]]:
    status, body = http("GET", run.url("/slots"))
    assert status == 200
    return body  # type: ignore[return-value]
