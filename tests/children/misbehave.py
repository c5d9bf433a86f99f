#!/usr/bin/env python3
"""A llama-server stand-in that misbehaves on purpose, for infersup's fault tests.

Not llama-server: a small stdlib-only script that prints llama-server b11434's
log lines and answers its HTTP endpoints, then fails in the way a test asks
for (one mode per fault row of ``shared/reliability.md``).

Usage (the argv infersup compiles for a llama.cpp profile)::

    misbehave.py -m MODEL --host H --port P [--metrics] [other flags: ignored]
    misbehave.py --help       the bundled llama-server b11434 help, exit 0, so
                              `infersup run --server-bin misbehave.py` checks
                              profiles against the real flag table
    misbehave.py --version    b11434's version banner

Normal life: startup lines; the port is bound BEFORE the "load" (like
llama-server) and every path answers 503 ``Loading model`` for
MISBEHAVE_LOAD_S; then ``srv  llama_server: listening on http://H:P``,
``/health`` 200 ``{"status":"ok"}``, ``/v1/models``,
``/v1/chat/completions`` (non-streaming takes MISBEHAVE_REQUEST_S; streaming
sends SSE chunks over that time), ``/metrics`` (501 without ``--metrics``,
as llama-server). SIGTERM/SIGINT: one "cleaning up" line, exit 0 at once.
Logs go to stderr (as llama-server's); flood output to stdout. SIGPIPE has
its default action, as in a C program: a child whose reader is gone dies on
its next write. HTTP requests are never logged, so health probes never look
like progress.

Environment (all optional):

=========================  =======  ==================================================
variable                   default  meaning
=========================  =======  ==================================================
MISBEHAVE_MODE             normal   comma list of modes (below); at most one per group
MISBEHAVE_LOAD_S           0        seconds of "loading" (503) before ready
MISBEHAVE_PROGRESS_S       0.2      slow-start: one progress output every N s
MISBEHAVE_PROGRESS_STYLE   line     slow-start: ``line`` (``load_tensors: N%``) or
                                    ``dots`` (``.`` with no newline, like llama.cpp)
MISBEHAVE_REQUEST_S        0        seconds a chat completion takes
MISBEHAVE_AFTER_S          0.5      after-ready modes act this long after ready
MISBEHAVE_RC               1        exit status of the crash modes
MISBEHAVE_STOP_S           2        slow-stop: seconds from SIGTERM to exit 0
MISBEHAVE_FLOOD_MB         100      flood: MB written to stdout
MISBEHAVE_HUGE_MB          10       huge-line: MB in the one line
MISBEHAVE_BUSY_HEALTH      503      busy: /health answers ``503`` at once, or ``slow``
MISBEHAVE_BUSY_HEALTH_S    30       busy + slow: /health sleeps this long, then 200
MISBEHAVE_FAIL_STARTS      (all)    misbehave on the first N starts only, then act
                                    normal (needs MISBEHAVE_COUNT_FILE; crash-always
                                    ignores it)
MISBEHAVE_COUNT_FILE       -        one line (``pid``) appended at every start
MISBEHAVE_READY_FILE       -        written (``pid start_no``) when ready, atomically;
                                    overwritten by every start that gets ready
MISBEHAVE_PIDS_FILE        -        worker pids, one a line (grandchildren,
                                    setsid-escape), written atomically
MISBEHAVE_MAX_S            300      every process of the tree exits (rc 3) after this
                                    long, whatever it is doing: a leak guard
MISBEHAVE_WORKER_ENV       -        ``empty``: tree workers exec with an empty
                                    environment (no tree token, no test marker)
=========================  =======  ==================================================

Modes, by group (combine across groups: ``grandchildren,term-ignore``):

- start: ``crash-before-ready`` (port bound, 503 for LOAD_S, one ordinary line,
  exit RC: no known fatal message); ``crash-always`` (exit RC 50 ms after
  binding, on every start, FAIL_STARTS ignored); ``no-port`` (never binds,
  prints the startup lines, lives on); ``stall-start`` (port bound, 503, a
  few lines then silence forever); ``never-ready`` (prints the ready line but
  /health answers 503 forever: only a 200 means ready); ``slow-start``
  (progress every PROGRESS_S for LOAD_S, 503 meanwhile, then ready).
- tree: ``grandchildren`` (2 workers forked in the same process group, sleep
  forever); ``setsid-escape`` (1 worker that calls setsid(), keeps the
  stdout/stderr pipe open, sleeps forever). Pids in MISBEHAVE_PIDS_FILE.
- output (before ready): ``flood`` (FLOOD_MB of numbered 100-byte lines,
  ``flood 00000000 xxx...``, as fast as it can); ``huge-line`` (HUGE_MB of
  ``H`` with no newline, then a newline); ``bad-utf8`` (the bytes of
  BAD_UTF8_CHUNKS, a valid multi-byte character split across two writes
  50 ms apart: decodes to BAD_UTF8_TEXT with errors="replace").
- after ready (AFTER_S later): ``crash-after-ready`` (exit RC);
  ``hang-after-ready`` (the HTTP server accepts but never replies, no more
  output: a deadlock); ``busy`` (/health 503 or slow, a progress line every
  0.2 s, ``llamacpp:tokens_predicted_total`` grows by 8 a line);
  ``sigkill-self`` (SIGKILL to itself: the OOM killer's -9).
- stop: ``term-ignore`` (SIGTERM and SIGINT logged, then ignored, as
  llama-server b11434 with a non-streaming request in flight);
  ``slow-stop`` (exit 0 STOP_S after the first SIGTERM/SIGINT).
- ``normal`` and ``count`` are no-ops (``count`` = normal life; counting is
  MISBEHAVE_COUNT_FILE, honoured in every mode).

Exit status 2: a bad MISBEHAVE_* value (the reason is on stderr).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any

HELP_FILE = (
    Path(__file__).resolve().parents[2]
    / "src"
    / "infersup"
    / "backends"
    / "data"
    / "llama-server-b11434-help.txt"
)
VERSION_TEXT = "version: 0.6.0-dev (build 11434, commit misbehave)\nbuilt with misbehave.py\n"

GROUPS: dict[str, frozenset[str]] = {
    "start": frozenset(
        {
            "crash-before-ready",
            "crash-always",
            "no-port",
            "stall-start",
            "never-ready",
            "slow-start",
        }
    ),
    "tree": frozenset({"grandchildren", "setsid-escape"}),
    "output": frozenset({"flood", "huge-line", "bad-utf8"}),
    "after-ready": frozenset({"crash-after-ready", "hang-after-ready", "busy", "sigkill-self"}),
    "stop": frozenset({"term-ignore", "slow-stop"}),
}
NO_OP_MODES = frozenset({"normal", "count"})

# bad-utf8: what is written, chunk by chunk, and what a reader that decodes
# with errors="replace" and never splits a character must show.
BAD_UTF8_CHUNKS: tuple[bytes, ...] = (
    b"bad-utf8: raw \xff\xfe\xc3\x28 end\n",
    b"bad-utf8: split caf\xc3",
    b"\xa9 and \xf0\x9f",
    b"\x99\x82 ok\n",
)
BAD_UTF8_TEXT = "bad-utf8: raw \ufffd\ufffd\ufffd( end\nbad-utf8: split café and 🙂 ok\n"

FLOOD_LINE_BYTES = 100
LOADING_BODY = {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}
BUSY_BODY = {"error": {"code": 503, "message": "Server busy", "type": "unavailable_error"}}
METRICS_501 = {
    "error": {
        "code": 501,
        "message": "This server does not support metrics endpoint. Start it with `--metrics`",
        "type": "not_supported_error",
    }
}
NOT_FOUND = {"error": {"code": 404, "message": "File Not Found", "type": "not_found_error"}}

T0 = time.monotonic()


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def log(message: str, level: str = "I") -> None:
    """One line in llama.cpp's format: ``M.SS.mmm.uuu L message`` (time since start)."""
    us = int((time.monotonic() - T0) * 1_000_000)
    stamp = f"{us // 60_000_000}.{us // 1_000_000 % 60:02d}.{us // 1000 % 1000:03d}.{us % 1000:03d}"
    write_all(2, f"{stamp} {level} {message}\n".encode())


