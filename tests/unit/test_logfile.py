"""The server log on disk: rotation that loses nothing, failures that cost one warning,
reading the last lines back and following the log across rotations."""

from __future__ import annotations

import errno
import os
import random
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from infersup.supervise.logfile import (
    LogPosition,
    RotatingLog,
    follow,
    log_files,
    read_tail,
    read_tail_at,
)


class Warnings(list[str]):
    def __call__(self, message: str) -> None:
        self.append(message)


def make_log(path: Path, max_bytes: int, backups: int = 50) -> tuple[RotatingLog, Warnings]:
    warnings = Warnings()
    return RotatingLog(path, max_bytes=max_bytes, backups=backups, on_warning=warnings), warnings


def concatenated(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in log_files(path))


def test_row18_rotates_at_the_last_newline_that_fits(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "srv.log"  # the directory does not exist yet
    log, warnings = make_log(path, max_bytes=100)
    lines = [b"%029d\n" % i for i in range(10)]  # 30-byte lines: 3 fit in a file
    log.write(b"".join(lines[:2]))
    log.write(b"".join(lines[2:7]))  # crosses the limit: cut after line 3 (90 bytes)
    log.write(b"".join(lines[7:]))
    log.close()
    files = log_files(path)
    assert [p.name for p in files] == ["srv.log.3", "srv.log.2", "srv.log.1", "srv.log"]
    assert [p.read_bytes() for p in files] == [
        b"".join(lines[0:3]),
        b"".join(lines[3:6]),
        b"".join(lines[6:9]),
        lines[9],
    ]
    assert warnings == []


def test_row18_chunk_bigger_than_a_file_and_no_newlines_split_at_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "srv.log"
    log, _ = make_log(path, max_bytes=100)
    log.write(b"z" * 250)  # no newline anywhere: split at the byte limit
    log.write(b"tail\n")
    log.close()
    assert [p.read_bytes() for p in log_files(path)] == [
        b"z" * 100,
        b"z" * 100,
        b"z" * 50 + b"tail\n",
    ]


def test_row18_a_line_that_does_not_fit_starts_the_next_file(tmp_path: Path) -> None:
    path = tmp_path / "srv.log"
    log, _ = make_log(path, max_bytes=100)
    log.write(b"a" * 59 + b"\n")  # 60 bytes, ends a line
    log.write(b"b" * 50)  # no newline and does not fit: rotate first, keep the line whole
    log.write(b"b" * 9 + b"\n")
    log.close()
    assert [p.read_bytes() for p in log_files(path)] == [b"a" * 59 + b"\n", b"b" * 59 + b"\n"]


def test_row18_random_chunks_concatenate_to_exactly_what_was_written(tmp_path: Path) -> None:
    rng = random.Random(1234)
    path = tmp_path / "srv.log"
    log, warnings = make_log(path, max_bytes=4096, backups=200)
    written = bytearray()
    for _ in range(300):
        size = rng.choice([1, 7, 100, 1000, 5000, 9000])  # some bigger than a file
        alphabet = b"abc\n" if rng.random() < 0.7 else b"xyz"  # some without newlines
        chunk = bytes(rng.choices(alphabet, k=size))
        log.write(memoryview(chunk) if rng.random() < 0.5 else chunk)
        written += chunk
    log.close()
    files = log_files(path)
    assert len(files) > 50
    assert concatenated(path) == bytes(written)
    assert all(p.stat().st_size <= 4096 for p in files)
    assert log.bytes_written == len(written) and warnings == []


def test_row18_backups_are_limited_and_keep_the_newest_bytes(tmp_path: Path) -> None:
    path = tmp_path / "srv.log"
    log, _ = make_log(path, max_bytes=10, backups=2)
    data = b"".join(b"%04d\n" % i for i in range(40))  # 200 bytes: 20 files' worth
    log.write(data)
    log.close()
    assert [p.name for p in log_files(path)] == ["srv.log.2", "srv.log.1", "srv.log"]
    assert not path.with_name("srv.log.3").exists()
    assert concatenated(path) == data[-30:]
    assert log_files(path, backups=1) == [path.with_name("srv.log.1"), path]


def test_no_backups_keeps_only_the_current_file(tmp_path: Path) -> None:
    path = tmp_path / "srv.log"
    log, _ = make_log(path, max_bytes=10, backups=0)
    log.write(b"012345678\nabc\n")
    log.close()
    assert log_files(path) == [path]
    assert path.read_bytes() == b"abc\n"


def test_appends_to_an_existing_log_and_rotates_it_when_full(tmp_path: Path) -> None:
    path = tmp_path / "srv.log"
    path.write_bytes(b"old run\n" * 10)  # 80 bytes
    log, _ = make_log(path, max_bytes=100)
    log.write(b"new run line\n" * 3)  # 39 bytes: the first one fits (93), then rotate
    log.close()
    assert [p.read_bytes() for p in log_files(path)] == [
        b"old run\n" * 10 + b"new run line\n",
        b"new run line\n" * 2,
    ]


def test_write_after_close_reopens(tmp_path: Path) -> None:
    path = tmp_path / "srv.log"
    log, _ = make_log(path, max_bytes=1000)
    log.write(b"one\n")
    log.close()
    log.write(b"two\n")
    log.close()
    assert path.read_bytes() == b"one\ntwo\n"


# -- failures: one warning, never an exception --------------------------------


def readonly_dir(tmp_path: Path) -> Path:
    """A directory where files cannot be created (root ignores mode bits: use sysfs)."""
    if os.geteuid() != 0:
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o555)
        return d
    try:
        os.close(os.open("/sys/infersup-probe.log", os.O_WRONLY | os.O_CREAT))
    except OSError:
        return Path("/sys")
    os.unlink("/sys/infersup-probe.log")
    pytest.skip("no read-only directory available")


