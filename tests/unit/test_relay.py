"""The output relay with real child processes: floods, huge lines, bad UTF-8,
ready markers split across reads, an unwritable log (reliability rows 14-18)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, cast

import pytest

from infersup.supervise.logfile import RotatingLog, log_files
from infersup.supervise.process import spawn
from infersup.supervise.relay import MAX_LINE, OutputRelay, QueuedSink, Sink, Tail, cut_utf8


class Warnings(list[str]):
    def __call__(self, message: str) -> None:
        self.append(message)


LIVE: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def _no_child_left_behind() -> Iterator[None]:
    """A failing test must not leave its child running (they wait on go files)."""
    yield
    while LIVE:
        proc = LIVE.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


# children that wait for the test use this instead of spinning: 1 ms polls, 30 s cap
WAIT_FOR_FILE = """
import os, time
def wait_for_file(path):
    deadline = time.monotonic() + 30
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise SystemExit("the test never said go")
        time.sleep(0.001)
"""


def start(
    code: str,
    sinks: list[Sink],
    *args: str,
    watch: tuple[bytes, ...] = (),
    progress: tuple[bytes, ...] = (),
    clock: Callable[[], float] = time.monotonic,
) -> tuple[OutputRelay, Callable[[], int], Warnings]:
    """Spawn ``code`` as a real child and relay its output; returns the relay and
    a ``finish()`` that waits for the child and the relay."""
    source = WAIT_FOR_FILE + textwrap.dedent(code)
    proc = spawn([sys.executable, "-c", source, *args], dict(os.environ))
    LIVE.append(proc)
    assert proc.stdout is not None
    warnings = Warnings()
    relay = OutputRelay(
        proc.stdout.fileno(),
        sinks,
        on_warning=warnings,
        watch=watch,
        progress=progress,
        clock=clock,
    )
    relay.start()

    def finish() -> int:
        rc = proc.wait(timeout=60)
        relay.join(timeout=60)
        assert not relay.is_alive()
        return rc

    return relay, finish, warnings


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.002)


def log_stream(path: Path) -> Iterator[bytes]:
    for p in log_files(path):
        with p.open("rb") as f:
            while block := f.read(1 << 20):
                yield block


FLOOD = """
    import sys
    w = sys.stdout.buffer.write
    body = (b"y" * 99 + b"\\n") * 655
    for i in range(int(sys.argv[1])):
        w(b"block %08d\\n" % i + body)
"""


def flood_blocks(n: int) -> Iterator[bytes]:
    body = (b"y" * 99 + b"\n") * 655
    for i in range(n):
        yield b"block %08d\n" % i + body


def same_stream(a: Iterator[bytes], b: Iterator[bytes]) -> bool:
    """Compare two byte streams chunked differently, without holding either."""
    pending_a, pending_b = b"", b""
    while True:
        if not pending_a:
            pending_a = next(a, b"")
        if not pending_b:
            pending_b = next(b, b"")
        if not pending_a or not pending_b:
            return not pending_a and not pending_b
        n = min(len(pending_a), len(pending_b))
        if pending_a[:n] != pending_b[:n]:
            return False
        pending_a, pending_b = pending_a[n:], pending_b[n:]


def test_row14_flood_is_logged_byte_identical_with_bounded_memory(tmp_path: Path) -> None:
    blocks = 3200  # 200 MB
    path = tmp_path / "srv.log"
    log_warnings = Warnings()
    log = RotatingLog(path, max_bytes=32 << 20, backups=10, on_warning=log_warnings)
    with open(os.devnull, "wb") as devnull:
        terminal = QueuedSink("terminal", devnull, max_pending=2 << 20)
        tracemalloc.start()
        try:
            relay, finish, warnings = start(FLOOD, [log, terminal], str(blocks))
            assert finish() == 0
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        terminal.close(timeout=10)
    log.close()
    size = sum(len(b) for b in flood_blocks(blocks))
    assert size > 200_000_000
    assert relay.bytes_read == size == log.bytes_written
    assert same_stream(log_stream(path), flood_blocks(blocks))
    files = log_files(path)
    assert len(files) == 7
    assert all(p.stat().st_size <= 32 << 20 for p in files)
    assert all(p.read_bytes()[-1:] == b"\n" for p in files)  # cut at line ends
    assert relay.tail.text(2) == ["y" * 99, "y" * 99]
    # a few MiB of buffers, whatever the volume (the terminal may drop, the log not)
    assert peak < 16 << 20, peak
    assert warnings == [] and log_warnings == []


class StalledStream(io.RawIOBase):
    """A terminal that stops reading (a paused pager) until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self.release.wait(30)
        self.data += b
        return len(b)