def write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


# --------------------------------------------------------------------------
# Command line and environment
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Args:
    model: str = ""
    host: str = "127.0.0.1"
    port: int = 8080
    metrics: bool = False
    help: bool = False
    version: bool = False


_VALUE_FLAGS = {"-m": "model", "--model": "model", "--host": "host", "--port": "port"}


def parse_argv(argv: list[str]) -> Args:
    """The few llama-server flags the stand-in needs; everything else is ignored.

    Hand-rolled rather than argparse: argparse would read ``-mg 0`` (main GPU)
    as ``-m g``.
    """
    found: dict[str, str] = {}
    flags: set[str] = set()
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if eq and name.startswith("--") and name in _VALUE_FLAGS:
            found[_VALUE_FLAGS[name]] = value
        elif arg in _VALUE_FLAGS and i + 1 < len(argv):
            found[_VALUE_FLAGS[arg]] = argv[i + 1]
            i += 1
        elif arg in ("-h", "--help", "--usage"):
            flags.add("help")
        elif arg in ("--version", "--metrics", "--no-metrics"):
            flags.add(arg[2:])
        i += 1
    return Args(
        model=found.get("model", ""),
        host=found.get("host", "127.0.0.1"),
        port=int(found.get("port", "8080")),
        metrics="metrics" in flags and "no-metrics" not in flags,
        help="help" in flags,
        version="version" in flags,
    )


