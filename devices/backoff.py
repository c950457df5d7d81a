"""Reconnect delays: exponential backoff with jitter, as AWS recommends for fleets of clients.

Without jitter a fleet that lost its broker comes back in synchronized waves; "full jitter" spreads each
retry uniformly over ``[0, min(cap, base * factor**n)]`` (AWS Architecture Blog, "Exponential Backoff And
Jitter"; aws-crt's default), "equal" keeps half of it fixed, "decorrelated" grows from the previous delay.

The attempt counter is reset once a connection has stayed up for ``reset_after`` seconds (aws-crt: 30 s),
so a device that flaps right after connecting keeps backing off instead of hammering the server.

Randomness and time are passed in, so tests get exact delays.
"""

from __future__ import annotations

import random as _random
import time
from collections.abc import Callable

__all__ = ["JITTERS", "Backoff"]

JITTERS = ("full", "equal", "decorrelated", "none")


class Backoff:
    """Delays before reconnect attempts of one device.

        backoff = Backoff(base=1.0, cap=120.0)
        delay = backoff.next_delay()   # after a failed attempt or a lost connection
        backoff.connected()            # when a CONNACK said yes
        backoff.disconnected()         # when that connection ended (resets if it lasted reset_after)
    """

    __slots__ = ("attempts", "base", "cap", "clock", "factor", "jitter", "random", "reset_after",
                 "_connected_at", "_previous")

    def __init__(self, *, base: float = 1.0, cap: float = 120.0, factor: float = 2.0, jitter: str = "full",
                 reset_after: float = 30.0, random: Callable[[], float] = _random.random,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if base <= 0 or cap < base or factor < 1:
            raise ValueError(f"backoff needs 0 < base <= cap and factor >= 1 (base={base}, cap={cap}, "
                             f"factor={factor})")
        if jitter not in JITTERS:
            raise ValueError(f"jitter must be one of {', '.join(JITTERS)}, not {jitter!r}")
        self.base = base
        self.cap = cap
        self.factor = factor
        self.jitter = jitter
        self.reset_after = reset_after
        self.random = random
        self.clock = clock
        self.attempts = 0
        self._previous = base
        self._connected_at: float | None = None

    def ceiling(self, attempt: int) -> float:
        """The un-jittered delay of the ``attempt``-th retry (0-based): ``min(cap, base * factor**attempt)``."""
        # attempt is capped so that factor**attempt cannot overflow a float
        return min(self.cap, self.base * self.factor ** min(attempt, 64))

    def next_delay(self) -> float:
        """Seconds to wait before the next attempt; counts the attempt."""
        ceiling = self.ceiling(self.attempts)
        self.attempts += 1
        r = self.random()
        if self.jitter == "full":
            delay = ceiling * r
        elif self.jitter == "equal":
            delay = ceiling / 2 + ceiling / 2 * r
        elif self.jitter == "decorrelated":
            delay = min(self.cap, self.base + (self._previous * 3 - self.base) * r)
        else:
            delay = ceiling
        self._previous = max(delay, self.base)
        return delay

    def connected(self) -> None:
        self._connected_at = self.clock()

    def disconnected(self) -> None:
        """The connection ended; if it had lasted ``reset_after`` seconds, start over from ``base``."""
        if self._connected_at is not None and self.clock() - self._connected_at >= self.reset_after:
            self.reset()
        self._connected_at = None

    def reset(self) -> None:
        self.attempts = 0
        self._previous = self.base
