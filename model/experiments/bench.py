"""Benchmarks that print numbers: `python -m model bench herding|local|round|features|precision|gpu|expansion`.

Every measurement runs in a fresh spawned process, so its peak RSS (and peak GPU memory) is its
own (data included), and prints one JSON line. Timings are medians over --repeats runs. Variants of one benchmark run
side by side in the same invocation, because these machines are noisy.

Synthetic features: a seeded Gaussian mixture, L2-normalised like the pipeline's features (the
diffusion features of one image cluster by object and texture; uniform noise would be the worst
case for coverage and unlike real data).
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing as mp
import os
import queue
import resource
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

from model.backbones import BACKBONES, resolve_device
from model.features import DTYPES, FeatureConfig
from model.global_herding import GLOBAL_EXACT_MAX, SHARD_SIZE
from model.herding import RBFKernel, squared_norms

log = logging.getLogger(__name__)


def synthetic_features(n: int, dim: int, clusters: int = 100, seed: int = 0, spread: float = 0.6,
                       dtype=np.float32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim), dtype=np.float32)
    out = np.empty((n, dim), dtype=dtype)
    for s in range(0, n, 4096):  # in blocks: no float64 temporaries of the whole array
        m = min(4096, n - s)
        block = centers[rng.integers(clusters, size=m)] + spread * rng.standard_normal((m, dim), dtype=np.float32)
        out[s:s + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def _child(target: Callable, kwargs: dict, queue) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        result = target(**kwargs)
        result["peak_rss_gb"] = round(peak_rss_gb(), 3)
        queue.put(result)
    except Exception as exc:  # reported as a line of its own
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def isolated(target: Callable, timeout: float | None = None, **kwargs) -> dict:
    """Run `target(**kwargs)` in a spawned process and return its dict with its peak RSS. A process
    that dies (killed for memory) or outlives `timeout` seconds gives an error dict instead."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=_child, args=(target, kwargs, results))
    proc.start()
    deadline = None if timeout is None else time.monotonic() + timeout
    result = None
    while result is None:
        try:
            result = results.get(timeout=1)
        except queue.Empty:
            if not proc.is_alive():
                try:
                    result = results.get(timeout=1)
                except queue.Empty:
                    result = {"error": f"the measurement process died (exit code {proc.exitcode})"}
            elif deadline is not None and time.monotonic() > deadline:
                proc.terminate()
                result = {"error": f"timed out after {timeout:.0f} s"}
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


