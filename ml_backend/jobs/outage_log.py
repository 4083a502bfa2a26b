"""A check that a background thread repeats (every 2 s, every RECONCILE_SECONDS) logs an outage once:
its first failure as a warning, the next ones at debug level, and the recovery once. A database
down for an hour would otherwise write a warning every 2 s."""

from __future__ import annotations

import logging


class OutageLog:
    def __init__(self, log: logging.Logger, failing: str, recovered: str):
        self.log, self.failing, self.recovered = log, failing, recovered
        self.down = False

    def failed(self, exc: BaseException) -> None:
        self.log.log(logging.DEBUG if self.down else logging.WARNING, "%s: %s", self.failing, exc)
        self.down = True

    def succeeded(self) -> None:
        if self.down:
            self.log.warning("%s", self.recovered)
        self.down = False
