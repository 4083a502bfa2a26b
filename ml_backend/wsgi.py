"""gunicorn entry point: `gunicorn --workers 1 --threads 8 --bind 0.0.0.0:9090 ml_backend.wsgi:app`.

With the in-process job runner (no REDIS_URL) run one worker process: jobs live in that process.
With REDIS_URL, any number of workers can serve requests and `rq worker` processes run the jobs.
"""

from ml_backend.__main__ import configure_logging
from ml_backend.config import Settings
from ml_backend.server import create_app

settings = Settings.from_env()
configure_logging(settings.log_level)
app = create_app(settings)
