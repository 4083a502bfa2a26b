"""Label Studio's ML backend protocol over HTTP (Flask 3).

We implement the protocol ourselves rather than depend on label-studio-ml: its last PyPI release
(1.0.9, 2023) pins Flask 1.1.2, werkzeug 2.0.2 and Jinja2 3.0.3, which conflict with
label-studio-sdk 2.x and are past their security support. The routes and payloads follow what
Label Studio 1.23 sends (ml/api_connector.py) and the model class keeps label-studio-ml's shape.

Routes: GET /health (and /), POST /setup, POST /predict, POST /webhook, POST /train (older Label
Studio), GET|POST /versions, POST /versions/pin, GET /metrics, GET /metrics/<project>/curve.png.
Bodies are read and checked by ml_backend.web.payloads; bad requests get a 4xx with a JSON message,
bodies over MAX_REQUEST_MB a 413 (chunked ones too), compressed bodies a 415, and while the job
queue (Redis) is down whatever needs it a 503 that says so. With BASIC_AUTH every route but /health needs the credentials.
"""

from __future__ import annotations

import errno
import hmac
import logging
import sqlite3

from flask import Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from ml_backend.web import payloads
from ml_backend.label_studio.annotations import PeriodicReconcile
from ml_backend.web.backend import ActiveLearningBackend
from ml_backend.config import Settings
from ml_backend.web.echo import quote
from ml_backend.state.database import StoreUnavailable
from ml_backend.jobs.runners import InProcessRunner, QueueUnavailable
from ml_backend.label_studio.label_config import LabelConfigError
from ml_backend.label_studio.client import LabelStudioUnavailable
from ml_backend.label_studio.images import ImageUnavailable
from ml_backend.jobs.loop import handle_job
from ml_backend.web.payloads import RequestError
from ml_backend.services import Services
from ml_backend.state.versions import UnknownVersion
from model.backbones import CheckpointError

log = logging.getLogger(__name__)


def _body() -> bytes:
    """The request body. Werkzeug refuses a Content-Length over MAX_REQUEST_MB, but cuts a chunked body
    (no Content-Length) at the limit and returns what came before it: a body that reaches the limit
    is taken as one that went past it."""
    data = request.get_data(cache=True)
    if request.content_length is None and len(data) >= current_app.config["MAX_CONTENT_LENGTH"]:
        raise RequestEntityTooLarge()
    return data


def _json_body() -> dict:
    return payloads.json_object(_body())


STORAGE_FULL = ("the backend cannot write to MODEL_DIR: its disk is full. Nothing is lost: Label Studio keeps what "
                "was sent, and the backend reads it back once it can write again (RECONCILE_SECONDS)")


STORE_DOWN = ("Nothing is lost: Label Studio keeps what was sent, and the backend reads it back once its database "
              "answers again (RECONCILE_SECONDS)")


def storage_full(exc: BaseException) -> bool:
    """SQLite's "database or disk is full", or a file write that found no space."""
    return (isinstance(exc, sqlite3.OperationalError) and "full" in str(exc)) or \
        (isinstance(exc, OSError) and exc.errno == errno.ENOSPC)


def explained(status: int, message: str, level: int):
    """An error answer whose message is also its reason phrase (what Label Studio's dialogs show), logged."""
    log.log(level, "%s %s: %d %s", request.method, request.path, status, message)
    response = jsonify({"error": message})
    response.status = f"{status} {reason_phrase(message)}"
    return response


def credentials_match(auth, user: str, password: str) -> bool:
    """Basic-auth check on bytes (any characters), user and password compared together so that the
    time taken does not tell which of them was wrong."""
    if auth is None or auth.type != "basic":
        return False
    given = [(auth.username or "").encode(), (auth.password or "").encode()]
    return hmac.compare_digest(given[0], user.encode()) & hmac.compare_digest(given[1], password.encode())


def reason_phrase(message: str, limit: int = 600) -> str:
    """A 400's or 503's message as its HTTP reason phrase (one line of ASCII). Label Studio shows a
    refused /setup in the model dialog as requests' "400 Client Error: <reason phrase> for url: ...",
    never the body, so the reason phrase is where a bad label config or extra param, or a job queue
    that is down, can be named."""
    text = " ".join(message.split()).encode("ascii", "replace").decode()
    return text if len(text) <= limit else text[:limit - 3] + "..."


def create_backend(settings: Settings) -> ActiveLearningBackend:
    services = Services.create(settings)
    if settings.redis_url:
        from ml_backend.jobs.rq_runner import RedisRunner  # imported only when scaling out

        runner = RedisRunner(services.store, settings.redis_url)
        runner.watch()  # requeues the store's unfinished jobs now and whenever Redis comes back
    else:
        runner = InProcessRunner(services.store)
        runner.handler = lambda project, kind, payload: handle_job(services, runner, project, kind, payload)
        runner.resume()
    for project in services.store.projects():  # what Label Studio got while this backend was not listening
        if services.has_credentials(project):
            log.info("project %s: reconciling with Label Studio after start", project)
            try:
                runner.submit(project, "sync")
            except QueueUnavailable as exc:  # recorded in the store: queued when Redis is back
                log.warning("project %s: %s", project, exc)
    backend = ActiveLearningBackend(services, runner)
    backend.reconcile = PeriodicReconcile(services, runner, settings.reconcile_seconds)  # a thread for the process's life
    return backend


