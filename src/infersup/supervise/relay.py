"""Relay a server's output: to the terminal, to a log file, into a tail buffer.

Output is read raw with ``os.read`` in large chunks (never ``readline``: a
loading server prints progress dots with no newline) and written on as
bytes. Only the tail kept for crash reports is decoded, with replacement
characters. A sink that fails (closed terminal, full disk) is dropped with
one warning; supervision goes on and the other sinks keep everything.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable
from typing import BinaryIO

CHUNK = 1 << 16
MAX_LINE = 64 * 1024  # a tail line longer than this is cut (the sinks keep it whole)


class Sink:
    def __init__(self, name: str, stream: BinaryIO, *, flush: bool = True) -> None:
        self.name = name
        self.stream = stream
        self.flush = flush
        self.broken: str | None = None

    def write(self, data: bytes) -> None:
        self.stream.write(data)
        if self.flush:
            self.stream.flush()


class Tail:
    """The last ``max_lines`` lines, bounded in memory however long a line is."""

    def __init__(self, max_lines: int = 200) -> None:
        self.lines: deque[bytes] = deque(maxlen=max_lines)
        self.partial = bytearray()

    def feed(self, data: bytes) -> None:
        parts = data.split(b"\n")
        self.partial += parts[0]
        for part in parts[1:]:
            self.lines.append(bytes(self.partial[:MAX_LINE]))
            self.partial = bytearray(part)
        if len(self.partial) > MAX_LINE:
            self.lines.append(bytes(self.partial[:MAX_LINE]))
            del self.partial[:]

    def text(self, n: int | None = None) -> list[str]:
        lines = list(self.lines)
        if self.partial:
            lines.append(bytes(self.partial))
        if n is not None:
            lines = lines[-n:]
        return [line.decode("utf-8", errors="replace").rstrip("\r") for line in lines]


class OutputRelay(threading.Thread):
    def __init__(
        self,
        fd: int,
        sinks: list[Sink],
        *,
        on_warning: Callable[[str], None],
        on_line_data: Callable[[bytes], None] | None = None,
    ) -> None:
        super().__init__(name="infersup-relay", daemon=True)
        self.fd = fd
        self.sinks = sinks
        self.tail = Tail()
        self.on_warning = on_warning
        self.on_line_data = on_line_data
        self.bytes_read = 0

    def run(self) -> None:
        while True:
            try:
                data = os.read(self.fd, CHUNK)
            except OSError:
                break
            if not data:
                break
            self.bytes_read += len(data)
            self.tail.feed(data)
            if self.on_line_data is not None:
                self.on_line_data(data)
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
