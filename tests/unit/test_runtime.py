"""The runtime dir: lease, state records, orphan cleanup, status and stop.

Supervisors here are small child scripts that take a real Lease, so every
lock, signal and pid check runs across real processes. Each child writes a
ready file once it is set up; the test waits on that file, never on a timer.
Every test ends with none of its processes left (the ``procs`` fixture).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from infersup.supervise.runtime import (
    ENV_RUNTIME_DIR,
    AlreadyRunning,
    Lease,
    NotRunning,
    ProcRef,
    RuntimeDirError,
    StateRecord,
    StatusRow,
    read_record,
    read_records,
    record_path,
    request_stop,
    runtime_dir,
    status_rows,
)

pytestmark = pytest.mark.timeout(60)

PREAMBLE = """\
import json, os, signal, subprocess, sys, time
from pathlib import Path
from infersup.supervise.runtime import Lease, ProcRef, StateRecord
ROOT, PROFILE, READY, GO = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
PY = sys.executable
def ready(*values):
    tmp = READY.with_suffix('.tmp')
    tmp.write_text(' '.join(map(str, values)))
    os.replace(tmp, READY)
def wait_go():
    while not GO.exists():
        time.sleep(0.01)
def record(lease, state='READY', **kw):
    now = time.time()
    base = dict(profile=PROFILE, state=state, reason='test', supervisor=lease.supervisor,
                server=None, pgid=None, host='127.0.0.1', port=8123,
                base_url='http://127.0.0.1:8123', since=now, started_at=now, ready_at=None,
                restarts=0, last_cause=None, log_path=None)
    base.update(kw)
    return StateRecord(**base)
