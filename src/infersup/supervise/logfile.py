"""A profile's server log on disk: writing with size rotation, reading back, following.

``RotatingLog`` is the relay's log sink. It writes every byte it is given,
unchanged, to ``path`` and rotates ``path -> path.1 -> ... -> path.N`` by size,
so that concatenating ``path.N .. path.1, path`` gives back exactly the bytes
written (nothing lost or repeated at a rotation). No file exceeds
``max_bytes``: a file is cut after the last whole line that fits, and a line is
split between files only when it does not fit in a file of its own or its
start was written before the file filled up. A log that cannot be written (read-only or missing
directory, full disk) costs one warning and is switched off: the server and
its supervision go on.

``log_files``, ``read_tail`` and ``follow`` serve ``infersup logs``: the last
lines across rotated files read backwards in blocks (memory bounded by the
lines asked for, never the file), and ``tail -F``-style following that
survives a rotation.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from infersup.supervise.relay import MAX_LINE, Sink, display_line

MAX_BYTES = 64 << 20
BACKUPS = 3
READ_BLOCK = 64 << 10


class RotatingLog(Sink):
    """Append-only log file with size rotation; a ``Sink`` that never raises.

    Opened lazily (directory created) on the first write and appended to.
    Thread-safe: relays of successive servers and the supervisor (headers)
    may write to one log. After a failure the log stays off (``broken`` set,
    writes ignored) until ``reopen()``, which the supervisor may call before
    spawning the next server; when writing then works again, a line in the
    log says that output is missing there and why. (The relay stops calling
    a broken sink, so the log cannot count what it missed.)
    """

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = MAX_BYTES,
        backups: int = BACKUPS,
        on_warning: Callable[[str], None],
    ) -> None:
        if max_bytes < 1 or backups < 0:
            raise ValueError("max_bytes must be >= 1 and backups >= 0")
        self.name = str(path)
        self.broken: str | None = None
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.on_warning = on_warning
        self.bytes_written = 0  # since creation, over all files
        self._fd: int | None = None
        self._size = 0  # of the current file
        self._at_line_start = True  # the current file is empty or ends with b"\n"
        self._lock = threading.Lock()

    def write(self, data: bytes | memoryview) -> None:
        with self._lock:
            if self.broken is not None:
                return
            try:
                self._write(memoryview(data).cast("B"))
            except OSError as exc:
                self._fail(exc)

    def reopen(self) -> bool:
        """Try again after a failure; False (and one more warning) if it still fails."""
        with self._lock:
            if self.broken is None:
                return True
            reason, self.broken = self.broken, None
            note = f"\n[infersup: server output is missing here (the log failed: {reason})]\n"
            try:
                self._write(memoryview(note.encode()))
            except OSError as exc:
                self._fail(exc)
                return False
            return True

    def close(self) -> None:
        """Close the current file; a later write opens it again."""
        with self._lock:
            self._close()

    def _write(self, view: memoryview) -> None:
        if self._fd is None:
            self._open()
        while view:
            room = self.max_bytes - self._size
            if len(view) <= room:
                self._write_fully(view)
                return
            cut = _last_newline(view, room) + 1  # 0: no line ends within room
            if cut == 0 and not (self._size and self._at_line_start):
                cut = max(room, 0)  # a line longer than what is left: split at the limit
            self._write_fully(view[:cut])
            view = view[cut:]
            self._rotate()

    def _write_fully(self, view: memoryview) -> None:
        assert self._fd is not None
        if not view:
            return
        self._at_line_start = view[-1] == 0x0A
        while view:
            written = os.write(self._fd, view)
            if written == 0:  # would loop forever: report it like the kernel would
                raise OSError(errno.EIO, "the log file took no bytes")
            self._size += written
            self.bytes_written += written
            view = view[written:]

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        self._fd = os.open(self.path, flags, 0o644)
        self._size = os.fstat(self._fd).st_size
        self._at_line_start = self._size == 0 or _ends_with_newline(self.path)

    def _rotate(self) -> None:
        self._close()
        if self.backups:
            # only the files that exist, oldest first: one directory listing,
            # not a stat per possible number (log_backups may be large)
            for older in log_files(self.path):
                if older == self.path:
                    continue
                n = int(older.name.rsplit(".", 1)[1])
                if n >= self.backups:
                    older.unlink(missing_ok=True)
                else:
                    os.replace(older, _numbered(self.path, n + 1))
            os.replace(self.path, _numbered(self.path, 1))
        else:
            self.path.unlink(missing_ok=True)
        self._open()

    def _close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)

    def _fail(self, exc: OSError) -> None:
        self._close()
        self.broken = exc.strerror or str(exc)
        self.on_warning(
            f"cannot write the server log {self.path}: {self.broken}; "
            "the server keeps running, its output is no longer logged"
        )


def _last_newline(view: memoryview, end: int) -> int:
    """Index of the last b"\\n" in ``view[:end]``, -1 if none (once per rotation)."""
    while end > 0:  # backwards in small windows: lines are short, copy little
        start = max(0, end - READ_BLOCK)
        found = bytes(view[start:end]).rfind(b"\n")
        if found >= 0:
            return start + found
        end = start
    return -1


def _ends_with_newline(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"
    except OSError:  # cannot tell: assume mid-line (a rotation then fills up to the limit)
        return False


def _numbered(path: Path, n: int) -> Path:
    return path.with_name(f"{path.name}.{n}")


def log_files(path: Path, backups: int | None = None) -> list[Path]:
    """The log's files that exist, oldest first: ``path.N`` .. ``path.1``, ``path``.

    With ``backups`` None every ``path.<number>`` in the directory counts.
    """
    if backups is None:
        numbers = []
        with contextlib.suppress(OSError):
            for entry in path.parent.iterdir():
                suffix = entry.name[len(path.name) + 1 :]
                if entry.name.startswith(path.name + ".") and suffix.isdigit():
                    numbers.append(int(suffix))
        candidates = [_numbered(path, n) for n in sorted(numbers, reverse=True)]
    else:
        candidates = [_numbered(path, n) for n in range(backups, 0, -1)]
    return [p for p in [*candidates, path] if p.is_file()]


@dataclass(frozen=True)
class LogPosition:
    """Where a reader stopped: the current file (by inode) and the offset in it."""

    dev: int
    ino: int
    offset: int


def read_tail(path: Path, n: int) -> list[str]:
    """The last ``n`` lines of the log across rotated files, decoded for display."""
    return read_tail_at(path, n)[0]


def read_tail_at(path: Path, n: int) -> tuple[list[str], LogPosition | None]:
    """``read_tail``, and the position after those lines, for ``follow(since=...)``.

    Reads backwards in ``READ_BLOCK`` blocks over the files as one stream and
    keeps only line positions; then reads at most ``MAX_LINE`` bytes of each
    line shown. Memory is O(n * MAX_LINE) however large or line-less the files.
    """
    with _Snapshot(path) as snap:
        if n <= 0 or snap.total == 0:
            return [], snap.position
        ends = snap.line_starts(n)  # offsets where the last n lines start, newest first
        starts = sorted(ends)
        bounds = [*starts[1:], snap.total]
        lines = []
        for start, end in zip(starts, bounds, strict=True):
            if end > start and snap.byte_at(end - 1) == b"\n":
                end -= 1
            lines.append(display_line(snap.read(start, min(end - start, MAX_LINE + 4))))
        return lines, snap.position


class _Snapshot:
    """The log's files opened at once, read as one stream (sizes fixed at open)."""

    def __init__(self, path: Path) -> None:
        self.files: list[tuple[int, int]] = []  # (fd, size), oldest first
        self.position: LogPosition | None = None
        seen: set[tuple[int, int]] = set()
        # newest first: a rotation meanwhile renames files under us; an inode
        # already opened under another name is not read twice
        for p in reversed(log_files(path)):
            try:
                fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) in seen:
                os.close(fd)
                continue
            seen.add((st.st_dev, st.st_ino))
            if p == path and self.position is None:
                self.position = LogPosition(st.st_dev, st.st_ino, st.st_size)
            self.files.insert(0, (fd, st.st_size))
        self.total = sum(size for _, size in self.files)

    def __enter__(self) -> _Snapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        for fd, _ in self.files:
            with contextlib.suppress(OSError):
                os.close(fd)

    def read(self, offset: int, size: int) -> bytes:
        out = bytearray()
        base = 0
        for fd, file_size in self.files:
            if size <= 0:
                break
            if offset < base + file_size:
                local = offset - base
                take = min(size, file_size - local)
                out += os.pread(fd, take, local)
                offset += take
                size -= take
            base += file_size
        return bytes(out)

    def byte_at(self, offset: int) -> bytes:
        return self.read(offset, 1)

    def line_starts(self, n: int) -> list[int]:
        """Start offsets of the last ``n`` lines (a final newline ends the last line)."""
        end = self.total
        if self.byte_at(end - 1) == b"\n":
            end -= 1  # the newline ending the last line does not start another
        starts: list[int] = []
        pos = end
        while pos > 0 and len(starts) < n:
            block_start = max(0, pos - READ_BLOCK)
            block = self.read(block_start, pos - block_start)
            i = len(block)
            while len(starts) < n and (i := block.rfind(b"\n", 0, i)) >= 0:
                starts.append(block_start + i + 1)
            pos = block_start
        if len(starts) < n and (not starts or starts[-1] != 0):
            starts.append(0)  # the first line of the stream has no newline before it
        return starts