@pytest.mark.parametrize("where", ["readonly-dir", "parent-is-a-file", "disk-full"])
def test_row17_unwritable_log_is_one_warning(tmp_path: Path, where: str) -> None:
    if where == "readonly-dir":
        path = readonly_dir(tmp_path) / "srv.log"
    elif where == "parent-is-a-file":
        (tmp_path / "state").write_text("not a directory")
        path = tmp_path / "state" / "logs" / "srv.log"
    else:
        path = tmp_path / "srv.log"
        path.symlink_to("/dev/full")  # every write fails with ENOSPC
    log, warnings = make_log(path, max_bytes=1000)
    for _ in range(5):
        log.write(b"server output\n")  # must not raise
    log.close()
    assert len(warnings) == 1, warnings
    assert str(path) in warnings[0] and "no longer logged" in warnings[0]
    assert log.broken is not None
    if where == "disk-full":
        assert "space" in warnings[0].lower()


def test_row17_disk_full_mid_write_keeps_what_fit_and_warns_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "srv.log"
    log, warnings = make_log(path, max_bytes=1 << 20)
    real_write = os.write
    room = [25]  # the disk takes 25 more bytes, then is full

    def full_disk(fd: int, data: bytes | memoryview) -> int:
        if fd != log._fd:
            return real_write(fd, data)
        if room[0] == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        taken = real_write(fd, memoryview(data)[: room[0]])
        room[0] -= taken
        return taken

    monkeypatch.setattr(os, "write", full_disk)
    log.write(b"0123456789\n" * 3)  # 33 bytes: 25 fit
    log.write(b"more\n")
    monkeypatch.undo()
    assert path.read_bytes() == (b"0123456789\n" * 3)[:25]
    assert len(warnings) == 1 and "No space left" in warnings[0]

    # space again: reopen() resumes and says what is missing
    assert log.reopen() is True
    log.write(b"back\n")
    log.close()
    assert path.read_bytes() == (
        (b"0123456789\n" * 3)[:25]
        + b"\n[infersup: server output is missing here (the log failed: No space left on device)]\n"
        + b"back\n"
    )
    assert len(warnings) == 1


