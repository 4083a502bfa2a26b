"""Benchmarks that print numbers: `python -m model bench herding|local|round|features|expansion`.

Every measurement runs in a fresh spawned process, so its peak RSS is its own (data included),
and prints one JSON line. Timings are medians over --repeats runs. Variants of one benchmark run
side by side in the same invocation, because these machines are noisy.

Synthetic features: a seeded Gaussian mixture, L2-normalised like the pipeline's features (the
diffusion features of one image cluster by object and texture; uniform noise would be the worst
case for coverage and unlike real data).
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import resource
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch


def synthetic_features(n: int, dim: int, clusters: int = 100, seed: int = 0, spread: float = 0.6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim), dtype=np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, 4096):  # in blocks: no float64 temporaries of the whole array
        m = min(4096, n - s)
        block = centers[rng.integers(clusters, size=m)] + spread * rng.standard_normal((m, dim), dtype=np.float32)
        out[s:s + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def _child(target: Callable, kwargs: dict, queue) -> None:
    try:
        result = target(**kwargs)
        result["peak_rss_gb"] = round(peak_rss_gb(), 3)
        queue.put(result)
    except Exception as exc:  # reported as a line of its own
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def isolated(target: Callable, **kwargs) -> dict:
    """Run `target(**kwargs)` in a spawned process and return its dict with its peak RSS."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(target, kwargs, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


# herding ----------------------------------------------------------------------------------------
def naive_greedy(kernel: torch.Tensor, base: torch.Tensor, budget: int) -> list[int]:
    """The reference's greedy: every step recomputes every gain over the full kernel."""
    cur = base.clone()
    taken = torch.zeros(kernel.shape[1], dtype=torch.bool)
    order = []
    for _ in range(budget):
        gain = (kernel - cur[:, None]).clamp_(min=0).mean(0)
        gain[taken] = -1e4
        j = int(gain.argmax())
        order.append(j)
        taken[j] = True
        cur = torch.maximum(cur, kernel[:, j])
    return order


def _herding_run(method: str, n: int, dim: int, keep: int, covered: int, seed: int, sketch_dim: int | None = None,
                 exact_objective: bool = True) -> dict:
    from model.herding import RBFKernel, auto_sigma, coverage, herd

    data = synthetic_features(n + covered, dim, seed=seed)
    x, cov = data[:n], data[n:]
    sigma = auto_sigma(torch.from_numpy(x), seed)
    t = time.perf_counter()
    if method == "ours":
        result = herd(x, keep, cov if covered else None, sigma, seed=seed, sketch_dim=sketch_dim)
        order, path, internal = result.order, result.path, result.objective
    elif method == "naive":
        kern = RBFKernel(sigma)
        xt = torch.from_numpy(x)
        order = naive_greedy(kern.matrix(xt), kern.max_over(xt, torch.from_numpy(cov)), keep)
        path, internal = "naive", None
    elif method == "apricot":
        from apricot import FacilityLocationSelection

        if covered:
            raise ValueError("apricot's facility location has no notion of points covered from outside the pool")
        kernel = RBFKernel(sigma).matrix(torch.from_numpy(x)).numpy()
        order = FacilityLocationSelection(keep, metric="precomputed", optimizer="lazy").fit(kernel).ranking
        path, internal = "apricot-lazy", None
    else:
        raise ValueError(method)
    seconds = time.perf_counter() - t
    objective = coverage(x, order, cov if covered else None, sigma) if exact_objective else internal
    return {"method": method, "path": path, "seconds": round(seconds, 3), "objective": objective,
            "selected": len(order), "order_head": [int(i) for i in list(order)[:5]]}