def matmul_gflops(dtype: torch.dtype, size: int = 4096, repeats: int = 5) -> float:
    """The machine's matmul rate in `dtype`: a size x size x size product, median of `repeats` after
    a warm-up (2 flops per multiply-add)."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * size ** 3 / statistics.median(times) / 1e9


def _kernel_pass_run(n: int, dim: int, seed: int, min_seconds: float = 10.0, block: int = 512) -> dict:
    """One pass over the n x n kernel in row blocks against all n points (the sparse path's pass),
    timed over whole blocks until `min_seconds` have passed (or all of it) and scaled to n rows;
    the fp32 matmul rate measured before and after it (the machine is shared: the higher is the
    limit), the bf16 rate after."""
    from model.herding import auto_sigma

    x = torch.from_numpy(synthetic_features(n, dim, seed=seed, dtype=np.float16)).float()
    kern, x_sq = RBFKernel(auto_sigma(x, seed)), squared_norms(x)
    before = matmul_gflops(torch.float32)
    rows, t = 0, time.perf_counter()
    while rows < n and time.perf_counter() - t < min_seconds:
        kern(x[rows:rows + block], x, x_sq[rows:rows + block], x_sq)
        rows = min(rows + block, n)
    seconds = (time.perf_counter() - t) * n / rows
    after = matmul_gflops(torch.float32)
    return {"kernel_pass_seconds": seconds, "kernel_pass_rows_timed": rows,
            "kernel_pass_gflops": 2 * n * n * dim / seconds / 1e9, "gflops_fp32": max(before, after),
            "gflops_fp32_before_after": [before, after], "gflops_bf16": matmul_gflops(torch.bfloat16),
            **machine("cpu")}


class Bf16MatmulKernel(RBFKernel):
    """RBFKernel with its inner products from a bf16 GEMM (the rest in float32): what bf16 would
    give the kernel's multiply-adds, measured by the `bf16` variants only (see `_herding_run`)."""

    def __call__(self, x, y, x_sq=None, y_sq=None, out=None):
        x_sq = squared_norms(x) if x_sq is None else x_sq
        y_sq = squared_norms(y) if y_sq is None else y_sq
        inv = 1.0 / self.sigma ** 2
        e = (x.bfloat16() @ y.bfloat16().T).to(x.dtype).mul_(2.0 * inv)
        e = e.sub_(y_sq[None, :] * inv).sub_(x_sq[:, None] * inv).clamp_(max=0.0).exp_()
        return out.copy_(e) if out is not None else e


def herding_pool(n: int, dim: int, per_image: int, seed: int, features_file: str | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """A merged pool in float16, as a round keeps it, and each row's image: `features_file` (saved by
    `real_pool`) or the synthetic mixture with rows given to images of `per_image` in order."""
    if features_file:
        with np.load(features_file) as z:
            return z["features"], z["images"]
    return synthetic_features(n, dim, seed=seed, dtype=np.float16), np.arange(n) // per_image


def real_pool(data: str, backbone: str, resolution: int, candidates: int, local_k: int, images: int | None,
              seed: int, path: str) -> dict:
    """Round 0's merged pool of a real dataset (every image's local picks, their float16 reference
    features), saved to `path` for the herding runs."""
    from model.datasets import load_dataset
    from model.features import DiffusionFeatureExtractor, ImageFeatureSource
    from model.selection import RoundConfig, image_record

    ds = load_dataset(data, "train").head(images)
    extractor = DiffusionFeatureExtractor(timing_unet(backbone, None, "cpu"), FeatureConfig(resolution=resolution))
    source = ImageFeatureSource(extractor, lambda i: ds.image(i, resolution), [ds.key(i) for i in range(len(ds))])
    config = RoundConfig(budget=1, candidates=candidates, local_k=local_k, acquisition=None, seed=seed)
    records = [image_record(source, i, (), config, need_draws=False)[0] for i in range(len(ds))]
    features = np.concatenate([r.reference for r in records])
    np.savez(path, features=features, images=np.repeat(np.arange(len(records)), [len(r.picks) for r in records]))
    return {"images": len(ds), "points": len(features), "dim": features.shape[1]}


def _herding_run(method: str, n: int, dim: int, keep: int, covered: int, seed: int, sketch_dim: int | None = None,
                 exact_objective: bool = True, exact_max: int = GLOBAL_EXACT_MAX, shard_size: int = 0,
                 per_image: int = 50, features_file: str | None = None) -> dict:
    """One selection on the pool's first n rows (the rest: `covered` labeled points): "ours" the
    exact greedy, "sharded" `sharded_herding` in shards of `shard_size`, "naive" the reference's
    greedy, "apricot" apricot-select's; "bf16" and "sharded-bf16" the first two with the kernel's
    GEMM in bf16 (the benchmark's process only: `Bf16MatmulKernel` replaces the kernel class)."""
    import model.global_herding as global_module
    import model.herding as herding_module
    from model.herding import auto_sigma, coverage, herd

    pool, images = herding_pool(n + covered, dim, per_image, seed, features_file)
    x16, cov16, images = pool[:n], pool[n:], images[:n]
    cov = cov16.astype(np.float32)
    x = x16 if method.startswith("sharded") else x16.astype(np.float32)  # sharded_herding takes float16 as rounds do
    sigma = auto_sigma(torch.from_numpy(x16), seed)
    if method.endswith("bf16"):
        herding_module.RBFKernel = global_module.RBFKernel = Bf16MatmulKernel
    t, cpu = time.perf_counter(), time.process_time()
    if method in ("ours", "bf16"):
        result = herd(x, keep, cov if covered else None, sigma, seed=seed, sketch_dim=sketch_dim)
        order, path, internal = result.order, result.path, result.objective
    elif method in ("sharded", "sharded-bf16"):
        order = global_module.sharded_herding(torch.from_numpy(x), keep, torch.from_numpy(cov16), images, sigma,
                                              exact_max=exact_max, shard_size=shard_size, seed=seed)
        path, internal = f"sharded-{shard_size}", None
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
    seconds, cpu_seconds = time.perf_counter() - t, time.process_time() - cpu
    herding_module.RBFKernel = global_module.RBFKernel = RBFKernel
    objective = coverage(x, order, cov if covered else None, sigma) if exact_objective else internal
    return {"method": method, "path": path, "seconds": round(seconds, 3), "cpu_seconds": round(cpu_seconds, 3),
            "objective": objective,
            "selected": len(order), "order": [int(i) for i in order], **machine("cpu")}


def bench_herding(args) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        features_file, n = None, args.n
        if args.data:
            features_file = f"{tmp}/pool.npz"
            built = isolated(real_pool, data=args.data, backbone=args.backbone, resolution=args.resolution,
                             candidates=args.candidates, local_k=args.local_k, images=args.images, seed=args.seed,
                             path=features_file)
            emit({"benchmark": "herding", "pool": "real", "data": args.data, "backbone": args.backbone,
                  "resolution": args.resolution, "candidates": args.candidates, "local_k": args.local_k, **built})
            if "error" in built:
                return
            n = built["points"] - args.covered
        if args.limit:
            limit = isolated(_kernel_pass_run, n=n, dim=args.dim, seed=args.seed)
            if "error" not in limit:
                limit["share_of_matmul_limit"] = limit["kernel_pass_gflops"] / limit["gflops_fp32"]
            emit({"benchmark": "herding", "measure": "kernel pass", "n": n, "dim": args.dim,
                  "kernel_pass_macs": n * n * args.dim, "symmetric_macs": n * n * args.dim // 2, **limit})
        _herding_methods(args, n, features_file)


def _herding_methods(args, n: int, features_file: str | None) -> None:
    """Each variant in its own process; "sharded" (and "sharded-bf16") once per shard size, named
    "sharded-<size>"; then each variant against its reference: time, picks in common, objective."""
    common = dict(n=n, dim=args.dim, keep=args.keep, covered=args.covered, seed=args.seed, exact_max=args.exact_max,
                  exact_objective=n * args.keep <= 2e9, per_image=args.per_image, features_file=features_file)
    variants = [("ours", "ours", 0)] if args.exact else []
    variants += [(f"sharded-{size}", "sharded", size) for size in args.shard_size if args.sharded]
    variants += [("bf16", "bf16", 0)] if args.bf16 and args.exact else []
    variants += [(f"sharded-{size}-bf16", "sharded-bf16", size) for size in args.shard_size
                 if args.sharded and args.bf16]
    variants += [("naive", "naive", 0)] if args.reference else []
    variants += [("apricot", "apricot", 0)] if args.apricot else []
    results = {}
    for name, method, size in variants:
        runs = [isolated(_herding_run, timeout=args.timeout, method=method, shard_size=size, **common)
                for _ in range(args.repeats if method in ("ours", "sharded") else 1)]
        if any("error" in r for r in runs):
            emit({"benchmark": "herding", "method": name, "n": n, **next(r for r in runs if "error" in r)})
            continue
        best = dict(runs[0], method=name, seconds=statistics.median(r["seconds"] for r in runs), repeats=len(runs),
                    peak_rss_gb=max(r["peak_rss_gb"] for r in runs))
        results[name] = best
        emit({"benchmark": "herding", "n": n, "dim": args.dim, "keep": args.keep, "covered": args.covered,
              **{k: v for k, v in best.items() if k != "order"}, "order_head": best["order"][:5]})
    pairs = [(name, name.removesuffix("-bf16") if name.endswith("-bf16") else "ours") for name in results
             if name.startswith(("sharded", "bf16"))] + [("ours", name) for name in ("naive", "apricot")]
    for name, reference in pairs:
        if name not in results or reference not in results:
            continue
        result, reference = results[name], results[reference]
        line = {"benchmark": "herding", "comparison": f"{name} vs {reference['method']}",
                "speedup": round(reference["seconds"] / result["seconds"], 2),
                "picks_in_common": len(set(result["order"]) & set(reference["order"])),
                "selected": len(reference["order"]), "identical_picks": result["order"] == reference["order"],
                "seconds": result["seconds"], "reference_seconds": reference["seconds"]}
        if result["objective"] is not None and reference["objective"] is not None:
            line.update(objective_ratio=result["objective"] / reference["objective"],
                        objective_gap=(reference["objective"] - result["objective"]) / reference["objective"])
        emit(line)


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


# models and devices -----------------------------------------------------------------------------
def timing_unet(backbone: str, checkpoint: str | None, device: str | torch.device):
    """The backbone's UNet; random weights when no checkpoint is given (the time does not depend on
    them), built directly on the device so that the 550M-parameter init does not run on the CPU."""
    from model.backbones import get_backbone, load_unet
    from model.unet import GuidedDiffusionUNet

    spec = get_backbone(backbone)
    if checkpoint or not spec.pretrained:
        return load_unet(spec, checkpoint, device=device)
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(0)
        unet = GuidedDiffusionUNet(spec.unet)
    return unet.eval().requires_grad_(False)


def synchronize(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_gpu_memory(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gpu_memory_gb(device: str | torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if torch.device(device).type == "cuda" else None


def machine(device: str | torch.device) -> dict:
    """Where a line was measured; `load_1min` is the load average when the measurement ended (the
    development machines are shared: compare variants measured side by side, not across sessions)."""
    if torch.device(device).type == "cuda":
        return {"device": torch.cuda.get_device_name(device)}
    return {"device": f"cpu x {os.cpu_count()}", "load_1min": os.getloadavg()[0]}


# rounds -----------------------------------------------------------------------------------------
class TimedSource:
    """A `FeatureSource` that adds up the time of its UNet passes (waiting for the GPU), so that a
    round's seconds split into features and the rest (herding, scoring)."""

    def __init__(self, source):
        self.source, self.seconds = source, 0.0
        self.resolution, self.draws = source.resolution, source.draws

    def __len__(self) -> int:
        return len(self.source)

    def key(self, image: int) -> str:
        return self.source.key(image)

    def maps(self, image: int, noises):
        t = time.perf_counter()
        out = self.source.maps(image, noises)
        synchronize(self.source.extractor.device)
        self.seconds += time.perf_counter() - t
        return out


def oracle_answers(dataset, queries, resolution: int, expander, region_cap: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """The simulation's oracle answers the queries: image index -> (labeled pixels, classes), as
    `labeled_features` takes them."""
    from model.experiments.simulate import oracle_label

    labeled: dict[int, dict[int, int]] = {}
    oracle_label(labeled, queries, lambda i: dataset.labels(i, resolution).ravel(),
                 lambda i: dataset.image(i, resolution), resolution, expander, region_cap)
    return {i: (np.array(sorted(px), dtype=np.int64), np.array([px[q] for q in sorted(px)], dtype=np.int64))
            for i, px in labeled.items()}


def _round_run(data: str, backbone: str, checkpoint: str | None, resolution: int, images: int | None, candidates: int,
               local_k: int, budget_factor: float, budget: int, acquisition: str, dtype: str, batch: int,
               device: str | torch.device, expand: str, region_cap: int, segment_all: bool, cache_dir: str, seed: int,
               stream: bool) -> dict:
    """Round 0, the annotator's answers, head training, round 1 and (optionally) the segmentation of
    every image, through the functions the backend's jobs call (ml_backend/jobs/loop.py)."""
    from pathlib import Path

    from model.datasets import load_dataset
    from model.expansion import build_expander
    from model.experiments.simulate import queried_by_image
    from model.features import DiffusionFeatureExtractor, ImageFeatureSource, resolve_dtype
    from model.head import TrainConfig, train_head
    from model.prediction import segment
    from model.selection import RecordCache, RoundConfig, budget_for, labeled_features, run_round

    ds = load_dataset(data, "train").head(images)
    features = FeatureConfig(resolution=resolution, batch_size=batch, dtype=resolve_dtype(dtype, device), seed=seed)
    extractor = DiffusionFeatureExtractor(timing_unet(backbone, checkpoint, device), features)
    source = TimedSource(ImageFeatureSource(extractor, lambda i: ds.image(i, resolution),
                                            [ds.key(i) for i in range(len(ds))]))
    cache = RecordCache({"bench": "round", "resolution": resolution, "backbone": backbone}, Path(cache_dir))
    config = RoundConfig(budget=budget or budget_for(len(ds), budget_factor), candidates=candidates, local_k=local_k,
                         acquisition=acquisition, seed=seed, device=str(device))
    expander = None if expand == "none" else build_expander(expand)
    out = {"images": len(ds), "budget": config.budget, "dtype": features.dtype, "batch": batch, "expand": expand}

    def stage(name: str, **values) -> None:
        out.update(values)
        if stream:
            emit({"benchmark": "round", "stage": name, **{k: v for k, v in values.items() if k != "stages"}})

    reset_peak_gpu_memory(device)
    log.info("round 0 on %d images (%s, batch %d)", len(ds), features.dtype, batch)
    t = time.perf_counter()
    r0 = run_round(source, {}, None, config, cache)
    elapsed = time.perf_counter() - t
    stage("round 0", round0_seconds=elapsed, round0_feature_seconds=source.seconds,
          round0_seconds_per_image=elapsed / len(ds), round0_recomputed=r0.images_recomputed, round0_stages=r0.seconds)

    # The last answer arrives: the backend expands the clicks, trains a head on every labeled pixel
    # and selects round 1 (only the images whose labels changed need a UNet pass).
    log.info("answers, head training and round 1")
    answered = time.perf_counter()
    queried = queried_by_image([(0, i, p) for i, p in r0.queries])
    labeled = oracle_answers(ds, r0.queries, resolution, expander, region_cap)
    expanded = time.perf_counter()
    source.seconds = 0.0
    feats, classes = labeled_features(source, labeled, config, cache, queried=queried)
    training_set = time.perf_counter()
    head, report = train_head(feats, classes, ds.num_classes, TrainConfig(seed=seed))
    head = head.to(device)  # as the backend's engine keeps its heads: beside the feature maps
    trained = time.perf_counter()
    r1 = run_round(source, {i: px for i, (px, _) in labeled.items()}, head, config, cache, round_index=1,
                   queried=queried)
    selected = time.perf_counter()
    stage("answer to queries", answer_to_queries_seconds=selected - answered, expansion_seconds=expanded - answered,
          labeled_pixels=len(classes), head_seconds=trained - training_set, head_epochs=report.epochs,
          round1_seconds=(training_set - expanded) + (selected - trained), round1_feature_seconds=source.seconds,
          round1_recomputed=len(labeled) + r1.images_recomputed, round1_stages=r1.seconds)

    if segment_all:  # what /predict computes for every task once a new head is in
        log.info("segmentation of %d images", len(ds))
        t = time.perf_counter()
        for i in range(len(ds)):
            segment(head, extractor.maps(ds.image(i, resolution))[0])
        synchronize(device)
        elapsed = time.perf_counter() - t
        stage("segmentation", segment_all_seconds=elapsed, segment_seconds_per_image=elapsed / len(ds))
    out.update(peak_gpu_memory_gb=peak_gpu_memory_gb(device), **machine(device))
    return out


def round_measurement(args, backbone: str, resolution: int, device: str | torch.device, expand: str, segment_all: bool,
                      stream: bool, timeout: float | None = None) -> dict:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        r = isolated(_round_run, timeout=timeout, data=args.data, backbone=backbone, checkpoint=args.checkpoint,
                     resolution=resolution, images=args.images, candidates=args.candidates, local_k=args.local_k,
                     budget_factor=args.budget_factor, budget=args.budget, acquisition=args.acquisition,
                     dtype=args.dtype, batch=args.batch, device=device, expand=expand, region_cap=args.region_cap,
                     segment_all=segment_all, cache_dir=tmp, seed=args.seed, stream=stream)
    if "error" not in r:
        r["round1_share_of_round0"] = r["round1_seconds"] / r["round0_seconds"]
    return {"benchmark": "round", "backbone": backbone, "resolution": resolution, **r}


def bench_round(args) -> None:
    emit(round_measurement(args, args.backbone, args.resolution, resolve_device(args.device), args.expand,
                           args.segment_all, stream=False))


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


def _features_run(backbone: str, resolution: int, batch: int, dtype: str, channels_last: bool, compile: bool,
                  noises: int | None, iterations: int, warmup: int, device: str | torch.device) -> dict:
    """Feature maps of one image through the extractor, as a round computes them. A round-0 image
    takes 1 + draws noises x 3 timesteps = 18 UNet inputs; `noises` above 6 measures what batching
    several images per forward would give, below 6 a share of an image (scaled to 18 inputs)."""
    from model.features import DiffusionFeatureExtractor

    cfg = FeatureConfig(resolution=resolution, batch_size=batch, dtype=dtype)
    ex = DiffusionFeatureExtractor(timing_unet(backbone, None, device), cfg, channels_last=channels_last,
                                   compile=compile)
    per_image = (1 + cfg.draws) * len(cfg.timesteps)
    noise_ids = tuple(range(noises or max(1 + cfg.draws, math.ceil(batch / len(cfg.timesteps)))))
    image = np.random.default_rng(0).integers(0, 255, (resolution, resolution, 3), dtype=np.uint8)
    t = time.perf_counter()
    for _ in range(warmup):  # oneDNN primitives, cuDNN autotuning, torch.compile
        ex.maps(image, noise_ids)
    synchronize(device)
    warmup_seconds = time.perf_counter() - t
    reset_peak_gpu_memory(device)
    times = []
    for _ in range(iterations):
        t = time.perf_counter()
        ex.maps(image, noise_ids)
        synchronize(device)
        times.append(time.perf_counter() - t)
    forwards = len(noise_ids) * len(cfg.timesteps)
    seconds = statistics.median(times) * per_image / forwards
    flops = unet_flops(backbone, resolution, cfg.blocks) * per_image
    return {"dtype": dtype, "batch": batch, "channels_last": channels_last, "compile": compile,
            "forwards_measured": forwards, "forwards_per_image": per_image, "seconds_per_image": seconds,
            "images_per_second": 1 / seconds, "tflops_achieved": flops / seconds / 1e12,
            "gflop_per_forward": flops / per_image / 1e9, "warmup_seconds": warmup_seconds,
            "iterations": iterations, "peak_gpu_memory_gb": peak_gpu_memory_gb(device), **machine(device)}


def feature_variants(dtypes, batches, channels_last: bool, compile: bool) -> list[dict]:
    variants = [dict(dtype=d, batch=b, channels_last=False, compile=False) for d in dtypes for b in batches]
    if channels_last:
        variants += [dict(v, channels_last=True) for v in variants]
    if compile:
        variants += [dict(v, compile=True) for v in variants]
    return variants


def measure_features(backbone: str, resolution: int, variants: list[dict], device: str | torch.device, repeats: int,
                     iterations: int, warmup: int, noises: int | None, timeout: float | None = None) -> list[dict]:
    """Each variant in its own process, the variants interleaved `repeats` times (the machines are
    noisy); one line per variant with the median of its repeats."""
    runs: list[list[dict]] = [[] for _ in variants]
    for _ in range(repeats):
        for v, variant in enumerate(variants):
            runs[v].append(isolated(_features_run, timeout=timeout, backbone=backbone, resolution=resolution,
                                    device=device, iterations=iterations, warmup=warmup, noises=noises, **variant))
    lines = []
    for variant, results in zip(variants, runs):
        ok = [r for r in results if "error" not in r]
        line = {"benchmark": "features", "backbone": backbone, "resolution": resolution, **variant}
        if not ok:
            line["error"] = results[0]["error"]
        else:
            line.update(ok[-1], seconds_per_image=statistics.median(r["seconds_per_image"] for r in ok),
                        images_per_second=statistics.median(r["images_per_second"] for r in ok),
                        tflops_achieved=statistics.median(r["tflops_achieved"] for r in ok), repeats=len(ok))
        lines.append(line)
    return lines


def bench_features(args) -> None:
    variants = feature_variants(args.dtypes, args.batches, args.channels_last, args.compile)
    for line in measure_features(args.backbone, args.resolution, variants, resolve_device(args.device), args.repeats,
                                 args.iterations, args.warmup, args.noises):
        emit(line)


# precision --------------------------------------------------------------------------------------
def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a.numpy(), b.numpy()).statistic)


AGREEMENT = ("round0_overlap", "round1_overlap", "local_picks_overlap", "local_objective_ratio_mean",
             "local_objective_ratio_min", "edald_spearman", "edald_top_b_overlap")


def _precision_run(data: str, backbone: str, resolution: int, images: int, candidates: int, local_k: int,
                   budget: int, dtypes: list[str], seed: int, timed_images: int = 3) -> dict:
    """Round 0 and round 1 at each precision, compared with the first (float32): the pixels they
    pick, the herding objective of those picks in float32 features, and eDALD's ranking of every
    candidate under one head.

    The noise floor is how far the method's own randomness moves the same measures at full
    precision: a float32 run whose UNet noise images come from another seed (as another SEED
    would draw them). A precision agrees when no measure falls below the floor's. Round 1 also
    gets the overlap under a float32 head of another seed (a head trained on a few pixels hangs
    on its seed). Speed: after the rounds (every extractor warm), each precision computes the 18
    UNet inputs of the same images in turn, so that a change of load hits them alike."""
    from model.acquisition import acquisition_scores
    from model.datasets import load_dataset
    from model.experiments.simulate import queried_by_image
    from model.features import DiffusionFeatureExtractor, ImageFeatureSource
    from model.head import TrainConfig, train_head
    from model.herding import RBFKernel, auto_sigma
    from model.selection import (RecordCache, RoundConfig, candidate_pixels, labeled_features, record_digest,
                                 run_round)

    ds = load_dataset(data, "train").head(images)
    unet = timing_unet(backbone, None, "cpu")
    config = RoundConfig(budget=budget, candidates=candidates, local_k=local_k, seed=seed)
    keys = [ds.key(i) for i in range(len(ds))]
    runs = []
    for dtype, noise_seed in [(d, seed) for d in dtypes] + [(dtypes[0], seed + 1)]:
        name = dtype if noise_seed == seed else f"{dtype} noise seed {noise_seed}"
        log.info("%s: round 0, answers, head and round 1 on %d images", name, len(ds))
        extractor = DiffusionFeatureExtractor(unet, FeatureConfig(resolution=resolution, dtype=dtype, seed=noise_seed))
        source = ImageFeatureSource(extractor, lambda i: ds.image(i, resolution), keys)
        cache = RecordCache({"dtype": dtype, "noise seed": noise_seed})
        t = time.perf_counter()
        r0 = run_round(source, {}, None, config, cache)
        seconds = time.perf_counter() - t
        local = [cache.get(keys[i], record_digest(())).picks for i in range(len(ds))]
        labeled = oracle_answers(ds, r0.queries, resolution, None, 1)
        queried = queried_by_image([(0, i, p) for i, p in r0.queries])
        feats, classes = labeled_features(source, labeled, config, cache, queried=queried)
        head, _ = train_head(feats, classes, ds.num_classes, TrainConfig(seed=seed))
        pixels = {i: px for i, (px, _) in labeled.items()}
        r1 = run_round(source, pixels, head, config, cache, round_index=1, queried=queried)
        runs.append({"name": name, "dtype": dtype, "extractor": extractor, "round0": r0, "round1": r1, "head": head,
                     "local": local, "round0_seconds_per_image": seconds / len(ds)})
        if len(runs) == 1:
            reseeded, _ = train_head(feats, classes, ds.num_classes, TrainConfig(seed=seed + 1))
            runs[0]["round1_reseeded"] = run_round(source, pixels, reseeded, config, cache, round_index=1,
                                                   queried=queried)

    base, floor_run = runs[0], runs[-1]
    log.info("time per image, precisions in turn on %d images", min(timed_images, len(ds)))
    timed = {run["dtype"]: run["extractor"] for run in reversed(runs)}  # the first run of each precision
    times: dict[str, list[float]] = {dtype: [] for dtype in timed}
    all_noises = (0, *base["extractor"].config.draw_indices)
    for i in range(min(timed_images, len(ds))):
        for dtype in list(timed) if i % 2 == 0 else list(timed)[::-1]:  # alternate the order
            t = time.perf_counter()
            timed[dtype].maps(ds.image(i, resolution), all_noises)
            times[dtype].append(time.perf_counter() - t)

    def overlap(a, b) -> float:
        return len(set(a.queries) & set(b.queries)) / len(b.queries)

    def objectives(i: int) -> list[float]:
        """Local herding's objective of each run's picks on image i (the mean coverage of its
        candidates), all in the float32 run's features: one UNet pass and one kernel for every run."""
        maps = base["extractor"].maps(ds.image(i, resolution))[0]
        x = maps.at(candidate_pixels(keys[i], resolution, candidates, seed))
        kernel = RBFKernel(auto_sigma(x, seed))
        return [float(kernel.max_over(x, maps.at(run["local"][i])).mean()) for run in runs]

    def edald(extractor, i: int) -> torch.Tensor:
        """eDALD scores of every candidate of image i, under the float32 run's head."""
        maps = extractor.maps(ds.image(i, resolution), (0, *extractor.config.draw_indices))
        px = candidate_pixels(keys[i], resolution, candidates, seed)
        ref = base["head"].log_probs(maps[0].at(px))
        draws = torch.stack([base["head"].log_probs(m.at(px)) for m in maps[1:]], dim=1)
        return acquisition_scores("edald", ref, draws)

    log.info("herding objectives and eDALD rankings of every candidate")
    per_image = [objectives(i) for i in range(len(ds))]  # [image][run]
    base_scores = torch.cat([edald(base["extractor"], i) for i in range(len(ds))])
    top = max(1, budget)
    lines = []
    for r, run in enumerate(runs[1:], start=1):
        ratios = [o[r] / o[0] for o in per_image]
        scores = torch.cat([edald(run["extractor"], i) for i in range(len(ds))])
        lines.append({
            "compared": f"{run['name']} vs {base['name']}", "noise_floor": run is floor_run,
            "feature_seconds_per_image": statistics.median(times[run["dtype"]]),
            "base_feature_seconds_per_image": statistics.median(times[base["dtype"]]), "timed_images": len(times[base["dtype"]]),
            "round0_seconds_per_image": run["round0_seconds_per_image"],
            "base_round0_seconds_per_image": base["round0_seconds_per_image"],
            "round0_overlap": overlap(run["round0"], base["round0"]),
            "round1_overlap": overlap(run["round1"], base["round1"]),
            "round1_overlap_fp32_other_head_seed": overlap(base["round1_reseeded"], base["round1"]),
            "local_picks_overlap": float(np.mean([len(np.intersect1d(a, b)) / len(b)
                                                  for a, b in zip(run["local"], base["local"])])),
            "local_objective_ratio_mean": float(np.mean(ratios)), "local_objective_ratio_min": float(np.min(ratios)),
            "edald_spearman": _spearman(scores, base_scores),
            "edald_top_b_overlap": len(set(torch.topk(scores, top).indices.tolist())
                                       & set(torch.topk(base_scores, top).indices.tolist())) / top,
            "pixels_ranked": len(scores)})
    floor = lines[-1]
    for line in lines[:-1]:
        line["below_noise_floor"] = [key for key in AGREEMENT if line[key] < floor[key]]
        line["agrees_within_noise_floor"] = not line["below_noise_floor"]
    return {"lines": lines, **machine("cpu")}


def bench_precision(args) -> None:
    r = isolated(_precision_run, data=args.data, backbone=args.backbone, resolution=args.resolution,
                 images=args.images, candidates=args.candidates, local_k=args.local_k, budget=args.budget,
                 dtypes=args.dtypes, seed=args.seed, timed_images=args.timed_images)
    common = {"benchmark": "precision", "backbone": args.backbone, "resolution": args.resolution,
              "images": args.images, "candidates": args.candidates, "budget": args.budget}
    if "error" in r:
        emit({**common, "error": r["error"]})
        return
    for line in r["lines"]:
        emit({**common, **line, "load_1min": r["load_1min"], "peak_rss_gb": r["peak_rss_gb"]})


# gpu --------------------------------------------------------------------------------------------
GPU_TARGETS = {"seconds_per_image": 0.15, "answer_to_queries_seconds": 60.0, "peak_gpu_memory_gb": 20.0}
SWEEP_RESERVE_SECONDS = 150  # of bench gpu's deadline, kept from the round for the feature throughput sweep


def bench_gpu(args) -> None:
    """Everything the GPU path needs measured, in one run that ends within --deadline seconds. First
    a full round at scale with the precision the backend picks (FEATURE_DTYPE=auto), because the
    targets hang on it; it may use all but SWEEP_RESERVE_SECONDS of the deadline. Then feature
    throughput by precision and batch, and the fastest of those in channels_last and under
    torch.compile; a variant starts only while 30 s are left. Last, a summary against the targets.
    --tiny runs the same steps at a size a CPU finishes in a few minutes (for the tests)."""
    from model.features import resolve_dtype

    started = time.monotonic()
    device = resolve_device(args.device)
    if args.tiny:
        backbone, resolution, batches, dtypes = "tiny", 32, [6], ["fp32", "bf16"]
        args.images, args.candidates, args.local_k, args.budget = args.images or 3, 200, 10, args.budget or 4
    else:
        backbone, resolution, batches, dtypes = "imagenet256", 256, [6, 18, 36], ["fp32", "fp16", "bf16"]

    def left() -> float:
        return args.deadline - (time.monotonic() - started)

    round_line = round_measurement(args, backbone, resolution, device, "superpixel", segment_all=True, stream=True,
                                   timeout=max(1.0, left() - SWEEP_RESERVE_SECONDS))
    emit(round_line)

    def measure(variant: dict) -> dict:
        if left() < 30:
            return {"benchmark": "features", "backbone": backbone, "resolution": resolution, **variant,
                    "error": "skipped: the deadline is near"}
        return measure_features(backbone, resolution, [variant], device, repeats=1, iterations=args.iterations,
                                warmup=1, noises=None, timeout=left())[0]

    measured = []
    for variant in feature_variants(dtypes, batches, False, False):
        line = measure(variant)
        emit(line)
        if "error" not in line:
            measured.append(line)
    best = min(measured, key=lambda line: line["seconds_per_image"]) if measured else None
    tuned = {"dtype": best["dtype"], "batch": best["batch"]} if best else None
    tuning = [] if best is None else [dict(tuned, channels_last=True, compile=False)] + (
        [dict(tuned, channels_last=False, compile=True)] if args.compile else [])
    for variant in tuning:
        line = measure(variant)
        if "error" not in line:
            line["speedup_over_best_plain"] = best["seconds_per_image"] / line["seconds_per_image"]
        emit(line)

    product = {"dtype": resolve_dtype(args.dtype, device), "batch": args.batch}
    default = next((m for m in measured if m["dtype"] == product["dtype"] and m["batch"] == product["batch"]), None)
    summary = {"benchmark": "gpu", "backbone": backbone, "resolution": resolution, "images": round_line.get("images"),
               "backend_features": product,
               "seconds_per_image": default["seconds_per_image"] if default else None,
               "best_features": tuned, "best_seconds_per_image": best["seconds_per_image"] if best else None,
               "answer_to_queries_seconds": round_line.get("answer_to_queries_seconds"),
               "peak_gpu_memory_gb": round_line.get("peak_gpu_memory_gb"),
               "wall_seconds": time.monotonic() - started, **machine(device)}
    summary["targets_met"] = {k: None if summary[k] is None else summary[k] <= target  # None: not measured
                              for k, target in GPU_TARGETS.items()}
    emit(summary)


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


def _round_arguments(p, candidates: int) -> None:
    p.add_argument("--data", required=True, help="dataset root, e.g. ../shared/datasets/camvid")
    p.add_argument("--checkpoint", default=None, help="diffusion checkpoint (default: random weights, same time)")
    p.add_argument("--images", type=int, default=None, help="first N training images (default: all)")
    p.add_argument("--candidates", type=int, default=candidates)
    p.add_argument("--local-k", type=int, default=50)
    p.add_argument("--budget-factor", type=float, default=0.1)
    p.add_argument("--budget", type=int, default=0, help="clicks per round (0: budget factor x images)")
    p.add_argument("--acquisition", default="edald")
    p.add_argument("--dtype", default="auto", choices=["auto", *DTYPES], help="UNet precision (FEATURE_DTYPE)")
    p.add_argument("--batch", type=int, default=FeatureConfig().batch_size, help="UNet inputs per forward")
    p.add_argument("--region-cap", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)


def add_parser(sub) -> None:
    bench = sub.add_parser("bench", help="benchmarks printing one JSON line per measurement")
    which = bench.add_subparsers(dest="benchmark", required=True)

    p = which.add_parser("herding", help="global herding: exact (ours) vs sharded, the naive greedy, apricot; "
                                          "the kernel pass against the machine's matmul rate")
    p.add_argument("--n", type=int, default=8000, help="pool points (synthetic; with --data: the real pool's)")
    p.add_argument("--dim", type=int, default=6144)
    p.add_argument("--keep", type=int, default=4000)
    p.add_argument("--covered", type=int, default=0, help="labeled points covering the pool")
    p.add_argument("--no-exact", dest="exact", action="store_false", help="skip the exact greedy")
    p.add_argument("--sharded", action="store_true", help="also sharded herding (objective ratio, picks in common)")
    p.add_argument("--exact-max", type=int, default=GLOBAL_EXACT_MAX,
                   help="--sharded: the merge's kernel at most this squared (GLOBAL_EXACT_MAX)")
    p.add_argument("--shard-size", type=int, nargs="+", default=[SHARD_SIZE], help="--sharded: shard sizes, a run each")
    p.add_argument("--per-image", type=int, default=50, help="synthetic pool: rows per image (LOCAL_K)")
    p.add_argument("--bf16", action="store_true", help="also each with the kernel's GEMM in bf16 (picks in common)")
    p.add_argument("--limit", action="store_true",
                   help="fp32 and bf16 matmul GFLOP/s and one kernel pass over the pool's n x n kernel against them")
    p.add_argument("--reference", action="store_true", help="also run the naive greedy (objective_gap, speedup)")
    p.add_argument("--apricot", action="store_true", help="also run apricot-select's lazy facility location")
    p.add_argument("--data", default=None, help="a dataset root: round 0's real pool instead of synthetic features")
    p.add_argument("--backbone", default="tiny", choices=sorted(BACKBONES), help="with --data")
    p.add_argument("--resolution", type=int, default=32, help="with --data")
    p.add_argument("--candidates", type=int, default=200, help="with --data")
    p.add_argument("--local-k", type=int, default=50, help="with --data")
    p.add_argument("--images", type=int, default=None, help="with --data: first N training images (default: all)")
    p.add_argument("--timeout", type=float, default=None, help="seconds a measurement may take")
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

    p = which.add_parser("round", help="round 0, answers, head, round 1 (and segmentation) of a real dataset")
    _round_arguments(p, candidates=1000)
    p.add_argument("--backbone", default="tiny", choices=sorted(BACKBONES))
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--expand", default="none", choices=["none", "superpixel"],
                   help="expand each answered click as the backend does (EXPANDER)")
    p.add_argument("--segment-all", action="store_true", help="also segment every image with the new head")
    p.set_defaults(run=bench_round)

    p = which.add_parser("features", help="UNet feature throughput per image (random weights)")
    p.add_argument("--backbone", default="imagenet256", choices=sorted(BACKBONES))
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--batches", type=int, nargs="+", default=[6], help="UNet inputs per forward (FeatureConfig.batch_size)")
    p.add_argument("--dtypes", nargs="+", default=["fp32"], choices=sorted(DTYPES))
    p.add_argument("--channels-last", action="store_true", help="also each variant in channels_last")
    p.add_argument("--compile", action="store_true", help="also each variant under torch.compile")
    p.add_argument("--noises", type=int, default=None,
                   help="noises per measured call (default 6: one round-0 image); fewer are scaled to a whole image")
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1, help="interleaved repeats of all variants (median)")
    p.add_argument("--device", default="auto")
    p.set_defaults(run=bench_features)

    p = which.add_parser("precision", help="fp32 against bf16 / fp16 features: time and agreement of the selections")
    p.add_argument("--data", required=True)
    p.add_argument("--backbone", default="tiny", choices=sorted(BACKBONES))
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--images", type=int, default=20)
    p.add_argument("--candidates", type=int, default=2000)
    p.add_argument("--local-k", type=int, default=50)
    p.add_argument("--budget", type=int, default=10, help="clicks per round")
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES),
                   help="the first is the reference the others (and the noise floor) are compared with")
    p.add_argument("--timed-images", type=int, default=3, help="images each precision times in turn (median)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=bench_precision)

    p = which.add_parser("gpu", help="the GPU path in one run: feature throughput, a full CamVid round, targets")
    _round_arguments(p, candidates=10_000)
    p.add_argument("--device", default="auto")
    p.add_argument("--tiny", action="store_true", help="tiny backbone, 32 px, 3 images: the same steps on a CPU")
    p.add_argument("--deadline", type=float, default=480, help="seconds the whole run may take")
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile variant")
    p.set_defaults(run=bench_gpu)

    p = which.add_parser("expansion", help="click-to-mask latency: cold, from memory, from disk in another process")
    p.add_argument("--data", required=True)
    p.add_argument("--images", type=int, default=3, help="CamVid val images, one cold and one warm click each")
    p.set_defaults(run=bench_expansion)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: python -m model bench ...")
