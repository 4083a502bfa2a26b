"""A bounded load test: N concurrent /predict requests against a gunicorn-served backend on loopback.

    python -m tools.loadtest --requests 50 --concurrency 50
    python -m tools.loadtest --selection 1000   # "Retrieve Predictions" on 1,000 tasks

With --selection, one /predict carries N tasks, as Label Studio sends a Data Manager selection: once
before any segmentation exists (timed on the first --cold tasks only) and once after the
segmentation job has written every task's segmentation (timed on all N).

It prepares its own MODEL_DIR (a project, CamVid val images as tasks, a head trained on a few of
their ground-truth pixels, tiny backbone), starts gunicorn on a free loopback port, sends the
requests once, prints one JSON line (errors, p50/p95/max latency, throughput) and stops gunicorn.
Nothing else is contacted; the request count and the time are bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import requests
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def prepare(model_dir: Path, data: Path, images: int, resolution: int, count: int = 0) -> tuple[list[dict], str]:
    """A project whose tasks are CamVid val images and whose current head exists: what /predict needs.
    `count` tasks (at least `images`) cycle through the `images` distinct images."""
    from ml_backend.label_studio.label_config import SHIPPED_CONFIG, parse_label_config
    from ml_backend.state.store import Store
    from ml_backend.state.workspace import ProjectFiles
    from model.backbones import load_unet
    from model.datasets import load_camvid
    from model.features import DiffusionFeatureExtractor, FeatureConfig
    from model.head import TrainConfig, train_head
    from model.preprocessing import resize_image

    config = SHIPPED_CONFIG.read_text()
    store, files = Store(model_dir / "state.sqlite3"), ProjectFiles(model_dir, 1)
    store.save_project(1, config, asdict(parse_label_config(config)))
    ds = load_camvid(data, "val").head(images)
    extractor = DiffusionFeatureExtractor(load_unet("tiny"), FeatureConfig(resolution=resolution))
    feats, labels, tasks = [], [], []
    rng = np.random.default_rng(0)
    (files.root / "originals").mkdir(exist_ok=True)
    for i in range(len(ds)):
        task = i + 1
        with Image.open(ds.image_paths[i]) as im:
            original = im.convert("RGB")
        original.save(files.root / "originals" / f"{task}.png")
        files.save_image(task, resize_image(original, resolution))
        store.upsert_tasks(1, [(task, f"/data/upload/1/{ds.image_paths[i].name}")])
        store.set_task_image(1, task, original.width, original.height, "ready")
        truth = ds.labels(i, resolution).ravel()
        pixels = rng.choice(np.flatnonzero(truth != 255), 20, replace=False)
        feats.append(extractor.maps(ds.image(i, resolution))[0].at(pixels))
        labels.append(torch.from_numpy(truth[pixels].astype(np.int64)))
        tasks.append({"id": task, "data": {"image": f"/data/upload/1/{ds.image_paths[i].name}"}, "project": 1})
    for task in range(len(ds) + 1, count + 1):  # more tasks showing the same images
        source = (task - 1) % len(ds) + 1
        for folder in (files.root / "originals", files.images):
            (folder / f"{task}.png").write_bytes((folder / f"{source}.png").read_bytes())
        row = store.task(1, source)
        store.upsert_tasks(1, [(task, row["image_url"])])
        store.set_task_image(1, task, row["width"], row["height"], "ready")
        tasks.append({**tasks[source - 1], "id": task})
    head, report = train_head(torch.cat(feats), torch.cat(labels), ds.num_classes, TrainConfig(max_epochs=20))
    path = files.head_path("head-1")
    torch.save(head.checkpoint(), path)
    store.add_head(1, "head-1", 0, str(path), len(torch.cat(labels)), report.as_dict())
    return tasks, config


def selection(url: str, tasks: list[dict], config: str, model_dir: Path, args) -> int:
    """One /predict for a selection of tasks: cold (segmenting each), then after the segmentation job."""
    from ml_backend.config import Settings
    from ml_backend.label_studio.segmentations import segmentation
    from ml_backend.services import Services

    def predict(chosen: list[dict]) -> float:
        t = time.perf_counter()
        r = requests.post(url + "/predict", json={"tasks": chosen, "project": "1.0", "label_config": config},
                          timeout=args.timeout)
        seconds = time.perf_counter() - t
        results = r.json()["results"] if r.status_code == 200 else []
        if len(results) != len(chosen) or any(not x["result"] for x in results):
            raise SystemExit(f"/predict failed: {r.status_code} {r.text[:300]}")
        return seconds

    cold = tasks[: args.cold]
    cold_s = predict(cold)
    services = Services.create(Settings(model_dir=model_dir, backbone="tiny", resolution=args.resolution))
    head = services.store.current_head(1)
    t = time.perf_counter()
    for task in tasks:  # what the segmentation job computes after a new head (without the push)
        segmentation(services, 1, task["id"], head)
    job_s = time.perf_counter() - t
    warm_s = predict(tasks)
    print(json.dumps({
        "benchmark": "predict-selection", "backbone": "tiny", "resolution": args.resolution, "tasks": len(tasks),
        "cold_tasks": len(cold), "cold_s": cold_s, "cold_s_per_task": cold_s / len(cold),
        "segmentation_job_s": job_s, "segmentation_job_s_per_task": job_s / len(tasks),
        "after_job_s": warm_s, "after_job_s_per_task": warm_s / len(tasks)}))
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.loadtest", description=__doc__)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--images", type=int, default=8, help="distinct tasks the requests cycle through")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--threads", type=int, default=8, help="gunicorn threads (one worker process)")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "datasets" / "camvid"))
    parser.add_argument("--timeout", type=float, default=300, help="seconds for the whole run")
    parser.add_argument("--selection", type=int, default=0,
                        help="instead of the load: one /predict with this many tasks, cold and after the segmentation job")
    parser.add_argument("--cold", type=int, default=50, help="with --selection: tasks in the cold request")
    args = parser.parse_args(argv)
    if args.requests > 1000 or args.concurrency > 200 or args.selection > 5000:
        parser.error("keep it bounded: at most 1000 requests, 200 concurrent, a selection of 5000")

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model_dir"
        tasks, config = prepare(model_dir, Path(args.data), args.images, args.resolution, args.selection)
        port = free_port()
        env = {**os.environ, "MODEL_DIR": str(model_dir), "BACKBONE": "tiny", "RESOLUTION": str(args.resolution),
               "LABEL_STUDIO_API_KEY": "", "LOG_LEVEL": "WARNING"}
        log = open(Path(tmp) / "gunicorn.log", "w")
        server = subprocess.Popen([sys.executable, "-m", "gunicorn", "--workers", "1", "--threads", str(args.threads),
                                   "--timeout", "300", "--bind", f"127.0.0.1:{port}", "ml_backend.web.wsgi:app"],
                                  cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 120
            while True:
                try:
                    if requests.get(url + "/health", timeout=2).ok:
                        break
                except requests.RequestException:
                    pass
                if time.time() > deadline or server.poll() is not None:
                    raise SystemExit(f"gunicorn did not start:\n{(Path(tmp) / 'gunicorn.log').read_text()[-2000:]}")
                time.sleep(0.5)

            if args.selection:
                return selection(url, tasks, config, model_dir, args)

            def one(k: int) -> tuple[float, str | None]:
                body = {"tasks": [tasks[k % len(tasks)]], "project": "1.0", "label_config": config}
                t = time.perf_counter()
                try:
                    r = requests.post(url + "/predict", json=body, timeout=args.timeout)
                    ok = r.status_code == 200 and r.json()["results"][0]["model_version"] == "head-1"
                    return time.perf_counter() - t, None if ok else f"{r.status_code}: {r.text[:200]}"
                except requests.RequestException as exc:
                    return time.perf_counter() - t, f"{type(exc).__name__}: {exc}"

            started = time.perf_counter()
            with ThreadPoolExecutor(args.concurrency) as pool:
                results = list(pool.map(one, range(args.requests)))
            wall = time.perf_counter() - started
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(30)
    latencies = sorted(r[0] for r in results)
    errors = [r[1] for r in results if r[1]]
    print(json.dumps({
        "benchmark": "predict-load", "requests": args.requests, "concurrency": args.concurrency,
        "gunicorn": f"1 worker x {args.threads} threads", "backbone": "tiny", "resolution": args.resolution,
        "errors": len(errors), "first_error": errors[0] if errors else None,
        "p50_s": statistics.median(latencies), "p95_s": latencies[max(0, int(0.95 * len(latencies)) - 1)],
        "max_s": latencies[-1], "wall_s": wall, "requests_per_s": args.requests / wall}))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
