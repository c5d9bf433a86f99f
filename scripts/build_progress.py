#!/usr/bin/env python3
"""Run a long build command, show its progress, keep its full log.

Used by `make` for the llama-server build (minutes on 2 cores). The
command's whole output goes to the log file; the terminal gets one progress
line (CMake's ``[ 45%]`` markers) that updates in place, or a line per 10%
when it is not a terminal (CI logs). On failure the last lines are printed.

usage: build_progress.py LOG_FILE LABEL -- COMMAND...
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

PERCENT = re.compile(rb"\[\s*(\d{1,3})%\]")
CACHED = re.compile(rb"(Using cached|Found link|cached wheel|Requirement already satisfied)")


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    log_path, label, command = Path(argv[0]), argv[1], argv[3:]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tty = sys.stderr.isatty()
    start = time.monotonic()
    last_shown = -10
    percent = 0
    tail: deque[bytes] = deque(maxlen=40)
    note = ""
    last_tick = start

    def show(force: bool = False) -> None:
        nonlocal last_shown
        elapsed = time.monotonic() - start
        text = f"{label}: {percent:3d}% ({int(elapsed) // 60}m{int(elapsed) % 60:02d}s){note}"
        if tty:
            sys.stderr.write("\r\033[K" + text)
            sys.stderr.flush()
        elif force or percent >= last_shown + 10:
            last_shown = percent - percent % 10
            print(text, file=sys.stderr, flush=True)

    print(f"{label}: full log in {log_path}", file=sys.stderr, flush=True)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            tail.append(line)
            if m := PERCENT.search(line):
                percent = max(percent, min(int(m.group(1)), 100))
                show()
            elif tty and time.monotonic() - last_tick > 0.5:
                show()  # configure and link steps print no percentage: keep the clock moving
                last_tick = time.monotonic()
            elif CACHED.search(line) and "cache" in line.decode(errors="replace").lower():
                note = " (from pip's cache)"
        rc = proc.wait()
    if tty:
        sys.stderr.write("\n")
    elapsed = time.monotonic() - start
    if rc != 0:
        print(f"{label}: FAILED (exit {rc}) after {elapsed:.0f}s; last lines:", file=sys.stderr)
        for line in tail:
            sys.stderr.write("  " + line.decode("utf-8", errors="replace"))
        return rc
    print(f"{label}: done in {elapsed:.0f}s", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
