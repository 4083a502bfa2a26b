"""How a project's costs grow with its size: N tasks through the backend against a real Label Studio.

    python -m tools.scale --label-studio-url http://localhost:8080 --api-key TOKEN --tasks 100 1000

For each N, a new Label Studio project of N 64x64 images (CamVid train images, cycled and resized,
when --data holds them; else generated), served by a loopback image host in this process, and a
backend started on a free port with its own MODEL_DIR and the settings the issue measured with
(BACKBONE=tiny RESOLUTION=32 CANDIDATES=200 BUDGET=10), connected through /api/ml. Round 0 is
answered with a class drawn per point from the seed: the benchmark measures cost, not accuracy.
One JSON line per N:
- round0 / round1: seconds from connecting (round 0) or from the last answer (round 1) until the
  round is open, and the seconds of each stage /health showed (polled every 0.5 s);
- segmentation: seconds from round 1 open until head-1's segmentation of every image is in Label Studio;
- label_studio_calls of each phase (from /metrics), the store's and MODEL_DIR's bytes and the
  backend's peak RSS.
Label Studio needs SSRF_PROTECTION_ENABLED=false and ML_BLOCK_LOCAL_IP=false for loopback addresses.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import requests
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {"BACKBONE": "tiny", "RESOLUTION": "32", "CANDIDATES": "200", "BUDGET": "10", "EXPANDER": "none",
            "RECONCILE_SECONDS": "0", "LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"}


def images(data: Path | None, count: int = 64) -> list[bytes]:
    """`count` 64x64 PNGs: CamVid train images when `data` has them, else seeded noise in blocks."""
    files = sorted((data / "train").glob("*.png"))[:count] if data else []
    pictures = [Image.open(f).convert("RGB").resize((64, 64)) for f in files]
    rng = np.random.default_rng(0)
    while len(pictures) < count:
        blocks = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        pictures.append(Image.fromarray(blocks).resize((64, 64), Image.NEAREST))
    out = []
    for picture in pictures:
        buf = io.BytesIO()
        picture.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


class ImageHost:
    """/<i>.png -> the i-th image, cycled, on a loopback port."""

    def __init__(self, pngs: list[bytes]):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                body = pngs[int(self.path.strip("/").split(".")[0]) % len(pngs)]
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Timeline:
    """The stages /health shows for a project, with when each began, polled on a thread."""

    def __init__(self, backend: str, project: int):
        self.backend, self.project, self.seen = backend, project, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            try:
                stage = requests.get(self.backend + "/health", timeout=5).json()["progress"].get(
                    str(self.project), {}).get("stage")
            except (requests.RequestException, ValueError, KeyError):
                continue
            if stage and (not self.seen or self.seen[-1][1] != stage):
                self.seen.append((time.time(), stage))

    def stages(self, start: float, end: float) -> dict[str, float]:
        """Seconds per stage between `start` and `end` (a stage that recurs is summed)."""
        self._stop.set()
        self._thread.join(5)
        out: Counter[str] = Counter()
        marks = [(max(t, start), s) for t, s in self.seen if t < end] + [(end, None)]
        for (t, stage), (t_next, _) in zip(marks, marks[1:]):
            out[stage] += round(t_next - t, 1)
        return dict(out)


class Run:
    """One project of N tasks and its backend."""

    def __init__(self, args, n: int, host: ImageHost, workdir: Path):
        self.ls, self.headers = args.label_studio_url.rstrip("/"), {"Authorization": f"Token {args.api_key}"}
        self.n, self.rng = n, np.random.default_rng(args.seed)
        self.model_dir = workdir / f"model-{n}"
        from ml_backend.label_studio.label_config import SHIPPED_CONFIG

        config = SHIPPED_CONFIG.read_text()
        self.project = self.api("POST", "/api/projects", json={"title": f"scale {n}", "label_config": config})["id"]
        self.api("POST", f"/api/projects/{self.project}/import", json=[{"image": f"{host.url}/{i}.png"} for i in range(n)])
        port = free_port()
        self.backend = f"http://127.0.0.1:{port}"
        env = {**os.environ, **SETTINGS, "MODEL_DIR": str(self.model_dir), "PORT": str(port), "HOST": "127.0.0.1",
               "LABEL_STUDIO_URL": self.ls, "LABEL_STUDIO_API_KEY": args.api_key}
        self.log = open(workdir / f"backend-{n}.log", "w")
        self.process = subprocess.Popen([sys.executable, "-m", "ml_backend"], cwd=REPO, env=env, stdout=self.log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        self.wait(lambda: requests.get(self.backend + "/health", timeout=2).ok, 120, "the backend")

    def api(self, method: str, path: str, **kw):
        r = requests.request(method, self.ls + path, headers=self.headers, timeout=600, **kw)
        r.raise_for_status()
        return r.json() if r.content else None

    def wait(self, condition, seconds: float, what: str):
        end = time.time() + seconds
        while time.time() < end:
            try:
                if value := condition():
                    return value
            except (requests.RequestException, ValueError, KeyError):
                pass
            if self.process.poll() is not None:
                raise RuntimeError(f"the backend exited while waiting for {what}")
            time.sleep(0.5)
        raise TimeoutError(f"{what} not within {seconds:.0f} s")

    def metrics(self) -> dict:
        return requests.get(self.backend + "/metrics", timeout=60).json()

    def round_open(self, index: int) -> bool:
        status = self.metrics()["projects"].get(str(self.project)) or {}
        return status.get("round") == index and status.get("round_status") == "open"

    def phase(self, start_action, until, seconds: float, what: str) -> dict:
        timeline = Timeline(self.backend, self.project)
        calls = Counter(self.metrics()["label_studio_calls"])
        start = start_action()
        self.wait(until, seconds, what)
        end = time.time()
        return {"seconds": round(end - start, 1), "stages": timeline.stages(start, end),
                "label_studio_calls": dict(Counter(self.metrics()["label_studio_calls"]) - calls)}

    def connect(self) -> float:
        self.api("POST", "/api/ml", json={"project": self.project, "url": self.backend, "title": "scale"})
        return time.time()

    def answer(self) -> float:
        """Every round-0 query point gets a class drawn from the seed; returns when the last was sent."""
        from ml_backend.label_studio.label_config import SHIPPED_CONFIG, parse_label_config

        version = f"p{self.project}-round-0"
        classes = parse_label_config(SHIPPED_CONFIG.read_text()).classes
        preds = [p for p in self.api("GET", f"/api/predictions/?project={self.project}") if p["model_version"] == version]
        for p in preds:
            result = [{**r, "value": {**r["value"], "keypointlabels": [classes[self.rng.integers(len(classes))]]}}
                      for r in p["result"] if r["type"] == "keypointlabels"]
            self.api("POST", f"/api/tasks/{p['task']}/annotations/", json={"result": result})
        return time.time()

    def segmented(self) -> bool:
        from ml_backend.state.store import Store

        store = Store(self.model_dir / "state.sqlite3")
        head = store.current_head(self.project)
        return head is not None and len(store.segmented_tasks(self.project, head["version"])) >= len(
            store.tasks(self.project, "ready"))

    def sizes(self) -> dict:
        store = sum(f.stat().st_size for f in self.model_dir.glob("state.sqlite3*"))
        total = sum(f.stat().st_size for f in self.model_dir.rglob("*") if f.is_file())
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        peak = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
        return {"store_bytes": store, "model_dir_bytes": total, "peak_rss_mb": round(peak / 1024)}

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(30)
        self.log.close()


def measure(args, n: int, host: ImageHost, workdir: Path) -> dict:
    run = Run(args, n, host, workdir)
    try:
        out = {"tasks": n, "settings": SETTINGS}
        out["round0"] = run.phase(run.connect, lambda: run.round_open(0), args.timeout, "round 0")
        out["round1"] = run.phase(run.answer, lambda: run.round_open(1), args.timeout, "round 1")
        out["segmentation"] = run.phase(time.time, run.segmented, args.timeout, "the segmentation")
        out.update(run.sizes())
        return out
    finally:
        run.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label-studio-url", required=True)
    parser.add_argument("--api-key", required=True, help="a legacy token or a personal access token")
    parser.add_argument("--tasks", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "datasets" / "camvid")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=3 * 3600, help="seconds each phase may take")
    args = parser.parse_args(argv)
    host = ImageHost(images(args.data if args.data.is_dir() else None))
    with tempfile.TemporaryDirectory(prefix="scale-") as workdir:
        for n in args.tasks:
            print(json.dumps(measure(args, n, host, Path(workdir))), flush=True)


if __name__ == "__main__":
    main()
