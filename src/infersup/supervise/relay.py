"""Relay a server's output: to the log file, to the terminal, into a tail buffer.

Output is read raw with ``readv`` in large chunks (never ``readline``: a
loading server prints progress dots with no newline) and written on as
bytes, so the log is byte-identical to what the server wrote. Only the tail
kept for crash reports is decoded, with replacement characters, and long
lines are cut at a character boundary. A sink that fails (closed terminal,
full disk) is dropped with one warning; supervision goes on and the other
sinks keep everything.

Throughput (bench/relay_throughput.py): one thread reads the pipe into a
small pool of buffers, another writes them to the sinks, so the server keeps
writing while the log is written; a single thread that reads then writes left
it blocked on a full pipe (0.45-0.6x a plain redirect on 2 cores, against
0.7-0.8x now). The terminal's queue borrows pool buffers instead of copying.
``splice(2)`` into the log was measured and dropped: it holds the pipe's lock
while copying into the page cache (the server waits) and is 10x slower than
``write`` into ext4. Memory is bounded by the pool (``buffers`` x ``chunk``),
the tail and the terminal queue, whatever the server writes.
"""

from __future__ import annotations

import os
import queue
import select
import threading
import time
from collections.abc import Callable, Sequence
from typing import BinaryIO

# Half the 1 MiB pipe (process.PIPE_SIZE) per read: a flooding server blocked on
# a full pipe is woken after half of it is read, not all (measured: 512 KiB x 8
# beat 1 MiB x 4, 256 KiB x 16 and 768 KiB x 6; bench/relay_throughput.py).
CHUNK = 512 << 10
BUFFERS = 8  # reads in flight between the reader and the writer: 4 MiB at most
MAX_LINE = 64 * 1024  # a tail line longer than this is cut (the sinks keep it whole)
_NOTHING_YET: tuple[bytearray, int] = (bytearray(), 0)  # the writer's queue was empty


def cut_utf8(raw: bytes, limit: int) -> bytes:
    """``raw[:limit]``, moved back so that no UTF-8 character is split (display only)."""
    if len(raw) <= limit:
        return raw
    end = limit
    # step back over at most 3 continuation bytes (10xxxxxx) to a lead byte
    while end > limit - 3 and end > 0 and raw[end] & 0xC0 == 0x80:
        end -= 1
    return raw[:end] if raw[end] & 0xC0 != 0x80 else raw[:limit]


def display_line(raw: bytes) -> str:
    """One line of server output as text: cut to ``MAX_LINE``, bad bytes as U+FFFD."""
    return cut_utf8(raw, MAX_LINE).decode("utf-8", errors="replace").rstrip("\r")