def test_row17_reopen_that_still_fails_warns_again(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("not a directory")
    log, warnings = make_log(tmp_path / "state" / "srv.log", max_bytes=100)
    log.write(b"x\n")
    assert log.reopen() is False
    log.write(b"y\n")
    assert len(warnings) == 2 and log.broken is not None


# -- reading back -------------------------------------------------------------


def test_read_tail_across_rotated_files(tmp_path: Path) -> None:
    path = tmp_path / "srv.log"
    log, _ = make_log(path, max_bytes=64)
    lines = [f"line {i:02d} of the server".encode() for i in range(30)]
    log.write(b"\n".join(lines) + b"\n")
    log.close()
    assert len(log_files(path)) > 5
    assert read_tail(path, 7) == [line.decode() for line in lines[-7:]]
    assert read_tail(path, 100) == [line.decode() for line in lines]
    assert read_tail(path, 0) == []


def test_read_tail_line_split_between_files_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "srv.log"
    log, _ = make_log(path, max_bytes=10)
    log.write(b"first\n" + b"L" * 25 + b"\nlast without newline")
    log.close()
    assert read_tail(path, 3) == ["first", "L" * 25, "last without newline"]


def test_read_tail_decodes_for_display_only(tmp_path: Path) -> None:
    path = tmp_path / "srv.log"
    raw = b"ok \xff\xfe bad\r\ncaf\xc3\xa9\n\n" + "\u00e9".encode() * 40000 + b"\n"
    path.write_bytes(raw)
    lines = read_tail(path, 10)
    assert lines[:3] == ["ok \ufffd\ufffd bad", "caf\u00e9", ""]
    # an 80000-byte line is cut to 64 KiB at a character boundary: no U+FFFD
    assert lines[3] == "\u00e9" * 32768
    assert path.read_bytes() == raw  # reading changed nothing


def test_read_tail_of_missing_or_empty_log(tmp_path: Path) -> None:
    assert read_tail(tmp_path / "none.log", 5) == []
    (tmp_path / "empty.log").write_bytes(b"")
    assert read_tail(tmp_path / "empty.log", 5) == []


def test_read_tail_memory_is_bounded_on_a_huge_line(tmp_path: Path) -> None:
    path = tmp_path / "srv.log"
    with path.open("wb") as f:
        f.write(b"before\n")
        block = b"q" * (1 << 20)
        for _ in range(40):  # 40 MiB, no newline
            f.write(block)
        f.write(b"\nafter\n")
    tracemalloc.start()
    try:
        lines = read_tail(path, 3)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [len(s) for s in lines] == [6, 64 * 1024, 5]
    assert lines[0] == "before" and lines[2] == "after"
    assert peak < 2 << 20, peak


def test_log_files_finds_every_numbered_file_oldest_first(tmp_path: Path) -> None:
    path = tmp_path / "srv.log"
    for name in ["srv.log", "srv.log.1", "srv.log.2", "srv.log.10", "srv.log.bak", "other.log.1"]:
        (tmp_path / name).write_text(name)
    assert [p.name for p in log_files(path)] == ["srv.log.10", "srv.log.2", "srv.log.1", "srv.log"]
    assert [p.name for p in log_files(path, backups=1)] == ["srv.log.1", "srv.log"]


# -- following ----------------------------------------------------------------


class Follower:
    """Runs ``follow`` in a thread, collecting what it yields."""

    def __init__(self, path: Path, since: LogPosition | None = None) -> None:
        self.got = bytearray()
        self.done = threading.Event()
        self.started = threading.Event()  # follow has opened (or looked for) the log
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, args=(path, since), daemon=True)
        self.thread.start()
        assert self.started.wait(10)

    def _stop(self) -> bool:
        self.started.set()  # follow calls stop() first after its initial open
        return self.done.is_set()

    def _run(self, path: Path, since: LogPosition | None) -> None:
        for chunk in follow(path, stop=self._stop, poll_s=0.005, since=since):
            with self.lock:
                self.got += chunk

    def wait_for(self, size: int, timeout: float = 10.0) -> bytes:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.got) >= size:
                    return bytes(self.got)
            time.sleep(0.002)
        raise AssertionError(f"follow yielded {len(self.got)} of {size} bytes")

    def stop(self) -> bytes:
        self.done.set()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()
        return bytes(self.got)


