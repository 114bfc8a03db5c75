"""What the scheduler tests inject: a clock they move by hand and a log sink they read."""

from __future__ import annotations


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Lines:
    """Collects what instances log (the log sink of the scheduler)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def emit(self, group: str, stream: str, timestamp_ms: int, message: str) -> None:
        self.lines.append(message)
