#!/usr/bin/env python3
"""Log relay throughput vs a plain redirect, measured in the same run.

A child floods stdout as fast as it can. Baseline: its stdout redirected
straight into a file (what a shell `> file` does). infersup: the same child
spawned by ``supervise.process.spawn`` and relayed by ``OutputRelay`` into a
log file plus a queued sink standing in for the terminal (/dev/null), with
the tail buffer maintained: the same sinks `infersup run` uses. Reported as
a ratio: relay throughput / redirect throughput (1.0 = as fast as the
redirect). reliability.md asks >= 0.8;
supervisord measured 0.32 on tmpfs.

usage: python bench/relay_throughput.py [--mib 512] [--runs 5] [--dir /dev/shm] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from infersup.supervise.process import spawn
from infersup.supervise.relay import OutputRelay, QueuedSink, Sink

FLOOD = (
    "import sys\n"
    "block = (b'x' * 199 + b'\\n') * 328  # 64 KiB-ish of 200-byte lines\n"
    "n = int(sys.argv[1]) * 1024 * 1024 // len(block)\n"
    "w = sys.stdout.buffer.write\n"
    "for _ in range(n): w(block)\n"
)


def child_argv(mib: int) -> list[str]:
    return [sys.executable, "-c", FLOOD, str(mib)]


def redirect(mib: int, out: Path) -> float:
    with out.open("wb") as f:
        start = time.perf_counter()
        subprocess.run(child_argv(mib), stdout=f, check=True)
        return time.perf_counter() - start


def relay(mib: int, out: Path) -> tuple[float, int]:
    # as in `infersup run`: unbuffered log file, terminal behind a QueuedSink
    with out.open("wb", buffering=0) as log, open(os.devnull, "wb") as term:
        start = time.perf_counter()
        proc = spawn(child_argv(mib), dict(os.environ))
        assert proc.stdout is not None
        terminal = QueuedSink("terminal", term)
        sinks = [terminal, Sink("log", log)]
        worker = OutputRelay(proc.stdout.fileno(), sinks, on_warning=print)
        worker.start()
        proc.wait()
        worker.join()
        terminal.close(timeout=30)
        elapsed = time.perf_counter() - start
        proc.stdout.close()
    assert terminal.dropped_total == 0, "the /dev/null terminal fell behind"
    return elapsed, worker.bytes_read


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=512)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", default="/dev/shm" if Path("/dev/shm").is_dir() else None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    ratios, base_rates, relay_rates = [], [], []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        out = Path(tmp) / "out.log"
        for _ in range(args.runs):  # interleaved, so drift hits both sides alike
            t_base = redirect(args.mib, out)
            size = out.stat().st_size
            t_relay, relayed = relay(args.mib, out)
            assert relayed == size == out.stat().st_size, "relay lost or added bytes"
            base_rates.append(size / t_base / 2**20)
            relay_rates.append(size / t_relay / 2**20)
            ratios.append(t_base / t_relay)
    result = {
        "mib_per_run": args.mib,
        "runs": args.runs,
        "dir": args.dir or tempfile.gettempdir(),
        "redirect_mib_s_median": round(statistics.median(base_rates), 1),
        "relay_mib_s_median": round(statistics.median(relay_rates), 1),
        "ratio_median": round(statistics.median(ratios), 3),
        "ratio_min": round(min(ratios), 3),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:>24}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