@dataclass(frozen=True)
class Config:
    modes: frozenset[str]
    load_s: float
    progress_s: float
    progress_dots: bool
    request_s: float
    after_s: float
    rc: int
    stop_s: float
    flood_mb: float
    huge_mb: float
    busy_health_slow: bool
    busy_health_s: float
    fail_starts: int | None
    count_file: str | None
    ready_file: str | None
    pids_file: str | None
    max_s: float

    def group(self, name: str) -> str | None:
        chosen = self.modes & GROUPS[name]
        return next(iter(chosen)) if chosen else None


def config_from_env(env: Mapping[str, str]) -> Config:
    """Read MISBEHAVE_*; ValueError names the variable that is wrong."""

    def num(name: str, default: float) -> float:
        raw = env.get(name, "")
        try:
            value = float(raw) if raw else default
        except ValueError:
            raise ValueError(f"{name}={raw!r} is not a number") from None
        if value < 0:
            raise ValueError(f"{name}={raw!r} must be >= 0")
        return value

    modes = frozenset(
        m.strip() for m in env.get("MISBEHAVE_MODE", "normal").split(",") if m.strip()
    )
    known = NO_OP_MODES.union(*GROUPS.values())
    if unknown := sorted(modes - known):
        raise ValueError(f"MISBEHAVE_MODE: unknown mode(s) {', '.join(unknown)}")
    for group, members in GROUPS.items():
        if len(modes & members) > 1:
            raise ValueError(
                f"MISBEHAVE_MODE: {' and '.join(sorted(modes & members))} "
                f"are both {group} modes; pick one"
            )
    style = env.get("MISBEHAVE_PROGRESS_STYLE", "line")
    if style not in ("line", "dots"):
        raise ValueError(f"MISBEHAVE_PROGRESS_STYLE={style!r}: use line or dots")
    health = env.get("MISBEHAVE_BUSY_HEALTH", "503")
    if health not in ("503", "slow"):
        raise ValueError(f"MISBEHAVE_BUSY_HEALTH={health!r}: use 503 or slow")
    fail_raw = env.get("MISBEHAVE_FAIL_STARTS", "")
    count_file = env.get("MISBEHAVE_COUNT_FILE") or None
    if fail_raw and count_file is None:
        raise ValueError("MISBEHAVE_FAIL_STARTS needs MISBEHAVE_COUNT_FILE to count starts")
    return Config(
        modes=modes - NO_OP_MODES,
        load_s=num("MISBEHAVE_LOAD_S", 0.0),
        progress_s=num("MISBEHAVE_PROGRESS_S", 0.2) or 0.2,
        progress_dots=style == "dots",
        request_s=num("MISBEHAVE_REQUEST_S", 0.0),
        after_s=num("MISBEHAVE_AFTER_S", 0.5),
        rc=int(num("MISBEHAVE_RC", 1)),
        stop_s=num("MISBEHAVE_STOP_S", 2.0),
        flood_mb=num("MISBEHAVE_FLOOD_MB", 100.0),
        huge_mb=num("MISBEHAVE_HUGE_MB", 10.0),
        busy_health_slow=health == "slow",
        busy_health_s=num("MISBEHAVE_BUSY_HEALTH_S", 30.0),
        fail_starts=int(num("MISBEHAVE_FAIL_STARTS", 0)) if fail_raw else None,
        count_file=count_file,
        ready_file=env.get("MISBEHAVE_READY_FILE") or None,
        pids_file=env.get("MISBEHAVE_PIDS_FILE") or None,
        max_s=num("MISBEHAVE_MAX_S", 300.0),
    )


