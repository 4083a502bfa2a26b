"""Real servers for the integration tests: Label Studio 1.23.2 in its own virtualenv, and the backend
as a separate process, both on loopback ports picked at random."""

from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.conftest import REPO

# Outside the clone, so that every clone (and a CI that keeps ~/.cache) installs it once; LABEL_STUDIO_VENV moves it.
LS_VENV = Path(os.environ.get("LABEL_STUDIO_VENV") or
               Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edald-backend" / "label-studio-venv")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen, log: Path, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise RuntimeError(f"{what} not up after {timeout}s:\n{log.read_text()[-4000:]}")


def ensure_label_studio() -> Path:
    """label-studio==1.23.2 in LS_VENV with the dependencies pinned in requirements-label-studio.txt,
    installed once per version of that file and reused by later runs of any clone."""
    exe = LS_VENV / "bin" / "label-studio"
    pins = REPO / "requirements-label-studio.txt"
    marker = LS_VENV / f".installed-{hashlib.sha256(pins.read_bytes()).hexdigest()[:16]}"
    LS_VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(LS_VENV.parent / f"{LS_VENV.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not marker.exists():
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(LS_VENV)], check=True)
            subprocess.run([str(LS_VENV / "bin" / "pip"), "install", "-q", "-r", str(pins)], check=True, timeout=1800)
            marker.touch()
    return exe


@dataclass
class LabelStudio:
    url: str
    token: str
    process: subprocess.Popen
    log: Path
    email: str = "admin@example.com"
    password: str = ""

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Token {self.token}"}

    def api(self, method: str, path: str, **kw) -> requests.Response:
        """A call as the test's person makes it, who tries again after Label Studio's 500: on SQLite
        it answers 500 ("database is locked", written nothing) when the backend's writes hold the
        lock, as one CI run saw on the second Connect Model of test_team_loop.py."""
        for attempt in range(3):
            r = requests.request(method, self.url + path, headers=self.headers, timeout=60, **kw)
            if r.status_code != 500:
                break
            time.sleep(1 + attempt)
        if r.status_code >= 400:
            raise AssertionError(f"{method} {path}: {r.status_code} {r.text[:500]}")
        return r


@contextmanager
def label_studio_server(data_dir: Path, defaults: bool = False):
    """Label Studio on a loopback port with an admin user. With `defaults`, as a new user starts it
    from the README: legacy tokens off (the API takes personal access tokens only), sign-up open;
    only loopback ML backends and image URLs are allowed. Otherwise with a legacy token preset."""
    exe = ensure_label_studio()
    port, token, password = free_port(), secrets.token_hex(20), secrets.token_hex(8)
    log = data_dir / "label-studio.log"
    env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir), "LABEL_STUDIO_USERNAME": "admin@example.com",
           "LABEL_STUDIO_PASSWORD": password, "ML_BLOCK_LOCAL_IP": "false", "SSRF_PROTECTION_ENABLED": "false"}
    if defaults:
        token = ""
        env.pop("LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN", None)
        env.pop("LABEL_STUDIO_USER_TOKEN", None)
    else:
        env.update({"LABEL_STUDIO_USER_TOKEN": token, "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
                    "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true"})
    env.pop("LABEL_STUDIO_API_KEY", None)
    with open(log, "w") as out:
        proc = subprocess.Popen([str(exe), "start", "--no-browser", "--host", "127.0.0.1", "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_for(f"http://127.0.0.1:{port}/health", proc, log, 600, "Label Studio")
        yield LabelStudio(f"http://127.0.0.1:{port}", token, proc, log, password=password)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


@dataclass
class Backend:
    url: str
    process: subprocess.Popen
    log: Path
    env: dict


def start_backend(model_dir: Path, env: dict, port: int | None = None, module: str = "ml_backend") -> Backend:
    """`python -m <module>` (the backend, or a test's variant of it) on `port`, answering /health."""
    port = port or free_port()
    full = {**os.environ, "BACKBONE": "tiny", "RESOLUTION": "64", "CANDIDATES": "500", "LOCAL_K": "10",
            "MODEL_DIR": str(model_dir), "PORT": str(port), "HOST": "127.0.0.1", "LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1", **env}
    model_dir.mkdir(parents=True, exist_ok=True)
    log = model_dir.parent / f"backend-{port}.log"
    with open(log, "a") as out:
        proc = subprocess.Popen([sys.executable, "-m", module], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                env=full, start_new_session=True)
    backend = Backend(f"http://127.0.0.1:{port}", proc, log, full)
    wait_for(backend.url + "/health", proc, log, 120, "backend")
    return backend


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        os.killpg(process.pid, sig)
        process.wait(30)


def wait_until(condition, timeout: float, what: str, interval: float = 1.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class ImageHost:
    """A plain HTTP server on a loopback port in a thread of the test, standing in for the hosts task
    images live on: `routes` maps a path to a function that answers the request (a handler of
    http.server), so a test can serve an image, a 404, a redirect loop or a body that drips. Every
    request is recorded as (path, headers)."""

    def __init__(self, routes: dict):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        host = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                host.requests.append((self.path, dict(self.headers)))
                answer = routes.get(self.path)
                if answer is None:
                    self.send_error(404)
                    return
                try:
                    answer(self)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up: expected in these tests
                    pass

            def log_message(self, *args):
                pass

        self.requests: list[tuple[str, dict]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ImageHost:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def send_bytes(data: bytes, status: int = 200, content_type: str = "image/png"):
    def answer(request):
        request.send_response(status)
        request.send_header("Content-Type", content_type)
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)
    return answer


def redirect_to(location: str):
    def answer(request):
        request.send_response(302)
        request.send_header("Location", location)
        request.send_header("Content-Length", "0")
        request.end_headers()
    return answer


def drip(interval: float, headers_too: bool = False):
    """A body (or, with headers_too, the headers themselves) sent one byte every `interval` seconds,
    forever: each read returns in time, the download never ends."""
    def answer(request):
        if headers_too:
            request.wfile.write(b"HTTP/1.1 200 OK\r\n")
            while True:
                request.wfile.write(b"X-Slow: 1\r\n")
                request.wfile.flush()
                time.sleep(interval)
        request.send_response(200)
        request.send_header("Content-Length", str(10 ** 6))
        request.end_headers()
        while True:
            request.wfile.write(b"x")
            request.wfile.flush()
            time.sleep(interval)
    return answer