"""


class Procs:
    """Every process a test starts, checked (and killed if need be) at teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.popens: list[subprocess.Popen[bytes]] = []
        self.refs: list[ProcRef] = []
        self.n = 0

    def start(
        self, body: str, root: Path, profile: str = "tiny"
    ) -> tuple[subprocess.Popen[bytes], list[int], Path]:
        """Run a child script; wait for its ready file; (popen, pids it reported, go file)."""
        self.n += 1
        d = self.tmp_path / f"child{self.n}"
        d.mkdir()
        script = d / "child.py"
        script.write_text(PREAMBLE + textwrap.dedent(body))
        ready, go = d / "ready", d / "go"
        proc = subprocess.Popen(
            [sys.executable, str(script), str(root), profile, str(ready), str(go)],
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.popens.append(proc)
        deadline = time.monotonic() + 20
        while not ready.exists():
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise AssertionError(f"child exited {proc.returncode}: {err}")
            assert time.monotonic() < deadline, "child never became ready"
            time.sleep(0.01)
        pids = [int(p) for p in ready.read_text().split()]
        for pid in pids:
            self.track(pid)
        return proc, pids, go

    def track(self, pid: int) -> None:
        ref = ProcRef.of(pid)
        if ref is not None:
            self.refs.append(ref)

    def finish(self) -> list[int]:
        """Kill what is left; the pids that were left."""
        left = [r.pid for r in self.refs if r.alive()]
        left += [p.pid for p in self.popens if p.poll() is None and p.pid not in left]
        for ref in self.refs:
            proc = ref.process()
            if proc is not None:
                proc.kill()
        for p in self.popens:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
            if p.stderr is not None:
                p.stderr.close()
        wait_until(lambda: not any(r.alive() for r in self.refs), "leftovers to die")
        return left


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    tracker = Procs(tmp_path)
    yield tracker
    left = tracker.finish()
    assert left == [], f"processes left behind: {left}"
    assert psutil.Process().children(recursive=True) == []


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "run"


def wait_until(cond: object, what: str, timeout: float = 20.0) -> None:
    assert callable(cond)
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def make_record(profile: str = "tiny", **kw: object) -> StateRecord:
    me = ProcRef.of(os.getpid())
    assert me is not None
    base: dict[str, object] = dict(
        profile=profile,
        state="READY",
        reason="/health answered 200",
        supervisor=me,
        server=None,
        pgid=None,
        host="127.0.0.1",
        port=8123,
        base_url="http://127.0.0.1:8123",
        since=1000.0,
        started_at=990.0,
        ready_at=1000.0,
        restarts=2,
        last_cause="killed by SIGKILL (status 137): OOM?",
        log_path="/var/log/tiny.log",
    )
    base.update(kw)
    return StateRecord(**base)  # type: ignore[arg-type]


def dead_ref() -> ProcRef:
    """The identity of a process that has exited (and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    ref = ProcRef.of(p.pid)
    p.kill()
    p.wait()
    assert ref is not None
    return ref


# ---------------------------------------------------------------- records


def test_record_round_trip_and_listing(root: Path) -> None:
    server = ProcRef.of(os.getppid())
    rec = make_record(
        server=server, pgid=os.getppid(), detached=True, tree_token="tok", ready_at=None
    )
    assert StateRecord.from_json(json.loads(json.dumps(rec.to_json()))) == rec
    with Lease("tiny", root=root) as lease:
        lease.write(rec)
        assert read_record("tiny", root) == rec
        raw = json.loads(record_path("tiny", root).read_text())
        assert raw["version"] == 1 and raw["state"] == "READY" and raw["supervisor"]["pid"] > 0
        other = dataclasses.replace(rec, profile="big")
        with Lease("big", root=root) as lease2:
            lease2.write(other)
            (root / "junk.json").write_text("{not json")
            (root / "old.json").write_text(json.dumps({"version": 99}))
            assert [r.profile for r in read_records(root)] == ["big", "tiny"]
    # released records are kept (with ended_at) so status can show the last cause;
    # a release without a final record never leaves a finished run READY
    kept = read_record("tiny", root)
    assert kept is not None and kept.ended_at is not None
    assert (kept.state, kept.reason) == ("STOPPED", "supervisor ended")
    assert (
        dataclasses.replace(kept, state="READY", reason=rec.reason, since=rec.since, ended_at=None)
        == rec
    )
    assert sorted(p.name for p in root.iterdir()) == [
        "big.json",
        "big.lock",
        "junk.json",
        "old.json",
        "tiny.json",
        "tiny.lock",
    ]
    assert stat.S_IMODE(os.stat(record_path("tiny", root)).st_mode) == 0o600


def test_a_supervisor_failing_inside_the_lease_leaves_a_fatal_record(root: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), Lease("tiny", root=root) as lease:
        lease.write(make_record(last_cause="exit status 1"))
        raise RuntimeError("boom")
    rec = read_record("tiny", root)
    assert rec is not None and rec.ended_at is not None
    assert (rec.state, rec.reason, rec.last_cause) == (
        "FATAL",
        "supervisor failed: boom",
        "exit status 1",
    )
    # the lock went with it
    with Lease("tiny", root=root) as again:
        assert again.held


def test_writes_are_atomic_for_a_concurrent_reader(root: Path) -> None:
    reads: list[StateRecord | None] = []
    with Lease("tiny", root=root) as lease:
        lease.write(make_record(restarts=0, reason=""))
        done = threading.Event()

        def reader() -> None:
            while not done.is_set():
                reads.append(read_record("tiny", root))

        t = threading.Thread(target=reader)
        t.start()
        for n in range(1, 150):
            lease.write(make_record(restarts=n, reason="x" * (n * 50)))
        done.set()
        t.join()
    assert reads and None not in reads
    assert all(r is not None and len(r.reason) == r.restarts * 50 for r in reads)


def test_odd_profile_ids_stay_inside_the_runtime_dir(root: Path) -> None:
    ids = ["unsloth/GLM 4.7:Q8", ".hidden", "..", "x" * 300, "ok-id_1.2"]
    for pid_ in ids:
        with Lease(pid_, root=root) as lease:
            lease.write(make_record(profile=pid_))
        assert record_path(pid_, root).parent == root
        assert not record_path(pid_, root).name.startswith(".")
        rec = read_record(pid_, root)
        assert rec is not None and rec.profile == pid_
    assert sorted(r.profile for r in read_records(root)) == sorted(ids)


# ---------------------------------------------------------------- the lease

HOLDER = """
lease = Lease(PROFILE, root=ROOT)
lease.acquire()
lease.write(record(lease))
ready(os.getpid())
wait_go()
lease.release(record(lease, 'STOPPED', reason='done'))
"""


def test_second_acquire_is_refused_naming_the_holder(root: Path, procs: Procs) -> None:
    proc, [pid], go = procs.start(HOLDER, root)
    with pytest.raises(AlreadyRunning) as err:
        Lease("tiny", root=root).acquire()
    assert err.value.exit_code == 1
    assert err.value.holder is not None and err.value.holder.pid == pid
    assert f"profile 'tiny' is already running (supervisor pid {pid}, started " in err.value.message
    assert "READY since" in err.value.message and "port 8123" in err.value.message
    assert err.value.hint is not None and "infersup stop tiny" in err.value.hint
    go.touch()
    assert proc.wait(timeout=20) == 0
    with Lease("tiny", root=root) as lease:
        assert lease.held and lease.cleaned == []


def test_lock_is_freed_when_the_holder_is_sigkilled(root: Path, procs: Procs) -> None:
    proc, [pid], _ = procs.start(HOLDER, root)
    proc.kill()
    proc.wait()
    [row] = status_rows(root=root)
    assert (row.stale, row.supervisor_pid, row.orphan_server_pid) == (True, None, None)
    lease = Lease("tiny", root=root)
    assert lease.acquire() == []  # no server was recorded: nothing to stop
    rec = read_record("tiny", root)
    assert rec is not None and rec.ended_at is not None
    assert (rec.state, rec.reason) == (
        "STOPPED",
        f"supervisor pid {pid} was killed; nothing of it was left by the next start",
    )
    lease.release()


def test_concurrent_acquires_have_exactly_one_winner(root: Path, procs: Procs) -> None:
    # reliability row 22: two starts racing must not both spawn
    body = """
    ready(os.getpid())
    wait_go()
    lease = Lease(PROFILE, root=ROOT)
    out = READY.with_name('result')
    try:
        lease.acquire()
    except Exception as exc:
        out.with_suffix('.tmp').write_text('refused ' + str(exc.holder.pid))
    else:
        out.with_suffix('.tmp').write_text('won ' + str(os.getpid()))
    os.replace(out.with_suffix('.tmp'), out)
    while not GO.with_name('done').exists():
        time.sleep(0.01)
    lease.release()
    """
    started = [procs.start(body, root) for _ in range(4)]
    for _, _, go in started:
        go.touch()
    results = [go.with_name("result") for _, _, go in started]
    wait_until(lambda: all(r.exists() for r in results), "every child to try")
    outcomes = [r.read_text().split() for r in results]
    winners = [int(pid) for kind, pid in outcomes if kind == "won"]
    assert len(winners) == 1
    assert sorted(outcomes) == sorted(
        [["won", str(winners[0])]] + [["refused", str(winners[0])]] * 3
    )
    for _, _, go in started:
        go.with_name("done").touch()
    for proc, _, _ in started:
        assert proc.wait(timeout=20) == 0


# ---------------------------------------------------------------- orphans

# A fake supervisor: takes the lease, spawns a "server" in its own session
# (carrying the tree token like process.spawn does) that starts one worker in
# its group and one that escapes with setsid, records it all, then waits to be
# SIGKILLed.
SUPERVISOR = """
from infersup.supervise.process import TREE_TOKEN
here = READY.parent
ignore = os.environ.get('ESCAPED_IGNORES_TERM') == '1'
(here / 'escaped.py').write_text(
    'import signal, sys, time\\n'
    + ('signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n' if ignore else '')
    + 'open(sys.argv[1], "w").close()\\n'
    + 'time.sleep(600)\\n'
)
(here / 'server.py').write_text('''
import os, subprocess, sys, time
here = os.path.dirname(os.path.abspath(__file__))
w = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])
flag = os.path.join(here, 'escaped-ready')
e = subprocess.Popen([sys.executable, os.path.join(here, 'escaped.py'), flag],
                     start_new_session=True)
while not os.path.exists(flag):
    time.sleep(0.01)
with open(os.path.join(here, 'pids.tmp'), 'w') as f:
    f.write(f'{os.getpid()} {w.pid} {e.pid}')
os.replace(os.path.join(here, 'pids.tmp'), os.path.join(here, 'server-pids'))
time.sleep(600)
''')
lease = Lease(PROFILE, root=ROOT)
lease.acquire()
token = lease.new_tree_token()
server = subprocess.Popen([PY, str(here / 'server.py')], env=dict(os.environ, **{TREE_TOKEN: token}),
                          start_new_session=True, stdout=subprocess.DEVNULL)
while not (here / 'server-pids').exists():
    time.sleep(0.01)
pids = (here / 'server-pids').read_text().split()
lease.write(record(lease, server=ProcRef.of(server.pid), pgid=server.pid, tree_token=token))
ready(os.getpid(), *pids)
time.sleep(600)
"""


def test_orphaned_server_tree_is_stopped_by_the_next_start(root: Path, procs: Procs) -> None:
    proc, [sup, server, worker, escaped], _ = procs.start(SUPERVISOR, root)
    assert os.getpgid(worker) == server and os.getpgid(escaped) == escaped
    proc.kill()  # reliability row 20: the supervisor is SIGKILLed
    proc.wait()
    assert all(alive(p) for p in (server, worker, escaped))

    [row] = status_rows(root=root)
    assert (row.stale, row.live, row.supervisor_pid, row.server_pid) == (True, False, None, None)
    assert row.orphan_server_pid == server
    assert row.orphan_pids == (server, *sorted([worker, escaped]))

    lease = Lease("tiny", root=root)
    messages = lease.acquire()
    others = ", ".join(map(str, sorted([worker, escaped])))
    assert messages == [
        f"stopped orphaned server pid {server} of 'tiny' and 2 more processes (pid {others}) "
        f"left by supervisor pid {sup}, which was killed"
    ]
    assert not any(alive(p) for p in (server, worker, escaped))
    [row] = status_rows(root=root)
    assert (row.stale, row.state, row.orphan_server_pid) == (False, "STOPPED", None)
    assert row.reason == (
        f"supervisor pid {sup} was killed; its orphaned server was stopped by the next start"
    )
    lease.release()


def test_workers_outliving_the_server_are_found_by_tree_token(
    root: Path, procs: Procs, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pdeathsig kills the server leader with its supervisor; its workers run on,
    # one of them outside the group and deaf to SIGTERM
    monkeypatch.setenv("ESCAPED_IGNORES_TERM", "1")
    proc, [sup, server, worker, escaped], _ = procs.start(SUPERVISOR, root)
    proc.kill()
    os.kill(server, signal.SIGKILL)
    proc.wait()
    wait_until(lambda: not alive(server), "the server leader to die")
    [row] = status_rows(root=root)
    assert row.stale and row.orphan_pids == tuple(sorted([worker, escaped]))

    lease = Lease("tiny", root=root, orphan_grace_s=0.5)
    started = time.monotonic()
    messages = lease.acquire()
    assert time.monotonic() - started < 5
    others = ", ".join(map(str, sorted([worker, escaped])))
    assert messages == [
        f"stopped 2 orphaned processes (pid {others}) of 'tiny' left by supervisor pid {sup}, "
        "which was killed (SIGKILL after 0.5 s)"
    ]
    assert not alive(worker) and not alive(escaped)
    lease.release()


def test_a_reused_pid_is_never_killed(root: Path, procs: Procs) -> None:
    # a process now holds the recorded pids, but it started at another time
    victim = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True
    )
    procs.popens.append(victim)
    now = ProcRef.of(victim.pid)
    assert now is not None and now.boot_started is not None
    wrong = dataclasses.replace(now, started=now.started - 7.0, boot_started=now.boot_started - 7.0)
    assert ProcRef(victim.pid, now.started - 7.0).alive() is False
    assert wrong.alive() is False and wrong.process() is None
    rec = make_record(supervisor=wrong, server=wrong, pgid=victim.pid, tree_token="tok")
    root.mkdir(mode=0o700)
    record_path("tiny", root).write_text(json.dumps(rec.to_json()))

    [row] = status_rows(root=root)
    assert (row.stale, row.orphan_server_pid, row.orphan_pids) == (True, None, ())
    with pytest.raises(NotRunning, match="was killed and nothing it started is left"):
        request_stop("tiny", timeout_s=5, root=root)
    assert victim.poll() is None
    record_path("tiny", root).write_text(json.dumps(rec.to_json()))
    lease = Lease("tiny", root=root)
    assert lease.acquire() == []
    lease.release()
    assert victim.poll() is None
    victim.kill()
    victim.wait()


def test_a_dead_supervisor_record_with_a_reused_server_pid_is_only_marked_ended(
    root: Path, procs: Procs
) -> None:
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    procs.popens.append(victim)
    now = ProcRef.of(victim.pid)
    assert now is not None
    rec = make_record(
        supervisor=dead_ref(), server=ProcRef(victim.pid, now.started + 3.0), pgid=victim.pid
    )
    root.mkdir(mode=0o700)
    record_path("tiny", root).write_text(json.dumps(rec.to_json()))
    with Lease("tiny", root=root) as lease:
        assert lease.cleaned == []
    assert victim.poll() is None
    victim.kill()
    victim.wait()
    after = read_record("tiny", root)
    assert after is not None and after.state == "STOPPED" and after.ended_at is not None


# ---------------------------------------------------------------- status


def test_status_rows_live_and_ended(root: Path, procs: Procs) -> None:
    body = """
    lease = Lease(PROFILE, root=ROOT)
    lease.acquire()
    lease.write(record(lease, since=1000.0, started_at=990.0, ready_at=1000.0, restarts=3,
                       last_cause='exit status 1: bad flag', log_path='/l/tiny.log',
                       server=ProcRef.of(os.getppid()), pgid=os.getppid()))
    ready(os.getpid())
    wait_go()
    lease.release(record(lease, 'FATAL', reason='start limit reached', since=1100.0,
                         started_at=990.0, restarts=3, last_cause='exit status 1: bad flag'))
    """
    proc, [pid], go = procs.start(body, root)
    rows = status_rows(root=root, now=lambda: 1012.5)
    expected = StatusRow(
        profile="tiny",
        state="READY",
        reason="test",
        supervisor_pid=pid,
        server_pid=os.getpid(),
        port=8123,
        url="http://127.0.0.1:8123",
        uptime_s=12.5,
        restarts=3,
        last_cause="exit status 1: bad flag",
        log_path="/l/tiny.log",
        stale=False,
        orphan_server_pid=None,
        since=1000.0,
        live=True,
    )
    assert rows == [expected]
    assert json.loads(json.dumps(rows[0].to_json()))["uptime_s"] == 12.5
    go.touch()
    assert proc.wait(timeout=20) == 0
    assert status_rows("tiny", root=root, now=lambda: 2000.0) == [
        dataclasses.replace(
            expected,
            state="FATAL",
            reason="start limit reached",
            supervisor_pid=None,
            server_pid=None,
            uptime_s=None,
            log_path=None,
            since=1100.0,
            live=False,
        )
    ]
    assert status_rows("other", root=root) == []
    assert status_rows(root=root / "missing") == []


# ---------------------------------------------------------------- stop

GRACEFUL = """
lease = Lease(PROFILE, root=ROOT)
lease.acquire()
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
lease.write(record(lease, 'STARTING'))
ready(os.getpid())
while not stop:
    time.sleep(0.01)
lease.write(record(lease, 'STOPPING', reason='received SIGTERM'))
lease.release(record(lease, 'STOPPED', reason='stopped on request',
                     last_cause='exit status 0'))
"""


def test_request_stop_stops_a_live_supervisor(root: Path, procs: Procs) -> None:
    proc, [pid], _ = procs.start(GRACEFUL, root)
    out = request_stop("tiny", timeout_s=20, root=root)
    assert (out.profile, out.supervisor_pid, out.stopped, out.final_state) == (
        "tiny",
        pid,
        True,
        "STOPPED",
    )
    assert out.message == f"stopped 'tiny' (supervisor pid {pid}, final state STOPPED)"
    assert 0 <= out.waited_s < 20
    assert proc.wait(timeout=20) == 0
    with pytest.raises(NotRunning) as err:
        request_stop("tiny", timeout_s=1, root=root)
    assert "profile 'tiny' is not running (ended STOPPED at " in err.value.message
    assert err.value.message.endswith("; last cause: exit status 0)")
    assert err.value.exit_code == 1


def test_request_stop_times_out_on_a_deaf_supervisor(root: Path, procs: Procs) -> None:
    body = """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    lease = Lease(PROFILE, root=ROOT)
    lease.acquire()
    lease.write(record(lease, 'STOPPING'))
    ready(os.getpid())
    time.sleep(600)
    """
    proc, [pid], _ = procs.start(body, root)
    out = request_stop("tiny", timeout_s=0.3, root=root, poll_s=0.02)
    assert (out.stopped, out.final_state, out.supervisor_pid) == (False, "STOPPING", pid)
    assert out.message == (
        f"supervisor pid {pid} of 'tiny' is still stopping after 0.3 s (state STOPPING)"
    )
    assert 0.3 <= out.waited_s < 5
    assert proc.poll() is None
    proc.kill()
    proc.wait()


def test_a_stop_cleaning_up_is_not_mistaken_for_a_supervisor(root: Path, procs: Procs) -> None:
    # `infersup stop` holds the lease while it stops a killed run's orphans:
    # a second stop must not SIGTERM it, a run is told to wait
    body = """
    lease = Lease(PROFILE, root=ROOT)
    lease._role = 'cleanup'
    lease.acquire()
    ready(os.getpid())
    wait_go()
    lease.release()
    """
    proc, [pid], go = procs.start(body, root)
    with pytest.raises(AlreadyRunning) as err:
        Lease("tiny", root=root).acquire()
    assert err.value.cleaning
    assert err.value.message == f"profile 'tiny' is being cleaned up by `infersup stop` (pid {pid})"
    record_path("tiny", root).write_text(json.dumps(make_record(supervisor=dead_ref()).to_json()))
    with pytest.raises(AlreadyRunning, match="being cleaned up"):
        request_stop("tiny", timeout_s=1, root=root)
    assert proc.poll() is None
    go.touch()
    assert proc.wait(timeout=20) == 0


def test_request_stop_of_an_unknown_profile(root: Path) -> None:
    with pytest.raises(NotRunning, match=r"profile 'nope' is not running \(no record in "):
        request_stop("nope", timeout_s=1, root=root)


def test_request_stop_cleans_up_after_a_killed_supervisor(root: Path, procs: Procs) -> None:
    proc, [sup, server, worker, escaped], _ = procs.start(SUPERVISOR, root)
    proc.kill()
    proc.wait()
    out = request_stop("tiny", timeout_s=10, root=root)
    assert (out.stopped, out.final_state, out.supervisor_pid) == (True, "STOPPED", sup)
    assert out.message.startswith(f"supervisor pid {sup} of 'tiny' was gone (killed); ")
    assert len(out.cleaned) == 1 and f"orphaned server pid {server}" in out.cleaned[0]
    assert not any(alive(p) for p in (server, worker, escaped))
    rec = read_record("tiny", root)
    assert rec is not None and rec.state == "STOPPED"
    assert rec.reason.endswith("its orphaned server was stopped by `infersup stop`")


# ---------------------------------------------------------------- an unusable runtime dir


def test_unusable_runtime_dir_warns_once_and_supervision_goes_on(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    warnings: list[str] = []
    lease = Lease("tiny", root=blocker / "run", on_warning=warnings.append)
    assert lease.acquire() == []
    assert not lease.held
    lease.write(make_record())
    lease.write(make_record(state="STOPPED"))
    lease.release(make_record(state="STOPPED"))
    assert len(warnings) == 1
    assert warnings[0].startswith("runtime dir unusable (")
    assert "a second run of it is not refused" in warnings[0]


def test_records_that_cannot_be_written_warn_once(tmp_path: Path, root: Path) -> None:
    warnings: list[str] = []
    lease = Lease("tiny", root=root, on_warning=warnings.append)
    lease.acquire()
    aside = tmp_path / "aside"
    root.rename(aside)
    root.write_text("")  # the dir is now a file: every write fails (even for root)
    lease.write(make_record(restarts=1))
    lease.write(make_record(restarts=2))
    assert len(warnings) == 1 and warnings[0].startswith(f"cannot write {root}/tiny.json: ")
    root.unlink()
    aside.rename(root)
    lease.write(make_record(restarts=3))
    rec = read_record("tiny", root)
    assert rec is not None and rec.restarts == 3
    lease.release()
    assert len(warnings) == 1


def test_a_broken_warning_callback_does_not_stop_supervision(tmp_path: Path) -> None:
    def boom(message: str) -> None:
        raise RuntimeError(message)

    lease = Lease("tiny", root=tmp_path / "f" / "run", on_warning=boom)
    (tmp_path / "f").write_text("")
    assert lease.acquire() == []
    lease.release()


# ---------------------------------------------------------------- where the runtime dir is


def test_runtime_dir_precedence(tmp_path: Path) -> None:
    assert runtime_dir({ENV_RUNTIME_DIR: "/x/rt", "XDG_RUNTIME_DIR": "/run/user/7"}) == Path(
        "/x/rt"
    )
    assert runtime_dir({"XDG_RUNTIME_DIR": "/run/user/7"}) == Path("/run/user/7/infersup")
    fallback = tmp_path / f"infersup-{os.geteuid()}"
    # a relative XDG_RUNTIME_DIR is invalid per the spec: ignored
    assert runtime_dir({"XDG_RUNTIME_DIR": "rel", "TMPDIR": str(tmp_path)}) == fallback
    assert stat.S_IMODE(fallback.stat().st_mode) == 0o700
    assert runtime_dir({"TMPDIR": str(tmp_path)}) == fallback  # exists: reused


def test_runtime_dir_fallback_refuses_unsafe_dirs(tmp_path: Path) -> None:
    env = {"TMPDIR": str(tmp_path)}
    fallback = tmp_path / f"infersup-{os.geteuid()}"
    fallback.mkdir()
    fallback.chmod(0o777)
    with pytest.raises(RuntimeDirError, match="group- or world-writable"):
        runtime_dir(env)
    fallback.rmdir()
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    fallback.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(RuntimeDirError, match="is not a directory"):
        runtime_dir(env)
    fallback.unlink()
    if os.geteuid() == 0:
        fallback.mkdir(mode=0o700)
        os.chown(fallback, 12345, -1)
        with pytest.raises(RuntimeDirError, match="belongs to uid 12345"):
            runtime_dir(env)


def test_an_unsafe_fallback_degrades_the_lease(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in (ENV_RUNTIME_DIR, "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    fallback = tmp_path / f"infersup-{os.geteuid()}"
    fallback.mkdir()
    fallback.chmod(0o777)
    warnings: list[str] = []
    lease = Lease("tiny", on_warning=warnings.append)
    assert lease.acquire() == [] and not lease.held
    assert len(warnings) == 1 and "group- or world-writable" in warnings[0]
    lease.release()
    assert list(fallback.iterdir()) == []


def test_status_uptime_ignores_a_wall_clock_jump(root: Path) -> None:
    """Reliability row 24 for `status`: uptime comes from the monotonic clock."""
    with Lease("tiny", root=root) as lease:
        lease.write(make_record(supervisor=lease.supervisor, ready_monotonic=500.0))
        [row] = status_rows(root=root, now=lambda: 1000.0 - 3600.0, monotonic=lambda: 542.0)
        assert row.live and row.uptime_s == 42.0
        [row] = status_rows(root=root, now=lambda: 1000.0 + 86400.0, monotonic=lambda: 542.0)
        assert row.uptime_s == 42.0
    record = read_record("tiny", root)
    assert record is not None and record.ready_monotonic == 500.0  # kept in the file
