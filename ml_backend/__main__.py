"""`python -m ml_backend`: start the backend on HOST:PORT with the embedded defaults
(SQLite state in MODEL_DIR, jobs in a thread of this process)."""

from __future__ import annotations

import argparse
import logging
import sys


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
    import os

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_RedactingFilter(secrets if secrets is not None else [
        os.environ.get("LABEL_STUDIO_API_KEY", ""), os.environ.get("BASIC_AUTH_PASS", "")]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    from ml_backend.config import Settings, SettingsError

    parser = argparse.ArgumentParser(prog="python -m ml_backend", description=__doc__)
    parser.add_argument("--host", default=None, help="default: HOST or 127.0.0.1 (0.0.0.0 to accept other machines)")
    parser.add_argument("--port", type=int, default=None, help="default: PORT or 9090")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, [settings.label_studio_api_key, settings.basic_auth_pass])
    from ml_backend.server import create_app

    app = create_app(settings)
    log = logging.getLogger("ml_backend")
    log.info("settings: %s", settings.public())
    problem = app.config["backend"].services.engine.checkpoint_problem()
    if problem:
        log.error("%s", problem)
    host, port = args.host or settings.host, args.port or settings.port
    log.info("serving on http://%s:%d", host, port)
    app.run(host=host, port=port, threaded=True, use_reloader=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
