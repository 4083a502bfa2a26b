"""The benchmark commands run end to end on a CPU with small configurations and print the fields
the documentation's tables and the GPU session read. Times are printed, never asserted."""

import json
import os
import subprocess
import sys
import time

import pytest

from model.experiments.bench import _precision_run, isolated
from tests.conftest import REPO


def _bench(*args: str, timeout: float = 900) -> list[dict]:
    """A real process (not tests/commands.py): the benchmarks measure in child processes that print
    to the process's own stdout."""
    out = subprocess.run([sys.executable, "-m", "model", "bench", *args], cwd=REPO, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


@pytest.mark.slow
def test_gpu_command_runs_its_steps_on_a_cpu(camvid_root):
    lines = _bench("gpu", "--data", str(camvid_root), "--tiny", "--device", "cpu", "--images", "2", "--no-compile",
                   "--iterations", "1")
    features = [x for x in lines if x["benchmark"] == "features"]
    assert [(x["dtype"], x["batch"], x["channels_last"]) for x in features] == [
        ("fp32", 6, False), ("bf16", 6, False), (min(features[:2], key=lambda x: x["seconds_per_image"])["dtype"], 6, True)]
    for x in features:
        assert "error" not in x, x
        assert x["forwards_per_image"] == 18 and x["forwards_measured"] == 18 and x["seconds_per_image"] > 0
        assert x["images_per_second"] == pytest.approx(1 / x["seconds_per_image"])
        assert x["peak_gpu_memory_gb"] is None and x["device"].startswith("cpu") and "load_1min" in x
    assert features[2]["speedup_over_best_plain"] > 0

    stages = [x["stage"] for x in lines if x["benchmark"] == "round" and "stage" in x]
    assert stages == ["round 0", "answer to queries", "segmentation"]
    (round_line,) = [x for x in lines if x["benchmark"] == "round" and "stage" not in x]
    assert "error" not in round_line, round_line
    assert round_line["images"] == 2 and round_line["budget"] == 4 and round_line["expand"] == "superpixel"
    assert round_line["round0_recomputed"] == 2 and round_line["round1_recomputed"] >= 1
    assert 0 < round_line["round0_feature_seconds"] <= round_line["round0_seconds"]
    parts = round_line["expansion_seconds"] + round_line["head_seconds"] + round_line["round1_seconds"]
    assert round_line["answer_to_queries_seconds"] == pytest.approx(parts, rel=1e-6)
    assert round_line["segment_all_seconds"] > 0 and round_line["labeled_pixels"] >= 1

    assert lines.index(round_line) < lines.index(features[0])  # the round the targets hang on comes first
    (summary,) = [x for x in lines if x["benchmark"] == "gpu"]
    assert summary["backend_features"]["batch"] == 6 and summary["images"] == 2
    assert summary["answer_to_queries_seconds"] == round_line["answer_to_queries_seconds"]
    assert summary["best_seconds_per_image"] == min(x["seconds_per_image"] for x in features[:2])
    assert set(summary["targets_met"]) == {"seconds_per_image", "answer_to_queries_seconds", "peak_gpu_memory_gb"}
    assert summary["targets_met"]["peak_gpu_memory_gb"] is None  # no GPU memory on a CPU
    assert lines[-1] == summary


def test_gpu_command_keeps_its_deadline_and_still_sums_up(camvid_root):
    """A deadline too short for anything: the round is stopped, every feature variant is skipped,
    and the summary still comes, with nothing claimed as met."""
    t = time.monotonic()
    lines = _bench("gpu", "--data", str(camvid_root), "--tiny", "--device", "cpu", "--deadline", "1")
    assert time.monotonic() - t < 60
    round_line, *features, summary = lines
    assert round_line["benchmark"] == "round" and round_line["error"] == "timed out after 1 s"
    assert [x["benchmark"] for x in features] == ["features", "features"]
    assert all(x["error"] == "skipped: the deadline is near" for x in features)
    assert summary["benchmark"] == "gpu" and summary["best_features"] is None
    assert summary["targets_met"] == {"seconds_per_image": None, "answer_to_queries_seconds": None,
                                      "peak_gpu_memory_gb": None}


@pytest.mark.slow
def test_herding_benchmark_puts_sharded_and_bf16_beside_the_exact_greedy_and_the_matmul_limit():
    lines = _bench("herding", "--n", "600", "--dim", "32", "--keep", "10", "--covered", "20", "--per-image", "20",
                   "--sharded", "--exact-max", "300", "--shard-size", "200", "--bf16", "--limit")
    (limit,) = [x for x in lines if x.get("measure") == "kernel pass"]
    assert limit["kernel_pass_macs"] == 600 * 600 * 32 and limit["symmetric_macs"] == 600 * 600 * 16
    assert limit["kernel_pass_rows_timed"] == 600 and limit["kernel_pass_seconds"] > 0
    assert limit["gflops_fp32"] == max(limit["gflops_fp32_before_after"]) and limit["gflops_bf16"] > 0
    assert limit["share_of_matmul_limit"] == pytest.approx(limit["kernel_pass_gflops"] / limit["gflops_fp32"])
    runs = {x["method"]: x for x in lines if "method" in x}
    assert set(runs) == {"ours", "sharded-200", "bf16", "sharded-200-bf16"}
    for x in runs.values():
        assert "error" not in x, x
        assert x["selected"] == 10 and x["seconds"] > 0 and x["peak_rss_gb"] > 0 and 0 < x["objective"] < 1
    assert runs["ours"]["path"] == "dense" and runs["sharded-200"]["path"] == "sharded-200"
    comparisons = {x["comparison"]: x for x in lines if "comparison" in x}
    assert set(comparisons) == {"sharded-200 vs ours", "bf16 vs ours", "sharded-200-bf16 vs sharded-200"}
    for name, x in comparisons.items():
        assert 0 < x["objective_ratio"] <= 1.0001 and 0 <= x["picks_in_common"] <= x["selected"] == 10, name
        if x["identical_picks"]:
            assert x["picks_in_common"] == 10 and x["objective_ratio"] == 1.0, name
    sharded = comparisons["sharded-200 vs ours"]
    assert sharded["objective_ratio"] == pytest.approx(runs["sharded-200"]["objective"] / runs["ours"]["objective"])
    assert sharded["speedup"] == pytest.approx(runs["ours"]["seconds"] / runs["sharded-200"]["seconds"], abs=0.006)


def test_features_benchmark_scales_a_share_of_an_image_to_18_forwards():
    (line,) = _bench("features", "--backbone", "tiny", "--resolution", "32", "--noises", "1", "--iterations", "1",
                     "--warmup", "0", "--device", "cpu")
    assert line["forwards_measured"] == 3 and line["forwards_per_image"] == 18 and line["dtype"] == "fp32"
    assert line["gflop_per_forward"] == pytest.approx(0.547, rel=0.01)  # tiny at 32 px, up to block 17


def test_precision_comparison_of_identical_runs_is_exact(camvid_root):
    """fp32 against a second fp32 run: every agreement measure must be exactly 1 (the runs are
    deterministic) and cannot fall below the noise floor; bf16 and the floor (float32 under
    other noise images) are compared on the same scale, and the floor moves the features."""
    from model.experiments.bench import AGREEMENT

    r = _precision_run(str(camvid_root), "tiny", 32, images=2, candidates=120, local_k=6, budget=3,
                       dtypes=["fp32", "fp32", "bf16"], seed=0, timed_images=1)
    same, bf16, floor = r["lines"]
    assert same["compared"] == "fp32 vs fp32" and bf16["compared"] == "bf16 vs fp32"
    assert floor["compared"] == "fp32 noise seed 1 vs fp32" and floor["noise_floor"] and not bf16["noise_floor"]
    for key in AGREEMENT:
        assert same[key] == pytest.approx(1.0, abs=1e-12), key
        assert 0 <= bf16[key] <= 1.01 and 0 <= floor[key] <= 1.01, key
    assert same["agrees_within_noise_floor"] and same["below_noise_floor"] == []
    assert bf16["agrees_within_noise_floor"] == (bf16["below_noise_floor"] == [])
    assert set(bf16["below_noise_floor"]) == {key for key in AGREEMENT if bf16[key] < floor[key]}
    assert floor["edald_spearman"] < 1 and floor["local_picks_overlap"] < 1  # other noise: other features
    assert "agrees_within_noise_floor" not in floor
    assert same["pixels_ranked"] == bf16["pixels_ranked"] == floor["pixels_ranked"] == 240
    assert 0 <= same["round1_overlap_fp32_other_head_seed"] == bf16["round1_overlap_fp32_other_head_seed"] <= 1
    assert same["timed_images"] == 1 and same["feature_seconds_per_image"] > 0 and bf16["feature_seconds_per_image"] > 0
    assert same["base_feature_seconds_per_image"] == bf16["base_feature_seconds_per_image"]


def _sleep(seconds: float) -> dict:
    time.sleep(seconds)
    return {"slept": seconds}


def _die() -> dict:
    os._exit(9)


def test_isolated_reports_a_hung_or_dead_measurement_instead_of_waiting():
    assert isolated(_sleep, seconds=0.1, timeout=60)["slept"] == 0.1
    t = time.monotonic()
    assert isolated(_sleep, seconds=60, timeout=2) == {"error": "timed out after 2 s"}
    assert time.monotonic() - t < 30
    assert isolated(_die) == {"error": "the measurement process died (exit code 9)"}