def follow(
    path: Path,
    *,
    stop: Callable[[], bool],
    poll_s: float = 0.2,
    since: LogPosition | None = None,
) -> Iterator[bytes]:
    """Yield bytes appended to ``path`` from now on (or from ``since``), like ``tail -F``.

    Survives rotation: when ``path`` has been rotated away, the rest of the old
    file is read, then each newer file from its start (``path.2``, ``path.1``,
    ``path``: several rotations between two polls lose nothing while the
    files are still there). A file truncated in place is read again from its
    start; a log that does not exist yet is waited for and read from its
    start (with the files it has already been rotated into, if it was quick).
    Ends once ``stop()`` is true and what was written before has been yielded.
    """
    current = _open_since(path, since) if since is not None else _open_at(path, -1)
    # the log is missing: files there now are an older run's, any other file is new
    stale = {_identity(p) for p in log_files(path)} if current is None else set()
    try:
        while True:
            stopping = stop()  # checked first: what is written before it is still read
            if current is None:
                current = _open_oldest_new(path, stale)
            if current is not None:
                yield from _drain(current[0])
                newer = _successor(path, current)
                if newer is not None:
                    yield from _drain(current[0])  # written just before the rotation
                    os.close(current[0])
                    current = newer
                    continue
            if stopping:
                return
            time.sleep(poll_s)
    finally:
        if current is not None:
            os.close(current[0])