def scripted_stop(*steps: Callable[[], object]) -> Callable[[], bool]:
    """A ``stop`` for follow that runs one step per call (after follow opened the
    file), then says stop: deterministic, no threads."""
    pending = list(steps)

    def stop() -> bool:
        if pending:
            pending.pop(0)()
            return False
        return True

    return stop


def test_follow_survives_rotations_and_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "srv.log"  # does not exist yet: read from its start once it does
    follower = Follower(path)
    log, _ = make_log(path, max_bytes=100, backups=100)
    written = bytearray()
    for i in range(300):  # 300 x 11 bytes = 33 rotations, several between two polls
        line = b"line %05d\n" % i
        log.write(line)
        written += line
        if i % 50 == 0:
            assert follower.wait_for(len(written)) == bytes(written)
    log.close()
    follower.wait_for(len(written))
    assert follower.stop() == bytes(written)
    assert len(log_files(path)) > 30


def test_follow_starts_at_the_end(tmp_path: Path) -> None:
    path = tmp_path / "srv.log"
    path.write_bytes(b"history\n" * 5)

    def append() -> None:
        with path.open("ab") as f:
            f.write(b"new\n")

    assert list(follow(path, stop=scripted_stop(append), poll_s=0.001)) == [b"new\n"]


def test_follow_from_a_position_loses_nothing_after_read_tail(tmp_path: Path) -> None:
    path = tmp_path / "srv.log"
    path.write_bytes(b"history\n" * 5)
    lines, position = read_tail_at(path, 2)
    assert lines == ["history", "history"]
    with path.open("ab") as f:
        f.write(b"written after the tail was read\n")
    follower = Follower(path, since=position)
    assert follower.wait_for(32) == b"written after the tail was read\n"
    assert follower.stop() == b"written after the tail was read\n"


def test_follow_after_rotation_between_tail_and_follow(tmp_path: Path) -> None:
    path = tmp_path / "srv.log"
    log, _ = make_log(path, max_bytes=40)
    log.write(b"aaaaaaaaa\n" * 2)
    _, position = read_tail_at(path, 1)
    log.write(b"bbbbbbbbb\n" * 3)  # rotates: the rest of the old file is in srv.log.1
    log.close()
    follower = Follower(path, since=position)
    assert follower.wait_for(30) == b"bbbbbbbbb\n" * 3
    assert follower.stop() == b"bbbbbbbbb\n" * 3


def test_follow_rereads_a_file_truncated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "srv.log"
    path.write_bytes(b"x" * 100)
    stop = scripted_stop(lambda: path.write_bytes(b"fresh\n"), lambda: None)  # same inode
    assert b"".join(follow(path, stop=stop, poll_s=0.001)) == b"fresh\n"


def test_follow_loses_nothing_when_many_rotations_pass_between_polls(tmp_path: Path) -> None:
    """A rotation renames files one by one: a follower that looks mid-rotation,
    or is several rotations behind, must still read every file in order."""
    path = tmp_path / "many.log"
    log = RotatingLog(path, max_bytes=4096, backups=100_000, on_warning=lambda m: None)
    log.write(b"line 0000000\n")
    done = threading.Event()
    total = 30_000

    def writer() -> None:
        for i in range(1, total):
            log.write(b"line %07d\n" % i)
        done.set()

    got = bytearray()
    follower = follow(path, stop=done.is_set, poll_s=0.01, since=read_tail_at(path, 0)[1])
    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    for chunk in follower:
        got += chunk
    thread.join(30)
    log.close()
    numbers = [int(line.split()[1]) for line in bytes(got).splitlines()]
    assert numbers == list(range(1, total))