def create_app(settings: Settings | None = None, backend: ActiveLearningBackend | None = None) -> Flask:
    settings = settings or Settings.from_env()
    backend = backend or create_backend(settings)
    app = Flask("ml_backend")
    app.config["backend"] = backend
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_mb * 2 ** 20

    @app.before_request
    def basic_auth():
        if not settings.basic_auth_user or request.path in ("/health", "/"):
            return None
        if not credentials_match(request.authorization, settings.basic_auth_user, settings.basic_auth_pass):
            return Response('{"error": "authentication required"}', 401, {
                "WWW-Authenticate": 'Basic realm="ml-backend"', "Content-Type": "application/json"})
        return None

    @app.before_request
    def plain_bodies_only():
        """Bodies are read as they come; a compressed one would otherwise be "not JSON", without a word
        of why."""
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if request.method == "POST" and encoding != "identity":
            return jsonify({"error": f"compressed request bodies (Content-Encoding: {quote(encoding)}) are not "
                                     "accepted; send plain JSON"}), 415
        return None

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc):
        return jsonify({"error": f"the request body is over MAX_REQUEST_MB ({settings.max_request_mb} MB)"}), 413

    @app.errorhandler(RequestError)
    @app.errorhandler(LabelConfigError)
    def bad_request(exc):
        return explained(400, str(exc), logging.WARNING)

    @app.errorhandler(ImageUnavailable)
    def no_image(exc):
        return jsonify({"error": str(exc)}), 422

    @app.errorhandler(UnknownVersion)
    def no_version(exc):
        return jsonify({"error": str(exc)}), 404

    @app.errorhandler(CheckpointError)
    @app.errorhandler(LabelStudioUnavailable)
    def unavailable(exc):
        log.error("%s %s: 503 %s", request.method, request.path, exc)
        return jsonify({"error": str(exc)}), 503

    @app.errorhandler(QueueUnavailable)
    def queue_down(exc):
        return explained(503, str(exc), logging.WARNING)

    @app.errorhandler(StoreUnavailable)
    def store_down(exc):
        return explained(503, f"{exc}. {STORE_DOWN}", logging.ERROR)

    @app.errorhandler(HTTPException)
    def http_error(exc):
        return jsonify({"error": exc.description}), exc.code

    @app.errorhandler(Exception)
    def crash(exc):
        if storage_full(exc):
            return explained(503, STORAGE_FULL, logging.ERROR)
        # the message may quote another server's answer: it goes to the log, not to the caller
        log.exception("%s %s failed", request.method, request.path)
        return jsonify({"error": f"internal error ({type(exc).__name__}); the backend's log has the details"}), 500

    @app.get("/")
    @app.get("/health")
    def health():
        return jsonify(backend.health())

    @app.post("/setup")
    def setup():
        data = _json_body()
        if "project" not in data:
            raise RequestError("/setup needs 'project'")
        return jsonify(backend.setup(data["project"], data.get("schema") or data.get("label_config"),
                                     data.get("hostname"), data.get("access_token"),
                                     authenticated=bool(settings.basic_auth_user),
                                     extra_params=data.get("extra_params")))

    @app.post("/predict")
    def predict():
        data = _json_body()
        params = data.get("params") or {}
        if not isinstance(params, dict):
            raise RequestError("'params' must be an object")
        results = backend.predict(data.get("tasks"), params.get("context"), data.get("project"),
                                  data.get("label_config"))
        return jsonify({"results": results, "model_version": results[0].get("model_version") if results else None})

    @app.post("/webhook")
    def webhook():
        data = _json_body()
        action = data.get("action")
        if not isinstance(action, str) or not action:
            raise RequestError("webhook payload needs an 'action'")
        result = backend.fit(action, data)
        return jsonify({"result": result, "status": result.get("status", "ok")}), 201

    @app.post("/train")
    def train():
        """Older Label Studio versions post training requests here instead of a START_TRAINING webhook."""
        data = _json_body()
        if "project" not in data:
            raise RequestError("/train needs 'project'")
        result = backend.fit("START_TRAINING", {"project": data["project"]})
        return jsonify({"result": result, "job": result.get("job")}), 201

    @app.route("/versions", methods=["GET", "POST"])
    def versions():
        project = payloads.versions_project(_body(), request.args.get("project"))
        return jsonify(backend.versions(project))

    @app.post("/versions/pin")
    def pin():
        """Make a head the current one (roll back, or forward again): {"version", "project" (optional)}."""
        return jsonify(backend.pin(_json_body())), 202

    @app.get("/metrics")
    def metrics():
        return jsonify(backend.metrics())

    @app.get("/metrics/<project>/curve.png")
    def curve(project):
        return Response(backend.curve_png(project), 200, {"Content-Type": "image/png", "Cache-Control": "no-store"})

    return app
