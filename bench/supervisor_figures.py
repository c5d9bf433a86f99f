#!/usr/bin/env python3
"""The supervisor's figures against the bars in reliability.md ("Measured anchors").

- crash detection: child exit -> state change, p50/p95 over N crashes, with
  and without a grandchild holding the output pipe (supervisord: 1.5 ms /
  927 ms); goal p95 <= 10 ms.
- READY lag: the server's first /health 200 (seen by an independent 1 ms
  poller) -> READY; real llama-server on a tiny GGUF; goal <= 50 ms.
- SIGSTOP: SIGSTOP of a READY llama-server -> UNHEALTHY; goal
  health_interval_s * unhealthy_after + 1 s (supervisord: never).
- idle: `infersup run` with one READY server, supervisor CPU% and RSS over
  --idle-s seconds (supervisord: 0.022 %, 24.8 MiB); goal <= 0.05 %, 40 MiB.

usage: python bench/supervisor_figures.py [--crashes 40] [--starts 10] [--idle-s 60] [--json]
Needs the llama-server that `make test` builds (or --server-bin).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.ggufgen import write_tiny_llama  # noqa: E402

from infersup.compile import LaunchPlan  # noqa: E402
from infersup.profiles.schema import SuperviseSettings  # noqa: E402
from infersup.servers import find_program  # noqa: E402
from infersup.supervise.probe import http_get  # noqa: E402
from infersup.supervise.runner import supervise  # noqa: E402
from infersup.supervise.states import State  # noqa: E402
from infersup.supervise.supervisor import Supervisor  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _plan(argv: tuple[str, ...], port: int, **settings: object) -> LaunchPlan:
    s = dataclasses.replace(SuperviseSettings(), **settings)  # type: ignore[arg-type]
    return LaunchPlan(
        profile_id="bench",
        backend="llama.cpp",
        argv=argv,
        env={},
        host="127.0.0.1",
        port=port,
        health_path="/health",
        stop_grace_s=s.stop_grace_s,
        supervise=s,
    )


def crash_latency(n: int, grandchild: bool, tmp: Path) -> list[float]:
    stamps = tmp / f"exits-{grandchild}.txt"
    stamps.write_text("")
    holder = (
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])\n"
        if grandchild
        else ""
    )
    script = tmp / "crash.py"
    script.write_text(
        "import os, subprocess, sys, time\n"
        + holder
        + f"with open({str(stamps)!r}, 'a') as f: f.write(repr(time.monotonic()) + '\\n')\n"
        "os._exit(1)\n"
    )
    plan = _plan(
        (sys.executable, str(script)),
        9,
        restart="always",
        backoff_initial_s=0.05,
        backoff_max_s=0.05,
        max_restarts=n + 5,
        restart_window_s=3600.0,
        stop_grace_s=1.0,
    )
    seen: list[float] = []

    def on_change(sup: Supervisor) -> None:
        t = sup.history[-1]
        if t.new is State.BACKOFF:
            seen.append(t.at)
            if len(seen) >= n:
                os.kill(os.getpid(), signal.SIGTERM)

    supervise(
        plan,
        env=dict(os.environ),
        terminal=None,
        notify=lambda *a: None,
        state=tmp / f"state-{grandchild}",
        on_change=on_change,
    )
    exits = [float(x) for x in stamps.read_text().split()]
    return [(s - e) * 1000 for s, e in zip(seen, exits, strict=False)]


def ready_lag(server: str, model: Path, starts: int, tmp: Path) -> list[float]:
    lags = []
    for i in range(starts):
        port = free_port()
        argv: tuple[str, ...] = (
            server,
            "-m",
            str(model),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        )
        argv += ("--threads", "1", "-c", "256", "--no-webui")
        first_200: list[float] = []
        stop = threading.Event()

        def poll(
            port: int = port, first_200: list[float] = first_200, stop: threading.Event = stop
        ) -> None:
            while not stop.is_set():
                if http_get("127.0.0.1", port, "/health", timeout_s=1).status == 200:
                    first_200.append(time.monotonic())
                    return
                time.sleep(0.001)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        ready: list[float] = []

        def on_change(sup: Supervisor, ready: list[float] = ready) -> None:
            t = sup.history[-1]
            if t.new is State.READY:
                ready.append(t.at)
                os.kill(os.getpid(), signal.SIGTERM)

        supervise(
            _plan(argv, port),
            env=dict(os.environ),
            terminal=None,
            notify=lambda *a: None,
            state=tmp / f"state-ready-{i}",
            on_change=on_change,
        )
        stop.set()
        poller.join(5)
        if first_200 and ready:
            lags.append((ready[0] - first_200[0]) * 1000)
    return lags


def sigstop_detection(server: str, model: Path, tmp: Path, interval: float, after: int) -> float:
    port = free_port()
    argv: tuple[str, ...] = (server, "-m", str(model), "--host", "127.0.0.1", "--port", str(port))
    argv += ("--threads", "1", "-c", "256", "--no-webui")
    marks: dict[str, float] = {}

    def on_change(sup: Supervisor) -> None:
        t = sup.history[-1]
        if t.new is State.READY and "stopped" not in marks and sup.child is not None:
            pid = sup.child.pid

            def stop_later() -> None:
                time.sleep(0.3)
                os.kill(pid, signal.SIGSTOP)
                marks["stopped"] = time.monotonic()

            threading.Thread(target=stop_later, daemon=True).start()
        if t.new is State.UNHEALTHY:
            marks["unhealthy"] = t.at
            os.kill(os.getpid(), signal.SIGTERM)

    supervise(
        _plan(
            argv,
            port,
            health_interval_s=interval,
            unhealthy_after=after,
            health_timeout_s=min(interval, 5.0),
            stop_grace_s=1.0,
        ),
        env=dict(os.environ),
        terminal=None,
        notify=lambda *a: None,
        state=tmp / "state-stop",
        on_change=on_change,
    )
    return marks["unhealthy"] - marks["stopped"]


def idle(server: str, model: Path, seconds: float, tmp: Path) -> tuple[float, float]:
    port = free_port()
    profiles = tmp / "profiles"
    profiles.mkdir(exist_ok=True)
    (profiles / "idle.yaml").write_text(
        f"backend: llama.cpp\nmodel: {model}\nport: {port}\n"
        "server: {ctx_size: 256, threads: 1, device: none}\n"
    )
    env = {
        **os.environ,
        "INFERSUP_STATE_DIR": str(tmp / "state-idle"),
        "INFERSUP_RUNTIME_DIR": str(tmp / "run-idle"),
    }
    argv = [sys.executable, "-m", "infersup", "run", "idle", "-p", str(profiles), "--quiet"]
    argv += ["--server-bin", server]
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    assert proc.stderr is not None
    for raw in proc.stderr:
        if b"is ready at" in raw:
            break
    me = psutil.Process(proc.pid)
    time.sleep(1.0)  # let start-up work settle
    before = me.cpu_times()
    t0 = time.monotonic()
    time.sleep(seconds)
    after = me.cpu_times()
    elapsed = time.monotonic() - t0
    rss = me.memory_info().rss / (1 << 20)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    cpu = (after.user - before.user) + (after.system - before.system)
    return 100.0 * cpu / elapsed, rss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--crashes", type=int, default=40)
    ap.add_argument("--starts", type=int, default=10)
    ap.add_argument("--idle-s", type=float, default=60.0)
    ap.add_argument("--server-bin")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    program = find_program("llama.cpp", server_bin=args.server_bin)
    if not program.found:
        sys.exit("llama-server not found: run `make server` or pass --server-bin")
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="infersup-bench-") as d:
        tmp = Path(d)
        model = write_tiny_llama(tmp / "tiny.gguf")
        for holder in (False, True):
            lat = crash_latency(args.crashes, holder, tmp)
            key = "crash_ms_grandchild_holds_pipe" if holder else "crash_ms"
            results[key] = {"p50": statistics.median(lat), "p95": pct(lat, 0.95), "n": len(lat)}
        lags = ready_lag(program.executable, model, args.starts, tmp)
        results["ready_lag_ms"] = {"p50": statistics.median(lags), "max": max(lags), "n": len(lags)}
        interval, after = 1.0, 3
        results["sigstop_to_unhealthy_s"] = {
            "measured": sigstop_detection(program.executable, model, tmp, interval, after),
            "bound": interval * after + 1.0,
        }
        cpu, rss = idle(program.executable, model, args.idle_s, tmp)
        results["idle"] = {"cpu_percent": cpu, "rss_mib": rss, "seconds": args.idle_s}
    if args.json:
        print(json.dumps(results, indent=2))
        return
    c, g = results["crash_ms"], results["crash_ms_grandchild_holds_pipe"]
    r, st, i = results["ready_lag_ms"], results["sigstop_to_unhealthy_s"], results["idle"]
    rows = [
        ("crash detected", f"p50 {c['p50']:.2f} ms, p95 {c['p95']:.2f} ms", "p95 <= 10 ms"),
        (
            "  grandchild holds the pipe",
            f"p50 {g['p50']:.2f} ms, p95 {g['p95']:.2f} ms",
            "supervisord 927 ms",
        ),
        ("READY after the first 200", f"p50 {r['p50']:.1f} ms, max {r['max']:.1f} ms", "<= 50 ms"),
        ("SIGSTOP -> UNHEALTHY", f"{st['measured']:.2f} s", f"<= {st['bound']:.1f} s"),
        (
            "idle supervisor",
            f"{i['cpu_percent']:.3f} % CPU, {i['rss_mib']:.1f} MiB RSS",
            "<= 0.05 %, 40 MiB",
        ),
    ]
    for name, got, goal in rows:
        print(f"{name:30} {got:34} goal {goal}")


if __name__ == "__main__":
    main()