def count_start(path: str | None) -> int:
    """Append this start to the count file; the number of this start (1-based)."""
    if path is None:
        return 1
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, f"{os.getpid()}\n".encode())  # one O_APPEND write: never interleaved
    finally:
        os.close(fd)
    with open(path, encoding="utf-8") as f:
        return sum(1 for _ in f)


# --------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------


class State:
    """What the HTTP threads read; the main thread moves ``phase`` forward."""

    def __init__(self, args: Args, config: Config) -> None:
        self.args = args
        self.config = config
        self.phase = "loading"  # loading | ready | busy | hung
        self.lock = threading.Lock()
        self.prompt_tokens = 0
        self.tokens_predicted = 0
        self.processing = 0
        self.requests = 0
        self.never = threading.Event()  # never set: what a hung handler waits on

    def add_tokens(self, prompt: int, predicted: int) -> None:
        with self.lock:
            self.prompt_tokens += prompt
            self.tokens_predicted += predicted

    def metrics_text(self) -> str:
        with self.lock:
            rows = [
                (
                    "prompt_tokens_total",
                    "counter",
                    "Number of prompt tokens processed, excluding cached tokens",
                    self.prompt_tokens,
                ),
                (
                    "tokens_predicted_total",
                    "counter",
                    "Number of generation tokens processed",
                    self.tokens_predicted,
                ),
                ("requests_processing", "gauge", "Number of requests processing", self.processing),
                ("requests_deferred", "gauge", "Number of requests deferred", 0),
            ]
        return "".join(
            f"# HELP llamacpp:{name} {doc}\n# TYPE llamacpp:{name} {kind}\n"
            f"llamacpp:{name} {value}\n"
            for name, kind, doc, value in rows
        )


class Server(ThreadingHTTPServer):
    daemon_threads = True
    state: State


class Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"
    server_version = "llama.cpp"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        """No access log: a health probe must never look like server progress."""

    def do_GET(self) -> None:
        self._route()

    def do_POST(self) -> None:
        self._route()

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, code: int, payload: object) -> None:
        self._send(
            code,
            json.dumps(payload, separators=(",", ":")).encode(),
            "application/json; charset=utf-8",
        )

    def _route(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        state = self.server.state
        phase = state.phase
        if phase == "hung":
            state.never.wait()  # accepted, never answered: a deadlocked server
            return
        if phase == "loading":
            self._json(503, LOADING_BODY)
            return
        path = self.path.split("?", 1)[0]
        if path == "/health":
            if phase != "busy":
                self._json(200, {"status": "ok"})
            elif state.config.busy_health_slow:
                time.sleep(state.config.busy_health_s)
                self._json(200, {"status": "ok"})
            else:
                self._json(503, BUSY_BODY)
        elif path in ("/v1/models", "/models"):
            self._json(
                200,
                {
                    "object": "list",
                    "data": [{"id": state.args.model, "object": "model", "owned_by": "llamacpp"}],
                },
            )
        elif path == "/metrics":
            if state.args.metrics:
                self._send(200, state.metrics_text().encode(), "text/plain; version=0.0.4")
            else:
                self._json(501, METRICS_501)
        elif path in ("/v1/chat/completions", "/chat/completions") and self.command == "POST":
            self._chat(body)
        else:
            self._json(404, NOT_FOUND)

    def _chat(self, body: bytes) -> None:
        state = self.server.state
        try:
            stream = bool(json.loads(body or b"{}").get("stream"))
        except (ValueError, AttributeError):
            stream = False
        with state.lock:
            state.requests += 1
            state.processing += 1
            n = state.requests
        try:
            words = ["misbehave", " says", " hi", "."]
            if stream:
                self._stream(n, words)
            else:
                time.sleep(state.config.request_s)
                self._json(200, _completion(n, state.args.model, "".join(words)))
            state.add_tokens(8, len(words))
        finally:
            with state.lock:
                state.processing -= 1

    def _stream(self, n: int, words: list[str]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        pause = self.server.state.config.request_s / len(words)
        for word in words:
            time.sleep(pause)
            chunk = {
                "id": f"chatcmpl-misbehave-{n}",
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}],
            }
            self.wfile.write(f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")


def _completion(n: int, model: str, text: str) -> dict[str, object]:
    return {
        "choices": [
            {
                "finish_reason": "length",
                "index": 0,
                "message": {"role": "assistant", "content": text},
            }
        ],
        "created": int(time.time()),
        "model": model,
        "object": "chat.completion",
        "usage": {"completion_tokens": 4, "prompt_tokens": 8, "total_tokens": 12},
        "id": f"chatcmpl-misbehave-{n}",
    }


def bind(state: State) -> Server | None:
    """Bind and serve in a daemon thread; None (after llama-server's lines) if taken."""
    host, port = state.args.host, state.args.port

    class Bound(Server):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    try:
        server = Bound((host, port), Handler)
    except OSError:
        log(
            f"srv         start: couldn't bind HTTP server socket, hostname: {host}, port: {port}",
            "E",
        )
        return None
    server.state = state
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server


# --------------------------------------------------------------------------
# Modes
# --------------------------------------------------------------------------


def exit_now(rc: int, line: str | None = None) -> None:
    if line:
        log(line)
    os._exit(rc)


def sleep_forever() -> None:
    while True:
        signal.pause()


def install_stop_handlers(mode: str | None, config: Config) -> None:
    stopping: list[bool] = []

    def on_stop(signum: int, frame: FrameType | None) -> None:
        log("srv    operator(): operator(): cleaning up before exit...")
        if mode == "term-ignore":
            return  # keeps running, like b11434 with a non-streaming request in flight
        if mode == "slow-stop":
            if not stopping:
                stopping.append(True)
                timer = threading.Timer(config.stop_s, os._exit, args=(0,))
                timer.daemon = True
                timer.start()
            return
        os._exit(0)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_stop)