class Sink:
    """Where relayed output goes; this one writes straight to an unbuffered ``stream``.

    Subclasses (``QueuedSink``, ``logfile.RotatingLog``) replace ``write``. A
    sink that fails sets ``broken`` (the relay skips it from then on).
    """

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

    ``write`` copies what it queues; the relay instead ``lend``s it up to
    ``max_lent`` of its buffers, given back through a callback once written,
    so a fast terminal (or a pipe to a log collector) costs no copy.
    """

    def __init__(
        self,
        name: str,
        stream: BinaryIO,
        *,
        max_pending: int = 8 << 20,
        max_lent: int = 2,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(name, stream)
        self.max_pending = max_pending
        self.max_lent = max_lent
        self.dropped_total = 0
        self._on_error = on_error
        self._pending = 0
        self._dropped = 0
        self._lent = 0
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Queued] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._drain, name="infersup-sink", daemon=True)
        self._thread.start()

    def write(self, data: bytes | memoryview) -> None:
        if self._admit(len(data), lend=False):
            self._queue.put(bytes(data))  # the caller reuses its buffer: copy

    def lend(self, data: memoryview, give_back: Callable[[], None]) -> bool:
        """Queue ``data`` without copying and call ``give_back()`` once done with it.

        False when it would exceed ``max_lent`` or ``max_pending``: nothing is
        queued and the caller keeps ``data`` (and calls ``write``).
        """
        if not self._admit(len(data), lend=True):
            return False
        self._queue.put((data, give_back))
        return True

    def _admit(self, size: int, *, lend: bool) -> bool:
        with self._lock:
            if lend and self._lent >= self.max_lent:
                return False
            if self._pending + size > self.max_pending:
                if lend:
                    return False
                self._dropped += size
                self.dropped_total += size
                return False
            self._pending += size
            self._lent += lend
            marker, self._dropped = self._marker(self._dropped), 0
            if marker:  # queued under the lock: it must precede the chunk it is about
                self._queue.put(marker)
        return True

    @staticmethod
    def _marker(dropped: int) -> bytes:
        if not dropped:
            return b""
        return (
            f"\n[infersup: {dropped} bytes of server output not shown here (output was "
            "too slow to keep up); the log file has everything]\n"
        ).encode()

    def _drain(self) -> None:
        while (item := self._queue.get()) is not None:
            chunk, give_back = item if isinstance(item, tuple) else (item, None)
            try:
                self._write_out(chunk)
            finally:
                with self._lock:
                    self._pending -= len(chunk)
                    self._lent -= give_back is not None
                if give_back is not None:
                    give_back()

    def _write_out(self, chunk: bytes | memoryview) -> None:
        if self.broken is not None:
            return
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


_Queued = bytes | tuple[memoryview, Callable[[], None]] | None


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
        return [display_line(line) for line in lines]


class OutputRelay(threading.Thread):
    """Copy everything from ``fd`` to every sink (and the tail) until EOF.

    This thread only reads: it fills a buffer from a pool of ``buffers``,
    notes the time and byte count, looks for the ``watch`` markers while any
    is unseen and for the ``progress`` markers always (``progress_at``: when
    one last appeared, e.g. SGLang's per-batch log lines), and hands the
    buffer to a writer thread that feeds the tail and the sinks in order and
    gives the buffer back. When the writer falls behind (a slow disk) the
    pool runs dry and reading waits, as a redirect to that disk would; the
    terminal, a ``QueuedSink``, never makes it wait. ``join()`` returns once
    everything read has been written (or queued, for a ``QueuedSink``).
    """

    def __init__(
        self,
        fd: int,
        sinks: Sequence[Sink],
        *,
        on_warning: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
        watch: tuple[bytes, ...] = (),
        progress: tuple[bytes, ...] = (),
        tail: Tail | None = None,
        chunk: int = CHUNK,
        buffers: int = BUFFERS,
    ) -> None:
        super().__init__(name="infersup-relay", daemon=True)
        self.fd = fd
        self.sinks = list(sinks)
        self.tail = Tail() if tail is None else tail
        self.on_warning = on_warning
        self.clock = clock
        self.bytes_read = 0
        self.last_output_at: float | None = None
        self.progress_at: float | None = None  # clock() of the last chunk with a progress marker
        self.chunk = chunk
        self._unseen = [m for m in dict.fromkeys(watch) if m]
        self._seen: set[bytes] = set()
        self._progress = tuple(m for m in dict.fromkeys(progress) if m)
        self._keep = max((len(m) for m in (*self._unseen, *self._progress)), default=1) - 1
        self._carry = b""  # the stream's last _keep bytes: a marker may straddle two reads
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        self._spare = max(1, buffers)  # buffers not yet allocated: a quiet server needs one
        self._full: queue.SimpleQueue[tuple[bytearray, int] | None] = queue.SimpleQueue()

    def seen(self, marker: bytes) -> bool:
        """True once ``marker`` (one of ``watch``) has appeared in the output."""
        return marker in self._seen

    def run(self) -> None:
        writer = threading.Thread(target=self._write_all, name="infersup-relay-write", daemon=True)
        writer.start()
        try:
            while n := self._read_into(buffer := self._buffer()):
                self.last_output_at = now = self.clock()
                if self._unseen or self._progress:
                    self._scan(buffer, n, now)
                self.bytes_read += n  # last: once it counts a chunk, all about it is known
                self._full.put((buffer, n))
        finally:
            self._full.put(None)
            writer.join()

    def _buffer(self) -> bytearray:
        try:
            return self._free.get_nowait()
        except queue.Empty:
            if self._spare:
                self._spare -= 1
                return bytearray(self.chunk)
        return self._free.get()  # every buffer is with the writer: wait for one

    def _read_into(self, buffer: bytearray) -> int:
        while True:
            try:
                return os.readv(self.fd, [buffer])
            except BlockingIOError:  # a non-blocking pipe: wait until it is readable
                select.select([self.fd], [], [])
            except OSError:
                return 0  # closed under us: treat as EOF

    def _scan(self, buffer: bytearray, n: int, now: float) -> None:
        keep = self._keep
        seam = self._carry + bytes(buffer[: min(n, keep)])
        for marker in list(self._unseen):
            if buffer.find(marker, 0, n) >= 0 or marker in seam:
                self._seen.add(marker)
                self._unseen.remove(marker)
        # from the end: in a busy server's output the latest batch line is near it
        if any(buffer.rfind(m, 0, n) >= 0 or m in seam for m in self._progress):
            self.progress_at = now
        if keep:
            self._carry = (self._carry + bytes(buffer[max(0, n - keep) : n]))[-keep:]

    def _write_all(self) -> None:
        item = self._full.get()
        while item is not None:
            buffer, n = item
            # one hold for this thread, one per sink the buffer is lent to
            lease = _Lease(buffer, self._free)
            with memoryview(buffer) as whole, whole[:n] as data:
                for sink in self.sinks:
                    if sink.broken is None:
                        self._write(sink, data, lease, n)
                try:
                    item = self._full.get_nowait()
                except queue.Empty:
                    item = _NOTHING_YET
                # The tail keeps the stream's last max_bytes: skip copying this
                # chunk when the next one, already read, covers all of them (a flood).
                if item is None or item is _NOTHING_YET or item[1] < self.tail.max_bytes:
                    self.tail.feed(data)
            lease.give_back()
            if item is _NOTHING_YET:
                item = self._full.get()

    def _write(self, sink: Sink, data: memoryview, lease: _Lease, n: int) -> None:
        try:
            if isinstance(sink, QueuedSink):
                lease.hold()
                # its own view: this thread releases `data` while the sink still reads
                if sink.lend(memoryview(lease.buffer)[:n], lease.give_back):
                    return
                lease.give_back()
            sink.write(data)
        except Exception as exc:  # any failing sink: drop it, never stop relaying
            sink.broken = str(exc)
            self.on_warning(
                f"server output is no longer written to {sink.name}: {exc}; "
                "the other outputs still get it"
            )


class _Lease:
    """A pool buffer shared by the relay's writer and the sinks it was lent to."""

    def __init__(self, buffer: bytearray, pool: queue.SimpleQueue[bytearray]) -> None:
        self.buffer = buffer
        self._pool = pool
        self._holders = 1
        self._lock = threading.Lock()

    def hold(self) -> None:
        with self._lock:
            self._holders += 1

    def give_back(self) -> None:
        with self._lock:
            self._holders -= 1
            last = self._holders == 0
        if last:
            self._pool.put(self.buffer)
