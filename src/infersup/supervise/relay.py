"""Relay a server's output: to the terminal, to a log file, into a tail buffer.

Output is read raw with ``os.read`` in large chunks (never ``readline``: a
loading server prints progress dots with no newline) and written on as
bytes. Only the tail kept for crash reports is decoded, with replacement
characters. A sink that fails (closed terminal, full disk) is dropped with
one warning; supervision goes on and the other sinks keep everything.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from typing import BinaryIO

CHUNK = 1 << 20
MAX_LINE = 64 * 1024  # a tail line longer than this is cut (the sinks keep it whole)


class Sink:
    def __init__(self, name: str, stream: BinaryIO, *, flush: bool = True) -> None:
        self.name = name
        self.stream = stream
        self.flush = flush
        self.broken: str | None = None

    def write(self, data: bytes | memoryview) -> None:
        self.stream.write(data)
        if self.flush:
            self.stream.flush()


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
