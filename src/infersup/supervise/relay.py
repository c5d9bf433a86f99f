"""Relay a server's output: to the terminal, to a log file, into a tail buffer.

Output is read raw with ``os.read`` in large chunks (never ``readline``: a
loading server prints progress dots with no newline) and written on as
bytes. Only the tail kept for crash reports is decoded, with replacement
characters. A sink that fails (closed terminal, full disk) is dropped with
one warning; supervision goes on and the other sinks keep everything.
"""

from __future__ import annotations

import io
import queue
import threading
from collections.abc import Callable
from typing import BinaryIO

CHUNK = 1 << 20
MAX_LINE = 64 * 1024  # a tail line longer than this is cut (the sinks keep it whole)


class Sink:
    """Writes straight to ``stream``: give it an unbuffered one (the log file)."""

    def __init__(self, name: str, stream: BinaryIO) -> None:
        self.name = name
        self.stream = stream
        self.broken: str | None = None

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:  # an unbuffered (raw) stream may take less than all of it
            written = self.stream.write(view)
            if written is None:  # a non-blocking stream that is full: never drop silently
                raise BlockingIOError(f"{self.name} would block")
            view = view[written:]


class QueuedSink(Sink):
    """A sink that never blocks the relay: a writer thread drains a bounded queue.

    A terminal can stall (a paused ``less``, a frozen SSH session) and the
    server must not stall with it: its output pipe would fill and its threads
    block on logging. Past ``max_pending`` bytes, output is dropped for this
    sink only, and a marker in the stream says how much (the log keeps all).
    """

    def __init__(
        self,
        name: str,
        stream: BinaryIO,
        *,
        max_pending: int = 8 << 20,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(name, stream)
        self.max_pending = max_pending
        self.dropped_total = 0
        self._on_error = on_error
        self._pending = 0
        self._dropped = 0
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._drain, name="infersup-sink", daemon=True)
        self._thread.start()

    def write(self, data: bytes | memoryview) -> None:
        size = len(data)
        with self._lock:
            if self._pending + size > self.max_pending:
                self._dropped += size
                self.dropped_total += size
                return
            self._pending += size
            marker, self._dropped = self._marker(self._dropped), 0
        if marker:
            self._queue.put(marker)
        self._queue.put(bytes(data))  # the relay reuses its buffer: copy

    @staticmethod
    def _marker(dropped: int) -> bytes:
        if not dropped:
            return b""
        return (
            f"\n[infersup: {dropped} bytes of server output not shown here (output was "
            "too slow to keep up); the log file has everything]\n"
        ).encode()

    def _drain(self) -> None:
        while (chunk := self._queue.get()) is not None:
            with self._lock:
                self._pending -= len(chunk)
            if self.broken is not None:
                continue
            try:
                self.stream.write(chunk)
                self.stream.flush()
            except (OSError, ValueError) as exc:
                self.broken = str(exc)
                if self._on_error is not None:
                    self._on_error(
                        f"server output is no longer written to {self.name}: {exc}; "
                        "the log file still gets it"
                    )

    def close(self, timeout: float) -> None:
        """Flush what is queued (and a final drop marker), waiting at most ``timeout``."""
        with self._lock:
            marker, self._dropped = self._marker(self._dropped), 0
        if marker:
            self._queue.put(marker)
        self._queue.put(None)
        self._thread.join(timeout)


class Tail:
    """The last lines of output, bounded in memory however long a line is.

    Keeps the last ``max_bytes`` of raw output and splits it into lines only
    when asked: the relay's hot path is one append and an occasional trim,
    whatever the line length.
    """

    def __init__(self, max_lines: int = 200, max_bytes: int = 256 * 1024) -> None:
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.buf = bytearray()

    def feed(self, data: bytes | memoryview) -> None:
        if len(data) >= self.max_bytes:
            self.buf[:] = data[-self.max_bytes :]
            return
        self.buf += data
        if len(self.buf) > 2 * self.max_bytes:  # trim rarely: amortised O(1) per byte
            del self.buf[: len(self.buf) - self.max_bytes]

    def text(self, n: int | None = None) -> list[str]:
        raw = bytes(self.buf[-self.max_bytes :])
        lines = raw.split(b"\n")
        if lines and not lines[-1]:
            lines.pop()  # the output ended with a newline
        if len(raw) == self.max_bytes and len(lines) > 1:
            lines.pop(0)  # cut mid-line by the byte bound
        lines = lines[-min(n or self.max_lines, self.max_lines) :]
        return [line[:MAX_LINE].decode("utf-8", errors="replace").rstrip("\r") for line in lines]


class OutputRelay(threading.Thread):
    """Copy everything from ``fd`` to every sink until EOF."""

    def __init__(
        self,
        fd: int,
        sinks: list[Sink],
        *,
        on_warning: Callable[[str], None],
    ) -> None:
        super().__init__(name="infersup-relay", daemon=True)
        self.fd = fd
        self.sinks = sinks
        self.tail = Tail()
        self.on_warning = on_warning
        self.bytes_read = 0

    def run(self) -> None:
        # One reusable buffer: a fresh 1 MiB bytes object per read would be
        # mmap'd and page-faulted every time, which halved throughput.
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        source = io.FileIO(self.fd, "rb", closefd=False)
        while True:
            try:
                n = source.readinto(buffer)
            except OSError:
                break
            if not n:
                break
            data = view[:n]
            self.bytes_read += n
            self.tail.feed(data)
            for sink in self.sinks:
                if sink.broken is not None:
                    continue
                try:
                    sink.write(data)
                except (OSError, ValueError) as exc:
                    sink.broken = str(exc)
                    self.on_warning(
                        f"server output is no longer written to {sink.name}: {exc}; "
                        "the other outputs still get it"
                    )