@pytest.mark.parametrize("then", [b"\nend\n", b""], ids=["then-newline", "no-newline-ever"])
def test_row15_ten_mb_line_is_bounded_with_a_stalled_terminal(tmp_path: Path, then: bytes) -> None:
    path = tmp_path / "srv.log"
    log = RotatingLog(path, max_bytes=64 << 20, on_warning=Warnings())
    stalled = StalledStream()
    terminal = QueuedSink("terminal", cast(BinaryIO, stalled), max_pending=256 << 10)
    code = """
        import sys
        sys.stdout.buffer.write(b"start\\n" + b"A" * 10_000_000 + bytes.fromhex(sys.argv[1]))
    """
    tracemalloc.start()
    try:
        relay, finish, warnings = start(code, [log, terminal], then.hex())
        assert finish() == 0  # the relay finished although the terminal is stuck
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    stalled.release.set()
    terminal.close(timeout=10)
    log.close()
    expected = b"start\n" + b"A" * 10_000_000 + then
    assert path.read_bytes() == expected
    assert relay.bytes_read == len(expected)
    assert peak < 8 << 20, peak  # nowhere near the 10 MB line
    assert terminal.dropped_total > 9_000_000
    assert b"bytes of server output not shown here" in stalled.data
    assert len(stalled.data) < 2 << 20
    tail = relay.tail.text()
    if then:
        assert tail == ["end"]  # the line's start is beyond the tail's bytes: not shown
    else:
        assert tail == ["A" * MAX_LINE]  # cut for display
    assert warnings == []


def test_row16_invalid_utf8_is_logged_raw_and_shown_with_replacement(tmp_path: Path) -> None:
    path = tmp_path / "srv.log"
    log = RotatingLog(path, on_warning=Warnings())
    code = """
        import os, sys
        out = sys.stdout.buffer
        out.write(b"ok \\xff\\xfe bad\\r\\n" + b"caf\\xc3\\xa9\\n" + b"euro \\xe2\\x82")
        out.flush()
        wait_for_file(sys.argv[1])
        out.write(b"\\xac split\\n" + b"cut \\xe2\\x82")
    """
    go = tmp_path / "go"
    relay, finish, _ = start(code, [log], str(go))
    wait_until(lambda: relay.bytes_read == 24)  # the euro sign is split between two reads
    go.touch()
    assert finish() == 0
    log.close()
    raw = b"ok \xff\xfe bad\r\ncaf\xc3\xa9\neuro \xe2\x82\xac split\ncut \xe2\x82"
    assert path.read_bytes() == raw
    assert relay.tail.text() == [
        "ok \ufffd\ufffd bad",
        "caf\u00e9",
        "euro \u20ac split",
        "cut \ufffd",
    ]


def test_long_lines_are_cut_at_a_character_boundary() -> None:
    tail = Tail()
    tail.feed(b"a" + "\u00e9".encode() * 40000 + b"\n")  # 80001 bytes
    (line,) = tail.text()
    assert line == "a" + "\u00e9" * 32767  # 65535 bytes: the next character would not fit
    assert cut_utf8("\U0001f600".encode() * 3, 6) == "\U0001f600".encode()
    assert cut_utf8(b"\x80" * 10, 4) == b"\x80" * 4  # not UTF-8 at all: cut at the limit
    assert cut_utf8(b"short", 10) == b"short"


READY = b"The server is fired up and ready to roll!"


def test_ready_marker_split_across_two_reads_is_seen(tmp_path: Path) -> None:
    code = """
        import os, sys
        out = sys.stdout.buffer
        out.write(b"loading...\\nThe server is fired u")
        out.flush()
        wait_for_file(sys.argv[1])
        out.write(b"p and ready to roll!\\n")
    """
    go = tmp_path / "go"
    relay, finish, _ = start(code, [], str(go), watch=(READY, b"never printed"))
    wait_until(lambda: relay.bytes_read == 32)
    assert not relay.seen(READY)
    go.touch()
    assert finish() == 0
    assert relay.seen(READY)
    assert not relay.seen(b"never printed")
    assert not relay.seen(b"loading")  # only watched markers are looked for


def test_marker_fed_one_byte_per_read_is_seen_only_when_complete() -> None:
    read_fd, write_fd = os.pipe()
    relay = OutputRelay(read_fd, [], on_warning=Warnings(), watch=(b"ready!", b"ok"))
    relay.start()
    try:
        for i, byte in enumerate(b"xxready!"):
            assert not relay.seen(b"ready!")
            os.write(write_fd, bytes([byte]))
            wait_until(lambda i=i: relay.bytes_read == i + 1)  # type: ignore[misc]
        assert relay.seen(b"ready!") and not relay.seen(b"ok")
        os.write(write_fd, b"o")
        wait_until(lambda: relay.bytes_read == 9)
        os.write(write_fd, b"k")
        wait_until(lambda: relay.bytes_read == 10)
        assert relay.seen(b"ok")
    finally:
        os.close(write_fd)
        relay.join(timeout=10)
        os.close(read_fd)


def test_last_output_at_advances_with_each_chunk(tmp_path: Path) -> None:
    ticks = iter(range(1, 1000))
    code = """
        import os, sys
        out = sys.stdout.buffer
        out.write(b"loading model\\n")
        out.flush()
        wait_for_file(sys.argv[1])
        out.write(b"....")
    """
    go = tmp_path / "go"
    relay, finish, _ = start(code, [], str(go), clock=lambda: float(next(ticks)))
    assert relay.last_output_at is None or relay.last_output_at == 1.0
    wait_until(lambda: relay.bytes_read == 14)
    assert relay.last_output_at == 1.0
    go.touch()
    assert finish() == 0
    assert relay.bytes_read == 18 and relay.last_output_at == 2.0  # dots count as progress