_Open = tuple[int, int, int]  # (fd, st_dev, st_ino)


def _open_at(path: Path, offset: int) -> _Open | None:
    """Open ``path`` for reading at ``offset`` (-1: at its end)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    st = os.fstat(fd)
    os.lseek(fd, min(offset, st.st_size) if offset >= 0 else st.st_size, os.SEEK_SET)
    return fd, st.st_dev, st.st_ino


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _index_of(path: Path, file_id: tuple[int, int]) -> int | None:
    """0 if ``file_id`` is ``path``, k if it is ``path.k``, None if no name has it.

    Every numbered file is looked at: a rotation renames them one at a time,
    so the numbering can have a gap for a moment.
    """
    if _identity(path) == file_id:
        return 0
    for candidate in log_files(path):
        if candidate != path and _identity(candidate) == file_id:
            return int(candidate.name.rsplit(".", 1)[1])
    return None


def _open_oldest_new(path: Path, stale: set[tuple[int, int] | None]) -> _Open | None:
    for candidate in log_files(path):
        file_id = _identity(candidate)
        if file_id in stale:
            continue
        opened = _open_at(candidate, 0)
        if opened is not None and opened[1:] != file_id:  # renamed under us: next poll
            os.close(opened[0])
            return None
        return opened
    return None


def _open_since(path: Path, since: LogPosition) -> _Open | None:
    k = _index_of(path, (since.dev, since.ino))
    if k is None:  # rotated out of existence meanwhile: the current file from its start
        return _open_at(path, 0)
    opened = _open_at(_numbered(path, k) if k else path, since.offset)
    if opened is not None and opened[1:] != (since.dev, since.ino):  # renamed under us
        os.close(opened[0])
        return _open_at(path, 0)
    return opened


def _successor(path: Path, current: _Open) -> _Open | None:
    """The file written after ``current`` once ``current`` was rotated away, else None."""
    fd, dev, ino = current
    now = _identity(path)
    if now is None:
        return None  # between the rename and the new file: keep reading the old one
    if now == (dev, ino):
        if os.fstat(fd).st_size < os.lseek(fd, 0, os.SEEK_CUR):  # truncated in place
            os.lseek(fd, 0, os.SEEK_SET)
        return None
    k = _index_of(path, (dev, ino))
    if k is None and os.fstat(fd).st_nlink > 0:
        return None  # between two renames of a rotation: look again next time
    newer = path if k is None or k <= 1 else _numbered(path, k - 1)
    opened = _open_at(newer, 0)
    if opened is not None and k is not None and _identity(_numbered(path, k)) != (dev, ino):
        os.close(opened[0])  # another rotation while we looked: look again next time
        return None
    return opened


def _drain(fd: int) -> Iterator[bytes]:
    while chunk := os.read(fd, READ_BLOCK):
        yield chunk
