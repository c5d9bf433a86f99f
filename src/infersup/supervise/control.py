"""What `infersup run` does around the supervisor for other terminals.

``Recorder`` turns each of the supervisor's transitions into the runtime
record that `status` and `stop` read. ``start_detached`` is `run --detach`:
it starts `infersup run ID --quiet` in its own session and reports how that
start went, so a server that fails at once is not announced as running.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from infersup.compile import LaunchPlan
from infersup.errors import InfersupError
from infersup.supervise.runner import ServerProcess, state_dir
from infersup.supervise.runtime import (
    AlreadyRunning,
    Lease,
    ProcRef,
    StateRecord,
    live_supervisor,
    read_record,
    runtime_dir,
)
from infersup.supervise.supervisor import Supervisor

ENV_DETACHED = "INFERSUP_DETACHED"  # set in the environment of a `run --detach` supervisor
DETACH_WAIT_S = 120.0  # how long `run -d` waits for READY before leaving it to `status`


class Recorder:
    """Keeps the profile's runtime record in step with the supervisor."""

    def __init__(self, plan: LaunchPlan, lease: Lease) -> None:
        self.plan = plan
        self.lease = lease
        self.started_at = time.time()
        self.log_path = str(state_dir() / "logs" / f"{plan.profile_id}.log")
        self.record: StateRecord | None = None

    def update(self, sup: Supervisor) -> None:
        child = sup.child
        last = sup.history[-1]
        ready_at = None
        if sup.ready_at is not None:  # monotonic -> wall, through the last transition
            ready_at = last.wall - (last.at - sup.ready_at)
        self.record = StateRecord(
            profile=self.plan.profile_id,
            state=sup.state.value,
            reason=last.reason,
            supervisor=self.lease.supervisor,
            server=ProcRef.of(child.pid) if child is not None else None,
            pgid=child.pid if child is not None else None,
            host=self.plan.host,
            port=self.plan.port,
            base_url=self.plan.base_url,
            since=last.wall,
            started_at=self.started_at,
            ready_at=ready_at,
            restarts=sup.restarts,
            last_cause=sup.last_cause.summary if sup.last_cause else None,
            log_path=self.log_path,
            detached=os.environ.get(ENV_DETACHED) == "1",
            tree_token=child.token if isinstance(child, ServerProcess) else None,
            ready_monotonic=sup.ready_at,
        )
        self.lease.write(self.record)


@dataclass(frozen=True)
class Detached:
    """How a background start went."""

    outcome: str  # "ready", "failed", "starting" (still going after the wait)
    supervisor_pid: int
    record: StateRecord | None
    output: tuple[str, ...]  # this run's messages (the supervisor's stderr)
    output_path: Path
    returncode: int | None = None  # the supervisor's, when it ended


def start_detached(
    profile_id: str, run_args: Sequence[str], *, wait_s: float = DETACH_WAIT_S
) -> Detached:
    """Start `infersup run ID --quiet RUN_ARGS...` in the background and wait for
    READY, its end, or ``wait_s``."""
    _check_runtime_dir()
    holder = live_supervisor(profile_id)
    if holder is not None:  # refused here, where the user sees it, before spawning
        raise AlreadyRunning(profile_id, holder, read_record(profile_id))
    argv = [sys.executable, "-m", "infersup", "run", profile_id, "--quiet", *run_args]
    out = state_dir() / "logs" / f"{profile_id}.supervisor.log"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        sink = out.open("ab")
        offset = sink.tell()  # this run's messages start here
    except OSError as exc:
        raise InfersupError(f"cannot write {out}: {exc.strerror or exc}") from None
    with sink:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=sink,
            start_new_session=True,
            env={**os.environ, ENV_DETACHED: "1", "COLUMNS": "200"},
        )

    def said() -> tuple[str, ...]:
        with out.open("rb") as f:
            f.seek(offset)
            return tuple(f.read().decode("utf-8", "replace").splitlines())

    deadline = time.monotonic() + wait_s
    record = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return Detached("failed", proc.pid, None, said(), out, proc.returncode)
        found = read_record(profile_id)
        if found is not None and found.supervisor.pid == proc.pid:
            record = found
            if record.state == "READY":
                return Detached("ready", proc.pid, record, said(), out)
        time.sleep(0.05)
    return Detached("starting", proc.pid, record, said(), out)


def _check_runtime_dir() -> None:
    """Without a usable runtime dir the background run could not be found again."""
    root = runtime_dir()
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not root.is_dir() or not os.access(root, os.W_OK | os.X_OK):
            raise PermissionError(13, "not a writable directory")
    except OSError as exc:
        raise InfersupError(
            f"--detach needs a usable runtime dir; {root}: {exc.strerror or exc}",
            hint="set INFERSUP_RUNTIME_DIR to a private directory, or run in the foreground",
        ) from None