@pytest.mark.parametrize("why", ["parent-is-a-file", "disk-full"])
def test_row17_unwritable_log_is_one_warning_and_the_terminal_gets_everything(
    tmp_path: Path, why: str
) -> None:
    if why == "parent-is-a-file":
        (tmp_path / "state").write_text("not a directory")
        path = tmp_path / "state" / "logs" / "srv.log"
    else:
        path = tmp_path / "srv.log"
        path.symlink_to("/dev/full")
    log_warnings = Warnings()
    log = RotatingLog(path, on_warning=log_warnings)
    seen_by_terminal = tmp_path / "terminal.out"
    code = """
        import sys
        for i in range(2000):
            sys.stdout.buffer.write(b"line %04d\\n" % i)
            sys.stdout.flush()
    """
    with seen_by_terminal.open("wb") as term:
        terminal = QueuedSink("terminal", term)
        relay, finish, warnings = start(code, [log, terminal])
        assert finish() == 0
        terminal.close(timeout=10)
    expected = b"".join(b"line %04d\n" % i for i in range(2000))
    assert seen_by_terminal.read_bytes() == expected
    assert len(log_warnings) == 1 and str(path) in log_warnings[0]
    assert warnings == []  # the log reports itself; the relay never saw an exception
    assert log.broken is not None and log.bytes_written == 0
    assert relay.tail.text(2) == ["line 1998", "line 1999"]


def test_restart_relays_into_the_same_log_and_terminal(tmp_path: Path) -> None:
    path = tmp_path / "srv.log"
    log = RotatingLog(path, max_bytes=100, backups=20, on_warning=Warnings())
    term_path = tmp_path / "terminal.out"
    code = "import sys; sys.stdout.write(''.join(f'{sys.argv[1]} {i}\\n' for i in range(20)))"
    with term_path.open("wb") as term:
        terminal = QueuedSink("terminal", term)
        for run in ("first", "second"):  # the supervisor: one log, one terminal, a relay per spawn
            log.write(f"== {run} ==\n".encode())
            _, finish, _ = start(code, [log, terminal], run)
            assert finish() == 0
        terminal.close(timeout=10)
    log.close()
    output = {
        run: "".join(f"{run} {i}\n" for i in range(20)).encode() for run in ("first", "second")
    }
    assert b"".join(p.read_bytes() for p in log_files(path)) == (
        b"== first ==\n" + output["first"] + b"== second ==\n" + output["second"]
    )
    assert term_path.read_bytes() == output["first"] + output["second"]


def test_relay_drains_a_child_that_ends_without_output() -> None:
    relay, finish, warnings = start("pass", [])
    assert finish() == 0
    assert relay.bytes_read == 0 and relay.last_output_at is None
    assert relay.tail.text() == [] and warnings == []


def test_progress_at_is_the_last_chunk_with_a_progress_line(tmp_path: Path) -> None:
    ticks = iter(range(1, 1000))
    code = """
        import os, sys
        out = sys.stdout.buffer
        for step, text in enumerate(sys.argv[2:]):
            out.write(text.encode())
            out.flush()
            wait_for_file(f"{sys.argv[1]}.{step}")
    """
    steps = ["idle log line\n", "Prefill batch. #new-seq: 1\n", "other\n", "Deco", "de batch\n"]
    relay, finish, _ = start(
        code,
        [],
        str(tmp_path / "go"),
        *steps,
        progress=(b"Prefill batch", b"Decode batch"),
        clock=lambda: float(next(ticks)),
    )
    expected_progress = [None, 2.0, 2.0, 2.0, 5.0]  # the split "Decode batch" counts
    for step in range(len(steps)):
        total = sum(len(t) for t in steps[: step + 1])
        wait_until(lambda total=total: relay.bytes_read == total)  # type: ignore[misc]
        assert relay.progress_at == expected_progress[step], step
        assert relay.last_output_at == float(step + 1)
        (tmp_path / f"go.{step}").touch()
    assert finish() == 0


def test_terminal_gets_a_flood_byte_identical_from_lent_buffers(tmp_path: Path) -> None:
    # the terminal sink borrows the relay's buffers: none may be reused before it wrote them
    blocks = 800  # 50 MB
    log = RotatingLog(tmp_path / "srv.log", max_bytes=1 << 30, on_warning=Warnings())
    term_path = tmp_path / "terminal.out"
    with term_path.open("wb") as term:
        terminal = QueuedSink("terminal", term, max_pending=1 << 30)  # never drops here
        relay, finish, _ = start(FLOOD, [log, terminal], str(blocks))
        assert finish() == 0
        terminal.close(timeout=30)
    log.close()
    assert terminal.dropped_total == 0
    assert relay.bytes_read == sum(len(b) for b in flood_blocks(blocks))
    assert same_stream(log_stream(term_path), flood_blocks(blocks))
    assert same_stream(log_stream(tmp_path / "srv.log"), flood_blocks(blocks))