def bench_herding(args) -> None:
    common = dict(n=args.n, dim=args.dim, keep=args.keep, covered=args.covered, seed=args.seed,
                  exact_objective=args.n <= 20000)
    methods = ["ours"] + (["naive"] if args.reference else []) + (["apricot"] if args.apricot else [])
    results = {}
    for method in methods:
        runs = [isolated(_herding_run, method=method, **common) for _ in range(args.repeats if method == "ours" else 1)]
        if any("error" in r for r in runs):
            emit({"benchmark": "herding", "method": method, **runs[0]})
            continue
        best = dict(runs[0], seconds=statistics.median(r["seconds"] for r in runs), repeats=len(runs))
        results[method] = best
        emit({"benchmark": "herding", "n": args.n, "dim": args.dim, "keep": args.keep, "covered": args.covered, **best})
    if "naive" in results:
        ours, naive = results["ours"], results["naive"]
        emit({"benchmark": "herding", "comparison": "ours vs naive", "speedup": round(naive["seconds"] / ours["seconds"], 1),
              "objective_gap": (naive["objective"] - ours["objective"]) / naive["objective"],
              "seconds": ours["seconds"], "reference_seconds": naive["seconds"], "objective": ours["objective"],
              "reference_objective": naive["objective"]})
    if "apricot" in results:
        ours, other = results["ours"], results["apricot"]
        emit({"benchmark": "herding", "comparison": "ours vs apricot", "speedup": round(other["seconds"] / ours["seconds"], 1),
              "objective_gap": (other["objective"] - ours["objective"]) / other["objective"]})


def bench_local(args) -> None:
    exact = None
    for sketch_dim in [None, *args.sketch]:
        runs = [isolated(_herding_run, method="ours", n=args.n, dim=args.dim, keep=args.k, covered=0, seed=args.seed + r,
                         sketch_dim=sketch_dim) for r in range(args.repeats)]
        record = {"benchmark": "local", "n": args.n, "dim": args.dim, "k": args.k, "sketch_dim": sketch_dim,
                  "seconds": statistics.median(r["seconds"] for r in runs), "peak_rss_gb": max(r["peak_rss_gb"] for r in runs),
                  "objective": statistics.median(r["objective"] for r in runs), "repeats": len(runs)}
        if sketch_dim is None:
            exact = [r["objective"] for r in runs]
        else:
            record["objective_ratio_to_exact"] = min(r["objective"] / e for r, e in zip(runs, exact))
        emit(record)


# rounds -----------------------------------------------------------------------------------------
def _round_run(data: str, backbone: str, checkpoint: str | None, resolution: int, images: int | None, candidates: int,
               local_k: int, budget_factor: float, acquisition: str, cache_dir: str, seed: int) -> dict:
    from pathlib import Path

    from model.backbones import load_unet
    from model.datasets import load_dataset
    from model.features import DiffusionFeatureExtractor, FeatureConfig, ImageFeatureSource
    from model.head import TrainConfig, train_head
    from model.selection import RecordCache, RoundConfig, budget_for, run_round

    ds = load_dataset(data, "train").head(images)
    extractor = DiffusionFeatureExtractor(load_unet(backbone, checkpoint), FeatureConfig(resolution=resolution))
    source = ImageFeatureSource(extractor, lambda i: ds.image(i, resolution), [ds.key(i) for i in range(len(ds))])
    cache = RecordCache({"bench": "round", "resolution": resolution, "backbone": backbone}, Path(cache_dir))
    config = RoundConfig(budget=budget_for(len(ds), budget_factor), candidates=candidates, local_k=local_k,
                         acquisition=acquisition, seed=seed)
    out = {}
    t = time.perf_counter()
    r0 = run_round(source, {}, None, config, cache)
    out["round0_seconds"] = time.perf_counter() - t
    labeled: dict[int, list[int]] = {}
    for i, p in r0.queries:
        if ds.labels(i, resolution).ravel()[p] != 255:
            labeled.setdefault(i, []).append(p)
    feats = torch.cat([source.maps(i, (0,))[0].at(np.array(px)) for i, px in sorted(labeled.items())])
    classes = torch.cat([torch.from_numpy(ds.labels(i, resolution).ravel()[np.array(px)].astype(np.int64))
                         for i, px in sorted(labeled.items())])
    head, _ = train_head(feats, classes, ds.num_classes, TrainConfig())
    t = time.perf_counter()
    r1 = run_round(source, {i: np.array(px) for i, px in labeled.items()}, head, config, cache, round_index=1)
    out["round1_seconds"] = time.perf_counter() - t
    out.update(images=len(ds), budget=config.budget, round0_recomputed=r0.images_recomputed,
               round1_recomputed=r1.images_recomputed, round0_stages=r0.seconds, round1_stages=r1.seconds)
    return out


