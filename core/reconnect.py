"""Close-code classification and the reconnect policy (PROTOCOL §4.2, §4.3)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum

from metered_realtime.core.validation import RandomSource

__all__ = [
    "PEER_FATAL_CLOSE_CODES",
    "SLOW_BACKOFF_FLOOR",
    "TERMINAL_CLOSE_CODES",
    "Backoff",
    "ReconnectOptions",
    "WsCloseCode",
    "close_code_name",
]


class WsCloseCode(IntEnum):
    """WebSocket close codes of the protocol."""

    NORMAL = 1000
    GOING_AWAY = 1001
    ABNORMAL = 1006
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    CLIENT_INACTIVITY = 4000
    INVALID_TOKEN = 4001
    TOKEN_EXPIRED = 4002
    CHANNEL_NOT_AUTHORIZED = 4003
    OVER_CONCURRENT_LIMIT = 4010
    OVER_MESSAGE_RATE = 4011
    ACCOUNT_SUSPENDED = 4012
    ADMIN_DISCONNECT = 4020


TERMINAL_CLOSE_CODES = frozenset({4001, 4003, 4012, 4020})
"""No automatic reconnect after these."""

PEER_FATAL_CLOSE_CODES = {
    4001: "invalid_token",
    4002: "token_expired",
    4003: "channel_not_authorized",
    4012: "account_suspended",
    4020: "admin_disconnect",
}
"""``MeteredPeer`` raises a ``FatalError`` for these when the client will not reconnect."""

SLOW_BACKOFF_FLOOR = {4010: 30.0}
"""Close codes whose next reconnect delay has a floor (seconds)."""


def close_code_name(code: int) -> str:
    """Symbolic name of a fatal close code, ``close_<code>`` otherwise."""
    return PEER_FATAL_CLOSE_CODES.get(code, f"close_{code}")


@dataclass(frozen=True)
class ReconnectOptions:
    """Exponential backoff with jitter for signalling reconnects (all times in seconds)."""

    initial_delay: float = 0.5
    """Base delay of the first attempt; > 0."""
    multiplier: float = 2.0
    """Growth per attempt; ≥ 1."""
    max_delay: float = 30.0
    """Cap on the base delay; ≥ ``initial_delay``."""
    jitter_ratio: float = 0.2
    """Each delay is scaled by a uniform factor in [1 − r, 1 + r); r in [0, 1]."""
    max_attempts: float = 100
    """Attempts before giving up; ≥ 0, ``math.inf`` for no limit."""

    def __post_init__(self) -> None:
        def num(name: str) -> float:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"ReconnectOptions.{name} must be a number")
            if math.isnan(value):
                raise ValueError(f"ReconnectOptions.{name} must not be NaN")
            return float(value)

        initial, mult, cap = num("initial_delay"), num("multiplier"), num("max_delay")
        jitter, attempts = num("jitter_ratio"), num("max_attempts")
        if not (0 < initial < math.inf):
            raise ValueError("ReconnectOptions.initial_delay must be > 0 and finite")
        if not (1 <= mult < math.inf):
            raise ValueError("ReconnectOptions.multiplier must be >= 1 and finite")
        if not (initial <= cap < math.inf):
            raise ValueError("ReconnectOptions.max_delay must be >= initial_delay and finite")
        if not 0 <= jitter <= 1:
            raise ValueError("ReconnectOptions.jitter_ratio must be within [0, 1]")
        if attempts < 0 or (attempts != math.inf and attempts != int(attempts)):
            raise ValueError("ReconnectOptions.max_attempts must be a whole number >= 0 or inf")


class Backoff:
    """Attempt counter and delay computation of PROTOCOL §4.3, with a true 4010 floor."""

    def __init__(self, options: ReconnectOptions, rng: RandomSource) -> None:
        self.options = options
        self._rng = rng
        self.attempts = 0
        self._floor = 0.0

    def reset(self) -> None:
        """A welcome arrived: start again from attempt 1."""
        self.attempts = 0
        self._floor = 0.0

    def note_close(self, code: int) -> None:
        """Remember a close code whose next delay has a floor."""
        self._floor = SLOW_BACKOFF_FLOOR.get(code, 0.0)

    def exhausted(self) -> bool:
        """True when no attempt is left."""
        return self.attempts >= self.options.max_attempts

    def next_delay(self) -> float:
        """Count one attempt and return its delay (jitter applied, then the floor)."""
        opts = self.options
        self.attempts += 1
        exponent = self.attempts - 1
        try:
            grown = opts.initial_delay * opts.multiplier**exponent
        except OverflowError:
            grown = math.inf
        base = min(grown, opts.max_delay)
        floor, self._floor = self._floor, 0.0
        before = max(base, floor)
        u = self._rng.random() * 2.0 - 1.0  # uniform in [-1, +1)
        delay = before + before * opts.jitter_ratio * u
        high = before + before * opts.jitter_ratio
        if opts.jitter_ratio > 0 and delay >= high:  # keep the upper bound exclusive
            delay = math.nextafter(high, 0.0)
        return max(delay, floor, 0.0)
