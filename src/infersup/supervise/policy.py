"""Restart policy: whether to restart, after how long, and when to give up.

Learns from supervisord's slips (style.md): its backoff is linear, has no
jitter (#1640) and only counts crashes inside ``startsecs``, so a server that
dies a minute after start restarts at ~1 Hz forever (#1285). Here every
failure counts, before or after READY; the delay doubles per consecutive
failure up to a cap, with jitter so several supervisors restarting after a
shared cause (a GPU reset, a full disk) do not stampede in lock-step; the
streak resets only after the server stayed READY for ``stable_after_s``; and
``max_restarts`` within ``restart_window_s`` is a start limit -> FATAL.
All times are monotonic seconds passed in by the caller.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from infersup.profiles.schema import SuperviseSettings

JITTER = 0.2  # a delay is the nominal one times a factor in [1 - JITTER, 1 + JITTER]


def backoff_delay(
    streak: int, *, initial_s: float, max_s: float, random: Callable[[], float]
) -> float:
    """The delay before restart number ``streak + 1`` of a failure streak (0-based).

    ``initial * 2**streak`` with +-20 % jitter, never above ``max_s``.
    """
    nominal = initial_s * (2.0 ** min(streak, 62))
    jittered = nominal * (1.0 - JITTER + 2.0 * JITTER * random())
    return min(max_s, jittered)


@dataclass
class RestartPolicy:
    settings: SuperviseSettings
    random: Callable[[], float]
    streak: int = 0  # consecutive failures since the last stable run
    restarts: deque[float] = field(default_factory=deque)  # when restarts were scheduled

    def should_restart(self, *, clean_exit: bool) -> bool:
        mode = self.settings.restart
        if mode == "never":
            return False
        return mode == "always" or not clean_exit

    def ran_for(self, ready_s: float | None) -> None:
        """The server that just ended was READY for ``ready_s`` (None: never)."""
        if ready_s is not None and ready_s >= self.settings.stable_after_s:
            self.streak = 0

    def limit_reached(self, now: float) -> bool:
        """True when another restart would exceed ``max_restarts`` in the window."""
        window = self.settings.restart_window_s
        while self.restarts and now - self.restarts[0] >= window:
            self.restarts.popleft()
        return len(self.restarts) >= self.settings.max_restarts

    def next_delay(self, now: float) -> float:
        """Record a restart at ``now`` and return how long to wait before it."""
        delay = backoff_delay(
            self.streak,
            initial_s=self.settings.backoff_initial_s,
            max_s=self.settings.backoff_max_s,
            random=self.random,
        )
        self.streak += 1
        self.restarts.append(now)
        return delay
