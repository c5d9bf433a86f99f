"""Spawning and stopping a server's whole process tree. The one place that does it.

A server starts in a new session (its own process group), so a signal to the
group reaches every worker it forks (SGLang's scheduler and detokenizer) and
the terminal's Ctrl-C reaches only us, who decide what to forward. Stopping
is: signal the group, wait a grace period, SIGKILL the group, then sweep any
descendant that escaped the group with setsid (field notes C: killing only
the parent leaks GPU memory).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import psutil

from infersup.errors import InfersupError

PIPE_SIZE = 1 << 20


class SpawnError(InfersupError):
    exit_code = 1


PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
TREE_TOKEN = "INFERSUP_TREE"  # env var marking every process of one spawned server's tree


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn: Callable[..., int] = libc.prctl
    except (OSError, AttributeError):
        return None
    return fn


def become_subreaper(on: bool = True) -> bool:
    """Adopt our orphaned descendants (Linux): a worker that called setsid and
    outlived its parent becomes our child, so the sweep after the server's exit
    can still find and stop it instead of it running on under init.
    ``on=False`` gives that up again (the supervisor does when it ends, so a
    process that embeds it does not keep collecting strangers' orphans)."""
    prctl = _prctl()
    return prctl is not None and prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) == 0


def _parent_death_hook(sig: int) -> Callable[[], None] | None:
    """A preexec hook: the server gets ``sig`` if the thread that spawned it dies.

    This covers infersup itself being SIGKILLed (reliability row 20). The
    function is resolved here, before fork, so the child only makes one
    foreign call. The runtime pid file covers what this cannot (the server's
    own children, a killed supervisor on another OS).
    """
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()

    def hook() -> None:
        prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the hook ran
            os._exit(1)

    return hook


def spawn(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    parent_death_signal: int | None = None,
    tree_token: str | None = None,
) -> subprocess.Popen[bytes]:
    """Start the server in its own session; stdout and stderr merged into one pipe.

    ``tree_token`` is put in the server's environment, which its workers
    inherit: the sweep recognises them by it even after they left the group.
    """
    child_env = dict(env)
    if tree_token is not None:
        child_env[TREE_TOKEN] = tree_token
    hook = _parent_death_hook(parent_death_signal) if parent_death_signal else None
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=child_env,
            start_new_session=True,
            close_fds=True,
            preexec_fn=hook,  # one prctl call, resolved before the fork
        )
    except OSError as exc:
        raise SpawnError(
            f"cannot start {argv[0]}: {exc.strerror or exc}",
            hint="check that the server binary exists and is executable",
        ) from None
    if proc.stdout is not None:
        _grow_pipe(proc.stdout.fileno())
    return proc


def _grow_pipe(fd: int) -> None:
    """A 1 MiB pipe (Linux): fewer wake-ups when a server floods its output."""
    set_size = getattr(fcntl, "F_SETPIPE_SZ", 1031)
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, set_size, PIPE_SIZE)


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to a process group; False when the group is already gone."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def adopted(tree_token: str, *, since: float) -> list[psutil.Process]:
    """Our descendants that belong to a server's tree: the ones that carry its
    ``tree_token``, and, as a server's workers may clear their environment,
    any that started after the server did (``since``, a ``create_time``).

    Called once that server is gone and before the next one starts: as the
    subreaper (``become_subreaper``) we inherit whatever of its tree is left,
    also the workers that escaped its group with setsid.
    """
    found = []
    for p in descendants(os.getpid()):
        try:
            if p.create_time() >= since - 0.02 or p.environ().get(TREE_TOKEN) == tree_token:
                found.append(p)
        except psutil.Error:
            continue
    return found


def sweep(pgid: int, known: Iterable[psutil.Process], *, grace_s: float) -> int:
    """After the leader is gone: stop what is left in its group and escaped descendants.

    Returns how many of ``known`` were still running. Members that already died
    are only reaped: as the subreaper we inherit them as zombies, and a group
    of zombies still "exists" for ``killpg(pgid, 0)``; waiting on it would
    waste the whole grace period (SGLang's watchdog kills its workers, then
    itself).
    """
    _reap(pgid, known)
    procs = [p for p in known if alive(p)]
    if not procs and not _group_alive(pgid):
        return 0
    counted = {p.pid for p in procs}
    signal_group(pgid, signal.SIGTERM)
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    deadline = time.monotonic() + grace_s
    pause = 0.001  # most trees are gone within a millisecond of TERM: look again soon
    while time.monotonic() < deadline:
        _reap(pgid, procs)
        if not _group_alive(pgid) and not any(alive(p) for p in procs):
            break
        time.sleep(pause)
        pause = min(pause * 2, 0.02)
    signal_group(pgid, signal.SIGKILL)
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs([p for p in procs if alive(p)], timeout=1.0)
    _reap(pgid, procs)
    return len(counted)


def _group_alive(pgid: int) -> bool:
    _reap(pgid, ())
    return signal_group(pgid, 0)


def _reap(pgid: int, procs: Iterable[psutil.Process]) -> None:
    """Collect the exit status of our zombie children (group members and
    escaped workers we adopted as subreaper): otherwise they stay until we exit."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-pgid, os.WNOHANG)[0] > 0:
            pass
    for p in procs:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(p.pid, os.WNOHANG)


def alive(p: psutil.Process) -> bool:
    """Running and not a zombie (psutil re-checks the identity: a reused pid is not it)."""
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def exit_status(returncode: int) -> int:
    """A shell-style exit status: 128 + N for a process killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def describe_returncode(returncode: int) -> str:
    if returncode >= 0:
        return f"exit status {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return f"killed by {name} (status {128 - returncode})"