def fork_worker(escape: bool, max_s: float) -> int:
    """A worker that sleeps until killed (or max_s); it keeps the inherited pipes open."""
    pid = os.fork()
    if pid:
        return pid
    try:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        if escape:
            os.setsid()  # out of the group: only a descendant sweep finds it
        if os.environ.get("MISBEHAVE_WORKER_ENV") == "empty":
            # a worker that drops its environment (and any marker in it)
            code = f"import time\ntime.sleep({max_s})\n"
            os.execve(sys.executable, [sys.executable, "-c", code], {})
        deadline = time.monotonic() + max_s
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 1.0))
    finally:
        os._exit(3)


def start_workers(mode: str | None, config: Config) -> None:
    if mode is None:
        return
    escape = mode == "setsid-escape"
    pids = [fork_worker(escape, config.max_s) for _ in range(1 if escape else 2)]
    for pid in pids:
        log(f"srv  misbehave: started worker pid {pid}" + (" (setsid)" if escape else ""))
    if config.pids_file:
        write_atomic(config.pids_file, "".join(f"{pid}\n" for pid in pids))


def write_output(mode: str | None, config: Config) -> None:
    if mode == "flood":
        total = int(config.flood_mb * 1_000_000) // FLOOD_LINE_BYTES
        pad = b"x" * (FLOOD_LINE_BYTES - len(b"flood 00000000 \n"))
        per_chunk = 10_000
        for start in range(0, total, per_chunk):
            lines = (
                b"flood %08d %s\n" % (i, pad) for i in range(start, min(total, start + per_chunk))
            )
            write_all(1, b"".join(lines))
        log(f"srv  misbehave: flood wrote {total * FLOOD_LINE_BYTES} bytes")
    elif mode == "huge-line":
        size = int(config.huge_mb * 1_000_000)
        block = b"H" * (1 << 20)
        for start in range(0, size, len(block)):
            write_all(1, block[: min(len(block), size - start)])
        write_all(1, b"\n")
        log(f"srv  misbehave: huge line of {size} bytes written")
    elif mode == "bad-utf8":
        for chunk in BAD_UTF8_CHUNKS:
            write_all(1, chunk)
            time.sleep(0.05)  # separate writes, so a reader sees a character cut in two


