"""The process's log: one format on stderr, the level from LOG_LEVEL, and the secrets (the Label
Studio token, the basic-auth password) replaced by *** in every line, whatever library writes it.
The server, gunicorn's app and the RQ worker each call `configure_logging` once at start."""

from __future__ import annotations

import logging
import os


class _RedactingFilter(logging.Filter):
    """Keeps secrets out of every log line, whatever library writes it."""

    def __init__(self, secrets: list[str]):
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(s in message for s in self.secrets):
            for s in self.secrets:
                message = message.replace(s, "***")
            record.msg, record.args = message, ()
        return True


def configure_logging(level: str = "INFO", secrets: list[str] | None = None) -> None:
    """`secrets` default: the token and password the environment holds."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_RedactingFilter(secrets if secrets is not None else [
        os.environ.get(name, "") for name in ("LABEL_STUDIO_API_KEY", "LABEL_STUDIO_ACCESS_TOKEN", "BASIC_AUTH_PASS")]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
