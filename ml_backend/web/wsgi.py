"""gunicorn entry point, as the Docker image runs it:
`gunicorn --workers $WORKERS --threads $THREADS --bind 0.0.0.0:9090 ml_backend.web.wsgi:app`.

With the in-process job runner (no REDIS_URL) run one worker process: jobs live in that process
(the settings refuse WORKERS above 1 without REDIS_URL). With REDIS_URL, any number of workers
can serve requests and `rq worker` processes run the jobs.
"""

from ml_backend.logs import configure_logging
from ml_backend.config import Settings
from ml_backend.web.server import create_app

settings = Settings.from_env()
configure_logging(settings.log_level, [settings.label_studio_api_key, settings.basic_auth_pass])
app = create_app(settings)