def load(mode: str | None, config: Config) -> None:
    """The load phase of each start mode; returns when the model is "loaded"."""
    if mode == "crash-always":
        time.sleep(0.05)
        exit_now(config.rc, f"cmn          init: misbehave: crash-always, exit {config.rc}")
    if mode in ("no-port", "stall-start"):
        log("cmn          init: llama threadpool init, n_threads = 1")
        log("load_tensors: loading model tensors, this can take a while...")
        sleep_forever()
    if mode == "slow-start":
        deadline = time.monotonic() + config.load_s
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, config.progress_s))
            if config.progress_dots:
                write_all(2, b".")
            else:
                done = 1 - max(0.0, deadline - time.monotonic()) / config.load_s
                log(f"load_tensors: loading model tensors {int(100 * done)}%")
        if config.progress_dots:
            write_all(2, b"\n")
        return
    time.sleep(config.load_s)
    if mode == "crash-before-ready":
        exit_now(config.rc, "cmn          init: llama threadpool init, n_threads = 1")


def after_ready(mode: str | None, state: State) -> None:
    config = state.config
    if mode is None:
        return
    time.sleep(config.after_s)
    if mode == "crash-after-ready":
        exit_now(config.rc, f"srv  misbehave: crash-after-ready, exit {config.rc}")
    elif mode == "sigkill-self":
        os.kill(os.getpid(), signal.SIGKILL)
    elif mode == "hang-after-ready":
        state.phase = "hung"
    elif mode == "busy":
        state.phase = "busy"
        task = 0
        while True:
            time.sleep(0.2)
            task += 1
            state.add_tokens(0, 8)
            log(
                f"slot update_slots: id  0 | task {task} | n_tokens = {state.tokens_predicted}, "
                "decoding batch (busy)"
            )


def main(argv: list[str], env: Mapping[str, str]) -> int:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        args = parse_argv(argv)
    except ValueError as exc:
        log(f"error: invalid argument: {exc}", "E")
        return 1
    if args.help:
        try:
            sys.stdout.write(HELP_FILE.read_text("utf-8"))
        except OSError as exc:
            sys.stderr.write(f"misbehave: cannot read {HELP_FILE}: {exc}\n")
            return 1
        return 0
    if args.version:
        sys.stderr.write(VERSION_TEXT)
        return 0
    try:
        config = config_from_env(env)
    except ValueError as exc:
        sys.stderr.write(f"misbehave: {exc}\n")
        return 2

    start_no = count_start(config.count_file)
    if (
        config.fail_starts is not None
        and start_no > config.fail_starts
        and "crash-always" not in config.modes
    ):
        config = dataclasses.replace(config, modes=frozenset())
    # handlers before the pids file exists: a test may signal as soon as it does
    install_stop_handlers(config.group("stop"), config)
    start_workers(config.group("tree"), config)  # before any thread: fork copies only one
    guard = threading.Timer(config.max_s, exit_now, args=(3, "srv  misbehave: MISBEHAVE_MAX_S"))
    guard.daemon = True
    guard.start()

    log("srv  llama_server: initializing ...")
    log(
        "cmn  common_param: common_params_print_info: verbosity = 3 "
        "(adjust with the `-lv N` CLI arg)"
    )
    log("srv  llama_server: security: no API key is set and CORS allows all origins", "W")
    start_mode = config.group("start")
    state = State(args, config)
    if start_mode != "no-port" and bind(state) is None:
        log("srv    operator(): operator(): cleaning up before exit...")
        log("srv  llama_server: exiting due to HTTP server error", "E")
        return 1
    log(f"srv    load_model: loading model '{args.model}'")
    write_output(config.group("output"), config)
    load(start_mode, config)
    log("srv    load_model: initializing, n_slots = 4, n_ctx_slot = 4096, kv_unified = 'true'")
    log("srv  llama_server: model loaded")
    log(f"srv  llama_server: listening on http://{args.host}:{args.port}")
    if start_mode == "never-ready":
        sleep_forever()  # the line is out, /health stays 503
    state.phase = "ready"
    if config.ready_file:
        write_atomic(config.ready_file, f"{os.getpid()} {start_no}\n")
    after_ready(config.group("after-ready"), state)
    sleep_forever()
    return 0


def _entry(run: Callable[[list[str], Mapping[str, str]], int]) -> None:
    code = run(sys.argv[1:], os.environ)
    sys.stdout.flush()
    os._exit(code)  # no interpreter teardown racing the HTTP threads


if __name__ == "__main__":
    _entry(main)