def bench_round(args) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        r = isolated(_round_run, data=args.data, backbone=args.backbone, checkpoint=args.checkpoint,
                     resolution=args.resolution, images=args.images, candidates=args.candidates, local_k=args.local_k,
                     budget_factor=args.budget_factor, acquisition=args.acquisition, cache_dir=tmp, seed=args.seed)
    if "error" not in r:
        r["round1_share_of_round0"] = r["round1_seconds"] / r["round0_seconds"]
    emit({"benchmark": "round", "backbone": args.backbone, "resolution": args.resolution, **r})


# features ---------------------------------------------------------------------------------------
def unet_flops(backbone: str, resolution: int, blocks: tuple[int, ...]) -> float:
    """FLOPs of one forward up to the last feature block, counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    from model.backbones import get_backbone
    from model.unet import GuidedDiffusionUNet

    with torch.device("meta"):
        unet = GuidedDiffusionUNet(get_backbone(backbone).unet)
        x, t = torch.empty(1, 3, resolution, resolution), torch.zeros(1)
        with FlopCounterMode(display=False) as counter:
            unet.decoder_features(x, t, blocks)
    return float(counter.get_total_flops())


def _features_run(backbone: str, resolution: int, batch: int, dtype: str, iterations: int, device: str) -> dict:
    from model.backbones import load_unet
    from model.features import DiffusionFeatureExtractor, FeatureConfig
    from model.unet import GuidedDiffusionUNet

    if backbone == "tiny":
        unet = load_unet("tiny", device=device)
    else:  # random weights are enough for timing: no checkpoint needed
        from model.backbones import get_backbone

        unet = GuidedDiffusionUNet(get_backbone(backbone).unet).to(device).eval().requires_grad_(False)
    amp = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    cfg = FeatureConfig(resolution=resolution, batch_size=batch)
    ex = DiffusionFeatureExtractor(unet, cfg, amp_dtype=amp)
    if device == "cpu" and amp is None:
        ex.amp_dtype = None
    image = np.random.default_rng(0).integers(0, 255, (resolution, resolution, 3), dtype=np.uint8)
    noises = tuple(range(math.ceil(batch / len(cfg.timesteps))))
    ex.maps(image, noises)  # warm-up
    times = []
    for _ in range(iterations):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        ex.maps(image, noises)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    forwards = len(noises) * len(cfg.timesteps)
    seconds = statistics.median(times)
    flops = unet_flops(backbone, resolution, cfg.blocks) * forwards
    return {"device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu", "dtype": dtype,
            "forwards": forwards, "seconds": seconds, "forwards_per_second": forwards / seconds,
            "images_per_second_reference_pass": forwards / seconds / len(cfg.timesteps),
            "tflops_achieved": flops / seconds / 1e12, "gflop_per_forward": flops / forwards / 1e9}


def bench_features(args) -> None:
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    for dtype in args.dtypes:
        r = isolated(_features_run, backbone=args.backbone, resolution=args.resolution, batch=args.batch, dtype=dtype,
                     iterations=args.iterations, device=device)
        emit({"benchmark": "features", "backbone": args.backbone, "resolution": args.resolution, **r})


# expansion --------------------------------------------------------------------------------------
def _expansion_run(kind: str, data: str, images: int, cache_dir: str, phase: str) -> dict:
    """Click latency on CamVid val images at their own size (what an interactive click sees). Phase
    "cold": the first click on each image (the per-image work runs and is written to `cache_dir`), then
    a second click (from memory). Phase "disk": a fresh process clicks the same images, reading the
    per-image work the cold phase wrote."""
    from PIL import Image

    from model.datasets import load_dataset
    from model.expansion import SamExpander, SuperpixelExpander, import_segment_anything

    ds = load_dataset(data, "val")
    if kind == "sam-vit_b":
        build = import_segment_anything()
        torch.manual_seed(0)  # the same random weights in both phases: the same cache directory
        expander = SamExpander(build.sam_model_registry["vit_b"]().eval(), tau=0.5, model_type="vit_b",
                               cache_dir=cache_dir)
    else:
        expander = SuperpixelExpander(cache_dir=cache_dir)
    rng = np.random.default_rng(0)
    first, second = [], []
    for i in range(images):
        with Image.open(ds.image_paths[i]) as im:
            image = np.asarray(im.convert("RGB"))
        for times in (first, second) if phase == "cold" else (first,):
            t = time.perf_counter()
            expander.region(image, int(rng.integers(image.shape[0])), int(rng.integers(image.shape[1])))
            times.append(time.perf_counter() - t)
    out = {"expander": kind, "images": images, "image_size": list(image.shape[:2]), **expander.cache.describe()}
    if phase == "cold":
        return {**out, "cold_median_s": statistics.median(first), "memory_median_s": statistics.median(second)}
    return {**out, "disk_median_s": statistics.median(first)}


def bench_expansion(args) -> None:
    import tempfile

    for kind in ("superpixel", "sam-vit_b"):
        with tempfile.TemporaryDirectory() as cache_dir:
            for phase in ("cold", "disk"):  # each phase in its own process
                emit({"benchmark": "expansion", "phase": phase, **isolated(
                    _expansion_run, kind=kind, data=args.data, images=args.images, cache_dir=cache_dir, phase=phase)})


def add_parser(sub) -> None:
    bench = sub.add_parser("bench", help="benchmarks printing one JSON line per measurement")
    which = bench.add_subparsers(dest="benchmark", required=True)

    p = which.add_parser("herding", help="global herding: ours vs the naive greedy (and apricot)")
    p.add_argument("--n", type=int, default=8000)
    p.add_argument("--dim", type=int, default=6144)
    p.add_argument("--keep", type=int, default=4000)
    p.add_argument("--covered", type=int, default=0)
    p.add_argument("--reference", action="store_true", help="also run the naive greedy (objective_gap, speedup)")
    p.add_argument("--apricot", action="store_true", help="also run apricot-select's lazy facility location")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=bench_herding)

    p = which.add_parser("local", help="per-image herding, exact and sketched")
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--dim", type=int, default=6144)
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--sketch", type=int, nargs="*", default=[64, 128, 256])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=bench_local)

    p = which.add_parser("round", help="round 0 vs round 1 wall time of a full selection")
    p.add_argument("--data", required=True)
    p.add_argument("--backbone", default="tiny")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--images", type=int, default=None, help="first N training images (default: all)")
    p.add_argument("--candidates", type=int, default=1000)
    p.add_argument("--local-k", type=int, default=50)
    p.add_argument("--budget-factor", type=float, default=0.1)
    p.add_argument("--acquisition", default="edald")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=bench_round)

    p = which.add_parser("features", help="UNet feature throughput (random weights)")
    p.add_argument("--backbone", default="imagenet256")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--batch", type=int, default=18, help="UNet inputs per forward (noises x timesteps)")
    p.add_argument("--dtypes", nargs="+", default=["fp32"], choices=["fp32", "fp16", "bf16"])
    p.add_argument("--iterations", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.set_defaults(run=bench_features)

    p = which.add_parser("expansion", help="click-to-mask latency: cold, from memory, from disk in another process")
    p.add_argument("--data", required=True)
    p.add_argument("--images", type=int, default=3, help="CamVid val images, one cold and one warm click each")
    p.set_defaults(run=bench_expansion)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: python -m model bench ...")
