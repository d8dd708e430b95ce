"""What every long-running worker shares: reconnect backoff and outage logging."""

import time

import structlog

log = structlog.get_logger(__name__)


class Backoff:
    """Capped exponential backoff: 0.5 s, 1 s, 2 s … up to `cap`; reset after a success."""

    def __init__(self, *, initial: float = 0.5, cap: float = 30.0):
        self.initial, self.cap, self.current = initial, cap, initial

    def next(self) -> float:
        delay, self.current = self.current, min(self.current * 2, self.cap)
        return delay

    def reset(self) -> None:
        self.current = self.initial


class Outages:
    """Log each outage of a dependency once when it starts and once when it ends."""

    def __init__(self, health, failures=None):
        self._since: dict[str, float] = {}
        self._health = health
        self._failures = failures  # a Prometheus counter with a `reason` label, or None

    def down(self, dependency: str, error: Exception | str) -> None:
        self._health.set(dependency, False)
        if self._failures is not None:
            self._failures.labels(reason=f"{dependency}_unavailable").inc()
        if dependency not in self._since:
            self._since[dependency] = time.monotonic()
            log.warning(f"{dependency}_unavailable", error=str(error))

    def up(self, dependency: str) -> None:
        self._health.set(dependency, True)
        started = self._since.pop(dependency, None)
        if started is not None:
            log.info(f"{dependency}_recovered", outage_seconds=round(time.monotonic() - started, 1))
