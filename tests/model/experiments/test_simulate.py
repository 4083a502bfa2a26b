import csv
import json

import numpy as np
import pytest
from PIL import Image

from model.datasets import IGNORE_INDEX, load_camvid
from model.features import DiffusionFeatureExtractor, FeatureConfig
from model.experiments.simulate import Simulation, SimulationConfig, Strategy, _round_strategy, parse_strategy
from tests.commands import model_command

SMOKE = ["--backbone", "tiny", "--resolution", "64", "--max-train-images", "16", "--max-eval-images", "8",
         "--budget-factor", "0.5", "--candidates", "400", "--local-k", "8", "--train-epochs", "20"]


def run(args, tmp_path, data):
    return model_command("simulate", "--data", data, *SMOKE, "--out", tmp_path, *args)


def rows(path):
    with open(path / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_cpu_smoke_run_writes_metrics_summary_and_pictures(tmp_path, camvid_root):
    out = run(["--strategy", "two-stage-edald", "random", "--rounds", "3", "--seeds", "0"], tmp_path, camvid_root)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "NOT PRETRAINED" in out.stderr
    got = rows(tmp_path)
    assert [(r["strategy"], int(r["round"])) for r in got] == [("two-stage-edald", 1), ("two-stage-edald", 2),
                                                               ("two-stage-edald", 3), ("random", 1), ("random", 2),
                                                               ("random", 3)]
    for r in got:
        assert 0 <= float(r["miou"]) <= 1 and 0 < float(r["pixel_accuracy"]) <= 1
        assert int(r["queried_pixels"]) == 8 * int(r["round"]) and int(r["labeled_pixels"]) <= int(r["queried_pixels"])
        assert float(r["labeled_share"]) == pytest.approx(int(r["labeled_pixels"]) / (16 * 64 * 64))
        assert "iou_Road" in r
    summary = (tmp_path / "summary.md").read_text()
    assert "| two-stage-edald | 1 | 3 |" in summary and "| random | 1 | 3 |" in summary
    for name in ("curves.png", "selections.png", "predictions.png"):
        with Image.open(tmp_path / name) as im:
            assert im.format == "PNG" and im.width > 300 and im.height > 200
    # the second run of the same command finds every round done: nothing is recomputed or appended
    again = run(["--strategy", "two-stage-edald", "random", "--rounds", "3", "--seeds", "0"], tmp_path, camvid_root)
    assert again.returncode == 0 and len(rows(tmp_path)) == 6
    for name in ("two-stage-edald", "random"):  # no (image, pixel) is ever queried twice
        queries = json.loads((tmp_path / "state" / f"{name}-seed0.json").read_text())["queries"]
        assert len(queries) == 24 and len({(i, p) for _, i, p in queries}) == 24


def test_queries_answered_as_void_are_never_asked_again(tmp_path, camvid_root, tiny_unet):
    """An oracle that can label nothing (all void): herding alone would pick the same pixels every
    round, since the labeled set never changes."""
    ds = load_camvid(camvid_root, "val").head(4)
    extractor = DiffusionFeatureExtractor(tiny_unet, FeatureConfig(resolution=64))
    config = SimulationConfig(strategies=["herding"], seeds=[0], rounds=3, budget_factor=1.0, candidates=300,
                              local_k=6, map_cache_gb=0)
    sim = Simulation(config, ds, ds, extractor, tmp_path, progress=False)
    sim.truth = lambda i: np.full(64 * 64, IGNORE_INDEX, dtype=np.uint8)
    sim.run_one(sim.strategies[0], 0)
    queries = json.loads((tmp_path / "state" / "herding-seed0.json").read_text())["queries"]
    assert len(queries) == 12 and len({(i, p) for _, i, p in queries}) == 12


@pytest.mark.slow
def test_an_interrupted_run_resumes_where_it_stopped(tmp_path, camvid_root):
    first = run(["--strategy", "herding", "--rounds", "2", "--expand", "superpixel"], tmp_path, camvid_root)
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = run(["--strategy", "herding", "--rounds", "3", "--expand", "superpixel"], tmp_path, camvid_root)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got = rows(tmp_path)
    assert [int(r["round"]) for r in got] == [1, 2, 3]
    # expanded clicks label more pixels than they query
    assert int(got[-1]["labeled_pixels"]) > int(got[-1]["queried_pixels"])


def test_strategy_names_and_late_switch():
    assert parse_strategy("two-stage-edald") == Strategy("two-stage-edald", "herding", "edald")
    assert parse_strategy("coreset-edald-reference") == Strategy("coreset-edald-reference", "coreset", "edald-reference")
    assert parse_strategy("margin") == Strategy("margin", None, "margin")
    assert parse_strategy("herding") == Strategy("herding", "herding", None)
    assert parse_strategy("random") == Strategy("random", None, "random")
    with pytest.raises(ValueError, match="two-stage"):
        parse_strategy("three-stage-edald")
    cfg = SimulationConfig(strategies=["two-stage-edald"], seeds=[0], switch_after=2, switch_to="margin")
    s = parse_strategy("two-stage-edald")
    assert _round_strategy(s, cfg, 1) == s and _round_strategy(s, cfg, 2).acquisition == "margin"
    assert _round_strategy(s, cfg, 2).coverage is None
